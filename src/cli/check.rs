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
    /// Read a subset of the packs: a percentage (`10%`) or part K of N (`2/7`)
    #[arg(long, value_name = "PCT%|K/N")]
    read_data_subset: Option<String>,
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
    let repo = ctx.open_unrefreshed().await?;
    let progress = Bar::boxed(ctx.progress_enabled());
    let mut report = check::check(&repo, read_data, progress.as_ref()).await?;
    if read_data != ReadData::None {
        // The secrets' inner layer needs the catalog (their content is read like a restore).
        repo.catalog().refresh(repo.backend(), repo.key()).await?;
        let secrets = ctx.open_secrets(&repo).await?;
        check::check_secrets(&repo, secrets.as_ref(), &mut report).await?;
    }
    if ctx.args.json {
        print_json(&report);
    } else {
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
