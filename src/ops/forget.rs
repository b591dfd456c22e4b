//! `cairn forget`: retention policies as restic defines them (docs/operations.md).
//!
//! Snapshots are grouped (by host, kind and name unless told otherwise); within a group,
//! newest first, each rule keeps snapshots on its own:
//! * `last N`: the N newest;
//! * `hourly|daily|weekly|monthly|yearly N`: walking from the newest, a snapshot whose
//!   calendar bucket (in the chosen time zone) differs from the last bucket this rule kept
//!   is kept, until N are kept; so the newest snapshot of each of the N most recent
//!   buckets that have snapshots;
//! * `within D`: every snapshot no older than D before the group's newest snapshot;
//! * `tag T`: every snapshot carrying tag T.
//!
//! A snapshot is kept if any rule keeps it, and every rule that does is reported.

use crate::error::{Error, Result};
use crate::format::snapshot::SnapshotFile;
use crate::id::SnapshotId;
use jiff::tz::TimeZone;
use serde::Serialize;
use std::collections::BTreeMap;

/// How many snapshots a bucket rule keeps: a count, or every bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    N(u32),
    Unlimited,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub last: Option<Count>,
    pub hourly: Option<Count>,
    pub daily: Option<Count>,
    pub weekly: Option<Count>,
    pub monthly: Option<Count>,
    pub yearly: Option<Count>,
    pub within: Option<jiff::Span>,
    pub tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly]
            .iter()
            .all(|c| c.is_none_or(|c| c == Count::N(0)))
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// Which fields group snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub kind: bool,
    pub name: bool,
}

impl GroupBy {
    pub fn parse(text: &str) -> Result<Self> {
        let mut g = GroupBy::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "kind" => g.kind = true,
                "name" => g.name = true,
                other => {
                    return Err(Error::invalid(format!(
                        "--group-by {other:?}: use host, kind and name, comma-separated"
                    )))
                }
            }
        }
        Ok(g)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: jiff::Timestamp,
    pub keep: bool,
    /// The rules that keep it (`daily 3` = kept as the 3rd daily bucket).
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    pub group: GroupKey,
    /// Newest first.
    pub snapshots: Vec<Decision>,
}

/// Parse a restic-style duration: `1y5m7d2h` (years, months, days, hours).
pub fn parse_within(text: &str) -> Result<jiff::Span> {
    let bad = || Error::invalid(format!("duration {text:?}: use one like 1y5m7d2h (years, months, days, hours)"));
    let mut span = jiff::Span::new();
    let mut digits = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        any = true;
        span = match c {
            'y' => span.try_years(n),
            'm' => span.try_months(n),
            'd' => span.try_days(n),
            'h' => span.try_hours(n),
            _ => return Err(bad()),
        }
        .map_err(|_| bad())?;
    }
    if !digits.is_empty() || !any {
        return Err(bad());
    }
    Ok(span)
}

/// The calendar bucket of `time` for a rule, in `tz`.
fn bucket(rule: &str, time: jiff::Timestamp, tz: &TimeZone) -> (i32, i32, i32, i32) {
    let dt = time.to_zoned(tz.clone());
    let (y, m, d, h) = (i32::from(dt.year()), i32::from(dt.month()), i32::from(dt.day()), i32::from(dt.hour()));
    match rule {
        "hourly" => (y, m, d, h),
        "daily" => (y, m, d, 0),
        "weekly" => {
            let week = dt.date().iso_week_date();
            (i32::from(week.year()), i32::from(week.week()), 0, 0)
        }
        "monthly" => (y, m, 0, 0),
        _ => (y, 0, 0, 0),
    }
}

/// Apply `policy` to every group of `snapshots`.
pub fn plan(
    snapshots: &[(SnapshotId, SnapshotFile)],
    policy: &Policy,
    group_by: GroupBy,
    tz: &TimeZone,
) -> Result<Vec<GroupPlan>> {
    let mut groups: BTreeMap<GroupKey, Vec<&(SnapshotId, SnapshotFile)>> = BTreeMap::new();
    for s in snapshots {
        let key = GroupKey {
            host: group_by.host.then(|| s.1.host.clone()),
            kind: group_by.kind.then(|| s.1.kind.clone()),
            name: group_by.name.then(|| s.1.name.clone()),
        };
        groups.entry(key).or_default().push(s);
    }
    let mut out = Vec::new();
    for (group, mut members) in groups {
        members.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
        let newest = members[0].1.time;
        let cutoff = match policy.within {
            Some(span) => Some(
                newest
                    .to_zoned(tz.clone())
                    .checked_sub(span)
                    .map_err(|e| Error::invalid(format!("--keep-within: {e}")))?
                    .timestamp(),
            ),
            None => None,
        };
        let rules = [
            ("hourly", policy.hourly),
            ("daily", policy.daily),
            ("weekly", policy.weekly),
            ("monthly", policy.monthly),
            ("yearly", policy.yearly),
        ];
        let mut kept_per_rule = [0u32; 5];
        let mut last_bucket: [Option<(i32, i32, i32, i32)>; 5] = [None; 5];
        let mut decisions = Vec::with_capacity(members.len());
        for (position, (id, s)) in members.iter().enumerate() {
            let mut reasons = Vec::new();
            if let Some(Count::N(n)) = policy.last {
                if (position as u32) < n {
                    reasons.push(format!("last {}", position + 1));
                }
            } else if policy.last == Some(Count::Unlimited) {
                reasons.push(format!("last {}", position + 1));
            }
            for (i, (rule, count)) in rules.iter().enumerate() {
                let Some(count) = count else { continue };
                let b = bucket(rule, s.time, tz);
                let room = match count {
                    Count::N(n) => kept_per_rule[i] < *n,
                    Count::Unlimited => true,
                };
                if room && last_bucket[i] != Some(b) {
                    kept_per_rule[i] += 1;
                    last_bucket[i] = Some(b);
                    reasons.push(format!("{rule} {}", kept_per_rule[i]));
                }
            }
            if cutoff.is_some_and(|c| s.time >= c) {
                reasons.push("within".into());
            }
            for tag in &policy.tags {
                if s.tags.contains(tag) {
                    reasons.push(format!("tag {tag}"));
                }
            }
            decisions.push(Decision { id: *id, time: s.time, keep: !reasons.is_empty(), reasons });
        }
        out.push(GroupPlan { group, snapshots: decisions });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_restic() {
        let span = parse_within("1y5m7d2h").unwrap();
        assert_eq!((span.get_years(), span.get_months(), span.get_days(), span.get_hours()), (1, 5, 7, 2));
        for bad in ["", "5", "3w", "d", "1y-2d"] {
            assert!(parse_within(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_policy_is_empty() {
        assert!(Policy::default().is_empty());
        assert!(Policy { daily: Some(Count::N(0)), ..Default::default() }.is_empty());
        assert!(!Policy { tags: vec!["x".into()], ..Default::default() }.is_empty());
    }
}
