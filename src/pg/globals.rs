//! Cluster-wide objects a database dump lacks: roles (with or without their password
//! hashes) and tablespaces, dumped with `pg_dumpall --globals-only` and applied before a
//! restore so that only what is missing is created.

use crate::error::{Error, Result};
use crate::pg::client::spawn_error;
use std::process::Stdio;

/// Whether `backup pg` also stores the cluster's roles and tablespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Globals {
    #[default]
    Skip,
    /// `pg_dumpall --globals-only --no-role-passwords`
    WithoutPasswords,
    /// `pg_dumpall --globals-only`: role password hashes too
    WithPasswords,
}

/// The most globals SQL a snapshot's metadata holds.
const GLOBALS_LIMIT: usize = 16 << 20;

/// `pg_dumpall --globals-only`: the SQL that recreates roles, memberships and tablespaces.
pub(crate) fn dump_globals(dbname: Option<&str>, mode: Globals) -> Result<String> {
    let mut cmd = crate::process::child("pg_dumpall");
    cmd.arg("--globals-only");
    if mode == Globals::WithoutPasswords {
        cmd.arg("--no-role-passwords");
    }
    if let Some(db) = dbname {
        cmd.arg("--dbname").arg(db);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error("pg_dumpall", e))?;
    if !out.status.success() {
        return Err(Error::source(format!(
            "pg_dumpall --globals-only {}: {}; no snapshot was written",
            out.status,
            String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    if out.stdout.len() > GLOBALS_LIMIT {
        return Err(Error::source(format!(
            "pg_dumpall --globals-only wrote {} bytes, more than cairn keeps with a dump ({GLOBALS_LIMIT}): \
             back the globals up on their own with `cairn backup command`",
            out.stdout.len()
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| Error::source("pg_dumpall --globals-only wrote text that is not UTF-8"))
}

/// The first identifier of `rest` as it is written (quoted or not) and as a name.
fn leading_identifier(rest: &str) -> Option<(&str, String)> {
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut end = 0;
        let bytes = quoted.as_bytes();
        while end < bytes.len() {
            if bytes[end] == b'"' {
                if bytes.get(end + 1) == Some(&b'"') {
                    end += 2;
                    continue;
                }
                return Some((&rest[..end + 2], quoted[..end].replace("\"\"", "\"")));
            }
            end += 1;
        }
        return None;
    }
    let end = rest.find(|c: char| c == ';' || c.is_whitespace()).unwrap_or(rest.len());
    (end > 0).then(|| (&rest[..end], rest[..end].to_string()))
}

/// Globals SQL made safe to apply to a cluster that already has some of them: the
/// `CREATE ROLE` / `CREATE TABLESPACE` of a name in `existing` is left out, and the
/// `ALTER`s that follow set the attributes either way. (No psql meta-commands: the
/// `\\restrict` line pg_dumpall writes forbids them.) Without `tablespaces`, every
/// tablespace statement is left out (a drill's scratch cluster cannot have production's
/// locations).
pub fn idempotent_globals(sql: &str, tablespaces: bool, existing: &Existing) -> String {
    let mut out = String::new();
    for line in sql.lines() {
        if !tablespaces && line.to_ascii_uppercase().contains(" TABLESPACE ") {
            continue;
        }
        let exists = |prefix: &str, names: &std::collections::BTreeSet<String>| {
            line.strip_prefix(prefix).and_then(leading_identifier).is_some_and(|(_, name)| names.contains(&name))
        };
        if exists("CREATE ROLE ", &existing.roles) || exists("CREATE TABLESPACE ", &existing.tablespaces) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The roles and tablespaces a cluster has.
#[derive(Debug, Default)]
pub struct Existing {
    pub roles: std::collections::BTreeSet<String>,
    pub tablespaces: std::collections::BTreeSet<String>,
}

fn existing_globals(conninfo: &str) -> Result<Existing> {
    let names = |sql: &str| -> Result<std::collections::BTreeSet<String>> {
        let out = crate::process::child("psql")
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--dbname", conninfo, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error("psql", e))?;
        if !out.status.success() {
            return Err(Error::source(format!(
                "cannot list the target's roles and tablespaces: {}",
                String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    };
    Ok(Existing {
        roles: names("select rolname from pg_roles")?,
        tablespaces: names("select spcname from pg_tablespace")?,
    })
}

/// Apply a snapshot's globals to the cluster `conninfo` reaches.
pub(crate) fn apply_globals(conninfo: &str, sql: &str, tablespaces: bool) -> Result<()> {
    let script = idempotent_globals(sql, tablespaces, &existing_globals(conninfo)?);
    let mut child = crate::process::child("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", conninfo, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error("psql", e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, script.as_bytes()));
    let out = child.wait_with_output().map_err(|e| Error::source(format!("cannot wait for psql: {e}")))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(Error::source(format!(
            "restoring the roles and tablespaces failed, so the database was not restored: {} \
             (give --no-globals to restore without them)",
            String::from_utf8_lossy(&out.stderr).split_whitespace().collect::<Vec<_>>().join(" ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_skip_what_exists_and_tablespaces_when_asked() {
        let sql = "\\restrict abc\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\nCREATE ROLE \"Odd \"\"Name\";\n\
                   CREATE ROLE postgres;\nCREATE TABLESPACE fast OWNER app LOCATION '/ssd';\nGRANT app TO postgres;\n\\unrestrict abc\n";
        let mut existing = Existing::default();
        existing.roles.insert("postgres".into());
        existing.roles.insert("Odd \"Name".into());
        let out = idempotent_globals(sql, true, &existing);
        assert_eq!(
            out,
            "\\restrict abc\nCREATE ROLE app;\nALTER ROLE app WITH LOGIN;\nCREATE TABLESPACE fast OWNER app LOCATION '/ssd';\n\
             GRANT app TO postgres;\n\\unrestrict abc\n"
        );
        let out = idempotent_globals(sql, false, &Existing::default());
        assert!(!out.contains("TABLESPACE") && out.contains("CREATE ROLE postgres;"), "{out}");
        assert_eq!(leading_identifier("\"a\"\"b\" x"), Some(("\"a\"\"b\"", "a\"b".to_string())));
        assert_eq!(leading_identifier("\"open"), None);
    }
}
