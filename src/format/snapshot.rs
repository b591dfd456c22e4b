//! Snapshot manifests, directory trees and content lists: the repository's metadata.
//!
//! * A snapshot manifest ([`SnapshotFile`]) is JSON in an object file (`CAIRNsn1`).
//! * A directory ([`Tree`]) is a metadata blob of deterministic JSON (fields in declaration
//!   order, nodes sorted by name bytes), so an unchanged directory hashes to the same blob.
//! * File and stream content ([`Content`]) is a list of `(blob id, size)` entries at some
//!   depth: depth 0 entries are data blobs; depth d > 0 entries are stream-node blobs whose
//!   entries are at depth d - 1. [`ContentBuilder`] flushes a node every [`FANOUT`] entries,
//!   so building and walking the content of a stream of any length needs memory
//!   proportional to `FANOUT × depth`, not to the stream.
//!
//! Stream node layout (docs/format.md, "Stream nodes"):
//! `magic "CSN1" | depth u8 | count u32 | count × (blob id (32) | size u64)`.
//! Fuzzed by `fuzz/fuzz_targets/snapshot.rs` and `fuzz/fuzz_targets/tree.rs`.

use crate::error::{Error, Result};
use crate::format::wire::{put_u32, put_u64, Reader};
use crate::id::{BlobId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A directory whose tree encodes to at most this many bytes is kept inside its parent's
/// tree rather than stored as a blob of its own. Most directories are this small (one to
/// three entries); as blobs each would cost about 120 bytes of seal, pack-header and index
/// entries plus its id in the parent, and a read of its own on every walk. The price: a
/// parent that changes stores its small subdirectories again, at most about five times
/// the bytes their references would take.
pub const INLINE_TREE_MAX: usize = 1024;

/// Entries per stream node (40 KiB nodes).
pub const FANOUT: usize = 1024;
const NODE_MAGIC: &[u8; 4] = b"CSN1";
pub const SNAPSHOT_VERSION: u32 = 1;

/// One snapshot: what was backed up, when, from where, and its root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotFile {
    pub version: u32,
    pub time: jiff::Timestamp,
    pub host: String,
    pub user: String,
    /// Source kind: `stdin`, `files`, `pg`, `sqlite`, `tar`, ...
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Root directory, for tree sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<BlobId>,
    /// Root content, for stream sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    pub stats: SnapshotStats,
    /// Kind-specific metadata (PostgreSQL version, LSNs, SQLite page size, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, serde_json::Value>,
    pub program: String,
}

impl SnapshotFile {
    pub fn is_tree(&self) -> bool {
        self.tree.is_some()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    /// Logical bytes: the size of everything the snapshot contains.
    pub size: u64,
    /// Bytes this snapshot newly stored in the repository (sealed blob lengths).
    pub added: u64,
    pub added_blobs: u64,
    /// Files skipped because unchanged since the parent snapshot.
    pub unchanged_files: u64,
    /// Source data that could not be read (vanished, permission denied).
    pub warnings: u64,
    pub duration_ms: u64,
}

/// A content list entry: a blob and the number of logical bytes below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentEntry(pub BlobId, pub u64);

/// The content of a file or stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// 0: entries are data blobs; d > 0: entries are stream nodes of depth d - 1.
    pub depth: u8,
    pub size: u64,
    pub entries: Vec<ContentEntry>,
}

/// Encode a stream node whose entries are at `depth`.
pub fn encode_node(depth: u8, entries: &[ContentEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + entries.len() * 40);
    out.extend_from_slice(NODE_MAGIC);
    out.push(depth);
    put_u32(&mut out, entries.len() as u32);
    for ContentEntry(id, size) in entries {
        out.extend_from_slice(id.as_bytes());
        put_u64(&mut out, *size);
    }
    out
}

/// Decode a stream node into its depth and entries.
pub fn decode_node(bytes: &[u8]) -> Result<(u8, Vec<ContentEntry>)> {
    let mut r = Reader::new(bytes, "stream node");
    if &r.array::<4>()? != NODE_MAGIC {
        return Err(r.corrupt("bad magic"));
    }
    let depth = r.u8()?;
    let count = r.count(40)?;
    let entries = (0..count).map(|_| Ok(ContentEntry(BlobId(r.array()?), r.u64()?))).collect::<Result<Vec<_>>>()?;
    r.expect_end()?;
    Ok((depth, entries))
}

/// Stores metadata blobs; implemented by the repository's saver.
pub trait MetaSink {
    fn save_meta(&self, bytes: Vec<u8>) -> Result<BlobId>;
}

/// Builds a [`Content`] from a sequence of data blobs in bounded memory.
#[derive(Default)]
pub struct ContentBuilder {
    levels: Vec<Vec<ContentEntry>>,
    size: u64,
}

impl ContentBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, id: BlobId, size: u64, sink: &dyn MetaSink) -> Result<()> {
        self.size += size;
        self.push_at(0, ContentEntry(id, size), sink)
    }

    fn push_at(&mut self, depth: usize, entry: ContentEntry, sink: &dyn MetaSink) -> Result<()> {
        if self.levels.len() <= depth {
            self.levels.push(Vec::new());
        }
        self.levels[depth].push(entry);
        if self.levels[depth].len() == FANOUT {
            self.flush(depth, sink)?;
        }
        Ok(())
    }

    fn flush(&mut self, depth: usize, sink: &dyn MetaSink) -> Result<()> {
        let entries = std::mem::take(&mut self.levels[depth]);
        let size = entries.iter().map(|e| e.1).sum();
        let id = sink.save_meta(encode_node(depth as u8, &entries))?;
        self.push_at(depth + 1, ContentEntry(id, size), sink)
    }

    pub fn finish(mut self, sink: &dyn MetaSink) -> Result<Content> {
        // Flush every level below the top, lowest first: lower levels hold later data,
        // and each flush appends after what the level above already holds.
        let Some(top) = self.levels.iter().rposition(|l| !l.is_empty()) else {
            return Ok(Content { depth: 0, size: 0, entries: Vec::new() });
        };
        for depth in 0..top {
            if !self.levels[depth].is_empty() {
                self.flush(depth, sink)?;
            }
        }
        // A flush may have filled the top level and pushed it one higher.
        let top = self.levels.iter().rposition(|l| !l.is_empty()).unwrap();
        Ok(Content { depth: top as u8, size: self.size, entries: std::mem::take(&mut self.levels[top]) })
    }
}

/// The kind of a tree node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Chardev,
    Blockdev,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// The name's bytes in hex, when they are not valid UTF-8 (`name` is then lossy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_raw: Option<String>,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits, including setuid, setgid and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// Change time and inode, used only to detect unchanged files.
    #[serde(default)]
    pub ctime: i64,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    /// Directories whose tree encodes to at most [`INLINE_TREE_MAX`] bytes: the tree itself,
    /// instead of `subtree`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Tree>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
}

impl Node {
    /// Give this directory its tree: inside the node when it encodes to at most
    /// [`INLINE_TREE_MAX`] bytes, otherwise stored through `sink` and named by `subtree`.
    pub fn set_tree(&mut self, tree: Tree, sink: &dyn MetaSink) -> Result<()> {
        let bytes = tree.encode();
        if bytes.len() <= INLINE_TREE_MAX {
            self.subtree = None;
            self.tree = Some(tree);
        } else {
            self.tree = None;
            self.subtree = Some(sink.save_meta(bytes)?);
        }
        Ok(())
    }

    /// Whether this node holds or names a directory tree.
    pub fn has_tree(&self) -> bool {
        self.subtree.is_some() || self.tree.is_some()
    }

    /// The name as raw bytes, exactly as it was on disk.
    pub fn name_bytes(&self) -> Vec<u8> {
        raw_or(&self.name, &self.name_raw)
    }

    pub fn target_bytes(&self) -> Option<Vec<u8>> {
        self.target.as_ref().map(|t| raw_or(t, &self.target_raw))
    }
}

fn raw_or(text: &str, raw: &Option<String>) -> Vec<u8> {
    raw.as_ref().and_then(|h| hex::decode(h).ok()).unwrap_or_else(|| text.as_bytes().to_vec())
}

/// Split raw bytes into a display string and, when not UTF-8, their hex form.
pub fn text_and_raw(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), Some(hex::encode(bytes))),
    }
}

/// A directory: its entries sorted by name bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("trees always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("tree blob is not valid: {e}")))
    }

    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes.binary_search_by(|n| n.name_bytes().as_slice().cmp(name)).ok().map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MemSink(RefCell<HashMap<BlobId, Vec<u8>>>);
    impl MetaSink for MemSink {
        fn save_meta(&self, bytes: Vec<u8>) -> Result<BlobId> {
            let id = BlobId(*blake3::hash(&bytes).as_bytes());
            self.0.borrow_mut().insert(id, bytes);
            Ok(id)
        }
    }

    fn leaves(content: &Content, sink: &MemSink) -> Vec<ContentEntry> {
        fn walk(depth: u8, entries: &[ContentEntry], sink: &MemSink, out: &mut Vec<ContentEntry>) {
            for e in entries {
                if depth == 0 {
                    out.push(*e);
                } else {
                    let (d, children) = decode_node(&sink.0.borrow()[&e.0]).unwrap();
                    assert_eq!(d, depth - 1);
                    assert_eq!(children.iter().map(|c| c.1).sum::<u64>(), e.1);
                    walk(d, &children, sink, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(content.depth, &content.entries, sink, &mut out);
        out
    }

    #[test]
    fn builder_preserves_order_at_every_size() {
        for n in [0, 1, FANOUT - 1, FANOUT, FANOUT + 1, 3 * FANOUT + 7, FANOUT * FANOUT + 5] {
            let sink = MemSink::default();
            let mut b = ContentBuilder::new();
            let input: Vec<ContentEntry> = (0..n as u64)
                .map(|i| ContentEntry(BlobId(*blake3::hash(&i.to_le_bytes()).as_bytes()), i % 7 + 1))
                .collect();
            for e in &input {
                b.push(e.0, e.1, &sink).unwrap();
            }
            let content = b.finish(&sink).unwrap();
            assert!(content.entries.len() <= FANOUT, "n={n}");
            assert_eq!(content.size, input.iter().map(|e| e.1).sum::<u64>());
            assert_eq!(leaves(&content, &sink), input, "n={n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = decode_node(&bytes);
            if let Ok(tree) = Tree::decode(&bytes) {
                for node in &tree.nodes {
                    let _ = (node.name_bytes(), node.target_bytes());
                }
            }
            let _ = serde_json::from_slice::<SnapshotFile>(&bytes);
        }
    }

    #[test]
    fn node_round_trip_and_garbage() {
        let entries = vec![ContentEntry(BlobId([1; 32]), 5), ContentEntry(BlobId([2; 32]), 9)];
        assert_eq!(decode_node(&encode_node(3, &entries)).unwrap(), (3, entries));
        assert!(decode_node(b"CSN1\x00\xff\xff\xff\xff").is_err());
        assert!(decode_node(b"").is_err());
    }

    fn dir(name: &str) -> Node {
        Node { name: name.into(), kind: NodeKind::Dir, content: None, ..file(name) }
    }

    fn file(name: &str) -> Node {
        Node {
            name: name.into(),
            name_raw: None,
            kind: NodeKind::File,
            mode: 0o644,
            uid: 1,
            gid: 1,
            mtime: 5,
            ctime: 6,
            inode: 7,
            size: 0,
            content: Some(Content::default()),
            subtree: None,
            tree: None,
            target: None,
            target_raw: None,
            rdev: None,
        }
    }

    #[test]
    fn small_trees_are_inlined_and_large_ones_stored() {
        let sink = MemSink::default();
        let small = Tree { nodes: vec![file("a")] };
        let mut node = dir("small");
        node.set_tree(small.clone(), &sink).unwrap();
        assert_eq!((node.tree.as_ref(), node.subtree), (Some(&small), None));
        assert!(sink.0.borrow().is_empty());

        let names: Vec<String> = (0..20).map(|i| format!("file-{i:02}")).collect();
        let large = Tree { nodes: names.iter().map(|n| file(n)).collect() };
        assert!(large.encode().len() > INLINE_TREE_MAX);
        let mut node = dir("large");
        node.set_tree(large.clone(), &sink).unwrap();
        assert_eq!(node.tree, None);
        assert_eq!(sink.0.borrow()[&node.subtree.unwrap()], large.encode());

        // An inline tree is part of its parent's bytes and decodes back, nested.
        let mut outer = dir("outer");
        outer
            .set_tree(
                Tree {
                    nodes: vec![node.clone(), {
                        let mut d = dir("d");
                        d.set_tree(small.clone(), &sink).unwrap();
                        d
                    }],
                },
                &sink,
            )
            .unwrap();
        let parent = Tree { nodes: vec![outer] };
        assert_eq!(Tree::decode(&parent.encode()).unwrap(), parent);
        assert!(parent.nodes[0].tree.as_ref().unwrap().nodes[1].has_tree());
    }

    #[test]
    fn deeply_nested_inline_trees_are_refused_not_overflowed() {
        let mut json = String::new();
        for _ in 0..10_000 {
            json.push_str(r#"{"nodes":[{"name":"d","type":"dir","mode":0,"uid":0,"gid":0,"mtime":0,"tree":"#);
        }
        assert!(Tree::decode(json.as_bytes()).is_err());
    }

    #[test]
    fn tree_encoding_is_deterministic() {
        let tree = Tree { nodes: vec![file("a")] };
        assert_eq!(tree.encode(), tree.clone().encode());
        assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
        let (text, raw) = text_and_raw(b"caf\xe9");
        assert_eq!(raw_or(&text, &raw), b"caf\xe9");
    }
}
