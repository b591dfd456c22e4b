//! PostgreSQL WAL archive: `cairn wal push|fetch|list` (docs/postgres.md, docs/format.md §18).
//!
//! No index, no catalog, no chunking: a push is one create-only write of a sealed object
//! ([`crate::format::wal`]), a fetch one read, so archiving keeps up with the server.
//! `wal/<source>/SOURCE` records the cluster the source belongs to (system identifier,
//! WAL page magic, segment size); a different cluster is refused.

use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{Error, ErrorKind, Result};
use crate::format::object;
use serde::Serialize;
use std::path::Path;

use crate::format::layout::WAL_MAGIC;
/// The WAL vocabulary callers need with the archive: names, LSNs, the SOURCE record.
pub use crate::format::wal::{
    check_place, check_source, classify, format_lsn, object_key, parse_lsn, segment_name, segment_of, SourceInfo,
    WalKind,
};
use crate::format::wal::{check_segment_place, open, open_payload, seal, segment_info, source_key};

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
    for object in backend.list(&crate::format::layout::wal_source(source)).await? {
        let name = crate::format::layout::name(&object.key).to_string();
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
