//! The checks around a writer's snapshot commit (docs/format.md §17.3): before the
//! snapshot is written, every blob it needs is made safe from removals that started since
//! the session began ([`guard`]); after, the same is confirmed if removal moved on
//! meanwhile ([`confirm`]). A blob at risk is copied into a new pack while its old one
//! still exists.

use super::session::Session;
use super::state::{read_view, GcView};
use super::writer::{gone, sets_since};
use crate::error::{Error, Result};
use crate::format::snapshot::SnapshotFile;
use crate::id::{BlobId, PackId};
use crate::repo::saver::Saver;
use crate::repo::walk::referenced_blobs;
use crate::repo::Repository;
use std::collections::HashSet;
use std::sync::Arc;

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
    let saver = Saver::start(repo, session, &tokio::runtime::Handle::current());
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
