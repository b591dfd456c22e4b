//! A real S3 server on 127.0.0.1 for the tests (moto's server, from PyPI; `.ci/run`
//! installs it), and a fault-injecting HTTP proxy to put in front of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "cairn-test-key";
pub const SECRET_KEY: &str = "cairn-test-secret-do-not-print";

/// A moto S3 server on a free loopback port, killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is installed (pip install 'moto[server]'; .ci/run does this)");
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while request(port, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_none() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// A server that checks credentials: the bucket `guarded` and two IAM users are set up
    /// first (moto lets exactly that many requests through unchecked); returns the server
    /// and the (key id, secret) of a full-access `writer` and a read-only `reader`.
    pub fn start_with_iam() -> (Self, (String, String), (String, String)) {
        const SETUP: &str = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], aws_access_key_id="setup", aws_secret_access_key="setup", region_name="us-east-1")
boto3.client("s3", **kw).create_bucket(Bucket="guarded")
iam = boto3.client("iam", **kw)
out = {}
for user, actions in [("writer", ["s3:*"]), ("reader", ["s3:GetObject", "s3:ListBucket"])]:
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    out[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
print(json.dumps(out))
"#;
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "7")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is installed");
        let server = S3Server { child, port };
        // Wait by connecting only: a request would use up one of the unchecked actions.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new("python3").args(["-c", SETUP, &server.endpoint()]).output().expect("python3 runs");
        assert!(out.status.success(), "IAM setup: {}", String::from_utf8_lossy(&out.stderr));
        let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let pair = |u: &str| (keys[u][0].as_str().unwrap().to_string(), keys[u][1].as_str().unwrap().to_string());
        (server, pair("writer"), pair("reader"))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, name: &str) {
        let reply = request(
            self.port,
            &format!("PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .expect("moto answers");
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket {name}: {reply}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn request(port: u16, text: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(text.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Close the connection without an answer (the request never reaches the server).
    Reset,
    /// Answer 500 without forwarding.
    ServerError,
    /// Forward after a pause.
    Slow(Duration),
    /// Forward, let the server do it, then answer 500: a write that reports failure
    /// after it landed.
    LandThenFail,
    /// Forward without `If-None-Match`: a proxy that turns create-only writes into
    /// plain ones.
    StripConditional,
    /// Answer 409 FileAlreadyExists without forwarding: what OSS says to a write
    /// carrying `x-oss-forbid-overwrite` when the object exists.
    Conflict,
}

type Policy = dyn Fn(&str, &str, usize) -> Fault + Send + Sync;

/// An HTTP/1.1 proxy to the S3 server that injects faults chosen by a policy of
/// (method, path, request number). It accepts origin-form requests (used as the
/// endpoint) and absolute-form ones (used as `HTTP_PROXY`), and keeps the Host header, so
/// virtual-host addressing reaches the server as it was sent.
pub struct FaultProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub counts: Arc<Mutex<std::collections::BTreeMap<String, usize>>>,
    pub hosts: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: u16, policy: impl Fn(&str, &str, usize) -> Fault + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Default::default()));
        let hosts = Arc::new(Mutex::new(Default::default()));
        let policy: Arc<Policy> = Arc::new(policy);
        let seq = Arc::new(AtomicUsize::new(0));
        let (stop2, counts2, hosts2) = (stop.clone(), counts.clone(), hosts.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (policy, seq, counts, hosts) = (policy.clone(), seq.clone(), counts2.clone(), hosts2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &*policy, &seq, &counts, &hosts);
                });
            }
        });
        FaultProxy { port, stop, counts, hosts }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests seen per method.
    pub fn count(&self, method: &str) -> usize {
        self.counts.lock().unwrap().get(method).copied().unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serve requests on one client connection until it closes.
fn serve(
    conn: TcpStream,
    upstream: u16,
    policy: &Policy,
    seq: &AtomicUsize,
    counts: &Mutex<std::collections::BTreeMap<String, usize>>,
    hosts: &Mutex<std::collections::BTreeSet<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut client = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        // Absolute form (proxy use): keep only the path; the Host header names the host.
        let path = match target.strip_prefix("http://") {
            Some(rest) => rest.find('/').map(|i| rest[i..].to_string()).unwrap_or_else(|| "/".into()),
            None => target.clone(),
        };
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap_or((&h, ""));
            let lower = name.to_ascii_lowercase();
            match lower.as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "host" => {
                    hosts.lock().unwrap().insert(value.trim().to_string());
                }
                _ => {}
            }
            if !matches!(lower.as_str(), "connection" | "proxy-connection" | "keep-alive" | "transfer-encoding") {
                headers.push(h);
            }
        }
        let body = if chunked { read_chunked(&mut reader)? } else { read_exact(&mut reader, length)? };
        let n = seq.fetch_add(1, Ordering::SeqCst);
        *counts.lock().unwrap().entry(method.clone()).or_default() += 1;
        let fault = policy(&method, &path, n);
        match fault {
            Fault::Reset => {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Fault::ServerError => {
                write_500(&mut client)?;
                continue;
            }
            Fault::Conflict => {
                let body = "<?xml version=\"1.0\"?><Error><Code>FileAlreadyExists</Code><Message>The object you \
                            specified already exists and can not be overwritten.</Message></Error>";
                write!(
                    client,
                    "HTTP/1.1 409 Conflict\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
                continue;
            }
            Fault::Slow(pause) => std::thread::sleep(pause),
            Fault::Pass | Fault::LandThenFail | Fault::StripConditional => {}
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        for h in &headers {
            let lower = h.to_ascii_lowercase();
            if fault == Fault::StripConditional && lower.starts_with("if-none-match") {
                continue;
            }
            if !lower.starts_with("content-length") {
                head.push_str(h);
                head.push_str("\r\n");
            }
        }
        head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
        up.write_all(head.as_bytes())?;
        up.write_all(&body)?;
        let mut reply = Vec::new();
        up.read_to_end(&mut reply)?;
        if fault == Fault::LandThenFail {
            write_500(&mut client)?;
            continue;
        }
        // moto answers with Connection: close; pass the reply on and close too.
        client.write_all(&reply)?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
}

fn write_500(client: &mut TcpStream) -> std::io::Result<()> {
    let body = "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>";
    write!(
        client,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn read_exact(reader: &mut impl Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut body = vec![0; n];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        let mut chunk = read_exact(reader, n + 2)?;
        chunk.truncate(n);
        body.extend_from_slice(&chunk);
        if n == 0 {
            return Ok(body);
        }
    }
}
