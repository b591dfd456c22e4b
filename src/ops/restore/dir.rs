//! A tree restored into a directory: the passes in order (plan with the creator beside
//! it, data, metadata), and the removal of what an interrupted restore left behind.

use crate::beneath::Beneath;
use crate::error::{Error, ErrorKind, Result};
use crate::id::BlobId;
use crate::ops::restore::create::{apply_metadata, Created, Creator};
use crate::ops::restore::data::write_data;
use crate::ops::restore::plan::{plan_tree, Plan, PlannedFile};
use crate::ops::restore::{RestoreOptions, RestoreStats};
use crate::progress::Progress;
use crate::repo::Repository;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Restore a tree into `target`, creating it if needed. Nothing is written outside it:
/// no symlink below `target` is followed ([`Beneath`]). Every file is written under a
/// temporary name and renamed when complete, so a failed restore leaves no wrong bytes
/// under a final name: files that cannot be restored (damaged or missing data) are
/// skipped, the others completed, and the error names the skipped ones.
pub async fn restore_tree_to_dir(
    repo: &Repository,
    root: &BlobId,
    target: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let beneath = Arc::new(Beneath::create(target, options.in_the_way)?);
    let mut stats = RestoreStats::default();
    let mut plan = Plan::default();
    let is_root = crate::process::is_root();
    let mut creator = Creator::start(beneath.clone(), is_root);
    let planned = plan_tree(repo, root, &beneath, options, &mut creator, &mut plan, &mut stats).await;
    if let Err(e) = planned {
        // The creator's own error explains a planner that could no longer hand it work.
        let created = creator.progress();
        let creation = creator.finish().await;
        remove_unfinished(&beneath, &plan.files, &created);
        creation?;
        return Err(e);
    }
    // The data pass looks nothing up: end the planner's read transaction, which would
    // otherwise keep other processes sharing this cache from checkpointing it until we exit.
    repo.catalog().end_reads();
    let created = creator.progress();
    // Directories get their metadata last, deepest first, once every file in them has
    // been renamed into place (a rename changes its directory's mtime, and a read-only
    // directory takes no new names).
    let creation = tokio::task::spawn_blocking(move || creator.join());
    progress.begin("restoring", Some(stats.bytes));
    let warnings = Mutex::new(std::mem::take(&mut stats.warnings));
    let files = Arc::new(plan.files);
    let written =
        write_data(repo, &beneath, files.clone(), plan.blobs, created.clone(), is_root, &warnings, progress).await;
    // A failed creator explains writers that waited for it in vain.
    let creation = creation.await.map_err(|e| Error::backend(format!("restore task failed: {e}")));
    let unfinished = remove_unfinished(&beneath, &files, &created);
    creation??;
    let damage = written?;
    progress.end();
    stats.warnings = warnings.into_inner().unwrap_or_else(|p| p.into_inner());
    let metadata = plan.metadata;
    let for_metadata = beneath.clone();
    let metadata_warnings = tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        apply_metadata(&for_metadata, &metadata, is_root, &mut warnings);
        warnings
    })
    .await
    .map_err(|e| Error::backend(format!("restore task failed: {e}")))?;
    stats.warnings.extend(metadata_warnings);
    if !unfinished.is_empty() {
        return Err(incomplete(&beneath, &unfinished, files.len(), damage));
    }
    Ok(stats)
}

/// Remove the temporary files of every file not completed; returns their paths.
fn remove_unfinished(beneath: &Beneath, files: &[PlannedFile], created: &Created) -> Vec<Vec<u8>> {
    let made = created.count.load(Ordering::SeqCst);
    let mut unfinished = Vec::new();
    for file in files.iter().filter(|f| !f.done.load(Ordering::SeqCst)) {
        if file.created <= made {
            if let Ok((parent, _)) = beneath.parent(&file.rel) {
                beneath.remove(parent.as_fd(), &file.temp);
            }
        }
        unfinished.push(file.rel.clone());
    }
    unfinished
}

/// The error of a restore that completed all but `unfinished`.
fn incomplete(beneath: &Beneath, unfinished: &[Vec<u8>], total: usize, damage: Option<Error>) -> Error {
    const NAMED: usize = 10;
    let mut names: Vec<String> =
        unfinished.iter().take(NAMED).map(|rel| beneath.display(rel).display().to_string()).collect();
    if unfinished.len() > NAMED {
        names.push(format!("and {} more", unfinished.len() - NAMED));
    }
    let (kind, cause) = match &damage {
        Some(e) => (ErrorKind::Corrupt, e.message().to_string()),
        None => (ErrorKind::Io, "the restore stopped".to_string()),
    };
    Error::new(
        kind,
        format!(
            "{} of {total} files could not be restored ({cause}): {}; every other file is complete and none is \
             left partly written; run `cairn check --read-data` and restore them from another snapshot",
            unfinished.len(),
            names.join(", ")
        ),
    )
}
