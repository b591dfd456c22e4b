//! Content-defined chunking: FastCDC 2020's gear hash and normalized masks over any reader,
//! with per-repository parameters, and each candidate cut confirmed by its context.
//!
//! The gear table (`fastcdc::v2020`) is XORed with the repository's secret seed, so
//! boundaries differ between repositories and do not fingerprint known content. A gear
//! hash sees only the last 48 bytes that its mask bits reach, so in templated text (logs,
//! SQL) one recurring 48-byte run can match the mask for some seeds and cut at nearly every
//! occurrence: with about one seed in forty, the benchmark's logs came out in 38 KiB chunks
//! instead of 85 KiB. So the masks here are [`CONFIRM_BITS`] bits looser than FastCDC's, and
//! a position they select is a cut only if a keyed BLAKE3 hash of the [`CONFIRM_WINDOW`]
//! bytes before it also has that many zero bits: the same cut rate on random data, and a
//! recurring run cuts only where its wider context does too (docs/format.md §11).
//!
//! The driver keeps its own buffer (at least twice the maximum chunk size) and compacts
//! only when less than one maximum chunk remains, so each byte is copied about once.
//! Invariant: chunks concatenate to the input exactly, and no chunk exceeds `max_size`.

use fastcdc::v2020::{self, Normalization};
use std::io::{self, Read};

/// Chunking parameters, fixed per repository in its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// XORed into the gear table; 0 means the published table.
    pub seed: u64,
}

impl ChunkerParams {
    /// Defaults chosen from the nightly-dump measurements in docs/PERFORMANCE.md.
    pub fn with_average(avg_size: u32, seed: u64) -> Self {
        ChunkerParams {
            min_size: (avg_size / 4).max(64),
            avg_size,
            max_size: avg_size.saturating_mul(8).min(v2020::MAXIMUM_MAX),
            seed,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min_size)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg_size)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes min {} avg {} max {} are out of range: need {}..={} <= {}..={} <= {}..={}",
                self.min_size,
                self.avg_size,
                self.max_size,
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            ))
        }
    }
}

/// Splits a reader into content-defined chunks.
pub struct Chunker<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    min: usize,
    avg: usize,
    max: usize,
    /// Gear masks before and after the average size.
    masks: [u64; 2],
    gear: Box<[u64; 256]>,
    /// `gear[i] << 1`.
    gear_ls: Box<[u64; 256]>,
    confirm_key: [u8; 32],
    /// Low bits of the confirming hash that must be zero: `(1 << confirm_bits) - 1`.
    confirm_mask: u8,
}

/// How many bits of selectivity move from the gear mask to the confirming hash.
pub const CONFIRM_BITS: u32 = 4;
/// Bytes before a candidate cut that the confirming hash covers.
pub const CONFIRM_WINDOW: usize = 256;
/// The gear hash is fully warmed after this many bytes (it shifts one bit per byte).
const GEAR_WINDOW: usize = 64;

impl<R: Read> Chunker<R> {
    /// `params` must have passed [`ChunkerParams::validate`].
    pub fn new(reader: R, params: ChunkerParams) -> Self {
        Self::with_size_hint(reader, params, u64::MAX)
    }

    /// Like [`Chunker::new`], for input of about `size` bytes (a file): the buffer starts
    /// no larger than the input and grows only if the input turns out longer.
    pub fn with_size_hint(reader: R, params: ChunkerParams, size: u64) -> Self {
        let bits = v2020::logarithm2(params.avg_size);
        let level = Normalization::Level1.bits();
        let confirm_bits = confirm_bits(bits);
        let mask_s = v2020::MASKS[(bits + level - confirm_bits) as usize];
        let mask_l = v2020::MASKS[(bits - level - confirm_bits) as usize];
        let (gear, gear_ls) = v2020::get_gear_with_seed(params.seed);
        let confirm_key = blake3::derive_key(CONFIRM_CONTEXT, &params.seed.to_le_bytes());
        let max = params.max_size as usize;
        Chunker {
            reader,
            buf: zeroed(buffer_for(max, size)),
            start: 0,
            end: 0,
            eof: false,
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max,
            masks: [mask_s, mask_l],
            gear,
            gear_ls,
            confirm_key,
            confirm_mask: ((1u32 << confirm_bits) - 1) as u8,
        }
    }

    /// Chunk `reader` next, keeping this chunker's buffer and gear tables: a backup of
    /// many files then maps and zeroes its buffer once, not once per file.
    pub fn reset<S: Read>(self, reader: S, size: u64) -> Chunker<S> {
        let Chunker { mut buf, min, avg, max, masks, gear, gear_ls, confirm_key, confirm_mask, .. } = self;
        let wanted = buffer_for(max, size);
        if buf.len() < wanted {
            buf = zeroed(wanted);
        }
        Chunker {
            reader,
            buf,
            start: 0,
            end: 0,
            eof: false,
            min,
            avg,
            max,
            masks,
            gear,
            gear_ls,
            confirm_key,
            confirm_mask,
        }
    }

    /// Bytes of input consumed so far that have not been returned as chunks.
    fn available(&self) -> usize {
        self.end - self.start
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            while !self.eof && self.end < self.buf.len() {
                match self.reader.read(&mut self.buf[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if self.eof || self.buf.len() >= full_buffer(self.max) {
                return Ok(());
            }
            // The input is longer than its size hint said: grow to the normal buffer, so
            // a cut is never made with less than a maximum chunk in view.
            self.buf.resize(full_buffer(self.max), 0);
        }
    }

    /// The next chunk, or `None` at the end of input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.available() < self.max && !self.eof {
            self.fill()?;
        }
        if self.available() == 0 {
            return Ok(None);
        }
        let len = self.cut(&self.buf[self.start..self.end]);
        let chunk = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(Some(chunk))
    }
}

impl<R> Chunker<R> {
    /// The length of the chunk at the start of `src` (not empty): the first confirmed
    /// candidate after `min` bytes, with the stricter mask up to `avg`, else `max` bytes
    /// or all of `src`, whichever is shorter.
    fn cut(&self, src: &[u8]) -> usize {
        let n = src.len().min(self.max);
        if n <= self.min {
            return n;
        }
        let gear: &[u64; 256] = &self.gear;
        let mut hash = 0u64;
        for &b in &src[self.min.saturating_sub(GEAR_WINDOW)..self.min] {
            hash = (hash << 1).wrapping_add(gear[b as usize]);
        }
        let [mask_s, mask_l] = self.masks;
        let mut from = self.min;
        for (mask, end) in [(mask_s, self.avg.clamp(self.min, n)), (mask_l, n)] {
            loop {
                let (h, hit) = gear_scan(&src[from..end], hash, mask, gear, &self.gear_ls);
                hash = h;
                let Some(len) = hit else { break };
                let at = from + len;
                if self.confirmed(&src[at.saturating_sub(CONFIRM_WINDOW)..at]) {
                    return at;
                }
                from = at;
            }
            from = end;
        }
        n
    }

    fn confirmed(&self, window: &[u8]) -> bool {
        blake3::keyed_hash(&self.confirm_key, window).as_bytes()[0] & self.confirm_mask == 0
    }
}

/// Roll the gear hash over `bytes` from `hash`; returns the hash and, if it matched `mask`
/// on the way, how many bytes it took (the hash is then the one after them). Two bytes per
/// step, as FastCDC 2020 does: the first byte's hash is kept shifted left by one (`gear_ls`,
/// `mask << 1`), which halves the dependency chain. The shifted form loses only bit 63,
/// which the next step would shift out anyway.
#[inline]
fn gear_scan(bytes: &[u8], mut hash: u64, mask: u64, gear: &[u64; 256], gear_ls: &[u64; 256]) -> (u64, Option<usize>) {
    let mask_ls = mask << 1;
    let pairs = bytes.chunks_exact(2);
    let odd = pairs.remainder().first().copied();
    for (i, pair) in pairs.enumerate() {
        let shifted = (hash << 2).wrapping_add(gear_ls[pair[0] as usize]);
        if shifted & mask_ls == 0 {
            return (shifted >> 1, Some(2 * i + 1));
        }
        hash = shifted.wrapping_add(gear[pair[1] as usize]);
        if hash & mask == 0 {
            return (hash, Some(2 * i + 2));
        }
    }
    if let Some(b) = odd {
        hash = (hash << 1).wrapping_add(gear[b as usize]);
        if hash & mask == 0 {
            return (hash, Some(bytes.len()));
        }
    }
    (hash, None)
}

/// The confirming bits for an average size of `2^bits`: [`CONFIRM_BITS`], fewer for
/// averages under 1 KiB, whose FastCDC masks have too few bits to give up four.
fn confirm_bits(bits: u32) -> u32 {
    CONFIRM_BITS.min(bits.saturating_sub(6))
}

/// Derives the confirming hash's key from the seed.
const CONFIRM_CONTEXT: &str = "cairn 2026-11-30 chunk confirm v1";

/// A zeroed buffer of `len` bytes, in huge pages when it is large (see
/// [`crate::buffers::with_huge_capacity`]).
fn zeroed(len: usize) -> Vec<u8> {
    let mut buf = crate::buffers::with_huge_capacity(len);
    buf.resize(len, 0);
    buf
}

/// The buffer for an input of `size` bytes: the whole input and one byte to see its end,
/// or [`full_buffer`] if that is smaller.
fn buffer_for(max: usize, size: u64) -> usize {
    full_buffer(max).min(usize::try_from(size).unwrap_or(usize::MAX).saturating_add(1))
}

/// The buffer for input of unknown length: two maximum chunks, at least 4 MiB.
fn full_buffer(max: usize) -> usize {
    (2 * max).max(4 << 20)
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> ChunkerParams {
        ChunkerParams { min_size: 256, avg_size: 1024, max_size: 4096, seed: 7 }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], p: ChunkerParams) -> Vec<Vec<u8>> {
        Chunker::new(data, p).collect::<io::Result<Vec<_>>>().unwrap()
    }

    proptest! {
        #[test]
        fn chunks_concatenate_to_input(len in 0usize..200_000, seed: u64) {
            let data = pseudo_random(len, seed);
            let parts = chunks(&data, params());
            prop_assert!(parts.iter().all(|c| !c.is_empty() && c.len() <= 4096));
            prop_assert_eq!(parts.concat(), data);
        }

        #[test]
        fn boundaries_resynchronise_after_insertion(seed: u64, at in 0usize..100_000, insert in proptest::collection::vec(any::<u8>(), 1..100)) {
            let data = pseudo_random(150_000, seed);
            let mut changed = data.clone();
            changed.splice(at..at, insert.iter().copied());
            let before = chunks(&data, params());
            let after = chunks(&changed, params());
            // Chunks ending before the edit are untouched (a cut depends only on the bytes
            // before it), and boundaries find their way back
            // within a few chunks after it: at least 85% of the bytes stay in shared chunks.
            let set: std::collections::HashSet<_> = before.iter().collect();
            let shared: usize = after.iter().filter(|c| set.contains(c)).map(|c| c.len()).sum();
            prop_assert!(shared * 100 >= data.len() * 85, "only {shared} of {} bytes in shared chunks", data.len());
            let prefix = before.iter().take_while(|c| { let end = before.iter().take_while(|d| !std::ptr::eq(*d, *c)).map(|d| d.len()).sum::<usize>() + c.len(); end < at }).count();
            prop_assert_eq!(&before[..prefix], &after[..prefix]);
        }
    }

    #[test]
    fn wrong_size_hints_do_not_change_chunks() {
        let data = pseudo_random(300_000, 4);
        let expected = chunks(&data, params());
        for hint in [0u64, 10, 5000, 299_999, 300_000, 10_000_000] {
            let got = Chunker::with_size_hint(&data[..], params(), hint).collect::<io::Result<Vec<_>>>().unwrap();
            assert_eq!(got, expected, "hint {hint}");
        }
    }

    #[test]
    fn a_reset_chunker_cuts_like_a_new_one() {
        let (a, b) = (pseudo_random(300_000, 5), pseudo_random(2_000, 6));
        let mut chunker = Chunker::with_size_hint(&a[..], params(), a.len() as u64);
        assert_eq!(chunker.by_ref().collect::<io::Result<Vec<_>>>().unwrap(), chunks(&a, params()));
        // A shorter input after a longer one, then a longer one after the shorter.
        let mut chunker = chunker.reset(&b[..], b.len() as u64);
        assert_eq!(chunker.by_ref().collect::<io::Result<Vec<_>>>().unwrap(), chunks(&b, params()));
        let chunker = chunker.reset(&a[..], 0);
        assert_eq!(chunker.collect::<io::Result<Vec<_>>>().unwrap(), chunks(&a, params()));
    }

    /// Access-log lines: addresses, times, paths and sizes vary; the user agents, each
    /// a run of about 100 bytes, recur.
    fn templated_text(lines: usize) -> Vec<u8> {
        use std::io::Write;
        let agents: Vec<String> = (0..12)
            .map(|i| format!("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.{i} (KHTML, like Gecko) Chrome/12{i}.0 Safari/537.36"))
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut text = Vec::new();
        for line in 0..lines {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (m, s) = (line / 600 % 60, line / 10 % 60);
            let agent = &agents[(x >> 8) as usize % agents.len()];
            writeln!(
                text,
                "10.0.{}.{} - - [29/Sep/2024:00:{m:02}:{s:02} +0000] \"GET /api/v2/orders/{} HTTP/1.1\" 200 {} \"-\" \"{agent}\"",
                x >> 16 & 255,
                x >> 24 & 255,
                x >> 32 & 0xfffff,
                x >> 52
            )
            .unwrap();
        }
        text
    }

    /// A gear hash alone sees the last 48 bytes: for some seeds a run recurring in every few
    /// lines matches its mask and the text is cut at nearly every occurrence. Confirming each
    /// candidate by its wider context keeps every seed near the same average.
    #[test]
    fn templated_text_chunks_near_the_average_for_every_seed() {
        let text = templated_text(30_000);
        let p = ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 32768, seed: 0 };
        let mut averages: Vec<usize> = (1..=40u64)
            .map(|seed| {
                text.len() / chunks(&text, ChunkerParams { seed: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), ..p }).len()
            })
            .collect();
        averages.sort();
        // Without the confirmation (CONFIRM_BITS = 0) the smallest is 2040 bytes against a
        // median of 6796; with it, 4220 against 5563.
        assert!(
            averages[0] * 3 >= averages[20] * 2,
            "smallest average {} against a median of {}",
            averages[0],
            averages[20]
        );
    }

    #[test]
    fn seed_changes_boundaries() {
        let data = pseudo_random(100_000, 3);
        let a = chunks(&data, params());
        let b = chunks(&data, ChunkerParams { seed: 8, ..params() });
        assert_ne!(a.iter().map(Vec::len).collect::<Vec<_>>(), b.iter().map(Vec::len).collect::<Vec<_>>());
    }

    #[test]
    fn validate_rejects_bad_sizes() {
        assert!(params().validate().is_ok());
        assert!(ChunkerParams { min_size: 10, ..params() }.validate().is_err());
        assert!(ChunkerParams { avg_size: 8192, ..params() }.validate().is_err());
    }
}
