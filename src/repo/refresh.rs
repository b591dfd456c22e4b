//! Bringing the catalog up to date with the repository's `index/` and `snapshots/`.
//!
//! The catalog is a cache (src/catalog.rs); this is the only code that fills it from
//! storage. Index files new since the last refresh are read (four at a time), staged and
//! merged in key order; if an index file the catalog knows is gone (a removal elsewhere
//! rewrote it) the index is read again from scratch. A damaged index file or snapshot is
//! left out and noted ([`Catalog::damaged`]), so one bad object hides no other one;
//! removal refuses to run while any is noted.

use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::crypto::MasterKey;
use crate::error::{ErrorKind, Result};
use crate::format::layout as keys;
use crate::id::{IndexId, SnapshotId};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashSet;

/// Bring the catalog up to date; returns whether the index changed.
pub async fn refresh(catalog: &Catalog, backend: &Backend, key: &MasterKey) -> Result<bool> {
    catalog.clear_damaged();
    let changed = refresh_index(catalog, backend, key).await?;
    refresh_snapshots(catalog, backend, key).await?;
    Ok(changed)
}

/// A removal may rewrite index files while we read them: an index file that vanished
/// between the listing and the read means the listing is stale, so list again.
async fn refresh_index(catalog: &Catalog, backend: &Backend, key: &MasterKey) -> Result<bool> {
    let mut attempt = 0;
    loop {
        match refresh_index_once(catalog, backend, key).await {
            Err(e) if e.kind() == ErrorKind::NotFound && attempt < 5 => attempt += 1,
            other => return other,
        }
    }
}

async fn refresh_index_once(catalog: &Catalog, backend: &Backend, key: &MasterKey) -> Result<bool> {
    let listed = listed_ids(backend, keys::INDEX, IndexId::from_hex).await?;
    let mut known = catalog.known_index_files()?;
    if !known.is_subset(&listed) {
        catalog.clear_index()?;
        known.clear();
    }
    catalog.discard_partial_loads()?;
    let missing: Vec<IndexId> = listed.difference(&known).copied().collect();
    let mut loaded = futures::stream::iter(missing)
        .map(|id| async move {
            match super::read_index(backend, key, &id).await {
                Ok(file) => Ok(Some((id, file))),
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    catalog.note_damaged(keys::index(&id), e.message());
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(4);
    // Staged file by file, then merged into the blob table in key order in one go.
    let mut staged = Vec::new();
    while let Some(found) = loaded.try_next().await? {
        let Some((id, file)) = found else { continue };
        catalog.stage_index(&id, &file)?;
        staged.push(id);
    }
    catalog.merge_staged(&staged)?;
    Ok(!staged.is_empty())
}

async fn refresh_snapshots(catalog: &Catalog, backend: &Backend, key: &MasterKey) -> Result<()> {
    let listed = listed_ids(backend, keys::SNAPSHOTS, SnapshotId::from_hex).await?;
    let known = catalog.known_snapshots()?;
    for gone in known.difference(&listed) {
        catalog.remove_snapshot(gone)?;
    }
    let missing: Vec<SnapshotId> = listed.difference(&known).copied().collect();
    let mut loaded = futures::stream::iter(missing)
        .map(|id| async move {
            match super::read_snapshot(backend, key, &id).await {
                Ok(snapshot) => Ok(Some((id, snapshot))),
                // Forgotten between the listing and the read.
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    catalog.note_damaged(keys::snapshot(&id), e.message());
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(8);
    while let Some(found) = loaded.try_next().await? {
        if let Some((id, snapshot)) = found {
            catalog.add_snapshot(&id, &snapshot)?;
        }
    }
    Ok(())
}

/// The ids of the objects listed under `prefix` (names that are not ids are ignored).
async fn listed_ids<T: Eq + std::hash::Hash>(
    backend: &Backend,
    prefix: &str,
    parse: fn(&str) -> Result<T>,
) -> Result<HashSet<T>> {
    Ok(backend.list(prefix).await?.iter().filter_map(|o| parse(keys::name(&o.key)).ok()).collect())
}
