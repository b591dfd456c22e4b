//! Sealed object files: config, index files and snapshots.
//!
//! Layout (docs/format.md, "Object files"):
//!
//! ```text
//! magic (8) | salt (16) | nonce (12) | ciphertext | tag (16)
//! ```
//!
//! The magic names the object type and format version (`CAIRNcf1`, `CAIRNix1`, `CAIRNsn1`).
//! The key is derived from the master key and the salt; magic and salt are the associated
//! data, so an object cannot be passed off as another type. The plaintext is a zstd frame.
//! Fuzzed by `fuzz/fuzz_targets/object.rs`.

use crate::crypto::{self, MasterKey, SALT_LEN};
use crate::error::{Error, Result};

pub use super::layout::{CONFIG_MAGIC, INDEX_MAGIC, SNAPSHOT_MAGIC};

const HEADER_LEN: usize = 8 + SALT_LEN;
/// Decompressed objects larger than this are refused as corrupt (1 GiB).
const MAX_PLAIN: usize = 1 << 30;

pub fn seal(key: &MasterKey, magic: &[u8; 8], plaintext: &[u8]) -> Vec<u8> {
    seal_at(key, magic, plaintext, 3)
}

/// [`seal`] for a plaintext that is mostly compressed already (a WAL object): zstd's
/// fastest level, so the object's own compression costs little; level 3 over a
/// compressed segment was a tenth of a push.
pub fn seal_precompressed(key: &MasterKey, magic: &[u8; 8], plaintext: &[u8]) -> Vec<u8> {
    seal_at(key, magic, plaintext, -7)
}

fn seal_at(key: &MasterKey, magic: &[u8; 8], plaintext: &[u8], level: i32) -> Vec<u8> {
    let salt: [u8; SALT_LEN] = crypto::random_bytes();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(magic);
    header.extend_from_slice(&salt);
    let compressed = zstd::bulk::compress(plaintext, level).expect("zstd compression of a buffer cannot fail");
    let sealed = key.object_key(&salt).seal(crypto::random_bytes(), &header, &compressed);
    header.extend_from_slice(&sealed);
    header
}

/// Open an object of the expected type; `name` is used in error messages.
pub fn open(key: &MasterKey, magic: &[u8; 8], name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let remedy = remedy(name);
    if bytes.len() < HEADER_LEN + crypto::SEAL_OVERHEAD {
        return Err(Error::corrupt(format!("{name} is truncated ({} bytes); {remedy}", bytes.len())));
    }
    // A later version of the same type, by its last byte: a digit above ours. Anything
    // else in that byte is damage, not a reason to upgrade.
    if bytes[..7] == magic[..7] && bytes[7].is_ascii_digit() && bytes[7] > magic[7] {
        return Err(newer_format(name, &bytes[..8]));
    }
    if &bytes[..8] != magic {
        return Err(Error::corrupt(format!(
            "{name} does not start with {:?}: it is damaged or not a cairn object of this type; {remedy}",
            String::from_utf8_lossy(magic)
        )));
    }
    let salt: [u8; SALT_LEN] = bytes[8..HEADER_LEN].try_into().unwrap();
    let compressed =
        key.object_key(&salt).open(&bytes[..HEADER_LEN], &bytes[HEADER_LEN..]).map_err(|e| e.context(name))?;
    decompress_bounded(&compressed, MAX_PLAIN).map_err(|e| Error::corrupt(format!("{name} does not decompress: {e}")))
}

/// What to do about a damaged object. The config is never to be removed: without it the
/// repository cannot be opened, and `init` would refuse the location.
fn remedy(name: &str) -> &'static str {
    if name == "config" {
        "restore it from a copy of the repository, or write a new one with `cairn repair config`"
    } else {
        "restore it from a copy of the repository, or run `cairn repair index` or `cairn repair snapshots`"
    }
}

/// An object of a known type but another format version: not damage, but a newer writer.
pub fn newer_format(name: &str, magic: &[u8]) -> Error {
    Error::new(
        crate::error::ErrorKind::Unsupported,
        format!(
            "{name} has format {:?}, which this cairn does not read: upgrade cairn",
            String::from_utf8_lossy(magic)
        ),
    )
}

/// Decompress one zstd frame, refusing output beyond `limit` without reserving it upfront.
fn decompress_bounded(compressed: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)?.take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::other(format!("output exceeds {limit} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let key = MasterKey::from_bytes(&[7u8; 64]).unwrap();
            let _ = open(&key, INDEX_MAGIC, "x", &bytes);
        }
    }

    #[test]
    fn a_newer_format_is_unsupported_not_corrupt() {
        let key = MasterKey::random();
        let mut sealed = seal(&key, INDEX_MAGIC, b"payload");
        sealed[7] = b'2';
        let err = open(&key, INDEX_MAGIC, "index x", &sealed).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("upgrade cairn"));
    }

    #[test]
    fn round_trip_and_type_confusion() {
        let key = MasterKey::random();
        let sealed = seal(&key, INDEX_MAGIC, b"payload");
        assert_eq!(open(&key, INDEX_MAGIC, "index x", &sealed).unwrap(), b"payload");
        let mut forged = sealed.clone();
        forged[..8].copy_from_slice(SNAPSHOT_MAGIC);
        let err = open(&key, SNAPSHOT_MAGIC, "snapshot x", &forged).unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        assert!(open(&key, INDEX_MAGIC, "index x", &sealed[..20]).is_err());
    }
}
