//! A small harness: a temporary repository and a `cairn` command bound to it.

use assert_cmd::Command;
use std::path::{Path, PathBuf};

pub const PASSWORD: &str = "correct horse";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    /// Extra environment for every command (storage credentials and endpoints).
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A fresh, initialised repository with cheap key derivation.
    pub fn new() -> Self {
        let env = Self::empty();
        env.cmd().arg("init").assert().success();
        env
    }

    /// A temporary directory with no repository yet.
    pub fn empty() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        Env { dir, repo, vars: Vec::new() }
    }

    /// A fresh, uninitialised environment whose repository is `url` on the S3 server,
    /// with its credentials and endpoint in `vars`.
    pub fn s3(url: &str, endpoint: &str) -> Self {
        let mut env = Self::empty();
        env.repo = PathBuf::from(url);
        env.vars = vec![
            ("AWS_ACCESS_KEY_ID".into(), super::s3server::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), super::s3server::SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), endpoint.into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ];
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cairn` with a clean environment: this repository, password, cache and HOME.
    pub fn bare(&self) -> Command {
        let mut cmd = Command::cargo_bin("cairn").unwrap();
        for (key, _) in std::env::vars() {
            if ["CAIRN_", "XDG_", "AWS_", "OSS_"].iter().any(|p| key.starts_with(p)) {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd.env("HOME", self.path("home"))
            .env("CAIRN_CACHE_DIR", self.path("cache"))
            .env("CAIRN_KDF_MEMORY_MIB", "8")
            .env("CAIRN_KDF_ITERATIONS", "1");
        cmd
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = self.bare();
        cmd.env("CAIRN_REPO", &self.repo).env("CAIRN_PASSWORD", PASSWORD);
        cmd
    }

    /// `cairn` as a plain `std::process::Command` (for tests that spawn and signal it),
    /// with the same environment as [`Env::cmd`].
    pub fn spawnable(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("cairn"));
        for (key, value) in self.cmd().get_envs() {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Back up `data` from stdin under `name`; returns the snapshot's JSON report.
    pub fn backup_stdin(&self, name: &str, data: &[u8]) -> serde_json::Value {
        let out = self
            .cmd()
            .args(["--json", "backup", "stdin", "--name", name])
            .write_stdin(data.to_vec())
            .assert()
            .success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    pub fn restore_stdout(&self, snapshot: &str) -> Vec<u8> {
        self.cmd().args(["restore", snapshot, "--stdout"]).assert().success().get_output().stdout.clone()
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.cmd().args(["--json", "snapshots"]).assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    }

    pub fn check_read_data(&self) {
        self.cmd().args(["check", "--read-data"]).assert().success();
    }

    /// Pack files in the repository.
    pub fn packs(&self) -> Vec<PathBuf> {
        walk(&self.repo.join("data"))
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if entry.file_type().is_file() {
            out.push(entry.path().to_path_buf());
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A pg_dump-like text stream of `rows` rows; night `variant` updates three scattered rows
/// and appends `variant * 100` new ones, as a day of a small application would.
pub fn sql_dump(rows: usize, variant: u64) -> Vec<u8> {
    let mut out =
        String::from("--\n-- PostgreSQL database dump\n--\nCOPY public.accounts (id, name, balance) FROM stdin;\n");
    let total = rows + variant as usize * 100;
    for i in 0..total {
        let changed = variant > 0 && [rows / 5, rows / 2, rows * 4 / 5].contains(&i);
        let balance = if changed { i * 31 + variant as usize } else { i * 17 };
        out.push_str(&format!("{i}\tcustomer-{:08x}\t{balance}.00\n", (i as u64).wrapping_mul(2654435761)));
    }
    out.push_str("\\.\n");
    out.into_bytes()
}
