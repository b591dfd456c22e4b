//! The bytes cairn writes, and nothing that moves them: the repository layout
//! ([`layout`]: every key and magic), sealed object files ([`object`]), packs ([`pack`]),
//! index files ([`index`]), snapshot manifests and trees ([`snapshot`]), the secrets compartment's archive
//! ([`secrets`]), the WAL archive's objects and PostgreSQL's WAL names ([`wal`]) and their shared
//! little-endian encoding ([`wire`]). Every decoder here is fuzzed (fuzz/) and reads
//! untrusted bytes without panicking; docs/format.md specifies each byte for byte.

pub mod index;
pub mod layout;
pub mod object;
pub mod pack;
pub mod secrets;
pub mod snapshot;
pub mod wal;
pub mod wire;
