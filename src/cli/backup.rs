//! `cairn backup stdin|files|pg|pg-base|tar|sqlite|secrets`

use super::context::Context;
use super::output::{bytes, print_json, Bar};
use super::Outcome;
use cairn::ops::backup::{self, BackupOptions, BackupResult};
use cairn::source::files::FilesOptions;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Back up standard input, or the output of --command
    Stdin(StdinArgs),
    /// Back up files and directories
    Files(FilesArgs),
    /// Back up a PostgreSQL database with pg_dump (custom format, uncompressed)
    Pg(PgArgs),
    /// Physical base backup of a PostgreSQL cluster (pg_basebackup), for point-in-time recovery
    #[command(name = "pg-base")]
    PgBase(PgBaseArgs),
    /// Back up a tar archive (plain, gzip or zstd) member by member, so nightly tarballs
    /// deduplicate; `restore --tar` gives the archive back
    Tar(TarArgs),
    /// Consistent snapshot of a live SQLite database (online backup API), checked first
    Sqlite(SqliteArgs),
    /// Back up keys and credentials into the secrets compartment (needs its password):
    /// names and contents unreadable with the repository password alone
    Secrets(SecretsArgs),
}

#[derive(Args)]
pub struct SecretsArgs {
    /// Files and directories to seal
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Snapshot name: snapshots of one name form a series
    #[arg(long)]
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct SqliteArgs {
    /// The database file
    #[arg(value_name = "DBFILE")]
    path: PathBuf,
    /// Snapshot name: snapshots of one name form a series
    #[arg(long)]
    name: String,
    /// Check run on the copy before it is stored: quick (PRAGMA quick_check), full
    /// (PRAGMA integrity_check) or none
    #[arg(long, default_value = "quick", value_parser = ["quick", "full", "none"])]
    check: String,
    /// Store a copy that fails its check anyway (tagged `corrupt`, exit code 3)
    #[arg(long)]
    allow_corrupt: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct TarArgs {
    /// Snapshot name: snapshots of one name form a series
    #[arg(long)]
    name: String,
    /// The archive to read, or `-` for standard input
    #[arg(default_value = "-", value_name = "FILE|-")]
    file: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct PgBaseArgs {
    /// Snapshot name: snapshots of one name form a series
    #[arg(long)]
    name: String,
    /// Connection string or URI for pg_basebackup and psql [default: libpq's PG* variables]
    #[arg(long, value_name = "CONNINFO")]
    dbname: Option<String>,
    /// The WAL source this cluster's archive_command pushes to
    #[arg(long)]
    source: String,
    /// Read the server's data directory here directly, between pg_backup_start and
    /// pg_backup_stop, instead of through pg_basebackup (the server must run on this host
    /// and cairn must be able to read the directory)
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// How long to wait for the server to archive WAL (a first backup's forced segment
    /// switch, pg_basebackup's wait at the end, the backup's last segment) before failing
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    wal_timeout: u64,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct PgArgs {
    /// Snapshot name: snapshots of one name form a series
    #[arg(long)]
    name: String,
    /// Connection string or URI passed to pg_dump and psql [default: libpq's PG* variables]
    #[arg(long, value_name = "CONNINFO")]
    dbname: Option<String>,
    /// Dump format: custom (pg_restore, --jobs, --clean, --create) or plain (psql)
    #[arg(long, default_value = "custom", value_parser = ["custom", "plain"])]
    format: String,
    /// Also store the cluster's roles and tablespaces (pg_dumpall --globals-only, without
    /// role passwords); `restore --to-db` applies them before the database
    #[arg(long)]
    globals: bool,
    /// With --globals: include the roles' password hashes
    #[arg(long, requires = "globals")]
    role_passwords: bool,
    /// Further pg_dump arguments, after `--` (e.g. -- --schema=app --exclude-table=audit)
    #[arg(last = true, value_name = "PG_DUMP_ARGS")]
    pg_dump_args: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct CommonArgs {
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Record this time (RFC 3339, e.g. 2026-01-31T02:00:00Z) instead of now
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    time: Option<jiff::Timestamp>,
    /// Write Prometheus textfile-collector metrics of this backup here (atomically)
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct StdinArgs {
    /// Snapshot name: snapshots of one name form a series
    #[arg(long)]
    name: String,
    /// Source kind recorded in the snapshot (e.g. pg for a pg_dump stream)
    #[arg(long, default_value = "stdin")]
    kind: String,
    /// Run this shell command and back up its output; no snapshot unless it exits 0
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct FilesArgs {
    /// Files and directories to back up
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Snapshot name [default: the paths, comma-separated]
    #[arg(long)]
    name: Option<String>,
    /// Skip paths matching this glob (repeatable); without '/' it matches file names
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

impl CommonArgs {
    fn options(self, name: String, kind: String) -> BackupOptions {
        BackupOptions { name, kind, tags: self.tags, time: self.time, meta: Default::default() }
    }
}

impl BackupCommand {
    fn metrics_file(&self) -> Option<PathBuf> {
        match self {
            BackupCommand::Stdin(a) => a.common.metrics_file.clone(),
            BackupCommand::Files(a) => a.common.metrics_file.clone(),
            BackupCommand::Pg(a) => a.common.metrics_file.clone(),
            BackupCommand::PgBase(a) => a.common.metrics_file.clone(),
            BackupCommand::Tar(a) => a.common.metrics_file.clone(),
            BackupCommand::Sqlite(a) => a.common.metrics_file.clone(),
            BackupCommand::Secrets(a) => a.common.metrics_file.clone(),
        }
    }
}

/// The metrics of one backup (Prometheus text).
fn backup_metrics(result: &BackupResult) -> String {
    let s = &result.snapshot;
    let labels = format!("{{name=\"{}\",kind=\"{}\"}}", super::metrics::label(&s.name), super::metrics::label(&s.kind));
    let mut m = super::metrics::Metrics::default();
    let mut family = |name: &str, help: &str, value: f64| m.family(name, help, vec![(labels.clone(), value)]);
    family(
        "cairn_backup_last_success_timestamp_seconds",
        "Time of the last successful backup.",
        s.time.as_second() as f64,
    );
    family("cairn_backup_duration_seconds", "How long the last backup took.", s.stats.duration_ms as f64 / 1000.0);
    family("cairn_backup_logical_bytes", "Bytes the last snapshot holds.", s.stats.size as f64);
    family("cairn_backup_added_bytes", "Bytes the last backup newly stored.", s.stats.added as f64);
    family("cairn_backup_warnings", "Items the last backup could not read.", result.warnings.len() as f64);
    m.text
}

fn parse_time(text: &str) -> Result<jiff::Timestamp, String> {
    text.parse::<jiff::Timestamp>()
        .map_err(|e| format!("{text:?} is not an RFC 3339 time such as 2026-01-31T02:00:00Z: {e}"))
}

pub async fn run(ctx: &Context, command: BackupCommand) -> Outcome {
    let metrics_file = command.metrics_file();
    let repo = ctx.open_or_create().await?;
    let progress = Bar::boxed(ctx.progress_enabled());
    let result = match command {
        BackupCommand::Stdin(args) => {
            let options = args.common.options(args.name, args.kind);
            match &args.command {
                Some(cmd) => backup::backup_command(&repo, cmd, &options, &ctx.cancel, progress.as_ref()).await?,
                None => {
                    backup::backup_stream(&repo, std::io::stdin(), &options, &ctx.cancel, progress.as_ref()).await?
                }
            }
        }
        BackupCommand::Files(args) => {
            let absolute: Vec<PathBuf> =
                args.paths.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect();
            let name = args
                .name
                .unwrap_or_else(|| absolute.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","));
            let options = BackupOptions {
                name,
                kind: "files".into(),
                tags: args.common.tags,
                time: args.common.time,
                meta: Default::default(),
            };
            // Never back up the repository or the catalog into themselves.
            let mut skip = Vec::new();
            if repo.backend().is_local() {
                skip.push(PathBuf::from(repo.backend().location()));
            }
            if let cairn::repo::CacheMode::Dir(dir) = ctx.cache_mode() {
                skip.push(dir);
            }
            let files = FilesOptions { paths: absolute, excludes: args.excludes, skip, vanished_ok: false };
            backup::backup_files(&repo, &files, &options, &ctx.cancel, progress.as_ref()).await?
        }
        BackupCommand::Pg(args) => {
            let options = args.common.options(args.name, "pg".into());
            let format = cairn::ops::pg::DumpFormat::parse(&args.format)?;
            cairn::ops::pg::backup_dump(
                &repo,
                args.dbname.as_deref(),
                format,
                &args.pg_dump_args,
                match (args.globals, args.role_passwords) {
                    (false, _) => cairn::pg::globals::Globals::Skip,
                    (true, false) => cairn::pg::globals::Globals::WithoutPasswords,
                    (true, true) => cairn::pg::globals::Globals::WithPasswords,
                },
                &options,
                &ctx.cancel,
                progress.as_ref(),
            )
            .await?
        }
        BackupCommand::PgBase(args) => {
            let options = args.common.options(args.name, "pg-base".into());
            cairn::ops::pg::backup_base(
                &repo,
                args.dbname.as_deref(),
                &args.source,
                args.pgdata.as_deref(),
                std::time::Duration::from_secs(args.wal_timeout),
                &options,
                &ctx.cancel,
                progress.as_ref(),
            )
            .await?
        }
        BackupCommand::Sqlite(args) => {
            let options = args.common.options(args.name, "sqlite".into());
            let level = cairn::ops::sqlite::CheckLevel::parse(&args.check)?;
            cairn::ops::sqlite::backup_sqlite(
                &repo,
                &args.path,
                level,
                args.allow_corrupt,
                &options,
                &ctx.cancel,
                progress.as_ref(),
            )
            .await?
        }
        BackupCommand::Secrets(args) => {
            let secrets = ctx.require_secrets(&repo).await?;
            let options = args.common.options(args.name, cairn::ops::secrets::KIND.into());
            cairn::ops::secrets::backup_secrets(&repo, &secrets, &args.paths, &options, &ctx.cancel, progress.as_ref())
                .await?
        }
        BackupCommand::Tar(args) => {
            let options = args.common.options(args.name, "tar".into());
            if args.file.as_os_str() == "-" {
                backup::backup_tar(&repo, std::io::stdin(), &options, &ctx.cancel, progress.as_ref()).await?
            } else {
                let file = std::fs::File::open(&args.file).map_err(|e| cairn::Error::io("open", &args.file, e))?;
                backup::backup_tar(&repo, file, &options, &ctx.cancel, progress.as_ref()).await?
            }
        }
    };
    report(ctx, &result);
    if let Some(path) = metrics_file {
        super::files::write_atomically(&path, backup_metrics(&result).as_bytes())?;
    }
    Ok(if result.warnings.is_empty() { 0 } else { 3 })
}

fn report(ctx: &Context, result: &BackupResult) {
    for warning in &result.warnings {
        eprintln!("cairn: warning: {warning}");
    }
    let s = &result.snapshot.stats;
    if ctx.args.json {
        print_json(&serde_json::json!({
            "id": result.id, "time": result.snapshot.time, "kind": result.snapshot.kind, "name": result.snapshot.name,
            "size": s.size, "added": s.added, "added_blobs": s.added_blobs, "files": s.files, "dirs": s.dirs,
            "unchanged_files": s.unchanged_files, "warnings": result.warnings, "duration_ms": s.duration_ms,
        }));
        return;
    }
    let secs = s.duration_ms as f64 / 1000.0;
    let mut line = format!("snapshot {} saved: {} read, {} added", result.id.short(), bytes(s.size), bytes(s.added));
    if result.snapshot.is_tree() {
        line.push_str(&format!(", {} files ({} unchanged), {} dirs", s.files, s.unchanged_files, s.dirs));
    }
    line.push_str(&format!(" in {secs:.1}s"));
    if !result.warnings.is_empty() {
        line.push_str(&format!("; {} items could not be read (see warnings)", result.warnings.len()));
    }
    ctx.info(line);
}
