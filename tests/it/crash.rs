//! kill -9 at any moment of a backup leaves a repository that check passes, and the next
//! backup completes, reusing what the killed one indexed.

use crate::harness::{noise, Env};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spawn_backup(env: &Env, input: &std::path::Path) -> std::process::Child {
    env.spawnable()
        .args(["backup", "stdin", "--name", "crash"])
        .stdin(std::fs::File::open(input).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_during_backup() {
    let env = Env::empty();
    env.cmd().args(["init", "--pack-size", "1MiB", "--chunk-avg", "64KiB"]).assert().success();
    let data = noise(60 << 20, 21);
    let input = env.path("input");
    std::fs::write(&input, &data).unwrap();

    // Kill at fixed moments, then once right after the first index file appears.
    for delay_ms in [50, 300, 900] {
        let mut child = spawn_backup(&env, &input);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        env.cmd().args(["check", "--read-data"]).assert().success();
    }
    let index_files = |env: &Env| crate::harness::walk(&env.repo.join("index")).len();
    let before = index_files(&env);
    let mut child = spawn_backup(&env, &input);
    let started = Instant::now();
    while index_files(&env) == before && started.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    env.cmd().args(["check", "--read-data"]).assert().success();
    assert!(env.snapshots().is_empty() || env.snapshots().len() == 1);

    let report = env.backup_stdin("crash", &data);
    let added = report["added"].as_u64().unwrap();
    assert!(added < data.len() as u64 * 9 / 10, "the backup after the crash re-stored {added} of {} bytes", data.len());
    assert_eq!(env.restore_stdout("latest"), data);
    env.check_read_data();
}

#[test]
fn interrupted_stdin_backup_commits_nothing() {
    let env = Env::new();
    let mut child = env
        .spawnable()
        .args(["backup", "stdin", "--name", "int"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &noise(8 << 20, 5)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    // The producer keeps its end of the pipe open: cairn must still stop.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "cairn did not stop after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    assert_eq!(status.code(), Some(130));
    assert!(env.snapshots().is_empty(), "an interrupted backup committed a snapshot");
    env.check_read_data();
}
