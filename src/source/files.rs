//! File trees: walk with walkdir, store each directory as a tree blob.
//!
//! The snapshot's root tree mirrors the absolute paths given (`/etc/app` is stored as
//! `etc/app`), as restic does, so several paths share one root and restore to the same
//! layout. A regular file whose size, mtime, ctime and inode equal those recorded in the
//! newest snapshot of the same name is not read again: its content list is reused. A file
//! or directory that vanishes or cannot be read is a warning, and the snapshot is still
//! written without it (exit code 3 in the CLI).

use super::glob::Glob;
use crate::chunker::Chunker;
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{text_and_raw, Content, ContentBuilder, MetaSink, Node, NodeKind, SnapshotStats, Tree};
use crate::id::BlobId;
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::saver::Saver;
use crate::repo::Repository;
use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use walkdir::WalkDir;

#[derive(Debug, Clone, Default)]
pub struct FilesOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    /// Paths never backed up (the local repository and the cache themselves).
    pub skip: Vec<PathBuf>,
    /// A file or directory that is gone by the time it is read is left out without a
    /// warning (a live PostgreSQL data directory drops files all the time).
    pub vanished_ok: bool,
}

/// A directory on the way to a backed-up path, filled in from the real directory.
#[derive(Default)]
struct VirtualDir {
    children: BTreeMap<Vec<u8>, Entry>,
}

enum Entry {
    Node(Box<Node>),
    Dir(VirtualDir),
}

struct Frame {
    node: Node,
    nodes: Vec<Node>,
    previous: Option<Tree>,
}

pub struct Walker<'a> {
    repo: &'a Repository,
    saver: &'a Saver,
    handle: &'a tokio::runtime::Handle,
    options: &'a FilesOptions,
    excludes: Vec<Glob>,
    cancel: &'a Cancel,
    progress: &'a dyn Progress,
    stats: &'a mut SnapshotStats,
    warnings: &'a mut Vec<String>,
    /// The chunker of the last file read, kept for its buffer.
    spare: Option<Chunker<std::io::Empty>>,
    /// Keep the walked directory's own tree in its node, unsaved ([`Walker::run_dir`]).
    top_unsaved: bool,
}

impl<'a> Walker<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        repo: &'a Repository,
        saver: &'a Saver,
        handle: &'a tokio::runtime::Handle,
        options: &'a FilesOptions,
        cancel: &'a Cancel,
        progress: &'a dyn Progress,
        stats: &'a mut SnapshotStats,
        warnings: &'a mut Vec<String>,
    ) -> Self {
        let excludes = options.excludes.iter().map(|p| Glob::new(p)).collect();
        Walker {
            repo,
            saver,
            handle,
            options,
            excludes,
            cancel,
            progress,
            stats,
            warnings,
            spare: None,
            top_unsaved: false,
        }
    }

    /// Walk every path; returns the root tree.
    pub fn run(&mut self, parent_root: Option<BlobId>) -> Result<BlobId> {
        let mut root = VirtualDir::default();
        let mut whole_root = None;
        for path in &self.options.paths {
            let path = std::path::absolute(path).map_err(|e| Error::io("resolve", path, e))?;
            std::fs::symlink_metadata(&path).map_err(|e| Error::io("back up", &path, e))?;
            let components = components(&path);
            let previous = match components.is_empty() {
                // `/` itself: its previous state is the parent snapshot's root.
                true => parent_root.map(dir_with_subtree),
                false => self.previous_node(parent_root, &components),
            };
            if let Some(node) = self.walk_one(&path, previous)? {
                if components.is_empty() {
                    // `/` contains every other path given: its tree is the snapshot's root.
                    whole_root = Some(node);
                } else {
                    insert(&mut root, &components, node);
                }
            }
        }
        // The root is always a blob of its own: the snapshot names it.
        let tree = match whole_root {
            Some(mut node) => match node.tree.take() {
                Some(tree) => tree,
                None => return node.subtree.ok_or_else(|| Error::corrupt("the backed-up root has no tree")),
            },
            None => self.virtual_tree(Path::new("/"), root)?,
        };
        self.saver.save_meta(tree.encode())
    }

    fn warn(&mut self, path: &Path, err: impl std::fmt::Display) {
        self.warnings.push(format!("{}: {err}", path.display()));
    }

    fn load_tree(&mut self, id: BlobId) -> Option<Tree> {
        // A parent that cannot be read only costs re-reading files; it is not an error here.
        self.handle.block_on(self.repo.load_tree(&id)).ok()
    }

    /// The node recorded for `components` in the parent snapshot.
    fn previous_node(&mut self, root: Option<BlobId>, components: &[Vec<u8>]) -> Option<Node> {
        let mut tree = self.load_tree(root?)?;
        for (i, name) in components.iter().enumerate() {
            let node = tree.find(name)?.clone();
            if i + 1 == components.len() {
                return Some(node);
            }
            tree = self.previous_tree(node)?;
        }
        None
    }

    /// The tree of a directory as the parent snapshot recorded it.
    fn previous_tree(&mut self, mut node: Node) -> Option<Tree> {
        // As in `load_tree`: one that cannot be read only costs re-reading files.
        let name = std::mem::take(&mut node.name);
        self.handle.block_on(self.repo.dir_tree(&mut node, &name)).ok()
    }

    /// Gone, and allowed to be ([`FilesOptions::vanished_ok`]).
    fn vanished(&self, path: &Path) -> bool {
        self.options.vanished_ok
            && std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// Walk one directory and return its tree as a root of its own, with the files
    /// `extra` makes once the walk is done added to it (a base backup's label, which is
    /// not in the data directory and is known only when the backup stops).
    pub fn run_dir(&mut self, dir: &Path, extra: impl FnOnce(&Saver) -> Result<Vec<Node>>) -> Result<BlobId> {
        self.top_unsaved = true;
        let walked = self.walk_one(dir, None);
        self.top_unsaved = false;
        let mut tree = walked?
            .filter(|n| n.kind == NodeKind::Dir)
            .and_then(|mut n| n.tree.take())
            .ok_or_else(|| Error::source(format!("{} is not a directory", dir.display())))?;
        for node in extra(self.saver)? {
            tree.nodes.retain(|n| n.name_bytes() != node.name_bytes());
            tree.nodes.push(node);
        }
        tree.nodes.sort_by_key(Node::name_bytes);
        self.saver.save_meta(tree.encode())
    }

    fn excluded(&self, path: &Path) -> bool {
        let bytes = path.as_os_str().as_bytes();
        self.options.skip.iter().any(|s| s == path) || self.excludes.iter().any(|g| g.matches(bytes))
    }

    fn walk_one(&mut self, top: &Path, previous: Option<Node>) -> Result<Option<Node>> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut result = None;
        let mut entries =
            WalkDir::new(top).follow_links(false).sort_by(|a, b| a.file_name().cmp(b.file_name())).into_iter();
        while let Some(entry) = entries.next() {
            self.cancel.check()?;
            let entry = match entry {
                Ok(e) => e,
                Err(err) => {
                    let path = err.path().unwrap_or(top).to_path_buf();
                    if !self.vanished(&path) {
                        self.warn(&path, err);
                    }
                    continue;
                }
            };
            self.close_frames(&mut stack, entry.depth(), &mut result)?;
            let is_dir = entry.file_type().is_dir();
            if self.excluded(entry.path()) {
                if is_dir {
                    entries.skip_current_dir();
                }
                continue;
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(err) => {
                    if !self.vanished(entry.path()) {
                        self.warn(entry.path(), err);
                    }
                    if is_dir {
                        entries.skip_current_dir();
                    }
                    continue;
                }
            };
            let name = entry.path().file_name().map_or(&b""[..], |n| n.as_bytes()).to_vec();
            let previous = match stack.last() {
                None => previous.clone(),
                Some(frame) => frame.previous.as_ref().and_then(|t| t.find(&name)).cloned(),
            };
            let mut node = node_from_metadata(&name, &meta);
            match node.kind {
                NodeKind::Dir => {
                    let previous = previous.and_then(|p| self.previous_tree(p));
                    stack.push(Frame { node, nodes: Vec::new(), previous });
                    continue;
                }
                NodeKind::File => match self.file_content(entry.path(), &meta, previous.as_ref()) {
                    Ok(content) => {
                        node.size = content.size;
                        node.content = Some(content);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::Source | ErrorKind::Io | ErrorKind::NotFound) => {
                        if !self.vanished(entry.path()) {
                            self.warnings.push(e.to_string());
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                NodeKind::Symlink => match std::fs::read_link(entry.path()) {
                    Ok(target) => {
                        let (text, raw) = text_and_raw(target.as_os_str().as_bytes());
                        node.target = Some(text);
                        node.target_raw = raw;
                    }
                    Err(err) => {
                        self.warn(entry.path(), err);
                        continue;
                    }
                },
                _ => {}
            }
            place(&mut stack, node, &mut result);
        }
        self.close_frames(&mut stack, 0, &mut result)?;
        Ok(result)
    }

    /// Finish every open directory deeper than `depth`, innermost first.
    fn close_frames(&mut self, stack: &mut Vec<Frame>, depth: usize, result: &mut Option<Node>) -> Result<()> {
        while stack.len() > depth {
            let mut frame = stack.pop().unwrap();
            frame.nodes.sort_by_key(Node::name_bytes);
            if stack.is_empty() && self.top_unsaved {
                frame.node.tree = Some(Tree { nodes: frame.nodes });
            } else {
                frame.node.set_tree(Tree { nodes: frame.nodes }, self.saver)?;
            }
            self.stats.dirs += 1;
            place(stack, frame.node, result);
        }
        Ok(())
    }

    /// The content of one regular file; counted in the stats only once it was stored.
    fn file_content(&mut self, path: &Path, meta: &Metadata, previous: Option<&Node>) -> Result<Content> {
        if let Some(content) = previous.filter(|p| unchanged(p, meta)).and_then(|p| p.content.as_ref()) {
            // Reused unless a removal marked a pack holding some of it: then read it again.
            let ids: Vec<BlobId> = content.entries.iter().map(|e| e.0).collect();
            if self.saver.reuse(&ids, content.depth)? {
                self.stats.files += 1;
                self.stats.unchanged_files += 1;
                self.stats.size += content.size;
                self.progress.advance(content.size);
                return Ok(content.clone());
            }
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io("read", path, e).with_kind(ErrorKind::Source))?;
        let mut builder = ContentBuilder::new();
        let mut chunker = match self.spare.take() {
            Some(spare) => spare.reset(file, meta.len()),
            None => Chunker::with_size_hint(file, self.repo.config().chunker, meta.len()),
        };
        while let Some(chunk) = chunker.next_chunk().transpose() {
            self.cancel.check()?;
            let chunk = chunk.map_err(|e| Error::io("read", path, e).with_kind(ErrorKind::Source))?;
            let len = chunk.len() as u64;
            let id = self.saver.save_chunk(chunk)?;
            builder.push(id, len, self.saver)?;
            self.progress.advance(len);
        }
        self.spare = Some(chunker.reset(std::io::empty(), 0));
        let content = builder.finish(self.saver)?;
        self.stats.files += 1;
        self.stats.size += content.size;
        Ok(content)
    }

    /// The tree of a virtual directory, its subdirectories' metadata taken from the real
    /// directories under `path`.
    fn virtual_tree(&mut self, path: &Path, dir: VirtualDir) -> Result<Tree> {
        let mut nodes = Vec::with_capacity(dir.children.len());
        for (name, entry) in dir.children {
            match entry {
                Entry::Node(node) => nodes.push(*node),
                Entry::Dir(sub) => {
                    let sub_path = path.join(std::ffi::OsStr::from_bytes(&name));
                    let meta = std::fs::symlink_metadata(&sub_path).map_err(|e| Error::io("read", &sub_path, e))?;
                    let mut node = node_from_metadata(&name, &meta);
                    node.set_tree(self.virtual_tree(&sub_path, sub)?, self.saver)?;
                    nodes.push(node);
                }
            }
        }
        Ok(Tree { nodes })
    }
}

/// A directory node standing for a stored tree (only its subtree is consulted).
fn dir_with_subtree(subtree: BlobId) -> Node {
    Node {
        name: String::new(),
        name_raw: None,
        kind: NodeKind::Dir,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        ctime: 0,
        inode: 0,
        size: 0,
        content: None,
        subtree: Some(subtree),
        tree: None,
        target: None,
        target_raw: None,
        rdev: None,
    }
}

fn place(stack: &mut [Frame], node: Node, result: &mut Option<Node>) {
    match stack.last_mut() {
        Some(frame) => frame.nodes.push(node),
        None => *result = Some(node),
    }
}

fn components(path: &Path) -> Vec<Vec<u8>> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

fn insert(root: &mut VirtualDir, components: &[Vec<u8>], node: Node) {
    let Some((last, parents)) = components.split_last() else {
        // The path is `/` itself: its children become the root's.
        return;
    };
    let mut dir = root;
    for name in parents {
        let entry = dir.children.entry(name.clone()).or_insert_with(|| Entry::Dir(VirtualDir::default()));
        match entry {
            Entry::Dir(d) => dir = d,
            // An ancestor was itself backed up and already contains this path.
            Entry::Node(_) => return,
        }
    }
    dir.children.insert(last.clone(), Entry::Node(Box::new(node)));
}

fn unchanged(prev: &Node, meta: &Metadata) -> bool {
    prev.kind == NodeKind::File
        && prev.size == meta.len()
        && prev.mtime == mtime_ns(meta)
        && prev.ctime == ctime_ns(meta)
        && prev.inode == meta.ino()
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

fn ctime_ns(meta: &Metadata) -> i64 {
    meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec())
}

pub fn node_from_metadata(name: &[u8], meta: &Metadata) -> Node {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else if ft.is_socket() {
        NodeKind::Socket
    } else if ft.is_char_device() {
        NodeKind::Chardev
    } else {
        NodeKind::Blockdev
    };
    let (text, raw) = text_and_raw(name);
    Node {
        name: text,
        name_raw: raw,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: mtime_ns(meta),
        ctime: ctime_ns(meta),
        inode: meta.ino(),
        size: 0,
        content: None,
        subtree: None,
        tree: None,
        target: None,
        target_raw: None,
        rdev: matches!(kind, NodeKind::Chardev | NodeKind::Blockdev).then(|| meta.rdev()),
    }
}
