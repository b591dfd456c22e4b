//! A low-level base backup's psql session: `pg_backup_start` in one long-lived
//! connection, `pg_backup_stop` in the same one (PostgreSQL ends the backup if the
//! session ends), and an abort on drop.

use crate::error::{Error, Result};
use crate::pg::client::spawn_error;
use std::process::Stdio;

/// A psql session that holds a non-exclusive backup open between `pg_backup_start` and
/// `pg_backup_stop` (PostgreSQL aborts the backup if the session ends first).
pub(crate) struct BackupSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    errors: std::thread::JoinHandle<String>,
}

impl BackupSession {
    pub(crate) fn open(dbname: Option<&str>) -> Result<Self> {
        let mut cmd = crate::process::child("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]);
        if let Some(db) = dbname {
            cmd.arg("--dbname").arg(db);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error("psql", e))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(std::io::Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Ok(BackupSession { child, stdin, lines, errors })
    }

    /// Run one statement that prints one line; wait for it up to `timeout`.
    pub(crate) fn one_line(&mut self, sql: &str, timeout: std::time::Duration) -> Result<String> {
        use std::io::Write;
        let sent = self.stdin.write_all(format!("{sql}\n").as_bytes()).and_then(|_| self.stdin.flush());
        match sent.ok().and_then(|_| self.lines.recv_timeout(timeout).ok()) {
            Some(line) => Ok(line),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let errors = std::mem::replace(&mut self.errors, std::thread::spawn(String::new));
                let said = errors.join().unwrap_or_default();
                let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
                Err(Error::source(if said.is_empty() {
                    format!("{sql}: no answer within {} s; no snapshot was written", timeout.as_secs())
                } else {
                    format!("{sql}: {said}; no snapshot was written")
                }))
            }
        }
    }
}

impl Drop for BackupSession {
    fn drop(&mut self) {
        // Ending the session aborts a backup that was not stopped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
