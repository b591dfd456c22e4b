//! Backup sources, one file per kind. Each turns its input into content or a tree through
//! a [`crate::repo::saver::Saver`]; none of them writes snapshots (that is `ops::backup`).

pub mod files;
pub mod glob;
pub mod sparse;
pub mod stream;
pub mod tar;
