//! Throughput of each pipeline stage and of the whole pipeline: `cargo bench`.
//!
//! A small harness instead of criterion keeps test builds light; each case runs a few
//! times and reports the best, in MB/s of input (or lookups per second). Results and the
//! machine are recorded in docs/PERFORMANCE.md.

use cairn::backend::Backend;
use cairn::catalog::Catalog;
use cairn::chunker::{Chunker, ChunkerParams};
use cairn::crypto::{KdfParams, MasterKey};
use cairn::format::index::{IndexFile, IndexPack};
use cairn::format::pack::{BlobKind, PackEntry};
use cairn::id::{BlobId, IndexId, PackId};
use std::time::Instant;

fn data(len: usize) -> Vec<u8> {
    // Half text-like (compressible), half noise.
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 65536) % 2 == 0 {
            out.extend_from_slice(format!("{}\tcustomer-{:x}\t{}.00\n", out.len(), x & 0xffff, x % 1000).as_bytes());
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn best<F: FnMut()>(mut f: F) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn report(name: &str, bytes: usize, secs: f64) {
    println!("{name:<34} {:>9.1} MB/s", bytes as f64 / secs / 1e6);
}

fn main() {
    let input = data(256 << 20);
    let key = MasterKey::random();
    let params = ChunkerParams::with_average(64 << 10, 42);

    report(
        "chunker (FastCDC, 64 KiB avg)",
        input.len(),
        best(|| {
            let n = Chunker::new(&input[..], params).map(|c| c.unwrap().len()).sum::<usize>();
            assert_eq!(n, input.len());
        }),
    );
    report(
        "blob id (keyed BLAKE3, 64 KiB)",
        input.len(),
        best(|| {
            for chunk in input.chunks(64 << 10) {
                std::hint::black_box(key.blob_id(chunk));
            }
        }),
    );
    for level in [1, 3] {
        report(
            &format!("zstd level {level} (64 KiB blobs)"),
            input.len(),
            best(|| {
                for chunk in input.chunks(64 << 10) {
                    std::hint::black_box(cairn::compress::encode(chunk, level));
                }
            }),
        );
    }
    let seal_key = key.pack_key(&[1; 16]);
    report(
        "AES-256-GCM seal (64 KiB)",
        input.len(),
        best(|| {
            let mut out = Vec::with_capacity(input.len() + (1 << 20));
            for (i, chunk) in input.chunks(64 << 10).enumerate() {
                seal_key.seal_into(cairn::crypto::counter_nonce(i as u64), b"id", chunk, &mut out);
            }
            std::hint::black_box(out);
        }),
    );

    // Index lookups against a catalog of 2 million blobs.
    let catalog = Catalog::open(None).unwrap();
    let entries = 2_000_000usize;
    let per_pack = 1000;
    let ids: Vec<BlobId> = (0..entries as u64).map(|i| BlobId(*blake3::hash(&i.to_le_bytes()).as_bytes())).collect();
    let t = Instant::now();
    for packs in ids.chunks(per_pack * 100) {
        let file = IndexFile {
            packs: packs
                .chunks(per_pack)
                .map(|blobs| IndexPack {
                    id: PackId(*blake3::hash(blobs[0].as_bytes()).as_bytes()),
                    salt: [0; 16],
                    size: 1 << 30,
                    blobs: blobs
                        .iter()
                        .enumerate()
                        .map(|(i, id)| PackEntry {
                            kind: BlobKind::Data,
                            id: *id,
                            offset: 24 + i as u64 * 100,
                            length: 100,
                            raw_length: 70,
                        })
                        .collect(),
                })
                .collect(),
        };
        catalog.add_index(&IndexId::random(), &file).unwrap();
    }
    println!("{:<34} {:>9.0} entries/s", "catalog load (2M blobs)", entries as f64 / t.elapsed().as_secs_f64());
    let t = Instant::now();
    let probes = 200_000;
    for i in 0..probes {
        let hit = catalog.contains(&ids[(i * 7919) % entries]).unwrap();
        assert!(hit);
        std::hint::black_box(catalog.contains(&BlobId([i as u8; 32])).unwrap());
    }
    println!("{:<34} {:>9.0} lookups/s", "catalog lookup (2M blobs)", 2.0 * probes as f64 / t.elapsed().as_secs_f64());

    // The whole pipeline into an in-memory store.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let options = cairn::repo::InitOptions {
            kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
            ..Default::default()
        };
        let repo = cairn::repo::Repository::init(
            Backend::memory(),
            &cairn::repo::Secret::password("b"),
            &options,
            &cairn::repo::CacheMode::Temporary,
        )
        .await
        .unwrap();
        let backup =
            cairn::ops::backup::BackupOptions { name: "bench".into(), kind: "stdin".into(), ..Default::default() };
        let cancel = cairn::progress::Cancel::new();
        let t = Instant::now();
        cairn::ops::backup::backup_stream(&repo, &input[..], &backup, &cancel, &cairn::progress::Silent).await.unwrap();
        report("pipeline: first backup (memory)", input.len(), t.elapsed().as_secs_f64());
        let t = Instant::now();
        cairn::ops::backup::backup_stream(&repo, &input[..], &backup, &cancel, &cairn::progress::Silent).await.unwrap();
        report("pipeline: unchanged backup", input.len(), t.elapsed().as_secs_f64());
        let (_, snapshot) = repo.catalog().snapshots().unwrap().pop().unwrap();
        let t = Instant::now();
        let mut sink = std::io::sink();
        cairn::ops::restore::restore_stream(
            &repo,
            snapshot.content.as_ref().unwrap(),
            &mut sink,
            &cairn::progress::Silent,
        )
        .await
        .unwrap();
        report("pipeline: restore stream", input.len(), t.elapsed().as_secs_f64());
    });
}
