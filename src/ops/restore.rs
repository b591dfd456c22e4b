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

use crate::beneath::{split, Beneath, InTheWay};
use crate::buffers::{with_huge_capacity, SpareBuffers};
use crate::catalog::BlobLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{Content, Node, NodeKind};
use crate::id::{BlobId, PackId};
use crate::progress::Progress;
use crate::repo::load::{open_with_into, read_content, with_pack_range, LeafWalker};
use crate::repo::Repository;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::fd::AsFd;
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
    /// What to do with a symlink in the target where the snapshot has a directory or a file.
    pub in_the_way: InTheWay,
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
        tokio::task::block_in_place(|| out.write_all(&blob)).map_err(|e| Error::output("the restored data", e))?;
        written += blob.len() as u64;
        progress.advance(blob.len() as u64);
    }
    tokio::task::block_in_place(|| out.flush()).map_err(|e| Error::output("the restored data", e))?;
    progress.end();
    if written != content.size {
        return Err(Error::corrupt(format!("restored {written} bytes but the snapshot records {}", content.size)));
    }
    Ok(written)
}

/// Restore a stream into `path` through a new temporary file beside it (an unpredictable
/// name, created exclusively), renamed over `path` when complete. A file already at `path`
/// is replaced, and its mode and owner are kept; a symlink there is replaced, not followed.
pub async fn restore_stream_to_file(
    repo: &Repository,
    content: &Content,
    path: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let place = Place::new(path)?;
    let mut file = place.create()?;
    let result = async {
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        let n = restore_stream(repo, content, &mut writer, progress).await?;
        drop(writer);
        place.commit(&file)?;
        Ok(n)
    }
    .await;
    if result.is_err() {
        place.abandon();
    }
    result
}

/// A file about to be replaced: its directory, held open, a temporary name in it and
/// what is at the final name now.
pub struct Place {
    dir: Beneath,
    name: Vec<u8>,
    temp: Vec<u8>,
    replaced: Option<rustix::fs::Stat>,
    path: PathBuf,
}

impl Place {
    pub fn new(path: &Path) -> Result<Self> {
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) => (if dir.as_os_str().is_empty() { Path::new(".") } else { dir }, name),
            _ => return Err(Error::invalid(format!("{} names no file; give a file path", path.display()))),
        };
        let dir = Beneath::open(dir, InTheWay::Replace)?;
        let name = name.as_bytes().to_vec();
        let here = dir
            .resolve(b"", rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY)
            .map_err(|e| Error::io("open", path, e))?;
        let replaced = dir.check_file_place(here.as_fd(), &name, &name)?;
        Ok(Place { temp: dir.temp_name(), dir, name, replaced, path: path.to_path_buf() })
    }

    /// The new file, empty, 0600.
    pub fn create(&self) -> Result<std::fs::File> {
        let here = self.here()?;
        self.dir.create_temp(here.as_fd(), &self.temp, &self.name)
    }

    /// Give the new file the mode and owner of the one it replaces (a new file: 0666 less
    /// the umask), sync it and rename it into place.
    pub fn commit(&self, file: &std::fs::File) -> Result<()> {
        keep_mode_and_owner(file, self.replaced.as_ref()).map_err(|e| Error::io("set the mode of", &self.path, e))?;
        file.sync_all().map_err(|e| Error::io("sync", &self.path, e))?;
        let here = self.here()?;
        self.dir.rename(here.as_fd(), &self.temp, &self.name, &self.name)
    }

    pub fn abandon(&self) {
        if let Ok(here) = self.here() {
            self.dir.remove(here.as_fd(), &self.temp);
        }
    }

    fn here(&self) -> Result<std::os::fd::OwnedFd> {
        self.dir
            .resolve(b"", rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY)
            .map_err(|e| Error::io("open the directory of", &self.path, e))
    }
}

/// Mode and owner for a file that replaces `replaced`: the same as it had (the owner
/// only where this process may give it; a service's database stays the service's), or
/// for a new file the usual 0666 less the umask.
pub(crate) fn keep_mode_and_owner(file: &std::fs::File, replaced: Option<&rustix::fs::Stat>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(old) = replaced else {
        return file.set_permissions(std::fs::Permissions::from_mode(0o666 & !crate::backend::starting_umask()));
    };
    let current = file.metadata()?;
    if (std::os::unix::fs::MetadataExt::uid(&current), std::os::unix::fs::MetadataExt::gid(&current))
        != (old.st_uid, old.st_gid)
    {
        match std::os::unix::fs::fchown(file, Some(old.st_uid), Some(old.st_gid)) {
            Ok(()) => {}
            // Not ours to give: keep the group at least, when we are in it.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let _ = std::os::unix::fs::fchown(file, None, Some(old.st_gid));
            }
            Err(e) => return Err(e),
        }
    }
    file.set_permissions(std::fs::Permissions::from_mode(old.st_mode & 0o7777))
}

/// Normalised include paths: no leading or trailing slashes.
pub(crate) fn includes(options: &RestoreOptions) -> Vec<Vec<u8>> {
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

/// A file to fill under its temporary name, and what to set once its last byte is written.
struct PlannedFile {
    /// Relative to the target, slash-separated.
    rel: Vec<u8>,
    /// The temporary name in the same directory.
    temp: Vec<u8>,
    /// Its position in the creator's order (see [`Created::wait_for`]).
    created: usize,
    remaining: AtomicU64,
    /// Its length (set once written: runs of zeros are left as holes).
    size: u64,
    meta: Meta,
    /// Renamed to its final name, complete.
    done: AtomicBool,
}

impl PlannedFile {
    fn temp_rel(&self) -> Vec<u8> {
        join(split(&self.rel).0, &self.temp)
    }
}

#[derive(Default)]
struct Plan {
    files: Vec<PlannedFile>,
    blobs: HashMap<BlobId, (BlobLocation, Vec<Target>)>,
    /// Directories and symlinks, whose metadata is applied after the data, in creation
    /// order. Files get theirs before they are renamed into place.
    metadata: Vec<(Vec<u8>, Meta)>,
}

/// Restore a tree into `target`, creating it if needed. Nothing is written outside it:
/// no symlink below `target` is followed ([`Beneath`]). Every file is written under a
/// temporary name and renamed when complete, so a failed restore leaves no wrong bytes
/// under a final name: files that cannot be restored (damaged or missing data) are
/// skipped, the others completed, and the error names the skipped ones.
pub async fn restore_tree_to_dir(
    repo: &Repository,
    root: &BlobId,
    target: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    let beneath = Arc::new(Beneath::create(target, options.in_the_way)?);
    let mut stats = RestoreStats::default();
    let mut plan = Plan::default();
    let is_root = crate::process::is_root();
    let mut creator = Creator::start(beneath.clone(), is_root);
    let planned = plan_tree(repo, root, &beneath, options, &mut creator, &mut plan, &mut stats).await;
    if let Err(e) = planned {
        // The creator's own error explains a planner that could no longer hand it work.
        let created = creator.progress();
        let creation = creator.finish().await;
        remove_unfinished(&beneath, &plan.files, &created);
        creation?;
        return Err(e);
    }
    // The data pass looks nothing up: end the planner's read transaction, which would
    // otherwise keep other processes sharing this cache from checkpointing it until we exit.
    repo.catalog().end_reads();
    let created = creator.progress();
    // Directories get their metadata last, deepest first, once every file in them has
    // been renamed into place (a rename changes its directory's mtime, and a read-only
    // directory takes no new names).
    let creation = tokio::task::spawn_blocking(move || creator.join());
    progress.begin("restoring", Some(stats.bytes));
    let warnings = Mutex::new(std::mem::take(&mut stats.warnings));
    let files = Arc::new(plan.files);
    let written =
        write_data(repo, &beneath, files.clone(), plan.blobs, created.clone(), is_root, &warnings, progress).await;
    // A failed creator explains writers that waited for it in vain.
    let creation = creation.await.map_err(|e| Error::backend(format!("restore task failed: {e}")));
    let unfinished = remove_unfinished(&beneath, &files, &created);
    creation??;
    let damage = written?;
    progress.end();
    stats.warnings = warnings.into_inner().unwrap_or_else(|p| p.into_inner());
    let metadata = plan.metadata;
    let for_metadata = beneath.clone();
    let metadata_warnings = tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        apply_metadata(&for_metadata, &metadata, is_root, &mut warnings);
        warnings
    })
    .await
    .map_err(|e| Error::backend(format!("restore task failed: {e}")))?;
    stats.warnings.extend(metadata_warnings);
    if !unfinished.is_empty() {
        return Err(incomplete(&beneath, &unfinished, files.len(), damage));
    }
    Ok(stats)
}

/// Remove the temporary files of every file not completed; returns their paths.
fn remove_unfinished(beneath: &Beneath, files: &[PlannedFile], created: &Created) -> Vec<Vec<u8>> {
    let made = created.count.load(Ordering::SeqCst);
    let mut unfinished = Vec::new();
    for file in files.iter().filter(|f| !f.done.load(Ordering::SeqCst)) {
        if file.created <= made {
            if let Ok((parent, _)) = beneath.parent(&file.rel) {
                beneath.remove(parent.as_fd(), &file.temp);
            }
        }
        unfinished.push(file.rel.clone());
    }
    unfinished
}

/// The error of a restore that completed all but `unfinished`.
fn incomplete(beneath: &Beneath, unfinished: &[Vec<u8>], total: usize, damage: Option<Error>) -> Error {
    const NAMED: usize = 10;
    let mut names: Vec<String> =
        unfinished.iter().take(NAMED).map(|rel| beneath.display(rel).display().to_string()).collect();
    if unfinished.len() > NAMED {
        names.push(format!("and {} more", unfinished.len() - NAMED));
    }
    let (kind, cause) = match &damage {
        Some(e) => (ErrorKind::Corrupt, e.message().to_string()),
        None => (ErrorKind::Io, "the restore stopped".to_string()),
    };
    Error::new(
        kind,
        format!(
            "{} of {total} files could not be restored ({cause}): {}; every other file is complete and none is \
             left partly written; run `cairn check --read-data` and restore them from another snapshot",
            unfinished.len(),
            names.join(", ")
        ),
    )
}

/// Walk the tree: hand every directory, file and symlink to the creator, and group the
/// blobs of every file by pack.
async fn plan_tree(
    repo: &Repository,
    root: &BlobId,
    beneath: &Beneath,
    options: &RestoreOptions,
    creator: &mut Creator,
    plan: &mut Plan,
    stats: &mut RestoreStats,
) -> Result<()> {
    let includes = includes(options);
    let mut stack = vec![(repo.load_tree(root).await?, Vec::new())];
    while let Some((tree, rel)) = stack.pop() {
        for mut node in tree.nodes {
            let name = safe_name(&node)?;
            let rel_path = join(&rel, &name);
            let (restore, descend) = selected(&includes, &rel_path);
            if !descend {
                continue;
            }
            match node.kind {
                NodeKind::Dir => {
                    creator.send(Create::Dir(rel_path.clone()))?;
                    let subtree = repo.dir_tree(&mut node, &beneath.display(&rel_path).display()).await?;
                    if restore {
                        stats.dirs += 1;
                        plan.metadata.push((rel_path.clone(), Meta::of(&node)));
                    }
                    stack.push((subtree, rel_path));
                }
                _ if !restore => {}
                NodeKind::File => {
                    let temp = beneath.temp_name();
                    let meta = Meta::of(&node);
                    let empty = node.size == 0;
                    let created = creator.send(Create::File {
                        rel: rel_path.clone(),
                        temp: temp.clone(),
                        empty: empty.then_some(meta),
                    })?;
                    if !empty {
                        plan_file(repo, plan, beneath, rel_path, temp, &node, created).await?;
                    }
                    stats.files += 1;
                    stats.bytes += node.size;
                }
                NodeKind::Symlink => {
                    let link = node.target_bytes().unwrap_or_default();
                    if symlink_allowed(
                        &beneath.display(&rel_path),
                        &rel_path,
                        &link,
                        beneath.display(b"").as_path(),
                        options.confine_links,
                        stats,
                    ) {
                        creator.send(Create::Symlink(rel_path.clone(), link))?;
                        stats.symlinks += 1;
                        plan.metadata.push((rel_path, Meta::of(&node)));
                    }
                }
                other => stats
                    .warnings
                    .push(format!("{}: {other:?} nodes are not restored", beneath.display(&rel_path).display())),
            }
        }
    }
    Ok(())
}

/// What the creator makes, in the order the planner found it (parents first); paths
/// relative to the target.
enum Create {
    Dir(Vec<u8>),
    /// A file's temporary name; an empty one is finished (metadata, rename) at once.
    File {
        rel: Vec<u8>,
        temp: Vec<u8>,
        empty: Option<Meta>,
    },
    Symlink(Vec<u8>, Vec<u8>),
}

/// Creates directories, files (empty, under their temporary names) and symlinks on a
/// thread of its own while the planner goes on reading and decrypting trees, and then
/// while the data is written: on a tree of many small files the kernel's inode allocation
/// and the decryption and writing overlap instead of adding up. (Creating from several
/// threads was measured slower: they contend on the directories.)
struct Creator {
    tx: std::sync::mpsc::Sender<Create>,
    /// Entries sent so far.
    sent: usize,
    created: Arc<Created>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Creator {
    fn start(beneath: Arc<Beneath>, root: bool) -> Self {
        // Unbounded: the planner must not wait for the disk. The queue holds what the plan
        // holds anyway, a path per entry.
        let (tx, rx) = std::sync::mpsc::channel::<Create>();
        let created = Arc::new(Created::default());
        let progress = created.clone();
        let thread = std::thread::spawn(move || {
            // Writers waiting for an entry learn that none will come, however this ends.
            let _stop = StopOnDrop(&progress);
            // Entries come directory by directory: the last parent stays open.
            let mut parents = Parents { beneath: &beneath, open: None };
            for (n, op) in rx.into_iter().enumerate() {
                match op {
                    Create::Dir(rel) => {
                        let (parent, name) = parents.of(&rel)?;
                        beneath.mkdir(parent, name, &rel, 0o700)?;
                    }
                    Create::File { rel, temp, empty } => {
                        let (parent, name) = parents.of(&rel)?;
                        // Only the temporary file here: this thread makes every entry, so
                        // the checks of the final name and the final size are left to the
                        // writers, which run in parallel.
                        let file = beneath.create_temp(parent, &temp, &rel)?;
                        if let Some(meta) = empty {
                            if let Err(e) = beneath.check_file_place(parent, name, &rel) {
                                beneath.remove(parent, &temp);
                                return Err(e);
                            }
                            if let Err(e) = meta.apply_to_file(&file, root) {
                                beneath.remove(parent, &temp);
                                return Err(Error::io("set the metadata of", &beneath.display(&rel), e));
                            }
                            beneath.rename(parent, &temp, name, &rel)?;
                        }
                    }
                    Create::Symlink(rel, link) => {
                        let (parent, name) = parents.of(&rel)?;
                        beneath.symlink(parent, name, &link, &rel)?;
                    }
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

/// The creator's open parent directory.
struct Parents<'a> {
    beneath: &'a Beneath,
    open: Option<(Vec<u8>, std::os::fd::OwnedFd)>,
}

impl Parents<'_> {
    /// The open parent of `rel` and its last component.
    fn of<'r>(&mut self, rel: &'r [u8]) -> Result<(std::os::fd::BorrowedFd<'_>, &'r [u8])> {
        let (dir, name) = split(rel);
        if self.open.as_ref().is_none_or(|(open, _)| open != dir) {
            let (fd, _) = self.beneath.parent(rel)?;
            self.open = Some((dir.to_vec(), fd));
        }
        let fd = self.open.as_ref().map(|(_, fd)| fd.as_fd()).expect("opened above");
        Ok((fd, name))
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

async fn plan_file(
    repo: &Repository,
    plan: &mut Plan,
    beneath: &Beneath,
    rel: Vec<u8>,
    temp: Vec<u8>,
    node: &Node,
    created: usize,
) -> Result<()> {
    let index = plan.files.len();
    let Some(content) = &node.content else {
        return Err(Error::corrupt(format!(
            "{}: the tree records data but no content",
            beneath.display(&rel).display()
        )));
    };
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
            beneath.display(&rel).display(),
            node.size
        )));
    }
    let meta = Meta::of(node);
    plan.files.push(PlannedFile {
        rel,
        temp,
        created,
        remaining: AtomicU64::new(node.size),
        size: node.size,
        meta,
        done: AtomicBool::new(false),
    });
    Ok(())
}

/// What one range's writing left undone: the files it could not fill, and why.
#[derive(Default)]
struct Damage {
    files: Vec<usize>,
    first: Option<Error>,
}

impl Damage {
    fn add(&mut self, files: impl IntoIterator<Item = usize>, e: Error) {
        self.files.extend(files);
        self.first.get_or_insert(e);
    }
}

/// Whether an error reading a pack range is damage to the stored data (the files it
/// feeds are skipped) rather than a failure that stops the restore.
fn is_damage(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound)
}

/// Fetch each pack once and write every blob to all its targets. Damaged or missing data
/// skips the files it feeds (their temporary files are removed by the caller) and the rest
/// go on; any other failure stops. Returns the first damage seen, if any.
#[allow(clippy::too_many_arguments)]
async fn write_data(
    repo: &Repository,
    beneath: &Arc<Beneath>,
    files: Arc<Vec<PlannedFile>>,
    blobs: HashMap<BlobId, (BlobLocation, Vec<Target>)>,
    created: Arc<Created>,
    root: bool,
    warnings: &Mutex<Vec<String>>,
    progress: &dyn Progress,
) -> Result<Option<Error>> {
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
    let connections = repo.backend().connections();
    let buffers =
        Arc::new(RangeBuffers { runs: SpareBuffers::new(connections), scratch: SpareBuffers::new(connections) });
    let damage = Mutex::new(Damage::default());
    futures::stream::iter(ranges)
        .map(|(pack, items)| {
            let files = files.clone();
            let created = created.clone();
            let buffers = buffers.clone();
            let beneath = beneath.clone();
            let damage = &damage;
            async move {
                let start = items[0].0.entry.offset;
                let end = items.iter().map(|(l, _)| l.entry.end()).max().unwrap();
                let key = repo.key().clone();
                let fed: Vec<usize> = items.iter().flat_map(|(_, t)| t.iter().map(|t| t.file)).collect();
                let out = with_pack_range(repo, pack, start..end, move |bytes| {
                    let context = RangeContext { key: &key, files: &files, beneath: &beneath, created: &created, root };
                    write_range(&context, start, bytes, &items, &buffers)
                })
                .await;
                match out {
                    Ok(range) => {
                        warnings.lock().unwrap_or_else(|p| p.into_inner()).extend(range.warnings);
                        if let Some(e) = range.damage.first {
                            damage.lock().unwrap_or_else(|p| p.into_inner()).add(range.damage.files, e);
                        }
                        Ok(range.written)
                    }
                    Err(e) if is_damage(&e) => {
                        damage.lock().unwrap_or_else(|p| p.into_inner()).add(fed, e.with_kind(ErrorKind::Corrupt));
                        Ok(0)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(connections)
        .try_for_each(|written| {
            progress.advance(written);
            async { Ok(()) }
        })
        .await?;
    Ok(damage.into_inner().unwrap_or_else(|p| p.into_inner()).first)
}

/// What every range writer shares.
struct RangeContext<'a> {
    key: &'a crate::crypto::MasterKey,
    files: &'a [PlannedFile],
    beneath: &'a Beneath,
    created: &'a Created,
    root: bool,
}

/// What writing one range did.
struct RangeOutcome {
    written: u64,
    warnings: Vec<String>,
    damage: Damage,
}

/// Decrypt the blobs of one range and write each to its places. Consecutive blobs that
/// continue the same file are decompressed back to back into one reused buffer and
/// written with one `pwrite` of up to [`RUN_BYTES`] (fewer system calls; no measurable
/// difference in time on the benchmark tree). A file whose last bytes this writes gets
/// its metadata here, through the open file, and is renamed into place. A blob that
/// fails to decrypt is damage: its files are skipped, the other blobs written.
fn write_range(
    context: &RangeContext,
    start: u64,
    bytes: &[u8],
    items: &[(BlobLocation, Vec<Target>)],
    buffers: &RangeBuffers,
) -> Result<RangeOutcome> {
    let mut out = RangeWriter { context, open: Vec::new(), written: 0, warnings: Vec::new() };
    let mut damage = Damage::default();
    let mut run = buffers.runs.take().unwrap_or_else(|| with_huge_capacity(RUN_BYTES + MAX_BLOB));
    let mut scratch = buffers.scratch.take().unwrap_or_default();
    // Where the data in `run` goes: a file and the offset of its first byte.
    let mut run_at: Option<(usize, u64)> = None;
    // A range lies within one pack: derive its key once.
    let pack_key = context.key.pack_key(&items[0].0.salt);
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
        if let Err(e) = open_with_into(context.key, &pack_key, location, sealed, &mut scratch, &mut run) {
            run.truncate(at);
            damage.add(targets.iter().map(|t| t.file), e);
            continue;
        }
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
    Ok(RangeOutcome { written: out.written, warnings: out.warnings, damage })
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
/// Files one range writer keeps open at most: a range of many small files must not
/// exhaust the descriptor limit (each is closed once complete; beyond this the
/// longest-open goes).
const OPEN_FILES: usize = 16;

/// The files one range writes into, each opened once while it is being written.
struct RangeWriter<'a> {
    context: &'a RangeContext<'a>,
    open: Vec<(usize, std::fs::File)>,
    written: u64,
    warnings: Vec<String>,
}

impl RangeWriter<'_> {
    fn write(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let context = self.context;
        let planned = &context.files[index];
        let at = match self.open.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                context.created.wait_for(planned.created)?;
                let fd = context
                    .beneath
                    .resolve(&planned.temp_rel(), rustix::fs::OFlags::WRONLY)
                    .map_err(|e| Error::io("open", &context.beneath.display(&planned.rel), e))?;
                if self.open.len() == OPEN_FILES {
                    self.open.remove(0);
                }
                self.open.push((index, std::fs::File::from(fd)));
                self.open.len() - 1
            }
        };
        let file = &self.open[at].1;
        write_leaving_holes(file, data, offset)
            .map_err(|e| Error::io("write", &context.beneath.display(&planned.rel), e))?;
        let len = data.len() as u64;
        self.written += len;
        if planned.remaining.fetch_sub(len, Ordering::AcqRel) == len {
            let (_, file) = self.open.remove(at);
            let path = || context.beneath.display(&planned.rel);
            // Blocks of zeros were not written: a file that ends in them gets its length.
            file.set_len(planned.size).map_err(|e| Error::io("size", &path(), e))?;
            if let Err(e) = planned.meta.apply_to_file(&file, context.root) {
                self.warnings.push(format!("{}: cannot restore metadata: {e}", path().display()));
            }
            drop(file);
            let (parent, name) = context.beneath.parent(&planned.rel)?;
            context.beneath.check_file_place(parent.as_fd(), name, &planned.rel)?;
            context.beneath.rename(parent.as_fd(), &planned.temp, name, &planned.rel)?;
            planned.done.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Write `data` at `offset` into a file made at its full size, skipping every 4 KiB block
/// (aligned in the file) that holds only zeros: it is already there, as a hole, so a
/// sparse file restores sparse. Data without such blocks is one `pwrite`.
fn write_leaving_holes(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 4096;
    let mut start = 0usize;
    let mut at = 0usize;
    while at < data.len() {
        let next = ((offset + at as u64) / BLOCK + 1) * BLOCK;
        let end = data.len().min((next - offset) as usize);
        if data[at..end].iter().all(|&b| b == 0) {
            if start < at {
                file.write_all_at(&data[start..at], offset + start as u64)?;
            }
            start = end;
        }
        at = end;
    }
    if start < data.len() {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Set the metadata of directories and symlinks: links in order, then directories deepest first.
fn apply_metadata(beneath: &Beneath, nodes: &[(Vec<u8>, Meta)], root: bool, warnings: &mut Vec<String>) {
    let (dirs, others): (Vec<_>, Vec<_>) = nodes.iter().partition(|(_, m)| m.kind == NodeKind::Dir);
    for (rel, meta) in others.into_iter().chain(dirs.into_iter().rev()) {
        if let Err(e) = meta.apply(beneath, rel, root) {
            warnings.push(format!("{}: cannot restore metadata: {}", beneath.display(rel).display(), e.message()));
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

    /// Set owner (when root), mode and mtime on the directory or symlink `rel`, reached
    /// without following symlinks: a directory through an open descriptor, a symlink
    /// itself (`AT_SYMLINK_NOFOLLOW`) in its open parent.
    fn apply(&self, beneath: &Beneath, rel: &[u8], root: bool) -> Result<()> {
        let failed = |e: std::io::Error| Error::io("set the metadata of", &beneath.display(rel), e);
        if self.kind != NodeKind::Symlink {
            let dir = beneath.open_dir(rel)?;
            return self.apply_to_file(&dir, root).map_err(failed);
        }
        let (parent, name) = beneath.parent(rel)?;
        let name = std::ffi::OsStr::from_bytes(name);
        let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
        if root {
            let current = rustix::fs::statat(&parent, name, flags).map_err(|e| failed(e.into()))?;
            if (current.st_uid, current.st_gid) != (self.uid, self.gid) {
                let (uid, gid) = (rustix::fs::Uid::from_raw(self.uid), rustix::fs::Gid::from_raw(self.gid));
                rustix::fs::chownat(&parent, name, Some(uid), Some(gid), flags).map_err(|e| failed(e.into()))?;
            }
        }
        let time = rustix::fs::Timespec { tv_sec: self.mtime.unix_seconds(), tv_nsec: self.mtime.nanoseconds().into() };
        let times = rustix::fs::Timestamps { last_access: time, last_modification: time };
        rustix::fs::utimensat(&parent, name, &times, flags).map_err(|e| failed(e.into()))
    }

    /// Owner (when root), mode and mtime through an open file or directory.
    fn apply_to_file(&self, file: &std::fs::File, root: bool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let current = file.metadata()?;
        let chowned = root && self.owner_differs(&current);
        if chowned {
            std::os::unix::fs::fchown(file, Some(self.uid), Some(self.gid))?;
        }
        // A chown clears set-user-ID and set-group-ID bits: the mode goes on after it.
        // Owner and mode are changed only where they differ: a stat costs less than a
        // chown or chmod, each of which dirties the inode in the journal.
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
    Error::output("the tar stream", e)
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
