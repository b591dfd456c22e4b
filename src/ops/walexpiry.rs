//! WAL retention tied to base backups (docs/operations.md, "WAL retention").
//!
//! For one WAL source, given its retained `pg-base` snapshots and a PITR window `D`:
//! * the **anchor** is the newest base backup taken at least `D` before the newest base
//!   backup (or the oldest base, if none is that old). Every WAL file from the anchor's
//!   start on is kept, so any time in the window (and since the anchor) can be recovered;
//! * every older retained base keeps the segments from its start to its stop, so each
//!   stays restorable to its own consistent point;
//! * timeline `.history` files are always kept;
//! * every other segment, `.partial` and `.backup` file is removed.
//!
//! The window is measured from the newest base backup's time, never from the clock of the
//! machine running the expiry: a clock far off changes nothing. Without any base backup
//! of a source, nothing of it expires.

use crate::error::{Error, Result};
use crate::format::snapshot::SnapshotFile;
use crate::id::SnapshotId;
use crate::pg::wal::{self, WalKind};
use crate::repo::Repository;
use serde::Serialize;

/// A run of WAL kept, and why.
#[derive(Debug, Clone, Serialize)]
pub struct KeptRange {
    /// First segment kept (as a segment name on the base's timeline).
    pub from: String,
    /// Last segment kept; `None`: everything after `from`.
    pub to: Option<String>,
    pub reason: String,
}

/// What expiry keeps and removes for one source.
#[derive(Debug, Clone, Serialize)]
pub struct WalPlan {
    pub source: String,
    pub kept: Vec<KeptRange>,
    /// Files to remove, by name.
    pub remove: Vec<String>,
    pub remove_bytes: u64,
    pub kept_files: u64,
}

/// A segment's place in the WAL, whatever its timeline: (log, seg).
type Position = (u32, u32);

fn position(name: &str) -> Option<Position> {
    match wal::classify(name).ok()? {
        WalKind::Segment { log, seg, .. } => Some((log, seg)),
        WalKind::Partial | WalKind::Backup => match wal::classify(name.get(..24)?).ok()? {
            WalKind::Segment { log, seg, .. } => Some((log, seg)),
            _ => None,
        },
        WalKind::History { .. } => None,
    }
}

fn meta<'a>(snapshot: &'a SnapshotFile, key: &str) -> Option<&'a str> {
    snapshot.meta.get(key).and_then(|v| v.as_str())
}

/// The retained base backups of `source`, oldest first.
pub fn bases(snapshots: &[(SnapshotId, SnapshotFile)], source: &str) -> Vec<(SnapshotId, SnapshotFile)> {
    let mut out: Vec<_> =
        snapshots.iter().filter(|(_, s)| s.kind == "pg-base" && meta(s, "source") == Some(source)).cloned().collect();
    out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    out
}

/// Which WAL of `source` to keep and remove, for the snapshots that remain.
pub async fn plan(
    repo: &Repository,
    snapshots: &[(SnapshotId, SnapshotFile)],
    source: &str,
    within: Option<jiff::Span>,
) -> Result<WalPlan> {
    wal::check_source(source)?;
    let bases = bases(snapshots, source);
    // (first position kept, last position kept (None: onwards), why)
    let mut kept: Vec<(Position, Option<Position>, KeptRange)> = Vec::new();
    let span = |s: &SnapshotFile, key: &str| -> Result<(String, (u32, u32))> {
        let name = meta(s, key).ok_or_else(|| Error::corrupt(format!("base backup snapshot lacks {key}")))?;
        let pos =
            position(name).ok_or_else(|| Error::corrupt(format!("base backup snapshot has a bad {key} {name:?}")))?;
        Ok((name.to_string(), pos))
    };
    if let Some((newest_id, newest)) = bases.last() {
        let cutoff = match within {
            Some(d) => Some(
                newest
                    .time
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .checked_sub(d)
                    .map_err(|e| Error::invalid(format!("--keep-wal-within: {e}")))?
                    .timestamp(),
            ),
            None => None,
        };
        let anchor = cutoff.and_then(|c| bases.iter().rposition(|(_, b)| b.time <= c)).unwrap_or(0);
        let (anchor_id, anchor_base) = &bases[anchor];
        let (from, pos) = span(anchor_base, "start_wal")?;
        let reason = match within {
            Some(w) => format!(
                "PITR window {w:#}: all WAL from the start of base {} ({}), the newest base at least that much \
                 older than the newest base {} ({})",
                anchor_id.short(),
                anchor_base.time.strftime("%Y-%m-%d %H:%M"),
                newest_id.short(),
                newest.time.strftime("%Y-%m-%d %H:%M"),
            ),
            None => format!(
                "no --keep-wal-within: everything from the oldest base backup {} ({}) on",
                anchor_id.short(),
                anchor_base.time.strftime("%Y-%m-%d %H:%M")
            ),
        };
        kept.push((pos, None, KeptRange { from, to: None, reason }));
        for (id, base) in &bases[..anchor] {
            let (from, start) = span(base, "start_wal")?;
            let (to, stop) = span(base, "stop_wal")?;
            let reason = format!(
                "base {} ({}): its start to its stop, to restore it to its consistent point",
                id.short(),
                base.time.strftime("%Y-%m-%d %H:%M")
            );
            kept.push((start, Some(stop), KeptRange { from, to: Some(to), reason }));
        }
    }
    let mut plan =
        WalPlan { source: source.into(), kept: Vec::new(), remove: Vec::new(), remove_bytes: 0, kept_files: 0 };
    let listed = repo.backend().list(&crate::format::layout::wal_source(source)).await?;
    for object in listed {
        let name = crate::format::layout::name(&object.key).to_string();
        let keep = match position(&name) {
            // SOURCE, .history and anything unrecognised stay.
            None => true,
            // With no base backup, nothing expires.
            Some(_) if kept.is_empty() => true,
            Some(pos) => kept.iter().any(|(from, to, _)| pos >= *from && to.is_none_or(|t| pos <= t)),
        };
        if keep {
            plan.kept_files += 1;
        } else {
            plan.remove_bytes += object.size;
            plan.remove.push(name);
        }
    }
    plan.remove.sort();
    plan.kept = kept.into_iter().map(|(_, _, r)| r).collect();
    Ok(plan)
}

/// Remove what `plan` says. Returns the number of files removed.
pub async fn expire(repo: &Repository, plan: &WalPlan) -> Result<u64> {
    for name in &plan.remove {
        repo.backend().delete(&wal::object_key(&plan.source, name)).await?;
    }
    Ok(plan.remove.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn positions_ignore_the_timeline_and_cover_partial_and_backup_files() {
        assert_eq!(position("000000010000000200000003"), Some((2, 3)));
        assert_eq!(position("000000020000000200000003.partial"), Some((2, 3)));
        assert_eq!(position("000000010000000200000003.00000028.backup"), Some((2, 3)));
        assert_eq!(position("00000002.history"), None);
        assert_eq!(position("SOURCE"), None);
        assert!(position("000000010000000200000003") < position("000000010000000300000000"));
    }
}
