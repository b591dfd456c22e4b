//! `cairn repair index` (rebuild the index from the packs' own headers) and `cairn repair
//! snapshots` (rewrite or quarantine snapshots that lost data): `ops::repair`,
//! docs/operations.md.

use super::context::Context;
use super::output::print_json;
use super::Outcome;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum RepairCommand {
    /// Make the index agree with the packs: index packs no index file lists, drop entries
    /// of packs that are not stored, delete index files that cannot be read (safe next to
    /// running backups and prunes)
    Index(RepairIndexArgs),
    /// Rewrite snapshots that reference data no stored pack holds without what was lost
    /// (a tree keeps every readable file), or quarantine them when nothing usable is left
    Snapshots(RepairIndexArgs),
    /// Write a new config for a repository whose config is missing or damaged (the
    /// password or key file must open one of its key slots): everything stored stays
    /// restorable; new backups store their data once more (new chunking seed). A damaged
    /// config is kept in quarantine/
    Config,
}

#[derive(Args)]
pub struct RepairIndexArgs {
    /// Show what would change; change nothing
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(ctx: &Context, command: RepairCommand) -> Outcome {
    let args = match command {
        RepairCommand::Index(args) => args,
        RepairCommand::Snapshots(args) => return snapshots(ctx, args).await,
        RepairCommand::Config => return config(ctx).await,
    };
    let repo = ctx.open().await?;
    let report = cairn::ops::repair::repair_index(&repo, args.dry_run).await?;
    if ctx.args.json {
        print_json(&serde_json::json!({ "dry_run": args.dry_run, "report": report }));
        return Ok(0);
    }
    let verb = if args.dry_run { "would" } else { "did" };
    ctx.info(format!(
        "{verb} index {} unlisted packs, drop {} entries of missing packs from {} index files, delete {} unreadable index files{}",
        report.adopted_packs,
        report.dropped_packs.len(),
        report.rewritten_files,
        report.deleted_damaged_files.len(),
        match report.skipped_files.len() {
            0 => String::new(),
            n => format!("; {n} files list packs a pending removal marked and were left alone: run `cairn prune`, then repair again"),
        }
    ));
    Ok(0)
}

async fn snapshots(ctx: &Context, args: RepairIndexArgs) -> Outcome {
    let repo = ctx.open().await?;
    let repaired = cairn::ops::repair::repair_snapshots(&repo, args.dry_run).await?;
    if ctx.args.json {
        print_json(&serde_json::json!({ "dry_run": args.dry_run, "snapshots": repaired }));
        return Ok(0);
    }
    let verb = if args.dry_run { "would be " } else { "" };
    for r in &repaired {
        let new = r.new_id.map(|n| format!(" as {}", n.short())).unwrap_or_default();
        ctx.info(format!("snapshot {} {verb}{}{new}: {}", r.id.short(), r.action, r.cut.join("; ")));
    }
    if repaired.is_empty() {
        ctx.info("every snapshot's data is stored; nothing to repair");
    }
    Ok(0)
}

async fn config(ctx: &Context) -> Outcome {
    let (url, is_default) = ctx.repo_url();
    let secret = ctx.secret_or_default(is_default)?;
    let backend = ctx.backend(&url, false)?;
    let config = cairn::repo::Repository::repair_config(backend, &secret).await?;
    if ctx.args.json {
        print_json(&config);
    } else {
        ctx.info(format!(
            "wrote a new config for {url} (repository {}): every snapshot restores as before; the next backups \
             store their data once more (the lost config held the chunking seed); run `cairn check` now",
            config.id.short()
        ));
    }
    Ok(0)
}
