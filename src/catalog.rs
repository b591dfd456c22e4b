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
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::{BTreeSet, HashSet};
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

    /// End the read transaction lookups share, if one is open (see [`Catalog::reader`]):
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

    /// Where to read a blob: the newest of its copies.
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        Ok(self.locations(id)?.into_iter().next())
    }

    /// Every copy of a blob, the newest (highest catalog row) first.
    pub fn locations(&self, id: &BlobId) -> Result<Vec<BlobLocation>> {
        let rows = {
            let conn = self.reader();
            let mut stmt = conn.prepare_cached(
                "SELECT p.id, p.salt, b.kind, b.offset, b.length, b.raw_length, p.size FROM blobs b JOIN packs p ON p.rowid = b.pack
                 WHERE b.id = ?1 ORDER BY b.pack DESC",
            )?;
            let rows = stmt.query_map([&id.0[..]], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, u8>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let bad = || Error::corrupt(format!("catalog entry for blob {id} is malformed; delete the cache directory"));
        let mut out = Vec::with_capacity(rows.len());
        for (pack, salt, kind, offset, length, raw_length, pack_size) in rows {
            out.push(BlobLocation {
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
            });
        }
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

    /// Every pack the index places a copy of the blob in.
    pub fn copies(&self, id: &BlobId) -> Result<Vec<PackId>> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT p.id FROM blobs b JOIN packs p ON p.rowid = b.pack WHERE b.id = ?1")?;
        let rows = stmt.query_map([&id.0[..]], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(PackId::from_slice(&row?).ok_or_else(|| Error::corrupt("catalog holds a malformed pack id"))?);
        }
        Ok(out)
    }

    pub fn contains(&self, id: &BlobId) -> Result<bool> {
        let conn = self.reader();
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
            "SELECT b.id, b.kind, b.offset, b.length, b.raw_length FROM blobs b
             WHERE b.pack = (SELECT rowid FROM packs WHERE id = ?1) ORDER BY b.offset",
        )?;
        entries(&mut stmt, [&pack.0[..]])
    }

    /// Blob count, pack count and total pack bytes.
    pub fn totals(&self) -> Result<(u64, u64, u64)> {
        let conn = self.conn();
        let blobs: i64 = conn.query_row("SELECT count(*) FROM (SELECT DISTINCT id FROM blobs)", [], |r| r.get(0))?;
        let (packs, bytes): (i64, i64) =
            conn.query_row("SELECT count(*), coalesce(sum(size), 0) FROM packs", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((blobs as u64, packs as u64, bytes as u64))
    }

    /// Run `f` on the catalog's connection: for a removal run's temporary tables
    /// (`repo::gc::sets`). Do not call other catalog methods from inside `f`.
    pub(crate) fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        f(&self.conn())
    }

    /// The index files the catalog has read.
    pub fn index_files(&self) -> Result<Vec<IndexId>> {
        Ok(self.known_ids::<IndexId>("SELECT id FROM index_files")?.into_iter().collect())
    }

    /// The index files that list any of `packs`.
    pub fn files_listing(&self, packs: &BTreeSet<PackId>) -> Result<BTreeSet<IndexId>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT f.file FROM pack_files f JOIN packs p ON p.rowid = f.pack WHERE p.id = ?1")?;
        let mut out = BTreeSet::new();
        for pack in packs {
            for file in stmt.query_map([&pack.0[..]], |r| r.get::<_, Vec<u8>>(0))? {
                out.insert(
                    IndexId::from_slice(&file?).ok_or_else(|| Error::corrupt("catalog holds a malformed index id"))?,
                );
            }
        }
        Ok(out)
    }

    /// Whether the index lists the pack.
    pub fn has_pack(&self, pack: &PackId) -> Result<bool> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT 1 FROM packs WHERE id = ?1")?;
        Ok(stmt.exists([&pack.0[..]])?)
    }

    /// Apply this process's own rewrite of index files: `removed` are gone, `added` (with
    /// the packs each lists) replace them with the same entries, less the `dropped` packs.
    /// Keeps the catalog from rebuilding itself from scratch after a prune.
    pub fn rewrote_index(
        &self,
        removed: &[IndexId],
        added: &[(IndexId, Vec<PackId>)],
        dropped: &BTreeSet<PackId>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut row = tx.prepare_cached("SELECT rowid FROM packs WHERE id = ?1")?;
            let mut rows = Vec::new();
            for pack in dropped {
                rows.extend(row.query_row([&pack.0[..]], |r| r.get::<_, i64>(0)).optional()?);
            }
            drop_packs(&tx, &rows)?;
            let mut forget = tx.prepare_cached("DELETE FROM index_files WHERE id = ?1")?;
            let mut forget_lists = tx.prepare_cached("DELETE FROM pack_files WHERE file = ?1")?;
            for id in removed {
                forget.execute([&id.0[..]])?;
                forget_lists.execute([&id.0[..]])?;
            }
            let mut add = tx.prepare_cached("INSERT OR IGNORE INTO index_files (id) VALUES (?1)")?;
            let mut list = tx.prepare_cached("INSERT OR IGNORE INTO pack_files (pack, file) VALUES (?1, ?2)")?;
            for (id, packs) in added {
                add.execute([&id.0[..]])?;
                for pack in packs {
                    if let Some(n) = row.query_row([&pack.0[..]], |r| r.get::<_, i64>(0)).optional()? {
                        list.execute(params![n, &id.0[..]])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Index entries: every copy of every blob (what the index files list, less
    /// packs listed twice).
    pub fn entry_count(&self) -> Result<u64> {
        Ok(self.conn().query_row("SELECT count(*) FROM blobs", [], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn index_file_count(&self) -> Result<u64> {
        Ok(self.conn().query_row("SELECT count(*) FROM index_files", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

/// The pack entries a query selecting `id, kind, offset, length, raw_length` returns.
pub(crate) fn entries(stmt: &mut rusqlite::Statement<'_>, params: impl rusqlite::Params) -> Result<Vec<PackEntry>> {
    let rows = stmt.query_map(params, |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u8>(1)?, r.get::<_, i64>(2)?, r.get::<_, u32>(3)?, r.get::<_, u32>(4)?))
    })?;
    let bad = || Error::corrupt("the catalog holds a malformed blob row; delete the cache directory");
    let mut out = Vec::new();
    for row in rows {
        let (id, kind, offset, length, raw_length) = row?;
        out.push(PackEntry {
            kind: BlobKind::from_u8(kind).ok_or_else(bad)?,
            id: BlobId::from_slice(&id).ok_or_else(bad)?,
            offset: offset as u64,
            length,
            raw_length,
        });
    }
    Ok(out)
}

/// Append an index file's packs and blob entries to the staging table (see [`STAGING`]).
fn stage_index(tx: &rusqlite::Transaction<'_>, id: &IndexId, file: &IndexFile) -> Result<()> {
    let mut add_pack =
        tx.prepare_cached("INSERT OR IGNORE INTO packs (id, salt, size, kind) VALUES (?1, ?2, ?3, ?4)")?;
    let mut pack_row = tx.prepare_cached("SELECT rowid FROM packs WHERE id = ?1")?;
    let mut add_file = tx.prepare_cached("INSERT OR IGNORE INTO pack_files (pack, file) VALUES (?1, ?2)")?;
    let mut stage = tx.prepare_cached(
        "INSERT INTO staged_blobs (id, kind, pack, offset, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for pack in &file.packs {
        let kind = pack.blobs.first().map_or(0, |b| b.kind as u8);
        add_pack.execute(params![&pack.id.0[..], &pack.salt[..], pack.size as i64, kind])?;
        let row: i64 = pack_row.query_row([&pack.id.0[..]], |r| r.get(0))?;
        add_file.execute(params![row, &id.0[..]])?;
        for blob in &pack.blobs {
            stage.execute(params![
                &blob.id.0[..],
                blob.kind as u8,
                row,
                blob.offset as i64,
                blob.length,
                blob.raw_length
            ])?;
        }
    }
    Ok(())
}

/// Remove packs (catalog rows) and their blob rows. Many rows are removed by copying the
/// survivors into a new table in key order: deleting half a million scattered rows from
/// a B-tree one by one takes several times as long.
fn drop_packs(tx: &rusqlite::Transaction<'_>, rows: &[i64]) -> Result<()> {
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS dropped_packs (n INTEGER PRIMARY KEY); DELETE FROM dropped_packs;",
    )?;
    let mut count = 0i64;
    {
        let mut add = tx.prepare_cached("INSERT OR IGNORE INTO dropped_packs (n) VALUES (?1)")?;
        let mut blobs = tx.prepare_cached("SELECT count(*) FROM blobs WHERE pack = ?1")?;
        for n in rows {
            add.execute([n])?;
            count += blobs.query_row([n], |r| r.get::<_, i64>(0))?;
        }
    }
    if count >= BULK_ROWS {
        tx.execute_batch(concat!(
            "DROP INDEX IF EXISTS blobs_by_pack;
             CREATE TABLE blobs_kept (",
            blob_columns!(),
            ", PRIMARY KEY (id, pack)) WITHOUT ROWID;
             INSERT INTO blobs_kept SELECT * FROM blobs WHERE pack NOT IN (SELECT n FROM dropped_packs) ORDER BY id, pack;
             DROP TABLE blobs;
             ALTER TABLE blobs_kept RENAME TO blobs;"
        ))?;
        tx.execute_batch(INDEX_SCHEMA)?;
    } else {
        tx.execute_batch("DELETE FROM blobs WHERE pack IN (SELECT n FROM dropped_packs)")?;
    }
    tx.execute_batch(
        "DELETE FROM pack_files WHERE pack IN (SELECT n FROM dropped_packs);
         DELETE FROM packs WHERE rowid IN (SELECT n FROM dropped_packs);
         DELETE FROM dropped_packs;",
    )?;
    Ok(())
}

/// Move the staged rows into `blobs` in key order and record the index files they came from.
fn merge_staged(tx: &rusqlite::Transaction<'_>, files: &[IndexId]) -> Result<()> {
    let staged: i64 = tx.query_row("SELECT count(*) FROM staged_blobs", [], |r| r.get(0))?;
    // Rows for a few new packs extend the pack index at its end, which is cheap; a
    // rebuild's rows for every pack are not.
    let empty = !tx.query_row("SELECT EXISTS (SELECT 1 FROM blobs)", [], |r| r.get::<_, bool>(0))?;
    let bulk = staged >= BULK_ROWS && empty;
    if bulk {
        tx.execute_batch("DROP INDEX IF EXISTS blobs_by_pack")?;
    }
    tx.execute_batch(
        "INSERT OR IGNORE INTO blobs (id, kind, pack, offset, length, raw_length)
             SELECT id, kind, pack, offset, length, raw_length FROM staged_blobs ORDER BY id, pack;
         DELETE FROM staged_blobs;",
    )?;
    if bulk {
        tx.execute_batch(INDEX_SCHEMA)?;
    }
    let mut add = tx.prepare_cached("INSERT OR IGNORE INTO index_files (id) VALUES (?1)")?;
    for id in files {
        add.execute([&id.0[..]])?;
    }
    Ok(())
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
pub(crate) mod tests {
    use super::*;
    use crate::format::index::IndexPack;

    /// A pack listing `blobs`, each `length` bytes, laid out one after another.
    pub(crate) fn pack(blobs: &[(BlobId, u32)]) -> IndexPack {
        let mut offset = 0;
        let blobs = blobs
            .iter()
            .map(|(id, length)| {
                let entry = PackEntry { kind: BlobKind::Data, id: *id, offset, length: *length, raw_length: *length };
                offset += u64::from(*length);
                entry
            })
            .collect();
        IndexPack { id: PackId::random(), salt: [7; SALT_LEN], size: offset, blobs }
    }

    #[test]
    fn every_copy_is_recorded_and_lookups_prefer_the_newest() {
        let catalog = Catalog::open(None).unwrap();
        let (shared, only_a) = (BlobId::random(), BlobId::random());
        let a = pack(&[(shared, 10), (only_a, 20)]);
        let b = pack(&[(shared, 10)]);
        catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![a.clone()] }).unwrap();
        catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![b.clone()] }).unwrap();
        let mut copies = catalog.copies(&shared).unwrap();
        copies.sort();
        let mut expected = vec![a.id, b.id];
        expected.sort();
        assert_eq!(copies, expected, "both copies are recorded");
        assert_eq!(catalog.lookup(&shared).unwrap().unwrap().pack, b.id, "the copy recorded last wins");
        assert_eq!(catalog.totals().unwrap().0, 2, "stats count distinct blobs");
        assert_eq!(catalog.entry_count().unwrap(), 3, "index entries count every copy");
    }

    #[test]
    fn end_reads_closes_the_shared_read_transaction() {
        let catalog = Catalog::open(None).unwrap();
        let id = BlobId::random();
        catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![pack(&[(id, 10)])] }).unwrap();
        assert!(catalog.lookup(&id).unwrap().is_some());
        assert!(!catalog.conn.lock().unwrap().is_autocommit(), "lookups share a read transaction");
        catalog.end_reads();
        assert!(catalog.conn.lock().unwrap().is_autocommit());
        assert!(catalog.lookup(&id).unwrap().is_some(), "and the next lookup starts another");
    }

    #[test]
    fn sessions_stash_reused_ids_apart() {
        let catalog = Catalog::open(None).unwrap();
        let ids: Vec<BlobId> = (0..5).map(|_| BlobId::random()).collect();
        catalog.stash_reused(1, &ids[..3]).unwrap();
        catalog.stash_reused(1, &ids[2..4]).unwrap();
        catalog.stash_reused(2, &ids[4..]).unwrap();
        assert_eq!(catalog.stashed_reused(1, &ids).unwrap(), ids[..4]);
        assert_eq!(catalog.stashed_reused(2, &ids).unwrap(), ids[4..]);
        catalog.forget_reused(1).unwrap();
        assert!(catalog.stashed_reused(1, &ids).unwrap().is_empty());
        assert_eq!(catalog.stashed_reused(2, &ids).unwrap(), ids[4..]);
    }

    #[test]
    fn prune_rewrites_apply_in_place() {
        let catalog = Catalog::open(None).unwrap();
        let blobs: Vec<BlobId> = (0..4).map(|_| BlobId::random()).collect();
        let (a, b, c) = (pack(&[(blobs[0], 5)]), pack(&[(blobs[1], 5), (blobs[2], 5)]), pack(&[(blobs[3], 5)]));
        let (f1, f2, f3) = (IndexId::random(), IndexId::random(), IndexId::random());
        catalog.add_index(&f1, &IndexFile { packs: vec![a.clone(), b.clone()] }).unwrap();
        catalog.add_index(&f2, &IndexFile { packs: vec![c.clone()] }).unwrap();
        assert_eq!(catalog.files_listing(&[b.id].into()).unwrap(), [f1].into());
        // f1 is rewritten as f3 without pack a.
        catalog.rewrote_index(&[f1], &[(f3, vec![b.id])], &[a.id].into()).unwrap();
        assert!(catalog.lookup(&blobs[0]).unwrap().is_none(), "the dropped pack's blobs are gone");
        assert!(!catalog.has_pack(&a.id).unwrap());
        assert_eq!(catalog.pack_blobs(&b.id).unwrap().len(), 2, "the kept pack keeps its blobs");
        assert_eq!(catalog.files_listing(&[b.id].into()).unwrap(), [f3].into());
        let mut files = catalog.index_files().unwrap();
        files.sort();
        let mut expected = vec![f2, f3];
        expected.sort();
        assert_eq!(files, expected);
    }

    #[test]
    fn a_half_done_load_is_discarded() {
        let catalog = Catalog::open(None).unwrap();
        let (kept, half) = (pack(&[(BlobId::random(), 5)]), pack(&[(BlobId::random(), 5)]));
        catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![kept.clone()] }).unwrap();
        // What a refresh does for a file before it fails on the next one: staged, not merged.
        {
            let mut conn = catalog.conn();
            let tx = conn.transaction().unwrap();
            stage_index(&tx, &IndexId::random(), &IndexFile { packs: vec![half.clone()] }).unwrap();
            tx.commit().unwrap();
        }
        assert!(catalog.has_pack(&half.id).unwrap());
        catalog.discard_partial_loads().unwrap();
        assert!(!catalog.has_pack(&half.id).unwrap(), "the unrecorded file's pack is gone");
        assert!(catalog.files_listing(&[half.id].into()).unwrap().is_empty());
        assert_eq!(catalog.pack_blobs(&kept.id).unwrap(), kept.blobs, "recorded files are untouched");
        // The staged rows are gone too: the next merge does not pick them up.
        catalog.add_index(&IndexId::random(), &IndexFile::default()).unwrap();
        assert!(catalog.lookup(&half.blobs[0].id).unwrap().is_none());
    }

    #[test]
    fn bulk_loads_and_large_drops_keep_the_pack_index() {
        let catalog = Catalog::open(None).unwrap();
        // Enough rows for the bulk paths: the pack index is built after the insert, and
        // dropping a pack copies the surviving rows into a new table.
        let packs: Vec<IndexPack> = (0..4)
            .map(|_| pack(&(0..(BULK_ROWS as usize / 2)).map(|_| (BlobId::random(), 3)).collect::<Vec<_>>()))
            .collect();
        catalog.add_index(&IndexId::random(), &IndexFile { packs: packs.clone() }).unwrap();
        assert_eq!(catalog.entry_count().unwrap(), 2 * BULK_ROWS as u64);
        let second = catalog.pack_blobs(&packs[1].id).unwrap();
        assert_eq!(second, packs[1].blobs, "blobs by pack, in offset order");
        catalog.rewrote_index(&[], &[], &[packs[0].id, packs[2].id].into()).unwrap();
        assert_eq!(catalog.entry_count().unwrap(), BULK_ROWS as u64);
        assert_eq!(catalog.pack_blobs(&packs[3].id).unwrap(), packs[3].blobs);
        assert!(catalog.pack_blobs(&packs[2].id).unwrap().is_empty());
        let probe = packs[1].blobs[17].id;
        assert_eq!(catalog.lookup(&probe).unwrap().unwrap().pack, packs[1].id);
    }
}
