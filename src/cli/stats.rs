//! `cairn stats`

use super::context::Context;
use super::output::{bytes, print_json};
use super::Outcome;
use clap::Args;

#[derive(Args)]
pub struct StatsArgs {
    /// Report the share of packs that `check` read (and found intact) within this many days
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    coverage_days: u32,
}

pub async fn run(ctx: &Context, args: StatsArgs) -> Outcome {
    let repo = ctx.open().await?;
    let stats = cairn::ops::stats::stats(&repo)?;
    let coverage = cairn::ops::coverage::Coverage::load(repo.backend(), repo.key()).await?;
    let packs: Vec<_> = repo.catalog().packs()?.iter().map(|p| p.id).collect();
    let share = coverage.share_within(&packs, args.coverage_days, jiff::Timestamp::now());
    if ctx.args.json {
        let mut value = serde_json::to_value(&stats)?;
        value["coverage"] =
            serde_json::json!({ "days": args.coverage_days, "packs": packs.len(), "share_read": share });
        print_json(&value);
    } else {
        println!("repository   {}", repo.backend().location());
        println!("snapshots    {}", stats.snapshots);
        println!("logical      {}", bytes(stats.logical_bytes));
        println!(
            "stored       {} in {} packs, {} index files",
            bytes(stats.stored_bytes),
            stats.packs,
            stats.index_files
        );
        println!("blobs        {}", stats.blobs);
        println!("dedup ratio  {:.2}x", stats.dedup_ratio);
        println!("checked      {:.0}% of packs read by check in the last {} days", share * 100.0, args.coverage_days);
    }
    Ok(0)
}
