//! The plan of a tree restore: every file and the blobs it needs, grouped by pack, and
//! what is created for it; damage found on the way is recorded, not fatal.

use crate::beneath::{split, Beneath};
use crate::catalog::BlobLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Node, NodeKind};
use crate::id::BlobId;
use crate::ops::restore::create::{Create, Creator, Meta};
use crate::ops::restore::select::{includes, join, safe_name, selected, symlink_allowed};
use crate::ops::restore::{RestoreOptions, RestoreStats};
use crate::repo::load::LeafWalker;
use crate::repo::Repository;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Blobs in one pack closer than this are fetched in one range.
pub(crate) const COALESCE_GAP: u64 = 1 << 20;

/// A range grows to at most this many bytes, so the reads in flight (one per connection)
/// hold a bounded amount of memory whatever the pack size.
pub(crate) const MAX_RANGE: u64 = 8 << 20;

/// One place a blob's data goes.
pub(crate) struct Target {
    pub(super) file: usize,
    pub(super) offset: u64,
}

/// A file to fill under its temporary name, and what to set once its last byte is written.
pub(crate) struct PlannedFile {
    /// Relative to the target, slash-separated.
    pub(super) rel: Vec<u8>,
    /// The temporary name in the same directory.
    pub(super) temp: Vec<u8>,
    /// Its position in the creator's order (see [`Created::wait_for`]).
    pub(super) created: usize,
    pub(super) remaining: AtomicU64,
    /// Its length (set once written: runs of zeros are left as holes).
    pub(super) size: u64,
    pub(super) meta: Meta,
    /// Renamed to its final name, complete.
    pub(super) done: AtomicBool,
}

impl PlannedFile {
    pub(super) fn temp_rel(&self) -> Vec<u8> {
        join(split(&self.rel).0, &self.temp)
    }
}

#[derive(Default)]
pub(crate) struct Plan {
    pub(super) files: Vec<PlannedFile>,
    pub(super) blobs: HashMap<BlobId, (BlobLocation, Vec<Target>)>,
    /// Directories and symlinks, whose metadata is applied after the data, in creation
    /// order. Files get theirs before they are renamed into place.
    pub(super) metadata: Vec<(Vec<u8>, Meta)>,
}

/// Walk the tree: hand every directory, file and symlink to the creator, and group the
/// blobs of every file by pack.
pub(crate) async fn plan_tree(
    repo: &Repository,
    root: &BlobId,
    beneath: &Beneath,
    options: &RestoreOptions,
    creator: &mut Creator,
    plan: &mut Plan,
    stats: &mut RestoreStats,
) -> Result<()> {
    let includes = includes(options);
    let mut stack = vec![(repo.load_tree(root).await?, Vec::new())];
    while let Some((tree, rel)) = stack.pop() {
        for mut node in tree.nodes {
            let name = safe_name(&node)?;
            let rel_path = join(&rel, &name);
            let (restore, descend) = selected(&includes, &rel_path);
            if !descend {
                continue;
            }
            match node.kind {
                NodeKind::Dir => {
                    creator.send(Create::Dir(rel_path.clone()))?;
                    let subtree = repo.dir_tree(&mut node, &beneath.display(&rel_path).display()).await?;
                    if restore {
                        stats.dirs += 1;
                        plan.metadata.push((rel_path.clone(), Meta::of(&node)));
                    }
                    stack.push((subtree, rel_path));
                }
                _ if !restore => {}
                NodeKind::File => {
                    let temp = beneath.temp_name();
                    let meta = Meta::of(&node);
                    let empty = node.size == 0;
                    let created = creator.send(Create::File {
                        rel: rel_path.clone(),
                        temp: temp.clone(),
                        empty: empty.then_some(meta),
                    })?;
                    if !empty {
                        plan_file(repo, plan, beneath, rel_path, temp, &node, created).await?;
                    }
                    stats.files += 1;
                    stats.bytes += node.size;
                }
                NodeKind::Symlink => {
                    let link = node.target_bytes().unwrap_or_default();
                    if symlink_allowed(
                        &beneath.display(&rel_path),
                        &rel_path,
                        &link,
                        beneath.display(b"").as_path(),
                        options.confine_links,
                        stats,
                    ) {
                        creator.send(Create::Symlink(rel_path.clone(), link))?;
                        stats.symlinks += 1;
                        plan.metadata.push((rel_path, Meta::of(&node)));
                    }
                }
                other => stats
                    .warnings
                    .push(format!("{}: {other:?} nodes are not restored", beneath.display(&rel_path).display())),
            }
        }
    }
    Ok(())
}

async fn plan_file(
    repo: &Repository,
    plan: &mut Plan,
    beneath: &Beneath,
    rel: Vec<u8>,
    temp: Vec<u8>,
    node: &Node,
    created: usize,
) -> Result<()> {
    let index = plan.files.len();
    let Some(content) = &node.content else {
        return Err(Error::corrupt(format!(
            "{}: the tree records data but no content",
            beneath.display(&rel).display()
        )));
    };
    let mut walker = LeafWalker::new(repo, content);
    let mut offset = 0u64;
    while let Some(entry) = walker.next().await? {
        let target = Target { file: index, offset };
        match plan.blobs.get_mut(&entry.0) {
            Some((_, targets)) => targets.push(target),
            None => {
                plan.blobs.insert(entry.0, (repo.locate(&entry.0)?, vec![target]));
            }
        }
        offset += entry.1;
    }
    if offset != node.size {
        return Err(Error::corrupt(format!(
            "{}: content holds {offset} bytes but the tree records {}",
            beneath.display(&rel).display(),
            node.size
        )));
    }
    let meta = Meta::of(node);
    plan.files.push(PlannedFile {
        rel,
        temp,
        created,
        remaining: AtomicU64::new(node.size),
        size: node.size,
        meta,
        done: AtomicBool::new(false),
    });
    Ok(())
}

/// What one range's writing left undone: the files it could not fill, and why.
#[derive(Default)]
pub(crate) struct Damage {
    pub(super) files: Vec<usize>,
    pub(super) first: Option<Error>,
}

impl Damage {
    pub(super) fn add(&mut self, files: impl IntoIterator<Item = usize>, e: Error) {
        self.files.extend(files);
        self.first.get_or_insert(e);
    }
}

/// Whether an error reading a pack range is damage to the stored data (the files it
/// feeds are skipped) rather than a failure that stops the restore.
pub(crate) fn is_damage(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound)
}
