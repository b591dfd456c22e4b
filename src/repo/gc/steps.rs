//! The steps of a removal run (docs/format.md §17.2), one function each, in the order
//! `removal_run` calls them: `probe` (create-only writes honoured; the storage's time),
//! `survey` (live writers; the dead get tombstones), `pending_sets`, `sweep`, `mark`,
//! `sweep_again`, and the listing and index helpers they share. Each writes before it
//! deletes; none deletes a pack that a live writer has not acknowledged the mark of.

use super::session;
use super::sets::{NeededSink, Sets};
use super::state::{advance, read_candidates, CandidateSet, GcView};
use super::Session;
use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use crate::format::index::IndexFile;
use crate::format::layout as keys;
use crate::format::object;
use crate::format::snapshot::SnapshotFile;
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::repo::gc::{damage, refuse_damage, CollectOptions, CollectReport, MAX_DOOMED_PER_RUN};
use crate::repo::walk::referenced_blobs;
use crate::repo::Repository;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What a removal run knows about the storage at its fence.
pub(super) struct Surveyed {
    pub(super) live: Vec<session::SessionView>,
    /// Sessions listed again after the packs were listed: a writer whose fresh packs that
    /// listing shows began its session before it stored them, so it is here unless it
    /// ended (and then its snapshot, written before, rescues what it needs).
    pub(super) writing: Vec<session::SessionView>,
    pub(super) margin: std::time::Duration,
}

impl Surveyed {
    /// Whether every live writer acknowledged the set published at `generation`.
    pub(super) fn acknowledged(&self, generation: u64) -> bool {
        self.live.iter().all(|s| s.acked.is_some_and(|a| a >= generation))
    }

    /// Packs stored at or after this time (storage clock) may belong to a live writer.
    pub(super) fn protected_from(&self) -> Option<i64> {
        let oldest = self.live.iter().chain(&self.writing).map(|s| s.started_ms).min()?;
        Some(oldest - self.margin.as_millis() as i64)
    }
}

/// Step 1: prove that create-only writes are still honoured (the fence depends on it) and
/// read the storage's clock from the probe object.
pub(crate) async fn probe(backend: &Backend) -> Result<i64> {
    let key = format!("{}{}", crate::format::layout::GC_PROBES, hex::encode(crate::crypto::random_bytes::<8>()));
    backend.probe_create_only(&key).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} no longer refuses to replace objects written create-only (a probe object written twice was replaced), and removal is not safe without that; nothing was deleted: see docs/storage.md",
                backend.location()
            ),
        )
    })
}

/// Step 3: the writers alive now; the dead get tombstones.
pub(crate) async fn survey(
    repo: &Repository,
    options: &CollectOptions,
    own: Option<&str>,
    now_ms: i64,
) -> Result<(Surveyed, Vec<session::SessionView>)> {
    let stale_after = options.stale_after.unwrap_or(session::DEFAULT_STALE_AFTER);
    let (live, dead) = session::survey(repo.backend(), repo.key(), now_ms, stale_after, own, options.dry_run).await?;
    let margin = options.protection_margin.unwrap_or(session::PROTECTION_MARGIN);
    Ok((Surveyed { live, writing: Vec::new(), margin }, dead))
}

/// The pending sets of `start` whose sweep may go ahead (every live writer acknowledged
/// them), and those that wait.
pub(crate) async fn pending_sets(
    backend: &Backend,
    key: &MasterKey,
    start: &GcView,
    surveyed: &Surveyed,
) -> Result<(Vec<(String, CandidateSet)>, Vec<(String, CandidateSet)>)> {
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for name in &start.pending {
        let set = read_candidates(backend, key, name).await?;
        match surveyed.acknowledged(set.generation) {
            true => ready.push((name.clone(), set)),
            false => waiting.push((name.clone(), set)),
        }
    }
    Ok((ready, waiting))
}

/// Sweep `sets`: every snapshot the mark did not see rescues the packs holding doomed
/// blobs it needs; the index is rewritten without the other packs, which are then
/// deleted. Returns the packs deleted (in a dry run: that would be).
pub(crate) async fn sweep(
    repo: &Repository,
    sets: &[(String, CandidateSet)],
    snapshots: &[(SnapshotId, SnapshotFile)],
    stored: &mut HashMap<PackId, (u64, i64)>,
    dry_run: bool,
    report: &mut CollectReport,
) -> Result<BTreeSet<PackId>> {
    let (backend, key, catalog) = (repo.backend(), repo.key(), repo.catalog());
    let mut doomed_packs: BTreeSet<PackId> = BTreeSet::new();
    for (_, set) in sets {
        let seen: HashSet<SnapshotId> = set.snapshots.iter().copied().collect();
        let doomed: HashSet<BlobId> = set.doomed.iter().copied().collect();
        // Doomed blobs that snapshots the mark did not see need.
        let mut sink = NeededSink::new(catalog, &doomed)?;
        for (id, snapshot) in snapshots {
            if !seen.contains(id) {
                referenced_blobs(repo, snapshot, &mut sink).await?;
            }
        }
        // A needed blob copied since the mark into a pack outside the set needs no rescue;
        // the others rescue every marked pack that holds them.
        let marked: HashSet<PackId> = set.packs.iter().copied().collect();
        let mut rescue: HashSet<PackId> = HashSet::new();
        let mut needed = HashSet::new();
        for blob in sink.found {
            let copies = catalog.copies(&blob)?;
            if copies.iter().all(|p| marked.contains(p)) {
                rescue.extend(copies);
                needed.insert(blob);
            }
        }
        for pack in &set.packs {
            if rescue.contains(pack) {
                report.rescued_packs += 1;
            } else {
                doomed_packs.insert(*pack);
            }
        }
        // Unindexed packs cannot be checked blob by blob here: their doomed blobs came
        // from their headers; rescue them if anything new needs one of those blobs.
        if !needed.is_empty() {
            for pack in &set.packs {
                if !catalog.has_pack(pack)? && pack_holds_any(repo, pack, &needed).await? && doomed_packs.remove(pack) {
                    report.rescued_packs += 1;
                }
            }
        }
        report.swept_sets += 1;
    }
    if !doomed_packs.is_empty() && !dry_run {
        report.rewritten_index_files += drop_from_index(backend, key, catalog, &doomed_packs).await?;
    }
    for pack in &doomed_packs {
        if let Some((size, _)) = stored.remove(pack) {
            if !dry_run {
                backend.delete(&keys::pack(pack)).await?;
            }
            report.deleted_packs += 1;
            report.deleted_bytes += size;
        }
    }
    Ok(doomed_packs)
}

/// Step 7: the packs to mark now: unreferenced (home to no referenced blob, or in no
/// index), not already waiting in a pending set, and older than every live writer.
/// Returns the candidate set to publish (its generation and snapshots are filled in by
/// the caller), or `None` if nothing is marked.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn mark(
    repo: &Repository,
    sets: &mut Sets<'_>,
    stored: &HashMap<PackId, (u64, i64)>,
    swept: &BTreeSet<PackId>,
    waiting: &HashSet<PackId>,
    surveyed: &Surveyed,
    options: &CollectOptions,
    report: &mut CollectReport,
) -> Result<Option<CandidateSet>> {
    let protected_from = surveyed.protected_from();
    let mut candidates: BTreeSet<PackId> = BTreeSet::new();
    let mut kept: HashSet<PackId> = HashSet::new();
    for pack in sets.packs.values() {
        if pack.is_home() || !pack.stored {
            kept.insert(pack.id);
        } else {
            candidates.insert(pack.id);
        }
    }
    for pack in stored.keys() {
        if sets.row_of(pack).is_none() && !swept.contains(pack) {
            candidates.insert(*pack);
        }
    }
    candidates.retain(|p| !waiting.contains(p));
    // A live writer created its session before it stored anything: what is newer than
    // the oldest live session may be its fresh packs (not yet indexed, or indexed and not
    // yet referenced by its snapshot), and is kept.
    if let Some(from) = protected_from {
        candidates.retain(|p| {
            let (size, modified) = stored.get(p).copied().unwrap_or((0, i64::MAX));
            if modified < from {
                return true;
            }
            report.protected_packs += 1;
            report.protected_bytes += size;
            kept.insert(*p);
            false
        });
    }
    let max_doomed = options.max_doomed.unwrap_or(MAX_DOOMED_PER_RUN);
    let mut marked_blobs = 0u64;
    // Doomed: blobs of marked packs that no kept pack also holds.
    let mut doomed: Vec<BlobId> = Vec::new();
    let mut marked: Vec<PackId> = Vec::new();
    let mut marked_rows = HashSet::new();
    for pack in &candidates {
        if let Some(row) = sets.row_of(pack) {
            let blobs = sets.packs[&row].blobs;
            if !marked.is_empty() && marked_blobs + blobs > max_doomed {
                // Past the bound: still unreferenced, so the next run marks it.
                report.deferred_packs += 1;
                continue;
            }
            marked_blobs += blobs;
            marked_rows.insert(row);
        } else {
            // Its header says which blobs it holds, so a writer that needs one is protected.
            match pack_blob_ids(repo, pack).await {
                Ok(ids) => {
                    marked_blobs += ids.len() as u64;
                    doomed.extend(sets.doomed_of(ids, &kept)?)
                }
                // Unreadable: not ours to judge here; check reports it.
                Err(_) => continue,
            }
        }
        marked.push(*pack);
        report.marked_bytes += stored.get(pack).map_or(0, |(size, _)| *size);
    }
    let kept_rows: HashSet<i64> = sets.packs.iter().filter(|(_, p)| kept.contains(&p.id)).map(|(r, _)| *r).collect();
    doomed.extend(sets.doomed(&marked_rows, &kept_rows)?);
    doomed.sort_unstable();
    doomed.dedup();
    report.marked_packs = marked.len() as u64;
    if marked.is_empty() {
        return Ok(None);
    }
    Ok(Some(CandidateSet { generation: 0, packs: marked, doomed, snapshots: Vec::new(), watch: Vec::new() }))
}

/// Step 10: a second, short round right after publishing, when the survey found no live
/// writer: fence again; if a writer has started since, stop (its session has not
/// acknowledged the new set; the next run sweeps it); else list the snapshots again and
/// sweep every pending set, exactly as step 5 would in the next run.
pub(crate) async fn sweep_again(
    repo: &Repository,
    options: &CollectOptions,
    own: Option<&Arc<Session>>,
    published: &GcView,
    now_ms: i64,
    report: &mut CollectReport,
) -> Result<()> {
    let (backend, key, catalog) = (repo.backend(), repo.key(), repo.catalog());
    let fence = advance(backend, key, published, published.pending.clone()).await?;
    // The probe's time, earlier than now: ages come out shorter, never longer.
    let (surveyed, dead) = survey(repo, options, own.map(|s| s.id()), now_ms).await?;
    report.dead_sessions.extend(dead);
    let snapshots = list_snapshots(repo).await.map_err(damage)?;
    crate::repo::refresh::refresh(catalog, backend, key).await?;
    refuse_damage(catalog)?;
    let mut stored = list_packs(backend).await?;
    let (ready, waiting) = pending_sets(backend, key, &fence, &surveyed).await?;
    if !waiting.is_empty() {
        // A writer started meanwhile: leave it all for the next run.
        report.waiting_packs += report.marked_packs;
        report.waiting_bytes += report.marked_bytes;
        report.live_sessions = surveyed.live;
        report.generation = fence.generation;
        return Ok(());
    }
    sweep(repo, &ready, &snapshots, &mut stored, false, report).await?;
    let view = advance(backend, key, &fence, Vec::new()).await?;
    report.generation = view.generation;
    Ok(())
}

/// Every stored pack: its size, and when the storage wrote it (ms since the epoch).
pub(crate) async fn list_packs(backend: &Backend) -> Result<HashMap<PackId, (u64, i64)>> {
    let stored = backend.list(keys::DATA).await?;
    Ok(stored
        .iter()
        .filter_map(|o| Some((PackId::from_hex(keys::name(&o.key)).ok()?, (o.size, o.modified_ms))))
        .collect())
}

async fn pack_holds_any(repo: &Repository, pack: &PackId, blobs: &HashSet<BlobId>) -> Result<bool> {
    if repo.backend().head(&keys::pack(pack)).await?.is_none() {
        return Ok(false);
    }
    Ok(pack_blob_ids(repo, pack).await?.iter().any(|b| blobs.contains(b)))
}

/// The blob ids a pack's own header lists (unindexed packs are rare leftovers: read whole).
async fn pack_blob_ids(repo: &Repository, pack: &PackId) -> Result<Vec<BlobId>> {
    let bytes = repo.backend().get(&keys::pack(pack)).await?;
    let (_, entries) = crate::format::pack::read_header(repo.key(), &pack.to_hex(), &bytes)?;
    Ok(entries.into_iter().map(|e| e.id).collect())
}

pub(crate) async fn list_snapshots(repo: &Repository) -> Result<Vec<(SnapshotId, SnapshotFile)>> {
    let mut out = Vec::new();
    for object in repo.backend().list(keys::SNAPSHOTS).await? {
        let Ok(id) = SnapshotId::from_hex(keys::name(&object.key)) else { continue };
        match crate::repo::read_snapshot(repo.backend(), repo.key(), &id).await {
            Ok(snapshot) => out.push((id, snapshot)),
            // Forgotten between the listing and the read.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Rewrite every index file that lists a pack in `drop`, without those packs: the new
/// file first, then the old one goes. Returns how many files were rewritten.
pub(crate) async fn drop_from_index(
    backend: &Backend,
    key: &MasterKey,
    catalog: &crate::catalog::Catalog,
    drop: &BTreeSet<PackId>,
) -> Result<u64> {
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for id in catalog.files_listing(drop)? {
        let file = crate::repo::read_index(backend, key, &id).await?;
        let kept = IndexFile { packs: file.packs.into_iter().filter(|p| !drop.contains(&p.id)).collect() };
        if !kept.packs.is_empty() {
            let new = IndexId::random();
            let sealed = object::seal(key, object::INDEX_MAGIC, &kept.encode());
            backend.put(&keys::index(&new), sealed.into(), WriteMode::Create).await?;
            added.push((new, kept.packs.iter().map(|p| p.id).collect()));
        }
        backend.delete(&keys::index(&id)).await?;
        removed.push(id);
    }
    catalog.rewrote_index(&removed, &added, drop)?;
    Ok(removed.len() as u64)
}
