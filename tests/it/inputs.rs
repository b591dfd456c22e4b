//! Secrets that must not leave cairn, key slots that must not block it, and commands
//! that must not create or report what is not there.

use super::harness::{Env, PASSWORD};
use predicates::prelude::*;

const SECRETS_PASSWORD: &str = "a different battery staple";

/// `--command env` once stored every password cairn was given.
#[test]
fn producers_never_see_cairns_secrets() {
    let env = Env::new();
    let out = env
        .cmd()
        .env("CAIRN_SECRETS_PASSWORD", "secrets-value-1")
        .env("CAIRN_FROM_PASSWORD", "from-value-2")
        .env("CAIRN_TO_PASSWORD", "to-value-3")
        .env("CAIRN_NEW_PASSWORD", "new-value-4")
        .env("CAIRN_OSS_TOKEN", "token-value-5")
        .env("NOT_CAIRNS", "kept-value-6")
        .args(["--json", "backup", "stdin", "--name", "env", "--command", "env"])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let stored = String::from_utf8(env.restore_stdout(report["id"].as_str().unwrap())).unwrap();
    assert!(stored.contains("NOT_CAIRNS=kept-value-6"), "the producer ran with the rest of the environment");
    for secret in [PASSWORD, "secrets-value-1", "from-value-2", "to-value-3", "new-value-4", "token-value-5"] {
        assert!(!stored.contains(secret), "{secret} reached the producer");
    }
    assert!(stored.contains("CAIRN_REPO="), "non-secret settings are kept");
}

/// The compartment's password can never equal a repository password, in either
/// direction and through any command.
#[test]
fn the_secrets_password_never_equals_the_repositorys() {
    let env = Env::new();
    let with_secrets = || {
        let mut cmd = env.cmd();
        cmd.env("CAIRN_SECRETS_PASSWORD", SECRETS_PASSWORD);
        cmd
    };
    env.cmd().args(["key", "init-secrets"]).env("CAIRN_SECRETS_PASSWORD", PASSWORD).assert().code(1);
    with_secrets().args(["key", "init-secrets"]).assert().success();
    for args in [["key", "add", "--secrets"], ["key", "passwd", "--secrets"]] {
        with_secrets()
            .args(args)
            .env("CAIRN_NEW_PASSWORD", PASSWORD)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("must differ"));
    }
    for args in [&["key", "add"][..], &["key", "passwd"][..]] {
        env.cmd()
            .args(args)
            .env("CAIRN_NEW_PASSWORD", SECRETS_PASSWORD)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("must differ"));
    }
    // Nothing was added.
    let out = with_secrets().args(["--json", "key", "list", "--secrets"]).assert().success();
    let slots: Vec<serde_json::Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(slots.len(), 1);
    let out = env.cmd().args(["--json", "key", "list"]).assert().success();
    let slots: Vec<serde_json::Value> = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(slots.len(), 1);
    // Different passwords are still accepted.
    with_secrets().args(["key", "add", "--secrets"]).env("CAIRN_NEW_PASSWORD", "third one").assert().success();
}

/// What the repository password alone shows of a secrets snapshot: no file count.
#[test]
fn a_secrets_manifest_counts_no_files() {
    let env = Env::new();
    let src = env.path("keys");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..6 {
        std::fs::write(src.join(format!("k{i}")), format!("key {i}")).unwrap();
    }
    env.cmd().env("CAIRN_SECRETS_PASSWORD", SECRETS_PASSWORD).args(["key", "init-secrets"]).assert().success();
    let out = env
        .cmd()
        .env("CAIRN_SECRETS_PASSWORD", SECRETS_PASSWORD)
        .args(["--json", "backup", "secrets"])
        .arg(&src)
        .args(["--name", "k"])
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["files"], 6, "the one with the password is told");
    let out = env.cmd().args(["--json", "cat", "snapshot", "latest"]).assert().success();
    let manifest: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let stats = &manifest["snapshot"]["stats"];
    assert_eq!(stats["files"], 0, "{manifest}");
    assert_eq!(stats["dirs"], 0, "{manifest}");
    assert!(!manifest.to_string().contains("k0"), "{manifest}");
}

/// `cairn ARGS` run by `sh` under umask 022, with the environment of [`Env::cmd`].
fn under_umask_022(env: &Env, args: &str) {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg("umask 022; exec \"$CAIRN_BIN\" $ARGS");
    for (k, v) in env.cmd().get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("CAIRN_BIN", assert_cmd::cargo::cargo_bin("cairn")).env("ARGS", args).stdin(std::process::Stdio::null());
    assert!(cmd.status().unwrap().success(), "cairn {args}");
}

/// Under umask 022 key slots were world-readable. Every file of a local repository is
/// now 0600 and every directory 0700 whatever the umask, 0640 / 0750 with
/// `init --group-readable`; files cairn restores for the user still follow the umask.
#[test]
fn repository_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    for (group, file_mode, dir_mode) in [(false, 0o600, 0o700), (true, 0o640, 0o750)] {
        let env = Env::empty();
        under_umask_022(&env, if group { "init --group-readable" } else { "init" });
        under_umask_022(&env, "backup files --name etc /etc/hostname");
        env.cmd().args(["key", "init-secrets"]).env("CAIRN_SECRETS_PASSWORD", "other").assert().success();
        let mut checked = 0;
        for entry in walkdir::WalkDir::new(&env.repo).into_iter().flatten() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            let want = if entry.file_type().is_dir() { dir_mode } else { file_mode };
            assert_eq!(mode, want, "{} (group readable: {group})", entry.path().display());
            checked += 1;
        }
        assert!(checked > 10, "{checked} entries");
        // A restored stream is the user's file: the umask applies, as for any new file.
        env.backup_stdin("dump", b"data\n");
        let out = env.path("out.sql");
        under_umask_022(&env, &format!("restore latest --name dump --to {}", out.display()));
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o644);
    }
}

/// A planted slot with a salt that is not hex once blocked every password (exit 13, not
/// named); one with the maximal Argon2 cost made each unlock take minutes. Both are
/// skipped and named now.
#[test]
fn unusable_key_slots_are_skipped_and_named() {
    let env = Env::new();
    let keys = env.repo.join("keys");
    let real = super::harness::walk(&keys).pop().unwrap();
    let slot: serde_json::Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    let plant = |id: char, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut planted = slot.clone();
        edit(&mut planted);
        let name = std::iter::repeat_n(id, 64).collect::<String>();
        std::fs::write(keys.join(&name), serde_json::to_vec(&planted).unwrap()).unwrap();
        name[..8].to_string()
    };
    let bad_salt = plant('0', &|s| s["salt"] = "not hex at all".into());
    let costly = plant('1', &|s| {
        s["params"]["memory_kib"] = (4u64 << 20).into();
        s["params"]["iterations"] = 64.into();
    });
    env.cmd().args(["snapshots"]).assert().success();
    env.cmd()
        .args(["snapshots"])
        .env("CAIRN_PASSWORD", "wrong")
        .assert()
        .code(12)
        .stderr(predicate::str::contains(bad_salt.as_str()).and(predicate::str::contains("not hex")))
        .stderr(predicate::str::contains(costly.as_str()).and(predicate::str::contains("--kdf-cost-limit")));
    env.cmd().args(["key", "list"]).assert().success().stderr(predicate::str::contains("not hex"));
}

/// `init` over a repository whose config is lost once made it unopenable for good. Now
/// it refuses, names what is there and the way back (`repair config`), which works.
#[test]
fn init_never_hides_a_repository_and_repair_config_brings_it_back() {
    let env = Env::new();
    let data = super::harness::noise(2 << 20, 5);
    let id = env.backup_stdin("db", &data)["id"].as_str().unwrap().to_string();
    std::fs::remove_file(env.repo.join("config")).unwrap();
    env.cmd().args(["snapshots"]).assert().code(10);
    env.cmd()
        .arg("init")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("without its config").and(predicate::str::contains("cairn repair config")));
    assert!(!env.repo.join("config").exists(), "init wrote nothing");
    env.cmd().args(["repair", "config"]).env("CAIRN_PASSWORD", "wrong").assert().code(12);
    env.cmd().args(["repair", "config"]).assert().success();
    assert_eq!(env.restore_stdout(&id), data);
    env.check_read_data();
    env.backup_stdin("db", &data);
    env.cmd().args(["repair", "config"]).assert().code(1).stderr(predicate::str::contains("intact"));
    // A damaged config: the message never says to remove it; repair keeps it aside.
    let config = env.repo.join("config");
    let mut bytes = std::fs::read(&config).unwrap();
    bytes.truncate(10);
    std::fs::write(&config, &bytes).unwrap();
    let out = env.cmd().args(["snapshots"]).assert().code(13);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("repair config") && !stderr.contains("remove it"), "{stderr}");
    env.cmd().args(["repair", "config"]).assert().success();
    assert_eq!(super::harness::walk(&env.repo.join("quarantine")).len(), 1);
    assert_eq!(env.restore_stdout(&id), data);
}

/// An init killed after its key slot but before its config (4 of 30 kill -9s) is
/// completed by the next init with the same password, and reported with another.
#[test]
fn an_interrupted_init_is_completed_or_reported() {
    let env = Env::new();
    std::fs::remove_file(env.repo.join("config")).unwrap();
    env.cmd()
        .arg("init")
        .env("CAIRN_PASSWORD", "another")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("an init was interrupted"));
    env.cmd().arg("init").assert().success();
    assert_eq!(super::harness::walk(&env.repo.join("keys")).len(), 1, "the interrupted init's slot is reused");
    env.backup_stdin("x", b"hello");
    // The same for the default repository, whose key file is written before the config.
    let env = Env::empty();
    let home = env.path("home");
    let bare = || {
        let mut cmd = env.bare();
        cmd.env("XDG_DATA_HOME", home.join("data")).env("XDG_CONFIG_HOME", home.join("config"));
        cmd
    };
    bare().arg("init").assert().success();
    let config = home.join("data/cairn/repository/config");
    assert!(config.exists());
    std::fs::remove_file(&config).unwrap();
    bare().arg("init").assert().success();
    bare().args(["backup", "stdin", "--name", "x"]).write_stdin("hello").assert().success();
}

/// With CAIRN_REPO unset, `check` once created an empty default repository and reported
/// "no damage found": a cron job that lost its environment went green.
#[test]
fn read_only_commands_never_create_a_repository() {
    let env = Env::empty();
    let home = env.path("home");
    for args in [
        &["check"][..],
        &["snapshots"],
        &["stats"],
        &["restore", "latest", "--stdout"],
        &["forget", "--keep-last", "1"],
        &["prune"],
    ] {
        env.bare()
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .args(args)
            .assert()
            .code(10)
            .stderr(predicate::str::contains("no repository at").and(predicate::str::contains("cairn init")));
    }
    assert!(super::harness::walk(&home).is_empty(), "{:?}", super::harness::walk(&home));
    // A repository path that is a file says so.
    let file = env.path("file");
    std::fs::write(&file, "x").unwrap();
    env.cmd()
        .env("CAIRN_REPO", &file)
        .args(["snapshots"])
        .assert()
        .code(10)
        .stderr(predicate::str::contains("it is a file"));
}

/// `cairn snapshots | head -1` panicked with exit 101; `restore --include /no/such/path`
/// exited 0 having restored nothing.
#[test]
fn closed_pipes_end_quietly_and_includes_must_match() {
    let env = Env::new();
    env.backup_stdin("s", b"small");
    let src = env.path("src");
    std::fs::create_dir_all(src.join("conf.d")).unwrap();
    std::fs::write(src.join("conf.d/app.conf"), "x").unwrap();
    std::fs::write(src.join("conf.d/db.conf"), "y").unwrap();
    env.cmd().args(["backup", "files", "--name", "f"]).arg(&src).assert().success();
    let big = super::harness::noise(8 << 20, 1);
    env.backup_stdin("big", &big);
    for args in [
        &["snapshots"][..],
        &["restore", "latest", "--name", "big", "--stdout"],
        &["restore", "latest", "--name", "f", "--tar", "-"],
    ] {
        // `true` exits at once: cairn's first write meets a closed pipe.
        let mut shell = std::process::Command::new("bash");
        shell.arg("-c").arg("set -o pipefail; \"$CAIRN_BIN\" $ARGS | true");
        for (k, v) in env.cmd().get_envs() {
            if let Some(v) = v {
                shell.env(k, v);
            }
        }
        shell.env("CAIRN_BIN", assert_cmd::cargo::cargo_bin("cairn")).env("ARGS", args.join(" "));
        let out = shell.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
    let target = env.path("out");
    let wanted = format!("{}/conf.d/app.cnf", src.display());
    env.cmd()
        .args(["restore", "latest", "--name", "f", "--to"])
        .arg(&target)
        .args(["--include", &wanted])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("matches nothing").and(predicate::str::contains("conf.d/app.conf")));
    assert!(!target.exists(), "nothing restored, nothing created");
}

/// Messages that misled: each now says what happened and what to do, on one line.
#[test]
fn misleading_messages_say_what_happened() {
    let env = Env::new();
    let one_line = |out: &assert_cmd::assert::Assert| {
        let text = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert_eq!(text.trim().lines().count(), 1, "{text}");
        text
    };
    // An empty password is not a wrong one.
    let out = env.cmd().env("CAIRN_PASSWORD", "").args(["snapshots"]).assert().code(12);
    assert!(one_line(&out).contains("the password is empty: CAIRN_PASSWORD is set but empty"));
    // A 0-byte file is not an empty database.
    let empty = env.path("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let out = env.cmd().args(["backup", "sqlite"]).arg(&empty).args(["--name", "e"]).assert().code(1);
    assert!(one_line(&out).contains("is empty (0 bytes), not a SQLite database"));
    // Garbage given as a tar prints none of its bytes.
    let garbage = env.path("garbage");
    std::fs::write(&garbage, super::harness::noise(4096, 3)).unwrap();
    let out = env.cmd().args(["backup", "tar", "--name", "g"]).arg(&garbage).assert().code(1);
    let text = one_line(&out);
    assert!(text.contains("not a tar archive") && text.is_ascii(), "{text}");
    // Plain HTTP without AWS_ALLOW_HTTP is not "builder error".
    let out = env
        .bare()
        .env("CAIRN_REPO", "s3://bucket/repo")
        .env("CAIRN_PASSWORD", "x")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "a")
        .env("AWS_SECRET_ACCESS_KEY", "b")
        .args(["snapshots"])
        .assert()
        .code(1);
    assert!(one_line(&out).contains("set AWS_ALLOW_HTTP=true"));
    // A secrets password where there is no compartment opens nothing; check still runs.
    env.cmd().env("CAIRN_SECRETS_PASSWORD", "other").args(["check", "--read-data"]).assert().success();
}

/// `check --read-data` where it cannot write its coverage record (read-only storage; here
/// `coverage` is a file, which stops root too): the verification is reported, and the
/// record it could not write is a warning, not the result.
#[test]
fn read_data_that_cannot_record_its_coverage_reports_its_verification() {
    let env = Env::new();
    env.backup_stdin("x", &super::harness::noise(100_000, 4));
    let _ = std::fs::remove_dir_all(env.repo.join("coverage"));
    std::fs::write(env.repo.join("coverage"), b"in the way").unwrap();
    let out = env.cmd().args(["check", "--read-data"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(text.contains("record of it could not be written") && text.contains("no damage"), "{text}");
}

/// `init` killed at random points (4 of 30 once left keys but no config, and the
/// repository could never be opened): the next `init` completes it, starts afresh, or
/// finds it complete, and the repository works.
#[test]
fn init_killed_at_any_point_is_completed_by_the_next() {
    for round in 0..12u64 {
        let env = Env::empty();
        let mut child = env
            .spawnable()
            .arg("init")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2 + round * 3));
        let _ = child.kill();
        let _ = child.wait();
        // Either the killed init had finished (then this one says so), or this completes it.
        let again = env.cmd().arg("init").output().unwrap();
        if !again.status.success() {
            let text = String::from_utf8_lossy(&again.stderr);
            assert!(text.contains("already exists"), "round {round}: {text}");
        }
        env.backup_stdin("x", b"after a killed init");
        env.cmd().args(["check"]).assert().success();
    }
}
