//! The read side: locate blobs through the catalog, fetch them by range, open them.
//!
//! [`read_content`] streams a file's or stream's data in order while several range reads
//! are in flight: consecutive blobs stored back to back in one pack are fetched with one
//! ranged GET, groups are fetched and decrypted concurrently, and `buffered` keeps the
//! output in order. Stream nodes are loaded lazily, so memory does not grow with the
//! length of the stream.

use super::Repository;
use crate::catalog::BlobLocation;
use crate::crypto::{MasterKey, SealKey};
use crate::error::{Error, Result};
use crate::format::layout as keys;
use crate::format::pack;
use crate::format::pack::BlobKind;
use crate::format::snapshot::{decode_node, Content, ContentEntry};
use crate::id::{BlobId, PackId};
use futures::{Stream, StreamExt};

/// Largest ranged read that grouping builds.
const MAX_GROUP_BYTES: u64 = 8 << 20;
/// Most plaintext one group opens. A group is opened on one thread, so a window of
/// [`WINDOW_BYTES`] is cut into several groups that the cores open side by side: a dump
/// compresses about 5:1, and one 8 MiB read of it would hold a whole window.
const MAX_GROUP_PLAIN: u64 = 2 << 20;

impl Repository {
    /// Where a blob is, or a `Corrupt` error naming it.
    pub fn locate(&self, id: &BlobId) -> Result<BlobLocation> {
        let mut locations = self.catalog().locations(id)?;
        self.exclusions().prefer_kept(&mut locations);
        locations.into_iter().next().ok_or_else(|| not_indexed(id))
    }

    /// Fetch, decrypt and verify one blob. Metadata packs are fetched whole on first use
    /// and kept in a bounded cache: a walk over thousands of trees costs a few reads.
    pub async fn load_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let mut locations = self.catalog().locations(id)?;
        self.exclusions().prefer_kept(&mut locations);
        let mut locations = locations.into_iter().peekable();
        // A copy's pack may have been removed since the catalog was read: try the next.
        while let Some(location) = locations.next() {
            match self.load_located(location).await {
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound && locations.peek().is_some() => continue,
                other => return other,
            }
        }
        Err(not_indexed(id))
    }

    /// Fetch, decrypt and verify the blob at `location` (found in a catalog of the
    /// caller's, as `check` keeps its own): metadata packs come whole, through the cache.
    pub async fn load_located(&self, location: BlobLocation) -> Result<Vec<u8>> {
        let range = location.entry.offset as usize..location.entry.end() as usize;
        if location.entry.kind == BlobKind::Meta && location.pack_size <= MAX_CACHED_PACK {
            let pack = match self.meta_cache.get(&location.pack) {
                Some(bytes) => bytes,
                None => {
                    let bytes = self.backend().get(&keys::pack(&location.pack)).await?;
                    if bytes.len() as u64 != location.pack_size {
                        return Err(Error::corrupt(format!(
                            "pack {} has {} bytes, the index says {}",
                            location.pack,
                            bytes.len(),
                            location.pack_size
                        )));
                    }
                    self.meta_cache.insert(location.pack, bytes.clone());
                    bytes
                }
            };
            return open_located(self.key(), &location, &pack[range]);
        }
        let sealed =
            self.backend().get_range(&keys::pack(&location.pack), location.entry.offset..location.entry.end()).await?;
        open_located(self.key(), &location, &sealed)
    }
}

fn not_indexed(id: &BlobId) -> Error {
    Error::corrupt(format!("blob {id} is not in the index: the repository is damaged; run `cairn check`"))
}

/// Metadata packs at most this large are cached whole.
const MAX_CACHED_PACK: u64 = 32 << 20;
/// The cache holds at most this many bytes; past it, it starts over.
const META_CACHE_BYTES: usize = 96 << 20;

/// Whole metadata packs recently read, by id.
#[derive(Default)]
pub struct MetaCache(std::sync::Mutex<(std::collections::HashMap<PackId, bytes::Bytes>, usize)>);

impl MetaCache {
    fn get(&self, id: &PackId) -> Option<bytes::Bytes> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.get(id).cloned()
    }

    fn insert(&self, id: PackId, bytes: bytes::Bytes) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *guard;
        if *total + bytes.len() > META_CACHE_BYTES {
            map.clear();
            *total = 0;
        }
        *total += bytes.len();
        map.insert(id, bytes);
    }
}

/// Open a sealed blob fetched from its pack; errors name the blob and the pack.
pub fn open_located(key: &MasterKey, location: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>> {
    open_with(key, &key.pack_key(&location.salt), location, sealed)
}

/// [`open_located`] with the pack key already derived, for many blobs of one pack.
pub fn open_with(key: &MasterKey, pack_key: &SealKey, location: &BlobLocation, sealed: &[u8]) -> Result<Vec<u8>> {
    pack::open_blob(key, pack_key, &location.entry, sealed).map_err(|e| located(e, location))
}

/// [`open_with`] appending the data to `out` (see [`pack::open_blob_into`]).
pub fn open_with_into(
    key: &MasterKey,
    pack_key: &SealKey,
    location: &BlobLocation,
    sealed: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<()> {
    pack::open_blob_into(key, pack_key, &location.entry, sealed, scratch, out).map_err(|e| located(e, location))
}

fn located(e: Error, location: &BlobLocation) -> Error {
    e.context(format!("blob {} in pack {}", location.entry.id, location.pack))
}

/// Walks a [`Content`] down to its data blobs, loading stream nodes as needed.
pub struct LeafWalker<'a> {
    repo: &'a Repository,
    stack: Vec<(u8, Vec<ContentEntry>, usize)>,
}

impl<'a> LeafWalker<'a> {
    pub fn new(repo: &'a Repository, content: &Content) -> Self {
        LeafWalker { repo, stack: vec![(content.depth, content.entries.clone(), 0)] }
    }

    /// The next data blob, in order.
    pub async fn next(&mut self) -> Result<Option<ContentEntry>> {
        loop {
            let Some((depth, entries, pos)) = self.stack.last_mut() else { return Ok(None) };
            if *pos == entries.len() {
                self.stack.pop();
                continue;
            }
            let entry = entries[*pos];
            *pos += 1;
            if *depth == 0 {
                return Ok(Some(entry));
            }
            let depth = *depth;
            let (child_depth, children) = decode_node(&self.repo.load_blob(&entry.0).await?)
                .map_err(|e| e.context(format!("stream node {}", entry.0)))?;
            let total: u64 = children.iter().map(|c| c.1).sum();
            if child_depth + 1 != depth || total != entry.1 {
                return Err(Error::corrupt(format!(
                    "stream node {} does not match its parent (depth {child_depth}, {total} bytes)",
                    entry.0
                )));
            }
            self.stack.push((child_depth, children, 0));
        }
    }
}

/// Blobs of one pack fetched with one ranged read.
struct Group {
    locations: Vec<BlobLocation>,
}

/// Bytes of a pack a ranged read may pass over without needing them.
const GROUP_GAP: u64 = 1 << 20;
/// Plaintext bytes of the stream planned at once: its blobs are grouped by pack, so a
/// stream whose blobs alternate between packs (a dump that changed in many places) still
/// costs about one request per pack and window, not one per switch.
const WINDOW_BYTES: u64 = 16 << 20;
const WINDOW_BLOBS: usize = 8192;

impl Group {
    fn range(&self) -> std::ops::Range<u64> {
        self.locations[0].entry.offset..self.locations.iter().map(|l| l.entry.end()).max().unwrap()
    }

    fn plain(&self) -> u64 {
        self.locations.iter().map(|l| u64::from(l.entry.raw_length)).sum()
    }
}

/// Plan the reads for a window: distinct blobs grouped by pack, in offset order,
/// neighbours within [`GROUP_GAP`] merged, each read at most [`MAX_GROUP_BYTES`] and
/// [`MAX_GROUP_PLAIN`] once opened.
fn plan(window: &[BlobLocation]) -> Vec<Group> {
    let mut sorted: Vec<BlobLocation> = window.to_vec();
    sorted.sort_by_key(|l| (l.pack, l.entry.offset));
    sorted.dedup_by_key(|l| l.entry.id);
    let mut groups: Vec<Group> = Vec::new();
    for location in sorted {
        match groups.last_mut() {
            Some(g)
                if g.locations[0].pack == location.pack
                    && location.entry.offset <= g.range().end + GROUP_GAP
                    && location.entry.end() - g.range().start <= MAX_GROUP_BYTES
                    && g.plain() + u64::from(location.entry.raw_length) <= MAX_GROUP_PLAIN =>
            {
                g.locations.push(location)
            }
            _ => groups.push(Group { locations: vec![location] }),
        }
    }
    groups
}

/// Fetch a window's blobs (in parallel, one ranged read per group) and return them in
/// the window's order.
async fn fetch_window(repo: &Repository, window: Vec<BlobLocation>) -> Result<Vec<Vec<u8>>> {
    let groups = plan(&window);
    let mut fetched: std::collections::HashMap<crate::id::BlobId, Vec<u8>> = std::collections::HashMap::new();
    let mut results = futures::stream::iter(groups.into_iter().map(|g| async move {
        let ids: Vec<crate::id::BlobId> = g.locations.iter().map(|l| l.entry.id).collect();
        Ok::<_, Error>(ids.into_iter().zip(fetch_group(repo, g).await?))
    }))
    .buffer_unordered(repo.backend().connections());
    while let Some(blobs) = results.next().await {
        fetched.extend(blobs?);
    }
    // Hand each blob out; one used twice in the window is cloned for all but its last use.
    let mut uses: std::collections::HashMap<crate::id::BlobId, usize> = std::collections::HashMap::new();
    for l in &window {
        *uses.entry(l.entry.id).or_default() += 1;
    }
    let mut out = Vec::with_capacity(window.len());
    for l in &window {
        let left = uses.get_mut(&l.entry.id).expect("counted");
        *left -= 1;
        let blob = if *left == 0 { fetched.remove(&l.entry.id) } else { fetched.get(&l.entry.id).cloned() };
        out.push(blob.ok_or_else(|| Error::corrupt(format!("blob {} was not fetched", l.entry.id)))?);
    }
    Ok(out)
}

/// Fetch a group with one ranged read and open its blobs on a blocking thread.
async fn fetch_group(repo: &Repository, group: Group) -> Result<Vec<Vec<u8>>> {
    let range = group.range();
    let start = range.start;
    let key = repo.key().clone();
    let pack = group.locations[0].pack;
    with_pack_range(repo, pack, range, move |bytes| {
        // Every blob of a group is in one pack: derive its key once.
        let pack_key = key.pack_key(&group.locations[0].salt);
        group
            .locations
            .iter()
            .map(|l| {
                let from = (l.entry.offset - start) as usize;
                open_with(&key, &pack_key, l, &bytes[from..from + l.entry.length as usize])
            })
            .collect()
    })
    .await
}

/// Read `range` of `pack` and run `work` on the bytes on a blocking thread. From a local
/// directory the read happens on that thread too, into a reused buffer; from an object
/// store the range is fetched first.
pub(crate) async fn with_pack_range<T: Send + 'static>(
    repo: &Repository,
    pack: crate::id::PackId,
    range: std::ops::Range<u64>,
    work: impl FnOnce(&[u8]) -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = keys::pack(&pack);
    let backend = repo.backend().clone();
    let fetched = match backend.is_local() {
        true => None,
        false => Some(backend.get_range(&name, range.clone()).await?),
    };
    tokio::task::spawn_blocking(move || match fetched {
        Some(bytes) => work(&bytes),
        None => backend.with_local_range(&name, range, work),
    })
    .await
    .map_err(|e| Error::backend(format!("read task failed: {e}")))?
}

/// The data of `content`, in order, as a stream of blob plaintexts. Windows of about
/// `WINDOW_BYTES` are planned and fetched one ahead of the consumer.
pub fn read_content<'a>(repo: &'a Repository, content: &Content) -> impl Stream<Item = Result<Vec<u8>>> + 'a {
    let walker = LeafWalker::new(repo, content);
    let windows = futures::stream::unfold((walker, false), move |(mut walker, done)| async move {
        if done {
            return None;
        }
        let mut window = Vec::new();
        let mut bytes = 0u64;
        while bytes < WINDOW_BYTES && window.len() < WINDOW_BLOBS {
            let next = match walker.next().await {
                Ok(Some(entry)) => entry,
                Ok(None) if window.is_empty() => return None,
                Ok(None) => return Some((Ok(window), (walker, true))),
                Err(e) => return Some((Err(e), (walker, true))),
            };
            match repo.locate(&next.0) {
                Ok(l) => {
                    bytes += u64::from(l.entry.raw_length);
                    window.push(l);
                }
                Err(e) => return Some((Err(e), (walker, true))),
            }
        }
        Some((Ok(window), (walker, false)))
    });
    windows
        .map(move |window| async move {
            match window {
                // A pack the index lists but the storage does not have is damage.
                Ok(w) => fetch_window(repo, w).await.map_err(|e| match e.kind() {
                    crate::error::ErrorKind::NotFound => e.with_kind(crate::error::ErrorKind::Corrupt),
                    _ => e,
                }),
                Err(e) => Err(e),
            }
        })
        .buffered(2)
        .flat_map(|blobs: Result<Vec<Vec<u8>>>| {
            let items: Vec<Result<Vec<u8>>> = match blobs {
                Ok(b) => b.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
}
