//! Files the CLI writes for other programs: reports and metrics replaced atomically (a
//! reader sees the old file or the new one, never half of one), as JSON or Markdown; and
//! the lock file that keeps two runs apart.

use std::path::Path;

/// Write through a temporary file beside `path`, renamed into place.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".cairn-{}.tmp", std::process::id()));
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes).map_err(|e| cairn::Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| cairn::Error::io("rename into place", path, e))?;
    Ok(())
}

/// A report file named `*.md` is written as Markdown, for people; any other as JSON.
pub(super) fn is_markdown(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "md" || e == "markdown")
}

/// A table cell: no line breaks, no column separators.
pub(super) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Hold the run lock for as long as the returned file lives.
pub(super) fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cairn::Error::io("create", dir, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| cairn::Error::io("open the run lock", path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(cairn::Error::new(
            cairn::ErrorKind::Locked,
            format!("another `cairn run` holds {}; this one stops", path.display()),
        )
        .into()),
        Err(std::fs::TryLockError::Error(e)) => Err(cairn::Error::io("lock", path, e).into()),
    }
}
