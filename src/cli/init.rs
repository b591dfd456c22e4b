//! `cairn init`

use super::context::{parse_size, Context};
use super::Outcome;
use cairn::crypto::KdfParams;
use cairn::repo::{InitOptions, Repository, Secret, DEFAULT_CHUNK_AVG, DEFAULT_COMPRESSION_LEVEL, DEFAULT_PACK_SIZE};
use clap::Args;

#[derive(Args)]
pub struct InitArgs {
    /// Average chunk size (fixed for the repository's life)
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_CHUNK_AVG, value_name = "SIZE")]
    chunk_avg: u32,
    /// zstd level for new blobs, 0 to store raw
    #[arg(long, default_value_t = DEFAULT_COMPRESSION_LEVEL, value_name = "N")]
    compression_level: i32,
    /// Target pack file size
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_PACK_SIZE, value_name = "SIZE")]
    pack_size: u32,
    /// Argon2id memory for the password's key slot, in MiB
    #[arg(long, env = "CAIRN_KDF_MEMORY_MIB", default_value_t = 64, value_name = "MIB")]
    kdf_memory_mib: u32,
    /// Argon2id passes for the password's key slot
    #[arg(long, env = "CAIRN_KDF_ITERATIONS", default_value_t = 3, value_name = "N")]
    kdf_iterations: u32,
    /// Take chunking, compression, pack size and the blob id key from this repository, so
    /// that `cairn copy` between the two deduplicates (its password: --from-password-file,
    /// --from-password-command, --from-key-file or CAIRN_FROM_PASSWORD)
    #[arg(long, value_name = "URL")]
    copy_settings_from: Option<String>,
    /// Read the --copy-settings-from repository's password from this file
    #[arg(long, value_name = "FILE", requires = "copy_settings_from")]
    from_password_file: Option<std::path::PathBuf>,
    /// Run this shell command for the --copy-settings-from repository's password
    #[arg(long, value_name = "CMD", requires = "copy_settings_from")]
    from_password_command: Option<String>,
    /// Unlock the --copy-settings-from repository with a key file
    #[arg(long, value_name = "FILE", requires = "copy_settings_from")]
    from_key_file: Option<std::path::PathBuf>,
    /// A local repository's files are its owner's alone (0600 / 0700, whatever the
    /// umask); with this the group may read them too (0640 / 0750), e.g. for an offsite
    /// copy run by another user of the group
    #[arg(long)]
    group_readable: bool,
}

pub fn kdf_params(memory_mib: u32, iterations: u32) -> KdfParams {
    KdfParams { memory_kib: memory_mib.saturating_mul(1024), iterations, ..KdfParams::default() }
}

pub async fn run(ctx: &Context, args: InitArgs) -> Outcome {
    let (url, is_default) = ctx.repo_url();
    let secret = match ctx.secret()? {
        Some(secret) => secret,
        None if is_default => Secret::KeyFile(super::context::default_key_file()),
        None => anyhow::bail!("no password given for the new repository at {url}: set CAIRN_PASSWORD, --password-file, --password-command or --key-file"),
    };
    let like = match &args.copy_settings_from {
        Some(from) => {
            let from_secret = super::context::OtherSecret {
                password_file: args.from_password_file.clone(),
                password_command: args.from_password_command.clone(),
                key_file: args.from_key_file.clone(),
            }
            .resolve("CAIRN_FROM_PASSWORD", &format!("the repository {from}"))?;
            let other = cairn::repo::Repository::open_unrefreshed(
                ctx.backend(from, false)?,
                &from_secret,
                &cairn::repo::CacheMode::Temporary,
            )
            .await?;
            Some((other.config().clone(), other.key().clone()))
        }
        None => None,
    };
    let options = InitOptions {
        chunk_avg: args.chunk_avg,
        compression_level: args.compression_level,
        pack_size: args.pack_size,
        kdf: kdf_params(args.kdf_memory_mib, args.kdf_iterations),
        like,
    };
    let backend = ctx.backend(&url, true)?;
    if args.group_readable {
        let root = backend
            .local_root()
            .ok_or_else(|| super::context::usage("--group-readable is for repositories on a local disk"))?;
        cairn::backend::Backend::make_group_readable(root)?;
    }
    let repo = Repository::init(backend, &secret, &options, &ctx.cache_mode()).await?;
    if ctx.args.json {
        super::output::print_json(
            &serde_json::json!({ "id": repo.config().id, "repository": repo.backend().location() }),
        );
    } else {
        ctx.info(format!("created repository {} at {}", repo.config().id.short(), repo.backend().location()));
        if let Secret::KeyFile(path) = &secret {
            ctx.info(format!(
                "its key is in {}; keep a copy somewhere safe: losing that file loses these backups",
                path.display()
            ));
        }
    }
    Ok(0)
}
