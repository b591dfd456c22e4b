//! Average chunk size per chunker seed, cairn's chunker against plain FastCDC 2020 with the
//! same sizes and seed (docs/PERFORMANCE.md, "Chunk sizes across seeds"):
//!
//!     cargo run --release --example chunk_seeds -- SEEDS FILE...
//!
//! Each file is chunked from its start, as a backup does; default sizes (64 KiB average).
use cairn::chunker::{Chunker, ChunkerParams};
use fastcdc::v2020::{FastCDC, Normalization};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: chunk_seeds SEEDS FILE...";
    let seeds: u64 = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let files: Vec<Vec<u8>> = args.map(|p| std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).collect();
    let total: usize = files.iter().map(Vec::len).sum();
    assert!(total > 0, "{usage}");
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for i in 1..=seeds {
        let params = ChunkerParams::with_average(64 << 10, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let count: usize = files.iter().map(|f| Chunker::new(&f[..], params).count()).sum();
        ours.push(total as f64 / count as f64 / 1024.0);
    }
    for i in 1..=seeds {
        let p = ChunkerParams::with_average(64 << 10, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let count: usize = files
            .iter()
            .map(|f| {
                FastCDC::with_level_and_seed(f, p.min_size, p.avg_size, p.max_size, Normalization::Level1, p.seed)
                    .count()
            })
            .sum();
        plain.push(total as f64 / count as f64 / 1024.0);
    }
    for (name, mut averages) in [("cairn", ours), ("fastcdc", plain)] {
        averages.sort_by(f64::total_cmp);
        println!(
            "{name:8} average chunk over {seeds} seeds: smallest {:.1} KiB, median {:.1}, largest {:.1}",
            averages[0],
            averages[averages.len() / 2],
            averages[averages.len() - 1]
        );
    }
}
