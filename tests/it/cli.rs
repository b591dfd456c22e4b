//! The main command-line flows.

use crate::harness::{noise, sql_dump, Env, PASSWORD};
use predicates::prelude::*;

#[test]
fn stdin_round_trip_dedup_and_snapshot_json() {
    let env = Env::new();
    let night1 = sql_dump(1_000_000, 0);
    let night2 = sql_dump(1_000_000, 3);
    let first = env.backup_stdin("appdb", &night1);
    let second = env.backup_stdin("appdb", &night2);
    assert_eq!(first["size"], night1.len() as u64);
    let added1 = first["added"].as_u64().unwrap();
    let added2 = second["added"].as_u64().unwrap();
    assert!(added2 * 2 < added1, "the changed night stored {added2} bytes vs {added1} for the first");
    assert_eq!(env.restore_stdout(first["id"].as_str().unwrap()), night1);
    assert_eq!(env.restore_stdout("latest"), night2);

    let list = env.snapshots();
    assert_eq!(list.len(), 2);
    for field in ["id", "time", "host", "kind", "name", "tags", "size", "added"] {
        assert!(list[0].get(field).is_some(), "snapshots --json lacks {field}");
    }
    assert_eq!(list[1]["kind"], "stdin");
    assert_eq!(list[1]["added"], added2);
    env.check_read_data();
}

#[test]
fn time_tags_kind_and_filters() {
    let env = Env::new();
    env.cmd()
        .args([
            "backup",
            "stdin",
            "--name",
            "old",
            "--kind",
            "pg",
            "--tag",
            "nightly",
            "--tag",
            "import",
            "--time",
            "2025-03-01T02:00:00+01:00",
        ])
        .write_stdin("dump of march")
        .assert()
        .success();
    env.backup_stdin("new", b"dump of today");
    let out = env.cmd().args(["--json", "snapshots", "--kind", "pg"]).assert().success();
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["time"], "2025-03-01T01:00:00Z");
    assert_eq!(list[0]["tags"], serde_json::json!(["nightly", "import"]));
    let old = env.cmd().args(["restore", "latest", "--name", "old", "--stdout"]).assert().success();
    assert_eq!(old.get_output().stdout, b"dump of march");
    // With two names, `latest` alone could mean either: refused, naming both.
    env.cmd()
        .args(["restore", "latest", "--stdout"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("give --name (new, old)"));
    let new = env.cmd().args(["restore", "latest", "--name", "new", "--stdout"]).assert().success();
    assert_eq!(new.get_output().stdout, b"dump of today");
    env.cmd()
        .args(["backup", "stdin", "--name", "x", "--time", "yesterday"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("RFC 3339"));
}

#[test]
fn command_producer_commits_only_on_success() {
    let env = Env::new();
    env.cmd()
        .args(["backup", "stdin", "--name", "cmd", "--command", "printf 'hello from producer'"])
        .assert()
        .success();
    assert_eq!(env.restore_stdout("latest"), b"hello from producer");

    env.cmd()
        .args([
            "backup",
            "stdin",
            "--name",
            "cmd",
            "--command",
            "echo partial; echo 'pg_dump: error: connection lost' >&2; exit 3",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("connection lost").and(predicate::str::contains("exited with status 3")));
    env.cmd()
        .args(["backup", "stdin", "--name", "cmd", "--command", "head -c 3000000 /dev/urandom; kill -9 $$"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("killed by signal 9"));
    assert_eq!(env.snapshots().len(), 1, "a failed producer must not commit a snapshot");
    // What the failed runs stored is indexed and harmless.
    env.check_read_data();
}

#[test]
fn wrong_password_no_repository_and_existing_repository() {
    let env = Env::new();
    env.cmd()
        .env("CAIRN_PASSWORD", "wrong")
        .arg("snapshots")
        .assert()
        .code(12)
        .stderr(predicate::str::contains("wrong password or no key slot matches"));
    let missing = env.path("nowhere");
    env.cmd()
        .env("CAIRN_REPO", &missing)
        .arg("snapshots")
        .assert()
        .code(10)
        .stderr(predicate::str::contains("no repository at"));
    std::fs::create_dir_all(env.path("emptydir")).unwrap();
    env.cmd().env("CAIRN_REPO", env.path("emptydir")).arg("snapshots").assert().code(10);
    let before = crate::harness::walk(&env.repo);
    env.cmd().arg("init").assert().code(1).stderr(predicate::str::contains("already exists"));
    assert_eq!(crate::harness::walk(&env.repo), before, "a refused init must write nothing");
    env.cmd()
        .env_remove("CAIRN_PASSWORD")
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no password given"));
    env.cmd()
        .env("CAIRN_REPO", "ftp://example/x")
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not supported"));
}

#[test]
fn password_sources() {
    let env = Env::new();
    let file = env.path("pw");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    env.cmd().env_remove("CAIRN_PASSWORD").arg("--password-file").arg(&file).arg("snapshots").assert().success();
    env.cmd().env_remove("CAIRN_PASSWORD").env("CAIRN_PASSWORD_FILE", &file).arg("snapshots").assert().success();
    env.cmd()
        .env_remove("CAIRN_PASSWORD")
        .args(["--password-command", &format!("echo '{PASSWORD}'")])
        .arg("snapshots")
        .assert()
        .success();
    env.cmd()
        .env_remove("CAIRN_PASSWORD")
        .args(["--password-command", "exit 1"])
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("password command"));
}

#[test]
fn key_slots_add_list_remove_passwd() {
    let env = Env::new();
    env.cmd().args(["key", "add"]).env("CAIRN_NEW_PASSWORD", "second").assert().success();
    env.backup_stdin("k", b"data under two keys");
    env.cmd().env("CAIRN_PASSWORD", "second").arg("snapshots").assert().success();
    let out = env.cmd().args(["--json", "key", "list"]).assert().success();
    let slots: Vec<serde_json::Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(slots.len(), 2);
    let current = slots.iter().find(|s| s["current"] == true).unwrap()["id"].as_str().unwrap().to_string();
    let other = slots.iter().find(|s| s["current"] == false).unwrap()["id"].as_str().unwrap().to_string();
    env.cmd()
        .args(["key", "remove", &current[..8]])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("opened the repository"));
    env.cmd().args(["key", "remove", &other[..8]]).assert().success();
    env.cmd().env("CAIRN_PASSWORD", "second").arg("snapshots").assert().code(12);
    env.cmd().args(["key", "passwd"]).env("CAIRN_NEW_PASSWORD", "third").assert().success();
    env.cmd().arg("snapshots").assert().code(12);
    let out = env.cmd().env("CAIRN_PASSWORD", "third").args(["restore", "latest", "--stdout"]).assert().success();
    assert_eq!(out.get_output().stdout, b"data under two keys");
}

#[test]
fn embedded_default_repository_needs_no_setup() {
    let env = Env::empty();
    let src = env.path("project");
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::write(src.join("src/main.rs"), "fn main() {}\n").unwrap();
    let out = env.bare().args(["backup", "files"]).arg(&src).assert().success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let key = env.path("home/.config/cairn/default-repository.key");
    assert!(stderr.contains(&key.display().to_string()) && stderr.contains("losing that file loses"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(env.path("home/.local/share/cairn/repository/config").exists());
    let target = env.path("restored");
    env.bare().args(["restore", "latest", "--to"]).arg(&target).assert().success();
    let restored = target.join(src.strip_prefix("/").unwrap()).join("src/main.rs");
    assert_eq!(std::fs::read_to_string(restored).unwrap(), "fn main() {}\n");
    // The second run reuses the repository and says nothing about keys.
    let again = env.bare().args(["backup", "files"]).arg(&src).assert().success();
    assert!(!String::from_utf8_lossy(&again.get_output().stderr).contains("created"));
}

#[test]
fn cache_is_only_a_cache() {
    let env = Env::new();
    let data = noise(3 << 20, 5);
    env.backup_stdin("c", &data);
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    assert_eq!(env.restore_stdout("latest"), data);
    let out = env
        .cmd()
        .args(["--no-cache", "--json", "backup", "stdin", "--name", "c"])
        .write_stdin(data.clone())
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(report["added"].as_u64().unwrap() < 4096, "a --no-cache backup must still deduplicate: {report}");
    let out = env.cmd().args(["--no-cache", "restore", "latest", "--stdout"]).assert().success();
    assert_eq!(out.get_output().stdout, data);
}

#[test]
fn stats_and_cat() {
    let env = Env::new();
    let data = sql_dump(20_000, 0);
    let snap = env.backup_stdin("s", &data);
    env.backup_stdin("s", &data);
    let out = env.cmd().args(["--json", "stats"]).assert().success();
    let stats: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(stats["snapshots"], 2);
    assert_eq!(stats["logical_bytes"], 2 * data.len() as u64);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 2.0, "{stats}");
    let config: serde_json::Value =
        serde_json::from_slice(&env.cmd().args(["cat", "config"]).assert().success().get_output().stdout).unwrap();
    assert_eq!(config["version"], 1);
    let id = snap["id"].as_str().unwrap();
    let shown: serde_json::Value =
        serde_json::from_slice(&env.cmd().args(["cat", "snapshot", &id[..8]]).assert().success().get_output().stdout)
            .unwrap();
    assert_eq!(shown["id"], id);
    let index = crate::harness::walk(&env.repo.join("index"))[0].file_name().unwrap().to_string_lossy().to_string();
    let shown: serde_json::Value =
        serde_json::from_slice(&env.cmd().args(["cat", "index", &index]).assert().success().get_output().stdout)
            .unwrap();
    let pack = shown["packs"][0]["id"].as_str().unwrap().to_string();
    let shown: serde_json::Value =
        serde_json::from_slice(&env.cmd().args(["cat", "pack", &pack]).assert().success().get_output().stdout).unwrap();
    assert!(!shown["blobs"].as_array().unwrap().is_empty());
}

#[test]
fn no_progress_bars_in_pipes_or_json() {
    let env = Env::new();
    let out = env.cmd().args(["backup", "stdin", "--name", "p"]).write_stdin(noise(2 << 20, 1)).assert().success();
    let stderr = out.get_output().stderr.clone();
    assert!(
        !stderr.contains(&b'\r') && !stderr.contains(&0x1b),
        "progress output leaked into a pipe: {:?}",
        String::from_utf8_lossy(&stderr)
    );
}

#[test]
fn help_names_every_command_and_exit_codes() {
    let out = assert_cmd::Command::cargo_bin("cairn").unwrap().arg("--help").assert().success();
    let help = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    for word in [
        "init",
        "key",
        "backup",
        "snapshots",
        "restore",
        "check",
        "stats",
        "cat",
        "12 wrong password",
        "13 integrity damage",
    ] {
        assert!(help.contains(word), "--help lacks {word:?}");
    }
    assert_cmd::Command::cargo_bin("cairn").unwrap().arg("frobnicate").assert().code(2);
}

#[test]
fn backing_up_home_skips_the_repository_and_cache_inside_it() {
    let env = Env::empty();
    let home = env.path("home");
    std::fs::create_dir_all(home.join("notes")).unwrap();
    std::fs::write(home.join("notes/todo.txt"), "water the plants\n").unwrap();
    // The embedded default repository and its cache live under HOME.
    env.bare().env_remove("CAIRN_CACHE_DIR").args(["backup", "files"]).arg(&home).assert().success();
    env.bare().env_remove("CAIRN_CACHE_DIR").args(["backup", "files"]).arg(&home).assert().success();
    let target = env.path("out");
    env.bare().env_remove("CAIRN_CACHE_DIR").args(["restore", "latest", "--to"]).arg(&target).assert().success();
    let restored = target.join(home.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(restored.join("notes/todo.txt")).unwrap(), "water the plants\n");
    assert!(!restored.join(".local/share/cairn/repository").exists(), "the repository was backed up into itself");
    assert!(!restored.join(".cache/cairn").exists(), "the catalog cache was backed up");
}
