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
