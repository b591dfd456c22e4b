//! `cairn restore`: streams to a file or stdout, trees to a directory or a tar stream.
//!
//! Streams are read in order with several ranged reads in flight
//! ([`crate::repo::load::read_content`]). Trees restore in three passes: plan (walk the
//! trees and group every needed blob by pack, while a second thread creates the
//! directories, files and symlinks in the order found), data (each pack is fetched
//! once, as few coalesced ranges; each blob is decrypted once and written with `pwrite` to
//! every place it belongs; the write that completes a file sets its mode, owner when root
//! and mtime through the open file; once every entry exists directories get theirs,
//! deepest first), then metadata for symlinks and empty files. The data pass does not
//! wait for the creator: ranges are taken in the order their files are created, and a
//! write to a file not yet made waits for it.

use crate::buffers::{with_huge_capacity, SpareBuffers};
use crate::catalog::BlobLocation;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};
use crate::progress::Progress;
use crate::repo::load::{open_with_into, read_content, with_pack_range, LeafWalker};
use crate::repo::Repository;
use crate::snapshot::{Content, Node, NodeKind};
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Blobs in one pack closer than this are fetched in one range.
const COALESCE_GAP: u64 = 1 << 20;
/// A range grows to at most this many bytes, so the reads in flight (one per connection)
/// hold a bounded amount of memory whatever the pack size.
const MAX_RANGE: u64 = 8 << 20;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only these paths (as stored: `/etc/app` or `etc/app`) and what is below them.
    pub includes: Vec<String>,
    /// Refuse (with a warning) symlinks whose target leads outside the target directory:
    /// absolute targets, or more `..` than the link is deep. Set for tar archives, whose
    /// members come from elsewhere.
    pub confine_links: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}

/// Write a stream's data, in order, to `out`.
pub async fn restore_stream<W: Write>(
    repo: &Repository,
    content: &Content,
    out: &mut W,
    progress: &dyn Progress,
) -> Result<u64> {
    let mut blobs = std::pin::pin!(read_content(repo, content));
    let mut written = 0u64;
    progress.begin("restoring", Some(content.size));
    while let Some(blob) = blobs.try_next().await? {
        tokio::task::block_in_place(|| out.write_all(&blob))
            .map_err(|e| Error::new(crate::error::ErrorKind::Io, format!("cannot write restored data: {e}")))?;
        written += blob.len() as u64;
        progress.advance(blob.len() as u64);
    }
    tokio::task::block_in_place(|| out.flush())
        .map_err(|e| Error::new(crate::error::ErrorKind::Io, format!("cannot write restored data: {e}")))?;
    progress.end();
    if written != content.size {
        return Err(Error::corrupt(format!("restored {written} bytes but the snapshot records {}", content.size)));
    }
    Ok(written)
}

/// Restore a stream into `path` through a temporary file beside it, renamed when complete.
pub async fn restore_stream_to_file(
    repo: &Repository,
    content: &Content,
    path: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let tmp = sibling_temp(path);
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    let result = async {
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        let n = restore_stream(repo, content, &mut writer, progress).await?;
        drop(writer);
        file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))?;
        Ok(n)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sibling_temp(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".cairn-{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Normalised include paths: no leading or trailing slashes.
pub(crate) fn includes(options: &RestoreOptions) -> Vec<Vec<u8>> {
    options.includes.iter().map(|i| i.trim_matches('/').as_bytes().to_vec()).filter(|i| !i.is_empty()).collect()
}

/// Whether to restore `path` (relative, slash-separated) and whether to descend into it.
pub(crate) fn selected(includes: &[Vec<u8>], path: &[u8]) -> (bool, bool) {
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
fn safe_name(node: &Node) -> Result<Vec<u8>> {
    let name = node.name_bytes();
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::corrupt(format!("tree holds an unsafe file name {:?}", node.name)));
    }
    Ok(name)
}

/// One place a blob's data goes.
struct Target {
    file: usize,
    offset: u64,
}

/// A file to fill, and what to set once its last byte is written.
struct PlannedFile {
    path: PathBuf,
    /// Its position in the creator's order (see [`Created::wait_for`]).
    created: usize,
    remaining: AtomicU64,
    meta: Meta,
}

#[derive(Default)]
struct Plan {
    files: Vec<PlannedFile>,
    blobs: HashMap<BlobId, (BlobLocation, Vec<Target>)>,
    /// Directories, symlinks and empty files, whose metadata is applied after the data,
    /// in creation order. Files with data get theirs right after their last write.
    metadata: Vec<(PathBuf, Meta)>,
}

/// Restore a tree into `target`, creating it if needed.
pub async fn restore_tree_to_dir(
    repo: &Repository,
    root: &BlobId,
    target: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    std::fs::create_dir_all(target).map_err(|e| Error::io("create", target, e))?;
    let mut stats = RestoreStats::default();
    let mut plan = Plan::default();
    let mut creator = Creator::start();
    let planned = plan_tree(repo, root, target, options, &mut creator, &mut plan, &mut stats).await;
    if let Err(e) = planned {
        // The creator's own error explains a planner that could no longer hand it work.
        creator.finish().await?;
        return Err(e);
    }
    // The data pass looks nothing up: end the planner's read transaction, which would
    // otherwise keep other processes sharing this cache from checkpointing it until we exit.
    repo.catalog().end_reads();
    let created = creator.progress();
    // Once every entry exists, directories get their metadata while the data is written
    // (writing into a file does not touch its directory; a read-only directory could take
    // no new entries). Only a directory we could no longer enter (no owner search
    // permission, unless root) waits until the end.
    let root = is_root();
    let (early, late): (Vec<_>, Vec<_>) =
        plan.metadata.into_iter().partition(|(_, m)| m.kind == NodeKind::Dir && (root || m.mode & 0o100 != 0));
    let directories = tokio::task::spawn_blocking(move || {
        creator.join()?;
        let mut warnings = Vec::new();
        apply_metadata(&early, root, &mut warnings);
        Ok::<_, Error>(warnings)
    });
    progress.begin("restoring", Some(stats.bytes));
    let warnings = Mutex::new(std::mem::take(&mut stats.warnings));
    let written = write_data(repo, plan.files, plan.blobs, created, root, &warnings, progress).await;
    // A failed creator explains writers that waited for it in vain.
    let directory_warnings = directories.await.map_err(|e| Error::backend(format!("restore task failed: {e}")))??;
    written?;
    progress.end();
    stats.warnings = warnings.into_inner().unwrap_or_else(|p| p.into_inner());
    stats.warnings.extend(directory_warnings);
    apply_metadata(&late, root, &mut stats.warnings);
    Ok(stats)
}

/// Walk the tree: hand every directory, file and symlink to the creator, and group the
/// blobs of every file by pack.
async fn plan_tree(
    repo: &Repository,
    root: &BlobId,
    target: &Path,
    options: &RestoreOptions,
    creator: &mut Creator,
    plan: &mut Plan,
    stats: &mut RestoreStats,
) -> Result<()> {
    let includes = includes(options);
    let mut stack = vec![(repo.load_tree(root).await?, target.to_path_buf(), Vec::new())];
    while let Some((tree, dir, rel)) = stack.pop() {
        for mut node in tree.nodes {
            let name = safe_name(&node)?;
            let rel_path = join(&rel, &name);
            let (restore, descend) = selected(&includes, &rel_path);
            if !descend {
                continue;
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(&name));
            match node.kind {
                NodeKind::Dir => {
                    creator.send(Create::Dir(path.clone()))?;
                    let subtree = repo.dir_tree(&mut node, &path.display()).await?;
                    stack.push((subtree, path.clone(), rel_path));
                    if restore {
                        stats.dirs += 1;
                        plan.metadata.push((path, Meta::of(&node)));
                    }
                }
                _ if !restore => {}
                NodeKind::File => {
                    let created = creator.send(Create::File(path.clone()))?;
                    plan_file(repo, plan, &path, &node, created).await?;
                    stats.files += 1;
                    stats.bytes += node.size;
                }
                NodeKind::Symlink => {
                    let link = node.target_bytes().unwrap_or_default();
                    if symlink_allowed(&path, &rel_path, &link, target, options.confine_links, stats) {
                        creator.send(Create::Symlink(path.clone(), link))?;
                        stats.symlinks += 1;
                        plan.metadata.push((path, Meta::of(&node)));
                    }
                }
                other => stats.warnings.push(format!("{}: {other:?} nodes are not restored", path.display())),
            }
        }
    }
    Ok(())
}

/// What the creator makes, in the order the planner found it (parents first).
enum Create {
    Dir(PathBuf),
    File(PathBuf),
    Symlink(PathBuf, Vec<u8>),
}

/// Creates directories, files (empty, truncating what was there) and symlinks on a thread
/// of its own while the planner goes on reading and decrypting trees, and then while the
/// data is written: on a tree of many small files the kernel's inode allocation and the
/// decryption and writing overlap instead of adding up. (Creating from several threads
/// was measured slower: they contend on the directories.)
struct Creator {
    tx: std::sync::mpsc::Sender<Create>,
    /// Entries sent so far.
    sent: usize,
    created: Arc<Created>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Creator {
    fn start() -> Self {
        // Unbounded: the planner must not wait for the disk. The queue holds what the plan
        // holds anyway, a path per entry.
        let (tx, rx) = std::sync::mpsc::channel::<Create>();
        let created = Arc::new(Created::default());
        let progress = created.clone();
        let thread = std::thread::spawn(move || {
            // Writers waiting for an entry learn that none will come, however this ends.
            let _stop = StopOnDrop(&progress);
            for (n, op) in rx.into_iter().enumerate() {
                match op {
                    Create::Dir(path) => create_dir(&path)?,
                    Create::File(path) => {
                        std::fs::File::create(&path).map_err(|e| Error::io("create", &path, e))?;
                    }
                    Create::Symlink(path, link) => make_symlink(&path, &link)?,
                }
                progress.advance(n + 1);
            }
            Ok(())
        });
        Creator { tx, sent: 0, created, thread }
    }

    /// Queue an entry; returns its position for [`Created::wait_for`].
    fn send(&mut self, op: Create) -> Result<usize> {
        self.tx.send(op).map_err(|_| Error::backend("creating the restored files stopped"))?;
        self.sent += 1;
        Ok(self.sent)
    }

    fn progress(&self) -> Arc<Created> {
        self.created.clone()
    }

    /// Wait until everything sent exists; the first creation error, if any.
    fn join(self) -> Result<()> {
        let Creator { tx, thread, .. } = self;
        drop(tx);
        thread.join().unwrap_or_else(|_| Err(Error::backend("creating the restored files panicked")))
    }

    async fn finish(self) -> Result<()> {
        tokio::task::spawn_blocking(move || self.join())
            .await
            .map_err(|e| Error::backend(format!("restore task failed: {e}")))?
    }
}

/// How far the creator has got, for writers that need a file it has not made yet.
#[derive(Default)]
struct Created {
    /// Entries made, in the order sent.
    count: AtomicUsize,
    /// The creator has stopped, finished or failed.
    stopped: AtomicBool,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Created {
    fn advance(&self, count: usize) {
        self.count.store(count, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake();
        }
    }

    fn wake(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Block until entry number `n` (counted from 1 in the order sent) exists.
    fn wait_for(&self, n: usize) -> Result<()> {
        if self.count.load(Ordering::SeqCst) >= n {
            return Ok(());
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = loop {
            // Checked under the lock, after counting ourselves in: `advance` either sees
            // us waiting and wakes us, or stored the count before we load it.
            if self.count.load(Ordering::SeqCst) >= n {
                break Ok(());
            }
            if self.stopped.load(Ordering::SeqCst) {
                break Err(Error::backend("creating the restored files stopped"));
            }
            guard = self.changed.wait(guard).unwrap_or_else(|p| p.into_inner());
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

struct StopOnDrop<'a>(&'a Created);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.wake();
    }
}

fn create_dir(path: &Path) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(Error::io("create directory", path, e)),
    }
}

async fn plan_file(repo: &Repository, plan: &mut Plan, path: &Path, node: &Node, created: usize) -> Result<()> {
    let index = plan.files.len();
    let meta = Meta::of(node);
    if node.size == 0 {
        plan.metadata.push((path.to_path_buf(), meta));
    }
    plan.files.push(PlannedFile { path: path.to_path_buf(), created, remaining: AtomicU64::new(node.size), meta });
    let Some(content) = &node.content else { return Ok(()) };
    let mut walker = LeafWalker::new(repo, content);
    let mut offset = 0u64;
    while let Some(entry) = walker.next().await? {
        let target = Target { file: index, offset };
        match plan.blobs.get_mut(&entry.0) {
            Some((_, targets)) => targets.push(target),
            None => {
                plan.blobs.insert(entry.0, (repo.locate(&entry.0)?, vec![target]));
            }
        }
        offset += entry.1;
    }
    if offset != node.size {
        return Err(Error::corrupt(format!(
            "{}: content holds {offset} bytes but the tree records {}",
            path.display(),
            node.size
        )));
    }
    Ok(())
}

/// Fetch each pack once and write every blob to all its targets.
async fn write_data(
    repo: &Repository,
    files: Vec<PlannedFile>,
    blobs: HashMap<BlobId, (BlobLocation, Vec<Target>)>,
    created: Arc<Created>,
    root: bool,
    warnings: &Mutex<Vec<String>>,
    progress: &dyn Progress,
) -> Result<()> {
    let mut by_pack: BTreeMap<PackId, Vec<(BlobLocation, Vec<Target>)>> = BTreeMap::new();
    for (_, (location, targets)) in blobs {
        by_pack.entry(location.pack).or_default().push((location, targets));
    }
    let mut ranges = Vec::new();
    for (pack, mut wanted) in by_pack {
        wanted.sort_by_key(|(l, _)| l.entry.offset);
        let mut current: Vec<(BlobLocation, Vec<Target>)> = Vec::new();
        for item in wanted {
            let split = current.last().is_some_and(|(last, _)| item.0.entry.offset > last.entry.end() + COALESCE_GAP)
                || current.first().is_some_and(|(first, _)| item.0.entry.end() - first.entry.offset > MAX_RANGE);
            if split {
                ranges.push((pack, std::mem::take(&mut current)));
            }
            current.push(item);
        }
        if !current.is_empty() {
            ranges.push((pack, current));
        }
    }
    // First the ranges whose files the creator makes first, so writers rarely wait for it.
    let last_created = |items: &[(BlobLocation, Vec<Target>)]| {
        items.iter().flat_map(|(_, targets)| targets).map(|t| files[t.file].created).max()
    };
    ranges.sort_by_cached_key(|(_, items)| last_created(items));
    let files = Arc::new(files);
    let connections = repo.backend().connections();
    let buffers =
        Arc::new(RangeBuffers { runs: SpareBuffers::new(connections), scratch: SpareBuffers::new(connections) });
    futures::stream::iter(ranges)
        .map(|(pack, items)| {
            let files = files.clone();
            let created = created.clone();
            let buffers = buffers.clone();
            async move {
                let start = items[0].0.entry.offset;
                let end = items.iter().map(|(l, _)| l.entry.end()).max().unwrap();
                let key = repo.key().clone();
                let (written, failed) = with_pack_range(repo, pack, start..end, move |bytes| {
                    write_range(&key, &files, &created, root, start, bytes, &items, &buffers)
                })
                .await?;
                warnings.lock().unwrap_or_else(|p| p.into_inner()).extend(failed);
                Ok::<_, Error>(written)
            }
        })
        .buffer_unordered(repo.backend().connections())
        .try_for_each(|written| {
            progress.advance(written);
            async { Ok(()) }
        })
        .await
}

/// Decrypt the blobs of one range and write each to its places. Consecutive blobs that
/// continue the same file are decompressed back to back into one reused buffer and
/// written with one `pwrite` of up to [`RUN_BYTES`] (fewer system calls; no measurable
/// difference in time on the benchmark tree). A file whose last bytes this writes gets
/// its metadata here, through the open file. Returns the bytes written and the metadata
/// warnings.
#[allow(clippy::too_many_arguments)]
fn write_range(
    key: &crate::crypto::MasterKey,
    files: &[PlannedFile],
    created: &Created,
    root: bool,
    start: u64,
    bytes: &[u8],
    items: &[(BlobLocation, Vec<Target>)],
    buffers: &RangeBuffers,
) -> Result<(u64, Vec<String>)> {
    let mut out = RangeWriter { files, created, root, open: HashMap::new(), written: 0, warnings: Vec::new() };
    let mut run = buffers.runs.take().unwrap_or_else(|| with_huge_capacity(RUN_BYTES + MAX_BLOB));
    let mut scratch = buffers.scratch.take().unwrap_or_default();
    // Where the data in `run` goes: a file and the offset of its first byte.
    let mut run_at: Option<(usize, u64)> = None;
    // A range lies within one pack: derive its key once.
    let pack_key = key.pack_key(&items[0].0.salt);
    for (location, targets) in items {
        let from = (location.entry.offset - start) as usize;
        let sealed = &bytes[from..from + location.entry.length as usize];
        let continues = run_at.and_then(|(file, offset)| {
            targets.iter().position(|t| t.file == file && t.offset == offset + run.len() as u64)
        });
        let primary = continues.unwrap_or(0);
        if continues.is_none() || run.len() + location.entry.raw_length as usize > RUN_BYTES {
            if let Some((file, offset)) = run_at {
                out.write(file, offset, &run)?;
            }
            run.clear();
            run_at = Some((targets[primary].file, targets[primary].offset));
        }
        let at = run.len();
        open_with_into(key, &pack_key, location, sealed, &mut scratch, &mut run)?;
        // Its other places (the same data stored once, used in several files or twice in
        // one) are written now, from the run.
        for (i, target) in targets.iter().enumerate() {
            if i != primary {
                out.write(target.file, target.offset, &run[at..])?;
            }
        }
    }
    if let Some((file, offset)) = run_at {
        out.write(file, offset, &run)?;
    }
    run.clear();
    buffers.runs.give(run);
    buffers.scratch.give(scratch);
    Ok((out.written, out.warnings))
}

/// Buffers of finished ranges, one of each per read in flight.
struct RangeBuffers {
    runs: SpareBuffers,
    /// Decrypted blobs before decompression.
    scratch: SpareBuffers,
}

/// Bytes of one file's consecutive blobs gathered into one write.
const RUN_BYTES: usize = 1 << 20;
/// Room for one more blob past [`RUN_BYTES`] before a run is cut (the largest chunk the
/// chunker makes by default; larger ones only make the buffer grow once).
const MAX_BLOB: usize = 512 << 10;

/// The files one range writes into, opened once each.
struct RangeWriter<'a> {
    files: &'a [PlannedFile],
    created: &'a Created,
    root: bool,
    open: HashMap<usize, std::fs::File>,
    written: u64,
    warnings: Vec<String>,
}

impl RangeWriter<'_> {
    fn write(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let planned = &self.files[index];
        let path = &planned.path;
        let file = match self.open.entry(index) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.created.wait_for(planned.created)?;
                v.insert(std::fs::OpenOptions::new().write(true).open(path).map_err(|e| Error::io("open", path, e))?)
            }
        };
        file.write_all_at(data, offset).map_err(|e| Error::io("write", path, e))?;
        let len = data.len() as u64;
        self.written += len;
        if planned.remaining.fetch_sub(len, Ordering::AcqRel) == len {
            if let Err(e) = planned.meta.apply_to_file(file, self.root) {
                self.warnings.push(format!("{}: cannot restore metadata: {e}", path.display()));
            }
        }
        Ok(())
    }
}

fn apply_metadata(nodes: &[(PathBuf, Meta)], root: bool, warnings: &mut Vec<String>) {
    // Links and empty files in order, then directories deepest first.
    let (dirs, others): (Vec<_>, Vec<_>) = nodes.iter().partition(|(_, m)| m.kind == NodeKind::Dir);
    for (path, meta) in others.into_iter().chain(dirs.into_iter().rev()) {
        if let Err(e) = meta.apply(path, root) {
            warnings.push(format!("{}: cannot restore metadata: {e}", path.display()));
        }
    }
}

/// The metadata a restore sets on an entry: mode, owner (when root), mtime.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: filetime::FileTime,
}

impl Meta {
    fn of(node: &Node) -> Self {
        let mtime = filetime::FileTime::from_unix_time(
            node.mtime.div_euclid(1_000_000_000),
            node.mtime.rem_euclid(1_000_000_000) as u32,
        );
        Meta { kind: node.kind, mode: node.mode, uid: node.uid, gid: node.gid, mtime }
    }

    /// Set owner (when root), mode and mtime on `path`. Owner and mode are changed only
    /// where they differ from what the entry has: a stat costs less than a chown or
    /// chmod, each of which dirties the inode in the journal, and a restore as root of
    /// root's files (or of files with the usual modes) needs neither.
    fn apply(&self, path: &Path, root: bool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let current = std::fs::symlink_metadata(path)?;
        let chowned = root && self.owner_differs(&current);
        if self.kind == NodeKind::Symlink {
            if chowned {
                std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))?;
            }
            return filetime::set_symlink_file_times(path, self.mtime, self.mtime);
        }
        if chowned {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))?;
        }
        if chowned || self.mode_differs(&current) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))?;
        }
        filetime::set_file_times(path, self.mtime, self.mtime)
    }

    /// The same through an open file: no path lookups.
    fn apply_to_file(&self, file: &std::fs::File, root: bool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let current = file.metadata()?;
        let chowned = root && self.owner_differs(&current);
        if chowned {
            std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))?;
        }
        // A chown clears set-user-ID and set-group-ID bits: the mode goes on after it.
        if chowned || self.mode_differs(&current) {
            file.set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        }
        filetime::set_file_handle_times(file, Some(self.mtime), Some(self.mtime))
    }

    fn owner_differs(&self, current: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        (current.uid(), current.gid()) != (self.uid, self.gid)
    }

    fn mode_differs(&self, current: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        current.mode() & 0o7777 != self.mode & 0o7777
    }
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

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

/// Hand a stream's bytes, in order, to `consume` as a reader running on a scoped thread,
/// while this thread fetches blobs into a bounded channel: memory stays bounded by the
/// channel, whatever the stream's size. A fetch error wins over what `consume` reports.
pub(crate) async fn consume_stream<T: Send>(
    repo: &Repository,
    content: &Content,
    consume: impl FnOnce(ChannelReader) -> Result<T> + Send,
) -> Result<T> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
            let consumer = scope.spawn(move || consume(ChannelReader::new(rx)));
            let fed = handle.block_on(async {
                let mut blobs = std::pin::pin!(read_content(repo, content));
                while let Some(blob) = blobs.try_next().await? {
                    if tx.send(blob).is_err() {
                        break;
                    }
                }
                Ok::<_, Error>(())
            });
            drop(tx);
            let consumed = consumer.join().unwrap_or_else(|_| Err(Error::backend("a stream consumer panicked")));
            fed?;
            consumed
        })
    })
}

/// Create the symlink `path` (at `rel` inside `target`) pointing at `link`, unless
/// [`symlink_allowed`] refuses it. Returns whether it was created.
pub(crate) fn place_symlink(
    path: &Path,
    rel: &[u8],
    link: &[u8],
    target: &Path,
    confine: bool,
    stats: &mut RestoreStats,
) -> Result<bool> {
    if !symlink_allowed(path, rel, link, target, confine, stats) {
        return Ok(false);
    }
    make_symlink(path, link)?;
    stats.symlinks += 1;
    Ok(true)
}

/// Create the symlink `path` pointing at `link`, replacing whatever file is there.
fn make_symlink(path: &Path, link: &[u8]) -> Result<()> {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(link), path)
        .map_err(|e| Error::io("create symlink", path, e))
}

/// With `confine`, a link at `rel` inside `target` that leads outside it is refused with
/// a warning.
fn symlink_allowed(
    path: &Path,
    rel: &[u8],
    link: &[u8],
    target: &Path,
    confine: bool,
    stats: &mut RestoreStats,
) -> bool {
    if confine && super::archive::link_escapes(rel, link) {
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

/// A tar header with a node's mode, owner and mtime (size 0, type unset).
pub(crate) fn node_header(node: &Node) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(node.mode);
    header.set_uid(node.uid.into());
    header.set_gid(node.gid.into());
    header.set_mtime(node.mtime.div_euclid(1_000_000_000).max(0) as u64);
    header.set_size(0);
    header
}

pub(crate) fn tar_error(e: std::io::Error) -> Error {
    Error::new(crate::error::ErrorKind::Io, format!("cannot write the tar stream: {e}"))
}

/// Bytes handed from one thread to another through a bounded channel.
pub(crate) struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub(crate) fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        ChannelReader { rx, buf: Vec::new(), pos: 0 }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(buf) => {
                    self.buf = buf;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
