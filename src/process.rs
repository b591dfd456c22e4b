//! Processes: the programs cairn runs, without its secrets in their environment, and
//! whether cairn itself runs as root.

use std::ffi::OsStr;

/// A command for a program cairn runs (a producer, `pg_dump`, `psql`, a password
/// command), with none of cairn's secrets in its environment: every `CAIRN_*` variable
/// naming a password, key, secret or token is removed (`--command env` must not store
/// them in the backup). What the child needs (`PGPASSWORD`) its caller sets explicitly.
pub fn child(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for (name, _) in std::env::vars_os() {
        if is_secret_var(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Whether an environment variable holds one of cairn's secrets.
pub fn is_secret_var(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_uppercase();
    name.starts_with("CAIRN_") && ["PASSWORD", "KEY", "SECRET", "TOKEN"].iter().any(|w| name.contains(w))
}

/// Whether cairn runs with an effective uid of 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
