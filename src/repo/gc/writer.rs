//! The writer's side of the removal protocol (docs/format.md §17.3): the sets a writer
//! must consider, copying out what it relies on, and the checks around its snapshot
//! write. The removal runs themselves are in `mod.rs`; sessions in `session.rs`.

use super::{generation_of, read_candidates, read_view, referenced_blobs, CandidateSet, GcView, Session, CANDIDATES};
use crate::backend::{keys, Backend};
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{BlobId, PackId};
use crate::repo::Repository;
use crate::snapshot::SnapshotFile;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// Candidate sets a writer that started at `start` must consider at generation `now`:
/// every set marked after it started, and those pending when it started.
pub async fn sets_since(
    backend: &Backend,
    key: &MasterKey,
    start: &GcView,
    upto: u64,
) -> Result<Vec<(String, CandidateSet)>> {
    let mut names: BTreeSet<String> = start.pending.iter().cloned().collect();
    for object in backend.list(CANDIDATES).await? {
        if generation_of(&object.key).is_some_and(|g| g > start.generation && g <= upto) {
            names.insert(object.key.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        match read_candidates(backend, key, &name).await {
            Ok(set) => out.push((name, set)),
            // A set whose publication lost the race is deleted by its remover.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn gone(id: &BlobId, e: &Error) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!("a concurrent prune removed blob {id} that this backup relies on ({e}); nothing was committed: run the backup again"),
    )
}

/// Read the blobs a writer must keep out of packs that are about to be removed: the
/// doomed blobs in its own packs (read from the pack) and the doomed blobs it reused
/// (read where the catalog places them). Fails with `Locked` if one is already gone.
pub async fn salvage(
    backend: &Backend,
    key: &MasterKey,
    catalog: &crate::catalog::Catalog,
    doomed: &HashSet<BlobId>,
    reused: &[BlobId],
    own_packs: &[PackId],
    marked: &HashSet<PackId>,
) -> Result<Vec<(crate::pack::BlobKind, BlobId, Vec<u8>)>> {
    let mut out = Vec::new();
    for pack in own_packs {
        let bytes = backend.get(&keys::pack(pack)).await;
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::Locked,
                    format!("a concurrent prune removed pack {pack} this backup wrote; nothing was committed: run the backup again"),
                ))
            }
            Err(e) => return Err(e),
        };
        let (salt, entries) = crate::pack::read_header(key, &pack.to_hex(), &bytes)?;
        let pack_key = key.pack_key(&salt);
        for entry in entries.iter().filter(|e| doomed.contains(&e.id)) {
            let sealed = &bytes[entry.offset as usize..entry.end() as usize];
            out.push((entry.kind, entry.id, crate::pack::open_blob(key, &pack_key, entry, sealed)?));
        }
    }
    for id in reused {
        let locations = catalog.locations(id)?;
        // A copy outside this set and every set seen before is safe; otherwise read one
        // while it still exists.
        if locations.is_empty() || locations.iter().any(|l| !marked.contains(&l.pack) && !catalog.is_excluded(&l.pack))
        {
            continue;
        }
        let mut last_error = None;
        for location in &locations {
            match backend.get_range(&keys::pack(&location.pack), location.entry.offset..location.entry.end()).await {
                Ok(sealed) => {
                    out.push((location.entry.kind, *id, crate::repo::load::open_located(key, location, &sealed)?));
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(gone(id, &e));
        }
    }
    Ok(out)
}

/// Make sure every blob `snapshot` needs survives removals that started since `session`
/// began; called before the snapshot is written. Returns the generation it checked
/// against, which the session then acknowledges.
pub async fn guard(repo: &Repository, session: &Arc<Session>, snapshot: &SnapshotFile) -> Result<u64> {
    session.check_alive().await?;
    let start = session.start();
    let now = read_view(repo.backend(), repo.key()).await?;
    if now.generation != start.generation {
        protect(repo, session, snapshot, &now).await?;
    }
    session.acknowledge(now.generation).await?;
    Ok(now.generation)
}

/// After the snapshot is written: if the session was judged dead meanwhile, or removals
/// advanced two generations or more since [`guard`] and one may have swept without
/// seeing the snapshot, check again. An error means the caller must delete the snapshot.
pub async fn confirm(repo: &Repository, session: &Arc<Session>, snapshot: &SnapshotFile, guarded: u64) -> Result<()> {
    session.check_alive().await?;
    let now = read_view(repo.backend(), repo.key()).await?;
    if now.generation <= guarded + 1 {
        return Ok(());
    }
    protect(repo, session, snapshot, &now).await
}

async fn protect(repo: &Repository, session: &Arc<Session>, snapshot: &SnapshotFile, now: &GcView) -> Result<()> {
    let sets = sets_since(repo.backend(), repo.key(), session.start(), now.generation).await?;
    if sets.is_empty() {
        return Ok(());
    }
    let mut needed = HashSet::new();
    referenced_blobs(repo, snapshot, &mut needed).await?;
    // At risk: needed, every copy doomed when marked, and no newer copy known here.
    let marked: HashSet<PackId> = sets.iter().flat_map(|(_, s)| s.packs.iter().copied()).collect();
    let mut at_risk: Vec<BlobId> = Vec::new();
    for (_, set) in &sets {
        for id in set.doomed.iter().filter(|b| needed.contains(b)) {
            if repo.catalog().copies(id)?.iter().all(|p| marked.contains(p)) {
                at_risk.push(*id);
            }
        }
    }
    if at_risk.is_empty() {
        return Ok(());
    }
    at_risk.sort();
    at_risk.dedup();
    // Copy each blob at risk into a new pack while its old one still exists.
    let mut copies = Vec::with_capacity(at_risk.len());
    for id in &at_risk {
        let location = repo.locate(id)?;
        let bytes = repo.load_blob(id).await.map_err(|e| gone(id, &e))?;
        copies.push((location.entry.kind, *id, bytes));
    }
    let saver = crate::repo::saver::Saver::start(repo, session, &tokio::runtime::Handle::current());
    let saver = tokio::task::spawn_blocking(move || {
        for (kind, id, bytes) in copies {
            saver.save_copy(kind, id, bytes)?;
        }
        Ok::<_, Error>(saver)
    })
    .await
    .map_err(|e| Error::backend(format!("copy task failed: {e}")))??;
    saver.finish().await?;
    Ok(())
}
