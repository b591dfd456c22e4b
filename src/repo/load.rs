//! The read side: locate blobs through the catalog, fetch them by range, open them.
//!
//! [`ContentReader`] streams a file's or stream's data in order while several range reads
//! are in flight: consecutive blobs stored back to back in one pack are fetched with one
//! ranged GET, groups are fetched and decrypted concurrently, and `buffered` keeps the
//! output in order. Stream nodes are loaded lazily, so memory does not grow with the
//! length of the stream.

use super::Repository;
use crate::backend::keys;
use crate::catalog::BlobLocation;
use crate::crypto::{MasterKey, SealKey};
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::pack;
use crate::pack::BlobKind;
use crate::snapshot::{decode_node, Content, ContentEntry};
use futures::{Stream, StreamExt};

/// Largest ranged read that grouping builds.
const MAX_GROUP_BYTES: u64 = 8 << 20;

impl Repository {
    /// Where a blob is, or a `Corrupt` error naming it.
    pub fn locate(&self, id: &BlobId) -> Result<BlobLocation> {
        self.catalog().lookup(id)?.ok_or_else(|| {
            Error::corrupt(format!("blob {id} is not in the index: the repository is damaged; run `cairn check`"))
        })
    }

    /// Fetch, decrypt and verify one blob. Metadata packs are fetched whole on first use
    /// and kept in a bounded cache: a walk over thousands of trees costs a few reads.
    pub async fn load_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        let location = self.locate(id)?;
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
    pack::open_blob(key, pack_key, &location.entry, sealed)
        .map_err(|e| e.context(format!("blob {} in pack {}", location.entry.id, location.pack)))
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

/// Blobs that sit back to back in one pack: fetched with one ranged read.
struct Group {
    locations: Vec<BlobLocation>,
}

impl Group {
    fn range(&self) -> std::ops::Range<u64> {
        self.locations[0].entry.offset..self.locations.last().unwrap().entry.end()
    }

    fn extends(&self, next: &BlobLocation) -> bool {
        let last = self.locations.last().unwrap();
        last.pack == next.pack
            && last.entry.end() == next.entry.offset
            && next.entry.end() - self.range().start <= MAX_GROUP_BYTES
    }
}

/// Fetch a group with one ranged read and open its blobs on a blocking thread.
async fn fetch_group(repo: &Repository, group: Group) -> Result<Vec<Vec<u8>>> {
    let range = group.range();
    let start = range.start;
    let bytes = repo.backend().get_range(&keys::pack(&group.locations[0].pack), range).await?;
    let key = repo.key().clone();
    tokio::task::spawn_blocking(move || {
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
    .map_err(|e| Error::backend(format!("decrypt task failed: {e}")))?
}

/// The data of `content`, in order, as a stream of blob plaintexts.
pub fn read_content<'a>(repo: &'a Repository, content: &Content) -> impl Stream<Item = Result<Vec<u8>>> + 'a {
    let walker = LeafWalker::new(repo, content);
    let groups = futures::stream::unfold(
        (walker, None::<BlobLocation>, false),
        move |(mut walker, mut pending, done)| async move {
            if done {
                return None;
            }
            let mut group: Option<Group> = pending.take().map(|l| Group { locations: vec![l] });
            loop {
                let next = match walker.next().await {
                    Ok(Some(entry)) => entry,
                    Ok(None) => return group.map(|g| (Ok(g), (walker, None, true))),
                    Err(e) => return Some((Err(e), (walker, None, true))),
                };
                let location = match repo.locate(&next.0) {
                    Ok(l) => l,
                    Err(e) => return Some((Err(e), (walker, None, true))),
                };
                match &mut group {
                    None => group = Some(Group { locations: vec![location] }),
                    Some(g) if g.extends(&location) => g.locations.push(location),
                    Some(_) => return group.map(|g| (Ok(g), (walker, Some(location), false))),
                }
            }
        },
    );
    groups
        .map(move |group| async move {
            match group {
                Ok(g) => fetch_group(repo, g).await,
                Err(e) => Err(e),
            }
        })
        // Groups fetched at once while streaming: one per connection.
        .buffered(repo.backend().connections())
        .flat_map(|blobs: Result<Vec<Vec<u8>>>| {
            let items: Vec<Result<Vec<u8>>> = match blobs {
                Ok(b) => b.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
}
