//! The local catalog: a SQLite cache of the repository's index and snapshot list.
//!
//! It lives in the cache directory (`<cache>/<repository id>/catalog.sqlite`) or, with
//! `--no-cache`, in a private temporary SQLite file that disappears when closed. Either way
//! blob lookups go to SQLite's B-tree on disk, so memory stays flat however many blobs the
//! repository holds. The catalog is only a cache: it is refreshed incrementally from the
//! repository's `index/` and `snapshots/` listings, rebuilt from scratch when an index file
//! it knows has disappeared or its schema version differs, and deleting it loses nothing.
//! `check` never trusts it: it builds a fresh one from the repository.

use crate::backend::{keys, Backend};
use crate::crypto::{MasterKey, SALT_LEN};
use crate::error::{Error, Result};
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::index::IndexFile;
use crate::object;
use crate::pack::{BlobKind, PackEntry};
use crate::snapshot::SnapshotFile;
use futures::{StreamExt, TryStreamExt};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS index_files (id BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS packs (
    rowid INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, salt BLOB NOT NULL, size INTEGER NOT NULL, kind INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY, kind INTEGER NOT NULL, pack INTEGER NOT NULL, offset INTEGER NOT NULL,
    length INTEGER NOT NULL, raw_length INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (id BLOB PRIMARY KEY, json TEXT NOT NULL);
";

/// Where a blob is stored.
#[derive(Debug, Clone, Copy)]
pub struct BlobLocation {
    pub pack: PackId,
    /// Size of the whole pack.
    pub pack_size: u64,
    pub salt: [u8; SALT_LEN],
    pub entry: PackEntry,
}

/// A pack as the index knows it.
#[derive(Debug, Clone)]
pub struct PackRow {
    pub id: PackId,
    pub size: u64,
    pub kind: BlobKind,
}

pub struct Catalog {
    conn: Mutex<Connection>,
    /// Packs a pending removal may delete (see `repo::gc`): their blobs are not reused.
    excluded: std::sync::RwLock<HashSet<PackId>>,
}

impl Catalog {
    /// Open (or create) the catalog at `path`; `None` makes a private temporary one.
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let conn = match path {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    // The catalog holds decrypted snapshot manifests and the index: owner only.
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| Error::io("create cache directory", dir, e))?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| Error::io("protect cache directory", dir, e))?;
                }
                let conn = Connection::open(path)?;
                conn.busy_timeout(std::time::Duration::from_secs(30))?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn
            }
            None => Connection::open("")?,
        };
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != SCHEMA_VERSION {
            conn.execute_batch(
                "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS index_files; DROP TABLE IF EXISTS packs;
                 DROP TABLE IF EXISTS blobs; DROP TABLE IF EXISTS snapshots;",
            )?;
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        Ok(Catalog { conn: Mutex::new(conn), excluded: Default::default() })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bring the catalog up to date with the repository's index files and snapshots.
    pub async fn refresh(&self, backend: &Backend, key: &MasterKey) -> Result<()> {
        self.refresh_index(backend, key).await?;
        self.refresh_snapshots(backend, key).await
    }

    /// A removal may rewrite index files while we read them: an index file that vanished
    /// between the listing and the read means the listing is stale, so list again.
    async fn refresh_index(&self, backend: &Backend, key: &MasterKey) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.refresh_index_once(backend, key).await {
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound && attempt < 5 => attempt += 1,
                other => return other,
            }
        }
    }

    async fn refresh_index_once(&self, backend: &Backend, key: &MasterKey) -> Result<()> {
        let listed = listed_ids(backend, keys::INDEX, IndexId::from_hex).await?;
        let mut known = self.known_ids::<IndexId>("SELECT id FROM index_files")?;
        if !known.is_subset(&listed) {
            // An index file went away (prune consolidated it): start over.
            self.conn().execute_batch("DELETE FROM index_files; DELETE FROM blobs; DELETE FROM packs;")?;
            known.clear();
        }
        let missing: Vec<IndexId> = listed.difference(&known).copied().collect();
        let mut loaded = futures::stream::iter(missing)
            .map(|id| async move {
                let name = keys::index(&id);
                let bytes = backend.get(&name).await?;
                let plain = object::open(key, object::INDEX_MAGIC, &name, &bytes)?;
                Ok::<_, Error>((id, IndexFile::decode(&plain).map_err(|e| e.context(&name))?))
            })
            .buffer_unordered(8);
        while let Some((id, file)) = loaded.try_next().await? {
            self.add_index(&id, &file)?;
        }
        Ok(())
    }

    /// The ids a one-column query returns, without decoding anything else.
    fn known_ids<T: FromSlice>(&self, query: &str) -> Result<HashSet<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(query)?;
        let ids = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?.filter_map(|b| T::from_slice(&b.ok()?)).collect();
        Ok(ids)
    }

    /// Record an index file's contents (after reading it, or after writing it). A blob
    /// stored twice is placed in the pack recorded last: a writer's own fresh copy wins.
    pub fn add_index(&self, id: &IndexId, file: &IndexFile) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut add_pack =
                tx.prepare_cached("INSERT OR IGNORE INTO packs (id, salt, size, kind) VALUES (?1, ?2, ?3, ?4)")?;
            let mut pack_row = tx.prepare_cached("SELECT rowid FROM packs WHERE id = ?1")?;
            let mut add_blob = tx.prepare_cached(
                "INSERT OR REPLACE INTO blobs (id, kind, pack, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for pack in &file.packs {
                let kind = pack.blobs.first().map_or(0, |b| b.kind as u8);
                add_pack.execute(params![&pack.id.0[..], &pack.salt[..], pack.size as i64, kind])?;
                let row: i64 = pack_row.query_row([&pack.id.0[..]], |r| r.get(0))?;
                for blob in &pack.blobs {
                    add_blob.execute(params![
                        &blob.id.0[..],
                        blob.kind as u8,
                        row,
                        blob.offset as i64,
                        blob.length,
                        blob.raw_length
                    ])?;
                }
            }
            tx.execute("INSERT OR IGNORE INTO index_files (id) VALUES (?1)", [&id.0[..]])?;
        }
        tx.commit()?;
        Ok(())
    }

    async fn refresh_snapshots(&self, backend: &Backend, key: &MasterKey) -> Result<()> {
        let listed = listed_ids(backend, keys::SNAPSHOTS, SnapshotId::from_hex).await?;
        let known = self.known_ids::<SnapshotId>("SELECT id FROM snapshots")?;
        for gone in known.difference(&listed) {
            self.conn().execute("DELETE FROM snapshots WHERE id = ?1", [&gone.0[..]])?;
        }
        let missing: Vec<SnapshotId> = listed.difference(&known).copied().collect();
        let mut loaded = futures::stream::iter(missing)
            .map(|id| async move {
                match crate::repo::read_snapshot(backend, key, &id).await {
                    Ok(snapshot) => Ok(Some((id, snapshot))),
                    // Forgotten between the listing and the read.
                    Err(e) if e.kind() == crate::error::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(8);
        while let Some(found) = loaded.try_next().await? {
            if let Some((id, snapshot)) = found {
                self.add_snapshot(&id, &snapshot)?;
            }
        }
        Ok(())
    }

    pub fn add_snapshot(&self, id: &SnapshotId, snapshot: &SnapshotFile) -> Result<()> {
        let json = serde_json::to_string(snapshot).expect("snapshots serialize");
        self.conn().execute("INSERT OR REPLACE INTO snapshots (id, json) VALUES (?1, ?2)", params![&id.0[..], json])?;
        Ok(())
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, SnapshotFile)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, json FROM snapshots")?;
        let mut out = Vec::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?)))? {
            let (id, json) = row?;
            let id =
                SnapshotId::from_slice(&id).ok_or_else(|| Error::corrupt("catalog holds a malformed snapshot id"))?;
            let snap: SnapshotFile = serde_json::from_str(&json)
                .map_err(|e| Error::corrupt(format!("catalog entry for snapshot {id}: {e}")))?;
            out.push((id, snap));
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT p.id, p.salt, b.kind, b.offset, b.length, b.raw_length, p.size FROM blobs b JOIN packs p ON p.rowid = b.pack WHERE b.id = ?1",
        )?;
        let row = stmt
            .query_row([&id.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, u8>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })
            .optional()?;
        let Some((pack, salt, kind, offset, length, raw_length, pack_size)) = row else { return Ok(None) };
        let bad = || Error::corrupt(format!("catalog entry for blob {id} is malformed; delete the cache directory"));
        Ok(Some(BlobLocation {
            pack: PackId::from_slice(&pack).ok_or_else(bad)?,
            pack_size: pack_size as u64,
            salt: salt.as_slice().try_into().map_err(|_| bad())?,
            entry: PackEntry {
                kind: BlobKind::from_u8(kind).ok_or_else(bad)?,
                id: *id,
                offset: offset as u64,
                length,
                raw_length,
            },
        }))
    }

    /// Do not let new snapshots reuse blobs stored in these packs.
    pub fn exclude_packs(&self, packs: impl IntoIterator<Item = PackId>) {
        self.excluded.write().unwrap_or_else(|p| p.into_inner()).extend(packs);
    }

    /// Whether a blob is indexed in a pack that new snapshots may rely on.
    pub fn contains_reusable(&self, id: &BlobId) -> Result<bool> {
        let excluded = self.excluded.read().unwrap_or_else(|p| p.into_inner());
        if excluded.is_empty() {
            return self.contains(id);
        }
        match self.lookup(id)? {
            Some(l) if excluded.contains(&l.pack) => {
                crate::repo::gc::count_excluded(1);
                Ok(false)
            }
            found => Ok(found.is_some()),
        }
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?;
        Ok(stmt.exists([&id.0[..]])?)
    }

    pub fn packs(&self) -> Result<Vec<PackRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, size, kind FROM packs ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, u8>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, size, kind) = row?;
            out.push(PackRow {
                id: PackId::from_slice(&id).ok_or_else(|| Error::corrupt("catalog holds a malformed pack id"))?,
                size: size as u64,
                kind: BlobKind::from_u8(kind).unwrap_or(BlobKind::Data),
            });
        }
        Ok(out)
    }

    /// The blobs the index places in one pack, in offset order.
    pub fn pack_blobs(&self, pack: &PackId) -> Result<Vec<PackEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT b.id, b.kind, b.offset, b.length, b.raw_length FROM blobs b JOIN packs p ON p.rowid = b.pack WHERE p.id = ?1 ORDER BY b.offset",
        )?;
        let rows = stmt.query_map([&pack.0[..]], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, u8>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u32>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, offset, length, raw_length) = row?;
            out.push(PackEntry {
                kind: BlobKind::from_u8(kind).unwrap_or(BlobKind::Data),
                id: BlobId::from_slice(&id).ok_or_else(|| Error::corrupt("catalog holds a malformed blob id"))?,
                offset: offset as u64,
                length,
                raw_length,
            });
        }
        Ok(out)
    }

    /// Blob count, pack count and total pack bytes.
    pub fn totals(&self) -> Result<(u64, u64, u64)> {
        let conn = self.conn();
        let blobs: i64 = conn.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))?;
        let (packs, bytes): (i64, i64) =
            conn.query_row("SELECT count(*), coalesce(sum(size), 0) FROM packs", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((blobs as u64, packs as u64, bytes as u64))
    }

    pub fn index_file_count(&self) -> Result<u64> {
        Ok(self.conn().query_row("SELECT count(*) FROM index_files", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

/// Ids that can be rebuilt from the bytes stored in the catalog.
trait FromSlice: Sized + Eq + std::hash::Hash {
    fn from_slice(bytes: &[u8]) -> Option<Self>;
}

impl FromSlice for IndexId {
    fn from_slice(bytes: &[u8]) -> Option<Self> {
        IndexId::from_slice(bytes)
    }
}

impl FromSlice for SnapshotId {
    fn from_slice(bytes: &[u8]) -> Option<Self> {
        SnapshotId::from_slice(bytes)
    }
}

/// The ids of the objects listed under `prefix` (names that are not ids are ignored).
async fn listed_ids<T: Eq + std::hash::Hash>(
    backend: &Backend,
    prefix: &str,
    parse: fn(&str) -> Result<T>,
) -> Result<HashSet<T>> {
    Ok(backend.list(prefix).await?.iter().filter_map(|o| parse(keys::name(&o.key)).ok()).collect())
}
