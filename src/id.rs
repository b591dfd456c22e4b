//! Typed 32-byte identifiers, one newtype per object kind.
//!
//! Blob ids are keyed BLAKE3 hashes of plaintext, pack ids are unkeyed BLAKE3 hashes of the
//! pack bytes, and snapshot, index and key ids are random. All print as 64 lowercase hex
//! characters and serialize that way in JSON.

use crate::error::{Error, Result};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                let mut bytes = [0u8; 32];
                getrandom::getrandom(&mut bytes).expect("the operating system's random source failed");
                $name(bytes)
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            pub fn from_hex(text: &str) -> Result<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out).map_err(|_| {
                    Error::invalid(format!("{} id {text:?} is not 64 hex characters", $what))
                })?;
                Ok($name(out))
            }
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                Some($name(bytes.try_into().ok()?))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::from_hex(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A blob: BLAKE3 keyed with the repository's id key, over the blob's plaintext.
    BlobId, "blob"
);
id_type!(
    /// A pack file: unkeyed BLAKE3 of the pack's bytes, so storage can verify it.
    PackId, "pack"
);
id_type!(
    /// A snapshot manifest (random).
    SnapshotId, "snapshot"
);
id_type!(
    /// An index file (random).
    IndexId, "index"
);
id_type!(
    /// A key slot (random).
    KeyId, "key"
);
id_type!(
    /// A repository (random, chosen at init).
    RepoId, "repository"
);
