//! Removing data while any number of writers add to the repository, without locks and
//! without comparing clocks (docs/format.md §17, which this module implements step by
//! step; `model/` checks the protocol exhaustively).
//!
//! The repository's GC state is a chain of write-once generation objects `gc/gen/<n>`;
//! the newest is current. Creating `gc/gen/<n+1>` with a create-only write is a
//! compare-and-swap on the state: of two removers, one wins and the other stops. Each
//! generation names the *pending* candidate sets: packs marked for removal, with the blobs
//! that would be lost with them ("doomed") and the snapshots seen when marked. Writers
//! hold sessions ([`session`]) that say when they started and which marks they have
//! acknowledged.
//!
//! A removal run ([`collect`]) is one function per step: `probe` (create-only writes
//! still honoured; the storage's time), fence (`advance`), `survey` (live writers;
//! the dead get tombstones), read and check, `sweep` (pending sets every live writer
//! acknowledged), repack (`repack`), `mark` (unreferenced packs older than every
//! live or writing session), consolidate, publish, and `sweep_again` (with nobody
//! writing, what was just marked). The writer's side — watching for marks, copying out
//! what it relies on, the checks around its commit — is in `writer` and the saver.
//!
//! Invariants: a pack is deleted only by a sweep, after its fence, of a set every live
//! writer acknowledged; every step writes before it deletes; a live writer's fresh packs
//! are never marked; an error that means another remover got there first is `Locked`
//! (exit 11), damage is `Corrupt` (exit 13) and stops the run before any delete.

use super::Repository;
use crate::backend::WriteMode;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout as keys;
use crate::id::PackId;
use serde::Serialize;
use sets::{walk_all, Sets};
use state::{advance, write_sealed, CANDIDATES};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use steps::{drop_from_index, list_packs, list_snapshots, mark, pending_sets, probe, survey, sweep, sweep_again};

mod commit;
mod repack;
pub mod session;
pub mod sets;
pub mod state;
mod steps;
pub mod writer;

pub use commit::{confirm, guard};
use repack::{consolidate, repack, repack_candidates};
pub use session::Session;
pub use state::{read_candidates, read_view, CandidateSet, GcView, GC_MAGIC};
pub use writer::{salvage, sets_since};

/// What a removal run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CollectReport {
    pub generation: u64,
    pub swept_sets: u64,
    pub deleted_packs: u64,
    pub deleted_bytes: u64,
    pub rescued_packs: u64,
    pub rewritten_index_files: u64,
    pub marked_packs: u64,
    pub marked_bytes: u64,
    /// Packs whose live blobs were copied into new packs (the old ones are marked by a
    /// later run, like any unreferenced pack).
    pub repacked_packs: u64,
    pub repacked_bytes: u64,
    /// Bytes the new packs added.
    pub repack_added_bytes: u64,
    pub index_files_before: u64,
    pub index_files_after: u64,
    /// Unreferenced packs left for the next run's mark (see [`CollectOptions::max_doomed`]).
    pub deferred_packs: u64,
    /// Staging files of interrupted pack writes deleted (local directories only).
    pub stale_staging_files: u64,
    /// Packs the index listed that are not stored (and that no snapshot needs): their
    /// entries were dropped.
    pub dropped_missing_packs: u64,
    /// Marked packs whose deletion waits until every live writer acknowledged the mark.
    pub waiting_packs: u64,
    pub waiting_bytes: u64,
    /// Unreferenced packs not marked because a live writer may have written them.
    pub protected_packs: u64,
    pub protected_bytes: u64,
    /// Writers whose sessions were live (they hold back what is waiting or protected).
    pub live_sessions: Vec<session::SessionView>,
    /// Writers judged dead this run (not renewed within `stale_after`).
    pub dead_sessions: Vec<session::SessionView>,
}

/// A staging file this much older than now belongs to no running write: a pack is written
/// in seconds.
pub const STALE_STAGING_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// One removal run: fence, sweep what earlier runs marked, mark what is unreferenced now,
/// and with no writer running sweep that at once. Never blocks writers; see the module
/// documentation. With `dry_run`, nothing is written or deleted but one probe object: the
/// report says what this run would delete and mark.
pub async fn collect(repo: &Repository, dry_run: bool) -> Result<CollectReport> {
    collect_with(repo, &CollectOptions { dry_run, ..Default::default() }).await
}

/// How a removal run goes beyond deleting unreferenced packs.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    pub dry_run: bool,
    /// Repack packs whose unused share (bytes no snapshot needs, or needed only from a
    /// copy elsewhere) exceeds this percentage; `None`: never repack.
    pub max_unused: Option<f64>,
    /// Repack at most this many bytes of old packs in one run.
    pub max_repack: Option<u64>,
    /// Rewrite all index files as a few large ones.
    pub consolidate: bool,
    /// Mark at most about this many blobs' packs in one run (`None`:
    /// [`MAX_DOOMED_PER_RUN`]); the rest wait for the next run. This bounds the doomed
    /// list every run and every writer holds in memory.
    pub max_doomed: Option<u64>,
    /// A writer session not renewed for this long is judged dead (`None`:
    /// [`session::DEFAULT_STALE_AFTER`]).
    pub stale_after: Option<std::time::Duration>,
    /// Packs stored this long before the oldest live session started are protected as
    /// well (`None`: [`session::PROTECTION_MARGIN`]); tests that run in milliseconds
    /// set it to zero.
    pub protection_margin: Option<std::time::Duration>,
}

/// Default for [`CollectOptions::max_doomed`]: about 100 MiB of doomed list at most
/// (32 bytes per blob in memory, 66 in the candidate set's JSON).
pub const MAX_DOOMED_PER_RUN: u64 = 1_000_000;

/// One removal run with options; see [`collect`].
///
/// Memory does not grow with the number of blobs: the referenced set and every blob's
/// home live in the catalog's SQLite tables ([`sets`]); RAM holds per-pack
/// figures and the candidate sets' doomed lists.
pub async fn collect_with(repo: &Repository, options: &CollectOptions) -> Result<CollectReport> {
    let backend = repo.backend();
    if !backend.conditional_writes() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} does not support create-only writes, which removal needs to stay safe next to other writers; see docs/storage.md",
                backend.location()
            ),
        ));
    }
    // The run's own session protects the packs its repack writes from other removers.
    let own = match options.dry_run || options.max_unused.is_none() {
        true => None,
        false => Some(Arc::new(repo.begin_session().await?)),
    };
    let result = removal_run(repo, options, own.as_ref()).await;
    if let Some(own) = &own {
        own.end().await;
    }
    lost_race(result)
}

/// A removal that finds an object gone that it had just listed lost a race with another
/// removal (one deleted it): exit 11, not a storage error.
fn lost_race<T>(result: Result<T>) -> Result<T> {
    result.map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::new(
            ErrorKind::Locked,
            "another removal run changed the repository while this one read it (an object it had just listed is gone); nothing was lost: run prune again",
        ),
        _ => e,
    })
}

async fn removal_run(repo: &Repository, options: &CollectOptions, own: Option<&Arc<Session>>) -> Result<CollectReport> {
    let dry_run = options.dry_run;
    let (backend, key, catalog) = (repo.backend(), repo.key(), repo.catalog());
    // Step 1: the storage still refuses to replace objects, and its time now.
    let now_ms = probe(backend).await?;
    // Step 2: fence.
    let start = read_view(backend, key).await?;
    let fence = match dry_run {
        true => start.clone(),
        false => advance(backend, key, &start, start.pending.clone()).await?,
    };
    let mut report = CollectReport::default();
    // Step 3: writers surveyed.
    let (mut surveyed, dead) = survey(repo, options, own.map(|s| s.id()), now_ms).await?;
    report.dead_sessions = dead;

    // Step 4: read and check. Everything read from here on is read after the fence and
    // the survey, in the order writers write in reverse: snapshots, then the index (into
    // the catalog), then the packs. Whatever a listed snapshot needs was indexed before
    // it was written, and every indexed pack was stored before its index file, so a blob
    // missing from what is read later is real damage, not a writer caught half-way.
    let snapshots = list_snapshots(repo).await.map_err(damage)?;
    crate::repo::refresh::refresh(catalog, backend, key).await?;
    refuse_damage(catalog)?;
    let mut stored = list_packs(backend).await?;
    surveyed.writing = session::present(backend, key, own.map(|s| s.id())).await?;
    report.live_sessions = surveyed.live.clone();
    for writer in &surveyed.writing {
        if !report.live_sessions.iter().any(|s| s.id == writer.id) {
            report.live_sessions.push(writer.clone());
        }
    }
    let mut stored_size: HashMap<PackId, u64> = stored.iter().map(|(id, (size, _))| (*id, *size)).collect();
    for pack in catalog.packs()? {
        match stored_size.get(&pack.id) {
            Some(size) if *size != pack.size => {
                return Err(damage(Error::corrupt(format!(
                    "pack {} has {size} bytes, the index says {}",
                    pack.id, pack.size
                ))))
            }
            _ => {}
        }
    }
    // One walk of every snapshot: what they reference, and whether all of it is there.
    // Damage stops the run before anything is deleted: what looks unreferenced may be
    // what a damaged snapshot or index no longer shows.
    let mut sets = Sets::new(catalog)?;
    walk_all(repo, &snapshots, &mut sets).await.map_err(damage)?;
    if let Some(blob) = sets.assign(&stored_size)? {
        return Err(damage(Error::corrupt(format!("blob {blob} that a snapshot needs is in no stored pack"))));
    }
    // Entries of packs that are gone and that nothing needs (left by a writer judged dead
    // that indexed packs already swept and died before it took its file back): dropped,
    // so the index agrees with the storage again. A pack is stored before any index entry
    // names it, so one missing from a listing made after the index was read is gone.
    let dangling: BTreeSet<PackId> =
        catalog.packs()?.into_iter().map(|p| p.id).filter(|p| !stored.contains_key(p)).collect();
    report.dropped_missing_packs = dangling.len() as u64;
    if !dangling.is_empty() && !dry_run {
        report.rewritten_index_files += drop_from_index(backend, key, catalog, &dangling).await?;
    }

    // Step 5: sweep the pending sets every live writer acknowledged.
    let (ready, waiting) = pending_sets(backend, key, &start, &surveyed).await?;
    let doomed_packs = sweep(repo, &ready, &snapshots, &mut stored, dry_run, &mut report).await?;
    stored_size.retain(|id, _| stored.contains_key(id));
    for (_, set) in &waiting {
        for pack in set.packs.iter().filter(|p| stored.contains_key(p)) {
            report.waiting_packs += 1;
            report.waiting_bytes += stored_size[pack];
        }
    }
    report.stale_staging_files = backend.remove_stale_staging(keys::DATA, STALE_STAGING_AGE, dry_run).await?;

    // Step 6: repack, against the state after the sweep (in a dry run: as it would be,
    // the swept packs counted as gone), and the snapshots listed after the fence.
    let index_changed = !dry_run && crate::repo::refresh::refresh(catalog, backend, key).await?;
    if index_changed || !doomed_packs.is_empty() {
        sets.assign(&stored_size)?;
    }
    if let Some(max_unused) = options.max_unused {
        let chosen = repack_candidates(&sets, max_unused, options.max_repack);
        report.repacked_packs = chosen.len() as u64;
        report.repacked_bytes = chosen.iter().map(|p| stored_size.get(&p.id).copied().unwrap_or(0)).sum();
        if let (false, false, Some(own)) = (dry_run, chosen.is_empty(), own) {
            let rows: HashSet<i64> = chosen.iter().filter_map(|p| sets.row_of(&p.id)).collect();
            sets.keep_homed(&rows)?;
            report.repack_added_bytes = repack(repo, own, &chosen, &sets).await?;
            crate::repo::refresh::refresh(catalog, backend, key).await?;
            stored = list_packs(backend).await?;
            stored_size = stored.iter().map(|(id, (size, _))| (*id, *size)).collect();
            sets.assign(&stored_size)?;
        }
    }

    // Step 7: mark.
    let waiting_packs: HashSet<PackId> = waiting.iter().flat_map(|(_, s)| s.packs.iter().copied()).collect();
    let marked = mark(repo, &mut sets, &stored, &doomed_packs, &waiting_packs, &surveyed, options, &mut report).await?;
    drop(sets);
    report.index_files_before = catalog.index_file_count()?;
    report.index_files_after = report.index_files_before;
    let generation = fence.generation + 1;
    if dry_run {
        report.generation = start.generation;
        if report.live_sessions.is_empty() {
            // A real run would sweep these at once (step 10).
            report.deleted_packs += report.marked_packs;
            report.deleted_bytes += report.marked_bytes;
        }
        return Ok(report);
    }
    // Step 8: consolidate.
    if options.consolidate {
        report.index_files_after = consolidate(backend, key, catalog).await?;
    }
    // Step 9: publish the new set with those still waiting.
    let mut pending: Vec<String> = waiting.iter().map(|(name, _)| name.clone()).collect();
    let new_set = match marked {
        None => None,
        Some(mut set) => {
            let name = format!("{CANDIDATES}{generation:020}-{}", hex::encode(crate::crypto::random_bytes::<8>()));
            set.generation = generation;
            set.snapshots = snapshots.iter().map(|(id, _)| *id).collect();
            write_sealed(backend, key, &name, &set, WriteMode::Create).await?;
            pending.push(name.clone());
            Some(name)
        }
    };
    let published = match advance(backend, key, &fence, pending).await {
        Ok(view) => view,
        Err(e) => {
            if let Some(name) = new_set {
                let _ = backend.delete(&name).await;
            }
            return Err(e);
        }
    };
    report.generation = published.generation;
    // Step 10: with no writer running, sweep what was just marked: one prune frees the space.
    if new_set.is_some() && report.live_sessions.is_empty() {
        sweep_again(repo, options, own, &published, now_ms, &mut report).await?;
    }
    Ok(report)
}

/// An index file the catalog could not read hides which packs are in use.
pub(crate) fn refuse_damage(catalog: &crate::catalog::Catalog) -> Result<()> {
    match catalog.damaged().into_iter().next() {
        None => Ok(()),
        Some((object, why)) => Err(damage(Error::corrupt(format!("{object} cannot be read ({why})")))),
    }
}

/// Damage found by a removal run: exit 13, and nothing deleted.
pub(crate) fn damage(e: Error) -> Error {
    if e.kind() == ErrorKind::Backend || e.kind() == ErrorKind::Io {
        return e;
    }
    Error::corrupt(format!("{}; prune deletes nothing until `cairn check` passes", e.message()))
}
