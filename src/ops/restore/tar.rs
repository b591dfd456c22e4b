//! A tree restored as a tar stream (GNU format), in the snapshot's order.

use crate::error::{Error, Result};
use crate::format::snapshot::{Node, NodeKind};
use crate::id::BlobId;
use crate::ops::restore::select::{includes, join, safe_name, selected};
use crate::ops::restore::stream::{consume_stream, restore_stream};
use crate::ops::restore::{RestoreOptions, RestoreStats};
use crate::repo::Repository;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Write a tree as a tar stream (GNU format) to `out`.
pub async fn restore_tree_to_tar<W: Write + Send>(
    repo: &Repository,
    root: &BlobId,
    out: W,
    options: &RestoreOptions,
) -> Result<RestoreStats> {
    let mut builder = tar::Builder::new(out);
    let mut stats = RestoreStats::default();
    let includes = includes(options);
    // Depth-first, in stored (name) order: directories precede their contents.
    let mut stack: Vec<(std::vec::IntoIter<Node>, Vec<u8>)> =
        vec![(repo.load_tree(root).await?.nodes.into_iter(), Vec::new())];
    while let Some((iter, rel)) = stack.last_mut() {
        let Some(mut node) = iter.next() else {
            stack.pop();
            continue;
        };
        let rel = rel.clone();
        let name = safe_name(&node)?;
        let rel_path = join(&rel, &name);
        let (restore, descend) = selected(&includes, &rel_path);
        if !descend {
            continue;
        }
        let mut header = node_header(&node);
        let path = std::ffi::OsStr::from_bytes(&rel_path);
        match node.kind {
            NodeKind::Dir => {
                if restore {
                    header.set_entry_type(tar::EntryType::Directory);
                    tokio::task::block_in_place(|| builder.append_data(&mut header, Path::new(path), std::io::empty()))
                        .map_err(tar_error)?;
                    stats.dirs += 1;
                }
                let subtree = repo.dir_tree(&mut node, &path.display()).await?;
                stack.push((subtree.nodes.into_iter(), rel_path));
            }
            _ if !restore => {}
            NodeKind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(node.size);
                let content = node.content.clone().unwrap_or_default();
                let mut data = Vec::with_capacity(node.size.min(64 << 20) as usize);
                // Files larger than 64 MiB stream through a pipe thread to bound memory.
                if node.size <= 64 << 20 {
                    restore_stream(repo, &content, &mut data, &crate::progress::Silent).await?;
                    tokio::task::block_in_place(|| builder.append_data(&mut header, Path::new(path), &data[..]))
                        .map_err(tar_error)?;
                } else {
                    let path = Path::new(path);
                    consume_stream(repo, &content, |reader| {
                        builder.append_data(&mut header, path, reader).map_err(tar_error)
                    })
                    .await?;
                }
                stats.files += 1;
                stats.bytes += node.size;
            }
            NodeKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = node.target_bytes().unwrap_or_default();
                tokio::task::block_in_place(|| {
                    builder.append_link(&mut header, Path::new(path), std::ffi::OsStr::from_bytes(&target))
                })
                .map_err(tar_error)?;
                stats.symlinks += 1;
            }
            other => stats.warnings.push(format!("{}: {other:?} nodes are not written to tar", node.name)),
        }
    }
    tokio::task::block_in_place(|| builder.into_inner().and_then(|mut w| w.flush())).map_err(tar_error)?;
    Ok(stats)
}

/// A tar header with a node's mode, owner and mtime (size 0, type unset).
pub fn node_header(node: &Node) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(node.mode);
    header.set_uid(node.uid.into());
    header.set_gid(node.gid.into());
    header.set_mtime(node.mtime.div_euclid(1_000_000_000).max(0) as u64);
    header.set_size(0);
    header
}

pub fn tar_error(e: std::io::Error) -> Error {
    Error::output("the tar stream", e)
}
