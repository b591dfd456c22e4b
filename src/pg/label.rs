//! Reading a base backup's `backup_label` (and its `.backup` history file): fields, LSNs
//! and the times PostgreSQL writes in them.

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// The `KEY: value` lines of a backup_label or backup history file.
pub fn label_fields(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// `0/2000028 (file 000000010000000000000002)` → the LSN.
pub(crate) fn label_lsn(fields: &BTreeMap<String, String>, key: &str) -> Result<u64> {
    fields
        .get(key)
        .and_then(|v| crate::pg::wal::parse_lsn(v.split_whitespace().next()?))
        .ok_or_else(|| Error::source(format!("the backup label has no valid {key}")))
}

/// `2026-11-22 07:40:01 UTC` → a timestamp (the server's log_timezone must be UTC/GMT or a
/// numeric offset; otherwise `None`).
pub fn label_time(text: &str) -> Option<jiff::Timestamp> {
    let (datetime, zone) = text.rsplit_once(' ')?;
    let civil: jiff::civil::DateTime = datetime.parse().ok()?;
    let offset = match zone {
        "UTC" | "GMT" | "Z" => jiff::tz::Offset::UTC,
        z => {
            let (sign, digits) = match z.as_bytes().first()? {
                b'+' => (1, &z[1..]),
                b'-' => (-1, &z[1..]),
                _ => return None,
            };
            let (h, m) = digits.split_once(':').unwrap_or((digits, "0"));
            jiff::tz::Offset::from_seconds(sign * (h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60)).ok()?
        }
    };
    offset.to_timestamp(civil).ok()
}

/// `1764650000.123456` (seconds since the epoch) → a timestamp.
pub(crate) fn parse_epoch(text: &str) -> Option<jiff::Timestamp> {
    let (secs, micros) = text.trim().split_once('.').unwrap_or((text.trim(), "0"));
    let micros: i64 = format!("{micros:0<6}").get(..6)?.parse().ok()?;
    jiff::Timestamp::from_microsecond(secs.parse::<i64>().ok()? * 1_000_000 + micros).ok()
}
