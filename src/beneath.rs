//! Writing into a directory without ever leaving it.
//!
//! A restore target may already hold entries, some of them symlinks: left by an earlier
//! restore (a files snapshot restores absolute links as stored), by the service that owns
//! the directory, or planted by someone who may write there. A path walked the ordinary
//! way follows every one of them, so `restore --to /srv/app` could write, chmod or chown
//! anywhere the restoring user (often root) may. [`Beneath`] holds the target open and
//! resolves every path below it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or,
//! where the kernel lacks it, one `openat(O_NOFOLLOW)` per component: a symlink anywhere
//! below the target is never followed. Entries are created relative to their open parent
//! directory, files under an unpredictable temporary name opened `O_CREAT | O_EXCL |
//! O_NOFOLLOW` and renamed over the final name when complete (a rename replaces a symlink
//! or a hard link there; it never writes through it).
//!
//! A symlink where the snapshot has a directory or a file is "in the way". [`InTheWay`]
//! says whether it is replaced or stops the restore with an error naming it. A symlink
//! where the snapshot has a symlink is always replaced: the restore puts back what it
//! stored.

use crate::error::{Error, ErrorKind, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a restore does with a symlink where it must put a directory or a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InTheWay {
    /// Stop with an error that names the link (the default).
    #[default]
    Stop,
    /// Remove the link (not what it points to) and put the entry there.
    Replace,
}

/// An open directory below which every path is resolved without following symlinks.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
    in_the_way: InTheWay,
    /// Random per run: temporary names cannot be guessed (or planted) in advance.
    token: String,
    next: AtomicU64,
}

/// Set once `openat2` turned out to be unavailable (older kernels, some sandboxes).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

impl Beneath {
    /// Open the directory `path`, creating it and its missing parents. `path` itself is
    /// the user's to choose: symlinks in it are followed; none below it is.
    pub fn create(path: &Path, in_the_way: InTheWay) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::io("create", path, e))?;
        Self::open(path, in_the_way)
    }

    /// Open the existing directory `path`.
    pub fn open(path: &Path, in_the_way: InTheWay) -> Result<Self> {
        let root = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io("open", path, e.into()))?;
        let token = hex::encode(crate::crypto::random_bytes::<8>());
        Ok(Beneath { root, path: path.to_path_buf(), in_the_way, token, next: AtomicU64::new(0) })
    }

    /// The path of `rel` (relative, slash-separated) for messages.
    pub fn display(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(OsStr::from_bytes(rel))
        }
    }

    /// A fresh temporary name for an entry of the directory it is created in.
    pub fn temp_name(&self) -> Vec<u8> {
        format!(".cairn-{}-{}.tmp", self.token, self.next.fetch_add(1, Ordering::Relaxed)).into_bytes()
    }

    /// Open `rel` (empty: the root itself) with `flags`, following no symlink below the root.
    pub fn resolve(&self, rel: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if rel.is_empty() {
            return Ok(rustix::fs::openat(&self.root, c".", flags, Mode::empty())?);
        }
        if rel.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"." || c == b"..") {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain relative path"));
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.root, OsStr::from_bytes(rel), flags, Mode::empty(), how) {
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // A retry is asked for when a rename raced the lookup; the walk has no such limit.
                Err(rustix::io::Errno::AGAIN) => {}
                other => return Ok(other?),
            }
        }
        let mut components = rel.split(|&b| b == b'/').peekable();
        let mut dir: Option<OwnedFd> = None;
        while let Some(name) = components.next() {
            let at = dir.as_ref().map(|d| d.as_fd()).unwrap_or(self.root.as_fd());
            let name = OsStr::from_bytes(name);
            if components.peek().is_none() {
                return Ok(rustix::fs::openat(at, name, flags, Mode::empty())?);
            }
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            dir = Some(rustix::fs::openat(at, name, flags, Mode::empty())?);
        }
        unreachable!("a non-empty path has a last component")
    }

    /// Open the directory `rel` for reading its entries or changing its metadata.
    pub fn open_dir(&self, rel: &[u8]) -> Result<std::fs::File> {
        let fd = self
            .resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| self.not_followed("open directory", rel, e))?;
        Ok(std::fs::File::from(fd))
    }

    /// Make the directory `name` in `parent` (at `rel`), or keep the one there.
    pub fn mkdir(&self, parent: BorrowedFd, name: &[u8], rel: &[u8], mode: u32) -> Result<()> {
        let name = OsStr::from_bytes(name);
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(Error::io("create directory", &self.display(rel), e.into())),
        }
        let kind = self.kind_at(parent, name, rel)?;
        match kind {
            Some(FileType::Directory) => Ok(()),
            Some(FileType::Symlink) => {
                self.may_replace(rel, "a directory")?;
                rustix::fs::unlinkat(parent, name, AtFlags::empty())
                    .and_then(|()| rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)))
                    .map_err(|e| Error::io("replace the symlink", &self.display(rel), e.into()))
            }
            _ => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot create directory {}: something that is not a directory is there; move it away and run again",
                    self.display(rel).display()
                ),
            )),
        }
    }

    /// Before a file is renamed onto `name` in `parent`: refuse a symlink there unless
    /// told to replace it. Returns what is there now, if anything.
    pub fn check_file_place(&self, parent: BorrowedFd, name: &[u8], rel: &[u8]) -> Result<Option<rustix::fs::Stat>> {
        match rustix::fs::statat(parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                self.may_replace(rel, "a file")?;
                Ok(None)
            }
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot restore the file {}: a directory is there; move it away and run again",
                    self.display(rel).display()
                ),
            )),
            Ok(stat) => Ok(Some(stat)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("inspect", &self.display(rel), e.into())),
        }
    }

    /// Create the new, empty, private (0600) file `temp` in `parent`; it must not exist.
    pub fn create_temp(&self, parent: BorrowedFd, temp: &[u8], rel: &[u8]) -> Result<std::fs::File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, OsStr::from_bytes(temp), flags, Mode::from_raw_mode(0o600))
            .map_err(|e| Error::io("create a temporary file for", &self.display(rel), e.into()))?;
        Ok(std::fs::File::from(fd))
    }

    /// Rename `from` over `to`, both in `parent`.
    pub fn rename(&self, parent: BorrowedFd, from: &[u8], to: &[u8], rel: &[u8]) -> Result<()> {
        rustix::fs::renameat(parent, OsStr::from_bytes(from), parent, OsStr::from_bytes(to))
            .map_err(|e| Error::io("rename into place", &self.display(rel), e.into()))
    }

    /// Remove the file `name` from `parent`, if it is there.
    pub fn remove(&self, parent: BorrowedFd, name: &[u8]) {
        let _ = rustix::fs::unlinkat(parent, OsStr::from_bytes(name), AtFlags::empty());
    }

    /// Create the symlink `name` in `parent` pointing at `link`, replacing a file or
    /// symlink there (through a temporary name: the place is never empty).
    pub fn symlink(&self, parent: BorrowedFd, name: &[u8], link: &[u8], rel: &[u8]) -> Result<()> {
        let temp = self.temp_name();
        rustix::fs::symlinkat(OsStr::from_bytes(link), parent, OsStr::from_bytes(&temp))
            .map_err(|e| Error::io("create symlink", &self.display(rel), e.into()))?;
        let renamed = self.rename(parent, &temp, name, rel);
        if renamed.is_err() {
            self.remove(parent, &temp);
        }
        renamed
    }

    /// The parent directory of `rel` (opened for `*at` calls) and the last component.
    pub fn parent<'a>(&self, rel: &'a [u8]) -> Result<(OwnedFd, &'a [u8])> {
        let (dir, name) = split(rel);
        let fd = self
            .resolve(dir, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.not_followed("open directory", dir, e))?;
        Ok((fd, name))
    }

    fn kind_at(&self, parent: BorrowedFd, name: &OsStr, rel: &[u8]) -> Result<Option<FileType>> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("inspect", &self.display(rel), e.into())),
        }
    }

    fn may_replace(&self, rel: &[u8], what: &str) -> Result<()> {
        match self.in_the_way {
            InTheWay::Replace => Ok(()),
            InTheWay::Stop => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{} is a symlink where the snapshot has {what}; it was not followed: remove it, or \
                     pass --replace-symlinks to replace it",
                    self.display(rel).display()
                ),
            )),
        }
    }

    /// An error opening `rel`: a symlink on the way (ELOOP, ENOTDIR, EXDEV) is named as one.
    fn not_followed(&self, action: &str, rel: &[u8], e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR) => Error::new(
                ErrorKind::Io,
                format!(
                    "cannot {action} {}: a symlink (or a non-directory) is on the way and is not followed; \
                     remove it, or pass --replace-symlinks",
                    self.display(rel).display()
                ),
            ),
            _ => Error::io(action, &self.display(rel), e),
        }
    }
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

/// Whether a symlink at `rel` (a path inside the target, slash-separated) pointing at
/// `target` would lead outside the target directory.
pub fn link_escapes(rel: &[u8], target: &[u8]) -> bool {
    if target.starts_with(b"/") {
        return true;
    }
    // The link's own directory, as a depth below the target.
    let mut depth = rel.split(|b| *b == b'/').filter(|p| !p.is_empty()).count() as i64 - 1;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_the_target_are_recognised() {
        assert!(link_escapes(b"a", b"/etc/passwd"));
        assert!(link_escapes(b"a", b"../x"));
        assert!(link_escapes(b"d/a", b"../../x"));
        assert!(link_escapes(b"d/a", b"x/../../../y"));
        assert!(!link_escapes(b"d/a", b"../x"));
        assert!(!link_escapes(b"d/a", b"b"));
        assert!(!link_escapes(b"d/e/a", b"../../x"));
        assert!(!link_escapes(b"a", b"./b/../c"));
    }

    #[test]
    fn nothing_below_the_root_is_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("link")).unwrap();
        std::fs::create_dir(target.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), target.path().join("d/f")).unwrap();
        let beneath = Beneath::open(target.path(), InTheWay::Stop).unwrap();
        for walk in [false, true] {
            NO_OPENAT2.store(walk, Ordering::Relaxed);
            assert!(beneath.resolve(b"link/x", OFlags::WRONLY | OFlags::CREATE).is_err());
            assert!(beneath.resolve(b"d/f", OFlags::WRONLY | OFlags::CREATE).is_err());
            assert!(beneath.resolve(b"../x", OFlags::RDONLY).is_err());
            assert!(beneath.resolve(b"d", OFlags::RDONLY | OFlags::DIRECTORY).is_ok());
        }
        NO_OPENAT2.store(false, Ordering::Relaxed);
        let (parent, name) = beneath.parent(b"link").unwrap();
        assert!(beneath
            .mkdir(parent.as_fd(), name, b"link", 0o700)
            .unwrap_err()
            .message()
            .contains("--replace-symlinks"));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let replacing = Beneath::open(target.path(), InTheWay::Replace).unwrap();
        replacing.mkdir(parent.as_fd(), name, b"link", 0o700).unwrap();
        assert!(std::fs::symlink_metadata(target.path().join("link")).unwrap().is_dir());
    }
}
