//! `cairn pitr`: point-in-time recovery of a PostgreSQL cluster.

use super::context::{usage, Context};
use super::output::{print_json, Bar};
use super::Outcome;
use cairn::ops::pitr::{PitrOptions, Target, TimelineChoice};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target_kind").required(true)
    .args(["target_time", "target_lsn", "target_xid", "target_name", "target_immediate", "latest"])))]
pub struct PitrArgs {
    /// The data directory to create (must be empty or absent)
    #[arg(long, value_name = "DIR")]
    pgdata: PathBuf,
    /// The WAL source the cluster archived to
    #[arg(long)]
    source: String,
    /// Recover to this time (RFC 3339, e.g. 2026-11-22T07:40:00Z)
    #[arg(long, value_name = "TIME")]
    target_time: Option<jiff::Timestamp>,
    /// Recover to this LSN (e.g. 0/3000060)
    #[arg(long, value_name = "LSN")]
    target_lsn: Option<String>,
    /// Recover through the commit of this transaction id
    #[arg(long, value_name = "XID")]
    target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME")]
    target_name: Option<String>,
    /// Stop as soon as the base backup is consistent
    #[arg(long)]
    target_immediate: bool,
    /// Replay all archived WAL
    #[arg(long)]
    latest: bool,
    /// What the server does at the target
    #[arg(long, default_value = "promote", value_parser = ["promote", "pause", "shutdown"])]
    target_action: String,
    /// Stop just before the target instead of just after it (with --target-time,
    /// --target-xid or --target-lsn): PostgreSQL's recovery_target_inclusive = off
    #[arg(long)]
    target_exclusive: bool,
    /// Timeline to recover along: current (the base backup's), latest (the newest that
    /// descends from the base) or a number; the archived .history files decide which
    /// base backups can follow it
    #[arg(long, value_name = "TIMELINE", default_value = "latest", value_parser = TimelineChoice::parse)]
    target_timeline: TimelineChoice,
    /// off: the restored server does not archive (a drill must not push a new timeline
    /// into the production archive); preserve: keep the backup's setting
    #[arg(long, default_value = "preserve", value_parser = ["preserve", "off"])]
    archive_mode: String,
    /// Use this base backup (snapshot id prefix) instead of the newest that fits the target
    #[arg(long, value_name = "SNAP")]
    base: Option<String>,
    /// Start the server, wait for recovery to end, and report where it ended
    #[arg(long)]
    start: bool,
    /// The restored server's port
    #[arg(long)]
    port: Option<u16>,
    /// Fetch this many WAL segments ahead of replay into a spool beside --pgdata
    /// (`.NAME.cairn-spool`, removed after --start), so replay does not wait for each
    /// fetch; 0 fetches one at a time
    #[arg(long, value_name = "N", default_value_t = 8)]
    prefetch: u64,
}

/// The restore_command for the restored server: this cairn, this repository, this secret,
/// every path absolute (the server runs it from its data directory); and the probe that
/// runs the same way before anything is restored (`wal fetch --probe`).
pub fn restore_command(
    ctx: &Context,
    source: &str,
    prefetch: Option<(u64, &std::path::Path)>,
) -> anyhow::Result<(String, String)> {
    let exe = std::env::current_exe()?;
    let (url, is_default) = ctx.repo_url();
    let url = match url.contains("://") {
        true => url,
        false => std::path::absolute(&url)?.display().to_string(),
    };
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut cmd = format!("{} --repo {}", quote(&exe.display().to_string()), quote(&url));

    if let Some(f) = &ctx.args.key_file {
        cmd.push_str(&format!(" --key-file {}", quote(&std::path::absolute(f)?.display().to_string())));
    } else if let Some(f) = &ctx.args.password_file {
        cmd.push_str(&format!(" --password-file {}", quote(&std::path::absolute(f)?.display().to_string())));
    } else if let Some(c) = &ctx.args.password_command {
        cmd.push_str(&format!(" --password-command {}", quote(c)));
    } else if is_default {
        let key = super::context::default_key_file();
        cmd.push_str(&format!(" --key-file {}", quote(&key.display().to_string())));
    } else {
        return Err(usage(
            "pitr writes a restore_command that the server runs, and a password in CAIRN_PASSWORD would not reach it: \
             give --key-file, --password-file or --password-command",
        ));
    }
    let probe = format!("{cmd} wal fetch --probe --source {}", quote(source));
    cmd.push_str(&format!(" wal fetch %f %p --source {}", quote(source)));
    if let Some((n, spool)) = prefetch.filter(|(n, _)| *n > 0) {
        cmd.push_str(&format!(" --prefetch {n} --spool {}", quote(&std::path::absolute(spool)?.display().to_string())));
    }
    Ok((cmd, probe))
}

pub async fn run(ctx: &Context, args: PitrArgs) -> Outcome {
    let target = if let Some(t) = args.target_time {
        Target::Time(t)
    } else if let Some(l) = &args.target_lsn {
        Target::Lsn(
            cairn::pg::wal::parse_lsn(l)
                .ok_or_else(|| usage(format!("--target-lsn {l:?} is not an LSN like 0/3000060")))?,
        )
    } else if let Some(x) = &args.target_xid {
        Target::Xid(x.clone())
    } else if let Some(n) = &args.target_name {
        Target::Name(n.clone())
    } else if args.target_immediate {
        Target::Immediate
    } else {
        Target::Latest
    };
    if args.target_exclusive && !matches!(target, Target::Time(_) | Target::Xid(_) | Target::Lsn(_)) {
        return Err(usage("--target-exclusive applies to --target-time, --target-xid and --target-lsn"));
    }
    let pgdata = std::path::absolute(&args.pgdata)?;
    let spool = cairn::ops::pitr::spool_beside(&pgdata);
    let (restore_command, probe) = restore_command(ctx, &args.source, Some((args.prefetch, &spool)))?;
    let options = PitrOptions {
        spool: (args.prefetch > 0).then_some(spool),
        pgdata,
        restore_command,
        probe_command: Some(probe),
        source: args.source,
        target,
        exclusive: args.target_exclusive,
        action: args.target_action,
        timeline: args.target_timeline,
        archive_off: args.archive_mode == "off",
        base: args.base,
        port: args.port,
        start: args.start,
    };
    let repo = ctx.open().await?;
    let progress = Bar::boxed(ctx.progress_enabled());
    let report = cairn::ops::pitr::pitr(&repo, &options, progress.as_ref()).await?;
    if ctx.args.json {
        print_json(&report);
        return Ok(0);
    }
    ctx.info(format!(
        "restored base backup {} (ends at {}) into {}; recovery follows timeline {}, archived without a gap from {} through {}",
        report.base.short(),
        report.base_stop_lsn,
        options.pgdata.display(),
        report.timeline,
        report.first_wal,
        report.last_archived_wal
    ));
    if let Some(gap) = &report.gap {
        eprintln!(
            "cairn: warning: {gap} is missing from the archive (later segments are there): recovery can only reach a target before it"
        );
    }
    if !report.other_timelines.is_empty() {
        ctx.info(format!("not followed: {} (choose with --target-timeline)", report.other_timelines.join(", ")));
    }
    match &report.server_state {
        Some(state) => ctx.info(format!(
            "recovery ended: {state}; reached LSN {}, last transaction at {}",
            report.reached_lsn.as_deref().unwrap_or("?"),
            report.reached_time.as_deref().unwrap_or("(none replayed)")
        )),
        None => ctx.info(format!(
            "recovery is configured (recovery.signal, postgresql.auto.conf); start the server: pg_ctl -D {} start",
            options.pgdata.display()
        )),
    }
    Ok(0)
}
