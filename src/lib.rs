#![deny(unsafe_code)] // one measured exception: crate::buffers (madvise); see Cargo.toml
//! cairn: deduplicating, encrypted backups for databases and services.
//!
//! Layers, imports pointing downward only (docs/architecture.md):
//!
//! ```text
//! ops  ->  {repo, source, backend}  ->  {pack, index, snapshot, catalog, object}
//!      ->  {crypto, chunker, compress, id, wire}  ->  error
//! ```
//!
//! The `cairn` binary (src/cli) is the only place that prints or picks exit codes.

pub mod backend;
pub mod beneath;
pub mod buffers;
pub mod catalog;
pub mod chunker;
pub mod compress;
pub mod config;
pub mod crypto;
pub mod error;
pub mod format;
pub mod id;
pub mod ops;
pub mod pg;
pub mod process;
pub mod progress;
pub mod repo;
pub mod source;

pub use error::{Error, ErrorKind, Result};
