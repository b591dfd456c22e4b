//! `cairn check`: prove the repository is consistent, and optionally that every byte reads.
//!
//! check trusts nothing local: it reads every index file into a fresh temporary catalog,
//! lists the packs actually stored, and walks every snapshot's trees and stream nodes.
//! Structure: every index file opens; every indexed pack exists with the indexed size;
//! every blob a snapshot references is indexed; every tree and stream node decodes.
//! With read-data (all packs, or a subset): each pack is downloaded whole, hashed against
//! its name, its header is decrypted and compared with the index, and every blob is
//! decrypted, decompressed and re-hashed. Each problem names the snapshot, pack or blob
//! affected; snapshots referencing a damaged blob are named too.

use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::layout as keys;
use crate::format::pack::{self, BlobKind};
use crate::format::snapshot::{decode_node, Content, SnapshotFile, Tree};
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::progress::Progress;
use crate::repo::Repository;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};

/// Which packs to read in full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// A random share of the packs, in percent.
    Percent(f64),
    /// Subset K of N (1-based): packs whose first id byte mod N is K - 1.
    Part(u32, u32),
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub snapshots: u64,
    pub index_files: u64,
    pub packs: u64,
    pub blobs: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    /// Damage found: each line names what is affected.
    pub errors: Vec<String>,
    /// Not damage: packs no index lists (left by an interrupted backup; prune removes them).
    pub unindexed_packs: u64,
    /// Secrets snapshots whose sealed archive was opened and read through (read-data with
    /// the secrets password).
    pub secrets_verified: u64,
    /// Secrets snapshots whose inner layer was not opened (no secrets password): their
    /// packs are still read and verified like any other.
    pub secrets_skipped: u64,
    /// Not damage: things the check could not do (write its coverage record).
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

pub async fn check(repo: &Repository, read_data: ReadData, progress: &dyn Progress) -> Result<CheckReport> {
    let backend = repo.backend();
    let key = repo.key();
    let mut report = CheckReport::default();
    // Its own catalog, on disk in a private scratch directory: a repository's index is
    // read afresh (not from the cache being checked), and a million blobs stay out of RAM.
    let scratch = super::sqlite::Scratch::new(&std::env::temp_dir(), "check")?;
    let catalog = Catalog::open(Some(&scratch.path().join("catalog.sqlite")))?;

    for object in backend.list(keys::INDEX).await? {
        let Ok(id) = IndexId::from_hex(keys::name(&object.key)) else { continue };
        match crate::repo::read_index(backend, key, &id).await {
            Ok(file) => catalog.add_index(&id, &file)?,
            // The message names the object.
            Err(e) => report.errors.push(e.to_string()),
        }
        report.index_files += 1;
    }
    let stored: HashMap<PackId, u64> = backend
        .list(keys::DATA)
        .await?
        .into_iter()
        .filter_map(|o| Some((PackId::from_hex(keys::name(&o.key)).ok()?, o.size)))
        .collect();
    let indexed = catalog.packs()?;
    let (blobs, _, _) = catalog.totals()?;
    report.packs = indexed.len() as u64;
    report.blobs = blobs;
    let indexed_ids: HashSet<PackId> = indexed.iter().map(|p| p.id).collect();
    report.unindexed_packs = stored.keys().filter(|id| !indexed_ids.contains(id)).count() as u64;
    let mut damaged: HashSet<BlobId> = HashSet::new();
    for pack in &indexed {
        let problem = match stored.get(&pack.id) {
            None => Some("is missing".to_string()),
            Some(&size) if size != pack.size => Some(format!("has {size} bytes, the index says {}", pack.size)),
            _ => None,
        };
        if let Some(problem) = problem {
            report.errors.push(format!("pack {} {problem}", pack.id));
            damaged.extend(catalog.pack_blobs(&pack.id)?.iter().map(|b| b.id));
        }
    }

    let mut coverage = match read_data {
        ReadData::None => None,
        _ => Some(super::coverage::Coverage::load(backend, key).await?),
    };
    report.errors.extend(coverage.iter().flat_map(|c| c.damaged.iter().cloned()));
    let readable: Vec<PackId> = indexed.iter().map(|p| p.id).filter(|id| stored.contains_key(id)).collect();
    let to_read: Vec<PackId> = match (read_data, &coverage) {
        // A percentage: the packs read longest ago (never read first).
        (ReadData::Percent(p), Some(c)) => c.oldest(&readable, p),
        _ => readable.iter().copied().filter(|id| wanted(read_data, id)).collect(),
    };
    let mut intact: Vec<PackId> = Vec::new();
    if !to_read.is_empty() {
        let total: u64 = indexed.iter().filter(|p| to_read.contains(&p.id)).map(|p| p.size).sum();
        progress.begin("reading packs", Some(total));
        let catalog = &catalog;
        let mut results = futures::stream::iter(to_read)
            .map(|id| async move { (id, read_pack(backend, key, catalog, &id).await) })
            .buffer_unordered(2);
        while let Some((id, result)) = results.next().await {
            report.packs_read += 1;
            match result {
                Ok((bytes, problems)) => {
                    report.bytes_read += bytes;
                    progress.advance(bytes);
                    if problems.is_empty() {
                        intact.push(id);
                    }
                    for (blob, problem) in problems {
                        report.errors.push(problem);
                        damaged.extend(blob);
                    }
                }
                Err(e) => {
                    report.errors.push(format!("pack {id}: {e}"));
                    damaged.extend(catalog.pack_blobs(&id)?.iter().map(|b| b.id));
                }
            }
        }
        progress.end();
    }
    if let Some(coverage) = coverage.as_mut() {
        // The verification is done and reported whatever happens to its record (read-only
        // credentials cannot write one): the next run just reads those packs again.
        if let Err(e) = coverage.record(backend, key, &intact, &readable).await {
            report.warnings.push(format!(
                "the packs read were verified, but the record of it could not be written ({}); the next \
                 --read-data run reads them again",
                e.message()
            ));
        }
    }

    let mut walk =
        Walk { repo, catalog: &catalog, damaged: &damaged, good_trees: HashSet::new(), bad_trees: HashMap::new() };
    for object in backend.list(keys::SNAPSHOTS).await? {
        let Ok(id) = SnapshotId::from_hex(keys::name(&object.key)) else { continue };
        report.snapshots += 1;
        match crate::repo::read_snapshot(backend, key, &id).await {
            Ok(snapshot) => {
                for problem in walk.snapshot(&snapshot).await {
                    report.errors.push(format!(
                        "snapshot {} ({} {}): {problem}",
                        id.short(),
                        snapshot.kind,
                        snapshot.name
                    ));
                }
            }
            // Forgotten between the listing and the read: not damage.
            Err(e) if e.kind() == crate::error::ErrorKind::NotFound => report.snapshots -= 1,
            Err(e) => report.errors.push(format!("snapshot {id}: {e}")),
        }
    }
    Ok(report)
}

fn wanted(read_data: ReadData, id: &PackId) -> bool {
    match read_data {
        ReadData::None => false,
        ReadData::All => true,
        ReadData::Percent(p) => p >= 100.0,
        ReadData::Part(k, n) => u32::from(id.0[0]) % n == k - 1,
    }
}

/// Read a whole pack; returns its size and the problems found, each with the blob it
/// concerns (`None` when it concerns the whole pack).
async fn read_pack(
    backend: &Backend,
    key: &MasterKey,
    catalog: &Catalog,
    id: &PackId,
) -> Result<(u64, Vec<(Option<BlobId>, String)>)> {
    let bytes = backend.get(&keys::pack(id)).await?;
    let expected = catalog.pack_blobs(id)?;
    let key = key.clone();
    let id = *id;
    tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        let size = bytes.len() as u64;
        if PackId(*blake3::hash(&bytes).as_bytes()) != id {
            problems.push((None, format!("pack {id} does not hash to its name: its bytes were altered")));
        }
        let (salt, entries) = match pack::read_header(&key, &id.to_hex(), &bytes) {
            Ok(h) => h,
            Err(e) => {
                problems.extend(expected.iter().map(|b| (Some(b.id), format!("blob {} unreadable: {e}", b.id))));
                return Ok((size, problems));
            }
        };
        let pack_key = key.pack_key(&salt);
        let in_header: HashMap<BlobId, &pack::PackEntry> = entries.iter().map(|e| (e.id, e)).collect();
        for blob in &expected {
            if in_header.get(&blob.id).is_none_or(|e| **e != *blob) {
                problems.push((
                    Some(blob.id),
                    format!("blob {} in pack {id}: the pack header disagrees with the index", blob.id),
                ));
                continue;
            }
            let sealed = &bytes[blob.offset as usize..blob.end() as usize];
            if let Err(e) = pack::open_blob(&key, &pack_key, blob, sealed) {
                problems.push((Some(blob.id), format!("blob {} in pack {id}: {e}", blob.id)));
            }
        }
        Ok((size, problems))
    })
    .await
    .map_err(|e| Error::backend(format!("check task failed: {e}")))?
}

/// Walks snapshots, remembering which trees were already found sound or damaged.
struct Walk<'a> {
    repo: &'a Repository,
    catalog: &'a Catalog,
    damaged: &'a HashSet<BlobId>,
    good_trees: HashSet<BlobId>,
    bad_trees: HashMap<BlobId, Vec<String>>,
}

impl Walk<'_> {
    async fn snapshot(&mut self, snapshot: &SnapshotFile) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(tree) = &snapshot.tree {
            problems.extend(Box::pin(self.tree(tree, "/")).await);
        }
        if let Some(content) = &snapshot.content {
            problems.extend(self.content(content, "stream").await);
        }
        problems
    }

    /// Blob ids are content addresses: identical bytes have one id whether stored as data
    /// or metadata, so the kind a blob was indexed under is a placement detail, not damage.
    fn blob_problem(&self, id: &BlobId, _kind: BlobKind, at: &str) -> Result<(), String> {
        match self.catalog.lookup(id) {
            Ok(None) => Err(format!("{at}: blob {id} is not in any index")),
            Err(e) => Err(format!("{at}: {e}")),
            Ok(Some(_)) if self.damaged.contains(id) => Err(format!("{at}: blob {id} is damaged")),
            Ok(Some(_)) => Ok(()),
        }
    }

    /// Load a metadata blob located by the fresh catalog (never the cache). Its pack is
    /// read whole once and kept while the walk goes on, so a walk costs about one request
    /// per metadata pack, not one per tree.
    async fn load_meta(&self, id: &BlobId) -> Result<Vec<u8>> {
        let location =
            self.catalog.lookup(id)?.ok_or_else(|| Error::corrupt(format!("blob {id} is not in any index")))?;
        self.repo.load_located(location).await
    }

    async fn tree(&mut self, id: &BlobId, at: &str) -> Vec<String> {
        if self.good_trees.contains(id) {
            return Vec::new();
        }
        if let Some(problems) = self.bad_trees.get(id) {
            return problems.clone();
        }
        let mut problems = Vec::new();
        if let Err(p) = self.blob_problem(id, BlobKind::Meta, at) {
            problems.push(p);
        } else {
            match self.load_meta(id).await.and_then(|b| Tree::decode(&b)) {
                Err(e) => problems.push(format!("{at}: tree {id}: {e}")),
                Ok(tree) => problems.extend(self.nodes(&tree, at).await),
            }
        }
        if problems.is_empty() {
            self.good_trees.insert(*id);
        } else {
            self.bad_trees.insert(*id, problems.clone());
        }
        problems
    }

    /// Check what a tree's nodes refer to, inline trees included.
    async fn nodes(&mut self, tree: &Tree, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for node in &tree.nodes {
            let path = format!("{}/{}", at.trim_end_matches('/'), node.name);
            if let Some(sub) = &node.subtree {
                problems.extend(Box::pin(self.tree(sub, &path)).await);
            }
            if let Some(inline) = &node.tree {
                problems.extend(Box::pin(self.nodes(inline, &path)).await);
            }
            if let Some(content) = &node.content {
                problems.extend(self.content(content, &path).await);
            }
        }
        problems
    }

    async fn content(&mut self, content: &Content, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut stack = vec![(content.depth, content.entries.clone())];
        while let Some((depth, entries)) = stack.pop() {
            for entry in entries {
                if depth == 0 {
                    if let Err(p) = self.blob_problem(&entry.0, BlobKind::Data, at) {
                        problems.push(p);
                    }
                    continue;
                }
                if let Err(p) = self.blob_problem(&entry.0, BlobKind::Meta, at) {
                    problems.push(p);
                    continue;
                }
                match self.load_meta(&entry.0).await.and_then(|b| decode_node(&b)) {
                    Ok((d, children)) if d + 1 == depth => stack.push((d, children)),
                    Ok(_) => problems.push(format!("{at}: stream node {} has the wrong depth", entry.0)),
                    Err(e) => problems.push(format!("{at}: stream node {}: {e}", entry.0)),
                }
            }
        }
        problems
    }
}

/// With read-data: open the sealed archive of every secrets snapshot when the
/// compartment is unlocked, or count it as skipped when it is not.
pub async fn check_secrets(
    repo: &Repository,
    secrets: Option<&crate::ops::secrets::SecretsKey>,
    report: &mut CheckReport,
) -> Result<()> {
    let backend = repo.backend();
    for object in backend.list(keys::SNAPSHOTS).await? {
        let Ok(id) = SnapshotId::from_hex(keys::name(&object.key)) else { continue };
        let Ok(snapshot) = crate::repo::read_snapshot(backend, repo.key(), &id).await else { continue };
        if snapshot.kind != crate::ops::secrets::KIND {
            continue;
        }
        match secrets {
            None => report.secrets_skipped += 1,
            Some(key) => match crate::ops::secrets::verify(repo, &id, &snapshot, key).await {
                Ok(_) => report.secrets_verified += 1,
                Err(e) => report.errors.push(format!("snapshot {} (secrets {}): {e}", id.short(), snapshot.name)),
            },
        }
    }
    Ok(())
}
