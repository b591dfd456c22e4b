//! The saver's threads and tasks: the workers' loop (`seal_loop`: compress each blob, seal
//! it into the shared data pack, hand a full pack on), the upload loop (create-only writes with a bounded number in flight) and the
//! indexer that writes an index file once enough packs are stored, recording it in the
//! catalog before the blobs it lists are forgotten by the session.

use crate::backend::{Backend, WriteMode};
use crate::buffers::SpareBuffers;
use crate::catalog::Catalog;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::index::{IndexFile, IndexPack};
use crate::format::layout as keys;
use crate::format::object;
use crate::format::pack::{BlobKind, FinishedPack, PackWriter};
use crate::id::{BlobId, IndexId, PackId};
use crate::repo::gc::session::Session;
use crate::repo::saver::{Job, Shared, INDEX_FLUSH_BLOBS, INDEX_FLUSH_INTERVAL, INDEX_FLUSH_PACKS};
use std::collections::HashSet;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

pub(crate) fn seal_loop(shared: &Shared, rx: &Mutex<Receiver<Job>>) -> Result<()> {
    loop {
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(batch) = job else { break };
        // Compress the whole batch in parallel with the other workers, then seal it into
        // the shared pack under one lock acquisition.
        let encoded: Vec<(BlobId, Vec<u8>, usize)> = batch
            .into_iter()
            .map(|(id, data)| (id, crate::compress::encode(&data, shared.level), data.len()))
            .collect();
        let mut full = Vec::new();
        {
            let mut slot = shared.data_pack.lock().unwrap_or_else(|p| p.into_inner());
            for (id, plain, raw_len) in &encoded {
                let writer = slot.get_or_insert_with(|| {
                    let buffer = shared
                        .spare_buffers
                        .take()
                        .unwrap_or_else(|| crate::buffers::with_huge_capacity(shared.pack_capacity));
                    PackWriter::with_buffer(&shared.key, buffer)
                });
                shared.account(writer.add_encoded(BlobKind::Data, *id, plain, *raw_len));
                if writer.size() >= shared.pack_size {
                    full.extend(slot.take());
                }
            }
        }
        for writer in full {
            shared.send_pack(writer.finish())?;
        }
    }
    Ok(())
}

/// What the uploader wrote: the packs, and how many index files.
pub(crate) type Uploaded = (Vec<PackId>, u64);

/// Upload packs as they come, and write an index file for the durable ones every
/// [`INDEX_FLUSH_BLOBS`] blobs and at the end. Returns (packs, index files) written.
pub(crate) async fn upload_loop(
    indexer: Indexer,
    mut rx: tokio::sync::mpsc::Receiver<FinishedPack>,
    spare_buffers: Arc<SpareBuffers>,
) -> Result<Uploaded> {
    let backend = &indexer.backend;
    // Parallel writes to one local disk only add memory; object stores get `--connections`.
    let concurrency = if backend.is_local() { 1 } else { backend.connections() };
    let mut in_flight = tokio::task::JoinSet::new();
    let mut durable: Vec<IndexPack> = Vec::new();
    let (mut packs, mut index_files) = (Vec::new(), 0u64);
    let mut last_flush = std::time::Instant::now();
    let mut failure: Option<Error> = None;
    loop {
        tokio::select! {
            pack = rx.recv(), if in_flight.len() < concurrency && failure.is_none() => {
                let Some(pack) = pack else { break };
                let backend = backend.clone();
                let spare_buffers = spare_buffers.clone();
                in_flight.spawn(async move {
                    let FinishedPack { id, salt, bytes, entries } = pack;
                    let size = bytes.len() as u64;
                    let bytes = bytes::Bytes::from(bytes);
                    backend.put(&keys::pack(&id), bytes.clone(), WriteMode::CreateIdempotentUnsynced).await?;
                    spare_buffers.give_bytes(bytes);
                    Ok::<_, Error>(IndexPack { id, salt, size, blobs: entries })
                });
            }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                match done.map_err(|e| Error::backend(format!("upload task failed: {e}"))).and_then(|r| r) {
                    Ok(pack) => {
                        packs.push(pack.id);
                        durable.push(pack);
                        let blobs: usize = durable.iter().map(|p| p.blobs.len()).sum();
                        if blobs >= INDEX_FLUSH_BLOBS || durable.len() >= INDEX_FLUSH_PACKS || last_flush.elapsed() >= INDEX_FLUSH_INTERVAL {
                            indexer.write(std::mem::take(&mut durable)).await?;
                            index_files += 1;
                            last_flush = std::time::Instant::now();
                        }
                    }
                    Err(e) => { failure.get_or_insert(e); }
                }
            }
            else => break,
        }
        if failure.is_some() && in_flight.is_empty() {
            break;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        match done.map_err(|e| Error::backend(format!("upload task failed: {e}"))).and_then(|r| r) {
            Ok(pack) => {
                packs.push(pack.id);
                durable.push(pack);
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    // Index what did land even after a failure: the next backup reuses it.
    if !durable.is_empty() {
        indexer.write(durable).await?;
        index_files += 1;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok((packs, index_files)),
    }
}

/// Writes index files for durable packs and records them in the catalog.
pub(crate) struct Indexer {
    pub(super) backend: Backend,
    pub(super) key: MasterKey,
    /// `None`: the caller records the index files (see [`Saver::start_moving`]).
    pub(super) catalog: Option<Arc<Catalog>>,
    pub(super) seen: Arc<Mutex<HashSet<BlobId>>>,
    pub(super) session: Arc<Session>,
}

impl Indexer {
    pub(super) async fn write(&self, packs: Vec<IndexPack>) -> Result<()> {
        // The packs were written unsynced; they become durable here, before the index
        // file that lists them is written (and that file is synced before `put` returns).
        let pack_keys: Vec<String> = packs.iter().map(|p| keys::pack(&p.id)).collect();
        if let Err(e) = self.backend.sync(&pack_keys).await {
            // A pack of ours gone: a removal judged this session dead (a clean lost race),
            // or the storage lost it.
            self.session.check_alive().await?;
            return Err(e);
        }
        let file = IndexFile { packs };
        let id = IndexId::random();
        let sealed = object::seal(&self.key, object::INDEX_MAGIC, &file.encode());
        self.backend.put(&keys::index(&id), sealed.into(), WriteMode::Create).await?;
        // A session judged dead may have had these packs swept after the remover read the
        // index: take the file back rather than leave entries for missing packs.
        if let Err(e) = self.session.check_alive().await {
            let _ = self.backend.delete(&keys::index(&id)).await;
            return Err(e);
        }
        if let Some(catalog) = &self.catalog {
            catalog.add_index(&id, &file)?;
        }
        // Only now that the catalog answers for these blobs may the session forget them.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for blob in file.packs.iter().flat_map(|p| &p.blobs) {
            seen.remove(&blob.id);
        }
        Ok(())
    }
}
