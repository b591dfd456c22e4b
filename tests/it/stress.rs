//! Many processes at once, as a fleet of hosts writing into one repository would: two
//! back-to-back removal loops (`prune`, and `forget --keep-last 1 --prune`) race three
//! writers that each have their own cache, round after round, on a local directory and on
//! the S3 server. Writers reuse what the previous rounds stored (and forgets made
//! unreferenced). Every writer must either commit (exit 0) or lose a race cleanly (exit
//! 11); after each round, with the loops paused, every snapshot a writer reported
//! committed that no forget removed restores byte for byte, the newest of each writer is
//! there, and `check --read-data` passes.

use crate::harness::{noise, Env};
use crate::s3server::S3Server;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Round `round` of writer `w`: 2 MiB shared with the neighbouring round (reused from a
/// snapshot a forget may just have dropped) and 1 MiB of its own.
fn input(round: u64, w: u64) -> Vec<u8> {
    [noise(2 << 20, 7000 + round / 2), noise(1 << 20, 8000 + round * 10 + w)].concat()
}

/// A loop running `args` back to back, with its own cache, until stopped; it pauses while
/// `paused` is set (after its current run). Returns how each exit code occurred.
fn removal_loop(
    env: &Env,
    cache: &str,
    args: &'static [&'static str],
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    idle: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<HashMap<i32, usize>> {
    let mut cmd = env.spawnable();
    cmd.env("CAIRN_CACHE_DIR", env.path(cache)).args(args);
    std::thread::spawn(move || {
        let mut codes: HashMap<i32, usize> = HashMap::new();
        while !stop.load(Ordering::SeqCst) {
            if paused.load(Ordering::SeqCst) {
                idle.fetch_add(1, Ordering::SeqCst);
                while paused.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                idle.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let out = cmd.output().unwrap();
            let code = out.status.code().unwrap_or(-1);
            let text = String::from_utf8_lossy(&out.stderr).to_string();
            // 0, or a removal that lost a race with the other loop: nothing else.
            assert!(code == 0 || code == 11, "{args:?} exited {code}: {text}");
            if code == 11 {
                assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
            }
            *codes.entry(code).or_default() += 1;
        }
        codes
    })
}

fn stress(env: &Env, budget: Duration) {
    env.cmd().args(["init", "--pack-size", "1M"]).assert().success();
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let idle = Arc::new(AtomicUsize::new(0));
    let loops = [
        removal_loop(env, "cache-p1", &["-q", "prune"], stop.clone(), paused.clone(), idle.clone()),
        removal_loop(
            env,
            "cache-p2",
            &["-q", "forget", "--keep-last", "1", "--prune"],
            stop.clone(),
            paused.clone(),
            idle.clone(),
        ),
    ];
    let committed: Mutex<Vec<(String, u64, u64)>> = Mutex::new(Vec::new());
    let (mut lost, mut rounds) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < budget || rounds < 3 {
        let round = rounds as u64;
        let results: Vec<(u64, i32, String)> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..3u64)
                .map(|w| {
                    let mut cmd = env.spawnable();
                    cmd.env("CAIRN_CACHE_DIR", env.path(&format!("cache-w{w}")))
                        .args(["--json", "backup", "stdin", "--name", &format!("w{w}")])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped());
                    scope.spawn(move || {
                        use std::io::Write;
                        let mut child = cmd.spawn().unwrap();
                        let data = input(round, w);
                        let mut stdin = child.stdin.take().unwrap();
                        // A producer that takes a moment, as pg_dump does.
                        for piece in data.chunks(256 << 10) {
                            if stdin.write_all(piece).is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(15));
                        }
                        drop(stdin);
                        let out = child.wait_with_output().unwrap();
                        let code = out.status.code().unwrap_or(-1);
                        match code {
                            0 => (w, code, String::from_utf8_lossy(&out.stdout).to_string()),
                            _ => (w, code, String::from_utf8_lossy(&out.stderr).to_string()),
                        }
                    })
                })
                .collect();
            writers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (w, code, text) in results {
            match code {
                0 => {
                    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
                    committed.lock().unwrap().push((report["id"].as_str().unwrap().to_string(), round, w));
                }
                11 => {
                    assert!(text.contains("nothing was committed"), "a lost race says so: {text}");
                    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
                    lost += 1;
                }
                _ => panic!("writer {w} of round {round} exited {code}: {text}"),
            }
        }
        // Pause the loops, then verify.
        paused.store(true, Ordering::SeqCst);
        while idle.load(Ordering::SeqCst) < loops.len() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let present: Vec<String> = env.snapshots().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
        let committed = committed.lock().unwrap();
        for w in 0..3 {
            if let Some((id, _, _)) = committed.iter().rev().find(|(_, _, cw)| *cw == w) {
                assert!(present.contains(id), "writer {w}'s newest snapshot {id} was kept (keep-last 1)");
            }
        }
        for (id, r, w) in committed.iter().filter(|(id, _, _)| present.contains(id)) {
            assert!(env.restore_stdout(id) == input(*r, *w), "snapshot {id} (round {r}, writer {w}) restores");
        }
        env.check_read_data();
        paused.store(false, Ordering::SeqCst);
        rounds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    paused.store(false, Ordering::SeqCst);
    let codes: Vec<HashMap<i32, usize>> = loops.into_iter().map(|h| h.join().unwrap()).collect();
    let runs: usize = codes.iter().flat_map(|c| c.values()).sum();
    let committed = committed.lock().unwrap().len();
    eprintln!(
        "{rounds} rounds: {committed} writers committed, {lost} lost a race cleanly; removal runs by exit code: {codes:?}"
    );
    assert!(runs >= rounds * 2, "the removal loops ran ({runs} runs in {rounds} rounds)");
    assert!(committed * 2 > rounds * 3, "most writers commit ({committed} of {})", rounds * 3);
    // Nothing is left that a prune, with no writer running, would not free at once.
    env.cmd().args(["forget", "--keep-last", "1", "--prune"]).assert().success();
    let out = env.cmd().args(["--json", "prune"]).assert().success();
    let last: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let report = &last["report"];
    assert_eq!(report["deleted_packs"], report["marked_packs"], "what it marked it freed at once: {last}");
    assert_eq!((report["waiting_packs"].as_u64(), report["protected_packs"].as_u64()), (Some(0), Some(0)), "{last}");
    // Nothing unreferenced was left (repacking aside: which of two copies is a blob's home
    // can move between runs, so a later run may repack again).
    let out = env.cmd().args(["--json", "prune", "--max-unused", "unlimited"]).assert().success();
    let again: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(again["report"]["marked_packs"], 0, "nothing was left: {again}");
    env.check_read_data();
}

#[test]
fn prune_loops_race_three_writers_on_a_local_directory() {
    stress(&Env::empty(), Duration::from_secs(25));
}

#[test]
fn prune_loops_race_three_writers_on_s3() {
    let server = S3Server::start();
    server.create_bucket("fleet");
    stress(&Env::s3("s3://fleet/repo", &server.endpoint()), Duration::from_secs(25));
}
