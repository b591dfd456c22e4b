//! Fault injection through the library: a store that fails the Nth write.

use cairn::backend::faulty::{FaultPlan, FaultyStore};
use cairn::backend::Backend;
use cairn::crypto::KdfParams;
use cairn::ops::backup::{backup_stream, BackupOptions};
use cairn::ops::check::{check, ReadData};
use cairn::ops::restore::restore_stream;
use cairn::ops::Cancel;
use cairn::progress::Silent;
use cairn::repo::{CacheMode, InitOptions, Repository, Secret};
use object_store::memory::InMemory;
use object_store::ObjectStore;
use std::sync::Arc;

fn secret() -> Secret {
    Secret::Password("pw".into())
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
            FaultPlan { nth_write: nth, persistent: true, land_then_fail: false, ignore_create: false },
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
                FaultPlan { nth_write: nth, persistent: false, land_then_fail, ignore_create: false },
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
    let plan = FaultPlan { nth_write: usize::MAX, persistent: false, land_then_fail: false, ignore_create: true };
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
