//! The WAL archive's formats (docs/format.md §18): PostgreSQL's WAL file names and page
//! headers as cairn reads them, and the sealed object each archived file becomes.
//!
//! Each archived file is one write-once object `wal/<source>/<file name>` (magic
//! `CAIRNwl2`; `CAIRNwl1` is still read) whose authenticated plaintext starts with its own
//! object key, then the file's length (u64 LE) and a blob plaintext (compression flag and
//! data, [`crate::compress`]), so an object moved to another name or source is refused.
//! `wal/<source>/SOURCE` records the cluster the source belongs to ([`SourceInfo`]).

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::format::object;
use serde::{Deserialize, Serialize};

pub use crate::format::layout::{WAL_MAGIC, WAL_MAGIC_BOUND};

/// zstd level for WAL: fast, and WAL compresses well at any level.
const LEVEL: i32 = 1;

/// What a source's `SOURCE` object records, from the first segment pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub system_identifier: u64,
    /// `xlp_magic` of the WAL pages: changes with every PostgreSQL major version.
    pub page_magic: u16,
    pub segment_size: u32,
    pub block_size: u32,
}

/// The kinds of file PostgreSQL archives, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment { timeline: u32, log: u32, seg: u32 },
    /// `TTTTTTTT.history`
    History { timeline: u32 },
    /// `<segment>.<offset>.backup`
    Backup,
    /// `<segment>.partial`
    Partial,
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u32::from_str_radix(s, 16).ok()).flatten()
}

/// Classify a WAL file name as PostgreSQL passes it in `%f`; anything else is refused.
pub fn classify(name: &str) -> Result<WalKind> {
    let segment = |s: &str| -> Option<(u32, u32, u32)> {
        (s.len() == 24).then_some(())?;
        Some((hex8(&s[..8])?, hex8(&s[8..16])?, hex8(&s[16..24])?))
    };
    if let Some((timeline, log, seg)) = segment(name) {
        return Ok(WalKind::Segment { timeline, log, seg });
    }
    if let Some(t) = name.strip_suffix(".history").and_then(hex8) {
        return Ok(WalKind::History { timeline: t });
    }
    if let Some(base) = name.strip_suffix(".partial") {
        if segment(base).is_some() {
            return Ok(WalKind::Partial);
        }
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        if let Some((seg, offset)) = rest.split_once('.') {
            if segment(seg).is_some() && hex8(offset).is_some() {
                return Ok(WalKind::Backup);
            }
        }
    }
    Err(Error::invalid(format!(
        "{name:?} is not a WAL file name (a segment, .history, .backup or .partial file): pass %f / %p from PostgreSQL"
    )))
}

pub fn check_source(source: &str) -> Result<()> {
    let ok = !source.is_empty()
        && source.len() <= 64
        && source.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !source.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("WAL source {source:?}: use 1-64 letters, digits, '.', '_' or '-'")))
    }
}

pub fn object_key(source: &str, name: &str) -> String {
    crate::format::layout::wal_file(source, name)
}

pub(crate) fn source_key(source: &str) -> String {
    crate::format::layout::wal_source_record(source)
}

/// Read the long page header at the start of a segment.
pub fn segment_info(name: &str, data: &[u8]) -> Result<SourceInfo> {
    segment_info_of(name, data, data.len() as u64)
}

/// [`segment_info`] from a segment's first bytes and its length.
fn segment_info_of(name: &str, data: &[u8], len: u64) -> Result<SourceInfo> {
    // XLogLongPageHeaderData: xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64,
    // xlp_rem_len u32, (padding to 24), xlp_sysid u64, xlp_seg_size u32, xlp_xlog_blcksz u32.
    const XLP_LONG_HEADER: u16 = 0x0002;
    if data.len() < 40 || len < 40 {
        return Err(Error::invalid(format!("{name} is {len} bytes: too short for a WAL segment")));
    }
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let info = u16_at(2);
    if info & XLP_LONG_HEADER == 0 {
        return Err(Error::invalid(format!(
            "{name} does not start with a long WAL page header: it is not the start of a WAL segment"
        )));
    }
    let info = SourceInfo {
        system_identifier: u64::from_le_bytes(data[24..32].try_into().unwrap()),
        page_magic: u16_at(0),
        segment_size: u32_at(32),
        block_size: u32_at(36),
    };
    if !info.segment_size.is_power_of_two() || len != u64::from(info.segment_size) {
        return Err(Error::invalid(format!(
            "{name} is {len} bytes but its header says segments are {} bytes",
            info.segment_size
        )));
    }
    Ok(info)
}

/// A segment's first page must say it is this segment: `xlp_pageaddr` is the LSN where
/// the segment named `name` starts. A file stored under another segment's name (moved,
/// or pushed with the wrong %p) would otherwise be replayed as this one, and PostgreSQL
/// takes the mismatch for the end of the WAL.
pub fn check_segment_place(name: &str, data: &[u8]) -> Result<()> {
    check_place(name, data, data.len() as u64)
}

/// [`check_segment_place`] on the first 40 bytes of a file of `len` bytes.
pub fn check_place(name: &str, data: &[u8], len: u64) -> Result<()> {
    let WalKind::Segment { log, seg, .. } = classify(name)? else { return Ok(()) };
    let info = segment_info_of(name, data, len)?;
    let per_log = 0x1_0000_0000u64 / u64::from(info.segment_size);
    let start = (u64::from(log) * per_log + u64::from(seg)) * u64::from(info.segment_size);
    let page_addr = u64::from_le_bytes(data[8..16].try_into().unwrap());
    if page_addr != start {
        return Err(Error::corrupt(format!(
            "{name} holds the WAL starting at {}, not at {} where this segment starts: the file was stored under \
             the wrong name",
            format_lsn(page_addr),
            format_lsn(start)
        )));
    }
    Ok(())
}

pub(crate) fn seal(key: &MasterKey, object: &str, data: &[u8]) -> Vec<u8> {
    let mut plain = (object.len() as u16).to_le_bytes().to_vec();
    plain.extend_from_slice(object.as_bytes());
    plain.extend_from_slice(&(data.len() as u64).to_le_bytes());
    // Compress on every core: a push is latency the server waits for.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    plain.extend_from_slice(&crate::compress::encode_parallel(data, LEVEL, cores));
    object::seal_precompressed(key, WAL_MAGIC_BOUND, &plain)
}

/// A WAL object's payload (length and blob plaintext), after checking that the object
/// is the one stored under `object`: a bound object (`CAIRNwl2`) names its own key in
/// its authenticated plaintext; an older one (`CAIRNwl1`) cannot say.
pub(crate) fn open_payload(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    if !sealed.starts_with(WAL_MAGIC_BOUND) {
        return object::open(key, WAL_MAGIC, object, sealed);
    }
    let plain = object::open(key, WAL_MAGIC_BOUND, object, sealed)?;
    let bound_len = plain.get(..2).map_or(usize::MAX, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let Some(bound) = plain.get(2..2usize.saturating_add(bound_len)) else {
        return Err(Error::corrupt(format!("{object} is too short")));
    };
    if bound != object.as_bytes() {
        return Err(Error::corrupt(format!(
            "{object} holds the file archived as {}: it was stored under the wrong name (copied or moved in the \
             repository); put the right file back, or remove it",
            String::from_utf8_lossy(bound)
        )));
    }
    Ok(plain[2 + bound_len..].to_vec())
}

pub(crate) fn open(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let plain = open_payload(key, object, sealed)?;
    if plain.len() < 8 {
        return Err(Error::corrupt(format!("{object} is too short")));
    }
    let len = u64::from_le_bytes(plain[..8].try_into().unwrap()) as usize;
    crate::compress::decode(plain[8..].to_vec(), len).map_err(|e| e.context(object))
}

/// Parse an LSN written as `X/Y` (hex).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The name of the segment holding `lsn` on `timeline`.
pub fn segment_of(timeline: u32, lsn: u64, segment_size: u32) -> String {
    segment_name(timeline, lsn / u64::from(segment_size), segment_size)
}

pub fn segment_name(timeline: u32, number: u64, segment_size: u32) -> String {
    let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", number / per_log, number % per_log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_classified() {
        assert_eq!(classify("000000010000000A000000FF").unwrap(), WalKind::Segment { timeline: 1, log: 10, seg: 255 });
        assert_eq!(classify("00000002.history").unwrap(), WalKind::History { timeline: 2 });
        assert_eq!(classify("000000010000000000000002.00000028.backup").unwrap(), WalKind::Backup);
        assert_eq!(classify("000000010000000000000002.partial").unwrap(), WalKind::Partial);
        for bad in ["", "../etc/passwd", "00000001000000000000000", "000000010000000000000002.backup", "x.history"] {
            assert!(classify(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(1, 0x1FF, 16 << 20), "0000000100000001000000FF");
        assert_eq!(segment_name(3, 256, 16 << 20), "000000030000000100000000");
    }

    #[test]
    fn sealed_wal_opens_and_detects_tampering() {
        let key = MasterKey::random();
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut sealed = seal(&key, "wal/s/w", &data);
        assert_eq!(open(&key, "wal/s/w", &sealed).unwrap(), data);
        let moved = open(&key, "wal/t/w", &sealed).unwrap_err();
        assert!(moved.message().contains("holds the file archived as wal/s/w"), "{}", moved.message());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(open(&key, "wal/s/w", &sealed).is_err());
    }
}
