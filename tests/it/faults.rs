//! Fault injection through the library: a store that fails the Nth write.

use cairn::backend::faulty::{FaultPlan, FaultyStore};
use cairn::backend::Backend;
use cairn::crypto::KdfParams;
use cairn::ops::backup::{backup_stream, BackupOptions};
use cairn::ops::check::{check, ReadData};
use cairn::ops::restore::restore_stream;
use cairn::progress::Cancel;
use cairn::progress::Silent;
use cairn::repo::{CacheMode, InitOptions, Repository, Secret};
use object_store::memory::InMemory;
use object_store::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

fn secret() -> Secret {
    Secret::password("pw")
}

fn options(name: &str) -> BackupOptions {
    BackupOptions { name: name.into(), kind: "stdin".into(), ..Default::default() }
}

async fn init(store: Arc<dyn ObjectStore>) -> Repository {
    let opts = InitOptions {
        chunk_avg: 64 << 10,
        pack_size: 1 << 20,
        kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        ..Default::default()
    };
    Repository::init(Backend::from_store(store, "memory://t"), &secret(), &opts, &CacheMode::Temporary).await.unwrap()
}

async fn open(store: Arc<dyn ObjectStore>) -> Repository {
    Repository::open(Backend::from_store(store, "memory://t"), &secret(), &CacheMode::Temporary).await.unwrap()
}

/// Every committed snapshot restores to one of the inputs, and check --read-data passes.
async fn verify(store: Arc<dyn ObjectStore>, inputs: &[Vec<u8>]) {
    let repo = open(store).await;
    let report = check(&repo, ReadData::All, &Silent).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
    for (_, snapshot) in repo.catalog().snapshots().unwrap() {
        let mut out = Vec::new();
        restore_stream(&repo, snapshot.content.as_ref().unwrap(), &mut out, &Silent).await.unwrap();
        assert!(inputs.contains(&out), "snapshot {} restored to unknown data", snapshot.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_store_at_any_write_leaves_a_valid_repository() {
    let base = crate::harness::noise(3 << 20, 11);
    let changed: Vec<u8> = base.iter().rev().copied().collect();
    let mut nth = 1;
    loop {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let repo = init(memory.clone()).await;
        backup_stream(&repo, &base[..], &options("a"), &Cancel::new(), &Silent).await.unwrap();
        drop(repo);

        let faulty = Arc::new(FaultyStore::new(
            memory.clone(),
            FaultPlan { nth_write: nth, persistent: true, land_then_fail: false, ignore_create: false, deletes: false },
        ));
        let repo = open(faulty.clone()).await;
        let result = backup_stream(&repo, &changed[..], &options("b"), &Cancel::new(), &Silent).await;
        let writes = faulty.writes();
        drop(repo);
        verify(memory.clone(), &[base.clone(), changed.clone()]).await;
        // The store works again: the next backup completes and everything restores.
        let repo = open(memory.clone()).await;
        backup_stream(&repo, &changed[..], &options("c"), &Cancel::new(), &Silent).await.unwrap();
        drop(repo);
        verify(memory.clone(), &[base.clone(), changed.clone()]).await;
        if result.is_ok() {
            assert!(writes < nth, "write {nth} failed but the backup reported success");
            break;
        }
        nth += 1;
    }
    assert!(nth > 4, "the backup made only {nth} writes; the test covers nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_lost_reply_faults_are_retried() {
    let data = crate::harness::noise(2 << 20, 12);
    for nth in 1..=6 {
        for land_then_fail in [false, true] {
            let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            drop(init(memory.clone()).await);
            let faulty = Arc::new(FaultyStore::new(
                memory.clone(),
                FaultPlan { nth_write: nth, persistent: false, land_then_fail, ignore_create: false, deletes: false },
            ));
            let repo = open(faulty.clone()).await;
            let result = backup_stream(&repo, &data[..], &options("t"), &Cancel::new(), &Silent).await;
            assert!(
                result.is_ok(),
                "write {nth} failing once (landed: {land_then_fail}) broke the backup: {:?}",
                result.err()
            );
            drop(repo);
            verify(memory, std::slice::from_ref(&data)).await;
        }
    }
}

/// A service that silently replaces objects written create-only is found out at init: the
/// config says so, backups and restores still work, and removal refuses to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_without_create_only_writes_is_detected_and_removal_refuses() {
    let strict: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    assert!(init(strict).await.config().conditional_writes, "InMemory refuses to overwrite");

    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let plan = FaultPlan {
        nth_write: usize::MAX,
        persistent: false,
        land_then_fail: false,
        ignore_create: true,
        deletes: false,
    };
    let lax: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(memory, plan));
    let repo = init(lax.clone()).await;
    assert!(!repo.config().conditional_writes, "the probe saw the overwrite");
    let data = crate::harness::noise(2 << 20, 13);
    backup_stream(&repo, &data[..], &options("lax"), &Cancel::new(), &Silent).await.unwrap();
    // The same bytes again: every pack name already exists and is skipped, not rewritten.
    backup_stream(&repo, &data[..], &options("lax"), &Cancel::new(), &Silent).await.unwrap();
    drop(repo);
    verify(lax.clone(), std::slice::from_ref(&data)).await;
    let err = cairn::repo::gc::collect(&open(lax).await, false).await.unwrap_err();
    assert_eq!(err.kind(), cairn::error::ErrorKind::Unsupported, "{err}");
    assert!(err.message().contains("create-only"), "{err}");
}

/// The prune scenario: `a` and `b` share half their data, `c` is small; `a` is forgotten
/// and two removal runs have watched and marked its packs, so the next run sweeps,
/// repacks the half-used packs, consolidates the index and publishes a new set.
async fn prune_scenario(memory: Arc<dyn ObjectStore>) -> Vec<Vec<u8>> {
    let shared = crate::harness::noise(2 << 20, 21);
    // 2.5 MiB of its own: a pack of about 1 MiB straddles the boundary, half used after.
    let a = [crate::harness::noise(5 << 19, 22), shared.clone()].concat();
    let b = [shared, crate::harness::noise(1 << 20, 23)].concat();
    let c = crate::harness::noise(100_000, 24);
    let repo = init(memory.clone()).await;
    backup_stream(&repo, &a[..], &options("a"), &Cancel::new(), &Silent).await.unwrap();
    backup_stream(&repo, &b[..], &options("b"), &Cancel::new(), &Silent).await.unwrap();
    backup_stream(&repo, &c[..], &options("c"), &Cancel::new(), &Silent).await.unwrap();
    let a_id = repo.catalog().snapshots().unwrap().into_iter().find(|(_, s)| s.name == "a").unwrap().0;
    repo.backend().delete(&cairn::format::layout::snapshot(&a_id)).await.unwrap();
    drop(repo);
    for _ in 0..2 {
        cairn::repo::gc::collect(&open(memory.clone()).await, false).await.unwrap();
    }
    vec![b, c]
}

fn removal() -> cairn::repo::gc::CollectOptions {
    cairn::repo::gc::CollectOptions { max_unused: Some(5.0), consolidate: true, ..Default::default() }
}

async fn pack_bytes(store: &Arc<dyn ObjectStore>) -> u64 {
    use futures::TryStreamExt;
    let prefix = object_store::path::Path::from("data");
    store.list(Some(&prefix)).map_ok(|m| m.size).try_collect::<Vec<u64>>().await.unwrap().iter().sum()
}

/// A prune killed at any write or delete (every later one fails too, as if the process
/// died) leaves a repository that checks clean and restores everything; the next runs
/// finish the job: nothing is left to delete, and what is stored matches an
/// uninterrupted prune.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_interrupted_at_any_write_or_delete_is_finished_by_the_next() {
    // The interrupted prune's own writer session (it repacks) is left behind, and holds
    // back removal until judged stale: the runs that finish the job judge it so.
    let finish = |store: Arc<dyn ObjectStore>| async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let options = cairn::repo::gc::CollectOptions { stale_after: Some(Duration::from_millis(10)), ..removal() };
            let r = cairn::repo::gc::collect_with(&open(store.clone()).await, &options).await.unwrap();
            eprintln!("{r:?}");
        }
        let left = cairn::repo::gc::collect(&open(store.clone()).await, true).await.unwrap();
        assert_eq!((left.deleted_packs, left.marked_packs, left.repacked_packs), (0, 0, 0), "{left:?}");
    };
    let baseline: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let inputs = prune_scenario(baseline.clone()).await;
    let first = cairn::repo::gc::collect_with(&open(baseline.clone()).await, &removal()).await.unwrap();
    assert!(first.deleted_packs > 0 && first.repacked_packs > 0, "the scenario sweeps and repacks: {first:?}");
    finish(baseline.clone()).await;
    let expected = pack_bytes(&baseline).await;

    let mut nth = 1;
    loop {
        let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let inputs_here = prune_scenario(memory.clone()).await;
        assert_eq!(inputs_here, inputs);
        let plan =
            FaultPlan { nth_write: nth, persistent: true, land_then_fail: false, ignore_create: false, deletes: true };
        let faulty: Arc<dyn ObjectStore> = Arc::new(FaultyStore::new(memory.clone(), plan));
        let result = cairn::repo::gc::collect_with(&open(faulty).await, &removal()).await;
        eprintln!("nth {nth}: {result:?}");
        verify(memory.clone(), &inputs).await;
        let snapshots = open(memory.clone()).await.catalog().snapshots().unwrap().len();
        assert_eq!(snapshots, 2, "b and c survive an interrupted prune");
        finish(memory.clone()).await;
        verify(memory.clone(), &inputs).await;
        let stored = pack_bytes(&memory).await;
        assert!(
            stored.abs_diff(expected) * 10 <= expected,
            "interrupted at {nth}: {stored} bytes stored, an uninterrupted prune leaves {expected}"
        );
        if result.is_ok() {
            break;
        }
        nth += 1;
    }
    assert!(nth > 8, "the prune made only {nth} writes and deletes; the test covers little");
    eprintln!("a prune interrupted at each of its {} writes and deletes was finished by the next runs", nth - 1);
}

/// A mark holds at most `max_doomed` blobs' packs; the rest wait, still unreferenced, and
/// later runs take them in turn until everything forgotten is gone. What is kept
/// restores throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_is_bounded_per_run_and_later_runs_take_the_rest() {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let repo = init(memory.clone()).await;
    // Five forgotten backups of 3 MiB each: several 1 MiB packs of about 16 blobs.
    for i in 0..5u64 {
        let input = crate::harness::noise(3 << 20, 40 + i);
        backup_stream(&repo, &input[..], &options(&format!("old{i}")), &Cancel::new(), &Silent).await.unwrap();
    }
    let kept = crate::harness::noise(1 << 20, 50);
    backup_stream(&repo, &kept[..], &options("kept"), &Cancel::new(), &Silent).await.unwrap();
    for (id, snapshot) in repo.catalog().snapshots().unwrap() {
        if snapshot.name != "kept" {
            repo.backend().delete(&cairn::format::layout::snapshot(&id)).await.unwrap();
        }
    }
    drop(repo);
    let bounded = cairn::repo::gc::CollectOptions { max_doomed: Some(40), ..Default::default() };
    let (mut runs, mut marked_runs, mut deleted) = (0, 0, 0);
    loop {
        let report = cairn::repo::gc::collect_with(&open(memory.clone()).await, &bounded).await.unwrap();
        runs += 1;
        deleted += report.deleted_packs;
        if report.marked_packs > 0 {
            marked_runs += 1;
            // The set this run marked (and, with nobody writing, swept at once).
            let repo = open(memory.clone()).await;
            let newest = repo.backend().list("gc/cand/").await.unwrap().into_iter().map(|o| o.key).max().unwrap();
            let candidates = cairn::repo::gc::read_candidates(repo.backend(), repo.key(), &newest).await.unwrap();
            assert!(candidates.doomed.len() <= 40 + 20, "one pack past the bound at most: {}", candidates.doomed.len());
        }
        if report.marked_packs == 0 && report.deleted_packs == 0 && report.deferred_packs == 0 && runs > 2 {
            break;
        }
        assert!(runs < 40, "removal finishes");
    }
    assert!(marked_runs > 2, "the bound spread the marking over several runs ({marked_runs})");
    assert!(deleted >= 10, "the forgotten packs went ({deleted})");
    verify(memory.clone(), &[kept]).await;
    let repo = open(memory).await;
    assert_eq!(repo.catalog().snapshots().unwrap().len(), 1);
}
