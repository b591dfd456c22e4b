//! Storage: one concrete [`Backend`] over `Arc<dyn ObjectStore>` with repository verbs.
//!
//! All repository I/O goes through the `object_store` crate; there is no storage trait of
//! our own. This module owns URL parsing (local paths, `file://`, `s3://`, `oss://`,
//! `memory://`; see docs/storage.md), the mapping of object_store's errors to our
//! [`ErrorKind`]s, retries of transient failures with backoff, and durability.
//!
//! Durability contract: when [`Backend::put`] returns `Ok`, the object is complete under
//! its final name and survives a crash of this process; on a local path it has also been
//! fsynced together with its directory, so it survives power loss. Objects are staged by
//! object_store under a hidden name and linked or renamed into place, so a reader never
//! sees a partial object.

mod direct;
#[cfg(any(test, feature = "test-util"))]
pub mod faulty;
mod io;
mod url;

use crate::buffers::SpareBuffers;
use crate::error::{Error, ErrorKind, Result};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many times a transient failure is tried before giving up.
const ATTEMPTS: u32 = 4;
/// Objects at least this large go to object stores as multipart uploads...
const MULTIPART_THRESHOLD: usize = 64 << 20;
/// ...in parts of this size, several in flight.
const MULTIPART_PART: usize = 16 << 20;

/// How a write treats an existing object of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Like `CreateIdempotent`, but on a local disk skip the fsync: the caller makes the
    /// object durable later with [`Backend::sync`] (packs are synced in batches, just
    /// before the index file that lists them).
    CreateIdempotentUnsynced,
    /// Fail with `AlreadyExists` if the name is taken.
    Create,
    /// The name is a content hash: an existing object is the same object, so succeed.
    CreateIdempotent,
    /// Replace whatever is there (only for local bookkeeping, never for repository data).
    Overwrite,
}

/// A listed object: its key relative to the repository root, its size, and when the
/// storage last wrote it (milliseconds since the epoch, by the storage's own clock: the
/// service's for object stores, the file system's for a local directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified_ms: i64,
}

impl ObjectInfo {
    fn from_meta(meta: &object_store::ObjectMeta) -> Self {
        ObjectInfo {
            key: meta.location.to_string(),
            size: meta.size,
            modified_ms: meta.last_modified.timestamp_millis(),
        }
    }
}

#[derive(Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    /// The local directory, for plain paths and file:// URLs (fsync, existence checks).
    local_root: Option<PathBuf>,
    /// Where the repository is, for messages; never contains credentials.
    location: String,
    /// How many requests may be in flight at once (uploads, ranged reads).
    connections: usize,
    /// Whether the service honours create-only writes (probed at init, kept in the
    /// config). Without them a create is a check followed by a write: see docs/storage.md.
    conditional_writes: bool,
    /// Buffers for [`Backend::with_local_range`], one per read in flight.
    range_buffers: Arc<SpareBuffers>,
    /// Aligned staging buffers for direct pack writes to a local directory.
    staging_buffers: Arc<SpareBuffers>,
    /// Set once the local filesystem refuses direct I/O.
    direct_refused: Arc<direct::Refused>,
}

/// Packs at least this large are written to a local directory with direct I/O.
const DIRECT_MIN: usize = 1 << 20;

/// Requests in flight to an object store unless `--connections` says otherwise.
pub const DEFAULT_REMOTE_CONNECTIONS: usize = 8;
/// Reads in flight from a local disk (writes to one disk stay serial: see the saver).
const DEFAULT_LOCAL_CONNECTIONS: usize = 4;

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.location)
    }
}

impl Backend {
    /// Open the storage named by a URL: a plain path, `file://`, `s3://BUCKET/PREFIX`,
    /// `oss://BUCKET/PREFIX` or `memory://`. `create` makes a missing local directory
    /// (for `init`); buckets are never created.
    pub fn from_url(url: &str, create: bool) -> Result<Self> {
        if let Some((scheme, rest)) = url.split_once("://") {
            return match scheme {
                "file" => Self::local(PathBuf::from(rest), create),
                "memory" => Ok(Self::memory()),
                "s3" | "oss" => {
                    let (store, location) = url::object_store(scheme, rest)?;
                    Ok(Self::remote(store, location))
                }
                _ => Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "repository URL {}: scheme {scheme}:// is not supported; use a local path, file:///path, \
                         s3://BUCKET/PREFIX or oss://BUCKET/PREFIX",
                        url::redact(url)
                    ),
                )),
            };
        }
        Self::local(PathBuf::from(url), create)
    }

    fn remote(store: Arc<dyn ObjectStore>, location: String) -> Self {
        Backend {
            store,
            local_root: None,
            location,
            connections: DEFAULT_REMOTE_CONNECTIONS,
            conditional_writes: true,
            range_buffers: Arc::new(SpareBuffers::new(DEFAULT_REMOTE_CONNECTIONS)),
            staging_buffers: Arc::new(SpareBuffers::new(1)),
            direct_refused: Arc::default(),
        }
    }

    pub fn local(path: PathBuf, create: bool) -> Result<Self> {
        if create {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| Error::io("create repository directory", &path, e))?;
        } else if path.exists() && !path.is_dir() {
            return Err(Error::new(
                ErrorKind::NoRepository,
                format!(
                    "no repository at {}: it is a file, not a directory; give the repository's directory",
                    path.display()
                ),
            ));
        } else if !path.is_dir() {
            return Err(Error::new(
                ErrorKind::NoRepository,
                format!(
                    "no repository at {}: the directory does not exist; run `cairn init` to create one",
                    path.display()
                ),
            ));
        }
        let path = path.canonicalize().map_err(|e| Error::io("resolve", &path, e))?;
        private_files(&path)?;
        let store = LocalFileSystem::new_with_prefix(&path)
            .map_err(|e| Error::backend(format!("cannot open {}: {e}", path.display())))?;
        Ok(Backend {
            store: Arc::new(store),
            location: path.display().to_string(),
            local_root: Some(path),
            connections: DEFAULT_LOCAL_CONNECTIONS,
            conditional_writes: true,
            range_buffers: Arc::new(SpareBuffers::new(DEFAULT_LOCAL_CONNECTIONS)),
            staging_buffers: Arc::new(SpareBuffers::new(1)),
            direct_refused: Arc::default(),
        })
    }

    /// Make the local repository at `root` group-readable (`init --group-readable`): the
    /// directory becomes 0750 and what is written from now on 0640 / 0750.
    pub fn make_group_readable(root: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o750))
            .map_err(|e| Error::io("set mode 0750 on", root, e))?;
        private_files(root)
    }

    pub fn memory() -> Self {
        Self::from_store(Arc::new(InMemory::new()), "memory://")
    }

    /// Wrap any object store (tests use this with fault injection).
    pub fn from_store(store: Arc<dyn ObjectStore>, location: &str) -> Self {
        Self::remote(store, location.to_string())
    }

    /// Allow `n` requests in flight (at least one).
    pub fn with_connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self.range_buffers = Arc::new(SpareBuffers::new(self.connections));
        self
    }

    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Tell the backend whether the service honours create-only writes (from the config).
    pub fn set_conditional_writes(&mut self, supported: bool) {
        self.conditional_writes = supported;
    }

    pub fn conditional_writes(&self) -> bool {
        self.conditional_writes
    }

    /// Whether this is a local directory (one disk: no gain from parallel writes).
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// The directory of a local repository.
    pub fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

/// The umask this process started with, before [`private_files`] tightened it.
static STARTING_UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The umask the process started with: what new files that are not the repository's (a
/// restored stream, a tar written with `--tar`) are created with.
pub fn starting_umask() -> u32 {
    *STARTING_UMASK.get_or_init(current_umask)
}

fn current_umask() -> u32 {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    rustix::process::umask(old);
    old.as_raw_mode()
}

/// Files and directories of a local repository are the owner's alone, 0600 / 0700,
/// whatever the umask: key slots, packs and indexes are written by object_store with
/// the process umask, so the umask is set to 077 (027 when the repository directory
/// itself is group-readable: `init --group-readable`).
fn private_files(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    starting_umask();
    let mode = std::fs::metadata(root).map_err(|e| Error::io("inspect", root, e))?.mode();
    let mask = if mode & 0o050 == 0o050 { 0o027 } else { 0o077 };
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    Ok(())
}
