//! A tar stream stored as a file tree: each member becomes a node (regular files chunked
//! and deduplicated like any file), so successive archives of a changing tree share
//! everything unchanged. Used by `backup pg-base` (pg_basebackup's tar output).

use super::sparse::Sparse;
use crate::chunker::{Chunker, ChunkerParams};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{text_and_raw, Content, ContentBuilder, MetaSink, Node, NodeKind, SnapshotStats, Tree};
use crate::id::BlobId;
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::saver::Saver;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

/// The most bytes of holes a sparse member may declare (1 TiB).
const MAX_HOLES: u64 = 1 << 40;

/// A PAX `mtime` record (`seconds[.fraction]`) in nanoseconds.
fn pax_mtime(pax: &[(Vec<u8>, Vec<u8>)]) -> Option<i64> {
    let value = std::str::from_utf8(&pax.iter().rev().find(|(k, _)| k == b"mtime")?.1).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    let nanos = if secs < 0 { -nanos } else { nanos };
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

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
        tree: None,
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

    /// This directory's tree, its subdirectories' stored (or inlined) first.
    fn tree(self, sink: &dyn MetaSink) -> Result<Tree> {
        let mut nodes = Vec::with_capacity(self.entries.len());
        for (_, entry) in self.entries {
            nodes.push(match entry {
                Entry::Leaf(n) => n,
                Entry::Dir(d) => {
                    let mut n = d.node.clone();
                    n.set_tree(d.tree(sink)?, sink)?;
                    n
                }
            });
        }
        Ok(Tree { nodes })
    }
}

/// What importing a tar stream produced.
pub struct Imported {
    pub root: BlobId,
    /// The contents of the members asked for by path, when present.
    pub captured: HashMap<String, Vec<u8>>,
    /// With [`ImportOptions::record_members`]: the member records in archive order
    /// (see [`MemberRecord`]), so the archive can be written back member for member.
    pub members: Vec<u8>,
    /// Members that were not stored (names that climb out with `..`).
    pub warnings: Vec<String>,
    /// Where the last member's data ends in the tar, padded to 512 bytes.
    pub end_of_last: u64,
    /// The archive's top directory (`./`), when it has a member of its own.
    pub top: Node,
}

/// How to import a tar stream.
#[derive(Default)]
pub struct ImportOptions<'a> {
    /// Members (paths as in the archive, e.g. `backup_label`) to also return whole.
    pub capture: &'a [&'a str],
    /// Keep each member's name, hard-link target and owner names in archive order.
    pub record_members: bool,
    /// Skip members whose names climb out with `..` (with a warning) instead of failing.
    pub skip_unsafe: bool,
}

/// One member as the archive named it: written back by `restore --tar` in archive order.
///
/// Encoding, repeated for every member: `type u8 | name | 0 | link | 0 | uname | 0 | gname | 0`
/// where `type` is the tar type flag, `name` the member's path bytes exactly as archived
/// and `link` the hard-link target (empty for anything but hard links). Everything else
/// (mode, owner ids, mtime, size, content, symlink target) comes from the tree node at the
/// normalised path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub kind: u8,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
}

impl MemberRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        for field in [&self.name, &self.link, &self.uname, &self.gname] {
            out.extend(field.iter().filter(|b| **b != 0));
            out.push(0);
        }
    }

    /// Decode every record of a member list.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<MemberRecord>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some((&kind, tail)) = rest.split_first() {
            let mut fields = Vec::with_capacity(4);
            rest = tail;
            for _ in 0..4 {
                let end = rest.iter().position(|b| *b == 0).ok_or_else(|| {
                    Error::corrupt(format!("tar member list is truncated at byte {}", bytes.len() - rest.len()))
                })?;
                fields.push(rest[..end].to_vec());
                rest = &rest[end + 1..];
            }
            let gname = fields.pop().unwrap();
            let uname = fields.pop().unwrap();
            let link = fields.pop().unwrap();
            let name = fields.pop().unwrap();
            out.push(MemberRecord { kind, name, link, uname, gname });
        }
        Ok(out)
    }
}

/// A member name split into the path it is stored under: `.` parts and leading slashes
/// dropped. `None` if it climbs out with `..`.
pub fn normalise(name: &[u8]) -> Option<Vec<Vec<u8>>> {
    let parts: Vec<Vec<u8>> =
        name.split(|b| *b == b'/').filter(|p| !p.is_empty() && *p != b".").map(<[u8]>::to_vec).collect();
    if parts.iter().any(|p| p == b"..") {
        None
    } else {
        Some(parts)
    }
}

/// Counts the bytes read through it, for error messages that name an offset.
struct Counted<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// The compression a stream's first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// Store a tar stream, plain or compressed with gzip or zstd (detected from its first
/// bytes), as a tree. A stream that ends early or is corrupt fails with the byte offset
/// where reading stopped, in the tar and (when compressed) in the input.
pub fn import_any(
    saver: &Saver,
    reader: impl Read,
    params: ChunkerParams,
    options: &ImportOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
    stats: &mut SnapshotStats,
) -> Result<(Imported, Compression)> {
    use std::io::BufRead;
    let raw_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut input = std::io::BufReader::with_capacity(1 << 16, Counted { inner: reader, count: raw_count.clone() });
    let head = input.fill_buf().map_err(|e| Error::source(format!("cannot read the tar stream: {e}")))?;
    if head.is_empty() {
        return Err(Error::source("the tar stream is empty: expected a tar archive (plain, gzip or zstd)"));
    }
    let compression = Compression::detect(head);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| Error::source(format!("cannot start zstd decoding: {e}")))?,
        ),
    };
    let tar_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Counted { inner: decoded, count: tar_count.clone() };
    let located = |e: Error| -> Error {
        if e.kind() != ErrorKind::Source {
            return e;
        }
        let at = tar_count.load(std::sync::atomic::Ordering::Relaxed);
        let raw = raw_count.load(std::sync::atomic::Ordering::Relaxed);
        let place = match compression {
            Compression::None => format!("at byte {at}"),
            c => format!("at byte {at} of the tar (byte {raw} of the {} input)", c.name()),
        };
        Error::source(format!("{} {place}; no snapshot was written", e.message()))
    };
    let imported = import(saver, counted, params, options, cancel, progress, stats).map_err(located)?;
    // A tar ends with zero blocks after its last member; without them it was cut off
    // exactly at a member boundary.
    if tar_count.load(std::sync::atomic::Ordering::Relaxed) < imported.end_of_last + 512 {
        return Err(located(Error::source("the tar stream ends without its end-of-archive blocks (truncated)")));
    }
    Ok((imported, compression))
}

/// Store a tar stream's members as a tree.
pub fn import(
    saver: &Saver,
    reader: impl Read,
    params: ChunkerParams,
    options: &ImportOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
    stats: &mut SnapshotStats,
) -> Result<Imported> {
    let mut root = implied_dir(b"");
    let mut captured = HashMap::new();
    let mut members = Vec::new();
    let mut warnings = Vec::new();
    let mut files: HashMap<Vec<Vec<u8>>, Node> = HashMap::new();
    let mut archive = tar::Archive::new(reader);
    let bad = |e: std::io::Error| {
        // The tar crate quotes the bytes it could not parse: never print them (garbage
        // input would fill the terminal with noise); keep the message one short line.
        let raw = e.to_string();
        let text = if raw.chars().any(|c| !(c.is_ascii_graphic() || c == ' ')) {
            "a header does not parse: this is not a tar archive, or it is damaged".to_string()
        } else {
            raw
        };
        let text = match text.char_indices().nth(100) {
            Some((cut, _)) => format!("{}...", &text[..cut]),
            None => text,
        };
        Error::new(ErrorKind::Source, format!("the tar stream is truncated or corrupt: {text}"))
    };
    // Where the last member's data (padded to 512 bytes) ends: an archive must go on past
    // it with its end-of-archive blocks, or it was cut off at a member boundary.
    let mut end_of_last = 0u64;
    // One chunker for every member, so its buffer is mapped and zeroed once.
    let mut spare: Option<Chunker<std::io::Empty>> = None;
    for entry in archive.entries().map_err(bad)? {
        cancel.check()?;
        let mut entry = entry.map_err(bad)?;
        let header = entry.header().clone();
        // The bytes the member stores (a GNU sparse member's size is its expanded one).
        let stored = header.entry_size().unwrap_or(entry.size());
        end_of_last = entry.raw_file_position() + stored.div_ceil(512) * 512;
        let pax: Vec<(Vec<u8>, Vec<u8>)> = match entry.pax_extensions().map_err(bad)? {
            Some(records) => records
                .map(|r| r.map(|r| (r.key_bytes().to_vec(), r.value_bytes().to_vec())))
                .collect::<std::io::Result<_>>()
                .map_err(bad)?,
            None => Vec::new(),
        };
        let sparse = Sparse::from_pax(&pax).map_err(bad)?;
        let path_bytes = match sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        if path_bytes.is_empty() {
            return Err(Error::source(format!(
                "the tar member whose header is at byte {} has an empty name",
                entry.raw_header_position()
            )));
        }
        let Some(parts) = normalise(&path_bytes) else {
            let message = format!(
                "tar member {:?} climbs out of the archive with '..'; not stored",
                String::from_utf8_lossy(&path_bytes)
            );
            if options.skip_unsafe {
                warnings.push(message);
                continue;
            }
            return Err(Error::source(message));
        };
        let mode = header.mode().unwrap_or(0o600) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        // A PAX mtime keeps its fraction of a second.
        let mtime = pax_mtime(&pax).unwrap_or(header.mtime().unwrap_or(0) as i64 * 1_000_000_000);
        // A sparse member, in any format, is recorded as type `S`: `restore --tar` writes
        // it back sparse.
        let kind = if sparse.is_some() { b'S' } else { header.as_bytes()[156] };
        let record = |link: Vec<u8>| MemberRecord {
            kind,
            name: path_bytes.clone(),
            link,
            uname: header.username_bytes().unwrap_or_default().to_vec(),
            gname: header.groupname_bytes().unwrap_or_default().to_vec(),
        };
        let Some((name, parents)) = parts.split_last() else {
            // The archive's top directory itself (`./`): its metadata is the root's.
            if header.entry_type() != tar::EntryType::Directory {
                return Err(Error::source(format!(
                    "the tar member {:?} (header at byte {}) names the archive's top directory but is not a directory",
                    String::from_utf8_lossy(&path_bytes),
                    entry.raw_header_position()
                )));
            }
            root.node = node(b"", NodeKind::Dir, mode, uid, gid, mtime);
            if options.record_members {
                record(Vec::new()).encode(&mut members);
            }
            continue;
        };
        let kind = header.entry_type();
        let mut link = Vec::new();
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
                link = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let linked = normalise(&link).and_then(|p| files.get(&p)).ok_or_else(|| {
                    Error::source(format!(
                        "tar member {:?} is a hard link to {:?}, which is not earlier in the archive",
                        String::from_utf8_lossy(&path_bytes),
                        String::from_utf8_lossy(&link)
                    ))
                })?;
                let mut n = linked.clone();
                let (text, raw) = text_and_raw(name);
                (n.name, n.name_raw) = (text, raw);
                n
            }
            t if t.is_file() || t.is_gnu_sparse() || t.is_contiguous() => {
                let size = sparse.as_ref().map_or(entry.size(), |s| s.size);
                // Holes are read as zeros and chunked: a 10 KB member declaring exabytes
                // of them must not keep a backup busy for ever.
                if size.saturating_sub(stored) > MAX_HOLES {
                    return Err(Error::source(format!(
                        "tar member {:?} (header at byte {}) is a sparse file of {size} bytes holding {stored}: \
                         more than 1 TiB of holes, which cairn does not store",
                        String::from_utf8_lossy(&path_bytes),
                        entry.raw_header_position()
                    )));
                }
                let mut expanded;
                let mut plain;
                let data: &mut dyn Read = match &sparse {
                    Some(s) => {
                        expanded = s.expand(&mut entry, stored).map_err(bad)?;
                        &mut expanded
                    }
                    None => {
                        plain = &mut entry;
                        &mut plain
                    }
                };
                let wanted = options.capture.iter().any(|c| c.as_bytes() == path_bytes.as_slice());
                let mut kept = Vec::new();
                let mut builder = ContentBuilder::new();
                let mut chunker = match spare.take() {
                    Some(chunker) => chunker.reset(data, size),
                    None => Chunker::with_size_hint(data, params, size),
                };
                for chunk in chunker.by_ref() {
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
                spare = Some(chunker.reset(std::io::empty(), 0));
                let content: Content = builder.finish(saver)?;
                if content.size != size {
                    return Err(Error::source(format!(
                        "the tar stream is truncated: member {:?} has {} of its {size} bytes",
                        String::from_utf8_lossy(&path_bytes),
                        content.size
                    )));
                }
                if wanted {
                    captured.insert(String::from_utf8_lossy(&path_bytes).into_owned(), kept);
                }
                stats.files += 1;
                stats.size += content.size;
                let mut n = node(name, NodeKind::File, mode, uid, gid, mtime);
                n.size = content.size;
                n.content = Some(content);
                n
            }
            other => {
                let kind = match other {
                    tar::EntryType::Fifo => NodeKind::Fifo,
                    tar::EntryType::Char => NodeKind::Chardev,
                    tar::EntryType::Block => NodeKind::Blockdev,
                    _ => continue,
                };
                let mut n = node(name, kind, mode, uid, gid, mtime);
                if let (Ok(Some(major)), Ok(Some(minor))) = (header.device_major(), header.device_minor()) {
                    n.rdev = Some(libc::makedev(major, minor));
                }
                n
            }
        };
        if options.record_members {
            record(link).encode(&mut members);
        }
        // What a later hard link may name: any member but a directory (a link to a
        // symlink is a second symlink).
        if n.kind != NodeKind::Dir {
            files.insert(parts.clone(), n.clone());
        }
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
            n.tree = None;
            dir.entries.insert(name.clone(), Entry::Leaf(n));
        }
    }
    // Read to the end: the end-of-archive blocks, and a compressed stream's trailer (where
    // gzip keeps its checksum).
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(bad)?;
    let top = root.node.clone();
    Ok(Imported { root: saver.save_meta(root.tree(saver)?.encode())?, captured, members, warnings, end_of_last, top })
}
