//! PostgreSQL physical base backups: `cairn backup pg-base` (docs/postgres.md).
//!
//! Two ways in: through `pg_basebackup` (its tar stream stored like `backup tar`), or with
//! `--pgdata` reading the data directory directly between `pg_backup_start` and
//! `pg_backup_stop` of one session. Either way the first WAL segment is forced out and
//! waited for, the backup's stop facts (LSNs, timeline, times) are read from the label
//! and the archive, and the snapshot records them so that PITR can choose it.

use crate::error::{Error, ErrorKind, Result};
use crate::ops::backup::{self, BackupOptions, BackupResult};
use crate::pg::client::{archiver_state, query_one, server_facts, server_now, spawn_error};
use crate::pg::label::{label_fields, label_lsn, label_time, parse_epoch};
use crate::pg::session::BackupSession;
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::Repository;
use std::collections::BTreeMap;
use std::process::Stdio;

/// How long `backup pg-base` waits, by default, for the server to archive WAL: the
/// segment a first backup forces, pg_basebackup's own wait at the end of the backup, and
/// the backup's last segment.
pub const WAL_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

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
    let mut cmd = crate::process::child("psql");
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
    if let Err(e) = crate::process::child("pg_basebackup").arg("--version").stdout(Stdio::null()).status() {
        return Err(spawn_error("pg_basebackup", e));
    }
    let application_name = format!("cairn-{}", hex::encode(crate::crypto::random_bytes::<6>()));
    let mut cmd = crate::process::child("pg_basebackup");
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
