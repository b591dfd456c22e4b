//! A throw-away PostgreSQL cluster in a temporary directory, for restore drills and
//! checks of a restored dump: initdb, start on a private socket, stop and remove on drop.

use crate::error::{Error, Result};
use crate::pg::client::{as_owner, lend_to_server, log_tail, pg_bin, server_user, spawn_error};

/// A PostgreSQL cluster in a scratch directory for restore drills: its socket in its
/// data directory, no TCP, stopped (fast) when dropped.
pub struct ScratchCluster {
    pub pgdata: std::path::PathBuf,
    pub port: u16,
    uid: u32,
    running: bool,
}

impl ScratchCluster {
    /// initdb into `pgdata` (which must not exist) and start the server.
    pub fn create(pgdata: &std::path::Path) -> Result<Self> {
        let user = server_user()?;
        let uid = user.unwrap_or(0);
        std::fs::create_dir_all(pgdata).map_err(|e| Error::io("create", pgdata, e))?;
        if let Some(uid) = user {
            if let Some(parent) = pgdata.parent() {
                lend_to_server(parent)?;
            }
            std::os::unix::fs::chown(pgdata, Some(uid), None).map_err(|e| Error::io("chown", pgdata, e))?;
        }
        let out = as_owner(uid, &pg_bin("initdb"))
            .arg("-D")
            .arg(pgdata)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .map_err(|e| spawn_error("initdb", e))?;
        if !out.status.success() {
            return Err(Error::source(format!(
                "initdb of the drill's cluster failed: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            )));
        }
        let mut cluster = ScratchCluster { pgdata: pgdata.to_path_buf(), port: 5432, uid, running: false };
        cluster.start()?;
        Ok(cluster)
    }

    /// A server `pitr --start` left running in `pgdata` on `port`.
    pub fn adopt(pgdata: &std::path::Path, port: u16) -> Result<Self> {
        let owner = std::fs::metadata(pgdata.join("PG_VERSION")).map_err(|e| Error::io("inspect", pgdata, e))?;
        Ok(ScratchCluster {
            pgdata: pgdata.to_path_buf(),
            port,
            uid: std::os::unix::fs::MetadataExt::uid(&owner),
            running: true,
        })
    }

    pub(crate) fn start(&mut self) -> Result<()> {
        let log = self.pgdata.join("cairn-drill.log");
        let opts = format!("-p {} -k {} -c listen_addresses=''", self.port, self.pgdata.display());
        let out = as_owner(self.uid, &pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "start"])
            .output()
            .map_err(|e| spawn_error("pg_ctl", e))?;
        if !out.status.success() {
            return Err(Error::source(format!("the drill's server did not start: {}", log_tail(&log))));
        }
        self.running = true;
        Ok(())
    }

    /// A libpq connection string for database `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.pgdata.display(), self.port)
    }

    /// Run SQL in `db`; the unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String> {
        let out = crate::process::child(pg_bin("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "--dbname", &self.conninfo(db), "-c", sql])
            .output()
            .map_err(|e| spawn_error("psql", e))?;
        if !out.status.success() {
            return Err(Error::source(format!(
                "{sql:?} in database {db} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Exact row counts of every user table of `db` (`schema.table`, rows).
    pub fn table_counts(&self, db: &str) -> Result<Vec<(String, i64)>> {
        let tables = self.sql(
            db,
            "select format('%I.%I', schemaname, tablename) from pg_tables \
             where schemaname not in ('pg_catalog', 'information_schema') order by 1",
        )?;
        let mut out = Vec::new();
        for table in tables.lines().filter(|l| !l.is_empty()) {
            let n = self.sql(db, &format!("select count(*) from {table}"))?;
            out.push((table.to_string(), n.parse().unwrap_or(-1)));
        }
        Ok(out)
    }

    /// The databases that are not templates.
    pub fn databases(&self) -> Result<Vec<String>> {
        Ok(self
            .sql("postgres", "select datname from pg_database where not datistemplate order by 1")?
            .lines()
            .map(str::to_string)
            .collect())
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_owner(self.uid, &pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.running = false;
        }
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
