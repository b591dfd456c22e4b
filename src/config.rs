//! The configuration file of `cairn run` (docs/config.md): the repository, the sources
//! with their retention, offsite copies, the check plan and pruning.
//!
//! TOML, read with serde; unknown keys and bad values are errors that name the line.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub repository: RepositoryConfig,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub offsite: Vec<OffsiteConfig>,
    #[serde(default)]
    pub check: CheckConfig,
    #[serde(default)]
    pub prune: PruneConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub drill: DrillConfig,
}

/// Where `drill` works and reports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// Scratch space for restores [default: the system's temporary directory].
    pub scratch: Option<PathBuf>,
    /// Prometheus textfile-collector file for drill results.
    pub metrics_file: Option<PathBuf>,
    /// The JSON report of the last drill.
    pub report_file: Option<PathBuf>,
}

/// Where the repository is and what opens it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A local path, `file://`, `s3://BUCKET/PREFIX` or `oss://BUCKET/PREFIX`.
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
    /// The secrets compartment's password (for `secrets` sources).
    pub secrets_password_file: Option<PathBuf>,
    pub secrets_password_command: Option<String>,
    pub cache_dir: Option<PathBuf>,
    /// Requests in flight to the storage.
    pub connections: Option<u16>,
}

/// The kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Pg,
    PgBase,
    Sqlite,
    Files,
    Tar,
    Secrets,
    Command,
}

impl SourceKind {
    /// The snapshot kind it records.
    pub fn snapshot_kind(self) -> &'static str {
        match self {
            SourceKind::Pg => "pg",
            SourceKind::PgBase => "pg-base",
            SourceKind::Sqlite => "sqlite",
            SourceKind::Files => "files",
            SourceKind::Tar => "tar",
            SourceKind::Secrets => "secrets",
            SourceKind::Command => "stdin",
        }
    }
}

/// One thing to back up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The snapshot name, unique in the file; `cairn run NAME` runs only this source.
    pub name: String,
    pub kind: SourceKind,
    /// pg, pg-base: a libpq connection string or URI.
    pub dbname: Option<String>,
    /// pg: `custom` (default) or `plain`.
    pub format: Option<String>,
    /// pg-base: the WAL source its archive_command pushes to (default: the name).
    pub wal_source: Option<String>,
    /// pg-base: read this data directory directly instead of through pg_basebackup.
    pub pgdata: Option<PathBuf>,
    /// pg-base: seconds to wait for the server to archive WAL (default 300).
    pub wal_timeout: Option<u64>,
    /// pg: also back up roles and tablespaces (`pg_dumpall --globals-only`).
    #[serde(default)]
    pub globals: bool,
    /// sqlite: the database; tar: the archive file.
    pub path: Option<PathBuf>,
    /// files, secrets: files and directories.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// files: globs to skip.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// command: the producer (`sh -c`); tar: a command writing the archive to stdout.
    pub command: Option<String>,
    /// sqlite: quick (default), full or none.
    pub sqlite_check: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub retention: Option<Retention>,
    /// SQL (pg, pg-base, sqlite) run by drills.
    #[serde(default)]
    pub checks: Vec<String>,
}

/// A retention policy, as `cairn forget`'s options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// e.g. `30d`, `1y6m`.
    pub keep_within: Option<String>,
    #[serde(default)]
    pub keep_tag: Vec<String>,
    /// pg-base: the PITR window (`forget --keep-wal-within`).
    pub keep_wal_within: Option<String>,
    /// Calendar buckets in this time zone (IANA name) [default: local].
    pub tz: Option<String>,
}

/// An offsite copy target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsiteConfig {
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
    pub connections: Option<u16>,
}

/// What `run` checks each night.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Read a rotating share of the packs so that every pack is read at least once in
    /// this many days; 0 turns reading off (the structure is still checked).
    #[serde(default = "thirty")]
    pub read_all_every_days: u32,
}

fn thirty() -> u32 {
    30
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig { read_all_every_days: 30 }
    }
}

/// When and how `run` prunes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    /// Prune in each run whose backups all succeeded (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// As `prune --max-unused`.
    #[serde(default = "five_percent")]
    pub max_unused: String,
    /// As `prune --max-repack`.
    pub max_repack: Option<String>,
    /// As `prune --stale-session-after` (default 1h).
    pub stale_session_after: Option<String>,
}

fn yes() -> bool {
    true
}

fn five_percent() -> String {
    "5%".into()
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig { enabled: true, max_unused: five_percent(), max_repack: None, stale_session_after: None }
    }
}

/// Where `run` writes what it did.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Prometheus textfile-collector file, written atomically.
    pub metrics_file: Option<PathBuf>,
    /// The JSON report of the last run.
    pub report_file: Option<PathBuf>,
    /// A lock file that keeps two runs apart (default: `<cache dir>/run.lock`).
    pub lock_file: Option<PathBuf>,
}

/// The file `--config` names, or the first of `/etc/cairn/cairn.toml` and
/// `<config dir>/cairn/cairn.toml` that exists.
pub fn locate(given: Option<&Path>, user_config_dir: &Path) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let candidates = [PathBuf::from("/etc/cairn/cairn.toml"), user_config_dir.join("cairn").join("cairn.toml")];
    candidates.iter().find(|p| p.exists()).cloned().ok_or_else(|| {
        Error::invalid(format!(
            "no configuration file: give --config FILE, or create {} or {}",
            candidates[0].display(),
            candidates[1].display()
        ))
    })
}

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read configuration file", path, e))?;
    parse(&text).map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message())))
}

/// The line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parse and validate configuration text; errors name the line.
pub fn parse(text: &str) -> Result<Config> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
        Error::invalid(format!("{line}{}", e.message().trim()))
    })?;
    validate(&config, text)?;
    Ok(config)
}

fn validate(config: &Config, text: &str) -> Result<()> {
    // Point at the line of a source's name, where its table starts.
    let where_is = |name: &str| -> String {
        let needle = format!("\"{name}\"");
        text.find(&needle).map(|o| format!("line {}: ", line_of(text, o))).unwrap_or_default()
    };
    let mut seen = std::collections::HashSet::new();
    for s in &config.sources {
        let at = where_is(&s.name);
        let bad = |what: String| Error::invalid(format!("{at}source {:?}: {what}", s.name));
        if s.name.is_empty() || s.name.contains('/') {
            return Err(bad("name must be non-empty, without '/'".into()));
        }
        if !seen.insert(s.name.clone()) {
            return Err(bad("two sources have this name; names must be unique".into()));
        }
        let need = |field: &str, present: bool| -> Result<()> {
            if present {
                Ok(())
            } else {
                Err(bad(format!("kind {:?} needs `{field}`", s.kind.snapshot_kind())))
            }
        };
        match s.kind {
            SourceKind::Pg | SourceKind::PgBase => need("dbname", s.dbname.is_some())?,
            SourceKind::Sqlite => need("path", s.path.is_some())?,
            SourceKind::Files | SourceKind::Secrets => need("paths", !s.paths.is_empty())?,
            SourceKind::Tar => need("path or command", s.path.is_some() || s.command.is_some())?,
            SourceKind::Command => need("command", s.command.is_some())?,
        }
        if let Some(format) = &s.format {
            if s.kind != SourceKind::Pg || !["custom", "plain"].contains(&format.as_str()) {
                return Err(bad(format!("format {format:?}: only pg sources take a format, custom or plain")));
            }
        }
        if let Some(check) = &s.sqlite_check {
            if !["quick", "full", "none"].contains(&check.as_str()) {
                return Err(bad(format!("sqlite_check {check:?}: use quick, full or none")));
            }
        }
        if let Some(r) = &s.retention {
            for (field, value) in [("keep_within", &r.keep_within), ("keep_wal_within", &r.keep_wal_within)] {
                if let Some(v) = value {
                    crate::ops::forget::parse_within(v)
                        .map_err(|_| bad(format!("{field} {v:?}: use a duration like 7d or 1y6m")))?;
                }
            }
            if r.keep_wal_within.is_some() && s.kind != SourceKind::PgBase {
                return Err(bad("keep_wal_within applies to pg-base sources only".into()));
            }
            if let Some(tz) = &r.tz {
                jiff::tz::TimeZone::get(tz).map_err(|e| bad(format!("tz {tz:?}: {e}")))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[repository]
url = "/var/backups/cairn"            # or s3://bucket/prefix, oss://bucket/prefix
password_file = "/etc/cairn/password"

[[source]]
name = "appdb"
kind = "pg"                           # pg | pg-base | sqlite | files | tar | secrets | command
dbname = "host=/run/postgresql dbname=app"
retention = { keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }
checks = ["select count(*) from accounts"]   # run by drills

[[source]]
name = "quota"
kind = "sqlite"
path = "/opt/quota-proxy/data/quota.db"

[[source]]
name = "config"
kind = "files"
paths = ["/etc/app", "/opt/app/docker-compose.yml"]

[[source]]
name = "export"
kind = "command"
command = "some-exporter --stdout"

[[offsite]]
url = "s3://offsite-bucket/cairn"
password_file = "/etc/cairn/offsite-password"

[check]
read_all_every_days = 30
"#;

    #[test]
    fn the_documented_example_parses() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.sources.len(), 4);
        assert_eq!(config.sources[0].kind, SourceKind::Pg);
        assert_eq!(config.sources[0].retention.as_ref().unwrap().keep_weekly, Some(4));
        assert_eq!(config.offsite[0].url, "s3://offsite-bucket/cairn");
        assert_eq!(config.check.read_all_every_days, 30);
        assert!(config.prune.enabled);
    }

    #[test]
    fn mistakes_name_their_line() {
        let unknown = EXAMPLE.replace("path = \"/opt/quota", "pathh = \"/opt/quota");
        let err = parse(&unknown).unwrap_err().to_string();
        assert!(err.contains("line 16") && err.contains("pathh"), "{err}");
        let kind = EXAMPLE.replace("kind = \"sqlite\"", "kind = \"mysql\"");
        let err = parse(&kind).unwrap_err().to_string();
        assert!(err.contains("line 15") && err.contains("mysql"), "{err}");
        let missing = EXAMPLE.replace("command = \"some-exporter --stdout\"", "");
        let err = parse(&missing).unwrap_err().to_string();
        assert!(err.contains("line 24") && err.contains("needs `command`"), "{err}");
        let duration = EXAMPLE.replace("keep_monthly = 12", "keep_within = \"soon\"");
        let err = parse(&duration).unwrap_err().to_string();
        assert!(err.contains("line 7") && err.contains("soon"), "{err}");
    }
}
