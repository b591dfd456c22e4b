//! The data pass of a tree restore: each pack fetched once as a few coalesced ranges,
//! each blob decrypted once and written with `pwrite` to every place it belongs, runs of
//! zeros left as holes; the write that completes a file sets its metadata.

use crate::beneath::Beneath;
use crate::buffers::{with_huge_capacity, SpareBuffers};
use crate::catalog::BlobLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{BlobId, PackId};
use crate::ops::restore::create::Created;
use crate::ops::restore::plan::{is_damage, Damage, PlannedFile, Target, COALESCE_GAP, MAX_RANGE};
use crate::progress::Progress;
use crate::repo::load::{open_with_into, with_pack_range};
use crate::repo::Repository;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Fetch each pack once and write every blob to all its targets. Damaged or missing data
/// skips the files it feeds (their temporary files are removed by the caller) and the rest
/// go on; any other failure stops. Returns the first damage seen, if any.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_data(
    repo: &Repository,
    beneath: &Arc<Beneath>,
    files: Arc<Vec<PlannedFile>>,
    blobs: HashMap<BlobId, (BlobLocation, Vec<Target>)>,
    created: Arc<Created>,
    root: bool,
    warnings: &Mutex<Vec<String>>,
    progress: &dyn Progress,
) -> Result<Option<Error>> {
    let mut by_pack: BTreeMap<PackId, Vec<(BlobLocation, Vec<Target>)>> = BTreeMap::new();
    for (_, (location, targets)) in blobs {
        by_pack.entry(location.pack).or_default().push((location, targets));
    }
    let mut ranges = Vec::new();
    for (pack, mut wanted) in by_pack {
        wanted.sort_by_key(|(l, _)| l.entry.offset);
        let mut current: Vec<(BlobLocation, Vec<Target>)> = Vec::new();
        for item in wanted {
            let split = current.last().is_some_and(|(last, _)| item.0.entry.offset > last.entry.end() + COALESCE_GAP)
                || current.first().is_some_and(|(first, _)| item.0.entry.end() - first.entry.offset > MAX_RANGE);
            if split {
                ranges.push((pack, std::mem::take(&mut current)));
            }
            current.push(item);
        }
        if !current.is_empty() {
            ranges.push((pack, current));
        }
    }
    // First the ranges whose files the creator makes first, so writers rarely wait for it.
    let last_created = |items: &[(BlobLocation, Vec<Target>)]| {
        items.iter().flat_map(|(_, targets)| targets).map(|t| files[t.file].created).max()
    };
    ranges.sort_by_cached_key(|(_, items)| last_created(items));
    let connections = repo.backend().connections();
    let buffers =
        Arc::new(RangeBuffers { runs: SpareBuffers::new(connections), scratch: SpareBuffers::new(connections) });
    let damage = Mutex::new(Damage::default());
    futures::stream::iter(ranges)
        .map(|(pack, items)| {
            let files = files.clone();
            let created = created.clone();
            let buffers = buffers.clone();
            let beneath = beneath.clone();
            let damage = &damage;
            async move {
                let start = items[0].0.entry.offset;
                let end = items.iter().map(|(l, _)| l.entry.end()).max().unwrap();
                let key = repo.key().clone();
                let fed: Vec<usize> = items.iter().flat_map(|(_, t)| t.iter().map(|t| t.file)).collect();
                let out = with_pack_range(repo, pack, start..end, move |bytes| {
                    let context = RangeContext { key: &key, files: &files, beneath: &beneath, created: &created, root };
                    write_range(&context, start, bytes, &items, &buffers)
                })
                .await;
                match out {
                    Ok(range) => {
                        warnings.lock().unwrap_or_else(|p| p.into_inner()).extend(range.warnings);
                        if let Some(e) = range.damage.first {
                            damage.lock().unwrap_or_else(|p| p.into_inner()).add(range.damage.files, e);
                        }
                        Ok(range.written)
                    }
                    Err(e) if is_damage(&e) => {
                        damage.lock().unwrap_or_else(|p| p.into_inner()).add(fed, e.with_kind(ErrorKind::Corrupt));
                        Ok(0)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(connections)
        .try_for_each(|written| {
            progress.advance(written);
            async { Ok(()) }
        })
        .await?;
    Ok(damage.into_inner().unwrap_or_else(|p| p.into_inner()).first)
}

/// What every range writer shares.
struct RangeContext<'a> {
    pub(super) key: &'a crate::crypto::MasterKey,
    pub(super) files: &'a [PlannedFile],
    pub(super) beneath: &'a Beneath,
    pub(super) created: &'a Created,
    pub(super) root: bool,
}

/// What writing one range did.
struct RangeOutcome {
    pub(super) written: u64,
    pub(super) warnings: Vec<String>,
    pub(super) damage: Damage,
}

/// Decrypt the blobs of one range and write each to its places. Consecutive blobs that
/// continue the same file are decompressed back to back into one reused buffer and
/// written with one `pwrite` of up to [`RUN_BYTES`] (fewer system calls; no measurable
/// difference in time on the benchmark tree). A file whose last bytes this writes gets
/// its metadata here, through the open file, and is renamed into place. A blob that
/// fails to decrypt is damage: its files are skipped, the other blobs written.
fn write_range(
    context: &RangeContext,
    start: u64,
    bytes: &[u8],
    items: &[(BlobLocation, Vec<Target>)],
    buffers: &RangeBuffers,
) -> Result<RangeOutcome> {
    let mut out = RangeWriter { context, open: Vec::new(), written: 0, warnings: Vec::new() };
    let mut damage = Damage::default();
    let mut run = buffers.runs.take().unwrap_or_else(|| with_huge_capacity(RUN_BYTES + MAX_BLOB));
    let mut scratch = buffers.scratch.take().unwrap_or_default();
    // Where the data in `run` goes: a file and the offset of its first byte.
    let mut run_at: Option<(usize, u64)> = None;
    // A range lies within one pack: derive its key once.
    let pack_key = context.key.pack_key(&items[0].0.salt);
    for (location, targets) in items {
        let from = (location.entry.offset - start) as usize;
        let sealed = &bytes[from..from + location.entry.length as usize];
        let continues = run_at.and_then(|(file, offset)| {
            targets.iter().position(|t| t.file == file && t.offset == offset + run.len() as u64)
        });
        let primary = continues.unwrap_or(0);
        if continues.is_none() || run.len() + location.entry.raw_length as usize > RUN_BYTES {
            if let Some((file, offset)) = run_at {
                out.write(file, offset, &run)?;
            }
            run.clear();
            run_at = Some((targets[primary].file, targets[primary].offset));
        }
        let at = run.len();
        if let Err(e) = open_with_into(context.key, &pack_key, location, sealed, &mut scratch, &mut run) {
            run.truncate(at);
            damage.add(targets.iter().map(|t| t.file), e);
            continue;
        }
        // Its other places (the same data stored once, used in several files or twice in
        // one) are written now, from the run.
        for (i, target) in targets.iter().enumerate() {
            if i != primary {
                out.write(target.file, target.offset, &run[at..])?;
            }
        }
    }
    if let Some((file, offset)) = run_at {
        out.write(file, offset, &run)?;
    }
    run.clear();
    buffers.runs.give(run);
    buffers.scratch.give(scratch);
    Ok(RangeOutcome { written: out.written, warnings: out.warnings, damage })
}

/// Buffers of finished ranges, one of each per read in flight.
struct RangeBuffers {
    pub(super) runs: SpareBuffers,
    /// Decrypted blobs before decompression.
    pub(super) scratch: SpareBuffers,
}

/// Bytes of one file's consecutive blobs gathered into one write.
const RUN_BYTES: usize = 1 << 20;

/// Room for one more blob past [`RUN_BYTES`] before a run is cut (the largest chunk the
/// chunker makes by default; larger ones only make the buffer grow once).
const MAX_BLOB: usize = 512 << 10;

/// Files one range writer keeps open at most: a range of many small files must not
/// exhaust the descriptor limit (each is closed once complete; beyond this the
/// longest-open goes).
const OPEN_FILES: usize = 16;

/// The files one range writes into, each opened once while it is being written.
struct RangeWriter<'a> {
    pub(super) context: &'a RangeContext<'a>,
    pub(super) open: Vec<(usize, std::fs::File)>,
    pub(super) written: u64,
    pub(super) warnings: Vec<String>,
}

impl RangeWriter<'_> {
    pub(super) fn write(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let context = self.context;
        let planned = &context.files[index];
        let at = match self.open.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                context.created.wait_for(planned.created)?;
                let fd = context
                    .beneath
                    .resolve(&planned.temp_rel(), rustix::fs::OFlags::WRONLY)
                    .map_err(|e| Error::io("open", &context.beneath.display(&planned.rel), e))?;
                if self.open.len() == OPEN_FILES {
                    self.open.remove(0);
                }
                self.open.push((index, std::fs::File::from(fd)));
                self.open.len() - 1
            }
        };
        let file = &self.open[at].1;
        write_leaving_holes(file, data, offset)
            .map_err(|e| Error::io("write", &context.beneath.display(&planned.rel), e))?;
        let len = data.len() as u64;
        self.written += len;
        if planned.remaining.fetch_sub(len, Ordering::AcqRel) == len {
            let (_, file) = self.open.remove(at);
            let path = || context.beneath.display(&planned.rel);
            // Blocks of zeros were not written: a file that ends in them gets its length.
            file.set_len(planned.size).map_err(|e| Error::io("size", &path(), e))?;
            if let Err(e) = planned.meta.apply_to_file(&file, context.root) {
                self.warnings.push(format!("{}: cannot restore metadata: {e}", path().display()));
            }
            drop(file);
            let (parent, name) = context.beneath.parent(&planned.rel)?;
            context.beneath.check_file_place(parent.as_fd(), name, &planned.rel)?;
            context.beneath.rename(parent.as_fd(), &planned.temp, name, &planned.rel)?;
            planned.done.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Write `data` at `offset` into a file made at its full size, skipping every 4 KiB block
/// (aligned in the file) that holds only zeros: it is already there, as a hole, so a
/// sparse file restores sparse. Data without such blocks is one `pwrite`.
fn write_leaving_holes(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 4096;
    let mut start = 0usize;
    let mut at = 0usize;
    while at < data.len() {
        let next = ((offset + at as u64) / BLOCK + 1) * BLOCK;
        let end = data.len().min((next - offset) as usize);
        if data[at..end].iter().all(|&b| b == 0) {
            if start < at {
                file.write_all_at(&data[start..at], offset + start as u64)?;
            }
            start = end;
        }
        at = end;
    }
    if start < data.len() {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}
