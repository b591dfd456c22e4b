//! Writer sessions: how a removal run learns which writers are alive and what they have
//! seen (docs/format.md §17.3).
//!
//! Every writer — a backup, a copy into this repository, a removal run's repack — holds a
//! session object `gc/sess/<id>` from before it reads the GC generation until after its
//! snapshot is written (or it gave up). The object says when the session started and the
//! newest generation whose candidate sets the writer has *acknowledged*: it no longer
//! reuses their packs and already holds its own copy of every doomed blob it relies on.
//! A background task rewrites the object every [`RENEW_INTERVAL`].
//!
//! What a removal run concludes from the sessions it lists:
//! * a pack written after the oldest live session started may be that writer's: it is not
//!   marked ([`PROTECTION_MARGIN`] allows for skew between the storage's own clocks);
//! * a candidate set is swept only once every live session acknowledged its generation;
//! * a session not rewritten for longer than the remover's `stale_after` is judged dead:
//!   the remover first creates the tombstone `gc/dead/<id>`, then deletes the session.
//!   A writer that finds its tombstone (before each renewal, after each index file and
//!   after writing its snapshot) withdraws what it wrote and fails: nothing committed.
//!
//! Ages are differences between two times read from the storage (an object's
//! modification time and that of the remover's probe object), never between the clocks
//! of two machines.

use super::state::{read_sealed, write_sealed, GcView};
use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::format::layout::{GC_SESSIONS as SESSIONS, GC_TOMBSTONES as TOMBSTONES};

/// How often a writer rewrites its session object.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(60);

/// Default for how long a session may go without renewal before a removal run judges its
/// writer dead (`prune --stale-session-after`).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3600);

/// Packs stored up to this long before the oldest live session started are protected too:
/// the storage's clock may differ a little between the servers that answer it.
pub const PROTECTION_MARGIN: Duration = Duration::from_secs(60);

/// Tombstones are kept this long after the session they name was judged dead.
pub const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The session object's contents (sealed, magic `CAIRNgc1`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionRecord {
    /// When the session object was first written, by the storage's clock (ms since the
    /// epoch); absent in the first version of the object, whose own time says it.
    #[serde(default)]
    pub started_ms: Option<i64>,
    /// The newest generation whose candidate sets this writer has acknowledged.
    #[serde(default)]
    pub acked: Option<u64>,
    pub host: String,
    pub pid: u32,
}

struct Inner {
    id: String,
    backend: Backend,
    key: MasterKey,
    host: String,
    started_ms: i64,
    acked: AtomicU64,
    /// A reader's session acknowledges nothing, so no sweep runs while it reads.
    reader: bool,
    dead: AtomicBool,
    /// Serialises rewrites with [`Session::end`], so no renewal recreates the object after
    /// it was deleted.
    writes: tokio::sync::Mutex<bool>,
}

/// A writer's session; see the module documentation. Call [`Session::end`] when done.
pub struct Session {
    inner: Arc<Inner>,
    /// The generation read once the session object existed: sets pending then are
    /// excluded from reuse, sets published later are watched for.
    start: GcView,
    renewer: tokio::task::JoinHandle<()>,
}

fn session_key(id: &str) -> String {
    format!("{SESSIONS}{id}")
}

fn tombstone_key(id: &str) -> String {
    format!("{TOMBSTONES}{id}")
}

impl Session {
    /// Start a session on `backend`: create its object, then read the generation (the
    /// order matters: a removal that lists sessions before this one exists published its
    /// sets before `start` was read, so they are pending in it or already swept).
    pub async fn begin(backend: &Backend, key: &MasterKey) -> Result<Session> {
        Self::begin_as(backend, key, false).await
    }

    /// A session for a reader (restore, check, repair): like a writer's, but it
    /// acknowledges no mark, so every sweep waits until it ends (or is judged dead) and
    /// nothing it may read is deleted meanwhile.
    pub async fn begin_reader(backend: &Backend, key: &MasterKey) -> Result<Session> {
        Self::begin_as(backend, key, true).await
    }

    async fn begin_as(backend: &Backend, key: &MasterKey, reader: bool) -> Result<Session> {
        let id = hex::encode(crate::crypto::random_bytes::<8>());
        let name = session_key(&id);
        let host = crate::repo::hostname();
        let record = SessionRecord { host: host.clone(), pid: std::process::id(), ..Default::default() };
        write_sealed(backend, key, &name, &record, WriteMode::Create).await?;
        let begun = Self::begun(backend, key, id, host, record, reader).await;
        if begun.is_err() {
            // Left behind, it would hold back removal until judged stale.
            let _ = backend.delete(&name).await;
        }
        begun
    }

    async fn begun(
        backend: &Backend,
        key: &MasterKey,
        id: String,
        host: String,
        mut record: SessionRecord,
        reader: bool,
    ) -> Result<Session> {
        let name = session_key(&id);
        let started_ms = match backend.stat(&name).await? {
            Some(info) => info.modified_ms,
            None => {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!("session object {name} was deleted right after it was written; run again"),
                ))
            }
        };
        let start = super::state::read_view(backend, key).await?;
        record.started_ms = Some(started_ms);
        record.acked = (!reader).then_some(start.generation);
        let inner = Arc::new(Inner {
            id,
            backend: backend.clone(),
            key: key.clone(),
            host,
            started_ms,
            acked: AtomicU64::new(start.generation),
            reader,
            dead: AtomicBool::new(false),
            writes: tokio::sync::Mutex::new(false),
        });
        inner.write().await?;
        let renewer = tokio::spawn(renew_loop(inner.clone()));
        Ok(Session { inner, start, renewer })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn start(&self) -> &GcView {
        &self.start
    }

    pub fn acked(&self) -> u64 {
        self.inner.acked.load(Ordering::SeqCst)
    }

    /// Say that every candidate set up to `generation` has been dealt with (its packs are
    /// excluded, the doomed blobs this writer relies on copied). Written at once, so a
    /// waiting sweep can go ahead.
    pub async fn acknowledge(&self, generation: u64) -> Result<()> {
        if self.inner.reader || self.inner.acked.fetch_max(generation, Ordering::SeqCst) >= generation {
            return Ok(());
        }
        self.inner.write().await
    }

    /// Fail if a removal run judged this session dead: what it wrote may be gone.
    pub async fn check_alive(&self) -> Result<()> {
        self.inner.check_alive().await
    }

    /// Delete the session object; the writer's packs are then judged by what references
    /// them. Failures are ignored: a session left behind only delays removal until it is
    /// stale.
    pub async fn end(&self) {
        self.renewer.abort();
        let mut ended = self.inner.writes.lock().await;
        *ended = true;
        let _ = self.inner.backend.delete(&session_key(&self.inner.id)).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Inner {
    fn dead_error(&self) -> Error {
        Error::new(
            ErrorKind::Locked,
            format!(
                "a removal run judged this writer's session {} on {} dead (not renewed for longer than its stale-session limit), so data it wrote may be gone; nothing was committed: run the backup again",
                self.id,
                self.backend.location()
            ),
        )
    }

    async fn check_alive(&self) -> Result<()> {
        if self.dead.load(Ordering::SeqCst) || self.backend.head(&tombstone_key(&self.id)).await?.is_some() {
            self.dead.store(true, Ordering::SeqCst);
            return Err(self.dead_error());
        }
        Ok(())
    }

    /// Rewrite the session object with what this writer has acknowledged.
    async fn write(&self) -> Result<()> {
        let ended = self.writes.lock().await;
        if *ended {
            return Ok(());
        }
        self.check_alive().await?;
        let record = SessionRecord {
            started_ms: Some(self.started_ms),
            acked: (!self.reader).then(|| self.acked.load(Ordering::SeqCst)),
            host: self.host.clone(),
            pid: std::process::id(),
        };
        write_sealed(&self.backend, &self.key, &session_key(&self.id), &record, WriteMode::Overwrite).await
    }
}

async fn renew_loop(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(RENEW_INTERVAL).await;
        // A failed renewal is tried again next time (a session unrenewed for long is
        // judged dead, which the writer finds out before it commits); a dead session
        // stops renewing.
        if inner.write().await.is_err() && inner.dead.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// A session as a removal run sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
    /// `None`: the writer has not yet read the generation, or its object is unreadable.
    pub acked: Option<u64>,
    /// Milliseconds since the last renewal, by the storage's clock.
    pub age_ms: i64,
}

/// Every session object now at `backend` but `own`, read as the remover sees it (ages
/// not judged: for protection, any session present counts).
pub async fn present(backend: &Backend, key: &MasterKey, own: Option<&str>) -> Result<Vec<SessionView>> {
    let mut out = Vec::new();
    for object in backend.list(SESSIONS).await? {
        out.extend(view_of(backend, key, &object, own, object.modified_ms).await?);
    }
    Ok(out)
}

/// The session `object` as of `now_ms`; `None` if it is `own` or vanished. An unreadable
/// object counts as a session that acknowledged nothing (live until it is stale).
async fn view_of(
    backend: &Backend,
    key: &MasterKey,
    object: &crate::backend::ObjectInfo,
    own: Option<&str>,
    now_ms: i64,
) -> Result<Option<SessionView>> {
    let id = crate::format::layout::name(&object.key).to_string();
    if own == Some(id.as_str()) {
        return Ok(None);
    }
    let record: SessionRecord = match read_sealed(backend, key, &object.key).await {
        Ok(record) => record,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(_) => SessionRecord::default(),
    };
    Ok(Some(SessionView {
        started_ms: record.started_ms.unwrap_or(object.modified_ms),
        acked: record.acked,
        host: record.host,
        pid: record.pid,
        age_ms: now_ms - object.modified_ms,
        id,
    }))
}

/// The sessions at `backend` alive at `now_ms` (storage time). Sessions older than
/// `stale_after` are judged dead: unless `dry_run`, each gets its tombstone, then its
/// object is deleted. Tombstones older than [`TOMBSTONE_LIFETIME`] are deleted. Returns
/// (live sessions, sessions judged dead), leaving out `own` (the caller's own session).
pub async fn survey(
    backend: &Backend,
    key: &MasterKey,
    now_ms: i64,
    stale_after: Duration,
    own: Option<&str>,
    dry_run: bool,
) -> Result<(Vec<SessionView>, Vec<SessionView>)> {
    let tombstones = backend.list(TOMBSTONES).await?;
    let dead: std::collections::HashSet<&str> =
        tombstones.iter().map(|o| crate::format::layout::name(&o.key)).collect();
    let (mut live, mut stale) = (Vec::new(), Vec::new());
    for object in backend.list(SESSIONS).await? {
        let Some(view) = view_of(backend, key, &object, own, now_ms).await? else { continue };
        let is_stale = dead.contains(view.id.as_str()) || view.age_ms > stale_after.as_millis() as i64;
        if !is_stale {
            live.push(view);
            continue;
        }
        if !dry_run {
            // The tombstone first: from here on the writer cannot commit.
            match backend.put(&tombstone_key(&view.id), bytes::Bytes::new(), WriteMode::Create).await {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            backend.delete(&object.key).await?;
        }
        stale.push(view);
    }
    if !dry_run {
        for tombstone in &tombstones {
            if now_ms - tombstone.modified_ms > TOMBSTONE_LIFETIME.as_millis() as i64 {
                backend.delete(&tombstone.key).await?;
            }
        }
    }
    Ok((live, stale))
}
