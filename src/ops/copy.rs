//! `cairn copy`: replicate snapshots into another repository.
//!
//! Two repositories that share an id key (the destination was made with `cairn init
//! --copy-settings-from`) give identical content the same blob ids, so a copy sends only
//! the blobs the destination lacks, trees and stream nodes included, and the copied
//! snapshot keeps its tree and content ids: deduplication carries over from run to run.
//! Otherwise every blob is re-identified under the destination's key and trees and stream
//! nodes are rebuilt (the data is still deduplicated within the destination).
//!
//! A copied snapshot records its origin (`meta.copied_from`), so a re-run skips it. The
//! destination writes data like a backup does (packs, then index, then snapshot), so an
//! interrupted copy leaves only reusable, indexed data: the re-run sends the rest.
//! Before a snapshot is written, every pack this run wrote is read back and hashed against
//! its name, and the new snapshot is walked in the destination: every blob it references
//! must be indexed there.

use crate::error::{Error, Result};
use crate::format::layout as keys;
use crate::format::pack::BlobKind;
use crate::format::snapshot::{decode_node, Content, ContentBuilder, MetaSink, SnapshotFile, Tree};
use crate::id::{BlobId, PackId, SnapshotId};
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::saver::Saver;
use crate::repo::Repository;
use serde::Serialize;
use std::collections::HashSet;

/// Blobs of one pack closer than this are fetched with one ranged read.
const COALESCE_GAP: u64 = 1 << 20;
const MAX_RANGE: u64 = 16 << 20;

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    /// Source snapshot id → destination snapshot id, for each snapshot copied.
    pub copied: Vec<(SnapshotId, SnapshotId)>,
    /// Source snapshots the destination already had.
    pub skipped: Vec<SnapshotId>,
    /// Whether blob ids carried over (shared id key).
    pub same_ids: bool,
    pub blobs_sent: u64,
    /// Bytes stored in the destination (compressed, before encryption overhead).
    pub bytes_sent: u64,
    pub packs_written: u64,
    pub index_files_written: u64,
    pub packs_verified: u64,
    /// Packs an interrupted earlier run left unindexed, verified and indexed for reuse.
    pub packs_adopted: u64,
}

/// Index the packs that an earlier, killed run uploaded but never indexed, so the re-run
/// does not send them again. Each is read whole and must hash to its name and open with
/// this repository's key; anything else is left alone (check reports it, prune removes it).
/// Run it in a writer session. With `dry_run`, count them and write nothing.
pub async fn adopt_orphans(repo: &Repository, dry_run: bool) -> Result<u64> {
    let indexed: HashSet<PackId> = repo.catalog().packs()?.into_iter().map(|p| p.id).collect();
    let mut adopted = Vec::new();
    for object in repo.backend().list(keys::DATA).await? {
        let Ok(id) = PackId::from_hex(keys::name(&object.key)) else { continue };
        // Packs a removal marked are left to it.
        if indexed.contains(&id) || repo.exclusions().contains(&id) {
            continue;
        }
        let Ok(bytes) = repo.backend().get(&object.key).await else { continue };
        if PackId(*blake3::hash(&bytes).as_bytes()) != id {
            continue;
        }
        let Ok((salt, blobs)) = crate::format::pack::read_header(repo.key(), &id.to_hex(), &bytes) else { continue };
        adopted.push(crate::format::index::IndexPack { id, salt, size: bytes.len() as u64, blobs });
    }
    if adopted.is_empty() || dry_run {
        return Ok(adopted.len() as u64);
    }
    let count = adopted.len() as u64;
    let file = crate::format::index::IndexFile { packs: adopted };
    let id = crate::id::IndexId::random();
    let sealed = crate::format::object::seal(repo.key(), crate::format::object::INDEX_MAGIC, &file.encode());
    repo.backend().put(&keys::index(&id), sealed.into(), crate::backend::WriteMode::Create).await?;
    repo.catalog().add_index(&id, &file)?;
    Ok(count)
}

/// The origin of a snapshot: its own id, or where it was copied from.
pub fn origin(id: &SnapshotId, snapshot: &SnapshotFile) -> String {
    snapshot.meta.get("copied_from").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| id.to_hex())
}

pub async fn copy(
    src: &Repository,
    dst: &Repository,
    mut selected: Vec<(SnapshotId, SnapshotFile)>,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let same_ids = src.key().same_id_key(dst.key());
    let mut report = CopyReport { same_ids, ..Default::default() };
    // Adoption writes an index file, so it runs in a writer session like any writer.
    let session = dst.begin_session().await?;
    let adopted = adopt_orphans(dst, false).await;
    session.end().await;
    report.packs_adopted = adopted?;
    let present: HashSet<String> = dst.catalog().snapshots()?.iter().map(|(id, s)| origin(id, s)).collect();
    selected.sort_by_key(|(_, s)| s.time);
    for (id, snapshot) in selected {
        cancel.check()?;
        let from = origin(&id, &snapshot);
        if present.contains(&from) {
            report.skipped.push(id);
            continue;
        }
        progress.begin(&format!("copying {}", id.short()), Some(snapshot.stats.size));
        let session = std::sync::Arc::new(dst.begin_session().await?);
        let copied = copy_one(src, dst, &session, id, &snapshot, same_ids, cancel, progress, &mut report).await;
        session.end().await;
        report.copied.push((id, copied?));
    }
    Ok(report)
}

/// Copy one snapshot within a writer session of the destination; returns its new id.
#[allow(clippy::too_many_arguments)]
async fn copy_one(
    src: &Repository,
    dst: &Repository,
    session: &std::sync::Arc<crate::repo::gc::Session>,
    id: SnapshotId,
    snapshot: &SnapshotFile,
    same_ids: bool,
    cancel: &Cancel,
    progress: &dyn Progress,
    report: &mut CopyReport,
) -> Result<SnapshotId> {
    let from = origin(&id, snapshot);
    let saver = Saver::start(dst, session, &tokio::runtime::Handle::current());
    let handle = tokio::runtime::Handle::current();
    let moved = tokio::task::block_in_place(|| {
        let mut t = Transfer { src, saver: &saver, handle, same_ids, cancel, progress };
        let tree = snapshot.tree.as_ref().map(|t_id| t.tree(t_id)).transpose()?;
        let content = snapshot.content.as_ref().map(|c| t.content(c)).transpose()?;
        Ok::<_, Error>((tree, content))
    });
    let saved = saver.finish().await;
    progress.end();
    let (tree, content) = moved?;
    let saved = saved?;
    report.blobs_sent += saved.added_blobs;
    report.bytes_sent += saved.added_bytes;
    report.packs_written += saved.packs;
    report.index_files_written += saved.index_files;
    for pack in &saved.pack_ids {
        verify_pack(dst, pack).await?;
        report.packs_verified += 1;
    }
    let mut copy = snapshot.clone();
    copy.tree = tree;
    copy.content = content;
    copy.parent = None;
    copy.meta.insert("copied_from".into(), serde_json::Value::String(from));
    let mut needed = HashSet::new();
    crate::repo::walk::referenced_blobs(dst, &copy, &mut needed).await?;
    if let Some(missing) = needed.iter().find(|b| !dst.catalog().contains(b).unwrap_or(false)) {
        return Err(Error::corrupt(format!(
            "copy of snapshot {} is incomplete: blob {missing} is not in {}; nothing was committed",
            id.short(),
            dst.backend().location()
        )));
    }
    dst.save_snapshot(session, &copy).await
}

/// Read a pack back from the destination and check it hashes to its name.
async fn verify_pack(dst: &Repository, pack: &PackId) -> Result<()> {
    let bytes = dst.backend().get(&keys::pack(pack)).await?;
    if PackId(*blake3::hash(&bytes).as_bytes()) != *pack {
        return Err(Error::corrupt(format!(
            "pack {pack} read back from {} does not match what was written; nothing was committed",
            dst.backend().location()
        )));
    }
    crate::format::pack::read_header(dst.key(), &pack.to_hex(), &bytes)?;
    Ok(())
}

/// Moves one snapshot's blobs; runs on a blocking thread (the saver's side).
struct Transfer<'a> {
    src: &'a Repository,
    saver: &'a Saver,
    handle: tokio::runtime::Handle,
    same_ids: bool,
    cancel: &'a Cancel,
    progress: &'a dyn Progress,
}

impl Transfer<'_> {
    fn load(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.handle.block_on(self.src.load_blob(id))
    }

    /// Copy a tree; returns its id in the destination.
    fn tree(&mut self, id: &BlobId) -> Result<BlobId> {
        self.cancel.check()?;
        let bytes = self.load(id)?;
        let mut tree = Tree::decode(&bytes).map_err(|e| e.context(format!("tree {id}")))?;
        self.nodes(&mut tree)?;
        if self.same_ids {
            if self.saver.claim(id)? {
                self.saver.store_claimed(BlobKind::Meta, *id, bytes)?;
            }
            Ok(*id)
        } else {
            self.saver.save_meta(tree.encode())
        }
    }

    /// Copy what a tree's nodes refer to, and name it as the destination does. Inline trees
    /// stay inline: with new ids they keep their size.
    fn nodes(&mut self, tree: &mut Tree) -> Result<()> {
        for node in &mut tree.nodes {
            if let Some(sub) = node.subtree {
                node.subtree = Some(self.tree(&sub)?);
            }
            if let Some(inline) = &mut node.tree {
                self.nodes(inline)?;
            }
            if let Some(content) = &node.content {
                node.content = Some(self.content(content)?);
            }
        }
        Ok(())
    }

    /// Copy a content's data and nodes; returns the content as the destination names it.
    fn content(&mut self, content: &Content) -> Result<Content> {
        if self.same_ids {
            let mut missing = Vec::new();
            let mut stack = vec![(content.depth, content.entries.clone())];
            while let Some((depth, entries)) = stack.pop() {
                for entry in entries {
                    if depth == 0 {
                        if self.saver.claim(&entry.0)? {
                            missing.push(entry.0);
                        } else {
                            self.progress.advance(entry.1);
                        }
                        continue;
                    }
                    let bytes = self.load(&entry.0)?;
                    let (d, children) = decode_node(&bytes)?;
                    if self.saver.claim(&entry.0)? {
                        self.saver.store_claimed(BlobKind::Meta, entry.0, bytes)?;
                    }
                    stack.push((d, children));
                }
            }
            self.fetch(&missing, |t, id, bytes| {
                t.progress.advance(bytes.len() as u64);
                t.saver.store_claimed(BlobKind::Data, id, bytes)
            })?;
            return Ok(content.clone());
        }
        // Re-identify: the leaves in order, each under the destination's id key.
        let mut leaves = Vec::new();
        let mut walker = crate::repo::load::LeafWalker::new(self.src, content);
        while let Some(entry) = self.handle.block_on(walker.next())? {
            leaves.push(entry.0);
        }
        let mut builder = ContentBuilder::new();
        self.fetch(&leaves, |t, _, bytes| {
            let len = bytes.len() as u64;
            t.progress.advance(len);
            let id = t.saver.save_chunk(bytes)?;
            builder.push(id, len, t.saver)
        })?;
        builder.finish(self.saver)
    }

    /// Fetch blobs from the source in order, coalescing neighbours in one pack into one
    /// ranged read, and hand each to `each`.
    fn fetch(&mut self, ids: &[BlobId], mut each: impl FnMut(&Self, BlobId, Vec<u8>) -> Result<()>) -> Result<()> {
        let mut i = 0;
        while i < ids.len() {
            self.cancel.check()?;
            let first = self.src.locate(&ids[i])?;
            let mut group = vec![first];
            while let Some(next) = ids.get(i + group.len()) {
                let location = self.src.locate(next)?;
                let last = group.last().unwrap();
                let close = location.pack == first.pack
                    && location.entry.offset >= last.entry.end()
                    && location.entry.offset - last.entry.end() <= COALESCE_GAP
                    && location.entry.end() - first.entry.offset <= MAX_RANGE;
                if !close {
                    break;
                }
                group.push(location);
            }
            let start = first.entry.offset;
            let end = group.last().unwrap().entry.end();
            let bytes = self.handle.block_on(self.src.backend().get_range(&keys::pack(&first.pack), start..end))?;
            let pack_key = self.src.key().pack_key(&first.salt);
            for location in &group {
                let from = (location.entry.offset - start) as usize;
                let sealed = &bytes[from..from + location.entry.length as usize];
                let plain = crate::repo::load::open_with(self.src.key(), &pack_key, location, sealed)?;
                each(self, location.entry.id, plain)?;
            }
            i += group.len();
        }
        Ok(())
    }
}
