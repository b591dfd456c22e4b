//! PostgreSQL WAL archive: `cairn wal push|fetch|list` (docs/postgres.md, docs/format.md §18).
//!
//! Each archived file is one write-once object `wal/<source>/<file name>`: an object file
//! (magic `CAIRNwl1`) whose plaintext is the file's length (u64 LE) followed by a blob
//! plaintext (compression flag and data, [`crate::compress`]). No index, no catalog, no
//! chunking: a push is one create-only write, a fetch one read, so archiving keeps up
//! with the server. `wal/<source>/SOURCE` records the cluster the source belongs to
//! (system identifier, WAL page magic, segment size); a different cluster is refused.

use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use crate::object;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `SOURCE` record, and WAL objects written before their plaintext named them.
pub const WAL_MAGIC: &[u8; 8] = b"CAIRNwl1";
/// WAL objects whose authenticated plaintext starts with their own object key, so that
/// one copied or moved to another name or source is refused instead of replayed.
pub const WAL_MAGIC_BOUND: &[u8; 8] = b"CAIRNwl2";
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
    format!("wal/{source}/{name}")
}

fn source_key(source: &str) -> String {
    format!("wal/{source}/SOURCE")
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

fn seal(key: &MasterKey, object: &str, data: &[u8]) -> Vec<u8> {
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
fn open_payload(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Vec<u8>> {
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

fn open(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let plain = open_payload(key, object, sealed)?;
    if plain.len() < 8 {
        return Err(Error::corrupt(format!("{object} is too short")));
    }
    let len = u64::from_le_bytes(plain[..8].try_into().unwrap()) as usize;
    crate::compress::decode(plain[8..].to_vec(), len).map_err(|e| e.context(object))
}

/// The source's recorded cluster, if any file was pushed.
pub async fn source_info(backend: &Backend, key: &MasterKey, source: &str) -> Result<Option<SourceInfo>> {
    let name = source_key(source);
    match backend.get(&name).await {
        Ok(bytes) => {
            let plain = object::open(key, WAL_MAGIC, &name, &bytes)?;
            Ok(Some(serde_json::from_slice(&plain).map_err(|e| Error::corrupt(format!("{name}: {e}")))?))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Make sure `info` is the source's cluster; the first segment pushed records it.
async fn claim_source(backend: &Backend, key: &MasterKey, source: &str, info: &SourceInfo) -> Result<()> {
    let recorded = match source_info(backend, key, source).await? {
        Some(recorded) => recorded,
        None => {
            let sealed = object::seal(key, WAL_MAGIC, &serde_json::to_vec(info).expect("serializes"));
            match backend.put(&source_key(source), sealed.into(), WriteMode::Create).await {
                Ok(()) => return Ok(()),
                // Another push recorded it first: compare with what it recorded.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    source_info(backend, key, source).await?.ok_or_else(|| Error::not_found("SOURCE vanished"))?
                }
                Err(e) => return Err(e),
            }
        }
    };
    if recorded.system_identifier != info.system_identifier {
        return Err(Error::invalid(format!(
            "WAL source {source:?} belongs to the cluster with system identifier {}, but this segment comes from {}: \
             a different cluster must archive under its own --source (check archive_command and the data directory)",
            recorded.system_identifier, info.system_identifier
        )));
    }
    if recorded.page_magic != info.page_magic || recorded.segment_size != info.segment_size {
        return Err(Error::invalid(format!(
            "WAL source {source:?} holds WAL of page magic {:#06x} and {}-byte segments; this segment has {:#06x} and {}: \
             after a major upgrade or initdb, archive under a new --source",
            recorded.page_magic, recorded.segment_size, info.page_magic, info.segment_size
        )));
    }
    Ok(())
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The archive already holds this file with identical content.
    AlreadyArchived,
}

/// Archive one file; returns once it is durable.
pub async fn push(backend: &Backend, key: &MasterKey, source: &str, path: &Path) -> Result<Pushed> {
    check_source(source)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{} is not a WAL file path: pass %p from PostgreSQL", path.display())))?;
    let kind = classify(name)?;
    let data = std::fs::read(path).map_err(|e| Error::io("read WAL file", path, e))?;
    if let WalKind::Segment { .. } = kind {
        check_segment_place(name, &data).map_err(|e| Error::invalid(e.message().to_string()))?;
        claim_source(backend, key, source, &segment_info(name, &data)?).await?;
    }
    let object = object_key(source, name);
    let sealed = seal(key, &object, &data);
    match backend.put(&object, sealed.into(), WriteMode::Create).await {
        Ok(()) => Ok(Pushed::Stored),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let existing = open(key, &object, &backend.get(&object).await?)?;
            if existing == data {
                Ok(Pushed::AlreadyArchived)
            } else {
                Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{name} is already archived in source {source:?} with different content: check that no other \
                         cluster or server archives into this source, and that this server's timeline history is right"
                    ),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

/// Read one archived file into memory (`NotFound` if it is not archived).
pub async fn read(backend: &Backend, key: &MasterKey, source: &str, name: &str) -> Result<Vec<u8>> {
    check_source(source)?;
    classify(name)?;
    let object = object_key(source, name);
    open(key, &object, &backend.get(&object).await?)
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

/// The temporary name `name` is written under beside `dest`, before its rename.
fn temp_beside(dest: &Path, name: &str) -> std::path::PathBuf {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    dir.join(format!(".{}.cairn-{}", name, hex::encode(crate::crypto::random_bytes::<4>())))
}

/// Write `data` to `dest` through a temporary file beside it and a rename, so `dest` is
/// never partial. Not synced: PostgreSQL needs a restored file only while it replays it,
/// and after a crash recovery asks for it again (pgBackRest's archive-get does not sync
/// either); the fsync of the file and its directory was work no reader needed (1–2 ms
/// a segment on this machine's disk, more on a slow one).
pub fn write_whole(dest: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = temp_beside(dest, name);
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(data)?;
        std::fs::rename(&tmp, dest)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("write restored WAL file", dest, e));
    }
    Ok(())
}

/// Restore one archived file to `dest` through a temporary file and a rename, decoding
/// straight into the file: each zstd frame of the segment on its own thread, through a
/// 1 MiB buffer, written at its offset. (Decoding to a 16 MiB buffer first cost 4,096
/// fresh pages per segment, and one core.) `Ok(None)`: not archived.
pub async fn fetch(backend: &Backend, key: &MasterKey, source: &str, name: &str, dest: &Path) -> Result<Option<u64>> {
    check_source(source)?;
    classify(name)?;
    let object = object_key(source, name);
    let sealed = match backend.get(&object).await {
        Ok(sealed) => sealed,
        // The end of the archive, if this is an archive at all: a source with nothing in
        // it (a misspelt --source) must not read to PostgreSQL as the end of the WAL.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return match source_info(backend, key, source).await? {
                Some(_) => Ok(None),
                None => Err(Error::not_found(format!(
                    "WAL source {source:?} has nothing archived in {} (no SOURCE record): check --source",
                    backend.location()
                ))),
            };
        }
        Err(e) => return Err(e),
    };
    let plain = open_payload(key, &object, &sealed)?;
    drop(sealed);
    let tmp = temp_beside(dest, name);
    let written = (|| -> Result<u64> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("write restored WAL file", &tmp, e))?;
        let len = decode_into_file(&object, &plain, &file)?;
        if let Ok(WalKind::Segment { .. }) = classify(name) {
            let mut head = [0u8; 40];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
                .map_err(|e| Error::io("read back", &tmp, e))?;
            check_place(name, &head, len).map_err(|e| Error::corrupt(format!("{object}: {}", e.message())))?;
        }
        std::fs::rename(&tmp, dest).map_err(|e| Error::io("write restored WAL file", dest, e))?;
        Ok(len)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(Some)
}

/// Write a WAL object's plaintext (length, compression flag, data) decoded into `file`;
/// returns the length, which must be the one recorded.
fn decode_into_file(object: &str, plain: &[u8], file: &std::fs::File) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let bad = |why: String| Error::corrupt(format!("{object}: {why}"));
    if plain.len() < 9 {
        return Err(bad("too short".into()));
    }
    let len = u64::from_le_bytes(plain[..8].try_into().unwrap());
    let data = &plain[9..];
    let write_err = |e: std::io::Error| Error::io("write restored WAL file", Path::new(object), e);
    match plain[8] {
        0 if data.len() as u64 == len => {
            file.write_all_at(data, 0).map_err(write_err)?;
            return Ok(len);
        }
        1 => {}
        flag => return Err(bad(format!("compression flag {flag} with {} bytes for {len}", data.len()))),
    }
    // The frames and where each one's output goes.
    let mut frames = Vec::new();
    let (mut at, mut offset) = (0usize, 0u64);
    while at < data.len() {
        let size = zstd::zstd_safe::find_frame_compressed_size(&data[at..])
            .map_err(|_| bad(format!("no whole zstd frame at byte {at}")))?;
        let frame = &data[at..at + size];
        let content = zstd::zstd_safe::get_frame_content_size(frame).ok().flatten();
        frames.push((frame, offset, content));
        at += size;
        match content {
            Some(n) => offset += n,
            None => break,
        }
    }
    let known = frames.iter().all(|f| f.2.is_some()) && at == data.len() && offset == len;
    let decode = |frame: &[u8], start: u64, expect: Option<u64>| -> Result<u64> {
        let mut decoder = zstd::stream::read::Decoder::with_buffer(frame).map_err(|e| bad(e.to_string()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n =
                std::io::Read::read(&mut decoder, &mut buf).map_err(|e| bad(format!("does not decompress: {e}")))?;
            if n == 0 {
                break;
            }
            if expect.is_some_and(|e| done + n as u64 > e) || start + done + n as u64 > len {
                return Err(bad(format!("decompresses to more than its recorded {len} bytes")));
            }
            file.write_all_at(&buf[..n], start + done).map_err(write_err)?;
            done += n as u64;
        }
        Ok(done)
    };
    let total = if known {
        let results: Vec<Result<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = frames
                .iter()
                .map(|&(frame, start, content)| scope.spawn(move || decode(frame, start, content)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(bad("decoder panicked".into())))).collect()
        });
        let mut total = 0;
        for (result, (_, _, content)) in results.into_iter().zip(&frames) {
            let n = result?;
            if Some(n) != *content {
                return Err(bad(format!("a frame decompressed to {n} bytes, not the {content:?} it declares")));
            }
            total += n;
        }
        total
    } else {
        decode(data, 0, None)?
    };
    if total != len {
        return Err(bad(format!("decompresses to {total} bytes, not the recorded {len}")));
    }
    Ok(len)
}

/// One archived file, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Archived {
    pub name: String,
    pub stored_bytes: u64,
}

/// A run of consecutive segments on one timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Range {
    pub first: String,
    pub last: String,
    pub segments: u64,
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub timeline: u32,
    pub ranges: Vec<Range>,
    /// Missing segments between ranges: (first missing, last missing).
    pub gaps: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub source: String,
    pub cluster: Option<SourceInfo>,
    pub timelines: Vec<Timeline>,
    pub history: Vec<Archived>,
    pub backup_labels: Vec<Archived>,
    pub partial: Vec<Archived>,
}

pub fn segment_name(timeline: u32, number: u64, segment_size: u32) -> String {
    let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", number / per_log, number % per_log)
}

/// Everything archived for a source: segment ranges and gaps per timeline, and the rest.
pub async fn list(backend: &Backend, key: &MasterKey, source: &str) -> Result<Listing> {
    check_source(source)?;
    let cluster = source_info(backend, key, source).await?;
    let segment_size = cluster.as_ref().map_or(16 << 20, |c| c.segment_size);
    let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
    let mut segments: std::collections::BTreeMap<u32, Vec<(u64, u64)>> = Default::default();
    let mut listing = Listing {
        source: source.into(),
        cluster,
        timelines: vec![],
        history: vec![],
        backup_labels: vec![],
        partial: vec![],
    };
    for object in backend.list(&format!("wal/{source}/")).await? {
        let name = crate::backend::keys::name(&object.key).to_string();
        let archived = Archived { name: name.clone(), stored_bytes: object.size };
        match classify(&name) {
            Ok(WalKind::Segment { timeline, log, seg }) => {
                segments.entry(timeline).or_default().push((u64::from(log) * per_log + u64::from(seg), object.size))
            }
            Ok(WalKind::History { .. }) => listing.history.push(archived),
            Ok(WalKind::Backup) => listing.backup_labels.push(archived),
            Ok(WalKind::Partial) => listing.partial.push(archived),
            Err(_) => {}
        }
    }
    for list in [&mut listing.history, &mut listing.backup_labels, &mut listing.partial] {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for (timeline, mut numbers) in segments {
        numbers.sort();
        let mut ranges: Vec<Range> = Vec::new();
        let mut gaps = Vec::new();
        let mut prev: Option<u64> = None;
        for (n, size) in numbers {
            match (prev, ranges.last_mut()) {
                (Some(p), Some(r)) if n == p + 1 => {
                    r.last = segment_name(timeline, n, segment_size);
                    r.segments += 1;
                    r.stored_bytes += size;
                }
                _ => {
                    if let Some(p) = prev {
                        gaps.push((
                            segment_name(timeline, p + 1, segment_size),
                            segment_name(timeline, n - 1, segment_size),
                        ));
                    }
                    let name = segment_name(timeline, n, segment_size);
                    ranges.push(Range { first: name.clone(), last: name, segments: 1, stored_bytes: size });
                }
            }
            prev = Some(n);
        }
        listing.timelines.push(Timeline { timeline, ranges, gaps });
    }
    Ok(listing)
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
