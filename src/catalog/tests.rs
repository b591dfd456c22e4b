//! The catalog's unit tests.

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
