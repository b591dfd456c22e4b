//! Which stored blobs a new snapshot may rely on.
//!
//! A removal's candidate set names packs that a sweep may delete (docs/format.md §17). A
//! writer that saw the set's mark must not make a new snapshot depend on blobs stored only
//! in those packs: [`Exclusions`] holds the packs of every mark this process saw, and the
//! saver asks it before reusing a blob, the loader before choosing a copy to read. The
//! catalog stays a plain cache of the index; this is the policy on top of it.

use crate::catalog::{BlobLocation, Catalog};
use crate::error::Result;
use crate::id::{BlobId, PackId};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// Blobs writers in this process copied out of packs a removal had marked.
static COPIED_BLOBS: AtomicU64 = AtomicU64::new(0);
/// Blobs writers in this process stored again rather than reuse them from marked packs.
static EXCLUDED_HITS: AtomicU64 = AtomicU64::new(0);

pub fn copied_blobs() -> u64 {
    COPIED_BLOBS.load(Ordering::Relaxed)
}

pub fn excluded_hits() -> u64 {
    EXCLUDED_HITS.load(Ordering::Relaxed)
}

pub(crate) fn count_copied(n: u64) {
    COPIED_BLOBS.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn count_excluded(n: u64) {
    EXCLUDED_HITS.fetch_add(n, Ordering::Relaxed);
}

/// Packs a pending removal may delete: their blobs are not reused.
#[derive(Default, Debug)]
pub struct Exclusions(RwLock<HashSet<PackId>>);

impl Exclusions {
    /// Do not let new snapshots reuse blobs stored in these packs.
    pub fn exclude(&self, packs: impl IntoIterator<Item = PackId>) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).extend(packs);
    }

    /// Whether any pack is excluded from reuse.
    pub fn any(&self) -> bool {
        !self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Whether a removal may delete the pack.
    pub fn contains(&self, pack: &PackId) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(pack)
    }

    /// Whether the catalog places a copy of the blob in a pack new snapshots may rely on.
    pub fn reusable(&self, catalog: &Catalog, id: &BlobId) -> Result<bool> {
        let excluded = self.0.read().unwrap_or_else(|p| p.into_inner());
        if excluded.is_empty() {
            return catalog.contains(id);
        }
        let copies = catalog.copies(id)?;
        if copies.iter().any(|p| !excluded.contains(p)) {
            return Ok(true);
        }
        if !copies.is_empty() {
            count_excluded(1);
        }
        Ok(false)
    }

    /// Order a blob's copies (newest first, from [`Catalog::locations`]) so that copies a
    /// removal keeps come first; the order within each group stays.
    pub fn prefer_kept(&self, locations: &mut [BlobLocation]) {
        if locations.len() > 1 {
            let excluded = self.0.read().unwrap_or_else(|p| p.into_inner());
            if !excluded.is_empty() {
                locations.sort_by_key(|l| excluded.contains(&l.pack));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::pack;
    use crate::format::index::IndexFile;
    use crate::id::IndexId;

    #[test]
    fn copies_in_marked_packs_are_neither_reused_nor_read_first() {
        let catalog = Catalog::open(None).unwrap();
        let (shared, only_a) = (BlobId::random(), BlobId::random());
        let a = pack(&[(shared, 10), (only_a, 20)]);
        let b = pack(&[(shared, 10)]);
        catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![a.clone()] }).unwrap();
        catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![b.clone()] }).unwrap();
        let exclusions = Exclusions::default();
        exclusions.exclude([b.id]);
        let mut locations = catalog.locations(&shared).unwrap();
        assert_eq!(locations[0].pack, b.id, "the catalog puts the newest first");
        exclusions.prefer_kept(&mut locations);
        assert_eq!(locations[0].pack, a.id, "a copy outside marked packs wins");
        assert!(exclusions.reusable(&catalog, &shared).unwrap());
        exclusions.exclude([a.id]);
        assert!(!exclusions.reusable(&catalog, &shared).unwrap(), "every copy is in a marked pack");
        assert!(!exclusions.reusable(&catalog, &only_a).unwrap());
    }
}
