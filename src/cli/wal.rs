//! `cairn wal push|fetch|list`: PostgreSQL's archive_command and restore_command.

use super::context::Context;
use super::output::{bytes, print_json};
use super::{Exit, Outcome};
use cairn::pg::wal;
use cairn::repo::Repository;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Exit code of a fetch that failed for any reason but "not archived": above 125, so
/// PostgreSQL stops recovery instead of taking it for the end of the WAL and promoting.
pub const FETCH_FAILED: u8 = 126;

#[derive(Subcommand)]
pub enum WalCommand {
    /// Archive one WAL file (archive_command = 'cairn wal push %p --source NAME')
    Push(PushArgs),
    /// Restore one archived WAL file (restore_command = 'cairn wal fetch %f %p --source NAME')
    Fetch(FetchArgs),
    /// Show archived WAL: ranges and gaps per timeline, history and backup files
    List(ListArgs),
}

#[derive(Args)]
pub struct PushArgs {
    /// The file to archive (%p)
    path: PathBuf,
    /// The WAL source: one name per cluster
    #[arg(long)]
    source: String,
    /// Archive through a background pusher that pushes every ready file of pg_wal
    /// several at a time; this command still exits 0 only once its file is archived
    #[arg(long = "async", requires = "spool")]
    asynchronous: bool,
    /// With --async: the pusher's spool (its verdicts; no WAL is copied there)
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// With --async: how long to wait for the pusher's verdict on this file
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    wait: u64,
    /// (internal) Be the background pusher
    #[arg(long, hide = true, requires = "spool")]
    pusher: bool,
}

#[derive(Args)]
pub struct FetchArgs {
    /// The file name PostgreSQL asks for (%f)
    #[arg(required_unless_present = "probe")]
    name: Option<String>,
    /// Where to write it (%p)
    #[arg(required_unless_present = "probe")]
    dest: Option<PathBuf>,
    #[arg(long)]
    source: String,
    /// Write nothing: open the repository and read the source's record (and the file
    /// NAME, if given) as a fetch would; exit 0 only if that works (pitr runs this as the
    /// server's user first)
    #[arg(long, conflicts_with = "dest")]
    probe: bool,
    /// Keep this many segments after the one asked for fetched ahead in --spool, by a
    /// background process, so replay does not wait for each fetch (0: off)
    #[arg(long, value_name = "N", default_value_t = 0, requires = "spool")]
    prefetch: u64,
    /// The read-ahead spool: a directory outside the data directory, one per recovery
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// (internal) Be the background process that fills --spool
    #[arg(long, hide = true, requires = "spool")]
    ahead: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only this source [default: every source]
    #[arg(long)]
    source: Option<String>,
    /// Also show which WAL `forget --keep-wal-within DURATION` would keep, and why, and
    /// what it would remove
    #[arg(long, value_name = "DURATION")]
    keep_wal_within: Option<String>,
}

fn is_segment(name: &str) -> bool {
    matches!(wal::classify(name), Ok(wal::WalKind::Segment { .. }))
}

/// Start the background process that fills the spool, unless one is running: this very
/// command line with `--ahead`, in its own process group (the server's signals to its
/// startup process do not reach it), detached from every stream.
fn keep_ahead(spool: &cairn::pg::prefetch::Spool) -> anyhow::Result<()> {
    if spool.is_served()? {
        return Ok(());
    }
    start_background("--ahead")
}

/// This very command line plus `flag`, in its own process group (the server's signals
/// to its archiver or startup process do not reach it), detached from every stream.
fn start_background(flag: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg(flag)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start cairn's background process: {e}"))?;
    Ok(())
}

/// The pusher's verdict on `name`, waiting up to `wait` (a verdict already taken counts).
fn spool_outcome(
    spool: &cairn::pg::asyncpush::PushSpool,
    source: &str,
    path: &std::path::Path,
    wait: std::time::Duration,
) -> anyhow::Result<cairn::pg::asyncpush::Outcome> {
    let name = path.display();
    spool.wait(source, path, wait).ok_or_else(|| {
        anyhow::anyhow!(
            "the background pusher did not archive {name} within {} s: PostgreSQL will retry; \
             if this repeats, run the same archive_command without --async to see the reason",
            wait.as_secs()
        )
    })
}

async fn unlock(ctx: &Context) -> anyhow::Result<(cairn::backend::Backend, cairn::crypto::MasterKey)> {
    let (url, is_default) = ctx.repo_url();
    let secret = ctx.secret_or_default(is_default)?;
    let (backend, key, _, _) = Repository::unlock(ctx.backend(&url, false)?, &secret).await?;
    Ok((backend, key))
}

pub async fn run(ctx: &Context, command: WalCommand) -> Outcome {
    match command {
        WalCommand::Push(args) if args.pusher => {
            let (backend, key) = unlock(ctx).await?;
            let pg_wal =
                std::path::absolute(&args.path)?.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let dir = args.spool.as_deref().expect("required");
            cairn::pg::asyncpush::run_pusher(&backend, &key, &args.source, &pg_wal, dir).await?;
            Ok(0)
        }
        WalCommand::Push(args) if args.asynchronous => {
            let spool = cairn::pg::asyncpush::PushSpool::open(args.spool.as_deref().expect("required"))?;
            let name = args.path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            wal::classify(&name)?;
            // Usually the pusher has archived this file already; else start it (once) and
            // wait for its verdict.
            let outcome = match spool.take(&args.source, &args.path) {
                Some(outcome) => outcome,
                None => {
                    if !spool.is_served()? {
                        start_background("--pusher")?;
                    }
                    spool_outcome(&spool, &args.source, &args.path, std::time::Duration::from_secs(args.wait))?
                }
            };
            match outcome {
                cairn::pg::asyncpush::Outcome::Archived => Ok(0),
                cairn::pg::asyncpush::Outcome::Failed(why) => Err(anyhow::anyhow!("{why}")),
            }
        }
        WalCommand::Push(args) => {
            let (backend, key) = unlock(ctx).await?;
            match wal::push(&backend, &key, &args.source, &args.path).await? {
                wal::Pushed::Stored => {}
                wal::Pushed::AlreadyArchived => {
                    ctx.info(format!("{} was already archived with identical content", args.path.display()))
                }
            }
            Ok(0)
        }
        WalCommand::Fetch(args) if args.probe => {
            wal::check_source(&args.source)?;
            let (backend, key) = unlock(ctx).await?;
            if wal::source_info(&backend, &key, &args.source).await?.is_none() {
                return Err(anyhow::anyhow!(
                    "WAL source {:?} has nothing archived in {}",
                    args.source,
                    ctx.repo_url().0
                ));
            }
            if let Some(name) = &args.name {
                wal::read(&backend, &key, &args.source, name).await?;
            }
            Ok(0)
        }
        WalCommand::Fetch(args) if args.ahead => {
            let (backend, key) = unlock(ctx).await?;
            let dir = args.spool.as_deref().expect("required");
            cairn::pg::prefetch::run_ahead(&backend, &key, &args.source, dir, args.prefetch).await?;
            Ok(0)
        }
        WalCommand::Fetch(args) => {
            let (name, dest) = (args.name.clone().unwrap_or_default(), args.dest.clone().unwrap_or_default());
            let result = async {
                let spool = match &args.spool {
                    Some(dir) if args.prefetch > 0 && is_segment(&name) => {
                        let backend = ctx.backend(&ctx.repo_url().0, false)?;
                        let owner = cairn::pg::prefetch::Spool::owner(backend.location(), &args.source);
                        cairn::pg::prefetch::Spool::open(dir, &owner)?
                    }
                    _ => None,
                };
                if let Some(spool) = &spool {
                    if spool.take(&name, &dest)? {
                        spool.want(&name)?;
                        keep_ahead(spool)?;
                        return Ok(Some(0));
                    }
                }
                let (backend, key) = unlock(ctx).await?;
                let fetched = wal::fetch(&backend, &key, &args.source, &name, &dest).await?;
                if let (Some(spool), Some(_)) = (&spool, fetched) {
                    spool.want(&name)?;
                    keep_ahead(spool)?;
                }
                Ok::<_, anyhow::Error>(fetched)
            }
            .await;
            match result {
                Ok(Some(_)) => Ok(0),
                // Normal at the end of the archive: PostgreSQL asks for the next file. Only
                // the storage's own "no such object" says this; anything else exits 126.
                Ok(None) => {
                    if ctx.args.verbose > 0 {
                        eprintln!("cairn: {name} is not archived in source {}", args.source);
                    }
                    Ok(1)
                }
                Err(e) => Err(anyhow::Error::new(Exit {
                    code: FETCH_FAILED,
                    message: format!("cannot fetch {name} (recovery must stop, not end here): {e:#}"),
                })),
            }
        }
        WalCommand::List(args) => {
            let (backend, key) = unlock(ctx).await?;
            let sources = match args.source {
                Some(s) => vec![s],
                None => {
                    let mut names: Vec<String> = backend
                        .list(cairn::format::layout::WAL)
                        .await?
                        .iter()
                        .filter_map(|o| {
                            o.key.strip_prefix(cairn::format::layout::WAL)?.split('/').next().map(str::to_string)
                        })
                        .collect();
                    names.sort();
                    names.dedup();
                    names
                }
            };
            let mut listings = Vec::new();
            for source in &sources {
                listings.push(wal::list(&backend, &key, source).await?);
            }
            // What retention keeps, by the base backups that remain.
            let mut retention = Vec::new();
            let within = args
                .keep_wal_within
                .as_deref()
                .map(|t| {
                    cairn::ops::forget::parse_within(t)
                        .map_err(|e| super::context::usage(format!("--keep-wal-within: {}", e.message())))
                })
                .transpose()?;
            {
                let repo = ctx.open().await?;
                let snapshots = repo.catalog().snapshots()?;
                for source in &sources {
                    retention.push(cairn::ops::walexpiry::plan(&repo, &snapshots, source, within).await?);
                }
            }
            if ctx.args.json {
                let out: Vec<_> = listings
                    .iter()
                    .zip(&retention)
                    .map(|(l, r)| serde_json::json!({ "listing": l, "retention": r }))
                    .collect();
                print_json(&out);
                return Ok(0);
            }
            for l in &listings {
                match &l.cluster {
                    Some(c) => println!(
                        "source {} (system identifier {}, {}-byte segments)",
                        l.source, c.system_identifier, c.segment_size
                    ),
                    None => println!("source {}", l.source),
                }
                for t in &l.timelines {
                    for r in &t.ranges {
                        println!(
                            "  timeline {:<3} {} .. {}  {} segments, {} stored",
                            t.timeline,
                            r.first,
                            r.last,
                            r.segments,
                            bytes(r.stored_bytes)
                        );
                    }
                    for (first, last) in &t.gaps {
                        println!("  timeline {:<3} GAP {first} .. {last} missing", t.timeline);
                    }
                }
                for h in &l.history {
                    println!("  history  {}", h.name);
                }
                for b in &l.backup_labels {
                    println!("  backup   {}", b.name);
                }
                for p in &l.partial {
                    println!("  partial  {}", p.name);
                }
            }
            for r in &retention {
                super::forget::print_wal_plan(r, true);
            }
            Ok(0)
        }
    }
}
