//! Repositories on a real S3 server (moto) on 127.0.0.1: round trips, bad input, faults
//! injected by a proxy, OSS-style virtual-host addressing, and object_store's own
//! conformance suite against the same server.

use crate::harness::{noise, sql_dump, Env};
use crate::s3server::{Fault, FaultProxy, S3Server, ACCESS_KEY, SECRET_KEY};
use object_store::aws::AmazonS3Builder;
use std::time::Duration;

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn s3_round_trip_stream_and_tree() {
    let server = S3Server::start();
    server.create_bucket("backups");
    let env = Env::s3("s3://backups/nightly/host1", &server.endpoint());
    env.cmd().arg("init").assert().success();

    let nights: Vec<Vec<u8>> = (0..3).map(|n| sql_dump(20_000, n)).collect();
    let mut ids = Vec::new();
    for night in &nights {
        ids.push(env.backup_stdin("appdb", night)["id"].as_str().unwrap().to_string());
    }
    for (id, night) in ids.iter().zip(&nights) {
        assert!(env.restore_stdout(id) == *night, "snapshot {id} restores byte-exact from S3");
    }

    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    std::fs::write(tree.join("etc/app/app.conf"), b"listen = 8080\n").unwrap();
    std::fs::write(tree.join("blob.bin"), noise(3 << 20, 7)).unwrap();
    env.cmd().args(["backup", "files", tree.to_str().unwrap(), "--name", "config"]).assert().success();
    let out = env.path("out");
    env.cmd().args(["restore", "latest", "--name", "config", "--to", out.to_str().unwrap()]).assert().success();
    let restored = out.join(tree.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("blob.bin")).unwrap(), noise(3 << 20, 7));
    assert_eq!(std::fs::read(restored.join("etc/app/app.conf")).unwrap(), b"listen = 8080\n");
    env.check_read_data();

    // A second repository under another prefix of the same bucket is independent.
    let other = Env::s3("s3://backups/nightly/host2", &server.endpoint());
    other.cmd().arg("init").assert().success();
    assert!(other.snapshots().is_empty());
    assert_eq!(env.snapshots().len(), 4);
}

#[test]
fn s3_bad_input_names_the_url_and_hides_secrets() {
    let server = S3Server::start();
    server.create_bucket("present");

    // A missing bucket: init writes nothing and says what to check; other commands exit 10.
    let missing = Env::s3("s3://absent-bucket/repo", &server.endpoint());
    let out = missing.cmd().arg("init").assert().code(10).get_output().clone();
    let text = output_text(&out);
    assert!(text.contains("s3://absent-bucket/repo") && text.contains("bucket does not exist"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    let out = missing.cmd().arg("snapshots").assert().code(10).get_output().clone();
    assert!(output_text(&out).contains("absent-bucket"));

    // An unknown scheme.
    let mut bad = Env::s3("ftp://host/repo", &server.endpoint());
    let out = bad.cmd().arg("init").assert().code(1).get_output().clone();
    assert!(output_text(&out).contains("ftp://host/repo") && output_text(&out).contains("s3://BUCKET"));

    // Plain http is refused unless asked for.
    bad.repo = "s3://present/repo".into();
    bad.vars.retain(|(k, _)| k != "AWS_ALLOW_HTTP");
    let out = bad.cmd().arg("init").assert().code(1).get_output().clone();
    let text = output_text(&out);
    assert!(text.contains("s3://present/repo") && text.to_lowercase().contains("http"), "{text}");

    // No password for an existing repository, a wrong one, and verbose output: the secret
    // key never appears.
    let env = Env::s3("s3://present/repo", &server.endpoint());
    env.cmd().arg("-vv").arg("init").assert().success();
    env.backup_stdin("x", b"hello");
    let mut wrong = env.cmd();
    wrong.env("CAIRN_PASSWORD", "wrong");
    let out = wrong.arg("snapshots").assert().code(12).get_output().clone();
    for out in [out, env.cmd().args(["-vv", "snapshots"]).assert().success().get_output().clone()] {
        assert!(!output_text(&out).contains(SECRET_KEY));
    }
}

/// Unknown credentials and read-only credentials (moto checking IAM): one line naming the
/// URL and what to check, exit 1, the secret never shown, and nothing left half-written.
#[test]
fn s3_bad_credentials_and_a_read_only_bucket_fail_cleanly() {
    let (server, writer, reader) = S3Server::start_with_iam();
    let mut env = Env::s3("s3://guarded/repo", &server.endpoint());
    let with_keys = |env: &mut Env, (id, secret): &(String, String)| {
        env.vars.retain(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET"));
        env.vars.push(("AWS_ACCESS_KEY_ID".into(), id.clone()));
        env.vars.push(("AWS_SECRET_ACCESS_KEY".into(), secret.clone()));
    };
    for (who, keys) in [("unknown", (ACCESS_KEY.to_string(), SECRET_KEY.to_string())), ("read-only", reader.clone())] {
        with_keys(&mut env, &keys);
        let out = env.cmd().arg("init").assert().code(1).get_output().clone();
        let text = output_text(&out);
        assert!(
            text.contains("s3://guarded/repo") && text.contains("access denied: check the credentials"),
            "{who}: {text}"
        );
        assert_eq!(text.trim().lines().count(), 1, "{who}: one line: {text}");
        assert!(!text.contains(&keys.1), "{who}: the secret is not shown");
    }
    // Nothing was written: no config (read with boto3; moto in IAM mode rejects the
    // signature of LIST requests now and then, SignatureDoesNotMatch, and `init` lists
    // the location first, so a final `init` here would test moto, not cairn).
    let probed = std::process::Command::new("python3")
        .args([
            "-c",
            "import boto3, sys; s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], \
             aws_secret_access_key=sys.argv[3], region_name='us-east-1')\n\
             try:\n    s3.head_object(Bucket='guarded', Key='repo/config'); print('present')\n\
             except s3.exceptions.ClientError as e:\n    print(e.response['Error']['Code'])",
            &server.endpoint(),
            &writer.0,
            &writer.1,
        ])
        .output()
        .unwrap();
    assert!(probed.status.success(), "{}", String::from_utf8_lossy(&probed.stderr));
    assert_eq!(String::from_utf8_lossy(&probed.stdout).trim(), "404", "no config was written");
}

/// Connection resets, 500s, slow answers and writes that land but report failure:
/// a backup still succeeds and restores byte-exact, and so does the restore itself.
#[test]
fn s3_backup_and_restore_survive_injected_faults() {
    let server = S3Server::start();
    server.create_bucket("flaky");
    let proxy = FaultProxy::start(server.port, |method, _path, n| match n % 10 {
        _ if n < 8 => Fault::Pass, // let init through cleanly
        1 => Fault::Reset,
        3 => Fault::ServerError,
        5 => Fault::Slow(Duration::from_millis(300)),
        7 if method == "PUT" => Fault::LandThenFail,
        _ => Fault::Pass,
    });
    let env = Env::s3("s3://flaky/repo", &proxy.endpoint());
    env.cmd().args(["init", "--pack-size", "1MiB"]).assert().success();
    let data = [noise(6 << 20, 1), sql_dump(30_000, 0)].concat();
    let id = env.backup_stdin("db", &data)["id"].as_str().unwrap().to_string();
    assert!(env.restore_stdout(&id) == data, "restores byte-exact through the faults");
    env.check_read_data();
    assert!(proxy.count("PUT") > 8, "the backup went through the proxy");
}

/// Packs of 64 MiB and more go up as multipart uploads, parts in parallel.
#[test]
fn large_packs_use_multipart_uploads() {
    let server = S3Server::start();
    server.create_bucket("big");
    let proxy = FaultProxy::start(server.port, |_, _, _| Fault::Pass);
    let env = Env::s3("s3://big/repo", &proxy.endpoint());
    env.cmd().args(["init", "--pack-size", "96MiB", "--compression-level", "0"]).assert().success();
    let data = noise(72 << 20, 21);
    let posts_before = proxy.count("POST");
    let id = env.backup_stdin("big", &data)["id"].as_str().unwrap().to_string();
    // CreateMultipartUpload and CompleteMultipartUpload are POSTs; the parts are PUTs.
    assert!(proxy.count("POST") >= posts_before + 2, "a multipart upload happened");
    assert!(env.restore_stdout(&id) == data);
    env.check_read_data();
}

/// A service that is down fails the backup cleanly: exit 1, nothing committed, and the
/// next backup, with the service back, succeeds.
#[test]
fn s3_outage_fails_cleanly_and_next_run_succeeds() {
    let server = S3Server::start();
    server.create_bucket("down");
    let outage = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = outage.clone();
    let proxy = FaultProxy::start(server.port, move |_, _, _| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Fault::ServerError
        } else {
            Fault::Pass
        }
    });
    let env = Env::s3("s3://down/repo", &proxy.endpoint());
    env.cmd().arg("init").assert().success();
    outage.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = env
        .cmd()
        .args(["backup", "stdin", "--name", "db"])
        .write_stdin(noise(1 << 20, 3))
        .timeout(Duration::from_secs(240))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = output_text(&out);
    assert!(text.contains("s3://down/repo"), "{text}");
    outage.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(env.snapshots().is_empty(), "nothing was committed");
    let id = env.backup_stdin("db", &noise(1 << 20, 3))["id"].as_str().unwrap().to_string();
    assert_eq!(env.restore_stdout(&id), noise(1 << 20, 3));
    env.check_read_data();
}

/// A repository `oss://BUCKET/cairn` reached through `proxy` (HTTP_PROXY), as OSS is:
/// the bucket in the host name of an `oss-cn-test` endpoint.
fn oss_env(bucket: &str, proxy: &FaultProxy) -> Env {
    let mut env = Env::empty();
    env.repo = format!("oss://{bucket}/cairn").into();
    env.vars = vec![
        ("OSS_ENDPOINT".into(), "http://oss-cn-test.example.com".into()),
        ("OSS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("OSS_ACCESS_KEY_SECRET".into(), SECRET_KEY.into()),
        ("OSS_ALLOW_HTTP".into(), "true".into()),
        ("HTTP_PROXY".into(), proxy.endpoint()),
        ("http_proxy".into(), proxy.endpoint()),
        ("NO_PROXY".into(), "".into()),
        ("no_proxy".into(), "".into()),
    ];
    env
}

/// oss:// puts the bucket in the host name (OSS refuses path-style requests). The requests
/// go through a proxy (HTTP_PROXY) that records the Host headers and forwards to moto,
/// which reads the bucket from the host as OSS does.
#[test]
fn oss_uses_virtual_host_addressing() {
    let server = S3Server::start();
    server.create_bucket("ossbucket");
    let proxy = FaultProxy::start(server.port, |_, _, _| Fault::Pass);
    let env = oss_env("ossbucket", &proxy);
    env.cmd().arg("init").assert().success();
    let data = sql_dump(5_000, 1);
    let id = env.backup_stdin("db", &data)["id"].as_str().unwrap().to_string();
    assert!(env.restore_stdout(&id) == data);
    let hosts = proxy.hosts.lock().unwrap().clone();
    assert!(!hosts.is_empty());
    assert!(hosts.iter().all(|h| h == "ossbucket.oss-cn-test.example.com"), "virtual-host requests only: {hosts:?}");
}

/// A lost reply to a multipart upload's final request, with OSS's behaviour: the retry
/// of the completion is refused (NoSuchUpload from moto; 409 FileAlreadyExists from OSS,
/// emulated here for every later completion). The pack is stored intact, so the backup
/// reads it back and succeeds instead of failing with "NoSuchUpload" or 409.
#[test]
fn a_lost_reply_to_a_multipart_completion_is_resolved_on_oss() {
    let server = S3Server::start();
    server.create_bucket("ossbig");
    let completions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = completions.clone();
    let proxy = FaultProxy::start(server.port, move |method, path, _| {
        if method == "POST" && path.contains("uploadId") {
            return match seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Fault::LandThenFail,
                _ => Fault::Conflict,
            };
        }
        Fault::Pass
    });
    let env = oss_env("ossbig", &proxy);
    env.cmd().args(["init", "--pack-size", "96MiB", "--compression-level", "0"]).assert().success();
    let data = noise(72 << 20, 23);
    let id = env.backup_stdin("big", &data)["id"].as_str().unwrap().to_string();
    assert!(completions.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the completion was retried");
    assert!(env.restore_stdout(&id) == data);
    env.check_read_data();
}

/// object_store's own conformance suite, run against the S3 server the same way cairn
/// talks to it (with conditional writes).
#[tokio::test]
async fn object_store_conformance_on_s3() {
    let server = S3Server::start();
    server.create_bucket("conformance");
    let store = AmazonS3Builder::new()
        .with_bucket_name("conformance")
        .with_region("us-east-1")
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .unwrap();
    use object_store::integration::*;
    put_get_delete_list(&store).await;
    get_opts(&store).await;
    // Not `put_opts`: it races 50 `If-Match` updates of one object, which moto does not
    // serialize (seen under load: 49 of 50 counted). cairn never updates an object
    // conditionally; its create-only writes are tested by the probe every removal run
    // makes and by the strip-conditional and lost-reply tests here.
    list_uses_directories_correctly(&store).await;
    list_with_delimiter(&store).await;
    rename_and_copy(&store).await;
    stream_get(&store).await;
    multipart(&store, &store).await;
}

/// A snapshot written whose every reply is lost (each attempt lands, then the answer is
/// a 500) is read back: the backup reports it committed, exit 0, and it restores. A
/// snapshot write that never lands is reported as failed and nothing is listed.
#[test]
fn a_lost_reply_to_the_snapshot_write_is_resolved_by_reading_it_back() {
    let server = S3Server::start();
    server.create_bucket("lost");
    let mode = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let flag = mode.clone();
    let proxy = FaultProxy::start(server.port, move |method, path, _| {
        match (method, path.contains("/snapshots/"), flag.load(std::sync::atomic::Ordering::SeqCst)) {
            ("PUT", true, 1) => Fault::LandThenFail,
            ("PUT", true, 2) => Fault::Reset,
            _ => Fault::Pass,
        }
    });
    let env = Env::s3("s3://lost/repo", &proxy.endpoint());
    env.cmd().arg("init").assert().success();
    mode.store(1, std::sync::atomic::Ordering::SeqCst);
    let data = noise(1 << 20, 31);
    let out = env
        .cmd()
        .args(["--json", "backup", "stdin", "--name", "db"])
        .write_stdin(data.clone())
        .timeout(Duration::from_secs(240))
        .assert()
        .success()
        .get_output()
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["id"].as_str().unwrap().to_string();
    mode.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(env.snapshots().len(), 1);
    assert!(env.restore_stdout(&id) == data, "the snapshot reported committed restores");

    mode.store(2, std::sync::atomic::Ordering::SeqCst);
    let out = env
        .cmd()
        .args(["backup", "stdin", "--name", "db2"])
        .write_stdin(noise(1 << 20, 32))
        .timeout(Duration::from_secs(240))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = output_text(&out);
    assert!(text.contains("snapshots/") && text.contains("s3://lost/repo"), "{text}");
    mode.store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(env.snapshots().len(), 1, "the write that never landed committed nothing");
    env.check_read_data();
}

/// Storage that stops honouring create-only writes after `init` (here a proxy that
/// drops `If-None-Match`) is found by the probe every removal run makes first: prune
/// refuses with one line, before it writes anything.
#[test]
fn removal_refuses_storage_that_stopped_honouring_create_only_writes() {
    let server = S3Server::start();
    server.create_bucket("lax");
    let direct = Env::s3("s3://lax/repo", &server.endpoint());
    direct.cmd().arg("init").assert().success();
    direct.backup_stdin("db", &noise(1 << 20, 33));
    let proxy = FaultProxy::start(server.port, |_, _, _| Fault::StripConditional);
    let env = Env::s3("s3://lax/repo", &proxy.endpoint());
    let out = env.cmd().arg("prune").assert().failure().get_output().clone();
    let text = output_text(&out);
    assert!(text.contains("create-only") && text.contains("nothing was deleted"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
    // The refused run wrote no generation: the next one fences 1 and publishes 2.
    let out = direct.cmd().args(["--json", "prune"]).assert().success().get_output().clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["generation"], 2, "{report}");
}

/// `check` reads each metadata pack whole once instead of every tree blob on its own:
/// a tree of 40 directories (each a tree blob of its own) costs a handful of GETs.
#[test]
fn check_reads_metadata_packs_whole_not_tree_by_tree() {
    let server = S3Server::start();
    server.create_bucket("trees");
    let proxy = FaultProxy::start(server.port, |_, _, _| Fault::Pass);
    let env = Env::s3("s3://trees/repo", &proxy.endpoint());
    env.cmd().arg("init").assert().success();
    let tree = env.path("tree");
    for d in 0..40 {
        let dir = tree.join(format!("dir-{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            std::fs::write(dir.join(format!("file-with-a-longish-name-{f:03}.conf")), format!("{d} {f}\n")).unwrap();
        }
    }
    env.cmd().args(["backup", "files", tree.to_str().unwrap(), "--name", "etc"]).assert().success();
    let before = proxy.count("GET");
    env.cmd().arg("check").assert().success();
    let gets = proxy.count("GET") - before;
    // config, a key slot, one index file, one snapshot, the metadata pack(s), and the
    // generation/catalog reads of opening: far fewer than the 40 trees.
    eprintln!("check of a tree of 40 directories: {gets} GETs");
    assert!(gets <= 12, "check made {gets} GETs for a tree of 40 directories");
}
