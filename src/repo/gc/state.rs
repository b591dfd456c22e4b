//! The removal protocol's shared state in the repository (docs/format.md §17): the chain
//! of generation objects `gc/gen/<n>` and the candidate sets `gc/cand/<generation>-<random>`,
//! sealed JSON objects under the magic `CAIRNgc1`. Writers read it (sessions, the saver's
//! watch, the checks around a commit); removal runs advance it.

use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout as keys;
use crate::format::object;
use crate::id::{BlobId, PackId, SnapshotId};
use serde::{Deserialize, Serialize};

pub use crate::format::layout::GC_MAGIC;
pub(super) use crate::format::layout::{GC_CANDIDATES as CANDIDATES, GC_GENERATIONS as GENERATIONS};

/// One GC generation: `gc/gen/<20-digit n>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GcView {
    pub generation: u64,
    /// Object names of candidate sets marked and not yet swept.
    pub pending: Vec<String>,
}

/// A candidate set: `gc/cand/<20-digit generation>-<random>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateSet {
    pub generation: u64,
    pub packs: Vec<PackId>,
    /// Blobs every copy of which is in `packs`.
    pub doomed: Vec<BlobId>,
    /// Snapshots that existed when the set was marked.
    pub snapshots: Vec<SnapshotId>,
    /// Packs found unreferenced for the first time: the next mark may pick them if they
    /// still are. A pack is marked only when two marks in a row find it unreferenced, so a
    /// writer's fresh packs survive unless it spans three removal runs (liveness only:
    /// safety does not depend on it).
    #[serde(default)]
    pub watch: Vec<PackId>,
}

pub(super) fn generation_key(n: u64) -> String {
    format!("{GENERATIONS}{n:020}")
}

pub(super) fn generation_of(name: &str) -> Option<u64> {
    keys::name(name).split('-').next()?.parse().ok()
}

/// The current generation (generation 0, nothing pending, before the first removal).
pub async fn read_view(backend: &Backend, key: &MasterKey) -> Result<GcView> {
    let newest = backend.list(GENERATIONS).await?.iter().filter_map(|o| generation_of(&o.key)).max();
    let Some(n) = newest else { return Ok(GcView::default()) };
    let name = generation_key(n);
    let view: GcView = read_sealed(backend, key, &name).await?;
    if view.generation != n {
        return Err(Error::corrupt(format!("{name} claims generation {}", view.generation)));
    }
    Ok(view)
}

pub(super) async fn read_sealed<T: serde::de::DeserializeOwned>(
    backend: &Backend,
    key: &MasterKey,
    name: &str,
) -> Result<T> {
    let bytes = backend.get(name).await?;
    let plain = object::open(key, GC_MAGIC, name, &bytes)?;
    serde_json::from_slice(&plain).map_err(|e| Error::corrupt(format!("{name} is not valid: {e}")))
}

pub(super) async fn write_sealed<T: Serialize>(
    backend: &Backend,
    key: &MasterKey,
    name: &str,
    value: &T,
    mode: WriteMode,
) -> Result<()> {
    let sealed = object::seal(key, GC_MAGIC, &serde_json::to_vec(value).expect("gc objects serialize"));
    backend.put(name, sealed.into(), mode).await
}

/// Create the generation after `from`; fails with `Locked` if another remover got there first.
pub(super) async fn advance(backend: &Backend, key: &MasterKey, from: &GcView, pending: Vec<String>) -> Result<GcView> {
    let next = GcView { generation: from.generation + 1, pending };
    match write_sealed(backend, key, &generation_key(next.generation), &next, WriteMode::Create).await {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::new(
            ErrorKind::Locked,
            format!(
                "another removal moved {} to GC generation {} first; it is doing this work, so this run stops (run it again later)",
                backend.location(),
                next.generation
            ),
        )),
        other => other.map(|_| next),
    }
}

pub async fn read_candidates(backend: &Backend, key: &MasterKey, name: &str) -> Result<CandidateSet> {
    read_sealed(backend, key, name).await
}
