//! `cairn check`

use super::context::{usage, Context};
use super::output::{bytes, print_json, Bar};
use super::Outcome;
use cairn::ops::check::{self, ReadData};
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    /// Also read, decrypt and verify every pack
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read a subset of the packs: a percentage (`10%`: the packs read longest ago, never
    /// read first) or part K of N (`2/7`: by pack id)
    #[arg(long, value_name = "PCT%|K/N")]
    read_data_subset: Option<String>,
    /// Write Prometheus textfile-collector metrics of this check here (atomically)
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<std::path::PathBuf>,
}

fn parse_subset(text: &str) -> anyhow::Result<ReadData> {
    if let Some(pct) = text.strip_suffix('%') {
        let p: f64 = pct
            .trim()
            .parse()
            .map_err(|_| usage(format!("--read-data-subset {text:?}: expected a percentage like 10%")))?;
        if !(0.0..=100.0).contains(&p) || p == 0.0 {
            return Err(usage(format!("--read-data-subset {text:?}: the percentage must be above 0 and at most 100")));
        }
        return Ok(ReadData::Percent(p));
    }
    let (k, n) =
        text.split_once('/').ok_or_else(|| usage(format!("--read-data-subset {text:?}: expected PCT% or K/N")))?;
    let (k, n): (u32, u32) = match (k.trim().parse(), n.trim().parse()) {
        (Ok(k), Ok(n)) if k >= 1 && k <= n && n <= 256 => (k, n),
        _ => return Err(usage(format!("--read-data-subset {text:?}: K/N needs 1 <= K <= N <= 256"))),
    };
    Ok(ReadData::Part(k, n))
}

pub async fn run(ctx: &Context, args: CheckArgs) -> Outcome {
    let read_data = match (&args.read_data_subset, args.read_data) {
        (Some(subset), _) => parse_subset(subset)?,
        (None, true) => ReadData::All,
        (None, false) => ReadData::None,
    };
    let started = jiff::Timestamp::now();
    let clock = std::time::Instant::now();
    let repo = ctx.open_unrefreshed().await?;
    let progress = Bar::boxed(ctx.progress_enabled());
    // A reader's session: no sweep starts while check reads (best effort: a read-only
    // repository is checked without one).
    let session = cairn::repo::gc::Session::begin_reader(repo.backend(), repo.key()).await.ok();
    let before = match &session {
        Some(session) => session.start().generation,
        None => cairn::repo::gc::read_view(repo.backend(), repo.key()).await?.generation,
    };
    let mut report = check::check(&repo, read_data, progress.as_ref()).await;
    // A removal that was already sweeping when check began can make it see an index file
    // or pack vanish: if removal moved on meanwhile, damage is confirmed by a second look.
    if report.as_ref().is_ok_and(|r| !r.is_ok())
        && cairn::repo::gc::read_view(repo.backend(), repo.key()).await?.generation != before
    {
        report = check::check(&repo, read_data, progress.as_ref()).await;
    }
    if let Some(session) = &session {
        session.end().await;
    }
    let mut report = report?;
    if read_data != ReadData::None {
        // The secrets' inner layer needs the catalog (their content is read like a restore).
        repo.refresh().await?;
        // A secrets password given to a repository without a compartment opens nothing:
        // there is nothing to check with it.
        let secrets = match cairn::ops::secrets::exists(&repo).await? {
            true => ctx.open_secrets(&repo).await?,
            false => None,
        };
        check::check_secrets(&repo, secrets.as_ref(), &mut report).await?;
    }
    if let Some(path) = &args.metrics_file {
        repo.refresh().await?;
        let coverage = cairn::ops::coverage::Coverage::load(repo.backend(), repo.key()).await?;
        let packs: Vec<_> = repo.catalog().packs()?.iter().map(|p| p.id).collect();
        let mut m = super::metrics::Metrics::default();
        let one = |v: f64| vec![(String::new(), v)];
        m.family(
            "cairn_check_success",
            "Whether the last check found no damage.",
            one(f64::from(u8::from(report.is_ok()))),
        );
        m.family("cairn_check_errors", "Problems the last check found.", one(report.errors.len() as f64));
        m.family("cairn_check_packs_read", "Packs the last check read.", one(report.packs_read as f64));
        m.family("cairn_check_bytes_read", "Bytes the last check read.", one(report.bytes_read as f64));
        for days in [7, 30] {
            m.family(
                &format!("cairn_check_coverage_{days}d_ratio"),
                &format!("Share of packs read and found intact by check in the last {days} days."),
                one(coverage.share_within(&packs, days, started)),
            );
        }
        m.family("cairn_check_last_timestamp_seconds", "When the last check started.", one(started.as_second() as f64));
        m.family("cairn_check_duration_seconds", "How long the last check took.", one(clock.elapsed().as_secs_f64()));
        super::files::write_atomically(path, m.text.as_bytes())?;
    }
    if ctx.args.json {
        print_json(&report);
    } else {
        for warning in &report.warnings {
            eprintln!("cairn: warning: {warning}");
        }
        for error in &report.errors {
            eprintln!("cairn: damage: {error}");
        }
        ctx.info(format!(
            "checked {} snapshots, {} index files, {} packs, {} blobs; read {} packs ({})",
            report.snapshots,
            report.index_files,
            report.packs,
            report.blobs,
            report.packs_read,
            bytes(report.bytes_read)
        ));
        if report.unindexed_packs > 0 {
            ctx.info(format!(
                "{} packs are not in any index (left by an interrupted backup; harmless)",
                report.unindexed_packs
            ));
        }
        if report.secrets_verified > 0 {
            ctx.info(format!("opened and read {} secrets snapshots", report.secrets_verified));
        }
        if report.secrets_skipped > 0 {
            ctx.info(format!(
                "skipped the sealed contents of {} secrets snapshots (no secrets password given; their packs were verified)",
                report.secrets_skipped
            ));
        }
        if report.is_ok() {
            ctx.info("no damage found");
        } else {
            eprintln!("cairn: {} problems found: the repository is damaged", report.errors.len());
        }
    }
    Ok(if report.is_ok() { 0 } else { 13 })
}
