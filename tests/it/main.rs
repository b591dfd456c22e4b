//! cairn's one integration-test binary: CLI flows, fault injection, crashes, disk full.

mod cli;
mod crash;
mod errors;
mod faults;
mod harness;
mod trees;
