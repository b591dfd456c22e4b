//! `cairn key add|list|remove|passwd`

use super::context::{password_from_command, Context};
use super::init::kdf_params;
use super::Outcome;
use anyhow::{anyhow, bail, Context as _};
use cairn::backend::keys as objkeys;
use cairn::id::KeyId;
use cairn::repo::keys::{add_slot, list_slots};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Add a key slot with a new password
    Add(NewPassword),
    /// List key slots
    List,
    /// Remove a key slot (not the one in use, nor the last)
    Remove {
        /// Key slot id (or a unique prefix)
        id: String,
    },
    /// Change the password of the key slot in use
    Passwd(NewPassword),
}

#[derive(Args)]
pub struct NewPassword {
    /// Read the new password from this file
    #[arg(long, env = "CAIRN_NEW_PASSWORD_FILE", value_name = "FILE")]
    new_password_file: Option<PathBuf>,
    /// Run this command and use its output as the new password
    #[arg(long, env = "CAIRN_NEW_PASSWORD_COMMAND", value_name = "CMD")]
    new_password_command: Option<String>,
    /// Argon2id memory for the new slot, in MiB
    #[arg(long, env = "CAIRN_KDF_MEMORY_MIB", default_value_t = 64, value_name = "MIB")]
    kdf_memory_mib: u32,
    /// Argon2id passes for the new slot
    #[arg(long, env = "CAIRN_KDF_ITERATIONS", default_value_t = 3, value_name = "N")]
    kdf_iterations: u32,
}

impl NewPassword {
    /// Wrap the repository's master key under the new password in a new key slot.
    async fn add_slot(&self, repo: &cairn::repo::Repository) -> anyhow::Result<KeyId> {
        let params = kdf_params(self.kdf_memory_mib, self.kdf_iterations);
        Ok(add_slot(repo.backend(), repo.key(), self.read()?.as_bytes(), params).await?)
    }

    fn read(&self) -> anyhow::Result<String> {
        if let Some(command) = &self.new_password_command {
            return password_from_command(command);
        }
        if let Some(path) = &self.new_password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read new password file {}", path.display()))?;
            return Ok(text.lines().next().unwrap_or("").to_string());
        }
        std::env::var("CAIRN_NEW_PASSWORD").map_err(|_| {
            anyhow!("no new password given: set CAIRN_NEW_PASSWORD, --new-password-file or --new-password-command")
        })
    }
}

pub async fn run(ctx: &Context, command: KeyCommand) -> Outcome {
    let repo = ctx.open().await?;
    let backend = repo.backend();
    match command {
        KeyCommand::List => {
            let (slots, _) = list_slots(backend).await?;
            if ctx.args.json {
                let list: Vec<_> = slots
                    .iter()
                    .map(|(id, s)| serde_json::json!({"id": id, "current": Some(*id) == repo.key_slot(), "created": s.created, "host": s.host, "user": s.user, "kdf": s.kdf, "params": s.params}))
                    .collect();
                super::output::print_json(&list);
            } else {
                for (id, slot) in &slots {
                    let mark = if Some(*id) == repo.key_slot() { "*" } else { " " };
                    println!(
                        "{mark} {}  {}  {}@{}  argon2id m={}MiB t={}",
                        id.short(),
                        slot.created,
                        slot.user,
                        slot.host,
                        slot.params.memory_kib / 1024,
                        slot.params.iterations
                    );
                }
            }
        }
        KeyCommand::Add(new) => {
            let id = new.add_slot(&repo).await?;
            ctx.info(format!("added key slot {}", id.short()));
        }
        KeyCommand::Remove { id } => {
            let (slots, _) = list_slots(backend).await?;
            let matches: Vec<KeyId> =
                slots.iter().map(|(k, _)| *k).filter(|k| k.to_hex().starts_with(&id.to_ascii_lowercase())).collect();
            let target = match matches.as_slice() {
                [one] => *one,
                [] => bail!("no key slot with id prefix {id}; list them with `cairn key list`"),
                _ => bail!("key slot id prefix {id} is ambiguous; give more characters"),
            };
            if Some(target) == repo.key_slot() {
                bail!(
                    "key slot {} is the one that opened the repository; open with another password to remove it",
                    target.short()
                );
            }
            if slots.len() <= 1 && repo.key_slot().is_some() {
                bail!("refusing to remove the last key slot");
            }
            backend.delete(&objkeys::key(&target)).await?;
            ctx.info(format!("removed key slot {}", target.short()));
        }
        KeyCommand::Passwd(new) => {
            let old = repo.key_slot().ok_or_else(|| {
                anyhow!("the repository was opened with a key file; use `cairn key add` to add a password")
            })?;
            let id = new.add_slot(&repo).await?;
            backend.delete(&objkeys::key(&old)).await?;
            ctx.info(format!("changed password: key slot {} replaces {}", id.short(), old.short()));
        }
    }
    Ok(0)
}
