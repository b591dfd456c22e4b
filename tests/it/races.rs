//! Writers and WAL pushes race the removal primitive (`gc::collect`, repacking and
//! consolidating the index) and forgets, many times; afterwards every committed snapshot
//! restores byte-exact, every pushed WAL file reads back, and check --read-data finds
//! nothing.

use crate::harness::noise;
use cairn::backend::Backend;
use cairn::crypto::KdfParams;
use cairn::error::ErrorKind;
use cairn::ops::backup::{backup_stream, BackupOptions};
use cairn::ops::check::{check, ReadData};
use cairn::ops::restore::restore_stream;
use cairn::ops::Cancel;
use cairn::progress::Silent;
use cairn::repo::gc;
use cairn::repo::{CacheMode, InitOptions, Repository, Secret};
use object_store::memory::InMemory;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn secret() -> Secret {
    Secret::Password("pw".into())
}

async fn open(store: &Arc<dyn ObjectStore>) -> Repository {
    Repository::open(Backend::from_store(store.clone(), "memory://race"), &secret(), &CacheMode::Temporary)
        .await
        .unwrap()
}

/// A reader that hands out small pieces slowly, so a backup spans several removals.
struct Slow<'a>(&'a [u8]);

impl Read for Slow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_micros(1500));
        let n = buf.len().min(16 << 10).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// Night `i`'s data: a part shared with the neighbouring nights (so writers reuse blobs
/// that forgets make unreferenced) and a part of its own.
fn data(round: u64, writer: u64) -> Vec<u8> {
    [noise(768 << 10, round / 2), noise(256 << 10, 1000 + round * 10 + writer)].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_racing_removal_never_lose_committed_data() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let options = InitOptions {
        chunk_avg: 16 << 10,
        pack_size: 1 << 20,
        kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    drop(
        Repository::init(
            Backend::from_store(store.clone(), "memory://race"),
            &secret(),
            &options,
            &CacheMode::Temporary,
        )
        .await
        .unwrap(),
    );
    let committed: Arc<Mutex<HashMap<String, Vec<u8>>>> = Default::default();
    let (mut failed_cleanly, mut deleted_packs, mut rescued_packs, mut collects, mut verified) = (0, 0, 0, 0, 0);
    let (mut repacked, mut consolidated) = (0, 0);
    let wal_dir = tempfile::tempdir().unwrap();
    let mut pushed: Vec<(String, Vec<u8>)> = Vec::new();
    let removal = gc::CollectOptions { max_unused: Some(0.0), consolidate: true, ..Default::default() };
    for round in 0..16u64 {
        let mut writers = Vec::new();
        // PostgreSQL's archive_command, meanwhile: two 1 MiB segments a round.
        let segments: Vec<(String, Vec<u8>)> = (0..2).map(|i| wal_segment(round * 2 + i)).collect();
        pushed.extend(segments.iter().cloned());
        let pusher = {
            let store = store.clone();
            let dir = wal_dir.path().to_path_buf();
            tokio::spawn(async move {
                let repo = open(&store).await;
                for (name, bytes) in segments {
                    let path = dir.join(&name);
                    std::fs::write(&path, &bytes).unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    cairn::wal::push(repo.backend(), repo.key(), "race", &path).await.unwrap();
                }
            })
        };
        for writer in 0..3u64 {
            let store = store.clone();
            let committed = committed.clone();
            writers.push(tokio::spawn(async move {
                let mut repo = open(&store).await;
                repo.set_gc_check_interval(Duration::from_millis(5));
                // Writer 0 stashes what it reuses in the catalog almost at once.
                if writer == 0 {
                    repo.set_reused_in_memory(3);
                }
                let input = data(round, writer);
                let options = BackupOptions { name: format!("w{writer}"), kind: "stdin".into(), ..Default::default() };
                let result = backup_stream(&repo, Slow(&input), &options, &Cancel::new(), &Silent).await;
                match result {
                    Ok(r) => {
                        committed.lock().unwrap().insert(r.id.to_hex(), input);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }));
        }
        // The remover, while the writers run: in odd rounds first forget every snapshot
        // of earlier rounds (whose blobs these writers are reusing), then collect four
        // times, so marks and sweeps both land inside the writers' runs.
        for step in 0..4u64 {
            tokio::time::sleep(Duration::from_millis(if step == 0 { 5 } else { 40 })).await;
            let repo = open(&store).await;
            if step == 0 && round % 2 == 1 {
                for (id, _) in repo.catalog().snapshots().unwrap() {
                    repo.backend().delete(&cairn::backend::keys::snapshot(&id)).await.unwrap();
                    committed.lock().unwrap().remove(&id.to_hex());
                }
            }
            let report = gc::collect_with(&repo, &removal).await.unwrap();
            collects += 1;
            deleted_packs += report.deleted_packs;
            rescued_packs += report.rescued_packs;
            repacked += report.repacked_packs;
            consolidated += report.index_files_before - report.index_files_after;
        }
        pusher.await.unwrap();
        for w in writers {
            if let Err(e) = w.await.unwrap() {
                assert_eq!(e.kind(), ErrorKind::Locked, "a writer failed other than cleanly: {e}");
                failed_cleanly += 1;
            }
        }
        // Every snapshot that exists now restores byte-exact.
        let repo = open(&store).await;
        let committed = committed.lock().unwrap().clone();
        for (id, snapshot) in repo.catalog().snapshots().unwrap() {
            let mut out = Vec::new();
            let restored = restore_stream(&repo, snapshot.content.as_ref().unwrap(), &mut out, &Silent).await;
            assert!(restored.is_ok(), "round {round}: snapshot {id} does not restore: {:?}", restored.err());
            assert!(out == committed[&id.to_hex()], "round {round}: snapshot {id} restores byte-exact");
            verified += 1;
        }
    }
    // Two final collects: everything forgotten is gone, nothing needed went with it.
    for _ in 0..2 {
        let repo = open(&store).await;
        deleted_packs += gc::collect(&repo, false).await.unwrap().deleted_packs;
    }

    let repo = open(&store).await;
    let report = check(&repo, ReadData::All, &Silent).await.unwrap();
    assert!(report.is_ok(), "check after the races: {:?}", report.errors);
    for (name, bytes) in &pushed {
        let stored = cairn::wal::read(repo.backend(), repo.key(), "race", name).await.unwrap();
        assert!(stored == *bytes, "WAL {name} reads back as pushed");
    }
    let committed = committed.lock().unwrap().clone();
    let snapshots = repo.catalog().snapshots().unwrap();
    assert_eq!(snapshots.len(), committed.len(), "every committed, unforgotten snapshot is there");
    for (id, snapshot) in &snapshots {
        let mut out = Vec::new();
        restore_stream(&repo, snapshot.content.as_ref().unwrap(), &mut out, &Silent).await.unwrap();
        assert!(out == committed[&id.to_hex()], "snapshot {id} restores byte-exact");
    }
    let (copied, excluded) = (gc::copied_blobs(), gc::excluded_hits());
    eprintln!(
        "{collects} collects: {deleted_packs} packs deleted, {rescued_packs} rescued, {copied} blobs copied by writers, \
         {excluded} marked blobs stored afresh, \
         {failed_cleanly} writers failed cleanly, {verified} restores verified during the rounds, {} at the end; \
         {repacked} packs repacked, {consolidated} index files consolidated away, {} WAL files pushed",
        snapshots.len(),
        pushed.len()
    );
    assert!(repacked > 0, "repacking raced the writers");
    assert!(consolidated > 0, "index consolidation raced the writers");
    assert!(deleted_packs > 10, "removal really removed data ({deleted_packs} packs)");
    // A writer that needed a marked blob either kept it (rescue, copy, fresh store) or,
    // when a sweep deleted it between the writer's last look and its commit, failed
    // cleanly. This test sweeps every 40 ms, far more often than any real schedule, so
    // clean failures are frequent; how frequent depends on how fast each collect runs.
    assert!(
        rescued_packs + copied + excluded + failed_cleanly > 0,
        "the race was exercised: some writer needed a marked blob"
    );
    assert!(failed_cleanly < 24, "most writers succeed ({failed_cleanly} of 48 failed)");
}

/// A 1 MiB WAL segment of a made-up cluster, numbered `n`, with a valid long page header.
fn wal_segment(n: u64) -> (String, Vec<u8>) {
    let mut bytes = noise(1 << 20, 5000 + n);
    bytes[0..2].copy_from_slice(&0xD113u16.to_le_bytes()); // xlp_magic of PostgreSQL 15
    bytes[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
    bytes[24..32].copy_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
    bytes[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
    bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
    (cairn::wal::segment_name(1, n + 1, 1 << 20), bytes)
}

async fn fresh_store() -> Arc<dyn ObjectStore> {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let options = InitOptions {
        pack_size: 1 << 20,
        kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Repository::init(Backend::from_store(store.clone(), "memory://race"), &secret(), &options, &CacheMode::Temporary)
        .await
        .unwrap();
    store
}

async fn backup(repo: &Repository, data: &[u8]) -> cairn::error::Result<cairn::ops::backup::BackupResult> {
    let options = BackupOptions { name: "db".into(), kind: "stdin".into(), ..Default::default() };
    backup_stream(repo, data, &options, &Cancel::new(), &Silent).await
}

async fn forget_all(store: &Arc<dyn ObjectStore>) {
    let repo = open(store).await;
    for (id, _) in repo.catalog().snapshots().unwrap() {
        repo.backend().delete(&cairn::backend::keys::snapshot(&id)).await.unwrap();
    }
}

async fn collect(store: &Arc<dyn ObjectStore>) -> gc::CollectReport {
    gc::collect(&open(store).await, false).await.unwrap()
}

async fn restores(store: &Arc<dyn ObjectStore>, data: &[u8]) {
    let repo = open(store).await;
    let (_, snapshot) = repo.find_snapshot("latest", &Default::default()).unwrap();
    let mut out = Vec::new();
    restore_stream(&repo, snapshot.content.as_ref().unwrap(), &mut out, &Silent).await.unwrap();
    assert!(out == data, "restores byte-exact");
    assert!(check(&repo, ReadData::All, &Silent).await.unwrap().is_ok());
}

/// A writer opened before a removal marked the data it then reuses: its commit copies the
/// blobs out of the marked packs, and the sweep that follows leaves its snapshot whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_copies_reused_blobs_out_of_marked_packs() {
    let store = fresh_store().await;
    let data = noise(3 << 20, 41);
    backup(&open(&store).await, &data).await.unwrap();
    let mut writer = open(&store).await; // knows the data, nothing pending
    writer.set_gc_check_interval(Duration::from_secs(3600)); // only the commit looks
    forget_all(&store).await;
    assert_eq!(collect(&store).await.marked_packs, 0, "first sight of unreferenced packs only watches them");
    assert!(collect(&store).await.marked_packs > 0, "the second mark picks them");
    let before = gc::copied_blobs();
    backup(&writer, &data).await.unwrap();
    assert!(gc::copied_blobs() > before, "the commit copied the reused blobs out");
    assert_eq!(collect(&store).await.deleted_packs, 3, "the sweep deleted the marked packs");
    restores(&store, &data).await;
}

/// The same writer, looking for removals while it saves: it stops reusing the marked
/// packs and stores the blobs afresh, even when the sweep ran before it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_sees_a_mark_stores_afresh_and_survives_the_sweep() {
    let store = fresh_store().await;
    let data = noise(3 << 20, 42);
    backup(&open(&store).await, &data).await.unwrap();
    let mut writer = open(&store).await;
    writer.set_gc_check_interval(Duration::ZERO);
    forget_all(&store).await;
    collect(&store).await;
    collect(&store).await;
    assert!(collect(&store).await.deleted_packs > 0, "swept before the writer even started saving");
    let before = gc::excluded_hits();
    backup(&writer, &data).await.unwrap();
    assert!(gc::excluded_hits() > before, "the writer noticed the mark and did not reuse");
    restores(&store, &data).await;
}

/// A writer that never looked while a removal marked and swept what it reused cannot
/// repair its snapshot: it fails cleanly and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_missed_the_sweep_fails_cleanly() {
    let store = fresh_store().await;
    let data = noise(3 << 20, 43);
    backup(&open(&store).await, &data).await.unwrap();
    let mut writer = open(&store).await;
    writer.set_gc_check_interval(Duration::from_secs(3600));
    forget_all(&store).await;
    for _ in 0..3 {
        collect(&store).await;
    }
    let err = backup(&writer, &data).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(err.message().contains("run the backup again"), "{err}");
    assert!(open(&store).await.catalog().snapshots().unwrap().is_empty(), "nothing committed");
    backup(&open(&store).await, &data).await.unwrap();
    restores(&store, &data).await;
}
