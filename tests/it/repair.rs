//! Damage contained, and the index repaired: one unreadable snapshot or index object does
//! not hide the rest (listing and restoring the others works from a fresh cache, with a
//! warning naming it), `check` and `prune` still refuse, and `cairn repair index` rebuilds
//! the index from the packs' own headers.

use crate::harness::{noise, walk, Env};
use std::path::{Path, PathBuf};

fn flip(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn index_files(env: &Env) -> Vec<PathBuf> {
    walk(&env.repo.join("index"))
}

/// `cairn` with a cache of its own that nothing has filled yet.
fn fresh(env: &Env, name: &str) -> assert_cmd::Command {
    let mut cmd = env.cmd();
    cmd.env("CAIRN_CACHE_DIR", env.path(name));
    cmd
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn repair_json(env: &Env, dry_run: bool) -> serde_json::Value {
    let mut cmd = fresh(env, "cache-repair");
    cmd.args(["--json", "repair", "index"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    serde_json::from_slice(&cmd.assert().success().get_output().stdout).unwrap()
}

#[test]
fn a_damaged_snapshot_object_hides_no_other_snapshot() {
    let env = Env::new();
    let (a, b) = (noise(1 << 20, 61), noise(1 << 20, 62));
    let a_id = env.backup_stdin("a", &a)["id"].as_str().unwrap().to_string();
    env.backup_stdin("b", &b);
    flip(&env.repo.join("snapshots").join(&a_id), 40);
    let out = fresh(&env, "cache-1").args(["--json", "snapshots"]).assert().success().get_output().clone();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 1, "the readable snapshot is listed");
    assert_eq!(listed[0]["name"], "b");
    let warning = stderr(&out);
    assert!(warning.contains(&format!("snapshots/{a_id}")) && warning.contains("cairn check"), "{warning}");
    let out = fresh(&env, "cache-2").args(["restore", "latest", "--name", "b", "--stdout"]).assert().success();
    assert!(out.get_output().stdout == b, "the other snapshot restores");
    fresh(&env, "cache-3").arg("check").assert().code(13);
    fresh(&env, "cache-4").arg("prune").assert().code(13);
}

#[test]
fn a_damaged_index_file_is_contained_and_repair_index_rebuilds_it() {
    let env = Env::new();
    let (a, b) = (noise(2 << 20, 63), noise(2 << 20, 64));
    env.backup_stdin("a", &a);
    let before: Vec<PathBuf> = index_files(&env);
    env.backup_stdin("b", &b);
    let b_file = index_files(&env).into_iter().find(|f| !before.contains(f)).unwrap();
    let b_key = format!("index/{}", b_file.file_name().unwrap().to_string_lossy());
    flip(&b_file, 40);

    // Listed from a fresh cache with a warning; what the other index file covers restores.
    let out = fresh(&env, "cache-1").args(["--json", "snapshots"]).assert().success().get_output().clone();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), 2);
    let warning = stderr(&out);
    assert!(warning.contains(&b_key) && warning.contains("cairn repair index"), "{warning}");
    let out = fresh(&env, "cache-2").args(["restore", "latest", "--name", "a", "--stdout"]).assert().success();
    assert!(out.get_output().stdout == a);
    fresh(&env, "cache-3").arg("check").assert().code(13);
    let out = fresh(&env, "cache-4").arg("prune").assert().code(13).get_output().clone();
    assert!(stderr(&out).contains(&b_key), "prune names what stops it: {}", stderr(&out));

    // A dry run says what it would do and changes nothing.
    let dry = repair_json(&env, true);
    assert!(dry["report"]["adopted_packs"].as_u64().unwrap() >= 1, "{dry}");
    assert_eq!(dry["report"]["deleted_damaged_files"], serde_json::json!([b_key]), "{dry}");
    assert!(b_file.exists());
    let done = repair_json(&env, false);
    assert_eq!(done["report"]["adopted_packs"], dry["report"]["adopted_packs"], "{done}");
    assert!(!b_file.exists(), "the damaged file is gone");
    env.cmd().args(["check", "--read-data"]).assert().success();
    assert!(
        fresh(&env, "cache-5")
            .args(["restore", "latest", "--name", "b", "--stdout"])
            .assert()
            .success()
            .get_output()
            .stdout
            == b
    );
    fresh(&env, "cache-6").arg("prune").assert().success();
    let again = repair_json(&env, false);
    assert_eq!(again["report"]["adopted_packs"], 0, "nothing left to repair: {again}");
}

#[test]
fn repair_index_drops_entries_of_missing_packs() {
    let env = Env::new();
    env.cmd().args(["init", "--pack-size", "1M"]).assert().failure(); // already initialised
    let keep = noise(1 << 20, 65);
    env.backup_stdin("keep", &keep);
    let packs_before = env.packs();
    env.backup_stdin("lost", &noise(3 << 20, 66));
    let lost: Vec<PathBuf> = env.packs().into_iter().filter(|p| !packs_before.contains(p)).collect();
    std::fs::remove_file(&lost[0]).unwrap();
    fresh(&env, "cache-1").arg("check").assert().code(13);
    let done = repair_json(&env, false);
    let dropped = done["report"]["dropped_packs"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{done}");
    assert_eq!(dropped[0].as_str().unwrap(), lost[0].file_name().unwrap().to_string_lossy());
    // The index no longer lists it; the snapshot that needed it is still damaged (check
    // says so), and the other one restores.
    let again = repair_json(&env, true);
    assert!(again["report"]["dropped_packs"].as_array().unwrap().is_empty(), "{again}");
    assert!(
        fresh(&env, "cache-2")
            .args(["restore", "latest", "--name", "keep", "--stdout"])
            .assert()
            .success()
            .get_output()
            .stdout
            == keep
    );
    let out = fresh(&env, "cache-3").arg("check").assert().code(13).get_output().clone();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pack is missing"), "{:?}", out);
}

/// A damaged coverage record (what `check --read-data` last read) is named by the next
/// check, which still reads and verifies every pack, and `stats` still works.
#[test]
fn a_damaged_coverage_record_is_named_and_blocks_nothing() {
    let env = Env::new();
    env.backup_stdin("a", &noise(1 << 20, 67));
    env.check_read_data();
    let record = walk(&env.repo.join("coverage")).into_iter().next().expect("check wrote a coverage record");
    flip(&record, 40);
    let out = env.cmd().args(["--json", "check", "--read-data"]).assert().code(13).get_output().clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = format!("{report}");
    assert!(text.contains(record.file_name().unwrap().to_str().unwrap()), "{text}");
    assert!(report["packs_read"].as_u64().unwrap() >= 1, "every pack is still read: {text}");
    env.cmd().arg("stats").assert().success();
}

/// Packs lost for good: `repair index` drops their entries, then `repair snapshots`
/// rewrites the tree snapshot without the file whose data is gone (everything else
/// restores) and quarantines the stream snapshot that has a gap; afterwards check and
/// prune pass again. A dry run only reports.
#[test]
fn repair_snapshots_cuts_what_was_lost_and_quarantines_broken_streams() {
    let env = Env::empty();
    env.cmd().args(["init", "--pack-size", "1M"]).assert().success();
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    std::fs::write(tree.join("etc/app/keep.conf"), noise(100_000, 70)).unwrap();
    std::fs::write(tree.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    let backup = || {
        env.cmd().args(["backup", "files", tree.to_str().unwrap(), "--name", "etc"]).assert().success();
    };
    backup();
    let before = env.packs();
    std::fs::write(tree.join("etc/app/lost.bin"), noise(3 << 20, 71)).unwrap();
    backup();
    let stream_before = env.packs();
    let stream_id = env.backup_stdin("dump", &noise(3 << 20, 72))["id"].as_str().unwrap().to_string();
    // The big new packs of each backup hold only lost.bin's and the dump's data.
    for pack in env.packs() {
        let big = std::fs::metadata(&pack).unwrap().len() > 200_000;
        if big && !before.contains(&pack) {
            std::fs::remove_file(&pack).unwrap();
        }
    }
    assert!(stream_before.len() > before.len());
    fresh(&env, "cache-1").arg("check").assert().code(13);
    repair_json(&env, false);

    let out = fresh(&env, "cache-2").args(["--json", "repair", "snapshots", "--dry-run"]).assert().success();
    let dry: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let listed = dry["snapshots"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{dry}");
    assert_eq!(env.snapshots().len(), 3, "a dry run changes nothing");

    let out = fresh(&env, "cache-3").args(["--json", "repair", "snapshots"]).assert().success();
    let done: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rewritten = done["snapshots"].as_array().unwrap().iter().find(|r| r["action"] == "rewritten").unwrap().clone();
    let cut = rewritten["cut"].as_array().unwrap();
    assert_eq!(cut.len(), 1, "{done}");
    assert!(cut[0].as_str().unwrap().contains("etc/app/lost.bin"), "{done}");
    let quarantined =
        done["snapshots"].as_array().unwrap().iter().find(|r| r["action"] == "quarantined").unwrap().clone();
    assert_eq!(quarantined["id"].as_str().unwrap(), stream_id);
    assert!(env.repo.join("quarantine/snapshots").join(&stream_id).exists());

    // Two snapshots of the tree remain; the repaired one restores all but the lost file.
    let names: Vec<String> = env.snapshots().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["etc", "etc"]);
    let new_id = rewritten["new_id"].as_str().unwrap();
    let out_dir = env.path("out");
    fresh(&env, "cache-4").args(["restore", new_id, "--to", out_dir.to_str().unwrap()]).assert().success();
    let restored = out_dir.join(tree.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(restored.join("etc/app/keep.conf")).unwrap(), noise(100_000, 70));
    assert_eq!(std::fs::read(restored.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert!(!restored.join("etc/app/lost.bin").exists());
    env.cmd().args(["check", "--read-data"]).assert().success();
    fresh(&env, "cache-5").arg("prune").assert().success();
    let again = fresh(&env, "cache-6").args(["--json", "repair", "snapshots"]).assert().success();
    let again: serde_json::Value = serde_json::from_slice(&again.get_output().stdout).unwrap();
    assert!(again["snapshots"].as_array().unwrap().is_empty(), "{again}");
}

/// Index entries of packs that are gone and that no snapshot needs (what a writer judged
/// dead and then killed can leave) make check fail; the next prune drops them, and
/// check passes again.
#[test]
fn prune_drops_index_entries_of_missing_packs_nothing_needs() {
    let env = Env::new();
    env.backup_stdin("keep", &noise(1 << 20, 73));
    let before = env.packs();
    env.backup_stdin("gone", &noise(2 << 20, 74));
    env.cmd().args(["forget", "--name", "gone", "--keep-tag", "none", "--allow-empty"]).assert().success();
    for pack in env.packs().into_iter().filter(|p| !before.contains(p)) {
        std::fs::remove_file(pack).unwrap();
    }
    fresh(&env, "cache-1").arg("check").assert().code(13);
    let out = fresh(&env, "cache-2").args(["--json", "prune"]).assert().success().get_output().clone();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["report"]["dropped_missing_packs"].as_u64().unwrap() >= 1, "{report}");
    env.cmd().args(["check", "--read-data"]).assert().success();
}
