//! The local catalog: a SQLite cache of the repository's index and snapshot list.
//!
//! It lives in the cache directory (`<cache>/<repository id>/catalog.sqlite`) or, with
//! `--no-cache`, in a private temporary SQLite file that disappears when closed. Either way
//! blob lookups go to SQLite's B-tree on disk, so memory stays flat however many blobs the
//! repository holds. The catalog is only a cache: it is refreshed incrementally from the
//! repository's `index/` and `snapshots/` listings, rebuilt from scratch when an index file
//! it knows has disappeared or its schema version differs, and deleting it loses nothing.
//! `check` never trusts it: it builds a fresh one from the repository.

use crate::crypto::SALT_LEN;
use crate::error::{Error, Result};
use crate::format::index::IndexFile;
use crate::format::pack::{BlobKind, PackEntry};
use crate::format::snapshot::SnapshotFile;
use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use rusqlite::{params, Connection};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

const SCHEMA_VERSION: i64 = 2;
/// The columns of a blob row: in `blobs`, in the staging table, and in the copy that a
/// large drop makes.
macro_rules! blob_columns {
    () => {
        "id BLOB NOT NULL, pack INTEGER NOT NULL, kind INTEGER NOT NULL, offset INTEGER NOT NULL,
         length INTEGER NOT NULL, raw_length INTEGER NOT NULL"
    };
}

mod index;
pub(crate) use index::entries;
use index::{merge_staged, stage_index};
/// Tables the index fills; dropped and made again when the catalog rebuilds. Run at every
/// open (everything is `IF NOT EXISTS`).
const INDEX_SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS index_files (id BLOB PRIMARY KEY);
     CREATE TABLE IF NOT EXISTS packs (
         rowid INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, salt BLOB NOT NULL, size INTEGER NOT NULL,
         kind INTEGER NOT NULL);
     CREATE TABLE IF NOT EXISTS pack_files (pack INTEGER NOT NULL, file BLOB NOT NULL, PRIMARY KEY (pack, file))
         WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS pack_files_by_file ON pack_files (file);
     CREATE TABLE IF NOT EXISTS blobs (",
    blob_columns!(),
    ", PRIMARY KEY (id, pack)) WITHOUT ROWID;
     CREATE INDEX IF NOT EXISTS blobs_by_pack ON blobs (pack, offset);"
);
const OTHER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (id BLOB PRIMARY KEY, json TEXT NOT NULL);
";
const DROP_INDEX_TABLES: &str =
    "DROP TABLE IF EXISTS index_files; DROP TABLE IF EXISTS packs; DROP TABLE IF EXISTS pack_files; DROP TABLE IF EXISTS blobs;";
/// Index rows are staged here (appended, unsorted), then moved into `blobs` in key order:
/// a million random-key inserts into a B-tree cost several times one sorted insert.
const STAGING: &str = concat!("CREATE TEMP TABLE IF NOT EXISTS staged_blobs (", blob_columns!(), ");");
/// Blobs a writing session reused, beyond those it keeps in memory (`Saver::note_reused`);
/// `session` tells apart savers sharing this connection.
const SESSION_REUSED: &str = "CREATE TEMP TABLE IF NOT EXISTS session_reused \
     (session INTEGER NOT NULL, id BLOB NOT NULL, PRIMARY KEY (session, id)) WITHOUT ROWID;";
/// From this many staged rows on, the pack index of an empty catalog is built after the
/// insert (one sort) rather than updated row by row.
const BULK_ROWS: i64 = 100_000;

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
    /// Lookups served inside the read transaction `reader` keeps open; 0 when none is.
    /// Changed only with `conn` locked.
    reads_in_transaction: AtomicU32,
    /// Index files and snapshots the last refresh could not read (their key and why),
    /// left out so that one damaged object does not hide every other one.
    damaged: Mutex<Vec<(String, String)>>,
}

/// Lookups one read transaction serves before it is renewed (see `Catalog::reader`).
const READS_PER_TRANSACTION: u32 = 4096;

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
            conn.execute_batch(DROP_INDEX_TABLES)?;
            conn.execute_batch("DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS snapshots;")?;
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        conn.execute_batch(INDEX_SCHEMA)?;
        conn.execute_batch(OTHER_SCHEMA)?;
        // Temporary tables (staging, and a removal run's sets) and sorts spill to files,
        // never to RAM; 16 MiB of page cache keeps sorted scans fast.
        conn.pragma_update(None, "temp_store", "FILE")?;
        conn.pragma_update(None, "cache_size", -16384)?;
        conn.execute_batch("PRAGMA temp.cache_size = -16384")?;
        conn.execute_batch(STAGING)?;
        conn.execute_batch(SESSION_REUSED)?;
        Ok(Catalog { conn: Mutex::new(conn), reads_in_transaction: AtomicU32::new(0), damaged: Default::default() })
    }

    /// The connection, outside any read transaction [`Catalog::reader`] left open: what
    /// follows may write, and sees what this process and others have written.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if self.reads_in_transaction.swap(0, Ordering::Relaxed) > 0 {
            // A read-only transaction: ending it cannot lose anything.
            let _ = conn.execute_batch("COMMIT");
        }
        conn
    }

    /// End the read transaction lookups share, if one is open (see `Catalog::reader`):
    /// for a caller about to spend long without lookups.
    pub fn end_reads(&self) {
        drop(self.conn());
    }

    /// The connection for a lookup, inside a read transaction shared with up to
    /// [`READS_PER_TRANSACTION`] lookups. A lookup in autocommit mode takes and releases
    /// SQLite's file locks and revalidates its page cache, which was 60% of a lookup's
    /// cost; a backup of an unchanged tree or a restore's planner makes one per tree and
    /// blob. The transaction ends at the next [`Catalog::conn`] (every write and every
    /// refresh goes through it) or when the catalog is closed. Until then the lookups do
    /// not see what other processes sharing this cache wrote since it began, as a
    /// process with a cache of its own never does: removal does not rely on a writer's
    /// catalog being current (docs/format.md §17).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut reads = self.reads_in_transaction.load(Ordering::Relaxed);
        if reads >= READS_PER_TRANSACTION {
            let _ = conn.execute_batch("COMMIT");
            reads = 0;
        }
        // Not inside a transaction of someone else's making (`unchecked_transaction`).
        if reads == 0 && !(conn.is_autocommit() && conn.execute_batch("BEGIN DEFERRED").is_ok()) {
            self.reads_in_transaction.store(0, Ordering::Relaxed);
            return conn;
        }
        self.reads_in_transaction.store(reads + 1, Ordering::Relaxed);
        conn
    }

    /// The objects the last refresh left out because they could not be read (damaged):
    /// `(key, what is wrong)`. Removal refuses to run while there are any.
    pub fn damaged(&self) -> Vec<(String, String)> {
        self.damaged.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Note an object a refresh left out because it could not be read (damaged).
    pub fn note_damaged(&self, object: String, why: &str) {
        let mut damaged = self.damaged.lock().unwrap_or_else(|p| p.into_inner());
        if !damaged.iter().any(|(o, _)| *o == object) {
            damaged.push((object, why.to_string()));
        }
    }

    /// Forget the damaged objects noted (a refresh begins).
    pub fn clear_damaged(&self) {
        self.damaged.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The index files the catalog holds.
    pub fn known_index_files(&self) -> Result<HashSet<IndexId>> {
        self.known_ids("SELECT id FROM index_files")
    }

    /// The snapshots the catalog holds.
    pub fn known_snapshots(&self) -> Result<HashSet<SnapshotId>> {
        self.known_ids("SELECT id FROM snapshots")
    }

    /// Drop every index row: an index file the catalog knows went away (a removal
    /// elsewhere rewrote it), so the index is read again from scratch.
    pub fn clear_index(&self) -> Result<()> {
        let conn = self.conn();
        conn.execute_batch(DROP_INDEX_TABLES)?;
        conn.execute_batch(INDEX_SCHEMA)?;
        Ok(())
    }

    /// Stage an index file's rows, to be merged by [`Catalog::merge_staged`]: loading many
    /// files stages them one by one, then merges them in key order in one go.
    pub fn stage_index(&self, id: &IndexId, file: &IndexFile) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        stage_index(&tx, id, file)?;
        tx.commit()?;
        Ok(())
    }

    /// Merge what was staged and record the index files it came from.
    pub fn merge_staged(&self, files: &[IndexId]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        merge_staged(&tx, files)?;
        tx.commit()?;
        Ok(())
    }

    /// A refresh that failed half-way (an index file vanished mid-read) left staged rows and
    /// pack rows of files it never recorded: drop them, so no pack is listed by a file the
    /// catalog does not know.
    pub fn discard_partial_loads(&self) -> Result<()> {
        Ok(self.conn().execute_batch(
            "DELETE FROM staged_blobs;
             DELETE FROM pack_files WHERE file NOT IN (SELECT id FROM index_files);
             DELETE FROM packs WHERE rowid NOT IN (SELECT pack FROM pack_files);",
        )?)
    }

    /// The ids a one-column query returns, without decoding anything else.
    fn known_ids<T: FromSlice>(&self, query: &str) -> Result<HashSet<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(query)?;
        let ids = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?.filter_map(|b| T::from_slice(&b.ok()?)).collect();
        Ok(ids)
    }

    /// Record an index file's contents (after reading it, or after writing it). Every copy
    /// of a blob is recorded; lookups prefer the copy recorded last, so a writer's own
    /// fresh copy wins.
    pub fn add_index(&self, id: &IndexId, file: &IndexFile) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        stage_index(&tx, id, file)?;
        merge_staged(&tx, std::slice::from_ref(id))?;
        tx.commit()?;
        Ok(())
    }

    pub fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.conn().execute("DELETE FROM snapshots WHERE id = ?1", [&id.0[..]])?;
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

    /// Remember that writing session `session` relies on `ids`, on disk (a temporary
    /// table) rather than in memory.
    pub fn stash_reused(&self, session: u64, ids: &[BlobId]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO temp.session_reused (session, id) VALUES (?1, ?2)")?;
            for id in ids {
                insert.execute(params![session as i64, &id.0[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Those of `ids` that session `session` stashed.
    pub fn stashed_reused<'a>(&self, session: u64, ids: impl IntoIterator<Item = &'a BlobId>) -> Result<Vec<BlobId>> {
        let conn = self.conn();
        let mut query = conn.prepare_cached("SELECT 1 FROM temp.session_reused WHERE session = ?1 AND id = ?2")?;
        let mut found = Vec::new();
        for id in ids {
            if query.exists(params![session as i64, &id.0[..]])? {
                found.push(*id);
            }
        }
        Ok(found)
    }

    /// Forget what session `session` stashed.
    pub fn forget_reused(&self, session: u64) -> Result<()> {
        self.conn().execute("DELETE FROM temp.session_reused WHERE session = ?1", params![session as i64])?;
        Ok(())
    }

    /// Run `f` on the catalog's connection: for a removal run's temporary tables
    /// (`repo::gc::sets`). Do not call other catalog methods from inside `f`.
    pub(crate) fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        f(&self.conn())
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

#[cfg(test)]
pub(crate) mod tests;
