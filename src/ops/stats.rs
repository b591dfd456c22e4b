//! `cairn stats`: what the repository holds and how well it deduplicates.

use crate::error::Result;
use crate::repo::Repository;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepoStats {
    pub snapshots: u64,
    /// Sum of every snapshot's logical size.
    pub logical_bytes: u64,
    /// Bytes in pack files.
    pub stored_bytes: u64,
    pub blobs: u64,
    pub packs: u64,
    pub index_files: u64,
    /// logical / stored.
    pub dedup_ratio: f64,
}

pub fn stats(repo: &Repository) -> Result<RepoStats> {
    let catalog = repo.catalog();
    let snapshots = catalog.snapshots()?;
    let (blobs, packs, stored_bytes) = catalog.totals()?;
    let logical_bytes = snapshots.iter().map(|(_, s)| s.stats.size).sum();
    Ok(RepoStats {
        snapshots: snapshots.len() as u64,
        logical_bytes,
        stored_bytes,
        blobs,
        packs,
        index_files: catalog.index_file_count()?,
        dedup_ratio: if stored_bytes == 0 { 0.0 } else { logical_bytes as f64 / stored_bytes as f64 },
    })
}
