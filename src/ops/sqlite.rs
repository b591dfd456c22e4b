//! SQLite databases: consistent snapshots of live databases, checked before they are
//! stored and again before they replace anything (docs/sqlite.md).
//!
//! A backup opens its own connection to the database and copies every page with SQLite's
//! online backup API in a single step, so the copy is one committed state however busy
//! the writers are (in WAL mode the step reads a snapshot and writers go on; in
//! rollback-journal mode it waits for a moment between transactions). The copy lands in a
//! private temporary directory, is checked (`quick_check` by default), and is stored as a
//! stream. A restore writes a temporary file beside the target, checks it, moves an
//! existing database (and its `-wal`) aside to a timestamped safety copy, and renames the
//! new file into place.

use super::backup::{self, BackupOptions, BackupResult, Root};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::SnapshotFile;
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::source::stream;
use rusqlite::{Connection, OpenFlags};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a backup waits for a moment without a writer's lock (rollback-journal mode).
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Which check runs on a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckLevel {
    Quick,
    Full,
    None,
}

impl CheckLevel {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "quick" => Ok(CheckLevel::Quick),
            "full" => Ok(CheckLevel::Full),
            "none" => Ok(CheckLevel::None),
            other => Err(Error::invalid(format!("unknown check {other:?}: use quick, full or none"))),
        }
    }

    fn pragma(self) -> Option<&'static str> {
        match self {
            CheckLevel::Quick => Some("quick_check"),
            CheckLevel::Full => Some("integrity_check"),
            CheckLevel::None => None,
        }
    }
}

/// What a check found: `ok`, or SQLite's first messages.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckOutcome {
    pub check: &'static str,
    pub ok: bool,
    pub messages: Vec<String>,
}

/// Facts about a database file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DbFacts {
    pub page_size: i64,
    pub page_count: i64,
    pub journal_mode: String,
    pub user_version: i64,
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    let not_a_db = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase);
    if not_a_db {
        return Error::source(format!(
            "{} is not a SQLite database (give the path of a database file)",
            path.display()
        ));
    }
    Error::source(format!("{}: {e}", path.display()))
}

/// Open an existing database (never create one) with its own connection.
fn open_existing(path: &Path) -> Result<Connection> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("open database", path, e))?;
    if !meta.is_file() {
        return Err(Error::source(format!("{} is not a file; give the path of a SQLite database", path.display())));
    }
    if meta.len() == 0 {
        return Err(Error::source(format!(
            "{} is empty (0 bytes), not a SQLite database; give the path of a database file",
            path.display()
        )));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .or_else(|_| {
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        })
        .map_err(|e| db_error(path, e))?;
    conn.busy_timeout(LOCK_WAIT).map_err(|e| db_error(path, e))?;
    // Reading the schema is what tells a database from any other file.
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)).map_err(|e| db_error(path, e))?;
    Ok(conn)
}

fn facts(conn: &Connection, path: &Path) -> Result<DbFacts> {
    let int = |pragma: &str| conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get::<_, i64>(0));
    Ok(DbFacts {
        page_size: int("page_size").map_err(|e| db_error(path, e))?,
        page_count: int("page_count").map_err(|e| db_error(path, e))?,
        journal_mode: conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .map_err(|e| db_error(path, e))?,
        user_version: int("user_version").map_err(|e| db_error(path, e))?,
    })
}

/// Run `level`'s check on an open database.
pub fn run_check(conn: &Connection, path: &Path, level: CheckLevel) -> Result<CheckOutcome> {
    let Some(pragma) = level.pragma() else {
        return Ok(CheckOutcome { check: "none", ok: true, messages: Vec::new() });
    };
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}(20)")).map_err(|e| db_error(path, e))?;
    let messages: Vec<String> =
        stmt.query_map([], |r| r.get::<_, String>(0)).and_then(|rows| rows.collect()).map_err(|e| db_error(path, e))?;
    let ok = messages.len() == 1 && messages[0] == "ok";
    Ok(CheckOutcome { check: pragma, ok, messages })
}

/// A private temporary directory, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(parent: &Path, what: &str) -> Result<Self> {
        let name = format!("cairn-{what}-{}-{}", std::process::id(), hex::encode(crate::crypto::random_bytes::<6>()));
        let dir = parent.join(name);
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create scratch directory", parent, e))?;
        // Private: restored databases and secrets pass through it.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create scratch directory", &dir, e))?;
        Ok(Scratch(dir))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copy a live database into `copy` in one step of the online backup API.
fn snapshot_into(src: &Connection, source: &Path, copy: &Path, cancel: &Cancel) -> Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let mut dst = Connection::open(copy).map_err(|e| db_error(copy, e))?;
    let started = Instant::now();
    let backup = Backup::new(src, &mut dst).map_err(|e| db_error(source, e))?;
    loop {
        cancel.check()?;
        match backup.step(-1).map_err(|e| db_error(source, e))? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                return Err(Error::source(format!(
                    "{} stayed locked by a writer for {} s; no snapshot was written",
                    source.display(),
                    LOCK_WAIT.as_secs()
                )))
            }
        }
    }
}

/// Back up a SQLite database: a consistent copy, checked, then stored.
/// A copy that fails its check is stored only with `allow_corrupt`, tagged `corrupt`.
pub async fn backup_sqlite(
    repo: &Repository,
    path: &Path,
    level: CheckLevel,
    allow_corrupt: bool,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let scratch = Scratch::new(&std::env::temp_dir(), "sqlite")?;
    let copy = scratch.path().join("copy.db");
    let (source_facts, copy_facts, check) = tokio::task::block_in_place(|| -> Result<_> {
        let src = open_existing(&source)?;
        let source_facts = facts(&src, &source)?;
        snapshot_into(&src, &source, &copy, cancel)?;
        drop(src);
        // Problems found in the copy are the source's: name it, not the scratch file.
        let named = |e: Error| {
            let message = e.message().replace(&copy.display().to_string(), &source.display().to_string());
            Error::new(e.kind(), message)
        };
        let conn = open_existing(&copy).map_err(named)?;
        let copy_facts = facts(&conn, &copy).map_err(named)?;
        let check = run_check(&conn, &copy, level).map_err(named)?;
        Ok((source_facts, copy_facts, check))
    })?;
    let mut options = options.clone();
    if !check.ok {
        let first = check.messages.first().cloned().unwrap_or_default();
        if !allow_corrupt {
            return Err(Error::source(format!(
                "{} fails {}: {first}; no snapshot was written (repair it, or keep it anyway with --allow-corrupt)",
                source.display(),
                check.check
            )));
        }
        options.tags.push("corrupt".into());
    }
    options.meta.extend([
        ("path".to_string(), serde_json::json!(source.display().to_string())),
        ("page_size".to_string(), serde_json::json!(copy_facts.page_size)),
        ("page_count".to_string(), serde_json::json!(copy_facts.page_count)),
        ("journal_mode".to_string(), serde_json::json!(source_facts.journal_mode)),
        ("user_version".to_string(), serde_json::json!(copy_facts.user_version)),
        ("check".to_string(), serde_json::json!(check.check)),
        (
            "check_result".to_string(),
            serde_json::json!(if check.ok { "ok".to_string() } else { check.messages.join("; ") }),
        ),
    ]);
    if !check.ok {
        options.meta.insert("corrupt".into(), serde_json::json!(true));
    }
    let params = repo.config().chunker;
    let mut result = backup::run(repo, &options, None, |saver, _, _| {
        let file = std::fs::File::open(&copy).map_err(|e| Error::io("open", &copy, e))?;
        progress.begin("storing", None);
        let content = stream::store_stream(saver, file, params, cancel, progress)?;
        progress.end();
        Ok(Root::Content(content))
    })
    .await?;
    if !check.ok {
        result.warnings.push(format!(
            "{} fails {} ({}); stored anyway because of --allow-corrupt, tagged corrupt",
            source.display(),
            check.check,
            check.messages.first().cloned().unwrap_or_default()
        ));
    }
    Ok(result)
}

/// What restoring a database did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SqliteRestore {
    pub path: PathBuf,
    pub bytes: u64,
    pub check: CheckOutcome,
    pub facts: DbFacts,
    /// Where the database that was there before now is.
    pub safety_copy: Option<PathBuf>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn ensure_sqlite(snapshot: &SnapshotFile) -> Result<&crate::format::snapshot::Content> {
    match (&snapshot.content, snapshot.kind.as_str()) {
        (Some(content), "sqlite") => Ok(content),
        _ => Err(Error::invalid(format!("snapshot of kind {} is not a SQLite database", snapshot.kind))),
    }
}

/// Restore a database into `target` through a checked temporary file beside it. An
/// existing database is moved aside first (with its `-wal`, which may hold committed
/// transactions); its `-shm` is removed. Nothing is replaced if the check fails.
pub async fn restore_sqlite(
    repo: &Repository,
    snapshot: &SnapshotFile,
    target: &Path,
    level: CheckLevel,
    progress: &dyn Progress,
) -> Result<SqliteRestore> {
    let content = ensure_sqlite(snapshot)?;
    if target.is_dir() {
        return Err(Error::invalid(format!(
            "{} is a directory; give the database file's path to --to",
            target.display()
        )));
    }
    // An unpredictable name: nobody can plant a link there in advance.
    let tmp = with_suffix(target, &format!(".cairn-restore-{}", hex::encode(crate::crypto::random_bytes::<8>())));
    // The restored database keeps the mode and owner of the one it replaces: a service's
    // 0600 database must not become world-readable, nor root's.
    let replaced = rustix::fs::lstat(target)
        .ok()
        .filter(|s| rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::RegularFile);
    let bytes = super::restore::restore_stream_to_file(repo, content, &tmp, progress).await?;
    let checked = tokio::task::block_in_place(|| -> Result<_> {
        let conn = open_existing(&tmp)?;
        let facts = facts(&conn, &tmp)?;
        let check = run_check(&conn, &tmp, level)?;
        Ok((facts, check))
    });
    let (facts, check) = match checked {
        Ok((facts, check)) if check.ok => (facts, check),
        Ok((_, check)) => {
            remove_with_sidecars(&tmp);
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "the restored database fails {}: {}; {} was left untouched",
                    check.check,
                    check.messages.first().cloned().unwrap_or_default(),
                    target.display()
                ),
            ));
        }
        Err(e) => {
            remove_with_sidecars(&tmp);
            return Err(e);
        }
    };
    remove_with_sidecars_only(&tmp);
    let kept = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|f| super::restore::keep_mode_and_owner(&f, replaced.as_ref()));
    if let Err(e) = kept {
        remove_with_sidecars(&tmp);
        return Err(Error::io("set the mode and owner of", &tmp, e));
    }
    let mut safety_copy = None;
    if target.exists() {
        let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        let aside = with_suffix(target, &format!(".before-restore-{stamp}"));
        std::fs::rename(target, &aside).map_err(|e| Error::io("move the existing database aside to", &aside, e))?;
        let wal = with_suffix(target, "-wal");
        if wal.exists() {
            let aside_wal = with_suffix(&aside, "-wal");
            std::fs::rename(&wal, &aside_wal).map_err(|e| Error::io("move aside", &wal, e))?;
        }
        safety_copy = Some(aside);
    }
    for stale in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(with_suffix(target, stale));
    }
    std::fs::rename(&tmp, target).map_err(|e| Error::io("rename into place", target, e))?;
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(SqliteRestore { path: target.to_path_buf(), bytes, check, facts, safety_copy })
}

fn remove_with_sidecars_only(path: &Path) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(with_suffix(path, suffix));
    }
}

fn remove_with_sidecars(path: &Path) {
    let _ = std::fs::remove_file(path);
    remove_with_sidecars_only(path);
}

/// Restore a database into a scratch directory, check it, and remove it again.
pub async fn verify_sqlite(
    repo: &Repository,
    snapshot: &SnapshotFile,
    scratch: &Path,
    level: CheckLevel,
    progress: &dyn Progress,
) -> Result<SqliteRestore> {
    ensure_sqlite(snapshot)?;
    let dir = Scratch::new(scratch, "verify")?;
    let path = dir.path().join("restored.db");
    let mut report = restore_sqlite(repo, snapshot, &path, level, progress).await?;
    report.path = path;
    Ok(report)
}
