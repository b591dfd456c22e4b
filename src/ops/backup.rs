//! `cairn backup`: read a source, store what is new, then commit one snapshot.
//!
//! Every variant has the same shape: start a [`Saver`], run the source's producer on a
//! blocking thread, finish the saver (all packs and index files durable), and only then
//! write the snapshot. If the producer fails (a command exits non-zero, the user
//! interrupts), the saver is still finished so the data that did land is indexed and the
//! next run reuses it, but no snapshot is written.

use crate::error::{Error, Result};
use crate::format::snapshot::{Content, SnapshotFile, SnapshotStats, SNAPSHOT_VERSION};
use crate::id::SnapshotId;
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::saver::{Saver, SaverStats};
use crate::repo::{Repository, SnapshotFilter};
use crate::source::files::{self, FilesOptions};
use crate::source::stream;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Settings common to every backup.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    pub name: String,
    /// Source kind recorded in the snapshot (`stdin`, `files`, `pg`, ...).
    pub kind: String,
    pub tags: Vec<String>,
    /// Record this time instead of now (importing old dated backups).
    pub time: Option<jiff::Timestamp>,
    pub meta: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct BackupResult {
    pub id: SnapshotId,
    pub snapshot: SnapshotFile,
    /// Source data that could not be read; the snapshot omits it (exit code 3).
    pub warnings: Vec<String>,
}

/// A backup that failed before its snapshot was written says so, once.
fn uncommitted(e: Error) -> Error {
    let message = e.message();
    if message.contains("nothing was committed") || message.contains("no snapshot was written") {
        return e;
    }
    let message = format!("{message} (nothing was committed)");
    Error::new(e.kind(), message)
}

/// What a producer made: a stream's content or a tree's root.
pub enum Root {
    Content(Content),
    Tree(crate::id::BlobId, Vec<String>),
    /// A tree, with metadata learned while producing it (e.g. a base backup's LSNs).
    TreeWithMeta(crate::id::BlobId, Vec<String>, BTreeMap<String, serde_json::Value>),
    /// A tree with a stream beside it (a tar archive's member list, in archive order).
    TreeAndContent(crate::id::BlobId, Content, BTreeMap<String, serde_json::Value>),
}

/// Run `producer` against a saver and commit a snapshot of what it produced.
pub(crate) async fn run<F>(
    repo: &Repository,
    options: &BackupOptions,
    parent: Option<SnapshotId>,
    producer: F,
) -> Result<BackupResult>
where
    F: FnOnce(&Saver, &mut SnapshotStats, &mut Vec<String>) -> Result<Root>,
{
    let session = std::sync::Arc::new(repo.begin_session().await?);
    let result = run_in_session(repo, &session, options, parent, producer).await;
    session.end().await;
    result
}

/// [`run`] within a writer session the caller began (and ends).
pub(crate) async fn run_in_session<F>(
    repo: &Repository,
    session: &std::sync::Arc<crate::repo::gc::Session>,
    options: &BackupOptions,
    parent: Option<SnapshotId>,
    producer: F,
) -> Result<BackupResult>
where
    F: FnOnce(&Saver, &mut SnapshotStats, &mut Vec<String>) -> Result<Root>,
{
    let started = Instant::now();
    let time = options.time.unwrap_or_else(jiff::Timestamp::now);
    let saver = Saver::start(repo, session, &tokio::runtime::Handle::current());
    let mut stats = SnapshotStats::default();
    let mut warnings = Vec::new();
    let produced = tokio::task::block_in_place(|| producer(&saver, &mut stats, &mut warnings));
    let finished: Result<SaverStats> = saver.finish().await;
    // When both failed, the saver's error is the cause: the producer only saw the
    // pipeline stop.
    let (root, saved) = match (produced, finished) {
        (Ok(root), Ok(saved)) => (root, saved),
        (_, Err(e)) | (Err(e), Ok(_)) => return Err(uncommitted(e)),
    };
    stats.added = saved.added_bytes;
    stats.added_blobs = saved.added_blobs;
    stats.warnings = warnings.len() as u64;
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let mut learned = BTreeMap::new();
    let (tree, content, paths) = match root {
        Root::Content(c) => {
            stats.size = c.size;
            (None, Some(c), Vec::new())
        }
        Root::Tree(id, paths) => (Some(id), None, paths),
        Root::TreeWithMeta(id, paths, extra) => {
            learned = extra;
            (Some(id), None, paths)
        }
        Root::TreeAndContent(id, content, extra) => {
            learned = extra;
            (Some(id), Some(content), Vec::new())
        }
    };
    let snapshot = SnapshotFile {
        version: SNAPSHOT_VERSION,
        time,
        host: crate::repo::hostname(),
        user: crate::repo::username(),
        kind: options.kind.clone(),
        name: options.name.clone(),
        tags: options.tags.clone(),
        paths,
        tree,
        content,
        parent,
        stats,
        meta: options.meta.clone().into_iter().chain(learned).collect(),
        program: format!("cairn {}", env!("CARGO_PKG_VERSION")),
    };
    let id = repo.save_snapshot(session, &snapshot).await?;
    Ok(BackupResult { id, snapshot, warnings })
}

/// [`backup_stream`] within a writer session the caller began and ends: for callers that
/// order a backup against other work (tests of the removal protocol).
pub async fn backup_stream_in<R: Read + Send>(
    repo: &Repository,
    session: &std::sync::Arc<crate::repo::gc::Session>,
    reader: R,
    options: &BackupOptions,
) -> Result<BackupResult> {
    let params = repo.config().chunker;
    run_in_session(repo, session, options, None, |saver, _, _| {
        Ok(Root::Content(stream::store_stream(saver, reader, params, &Cancel::new(), &crate::progress::Silent)?))
    })
    .await
}

/// Back up a byte stream read to its end.
pub async fn backup_stream<R: Read + Send>(
    repo: &Repository,
    reader: R,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let params = repo.config().chunker;
    run(repo, options, None, |saver, _, _| {
        progress.begin("reading", None);
        let content = stream::store_stream(saver, reader, params, cancel, progress)?;
        progress.end();
        Ok(Root::Content(content))
    })
    .await
}

/// Back up the output of a shell command; no snapshot unless it exits 0.
pub async fn backup_command(
    repo: &Repository,
    command: &str,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let mut cmd = crate::process::child("sh");
    cmd.arg("-c").arg(command);
    backup_process(repo, cmd, &format!("producer `{command}`"), options, cancel, progress).await
}

/// Back up what a process writes to stdout; no snapshot unless it exits 0. `what` names
/// it in messages (its stderr goes to ours, so its own message is shown too).
pub async fn backup_process(
    repo: &Repository,
    command: Command,
    what: &str,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let params = repo.config().chunker;
    run_process(repo, command, what, options, |saver, stdout, _, _| {
        progress.begin("reading", None);
        let stored = stream::store_stream(saver, stdout, params, cancel, progress);
        progress.end();
        Ok(Root::Content(stored?))
    })
    .await
}

/// Run a process and store its stdout with `store`; commit only if `store` succeeds and
/// the process exits 0 (it is killed if `store` fails).
async fn run_process<F>(
    repo: &Repository,
    mut command: Command,
    what: &str,
    options: &BackupOptions,
    store: F,
) -> Result<BackupResult>
where
    F: FnOnce(&Saver, std::process::ChildStdout, &mut SnapshotStats, &mut Vec<String>) -> Result<Root>,
{
    run(repo, options, None, |saver, stats, warnings| {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::source(format!("cannot run {what}: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stored = store(saver, stdout, stats, warnings);
        if stored.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| Error::source(format!("cannot wait for {what}: {e}")))?;
        let root = stored?;
        if !status.success() {
            let how = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                _ => "failed".to_string(),
            };
            return Err(Error::source(format!("{what} {how}; no snapshot was written")));
        }
        Ok(root)
    })
    .await
}

/// Back up file trees. Unchanged files are taken from the newest snapshot of the same
/// name without being read.
pub async fn backup_files(
    repo: &Repository,
    files: &FilesOptions,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let filter =
        SnapshotFilter { name: Some(options.name.clone()), kind: Some(options.kind.clone()), ..Default::default() };
    let parent = repo.catalog().snapshots()?.into_iter().rfind(|(_, s)| filter.matches(s) && s.tree.is_some());
    let parent_id = parent.as_ref().map(|(id, _)| *id);
    let parent_tree = parent.and_then(|(_, s)| s.tree);
    let handle = tokio::runtime::Handle::current();
    run(repo, options, parent_id, |saver, stats, warnings| {
        let mut walker = files::Walker::new(repo, saver, &handle, files, cancel, progress, stats, warnings);
        let tree = walker.run(parent_tree)?;
        Ok(Root::Tree(tree, files.paths.iter().map(|p| p.display().to_string()).collect()))
    })
    .await
}

/// Back up a tar archive (plain, gzip or zstd) as a tree of its members, with the member
/// order and names kept for `restore --tar`. Members that climb out with `..` are not
/// stored (a warning each, exit 3); a truncated or corrupt stream stores no snapshot.
pub async fn backup_tar<R: Read + Send>(
    repo: &Repository,
    reader: R,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    run(repo, options, None, |saver, stats, warnings| {
        store_archive(saver, reader, repo.config().chunker, cancel, progress, stats, warnings)
    })
    .await
}

/// Back up the tar archive a shell command writes to stdout; no snapshot unless the
/// command exits 0 and the archive is whole.
pub async fn backup_tar_command(
    repo: &Repository,
    command: &str,
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let mut cmd = crate::process::child("sh");
    cmd.arg("-c").arg(command);
    run_process(repo, cmd, &format!("producer `{command}`"), options, |saver, stdout, stats, warnings| {
        store_archive(saver, stdout, repo.config().chunker, cancel, progress, stats, warnings)
    })
    .await
}

/// Import a tar stream and store its member list beside the tree.
fn store_archive(
    saver: &Saver,
    reader: impl Read,
    params: crate::chunker::ChunkerParams,
    cancel: &Cancel,
    progress: &dyn Progress,
    stats: &mut SnapshotStats,
    warnings: &mut Vec<String>,
) -> Result<Root> {
    use crate::source::tar::{import_any, ImportOptions};
    progress.begin("reading tar", None);
    let import = ImportOptions { record_members: true, skip_unsafe: true, ..Default::default() };
    let imported = import_any(saver, reader, params, &import, cancel, progress, stats);
    progress.end();
    let (imported, compression) = imported?;
    warnings.extend(imported.warnings);
    let members = stream::store_stream(saver, &imported.members[..], params, cancel, progress)?;
    let meta = BTreeMap::from([
        ("compression".to_string(), serde_json::json!(compression.name())),
        ("tar_bytes".to_string(), serde_json::json!(imported.end_of_last)),
        ("tar_top".to_string(), serde_json::to_value(&imported.top).expect("nodes serialize")),
    ]);
    Ok(Root::TreeAndContent(imported.root, members, meta))
}
