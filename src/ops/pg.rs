//! PostgreSQL logical dumps: `cairn backup pg` runs pg_dump, `cairn restore --to-db` runs
//! pg_restore or psql (docs/postgres.md).
//!
//! The default dump format is custom without compression (`-Fc -Z0`): cairn compresses
//! and deduplicates the stream itself, and pg_restore can then restore with `--jobs`,
//! `--clean`, `--create` or a selection. Plain SQL (`--format plain`) deduplicates a
//! little better and restores through psql. docs/postgres.md has the measurement.

use crate::error::{Error, ErrorKind, Result};
use crate::ops::backup::{self, BackupOptions, BackupResult};
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::format::snapshot::SnapshotFile;
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
pub(crate) fn spawn_error(program: &str, e: std::io::Error) -> Error {
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

/// Whether `backup pg` also stores the cluster's roles and tablespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Globals {
    #[default]
    Skip,
    /// `pg_dumpall --globals-only --no-role-passwords`
    WithoutPasswords,
    /// `pg_dumpall --globals-only`: role password hashes too
    WithPasswords,
}

/// The most globals SQL a snapshot's metadata holds.
const GLOBALS_LIMIT: usize = 16 << 20;

/// `pg_dumpall --globals-only`: the SQL that recreates roles, memberships and tablespaces.
fn dump_globals(dbname: Option<&str>, mode: Globals) -> Result<String> {
    let mut cmd = super::child("pg_dumpall");
    cmd.arg("--globals-only");
    if mode == Globals::WithoutPasswords {
        cmd.arg("--no-role-passwords");
    }
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error("pg_dumpall", e))?;
    if !out.status.success() {
        return Err(Error::source(format!(
            "pg_dumpall --globals-only {}: {}; no snapshot was written",
            out.status,
            String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    if out.stdout.len() > GLOBALS_LIMIT {
        return Err(Error::source(format!(
            "pg_dumpall --globals-only wrote {} bytes, more than cairn keeps with a dump ({GLOBALS_LIMIT}): \
             back the globals up on their own with `cairn backup command`",
            out.stdout.len()
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| Error::source("pg_dumpall --globals-only wrote text that is not UTF-8"))
}

/// The first identifier of `rest` as it is written (quoted or not) and as a name.
fn leading_identifier(rest: &str) -> Option<(&str, String)> {
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut end = 0;
        let bytes = quoted.as_bytes();
        while end < bytes.len() {
            if bytes[end] == b'"' {
                if bytes.get(end + 1) == Some(&b'"') {
                    end += 2;
                    continue;
                }
                return Some((&rest[..end + 2], quoted[..end].replace("\"\"", "\"")));
            }
            end += 1;
        }
        return None;
    }
    let end = rest.find(|c: char| c == ';' || c.is_whitespace()).unwrap_or(rest.len());
    (end > 0).then(|| (&rest[..end], rest[..end].to_string()))
}

/// Globals SQL made safe to apply to a cluster that already has some of them: the
/// `CREATE ROLE` / `CREATE TABLESPACE` of a name in `existing` is left out, and the
/// `ALTER`s that follow set the attributes either way. (No psql meta-commands: the
/// `\\restrict` line pg_dumpall writes forbids them.) Without `tablespaces`, every
/// tablespace statement is left out (a drill's scratch cluster cannot have production's
/// locations).
pub fn idempotent_globals(sql: &str, tablespaces: bool, existing: &Existing) -> String {
    let mut out = String::new();
    for line in sql.lines() {
        if !tablespaces && line.to_ascii_uppercase().contains(" TABLESPACE ") {
            continue;
        }
        let exists = |prefix: &str, names: &std::collections::BTreeSet<String>| {
            line.strip_prefix(prefix).and_then(leading_identifier).is_some_and(|(_, name)| names.contains(&name))
        };
        if exists("CREATE ROLE ", &existing.roles) || exists("CREATE TABLESPACE ", &existing.tablespaces) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The roles and tablespaces a cluster has.
#[derive(Debug, Default)]
pub struct Existing {
    pub roles: std::collections::BTreeSet<String>,
    pub tablespaces: std::collections::BTreeSet<String>,
}

fn existing_globals(conninfo: &str) -> Result<Existing> {
    let names = |sql: &str| -> Result<std::collections::BTreeSet<String>> {
        let out = super::child("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--dbname", conninfo, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error("psql", e))?;
        if !out.status.success() {
            return Err(Error::source(format!(
                "cannot list the target's roles and tablespaces: {}",
                String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    };
    Ok(Existing {
        roles: names("select rolname from pg_roles")?,
        tablespaces: names("select spcname from pg_tablespace")?,
    })
}

/// Apply a snapshot's globals to the cluster `conninfo` reaches.
fn apply_globals(conninfo: &str, sql: &str, tablespaces: bool) -> Result<()> {
    let script = idempotent_globals(sql, tablespaces, &existing_globals(conninfo)?);
    let mut child = super::child("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", conninfo, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error("psql", e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, script.as_bytes()));
    let out = child.wait_with_output().map_err(|e| Error::source(format!("cannot wait for psql: {e}")))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(Error::source(format!(
            "restoring the roles and tablespaces failed, so the database was not restored: {} \
             (give --no-globals to restore without them)",
            String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(())
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
        .and_then(|v| crate::pg::wal::parse_lsn(v.split_whitespace().next()?))
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

/// How long `backup pg-base` waits, by default, for the server to archive WAL: the
/// segment a first backup forces, pg_basebackup's own wait at the end of the backup, and
/// the backup's last segment.
pub const WAL_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// What the server's archiver last reported, for a message about archiving that stalls.
fn archiver_state(dbname: Option<&str>) -> String {
    match query_one(
        dbname,
        "select failed_count || ' failed attempts' || coalesce(', the last on ' || last_failed_wal || ' at ' || last_failed_time, '') \
         || coalesce('; last archived ' || last_archived_wal, '') from pg_stat_archiver",
    ) {
        Ok(state) => format!("pg_stat_archiver shows {state}"),
        Err(_) => "pg_stat_archiver could not be read".into(),
    }
}

/// Wait for `found` to say yes, polling, until `timeout`.
fn wait_for(timeout: std::time::Duration, cancel: &Cancel, mut found: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        cancel.check()?;
        if found()? {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A new source has nothing archived: force a segment switch and wait until the server
/// has archived it, as pgBackRest's `stanza-create`/first backup does.
async fn first_archived_segment(
    repo: &Repository,
    dbname: Option<&str>,
    source: &str,
    timeout: std::time::Duration,
    cancel: &Cancel,
) -> Result<crate::pg::wal::SourceInfo> {
    let mode = query_one(dbname, "show archive_mode")?;
    if mode == "off" {
        return Err(Error::invalid(format!(
            "the server has archive_mode = off: set archive_mode = on and archive_command = 'cairn wal push %p --source {source}', \
             restart it, and run the base backup again"
        )));
    }
    let segment = query_one(dbname, "select pg_walfile_name(pg_switch_wal())")?;
    let key = crate::pg::wal::object_key(source, &segment);
    let handle = tokio::runtime::Handle::current();
    let archived = tokio::task::block_in_place(|| {
        wait_for(timeout, cancel, || Ok(handle.block_on(repo.backend().head(&key))?.is_some()))
    })?;
    if !archived {
        return Err(Error::source(format!(
            "WAL source {source:?} has no archived WAL, and the server did not archive {segment} within {} s of a forced \
             segment switch: check that archive_command is 'cairn wal push %p --source {source}' and look for its errors \
             in the server log ({}); no snapshot was written",
            timeout.as_secs(),
            archiver_state(dbname)
        )));
    }
    crate::pg::wal::source_info(repo.backend(), repo.key(), source).await?.ok_or_else(|| {
        Error::not_found(format!("{segment} is archived but WAL source {source:?} has no SOURCE record"))
    })
}

/// The server's clock now, to the microsecond.
fn server_now(dbname: Option<&str>) -> Result<jiff::Timestamp> {
    let text = query_one(dbname, "select extract(epoch from clock_timestamp())::numeric(20,6)")?;
    parse_epoch(&text)
        .ok_or_else(|| Error::source(format!("the server's clock_timestamp() epoch {text:?} is not a number")))
}

/// The server's clock just after the base backup run as `application_name` stopped: one
/// psql session polls `pg_stat_progress_basebackup` every 20 ms, and the first poll that
/// finds the backup's command ended notes its own `clock_timestamp()`: after the stop,
/// late by the server's wait for the archive and a poll. `None` if the session fails or
/// never saw the backup run.
fn watch_stop(
    dbname: Option<&str>,
    application_name: &str,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Option<jiff::Timestamp>> {
    let mut cmd = super::child("psql");
    cmd.args(["-X", "-A", "-t", "-q"]);
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let query = format!(
        "select coalesce((select p.phase from pg_stat_progress_basebackup p join pg_stat_activity a using (pid) \
         where a.application_name = '{application_name}' limit 1), 'none') || '|' || \
         extract(epoch from clock_timestamp())::numeric(20,6);\n"
    );
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
        let mut stdin = child.stdin.take()?;
        let mut lines = std::io::BufReader::new(child.stdout.take()?).lines();
        let mut running = false;
        let mut stopped = None;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            if stdin.write_all(query.as_bytes()).and_then(|_| stdin.flush()).is_err() {
                break;
            }
            let Some(Ok(line)) = lines.next() else { break };
            let Some((phase, epoch)) = line.split_once('|') else { break };
            match phase {
                "none" if !running => {}
                // The phase turns to "waiting for wal archiving to finish" just before the
                // stop record is written, so only the end of the command (or the WAL
                // transfer that follows the stop) says the stop has happened.
                "none" | "transferring wal files" => {
                    stopped = parse_epoch(epoch);
                    break;
                }
                _ => running = true,
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
        stopped
    })
}

/// `1764650000.123456` (seconds since the epoch) → a timestamp.
fn parse_epoch(text: &str) -> Option<jiff::Timestamp> {
    let (secs, micros) = text.trim().split_once('.').unwrap_or((text.trim(), "0"));
    let micros: i64 = format!("{micros:0<6}").get(..6)?.parse().ok()?;
    jiff::Timestamp::from_microsecond(secs.parse::<i64>().ok()? * 1_000_000 + micros).ok()
}

/// Bytes read from pg_basebackup, and when the last arrived.
struct Watched<R> {
    inner: R,
    last: std::sync::Arc<std::sync::Mutex<std::time::Instant>>,
}

impl<R: std::io::Read> std::io::Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        Ok(n)
    }
}

/// Run pg_basebackup (tar to stdout, no WAL) and store the data directory as a tree of
/// kind `pg-base`; commit only once the WAL up to the stop LSN is in the archive of
/// `source`. The snapshot records start/stop LSN, timeline, system identifier and times
/// (the stop time to the microsecond, never before the real stop). Every wait for the
/// archive, pg_basebackup's included, ends after `wal_timeout` with a message.
#[allow(clippy::too_many_arguments)]
pub async fn backup_base(
    repo: &Repository,
    dbname: Option<&str>,
    source: &str,
    pgdata: Option<&std::path::Path>,
    wal_timeout: std::time::Duration,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    crate::pg::wal::check_source(source)?;
    let (version, database) = server_facts(dbname)?;
    let system_identifier = query_one(dbname, "select system_identifier from pg_control_system()")?;
    let cluster = match crate::pg::wal::source_info(repo.backend(), repo.key(), source).await? {
        Some(cluster) => cluster,
        None => first_archived_segment(repo, dbname, source, wal_timeout, cancel).await?,
    };
    if cluster.system_identifier.to_string() != system_identifier {
        return Err(Error::invalid(format!(
            "WAL source {source:?} archives the cluster {}, but this server is {system_identifier}: pick the source its archive_command uses",
            cluster.system_identifier
        )));
    }
    if let Some(dir) = pgdata {
        let mut meta = options.meta.clone();
        meta.insert("server_version".into(), version.into());
        meta.insert("database".into(), database.into());
        meta.insert("system_identifier".into(), system_identifier.into());
        meta.insert("source".into(), source.into());
        meta.insert("method".into(), "direct".into());
        let options = BackupOptions { meta, kind: "pg-base".into(), ..options.clone() };
        return backup_base_direct(
            repo,
            dbname,
            source,
            dir,
            cluster.segment_size,
            wal_timeout,
            &options,
            cancel,
            progress,
        )
        .await;
    }
    if let Err(e) = super::child("pg_basebackup").arg("--version").stdout(Stdio::null()).status() {
        return Err(spawn_error("pg_basebackup", e));
    }
    let application_name = format!("cairn-{}", hex::encode(crate::crypto::random_bytes::<6>()));
    let mut cmd = super::child("pg_basebackup");
    cmd.args(["-D", "-", "--format=tar", "--wal-method=none", "--no-manifest", "--checkpoint=fast"]);
    cmd.env("PGAPPNAME", &application_name);
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
        let watch_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_watch = watch_stop(dbname, &application_name, watch_done.clone());
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        // pg_basebackup says nothing while the server waits to archive the backup's WAL:
        // a watchdog ends it once nothing has arrived for `wal_timeout`.
        let last = std::sync::Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let stdout = Watched { inner: child.stdout.take().expect("piped"), last: last.clone() };
        let child = std::sync::Arc::new(std::sync::Mutex::new(child));
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let (child, finished, timed_out, last) = (child.clone(), finished.clone(), timed_out.clone(), last.clone());
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering;
                while !finished.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    let idle = last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                    let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    if idle >= wal_timeout {
                        timed_out.store(true, Ordering::SeqCst);
                        let _ = child.kill();
                        return;
                    }
                }
            })
        };
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
        let status = loop {
            let mut guard = child.lock().unwrap_or_else(|e| e.into_inner());
            if imported.is_err() {
                let _ = guard.kill();
            }
            match guard.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(Error::source(format!("cannot wait for pg_basebackup: {e}"))),
            }
            drop(guard);
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
        watch_done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = watchdog.join();
        let watched_stop = stop_watch.join().ok().flatten();
        let errors = errors.join().unwrap_or_default();
        if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::source(format!(
                "pg_basebackup sent nothing for {} s and was stopped: the server is most likely waiting to archive the \
                 backup's WAL; check archive_command and its errors in the server log ({}); no snapshot was written",
                wal_timeout.as_secs(),
                archiver_state(dbname)
            )));
        }
        if !status.success() {
            return Err(Error::source(format!(
                "pg_basebackup {status}: {}; no snapshot was written",
                errors.split_whitespace().collect::<Vec<_>>().join(" ")
            )));
        }
        let imported = imported?;
        // Every commit before the stop LSN happened before now, before the next second after
        // the label's STOP TIME, and before the watcher saw the backup stop: the earliest of
        // these is a stop time that can only be late (by a poll at most), never early, so a
        // target inside the backup's last second never picks a base not consistent there.
        let finished_at = server_now(dbname)?;
        let label = imported
            .captured
            .get("backup_label")
            .ok_or_else(|| Error::source("pg_basebackup's archive has no backup_label; no snapshot was written"))?;
        let label = String::from_utf8_lossy(label).into_owned();
        let stop_bounds = [Some(finished_at), watched_stop];
        let learned =
            stop_facts(repo, &handle, source, dbname, cluster.segment_size, &label, &stop_bounds, wal_timeout, cancel)?;
        Ok(backup::Root::TreeWithMeta(imported.root, Vec::new(), learned))
    })
    .await
}

/// A psql session that holds a non-exclusive backup open between `pg_backup_start` and
/// `pg_backup_stop` (PostgreSQL aborts the backup if the session ends first).
struct BackupSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    errors: std::thread::JoinHandle<String>,
}

impl BackupSession {
    fn open(dbname: Option<&str>) -> Result<Self> {
        let mut cmd = super::child("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]);
        if let Some(db) = dbname {
            cmd.arg("--dbname").arg(db);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error("psql", e))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(std::io::Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Ok(BackupSession { child, stdin, lines, errors })
    }

    /// Run one statement that prints one line; wait for it up to `timeout`.
    fn one_line(&mut self, sql: &str, timeout: std::time::Duration) -> Result<String> {
        use std::io::Write;
        let sent = self.stdin.write_all(format!("{sql}\n").as_bytes()).and_then(|_| self.stdin.flush());
        match sent.ok().and_then(|_| self.lines.recv_timeout(timeout).ok()) {
            Some(line) => Ok(line),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let errors = std::mem::replace(&mut self.errors, std::thread::spawn(String::new));
                let said = errors.join().unwrap_or_default();
                let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
                Err(Error::source(if said.is_empty() {
                    format!("{sql}: no answer within {} s; no snapshot was written", timeout.as_secs())
                } else {
                    format!("{sql}: {said}; no snapshot was written")
                }))
            }
        }
    }
}

impl Drop for BackupSession {
    fn drop(&mut self) {
        // Ending the session aborts a backup that was not stopped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a direct base backup leaves out of the data directory, as pg_basebackup does:
/// WAL (the archive has it), server runtime state, and temporary files.
fn direct_excludes(dir: &std::path::Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut out: Vec<String> = [
        "pg_wal",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_stat_tmp",
        "pg_subtrans",
    ]
    .iter()
    .map(|sub| format!("{d}/{sub}/*"))
    .collect();
    for file in [
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "tablespace_map",
        "backup_manifest",
        "postgresql.auto.conf.tmp",
        "current_logfiles.tmp",
    ] {
        out.push(format!("{d}/{file}"));
    }
    out.extend(["pg_internal.init".to_string(), "pgsql_tmp*".to_string()]);
    out
}

/// A base backup that reads the data directory itself, between `pg_backup_start` and
/// `pg_backup_stop`, instead of taking pg_basebackup's stream through a pipe (which was
/// half of a base backup's time: docs/PERFORMANCE.md). The server must run on this host
/// with `dir` as its data directory; the label the stop returns is stored as
/// `backup_label` (and `tablespace_map`), exactly where pg_basebackup puts them.
#[allow(clippy::too_many_arguments)]
async fn backup_base_direct(
    repo: &Repository,
    dbname: Option<&str>,
    source: &str,
    dir: &std::path::Path,
    segment_size: u32,
    wal_timeout: std::time::Duration,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("open the data directory", dir, e))?;
    let served = query_one(dbname, "show data_directory")?;
    if std::fs::canonicalize(&served).ok().as_deref() != Some(dir.as_path()) {
        return Err(Error::invalid(format!(
            "--pgdata {} is not this server's data directory (it says {served}): give that one, or leave --pgdata out \
             to back up through pg_basebackup",
            dir.display()
        )));
    }
    if dir.display().to_string().contains(['*', '?', '[']) {
        return Err(Error::invalid(format!(
            "--pgdata {}: a path with *, ? or [ cannot be read directly; leave --pgdata out to use pg_basebackup",
            dir.display()
        )));
    }
    let tablespaces = std::fs::read_dir(dir.join("pg_tblspc")).map(|d| d.count()).unwrap_or(0);
    if tablespaces > 0 {
        return Err(Error::invalid(format!(
            "{} has {tablespaces} tablespaces (pg_tblspc): base backups cover the main data directory only",
            dir.display()
        )));
    }
    let owner = std::fs::metadata(dir.join("PG_VERSION")).map_err(|e| Error::io("read", &dir.join("PG_VERSION"), e))?;
    let handle = tokio::runtime::Handle::current();
    let params = repo.config().chunker;
    let files = crate::source::files::FilesOptions {
        paths: vec![dir.clone()],
        excludes: direct_excludes(&dir),
        skip: Vec::new(),
        vanished_ok: true,
    };
    backup::run(repo, options, None, |saver, stats, warnings| {
        let mut session = BackupSession::open(dbname)?;
        // A fast checkpoint: the wait is the server's, bounded like every other.
        session.one_line("select pg_backup_start('cairn', true);", wal_timeout)?;
        let mut stopped = None;
        let root = {
            let mut walker =
                crate::source::files::Walker::new(repo, saver, &handle, &files, cancel, progress, stats, warnings);
            walker.run_dir(&dir, |saver| {
                // Stop without waiting for the archive (cairn waits for it below, with its
                // own timeout and messages), and read the clock in the same statement: a
                // stop time late by a query's latency, never early.
                let line = session.one_line(
                    "select lsn::text || '|' || encode(convert_to(labelfile, 'UTF8'), 'hex') || '|' || \
                     coalesce(encode(convert_to(spcmapfile, 'UTF8'), 'hex'), '') || '|' || \
                     extract(epoch from clock_timestamp())::numeric(20,6) from pg_backup_stop(false);",
                    wal_timeout,
                )?;
                let fields: Vec<&str> = line.split('|').collect();
                let text = |hex_text: &str| -> Result<String> {
                    let bytes = hex::decode(hex_text)
                        .map_err(|_| Error::source(format!("pg_backup_stop returned {line:?}: not a label")))?;
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                };
                if fields.len() != 4 {
                    return Err(Error::source(format!("pg_backup_stop returned {line:?}: not a label")));
                }
                let (label, map) = (text(fields[1])?, text(fields[2])?);
                stopped = Some((label.clone(), parse_epoch(fields[3])));
                let mut nodes = Vec::new();
                for (name, body) in [("backup_label", label), ("tablespace_map", map)] {
                    if name == "tablespace_map" && body.is_empty() {
                        continue;
                    }
                    let content = crate::source::stream::store_stream(
                        saver,
                        body.as_bytes(),
                        params,
                        cancel,
                        &crate::progress::Silent,
                    )?;
                    use std::os::unix::fs::MetadataExt;
                    nodes.push(crate::format::snapshot::Node {
                        name: name.into(),
                        name_raw: None,
                        kind: crate::format::snapshot::NodeKind::File,
                        mode: 0o600,
                        uid: owner.uid(),
                        gid: owner.gid(),
                        mtime: jiff::Timestamp::now().as_nanosecond() as i64,
                        ctime: 0,
                        inode: 0,
                        size: content.size,
                        content: Some(content),
                        subtree: None,
                        tree: None,
                        target: None,
                        target_raw: None,
                        rdev: None,
                    });
                }
                Ok(nodes)
            })?
        };
        drop(session);
        let (label, stop_clock) =
            stopped.ok_or_else(|| Error::source("the backup was not stopped; no snapshot was written"))?;
        let learned =
            stop_facts(repo, &handle, source, dbname, segment_size, &label, &[stop_clock], wal_timeout, cancel)?;
        Ok(backup::Root::TreeWithMeta(root, Vec::new(), learned))
    })
    .await
}

/// After the stop: wait until the archive holds the backup history file and the segment
/// with the stop LSN (each up to `wal_timeout`), and return what the snapshot records.
/// `bounds` are clocks read after the stop; the stop time is the earliest of them and the
/// second after the history file's STOP TIME, so it is never early.
#[allow(clippy::too_many_arguments)]
fn stop_facts(
    repo: &Repository,
    handle: &tokio::runtime::Handle,
    source: &str,
    dbname: Option<&str>,
    seg: u32,
    label: &str,
    bounds: &[Option<jiff::Timestamp>],
    wal_timeout: std::time::Duration,
    cancel: &Cancel,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let fields = label_fields(label);
    let start_lsn = label_lsn(&fields, "START WAL LOCATION")?;
    let timeline: u32 = fields.get("START TIMELINE").and_then(|t| t.parse().ok()).unwrap_or(1);
    // The server archives a backup history file naming the stop point; wait for it and
    // for the segment holding the stop LSN.
    let history =
        format!("{}.{:08X}.backup", crate::pg::wal::segment_of(timeline, start_lsn, seg), start_lsn % u64::from(seg));
    let mut history_text = String::new();
    let archived = wait_for(wal_timeout, cancel, || {
        match handle.block_on(crate::pg::wal::read(repo.backend(), repo.key(), source, &history)) {
            Ok(bytes) => {
                history_text = String::from_utf8_lossy(&bytes).into_owned();
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    })?;
    if !archived {
        return Err(Error::source(format!(
            "the server did not archive {history} within {} s: check archive_command and the server log ({}); no snapshot was written",
            wal_timeout.as_secs(),
            archiver_state(dbname)
        )));
    }
    let stop = label_fields(&history_text);
    let stop_lsn = label_lsn(&stop, "STOP WAL LOCATION")?;
    let stop_timeline: u32 = stop.get("STOP TIMELINE").and_then(|t| t.parse().ok()).unwrap_or(timeline);
    let last_segment = crate::pg::wal::segment_of(stop_timeline, stop_lsn.saturating_sub(1), seg);
    let key = crate::pg::wal::object_key(source, &last_segment);
    if !wait_for(wal_timeout, cancel, || Ok(handle.block_on(repo.backend().head(&key))?.is_some()))? {
        return Err(Error::source(format!(
            "WAL segment {last_segment} (holding the stop LSN {}) was not archived within {} s: check archive_command \
             and the server log ({}); no snapshot was written",
            crate::pg::wal::format_lsn(stop_lsn),
            wal_timeout.as_secs(),
            archiver_state(dbname)
        )));
    }
    let mut learned = BTreeMap::new();
    learned.insert("start_lsn".into(), crate::pg::wal::format_lsn(start_lsn).into());
    learned.insert("stop_lsn".into(), crate::pg::wal::format_lsn(stop_lsn).into());
    learned.insert("timeline".into(), timeline.into());
    learned.insert("start_wal".into(), crate::pg::wal::segment_of(timeline, start_lsn, seg).into());
    learned.insert("stop_wal".into(), last_segment.into());
    learned.insert("backup_history".into(), history.into());
    if let Some(t) = stop.get("START TIME") {
        learned.insert("start_time_text".into(), t.clone().into());
    }
    // The history file's STOP TIME is whole seconds: the real stop is before the
    // next second, and before `finished_at`.
    let label_stop = stop.get("STOP TIME").and_then(|t| label_time(t));
    let mut stop_time = label_stop.map(|t| t + jiff::SignedDuration::from_secs(1));
    for t in bounds.iter().flatten().filter(|t| label_stop.is_none_or(|l| **t >= l)) {
        stop_time = Some(stop_time.map_or(*t, |s| s.min(*t)));
    }
    let stop_time = stop_time.unwrap_or_else(jiff::Timestamp::now);
    learned.insert("stop_time".into(), stop_time.to_string().into());
    if let Some(t) = stop.get("STOP TIME") {
        learned.insert("stop_time_text".into(), t.clone().into());
    }
    if let Some(start) = stop.get("START TIME").and_then(|t| label_time(t)) {
        learned.insert("start_time".into(), start.to_string().into());
    }
    Ok(learned)
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

pub(crate) fn is_root() -> bool {
    // Our effective uid, from /proc: the library has no unsafe code for geteuid().
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// A command run as the data directory's owner (root may not run the server).
pub(crate) fn as_owner(uid: u32, program: &std::path::Path) -> Command {
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

pub(crate) fn pg_bin(program: &str) -> std::path::PathBuf {
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
pub(crate) fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let fatal: Vec<&str> = text.lines().filter(|l| l.contains("FATAL:") || l.contains("PANIC:")).collect();
    match fatal.is_empty() {
        true => text.lines().last().unwrap_or("no log").to_string(),
        false => fatal.join(" | "),
    }
}

/// The uid that runs PostgreSQL programs for us: the `postgres` user when we are root
/// (the server refuses root), else ourselves (`None`).
pub(crate) fn server_user() -> Result<Option<u32>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_skip_what_exists_and_tablespaces_when_asked() {
        let sql = "\\restrict abc\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\nCREATE ROLE \"Odd \"\"Name\";\n\
                   CREATE ROLE postgres;\nCREATE TABLESPACE fast OWNER app LOCATION '/ssd';\nGRANT app TO postgres;\n\\unrestrict abc\n";
        let mut existing = Existing::default();
        existing.roles.insert("postgres".into());
        existing.roles.insert("Odd \"Name".into());
        let out = idempotent_globals(sql, true, &existing);
        assert_eq!(
            out,
            "\\restrict abc\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\nCREATE TABLESPACE fast OWNER app LOCATION '/ssd';\n\
             GRANT app TO postgres;\n\\unrestrict abc\n"
        );
        let out = idempotent_globals(sql, false, &Existing::default());
        assert!(!out.contains("TABLESPACE") && out.contains("CREATE ROLE postgres;"), "{out}");
        assert_eq!(leading_identifier("\"a\"\"b\" x"), Some(("\"a\"\"b\"", "a\"b".to_string())));
        assert_eq!(leading_identifier("\"open"), None);
    }
}
