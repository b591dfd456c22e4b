//! The index half of the catalog: where each copy of each blob is, the packs and the
//! index files that list them, and the bulk paths (staging in key order, large drops by
//! copying the survivors) that keep a million-row load or rewrite fast.

use super::{BlobLocation, Catalog, PackRow, BULK_ROWS, INDEX_SCHEMA};
use crate::error::{Error, Result};
use crate::format::index::IndexFile;
use crate::format::pack::{BlobKind, PackEntry};
use crate::id::{BlobId, IndexId, PackId};
use rusqlite::{params, OptionalExtension};
use std::collections::BTreeSet;

impl Catalog {
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
pub(super) fn stage_index(tx: &rusqlite::Transaction<'_>, id: &IndexId, file: &IndexFile) -> Result<()> {
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
pub(super) fn merge_staged(tx: &rusqlite::Transaction<'_>, files: &[IndexId]) -> Result<()> {
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
