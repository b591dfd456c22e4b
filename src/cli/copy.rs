//! `cairn copy`

use super::context::{Context, OtherSecret};
use super::output::{bytes, print_json, Bar};
use super::snapshots::FilterArgs;
use super::Outcome;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CopyArgs {
    /// The destination repository URL
    #[arg(long, value_name = "URL")]
    to: String,
    /// Read the destination's password from this file [env: CAIRN_TO_PASSWORD for the password itself]
    #[arg(long, value_name = "FILE")]
    to_password_file: Option<PathBuf>,
    /// Run this shell command for the destination's password
    #[arg(long, value_name = "CMD")]
    to_password_command: Option<String>,
    /// Unlock the destination with a key file
    #[arg(long, value_name = "FILE")]
    to_key_file: Option<PathBuf>,
    /// Snapshots to copy (ids or `latest`); without any, every snapshot the filters accept
    #[arg(value_name = "SNAP")]
    snapshots: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
}

pub async fn run(ctx: &Context, args: CopyArgs) -> Outcome {
    let secret = OtherSecret {
        password_file: args.to_password_file.clone(),
        password_command: args.to_password_command.clone(),
        key_file: args.to_key_file.clone(),
    }
    .resolve("CAIRN_TO_PASSWORD", &format!("the destination {}", args.to))?;
    let src = ctx.open().await?;
    let dst = ctx.open_other(&args.to, &secret).await?;
    let filter = args.filter.filter();
    let selected = if args.snapshots.is_empty() {
        src.catalog().snapshots()?.into_iter().filter(|(_, s)| filter.matches(s)).collect()
    } else {
        args.snapshots.iter().map(|spec| src.find_snapshot(spec, &filter)).collect::<Result<Vec<_>, _>>()?
    };
    let progress = Bar::boxed(ctx.progress_enabled());
    let report = cairn::ops::copy::copy(&src, &dst, selected, &ctx.cancel, progress.as_ref()).await?;
    if ctx.args.json {
        print_json(&serde_json::json!({
            "from": src.backend().location(),
            "to": dst.backend().location(),
            "copied": report.copied.iter().map(|(s, d)| serde_json::json!({"source": s, "destination": d})).collect::<Vec<_>>(),
            "skipped": report.skipped,
            "same_ids": report.same_ids,
            "blobs_sent": report.blobs_sent,
            "bytes_sent": report.bytes_sent,
            "packs_written": report.packs_written,
            "index_files_written": report.index_files_written,
            "packs_verified": report.packs_verified,
            "packs_adopted": report.packs_adopted,
        }));
    } else {
        if report.packs_adopted > 0 {
            ctx.info(format!("reused {} packs an interrupted earlier run had sent", report.packs_adopted));
        }
        for (s, d) in &report.copied {
            ctx.info(format!("copied snapshot {} as {}", s.short(), d.short()));
        }
        ctx.info(format!(
            "{} snapshots copied, {} already there; sent {} blobs ({}) in {} packs and {} index files; {} packs read back and verified",
            report.copied.len(),
            report.skipped.len(),
            report.blobs_sent,
            bytes(report.bytes_sent),
            report.packs_written,
            report.index_files_written,
            report.packs_verified
        ));
        if !report.same_ids && !report.copied.is_empty() {
            ctx.info("note: the destination names blobs with its own key, so data was re-identified; a destination made with `cairn init --copy-settings-from` deduplicates across copies and sends less");
        }
    }
    Ok(0)
}
