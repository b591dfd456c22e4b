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
pub mod faulty;
mod url;

use crate::buffers::SpareBuffers;
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

    /// Find out whether the service refuses to replace an object written create-only:
    /// write a probe object twice and see whether the second write is refused.
    /// Leaves nothing behind.
    pub async fn probe_conditional_writes(&self) -> Result<bool> {
        let key = format!("probe-{}", hex::encode(crate::crypto::random_bytes::<8>()));
        Ok(self.probe_create_only(&key).await?.is_some())
    }

    /// Write `key` create-only twice. `Some(time)` (when the storage says it wrote the
    /// first, milliseconds since the epoch by its own clock) if the second write was
    /// refused, `None` if it replaced the first or create-only writes are unsupported.
    /// The probe object is deleted either way.
    pub async fn probe_create_only(&self, key: &str) -> Result<Option<i64>> {
        let path = StorePath::from(key);
        let create = || PutOptions { mode: PutMode::Create, ..Default::default() };
        let first =
            self.retry(key, "write", || self.store.put_opts(&path, PutPayload::from_static(b"1"), create())).await;
        let refused = match first {
            Ok(_) => {
                let second = self
                    .retry(key, "write", || self.store.put_opts(&path, PutPayload::from_static(b"2"), create()))
                    .await;
                match second {
                    Ok(_) => false,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => true,
                    Err(e) => {
                        let _ = self.delete(key).await;
                        return Err(e);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => return Ok(None),
            Err(e) => return Err(e),
        };
        let stat = self.stat(key).await;
        self.delete(key).await?;
        match (refused, stat?) {
            (true, Some(info)) => Ok(Some(info.modified_ms)),
            (true, None) => Err(Error::backend(format!(
                "{key} in {} vanished right after it was written; the storage is not consistent enough for removal",
                self.location
            ))),
            (false, _) => Ok(None),
        }
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

    fn map_err(&self, key: &str, action: &str, err: object_store::Error) -> Error {
        use object_store::Error as E;
        let (kind, transient) = match &err {
            E::NotFound { .. } => (ErrorKind::NotFound, false),
            E::AlreadyExists { .. } | E::Precondition { .. } => (ErrorKind::AlreadyExists, false),
            E::NotImplemented | E::NotSupported { .. } => (ErrorKind::Unsupported, false),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => (ErrorKind::Backend, false),
            _ => (ErrorKind::Backend, self.local_root.is_none()),
        };
        let mut text = url::one_line(&err.to_string());
        if text.contains("No space left") {
            text.push_str("; the disk is full: free space and run again (nothing was committed)");
        }
        // Services explain themselves in an XML body; keep the code and say what to check.
        let mut kind = kind;
        let hint = if text.contains("NoSuchBucket") {
            kind = ErrorKind::NoRepository;
            Some("the bucket does not exist: check the bucket name and endpoint, or create the bucket")
        } else if ["InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "AccessDenied"]
            .iter()
            .any(|code| text.contains(code))
            || matches!(err, E::PermissionDenied { .. } | E::Unauthenticated { .. })
        {
            Some("access denied: check the credentials (AWS_ACCESS_KEY_ID / OSS_ACCESS_KEY_ID ...) and that they may read and write this bucket")
        } else {
            None
        };
        if let Some(hint) = hint {
            text = format!("{hint} ({})", error_code(&text).unwrap_or("see docs/storage.md"));
        }
        let error = Error::new(kind, format!("cannot {action} {key} in {}: {text}", self.location));
        if transient {
            error.transient()
        } else {
            error
        }
    }

    /// Run `op` until it succeeds, fails permanently, or the attempts run out.
    async fn retry<T, F, Fut>(&self, key: &str, action: &str, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = self.map_err(key, action, e);
                    if !err.is_transient() || attempt >= ATTEMPTS {
                        return Err(err);
                    }
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
        unreachable!()
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = StorePath::from(key);
        self.retry(key, "read", || async { self.store.get(&path).await?.bytes().await }).await
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = StorePath::from(key);
        let want = range.end - range.start;
        let bytes = self.retry(key, "read", || self.store.get_range(&path, range.clone())).await?;
        if bytes.len() as u64 != want {
            return Err(Error::corrupt(format!(
                "{key} is truncated: wanted {want} bytes at offset {}, got {}",
                range.start,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Read `range` of `key` and run `work` on the bytes, on this thread; only for a local
    /// directory ([`Backend::is_local`]; elsewhere use [`Backend::get_range`]). The read
    /// is direct (see `direct`) into a buffer the backend keeps for the next read, so a
    /// restore reading thousands of ranges maps its buffers once and copies nothing
    /// through the page cache. Read errors are worded as `get_range`'s.
    pub fn with_local_range<T>(
        &self,
        key: &str,
        range: Range<u64>,
        work: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let Some(root) = &self.local_root else {
            return Err(Error::new(ErrorKind::Unsupported, format!("{} is not a local directory", self.location)));
        };
        let path = root.join(key);
        let mut buf = self.range_buffers.take().unwrap_or_default();
        let read = direct::read_range(&path, range.clone(), &mut buf, &self.direct_refused);
        let result = match read {
            Ok(at) => work(&buf[at]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::corrupt(format!(
                "{key} is truncated: wanted {} bytes at offset {}, the file is shorter",
                range.end - range.start,
                range.start
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
                ErrorKind::NotFound,
                format!("cannot read {key} in {}: the object does not exist", self.location),
            )),
            Err(e) => Err(Error::io("read", &path, e)),
        };
        self.range_buffers.give(buf);
        result
    }

    /// Store an object; see the module's durability contract.
    pub async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> Result<()> {
        if mode == WriteMode::CreateIdempotentUnsynced && data.len() >= DIRECT_MIN && !self.direct_refused.get() {
            if let Some(root) = &self.local_root {
                let (path, staging, bytes) = (root.join(key), self.staging_buffers.clone(), data.clone());
                let direct = tokio::task::spawn_blocking(move || direct::write_pack(&path, &bytes, &staging))
                    .await
                    .map_err(|e| Error::backend(format!("write task failed: {e}")))?;
                match direct {
                    Ok(()) => return Ok(()),
                    // The filesystem takes no direct I/O: write through the page cache.
                    Err(e) if self.direct_refused.note(&e) => {}
                    Err(e) => return Err(Error::io("write", &root.join(key), e)),
                }
            }
        }
        let path = StorePath::from(key);
        let idempotent = matches!(mode, WriteMode::CreateIdempotent | WriteMode::CreateIdempotentUnsynced);
        let put_mode = match mode {
            WriteMode::Overwrite => PutMode::Overwrite,
            _ if self.conditional_writes => PutMode::Create,
            // Without create-only writes, check first. A content-addressed object written
            // twice is written with the same bytes; for the rest (snapshots, GC
            // generations) docs/storage.md says what this fallback gives up.
            _ => match self.head(key).await? {
                Some(_) if idempotent => return Ok(()),
                Some(_) => {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("cannot write {key} in {}: it already exists", self.location),
                    ))
                }
                None => PutMode::Overwrite,
            },
        };
        if idempotent && self.local_root.is_none() && data.len() >= MULTIPART_THRESHOLD {
            // A multipart upload cannot be create-only, but the name is the content's hash:
            // replacing an object with the same bytes changes nothing.
            let uploaded = self.retry(key, "write", || self.put_multipart(&path, &data)).await;
            // The final request's reply may be lost after the object was assembled: its
            // retry then meets "NoSuchUpload" (the upload is complete), and a whole new
            // upload on OSS meets 409 (x-oss-forbid-overwrite). Either way the object may
            // be stored intact: read it back before reporting a failure.
            return match uploaded {
                Ok(()) => Ok(()),
                Err(e) => match self.get(key).await {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(e),
                },
            };
        }
        let payload = PutPayload::from_bytes(data.clone());
        let result = self
            .retry(key, "write", || {
                self.store.put_opts(&path, payload.clone(), PutOptions { mode: put_mode.clone(), ..Default::default() })
            })
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists && idempotent => {}
            // A write that landed but whose reply was lost is retried and finds itself:
            // identical bytes under the name mean the write succeeded.
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && self.get(key).await.is_ok_and(|existing| existing == data) => {}
            // Every attempt failed without an answer that says why (timeouts, resets,
            // 5xx): the write may still have landed. Read it back before saying either.
            Err(e) if e.is_transient() => match self.get(key).await {
                Ok(existing) if existing == data => {}
                Err(absent) if absent.kind() == ErrorKind::NotFound => return Err(e),
                Ok(_) => {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("cannot write {key} in {}: other bytes are stored under that name", self.location),
                    ))
                }
                Err(unknown) => {
                    return Err(Error::backend(format!(
                        "{}; whether it was stored is unknown (reading it back failed too: {}); run the command again",
                        e.message(),
                        unknown.message()
                    )))
                }
            },
            Err(e) => return Err(e),
        }
        if mode == WriteMode::CreateIdempotentUnsynced {
            return Ok(());
        }
        self.sync(&[key.to_string()]).await
    }

    async fn put_multipart(&self, path: &StorePath, data: &Bytes) -> object_store::Result<()> {
        let upload = self.store.put_multipart(path).await?;
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
        for part in data.chunks(MULTIPART_PART) {
            if let Err(e) = writer.wait_for_capacity(self.connections.min(4)).await {
                let _ = writer.abort().await;
                return Err(e);
            }
            writer.put(data.slice_ref(part));
        }
        writer.finish().await.map(|_| ())
    }

    /// Make objects durable: on a local disk fsync each file and each directory holding
    /// one; object stores are durable once a PUT returns, so there it does nothing.
    pub async fn sync(&self, keys: &[String]) -> Result<()> {
        let Some(root) = &self.local_root else { return Ok(()) };
        let files: Vec<std::path::PathBuf> = keys.iter().map(|k| root.join(k)).collect();
        tokio::task::spawn_blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for file in &files {
                std::fs::File::open(file).and_then(|f| f.sync_all()).map_err(|e| Error::io("sync", file, e))?;
                dirs.extend(file.parent().map(|d| d.to_path_buf()));
            }
            for dir in &dirs {
                std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io("sync", dir, e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::backend(format!("sync task failed: {e}")))?
    }

    /// The size of an object, or `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = StorePath::from(key);
        match self.retry(key, "inspect", || self.store.head(&path)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Size and modification time of an object, or `None` if it does not exist.
    pub async fn stat(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = StorePath::from(key);
        match self.retry(key, "inspect", || self.store.head(&path)).await {
            Ok(meta) => Ok(Some(ObjectInfo { key: key.to_string(), ..ObjectInfo::from_meta(&meta) })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object under `prefix` (a directory such as `index/`), recursively.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let path = StorePath::from(prefix.trim_end_matches('/'));
        self.retry(prefix, "list", || async {
            self.store.list(Some(&path)).map_ok(|meta| ObjectInfo::from_meta(&meta)).try_collect::<Vec<_>>().await
        })
        .await
    }

    /// On a local directory, delete the staging files (`NAME#N`, ours and object_store's)
    /// under `prefix` last modified more than `age` ago: what a write killed mid-way left.
    /// Listing never shows them, so nothing else would. Returns how many there were
    /// (with `dry_run`, deletes none); 0 for object stores, which stage nothing visible.
    pub async fn remove_stale_staging(&self, prefix: &str, age: std::time::Duration, dry_run: bool) -> Result<u64> {
        let Some(root) = &self.local_root else { return Ok(0) };
        let dir = root.join(prefix.trim_end_matches('/'));
        tokio::task::spawn_blocking(move || remove_stale_staging(&dir, age, dry_run))
            .await
            .map_err(|e| Error::backend(format!("staging cleanup failed: {e}")))?
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = StorePath::from(key);
        match self.retry(key, "delete", || self.store.delete(&path)).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The `<Code>...</Code>` of an S3-style XML error body.
fn error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    Some(&text[start..end])
}

/// Repository keys of each object type.
/// The blocking part of [`Backend::remove_stale_staging`].
fn remove_stale_staging(dir: &std::path::Path, age: std::time::Duration, dry_run: bool) -> Result<u64> {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(dir).min_depth(1).into_iter() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                return Err(Error::io("list", &path, e.into()));
            }
        };
        let name = entry.file_name().to_string_lossy();
        let staged = name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !staged || !entry.file_type().is_file() {
            continue;
        }
        let stale = entry.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if stale.is_some_and(|elapsed| elapsed > age) {
            if dry_run {
                removed += 1;
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("delete", entry.path(), e)),
            }
        }
    }
    Ok(removed)
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
