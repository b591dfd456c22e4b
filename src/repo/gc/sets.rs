//! A removal run's sets, kept in the catalog's SQLite database rather than in RAM.
//!
//! A prune of a repository of millions of blobs must not hold a set of every referenced
//! blob, or the index, in memory. The referenced blobs go to temporary tables of the
//! catalog's connection (temporary tables and sorts spill to files, see
//! `Catalog::open`); every pass over them is a scan in key order against the catalog's
//! `blobs` table, which holds every copy of every blob. What stays in RAM is per pack
//! (a few dozen bytes for each 16 MiB pack) and SQLite's page caches (16 MiB each for
//! the catalog and its temporary tables).

use crate::catalog::Catalog;
use crate::crypto::SALT_LEN;
use crate::error::{Error, Result};
use crate::format::pack::PackEntry;
use crate::id::{BlobId, PackId};
use crate::repo::walk::{referenced_blobs, BlobSink};
use crate::repo::Repository;
use rusqlite::{params, Connection};
use std::collections::{HashMap, HashSet};

const TABLES: &str = "
CREATE TEMP TABLE IF NOT EXISTS gc_staged (id BLOB NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS gc_walked (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS gc_refs (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS gc_seen (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS gc_homed (
    pack INTEGER NOT NULL, offset INTEGER NOT NULL, id BLOB NOT NULL, kind INTEGER NOT NULL,
    length INTEGER NOT NULL, raw_length INTEGER NOT NULL);
DELETE FROM gc_staged; DELETE FROM gc_walked; DELETE FROM gc_refs; DELETE FROM gc_seen; DELETE FROM gc_homed;
";

/// Data blob ids buffered before one insert transaction.
const BATCH: usize = 8192;

/// One pack as a removal run sees it.
#[derive(Debug, Clone)]
pub struct PackStat {
    pub id: PackId,
    pub salt: [u8; SALT_LEN],
    /// Size the index records.
    pub size: u64,
    /// Whether the storage listing holds it.
    pub stored: bool,
    /// How many blobs the index lists in it.
    pub blobs: u64,
    /// Bytes of all its blobs, of the referenced ones, and of those whose home it is.
    pub total: u64,
    pub live: u64,
    pub home: u64,
}

impl PackStat {
    /// The share of its blob bytes that snapshots reference.
    fn use_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.live as f64 / self.total as f64
        }
    }

    pub fn is_home(&self) -> bool {
        self.home > 0
    }
}

/// The referenced set and each referenced blob's home pack.
///
/// The home of a blob is, of the stored packs that hold it, the one whose bytes are most
/// in use (ties: the smaller id). A pack is kept if it is the home of at least one
/// referenced blob; a pack whose live blobs all have homes elsewhere (a repacked pack, or
/// a writer's duplicate) is unreferenced, and goes as any other.
pub struct Sets<'c> {
    catalog: &'c Catalog,
    buffer: Vec<BlobId>,
    /// Every pack the catalog lists, by catalog row.
    pub packs: HashMap<i64, PackStat>,
    rows: HashMap<PackId, i64>,
}

impl<'c> Sets<'c> {
    pub fn new(catalog: &'c Catalog) -> Result<Self> {
        catalog.with_conn(|c| Ok(c.execute_batch(TABLES)?))?;
        Ok(Sets { catalog, buffer: Vec::with_capacity(BATCH), packs: HashMap::new(), rows: HashMap::new() })
    }

    fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = &self.buffer;
        self.catalog.with_conn(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO gc_staged (id) VALUES (?1)")?;
                for id in buffer {
                    insert.execute([&id.0[..]])?;
                }
            }
            tx.commit()?;
            Ok(())
        })?;
        self.buffer.clear();
        Ok(())
    }

    /// End of the walk: the staged ids become the referenced set, sorted and distinct.
    pub fn seal(&mut self) -> Result<()> {
        self.flush()?;
        self.catalog.with_conn(|c| {
            Ok(c.execute_batch(
                "INSERT OR IGNORE INTO gc_refs SELECT id FROM gc_staged ORDER BY id; DELETE FROM gc_staged;",
            )?)
        })
    }

    /// Count the bytes each pack holds and has in use, then give every referenced blob
    /// its home among the packs `stored` lists. Returns a referenced blob that no stored
    /// pack holds, if there is one.
    pub fn assign(&mut self, stored: &HashMap<PackId, u64>) -> Result<Option<BlobId>> {
        self.packs = self.catalog.with_conn(|c| load_packs(c, stored))?;
        self.rows = self.packs.iter().map(|(row, p)| (p.id, *row)).collect();
        let packs = &mut self.packs;
        self.catalog.with_conn(|c| {
            let mut stmt =
                c.prepare("SELECT b.pack, b.length, EXISTS (SELECT 1 FROM gc_refs r WHERE r.id = b.id) FROM blobs b")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let Some(pack) = packs.get_mut(&row.get::<_, i64>(0)?) else { continue };
                let length = row.get::<_, i64>(1)? as u64;
                pack.blobs += 1;
                pack.total += length;
                if row.get::<_, bool>(2)? {
                    pack.live += length;
                }
            }
            Ok(())
        })?;
        let mut missing = None;
        let mut home: HashMap<i64, u64> = HashMap::new();
        self.catalog.with_conn(|c| {
            self.homes(c, |id, copy| {
                match copy {
                    Some(copy) => *home.entry(copy.pack).or_default() += copy.length,
                    None if missing.is_none() => missing = BlobId::from_slice(id),
                    None => {}
                }
                Ok(())
            })
        })?;
        for (row, bytes) in home {
            if let Some(pack) = self.packs.get_mut(&row) {
                pack.home = bytes;
            }
        }
        Ok(missing)
    }

    /// Every referenced blob, in key order, with its home copy (`None`: no stored pack
    /// holds it). One scan of the referenced set against the index: a LEFT JOIN keeps
    /// SQLite scanning `gc_refs` first; a filter on `b` would let it scan the pack index
    /// and probe at random.
    fn homes(&self, conn: &Connection, mut f: impl FnMut(&[u8], Option<&HomeCopy>) -> Result<()>) -> Result<()> {
        let mut stmt = conn.prepare(
            "SELECT r.id, b.pack, b.kind, b.offset, b.length, b.raw_length FROM gc_refs r LEFT JOIN blobs b ON b.id = r.id",
        )?;
        let mut rows = stmt.query([])?;
        // The current blob's id and its best copy so far.
        let mut current: Option<(Vec<u8>, Option<HomeCopy>)> = None;
        while let Some(row) = rows.next()? {
            let id: Vec<u8> = row.get(0)?;
            if current.as_ref().is_none_or(|(c, _)| *c != id) {
                if let Some((id, best)) = current.take() {
                    f(&id, best.as_ref())?;
                }
                current = Some((id, None));
            }
            let Some(pack) = row.get::<_, Option<i64>>(1)? else { continue };
            let best = &mut current.as_mut().expect("set above").1;
            if better(&self.packs, pack, best.as_ref().map(|b| b.pack)) {
                *best = Some(HomeCopy {
                    pack,
                    kind: row.get(2)?,
                    offset: row.get(3)?,
                    length: row.get::<_, i64>(4)? as u64,
                    raw_length: row.get(5)?,
                });
            }
        }
        if let Some((id, best)) = current {
            f(&id, best.as_ref())?;
        }
        Ok(())
    }

    /// Record the blobs whose home is one of `packs` (catalog rows), for [`Sets::homed`].
    pub fn keep_homed(&self, packs: &HashSet<i64>) -> Result<()> {
        self.catalog.with_conn(|c| {
            c.execute_batch("DROP INDEX IF EXISTS temp.gc_homed_by_pack; DELETE FROM gc_homed;")?;
            let tx = c.unchecked_transaction()?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO gc_homed (pack, offset, id, kind, length, raw_length) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                self.homes(&tx, |id, copy| {
                    if let Some(h) = copy.filter(|h| packs.contains(&h.pack)) {
                        insert.execute(params![h.pack, h.offset, id, h.kind, h.length as i64, h.raw_length])?;
                    }
                    Ok(())
                })?;
            }
            tx.execute_batch("CREATE INDEX temp.gc_homed_by_pack ON gc_homed (pack, offset)")?;
            tx.commit()?;
            Ok(())
        })
    }

    /// The blobs of `pack` whose home it is, in offset order (after [`Sets::keep_homed`]).
    pub fn homed(&self, pack: i64) -> Result<Vec<PackEntry>> {
        self.catalog.with_conn(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, kind, offset, length, raw_length FROM gc_homed WHERE pack = ?1 ORDER BY offset",
            )?;
            crate::catalog::entries(&mut stmt, [pack])
        })
    }

    /// The blobs of the indexed packs in `marked` (catalog rows) that no pack in `kept`
    /// also holds: one pass over the index in key order.
    pub fn doomed(&self, marked: &HashSet<i64>, kept: &HashSet<i64>) -> Result<Vec<BlobId>> {
        if marked.is_empty() {
            return Ok(Vec::new());
        }
        self.catalog.with_conn(|c| {
            // ORDER BY keeps SQLite on the table (key order), not the covering pack index.
            let mut stmt = c.prepare("SELECT id, pack FROM blobs ORDER BY id, pack")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            // (id, in a marked pack, in a kept pack) of the current group of copies.
            let mut group: Option<(Vec<u8>, bool, bool)> = None;
            let settle = |group: Option<(Vec<u8>, bool, bool)>, out: &mut Vec<BlobId>| {
                if let Some((id, true, false)) = group {
                    out.extend(BlobId::from_slice(&id));
                }
            };
            while let Some(row) = rows.next()? {
                let id: Vec<u8> = row.get(0)?;
                let pack: i64 = row.get(1)?;
                if group.as_ref().is_none_or(|g| g.0 != id) {
                    settle(group.take(), &mut out);
                    group = Some((id, false, false));
                }
                let g = group.as_mut().expect("set above");
                g.1 |= marked.contains(&pack);
                g.2 |= kept.contains(&pack);
            }
            settle(group.take(), &mut out);
            Ok(out)
        })
    }

    /// Of `ids` (blobs an unindexed pack's header lists), those no pack in `kept` holds.
    pub fn doomed_of(&self, ids: Vec<BlobId>, kept: &HashSet<PackId>) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        for id in ids {
            if !self.catalog.copies(&id)?.iter().any(|p| kept.contains(p)) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The catalog row of an indexed pack.
    pub fn row_of(&self, pack: &PackId) -> Option<i64> {
        self.rows.get(pack).copied()
    }

    /// A sink recording every blob a walk finds into the referenced set.
    pub fn sink(&mut self) -> RefSink<'_, 'c> {
        RefSink { sets: self }
    }
}

/// A blob's copy chosen as its home.
struct HomeCopy {
    pack: i64,
    kind: u8,
    offset: i64,
    length: u64,
    raw_length: i64,
}

/// Whether `pack` is a better home than `current`.
fn better(packs: &HashMap<i64, PackStat>, pack: i64, current: Option<i64>) -> bool {
    let Some(candidate) = packs.get(&pack).filter(|p| p.stored) else { return false };
    let Some(current) = current.and_then(|c| packs.get(&c)) else { return true };
    (candidate.use_share(), std::cmp::Reverse(candidate.id)) > (current.use_share(), std::cmp::Reverse(current.id))
}

fn load_packs(conn: &Connection, stored: &HashMap<PackId, u64>) -> Result<HashMap<i64, PackStat>> {
    let mut stmt = conn.prepare("SELECT rowid, id, salt, size FROM packs")?;
    let mut rows = stmt.query([])?;
    let mut out = HashMap::new();
    let bad = || Error::corrupt("the catalog holds a malformed pack row; delete the cache directory");
    while let Some(row) = rows.next()? {
        let id = PackId::from_slice(&row.get::<_, Vec<u8>>(1)?).ok_or_else(bad)?;
        let salt: [u8; SALT_LEN] = row.get::<_, Vec<u8>>(2)?.as_slice().try_into().map_err(|_| bad())?;
        out.insert(
            row.get::<_, i64>(0)?,
            PackStat {
                id,
                salt,
                size: row.get::<_, i64>(3)? as u64,
                stored: stored.contains_key(&id),
                blobs: 0,
                total: 0,
                live: 0,
                home: 0,
            },
        );
    }
    Ok(out)
}

/// Records a walk into the referenced set (see [`Sets::sink`]).
pub struct RefSink<'s, 'c> {
    sets: &'s mut Sets<'c>,
}

impl BlobSink for RefSink<'_, '_> {
    fn data(&mut self, id: BlobId) -> Result<()> {
        self.sets.buffer.push(id);
        if self.sets.buffer.len() >= BATCH {
            self.sets.flush()?;
        }
        Ok(())
    }

    fn node(&mut self, id: BlobId) -> Result<bool> {
        let fresh = self.sets.catalog.with_conn(|c| {
            let mut insert = c.prepare_cached("INSERT OR IGNORE INTO gc_walked (id) VALUES (?1)")?;
            Ok(insert.execute([&id.0[..]])? == 1)
        })?;
        if fresh {
            self.data(id)?;
        }
        Ok(fresh)
    }
}

/// Collects the blobs of `keep` a walk finds (the doomed blobs a new snapshot needs),
/// remembering walked nodes on disk.
pub struct NeededSink<'a> {
    catalog: &'a Catalog,
    keep: &'a HashSet<BlobId>,
    pub found: HashSet<BlobId>,
}

impl<'a> NeededSink<'a> {
    pub fn new(catalog: &'a Catalog, keep: &'a HashSet<BlobId>) -> Result<Self> {
        catalog.with_conn(|c| Ok(c.execute_batch("DELETE FROM gc_seen")?))?;
        Ok(NeededSink { catalog, keep, found: HashSet::new() })
    }
}

impl BlobSink for NeededSink<'_> {
    fn data(&mut self, id: BlobId) -> Result<()> {
        if self.keep.contains(&id) {
            self.found.insert(id);
        }
        Ok(())
    }

    fn node(&mut self, id: BlobId) -> Result<bool> {
        self.data(id)?;
        self.catalog.with_conn(|c| {
            let mut insert = c.prepare_cached("INSERT OR IGNORE INTO gc_seen (id) VALUES (?1)")?;
            Ok(insert.execute([&id.0[..]])? == 1)
        })
    }
}

/// Walk every snapshot into the referenced set and seal it.
pub async fn walk_all(
    repo: &Repository,
    snapshots: &[(crate::id::SnapshotId, crate::format::snapshot::SnapshotFile)],
    sets: &mut Sets<'_>,
) -> Result<()> {
    for (id, snapshot) in snapshots {
        referenced_blobs(repo, snapshot, &mut sets.sink())
            .await
            .map_err(|e| e.context(format!("snapshot {} ({} {})", id.short(), snapshot.kind, snapshot.name)))?;
    }
    sets.seal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::pack;
    use crate::format::index::IndexFile;
    use crate::id::IndexId;

    #[test]
    fn homes_prefer_the_pack_most_in_use_and_missing_blobs_are_found() {
        let catalog = Catalog::open(None).unwrap();
        let [shared, live, dead, gone] = [(); 4].map(|_| BlobId::random());
        // `full` is entirely in use; `sparse` holds a copy of `shared` and much dead data.
        let full = pack(&[(shared, 10), (live, 10)]);
        let sparse = pack(&[(shared, 10), (dead, 1000)]);
        let unstored = pack(&[(gone, 10)]);
        for p in [&full, &sparse, &unstored] {
            catalog.add_index(&IndexId::random(), &IndexFile { packs: vec![p.clone()] }).unwrap();
        }
        let stored: HashMap<PackId, u64> = [(full.id, full.size), (sparse.id, sparse.size)].into();
        let mut sets = Sets::new(&catalog).unwrap();
        {
            let mut sink = sets.sink();
            for id in [shared, live, shared] {
                sink.data(id).unwrap();
            }
        }
        sets.seal().unwrap();
        assert_eq!(sets.assign(&stored).unwrap(), None);
        let stat = |id: PackId| sets.packs.values().find(|p| p.id == id).unwrap().clone();
        assert_eq!((stat(full.id).home, stat(full.id).live), (20, 20));
        assert_eq!((stat(sparse.id).home, stat(sparse.id).live, stat(sparse.id).total), (0, 10, 1010));
        assert!(!stat(sparse.id).is_home(), "a pack whose live blobs live elsewhere too is unreferenced");
        // Doomed if `sparse` is marked and `full` kept: only its dead blob.
        let rows = |ids: &[PackId]| ids.iter().map(|id| sets.row_of(id).unwrap()).collect::<HashSet<i64>>();
        assert_eq!(sets.doomed(&rows(&[sparse.id]), &rows(&[full.id])).unwrap(), vec![dead]);
        // The live blobs of `full` when it is repacked.
        sets.keep_homed(&rows(&[full.id])).unwrap();
        let mut homed: Vec<BlobId> = sets.homed(sets.row_of(&full.id).unwrap()).unwrap().iter().map(|e| e.id).collect();
        homed.sort();
        let mut expected = vec![shared, live];
        expected.sort();
        assert_eq!(homed, expected);

        // A referenced blob whose only pack is not stored is reported.
        let mut sets = Sets::new(&catalog).unwrap();
        sets.sink().data(gone).unwrap();
        sets.sink().data(live).unwrap();
        sets.seal().unwrap();
        assert_eq!(sets.assign(&stored).unwrap(), Some(gone));
    }

    #[test]
    fn nodes_are_walked_once() {
        let catalog = Catalog::open(None).unwrap();
        let mut sets = Sets::new(&catalog).unwrap();
        let tree = BlobId::random();
        let mut sink = sets.sink();
        assert!(sink.node(tree).unwrap());
        assert!(!sink.node(tree).unwrap(), "a tree seen before is not walked again");
    }
}
