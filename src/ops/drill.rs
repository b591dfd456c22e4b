//! Restore drills (docs/drills.md): restore into scratch space and prove the result is
//! what was backed up.
//!
//! [`verify_tree`] compares every restored file with its snapshot: the file is chunked
//! again with the repository's chunker and each chunk's keyed hash must equal the
//! snapshot's blob id, in order, so a single changed byte anywhere is found.

use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::format::snapshot::NodeKind;
use crate::id::BlobId;
use crate::repo::load::LeafWalker;
use crate::repo::Repository;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a tree verification saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TreeCheck {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Each file that differs, or is missing, and how.
    pub mismatches: Vec<String>,
}

/// Compare the tree restored under `dir` with the snapshot tree `root`. Symlinks leading
/// outside the target, which a safe restore refuses, are not counted as missing.
pub async fn verify_tree(repo: &Repository, root: &BlobId, dir: &Path) -> Result<TreeCheck> {
    let mut check = TreeCheck::default();
    let params = repo.config().chunker;
    let mut stack = vec![(repo.load_tree(root).await?, dir.to_path_buf())];
    while let Some((tree, at)) = stack.pop() {
        for mut node in tree.nodes {
            let path = at.join(std::ffi::OsStr::from_bytes(&node.name_bytes()));
            match node.kind {
                NodeKind::Dir => {
                    check.dirs += 1;
                    stack.push((repo.dir_tree(&mut node, &path.display()).await?, path));
                }
                NodeKind::File => {
                    check.files += 1;
                    check.bytes += node.size;
                    let content = node.content.clone().unwrap_or_default();
                    let file = match std::fs::File::open(&path) {
                        Ok(f) => f,
                        Err(e) => {
                            check.mismatches.push(format!("{}: not restored ({e})", path.display()));
                            continue;
                        }
                    };
                    let mut leaves = LeafWalker::new(repo, &content);
                    let mut offset = 0u64;
                    let mut problem = None;
                    let chunks = tokio::task::block_in_place(|| {
                        Chunker::with_size_hint(file, params, node.size)
                            .map(|c| c.map(|c| (repo.key().blob_id(&c), c.len() as u64)))
                            .collect::<std::io::Result<Vec<_>>>()
                    })
                    .map_err(|e| Error::io("read restored file", &path, e))?;
                    for (id, len) in chunks {
                        match leaves.next().await? {
                            Some(leaf) if leaf.0 == id && leaf.1 == len => offset += len,
                            _ => {
                                problem =
                                    Some(format!("{}: differs from the snapshot at byte {offset}", path.display()));
                                break;
                            }
                        }
                    }
                    if problem.is_none() && leaves.next().await?.is_some() {
                        problem = Some(format!("{}: shorter than the snapshot ({offset} bytes)", path.display()));
                    }
                    check.mismatches.extend(problem);
                }
                NodeKind::Symlink => {
                    let want = node.target_bytes().unwrap_or_default();
                    match std::fs::read_link(&path) {
                        Ok(got) if got.as_os_str().as_bytes() == want.as_slice() => {}
                        Ok(got) => check.mismatches.push(format!(
                            "{}: links to {} instead of {}",
                            path.display(),
                            got.display(),
                            String::from_utf8_lossy(&want)
                        )),
                        // Links out of the target are refused by a safe restore.
                        Err(_) if crate::beneath::link_escapes(b"x", &want) => {}
                        Err(e) => check.mismatches.push(format!("{}: symlink not restored ({e})", path.display())),
                    }
                }
                _ => {}
            }
        }
    }
    Ok(check)
}
