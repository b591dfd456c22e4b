//! `cairn drill`: prove that each configured source restores (docs/drills.md).
//!
//! For each source, the latest snapshot is restored into scratch space and verified:
//! pg dumps into a throwaway cluster (every user table counted, then the configured
//! checks), pg-base by point-in-time recovery to the latest archived WAL with archiving
//! off, SQLite by integrity_check and the configured queries, trees, tarballs and secrets
//! by comparing every file with the snapshot. Each source reports pass or fail, the
//! snapshot's age (RPO), the restore's duration (RTO) and the bytes restored. Any
//! failure exits 13. The scratch space is removed, after a failure too.

use super::context::{usage, Context};
use super::output::print_json;
use super::Outcome;
use cairn::config::{SourceConfig, SourceKind};
use cairn::format::snapshot::SnapshotFile;
use cairn::ops::sqlite::Scratch;
use cairn::progress::Silent;
use cairn::repo::Repository;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct DrillArgs {
    /// The configuration file [default: /etc/cairn/cairn.toml, then
    /// ~/.config/cairn/cairn.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drill only these sources (by name)
    #[arg(value_name = "SOURCE")]
    sources: Vec<String>,
    /// Where to restore [default: the config's drill.scratch, else the system's
    /// temporary directory]; removed afterwards
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// Write Prometheus textfile-collector metrics here (atomically) [default: the
    /// config's drill.metrics_file]
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
struct DrillReport {
    source: String,
    kind: &'static str,
    passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    /// Age of the snapshot restored, in seconds (recovery point).
    rpo_seconds: Option<f64>,
    /// How long the restore and its verification took (recovery time).
    rto_seconds: f64,
    bytes: u64,
    /// What was verified: table counts, check results, files compared.
    details: Vec<String>,
}

fn latest(repo: &Repository, source: &SourceConfig) -> anyhow::Result<(cairn::id::SnapshotId, SnapshotFile)> {
    repo.catalog()
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.name == source.name && s.kind == source.kind.snapshot_kind())
        .max_by_key(|(_, s)| s.time)
        .ok_or_else(|| anyhow::anyhow!("no snapshot of {} ({}) to drill", source.name, source.kind.snapshot_kind()))
}

/// Restore and verify one snapshot; returns the bytes restored and what was verified.
async fn drill_one(
    ctx: &Context,
    repo: &Repository,
    source: &SourceConfig,
    id: &cairn::id::SnapshotId,
    snapshot: &SnapshotFile,
    scratch: &std::path::Path,
) -> anyhow::Result<(u64, Vec<String>)> {
    let mut details = Vec::new();
    let target = scratch.join("restored");
    let bytes = match source.kind {
        SourceKind::Files | SourceKind::Tar => {
            let root = snapshot.tree.ok_or_else(|| anyhow::anyhow!("snapshot {} has no tree", id.short()))?;
            let options = cairn::ops::restore::RestoreOptions {
                includes: Vec::new(),
                confine_links: cairn::ops::archive::is_archive(snapshot),
                in_the_way: Default::default(),
            };
            cairn::ops::restore::restore_tree_to_dir(repo, &root, &target, &options, &Silent).await?;
            let check = cairn::ops::drill::verify_tree(repo, &root, &target).await?;
            if let Some(first) = check.mismatches.first() {
                anyhow::bail!("{} files differ from the snapshot; first: {first}", check.mismatches.len());
            }
            details.push(format!("{} files and {} directories equal the snapshot", check.files, check.dirs));
            check.bytes
        }
        SourceKind::Secrets => {
            let key = ctx.require_secrets(repo).await?;
            let stats =
                cairn::ops::secrets::restore_secrets(repo, id, snapshot, Some(&key), &target, &[], Default::default())
                    .await?;
            let (files, bytes) = cairn::ops::secrets::verify(repo, id, snapshot, &key).await?;
            if (stats.files, stats.bytes) != (files, bytes) {
                anyhow::bail!(
                    "restored {} files ({} bytes) but the sealed archive holds {files} ({bytes} bytes)",
                    stats.files,
                    stats.bytes
                );
            }
            details.push(format!("{files} secret files opened, authenticated and restored"));
            bytes
        }
        SourceKind::Sqlite => {
            let db = target.with_extension("db");
            let level = cairn::ops::sqlite::CheckLevel::Full;
            let report = cairn::ops::sqlite::restore_sqlite(repo, snapshot, &db, level, &Silent).await?;
            details.push(format!(
                "integrity_check ok, {} pages, user_version {}",
                report.facts.page_count, report.facts.user_version
            ));
            let conn = rusqlite::Connection::open(&db)?;
            for sql in &source.checks {
                let value: String = conn
                    .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                    .map(|v| format!("{v:?}"))
                    .map_err(|e| anyhow::anyhow!("check {sql:?} failed: {e}"))?;
                details.push(format!("{sql}: {value}"));
            }
            report.bytes
        }
        SourceKind::Pg => {
            let cluster = cairn::pg::scratch::ScratchCluster::create(&scratch.join("pgdata"))?;
            let database = snapshot.meta.get("database").and_then(|v| v.as_str()).unwrap_or("postgres").to_string();
            // With the snapshot's roles (never its tablespaces: their locations are
            // production's), owners and privileges are restored as well; without them,
            // the throwaway cluster lacks production's roles.
            let custom = cairn::ops::pg::snapshot_format(snapshot) == Some(cairn::ops::pg::DumpFormat::Custom);
            let has_globals = snapshot.meta.contains_key("globals");
            let restore = cairn::ops::pg::DbRestore {
                conninfo: cluster.conninfo("postgres"),
                jobs: 1,
                create: database != "postgres",
                no_owner: custom && !has_globals,
                no_privileges: custom && !has_globals,
                no_tablespaces: custom,
                globals: true,
                ..Default::default()
            };
            cairn::ops::pg::restore_to_db(repo, snapshot, &restore, scratch, &Silent).await?;
            pg_checks(&cluster, &database, source, &mut details)?;
            snapshot.stats.size
        }
        SourceKind::PgBase => {
            let wal_source = snapshot
                .meta
                .get("source")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| source.wal_source.clone().unwrap_or_else(|| source.name.clone()));
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            cairn::pg::client::lend_to_server(scratch)?;
            let pgdata = scratch.join("pgdata");
            let spool = cairn::ops::pitr::spool_beside(&pgdata);
            let (restore_command, probe) = super::pitr::restore_command(ctx, &wal_source, Some((8, &spool)))?;
            let options = cairn::ops::pitr::PitrOptions {
                pgdata: pgdata.clone(),
                source: wal_source.clone(),
                target: cairn::ops::pitr::Target::Latest,
                exclusive: false,
                action: "promote".into(),
                timeline: Default::default(),
                archive_off: true,
                base: Some(id.to_hex()),
                restore_command,
                probe_command: Some(probe),
                spool: Some(spool),
                port: Some(port),
                start: true,
            };
            let report = match cairn::ops::pitr::pitr(repo, &options, &Silent).await {
                Ok(report) => report,
                Err(e) => {
                    // The scratch directory goes; the server's log is worth keeping.
                    let log = pgdata.join("cairn-pitr.log");
                    let kept = std::env::temp_dir().join(format!("cairn-drill-{}-{}.log", source.name, id.short()));
                    let message = e.message().replace(&format!("see {}; ", log.display()), "");
                    let message =
                        message.split(&format!("; {} is left", pgdata.display())).next().unwrap_or("").to_string();
                    return Err(match std::fs::copy(&log, &kept) {
                        Ok(_) => anyhow::anyhow!("{message}; the server's log is kept at {}", kept.display()),
                        Err(_) => anyhow::anyhow!("{message}"),
                    });
                }
            };
            let cluster = cairn::pg::scratch::ScratchCluster::adopt(&pgdata, port)?;
            details.push(format!(
                "recovered base {} through archived WAL {}: {}",
                id.short(),
                report.last_archived_wal,
                report.server_state.clone().unwrap_or_default()
            ));
            for database in cluster.databases()? {
                pg_checks(&cluster, &database, source, &mut details)?;
            }
            snapshot.stats.size
        }
        SourceKind::Command => {
            let content =
                snapshot.content.as_ref().ok_or_else(|| anyhow::anyhow!("snapshot {} has no content", id.short()))?;
            let n = cairn::ops::restore::restore_stream(repo, content, &mut std::io::sink(), &Silent).await?;
            details.push(format!("{n} bytes read back, every blob authenticated and re-hashed"));
            n
        }
    };
    Ok((bytes, details))
}

/// Count every user table of `database` and run the source's checks there.
fn pg_checks(
    cluster: &cairn::pg::scratch::ScratchCluster,
    database: &str,
    source: &SourceConfig,
    details: &mut Vec<String>,
) -> anyhow::Result<()> {
    let counts = cluster.table_counts(database)?;
    let listed: Vec<String> = counts.iter().map(|(t, n)| format!("{t}={n}")).collect();
    details.push(format!("database {database}: {} tables: {}", counts.len(), listed.join(", ")));
    for sql in &source.checks {
        match cluster.sql(database, sql) {
            Ok(out) => details.push(format!("{database}: {sql}: {}", out.replace('\n', " "))),
            // A check names no database: it must hold in one of them (the others lack
            // its tables).
            Err(e) if database == "postgres" || database.starts_with("template") => {
                details.push(format!("{database}: {sql}: not applicable ({e})"))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub async fn run(ctx: &Context, args: DrillArgs) -> Outcome {
    let started = jiff::Timestamp::now();
    let path = cairn::config::locate(args.config.as_deref(), &super::context::user_config_dir())?;
    let config = cairn::config::load(&path)?;
    for name in &args.sources {
        if !config.sources.iter().any(|s| &s.name == name) {
            return Err(usage(format!("no source named {name:?} in {}", path.display())));
        }
    }
    let ctx = Context { args: super::run::config_args(&ctx.args, &config), cancel: ctx.cancel.clone() };
    let repo = ctx.open().await?;
    let scratch_root = args.scratch.clone().or(config.drill.scratch.clone()).unwrap_or_else(std::env::temp_dir);
    let mut reports = Vec::new();
    for source in config.sources.iter().filter(|s| args.sources.is_empty() || args.sources.contains(&s.name)) {
        let clock = Instant::now();
        let mut report = DrillReport {
            source: source.name.clone(),
            kind: source.kind.snapshot_kind(),
            passed: false,
            error: None,
            snapshot: None,
            rpo_seconds: None,
            rto_seconds: 0.0,
            bytes: 0,
            details: Vec::new(),
        };
        let result = async {
            let (id, snapshot) = latest(&repo, source)?;
            report.snapshot = Some(id.to_hex());
            report.rpo_seconds = Some((started.as_second() - snapshot.time.as_second()).max(0) as f64);
            // Removed when this block ends, whatever happened.
            let scratch = Scratch::new(&scratch_root, "drill")?;
            drill_one(&ctx, &repo, source, &id, &snapshot, scratch.path()).await
        }
        .await;
        report.rto_seconds = clock.elapsed().as_secs_f64();
        match result {
            Ok((bytes, details)) => {
                report.passed = true;
                report.bytes = bytes;
                report.details = details;
                ctx.info(format!(
                    "drill {}: passed in {:.1}s ({} restored); {}",
                    report.source,
                    report.rto_seconds,
                    super::output::bytes(bytes),
                    report.details.join("; ")
                ));
            }
            Err(e) => {
                eprintln!("cairn: drill {}: FAILED: {e:#}", report.source);
                report.error = Some(format!("{e:#}"));
            }
        }
        reports.push(report);
    }
    let passed = reports.iter().all(|r| r.passed);
    if let Some(metrics) = args.metrics_file.as_ref().or(config.drill.metrics_file.as_ref()) {
        super::files::write_atomically(metrics, drill_metrics(&reports, started).as_bytes())?;
    }
    if let Some(file) = &config.drill.report_file {
        let bytes = match super::files::is_markdown(file) {
            true => drill_markdown(&reports, started).into_bytes(),
            false => serde_json::to_vec_pretty(&reports)?,
        };
        super::files::write_atomically(file, &bytes)?;
    }
    if ctx.args.json {
        print_json(&reports);
    }
    Ok(if passed { 0 } else { 13 })
}

fn drill_metrics(reports: &[DrillReport], started: jiff::Timestamp) -> String {
    let mut m = super::metrics::Metrics::default();
    let labels = |r: &DrillReport| format!("{{source=\"{}\",kind=\"{}\"}}", super::metrics::label(&r.source), r.kind);
    m.family(
        "cairn_drill_success",
        "Whether the source's last drill restored and verified its latest snapshot (1) or not (0).",
        reports.iter().map(|r| (labels(r), if r.passed { 1.0 } else { 0.0 })).collect(),
    );
    m.family(
        "cairn_drill_rto_seconds",
        "How long the last drill's restore and verification took.",
        reports.iter().map(|r| (labels(r), r.rto_seconds)).collect(),
    );
    m.family(
        "cairn_drill_rpo_seconds",
        "Age of the snapshot the last drill restored.",
        reports.iter().filter_map(|r| r.rpo_seconds.map(|v| (labels(r), v))).collect(),
    );
    m.family(
        "cairn_drill_bytes",
        "Bytes the last drill restored.",
        reports.iter().map(|r| (labels(r), r.bytes as f64)).collect(),
    );
    m.family(
        "cairn_drill_last_timestamp_seconds",
        "When the last drill started.",
        vec![(String::new(), started.as_second() as f64)],
    );
    m.text
}

fn drill_markdown(reports: &[DrillReport], started: jiff::Timestamp) -> String {
    use super::files::cell;
    let passed = reports.iter().filter(|r| r.passed).count();
    let mut out = format!(
        "# cairn drill, {}\n\n{passed} of {} sources restored and verified.\n\n| source | kind | result | snapshot age | restore time | restored | details |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        started.strftime("%Y-%m-%d %H:%M UTC"),
        reports.len()
    );
    for r in reports {
        let age = r.rpo_seconds.map(|s| format!("{:.1} h", s / 3600.0)).unwrap_or_else(|| "-".into());
        let result = if r.passed {
            "passed".to_string()
        } else {
            format!("**FAILED**: {}", cell(r.error.as_deref().unwrap_or("")))
        };
        out.push_str(&format!(
            "| {} | {} | {} | {age} | {:.1} s | {} | {} |\n",
            cell(&r.source),
            r.kind,
            result,
            r.rto_seconds,
            super::output::bytes(r.bytes),
            cell(&r.details.join("; "))
        ));
    }
    out
}
