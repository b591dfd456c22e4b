//! `cairn key add|list|remove|passwd|init-secrets`

use super::context::{password_from_command, Context};
use super::init::kdf_params;
use super::Outcome;
use anyhow::{anyhow, bail, Context as _};
use cairn::format::layout as objkeys;
use cairn::id::KeyId;
use cairn::repo::keys::{add_slot, list_slots, list_slots_at, REPOSITORY_SLOTS, SECRETS_SLOTS};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Add a key slot with a new password
    Add {
        #[command(flatten)]
        new: NewPassword,
        /// A slot of the secrets compartment (unlocked with its current password)
        #[arg(long)]
        secrets: bool,
    },
    /// List key slots
    List {
        /// The secrets compartment's slots
        #[arg(long)]
        secrets: bool,
    },
    /// Remove a key slot (not the one in use, nor the last)
    Remove {
        /// Key slot id (or a unique prefix)
        id: String,
        /// A slot of the secrets compartment
        #[arg(long)]
        secrets: bool,
    },
    /// Change the password of the key slot in use
    Passwd {
        #[command(flatten)]
        new: NewPassword,
        /// Change the secrets compartment's password (the current one from
        /// CAIRN_SECRETS_PASSWORD, --secrets-password-file or --secrets-password-command)
        #[arg(long)]
        secrets: bool,
    },
    /// Create the secrets compartment: a second key under its own password, taken from
    /// CAIRN_SECRETS_PASSWORD, --secrets-password-file or --secrets-password-command
    #[command(name = "init-secrets")]
    InitSecrets {
        /// Argon2id memory for the compartment's slot, in MiB
        #[arg(long, env = "CAIRN_KDF_MEMORY_MIB", default_value_t = 64, value_name = "MIB")]
        kdf_memory_mib: u32,
        /// Argon2id passes for the compartment's slot
        #[arg(long, env = "CAIRN_KDF_ITERATIONS", default_value_t = 3, value_name = "N")]
        kdf_iterations: u32,
    },
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
        let password = self.read()?;
        cairn::ops::secrets::refuse_compartment_password(repo, &password).await?;
        Ok(add_slot(repo.backend(), repo.key(), password.as_bytes(), params).await?)
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
    let place = |secrets: bool| if secrets { SECRETS_SLOTS } else { REPOSITORY_SLOTS };
    match command {
        KeyCommand::InitSecrets { kdf_memory_mib, kdf_iterations } => {
            let password = ctx.secrets_password()?.ok_or_else(|| {
                anyhow!(
                    "no secrets password given: set CAIRN_SECRETS_PASSWORD, --secrets-password-file or \
                     --secrets-password-command"
                )
            })?;
            let slot = cairn::ops::secrets::init(&repo, &password, kdf_params(kdf_memory_mib, kdf_iterations)).await?;
            ctx.info(format!(
                "created the secrets compartment (key slot {}); its password is needed to back up, restore \
                 and fully check secrets: losing it loses them",
                slot.short()
            ));
        }
        KeyCommand::List { secrets } => {
            let (slots, unreadable) = list_slots_at(backend, place(secrets)).await?;
            for reason in &unreadable {
                eprintln!("cairn: warning: {reason}; it is skipped when unlocking (remove it with `cairn key remove`)");
            }
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
        KeyCommand::Add { new, secrets: false } => {
            let id = new.add_slot(&repo).await?;
            ctx.info(format!("added key slot {}", id.short()));
        }
        KeyCommand::Add { new, secrets: true } => {
            let key = ctx.require_secrets(&repo).await?;
            let params = kdf_params(new.kdf_memory_mib, new.kdf_iterations);
            let id = cairn::ops::secrets::add_password(&repo, &key, &new.read()?, params).await?;
            ctx.info(format!("added secrets key slot {}", id.short()));
        }
        KeyCommand::Passwd { new, secrets: true } => {
            let key = ctx.require_secrets(&repo).await?;
            let old = key.slot.expect("a password opened the compartment");
            let params = kdf_params(new.kdf_memory_mib, new.kdf_iterations);
            let id = cairn::ops::secrets::add_password(&repo, &key, &new.read()?, params).await?;
            backend.delete(&format!("{}{old}", SECRETS_SLOTS.prefix)).await?;
            ctx.info(format!("changed the secrets password: key slot {} replaces {}", id.short(), old.short()));
        }
        KeyCommand::Remove { id, secrets: true } => {
            let (slots, _) = list_slots_at(backend, SECRETS_SLOTS).await?;
            let target = unique_slot(&slots, &id)?;
            if slots.len() <= 1 {
                bail!("refusing to remove the last secrets key slot: the secrets would be lost");
            }
            backend.delete(&format!("{}{target}", SECRETS_SLOTS.prefix)).await?;
            ctx.info(format!("removed secrets key slot {}", target.short()));
        }
        KeyCommand::Remove { id, secrets: false } => {
            let (slots, _) = list_slots(backend).await?;
            let target = unique_slot(&slots, &id)?;
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
        KeyCommand::Passwd { new, secrets: false } => {
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

fn unique_slot(slots: &[(KeyId, cairn::repo::KeySlotFile)], id: &str) -> anyhow::Result<KeyId> {
    let matches: Vec<KeyId> =
        slots.iter().map(|(k, _)| *k).filter(|k| k.to_hex().starts_with(&id.to_ascii_lowercase())).collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no key slot with id prefix {id}; list them with `cairn key list`"),
        _ => bail!("key slot id prefix {id} is ambiguous; give more characters"),
    }
}
