//! `cairn snapshots`

use super::context::Context;
use super::output::{bytes, print_json};
use super::Outcome;
use cairn::repo::SnapshotFilter;
use clap::Args;

#[derive(Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots with this name
    #[arg(long)]
    pub name: Option<String>,
    /// Only snapshots of this source kind (stdin, files, pg, ...)
    #[arg(long)]
    pub kind: Option<String>,
    /// Only snapshots from this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only snapshots with this tag (repeatable: all must match)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> SnapshotFilter {
        SnapshotFilter {
            name: self.name.clone(),
            kind: self.kind.clone(),
            host: self.host.clone(),
            tags: self.tags.clone(),
        }
    }
}

pub async fn run(ctx: &Context, args: SnapshotsArgs) -> Outcome {
    let repo = ctx.open().await?;
    let filter = args.filter.filter();
    let snapshots: Vec<_> = repo.catalog().snapshots()?.into_iter().filter(|(_, s)| filter.matches(s)).collect();
    if ctx.args.json {
        let list: Vec<_> = snapshots
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id, "short_id": id.short(), "time": s.time, "host": s.host, "user": s.user, "kind": s.kind,
                    "name": s.name, "tags": s.tags, "paths": s.paths, "size": s.stats.size, "added": s.stats.added,
                    "files": s.stats.files, "dirs": s.stats.dirs, "parent": s.parent, "meta": s.meta,
                })
            })
            .collect();
        print_json(&list);
        return Ok(0);
    }
    println!(
        "{:<8}  {:<25}  {:<12}  {:<6}  {:<24}  {:>10}  {:>10}",
        "id", "time", "host", "kind", "name", "size", "added"
    );
    for (id, s) in &snapshots {
        let time = s.time.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S %z").to_string();
        println!(
            "{:<8}  {:<25}  {:<12}  {:<6}  {:<24}  {:>10}  {:>10}",
            id.short(),
            time,
            s.host,
            s.kind,
            s.name,
            bytes(s.stats.size),
            bytes(s.stats.added)
        );
    }
    println!("{} snapshots", snapshots.len());
    Ok(0)
}
