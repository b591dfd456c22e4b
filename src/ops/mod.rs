//! Operations: one file per command, each a short script of calls into the layers below.

pub mod archive;
pub mod backup;
pub mod check;
pub mod copy;
pub mod coverage;
pub mod drill;
pub mod forget;
pub mod pg;
pub mod pitr;
pub mod repair;
pub mod restore;
pub mod secrets;
pub mod sqlite;
pub mod stats;
pub mod walexpiry;
