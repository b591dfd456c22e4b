//! The writer's side of the removal protocol (docs/format.md §17.3) that the saver uses
//! while it writes: the candidate sets a writer must consider, and reading out what it
//! relies on from packs about to be removed. The checks around the snapshot commit are in
//! `commit.rs`, the removal runs in `mod.rs`, sessions in `session.rs`.

use super::state::{generation_of, read_candidates, CandidateSet, GcView, CANDIDATES};
use crate::backend::Backend;
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout as keys;
use crate::id::{BlobId, PackId};
use std::collections::{BTreeSet, HashSet};

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

pub(super) fn gone(id: &BlobId, e: &Error) -> Error {
    Error::new(
        ErrorKind::Locked,
        format!("a concurrent prune removed blob {id} that this backup relies on ({e}); nothing was committed: run the backup again"),
    )
}

/// What one candidate set dooms: its packs, and the blobs every copy of which is in them.
pub struct Doomed<'a> {
    pub blobs: &'a HashSet<BlobId>,
    pub packs: &'a HashSet<PackId>,
}

/// Read the blobs a writer must keep out of packs that are about to be removed: the
/// doomed blobs in its own packs (read from the pack) and the doomed blobs it reused
/// (read where the catalog places them). Fails with `Locked` if one is already gone.
pub async fn salvage(
    backend: &Backend,
    key: &MasterKey,
    (catalog, exclusions): (&crate::catalog::Catalog, &crate::repo::reuse::Exclusions),
    doomed: Doomed<'_>,
    reused: &[BlobId],
    own_packs: &[PackId],
) -> Result<Vec<(crate::format::pack::BlobKind, BlobId, Vec<u8>)>> {
    let Doomed { blobs: doomed, packs: marked } = doomed;
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
        let (salt, entries) = crate::format::pack::read_header(key, &pack.to_hex(), &bytes)?;
        let pack_key = key.pack_key(&salt);
        for entry in entries.iter().filter(|e| doomed.contains(&e.id)) {
            let sealed = &bytes[entry.offset as usize..entry.end() as usize];
            out.push((entry.kind, entry.id, crate::format::pack::open_blob(key, &pack_key, entry, sealed)?));
        }
    }
    for id in reused {
        let locations = catalog.locations(id)?;
        // A copy outside this set and every set seen before is safe; otherwise read one
        // while it still exists.
        if locations.is_empty() || locations.iter().any(|l| !marked.contains(&l.pack) && !exclusions.contains(&l.pack))
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
