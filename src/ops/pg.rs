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
    let mut cmd = super::child("psql");
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
    let mut cmd = super::child("pg_dump");
    match format {
        DumpFormat::Custom => cmd.args(["--format=custom", "--compress=0"]),
        DumpFormat::Plain => cmd.arg("--format=plain"),
    };
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    cmd.args(extra);
    // Fail fast with a clear message rather than a spawn error inside the saver.
    if let Err(e) = super::child("pg_dump").arg("--version").stdout(Stdio::null()).status() {
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
    /// Custom format: skip ownership and privileges (a drill's throwaway cluster lacks
    /// the production roles).
    pub no_owner: bool,
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
            cmd = super::child("psql");
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", &target.conninfo]);
        }
        DumpFormat::Custom => {
            cmd = super::child("pg_restore");
            cmd.args(["--exit-on-error", "--dbname", &target.conninfo]);
            if target.clean {
                cmd.args(["--clean", "--if-exists"]);
            }
            if target.create {
                cmd.arg("--create");
            }
            if target.no_owner {
                cmd.args(["--no-owner", "--no-privileges"]);
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

/// The `KEY: value` lines of a backup_label or backup history file.
pub fn label_fields(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// `0/2000028 (file 000000010000000000000002)` → the LSN.
fn label_lsn(fields: &BTreeMap<String, String>, key: &str) -> Result<u64> {
    fields
        .get(key)
        .and_then(|v| crate::wal::parse_lsn(v.split_whitespace().next()?))
        .ok_or_else(|| Error::source(format!("the backup label has no valid {key}")))
}

/// `2026-11-22 07:40:01 UTC` → a timestamp (the server's log_timezone must be UTC/GMT or a
/// numeric offset; otherwise `None`).
pub fn label_time(text: &str) -> Option<jiff::Timestamp> {
    let (datetime, zone) = text.rsplit_once(' ')?;
    let civil: jiff::civil::DateTime = datetime.parse().ok()?;
    let offset = match zone {
        "UTC" | "GMT" | "Z" => jiff::tz::Offset::UTC,
        z => {
            let (sign, digits) = match z.as_bytes().first()? {
                b'+' => (1, &z[1..]),
                b'-' => (-1, &z[1..]),
                _ => return None,
            };
            let (h, m) = digits.split_once(':').unwrap_or((digits, "0"));
            jiff::tz::Offset::from_seconds(sign * (h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60)).ok()?
        }
    };
    offset.to_timestamp(civil).ok()
}

/// How long `backup pg-base` waits for the server to archive the backup's last WAL.
pub const WAL_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Run pg_basebackup (tar to stdout, no WAL) and store the data directory as a tree of
/// kind `pg-base`; commit only once the WAL up to the stop LSN is in the archive of
/// `source`. The snapshot records start/stop LSN, timeline, system identifier and times.
pub async fn backup_base(
    repo: &Repository,
    dbname: Option<&str>,
    source: &str,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    crate::wal::check_source(source)?;
    let (version, database) = server_facts(dbname)?;
    let system_identifier = query_one(dbname, "select system_identifier from pg_control_system()")?;
    let cluster = crate::wal::source_info(repo.backend(), repo.key(), source).await?.ok_or_else(|| {
        Error::invalid(format!(
            "WAL source {source:?} has no archived WAL yet: set archive_command = 'cairn wal push %p --source {source}' \
             (and archive_mode = on) on this server first, so the base backup can be restored"
        ))
    })?;
    if cluster.system_identifier.to_string() != system_identifier {
        return Err(Error::invalid(format!(
            "WAL source {source:?} archives the cluster {}, but this server is {system_identifier}: pick the source its archive_command uses",
            cluster.system_identifier
        )));
    }
    if let Err(e) = super::child("pg_basebackup").arg("--version").stdout(Stdio::null()).status() {
        return Err(spawn_error("pg_basebackup", e));
    }
    let mut cmd = super::child("pg_basebackup");
    cmd.args(["-D", "-", "--format=tar", "--wal-method=none", "--no-manifest", "--checkpoint=fast"]);
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let params = repo.config().chunker;
    let handle = tokio::runtime::Handle::current();
    let mut meta = options.meta.clone();
    meta.insert("server_version".into(), version.into());
    meta.insert("database".into(), database.into());
    meta.insert("system_identifier".into(), system_identifier.into());
    meta.insert("source".into(), source.into());
    let options = BackupOptions { meta, kind: "pg-base".into(), ..options.clone() };
    backup::run(repo, &options, None, |saver, stats, _| {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error("pg_basebackup", e))?;
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let stdout = child.stdout.take().expect("piped");
        progress.begin("reading base backup", None);
        let imported = crate::source::tar::import(
            saver,
            stdout,
            params,
            &crate::source::tar::ImportOptions { capture: &["backup_label", "tablespace_map"], ..Default::default() },
            cancel,
            progress,
            stats,
        );
        progress.end();
        if imported.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| Error::source(format!("cannot wait for pg_basebackup: {e}")))?;
        let errors = errors.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::source(format!(
                "pg_basebackup {status}: {}; no snapshot was written",
                errors.split_whitespace().collect::<Vec<_>>().join(" ")
            )));
        }
        let imported = imported?;
        let label = imported.captured.get("backup_label").ok_or_else(|| {
            Error::source("pg_basebackup's archive has no backup_label; no snapshot was written")
        })?;
        let fields = label_fields(&String::from_utf8_lossy(label));
        let start_lsn = label_lsn(&fields, "START WAL LOCATION")?;
        let timeline: u32 = fields.get("START TIMELINE").and_then(|t| t.parse().ok()).unwrap_or(1);
        // The server archives a backup history file naming the stop point; wait for it and
        // for the segment holding the stop LSN.
        let seg = cluster.segment_size;
        let history = format!(
            "{}.{:08X}.backup",
            crate::wal::segment_of(timeline, start_lsn, seg),
            start_lsn % u64::from(seg)
        );
        let deadline = std::time::Instant::now() + WAL_WAIT;
        let history_text = loop {
            cancel.check()?;
            match handle.block_on(crate::wal::read(repo.backend(), repo.key(), source, &history)) {
                Ok(bytes) => break String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) if e.kind() == ErrorKind::NotFound && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(Error::source(format!(
                        "the server did not archive {history} within {} s: check archive_command and pg_stat_archiver; no snapshot was written",
                        WAL_WAIT.as_secs()
                    )))
                }
                Err(e) => return Err(e),
            }
        };
        let stop = label_fields(&history_text);
        let stop_lsn = label_lsn(&stop, "STOP WAL LOCATION")?;
        let stop_timeline: u32 = stop.get("STOP TIMELINE").and_then(|t| t.parse().ok()).unwrap_or(timeline);
        let last_segment = crate::wal::segment_of(stop_timeline, stop_lsn.saturating_sub(1), seg);
        loop {
            cancel.check()?;
            let key = crate::wal::object_key(source, &last_segment);
            if handle.block_on(repo.backend().head(&key))?.is_some() {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::source(format!(
                    "WAL segment {last_segment} (holding the stop LSN {}) was not archived within {} s: check archive_command; no snapshot was written",
                    crate::wal::format_lsn(stop_lsn),
                    WAL_WAIT.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let mut learned = BTreeMap::new();
        learned.insert("start_lsn".into(), crate::wal::format_lsn(start_lsn).into());
        learned.insert("stop_lsn".into(), crate::wal::format_lsn(stop_lsn).into());
        learned.insert("timeline".into(), timeline.into());
        learned.insert("start_wal".into(), crate::wal::segment_of(timeline, start_lsn, seg).into());
        learned.insert("stop_wal".into(), last_segment.into());
        learned.insert("backup_history".into(), history.into());
        if let Some(t) = stop.get("START TIME") {
            learned.insert("start_time_text".into(), t.clone().into());
        }
        let stop_time = stop.get("STOP TIME").and_then(|t| label_time(t)).unwrap_or_else(jiff::Timestamp::now);
        learned.insert("stop_time".into(), stop_time.to_string().into());
        if let Some(start) = stop.get("START TIME").and_then(|t| label_time(t)) {
            learned.insert("start_time".into(), start.to_string().into());
        }
        Ok(backup::Root::TreeWithMeta(imported.root, Vec::new(), learned))
    })
    .await
}

/// One value from the server.
fn query_one(dbname: Option<&str>, sql: &str) -> Result<String> {
    let mut cmd = super::child("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error("psql", e))?;
    if !out.status.success() {
        return Err(Error::source(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Time(jiff::Timestamp),
    Lsn(u64),
    Xid(String),
    Name(String),
    Immediate,
    Latest,
}

#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub pgdata: std::path::PathBuf,
    pub source: String,
    pub target: Target,
    /// promote, pause or shutdown
    pub action: String,
    /// current, latest or a number
    pub timeline: Option<String>,
    pub archive_off: bool,
    /// A base backup chosen by the caller (id prefix or `latest`) instead of the newest
    /// that ends before the target.
    pub base: Option<String>,
    /// The restore_command the restored server runs (calls `cairn wal fetch`).
    pub restore_command: String,
    pub port: Option<u16>,
    pub start: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PitrReport {
    pub base: crate::id::SnapshotId,
    pub base_stop_lsn: String,
    pub first_wal: String,
    pub last_archived_wal: String,
    /// With --start: where recovery ended.
    pub reached_lsn: Option<String>,
    pub reached_time: Option<String>,
    pub server_state: Option<String>,
}

fn meta_str<'a>(s: &'a SnapshotFile, key: &str) -> Option<&'a str> {
    s.meta.get(key).and_then(|v| v.as_str())
}

/// Point-in-time recovery into an empty directory: choose the base backup, check the
/// archived WAL it needs, restore it, and configure (and optionally run) recovery.
pub async fn pitr(repo: &Repository, options: &PitrOptions, progress: &dyn Progress) -> Result<PitrReport> {
    crate::wal::check_source(&options.source)?;
    let pgdata = &options.pgdata;
    if pgdata.exists() {
        let empty = std::fs::read_dir(pgdata).map_err(|e| Error::io("read", pgdata, e))?.next().is_none();
        if !empty {
            return Err(Error::invalid(format!(
                "{} is not empty: point-in-time recovery restores into an empty or new directory; nothing was changed",
                pgdata.display()
            )));
        }
    }
    // The base backup.
    let bases: Vec<(crate::id::SnapshotId, SnapshotFile)> = repo
        .catalog()
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.kind == "pg-base" && meta_str(s, "source") == Some(options.source.as_str()))
        .collect();
    let stop_lsn = |s: &SnapshotFile| meta_str(s, "stop_lsn").and_then(crate::wal::parse_lsn).unwrap_or(u64::MAX);
    let stop_time = |s: &SnapshotFile| meta_str(s, "stop_time").and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let (base_id, base) = match &options.base {
        Some(spec) => {
            let filter = crate::repo::SnapshotFilter { kind: Some("pg-base".into()), ..Default::default() };
            repo.find_snapshot(spec, &filter)?
        }
        None => {
            let fits = |s: &SnapshotFile| match &options.target {
                Target::Time(t) => stop_time(s).is_some_and(|st| st <= *t),
                Target::Lsn(l) => stop_lsn(s) <= *l,
                _ => true,
            };
            match bases.iter().rev().find(|(_, s)| fits(s)) {
                Some(found) => found.clone(),
                None => {
                    let oldest = bases.first().map(|(id, s)| {
                        format!(
                            "; the oldest, {}, ends at {} ({})",
                            id.short(),
                            meta_str(s, "stop_lsn").unwrap_or("?"),
                            meta_str(s, "stop_time").unwrap_or("?")
                        )
                    });
                    return Err(Error::not_found(format!(
                        "no base backup of WAL source {:?} ends before the target{}: choose a later target, or take a base backup with `cairn backup pg-base`",
                        options.source,
                        oldest.unwrap_or_else(|| " (there are none)".into())
                    )));
                }
            }
        }
    };
    // The WAL it needs: from its first segment through its stop, without a gap, and for an
    // LSN target through the target's segment.
    let listing = crate::wal::list(repo.backend(), repo.key(), &options.source).await?;
    let segment_size = listing.cluster.as_ref().map_or(16 << 20, |c| c.segment_size);
    let timeline: u32 = base.meta.get("timeline").and_then(|v| v.as_u64()).unwrap_or(1) as u32;
    let first =
        meta_str(&base, "start_wal").ok_or_else(|| Error::corrupt("base backup snapshot lacks start_wal"))?.to_string();
    let mut needed_last = meta_str(&base, "stop_wal").unwrap_or(&first).to_string();
    if let Target::Lsn(l) = options.target {
        needed_last = needed_last.max(crate::wal::segment_of(timeline, l, segment_size));
    }
    let tl = listing.timelines.iter().find(|t| t.timeline == timeline);
    let range = tl.and_then(|t| t.ranges.iter().find(|r| r.first <= first && first <= r.last));
    let Some(range) = range else {
        return Err(Error::not_found(format!(
            "WAL segment {first}, where base backup {} starts, is not archived in source {:?}: the backup cannot be restored",
            base_id.short(),
            options.source
        )));
    };
    if range.last < needed_last {
        let last_archived = tl.and_then(|t| t.ranges.last()).map(|r| r.last.clone()).unwrap_or_default();
        let missing = next_segment(&range.last, segment_size);
        return Err(Error::not_found(if last_archived <= range.last {
            format!(
                "the target is after the last archived WAL ({}): WAL up to {needed_last} is needed; wait for it to be archived or choose an earlier target",
                range.last
            )
        } else {
            format!(
                "archived WAL has a gap: {missing} is missing (needed up to {needed_last}); recovery cannot pass it"
            )
        }));
    }
    // Restore the data directory.
    let root = base.tree.ok_or_else(|| Error::corrupt("base backup snapshot has no tree"))?;
    std::fs::create_dir_all(pgdata).map_err(|e| Error::io("create", pgdata, e))?;
    crate::ops::restore::restore_tree_to_dir(repo, &root, pgdata, &Default::default(), progress).await?;
    let owner = std::fs::metadata(pgdata.join("PG_VERSION")).map_err(|e| Error::io("inspect", pgdata, e))?;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |what: &str, e| Error::io(what, pgdata, e);
    if is_root() {
        std::os::unix::fs::chown(pgdata, Some(owner.uid()), Some(owner.gid())).map_err(|e| io("chown", e))?;
    }
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700)).map_err(|e| io("chmod", e))?;
    let wal_dir = pgdata.join("pg_wal");
    if wal_dir.exists() {
        for entry in std::fs::read_dir(&wal_dir).map_err(|e| io("read pg_wal", e))?.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
    std::fs::create_dir_all(wal_dir.join("archive_status")).map_err(|e| io("create pg_wal", e))?;
    if is_root() {
        for dir in [wal_dir.clone(), wal_dir.join("archive_status")] {
            std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid())).map_err(|e| io("chown", e))?;
        }
    }
    // Recovery settings.
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut conf = String::from("\n# Written by cairn pitr: point-in-time recovery settings.\n");
    conf.push_str(&format!("restore_command = {}\n", quote(&options.restore_command)));
    match &options.target {
        // PostgreSQL refuses zone abbreviations (like Z) here: write a numeric offset.
        Target::Time(t) => conf.push_str(&format!(
            "recovery_target_time = {}\n",
            quote(&t.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string())
        )),
        Target::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = {}\n", quote(&crate::wal::format_lsn(*l)))),
        Target::Xid(x) => conf.push_str(&format!("recovery_target_xid = {}\n", quote(x))),
        Target::Name(n) => conf.push_str(&format!("recovery_target_name = {}\n", quote(n))),
        Target::Immediate => conf.push_str("recovery_target = 'immediate'\n"),
        Target::Latest => {}
    }
    if options.target != Target::Latest {
        conf.push_str(&format!("recovery_target_action = {}\n", quote(&options.action)));
    }
    if let Some(tl) = &options.timeline {
        conf.push_str(&format!("recovery_target_timeline = {}\n", quote(tl)));
    }
    if options.archive_off {
        conf.push_str("archive_mode = off\n");
    }
    if let Some(port) = options.port {
        conf.push_str(&format!("port = {port}\n"));
    }
    let auto = pgdata.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&conf);
    std::fs::write(&auto, text).map_err(|e| Error::io("write", &auto, e))?;
    std::fs::write(pgdata.join("recovery.signal"), b"").map_err(|e| io("write recovery.signal", e))?;
    if is_root() {
        for f in [auto, pgdata.join("recovery.signal")] {
            std::os::unix::fs::chown(&f, Some(owner.uid()), Some(owner.gid()))
                .map_err(|e| Error::io("chown", &f, e))?;
        }
    }
    let last_archived_wal = tl.and_then(|t| t.ranges.last()).map(|r| r.last.clone()).unwrap_or_default();
    let mut report = PitrReport {
        base: base_id,
        base_stop_lsn: meta_str(&base, "stop_lsn").unwrap_or_default().to_string(),
        first_wal: first,
        last_archived_wal,
        reached_lsn: None,
        reached_time: None,
        server_state: None,
    };
    if options.start {
        run_recovery(pgdata, owner.uid(), options, &mut report)?;
    }
    Ok(report)
}

fn next_segment(name: &str, segment_size: u32) -> String {
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or(0);
    let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
    let n = hex(&name[8..16]) * per_log + hex(&name[16..24]) + 1;
    crate::wal::segment_name(hex(&name[..8]) as u32, n, segment_size)
}

fn is_root() -> bool {
    // Our effective uid, from /proc: the library has no unsafe code for geteuid().
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// A command run as the data directory's owner (root may not run the server).
fn as_owner(uid: u32, program: &std::path::Path) -> Command {
    if is_root() && uid != 0 {
        let user = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| {
                p.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
                })
            })
            .unwrap_or_else(|| uid.to_string());
        let mut cmd = super::child("runuser");
        cmd.args(["-u", &user, "--"]).arg(program);
        cmd
    } else {
        super::child(program)
    }
}

fn pg_bin(program: &str) -> std::path::PathBuf {
    super::child("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join(program))
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from(program))
}

/// The FATAL and PANIC lines of a server log (or its last line), joined.
fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let fatal: Vec<&str> = text.lines().filter(|l| l.contains("FATAL:") || l.contains("PANIC:")).collect();
    match fatal.is_empty() {
        true => text.lines().last().unwrap_or("no log").to_string(),
        false => fatal.join(" | "),
    }
}

/// Start the restored server, wait for recovery to end, and record where it ended.
fn run_recovery(pgdata: &std::path::Path, uid: u32, options: &PitrOptions, report: &mut PitrReport) -> Result<()> {
    let log = pgdata.join("cairn-pitr.log");
    let port = options.port.unwrap_or(5432).to_string();
    let server_opts = format!("-p {port} -k {}", pgdata.display());
    let out = as_owner(uid, &pg_bin("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .args(["-l"])
        .arg(&log)
        .args(["-o", &server_opts, "start"])
        .output()
        .map_err(|e| spawn_error("pg_ctl", e))?;
    let reached_shutdown = || std::fs::read_to_string(&log).unwrap_or_default().contains("shutdown at recovery target");
    if !out.status.success() {
        if options.action == "shutdown" && reached_shutdown() {
            report.server_state = Some("shut down at the target".into());
            return Ok(());
        }
        return Err(Error::source(format!(
            "the restored server did not start: {}; see {}",
            log_tail(&log),
            log.display()
        )));
    }
    let sql = |q: &str| -> Option<String> {
        let out = as_owner(uid, &pg_bin("psql"))
            .args(["-X", "-A", "-t", "-h"])
            .arg(pgdata)
            .args(["-p", &port, "-d", "postgres", "-c", q])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let alive = || {
        as_owner(uid, &pg_bin("pg_ctl")).arg("-D").arg(pgdata).arg("status").output().is_ok_and(|o| o.status.success())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if !alive() {
            let tail = log_tail(&log);
            if options.action == "shutdown" && reached_shutdown() {
                report.server_state = Some("shut down at the target".into());
                return Ok(());
            }
            return Err(Error::source(format!(
                "the restored server stopped during recovery: {tail}; see {}",
                log.display()
            )));
        }
        let state =
            sql("select case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() else 'promoted' end");
        let done = match state.as_deref() {
            Some("promoted") => Some("promoted: running read-write"),
            Some("paused") => Some("paused at the target (read-only)"),
            _ => None,
        };
        if let Some(state) = done {
            let facts = sql("select coalesce(pg_last_wal_replay_lsn()::text, ''), coalesce(pg_last_xact_replay_timestamp()::text, '')")
                .unwrap_or_default();
            let (lsn, time) = facts.split_once('|').unwrap_or((&facts, ""));
            report.reached_lsn = Some(lsn.to_string()).filter(|s| !s.is_empty());
            report.reached_time = Some(time.to_string()).filter(|s| !s.is_empty());
            report.server_state = Some(state.into());
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::source(format!("recovery did not finish within an hour; see {}", log.display())));
        }
    }
}

/// The uid that runs PostgreSQL programs for us: the `postgres` user when we are root
/// (the server refuses root), else ourselves (`None`).
fn server_user() -> Result<Option<u32>> {
    if !is_root() {
        return Ok(None);
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[0] == "postgres").then(|| f[2].parse().ok()).flatten()
            })
        })
        .map(Some)
        .ok_or_else(|| {
            Error::source(
                "running as root, drills start PostgreSQL as the `postgres` user, and there is none: create it",
            )
        })
}

/// Let the server user (when we are root) reach a data directory that will be created
/// inside `dir`, a private scratch directory that holds nothing else.
pub fn lend_to_server(dir: &std::path::Path) -> Result<()> {
    if let Some(uid) = server_user()? {
        std::os::unix::fs::chown(dir, Some(uid), None).map_err(|e| Error::io("chown", dir, e))?;
    }
    Ok(())
}

/// A PostgreSQL cluster in a scratch directory for restore drills: its socket in its
/// data directory, no TCP, stopped (fast) when dropped.
pub struct ScratchCluster {
    pub pgdata: std::path::PathBuf,
    pub port: u16,
    uid: u32,
    running: bool,
}

impl ScratchCluster {
    /// initdb into `pgdata` (which must not exist) and start the server.
    pub fn create(pgdata: &std::path::Path) -> Result<Self> {
        let user = server_user()?;
        let uid = user.unwrap_or(0);
        std::fs::create_dir_all(pgdata).map_err(|e| Error::io("create", pgdata, e))?;
        if let Some(uid) = user {
            if let Some(parent) = pgdata.parent() {
                lend_to_server(parent)?;
            }
            std::os::unix::fs::chown(pgdata, Some(uid), None).map_err(|e| Error::io("chown", pgdata, e))?;
        }
        let out = as_owner(uid, &pg_bin("initdb"))
            .arg("-D")
            .arg(pgdata)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .map_err(|e| spawn_error("initdb", e))?;
        if !out.status.success() {
            return Err(Error::source(format!(
                "initdb of the drill's cluster failed: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )));
        }
        let mut cluster = ScratchCluster { pgdata: pgdata.to_path_buf(), port: 5432, uid, running: false };
        cluster.start()?;
        Ok(cluster)
    }

    /// A server `pitr --start` left running in `pgdata` on `port`.
    pub fn adopt(pgdata: &std::path::Path, port: u16) -> Result<Self> {
        let owner = std::fs::metadata(pgdata.join("PG_VERSION")).map_err(|e| Error::io("inspect", pgdata, e))?;
        Ok(ScratchCluster {
            pgdata: pgdata.to_path_buf(),
            port,
            uid: std::os::unix::fs::MetadataExt::uid(&owner),
            running: true,
        })
    }

    fn start(&mut self) -> Result<()> {
        let log = self.pgdata.join("cairn-drill.log");
        let opts = format!("-p {} -k {} -c listen_addresses=''", self.port, self.pgdata.display());
        let out = as_owner(self.uid, &pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "start"])
            .output()
            .map_err(|e| spawn_error("pg_ctl", e))?;
        if !out.status.success() {
            return Err(Error::source(format!("the drill's server did not start: {}", log_tail(&log))));
        }
        self.running = true;
        Ok(())
    }

    /// A libpq connection string for database `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.pgdata.display(), self.port)
    }

    /// Run SQL in `db`; the unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = super::child(pg_bin("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--dbname", &self.conninfo(db), "-c", sql])
            .output()
            .map_err(|e| spawn_error("psql", e))?;
        if !out.status.success() {
            return Err(Error::source(format!(
                "{sql:?} in database {db} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Exact row counts of every user table of `db` (`schema.table`, rows).
    pub fn table_counts(&self, db: &str) -> Result<Vec<(String, i64)>> {
        let tables = self.sql(
            db,
            "select format('%I.%I', schemaname, tablename) from pg_tables \
             where schemaname not in ('pg_catalog', 'information_schema') order by 1",
        )?;
        let mut out = Vec::new();
        for table in tables.lines().filter(|l| !l.is_empty()) {
            let n = self.sql(db, &format!("select count(*) from {table}"))?;
            out.push((table.to_string(), n.parse().unwrap_or(-1)));
        }
        Ok(out)
    }

    /// The databases that are not templates.
    pub fn databases(&self) -> Result<Vec<String>> {
        Ok(self
            .sql("postgres", "select datname from pg_database where not datistemplate order by 1")?
            .lines()
            .map(str::to_string)
            .collect())
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_owner(self.uid, &pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.running = false;
        }
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
