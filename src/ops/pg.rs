//! PostgreSQL logical dumps: `cairn backup pg` runs pg_dump, `cairn restore --to-db` runs
//! pg_restore or psql (docs/postgres.md).
//!
//! The default dump format is custom without compression (`-Fc -Z0`): cairn compresses
//! and deduplicates the stream itself, and pg_restore can then restore with `--jobs`,
//! `--clean`, `--create` or a selection. Plain SQL (`--format plain`) deduplicates a
//! little better and restores through psql. docs/postgres.md has the measurement.

use crate::error::{Error, ErrorKind, Result};
use crate::ops::backup::{self, BackupOptions, BackupResult};
use crate::ops::Cancel;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::SnapshotFile;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// Dump formats cairn stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// `pg_dump --format=custom --compress=0`
    Custom,
    /// `pg_dump --format=plain`
    Plain,
}

impl DumpFormat {
    pub fn name(self) -> &'static str {
        match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Plain => "plain",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "custom" => Ok(DumpFormat::Custom),
            "plain" => Ok(DumpFormat::Plain),
            other => Err(Error::invalid(format!("dump format {other:?}: use custom or plain"))),
        }
    }
}

/// A missing client program is named, with what to install.
fn spawn_error(program: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::source(format!(
            "{program} was not found in PATH: install the PostgreSQL client (Debian: postgresql-client) or add its bin directory to PATH"
        ))
    } else {
        Error::source(format!("cannot run {program}: {e}"))
    }
}

/// Ask the server for its version and the database name (this also checks the conninfo
/// before the dump starts).
pub fn server_facts(dbname: Option<&str>) -> Result<(String, String)> {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("select current_setting('server_version') || '|' || current_database()");
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error("psql", e))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(Error::source(format!(
            "cannot connect to PostgreSQL{}: {message}; check --dbname and the server",
            dbname.map(|d| format!(" with {:?}", redact_conninfo(d))).unwrap_or_default()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (version, database) = text.split_once('|').unwrap_or((&text, ""));
    Ok((version.to_string(), database.to_string()))
}

/// A conninfo or URI with any password removed, for messages and metadata.
pub fn redact_conninfo(conninfo: &str) -> String {
    if let Some((scheme, rest)) = conninfo.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or_default();
            return format!("{scheme}://{user}@{host}");
        }
        return conninfo.to_string();
    }
    conninfo.split_whitespace().filter(|kv| !kv.starts_with("password=")).collect::<Vec<_>>().join(" ")
}

/// Run pg_dump and store its output as one stream snapshot of kind `pg`.
pub async fn backup_dump(
    repo: &Repository,
    dbname: Option<&str>,
    format: DumpFormat,
    extra: &[String],
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let (version, database) = server_facts(dbname)?;
    let mut cmd = Command::new("pg_dump");
    match format {
        DumpFormat::Custom => cmd.args(["--format=custom", "--compress=0"]),
        DumpFormat::Plain => cmd.arg("--format=plain"),
    };
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    cmd.args(extra);
    // Fail fast with a clear message rather than a spawn error inside the saver.
    if let Err(e) = Command::new("pg_dump").arg("--version").stdout(Stdio::null()).status() {
        return Err(spawn_error("pg_dump", e));
    }
    let mut meta: BTreeMap<String, serde_json::Value> = options.meta.clone();
    meta.insert("server_version".into(), version.into());
    meta.insert("database".into(), database.into());
    meta.insert("format".into(), format.name().into());
    if !extra.is_empty() {
        meta.insert("pg_dump_args".into(), extra.to_vec().into());
    }
    let options = BackupOptions { meta, kind: "pg".into(), ..options.clone() };
    backup::backup_process(repo, cmd, "pg_dump", &options, cancel, progress).await
}

/// How to restore a dump into a database.
#[derive(Debug, Clone, Default)]
pub struct DbRestore {
    pub conninfo: String,
    pub jobs: u32,
    pub clean: bool,
    pub create: bool,
}

/// The format a pg snapshot was dumped in (`plain` for a stream piped in by hand
/// whose first bytes are not pg_dump's custom header).
pub fn snapshot_format(snapshot: &SnapshotFile) -> Option<DumpFormat> {
    snapshot.meta.get("format").and_then(|v| v.as_str()).and_then(|f| DumpFormat::parse(f).ok())
}

/// Restore a dump snapshot into a database through pg_restore (custom) or psql (plain).
/// Parallel restore needs a seekable file: the dump is materialised in `scratch` first.
pub async fn restore_to_db(
    repo: &Repository,
    snapshot: &SnapshotFile,
    target: &DbRestore,
    scratch: &std::path::Path,
    progress: &dyn Progress,
) -> Result<()> {
    let content = snapshot
        .content
        .as_ref()
        .ok_or_else(|| Error::invalid("this snapshot is a file tree, not a database dump: restore it with --to DIR"))?;
    let format = match snapshot_format(snapshot) {
        Some(f) => f,
        None => {
            // Piped in with `backup stdin --kind pg`: look at the first bytes.
            let mut head = Vec::new();
            let mut walker = crate::repo::load::LeafWalker::new(repo, content);
            if let Some(first) = walker.next().await? {
                head = repo.load_blob(&first.0).await?;
            }
            if head.starts_with(b"PGDMP") {
                DumpFormat::Custom
            } else {
                DumpFormat::Plain
            }
        }
    };
    let mut cmd;
    let mut materialised = None;
    match format {
        DumpFormat::Plain => {
            if target.clean || target.create || target.jobs > 1 {
                return Err(Error::invalid(
                    "this snapshot is a plain SQL dump: --clean, --create and --jobs need a custom-format dump \
                     (pass them to pg_dump at backup time, or back up with the default --format custom)",
                ));
            }
            cmd = Command::new("psql");
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", &target.conninfo]);
        }
        DumpFormat::Custom => {
            cmd = Command::new("pg_restore");
            cmd.args(["--exit-on-error", "--dbname", &target.conninfo]);
            if target.clean {
                cmd.args(["--clean", "--if-exists"]);
            }
            if target.create {
                cmd.arg("--create");
            }
            if target.jobs > 1 {
                let file =
                    scratch.join(format!(".cairn-restore-{}.dump", hex::encode(crate::crypto::random_bytes::<6>())));
                crate::ops::restore::restore_stream_to_file(repo, content, &file, progress).await?;
                cmd.arg(format!("--jobs={}", target.jobs)).arg(&file);
                materialised = Some(file);
            }
        }
    }
    let program = if format == DumpFormat::Plain { "psql" } else { "pg_restore" };
    let result = async {
        if materialised.is_some() {
            let status = cmd.stdin(Stdio::null()).status().map_err(|e| spawn_error(program, e))?;
            return check_status(program, status);
        }
        let mut child = cmd.stdin(Stdio::piped()).spawn().map_err(|e| spawn_error(program, e))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let streamed = crate::ops::restore::restore_stream(repo, content, &mut stdin, progress).await;
        drop(stdin);
        let status = child.wait().map_err(|e| Error::source(format!("cannot wait for {program}: {e}")))?;
        check_status(program, status)?;
        streamed.map(|_| ())
    }
    .await;
    if let Some(file) = materialised {
        let _ = std::fs::remove_file(file);
    }
    result
}

fn check_status(program: &str, status: std::process::ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Source,
            format!("{program} {status}: the restore into the database did not complete (its messages are above)"),
        ))
    }
}
