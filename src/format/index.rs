//! Index files: which blobs live in which pack, at which offset.
//!
//! An index file is an object file (`CAIRNix1`, see [`crate::format::object`]) whose plaintext is
//! (docs/format.md, "Index files"):
//!
//! ```text
//! version u8 = 1 | pack count u32 | per pack: pack id (32) | salt (16) | pack size u64
//!                                            | blob count u32 | entries (49 bytes each)
//! ```
//!
//! An index file is written only after every pack it lists is durable, so an index entry
//! always points at a pack that exists (until prune removes both together).
//! Fuzzed by `fuzz/fuzz_targets/index.rs`.

use crate::crypto::SALT_LEN;
use crate::error::Result;
use crate::format::pack::{PackEntry, ENTRY_LEN};
use crate::format::wire::{put_u32, put_u64, Reader};
use crate::id::PackId;

const VERSION: u8 = 1;

/// One pack's listing in an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPack {
    pub id: PackId,
    pub salt: [u8; SALT_LEN],
    pub size: u64,
    pub blobs: Vec<PackEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out = Vec::with_capacity(5 + self.packs.len() * 60 + blobs * ENTRY_LEN);
        out.push(VERSION);
        put_u32(&mut out, self.packs.len() as u32);
        for pack in &self.packs {
            out.extend_from_slice(pack.id.as_bytes());
            out.extend_from_slice(&pack.salt);
            put_u64(&mut out, pack.size);
            put_u32(&mut out, pack.blobs.len() as u32);
            for blob in &pack.blobs {
                blob.encode(&mut out);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "index file");
        let version = r.u8()?;
        if version != VERSION {
            return Err(r.corrupt(format!("unsupported index version {version}")));
        }
        let count = r.count(32 + SALT_LEN + 12)?;
        let mut packs = Vec::with_capacity(count);
        for _ in 0..count {
            let id = PackId(r.array()?);
            let salt = r.array()?;
            let size = r.u64()?;
            let n = r.count(ENTRY_LEN)?;
            let blobs = (0..n).map(|_| PackEntry::decode(&mut r)).collect::<Result<Vec<_>>>()?;
            if let Some(bad) = blobs.iter().find(|b| b.end() > size) {
                return Err(r.corrupt(format!("blob {} extends past the end of pack {}", bad.id.short(), id.short())));
            }
            packs.push(IndexPack { id, salt, size, blobs });
        }
        r.expect_end()?;
        Ok(IndexFile { packs })
    }

    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::pack::BlobKind;
    use crate::id::BlobId;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = PackEntry> {
        (any::<[u8; 32]>(), 24u64..1000, 29u32..1000, any::<u32>(), any::<bool>()).prop_map(
            |(id, offset, length, raw_length, meta)| PackEntry {
                kind: if meta { BlobKind::Meta } else { BlobKind::Data },
                id: BlobId(id),
                offset,
                length,
                raw_length,
            },
        )
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(packs in proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 16]>(), proptest::collection::vec(entry(), 0..10)), 0..5)) {
            let file = IndexFile { packs: packs.into_iter().map(|(id, salt, blobs)| IndexPack { id: PackId(id), salt, size: 10_000, blobs }).collect() };
            prop_assert_eq!(IndexFile::decode(&file.encode()).unwrap(), file);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = IndexFile::decode(&bytes);
        }
    }
}
