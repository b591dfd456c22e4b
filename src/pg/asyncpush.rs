//! Asynchronous archiving: `wal push --async --spool DIR` (docs/postgres.md, "Async").
//!
//! PostgreSQL archives one file per `archive_command` and waits for each. With `--async`,
//! the command starts (once) a background pusher that reads `pg_wal/archive_status` for
//! every `.ready` file and pushes them several at a time from one opened repository,
//! writing `DIR/ok/<name>` only once a file is durable in the archive (or
//! `DIR/error/<name>` with the reason). The command itself waits for its own file's
//! marker, so it still exits 0 only for a file that is archived: PostgreSQL's guarantee
//! is unchanged, but the next files are usually archived before it asks.

use crate::backend::Backend;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::pg::prefetch::SpoolLock;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the pusher lingers with nothing ready before it exits.
const IDLE: Duration = Duration::from_secs(10);
/// Files pushed at once.
const PARALLEL: usize = 4;

pub struct PushSpool {
    dir: PathBuf,
}

/// What the background pusher said about one file.
pub enum Outcome {
    Archived,
    Failed(String),
}

impl PushSpool {
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["ok", "error"] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir.join(sub))
                .map_err(|e| Error::io("create the archive spool", dir, e))?;
        }
        Ok(PushSpool { dir: dir.to_path_buf() })
    }

    /// The pusher's verdict on the file `path` of `source`, taken (the marker is
    /// removed). An "archived" verdict counts only if it names this source and this very
    /// file (size and modification time): a marker left by another source, another file
    /// of that name, or by hand is dropped, and the file is pushed again.
    pub fn take(&self, source: &str, path: &Path) -> Option<Outcome> {
        let name = path.file_name()?.to_str()?;
        let ok = self.dir.join("ok").join(name);
        if let Ok(said) = std::fs::read_to_string(&ok) {
            let _ = std::fs::remove_file(&ok);
            if Some(said) == stamp(source, path) {
                return Some(Outcome::Archived);
            }
        }
        let error = self.dir.join("error").join(name);
        let message = std::fs::read_to_string(&error).ok()?;
        let _ = std::fs::remove_file(&error);
        Some(Outcome::Failed(message))
    }

    fn mark(&self, sub: &str, name: &str, text: &str) -> Result<()> {
        let dir = self.dir.join(sub);
        let tmp = dir.join(format!(".{name}.{}", hex::encode(crate::crypto::random_bytes::<4>())));
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
            .map_err(|e| Error::io("write", &dir.join(name), e))
    }

    /// Is a pusher holding the spool?
    pub fn is_served(&self) -> Result<bool> {
        Ok(SpoolLock::take(&self.dir)?.is_none())
    }

    /// Wait for the verdict on `path`, up to `timeout`.
    pub fn wait(&self, source: &str, path: &Path, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.take(source, path) {
                return Some(outcome);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What an "archived" verdict says: the source and the file it was for.
fn stamp(source: &str, path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    use std::os::unix::fs::MetadataExt;
    Some(format!("{source}\n{}\n{}.{}\n", meta.len(), meta.mtime(), meta.mtime_nsec()))
}

/// The files PostgreSQL has marked ready to archive, oldest first.
fn ready(pg_wal: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(pg_wal.join("archive_status"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ready").map(str::to_string))
                .filter(|n| crate::pg::wal::classify(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    // History files first (PostgreSQL archives them before the new timeline's WAL), then
    // by name, which is WAL order within a timeline.
    names.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
    names
}

/// The background pusher: hold the spool's lock and push every ready file of `pg_wal`
/// that has no verdict yet, until nothing has been ready for a while.
pub async fn run_pusher(backend: &Backend, key: &MasterKey, source: &str, pg_wal: &Path, dir: &Path) -> Result<()> {
    use futures::StreamExt;
    let spool = PushSpool::open(dir)?;
    let Some(_lock) = SpoolLock::take(dir)? else { return Ok(()) }; // another one serves it
    let mut idle_since = Instant::now();
    loop {
        let todo: Vec<String> = ready(pg_wal)
            .into_iter()
            .filter(|n| !spool.dir.join("ok").join(n).exists() && !spool.dir.join("error").join(n).exists())
            .take(PARALLEL * 4)
            .collect();
        // Verdicts PostgreSQL no longer waits for (done, or never collected).
        if let Ok(entries) = std::fs::read_dir(spool.dir.join("ok")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !pg_wal.join("archive_status").join(format!("{name}.ready")).exists() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if todo.is_empty() {
            if idle_since.elapsed() > IDLE {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        idle_since = Instant::now();
        let pushed: Vec<(String, Result<crate::pg::wal::Pushed>)> = futures::stream::iter(todo)
            .map(|name| async move {
                let result = crate::pg::wal::push(backend, key, source, &pg_wal.join(&name)).await;
                (name, result)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (name, result) in pushed {
            match (result, stamp(source, &pg_wal.join(&name))) {
                (Ok(_), Some(stamp)) => spool.mark("ok", &name, &stamp)?,
                (Ok(_), None) => {} // gone meanwhile: PostgreSQL will not ask for it
                (Err(e), _) => spool.mark("error", &name, e.message())?,
            }
        }
    }
}
