//! A read-ahead spool for `restore_command` (docs/postgres.md, "Prefetch").
//!
//! PostgreSQL asks for one WAL file at a time and waits: one process, one repository
//! open, one GET, one decryption per segment. With `wal fetch --prefetch N --spool DIR`,
//! the first fetch starts a background process (`--ahead`) that keeps the N segments
//! after the last one asked for in DIR, fetched and checked exactly as a fetch checks
//! them, several at a time, from one opened repository. A later fetch that finds its
//! segment there only renames it into place. A segment not in the spool is fetched
//! directly, so "not archived" is always the storage's own answer, never the spool's.
//!
//! The spool holds decrypted WAL: it is created 0700, must be outside the data directory
//! and belong to one recovery (pitr makes a new one each time and removes it after).

use crate::backend::Backend;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::pg::wal::{self, WalKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the background process lingers with nothing to do before it exits.
const IDLE: Duration = Duration::from_secs(10);
/// Segments fetched at once by the background process.
const PARALLEL: usize = 4;

pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool of `owner` (the repository and source it holds WAL of) in `dir`;
    /// `None` if `dir` belongs to another repository or source (its files are then never
    /// served: fetches go to the archive).
    pub fn open(dir: &Path, owner: &str) -> Result<Option<Self>> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(|e| Error::io("create the WAL spool", dir, e))?;
        let mark = dir.join(".owner");
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&mark) {
            Ok(mut file) => {
                std::io::Write::write_all(&mut file, owner.as_bytes()).map_err(|e| Error::io("write", &mark, e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("write", &mark, e)),
        }
        let recorded = std::fs::read_to_string(&mark).map_err(|e| Error::io("read", &mark, e))?;
        Ok((recorded == owner).then(|| Spool { dir: dir.to_path_buf() }))
    }

    /// Whose WAL a spool holds: the repository's location and the source.
    pub fn owner(repository: &str, source: &str) -> String {
        format!("{repository}\n{source}\n")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Move a prefetched file to `dest`; `false` if the spool does not have it, or has
    /// something that is not that segment (its first page and length are checked again,
    /// and a file that fails is removed).
    pub fn take(&self, name: &str, dest: &Path) -> Result<bool> {
        let path = self.path(name);
        let looks_right = (|| -> std::io::Result<bool> {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            let mut head = [0u8; 40];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)?;
            Ok(wal::check_place(name, &head, len).is_ok())
        })();
        match looks_right {
            Ok(true) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            _ => {
                let _ = std::fs::remove_file(&path);
                return Ok(false);
            }
        }
        match std::fs::rename(&path, dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            // Another file system: copy through a temporary name, then drop the spool's.
            Err(e) if e.raw_os_error() == Some(18) => {
                let data = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
                wal::write_whole(dest, name, &data)?;
                let _ = std::fs::remove_file(&path);
                Ok(true)
            }
            Err(e) => Err(Error::io("move prefetched WAL from", &path, e)),
        }
    }

    /// Record the segment PostgreSQL asked for last: the background process fills the
    /// spool from there on and drops what is before it.
    pub fn want(&self, name: &str) -> Result<()> {
        let tmp = self.dir.join(format!(".want.{}", hex::encode(crate::crypto::random_bytes::<4>())));
        std::fs::write(&tmp, name)
            .and_then(|_| std::fs::rename(&tmp, self.dir.join(".want")))
            .map_err(|e| Error::io("write", &self.dir.join(".want"), e))
    }

    fn wanted(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(".want")).ok()?;
        matches!(wal::classify(text.trim()), Ok(WalKind::Segment { .. })).then(|| text.trim().to_string())
    }

    /// Is a background process holding the spool?
    pub fn is_served(&self) -> Result<bool> {
        Ok(SpoolLock::take(&self.dir)?.is_none())
    }
}

/// The lock a spool's one background process holds (`DIR/.lock`, flock): shared by the
/// prefetcher and the async pusher, which each run once per spool.
pub struct SpoolLock {
    _file: std::fs::File,
}

impl SpoolLock {
    /// The lock, or `None` if another process holds it. Released when dropped.
    pub fn take(dir: &Path) -> Result<Option<SpoolLock>> {
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(SpoolLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io("lock", &path, e.into())),
        }
    }
}

/// The segment `n` after `name`, on the same timeline.
fn after(name: &str, n: u64, segment_size: u32) -> Option<String> {
    let WalKind::Segment { timeline, log, seg } = wal::classify(name).ok()? else { return None };
    let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
    Some(wal::segment_name(timeline, u64::from(log) * per_log + u64::from(seg) + n, segment_size))
}

/// The background process: hold the spool's lock and keep the `count` segments after
/// the wanted one in it, until nothing has been wanted for a while or the spool is gone.
pub async fn run_ahead(backend: &Backend, key: &MasterKey, source: &str, dir: &Path, count: u64) -> Result<()> {
    use futures::StreamExt;
    let Some(spool) = Spool::open(dir, &Spool::owner(backend.location(), source))? else { return Ok(()) };
    let Some(_lock) = SpoolLock::take(dir)? else { return Ok(()) }; // another one serves it
    let segment_size = wal::source_info(backend, key, source).await?.map_or(16 << 20, |c| c.segment_size);
    let mut last_want = None;
    let mut idle_since = Instant::now();
    // Past the end of the archive: do not ask again for what was just not there.
    let mut absent: Option<String> = None;
    loop {
        if !dir.exists() {
            return Ok(());
        }
        let want = spool.wanted();
        if want != last_want {
            idle_since = Instant::now();
            last_want = want.clone();
        }
        let Some(want) = want else {
            if idle_since.elapsed() > IDLE {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Drop what PostgreSQL has passed (and temporaries of a killed run).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stale = matches!(wal::classify(&name), Ok(WalKind::Segment { .. }))
                    && (name[..8] != want[..8] || name <= want);
                if stale
                    || (name.starts_with('.')
                        && name.contains(".cairn-")
                        && entry.metadata().is_ok_and(|m| {
                            m.modified().is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60))
                        }))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let todo: Vec<String> = (1..=count)
            .filter_map(|n| after(&want, n, segment_size))
            .take_while(|name| absent.as_ref().is_none_or(|a| name < a))
            .filter(|name| !spool.path(name).exists())
            .collect();
        if todo.is_empty() {
            if idle_since.elapsed() > IDLE {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            // The end of the archive may move: look again now and then.
            if absent.is_some() && idle_since.elapsed() > Duration::from_secs(1) {
                absent = None;
            }
            continue;
        }
        let fetched: Vec<(String, Result<Option<u64>>)> = futures::stream::iter(todo)
            .map(|name| {
                let dest = spool.path(&name);
                async move {
                    let got = wal::fetch(backend, key, source, &name, &dest).await;
                    (name, got)
                }
            })
            .buffered(PARALLEL)
            .collect()
            .await;
        for (name, got) in fetched {
            match got {
                Ok(Some(_)) => {}
                // The end of the archive, for now; the foreground fetches directly.
                Ok(None) => {
                    absent = Some(name);
                    break;
                }
                // Leave it to the foreground, which reports the failure as its own.
                Err(_) => break,
            }
        }
    }
}
