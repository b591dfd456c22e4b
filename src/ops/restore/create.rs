//! Making the entries of a tree restore: a creator thread that makes directories, files
//! and symlinks below the target in the order the plan finds them, never following a
//! symlink ([`crate::beneath`]), and the metadata (mode, owner when root, times) applied
//! to what it made.

use crate::beneath::{split, Beneath};
use crate::error::{Error, Result};
use crate::format::snapshot::{Node, NodeKind};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// What the creator makes, in the order the planner found it (parents first); paths
/// relative to the target.
pub(crate) enum Create {
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
pub(crate) struct Creator {
    pub(super) tx: std::sync::mpsc::Sender<Create>,
    /// Entries sent so far.
    pub(super) sent: usize,
    pub(super) created: Arc<Created>,
    pub(super) thread: std::thread::JoinHandle<Result<()>>,
}

impl Creator {
    pub(super) fn start(beneath: Arc<Beneath>, root: bool) -> Self {
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
    pub(super) fn send(&mut self, op: Create) -> Result<usize> {
        self.tx.send(op).map_err(|_| Error::backend("creating the restored files stopped"))?;
        self.sent += 1;
        Ok(self.sent)
    }

    pub(super) fn progress(&self) -> Arc<Created> {
        self.created.clone()
    }

    /// Wait until everything sent exists; the first creation error, if any.
    pub(super) fn join(self) -> Result<()> {
        let Creator { tx, thread, .. } = self;
        drop(tx);
        thread.join().unwrap_or_else(|_| Err(Error::backend("creating the restored files panicked")))
    }

    pub(super) async fn finish(self) -> Result<()> {
        tokio::task::spawn_blocking(move || self.join())
            .await
            .map_err(|e| Error::backend(format!("restore task failed: {e}")))?
    }
}

/// The creator's open parent directory.
struct Parents<'a> {
    pub(super) beneath: &'a Beneath,
    pub(super) open: Option<(Vec<u8>, std::os::fd::OwnedFd)>,
}

impl Parents<'_> {
    /// The open parent of `rel` and its last component.
    pub(super) fn of<'r>(&mut self, rel: &'r [u8]) -> Result<(std::os::fd::BorrowedFd<'_>, &'r [u8])> {
        let (dir, name) = split(rel);
        if self.open.as_ref().is_none_or(|(open, _)| open != dir) {
            let (fd, _) = self.beneath.parent(rel)?;
            self.open = Some((dir.to_vec(), fd));
        }
        let fd = self.open.as_ref().map(|(_, fd)| fd.as_fd()).expect("opened above");
        Ok((fd, name))
    }
}

struct StopOnDrop<'a>(&'a Created);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.wake();
    }
}

/// Set the metadata of directories and symlinks: links in order, then directories deepest first.
pub(crate) fn apply_metadata(beneath: &Beneath, nodes: &[(Vec<u8>, Meta)], root: bool, warnings: &mut Vec<String>) {
    let (dirs, others): (Vec<_>, Vec<_>) = nodes.iter().partition(|(_, m)| m.kind == NodeKind::Dir);
    for (rel, meta) in others.into_iter().chain(dirs.into_iter().rev()) {
        if let Err(e) = meta.apply(beneath, rel, root) {
            warnings.push(format!("{}: cannot restore metadata: {}", beneath.display(rel).display(), e.message()));
        }
    }
}

/// The metadata a restore sets on an entry: mode, owner (when root), mtime.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub(super) kind: NodeKind,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: filetime::FileTime,
}

impl Meta {
    pub(super) fn of(node: &Node) -> Self {
        let mtime = filetime::FileTime::from_unix_time(
            node.mtime.div_euclid(1_000_000_000),
            node.mtime.rem_euclid(1_000_000_000) as u32,
        );
        Meta { kind: node.kind, mode: node.mode, uid: node.uid, gid: node.gid, mtime }
    }

    /// Set owner (when root), mode and mtime on the directory or symlink `rel`, reached
    /// without following symlinks: a directory through an open descriptor, a symlink
    /// itself (`AT_SYMLINK_NOFOLLOW`) in its open parent.
    pub(super) fn apply(&self, beneath: &Beneath, rel: &[u8], root: bool) -> Result<()> {
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
    pub(super) fn apply_to_file(&self, file: &std::fs::File, root: bool) -> std::io::Result<()> {
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

    pub(super) fn owner_differs(&self, current: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        (current.uid(), current.gid()) != (self.uid, self.gid)
    }

    pub(super) fn mode_differs(&self, current: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        current.mode() & 0o7777 != self.mode & 0o7777
    }
}

/// How far the creator has got, for writers that need a file it has not made yet.
#[derive(Default)]
pub(crate) struct Created {
    /// Entries made, in the order sent.
    pub(super) count: AtomicUsize,
    /// The creator has stopped, finished or failed.
    pub(super) stopped: AtomicBool,
    pub(super) waiters: AtomicUsize,
    pub(super) lock: Mutex<()>,
    pub(super) changed: Condvar,
}

impl Created {
    pub(super) fn advance(&self, count: usize) {
        self.count.store(count, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake();
        }
    }

    pub(super) fn wake(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Block until entry number `n` (counted from 1 in the order sent) exists.
    pub(super) fn wait_for(&self, n: usize) -> Result<()> {
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
