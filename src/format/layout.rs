//! The repository's layout: every object key and every magic, in one place
//! (docs/format.md §1 lists them with what each object holds).
//!
//! ```text
//! config                               CAIRNcf1  repository settings, sealed
//! keys/<key id>                                  key slots (JSON, password-wrapped)
//! data/<2 hex>/<pack id>               CAIRNpk1  packs of blobs
//! index/<index id>                     CAIRNix1  which pack holds which blob
//! snapshots/<snapshot id>              CAIRNsn1  snapshot manifests
//! gc/gen/<20-digit n>                  CAIRNgc1  removal generations
//! gc/cand/<20-digit n>-<random>        CAIRNgc1  candidate sets of a mark
//! gc/sess/<id>                         CAIRNgc1  writer and reader sessions
//! gc/dead/<id>                         CAIRNgc1  tombstones of sessions judged dead
//! gc/probe/<random>                              a remover's clock probe (deleted)
//! wal/<source>/SOURCE                  CAIRNwl1  the cluster a WAL source belongs to
//! wal/<source>/<file name>             CAIRNwl2  archived WAL files (CAIRNwl1 read too)
//! secrets/config                       CAIRNsk1  the compartment key's fingerprint
//! secrets/keys/<key id>                          the compartment's key slots
//! coverage/<random>                    CAIRNcv1  what a restore drill proved
//! ```
//!
//! A secrets snapshot's bytes are an archive with its own magic, `CAIRNsc1`.

use crate::id::{IndexId, KeyId, PackId, SnapshotId};

pub const CONFIG: &str = "config";
pub const KEYS: &str = "keys/";
pub const DATA: &str = "data/";
pub const INDEX: &str = "index/";
pub const SNAPSHOTS: &str = "snapshots/";
pub const GC_GENERATIONS: &str = "gc/gen/";
pub const GC_CANDIDATES: &str = "gc/cand/";
pub const GC_SESSIONS: &str = "gc/sess/";
pub const GC_TOMBSTONES: &str = "gc/dead/";
pub const GC_PROBES: &str = "gc/probe/";
pub const WAL: &str = "wal/";
pub const SECRETS_CONFIG: &str = "secrets/config";
pub const SECRETS_KEYS: &str = "secrets/keys/";
pub const COVERAGE: &str = "coverage/";

pub const CONFIG_MAGIC: &[u8; 8] = b"CAIRNcf1";
pub const PACK_MAGIC: &[u8; 8] = b"CAIRNpk1";
pub const INDEX_MAGIC: &[u8; 8] = b"CAIRNix1";
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"CAIRNsn1";
pub const GC_MAGIC: &[u8; 8] = b"CAIRNgc1";
/// The `SOURCE` record, and WAL objects written before their plaintext named them.
pub const WAL_MAGIC: &[u8; 8] = b"CAIRNwl1";
/// WAL objects whose authenticated plaintext starts with their own object key, so that
/// one copied or moved to another name or source is refused instead of replayed.
pub const WAL_MAGIC_BOUND: &[u8; 8] = b"CAIRNwl2";
pub const SECRETS_CONFIG_MAGIC: &[u8; 8] = b"CAIRNsk1";
pub const SECRETS_ARCHIVE_MAGIC: &[u8; 8] = b"CAIRNsc1";
pub const COVERAGE_MAGIC: &[u8; 8] = b"CAIRNcv1";

pub fn pack(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("{DATA}{}/{hex}", &hex[..2])
}

pub fn index(id: &IndexId) -> String {
    format!("{INDEX}{id}")
}

pub fn snapshot(id: &SnapshotId) -> String {
    format!("{SNAPSHOTS}{id}")
}

pub fn key(id: &KeyId) -> String {
    format!("{KEYS}{id}")
}

/// Where a WAL source's archived files are: `wal/<source>/`.
pub fn wal_source(source: &str) -> String {
    format!("{WAL}{source}/")
}

/// One archived WAL file (segment, history file, backup label).
pub fn wal_file(source: &str, name: &str) -> String {
    format!("{WAL}{source}/{name}")
}

/// A WAL source's `SOURCE` record.
pub fn wal_source_record(source: &str) -> String {
    format!("{WAL}{source}/SOURCE")
}

/// The last path component of a listed key.
pub fn name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
