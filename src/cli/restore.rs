//! `cairn restore`

use super::context::{usage, Context};
use super::output::{bytes, print_json, Bar};
use super::snapshots::FilterArgs;
use super::Outcome;
use cairn::beneath::InTheWay;
use cairn::ops::restore::{self, RestoreOptions};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "stdout", "tar", "to_db", "verify_only"])))]
pub struct RestoreArgs {
    /// `latest` (the newest snapshot; with several names in the repository, of `--name`) or a
    /// snapshot id prefix of at least 8 hex characters
    snapshot: String,
    /// Restore a tree into this directory, or a stream into this file
    #[arg(long, value_name = "PATH")]
    to: Option<PathBuf>,
    /// Write a stream snapshot to standard output
    #[arg(long)]
    stdout: bool,
    /// Write a tree snapshot as a tar stream to FILE, or to stdout with `-`
    #[arg(long, value_name = "FILE")]
    tar: Option<PathBuf>,
    /// Restore a database dump (kind pg) into the database this connection string names,
    /// through pg_restore (custom format) or psql (plain)
    #[arg(long, value_name = "CONNINFO")]
    to_db: Option<String>,
    /// With --to-db: parallel restore jobs (the dump is first written to --scratch)
    #[arg(long, default_value_t = 1, value_name = "N", requires = "to_db")]
    jobs: u32,
    /// With --to-db: drop database objects before recreating them
    #[arg(long, requires = "to_db")]
    clean: bool,
    /// With --to-db: create the dumped database first (connect --to-db to another one, e.g. postgres)
    #[arg(long, requires = "to_db")]
    create: bool,
    /// With --to-db: do not set the owners of restored objects (pg_restore --no-owner)
    #[arg(long, requires = "to_db")]
    no_owner: bool,
    /// With --to-db: do not restore grants (pg_restore --no-privileges)
    #[arg(long, requires = "to_db")]
    no_privileges: bool,
    /// With --to-db: restore as this role (pg_restore --role)
    #[arg(long, value_name = "ROLE", requires = "to_db")]
    role: Option<String>,
    /// With --to-db: do not apply the roles and tablespaces stored with the dump
    /// (`backup pg --globals`); they are applied first by default, and existing ones kept
    #[arg(long, requires = "to_db")]
    no_globals: bool,
    /// Where --jobs writes the dump file, and --verify-only its scratch copy [default: the
    /// system's temporary directory]
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,
    /// SQLite snapshots: restore into a scratch directory, run the check and report it;
    /// nothing else is touched
    #[arg(long)]
    verify_only: bool,
    /// SQLite snapshots: the check run on the restored database before it replaces
    /// anything: quick (PRAGMA quick_check) or full (PRAGMA integrity_check)
    #[arg(long, default_value = "quick", value_parser = ["quick", "full"])]
    check: String,
    /// Restore only this path of a tree snapshot and what is below it (repeatable)
    #[arg(long = "include", value_name = "PATH")]
    includes: Vec<String>,
    /// A symlink already in the target where the snapshot has a directory or a file is
    /// replaced (the link, not what it points to); without this the restore stops and
    /// names it. No symlink below the target is ever followed
    #[arg(long)]
    replace_symlinks: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

pub async fn run(ctx: &Context, args: RestoreArgs) -> Outcome {
    // A reader's session keeps removal runs from deleting what this restore reads. On
    // storage this client may not write to (read-only credentials), restore without it.
    let (repo, session) = ctx.open_reading().await?;
    let outcome = restore(ctx, args, &repo).await;
    if let Some(session) = session {
        session.end().await;
    }
    outcome
}

async fn restore(ctx: &Context, args: RestoreArgs, repo: &cairn::repo::Repository) -> Outcome {
    let filter = args.filter.filter();
    if args.snapshot == "latest" && filter.name.is_none() {
        // The newest snapshot of any source is rarely what was meant (a secrets snapshot
        // taken last, restored over a database's directory).
        let names: std::collections::BTreeSet<String> =
            repo.catalog().snapshots()?.into_iter().filter(|(_, s)| filter.matches(s)).map(|(_, s)| s.name).collect();
        if names.len() > 1 {
            let list: Vec<&str> = names.iter().map(String::as_str).collect();
            return Err(super::context::usage(format!(
                "`latest` is ambiguous in a repository of several names: give --name ({})",
                list.join(", ")
            )));
        }
    }
    let (id, snapshot) = repo.find_snapshot(&args.snapshot, &filter)?;
    let progress =
        Bar::boxed(ctx.progress_enabled() && !args.stdout && args.tar.as_deref() != Some(std::path::Path::new("-")));
    let archive = cairn::ops::archive::is_archive(&snapshot);
    let in_the_way = if args.replace_symlinks { InTheWay::Replace } else { InTheWay::Stop };
    let options = RestoreOptions { includes: args.includes, confine_links: archive, in_the_way };
    if let Some(conninfo) = &args.to_db {
        let target = cairn::ops::pg::DbRestore {
            conninfo: conninfo.clone(),
            jobs: args.jobs,
            clean: args.clean,
            create: args.create,
            no_owner: args.no_owner,
            no_privileges: args.no_privileges,
            no_tablespaces: false,
            role: args.role.clone(),
            globals: !args.no_globals,
        };
        let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
        cairn::ops::pg::restore_to_db(repo, &snapshot, &target, &scratch, progress.as_ref()).await?;
        ctx.info(format!("restored snapshot {} into {}", id.short(), cairn::pg::client::redact_conninfo(conninfo)));
        return Ok(0);
    }
    if snapshot.kind == "sqlite" && (args.verify_only || args.to.is_some()) {
        let level = cairn::ops::sqlite::CheckLevel::parse(&args.check)?;
        let report = match &args.to {
            Some(path) if !args.verify_only => {
                cairn::ops::sqlite::restore_sqlite(repo, &snapshot, path, level, progress.as_ref()).await?
            }
            _ => {
                let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
                cairn::ops::sqlite::verify_sqlite(repo, &snapshot, &scratch, level, progress.as_ref()).await?
            }
        };
        if ctx.args.json {
            print_json(&report);
        } else if args.verify_only {
            ctx.info(format!(
                "snapshot {} verified: {} ok, {} pages of {} bytes, user_version {}",
                id.short(),
                report.check.check,
                report.facts.page_count,
                report.facts.page_size,
                report.facts.user_version
            ));
        } else {
            let aside = report
                .safety_copy
                .as_ref()
                .map(|p| format!("; the previous database is now {}", p.display()))
                .unwrap_or_default();
            ctx.info(format!(
                "restored snapshot {} to {}: {}, {} ok{aside}",
                id.short(),
                report.path.display(),
                bytes(report.bytes),
                report.check.check
            ));
        }
        return Ok(0);
    }
    if snapshot.kind == cairn::ops::secrets::KIND {
        let Some(dir) = &args.to else {
            return Err(usage(format!(
                "snapshot {} is in the secrets compartment: restore it with --to DIR",
                id.short()
            )));
        };
        // Without the compartment's password nothing is read: exit 12 before any output.
        let secrets = ctx.open_secrets(repo).await?;
        let stats = cairn::ops::secrets::restore_secrets(
            repo,
            &id,
            &snapshot,
            secrets.as_ref(),
            dir,
            &options.includes,
            in_the_way,
        )
        .await?;
        for warning in &stats.warnings {
            eprintln!("cairn: warning: {warning}");
        }
        if !options.includes.is_empty() && stats.files + stats.dirs + stats.symlinks == 0 {
            return Err(cairn::Error::not_found(format!(
                "--include {} matches nothing in secrets snapshot {}; nothing was restored",
                options.includes.join(", "),
                id.short()
            ))
            .into());
        }
        if ctx.args.json {
            print_json(&stats);
        } else {
            ctx.info(format!(
                "restored snapshot {}: {} files (0600), {} dirs (0700), {}",
                id.short(),
                stats.files,
                stats.dirs,
                bytes(stats.bytes)
            ));
        }
        return Ok(if stats.warnings.is_empty() { 0 } else { 3 });
    }
    if args.verify_only {
        return Err(usage(format!(
            "--verify-only is for SQLite snapshots; snapshot {} is {}: use `cairn check --read-data` or a drill",
            id.short(),
            snapshot.kind
        )));
    }
    if let Some(content) = snapshot.content.as_ref().filter(|_| !snapshot.is_tree()) {
        let written = if args.stdout {
            // Blobs go to standard output as they are, one write each. Rust's stdout is
            // line-buffered: every blob of a SQL dump cost two or three writes there.
            let mut out = raw_stdout()?;
            restore::restore_stream(repo, content, &mut out, progress.as_ref()).await?
        } else if let Some(path) = &args.to {
            if path.is_dir() {
                return Err(usage(format!(
                    "{} is a directory; snapshot {} is a stream: give a file path to --to",
                    path.display(),
                    id.short()
                )));
            }
            restore::restore_stream_to_file(repo, content, path, progress.as_ref()).await?
        } else {
            return Err(usage(format!(
                "snapshot {} is a stream ({}): restore it with --to FILE or --stdout",
                id.short(),
                snapshot.kind
            )));
        };
        if !args.stdout {
            ctx.info(format!("restored snapshot {}: {}", id.short(), bytes(written)));
        }
        return Ok(0);
    }
    let root = snapshot.tree.ok_or_else(|| usage(format!("snapshot {} has neither content nor tree", id.short())))?;
    restore::check_includes(repo, &root, &options).await?;
    let stats = if let Some(dir) = &args.to {
        restore::restore_tree_to_dir(repo, &root, dir, &options, progress.as_ref()).await?
    } else if let Some(tar) = &args.tar {
        // A tar file is written under a temporary name and renamed when complete: a
        // failed restore leaves no archive that looks whole but is not.
        let place = match tar.as_os_str() == "-" {
            true => None,
            false => Some(restore::Place::new(tar)?),
        };
        let (out, file): (Box<dyn std::io::Write + Send>, _) = match &place {
            None => (Box::new(std::io::stdout()), None),
            Some(place) => {
                let file = place.create()?;
                let writer = file.try_clone().map_err(|e| cairn::Error::io("open", tar, e))?;
                (Box::new(writer), Some(file))
            }
        };
        let out = std::io::BufWriter::with_capacity(1 << 20, out);
        let written = if archive {
            cairn::ops::archive::restore_archive_to_tar(repo, &snapshot, out, &options).await
        } else {
            restore::restore_tree_to_tar(repo, &root, out, &options).await
        };
        let committed = match (&place, file, written) {
            (Some(place), Some(file), Ok(stats)) => place.commit(&file).map(|()| stats),
            (_, _, Ok(stats)) => Ok(stats),
            (_, _, Err(e)) => Err(e),
        };
        if committed.is_err() {
            if let Some(place) = &place {
                place.abandon();
            }
        }
        committed?
    } else {
        return Err(usage(format!("snapshot {} is a file tree: restore it with --to DIR or --tar FILE", id.short())));
    };
    for warning in &stats.warnings {
        eprintln!("cairn: warning: {warning}");
    }
    if ctx.args.json {
        print_json(&stats);
    } else if args.tar.as_deref() != Some(std::path::Path::new("-")) {
        ctx.info(format!(
            "restored snapshot {}: {} files, {} dirs, {} symlinks, {}",
            id.short(),
            stats.files,
            stats.dirs,
            stats.symlinks,
            bytes(stats.bytes)
        ));
    }
    Ok(if stats.warnings.is_empty() { 0 } else { 3 })
}

/// Standard output without Rust's line buffering: a duplicate of descriptor 1.
fn raw_stdout() -> cairn::Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| cairn::Error::new(cairn::ErrorKind::Io, format!("cannot write to standard output: {e}")))?;
    Ok(std::fs::File::from(fd))
}
