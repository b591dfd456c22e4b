//! The secrets compartment: sealed under its own password, never deduplicated against
//! ordinary data, restored 0600/0700, checked with the password and skipped without.

use super::harness::{Env, PASSWORD};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SECRETS_PASSWORD: &str = "a different battery staple";

fn keypairs(root: &Path) {
    std::fs::create_dir_all(root.join("ssh")).unwrap();
    std::fs::create_dir_all(root.join("tls/private")).unwrap();
    std::fs::write(root.join("ssh/id_ed25519"), "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETMATERIAL\n").unwrap();
    std::fs::write(root.join("ssh/id_ed25519.pub"), "ssh-ed25519 AAAA user@host\n").unwrap();
    std::fs::write(root.join("tls/private/server.key"), "-----BEGIN PRIVATE KEY-----\nTLSMATERIAL\n").unwrap();
    std::fs::write(root.join("tls/backup.gpg"), [0x85u8, 0x02, 0x0c, 0x03, 0xff, 0x00, 0x42]).unwrap();
    for (path, mode) in [("ssh", 0o755), ("ssh/id_ed25519", 0o644), ("tls/private/server.key", 0o640), ("tls", 0o775)] {
        std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn with_secrets(env: &Env) -> assert_cmd::Command {
    let mut cmd = env.cmd();
    cmd.env("CAIRN_SECRETS_PASSWORD", SECRETS_PASSWORD);
    cmd
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The bytes a holder of the repository password alone can read for a snapshot.
fn stream_with_data_password(env: &Env, id: &str) -> Vec<u8> {
    use cairn::repo::{CacheMode, Repository, Secret};
    use futures::TryStreamExt;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let backend = cairn::backend::Backend::from_url(env.repo.to_str().unwrap(), false).unwrap();
        let repo = Repository::open(backend, &Secret::password(PASSWORD), &CacheMode::Temporary).await.unwrap();
        let (_, snapshot) = repo.find_snapshot(id, &Default::default()).unwrap();
        let content = snapshot.content.expect("a secrets snapshot is a sealed stream");
        let blobs: Vec<Vec<u8>> = cairn::repo::load::read_content(&repo, &content).try_collect().await.unwrap();
        blobs.concat()
    })
}

#[test]
fn secrets_are_sealed_private_and_restored_0600_0700() {
    let env = Env::new();
    let src = env.path("keys");
    keypairs(&src);
    // Without a compartment, or without its password, nothing is stored.
    with_secrets(&env).args(["backup", "secrets"]).arg(&src).args(["--name", "k"]).assert().code(1);
    env.cmd().args(["key", "init-secrets"]).env("CAIRN_SECRETS_PASSWORD", PASSWORD).assert().code(1);
    with_secrets(&env).args(["key", "init-secrets"]).assert().success();
    env.cmd().args(["backup", "secrets"]).arg(&src).args(["--name", "k"]).assert().code(12);

    // The same files backed up as ordinary data first: the secrets must not reuse them.
    env.cmd().args(["backup", "files"]).arg(&src).args(["--name", "plain"]).assert().success();
    let out =
        with_secrets(&env).args(["--json", "backup", "secrets"]).arg(&src).args(["--name", "k"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let id = report["id"].as_str().unwrap().to_string();
    assert!(report["added"].as_u64().unwrap() > 100, "secrets deduplicated against ordinary data: {report}");
    assert_eq!(report["files"], 4);

    // Names and contents are not readable with the repository password alone.
    let sealed = stream_with_data_password(&env, &id);
    for needle in ["SECRETMATERIAL", "TLSMATERIAL", "id_ed25519", "server.key", "private"] {
        assert!(!sealed.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} readable");
    }
    let manifest = env.cmd().args(["cat", "snapshot", &id]).assert().success().get_output().stdout.clone();
    let manifest = String::from_utf8(manifest).unwrap();
    assert!(!manifest.contains("id_ed25519") && !manifest.contains("keys/ssh"), "{manifest}");

    // A restore without the secrets password exits 12 and creates nothing.
    let nowhere = env.path("nowhere");
    let out = env.cmd().args(["restore", &id, "--to"]).arg(&nowhere).assert().code(12);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("secrets compartment") && !err.contains("id_ed25519"), "{err}");
    assert!(!nowhere.exists());
    env.cmd().args(["restore", &id, "--to"]).arg(&nowhere).env("CAIRN_SECRETS_PASSWORD", "wrong").assert().code(12);
    assert!(!nowhere.exists());

    // With it: files 0600 and directories 0700 whatever they were; contents exact.
    let target = env.path("restored");
    with_secrets(&env).args(["restore", &id, "--to"]).arg(&target).assert().success();
    let inside = target.join(src.strip_prefix("/").unwrap());
    for file in ["ssh/id_ed25519", "ssh/id_ed25519.pub", "tls/private/server.key", "tls/backup.gpg"] {
        assert_eq!(std::fs::read(inside.join(file)).unwrap(), std::fs::read(src.join(file)).unwrap(), "{file}");
        assert_eq!(mode(&inside.join(file)), 0o600, "{file}");
    }
    for dir in ["ssh", "tls", "tls/private"] {
        assert_eq!(mode(&inside.join(dir)), 0o700, "{dir}");
    }
    // Directories that were already there keep their modes (a restore into / must not
    // make /etc private); the archive's own directories are 0700.
    let existing = env.path("over");
    let first = src.strip_prefix("/").unwrap().components().next().unwrap();
    std::fs::create_dir_all(existing.join(first)).unwrap();
    std::fs::set_permissions(existing.join(first), std::fs::Permissions::from_mode(0o755)).unwrap();
    with_secrets(&env).args(["restore", &id, "--to"]).arg(&existing).assert().success();
    assert_eq!(mode(&existing.join(first)), 0o755, "an existing parent kept its mode");
    assert_eq!(mode(&existing.join(src.strip_prefix("/").unwrap()).join("ssh")), 0o700);
    // --include narrows it.
    let one = env.path("one");
    with_secrets(&env)
        .args(["restore", &id, "--to"])
        .arg(&one)
        .arg("--include")
        .arg(src.join("ssh"))
        .assert()
        .success();
    assert!(one.join(src.strip_prefix("/").unwrap()).join("ssh/id_ed25519").exists());
    assert!(!one.join(src.strip_prefix("/").unwrap()).join("tls").exists());

    // check --read-data: skipped (not damaged) without the password, opened with it.
    let out = env.cmd().args(["--json", "check", "--read-data"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!((report["secrets_skipped"].as_u64(), report["secrets_verified"].as_u64()), (Some(1), Some(0)));
    let out = with_secrets(&env).args(["--json", "check", "--read-data"]).assert().success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!((report["secrets_skipped"].as_u64(), report["secrets_verified"].as_u64()), (Some(0), Some(1)));
}

#[test]
fn secrets_password_rotation() {
    let env = Env::new();
    let src = env.path("keys");
    keypairs(&src);
    with_secrets(&env).args(["key", "init-secrets"]).assert().success();
    with_secrets(&env).args(["backup", "secrets"]).arg(&src).args(["--name", "k"]).assert().success();
    with_secrets(&env)
        .args(["key", "passwd", "--secrets"])
        .env("CAIRN_NEW_PASSWORD", "rotated secrets password")
        .assert()
        .success();
    let target = env.path("r");
    with_secrets(&env).args(["restore", "latest", "--to"]).arg(&target).assert().code(12);
    env.cmd()
        .args(["restore", "latest", "--to"])
        .arg(&target)
        .env("CAIRN_SECRETS_PASSWORD", "rotated secrets password")
        .assert()
        .success();
    let listed = env.cmd().args(["--json", "key", "list", "--secrets"]).assert().success().get_output().stdout.clone();
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // The repository password still opens everything else and is unchanged.
    env.cmd().args(["snapshots"]).assert().success();
}
