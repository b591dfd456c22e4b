//! `cairn run`: the nightly job of docs/config.md, in one command.
//!
//! Backs up every source (one failing does not stop the others), forgets each source's
//! snapshots by its retention once its backup succeeded (and expires WAL for pg-base
//! sources), prunes when every backup succeeded, copies to each offsite target, reads the
//! day's share of the packs, then writes the report and the metrics. The exit code is the
//! worst outcome: 13 damage, 1 a failure, 3 data left out, 0 all well. A second `cairn run`
//! while one holds the lock exits 11 at once.

use super::context::{usage, Context, GlobalArgs};
use super::output::print_json;
use super::Outcome;
use crate::cli::files::{cell, is_markdown, write_atomically};
use crate::cli::metrics::{label, Metrics};
use cairn::config::{Config, SourceConfig, SourceKind};
use cairn::ops::backup::{self, BackupOptions, BackupResult};
use cairn::ops::forget::{Count, GroupBy, Policy};
use cairn::progress::Silent;
use cairn::repo::Repository;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct RunArgs {
    /// The configuration file [default: /etc/cairn/cairn.toml, then
    /// ~/.config/cairn/cairn.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run only these sources (by name); forget, prune, copy and check still follow
    #[arg(value_name = "SOURCE")]
    jobs: Vec<String>,
    /// Write Prometheus textfile-collector metrics here (atomically) [default: the
    /// config's run.metrics_file]
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
struct SourceReport {
    name: String,
    kind: &'static str,
    /// ok, warning (snapshot written, some data left out) or failed.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    logical_bytes: u64,
    added_bytes: u64,
    duration_seconds: f64,
    forgotten: u64,
    wal_files_removed: u64,
}

#[derive(Debug, Clone, Serialize)]
struct StepReport {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    detail: serde_json::Value,
    /// The library's kind of the error, when the step failed with one: the exit code is
    /// chosen from it, never from the message.
    #[serde(skip)]
    kind: Option<cairn::ErrorKind>,
}

impl StepReport {
    fn from<T: Serialize>(result: &anyhow::Result<T>) -> Self {
        match result {
            Ok(v) => StepReport {
                status: "ok",
                error: None,
                detail: serde_json::to_value(v).unwrap_or_default(),
                kind: None,
            },
            Err(e) => StepReport {
                status: "failed",
                error: Some(format!("{e:#}")),
                detail: serde_json::Value::Null,
                kind: e.downcast_ref::<cairn::Error>().map(|e| e.kind()),
            },
        }
    }
    fn skipped(why: &str) -> Self {
        StepReport { status: "skipped", error: Some(why.into()), detail: serde_json::Value::Null, kind: None }
    }
}

#[derive(Debug, Clone, Serialize)]
struct RunReport {
    config: String,
    started: jiff::Timestamp,
    duration_seconds: f64,
    sources: Vec<SourceReport>,
    prune: StepReport,
    offsite: Vec<(String, StepReport)>,
    check: StepReport,
    repository: serde_json::Value,
    exit_code: u8,
}

/// The global options the config implies, on top of the command line's.
pub(super) fn config_args(base: &GlobalArgs, config: &Config) -> GlobalArgs {
    let r = &config.repository;
    let mut args = base.clone();
    args.repo = Some(r.url.clone());
    if r.password_file.is_some() || r.password_command.is_some() || r.key_file.is_some() {
        args.password_file = r.password_file.clone();
        args.password_command = r.password_command.clone();
        args.key_file = r.key_file.clone();
    }
    if r.secrets_password_file.is_some() || r.secrets_password_command.is_some() {
        args.secrets_password_file = r.secrets_password_file.clone();
        args.secrets_password_command = r.secrets_password_command.clone();
    }
    if r.cache_dir.is_some() {
        args.cache_dir = r.cache_dir.clone();
    }
    if r.connections.is_some() {
        args.connections = r.connections;
    }
    args
}

async fn back_up(ctx: &Context, repo: &Repository, source: &SourceConfig) -> anyhow::Result<BackupResult> {
    let options = BackupOptions {
        name: source.name.clone(),
        kind: source.kind.snapshot_kind().into(),
        tags: source.tags.clone(),
        time: None,
        meta: Default::default(),
    };
    let cancel = &ctx.cancel;
    let result = match source.kind {
        SourceKind::Pg => {
            let format = cairn::ops::pg::DumpFormat::parse(source.format.as_deref().unwrap_or("custom"))?;
            let globals = if source.globals {
                cairn::pg::globals::Globals::WithoutPasswords
            } else {
                cairn::pg::globals::Globals::Skip
            };
            cairn::ops::pg::backup_dump(repo, source.dbname.as_deref(), format, &[], globals, &options, cancel, &Silent)
                .await?
        }
        SourceKind::PgBase => {
            let wal_source = source.wal_source.as_deref().unwrap_or(&source.name);
            let timeout =
                std::time::Duration::from_secs(source.wal_timeout.unwrap_or(cairn::ops::pg::WAL_WAIT.as_secs()));
            let pgdata = source.pgdata.as_deref();
            cairn::ops::pg::backup_base(
                repo,
                source.dbname.as_deref(),
                wal_source,
                pgdata,
                timeout,
                &options,
                cancel,
                &Silent,
            )
            .await?
        }
        SourceKind::Sqlite => {
            let level = cairn::ops::sqlite::CheckLevel::parse(source.sqlite_check.as_deref().unwrap_or("quick"))?;
            let path = source.path.as_deref().expect("validated");
            cairn::ops::sqlite::backup_sqlite(repo, path, level, false, &options, cancel, &Silent).await?
        }
        SourceKind::Files => {
            let paths = source.paths.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect();
            let mut skip = Vec::new();
            if repo.backend().is_local() {
                skip.push(PathBuf::from(repo.backend().location()));
            }
            if let cairn::repo::CacheMode::Dir(dir) = ctx.cache_mode() {
                skip.push(dir);
            }
            let files = cairn::source::files::FilesOptions {
                paths,
                excludes: source.exclude.clone(),
                skip,
                vanished_ok: false,
            };
            backup::backup_files(repo, &files, &options, cancel, &Silent).await?
        }
        SourceKind::Tar => match (&source.path, &source.command) {
            (Some(path), _) => {
                let file = std::fs::File::open(path).map_err(|e| cairn::Error::io("open", path, e))?;
                backup::backup_tar(repo, file, &options, cancel, &Silent).await?
            }
            (None, Some(command)) => backup::backup_tar_command(repo, command, &options, cancel, &Silent).await?,
            (None, None) => unreachable!("validated"),
        },
        SourceKind::Secrets => {
            let key = ctx.require_secrets(repo).await?;
            cairn::ops::secrets::backup_secrets(repo, &key, &source.paths, &options, cancel, &Silent).await?
        }
        SourceKind::Command => {
            let command = source.command.as_deref().expect("validated");
            backup::backup_command(repo, command, &options, cancel, &Silent).await?
        }
    };
    Ok(result)
}

fn policy(r: &cairn::config::Retention) -> anyhow::Result<Policy> {
    let count = |n: Option<u32>| n.map(Count::N);
    Ok(Policy {
        last: count(r.keep_last),
        hourly: count(r.keep_hourly),
        daily: count(r.keep_daily),
        weekly: count(r.keep_weekly),
        monthly: count(r.keep_monthly),
        yearly: count(r.keep_yearly),
        within: r.keep_within.as_deref().map(cairn::ops::forget::parse_within).transpose()?,
        tags: r.keep_tag.clone(),
    })
}

/// Forget a source's snapshots by its retention; for pg-base, expire WAL. Returns the
/// snapshots forgotten and WAL files removed.
async fn retain(repo: &Repository, source: &SourceConfig) -> anyhow::Result<(u64, u64)> {
    let Some(retention) = &source.retention else { return Ok((0, 0)) };
    repo.refresh().await?;
    let policy = policy(retention)?;
    let mine: Vec<_> = repo
        .catalog()
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.name == source.name && s.kind == source.kind.snapshot_kind())
        .collect();
    let mut forgotten = 0;
    if !policy.is_empty() {
        let tz = match &retention.tz {
            Some(name) => jiff::tz::TimeZone::get(name)?,
            None => jiff::tz::TimeZone::system(),
        };
        let group_by = GroupBy { host: true, kind: true, name: true };
        for plan in cairn::ops::forget::plan(&mine, &policy, group_by, &tz)? {
            if plan.snapshots.iter().all(|d| !d.keep) {
                anyhow::bail!("the retention would forget every snapshot of {}; nothing forgotten", source.name);
            }
            for d in plan.snapshots.iter().filter(|d| !d.keep) {
                repo.backend().delete(&cairn::format::layout::snapshot(&d.id)).await?;
                forgotten += 1;
            }
        }
    }
    let mut wal_removed = 0;
    if let (Some(within), SourceKind::PgBase) = (&retention.keep_wal_within, source.kind) {
        repo.refresh().await?;
        let remaining = repo.catalog().snapshots()?;
        let wal_source = source.wal_source.as_deref().unwrap_or(&source.name);
        let within = cairn::ops::forget::parse_within(within)?;
        let plan = cairn::ops::walexpiry::plan(repo, &remaining, wal_source, Some(within)).await?;
        wal_removed = cairn::ops::walexpiry::expire(repo, &plan).await?;
    }
    Ok((forgotten, wal_removed))
}

pub async fn run(ctx: &Context, args: RunArgs) -> Outcome {
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let config_dir = super::context::user_config_dir();
    let path = cairn::config::locate(args.config.as_deref(), &config_dir)?;
    let config = cairn::config::load(&path)?;
    for job in &args.jobs {
        if !config.sources.iter().any(|s| &s.name == job) {
            return Err(usage(format!("no source named {job:?} in {}", path.display())));
        }
    }
    // The same cancel flag: Ctrl-C and SIGTERM stop the run between writes.
    let ctx = Context { args: config_args(&ctx.args, &config), cancel: ctx.cancel.clone() };
    let lock_path = config.run.lock_file.clone().unwrap_or_else(|| match ctx.cache_mode() {
        cairn::repo::CacheMode::Dir(dir) => dir.join("run.lock"),
        cairn::repo::CacheMode::Temporary => std::env::temp_dir().join("cairn-run.lock"),
    });
    let _lock = super::files::lock(&lock_path)?;
    let repo = ctx.open_or_create().await?;

    let mut sources = Vec::new();
    for source in config.sources.iter().filter(|s| args.jobs.is_empty() || args.jobs.contains(&s.name)) {
        let t = Instant::now();
        let mut report = SourceReport {
            name: source.name.clone(),
            kind: source.kind.snapshot_kind(),
            status: "ok",
            error: None,
            warnings: Vec::new(),
            snapshot: None,
            logical_bytes: 0,
            added_bytes: 0,
            duration_seconds: 0.0,
            forgotten: 0,
            wal_files_removed: 0,
        };
        match back_up(&ctx, &repo, source).await {
            Ok(result) => {
                report.snapshot = Some(result.id.to_hex());
                report.logical_bytes = result.snapshot.stats.size;
                report.added_bytes = result.snapshot.stats.added;
                if !result.warnings.is_empty() {
                    report.status = "warning";
                    report.warnings = result.warnings;
                }
                match retain(&repo, source).await {
                    Ok((forgotten, wal)) => (report.forgotten, report.wal_files_removed) = (forgotten, wal),
                    Err(e) => {
                        report.status = "failed";
                        report.error = Some(format!("retention: {e:#}"));
                    }
                }
            }
            Err(e) => {
                report.status = "failed";
                report.error = Some(format!("{e:#}"));
            }
        }
        report.duration_seconds = t.elapsed().as_secs_f64();
        match &report.error {
            Some(e) => eprintln!("cairn: source {}: {e}", report.name),
            None => ctx.info(format!(
                "source {}: snapshot {} ({} read, {} added)",
                report.name,
                &report.snapshot.as_deref().unwrap_or_default()
                    [..8.min(report.snapshot.as_deref().unwrap_or_default().len())],
                super::output::bytes(report.logical_bytes),
                super::output::bytes(report.added_bytes)
            )),
        }
        for w in &report.warnings {
            eprintln!("cairn: warning: source {}: {w}", report.name);
        }
        sources.push(report);
    }
    let all_backed_up = sources.iter().all(|s| s.status != "failed");

    let prune = if !config.prune.enabled {
        StepReport::skipped("prune.enabled is false")
    } else if !all_backed_up {
        StepReport::skipped("a source failed: nothing is pruned in this run")
    } else {
        let options = super::prune::PruneOptions::from_config(&config.prune).collect_options(false);
        let result = match options {
            Ok(options) => cairn::repo::gc::collect_with(&repo, &options).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        StepReport::from(&result)
    };

    let mut offsite = Vec::new();
    for target in &config.offsite {
        let result = copy_to(&ctx, &repo, target).await;
        if let Err(e) = &result {
            eprintln!("cairn: offsite {}: {e:#}", target.url);
        }
        offsite.push((target.url.clone(), StepReport::from(&result)));
    }

    let check = if config.check.read_all_every_days == 0 {
        StepReport::from(
            &cairn::ops::check::check(&repo, cairn::ops::check::ReadData::None, &Silent)
                .await
                .map_err(anyhow::Error::from),
        )
    } else {
        let n = config.check.read_all_every_days.min(256);
        let day = (started.as_second() / 86_400) as u32;
        let part = cairn::ops::check::ReadData::Part(day % n + 1, n);
        StepReport::from(&cairn::ops::check::check(&repo, part, &Silent).await.map_err(anyhow::Error::from))
    };
    let damage = check.detail.get("errors").and_then(|e| e.as_array()).is_some_and(|e| !e.is_empty())
        || prune.kind == Some(cairn::ErrorKind::Corrupt);

    repo.refresh().await?;
    let stats = cairn::ops::stats::stats(&repo)?;
    let failed = sources.iter().any(|s| s.status == "failed")
        || prune.status == "failed"
        || check.status == "failed"
        || offsite.iter().any(|(_, o)| o.status == "failed");
    let exit_code = if damage {
        13
    } else if failed {
        1
    } else if sources.iter().any(|s| s.status == "warning") {
        3
    } else {
        0
    };
    let report = RunReport {
        config: path.display().to_string(),
        started,
        duration_seconds: clock.elapsed().as_secs_f64(),
        sources,
        prune,
        offsite,
        check,
        repository: serde_json::to_value(&stats).unwrap_or_default(),
        exit_code,
    };
    let last_success = last_successes(&repo, &config)?;
    let coverage = {
        let coverage = cairn::ops::coverage::Coverage::load(repo.backend(), repo.key()).await?;
        let packs: Vec<_> = repo.catalog().packs()?.iter().map(|p| p.id).collect();
        let days = config.check.read_all_every_days.max(1);
        (days, coverage.share_within(&packs, days, jiff::Timestamp::now()))
    };
    if let Some(metrics) = args.metrics_file.as_ref().or(config.run.metrics_file.as_ref()) {
        write_atomically(metrics, metrics_text(&report, &stats, &last_success, coverage).as_bytes())?;
    }
    if let Some(file) = &config.run.report_file {
        let bytes = match is_markdown(file) {
            true => run_markdown(&report).into_bytes(),
            false => serde_json::to_vec_pretty(&report)?,
        };
        write_atomically(file, &bytes)?;
    }
    if ctx.args.json {
        print_json(&report);
    } else {
        ctx.info(format!(
            "run finished in {:.1}s: {} sources ok, {} failed; prune {}; check {}; exit {exit_code}",
            report.duration_seconds,
            report.sources.iter().filter(|s| s.status != "failed").count(),
            report.sources.iter().filter(|s| s.status == "failed").count(),
            report.prune.status,
            report.check.status,
        ));
    }
    Ok(exit_code)
}

async fn copy_to(
    ctx: &Context,
    repo: &Repository,
    target: &cairn::config::OffsiteConfig,
) -> anyhow::Result<cairn::ops::copy::CopyReport> {
    let secret = match (&target.key_file, &target.password_command, &target.password_file) {
        (Some(path), _, _) => cairn::repo::Secret::KeyFile(path.clone()),
        (None, Some(command), _) => {
            cairn::repo::Secret::Password(super::context::password_from_command(command)?.into())
        }
        (None, None, Some(path)) => cairn::repo::Secret::Password(super::context::password_file(path)?),
        (None, None, None) => anyhow::bail!("offsite {}: give password_file, password_command or key_file", target.url),
    };
    let mut backend = ctx.backend(&target.url, false)?;
    if let Some(n) = target.connections {
        backend = backend.with_connections(n.into());
    }
    let dst = Repository::open(backend, &secret, &ctx.cache_mode()).await?;
    let all = repo.catalog().snapshots()?;
    Ok(cairn::ops::copy::copy(repo, &dst, all, &ctx.cancel, &Silent).await?)
}

/// The newest snapshot time of each source: its last successful backup, this run or
/// an earlier one.
fn last_successes(repo: &Repository, config: &Config) -> anyhow::Result<Vec<(String, Option<jiff::Timestamp>)>> {
    let snapshots = repo.catalog().snapshots()?;
    Ok(config
        .sources
        .iter()
        .map(|s| {
            let newest = snapshots
                .iter()
                .filter(|(_, x)| x.name == s.name && x.kind == s.kind.snapshot_kind())
                .map(|(_, x)| x.time)
                .max();
            (s.name.clone(), newest)
        })
        .collect())
}

fn metrics_text(
    report: &RunReport,
    stats: &cairn::ops::stats::RepoStats,
    last_success: &[(String, Option<jiff::Timestamp>)],
    (coverage_days, coverage): (u32, f64),
) -> String {
    let mut metrics = Metrics::default();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| metrics.family(name, help, samples);
    let per_source = |f: &dyn Fn(&SourceReport) -> f64| -> Vec<(String, f64)> {
        report
            .sources
            .iter()
            .map(|s| (format!("{{source=\"{}\",kind=\"{}\"}}", label(&s.name), s.kind), f(s)))
            .collect()
    };
    family(
        "cairn_source_success",
        "Whether the source's backup in the last run succeeded (1) or failed (0).",
        per_source(&|s| if s.status == "failed" { 0.0 } else { 1.0 }),
    );
    family(
        "cairn_source_duration_seconds",
        "How long the source's backup took in the last run.",
        per_source(&|s| s.duration_seconds),
    );
    family(
        "cairn_source_logical_bytes",
        "Bytes the source's snapshot holds (last run).",
        per_source(&|s| s.logical_bytes as f64),
    );
    family(
        "cairn_source_added_bytes",
        "Bytes the source's snapshot newly stored (last run).",
        per_source(&|s| s.added_bytes as f64),
    );
    family(
        "cairn_source_last_success_timestamp_seconds",
        "Time of the source's newest snapshot.",
        last_success
            .iter()
            .filter_map(|(name, t)| t.map(|t| (format!("{{source=\"{}\"}}", label(name)), t.as_second() as f64)))
            .collect(),
    );
    family("cairn_repository_stored_bytes", "Bytes in pack files.", vec![(String::new(), stats.stored_bytes as f64)]);
    family(
        "cairn_repository_logical_bytes",
        "Sum of every snapshot's logical size.",
        vec![(String::new(), stats.logical_bytes as f64)],
    );
    family(
        "cairn_repository_dedup_ratio",
        "Logical bytes over stored bytes.",
        vec![(String::new(), stats.dedup_ratio)],
    );
    family("cairn_repository_snapshots", "Snapshots in the repository.", vec![(String::new(), stats.snapshots as f64)]);
    let step = |s: &StepReport| if s.status == "failed" { 0.0 } else { 1.0 };
    family(
        "cairn_prune_success",
        "Whether the last run's prune succeeded or was skipped (1) or failed (0).",
        vec![(String::new(), step(&report.prune))],
    );
    family(
        "cairn_offsite_success",
        "Whether the last run's copy to the target succeeded.",
        report.offsite.iter().map(|(url, s)| (format!("{{target=\"{}\"}}", label(url)), step(s))).collect(),
    );
    let packs_read = report.check.detail.get("packs_read").and_then(|v| v.as_f64()).unwrap_or(0.0);
    let check_errors = report.check.detail.get("errors").and_then(|v| v.as_array()).map_or(0, |e| e.len());
    family(
        "cairn_check_packs_read",
        "Packs read and verified by the last run's check.",
        vec![(String::new(), packs_read)],
    );
    family("cairn_check_errors", "Problems the last run's check found.", vec![(String::new(), check_errors as f64)]);
    family(
        "cairn_check_coverage_ratio",
        "Share of packs read and found intact by check within the days of the read plan.",
        vec![(format!("{{days=\"{coverage_days}\"}}"), coverage)],
    );
    family(
        "cairn_run_last_timestamp_seconds",
        "When the last run started.",
        vec![(String::new(), report.started.as_second() as f64)],
    );
    family("cairn_run_duration_seconds", "How long the last run took.", vec![(String::new(), report.duration_seconds)]);
    family("cairn_run_exit_code", "The last run's exit code.", vec![(String::new(), f64::from(report.exit_code))]);
    metrics.text
}

fn run_markdown(report: &RunReport) -> String {
    use super::output::bytes;
    let mut out = format!(
        "# cairn run, {}\n\nExit code **{}** after {:.1} s ({}).\n\n| source | kind | status | read | added | forgotten | note |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        report.started.strftime("%Y-%m-%d %H:%M UTC"),
        report.exit_code,
        report.duration_seconds,
        cell(&report.config)
    );
    for s in &report.sources {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&s.name),
            s.kind,
            s.status,
            bytes(s.logical_bytes),
            bytes(s.added_bytes),
            s.forgotten,
            cell(s.error.as_deref().unwrap_or(&s.warnings.join("; ")))
        ));
    }
    let step = |s: &StepReport| {
        format!("{}{}", s.status, s.error.as_deref().map(|e| format!(": {}", cell(e))).unwrap_or_default())
    };
    out.push_str(&format!("\n- prune: {}\n- check: {}\n", step(&report.prune), step(&report.check)));
    for (url, s) in &report.offsite {
        out.push_str(&format!("- offsite {}: {}\n", cell(url), step(s)));
    }
    out
}
