//! Walking what a snapshot references: its trees, stream nodes and data blobs, each
//! metadata blob loaded once per sink. Removal (the sets of a run, the writer's checks)
//! and copy use it.

use crate::error::Result;
use crate::format::snapshot::{decode_node, Content, SnapshotFile, Tree};
use crate::id::BlobId;
use crate::repo::Repository;
use std::collections::HashSet;

/// Where a walk of snapshots records the blobs it finds.
pub trait BlobSink {
    /// A data blob.
    fn data(&mut self, id: BlobId) -> Result<()>;
    /// A metadata blob (a tree or a stream node); false if recorded before, in which case
    /// its children were recorded too and the walk skips them.
    fn node(&mut self, id: BlobId) -> Result<bool>;
}

impl BlobSink for HashSet<BlobId> {
    fn data(&mut self, id: BlobId) -> Result<()> {
        self.insert(id);
        Ok(())
    }

    fn node(&mut self, id: BlobId) -> Result<bool> {
        Ok(self.insert(id))
    }
}

/// Every blob a snapshot references: its trees, stream nodes and data blobs. Metadata
/// blobs the sink has seen before are not walked again (their children were recorded).
pub async fn referenced_blobs<S: BlobSink + Send>(
    repo: &Repository,
    snapshot: &SnapshotFile,
    out: &mut S,
) -> Result<()> {
    let mut trees: Vec<BlobId> = snapshot.tree.into_iter().collect();
    let mut contents: Vec<Content> = snapshot.content.iter().cloned().collect();
    loop {
        // Each tree's file contents are walked before the next tree is read, so memory
        // holds one directory's files and the pending subtrees, not a snapshot's files.
        if let Some(content) = contents.pop() {
            let mut stack = vec![(content.depth, content.entries)];
            while let Some((depth, entries)) = stack.pop() {
                for entry in entries {
                    if depth == 0 {
                        out.data(entry.0)?;
                        continue;
                    }
                    if !out.node(entry.0)? {
                        continue;
                    }
                    let (d, children) = decode_node(&repo.load_blob(&entry.0).await?)?;
                    stack.push((d, children));
                }
            }
        } else if let Some(id) = trees.pop() {
            if !out.node(id)? {
                continue;
            }
            let tree = Tree::decode(&repo.load_blob(&id).await?).map_err(|e| e.context(format!("tree {id}")))?;
            let mut nodes = tree.nodes;
            while let Some(node) = nodes.pop() {
                trees.extend(node.subtree);
                contents.extend(node.content);
                nodes.extend(node.tree.into_iter().flat_map(|t| t.nodes));
            }
        } else {
            return Ok(());
        }
    }
}
