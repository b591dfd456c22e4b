//! Running PostgreSQL's programs: finding them (`pg_config --bindir`), running them as
//! the data directory's owner when cairn is root, one-value queries through psql, the
//! server's log tail for an error, and errors that name the program and say what to do.

use crate::error::{Error, ErrorKind, Result};
use crate::pg::label::parse_epoch;
use crate::process::is_root;
use std::process::{Command, Stdio};

/// A missing client program is named, with what to install.
pub(crate) fn spawn_error(program: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::source(format!(
            "{program} was not found in PATH: install the PostgreSQL client (Debian: postgresql-client) or add its bin directory to PATH"
        ))
    } else {
        Error::source(format!("cannot run {program}: {e}"))
    }
}

/// Ask the server for its version and the database name (this also checks the conninfo
/// before the dump starts).
pub fn server_facts(dbname: Option<&str>) -> Result<(String, String)> {
    let mut cmd = crate::process::child("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("select current_setting('server_version') || '|' || current_database()");
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error("psql", e))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(Error::source(format!(
            "cannot connect to PostgreSQL{}: {message}; check --dbname and the server",
            dbname.map(|d| format!(" with {:?}", redact_conninfo(d))).unwrap_or_default()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (version, database) = text.split_once('|').unwrap_or((&text, ""));
    Ok((version.to_string(), database.to_string()))
}

/// A conninfo or URI with any password removed, for messages and metadata.
pub fn redact_conninfo(conninfo: &str) -> String {
    if let Some((scheme, rest)) = conninfo.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            let user = userinfo.split(':').next().unwrap_or_default();
            return format!("{scheme}://{user}@{host}");
        }
        return conninfo.to_string();
    }
    conninfo.split_whitespace().filter(|kv| !kv.starts_with("password=")).collect::<Vec<_>>().join(" ")
}

pub(crate) fn check_status(program: &str, status: std::process::ExitStatus) -> Result<()> {
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Source,
            format!("{program} {status}: the restore into the database did not complete (its messages are above)"),
        ))
    }
}

/// What the server's archiver last reported, for a message about archiving that stalls.
pub(crate) fn archiver_state(dbname: Option<&str>) -> String {
    match query_one(
        dbname,
        "select failed_count || ' failed attempts' || coalesce(', the last on ' || last_failed_wal || ' at ' || last_failed_time, '') \
         || coalesce('; last archived ' || last_archived_wal, '') from pg_stat_archiver",
    ) {
        Ok(state) => format!("pg_stat_archiver shows {state}"),
        Err(_) => "pg_stat_archiver could not be read".into(),
    }
}

/// The server's clock now, to the microsecond.
pub(crate) fn server_now(dbname: Option<&str>) -> Result<jiff::Timestamp> {
    let text = query_one(dbname, "select extract(epoch from clock_timestamp())::numeric(20,6)")?;
    parse_epoch(&text)
        .ok_or_else(|| Error::source(format!("the server's clock_timestamp() epoch {text:?} is not a number")))
}

/// One value from the server.
pub(crate) fn query_one(dbname: Option<&str>, sql: &str) -> Result<String> {
    let mut cmd = crate::process::child("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error("psql", e))?;
    if !out.status.success() {
        return Err(Error::source(format!(
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A command run as the data directory's owner (root may not run the server).
pub(crate) fn as_owner(uid: u32, program: &std::path::Path) -> Command {
    if is_root() && uid != 0 {
        let user = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| {
                p.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
                })
            })
            .unwrap_or_else(|| uid.to_string());
        let mut cmd = crate::process::child("runuser");
        cmd.args(["-u", &user, "--"]).arg(program);
        cmd
    } else {
        crate::process::child(program)
    }
}

pub(crate) fn pg_bin(program: &str) -> std::path::PathBuf {
    crate::process::child("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join(program))
        .filter(|p| p.exists())
        .unwrap_or_else(|| std::path::PathBuf::from(program))
}

/// The FATAL and PANIC lines of a server log (or its last line), joined.
pub(crate) fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let fatal: Vec<&str> = text.lines().filter(|l| l.contains("FATAL:") || l.contains("PANIC:")).collect();
    match fatal.is_empty() {
        true => text.lines().last().unwrap_or("no log").to_string(),
        false => fatal.join(" | "),
    }
}

/// The uid that runs PostgreSQL programs for us: the `postgres` user when we are root
/// (the server refuses root), else ourselves (`None`).
pub(crate) fn server_user() -> Result<Option<u32>> {
    if !is_root() {
        return Ok(None);
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[0] == "postgres").then(|| f[2].parse().ok()).flatten()
            })
        })
        .map(Some)
        .ok_or_else(|| {
            Error::source(
                "running as root, drills start PostgreSQL as the `postgres` user, and there is none: create it",
            )
        })
}

/// Let the server user (when we are root) reach a data directory that will be created
/// inside `dir`, a private scratch directory that holds nothing else.
pub fn lend_to_server(dir: &std::path::Path) -> Result<()> {
    if let Some(uid) = server_user()? {
        std::os::unix::fs::chown(dir, Some(uid), None).map_err(|e| Error::io("chown", dir, e))?;
    }
    Ok(())
}
