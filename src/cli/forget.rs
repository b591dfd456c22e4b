//! `cairn forget`

use super::context::{usage, Context};
use super::output::print_json;
use super::snapshots::FilterArgs;
use super::Outcome;
use cairn::ops::forget::{self, Count, GroupBy, Policy};
use clap::Args;

#[derive(Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Keep the N newest snapshots (`unlimited` or -1: all)
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    keep_last: Option<Count>,
    /// Keep the newest snapshot of each of the N most recent hours that have one
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    keep_hourly: Option<Count>,
    /// ... of each of the N most recent days
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    keep_daily: Option<Count>,
    /// ... of each of the N most recent ISO weeks
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    keep_weekly: Option<Count>,
    /// ... of each of the N most recent months
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    keep_monthly: Option<Count>,
    /// ... of each of the N most recent years
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    keep_yearly: Option<Count>,
    /// Keep every snapshot within this duration of the group's newest (e.g. 1y5m7d2h)
    #[arg(long, value_name = "DURATION")]
    keep_within: Option<String>,
    /// Keep every snapshot with this tag (repeatable)
    #[arg(long = "keep-tag", value_name = "TAG")]
    keep_tags: Vec<String>,
    /// Apply the policy to each group of snapshots sharing these fields
    #[arg(long, default_value = "host,kind,name", value_name = "FIELDS")]
    group_by: String,
    /// Time zone for the calendar buckets (IANA name, e.g. Europe/Berlin) [default: local]
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
    /// Show what would be kept and forgotten, and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Allow the policy to forget every snapshot of a group
    #[arg(long)]
    allow_empty: bool,
    /// Then remove data no snapshot needs any more (a removal run, see `cairn prune`)
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    prune_options: super::prune::PruneOptions,
    /// Expire WAL of the base backups' sources: keep all WAL from the newest base at least
    /// this much older than the newest base on (the PITR window), each older kept base's
    /// start-to-stop WAL, and every .history file; remove the rest (e.g. 7d)
    #[arg(long, value_name = "DURATION")]
    keep_wal_within: Option<String>,
}

fn parse_count(text: &str) -> Result<Count, String> {
    match text {
        "unlimited" | "-1" => Ok(Count::Unlimited),
        n => n.parse::<u32>().map(Count::N).map_err(|_| format!("{n:?} is not a count (a number, or unlimited)")),
    }
}

pub async fn run(ctx: &Context, args: ForgetArgs) -> Outcome {
    let policy = Policy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args
            .keep_within
            .as_deref()
            .map(|t| forget::parse_within(t).map_err(|e| usage(format!("--keep-within: {}", e.message()))))
            .transpose()?,
        tags: args.keep_tags.clone(),
    };
    let wal_within = args
        .keep_wal_within
        .as_deref()
        .map(|t| forget::parse_within(t).map_err(|e| usage(format!("--keep-wal-within: {}", e.message()))))
        .transpose()?;
    if policy.is_empty() {
        return Err(usage("an empty policy would forget everything: give at least one --keep-* rule"));
    }
    let group_by = GroupBy::parse(&args.group_by).map_err(|e| usage(e.message().to_string()))?;
    let tz = match &args.tz {
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|e| usage(format!("--tz {name:?}: {e}")))?,
        None => jiff::tz::TimeZone::system(),
    };
    let repo = ctx.open().await?;
    let filter = args.filter.filter();
    let snapshots: Vec<_> = repo.catalog().snapshots()?.into_iter().filter(|(_, s)| filter.matches(s)).collect();
    let plans = forget::plan(&snapshots, &policy, group_by, &tz)?;
    let describe = |g: &forget::GroupKey| {
        [("host", &g.host), ("kind", &g.kind), ("name", &g.name)]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !args.allow_empty {
        if let Some(p) = plans.iter().find(|p| p.snapshots.iter().all(|d| !d.keep)) {
            return Err(anyhow::anyhow!(
                "the policy would forget every snapshot of group ({}): refusing; pass --allow-empty if that is meant",
                describe(&p.group)
            ));
        }
    }
    // WAL expiry plans against what remains after this forget, of every group.
    let forgetting: std::collections::HashSet<_> =
        plans.iter().flat_map(|p| &p.snapshots).filter(|d| !d.keep).map(|d| d.id).collect();
    let mut wal_plans = Vec::new();
    if let Some(within) = wal_within {
        let remaining: Vec<_> =
            repo.catalog().snapshots()?.into_iter().filter(|(id, _)| !forgetting.contains(id)).collect();
        let mut sources: Vec<String> = snapshots
            .iter()
            .filter(|(_, s)| s.kind == "pg-base")
            .filter_map(|(_, s)| s.meta.get("source").and_then(|v| v.as_str()).map(str::to_string))
            .collect();
        sources.sort();
        sources.dedup();
        for source in sources {
            wal_plans.push(cairn::ops::walexpiry::plan(&repo, &remaining, &source, Some(within)).await?);
        }
    }
    if ctx.args.json && args.dry_run {
        print_json(&serde_json::json!({ "groups": plans, "wal": wal_plans }));
        return Ok(0);
    }
    if !ctx.args.json {
        for p in &plans {
            let kept = p.snapshots.iter().filter(|d| d.keep).count();
            println!("group {}: keep {kept}, forget {}", describe(&p.group), p.snapshots.len() - kept);
            for d in &p.snapshots {
                let verdict = if d.keep { "keep  " } else { "forget" };
                println!(
                    "  {}  {}  {verdict}  {}",
                    d.id.short(),
                    d.time.strftime("%Y-%m-%d %H:%M:%S"),
                    d.reasons.join(", ")
                );
            }
        }
    }
    if !ctx.args.json {
        for w in &wal_plans {
            print_wal_plan(w, args.dry_run);
        }
    }
    if args.dry_run {
        return Ok(0);
    }
    let mut forgotten = Vec::new();
    for d in plans.iter().flat_map(|p| &p.snapshots).filter(|d| !d.keep) {
        repo.backend().delete(&cairn::format::layout::snapshot(&d.id)).await?;
        forgotten.push(d.id);
    }
    // Snapshots first, then WAL: a crash in between leaves WAL that the next run expires.
    for w in &wal_plans {
        cairn::ops::walexpiry::expire(&repo, w).await?;
    }
    let report = if args.prune {
        match super::prune::removal(&repo, &args.prune_options.collect_options(false)?).await? {
            Ok(report) => Some(report),
            Err(code) => return Ok(code),
        }
    } else {
        None
    };
    if ctx.args.json {
        print_json(&serde_json::json!({ "groups": plans, "forgotten": forgotten, "wal": wal_plans, "prune": report }));
    } else {
        ctx.info(format!("forgot {} snapshots", forgotten.len()));
        if let Some(r) = report {
            ctx.info(format!("removal run (generation {}): {}", r.generation, super::prune::describe(&r, false)));
        }
    }
    Ok(0)
}

/// Print which WAL of a source is kept and why, and what goes.
pub fn print_wal_plan(plan: &cairn::ops::walexpiry::WalPlan, dry_run: bool) {
    println!("wal source {}:", plan.source);
    for k in &plan.kept {
        match &k.to {
            Some(to) => println!("  keep {} .. {}: {}", k.from, to, k.reason),
            None => println!("  keep {} .. (latest): {}", k.from, k.reason),
        }
    }
    if plan.kept.is_empty() {
        println!("  keep everything: no base backup of this source remains");
    }
    println!("  keep every .history file: timelines must stay followable");
    println!(
        "  {} {} files ({}), keep {}",
        if dry_run { "would remove" } else { "remove" },
        plan.remove.len(),
        super::output::bytes(plan.remove_bytes),
        plan.kept_files
    );
}
