//! cairn's one integration-test binary: CLI flows, fault injection, crashes, disk full,
//! and object storage against a real S3 server on 127.0.0.1.

mod cli;
mod copy;
mod crash;
mod errors;
mod faults;
mod fixture;
mod forget;
mod golden;
mod harness;
mod inputs;
mod layers;
mod model;
mod pg;
mod races;
mod recovery;
mod repair;
mod restores;
mod run;
mod s3;
mod s3server;
mod secrets;
mod sqlite;
mod stress;
mod tarballs;
mod trees;
