//! `cairn pitr`: point-in-time recovery of a PostgreSQL cluster (docs/postgres.md).
//!
//! Recovery that stops early and reports success is the worst outcome a backup tool can
//! have, so nothing here leaves that to PostgreSQL: before restoring, the base backup and
//! timeline are chosen from the archived `.history` files, and the archive is proven
//! continuous along that timeline's path from the base's first segment to the target (to
//! the newest archived segment for `--latest`); after replay, the server must have reached
//! that point. A restore that fails before the server starts leaves no data directory.

use crate::error::{Error, Result};
use crate::format::snapshot::SnapshotFile;
use crate::pg::client::{as_owner, log_tail, pg_bin, server_user, spawn_error};
use crate::pg::timeline::{self, Timelines};
use crate::pg::wal::{format_lsn, parse_lsn, segment_of};
use crate::process::is_root;
use crate::progress::Progress;
use crate::repo::Repository;
use std::collections::BTreeSet;
use std::path::Path;

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

/// Which timeline recovery follows (`--target-timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimelineChoice {
    /// The newest timeline that descends from the base (PostgreSQL's `latest`, but never
    /// a branch taken before the base).
    #[default]
    Latest,
    /// The base backup's own timeline.
    Current,
    Exactly(u32),
}

impl TimelineChoice {
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n
                .parse()
                .ok()
                .filter(|&n: &u32| n > 0)
                .map(TimelineChoice::Exactly)
                .ok_or_else(|| format!("{n:?} is not a timeline: give current, latest or a number like 2")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub pgdata: std::path::PathBuf,
    pub source: String,
    pub target: Target,
    /// Stop just before the target instead of just after it (time, xid, LSN).
    pub exclusive: bool,
    /// promote, pause or shutdown
    pub action: String,
    pub timeline: TimelineChoice,
    pub archive_off: bool,
    /// A base backup chosen by the caller (id prefix or `latest`) instead of the newest
    /// that ends before the target.
    pub base: Option<String>,
    /// The restore_command the restored server runs (calls `cairn wal fetch`).
    pub restore_command: String,
    /// A command that opens the repository as restore_command will and reads the source's
    /// record and the segment named after it (`wal fetch --probe`): run as the server's
    /// user with the base's first segment before anything is restored.
    pub probe_command: Option<String>,
    pub port: Option<u16>,
    pub start: bool,
    /// restore_command's read-ahead spool (`wal fetch --spool`): created empty for the
    /// server's user before the server starts, removed once recovery has ended.
    pub spool: Option<std::path::PathBuf>,
}

/// The read-ahead spool of a recovery into `pgdata`: beside it, never inside.
pub fn spool_beside(pgdata: &Path) -> std::path::PathBuf {
    let name = pgdata.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pgdata".into());
    pgdata.with_file_name(format!(".{name}.cairn-spool"))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PitrReport {
    pub base: crate::id::SnapshotId,
    pub base_stop_lsn: String,
    pub timeline: u32,
    pub first_wal: String,
    /// The last segment of the unbroken run of archived WAL along the timeline.
    pub last_archived_wal: String,
    /// The first missing segment after which more WAL is archived (only possible for a
    /// target that lies before it).
    pub gap: Option<String>,
    /// Timelines in the archive that this recovery does not follow, and why.
    pub other_timelines: Vec<String>,
    /// With --start: where recovery ended.
    pub reached_lsn: Option<String>,
    pub reached_time: Option<String>,
    pub server_state: Option<String>,
}

fn meta_str<'a>(s: &'a SnapshotFile, key: &str) -> Option<&'a str> {
    s.meta.get(key).and_then(|v| v.as_str())
}

/// What recovery needs to know about a base backup.
struct Base {
    id: crate::id::SnapshotId,
    snapshot: SnapshotFile,
    timeline: u32,
    start: u64,
    stop: u64,
    stop_time: Option<jiff::Timestamp>,
}

impl Base {
    fn from(id: crate::id::SnapshotId, snapshot: SnapshotFile) -> Result<Self> {
        let lsn = |key: &str| {
            meta_str(&snapshot, key).and_then(parse_lsn).ok_or_else(|| {
                Error::corrupt(format!("base backup {} lacks a valid {key}: it cannot be recovered", id.short()))
            })
        };
        Ok(Base {
            timeline: snapshot.meta.get("timeline").and_then(|v| v.as_u64()).unwrap_or(1) as u32,
            start: lsn("start_lsn")?,
            stop: lsn("stop_lsn")?,
            stop_time: meta_str(&snapshot, "stop_time").and_then(|t| t.parse().ok()),
            id,
            snapshot,
        })
    }

    fn fits(&self, target: &Target) -> bool {
        match target {
            Target::Time(t) => self.stop_time.is_some_and(|st| st <= *t),
            Target::Lsn(l) => self.stop <= *l,
            _ => true,
        }
    }
}

/// The timeline a base follows for `choice`, if it can.
fn timeline_for(timelines: &Timelines, base: &Base, choice: TimelineChoice) -> Option<u32> {
    match choice {
        TimelineChoice::Latest => Some(timelines.newest_reachable(base.timeline, base.stop)),
        TimelineChoice::Current => Some(base.timeline),
        TimelineChoice::Exactly(t) => timelines.reaches(base.timeline, base.stop, t).then_some(t),
    }
}

/// The archive's segments and timeline histories for `source`.
async fn archive_state(repo: &Repository, source: &str) -> Result<(Timelines, BTreeSet<String>, u32)> {
    let listing = crate::pg::wal::list(repo.backend(), repo.key(), source).await?;
    let segment_size = listing.cluster.as_ref().map_or(16 << 20, |c| c.segment_size);
    let mut histories = Vec::new();
    for h in &listing.history {
        let Ok(crate::pg::wal::WalKind::History { timeline }) = crate::pg::wal::classify(&h.name) else { continue };
        let bytes = crate::pg::wal::read(repo.backend(), repo.key(), source, &h.name).await?;
        histories.push((timeline, h.name.clone(), String::from_utf8_lossy(&bytes).into_owned()));
    }
    let mut have = BTreeSet::new();
    for object in repo.backend().list(&crate::format::layout::wal_source(source)).await? {
        let name = crate::format::layout::name(&object.key);
        if matches!(crate::pg::wal::classify(name), Ok(crate::pg::wal::WalKind::Segment { .. })) {
            have.insert(name.to_string());
        }
    }
    let timelines = Timelines::new(&histories, listing.timelines.iter().map(|t| t.timeline))?;
    Ok((timelines, have, segment_size))
}

/// Point-in-time recovery into an empty directory: choose the base backup and timeline,
/// prove the archived WAL it needs is there, restore, configure recovery, and (with
/// `start`) run it and check that it reached its end.
pub async fn pitr(repo: &Repository, options: &PitrOptions, progress: &dyn Progress) -> Result<PitrReport> {
    crate::pg::wal::check_source(&options.source)?;
    let pgdata = &options.pgdata;
    let existed = pgdata.exists();
    if existed {
        let empty = std::fs::read_dir(pgdata).map_err(|e| Error::io("read", pgdata, e))?.next().is_none();
        if !empty {
            return Err(Error::invalid(format!(
                "{} is not empty: point-in-time recovery restores into an empty or new directory; nothing was changed",
                pgdata.display()
            )));
        }
    }
    let (timelines, have, segment_size) = archive_state(repo, &options.source).await?;

    // The base backup and the timeline it follows.
    let mut bases = Vec::new();
    for (id, s) in repo.catalog().snapshots()? {
        if s.kind == "pg-base" && meta_str(&s, "source") == Some(options.source.as_str()) {
            bases.push(Base::from(id, s)?);
        }
    }
    let (base, tli) = match &options.base {
        Some(spec) => {
            let filter = crate::repo::SnapshotFilter { kind: Some("pg-base".into()), ..Default::default() };
            let (id, s) = repo.find_snapshot(spec, &filter)?;
            let base = Base::from(id, s)?;
            let tli = timeline_for(&timelines, &base, options.timeline).ok_or_else(|| {
                Error::invalid(format!(
                    "base backup {} (timeline {}, ending at {}) is not on the history of timeline {:?}: \
                     choose another --base or --target-timeline (`cairn wal list` shows the timelines)",
                    base.id.short(),
                    base.timeline,
                    format_lsn(base.stop),
                    options.timeline
                ))
            })?;
            (base, tli)
        }
        None => {
            let count = bases.len();
            let oldest = bases.first().map(|b| {
                format!(
                    "; the oldest, {}, ends at {} ({})",
                    b.id.short(),
                    format_lsn(b.stop),
                    b.stop_time.map_or("?".into(), |t| t.to_string())
                )
            });
            let found = bases.into_iter().rev().filter(|b| b.fits(&options.target)).find_map(|b| {
                let tli = timeline_for(&timelines, &b, options.timeline)?;
                Some((b, tli))
            });
            match found {
                Some(found) => found,
                None => {
                    let on = match options.timeline {
                        TimelineChoice::Exactly(t) => format!(" on the history of timeline {t}"),
                        _ => String::new(),
                    };
                    return Err(Error::not_found(format!(
                        "no base backup of WAL source {:?} ends before the target{on}{}: choose a later target, or take a base backup with `cairn backup pg-base`",
                        options.source,
                        if count == 0 { " (there are none)".into() } else { oldest.unwrap_or_default() }
                    )));
                }
            }
        }
    };
    let path = timelines
        .path(tli)
        .ok_or_else(|| {
            Error::not_found(format!(
                "timeline {tli} has no archived history file or WAL in source {:?}",
                options.source
            ))
        })?
        .to_vec();

    // The WAL it needs: continuous from the base's first segment through its stop, through
    // the target LSN, and for --latest through the newest segment archived on the path.
    let seg = u64::from(segment_size);
    let first_number = base.start / seg;
    let first_name =
        segment_of(timeline::timeline_of_segment(&path, first_number, segment_size), base.start, segment_size);
    let coverage = timeline::coverage(&path, first_number, &have, segment_size).ok_or_else(|| {
        Error::not_found(format!(
            "WAL segment {first_name}, where base backup {} starts, is not archived in source {:?}: the backup cannot be restored",
            base.id.short(),
            options.source
        ))
    })?;
    let number = |name: &str| {
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or(0);
        hex(&name[8..16]) * (0x1_0000_0000 / seg) + hex(&name[16..24])
    };
    let mut needed = base.stop.saturating_sub(1) / seg;
    if let Target::Lsn(l) = options.target {
        needed = needed.max(l / seg);
    }
    let needed_name =
        crate::pg::wal::segment_name(timeline::timeline_of_segment(&path, needed, segment_size), needed, segment_size);
    if number(&coverage.last) < needed {
        return Err(Error::not_found(match &coverage.gap {
            Some(missing) => format!(
                "archived WAL along timeline {tli} has a gap: {missing} is missing (needed through {needed_name}); \
                 recovery cannot pass it: restore the segment into the archive, or choose a target before it"
            ),
            None => format!(
                "the target is after the last archived WAL along timeline {tli} ({}): WAL through {needed_name} is needed; \
                 wait for it to be archived or choose an earlier target",
                coverage.last
            ),
        }));
    }
    if options.target == Target::Latest {
        if let Some(missing) = &coverage.gap {
            return Err(Error::not_found(format!(
                "archived WAL along timeline {tli} has a gap: {missing} is missing and later segments are archived, \
                 so --latest would stop at {} and lose what follows: restore the segment into the archive, or recover \
                 to a target before it (--target-lsn, --target-time)",
                coverage.last
            )));
        }
    }
    let other_timelines = timelines
        .all()
        .filter(|&t| t != tli && !path.iter().any(|s| s.timeline == t))
        .map(|t| match timelines.path(t).and_then(|p| p.iter().rev().nth(1).copied()) {
            Some(parent) => format!("timeline {t} (branched from {} at {})", parent.timeline, format_lsn(parent.end)),
            None => format!("timeline {t}"),
        })
        .collect();

    // Paths and privileges: the server runs restore_command as the data directory's owner.
    if let Some(probe) = &options.probe_command {
        probe_as_server(&format!("{probe} {first_name}"))?;
    }

    // Restore the data directory; on failure, remove what was restored.
    let root = base.snapshot.tree.ok_or_else(|| Error::corrupt("base backup snapshot has no tree"))?;
    let restored = async {
        std::fs::create_dir_all(pgdata).map_err(|e| Error::io("create", pgdata, e))?;
        crate::ops::restore::restore_tree_to_dir(repo, &root, pgdata, &Default::default(), progress).await?;
        prepare(pgdata, options, tli)
    }
    .await;
    let owner = match restored {
        Ok(owner) => owner,
        Err(e) => {
            let cleaned = remove_restored(pgdata, existed);
            let what = match cleaned {
                Ok(()) => format!("the partly restored {} was removed", pgdata.display()),
                Err(why) => format!("the partly restored {} could not be removed ({why}): remove it", pgdata.display()),
            };
            return Err(Error::new(e.kind(), format!("{}; {what}", e.message())));
        }
    };
    let mut report = PitrReport {
        base: base.id,
        base_stop_lsn: format_lsn(base.stop),
        timeline: tli,
        first_wal: first_name,
        last_archived_wal: coverage.last.clone(),
        gap: coverage.gap.clone(),
        other_timelines,
        reached_lsn: None,
        reached_time: None,
        server_state: None,
    };
    if let Some(spool) = &options.spool {
        // Fresh for this recovery: a spool left by another could feed it the wrong WAL.
        // Created here, not found: a link or directory someone else put in its place is
        // removed first (remove_dir_all does not follow links), and a new one planted
        // between the two makes the creation fail instead of being used.
        let _ = std::fs::remove_dir_all(spool);
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(spool)
            .map_err(|e| Error::io("create the WAL spool", spool, e))?;
        if is_root() {
            std::os::unix::fs::chown(spool, Some(owner), None).map_err(|e| Error::io("chown", spool, e))?;
        }
    }
    if options.start {
        // Recovery runs for as long as replay takes (up to an hour) and only waits on
        // processes: a blocking thread of its own, not a worker of the async runtime.
        let (dir, opts, mut rep) = (pgdata.to_path_buf(), options.clone(), report.clone());
        let (ran, rep) = tokio::task::spawn_blocking(move || {
            let ran = run_recovery(&dir, owner, &opts, &mut rep);
            (ran, rep)
        })
        .await
        .map_err(|e| Error::source(format!("the recovery task failed: {e}")))?;
        report = rep;
        if let Some(spool) = &options.spool {
            let _ = std::fs::remove_dir_all(spool);
        }
        ran?;
        // The server must have replayed what it was meant to: for --latest, into the last
        // archived segment; for an immediate target, to the base's end.
        let reached = report.reached_lsn.as_deref().and_then(parse_lsn);
        let floor = match options.target {
            Target::Latest => {
                Some((number(&coverage.last) * seg, format!("the last archived segment {}", coverage.last)))
            }
            Target::Immediate => Some((base.stop, format!("the base backup's end {}", format_lsn(base.stop)))),
            Target::Lsn(l) if !options.exclusive => Some((l, format!("the target {}", format_lsn(l)))),
            _ => None,
        };
        if let (Some((floor, what)), Some(state)) = (floor, &report.server_state) {
            let ended = state.starts_with("promoted") || state.starts_with("paused");
            if ended && reached.is_none_or(|r| r < floor) {
                stop_server(pgdata, owner);
                return Err(Error::source(format!(
                    "recovery ended at {}, before {what}: transactions would be missing, so the server was stopped; \
                     {} is left for inspection (log: cairn-pitr.log): remove it before trying again",
                    report.reached_lsn.as_deref().unwrap_or("an unknown LSN"),
                    pgdata.display()
                )));
            }
        }
    }
    Ok(report)
}

/// Remove a failed restore: the whole directory if pitr created it, else its contents.
fn remove_restored(pgdata: &Path, existed: bool) -> std::io::Result<()> {
    if !pgdata.exists() {
        return Ok(());
    }
    if !existed {
        return std::fs::remove_dir_all(pgdata);
    }
    for entry in std::fs::read_dir(pgdata)? {
        let path = entry?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Empty pg_wal, write the recovery settings and hand the directory to its owner;
/// returns the owner's uid.
fn prepare(pgdata: &Path, options: &PitrOptions, tli: u32) -> Result<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(pgdata.join("PG_VERSION")).map_err(|e| Error::io("inspect", pgdata, e))?;
    let io = |what: &str, e| Error::io(what, pgdata, e);
    let chown = |path: &Path| -> Result<()> {
        if is_root() {
            std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
                .map_err(|e| Error::io("chown", path, e))?;
        }
        Ok(())
    };
    chown(pgdata)?;
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700)).map_err(|e| io("chmod", e))?;
    let wal_dir = pgdata.join("pg_wal");
    if wal_dir.exists() {
        for entry in std::fs::read_dir(&wal_dir).map_err(|e| io("read pg_wal", e))?.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
    std::fs::create_dir_all(wal_dir.join("archive_status")).map_err(|e| io("create pg_wal", e))?;
    chown(&wal_dir)?;
    chown(&wal_dir.join("archive_status"))?;
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut conf = String::from("\n# Written by cairn pitr: point-in-time recovery settings.\n");
    conf.push_str(&format!("restore_command = {}\n", quote(&options.restore_command)));
    match &options.target {
        // PostgreSQL refuses zone abbreviations (like Z) here: write a numeric offset.
        Target::Time(t) => conf.push_str(&format!(
            "recovery_target_time = {}\n",
            quote(&t.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string())
        )),
        Target::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = {}\n", quote(&format_lsn(*l)))),
        Target::Xid(x) => conf.push_str(&format!("recovery_target_xid = {}\n", quote(x))),
        Target::Name(n) => conf.push_str(&format!("recovery_target_name = {}\n", quote(n))),
        Target::Immediate => conf.push_str("recovery_target = 'immediate'\n"),
        Target::Latest => {}
    }
    if options.exclusive {
        conf.push_str("recovery_target_inclusive = off\n");
    }
    if options.target != Target::Latest {
        conf.push_str(&format!("recovery_target_action = {}\n", quote(&options.action)));
    }
    // Always the timeline chosen here: PostgreSQL's own `latest` would follow a branch
    // taken before the base and fail to find the base's checkpoint.
    conf.push_str(&format!("recovery_target_timeline = '{tli}'\n"));
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
    let signal = pgdata.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(|e| Error::io("write", &signal, e))?;
    chown(&auto)?;
    chown(&signal)?;
    Ok(owner.uid())
}

/// Run the probe as the user the server will run as (the `postgres` user when cairn is
/// root), so a repository, cache, key or password file that user cannot read is
/// reported now, in cairn's words, rather than as "command not executable" in a log.
fn probe_as_server(probe: &str) -> Result<()> {
    let user = server_user()?;
    let mut cmd = match user {
        Some(uid) => as_owner(uid, Path::new("/bin/sh")),
        None => crate::process::child("/bin/sh"),
    };
    let out =
        cmd.arg("-c").arg(probe).stdin(std::process::Stdio::null()).output().map_err(|e| spawn_error("/bin/sh", e))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said
        .lines()
        .find(|l| l.contains("error:"))
        .or_else(|| said.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("no message")
        .trim();
    let who = match user {
        Some(_) => "the server's user (postgres)",
        None => "this user",
    };
    Err(Error::invalid(format!(
        "the restored server's restore_command would fail: run as {who}, it says: {said}; give that user read access \
         to the repository, the cache directory and the key or password file (or pass ones it can read); nothing was restored"
    )))
}

fn stop_server(pgdata: &Path, uid: u32) {
    let _ = as_owner(uid, &pg_bin("pg_ctl")).arg("-D").arg(pgdata).args(["-m", "fast", "-w", "stop"]).output();
}

/// Start the restored server, wait for recovery to end, and record where it ended.
fn run_recovery(pgdata: &Path, uid: u32, options: &PitrOptions, report: &mut PitrReport) -> Result<()> {
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
    let left = || format!("{} is left for inspection: remove it before trying again", pgdata.display());
    if !out.status.success() {
        if options.action == "shutdown" && reached_shutdown() {
            report.server_state = Some("shut down at the target".into());
            return Ok(());
        }
        return Err(Error::source(format!(
            "the restored server did not start: {}; see {}; {}",
            log_tail(&log),
            log.display(),
            left()
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
        std::thread::sleep(std::time::Duration::from_millis(100));
        if !alive() {
            let tail = log_tail(&log);
            if options.action == "shutdown" && reached_shutdown() {
                report.server_state = Some("shut down at the target".into());
                return Ok(());
            }
            return Err(Error::source(format!(
                "the restored server stopped during recovery: {tail}; see {}; {}",
                log.display(),
                left()
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
            return Err(Error::source(format!(
                "recovery did not finish within an hour; see {}; {}",
                log.display(),
                left()
            )));
        }
    }
}
