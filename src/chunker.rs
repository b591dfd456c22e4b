//! Content-defined chunking: FastCDC 2020 over any reader, with per-repository parameters.
//!
//! Boundaries come from `fastcdc::v2020::cut_gear` with the gear table XORed with the
//! repository's secret seed, so boundaries differ between repositories and do not
//! fingerprint known content. The driver keeps its own buffer (at least twice the maximum
//! chunk size) and compacts only when less than one maximum chunk remains, so each byte is
//! copied about once, unlike `StreamCDC`, which shifts its whole buffer after every chunk.
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
    masks: [u64; 4],
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
}

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
        let mask_s = v2020::MASKS[(bits + level) as usize];
        let mask_l = v2020::MASKS[(bits - level) as usize];
        let (gear, gear_ls) = v2020::get_gear_with_seed(params.seed);
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
            masks: [mask_s, mask_l, mask_s << 1, mask_l << 1],
            gear,
            gear_ls,
        }
    }

    /// Chunk `reader` next, keeping this chunker's buffer and gear tables: a backup of
    /// many files then maps and zeroes its buffer once, not once per file.
    pub fn reset<S: Read>(self, reader: S, size: u64) -> Chunker<S> {
        let Chunker { mut buf, min, avg, max, masks, gear, gear_ls, .. } = self;
        let wanted = buffer_for(max, size);
        if buf.len() < wanted {
            buf = zeroed(wanted);
        }
        Chunker { reader, buf, start: 0, end: 0, eof: false, min, avg, max, masks, gear, gear_ls }
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
        let [mask_s, mask_l, mask_s_ls, mask_l_ls] = self.masks;
        let (_, len) = v2020::cut_gear(
            &self.buf[self.start..self.end],
            self.min,
            self.avg,
            self.max,
            mask_s,
            mask_l,
            mask_s_ls,
            mask_l_ls,
            &self.gear,
            &self.gear_ls,
        );
        let len = len.max(1).min(self.available());
        let chunk = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(Some(chunk))
    }
}

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
            // Chunks ending before the edit are untouched (FastCDC 2020 reads one byte past a
            // cut, so a chunk ending exactly at the edit may change), and boundaries find their way back
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
