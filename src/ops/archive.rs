//! Restoring `backup tar` snapshots: the archive written back member for member, in its
//! original order and under its original names, and safe extraction into a directory.
//!
//! A tar snapshot holds a tree (the members, deduplicated like files) and a stream of
//! member records ([`MemberRecord`]) in archive order. Writing the archive back walks the
//! records and takes each member's metadata and content from the tree node at its
//! normalised path; hard links become hard-link members again.

use super::restore::{
    consume_stream, includes, node_header, restore_stream, selected, tar_error, RestoreOptions, RestoreStats,
};
use crate::error::{Error, Result};
use crate::format::snapshot::{Content, Node, NodeKind, SnapshotFile, Tree};
use crate::repo::Repository;
use crate::source::tar::{normalise, MemberRecord};
use std::collections::HashMap;
use std::io::Write;

/// The trees of a snapshot by directory path, loaded as members need them.
struct Trees<'a> {
    repo: &'a Repository,
    loaded: HashMap<Vec<Vec<u8>>, Tree>,
}

impl Trees<'_> {
    async fn node(&mut self, parents: &[Vec<u8>], name: &[u8]) -> Result<Option<Node>> {
        for depth in 1..=parents.len() {
            let path = &parents[..depth];
            if self.loaded.contains_key(path) {
                continue;
            }
            let Some(mut dir) = self.find(&parents[..depth - 1], &parents[depth - 1]) else { return Ok(None) };
            if !dir.has_tree() {
                return Ok(None);
            }
            let name = dir.name.clone();
            let tree = self.repo.dir_tree(&mut dir, &name).await?;
            self.loaded.insert(path.to_vec(), tree);
        }
        Ok(self.find(parents, name))
    }

    /// Whether a directory on the way to a member is now something else: a later member
    /// of the same name replaced it (and what it held), as extracting would.
    async fn superseded(&mut self, parents: &[Vec<u8>]) -> Result<bool> {
        for depth in 1..=parents.len() {
            let found = self.node(&parents[..depth - 1], &parents[depth - 1]).await?;
            match found {
                Some(n) if n.kind != NodeKind::Dir => return Ok(true),
                Some(_) => continue,
                None => return Ok(false),
            }
        }
        Ok(false)
    }

    fn find(&self, parents: &[Vec<u8>], name: &[u8]) -> Option<Node> {
        let tree = self.loaded.get(parents)?;
        tree.nodes.iter().find(|n| n.name_bytes() == name).cloned()
    }
}

/// Append one entry whose name (and link name) are taken byte for byte, with GNU long-name
/// entries for names of 100 bytes or more. The tar crate's own helpers refuse absolute
/// names, which an archive may hold and `restore --tar` must give back.
fn append_raw<W: Write>(
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    name: &[u8],
    link: Option<&[u8]>,
    data: impl std::io::Read,
) -> std::io::Result<()> {
    let long = |builder: &mut tar::Builder<W>, kind: u8, value: &[u8]| -> std::io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..13].copy_from_slice(b"././@LongLink");
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::new(kind));
        let mut bytes = value.to_vec();
        bytes.push(0);
        h.set_size(bytes.len() as u64);
        h.set_cksum();
        builder.append(&h, &bytes[..])
    };
    if name.len() >= 100 {
        long(builder, b'L', name)?;
    }
    if let Some(link) = link.filter(|l| l.len() >= 100) {
        long(builder, b'K', link)?;
    }
    let bytes = header.as_mut_bytes();
    bytes[..100].fill(0);
    let n = name.len().min(100);
    bytes[..n].copy_from_slice(&name[..n]);
    if let Some(link) = link {
        bytes[157..257].fill(0);
        let n = link.len().min(100);
        bytes[157..157 + n].copy_from_slice(&link[..n]);
    }
    header.set_cksum();
    builder.append(header, data)
}

/// Tar's sparse granularity: data and holes are whole 512-byte blocks.
const SPARSE_BLOCK: u64 = 512;

/// Write a file that was a sparse member as one again, in GNU tar's PAX format 1.0
/// (src/source/sparse.rs): a PAX header naming it and its real size, then a member
/// `DIR/GNUSparseFile.0/NAME` whose data is the map (decimal lines padded to 512 bytes)
/// followed by the data blocks. One pass over the content finds the blocks that are not
/// all zeros; a second writes them.
async fn append_sparse<W: Write + Send>(
    repo: &Repository,
    builder: &mut tar::Builder<W>,
    header: &mut tar::Header,
    name: &[u8],
    node: &Node,
) -> Result<()> {
    let content = node.content.clone().unwrap_or_default();
    let mut segments: Vec<(u64, u64)> = Vec::new();
    consume_stream(repo, &content, |mut reader| {
        let mut block = vec![0u8; SPARSE_BLOCK as usize];
        let mut at = 0u64;
        loop {
            let n = read_block(&mut reader, &mut block).map_err(tar_error)?;
            if n == 0 {
                return Ok(());
            }
            if block[..n].iter().any(|&b| b != 0) {
                match segments.last_mut() {
                    Some((offset, length)) if *offset + *length == at => *length += n as u64,
                    _ => segments.push((at, n as u64)),
                }
            }
            at += n as u64;
        }
    })
    .await?;
    // GNU tar ends every map with the file's end, a zero-length segment where the file
    // ends in a hole.
    if segments.last().is_none_or(|(o, l)| o + l < node.size) {
        segments.push((node.size, 0));
    }
    let mut map = format!("{}\n", segments.len());
    for (offset, length) in &segments {
        map.push_str(&format!("{offset}\n{length}\n"));
    }
    let mut map = map.into_bytes();
    map.resize(map.len().next_multiple_of(SPARSE_BLOCK as usize), 0);
    let stored = map.len() as u64 + segments.iter().map(|(_, l)| l).sum::<u64>();
    let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => (&b""[..], name),
    };
    let member = [dir, b"GNUSparseFile.0/", base].concat();
    let mut records = vec![
        ("GNU.sparse.major", b"1".to_vec()),
        ("GNU.sparse.minor", b"0".to_vec()),
        ("GNU.sparse.name", name.to_vec()),
        ("GNU.sparse.realsize", node.size.to_string().into_bytes()),
    ];
    let nanos = node.mtime.rem_euclid(1_000_000_000);
    if nanos != 0 {
        records.push(("mtime", format!("{}.{nanos:09}", node.mtime.div_euclid(1_000_000_000)).into_bytes()));
    }
    tokio::task::block_in_place(|| append_pax(builder, &records)).map_err(tar_error)?;
    // PAX sparse members need a POSIX (ustar) header: GNU tar reads a GNU one as its own
    // format and ignores the map.
    let mut ustar = tar::Header::new_ustar();
    ustar.set_mode(header.mode().unwrap_or(0o644));
    ustar.set_uid(header.uid().unwrap_or(0));
    ustar.set_gid(header.gid().unwrap_or(0));
    ustar.set_mtime(header.mtime().unwrap_or(0));
    if let (Some(u), Some(g)) = (header.username_bytes(), header.groupname_bytes()) {
        let (u, g) = (u.to_vec(), g.to_vec());
        if let Some(fields) = ustar.as_ustar_mut() {
            fields.uname[..u.len().min(31)].copy_from_slice(&u[..u.len().min(31)]);
            fields.gname[..g.len().min(31)].copy_from_slice(&g[..g.len().min(31)]);
        }
    }
    ustar.set_entry_type(tar::EntryType::Regular);
    ustar.set_size(stored);
    let segments_for_writer = segments.clone();
    consume_stream(repo, &content, |reader| {
        let data = std::io::Read::chain(&map[..], Segments::new(reader, segments_for_writer));
        append_raw(builder, &mut ustar, &member, None, data).map_err(tar_error)
    })
    .await
}

/// Fill `block` from `reader` as far as it goes; the bytes read (less only at the end).
fn read_block(reader: &mut impl std::io::Read, block: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match reader.read(&mut block[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The bytes of `inner` that fall in `segments` (ordered), the rest skipped.
struct Segments<R> {
    inner: R,
    segments: std::collections::VecDeque<(u64, u64)>,
    at: u64,
}

impl<R: std::io::Read> Segments<R> {
    fn new(inner: R, segments: Vec<(u64, u64)>) -> Self {
        Segments { inner, segments: segments.into(), at: 0 }
    }
}

impl<R: std::io::Read> std::io::Read for Segments<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(&(offset, length)) = self.segments.front() else { return Ok(0) };
            if self.at >= offset + length {
                self.segments.pop_front();
                continue;
            }
            if self.at < offset {
                // Skip the hole.
                let skip = offset - self.at;
                let copied = std::io::copy(&mut (&mut self.inner).take(skip), &mut std::io::sink())?;
                if copied < skip {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the content ended early"));
                }
                self.at = offset;
                continue;
            }
            let want = buf.len().min((offset + length - self.at) as usize);
            let n = self.inner.read(&mut buf[..want])?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the content ended early"));
            }
            self.at += n as u64;
            return Ok(n);
        }
    }
}

/// Whether a member of tar type `kind` is what the tree holds at its name.
fn same_kind(kind: u8, node: NodeKind) -> bool {
    match kind {
        b'5' => node == NodeKind::Dir,
        b'2' => node == NodeKind::Symlink,
        b'1' => node != NodeKind::Dir,
        b'3' => node == NodeKind::Chardev,
        b'4' => node == NodeKind::Blockdev,
        b'6' => node == NodeKind::Fifo,
        _ => node == NodeKind::File,
    }
}

/// A PAX extended header carrying the next member's mtime to the nanosecond (the GNU
/// header that follows holds whole seconds).
fn append_pax_mtime<W: Write>(builder: &mut tar::Builder<W>, seconds: i64, nanos: i64) -> std::io::Result<()> {
    append_pax(builder, &[("mtime", format!("{seconds}.{nanos:09}").into_bytes())])
}

/// A PAX extended header (`x`) with these records, for the member that follows.
fn append_pax<W: Write>(builder: &mut tar::Builder<W>, records: &[(&str, Vec<u8>)]) -> std::io::Result<()> {
    let mut body = Vec::new();
    for (key, value) in records {
        // A record starts with its own length in decimal, that length included.
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut length = rest + 1;
        while length.to_string().len() + rest != length {
            length += 1;
        }
        body.extend_from_slice(format!("{length} {key}=").as_bytes());
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    header.as_mut_bytes()[..14].copy_from_slice(b"././@PaxHeader");
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_size(body.len() as u64);
    header.set_cksum();
    builder.append(&header, &body[..])
}

fn header_for(node: &Node, record: &MemberRecord) -> tar::Header {
    let mut header = node_header(node);
    // A GNU sparse member (`S`) is written back whole, as a regular file.
    let kind = if record.kind == b'S' { b'0' } else { record.kind };
    header.set_entry_type(tar::EntryType::new(kind));
    if let Some(gnu) = header.as_gnu_mut() {
        let n = record.uname.len().min(31);
        gnu.uname[..n].copy_from_slice(&record.uname[..n]);
        let n = record.gname.len().min(31);
        gnu.gname[..n].copy_from_slice(&record.gname[..n]);
    }
    if let Some(rdev) = node.rdev {
        let _ = header.set_device_major(libc::major(rdev));
        let _ = header.set_device_minor(libc::minor(rdev));
    }
    header
}

/// Write a tar snapshot back as an archive equivalent to the one backed up: the same
/// members in the same order, with the same names, modes, mtimes, owners and link targets.
pub async fn restore_archive_to_tar<W: Write + Send>(
    repo: &Repository,
    snapshot: &SnapshotFile,
    out: W,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    let (Some(root), Some(members)) = (&snapshot.tree, &snapshot.content) else {
        return Err(Error::corrupt("tar snapshot has no tree or no member list"));
    };
    let records = member_records(repo, members).await?;
    let top: Option<Node> = snapshot.meta.get("tar_top").and_then(|v| serde_json::from_value(v.clone()).ok());
    let includes = includes(options);
    let mut trees = Trees { repo, loaded: HashMap::from([(Vec::new(), repo.load_tree(root).await?)]) };
    let mut builder = tar::Builder::new(out);
    let mut stats = RestoreStats::default();
    for record in records {
        let Some(parts) = normalise(&record.name) else { continue };
        let rel = parts.join(&b'/');
        if !selected(&includes, &rel).0 && !parts.is_empty() {
            continue;
        }
        let Some((name, parents)) = parts.split_last() else {
            if let Some(top) = &top {
                let mut header = header_for(top, &record);
                tokio::task::block_in_place(|| {
                    append_raw(&mut builder, &mut header, &record.name, None, std::io::empty())
                })
                .map_err(tar_error)?;
                stats.dirs += 1;
            }
            continue;
        };
        let node = match trees.node(parents, name).await? {
            Some(node) => node,
            // Inside a directory a later member replaced: superseded, as on extraction.
            None if trees.superseded(parents).await? => continue,
            None => {
                return Err(Error::corrupt(format!(
                    "tar member {:?} is listed but missing from the snapshot's tree",
                    String::from_utf8_lossy(&record.name)
                )))
            }
        };
        // A name that was first one kind and then another holds what the later member
        // made of it, as extracting the archive would: the earlier member is superseded
        // and not written.
        if !same_kind(record.kind, node.kind) {
            continue;
        }
        let mut header = header_for(&node, &record);
        let (name, kind) = (&record.name, tar::EntryType::new(record.kind));
        let nanos = node.mtime.rem_euclid(1_000_000_000);
        let sparse = record.kind == b'S' && node.kind == NodeKind::File;
        // A sparse member carries its mtime in its own PAX header.
        if nanos != 0 && !sparse {
            let seconds = node.mtime.div_euclid(1_000_000_000);
            tokio::task::block_in_place(|| append_pax_mtime(&mut builder, seconds, nanos)).map_err(tar_error)?;
        }
        if sparse {
            stats.files += 1;
            stats.bytes += node.size;
            append_sparse(repo, &mut builder, &mut header, name, &node).await?;
            continue;
        }
        if kind != tar::EntryType::Link && node.kind == NodeKind::File {
            header.set_size(node.size);
            stats.files += 1;
            stats.bytes += node.size;
            // Streamed through a bounded channel: a member of any size fits.
            let content = node.content.clone().unwrap_or_default();
            consume_stream(repo, &content, |reader| {
                append_raw(&mut builder, &mut header, name, None, reader).map_err(tar_error)
            })
            .await?;
            continue;
        }
        let link = match (kind == tar::EntryType::Link, node.kind) {
            (true, _) => Some(record.link.clone()),
            (false, NodeKind::Symlink) => {
                stats.symlinks += 1;
                Some(node.target_bytes().unwrap_or_default())
            }
            (false, NodeKind::Dir) => {
                stats.dirs += 1;
                None
            }
            _ => None,
        };
        tokio::task::block_in_place(|| append_raw(&mut builder, &mut header, name, link.as_deref(), std::io::empty()))
            .map_err(tar_error)?;
    }
    tokio::task::block_in_place(|| builder.into_inner().and_then(|mut w| w.flush())).map_err(tar_error)?;
    Ok(stats)
}

async fn member_records(repo: &Repository, members: &Content) -> Result<Vec<MemberRecord>> {
    let mut list = Vec::with_capacity(members.size.min(256 << 20) as usize);
    restore_stream(repo, members, &mut list, &crate::progress::Silent).await?;
    MemberRecord::decode_all(&list)
}

/// Whether a snapshot is a `backup tar` archive (a tree and its member list).
pub fn is_archive(snapshot: &SnapshotFile) -> bool {
    snapshot.kind == "tar" && snapshot.tree.is_some() && snapshot.content.is_some()
}
