//! PostgreSQL operations: logical dumps and their restore ([`dump`]), physical base
//! backups ([`base`]). Point-in-time recovery is `ops::pitr`; the programs, labels, roles
//! and the scratch cluster they use are in `crate::pg`.

pub mod base;
pub mod dump;

pub use base::{backup_base, WAL_WAIT};
pub use dump::{backup_dump, restore_to_db, snapshot_format, DbRestore, DumpFormat};
