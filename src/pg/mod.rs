//! PostgreSQL, as cairn talks to it: the WAL archive ([`wal`]: push, fetch, list), its
//! two background processes ([`prefetch`] for recovery, [`asyncpush`] for archiving),
//! timeline histories ([`timeline`]), and the server's programs and files (client
//! programs, backup labels, roles, a scratch cluster). The operations that use them —
//! dumps, base backups, point-in-time recovery — are in `ops/`.

pub mod asyncpush;
pub mod client;
pub mod globals;
pub mod label;
pub mod prefetch;
pub mod scratch;
pub mod session;
pub mod timeline;
pub mod wal;
