//! `cairn repair index`: make the index agree with the packs again, from the packs' own
//! headers (as restic's `repair index`).
//!
//! What it does, in a writer session of its own (docs/format.md §17.3), so that removal
//! runs treat it as any writer:
//! 1. packs no readable index file lists, that hash to their name and open with this
//!    repository's key, are *adopted*: listed in a new index file (their headers say what
//!    they hold);
//! 2. index files that list packs which are not stored are rewritten without them (the new
//!    file first, then the old one goes);
//! 3. index files that cannot be read are deleted, once step 1 has indexed their packs.
//!
//! Packs of a pending removal are left to it: they are not adopted, and a file that lists
//! one is not rewritten (the next `prune` sweeps or rescues them; then run repair again).
//! A sweep that starts while repair runs waits for its session, so it never deletes a
//! pack repair is about to list.

use crate::backend::{keys, WriteMode};
use crate::error::Result;
use crate::id::{IndexId, PackId};
use crate::index::IndexFile;
use crate::repo::Repository;
use serde::Serialize;
use std::collections::{BTreeSet, HashSet};

/// What `repair index` did (in a dry run: would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairIndexReport {
    pub adopted_packs: u64,
    pub dropped_packs: Vec<PackId>,
    pub rewritten_files: u64,
    pub deleted_damaged_files: Vec<String>,
    /// Index files listing a missing pack left alone because they also list a pack a
    /// pending removal marked.
    pub skipped_files: Vec<IndexId>,
}

impl RepairIndexReport {
    pub fn changed(&self) -> bool {
        self.adopted_packs > 0 || !self.dropped_packs.is_empty() || !self.deleted_damaged_files.is_empty()
    }
}

pub async fn repair_index(repo: &Repository, dry_run: bool) -> Result<RepairIndexReport> {
    let session = repo.begin_session().await?;
    let result = repair_in_session(repo, dry_run).await;
    session.end().await;
    result
}

async fn repair_in_session(repo: &Repository, dry_run: bool) -> Result<RepairIndexReport> {
    let (backend, key, catalog) = (repo.backend(), repo.key(), repo.catalog());
    let mut report = RepairIndexReport::default();
    let damaged: Vec<String> =
        catalog.damaged().into_iter().map(|(object, _)| object).filter(|o| o.starts_with(keys::INDEX)).collect();
    // 1. Adopt what no readable index lists.
    report.adopted_packs = crate::ops::copy::adopt_orphans(repo, dry_run).await?;
    // 2. Drop entries of packs that are not stored.
    let stored: HashSet<PackId> =
        backend.list(keys::DATA).await?.iter().filter_map(|o| PackId::from_hex(keys::name(&o.key)).ok()).collect();
    let missing: BTreeSet<PackId> =
        catalog.packs()?.into_iter().map(|p| p.id).filter(|p| !stored.contains(p)).collect();
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for id in catalog.files_listing(&missing)? {
        let file = crate::repo::read_index(backend, key, &id).await?;
        if file.packs.iter().any(|p| catalog.is_excluded(&p.id)) {
            report.skipped_files.push(id);
            continue;
        }
        let (gone, kept): (Vec<_>, Vec<_>) = file.packs.into_iter().partition(|p| missing.contains(&p.id));
        report.dropped_packs.extend(gone.iter().map(|p| p.id));
        report.rewritten_files += 1;
        if dry_run {
            continue;
        }
        let kept = IndexFile { packs: kept };
        if !kept.packs.is_empty() {
            let new = IndexId::random();
            let sealed = crate::object::seal(key, crate::object::INDEX_MAGIC, &kept.encode());
            backend.put(&keys::index(&new), sealed.into(), WriteMode::Create).await?;
            added.push((new, kept.packs.iter().map(|p| p.id).collect()));
        }
        backend.delete(&keys::index(&id)).await?;
        removed.push(id);
    }
    if !dry_run {
        catalog.rewrote_index(&removed, &added, &missing)?;
    }
    report.dropped_packs.sort();
    report.dropped_packs.dedup();
    // 3. Damaged files go last: their packs were adopted in step 1.
    for object in damaged {
        if !dry_run {
            backend.delete(&object).await?;
        }
        report.deleted_damaged_files.push(object);
    }
    Ok(report)
}
