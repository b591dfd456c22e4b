//! `cairn prune`: one removal run (docs/operations.md, docs/format.md §17).

use super::context::Context;
use super::output::{bytes, print_json};
use super::Outcome;
use clap::Args;

#[derive(Args)]
pub struct PruneArgs {
    /// Show what this run would delete and mark; change nothing
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(ctx: &Context, args: PruneArgs) -> Outcome {
    let repo = ctx.open().await?;
    // Never delete from a damaged repository: what looks unreferenced may be what a
    // damaged snapshot or index no longer shows.
    let check = cairn::ops::check::check(&repo, cairn::ops::check::ReadData::None, &cairn::progress::Silent).await?;
    if !check.is_ok() {
        for problem in &check.errors {
            eprintln!("cairn: damage: {problem}");
        }
        eprintln!(
            "cairn: error: the repository has damage ({} problems): prune deletes nothing until `cairn check` passes",
            check.errors.len()
        );
        return Ok(13);
    }
    let report = cairn::repo::gc::collect(&repo, args.dry_run).await?;
    if ctx.args.json {
        print_json(&serde_json::json!({ "dry_run": args.dry_run, "report": report }));
        return Ok(0);
    }
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    ctx.info(format!(
        "{verb} {} packs ({}) marked by the previous run ({} rescued by newer snapshots); {} {} packs ({}) for the next run",
        report.deleted_packs,
        bytes(report.deleted_bytes),
        report.rescued_packs,
        if args.dry_run { "would mark" } else { "marked" },
        report.marked_packs,
        bytes(report.marked_bytes)
    ));
    Ok(0)
}
