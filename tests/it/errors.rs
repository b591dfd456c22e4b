//! Damage and bad input: tampered, truncated and missing objects; a full disk.

use crate::harness::{noise, Env};
use predicates::prelude::*;

fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn tampered_pack_is_found_and_named() {
    let env = Env::new();
    let snap = env.backup_stdin("d", &noise(4 << 20, 2));
    env.cmd().arg("check").assert().success();
    let data_pack = env.packs().into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    flip_byte(&data_pack, 1000);
    let pack_name = data_pack.file_name().unwrap().to_string_lossy().to_string();
    let short = &snap["id"].as_str().unwrap()[..8];
    env.cmd()
        .args(["check", "--read-data"])
        .assert()
        .code(13)
        .stderr(predicate::str::contains(pack_name.as_str()).and(predicate::str::contains(short)));
    // Restore refuses to produce wrong output.
    env.cmd()
        .args(["restore", "latest", "--stdout"])
        .assert()
        .code(13)
        .stderr(predicate::str::contains("authentication failed"));
}

#[test]
fn missing_pack_and_subset_reads() {
    let env = Env::new();
    env.backup_stdin("d", &noise(3 << 20, 3));
    env.cmd().args(["check", "--read-data-subset", "1/1"]).assert().success();
    env.cmd().args(["check", "--read-data-subset", "50%"]).assert().success();
    env.cmd().args(["check", "--read-data-subset", "3/2"]).assert().code(2);
    let pack = env.packs()[0].clone();
    std::fs::remove_file(&pack).unwrap();
    let name = pack.file_name().unwrap().to_string_lossy().to_string();
    env.cmd().arg("check").assert().code(13).stderr(predicate::str::contains(format!("pack {name} is missing")));
}

#[test]
fn truncated_snapshot_and_index_are_named() {
    let env = Env::new();
    env.backup_stdin("d", b"some data");
    let snapshot = crate::harness::walk(&env.repo.join("snapshots"))[0].clone();
    let bytes = std::fs::read(&snapshot).unwrap();
    std::fs::write(&snapshot, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let name = snapshot.file_name().unwrap().to_string_lossy().to_string();
    // Listing leaves it out with a warning naming it (tests/it/repair.rs); check fails.
    env.cmd().arg("snapshots").assert().success().stderr(predicate::str::contains(name.as_str()));
    env.cmd().arg("check").assert().code(13).stderr(predicate::str::contains(name.as_str()));
    std::fs::write(&snapshot, &bytes).unwrap();

    let index = crate::harness::walk(&env.repo.join("index"))[0].clone();
    flip_byte(&index, 40);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    let name = index.file_name().unwrap().to_string_lossy().to_string();
    env.cmd().arg("check").assert().code(13).stderr(predicate::str::contains(name.as_str()));
}

#[test]
fn bad_snapshot_ids() {
    let env = Env::new();
    env.backup_stdin("d", b"x");
    env.cmd().args(["restore", "abc", "--stdout"]).assert().code(1).stderr(predicate::str::contains("at least 8 hex"));
    env.cmd()
        .args(["restore", "00000000", "--stdout"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no snapshot with id prefix"));
    env.cmd()
        .args(["restore", "latest", "--name", "nope", "--stdout"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no snapshot matches"));
    env.cmd()
        .args(["restore", "latest", "--tar", "-"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is a stream"));
}

/// A real full disk: a 24 MiB tmpfs. Skipped where mounting is not allowed.
#[test]
fn disk_full_fails_cleanly_and_leaves_a_valid_repository() {
    let env = Env::empty();
    let mount = env.path("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&mount).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mount.clone());
    let repo = mount.join("repo");
    env.cmd().env("CAIRN_REPO", &repo).arg("init").assert().success();
    env.cmd()
        .env("CAIRN_REPO", &repo)
        .args(["backup", "stdin", "--name", "small"])
        .write_stdin(noise(1 << 20, 1))
        .assert()
        .success();
    env.cmd()
        .env("CAIRN_REPO", &repo)
        .args(["backup", "stdin", "--name", "huge"])
        .write_stdin(noise(40 << 20, 2))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("disk is full").and(predicate::str::contains("nothing was committed")));
    env.cmd().env("CAIRN_REPO", &repo).args(["check", "--read-data"]).assert().success();
    let out = env.cmd().env("CAIRN_REPO", &repo).args(["--json", "snapshots"]).assert().success();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(list.len(), 1, "no snapshot for the failed backup");
}

/// A file whose bytes equal a tree blob shares its id; check must not call that damage.
#[test]
fn data_equal_to_a_tree_blob_is_not_damage() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("b-empty")).unwrap();
    std::fs::write(src.join("a.json"), r#"{"nodes":[]}"#).unwrap();
    env.cmd().args(["backup", "files"]).arg(&src).assert().success();
    env.check_read_data();
}

#[test]
fn an_unreadable_key_slot_does_not_lock_out_the_others() {
    let env = Env::new();
    std::fs::write(env.repo.join("keys").join("0".repeat(64)), b"{ not a key slot").unwrap();
    env.cmd().arg("snapshots").assert().success();
    env.cmd()
        .env("CAIRN_PASSWORD", "wrong")
        .arg("snapshots")
        .assert()
        .code(12)
        .stderr(predicate::str::contains("1 unreadable slots skipped"));
}

#[test]
fn a_key_file_of_another_repository_is_refused() {
    let one = Env::empty();
    let key = one.path("one.key");
    one.cmd().env_remove("CAIRN_PASSWORD").arg("--key-file").arg(&key).arg("init").assert().success();
    one.cmd()
        .env_remove("CAIRN_PASSWORD")
        .arg("--key-file")
        .arg(&key)
        .args(["backup", "stdin", "--name", "k"])
        .write_stdin("x")
        .assert()
        .success();
    let two = Env::new();
    two.cmd().env_remove("CAIRN_PASSWORD").arg("--key-file").arg(&key).arg("snapshots").assert().code(12);
}
