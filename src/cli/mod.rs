//! The `cairn` command line: clap definitions, dispatch, output and exit codes.
//!
//! This is the only place that prints or chooses exit codes (docs/errors.md):
//! 0 ok, 1 fatal, 2 usage, 3 snapshot written but some source data unreadable,
//! 10 no repository, 11 a concurrent operation got there first, 12 wrong password, 13 integrity damage found,
//! 130 interrupted.

mod backup;
mod cat;
mod check;
mod context;
mod copy;
mod drill;
mod files;
mod forget;
mod init;
mod key;
mod metrics;
mod output;
mod pitr;
mod prune;
mod repair;
mod restore;
mod run;
mod snapshots;
mod stats;
mod wal;

use cairn::ErrorKind;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub use context::{Context, GlobalArgs};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Deduplicating, encrypted backups for databases and services", long_about = None)]
#[command(after_help = "With no --repo and no CAIRN_REPO, cairn uses (and on first use creates) a local repository \
under the user's data directory, unlocked by a key file in the user's config directory.\n\n\
Exit codes: 0 ok, 1 fatal error, 2 usage, 3 snapshot written but some source data unreadable, \
10 no repository, 11 a concurrent operation got there first, 12 wrong password, 13 integrity damage found, 130 interrupted.")]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository
    Init(init::InitArgs),
    /// Manage the passwords (key slots) that open the repository
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Back up a stream, file trees, a tarball, a SQLite database, PostgreSQL, or secrets
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// List snapshots
    Snapshots(snapshots::SnapshotsArgs),
    /// Restore a snapshot to a directory, a file, stdout or a tar stream
    Restore(restore::RestoreArgs),
    /// Verify the repository's structure and, optionally, every byte of data
    Check(check::CheckArgs),
    /// Copy snapshots to another repository, sending only what it lacks
    Copy(copy::CopyArgs),
    /// Forget snapshots by a retention policy (keep last/hourly/daily/weekly/monthly/yearly/within/tag)
    Forget(forget::ForgetArgs),
    /// Remove data no snapshot needs (one removal run; safe next to running backups)
    Prune(prune::PruneArgs),
    /// Repair the repository's index from the packs themselves
    #[command(subcommand)]
    Repair(repair::RepairCommand),
    /// PostgreSQL WAL archive: push (archive_command), fetch (restore_command), list
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// Point-in-time recovery of a PostgreSQL cluster from a base backup and archived WAL
    Pitr(pitr::PitrArgs),
    /// The nightly job from the configuration file: back up every source, forget,
    /// prune, copy offsite, check, write the report and metrics
    Run(run::RunArgs),
    /// Prove restorability: restore each configured source's latest snapshot into
    /// scratch space and verify it (exit 13 on any failure)
    Drill(drill::DrillArgs),
    /// Show what the repository holds and how well it deduplicates
    Stats(stats::StatsArgs),
    /// Print a decrypted repository object as JSON, for debugging
    Cat(cat::CatArgs),
}

/// An error the CLI reports with a specific exit code.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// What a command reports back: 0, or 3 for "done, with unreadable source data", or 13.
pub type Outcome = anyhow::Result<u8>;

/// The status of a process that a closed pipe ended (128 + SIGPIPE), as the shell reports
/// for `yes | head -1`.
const CLOSED_PIPE: u8 = 141;

pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // PostgreSQL takes a restore_command's exit below 126 for "no such file" and ends
        // recovery there: a `wal fetch` it cannot even parse must stop recovery instead.
        Err(e) if is_wal_fetch() && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(wal::FETCH_FAILED);
        }
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let ctx = Context::new(cli.global);
        ctx.watch_signals();
        run(&ctx, cli.command).await
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) if err.downcast_ref::<cairn::Error>().is_some_and(|e| e.kind() == ErrorKind::OutputClosed) => {
            ExitCode::from(CLOSED_PIPE)
        }
        Err(err) => {
            let code = exit_code(&err);
            eprintln!("cairn: error: {err:#}");
            ExitCode::from(code)
        }
    }
}

/// `cairn snapshots | head -1`: Rust ignores SIGPIPE, so `println!` to a closed pipe
/// panics ("failed printing to stdout: Broken pipe"). That one panic ends the process
/// quietly with the status a closed pipe conventionally gives; any other panic is
/// reported as usual.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(CLOSED_PIPE.into());
        }
        default(info);
        if is_wal_fetch() {
            // A panic's status, 101, would read to PostgreSQL as "not archived".
            std::process::exit(wal::FETCH_FAILED.into());
        }
    }));
}

/// Is this process PostgreSQL's restore_command (`cairn ... wal fetch ...`)?
fn is_wal_fetch() -> bool {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.windows(2).any(|w| w[0] == "wal" && w[1] == "fetch")
}

async fn run(ctx: &Context, command: Command) -> Outcome {
    match command {
        Command::Init(args) => init::run(ctx, args).await,
        Command::Key(cmd) => key::run(ctx, cmd).await,
        Command::Backup(cmd) => backup::run(ctx, cmd).await,
        Command::Snapshots(args) => snapshots::run(ctx, args).await,
        Command::Restore(args) => restore::run(ctx, args).await,
        Command::Check(args) => check::run(ctx, args).await,
        Command::Copy(args) => copy::run(ctx, args).await,
        Command::Forget(args) => forget::run(ctx, args).await,
        Command::Prune(args) => prune::run(ctx, args).await,
        Command::Repair(cmd) => repair::run(ctx, cmd).await,
        Command::Wal(cmd) => wal::run(ctx, cmd).await,
        Command::Pitr(args) => pitr::run(ctx, args).await,
        Command::Run(args) => run::run(ctx, args).await,
        Command::Drill(args) => drill::run(ctx, args).await,
        Command::Stats(args) => stats::run(ctx, args).await,
        Command::Cat(args) => cat::run(ctx, args).await,
    }
}

fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(exit) = err.downcast_ref::<Exit>() {
        return exit.code;
    }
    match err.downcast_ref::<cairn::Error>().map(|e| e.kind()) {
        Some(ErrorKind::NoRepository) => 10,
        Some(ErrorKind::Locked) => 11,
        Some(ErrorKind::WrongPassword) => 12,
        Some(ErrorKind::Corrupt) => 13,
        Some(ErrorKind::Cancelled) => 130,
        _ => 1,
    }
}
