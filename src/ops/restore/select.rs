//! What a restore takes: `--include` paths (checked against the snapshot, with the
//! closest existing path suggested), names that are safe to create, and symlinks that
//! may be created (never one that leads out of the target when links are confined).

use crate::error::{Error, Result};
use crate::format::snapshot::{Node, NodeKind};
use crate::id::BlobId;
use crate::ops::restore::{RestoreOptions, RestoreStats};
use crate::repo::Repository;
use std::path::Path;

/// Normalised include paths: no leading or trailing slashes.
pub fn includes(options: &RestoreOptions) -> Vec<Vec<u8>> {
    options.includes.iter().map(|i| i.trim_matches('/').as_bytes().to_vec()).filter(|i| !i.is_empty()).collect()
}

/// Every include must name something in the tree: an include that matches nothing is an
/// error naming it, where the path stops existing and the closest names there.
pub async fn check_includes(repo: &Repository, root: &BlobId, options: &RestoreOptions) -> Result<()> {
    for include in includes(options) {
        let mut tree = repo.load_tree(root).await?;
        let mut walked: Vec<&[u8]> = Vec::new();
        let parts: Vec<&[u8]> = include.split(|&b| b == b'/').filter(|p| !p.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(at) = tree.nodes.iter().position(|n| n.name_bytes() == *part) else {
                let names: Vec<Vec<u8>> = tree.nodes.iter().map(|n| n.name_bytes()).collect();
                let here = format!("/{}", String::from_utf8_lossy(&walked.join(&b'/')));
                let closest: Vec<String> = closest(part, &names)
                    .into_iter()
                    .map(|n| format!("{}/{}", here.trim_end_matches('/'), String::from_utf8_lossy(n)))
                    .collect();
                let hint = match closest.is_empty() {
                    true => format!("{here} is empty"),
                    false => format!("closest there: {}", closest.join(", ")),
                };
                return Err(Error::not_found(format!(
                    "--include /{} matches nothing in the snapshot: {here} has no {:?}; {hint}",
                    String::from_utf8_lossy(&include),
                    String::from_utf8_lossy(part)
                )));
            };
            walked.push(part);
            if i + 1 < parts.len() {
                let mut node = tree.nodes.swap_remove(at);
                if node.kind != NodeKind::Dir {
                    return Err(Error::not_found(format!(
                        "--include /{} matches nothing in the snapshot: /{} is not a directory",
                        String::from_utf8_lossy(&include),
                        String::from_utf8_lossy(&walked.join(&b'/'))
                    )));
                }
                tree = repo.dir_tree(&mut node, &"include").await?;
            }
        }
    }
    Ok(())
}

/// Up to three of `names` most like `wanted` (edit distance, then name order).
fn closest<'a>(wanted: &[u8], names: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    let distance = |a: &[u8], b: &[u8]| {
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, x) in a.iter().enumerate() {
            let mut last = row[0];
            row[0] = i + 1;
            for (j, y) in b.iter().enumerate() {
                let next = (row[j + 1] + 1).min(row[j] + 1).min(last + usize::from(x != y));
                last = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    let mut scored: Vec<(usize, &[u8])> = names.iter().map(|n| (distance(wanted, n), n.as_slice())).collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, n)| n).collect()
}

/// Whether to restore `path` (relative, slash-separated) and whether to descend into it.
pub fn selected(includes: &[Vec<u8>], path: &[u8]) -> (bool, bool) {
    if includes.is_empty() {
        return (true, true);
    }
    let inside = includes.iter().any(|i| path == &i[..] || (path.starts_with(i) && path.get(i.len()) == Some(&b'/')));
    let ancestor = includes.iter().any(|i| i.starts_with(path) && i.get(path.len()) == Some(&b'/'));
    (inside, inside || ancestor)
}

pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// Reject names that could escape the target directory.
pub(crate) fn safe_name(node: &Node) -> Result<Vec<u8>> {
    let name = node.name_bytes();
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::corrupt(format!("tree holds an unsafe file name {:?}", node.name)));
    }
    Ok(name)
}

/// With `confine`, a link at `rel` inside `target` that leads outside it is refused with
/// a warning.
pub(crate) fn symlink_allowed(
    path: &Path,
    rel: &[u8],
    link: &[u8],
    target: &Path,
    confine: bool,
    stats: &mut RestoreStats,
) -> bool {
    if confine && crate::beneath::link_escapes(rel, link) {
        stats.warnings.push(format!(
            "{}: symlink to {:?} points outside {}; not created",
            path.display(),
            String::from_utf8_lossy(link),
            target.display()
        ));
        return false;
    }
    true
}
