//! PostgreSQL logical dumps: `cairn backup pg` runs pg_dump, `cairn restore --to-db` runs
//! pg_restore or psql (docs/postgres.md).
//!
//! The default dump format is custom without compression (`-Fc -Z0`): cairn compresses
//! and deduplicates the stream itself, and pg_restore can then restore with `--jobs`,
//! `--clean`, `--create` or a selection. Plain SQL (`--format plain`) deduplicates a
//! little better and restores through psql. docs/postgres.md has the measurement.

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::SnapshotFile;
use crate::ops::backup::{self, BackupOptions, BackupResult};
use crate::pg::client::{check_status, server_facts, spawn_error};
use crate::pg::globals::{apply_globals, dump_globals, Globals};
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::Repository;
use std::collections::BTreeMap;
use std::process::Stdio;

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

/// Run pg_dump and store its output as one stream snapshot of kind `pg`; with `globals`,
/// `pg_dumpall --globals-only` first, kept in the snapshot's metadata (`globals`).
#[allow(clippy::too_many_arguments)]
pub async fn backup_dump(
    repo: &Repository,
    dbname: Option<&str>,
    format: DumpFormat,
    extra: &[String],
    globals: Globals,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let (version, database) = server_facts(dbname)?;
    let globals_sql = match globals {
        Globals::Skip => None,
        mode => Some(dump_globals(dbname, mode)?),
    };
    let mut cmd = crate::process::child("pg_dump");
    match format {
        DumpFormat::Custom => cmd.args(["--format=custom", "--compress=0"]),
        DumpFormat::Plain => cmd.arg("--format=plain"),
    };
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    cmd.args(extra);
    // Fail fast with a clear message rather than a spawn error inside the saver.
    if let Err(e) = crate::process::child("pg_dump").arg("--version").stdout(Stdio::null()).status() {
        return Err(spawn_error("pg_dump", e));
    }
    let mut meta: BTreeMap<String, serde_json::Value> = options.meta.clone();
    meta.insert("server_version".into(), version.into());
    meta.insert("database".into(), database.into());
    meta.insert("format".into(), format.name().into());
    if !extra.is_empty() {
        meta.insert("pg_dump_args".into(), extra.to_vec().into());
    }
    if let Some(sql) = globals_sql {
        meta.insert("globals".into(), sql.into());
        meta.insert("globals_passwords".into(), (globals == Globals::WithPasswords).into());
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
    /// Custom format: `pg_restore --no-owner`.
    pub no_owner: bool,
    /// Custom format: `pg_restore --no-privileges`.
    pub no_privileges: bool,
    /// Custom format: `pg_restore --no-tablespaces`.
    pub no_tablespaces: bool,
    /// `pg_restore --role`: the role the restore runs as.
    pub role: Option<String>,
    /// Apply the snapshot's roles and tablespaces (if it has them) first.
    pub globals: bool,
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
    let custom_only = target.clean
        || target.create
        || target.jobs > 1
        || target.no_owner
        || target.no_privileges
        || target.no_tablespaces
        || target.role.is_some();
    if format == DumpFormat::Plain && custom_only {
        return Err(Error::invalid(
            "this snapshot is a plain SQL dump: --clean, --create, --jobs, --no-owner, --no-privileges and --role need \
             a custom-format dump (pass them to pg_dump at backup time, or back up with the default --format custom)",
        ));
    }
    if let (true, Some(sql)) = (target.globals, snapshot.meta.get("globals").and_then(|v| v.as_str())) {
        apply_globals(&target.conninfo, sql, !target.no_tablespaces)?;
    }
    let mut cmd;
    let mut materialised = None;
    match format {
        DumpFormat::Plain => {
            cmd = crate::process::child("psql");
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", &target.conninfo]);
        }
        DumpFormat::Custom => {
            cmd = crate::process::child("pg_restore");
            cmd.args(["--exit-on-error", "--dbname", &target.conninfo]);
            if target.clean {
                cmd.args(["--clean", "--if-exists"]);
            }
            if target.create {
                cmd.arg("--create");
            }
            if target.no_owner {
                cmd.arg("--no-owner");
            }
            if target.no_privileges {
                cmd.arg("--no-privileges");
            }
            if target.no_tablespaces {
                cmd.arg("--no-tablespaces");
            }
            if let Some(role) = &target.role {
                cmd.arg(format!("--role={role}"));
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
        streamed.map(|_| ()).map_err(|e| match e.kind() {
            ErrorKind::OutputClosed => Error::source(format!("{program} stopped reading the dump before its end")),
            _ => e,
        })
    }
    .await;
    if let Some(file) = materialised {
        let _ = std::fs::remove_file(file);
    }
    result
}
