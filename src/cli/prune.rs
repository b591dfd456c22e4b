//! `cairn prune`: one removal run, with repacking and index consolidation
//! (docs/operations.md, docs/format.md §17).

use super::context::{usage, Context};
use super::output::{bytes, print_json};
use super::Outcome;
use cairn::repo::gc::{CollectOptions, CollectReport};
use cairn::repo::Repository;
use clap::Args;

#[derive(Args)]
pub struct PruneArgs {
    /// Show what this run would delete, mark and repack; change nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    options: PruneOptions,
}

/// How much a removal run repacks (shared with `forget --prune`).
#[derive(Args, Clone)]
pub struct PruneOptions {
    /// Repack packs with more than this share of unused bytes (`5%`, `20`, or `unlimited`
    /// to never repack)
    #[arg(long, default_value = "5%", value_name = "PCT")]
    max_unused: String,
    /// Repack at most this much of old packs in one run (e.g. 500M, 2G) [default: no limit]
    #[arg(long, value_name = "SIZE")]
    max_repack: Option<String>,
    /// Judge a writer dead when its session has not been renewed for this long (writers
    /// renew every minute); its unreferenced packs are then reclaimed (e.g. 30m, 2h)
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    stale_session_after: String,
}

impl PruneOptions {
    /// The `[prune]` table of the configuration file.
    pub fn from_config(config: &cairn::config::PruneConfig) -> Self {
        PruneOptions {
            max_unused: config.max_unused.clone(),
            max_repack: config.max_repack.clone(),
            stale_session_after: config.stale_session_after.clone().unwrap_or_else(|| "1h".into()),
        }
    }

    pub fn collect_options(&self, dry_run: bool) -> anyhow::Result<CollectOptions> {
        let max_unused = match self.max_unused.trim() {
            "unlimited" => None,
            text => {
                let pct: f64 = text.trim_end_matches('%').parse().map_err(|_| {
                    usage(format!("--max-unused {text:?}: expected a percentage like 5% or `unlimited`"))
                })?;
                if !(0.0..100.0).contains(&pct) {
                    return Err(usage(format!("--max-unused {text:?}: the percentage must be from 0 to below 100")));
                }
                Some(pct)
            }
        };
        let max_repack = self.max_repack.as_deref().map(parse_size).transpose()?;
        let text = self.stale_session_after.trim();
        let stale_after = text
            .parse::<jiff::SignedDuration>()
            .ok()
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| usage(format!("--stale-session-after {text:?}: expected a duration like 30m or 2h")))?;
        Ok(CollectOptions {
            dry_run,
            max_unused,
            max_repack,
            consolidate: true,
            max_doomed: None,
            stale_after: Some(stale_after),
            protection_margin: None,
        })
    }
}

/// `500M`, `2G`, `1024` (bytes), with K, M, G, T in powers of 1024.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(usage(format!("--max-repack {text:?}: expected a size like 500M or 2G"))),
    };
    let n: u64 =
        digits.parse().map_err(|_| usage(format!("--max-repack {text:?}: expected a size like 500M or 2G")))?;
    Ok(n << shift)
}

/// A removal run. Damage (an unreadable snapshot, tree or index file, a blob a snapshot
/// needs in no stored pack, a pack of the wrong size) stops it before anything is
/// deleted, with exit 13 (`gc::collect` checks as it reads).
pub async fn removal(repo: &Repository, options: &CollectOptions) -> anyhow::Result<Result<CollectReport, u8>> {
    Ok(Ok(cairn::repo::gc::collect_with(repo, options).await?))
}

/// The one-paragraph human summary of a removal run.
pub fn describe(report: &CollectReport, dry_run: bool) -> String {
    let (deleted, marked, repacked) =
        if dry_run { ("would delete", "would mark", "would repack") } else { ("deleted", "marked", "repacked") };
    let mut text = format!(
        "{deleted} {} packs ({}) no snapshot needs ({} rescued by newer snapshots); {marked} {} packs ({})",
        report.deleted_packs,
        bytes(report.deleted_bytes),
        report.rescued_packs,
        report.marked_packs,
        bytes(report.marked_bytes)
    );
    if report.waiting_packs > 0 || report.protected_packs > 0 {
        text.push_str(&format!(
            "; {} marked packs ({}) wait until running writers acknowledge the mark, {} unreferenced packs ({}) newer than the oldest running writer are kept",
            report.waiting_packs,
            bytes(report.waiting_bytes),
            report.protected_packs,
            bytes(report.protected_bytes)
        ));
        let writers: Vec<String> = report.live_sessions.iter().map(|s| format!("{} pid {}", s.host, s.pid)).collect();
        if !writers.is_empty() {
            text.push_str(&format!(" (running: {}); a prune after they finish frees them", writers.join(", ")));
        }
    }
    if !report.dead_sessions.is_empty() {
        text.push_str(&format!(
            "; {} writer sessions not renewed within --stale-session-after were judged dead",
            report.dead_sessions.len()
        ));
    }
    if report.repacked_packs > 0 {
        text.push_str(&format!(
            "; {repacked} {} packs ({}) with unused space{}",
            report.repacked_packs,
            bytes(report.repacked_bytes),
            if dry_run { String::new() } else { format!(" into {} of new packs", bytes(report.repack_added_bytes)) }
        ));
    }
    if report.deferred_packs > 0 {
        text.push_str(&format!(
            "; {} more unreferenced packs wait for the next run (at most {} blobs are marked per run)",
            report.deferred_packs,
            cairn::repo::gc::MAX_DOOMED_PER_RUN
        ));
    }
    if report.dropped_missing_packs > 0 {
        text.push_str(&format!(
            "; dropped the index entries of {} packs that are not stored and that no snapshot needs",
            report.dropped_missing_packs
        ));
    }
    if report.stale_staging_files > 0 {
        text.push_str(&format!("; {deleted} {} staging files of interrupted pack writes", report.stale_staging_files));
    }
    if report.index_files_after < report.index_files_before {
        text.push_str(&format!(
            "; consolidated {} index files into {}",
            report.index_files_before, report.index_files_after
        ));
    }
    text
}

pub async fn run(ctx: &Context, args: PruneArgs) -> Outcome {
    let options = args.options.collect_options(args.dry_run)?;
    let repo = ctx.open().await?;
    let report = match removal(&repo, &options).await? {
        Ok(report) => report,
        Err(code) => return Ok(code),
    };
    if ctx.args.json {
        print_json(&serde_json::json!({ "dry_run": args.dry_run, "report": report }));
        return Ok(0);
    }
    ctx.info(describe(&report, args.dry_run));
    Ok(0)
}
