//! A frozen repository (tests/fixtures/repo-v1), written once by cairn 0.1 and never
//! rewritten: every later version must open it, check it clean with `--read-data`, and
//! restore every snapshot to exactly the bytes recorded when it was written. It holds
//! every object kind this version writes: config, a key slot, packs, index files,
//! snapshots of files (with small inline trees and a multi-chunk file), a stream, a tar
//! archive, a SQLite database and a secrets snapshot; the secrets compartment's config
//! and slot; a WAL segment, a history file and the source record; the removal protocol's
//! generations and a candidate set (writer sessions end with their writers, so none is
//! left); and check's coverage records.
//!
//! `write_the_frozen_fixture` (ignored) made it: `CAIRN_WRITE_FIXTURE=1 cargo nextest run
//! --run-ignored only fixture`. It refuses to overwrite an existing fixture.

use super::harness::Env;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PASSWORD: &str = "frozen fixture";
const SECRETS_PASSWORD: &str = "frozen secrets";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-v1")
}

/// FNV-1a, 64 bits: enough to tell restored bytes apart from the recorded ones.
fn fnv(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Deterministic pseudo-random bytes (xorshift), so the fixture's inputs can be made again.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every regular file and symlink below `dir`, by relative path: content hash or link target.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(dir).unwrap().display().to_string();
        let kind = entry.file_type();
        if kind.is_symlink() {
            out.insert(rel, format!("-> {}", std::fs::read_link(entry.path()).unwrap().display()));
        } else if kind.is_file() {
            out.insert(rel, fnv(&std::fs::read(entry.path()).unwrap()));
        } else {
            out.insert(rel, "dir".into());
        }
    }
    out
}

/// A 1 MiB WAL segment with a valid long page header (PostgreSQL 15's page magic).
fn segment(number: u64) -> (String, Vec<u8>) {
    let size: u32 = 1 << 20;
    let mut data = vec![0u8; size as usize];
    data[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    data[2..4].copy_from_slice(&2u16.to_le_bytes());
    data[4..8].copy_from_slice(&1u32.to_le_bytes());
    data[8..16].copy_from_slice(&(number * u64::from(size)).to_le_bytes());
    data[24..32].copy_from_slice(&7_300_000_000_000_000_001u64.to_le_bytes());
    data[32..36].copy_from_slice(&size.to_le_bytes());
    data[36..40].copy_from_slice(&8192u32.to_le_bytes());
    data[8192..8192 + 4096].copy_from_slice(&bytes(number, 4096));
    (format!("{:08X}{:08X}{:08X}", 1, 0, number), data)
}

fn env_at(repo: &Path) -> Env {
    let mut env = Env::empty();
    env.repo = repo.to_path_buf();
    env
}

fn cmd(env: &Env) -> assert_cmd::Command {
    let mut c = env.bare();
    c.env("CAIRN_REPO", &env.repo).env("CAIRN_PASSWORD", PASSWORD).env("CAIRN_SECRETS_PASSWORD", SECRETS_PASSWORD);
    c
}

#[test]
#[ignore = "writes tests/fixtures/repo-v1 once; see the module header"]
fn write_the_frozen_fixture() {
    if std::env::var_os("CAIRN_WRITE_FIXTURE").is_none() || fixture().exists() {
        panic!("set CAIRN_WRITE_FIXTURE=1 and remove {} only to make the fixture anew", fixture().display());
    }
    let env = env_at(&fixture().join("repo"));
    let input = env.path("input");
    cmd(&env).arg("init").assert().success();
    // Files: a multi-chunk file, small files (inline trees), an empty file, a symlink.
    let tree = input.join("tree");
    std::fs::create_dir_all(tree.join("etc/app")).unwrap();
    std::fs::write(tree.join("big.bin"), bytes(1, 300_000)).unwrap();
    std::fs::write(tree.join("etc/app/app.conf"), b"listen = 127.0.0.1:8080\n").unwrap();
    std::fs::write(tree.join("etc/app/empty"), b"").unwrap();
    std::os::unix::fs::symlink("app/app.conf", tree.join("etc/current.conf")).unwrap();
    cmd(&env).args(["backup", "files", "--name", "tree"]).arg(&tree).assert().success();
    std::fs::write(tree.join("etc/app/app.conf"), b"listen = 127.0.0.1:9090\n").unwrap();
    cmd(&env).args(["backup", "files", "--name", "tree"]).arg(&tree).assert().success();
    // A stream.
    let stream = bytes(2, 100_000);
    cmd(&env).args(["backup", "stdin", "--name", "dump"]).write_stdin(stream.clone()).assert().success();
    // A tar archive.
    let archive = input.join("config.tar");
    let status = std::process::Command::new("tar").arg("-cf").arg(&archive).arg("-C").arg(&tree).arg("etc").status();
    assert!(status.unwrap().success());
    cmd(&env).args(["backup", "tar", "--name", "config"]).arg(&archive).assert().success();
    // A SQLite database.
    let db = input.join("app.db");
    let script = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table t(k integer primary key, v text)'); \
                  c.executemany('insert into t(v) values (?)', [('row %d' % i,) for i in range(2000)]); c.commit()";
    assert!(std::process::Command::new("python3").args(["-c", script]).arg(&db).status().unwrap().success());
    cmd(&env).args(["backup", "sqlite", "--name", "appdb"]).arg(&db).assert().success();
    // Secrets.
    let keys = input.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("server.key"), b"-----BEGIN PRIVATE KEY-----\nfixture\n-----END PRIVATE KEY-----\n")
        .unwrap();
    cmd(&env).args(["key", "init-secrets"]).assert().success();
    cmd(&env).args(["backup", "secrets", "--name", "keys"]).arg(&keys).assert().success();
    // WAL: two segments, a history file.
    for n in [1, 2] {
        let (name, data) = segment(n);
        let path = input.join(&name);
        std::fs::write(&path, data).unwrap();
        cmd(&env).args(["wal", "push", "--source", "main"]).arg(&path).assert().success();
    }
    let history = input.join("00000002.history");
    std::fs::write(&history, "1\t0/1800000\tno recovery target specified\n").unwrap();
    cmd(&env).args(["wal", "push", "--source", "main"]).arg(&history).assert().success();
    // Removal: forget the first tree snapshot and prune (generation, candidate set).
    let out = cmd(&env).args(["--json", "snapshots"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first =
        list.as_array().unwrap().iter().find(|s| s["name"] == "tree").unwrap()["id"].as_str().unwrap().to_string();
    cmd(&env).args(["forget", "--keep-last", "1", "--name", "tree"]).assert().success();
    cmd(&env).args(["prune"]).assert().success();
    let _ = first;
    cmd(&env).args(["check", "--read-data"]).assert().success();
    // What every later version must restore.
    let mut expected = serde_json::Map::new();
    expected.insert("tree".into(), serde_json::to_value(listing(&tree)).unwrap());
    expected.insert("dump".into(), fnv(&stream).into());
    // `restore --tar` gives the members back in archive order, not the input's padding.
    let tar_out = env.path("config.restored.tar");
    cmd(&env).args(["restore", "latest", "--name", "config", "--tar"]).arg(&tar_out).assert().success();
    expected.insert("config".into(), fnv(&std::fs::read(&tar_out).unwrap()).into());
    let restored = env.path("appdb.restored");
    cmd(&env).args(["restore", "latest", "--name", "appdb", "--to"]).arg(&restored).assert().success();
    expected.insert("appdb".into(), fnv(&std::fs::read(&restored).unwrap()).into());
    expected.insert("keys".into(), serde_json::to_value(listing(&keys)).unwrap());
    for n in [1, 2] {
        let (name, data) = segment(n);
        expected.insert(format!("wal/{name}"), fnv(&data).into());
    }
    expected.insert("wal/00000002.history".into(), fnv(&std::fs::read(&history).unwrap()).into());
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(expected)).unwrap();
    std::fs::write(fixture().join("expected.json"), text + "\n").unwrap();
    // The cache is not part of the repository.
    assert!(!fixture().join("repo/cache").exists());
}

#[test]
fn the_frozen_repository_opens_checks_clean_and_restores_what_was_recorded() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let status = std::process::Command::new("cp").arg("-a").arg(fixture().join("repo")).arg(&repo).status().unwrap();
    assert!(status.success());
    let env = env_at(&repo);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("expected.json")).unwrap()).unwrap();
    cmd(&env).args(["check", "--read-data"]).assert().success();
    let out = cmd(&env).args(["--json", "snapshots"]).output().unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["appdb", "config", "dump", "keys", "tree"], "one snapshot of each name survives the prune");

    let tree = env.path("tree");
    cmd(&env).args(["restore", "latest", "--name", "tree", "--to"]).arg(&tree).assert().success();
    let restored = listing(&tree);
    // A files snapshot stores the absolute path of what was backed up: compare below it.
    let root = restored.keys().find(|k| k.ends_with("input/tree")).cloned();
    let below: BTreeMap<String, String> = match root {
        Some(root) => restored
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{root}/"))?.to_string(), v.clone())))
            .collect(),
        None => restored,
    };
    assert_eq!(serde_json::to_value(&below).unwrap(), expected["tree"], "the files snapshot restores as recorded");

    let out = cmd(&env).args(["restore", "latest", "--name", "dump", "--stdout"]).output().unwrap();
    assert_eq!(fnv(&out.stdout), expected["dump"]);
    let archive = env.path("config.tar");
    cmd(&env).args(["restore", "latest", "--name", "config", "--tar"]).arg(&archive).assert().success();
    assert_eq!(
        fnv(&std::fs::read(&archive).unwrap()),
        expected["config"],
        "the tar archive restores as it did when recorded"
    );
    let db = env.path("app.db");
    cmd(&env).args(["restore", "latest", "--name", "appdb", "--to"]).arg(&db).assert().success();
    assert_eq!(fnv(&std::fs::read(&db).unwrap()), expected["appdb"]);
    let keys = env.path("keys");
    cmd(&env).args(["restore", "latest", "--name", "keys", "--to"]).arg(&keys).assert().success();
    let restored = listing(&keys);
    let file = restored.iter().find(|(k, _)| k.ends_with("server.key")).map(|(_, v)| v.clone());
    assert_eq!(file.as_deref(), expected["keys"]["server.key"].as_str(), "the secret comes back");
    for name in ["000000010000000000000001", "000000010000000000000002", "00000002.history"] {
        let dest = env.path(name);
        cmd(&env).args(["wal", "fetch", "--source", "main", name]).arg(&dest).assert().success();
        assert_eq!(fnv(&std::fs::read(&dest).unwrap()), expected[format!("wal/{name}")], "{name}");
    }
}
