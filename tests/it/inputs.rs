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
