//! `cairn restore`: streams to a file or stdout ([`stream`]), trees to a directory
//! ([`dir`], planned by `plan` and filled by `data`) or a tar stream ([`tar`]); which
//! paths a restore takes and which symlinks it may create ([`select`]).
//!
//! Streams are read in order with several ranged reads in flight
//! ([`crate::repo::load::read_content`]). Trees restore in three passes: plan (walk the
//! trees and group every needed blob by pack, while a second thread creates the
//! directories, files and symlinks in the order found), data (each pack is fetched
//! once, as few coalesced ranges; each blob is decrypted once and written with `pwrite` to
//! every place it belongs; the write that completes a file sets its mode, owner when root
//! and mtime through the open file; once every entry exists directories get theirs,
//! deepest first), then metadata for symlinks and empty files. The data pass does not
//! wait for the creator: ranges are taken in the order their files are created, and a
//! write to a file not yet made waits for it.

use crate::beneath::InTheWay;

mod create;
mod data;
pub mod dir;
mod plan;
pub mod select;
pub mod stream;
pub mod tar;

pub use dir::restore_tree_to_dir;
pub use select::{check_includes, includes, selected};
pub use stream::{consume_stream, keep_mode_and_owner, restore_stream, restore_stream_to_file, ChannelReader, Place};
pub use tar::{node_header, restore_tree_to_tar, tar_error};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore only these paths (as stored: `/etc/app` or `etc/app`) and what is below them.
    pub includes: Vec<String>,
    /// Refuse (with a warning) symlinks whose target leads outside the target directory:
    /// absolute targets, or more `..` than the link is deep. Set for tar archives, whose
    /// members come from elsewhere.
    pub confine_links: bool,
    /// What to do with a symlink in the target where the snapshot has a directory or a file.
    pub in_the_way: InTheWay,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub warnings: Vec<String>,
}
