//! `cairn repair index` and `cairn repair snapshots`, as restic has them.
//!
//! `repair index` makes the index agree with the packs again, from the packs' own headers.
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
//! Its session acknowledges no mark, so a sweep that starts while repair runs waits for
//! it and never deletes a pack or index file repair is reading.

use crate::backend::WriteMode;
use crate::error::Result;
use crate::format::index::IndexFile;
use crate::format::layout as keys;
use crate::format::snapshot::{decode_node, Content, SnapshotFile, Tree};
use crate::id::{IndexId, PackId, SnapshotId};
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
    // A reader's session: no sweep rewrites the index files it reads while it runs.
    let session = repo.begin_reading().await?;
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
        if file.packs.iter().any(|p| repo.exclusions().contains(&p.id)) {
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
            let sealed = crate::format::object::seal(key, crate::format::object::INDEX_MAGIC, &kept.encode());
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

/// What `repair snapshots` did (in a dry run: would do) to one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct RepairedSnapshot {
    pub id: SnapshotId,
    /// `rewritten` (a new snapshot without what was cut), or `quarantined` (moved to
    /// `quarantine/snapshots/`: an unreadable manifest, or a stream with a gap).
    pub action: &'static str,
    /// The replacement, when rewritten.
    pub new_id: Option<SnapshotId>,
    /// The paths cut from a tree (files whose data is gone, directories whose tree is),
    /// or what made it unusable.
    pub cut: Vec<String>,
}

/// `repair snapshots`: every snapshot that references a blob no stored pack holds, or a
/// tree or stream node that cannot be read, is rewritten without what was lost (a tree
/// keeps every readable file and directory) or, when nothing sensible remains (a stream
/// with a gap, an unreadable manifest), moved to `quarantine/snapshots/<id>`. Data blobs
/// are judged present by the index and the pack listing, not read (`check --read-data`
/// finds blobs whose bytes are damaged; `repair index` first, then this).
pub async fn repair_snapshots(repo: &Repository, dry_run: bool) -> Result<Vec<RepairedSnapshot>> {
    let session = std::sync::Arc::new(repo.begin_session().await?);
    let result = repair_snapshots_in(repo, &session, dry_run).await;
    session.end().await;
    result
}

async fn repair_snapshots_in(
    repo: &Repository,
    session: &std::sync::Arc<crate::repo::gc::Session>,
    dry_run: bool,
) -> Result<Vec<RepairedSnapshot>> {
    let backend = repo.backend();
    let stored: HashSet<PackId> =
        backend.list(keys::DATA).await?.iter().filter_map(|o| PackId::from_hex(keys::name(&o.key)).ok()).collect();
    let mut out = Vec::new();
    for object in backend.list(keys::SNAPSHOTS).await? {
        let Ok(id) = SnapshotId::from_hex(keys::name(&object.key)) else { continue };
        let snapshot = match crate::repo::read_snapshot(backend, repo.key(), &id).await {
            Ok(s) => s,
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => continue,
            Err(e) => {
                if !dry_run {
                    quarantine(repo, &id).await?;
                }
                out.push(RepairedSnapshot { id, action: "quarantined", new_id: None, cut: vec![e.to_string()] });
                continue;
            }
        };
        let handle = tokio::runtime::Handle::current();
        let saver = (!dry_run).then(|| crate::repo::saver::Saver::start(repo, session, &handle));
        let mut cutter = Cutter { repo, stored: &stored, handle, saver: saver.as_ref(), cut: Vec::new() };
        let repaired = tokio::task::block_in_place(|| cutter.snapshot(&snapshot));
        let cut = std::mem::take(&mut cutter.cut);
        drop(cutter);
        if let Some(saver) = saver {
            saver.finish().await?;
        }
        let repaired = repaired?;
        if cut.is_empty() {
            continue;
        }
        match repaired {
            Some(mut new) if !dry_run => {
                new.meta.insert("repaired_from".into(), serde_json::Value::String(id.to_hex()));
                new.meta.insert("repair_cut".into(), serde_json::json!(cut));
                let new_id = repo.save_snapshot(session, &new).await?;
                backend.delete(&keys::snapshot(&id)).await?;
                out.push(RepairedSnapshot { id, action: "rewritten", new_id: Some(new_id), cut });
            }
            Some(_) => out.push(RepairedSnapshot { id, action: "rewritten", new_id: None, cut }),
            None => {
                if !dry_run {
                    quarantine(repo, &id).await?;
                }
                out.push(RepairedSnapshot { id, action: "quarantined", new_id: None, cut });
            }
        }
    }
    Ok(out)
}

/// Move a snapshot's manifest to `quarantine/snapshots/<id>` (the copy first).
async fn quarantine(repo: &Repository, id: &SnapshotId) -> Result<()> {
    let backend = repo.backend();
    let bytes = backend.get(&keys::snapshot(id)).await?;
    backend.put(&format!("quarantine/{}", keys::snapshot(id)), bytes, WriteMode::CreateIdempotent).await?;
    backend.delete(&keys::snapshot(id)).await
}

/// Rebuilds a snapshot without what cannot be read, recording what it cut.
struct Cutter<'a> {
    repo: &'a Repository,
    stored: &'a HashSet<PackId>,
    handle: tokio::runtime::Handle,
    /// Stores the rewritten trees; `None` in a dry run.
    saver: Option<&'a crate::repo::saver::Saver>,
    cut: Vec<String>,
}

impl Cutter<'_> {
    /// The repaired snapshot, or `None` if nothing usable remains.
    fn snapshot(&mut self, snapshot: &SnapshotFile) -> Result<Option<SnapshotFile>> {
        let mut new = snapshot.clone();
        if let Some(content) = &snapshot.content {
            if let Some(gap) = self.content_gap(content)? {
                self.cut.push(format!("stream: {gap}"));
                return Ok(None);
            }
        }
        if let Some(root) = snapshot.tree {
            match self.handle.block_on(self.repo.load_tree(&root)) {
                Ok(tree) => {
                    let tree = self.tree(tree, "")?;
                    new.tree = Some(self.store_tree(tree)?);
                }
                Err(e) => {
                    self.cut.push(format!("/: {e}"));
                    return Ok(None);
                }
            }
        }
        Ok(Some(new))
    }

    fn store_tree(&self, tree: Tree) -> Result<crate::id::BlobId> {
        let bytes = tree.encode();
        match self.saver {
            Some(saver) => crate::format::snapshot::MetaSink::save_meta(saver, bytes),
            None => Ok(self.repo.key().blob_id(&bytes)),
        }
    }

    /// `tree` without the entries that cannot be restored.
    fn tree(&mut self, tree: Tree, at: &str) -> Result<Tree> {
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut node in tree.nodes {
            let path = format!("{at}/{}", node.name);
            if let Some(content) = &node.content {
                if let Some(gap) = self.content_gap(content)? {
                    self.cut.push(format!("{path}: {gap}"));
                    continue;
                }
            }
            if node.has_tree() {
                let loaded = self.handle.block_on(self.repo.dir_tree(&mut node, &path));
                match loaded {
                    Ok(sub) => {
                        let sub = self.tree(sub, &path)?;
                        match self.saver {
                            Some(saver) => node.set_tree(sub, saver)?,
                            None => node.tree = Some(sub),
                        }
                    }
                    Err(e) => {
                        self.cut.push(format!("{path}/: {e}"));
                        continue;
                    }
                }
            }
            nodes.push(node);
        }
        Ok(Tree { nodes })
    }

    /// Why `content` cannot be read back whole, if it cannot.
    fn content_gap(&self, content: &Content) -> Result<Option<String>> {
        let mut stack = vec![(content.depth, content.entries.clone())];
        while let Some((depth, entries)) = stack.pop() {
            for entry in entries {
                let present = self.repo.catalog().locations(&entry.0)?.iter().any(|l| self.stored.contains(&l.pack));
                if !present {
                    return Ok(Some(format!("blob {} is in no stored pack", entry.0)));
                }
                if depth > 0 {
                    match self.handle.block_on(self.repo.load_blob(&entry.0)).and_then(|b| decode_node(&b)) {
                        Ok((d, children)) if d + 1 == depth => stack.push((d, children)),
                        Ok(_) => return Ok(Some(format!("stream node {} has the wrong depth", entry.0))),
                        Err(e) => return Ok(Some(format!("stream node {}: {e}", entry.0))),
                    }
                }
            }
        }
        Ok(None)
    }
}
