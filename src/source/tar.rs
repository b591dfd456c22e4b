//! A tar stream stored as a file tree: each member becomes a node (regular files chunked
//! and deduplicated like any file), so successive archives of a changing tree share
//! everything unchanged. Used by `backup pg-base` (pg_basebackup's tar output).

use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, ErrorKind, Result};
use crate::id::BlobId;
use crate::ops::Cancel;
use crate::progress::Progress;
use crate::repo::saver::Saver;
use crate::snapshot::{text_and_raw, Content, ContentBuilder, MetaSink, Node, NodeKind, SnapshotStats, Tree};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

/// A directory being assembled: its own node and its entries by name bytes.
struct Dir {
    node: Node,
    entries: BTreeMap<Vec<u8>, Entry>,
}

enum Entry {
    Dir(Dir),
    Leaf(Node),
}

fn node(name: &[u8], kind: NodeKind, mode: u32, uid: u32, gid: u32, mtime: i64) -> Node {
    let (name, name_raw) = text_and_raw(name);
    Node {
        name,
        name_raw,
        kind,
        mode,
        uid,
        gid,
        mtime,
        ctime: 0,
        inode: 0,
        size: 0,
        content: None,
        subtree: None,
        target: None,
        target_raw: None,
        rdev: None,
    }
}

/// A directory a member implies before (or without) its own entry.
fn implied_dir(name: &[u8]) -> Dir {
    Dir { node: node(name, NodeKind::Dir, 0o700, 0, 0, 0), entries: BTreeMap::new() }
}

impl Dir {
    /// The directory at `path`, created (as implied) along the way.
    fn dir_at(&mut self, path: &[Vec<u8>]) -> Result<&mut Dir> {
        let mut dir = self;
        for part in path {
            let entry = dir.entries.entry(part.clone()).or_insert_with(|| Entry::Dir(implied_dir(part)));
            dir = match entry {
                Entry::Dir(d) => d,
                Entry::Leaf(_) => {
                    return Err(Error::source(format!(
                        "tar member path goes through {:?}, which is not a directory",
                        String::from_utf8_lossy(part)
                    )))
                }
            };
        }
        Ok(dir)
    }

    /// Save this directory's tree (children first); returns its id.
    fn save(self, sink: &dyn MetaSink) -> Result<BlobId> {
        let mut nodes = Vec::with_capacity(self.entries.len());
        for (_, entry) in self.entries {
            nodes.push(match entry {
                Entry::Leaf(n) => n,
                Entry::Dir(d) => {
                    let mut n = d.node.clone();
                    n.subtree = Some(d.save(sink)?);
                    n
                }
            });
        }
        sink.save_meta(Tree { nodes }.encode())
    }
}

/// What importing a tar stream produced.
pub struct Imported {
    pub root: BlobId,
    /// The contents of the members asked for by path, when present.
    pub captured: HashMap<String, Vec<u8>>,
}

/// Store a tar stream's members as a tree. Members named in `capture` (paths as in the
/// archive, e.g. `backup_label`) are also returned whole (they must be small).
pub fn import(
    saver: &Saver,
    reader: impl Read,
    params: ChunkerParams,
    capture: &[&str],
    cancel: &Cancel,
    progress: &dyn Progress,
    stats: &mut SnapshotStats,
) -> Result<Imported> {
    let mut root = implied_dir(b"");
    let mut captured = HashMap::new();
    let mut files: HashMap<Vec<u8>, Node> = HashMap::new();
    let mut archive = tar::Archive::new(reader);
    let bad = |e: std::io::Error| Error::new(ErrorKind::Source, format!("cannot read the tar stream: {e}"));
    for entry in archive.entries().map_err(bad)? {
        cancel.check()?;
        let mut entry = entry.map_err(bad)?;
        let header = entry.header().clone();
        let path_bytes = entry.path_bytes().into_owned();
        let parts: Vec<Vec<u8>> =
            path_bytes.split(|b| *b == b'/').filter(|p| !p.is_empty() && *p != b".").map(<[u8]>::to_vec).collect();
        if parts.iter().any(|p| p == b"..") {
            return Err(Error::source(format!(
                "tar member {:?} climbs out of the archive with '..'",
                String::from_utf8_lossy(&path_bytes)
            )));
        }
        let Some((name, parents)) = parts.split_last() else { continue };
        let mode = header.mode().unwrap_or(0o600) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0) as i64 * 1_000_000_000;
        let kind = header.entry_type();
        let mut n = match kind {
            tar::EntryType::Directory => node(name, NodeKind::Dir, mode, uid, gid, mtime),
            tar::EntryType::Symlink => {
                let mut n = node(name, NodeKind::Symlink, mode, uid, gid, mtime);
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let (t, raw) = text_and_raw(&target);
                (n.target, n.target_raw) = (Some(t), raw);
                n
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let linked = files.get(target.as_slice()).ok_or_else(|| {
                    Error::source(format!(
                        "tar member {:?} is a hard link to {:?}, which is not earlier in the archive",
                        String::from_utf8_lossy(&path_bytes),
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                let mut n = linked.clone();
                let (text, raw) = text_and_raw(name);
                (n.name, n.name_raw) = (text, raw);
                n
            }
            t if t.is_file() => {
                let size = entry.size();
                let wanted = capture.iter().any(|c| c.as_bytes() == path_bytes.as_slice());
                let mut kept = Vec::new();
                let mut builder = ContentBuilder::new();
                for chunk in Chunker::with_size_hint(&mut entry, params, size) {
                    cancel.check()?;
                    let chunk = chunk.map_err(bad)?;
                    let len = chunk.len() as u64;
                    if wanted {
                        kept.extend_from_slice(&chunk);
                    }
                    let id = saver.save_chunk(chunk)?;
                    builder.push(id, len, saver)?;
                    progress.advance(len);
                }
                let content: Content = builder.finish(saver)?;
                if wanted {
                    captured.insert(String::from_utf8_lossy(&path_bytes).into_owned(), kept);
                }
                stats.files += 1;
                stats.size += content.size;
                let mut n = node(name, NodeKind::File, mode, uid, gid, mtime);
                n.size = content.size;
                n.content = Some(content);
                files.insert(path_bytes.clone(), n.clone());
                n
            }
            other => {
                // pg_basebackup writes none of these; keep them visible rather than drop them.
                let kind = match other {
                    tar::EntryType::Fifo => NodeKind::Fifo,
                    tar::EntryType::Char => NodeKind::Chardev,
                    tar::EntryType::Block => NodeKind::Blockdev,
                    _ => continue,
                };
                node(name, kind, mode, uid, gid, mtime)
            }
        };
        let dir = root.dir_at(parents)?;
        if n.kind == NodeKind::Dir {
            stats.dirs += 1;
            match dir.entries.remove(name) {
                Some(Entry::Dir(mut existing)) => {
                    existing.node = n;
                    dir.entries.insert(name.clone(), Entry::Dir(existing));
                }
                _ => {
                    dir.entries.insert(name.clone(), Entry::Dir(Dir { node: n, entries: BTreeMap::new() }));
                }
            }
        } else {
            n.subtree = None;
            dir.entries.insert(name.clone(), Entry::Leaf(n));
        }
    }
    Ok(Imported { root: root.save(saver)?, captured })
}
