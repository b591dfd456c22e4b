//! Stream restores: a stream snapshot's bytes to stdout, to a file (written under a
//! temporary name and renamed, keeping the mode and owner of a file it replaces), or to a
//! consumer reading them through a channel ([`consume_stream`], [`ChannelReader`]).

use crate::beneath::{Beneath, InTheWay};
use crate::error::{Error, Result};
use crate::format::snapshot::Content;
use crate::progress::Progress;
use crate::repo::load::read_content;
use crate::repo::Repository;
use futures::TryStreamExt;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    pub(super) dir: Beneath,
    pub(super) name: Vec<u8>,
    pub(super) temp: Vec<u8>,
    pub(super) replaced: Option<rustix::fs::Stat>,
    pub(super) path: PathBuf,
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

    pub(super) fn here(&self) -> Result<std::os::fd::OwnedFd> {
        self.dir
            .resolve(b"", rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY)
            .map_err(|e| Error::io("open the directory of", &self.path, e))
    }
}

/// Mode and owner for a file that replaces `replaced`: the same as it had (the owner
/// only where this process may give it; a service's database stays the service's), or
/// for a new file the usual 0666 less the umask.
pub fn keep_mode_and_owner(file: &std::fs::File, replaced: Option<&rustix::fs::Stat>) -> std::io::Result<()> {
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

/// Hand a stream's bytes, in order, to `consume` as a reader running on a scoped thread,
/// while this thread fetches blobs into a bounded channel: memory stays bounded by the
/// channel, whatever the stream's size. A fetch error wins over what `consume` reports.
pub async fn consume_stream<T: Send>(
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

/// Bytes handed from one thread to another through a bounded channel.
pub struct ChannelReader {
    pub(super) rx: std::sync::mpsc::Receiver<Vec<u8>>,
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
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
