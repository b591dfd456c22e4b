//! The write pipeline: new blobs in, durable packs and index files out.
//!
//! ```text
//! producer thread ──(id, chunk)──▶ worker threads ──FinishedPack──▶ async uploader
//!  chunk, hash, dedup               compress, then seal into        PUT (write-once),
//!  (metadata blobs sealed inline    the one shared data pack        then index files
//!   into one shared meta pack)      (seal_loop)                     (upload_loop, Indexer)
//! ```
//!
//! Workers compress in parallel (the expensive step), then seal and append into one shared
//! data pack under a lock (AES-GCM is an order of magnitude faster than zstd), so only one
//! data pack is being filled at a time; metadata blobs go to a separate pack so trees stay
//! small and cacheable. Channels are bounded and local disks get one upload at a time, so
//! memory is bounded whatever the input size (docs/PERFORMANCE.md states the bound). Write order: a pack is listed in an index file only after its PUT
//! returned (durable), and the caller writes its snapshot only after [`Saver::finish`],
//! which returns once every pack and index file is durable. A crash at any point therefore
//! leaves only unreferenced packs, which the next backup ignores and prune collects.
//! On local disks packs are written without fsync and synced as a batch just before the
//! index file that lists them: per-pack fsyncs stalled the pipeline behind writeback.

use super::gc::session::Session;
use crate::buffers::SpareBuffers;
use crate::catalog::Catalog;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::pack::{BlobKind, FinishedPack, PackWriter};
use crate::format::snapshot::MetaSink;
use crate::id::{BlobId, PackId};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

mod upload;
use upload::{seal_loop, upload_loop, Indexer, Uploaded};

/// Write an index file once this many blobs or packs are durable but unindexed, or this
/// long after the last one, so a long backup that is killed still leaves most of its work
/// indexed for the next run to reuse, while index files stay few.
pub(crate) const INDEX_FLUSH_BLOBS: usize = 50_000;

pub(crate) const INDEX_FLUSH_PACKS: usize = 32;

pub(crate) const INDEX_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// New blobs handed to the workers together: batching ~1 MiB of 64 KiB chunks per handoff
/// cut thread wake-ups sixteenfold and keeps a useful amount of work queued.
pub(crate) type Job = Vec<(BlobId, Vec<u8>)>;

const BATCH_BYTES: usize = 1 << 20;

/// Buffers of uploaded packs kept for the next ones: one pack being filled while the
/// previous one uploads is the steady state.
const SPARE_PACKS: usize = 2;

/// What a saver stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaverStats {
    pub added_bytes: u64,
    pub added_blobs: u64,
    pub packs: u64,
    pub index_files: u64,
    /// The packs written, for callers that verify them.
    pub pack_ids: Vec<PackId>,
}

pub(crate) struct Shared {
    key: MasterKey,
    level: i32,
    pack_size: usize,
    /// Buffer to reserve per pack: the target plus one largest blob and its header
    /// entry, so filling a pack never reallocates (and never doubles) its buffer.
    pack_capacity: usize,
    catalog: Arc<Catalog>,
    exclusions: Arc<super::reuse::Exclusions>,
    /// Blobs claimed this session and not yet in the catalog. The uploader removes ids
    /// once their index file is recorded in the catalog, so this stays bounded.
    seen: Arc<Mutex<HashSet<BlobId>>>,
    data_pack: Mutex<Option<PackWriter>>,
    /// Buffers of uploaded data packs, for the next packs to fill.
    spare_buffers: Arc<SpareBuffers>,
    meta_pack: Mutex<Option<PackWriter>>,
    upload_tx: tokio::sync::mpsc::Sender<FinishedPack>,
    added_bytes: AtomicU64,
    added_blobs: AtomicU64,
    watch: Watch,
}

/// What a long-running writer needs to notice removals that start while it runs (see
/// `gc`): the packs it wrote and the blobs it reused, and when it last looked.
struct Watch {
    runtime: tokio::runtime::Handle,
    backend: crate::backend::Backend,
    /// The writer's session: where it started, and what it acknowledged.
    session: Arc<Session>,
    interval: std::time::Duration,
    my_packs: Mutex<HashSet<PackId>>,
    state: Mutex<WatchState>,
    /// Held shared while a blob is judged reusable and recorded as reused, and exclusively
    /// while newly marked packs are excluded: so every reuse either sees the exclusion or
    /// is in the list the copy-out reads, before the writer acknowledges the mark.
    gate: std::sync::RwLock<()>,
    /// Names this saver's rows in the catalog's `session_reused` table.
    stash: u64,
    /// Reused ids kept in memory before they are stashed ([`REUSED_IN_MEMORY`]).
    reused_in_memory: usize,
}

/// Reused blob ids a saver keeps in memory (2 MiB) before it stashes them in the catalog,
/// so that memory does not grow with the size of an unchanged tree or stream.
pub const REUSED_IN_MEMORY: usize = 65_536;

/// Savers started by this process, to tell their stashed ids apart.
static STASHES: AtomicU64 = AtomicU64::new(0);

struct WatchState {
    last: std::time::Instant,
    generation: u64,
    known_sets: std::collections::BTreeSet<String>,
    /// Blobs this session reused from the index instead of storing them, since it last
    /// stashed them in the catalog (duplicates allowed).
    reused: Vec<BlobId>,
    /// Whether some are stashed.
    stashed: bool,
}

impl Shared {
    fn send_pack(&self, pack: FinishedPack) -> Result<()> {
        self.watch.my_packs.lock().unwrap_or_else(|p| p.into_inner()).insert(pack.id);
        self.upload_tx.blocking_send(pack).map_err(|_| Error::backend("the uploader stopped after an earlier error"))
    }

    fn account(&self, grew: usize) {
        self.added_bytes.fetch_add(grew as u64, Ordering::Relaxed);
        self.added_blobs.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stores blobs into packs. Use from plain threads, never from inside the async runtime.
pub struct Saver {
    shared: Arc<Shared>,
    /// The batch being gathered by the producer, and its size in bytes.
    batch: Mutex<(Job, usize)>,
    data_tx: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<Result<()>>>,
    uploader: Option<tokio::task::JoinHandle<Result<Uploaded>>>,
}

impl Saver {
    /// Start workers and the uploader on `runtime`.
    pub fn start(repo: &super::Repository, session: &Arc<Session>, runtime: &tokio::runtime::Handle) -> Saver {
        Self::start_with(repo, session, runtime, true)
    }

    /// A saver for moving blobs between packs (repacking): its index files are not
    /// recorded in the catalog one by one; the caller refreshes the catalog afterwards,
    /// which loads them in one sorted merge.
    pub fn start_moving(repo: &super::Repository, session: &Arc<Session>, runtime: &tokio::runtime::Handle) -> Saver {
        Self::start_with(repo, session, runtime, false)
    }

    fn start_with(
        repo: &super::Repository,
        session: &Arc<Session>,
        runtime: &tokio::runtime::Handle,
        record: bool,
    ) -> Saver {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let (upload_tx, upload_rx) = tokio::sync::mpsc::channel(1);
        let shared = Arc::new(Shared {
            key: repo.key().clone(),
            level: repo.config().compression_level,
            pack_size: repo.config().pack_size as usize,
            pack_capacity: (repo.config().pack_size + repo.config().chunker.max_size) as usize + (256 << 10),
            catalog: repo.catalog().clone(),
            exclusions: repo.exclusions().clone(),
            seen: Arc::new(Mutex::new(HashSet::new())),
            data_pack: Mutex::new(None),
            spare_buffers: Arc::new(SpareBuffers::new(SPARE_PACKS)),
            meta_pack: Mutex::new(None),
            upload_tx,
            added_bytes: AtomicU64::new(0),
            added_blobs: AtomicU64::new(0),
            watch: Watch {
                runtime: runtime.clone(),
                backend: repo.backend().clone(),
                session: session.clone(),
                interval: repo.gc_check_interval(),
                my_packs: Mutex::new(HashSet::new()),
                state: Mutex::new(WatchState {
                    last: std::time::Instant::now(),
                    generation: session.start().generation,
                    known_sets: session.start().pending.iter().cloned().collect(),
                    reused: Vec::new(),
                    stashed: false,
                }),
                gate: std::sync::RwLock::new(()),
                stash: STASHES.fetch_add(1, Ordering::Relaxed),
                reused_in_memory: repo.reused_in_memory(),
            },
        });
        let indexer = Indexer {
            backend: repo.backend().clone(),
            key: repo.key().clone(),
            catalog: record.then(|| repo.catalog().clone()),
            seen: shared.seen.clone(),
            session: session.clone(),
        };
        let uploader = runtime.spawn(upload_loop(indexer, upload_rx, shared.spare_buffers.clone()));
        let (data_tx, data_rx) = sync_channel::<Job>(workers * 2);
        let data_rx = Arc::new(Mutex::new(data_rx));
        let workers = (0..workers)
            .map(|i| {
                let shared = shared.clone();
                let rx = data_rx.clone();
                std::thread::Builder::new()
                    .name(format!("cairn-seal-{i}"))
                    .spawn(move || seal_loop(&shared, &rx))
                    .expect("spawning a worker thread")
            })
            .collect();
        Saver { shared, batch: Mutex::new((Vec::new(), 0)), data_tx: Some(data_tx), workers, uploader: Some(uploader) }
    }

    /// Claim `id` for this session: true if the repository lacks it and the caller must
    /// store it now; false if it is indexed or already on its way.
    pub fn claim(&self, id: &BlobId) -> Result<bool> {
        self.watch_removals()?;
        let _gate = self.shared.watch.gate.read().unwrap_or_else(|p| p.into_inner());
        let mut seen = self.shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(id) {
            return Ok(false);
        }
        if self.shared.exclusions.reusable(&self.shared.catalog, id)? {
            drop(seen);
            self.note_reused([*id])?;
            return Ok(false);
        }
        seen.insert(*id);
        Ok(true)
    }

    /// Rely on blobs without storing them (a parent snapshot's unchanged file), if every
    /// one is indexed outside the packs a removal marked: true if the caller may reference
    /// them; false if it must store the data again.
    /// `depth` is the content's: stream nodes (depth > 0) are not looked into, so such a
    /// content is reused only while no pack is excluded.
    pub fn reuse(&self, ids: &[BlobId], depth: u8) -> Result<bool> {
        self.watch_removals()?;
        let _gate = self.shared.watch.gate.read().unwrap_or_else(|p| p.into_inner());
        if self.shared.exclusions.any() {
            if depth > 0 {
                return Ok(false);
            }
            for id in ids {
                if !self.shared.exclusions.reusable(&self.shared.catalog, id)? {
                    return Ok(false);
                }
            }
        }
        self.note_reused(ids.iter().copied())?;
        Ok(true)
    }

    /// Record blobs the snapshot will reference without storing them, so a removal that
    /// marks them is noticed. Call with the gate held.
    fn note_reused(&self, ids: impl IntoIterator<Item = BlobId>) -> Result<()> {
        let mut state = self.shared.watch.state.lock().unwrap_or_else(|p| p.into_inner());
        state.reused.extend(ids);
        if state.reused.len() >= self.shared.watch.reused_in_memory {
            let mut ids = std::mem::take(&mut state.reused);
            ids.sort_unstable();
            ids.dedup();
            self.shared.catalog.stash_reused(self.shared.watch.stash, &ids)?;
            state.stashed = true;
        }
        Ok(())
    }

    /// Every so often, look for removals marked since this session started; stop reusing
    /// their packs, copy out what this session already relies on while it still exists,
    /// then acknowledge them in the session object, which lets their sweep go ahead. The
    /// snapshot commit checks once more (`gc::guard`).
    fn watch_removals(&self) -> Result<()> {
        let watch = &self.shared.watch;
        let (generation, known) = {
            let mut state = watch.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.last.elapsed() < watch.interval {
                return Ok(());
            }
            state.last = std::time::Instant::now();
            (state.generation, state.known_sets.clone())
        };
        let key = &self.shared.key;
        let view = watch.runtime.block_on(super::gc::state::read_view(&watch.backend, key))?;
        if view.generation == generation {
            return Ok(());
        }
        let sets = watch.runtime.block_on(super::gc::writer::sets_since(
            &watch.backend,
            key,
            watch.session.start(),
            view.generation,
        ))?;
        for (name, set) in sets.into_iter().filter(|(name, _)| !known.contains(name)) {
            let doomed: HashSet<BlobId> = set.doomed.iter().copied().collect();
            let (mut reused, stashed): (Vec<BlobId>, bool) = {
                let _gate = watch.gate.write().unwrap_or_else(|p| p.into_inner());
                self.shared.exclusions.exclude(set.packs.iter().copied());
                let state = watch.state.lock().unwrap_or_else(|p| p.into_inner());
                (state.reused.iter().filter(|b| doomed.contains(b)).copied().collect(), state.stashed)
            };
            if stashed {
                reused.extend(self.shared.catalog.stashed_reused(watch.stash, &set.doomed)?);
            }
            reused.sort_unstable();
            reused.dedup();
            let own: Vec<crate::id::PackId> = {
                let mine = watch.my_packs.lock().unwrap_or_else(|p| p.into_inner());
                set.packs.iter().filter(|p| mine.contains(p)).copied().collect()
            };
            let copies = watch.runtime.block_on(super::gc::writer::salvage(
                &watch.backend,
                key,
                (&self.shared.catalog, &self.shared.exclusions),
                super::gc::writer::Doomed { blobs: &doomed, packs: &set.packs.iter().copied().collect() },
                &reused,
                &own,
            ))?;
            for (kind, id, bytes) in copies {
                self.store_copy(kind, id, bytes)?;
            }
            watch.state.lock().unwrap_or_else(|p| p.into_inner()).known_sets.insert(name);
        }
        watch.state.lock().unwrap_or_else(|p| p.into_inner()).generation = view.generation;
        // Copies queued here reach storage before any snapshot does (`finish`).
        watch.runtime.block_on(watch.session.acknowledge(view.generation))
    }

    /// Queue a data blob that [`Saver::claim`] returned true for.
    pub fn save_data(&self, id: BlobId, data: Vec<u8>) -> Result<()> {
        let full = {
            let mut batch = self.batch.lock().unwrap_or_else(|p| p.into_inner());
            batch.1 += data.len();
            batch.0.push((id, data));
            if batch.1 >= BATCH_BYTES {
                batch.1 = 0;
                Some(std::mem::take(&mut batch.0))
            } else {
                None
            }
        };
        match full {
            Some(job) => self.send(job),
            None => Ok(()),
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        let tx = self.data_tx.as_ref().expect("save after finish");
        tx.send(job).map_err(|_| Error::backend("the pack workers stopped after an earlier error"))
    }

    /// Hash, deduplicate and queue a data blob; returns its id.
    pub fn save_chunk(&self, data: Vec<u8>) -> Result<BlobId> {
        let id = self.shared.key.blob_id(&data);
        if self.claim(&id)? {
            self.save_data(id, data)?;
        }
        Ok(id)
    }

    pub fn key(&self) -> &MasterKey {
        &self.shared.key
    }

    /// Bytes and blobs stored so far.
    pub fn added(&self) -> (u64, u64) {
        (self.shared.added_bytes.load(Ordering::Relaxed), self.shared.added_blobs.load(Ordering::Relaxed))
    }

    /// Flush every pack, wait for every upload and index file. After `Ok`, everything
    /// saved is durable and indexed, and a snapshot referencing it may be written.
    pub async fn finish(mut self) -> Result<SaverStats> {
        let last = std::mem::take(&mut self.batch.lock().unwrap_or_else(|p| p.into_inner()).0);
        let sent = if last.is_empty() { Ok(()) } else { self.send(last) };
        drop(self.data_tx.take());
        let workers = std::mem::take(&mut self.workers);
        let shared = self.shared.clone();
        let worker_result = tokio::task::spawn_blocking(move || {
            let mut first_err = None;
            for w in workers {
                let r = w.join().unwrap_or_else(|_| Err(Error::backend("a pack worker panicked")));
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            for slot in [&shared.data_pack, &shared.meta_pack] {
                let pack = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(pack) = pack.filter(|p| !p.is_empty()) {
                    if let Err(e) = shared.send_pack(pack.finish()) {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(()), Err)
        })
        .await
        .map_err(|e| Error::backend(format!("worker join failed: {e}")))?;
        let worker_result = sent.and(worker_result);
        let uploader = self.uploader.take().expect("finish runs once");
        let (added_bytes, added_blobs) = self.added();
        if self.shared.watch.state.lock().unwrap_or_else(|p| p.into_inner()).stashed {
            // Only disk space of a temporary table: a failure here loses nothing.
            let _ = self.shared.catalog.forget_reused(self.shared.watch.stash);
        }
        // Closing the channel lets the uploader write its last index file and stop.
        drop(self);
        let upload_result = uploader.await.map_err(|e| Error::backend(format!("uploader failed: {e}")))?;
        let (pack_ids, index_files) = upload_result?;
        let packs = pack_ids.len() as u64;
        worker_result?;
        Ok(SaverStats { added_bytes, added_blobs, packs, index_files, pack_ids })
    }
}

impl Saver {
    /// Store a copy of a blob whatever the index says (a writer moving a blob it relies
    /// on out of a pack that a concurrent prune is about to delete; see `gc`).
    pub fn save_copy(&self, kind: BlobKind, id: BlobId, bytes: Vec<u8>) -> Result<()> {
        if !self.shared.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id) {
            return Ok(());
        }
        self.store_copy(kind, id, bytes)
    }

    /// Store a blob under the id it already has, without the session's dedup check: one
    /// [`Saver::claim`] returned true for (copying between repositories that share an id
    /// key), or one moved out of a pack being repacked (each is moved once).
    pub fn store_claimed(&self, kind: BlobKind, id: BlobId, bytes: Vec<u8>) -> Result<()> {
        match kind {
            BlobKind::Data => self.save_data(id, bytes),
            BlobKind::Meta => self.store_meta(id, bytes),
        }
    }

    /// Store a blob even if this session stored it already (its pack is being removed).
    fn store_copy(&self, kind: BlobKind, id: BlobId, bytes: Vec<u8>) -> Result<()> {
        super::reuse::count_copied(1);
        self.store_claimed(kind, id, bytes)
    }

    fn store_meta(&self, id: BlobId, bytes: Vec<u8>) -> Result<()> {
        let full = {
            let mut slot = self.shared.meta_pack.lock().unwrap_or_else(|p| p.into_inner());
            let pack = slot.get_or_insert_with(|| PackWriter::new(&self.shared.key, 1 << 20));
            let grew = pack.add(BlobKind::Meta, id, &bytes, self.shared.level);
            self.shared.account(grew);
            if pack.size() >= self.shared.pack_size {
                slot.take()
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.shared.send_pack(pack.finish())?;
        }
        Ok(())
    }
}

impl MetaSink for Saver {
    fn save_meta(&self, bytes: Vec<u8>) -> Result<BlobId> {
        let id = self.shared.key.blob_id(&bytes);
        if self.claim(&id)? {
            self.store_meta(id, bytes)?;
        }
        Ok(id)
    }
}
