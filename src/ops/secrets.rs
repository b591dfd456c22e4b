//! The secrets compartment: private keys and credentials stored under a second key with
//! its own password, so the repository password alone reveals neither their names nor
//! their contents (docs/secrets.md).
//!
//! * The compartment key is a random 64-byte key in its own key slots
//!   (`secrets/keys/<id>`, the repository's slot format with associated data
//!   `"cairn secrets slot v1"`). `secrets/config` (sealed under the repository key, so
//!   nobody without it can swap the compartment) records the key's fingerprint.
//! * A secrets snapshot is an ordinary stream snapshot of kind `secrets` whose bytes are a
//!   sealed archive of a tar stream of the files ([`crate::format::secrets`]). The
//!   ciphertext is fresh each time, so secrets never deduplicate against anything; the
//!   repository key protects it a second time, and `check --read-data` verifies it like
//!   any data.
//! * Restores create new files 0600 and new directories 0700, whatever they were; a file
//!   they replace passes on its mode and owner.

use crate::backend::WriteMode;
use crate::beneath::{split, Beneath, InTheWay};
use crate::crypto::{KdfParams, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::layout::{SECRETS_CONFIG as CONFIG, SECRETS_CONFIG_MAGIC as CONFIG_MAGIC};
use crate::format::object;
use crate::format::secrets::{fingerprint, CompartmentConfig, OpenReader, SealWriter};
use crate::format::snapshot::SnapshotFile;
use crate::id::{KeyId, SnapshotId};
use crate::ops::backup::{self, BackupOptions, BackupResult, Root};
use crate::ops::restore::{consume_stream, includes, selected, ChannelReader, RestoreStats};
use crate::progress::Cancel;
use crate::progress::Progress;
use crate::repo::keys::{add_slot_at, unlock_password_at, SECRETS_SLOTS};
use crate::repo::Repository;
use crate::source::stream;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Snapshot kind of secrets snapshots.
pub const KIND: &str = "secrets";

/// The unlocked compartment key.
pub struct SecretsKey {
    key: MasterKey,
    pub slot: Option<KeyId>,
}

fn no_compartment(repo: &Repository) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "the repository at {} has no secrets compartment; create one with `cairn key init-secrets`",
            repo.backend().location()
        ),
    )
}

/// Whether the repository has a secrets compartment.
pub async fn exists(repo: &Repository) -> Result<bool> {
    Ok(repo.backend().head(CONFIG).await?.is_some())
}

/// Create the compartment: a new key under `password` (which must not open the
/// repository itself, or the compartment would protect nothing).
pub async fn init(repo: &Repository, password: &str, params: KdfParams) -> Result<KeyId> {
    if exists(repo).await? {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("the repository at {} already has a secrets compartment", repo.backend().location()),
        ));
    }
    refuse_repository_password(repo, password).await?;
    let key = MasterKey::random();
    let slot = add_slot_at(repo.backend(), SECRETS_SLOTS, &key, password.as_bytes(), params).await?;
    let config = CompartmentConfig { version: 1, fingerprint: fingerprint(&key), created: jiff::Timestamp::now() };
    let sealed = object::seal(repo.key(), CONFIG_MAGIC, &serde_json::to_vec(&config).expect("config serializes"));
    repo.backend().put(CONFIG, sealed.into(), WriteMode::Create).await?;
    Ok(slot)
}

/// Unlock the compartment with its password.
pub async fn unlock(repo: &Repository, password: &str) -> Result<SecretsKey> {
    let sealed = match repo.backend().get(CONFIG).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(no_compartment(repo)),
        Err(e) => return Err(e),
    };
    let config: CompartmentConfig = serde_json::from_slice(&object::open(repo.key(), CONFIG_MAGIC, CONFIG, &sealed)?)
        .map_err(|e| Error::corrupt(format!("{CONFIG} is not valid: {e}")))?;
    let (key, slot) = unlock_password_at(repo.backend(), SECRETS_SLOTS, password).await?;
    if fingerprint(&key) != config.fingerprint {
        return Err(Error::corrupt(format!(
            "secrets key slot {} holds a key that is not this repository's compartment key; remove it",
            slot.map(|s| s.short()).unwrap_or_default()
        )));
    }
    Ok(SecretsKey { key, slot })
}

/// Add a slot for the compartment key under a new password, which must not open the
/// repository.
pub async fn add_password(repo: &Repository, key: &SecretsKey, password: &str, params: KdfParams) -> Result<KeyId> {
    refuse_repository_password(repo, password).await?;
    add_slot_at(repo.backend(), SECRETS_SLOTS, &key.key, password.as_bytes(), params).await
}

/// A compartment password must not open the repository: its holder could read the
/// secrets with one password.
async fn refuse_repository_password(repo: &Repository, password: &str) -> Result<()> {
    match unlock_password_at(repo.backend(), crate::repo::keys::REPOSITORY_SLOTS, password).await {
        Ok(_) => Err(Error::invalid(
            "that password opens the repository too; the secrets compartment's password must differ from \
             every repository password: choose another one",
        )),
        Err(_) => Ok(()),
    }
}

/// A new repository password must not open the secrets compartment, for the same reason
/// (both directions: `key add`, `key passwd`).
pub async fn refuse_compartment_password(repo: &Repository, password: &str) -> Result<()> {
    if !exists(repo).await? {
        return Ok(());
    }
    match unlock_password_at(repo.backend(), SECRETS_SLOTS, password).await {
        Ok(_) => Err(Error::invalid(
            "that password opens the secrets compartment; a repository password must differ from the \
             compartment's: choose another one",
        )),
        Err(_) => Ok(()),
    }
}

/// Write the files under `paths` as a tar stream (names: absolute paths without the
/// leading slash), counting files and bytes. Unreadable entries are warnings.
fn archive_paths<W: Write>(
    paths: &[PathBuf],
    out: W,
    cancel: &Cancel,
    warnings: &mut Vec<String>,
) -> Result<(W, u64, u64)> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let (mut files, mut bytes) = (0u64, 0u64);
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot seal the secrets archive: {e}"));
    for top in paths {
        for entry in walkdir::WalkDir::new(top).sort_by_file_name() {
            cancel.check()?;
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    warnings.push(format!("{e}"));
                    continue;
                }
            };
            let path = entry.path();
            let name = path.strip_prefix("/").unwrap_or(path);
            if name.as_os_str().is_empty() {
                continue;
            }
            let kind = entry.file_type();
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                warnings.push(format!("{}: not a file, directory or symlink; skipped", path.display()));
                continue;
            }
            match builder.append_path_with_name(path, name) {
                Ok(()) => {
                    if kind.is_file() {
                        files += 1;
                        bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(io(e)),
                Err(e) => warnings.push(format!("{}: cannot read: {e}", path.display())),
            }
        }
    }
    let out = builder.into_inner().map_err(io)?;
    Ok((out, files, bytes))
}

/// Back up files into the compartment.
pub async fn backup_secrets(
    repo: &Repository,
    secrets: &SecretsKey,
    paths: &[PathBuf],
    options: &BackupOptions,
    cancel: &Cancel,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    for path in paths {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(Error::source(format!(
                "{}: no such file or directory; no snapshot was written",
                path.display()
            )));
        }
    }
    let paths: Vec<PathBuf> = paths.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect();
    let mut options = options.clone();
    options.kind = KIND.into();
    options.meta.insert("compartment".into(), serde_json::json!("secrets"));
    let params = repo.config().chunker;
    // Counted for the caller, who holds the password; the manifest, which the repository
    // password alone opens, records no file count.
    let mut counted = 0;
    let mut result = backup::run(repo, &options, None, |saver, _stats, warnings| {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
            let producer = scope.spawn(move || -> Result<(u64, u64, Vec<String>)> {
                let mut warnings = Vec::new();
                let send = move |frame: Vec<u8>| tx.send(frame).map_err(|_| std::io::ErrorKind::BrokenPipe.into());
                let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot seal the secrets archive: {e}"));
                let writer = SealWriter::new(&secrets.key, send).map_err(io)?;
                let (writer, files, bytes) = archive_paths(&paths, writer, cancel, &mut warnings)?;
                writer.finish().map_err(io)?;
                Ok((files, bytes, warnings))
            });
            progress.begin("sealing secrets", None);
            let stored = stream::store_stream(saver, ChannelReader::new(rx), params, cancel, progress);
            progress.end();
            let produced = producer.join().unwrap_or_else(|_| Err(Error::source("the secrets archiver panicked")));
            let (files, _bytes, found) = produced?;
            let content = stored?;
            counted = files;
            warnings.extend(found);
            Ok(Root::Content(content))
        })
    })
    .await?;
    result.snapshot.stats.files = counted;
    Ok(result)
}

/// The snapshot's sealed archive, opened: a tar stream.
async fn open_archive(
    repo: &Repository,
    snapshot: &SnapshotFile,
    secrets: &SecretsKey,
    mut each: impl FnMut(&mut tar::Archive<&mut dyn Read>) -> Result<()> + Send,
) -> Result<()> {
    let content = snapshot.content.clone().ok_or_else(|| Error::corrupt("secrets snapshot has no content"))?;
    consume_stream(repo, &content, move |sealed| {
        let io = |e: std::io::Error| Error::new(ErrorKind::Corrupt, e.to_string());
        let mut opened = OpenReader::new(&secrets.key, sealed).map_err(io)?;
        {
            let dyn_reader: &mut dyn Read = &mut opened;
            each(&mut tar::Archive::new(dyn_reader))?;
        }
        // Every frame up to the marked last one must be there and authentic.
        std::io::copy(&mut opened, &mut std::io::sink()).map_err(io)?;
        if !opened.done {
            return Err(Error::corrupt("sealed secrets archive ends before its last frame"));
        }
        Ok(())
    })
    .await
}

fn locked(id: &SnapshotId) -> Error {
    Error::new(
        ErrorKind::WrongPassword,
        format!(
            "snapshot {} is in the secrets compartment: give its password (CAIRN_SECRETS_PASSWORD, \
             --secrets-password-file or --secrets-password-command); nothing was restored",
            id.short()
        ),
    )
}

/// Restore a secrets snapshot into `target`: new files 0600 and new directories 0700,
/// owners kept when running as root; a file that replaces one keeps that one's mode and
/// owner, and directories that exist are left as they are (restoring into `/` must not
/// change `/etc`). Only paths under `includes` when given. Nothing below `target` is
/// followed ([`Beneath`]); every file is written under a temporary name and renamed.
pub async fn restore_secrets(
    repo: &Repository,
    id: &SnapshotId,
    snapshot: &SnapshotFile,
    secrets: Option<&SecretsKey>,
    target: &Path,
    include: &[String],
    in_the_way: InTheWay,
) -> Result<RestoreStats> {
    let secrets = secrets.ok_or_else(|| locked(id))?;
    let beneath = Beneath::create(target, in_the_way)?;
    let wanted =
        includes(&crate::ops::restore::RestoreOptions { includes: include.to_vec(), confine_links: true, in_the_way });
    let root = crate::process::is_root();
    let mut stats = RestoreStats::default();
    open_archive(repo, snapshot, secrets, |archive| {
        let bad = |e: std::io::Error| Error::corrupt(format!("secrets snapshot {}: {e}", id.short()));
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let name = entry.path_bytes().into_owned();
            let Some(parts) = crate::source::tar::normalise(&name) else {
                stats.warnings.push(format!("{}: climbs out with '..'; skipped", String::from_utf8_lossy(&name)));
                continue;
            };
            let rel = parts.join(&b'/');
            if parts.is_empty() || !selected(&wanted, &rel).0 {
                continue;
            }
            let header = entry.header().clone();
            let owner = root.then(|| (header.uid().unwrap_or(0) as u32, header.gid().unwrap_or(0) as u32));
            let mtime = header.mtime().unwrap_or(0) as i64;
            let (dir, name) = split(&rel);
            create_missing_dirs(&beneath, dir, owner)?;
            let (parent, _) = beneath.parent(&rel)?;
            match header.entry_type() {
                tar::EntryType::Directory => {
                    if dir_is_new(&beneath, parent.as_fd(), name, &rel)? {
                        set_new(&beneath, parent.as_fd(), name, &rel, owner, mtime, &mut stats);
                    }
                    stats.dirs += 1;
                }
                tar::EntryType::Symlink => {
                    let link = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
                    let path = beneath.display(&rel);
                    if crate::beneath::link_escapes(&rel, &link) {
                        stats.warnings.push(format!(
                            "{}: symlink to {:?} points outside {}; not created",
                            path.display(),
                            String::from_utf8_lossy(&link),
                            target.display()
                        ));
                        continue;
                    }
                    beneath.symlink(parent.as_fd(), name, &link, &rel)?;
                    set_new(&beneath, parent.as_fd(), name, &rel, owner, mtime, &mut stats);
                    stats.symlinks += 1;
                }
                t if t.is_file() => {
                    write_private(&beneath, parent.as_fd(), name, &rel, &mut entry, owner, mtime)?;
                    stats.files += 1;
                    stats.bytes += header.size().unwrap_or(0);
                }
                _ => continue,
            }
        }
        Ok(())
    })
    .await?;
    Ok(stats)
}

/// Create whatever directories of `dir` are missing, each new one 0700 (owned as recorded
/// when root gives `owner`, else by us); existing ones are left as they are.
fn create_missing_dirs(beneath: &Beneath, dir: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    let mut at = 0;
    loop {
        let end = dir[at..].iter().position(|&b| b == b'/').map(|i| at + i).unwrap_or(dir.len());
        let rel = &dir[..end];
        let (parent, name) = beneath.parent(rel)?;
        if dir_is_new(beneath, parent.as_fd(), name, rel)? {
            if let Some((uid, gid)) = owner {
                let _ = rustix::fs::chownat(
                    &parent,
                    std::ffi::OsStr::from_bytes(name),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                );
            }
        }
        if end == dir.len() {
            return Ok(());
        }
        at = end + 1;
    }
}

/// Make the directory `name` (0700) unless one is there; whether it was made.
fn dir_is_new(beneath: &Beneath, parent: BorrowedFd, name: &[u8], rel: &[u8]) -> Result<bool> {
    let existed = rustix::fs::statat(parent, std::ffi::OsStr::from_bytes(name), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::Directory);
    beneath.mkdir(parent, name, rel, 0o700)?;
    Ok(!existed)
}

/// Owner (when given) and mtime of a new directory or symlink, never following it.
fn set_new(
    beneath: &Beneath,
    parent: BorrowedFd,
    name: &[u8],
    rel: &[u8],
    owner: Option<(u32, u32)>,
    mtime: i64,
    stats: &mut RestoreStats,
) {
    let name = std::ffi::OsStr::from_bytes(name);
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    if let Some((uid, gid)) = owner {
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        if let Err(e) = rustix::fs::chownat(parent, name, Some(uid), Some(gid), flags) {
            stats.warnings.push(format!("{}: cannot set owner: {e}", beneath.display(rel).display()));
        }
    }
    let time = rustix::fs::Timespec { tv_sec: mtime, tv_nsec: 0 };
    let _ = rustix::fs::utimensat(
        parent,
        name,
        &rustix::fs::Timestamps { last_access: time, last_modification: time },
        flags,
    );
}

/// Write the file `name` in `parent` through a temporary name, 0600 from its first
/// byte; a file it replaces passes on its mode and owner.
fn write_private(
    beneath: &Beneath,
    parent: BorrowedFd,
    name: &[u8],
    rel: &[u8],
    data: &mut impl Read,
    owner: Option<(u32, u32)>,
    mtime: i64,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = beneath.display(rel);
    let replaced = beneath.check_file_place(parent, name, rel)?;
    let temp = beneath.temp_name();
    let mut file = beneath.create_temp(parent, &temp, rel)?;
    let result = (|| {
        std::io::copy(data, &mut file).map_err(|e| Error::io("write", &path, e))?;
        let (uid, gid, mode) = match &replaced {
            Some(old) => (Some(old.st_uid), Some(old.st_gid), old.st_mode & 0o7777),
            None => (owner.map(|o| o.0), owner.map(|o| o.1), 0o600),
        };
        if uid.is_some() {
            if let Err(e) = std::os::unix::fs::fchown(&file, uid, gid) {
                // Not ours to give (not root): the file stays ours, 0600 at most.
                if e.raw_os_error() != Some(libc::EPERM) {
                    return Err(Error::io("set the owner of", &path, e));
                }
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", &path, e))?;
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        let _ = filetime::set_file_handle_times(&file, Some(t), Some(t));
        file.sync_all().map_err(|e| Error::io("sync", &path, e))?;
        beneath.rename(parent, &temp, name, rel)
    })();
    if result.is_err() {
        beneath.remove(parent, &temp);
    }
    result
}

/// Open every frame of a secrets snapshot and read its archive through: returns the
/// number of files and bytes inside. Used by `check --read-data` with the password.
pub async fn verify(
    repo: &Repository,
    id: &SnapshotId,
    snapshot: &SnapshotFile,
    secrets: &SecretsKey,
) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    open_archive(repo, snapshot, secrets, |archive| {
        let bad = |e: std::io::Error| Error::corrupt(format!("secrets snapshot {}: {e}", id.short()));
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            if entry.header().entry_type().is_file() {
                files += 1;
                bytes += std::io::copy(&mut entry, &mut std::io::sink()).map_err(bad)?;
            }
        }
        Ok(())
    })
    .await?;
    Ok((files, bytes))
}
