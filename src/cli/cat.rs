//! `cairn cat`: decrypted repository objects as JSON.

use super::context::{usage, Context};
use super::output::print_json;
use super::Outcome;
use cairn::format::layout as keys;
use cairn::format::pack;
use cairn::id::{BlobId, IndexId, PackId};
use cairn::repo::SnapshotFilter;
use clap::{Args, ValueEnum};
use serde_json::json;

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Config,
    Snapshot,
    Index,
    Pack,
    Key,
    Tree,
    Blob,
}

#[derive(Args)]
pub struct CatArgs {
    #[arg(value_enum)]
    what: What,
    /// The object's id (snapshots: `latest` or a prefix)
    id: Option<String>,
}

fn entry_json(e: &pack::PackEntry) -> serde_json::Value {
    json!({"type": e.kind.name(), "id": e.id, "offset": e.offset, "length": e.length, "raw_length": e.raw_length})
}

pub async fn run(ctx: &Context, args: CatArgs) -> Outcome {
    let repo = ctx.open().await?;
    let need_id = || args.id.clone().ok_or_else(|| usage("this object type needs an id"));
    let value = match args.what {
        What::Config => serde_json::to_value(repo.config())?,
        What::Snapshot => {
            let (id, snapshot) = repo.find_snapshot(&need_id()?, &SnapshotFilter::default())?;
            json!({"id": id, "snapshot": snapshot})
        }
        What::Index => {
            let id = IndexId::from_hex(&need_id()?)?;
            let file = cairn::repo::read_index(repo.backend(), repo.key(), &id).await?;
            let packs: Vec<_> = file
                .packs
                .iter()
                .map(|p| json!({"id": p.id, "size": p.size, "blobs": p.blobs.iter().map(entry_json).collect::<Vec<_>>()}))
                .collect();
            json!({"id": id, "packs": packs})
        }
        What::Pack => {
            let id = PackId::from_hex(&need_id()?)?;
            let bytes = repo.backend().get(&keys::pack(&id)).await?;
            let (_, entries) = pack::read_header(repo.key(), &id.to_hex(), &bytes)?;
            json!({"id": id, "size": bytes.len(), "blobs": entries.iter().map(entry_json).collect::<Vec<_>>()})
        }
        What::Key => {
            let id = need_id()?;
            let (slots, _) = cairn::repo::keys::list_slots(repo.backend()).await?;
            let (kid, slot) = slots
                .iter()
                .find(|(k, _)| k.to_hex().starts_with(&id))
                .ok_or_else(|| usage(format!("no key slot {id}")))?;
            json!({"id": kid, "created": slot.created, "host": slot.host, "user": slot.user, "kdf": slot.kdf, "params": slot.params})
        }
        What::Tree => serde_json::to_value(repo.load_tree(&BlobId::from_hex(&need_id()?)?).await?)?,
        What::Blob => {
            let id = BlobId::from_hex(&need_id()?)?;
            let data = repo.load_blob(&id).await?;
            json!({"id": id, "length": data.len(), "utf8": String::from_utf8(data).ok()})
        }
    };
    print_json(&value);
    Ok(0)
}
