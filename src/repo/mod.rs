//! An open repository: storage, master key, config and catalog, and the verbs on them.
//!
//! `Repository::init` writes key slots first and the config last, so a repository exists
//! (for `open`) only once it can be opened. `Repository::open` unlocks the master key from a
//! key file or by trying each key slot with the password, decrypts the config, and refreshes
//! the catalog. Saving goes through [`saver::Saver`]; reading through [`Repository::load_blob`]
//! and [`load::read_content`]; the catalog is filled by [`refresh`].

pub mod gc;
pub mod keys;
pub mod load;
pub mod refresh;
pub mod reuse;
pub mod saver;
pub mod walk;

use crate::backend::{Backend, WriteMode};
use crate::catalog::Catalog;
use crate::chunker::ChunkerParams;
use crate::crypto::{KdfParams, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout as objkeys;
use crate::format::object;
use crate::format::snapshot::{Node, SnapshotFile, Tree};
use crate::id::{KeyId, RepoId, SnapshotId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

pub use keys::{KeyFile, KeySlotFile, Secret};

pub const FORMAT_VERSION: u32 = 1;
pub const DEFAULT_CHUNK_AVG: u32 = 64 << 10;
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
pub const DEFAULT_PACK_SIZE: u32 = 16 << 20;

/// The repository config: fixed at init, encrypted under the master key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RepoConfig {
    pub version: u32,
    pub id: RepoId,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    pub created: jiff::Timestamp,
    /// Whether the storage refused to replace an object written create-only when `init`
    /// probed it. Without this, write-once objects are checked before they are written
    /// and removal is refused (docs/storage.md).
    #[serde(default = "yes")]
    pub conditional_writes: bool,
    /// The repository whose chunking settings and id key this one was created with
    /// (`init --copy-settings-from`): copies between them deduplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_from: Option<RepoId>,
}

fn yes() -> bool {
    true
}

/// Settings for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunk_avg: u32,
    pub compression_level: i32,
    pub pack_size: u32,
    pub kdf: KdfParams,
    /// Take chunking, compression, pack size and the id key from this open repository.
    pub like: Option<(RepoConfig, MasterKey)>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_avg: DEFAULT_CHUNK_AVG,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            pack_size: DEFAULT_PACK_SIZE,
            kdf: KdfParams::default(),
            like: None,
        }
    }
}

/// Where the catalog lives.
#[derive(Debug, Clone)]
pub enum CacheMode {
    /// `<dir>/<repository id>/catalog.sqlite`.
    Dir(PathBuf),
    /// A private temporary catalog, gone when the repository is closed.
    Temporary,
}

pub struct Repository {
    backend: Backend,
    key: MasterKey,
    config: RepoConfig,
    catalog: Arc<Catalog>,
    /// Packs of pending removals this process saw: not reused, not read first.
    exclusions: Arc<reuse::Exclusions>,
    /// The key slot that opened the repository, if a password did.
    key_slot: Option<KeyId>,
    meta_cache: load::MetaCache,
    /// How often a writer looks for removals that started after it (see `gc`).
    gc_check_interval: std::time::Duration,
    /// Reused blob ids a writer keeps in memory before stashing them in the catalog.
    reused_in_memory: usize,
}

/// Before `init` writes anything: refuse a location that holds a repository's objects
/// without its config (the config was lost: `cairn repair config` writes a new one;
/// an init would hide the data), and find the key an interrupted init left (its key slot
/// or key file is written before the config), so that running `init` again completes it.
async fn resume_init(backend: &Backend, secret: &Secret) -> Result<Option<(MasterKey, Option<KeyId>, Option<RepoId>)>> {
    let mut held = Vec::new();
    for (prefix, what) in [(objkeys::DATA, "packs"), (objkeys::INDEX, "index files"), (objkeys::SNAPSHOTS, "snapshots")]
    {
        let n = backend.list(prefix).await?.len();
        if n > 0 {
            held.push(format!("{n} {what}"));
        }
    }
    if !held.is_empty() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "{} holds a repository without its config ({}); refusing to init over it: write a new config with \
                 `cairn repair config` (everything stored stays restorable) or put back config from a copy",
                backend.location(),
                held.join(", ")
            ),
        ));
    }
    let slots = !backend.list(objkeys::KEYS).await?.is_empty();
    match secret {
        Secret::KeyFile(path) if path.exists() && !slots => {
            let file = KeyFile::read(path)?;
            Ok(Some((file.master_key()?, None, Some(file.repository))))
        }
        Secret::Password(password) if slots => {
            match keys::unlock_password_at(backend, keys::REPOSITORY_SLOTS, password).await {
                Ok((key, slot)) => Ok(Some((key, slot, None))),
                Err(e) if e.kind() == ErrorKind::WrongPassword => Err(interrupted(backend)),
                Err(e) => Err(e),
            }
        }
        Secret::KeyFile(_) if slots => Err(interrupted(backend)),
        _ => Ok(None),
    }
}

fn interrupted(backend: &Backend) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "{} holds key slots but no config: an init was interrupted there; run `cairn init` again with the \
             password it was given, and it completes",
            backend.location()
        ),
    )
}

/// How often a long-running writer reads the GC generation by default.
pub const GC_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

impl Repository {
    /// Create a new repository. Refuses if one exists at the location.
    pub async fn init(backend: Backend, secret: &Secret, options: &InitOptions, cache: &CacheMode) -> Result<Self> {
        if backend.head(objkeys::CONFIG).await?.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("a repository already exists at {}; refusing to overwrite it", backend.location()),
            ));
        }
        if !(1..=22).contains(&options.compression_level) && options.compression_level != 0 {
            return Err(Error::invalid(format!(
                "compression level {} is out of range 0..=22",
                options.compression_level
            )));
        }
        if !(1 << 20..=256 << 20).contains(&options.pack_size) {
            return Err(Error::invalid(format!("pack size {} is out of range 1 MiB..=256 MiB", options.pack_size)));
        }
        let seed = u64::from_le_bytes(crate::crypto::random_bytes());
        let mut chunker = ChunkerParams::with_average(options.chunk_avg, seed);
        let (mut compression_level, mut pack_size) = (options.compression_level, options.pack_size);
        let mut key = MasterKey::random();
        if let Some((like, like_key)) = &options.like {
            (chunker, compression_level, pack_size) = (like.chunker, like.compression_level, like.pack_size);
            key = MasterKey::random_sharing_ids_with(like_key);
        }
        chunker.validate().map_err(Error::invalid)?;
        let resumed = resume_init(&backend, secret).await?;
        if let Some((resumed_key, _, _)) = &resumed {
            if options.like.as_ref().is_some_and(|(_, like_key)| !resumed_key.same_id_key(like_key)) {
                return Err(Error::invalid(format!(
                    "the interrupted init at {} made a key that does not share --copy-settings-from's id key; \
                     complete it without --copy-settings-from",
                    backend.location()
                )));
            }
            key = resumed_key.clone();
        }
        let conditional_writes = backend.probe_conditional_writes().await?;
        let mut backend = backend;
        backend.set_conditional_writes(conditional_writes);
        let config = RepoConfig {
            conditional_writes,
            settings_from: options.like.as_ref().map(|(c, _)| c.id),
            version: FORMAT_VERSION,
            id: resumed.as_ref().and_then(|(_, _, id)| *id).unwrap_or_else(RepoId::random),
            chunker,
            compression_level,
            pack_size,
            created: jiff::Timestamp::now(),
        };
        let key_slot = match (secret, &resumed) {
            (_, Some((_, slot, _))) => *slot,
            (Secret::Password(password), None) => {
                Some(keys::add_slot(&backend, &key, password.as_bytes(), options.kdf).await?)
            }
            (Secret::KeyFile(path), None) => {
                KeyFile { version: 1, repository: config.id, key: hex::encode(key.to_bytes()) }.write_new(path)?;
                None
            }
        };
        // The config is written last and only if absent: two racing inits cannot both win.
        let sealed = object::seal(&key, object::CONFIG_MAGIC, &serde_json::to_vec(&config).expect("config serializes"));
        backend.put(objkeys::CONFIG, sealed.into(), WriteMode::Create).await.map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => {
                Error::new(ErrorKind::AlreadyExists, format!("a repository already exists at {}", backend.location()))
            }
            _ => e,
        })?;
        let catalog = Arc::new(Catalog::open(catalog_path(cache, &config.id).as_deref())?);
        Ok(Self::assemble(backend, key, config, catalog, key_slot))
    }

    /// Write a new config for a repository that lost (or has only a damaged) config
    /// (`cairn repair config`). The key slots or key file prove the secret; the new
    /// config has a new id (a key file's when one opened it) and new chunking settings,
    /// so stored data stays restorable but new backups do not deduplicate against it
    /// (the chunker's seed was in the lost config). A damaged config is moved aside to
    /// `quarantine/config-<time>` first; an intact one is left alone.
    pub async fn repair_config(backend: Backend, secret: &Secret) -> Result<RepoConfig> {
        let (key, _) = keys::unlock(&backend, secret).await?;
        let existing = match backend.get(objkeys::CONFIG).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(bytes) = &existing {
            if object::open(&key, object::CONFIG_MAGIC, "config", bytes).is_ok() {
                return Err(Error::invalid(format!(
                    "the config at {} is intact; there is nothing to repair",
                    backend.location()
                )));
            }
            let aside = format!("quarantine/config-{}", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"));
            backend.put(&aside, bytes.clone(), WriteMode::Create).await?;
            backend.delete(objkeys::CONFIG).await?;
        }
        let id = match secret {
            Secret::KeyFile(path) => KeyFile::read(path)?.repository,
            Secret::Password(_) => RepoId::random(),
        };
        let seed = u64::from_le_bytes(crate::crypto::random_bytes());
        let conditional_writes = backend.probe_conditional_writes().await?;
        let config = RepoConfig {
            conditional_writes,
            settings_from: None,
            version: FORMAT_VERSION,
            id,
            chunker: ChunkerParams::with_average(DEFAULT_CHUNK_AVG, seed),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            pack_size: DEFAULT_PACK_SIZE,
            created: jiff::Timestamp::now(),
        };
        let sealed = object::seal(&key, object::CONFIG_MAGIC, &serde_json::to_vec(&config).expect("config serializes"));
        backend.put(objkeys::CONFIG, sealed.into(), WriteMode::Create).await?;
        Ok(config)
    }

    /// Open an existing repository and refresh its catalog.
    pub async fn open(backend: Backend, secret: &Secret, cache: &CacheMode) -> Result<Self> {
        let repo = Self::open_unrefreshed(backend, secret, cache).await?;
        repo.refresh().await?;
        Ok(repo)
    }

    /// Open without reading the index into the catalog: for `check`, which trusts no
    /// cache and must report a damaged index file rather than fail on it.
    /// Unlock the master key and read the config, and nothing else: for commands that
    /// touch no snapshot or index (WAL push and fetch), which must start in milliseconds.
    pub async fn unlock(backend: Backend, secret: &Secret) -> Result<(Backend, MasterKey, RepoConfig, Option<KeyId>)> {
        let config_bytes = match backend.get(objkeys::CONFIG).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::NoRepository,
                    format!(
                        "no repository at {}: there is no config object; check the URL or run `cairn init`",
                        backend.location()
                    ),
                ))
            }
            Err(e) => return Err(e),
        };
        let (key, key_slot) = keys::unlock(&backend, secret).await?;
        let plain = object::open(&key, object::CONFIG_MAGIC, "config", &config_bytes).map_err(|e| match secret {
            Secret::KeyFile(path) => Error::new(
                ErrorKind::WrongPassword,
                format!(
                    "key file {} does not open the repository at {}: wrong key file",
                    path.display(),
                    backend.location()
                ),
            ),
            Secret::Password(_) => e,
        })?;
        let config: RepoConfig =
            serde_json::from_slice(&plain).map_err(|e| Error::corrupt(format!("config is not valid: {e}")))?;
        if let Secret::KeyFile(path) = secret {
            let file = KeyFile::read(path)?;
            if file.repository != config.id {
                return Err(Error::new(
                    ErrorKind::WrongPassword,
                    format!(
                        "key file {} belongs to repository {}, not {} at {}",
                        path.display(),
                        file.repository.short(),
                        config.id.short(),
                        backend.location()
                    ),
                ));
            }
        }
        if config.version != FORMAT_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("repository format version {} is not supported by this cairn", config.version),
            ));
        }
        config.chunker.validate().map_err(|e| Error::corrupt(format!("config: {e}")))?;
        let mut backend = backend;
        backend.set_conditional_writes(config.conditional_writes);
        Ok((backend, key, config, key_slot))
    }

    pub async fn open_unrefreshed(backend: Backend, secret: &Secret, cache: &CacheMode) -> Result<Self> {
        let (backend, key, config, key_slot) = Self::unlock(backend, secret).await?;
        let catalog = Arc::new(Catalog::open(catalog_path(cache, &config.id).as_deref())?);
        Ok(Self::assemble(backend, key, config, catalog, key_slot))
    }

    fn assemble(
        backend: Backend,
        key: MasterKey,
        config: RepoConfig,
        catalog: Arc<Catalog>,
        key_slot: Option<KeyId>,
    ) -> Self {
        Repository {
            backend,
            key,
            config,
            catalog,
            exclusions: Default::default(),
            key_slot,
            meta_cache: Default::default(),
            gc_check_interval: GC_CHECK_INTERVAL,
            reused_in_memory: saver::REUSED_IN_MEMORY,
        }
    }

    /// Start a writer session (docs/format.md §17.3): every saver and snapshot write
    /// belongs to one. Its object exists before the generation is read; packs pending
    /// removal then are excluded from reuse, and the catalog is refreshed after that read,
    /// so it lists no pack a sweep finished before the session began. End it with
    /// [`gc::Session::end`].
    pub async fn begin_session(&self) -> Result<gc::Session> {
        self.begin(false).await
    }

    /// Start a reader's session (restore, check, repair): as [`Repository::begin_session`],
    /// but it acknowledges no mark, so no sweep deletes anything while it is live.
    pub async fn begin_reading(&self) -> Result<gc::Session> {
        self.begin(true).await
    }

    async fn begin(&self, reader: bool) -> Result<gc::Session> {
        let session = match reader {
            true => gc::Session::begin_reader(&self.backend, &self.key).await?,
            false => gc::Session::begin(&self.backend, &self.key).await?,
        };
        for name in &session.start().pending {
            self.exclusions.exclude(gc::read_candidates(&self.backend, &self.key, name).await?.packs);
        }
        self.refresh().await?;
        Ok(session)
    }

    pub fn gc_check_interval(&self) -> std::time::Duration {
        self.gc_check_interval
    }

    /// Look for concurrent removals this often while saving (tests shorten it).
    pub fn set_gc_check_interval(&mut self, interval: std::time::Duration) {
        self.gc_check_interval = interval;
    }

    pub fn reused_in_memory(&self) -> usize {
        self.reused_in_memory
    }

    /// Keep this many reused blob ids in memory before stashing them in the catalog (tests
    /// lower it to exercise the stash).
    pub fn set_reused_in_memory(&mut self, ids: usize) {
        self.reused_in_memory = ids.max(1);
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    pub fn key(&self) -> &MasterKey {
        &self.key
    }
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Packs of pending removals this process saw (see [`reuse`]).
    pub fn exclusions(&self) -> &Arc<reuse::Exclusions> {
        &self.exclusions
    }

    /// Bring the catalog up to date with the repository; returns whether the index changed.
    pub async fn refresh(&self) -> Result<bool> {
        refresh::refresh(&self.catalog, &self.backend, &self.key).await
    }
    pub fn key_slot(&self) -> Option<KeyId> {
        self.key_slot
    }

    /// Write a snapshot manifest. Call only after the saver that stored its data finished:
    /// a snapshot that exists must reference only indexed, durable blobs.
    /// Removals that ran meanwhile are accounted for before and after the write (`gc`).
    pub async fn save_snapshot(&self, session: &Arc<gc::Session>, snapshot: &SnapshotFile) -> Result<SnapshotId> {
        let guarded = gc::guard(self, session, snapshot).await?;
        let id = SnapshotId::random();
        let json = serde_json::to_vec(snapshot).expect("snapshots serialize");
        let sealed = object::seal(&self.key, object::SNAPSHOT_MAGIC, &json);
        let name = objkeys::snapshot(&id);
        self.backend.put(&name, sealed.into(), WriteMode::Create).await?;
        if let Err(e) = gc::confirm(self, session, snapshot, guarded).await {
            // The snapshot may refer to data a concurrent removal deleted: withdraw it.
            self.backend.delete(&name).await?;
            return Err(e);
        }
        self.catalog.add_snapshot(&id, snapshot)?;
        Ok(id)
    }

    pub async fn load_tree(&self, id: &crate::id::BlobId) -> Result<Tree> {
        Tree::decode(&self.load_blob(id).await?).map_err(|e| e.context(format!("tree {id}")))
    }

    /// The tree of directory `node`: taken out of the node when it is inline, else loaded.
    /// A directory with neither is corrupt; `path` names it in the error.
    pub async fn dir_tree(&self, node: &mut Node, path: &dyn std::fmt::Display) -> Result<Tree> {
        if let Some(tree) = node.tree.take() {
            return Ok(tree);
        }
        match node.subtree {
            Some(id) => self.load_tree(&id).await,
            None => Err(Error::corrupt(format!("directory {path} has no tree"))),
        }
    }

    /// Find one snapshot by `latest` or a unique id prefix (at least 8 hex characters),
    /// among the snapshots that `filter` accepts.
    pub fn find_snapshot(&self, spec: &str, filter: &SnapshotFilter) -> Result<(SnapshotId, SnapshotFile)> {
        let snapshots = self.catalog.snapshots()?;
        if spec == "latest" {
            return snapshots.into_iter().rfind(|(_, s)| filter.matches(s)).ok_or_else(|| {
                Error::not_found(format!("no snapshot matches {}; list them with `cairn snapshots`", filter.describe()))
            });
        }
        if spec.len() < 8 || !spec.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "snapshot {spec:?} is neither `latest` nor an id prefix of at least 8 hex characters"
            )));
        }
        let spec = spec.to_ascii_lowercase();
        let mut matches = snapshots.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec));
        match (matches.next(), matches.next()) {
            (Some(found), None) => Ok(found),
            (None, _) => {
                Err(Error::not_found(format!("no snapshot with id prefix {spec}; list them with `cairn snapshots`")))
            }
            (Some(_), Some(_)) => {
                Err(Error::invalid(format!("snapshot id prefix {spec} is ambiguous; give more characters")))
            }
        }
    }
}

/// Read, decrypt and decode one index file; errors name it.
pub async fn read_index(
    backend: &Backend,
    key: &MasterKey,
    id: &crate::id::IndexId,
) -> Result<crate::format::index::IndexFile> {
    let name = objkeys::index(id);
    let plain = object::open(key, object::INDEX_MAGIC, &name, &backend.get(&name).await?)?;
    crate::format::index::IndexFile::decode(&plain).map_err(|e| e.context(&name))
}

/// Read and decrypt one snapshot manifest.
pub async fn read_snapshot(backend: &Backend, key: &MasterKey, id: &SnapshotId) -> Result<SnapshotFile> {
    let name = objkeys::snapshot(id);
    let bytes = backend.get(&name).await?;
    let plain = object::open(key, object::SNAPSHOT_MAGIC, &name, &bytes)?;
    let snapshot: SnapshotFile =
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(format!("{name} is not a valid snapshot: {e}")))?;
    if snapshot.version > crate::format::snapshot::SNAPSHOT_VERSION {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{name} has snapshot version {}, which this cairn does not read: upgrade cairn", snapshot.version),
        ));
    }
    Ok(snapshot)
}

fn catalog_path(cache: &CacheMode, id: &RepoId) -> Option<PathBuf> {
    match cache {
        CacheMode::Dir(dir) => Some(dir.join(id.to_hex()).join("catalog.sqlite")),
        CacheMode::Temporary => None,
    }
}

/// Which snapshots a command considers.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub host: Option<String>,
    pub tags: Vec<String>,
}

impl SnapshotFilter {
    pub fn matches(&self, s: &SnapshotFile) -> bool {
        self.name.as_ref().is_none_or(|n| &s.name == n)
            && self.kind.as_ref().is_none_or(|k| &s.kind == k)
            && self.host.as_ref().is_none_or(|h| &s.host == h)
            && self.tags.iter().all(|t| s.tags.contains(t))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = &self.name {
            parts.push(format!("name {n:?}"));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind {k:?}"));
        }
        if let Some(h) = &self.host {
            parts.push(format!("host {h:?}"));
        }
        for t in &self.tags {
            parts.push(format!("tag {t:?}"));
        }
        if parts.is_empty() {
            "(any snapshot)".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

pub fn username() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".to_string())
}
