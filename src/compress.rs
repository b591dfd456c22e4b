//! Blob compression: zstd, kept raw when compression does not shrink the data.
//!
//! A blob's plaintext (before sealing) is `flag (1) | payload`: flag 0 means the payload
//! is the data itself, flag 1 means it is one zstd frame. Decompression is bounded by the
//! raw length recorded in the index, so a hostile frame cannot make it allocate more.

use crate::error::{Error, Result};
use std::cell::RefCell;

const RAW: u8 = 0;
const ZSTD: u8 = 1;

thread_local! {
    /// One zstd context per thread, reused: creating one per blob allocates and zeroes its
    /// tables every time, which dominated the cost of compressing 64 KiB blobs.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        slot.as_mut().unwrap().1.compress(data)
    })
}

/// Decompress `data` into the spare capacity of `out`, after its contents; returns the
/// bytes added.
fn decompress_after(data: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let start = out.len();
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(start as u64);
        slot.as_mut().unwrap().decompress_to_buffer(data, &mut cursor)
    })
}

/// Shannon entropy in bits per byte of every 4th byte: random or already-compressed data
/// scores just under 8, text and structured data far lower. About 4% of the cost of a
/// level-3 zstd attempt on incompressible data, which it lets us skip.
fn sampled_entropy(data: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for &b in data.iter().step_by(4) {
        counts[b as usize] += 1;
        n += 1;
    }
    let n = f64::from(n);
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

/// Blobs whose sampled entropy exceeds this are stored raw without trying zstd (borg's
/// "auto" compression makes the same bet with an lz4 trial).
const INCOMPRESSIBLE_BITS_PER_BYTE: f64 = 7.9;

/// Encode `data` as a blob plaintext, compressing at `level` when that is smaller.
pub fn encode(data: &[u8], level: i32) -> Vec<u8> {
    let worth_trying = data.len() < 4096 || sampled_entropy(data) < INCOMPRESSIBLE_BITS_PER_BYTE;
    if level > 0 && data.len() >= 64 && worth_trying {
        if let Ok(compressed) = compress(data, level) {
            if compressed.len() + 16 < data.len() {
                let mut out = Vec::with_capacity(compressed.len() + 1);
                out.push(ZSTD);
                out.extend_from_slice(&compressed);
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(RAW);
    out.extend_from_slice(data);
    out
}

/// Encode a large buffer known to be worth compressing (WAL segments), in `parts` pieces
/// compressed in parallel. The pieces are independent zstd frames written back to back,
/// which is itself a valid zstd stream: [`decode`] reads it unchanged.
pub fn encode_parallel(data: &[u8], level: i32, parts: usize) -> Vec<u8> {
    let piece = data.len().div_ceil(parts.max(1)).max(1);
    let frames: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = data.chunks(piece).map(|c| scope.spawn(move || compress(c, level))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("panicked")))).collect()
    });
    let total: Option<usize> = frames.iter().map(|f| f.as_ref().ok().map(Vec::len)).sum();
    match total {
        Some(total) if total + 16 < data.len() => {
            let mut out = Vec::with_capacity(total + 1);
            out.push(ZSTD);
            for frame in frames.into_iter().flatten() {
                out.extend_from_slice(&frame);
            }
            out
        }
        _ => {
            let mut out = Vec::with_capacity(data.len() + 1);
            out.push(RAW);
            out.extend_from_slice(data);
            out
        }
    }
}

/// Decode a blob plaintext whose data is `raw_len` bytes long.
pub fn decode(mut plain: Vec<u8>, raw_len: usize) -> Result<Vec<u8>> {
    if plain.first() == Some(&RAW) && plain.len() == raw_len + 1 {
        plain.remove(0);
        return Ok(plain);
    }
    let mut out = Vec::new();
    decode_into(&plain, raw_len, &mut out)?;
    Ok(out)
}

/// Decode a blob plaintext whose data is `raw_len` bytes long and append the data to
/// `out`, decompressing straight into its spare room. On failure `out` is unchanged.
pub fn decode_into(plain: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
    match plain.first() {
        Some(&RAW) if plain.len() == raw_len + 1 => {
            out.extend_from_slice(&plain[1..]);
            Ok(())
        }
        Some(&ZSTD) => {
            let start = out.len();
            // Room for exactly the recorded length (`reserve` may give more): a frame
            // that claims more fails or is caught by the length check below.
            out.reserve(raw_len);
            let written = decompress_after(&plain[1..], out)
                .map_err(|e| Error::corrupt(format!("blob does not decompress: {e}")));
            if written.as_ref().is_ok_and(|&n| n == raw_len) {
                return Ok(());
            }
            out.truncate(start);
            let n = written?;
            Err(Error::corrupt(format!("blob decompresses to {n} bytes, expected {raw_len}")))
        }
        _ => Err(Error::corrupt("blob has an unknown compression flag or wrong length")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_frames_decode_as_one() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i / 7 % 251) as u8).collect();
        for parts in [1, 2, 3, 8] {
            let encoded = encode_parallel(&data, 1, parts);
            assert_eq!(encoded[0], ZSTD);
            assert_eq!(decode(encoded, data.len()).unwrap(), data, "{parts} parts");
        }
        let random = crate::crypto::random_bytes::<4096>().to_vec();
        assert_eq!(decode(encode_parallel(&random, 1, 2), random.len()).unwrap(), random);
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..10_000), repeat in 1usize..20, level in 0i32..6) {
            let data = data.repeat(repeat);
            let encoded = encode(&data, level);
            prop_assert!(encoded.len() <= data.len() + 1);
            prop_assert_eq!(decode(encoded, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn random_data_skips_zstd_and_text_does_not() {
        let mut x = 88172645463325252u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(sampled_entropy(&random) > INCOMPRESSIBLE_BITS_PER_BYTE);
        assert_eq!(encode(&random, 3)[0], RAW);
        let text: Vec<u8> =
            (0..5000).flat_map(|i| format!("{i}\tcustomer-{i:x}\t{}.00\n", i * 17).into_bytes()).collect();
        assert!(sampled_entropy(&text) < 5.0);
        assert_eq!(encode(&text, 3)[0], ZSTD);
    }

    #[test]
    fn wrong_length_is_corrupt() {
        let encoded = encode(&[7u8; 1000], 3);
        assert!(decode(encoded.clone(), 999).is_err());
        assert!(decode(encoded, 1001).is_err());
        assert!(decode(vec![9, 1, 2], 2).is_err());
    }

    #[test]
    fn decode_into_appends_and_leaves_failures_out() {
        let text = b"a line of text, a line of text, a line of text, a line of text\n".repeat(50);
        let mut out = b"before".to_vec();
        decode_into(&encode(&text, 3), text.len(), &mut out).unwrap();
        decode_into(&encode(b"raw", 0), 3, &mut out).unwrap();
        assert_eq!(out, [&b"before"[..], &text, b"raw"].concat());
        let len = out.len();
        assert!(decode_into(&encode(&text, 3), text.len() - 1, &mut out).is_err());
        assert!(decode_into(&encode(&text, 3), text.len() + 1, &mut out).is_err());
        assert_eq!(out.len(), len);
    }
}
