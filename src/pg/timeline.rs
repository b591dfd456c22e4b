//! Timeline history and the WAL a recovery reads (docs/postgres.md, "Timelines").
//!
//! Each promotion starts a new timeline and archives `TTTTTTTT.history`, whose lines
//! name every ancestor timeline and the LSN where it was left:
//! `1<TAB>0/5000000<TAB>before 2026-11-22 07:40:00+00`. A recovery along timeline T reads,
//! for each segment number, the file of the newest timeline on T's path that had begun
//! by that segment, exactly as PostgreSQL's `XLogFileReadAnyTLI` picks it. This module
//! works out that path, which timelines a base backup can follow, and the first segment
//! of such a path that is missing from the archive.

use crate::error::{Error, Result};
use crate::pg::wal::{format_lsn, segment_name};
use std::collections::{BTreeMap, BTreeSet};

/// One step of a timeline's ancestry: `timeline` was followed up to `end` (exclusive;
/// `u64::MAX` for the last, still open, step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub timeline: u32,
    pub begin: u64,
    pub end: u64,
}

/// Parse a `.history` file of timeline `timeline`: its ancestors in order, then itself.
pub fn parse_history(timeline: u32, name: &str, text: &str) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || Error::corrupt(format!("{name} line {}: {line:?} is not `timeline<TAB>LSN<TAB>reason`", n + 1));
        let tli: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let end = fields.next().and_then(crate::pg::wal::parse_lsn).ok_or_else(bad)?;
        let begin = steps.last().map_or(0, |s| s.end);
        if steps.last().is_some_and(|s| s.timeline >= tli) || tli >= timeline || end < begin {
            return Err(Error::corrupt(format!(
                "{name} line {}: timeline {tli} ending at {} does not follow the lines before it",
                n + 1,
                format_lsn(end)
            )));
        }
        steps.push(Step { timeline: tli, begin, end });
    }
    let begin = steps.last().map_or(0, |s| s.end);
    steps.push(Step { timeline, begin, end: u64::MAX });
    Ok(steps)
}

/// Every archived timeline's path, from its history file (timeline 1 has none).
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    paths: BTreeMap<u32, Vec<Step>>,
}

impl Timelines {
    /// `histories`: (timeline, file name, text) of every archived `.history` file;
    /// `with_segments`: every timeline that has archived segments.
    pub fn new(histories: &[(u32, String, String)], with_segments: impl IntoIterator<Item = u32>) -> Result<Self> {
        let mut paths = BTreeMap::new();
        for (tli, name, text) in histories {
            paths.insert(*tli, parse_history(*tli, name, text)?);
        }
        for tli in with_segments {
            paths.entry(tli).or_insert_with(|| {
                // Segments without a history file: PostgreSQL would not follow them past
                // a switch either; treat the timeline as having no ancestors.
                vec![Step { timeline: tli, begin: 0, end: u64::MAX }]
            });
        }
        paths.entry(1).or_insert_with(|| vec![Step { timeline: 1, begin: 0, end: u64::MAX }]);
        Ok(Timelines { paths })
    }

    pub fn path(&self, timeline: u32) -> Option<&[Step]> {
        self.paths.get(&timeline).map(Vec::as_slice)
    }

    pub fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.paths.keys().copied()
    }

    /// Can a base backup taken on `base_timeline`, consistent at `stop`, recover along
    /// `target`? Its timeline must be on the target's path, left no earlier than `stop`.
    pub fn reaches(&self, base_timeline: u32, stop: u64, target: u32) -> bool {
        self.path(target)
            .is_some_and(|path| path.iter().any(|s| s.timeline == base_timeline && stop <= s.end && s.begin <= stop))
    }

    /// The newest timeline a base can follow: PostgreSQL's `latest`, limited to the
    /// timelines that descend from the base (a branch taken before the base is not one).
    pub fn newest_reachable(&self, base_timeline: u32, stop: u64) -> u32 {
        self.all().filter(|&t| self.reaches(base_timeline, stop, t)).max().unwrap_or(base_timeline)
    }

    /// Where `target`'s path diverges from `other`'s, if `other` is an ancestor:
    /// the LSN at which the path left `other`.
    pub fn branch_point(&self, target: u32, other: u32) -> Option<u64> {
        self.path(target)?.iter().find(|s| s.timeline == other && s.end != u64::MAX).map(|s| s.end)
    }
}

/// The timeline whose file holds segment `number` on `path`: the newest whose first
/// segment is not after it.
pub fn timeline_of_segment(path: &[Step], number: u64, segment_size: u32) -> u32 {
    path.iter().rev().find(|s| s.begin / u64::from(segment_size) <= number).map_or(path[0].timeline, |s| s.timeline)
}

/// How the archive covers a recovery along one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The last segment of the unbroken run from the start.
    pub last: String,
    /// The first segment missing with later segments archived after it.
    pub gap: Option<String>,
}

/// Walk `path` from segment `first` while the archive (`have`: segment file names) has
/// each file recovery will ask for; report the end of the unbroken run and whether any
/// later file on the path exists beyond a missing one. `None` if `first` itself is absent.
pub fn coverage(path: &[Step], first: u64, have: &BTreeSet<String>, segment_size: u32) -> Option<Coverage> {
    let name = |n: u64| segment_name(timeline_of_segment(path, n, segment_size), n, segment_size);
    if !have.contains(&name(first)) {
        return None;
    }
    let mut n = first;
    while have.contains(&name(n + 1)) {
        n += 1;
    }
    let last = name(n);
    // Anything archived later on this path? Scan what exists rather than every number.
    let per_log = 0x1_0000_0000u64 / u64::from(segment_size);
    let later = have.iter().filter_map(|f| {
        let tli = u32::from_str_radix(&f[..8], 16).ok()?;
        let number = u64::from_str_radix(&f[8..16], 16).ok()? * per_log + u64::from_str_radix(&f[16..24], 16).ok()?;
        (number > n + 1 && timeline_of_segment(path, number, segment_size) == tli).then_some(number)
    });
    let gap = later.min().map(|_| name(n + 1));
    Some(Coverage { last, gap })
}

#[cfg(test)]
mod tests {
    use super::*;
    const SEG: u32 = 16 << 20;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn history_files_parse_and_bad_ones_are_refused() {
        let text = "1\t0/5000000\tbefore 2026-11-22 07:40:00+00\n\n2\t0/7000028\tat restore point \"x\"\n";
        let steps = parse_history(3, "00000003.history", text).unwrap();
        assert_eq!(
            steps,
            vec![
                Step { timeline: 1, begin: 0, end: 0x500_0000 },
                Step { timeline: 2, begin: 0x500_0000, end: 0x700_0028 },
                Step { timeline: 3, begin: 0x700_0028, end: u64::MAX },
            ]
        );
        for bad in ["x\t0/1\n", "1\tnope\n", "2\t0/5\n1\t0/6\n", "3\t0/5\n", "1\t0/9\n2\t0/5\n"] {
            assert!(parse_history(3, "00000003.history", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_branch_before_the_base_is_not_followed() {
        let histories = vec![(2, "00000002.history".to_string(), "1\t0/5000000\tx\n".to_string())];
        let t = Timelines::new(&histories, [1, 2]).unwrap();
        // A base on timeline 1 that ended before the switch follows timeline 2 ...
        assert!(t.reaches(1, 0x400_0000, 2));
        assert_eq!(t.newest_reachable(1, 0x400_0000), 2);
        // ... one taken on timeline 1 after the branch cannot.
        assert!(!t.reaches(1, 0x600_0000, 2));
        assert_eq!(t.newest_reachable(1, 0x600_0000), 1);
        assert!(t.reaches(2, 0x600_0000, 2));
        assert!(!t.reaches(2, 0x400_0000, 2), "timeline 2 did not exist at 0/4000000");
        assert_eq!(t.branch_point(2, 1), Some(0x500_0000));
    }

    #[test]
    fn coverage_follows_the_switch_and_finds_gaps() {
        let path = parse_history(2, "h", "1\t0/5000028\tx\n").unwrap();
        // Segment 5 holds the switch: recovery reads timeline 2's copy.
        assert_eq!(timeline_of_segment(&path, 4, SEG), 1);
        assert_eq!(timeline_of_segment(&path, 5, SEG), 2);
        let have = names(&[
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000020000000000000005",
            "000000020000000000000006",
        ]);
        let c = coverage(&path, 3, &have, SEG).unwrap();
        assert_eq!(c, Coverage { last: "000000020000000000000006".into(), gap: None });
        // Timeline 1's own later segments are not on timeline 2's path.
        let mut gapped = have.clone();
        gapped.remove("000000020000000000000005");
        let c = coverage(&path, 3, &gapped, SEG).unwrap();
        assert_eq!(
            c,
            Coverage { last: "000000010000000000000004".into(), gap: Some("000000020000000000000005".into()) }
        );
        assert_eq!(coverage(&path, 2, &have, SEG), None);
        // Along timeline 1, the same archive runs on through its own segment 6.
        let one = vec![Step { timeline: 1, begin: 0, end: u64::MAX }];
        assert_eq!(coverage(&one, 3, &have, SEG).unwrap().last, "000000010000000000000006");
    }
}
