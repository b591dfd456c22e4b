//! The repository verbs of [`Backend`]: get, ranged get, create-only and overwriting
//! put (multipart for large objects, fsync of file and directory on local disks), sync,
//! head, stat, list and delete; object_store's errors mapped to our kinds, transient ones
//! retried with backoff, and the probe of whether create-only writes are honoured.

use super::{Backend, ObjectInfo, WriteMode, ATTEMPTS, DIRECT_MIN, MULTIPART_PART, MULTIPART_THRESHOLD};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::ops::Range;
use std::time::Duration;

impl Backend {
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

    fn map_err(&self, key: &str, action: &str, err: object_store::Error) -> Error {
        use object_store::Error as E;
        let (kind, transient) = match &err {
            E::NotFound { .. } => (ErrorKind::NotFound, false),
            E::AlreadyExists { .. } | E::Precondition { .. } => (ErrorKind::AlreadyExists, false),
            E::NotImplemented | E::NotSupported { .. } => (ErrorKind::Unsupported, false),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => (ErrorKind::Backend, false),
            _ => (ErrorKind::Backend, self.local_root.is_none()),
        };
        let mut text = super::url::one_line(&err.to_string());
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
        let read = super::direct::read_range(&path, range.clone(), &mut buf, &self.direct_refused);
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
                let direct = tokio::task::spawn_blocking(move || super::direct::write_pack(&path, &bytes, &staging))
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
