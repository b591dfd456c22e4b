//! Repacking wasteful packs and consolidating the index: steps 6 and 8 of a removal run
//! (docs/format.md §17.2). Both write before they delete, so an interrupted run leaves
//! every blob and every index entry in place.

use super::session::Session;
use super::sets::{PackStat, Sets};
use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::index::IndexFile;
use crate::format::layout as keys;
use crate::format::object;
use crate::id::{IndexId, PackId};
use crate::repo::Repository;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// Packs worth repacking: home to something, with more than `max_unused` percent of
/// their bytes unused; most wasteful first, up to `max_repack` bytes of packs.
pub(super) fn repack_candidates(sets: &Sets<'_>, max_unused: f64, max_repack: Option<u64>) -> Vec<PackStat> {
    let mut wasteful: Vec<(f64, &PackStat)> = sets
        .packs
        .values()
        .filter(|p| p.stored && p.is_home())
        .filter_map(|p| {
            let unused = 100.0 * (1.0 - p.home as f64 / p.total.max(1) as f64);
            (unused > max_unused).then_some((unused, p))
        })
        .collect();
    wasteful.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.id.cmp(&b.1.id)));
    let mut budget = max_repack.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for (_, pack) in wasteful {
        if pack.size > budget {
            continue;
        }
        budget -= pack.size;
        out.push(pack.clone());
    }
    out
}

/// Copy the live blobs of `packs` into new packs (indexed when this returns, but not yet
/// in the catalog: refresh it). Returns the bytes the new packs added.
pub(super) async fn repack(
    repo: &Repository,
    session: &Arc<Session>,
    packs: &[PackStat],
    sets: &Sets<'_>,
) -> Result<u64> {
    let saver = crate::repo::saver::Saver::start_moving(repo, session, &tokio::runtime::Handle::current());
    let copied = async {
        for pack in packs {
            let Some(row) = sets.row_of(&pack.id) else { continue };
            let homed = sets.homed(row)?;
            let bytes = repo.backend().get(&keys::pack(&pack.id)).await?;
            let pack_key = repo.key().pack_key(&pack.salt);
            for entry in &homed {
                let end = entry.end() as usize;
                let sealed = bytes.get(entry.offset as usize..end).ok_or_else(|| {
                    Error::corrupt(format!("pack {} is shorter than its index says (blob {})", pack.id, entry.id))
                })?;
                let data = crate::format::pack::open_blob(repo.key(), &pack_key, entry, sealed)
                    .map_err(|e| e.context(format!("repacking pack {}", pack.id)))?;
                tokio::task::block_in_place(|| saver.store_claimed(entry.kind, entry.id, data))?;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let finished = saver.finish().await;
    copied?;
    Ok(finished?.added_bytes)
}

/// Most blobs one consolidated index file lists (about 10 MiB of entries).
const BLOBS_PER_INDEX_FILE: usize = 200_000;

/// Rewrite the index files the catalog knows as few files as possible, reading them one
/// at a time: the new files first, then the old ones go, so every pack stays listed
/// throughout. Index files written meanwhile by backups are left alone. Returns the
/// number of index files afterwards.
pub(super) async fn consolidate(backend: &Backend, key: &MasterKey, catalog: &crate::catalog::Catalog) -> Result<u64> {
    let old = catalog.index_files()?;
    let fewest = (catalog.entry_count()? as usize).div_ceil(BLOBS_PER_INDEX_FILE).max(1);
    if old.len() <= fewest {
        return Ok(old.len() as u64);
    }
    let mut added: Vec<(IndexId, Vec<PackId>)> = Vec::new();
    let mut current = IndexFile::default();
    let mut blobs = 0;
    let mut seen = HashSet::new();
    let write = |file: IndexFile| {
        let id = IndexId::random();
        let packs = file.packs.iter().map(|p| p.id).collect();
        let sealed = object::seal(key, object::INDEX_MAGIC, &file.encode());
        (id, packs, sealed)
    };
    for id in &old {
        let file = crate::repo::read_index(backend, key, id).await?;
        for pack in file.packs {
            if !seen.insert(pack.id) {
                continue;
            }
            if blobs + pack.blobs.len() > BLOBS_PER_INDEX_FILE && !current.packs.is_empty() {
                let (id, packs, sealed) = write(std::mem::take(&mut current));
                backend.put(&keys::index(&id), sealed.into(), WriteMode::Create).await?;
                added.push((id, packs));
                blobs = 0;
            }
            blobs += pack.blobs.len();
            current.packs.push(pack);
        }
    }
    if !current.packs.is_empty() {
        let (id, packs, sealed) = write(current);
        backend.put(&keys::index(&id), sealed.into(), WriteMode::Create).await?;
        added.push((id, packs));
    }
    for id in &old {
        backend.delete(&keys::index(id)).await?;
    }
    catalog.rewrote_index(&old, &added, &BTreeSet::new())?;
    catalog.index_file_count()
}
