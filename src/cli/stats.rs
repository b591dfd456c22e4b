//! `cairn stats`

use super::context::Context;
use super::output::{bytes, print_json};
use super::Outcome;

pub async fn run(ctx: &Context) -> Outcome {
    let repo = ctx.open().await?;
    let stats = cairn::ops::stats::stats(&repo)?;
    if ctx.args.json {
        print_json(&stats);
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
    }
    Ok(0)
}
