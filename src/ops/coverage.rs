//! Verification coverage: which packs `check` read, and when, recorded in the repository
//! so every host sees it (docs/format.md §21).
//!
//! Each check that reads data writes one record `coverage/<random id>`: an object file
//! (magic `CAIRNcv1`) with the time and the packs it read and found intact. The last
//! read of a pack is the newest record that lists it. `check --read-data-subset PCT%`
//! reads the packs read longest ago first (never read before all others). When more than
//! [`MAX_RECORDS`] records pile up, a check merges them into one.

use crate::backend::{Backend, WriteMode};
use crate::crypto::MasterKey;
use crate::error::{ErrorKind, Result};
use crate::format::layout as keys;
use crate::format::object;
use crate::id::PackId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::format::layout::{COVERAGE as PREFIX, COVERAGE_MAGIC as MAGIC};
/// Records kept before they are merged.
pub const MAX_RECORDS: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    version: u32,
    /// When the packs were read (the checking machine's clock: this orders reads for
    /// scheduling, and safety never depends on it).
    time: jiff::Timestamp,
    host: String,
    packs: Vec<(PackId, jiff::Timestamp)>,
}

/// When each pack was last read and found intact.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    pub last_read: HashMap<PackId, jiff::Timestamp>,
    records: Vec<String>,
    /// Records that could not be read (each message names the object).
    pub damaged: Vec<String>,
}

impl Coverage {
    /// Read every record.
    pub async fn load(backend: &Backend, key: &MasterKey) -> Result<Coverage> {
        let mut coverage = Coverage::default();
        for object in backend.list(PREFIX).await? {
            let bytes = match backend.get(&object.key).await {
                Ok(b) => b,
                // Merged away by another check since the listing.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // A damaged record is reported and left alone; the others still count.
            let record = object::open(key, MAGIC, &object.key, &bytes).and_then(|plain| {
                serde_json::from_slice::<Record>(&plain)
                    .map_err(|e| crate::Error::corrupt(format!("{} is not a coverage record: {e}", object.key)))
            });
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    coverage.damaged.push(e.to_string());
                    continue;
                }
            };
            for (pack, time) in record.packs {
                let slot = coverage.last_read.entry(pack).or_insert(time);
                if time > *slot {
                    *slot = time;
                }
            }
            coverage.records.push(object.key);
        }
        Ok(coverage)
    }

    /// The share of `packs` read within `days` days before `now`.
    pub fn share_within(&self, packs: &[PackId], days: u32, now: jiff::Timestamp) -> f64 {
        if packs.is_empty() {
            return 1.0;
        }
        let since = now.as_second() - i64::from(days) * 86_400;
        let read = packs.iter().filter(|p| self.last_read.get(p).is_some_and(|t| t.as_second() >= since)).count();
        read as f64 / packs.len() as f64
    }

    /// The `share` (in percent) of `packs` read longest ago, never-read ones first.
    pub fn oldest(&self, packs: &[PackId], percent: f64) -> Vec<PackId> {
        let count = ((packs.len() as f64 * percent / 100.0).ceil() as usize).clamp(1, packs.len().max(1));
        let mut sorted: Vec<PackId> = packs.to_vec();
        sorted.sort_by_key(|p| (self.last_read.get(p).map(|t| t.as_second()).unwrap_or(i64::MIN), *p));
        sorted.truncate(count.min(packs.len()));
        sorted
    }

    /// Record that `read` were read now and found intact; merge the records when there
    /// are too many, keeping only packs that still exist (`existing`).
    pub async fn record(
        &mut self,
        backend: &Backend,
        key: &MasterKey,
        read: &[PackId],
        existing: &[PackId],
    ) -> Result<()> {
        let now = jiff::Timestamp::now();
        for pack in read {
            self.last_read.insert(*pack, now);
        }
        let merge = self.records.len() + 1 > MAX_RECORDS;
        let packs: Vec<(PackId, jiff::Timestamp)> = if merge {
            let existing: std::collections::HashSet<&PackId> = existing.iter().collect();
            self.last_read.iter().filter(|(p, _)| existing.contains(p)).map(|(p, t)| (*p, *t)).collect()
        } else {
            read.iter().map(|p| (*p, now)).collect()
        };
        if packs.is_empty() && !merge {
            return Ok(());
        }
        let record = Record { version: 1, time: now, host: crate::repo::hostname(), packs };
        let name = format!("{PREFIX}{}", hex::encode(crate::crypto::random_bytes::<16>()));
        let sealed = object::seal(key, MAGIC, &serde_json::to_vec(&record).expect("records serialize"));
        backend.put(&name, sealed.into(), WriteMode::Create).await?;
        if merge {
            for old in std::mem::take(&mut self.records) {
                backend.delete(&old).await?;
            }
        }
        self.records.push(name);
        Ok(())
    }
}

/// Every pack stored.
pub async fn stored_packs(backend: &Backend) -> Result<Vec<PackId>> {
    Ok(backend.list(keys::DATA).await?.iter().filter_map(|o| PackId::from_hex(keys::name(&o.key)).ok()).collect())
}
