//! `cairn copy` between local and S3 repositories (moto on 127.0.0.1), and OSS.

use crate::harness::{noise, sql_dump, Env, PASSWORD};
use crate::s3server::{Fault, FaultProxy, S3Server, ACCESS_KEY, SECRET_KEY};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn copy_json(from: &Env, to: &Env, extra: &[&str]) -> serde_json::Value {
    let mut cmd = from.cmd();
    cmd.env("CAIRN_TO_PASSWORD", PASSWORD).envs(to.vars.iter().map(|(k, v)| (k, v)));
    let out = cmd.args(["--json", "copy", "--to", to.repo.to_str().unwrap()]).args(extra).assert().success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

fn init_like(from: &Env, to: &Env) {
    let mut cmd = to.cmd();
    cmd.env("CAIRN_FROM_PASSWORD", PASSWORD).envs(from.vars.iter().map(|(k, v)| (k, v)));
    cmd.args(["init", "--copy-settings-from", from.repo.to_str().unwrap()]).assert().success();
}

/// local → S3 → local with shared settings: byte-exact restores, re-runs send nothing,
/// and a new night sends only what changed. Then S3 → OSS (virtual-host addressing).
#[test]
fn copy_local_to_s3_to_local_and_on_to_oss() {
    let server = S3Server::start();
    server.create_bucket("offsite");
    server.create_bucket("ossbucket");
    let local = Env::new();
    let nights: Vec<Vec<u8>> = (0..2).map(|n| sql_dump(40_000, n)).collect();
    local.backup_stdin("appdb", &nights[0]);
    let tree = local.path("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/app.conf"), b"port = 5432\n").unwrap();
    std::fs::write(tree.join("data.bin"), noise(2 << 20, 5)).unwrap();
    local.cmd().args(["backup", "files", tree.to_str().unwrap(), "--name", "config"]).assert().success();

    let s3 = Env::s3("s3://offsite/cairn", &server.endpoint());
    init_like(&local, &s3);
    let first = copy_json(&local, &s3, &[]);
    assert_eq!(first["copied"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["same_ids"], true);
    assert!(first["packs_verified"].as_u64().unwrap() >= 1, "{first}");
    let sent_first = first["bytes_sent"].as_u64().unwrap();

    // Again: nothing to do.
    let again = copy_json(&local, &s3, &[]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 2);
    assert_eq!(again["bytes_sent"], 0);

    // A new night: only its changes travel.
    local.backup_stdin("appdb", &nights[1]);
    let third = copy_json(&local, &s3, &["--name", "appdb"]);
    assert_eq!(third["copied"].as_array().unwrap().len(), 1);
    let sent = third["bytes_sent"].as_u64().unwrap();
    assert!(sent * 5 < sent_first, "incremental copy sent {sent} bytes, the first {sent_first}");

    for (i, night) in nights.iter().enumerate() {
        let snaps: Vec<_> = s3.snapshots().into_iter().filter(|s| s["name"] == "appdb").collect();
        let id = snaps[i]["id"].as_str().unwrap();
        assert!(s3.restore_stdout(id) == *night, "night {i} restores from S3");
    }
    s3.check_read_data();

    // Back down to a fresh local repository, and across to OSS.
    let back = Env::empty();
    init_like(&s3, &back);
    copy_json(&s3, &back, &[]);
    let out = back.path("out");
    back.cmd().args(["restore", "latest", "--name", "config", "--to", out.to_str().unwrap()]).assert().success();
    let restored = out.join(tree.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("data.bin")).unwrap(), noise(2 << 20, 5));
    assert_eq!(std::fs::read(restored.join("etc/app.conf")).unwrap(), b"port = 5432\n");
    assert!(
        back.cmd().args(["restore", "latest", "--name", "appdb", "--stdout"]).output().unwrap().stdout == nights[1]
    );

    let proxy = FaultProxy::start(server.port, |_, _, _| Fault::Pass);
    let mut oss = Env::empty();
    oss.repo = "oss://ossbucket/cairn".into();
    oss.vars = vec![
        ("OSS_ENDPOINT".into(), "http://oss-cn-test.example.com".into()),
        ("OSS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
        ("OSS_ACCESS_KEY_SECRET".into(), SECRET_KEY.into()),
        ("OSS_ALLOW_HTTP".into(), "true".into()),
        ("HTTP_PROXY".into(), proxy.endpoint()),
        ("NO_PROXY".into(), "".into()),
        ("no_proxy".into(), "".into()),
    ];
    init_like(&s3, &oss);
    let mut cmd = s3.cmd();
    cmd.env("CAIRN_TO_PASSWORD", PASSWORD).envs(oss.vars.iter().map(|(k, v)| (k, v)));
    // The source is S3 on loopback: it must not go through the proxy meant for OSS.
    cmd.env("NO_PROXY", "127.0.0.1").env("no_proxy", "127.0.0.1");
    cmd.args(["copy", "--to", "oss://ossbucket/cairn"]).assert().success();
    assert_eq!(oss.snapshots().len(), 3);
    assert!(oss.cmd().args(["restore", "latest", "--name", "appdb", "--stdout"]).output().unwrap().stdout == nights[1]);
    oss.check_read_data();
}

/// Without shared settings the destination names blobs with its own key: the copy
/// rebuilds trees and stream nodes, and everything still restores byte-exact.
#[test]
fn copy_to_an_unrelated_repository_reidentifies_blobs() {
    let src = Env::new();
    let data = noise(3 << 20, 8);
    src.backup_stdin("blob", &data);
    let tree = src.path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a.txt"), b"alpha\n").unwrap();
    std::fs::write(tree.join("b.bin"), noise(1 << 20, 9)).unwrap();
    src.cmd().args(["backup", "files", tree.to_str().unwrap(), "--name", "t"]).assert().success();
    let dst = Env::new();
    let report = copy_json(&src, &dst, &[]);
    assert_eq!(report["same_ids"], false);
    assert_eq!(report["copied"].as_array().unwrap().len(), 2);
    let first = dst.snapshots()[0]["id"].as_str().unwrap().to_string();
    assert!(dst.restore_stdout(&first) == data);
    let out = dst.path("out");
    dst.cmd().args(["restore", "latest", "--name", "t", "--to", out.to_str().unwrap()]).assert().success();
    let restored = out.join(tree.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("sub/a.txt")).unwrap(), b"alpha\n");
    assert_eq!(std::fs::read(restored.join("b.bin")).unwrap(), noise(1 << 20, 9));
    dst.check_read_data();
    assert_eq!(copy_json(&src, &dst, &[])["copied"].as_array().unwrap().len(), 0, "a re-run skips both");
}

/// A copy killed mid-way (SIGKILL: no chance to write its index) is finished by the next
/// run, which reuses the packs that already arrived instead of sending them again.
#[test]
fn a_killed_copy_resumes_without_resending() {
    let src = Env::new();
    let data = noise(48 << 20, 10);
    src.cmd().args(["backup", "stdin", "--name", "big"]).write_stdin(data.clone()).assert().success();
    let dst = Env::empty();
    init_like(&src, &dst);

    let mut child = src
        .spawnable()
        .env("CAIRN_TO_PASSWORD", PASSWORD)
        .env("CAIRN_CONNECTIONS", "1")
        .args(["copy", "--to", dst.repo.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::harness::walk(&dst.repo.join("data")).len() < 2 {
        assert!(Instant::now() < deadline, "the copy never wrote a pack");
        assert!(child.try_wait().unwrap().is_none(), "the copy finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dst.snapshots().is_empty(), "a killed copy commits nothing");

    let resumed = copy_json(&src, &dst, &[]);
    assert!(resumed["packs_adopted"].as_u64().unwrap() >= 1, "{resumed}");
    assert!(resumed["bytes_sent"].as_u64().unwrap() < data.len() as u64, "{resumed}");
    assert!(dst.restore_stdout("latest") == data);
    dst.check_read_data();
}
