//! Global options and opening the repository they name.
//!
//! The repository URL comes from `--repo` / `CAIRN_REPO`; without either, cairn uses the
//! embedded default: `<data dir>/cairn/repository`, unlocked by the key file
//! `<config dir>/cairn/default-repository.key`, both created on first use.
//! The secret comes from, in order: `--key-file` / `CAIRN_KEY_FILE`, `--password-command`
//! / `CAIRN_PASSWORD_COMMAND`, `--password-file` / `CAIRN_PASSWORD_FILE`, `CAIRN_PASSWORD`.

use anyhow::{anyhow, Context as _};
use cairn::backend::Backend;
use cairn::progress::Cancel;
use cairn::repo::{CacheMode, InitOptions, Repository, Secret};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Repository location: a local path, file:///path, s3://BUCKET/PREFIX or oss://BUCKET/PREFIX
    #[arg(long, global = true, env = "CAIRN_REPO", value_name = "URL")]
    pub repo: Option<String>,
    /// Requests in flight at once to the repository's storage [default: 8 for object
    /// stores, 4 reads and 1 write for a local disk]
    #[arg(long, global = true, env = "CAIRN_CONNECTIONS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub connections: Option<u16>,
    /// Read the password from this file (first line)
    #[arg(long, global = true, env = "CAIRN_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use its output as the password
    #[arg(long, global = true, env = "CAIRN_PASSWORD_COMMAND", value_name = "CMD")]
    pub password_command: Option<String>,
    /// Unlock with a key file instead of a password (0600; opens in milliseconds)
    #[arg(long, global = true, env = "CAIRN_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Read the secrets compartment's password from this file (first line); also
    /// CAIRN_SECRETS_PASSWORD
    #[arg(long, global = true, env = "CAIRN_SECRETS_PASSWORD_FILE", value_name = "FILE")]
    pub secrets_password_file: Option<PathBuf>,
    /// Run this shell command and use its output as the secrets compartment's password
    #[arg(long, global = true, env = "CAIRN_SECRETS_PASSWORD_COMMAND", value_name = "CMD")]
    pub secrets_password_command: Option<String>,
    /// Directory for the local catalog cache [default: the user's cache dir]
    #[arg(long, global = true, env = "CAIRN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use a temporary catalog instead of the cache directory
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// Skip key slots whose Argon2id cost (memory in MiB × passes) is above this: a planted
    /// slot must not make every unlock take minutes. The default slot costs 192
    #[arg(long, global = true, env = "CAIRN_KDF_COST_LIMIT", value_name = "MIB_PASSES",
          default_value_t = cairn::repo::keys::DEFAULT_KDF_COST_LIMIT)]
    pub kdf_cost_limit: u64,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors and warnings
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print more detail
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub struct Context {
    pub args: GlobalArgs,
    pub cancel: Cancel,
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()).unwrap_or_else(|| home().join(fallback))
}

pub fn default_repository() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("cairn").join("repository")
}

/// `$XDG_CONFIG_HOME` or `~/.config`.
pub fn user_config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config")
}

pub fn default_key_file() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("cairn").join("default-repository.key")
}

impl Context {
    pub fn new(args: GlobalArgs) -> Self {
        cairn::repo::keys::set_kdf_cost_limit(args.kdf_cost_limit);
        Context { args, cancel: Cancel::new() }
    }

    /// Ctrl-C and SIGTERM set the cancel flag; a second signal, or 5 s without the
    /// operation stopping, exits at once with 130.
    pub fn watch_signals(&self) {
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                if cancel.is_set() {
                    eprintln!("cairn: interrupted again; exiting without cleanup");
                    std::process::exit(130);
                }
                eprintln!("cairn: interrupted; stopping (nothing will be committed)");
                cancel.set();
                // Every write is crash-safe, so if the operation is stuck (say, reading a
                // stdin whose producer is still alive), exiting is safe too.
                tokio::spawn(async {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    eprintln!("cairn: still busy 5 s after the interrupt; exiting (the repository stays valid)");
                    std::process::exit(130);
                });
            }
        });
    }

    pub fn cache_mode(&self) -> CacheMode {
        if self.args.no_cache {
            return CacheMode::Temporary;
        }
        CacheMode::Dir(self.args.cache_dir.clone().unwrap_or_else(|| xdg("XDG_CACHE_HOME", ".cache").join("cairn")))
    }

    /// Whether to draw progress bars: only on a terminal, never with --json or --quiet.
    pub fn progress_enabled(&self) -> bool {
        !self.args.json && !self.args.quiet && std::io::stderr().is_terminal()
    }

    pub fn info(&self, message: impl std::fmt::Display) {
        if !self.args.quiet {
            eprintln!("{message}");
        }
    }

    /// The repository URL, and whether it is the embedded default.
    pub fn repo_url(&self) -> (String, bool) {
        match &self.args.repo {
            Some(url) => (url.clone(), false),
            None => (default_repository().display().to_string(), true),
        }
    }

    /// The secret from the options, or `None` if none was given. An empty password is an
    /// error naming where it came from, not a wrong password.
    pub fn secret(&self) -> anyhow::Result<Option<Secret>> {
        if let Some(path) = &self.args.key_file {
            return Ok(Some(Secret::KeyFile(path.clone())));
        }
        let (password, source): (Zeroizing<String>, String) = if let Some(command) = &self.args.password_command {
            (password_from_command(command)?.into(), format!("--password-command `{command}` printed nothing"))
        } else if let Some(path) = &self.args.password_file {
            (password_file(path)?, format!("the first line of {} is empty", path.display()))
        } else if let Ok(password) = std::env::var("CAIRN_PASSWORD") {
            (password.into(), "CAIRN_PASSWORD is set but empty".to_string())
        } else {
            return Ok(None);
        };
        if password.is_empty() {
            return Err(cairn::Error::new(
                cairn::ErrorKind::WrongPassword,
                format!("the password is empty: {source}; give the repository's password"),
            )
            .into());
        }
        Ok(Some(Secret::Password(password)))
    }

    /// The secrets compartment's password, if one was given.
    pub fn secrets_password(&self) -> anyhow::Result<Option<Zeroizing<String>>> {
        if let Some(command) = &self.args.secrets_password_command {
            return Ok(Some(password_from_command(command)?.into()));
        }
        if let Some(path) = &self.args.secrets_password_file {
            return Ok(Some(password_file(path)?));
        }
        Ok(std::env::var("CAIRN_SECRETS_PASSWORD").ok().map(Zeroizing::new))
    }

    /// The unlocked secrets compartment, if its password was given.
    pub async fn open_secrets(&self, repo: &Repository) -> anyhow::Result<Option<cairn::ops::secrets::SecretsKey>> {
        match self.secrets_password()? {
            Some(password) => Ok(Some(cairn::ops::secrets::unlock(repo, &password).await?)),
            None => Ok(None),
        }
    }

    /// The unlocked secrets compartment; an error (exit 12) naming the ways to give its
    /// password if none was given.
    pub async fn require_secrets(&self, repo: &Repository) -> anyhow::Result<cairn::ops::secrets::SecretsKey> {
        self.open_secrets(repo).await?.ok_or_else(|| {
            cairn::Error::new(
                cairn::ErrorKind::WrongPassword,
                "no secrets password given: set CAIRN_SECRETS_PASSWORD, --secrets-password-file or \
                 --secrets-password-command",
            )
            .into()
        })
    }

    pub fn secret_or_default(&self, is_default: bool) -> anyhow::Result<Secret> {
        match self.secret()? {
            Some(secret) => Ok(secret),
            None if is_default => Ok(Secret::KeyFile(default_key_file())),
            None => Err(anyhow!(
                "no password given for {}: set CAIRN_PASSWORD, --password-file, --password-command or --key-file",
                self.repo_url().0
            )),
        }
    }

    /// Open the repository.
    pub async fn open(&self) -> anyhow::Result<Repository> {
        let repo = self.open_unrefreshed().await?;
        repo.refresh().await?;
        warn_damaged(&repo);
        Ok(repo)
    }

    /// Open for reading under a reader's session (docs/format.md §17.3), which refreshes
    /// the catalog itself; on storage this client cannot write to, without one.
    pub async fn open_reading(&self) -> anyhow::Result<(Repository, Option<cairn::repo::gc::Session>)> {
        let repo = self.open_unrefreshed().await?;
        let session = repo.begin_reading().await.ok();
        if session.is_none() {
            repo.refresh().await?;
        }
        warn_damaged(&repo);
        Ok((repo, session))
    }

    /// Open the repository for a backup: the embedded default is created on first use
    /// (only `init` and `backup` create anything).
    pub async fn open_or_create(&self) -> anyhow::Result<Repository> {
        let (url, is_default) = self.repo_url();
        if is_default && !Path::new(&url).join("config").exists() {
            let secret = self.secret_or_default(is_default)?;
            let repo = self.create_default(&url, &secret).await?;
            repo.refresh().await?;
            return Ok(repo);
        }
        self.open().await
    }

    /// Open without loading the index into the catalog (for `check`). Never creates
    /// anything: a command that finds no repository exits 10.
    pub async fn open_unrefreshed(&self) -> anyhow::Result<Repository> {
        let (url, is_default) = self.repo_url();
        if is_default && !Path::new(&url).join("config").exists() {
            return Err(cairn::Error::new(
                cairn::ErrorKind::NoRepository,
                format!("no repository at {url}; set CAIRN_REPO or run `cairn init`"),
            )
            .into());
        }
        let secret = self.secret_or_default(is_default)?;
        let backend = self.backend(&url, false)?;
        Ok(Repository::open_unrefreshed(backend, &secret, &self.cache_mode()).await?)
    }

    /// Open another repository (the source or destination of a copy).
    pub async fn open_other(&self, url: &str, secret: &Secret) -> anyhow::Result<Repository> {
        let backend = self.backend(url, false)?;
        let repo = Repository::open(backend, secret, &self.cache_mode()).await?;
        Ok(repo)
    }

    /// The storage at `url`, with `--connections` applied.
    pub fn backend(&self, url: &str, create: bool) -> anyhow::Result<Backend> {
        let backend = Backend::from_url(url, create)?;
        Ok(match self.args.connections {
            Some(n) => backend.with_connections(n.into()),
            None => backend,
        })
    }

    async fn create_default(&self, url: &str, secret: &Secret) -> anyhow::Result<Repository> {
        let backend = self.backend(url, true)?;
        let repo = Repository::init(backend, secret, &InitOptions::default(), &self.cache_mode()).await?;
        if let Secret::KeyFile(path) = secret {
            eprintln!(
                "cairn: created the default repository at {url}\n\
                 cairn: its key is in {} (mode 0600); keep a copy somewhere safe: losing that file loses these backups",
                path.display()
            );
        }
        Ok(repo)
    }
}

/// How to unlock a second repository (`copy --to`, `init --copy-settings-from`): the
/// same choices as the global options, under a prefix (`--to-password-file`, ...).
#[derive(Args, Clone, Debug, Default)]
pub struct OtherSecret {
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
}

impl OtherSecret {
    /// The secret, falling back to the environment variable `env` for a password.
    pub fn resolve(&self, env: &str, what: &str) -> anyhow::Result<Secret> {
        if let Some(path) = &self.key_file {
            return Ok(Secret::KeyFile(path.clone()));
        }
        if let Some(command) = &self.password_command {
            return Ok(Secret::Password(password_from_command(command)?.into()));
        }
        if let Some(path) = &self.password_file {
            return Ok(Secret::Password(password_file(path)?));
        }
        match std::env::var(env) {
            Ok(password) => Ok(Secret::Password(password.into())),
            Err(_) => Err(usage(format!(
                "no password given for {what}: set {env} or pass its password file, command or key file"
            ))),
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// The first line of a password file; the file's text is wiped from memory once read.
pub fn password_file(path: &std::path::Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read password file {}", path.display()))?,
    );
    Ok(Zeroizing::new(first_line(&text)))
}

pub fn password_from_command(command: &str) -> anyhow::Result<String> {
    let output = cairn::process::child("sh")
        .arg("-c")
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run password command `{command}`"))?;
    if !output.status.success() {
        return Err(anyhow!("password command `{command}` failed with {}", output.status));
    }
    Ok(first_line(&String::from_utf8_lossy(&output.stdout)))
}

/// A usage-style error for a bad argument value, exit code 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(super::Exit { code: 2, message: message.into() })
}

/// Parse sizes such as `1MiB`, `512KiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size like 1MiB or 4096"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    u32::try_from(n * mult).map_err(|_| format!("{text:?} is too large"))
}

/// One warning per object the catalog's refresh had to leave out.
fn warn_damaged(repo: &Repository) {
    for (object, why) in repo.catalog().damaged() {
        let repair = match object.starts_with(cairn::format::layout::INDEX) {
            true => "run `cairn check`, then `cairn repair index`",
            false => "run `cairn check`, and restore the object from a copy of the repository if there is one",
        };
        eprintln!("cairn: warning: {object} cannot be read ({why}); it is left out and the rest is usable: {repair}");
    }
}
