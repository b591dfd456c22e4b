//! `cairn forget`: a year of daily snapshots (dated with --time) against a kept set
//! computed here by grouping dates, independently of the bucket walk cairn uses.

use crate::harness::Env;
use jiff::civil::Date;
use std::collections::{BTreeMap, BTreeSet};

fn year_of_dailies(env: &Env) -> Vec<Date> {
    let last: Date = "2026-11-22".parse().unwrap();
    let dates: Vec<Date> = (0..365).rev().map(|back| last.checked_sub(jiff::Span::new().days(back)).unwrap()).collect();
    for date in &dates {
        let time = format!("{date}T02:00:00Z");
        env.cmd()
            .args(["backup", "stdin", "--name", "db", "--time", &time])
            .write_stdin(date.to_string())
            .assert()
            .success();
    }
    dates
}

/// The newest date of each of the `n` most recent groups of `dates` under `key`.
fn newest_per_group<K: Ord>(dates: &[Date], n: usize, key: impl Fn(&Date) -> K) -> BTreeSet<Date> {
    let mut groups: BTreeMap<K, Date> = BTreeMap::new();
    for d in dates {
        let newest = groups.entry(key(d)).or_insert(*d);
        *newest = (*newest).max(*d);
    }
    groups.values().rev().take(n).copied().collect()
}

fn remaining_dates(env: &Env) -> BTreeSet<Date> {
    env.snapshots().iter().map(|s| s["time"].as_str().unwrap()[..10].parse().unwrap()).collect()
}

#[test]
fn a_year_of_dailies_keeps_exactly_the_tiers() {
    let env = Env::new();
    let dates = year_of_dailies(&env);

    let mut expected: BTreeSet<Date> = dates.iter().rev().take(7).copied().collect();
    expected.extend(newest_per_group(&dates, 4, |d| {
        let w = d.iso_week_date();
        (w.year(), w.week())
    }));
    expected.extend(newest_per_group(&dates, 12, |d| (d.year(), d.month())));
    expected.extend(newest_per_group(&dates, 3, |d| d.year()));
    assert!(expected.len() > 20, "the tiers overlap only partly: {}", expected.len());

    let policy =
        ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12", "--keep-yearly", "3", "--tz", "UTC"];
    // Dry run: reports every snapshot, changes nothing; the newest satisfies all four rules.
    let out = env.cmd().args(["--json", "forget", "--dry-run"]).args(policy).assert().success();
    let plan: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let decisions = plan["groups"][0]["snapshots"].as_array().unwrap();
    assert_eq!(decisions.len(), 365);
    assert_eq!(decisions[0]["reasons"], serde_json::json!(["daily 1", "weekly 1", "monthly 1", "yearly 1"]));
    let kept: BTreeSet<Date> = decisions
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["time"].as_str().unwrap()[..10].parse().unwrap())
        .collect();
    assert_eq!(kept, expected, "dry run plan");
    assert_eq!(env.snapshots().len(), 365, "a dry run forgets nothing");

    env.cmd().arg("forget").args(policy).assert().success();
    assert_eq!(remaining_dates(&env), expected, "exactly the tiers remain");
    env.check_read_data();
}

#[test]
fn keep_within_tags_and_refusals() {
    let env = Env::new();
    let last: Date = "2026-11-22".parse().unwrap();
    for back in (0..60).rev() {
        let date = last.checked_sub(jiff::Span::new().days(back)).unwrap();
        let mut cmd = env.cmd();
        cmd.args(["backup", "stdin", "--name", "db", "--time", &format!("{date}T02:00:00Z")]);
        if back == 45 {
            cmd.args(["--tag", "before-upgrade"]);
        }
        cmd.write_stdin(date.to_string()).assert().success();
    }
    // Within 30 days of the newest: 31 snapshots (the boundary is inclusive), plus the tag.
    let out = env
        .cmd()
        .args(["--json", "forget", "--dry-run", "--keep-within", "30d", "--keep-tag", "before-upgrade"])
        .assert()
        .success();
    let plan: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let kept: Vec<&serde_json::Value> =
        plan["groups"][0]["snapshots"].as_array().unwrap().iter().filter(|d| d["keep"] == true).collect();
    assert_eq!(kept.len(), 32);
    assert!(kept.iter().any(|d| d["reasons"] == serde_json::json!(["tag before-upgrade"])));

    // An empty policy is a usage error; one that empties a group is refused without --allow-empty.
    let out = env.cmd().args(["forget"]).assert().code(2);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("empty policy"));
    let out = env.cmd().args(["forget", "--keep-tag", "no-such-tag"]).assert().code(1);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("--allow-empty"));
    assert_eq!(env.snapshots().len(), 60, "nothing was forgotten");
    env.cmd().args(["forget", "--keep-tag", "no-such-tag", "--allow-empty", "--name", "db"]).assert().success();
    assert!(env.snapshots().is_empty());
}

fn prune_json(env: &Env, dry_run: bool) -> serde_json::Value {
    let mut cmd = env.cmd();
    cmd.args(["--json", "prune"]);
    if dry_run {
        cmd.arg("--dry-run");
    }
    serde_json::from_slice(&cmd.assert().success().get_output().stdout).unwrap()
}

/// With no writer running, forgotten data goes in one removal run (as restic's prune); a
/// dry run predicts it and changes nothing; what is still referenced restores; a damaged
/// repository is not pruned.
#[test]
fn prune_removes_forgotten_data_in_one_run_and_refuses_damage() {
    let env = Env::new();
    let data: Vec<Vec<u8>> = (0..3).map(|i| crate::harness::noise(3 << 20, 100 + i)).collect();
    for (i, d) in data.iter().enumerate() {
        env.backup_stdin(&format!("s{i}"), d);
    }
    env.cmd().args(["forget", "--name", "s0", "--keep-tag", "none", "--allow-empty"]).assert().success();
    let packs_before = env.packs().len();

    let dry = prune_json(&env, true);
    assert!(dry["report"]["deleted_packs"].as_u64().unwrap() >= 1, "{dry}");
    assert_eq!(env.packs().len(), packs_before, "a dry run deletes nothing");
    let first = prune_json(&env, false);
    assert_eq!(first["report"]["deleted_packs"], dry["report"]["deleted_packs"], "the dry run predicted it");
    assert_eq!(first["report"]["waiting_packs"], 0, "{first}");
    assert!(env.packs().len() < packs_before);
    env.check_read_data();
    for (i, d) in data.iter().enumerate().skip(1) {
        let id =
            env.snapshots().iter().find(|s| s["name"] == format!("s{i}")).unwrap()["id"].as_str().unwrap().to_string();
        assert!(env.restore_stdout(&id) == *d, "s{i} restores");
    }

    // Damage: a snapshot that no longer decrypts. Prune deletes nothing and exits 13.
    env.cmd().args(["forget", "--name", "s1", "--keep-tag", "none", "--allow-empty"]).assert().success();
    let snapshot = crate::harness::walk(&env.repo.join("snapshots")).pop().unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&snapshot, bytes).unwrap();
    let before = env.packs();
    for _ in 0..3 {
        let out = env.cmd().arg("prune").assert().code(13);
        assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("prune deletes nothing"));
    }
    assert_eq!(env.packs(), before, "nothing was deleted");
}

/// Packs half of whose bytes no snapshot needs are repacked (bounded by --max-repack,
/// previewed by --dry-run, skipped with --max-unused unlimited); the old packs go on the
/// following runs; index files are consolidated; everything restores and checks.
#[test]
fn prune_repacks_wasteful_packs_and_consolidates_the_index() {
    let env = Env::new();
    let dir = env.path("tree");
    std::fs::create_dir_all(&dir).unwrap();
    // One backup puts a kept file and a dropped file into the same packs, twice over.
    let keep: Vec<Vec<u8>> = (0..2u64).map(|i| crate::harness::noise(3 << 20, 300 + i)).collect();
    for (i, k) in keep.iter().enumerate() {
        std::fs::write(dir.join(format!("keep{i}")), k).unwrap();
        std::fs::write(dir.join(format!("drop{i}")), crate::harness::noise(3 << 20, 400 + i as u64)).unwrap();
    }
    env.cmd().args(["backup", "files", "--name", "t"]).arg(&dir).assert().success();
    for i in 0..2 {
        std::fs::remove_file(dir.join(format!("drop{i}"))).unwrap();
    }
    env.cmd().args(["backup", "files", "--name", "t"]).arg(&dir).assert().success();
    for i in 0..4 {
        env.backup_stdin(&format!("small{i}"), &crate::harness::noise(1000, 500 + i));
    }
    env.cmd().args(["forget", "--name", "t", "--keep-last", "1"]).assert().success();
    let index_files = || crate::harness::walk(&env.repo.join("index")).len();
    assert!(index_files() >= 6, "one index file per backup at least");
    let bytes_stored = |env: &Env| env.packs().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum::<u64>();
    let stored_before = bytes_stored(&env);

    // Never repack: nothing repacked, but the index is consolidated.
    let out = env.cmd().args(["--json", "prune", "--max-unused", "unlimited"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["report"]["repacked_packs"], 0, "{report}");
    assert_eq!(report["report"]["index_files_after"], 1, "{report}");
    assert_eq!(index_files(), 1);
    // A budget smaller than any pack repacks nothing; a dry run shows what would go.
    let out = env.cmd().args(["--json", "prune", "--dry-run", "--max-repack", "1K"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["report"]["repacked_packs"], 0, "{report}");
    let out = env.cmd().args(["--json", "prune", "--dry-run", "--max-unused", "20%"]).assert().success();
    let dry: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let would = dry["report"]["repacked_packs"].as_u64().unwrap();
    assert!(would >= 1, "{dry}");

    let out = env.cmd().args(["--json", "prune", "--max-unused", "20%"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["report"]["repacked_packs"].as_u64(), Some(would), "the dry run predicted it: {report}");
    assert!(report["report"]["repack_added_bytes"].as_u64().unwrap() > 5 << 20, "{report}");
    // The next runs mark and delete the old packs, and repack nothing more.
    for _ in 0..2 {
        let out = env.cmd().args(["--json", "prune", "--max-unused", "20%"]).assert().success();
        let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(report["report"]["repacked_packs"], 0, "{report}");
    }
    let stored_after = bytes_stored(&env);
    assert!(
        stored_after < stored_before * 6 / 10,
        "the dropped files' bytes are gone: {stored_before} -> {stored_after}"
    );
    env.check_read_data();
    let out = env.path("out");
    env.cmd().args(["restore", "latest", "--name", "t", "--to"]).arg(&out).assert().success();
    for (i, k) in keep.iter().enumerate() {
        let restored = out.join(dir.strip_prefix("/").unwrap()).join(format!("keep{i}"));
        assert!(std::fs::read(restored).unwrap() == *k, "keep{i} restores");
    }
}

/// A pack that a snapshot needs has vanished: prune stops before deleting anything.
#[test]
fn prune_refuses_when_a_needed_pack_is_gone() {
    let env = Env::new();
    env.backup_stdin("keep", &crate::harness::noise(2 << 20, 600));
    env.backup_stdin("drop", &crate::harness::noise(2 << 20, 601));
    env.cmd().args(["forget", "--name", "drop", "--keep-tag", "none", "--allow-empty"]).assert().success();
    let id = env.snapshots()[0]["id"].as_str().unwrap().to_string();
    let mut packs = env.packs();
    // Find a pack the kept snapshot needs: removing it makes its restore fail.
    let victim = packs
        .iter()
        .find(|p| {
            let saved = std::fs::read(p).unwrap();
            std::fs::remove_file(p).unwrap();
            let broken =
                !env.cmd().args(["--no-cache", "restore", &id, "--stdout"]).assert().get_output().status.success();
            std::fs::write(p, saved).unwrap();
            broken
        })
        .unwrap()
        .clone();
    std::fs::remove_file(&victim).unwrap();
    packs.retain(|p| *p != victim);
    for _ in 0..3 {
        let out = env.cmd().args(["prune"]).assert().code(13);
        let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(err.contains("prune deletes nothing") && err.contains("in no stored pack"), "{err}");
    }
    assert_eq!(env.packs(), packs, "nothing was deleted");
}

/// A pack write killed mid-way leaves its staging file (`NAME#N`), which listing never
/// shows; prune deletes those older than an hour and leaves a younger one (a write that
/// may still be running) alone.
#[test]
fn prune_deletes_stale_staging_files_of_interrupted_writes() {
    let env = Env::new();
    env.backup_stdin("db", &crate::harness::noise(1 << 20, 7));
    let pack = env.packs().into_iter().next().unwrap();
    let staged = |n: u32| {
        let mut name = pack.as_os_str().to_owned();
        name.push(format!("#{n}"));
        std::path::PathBuf::from(name)
    };
    let (stale, fresh) = (staged(7), staged(8));
    std::fs::write(&stale, b"half a pack").unwrap();
    std::fs::write(&fresh, b"a pack being written").unwrap();
    let two_hours_ago = filetime::FileTime::from_unix_time(filetime::FileTime::now().unix_seconds() - 7200, 0);
    filetime::set_file_mtime(&stale, two_hours_ago).unwrap();
    assert_eq!(env.packs().len(), 3, "the walk sees the staging files; the repository does not");
    env.cmd().arg("check").assert().success();

    assert_eq!(prune_json(&env, true)["report"]["stale_staging_files"], 1, "a dry run counts it");
    assert!(stale.exists());
    assert_eq!(prune_json(&env, false)["report"]["stale_staging_files"], 1);
    assert!(!stale.exists() && fresh.exists());
    assert!(pack.exists());
    env.cmd().args(["check", "--read-data"]).assert().success();
}
