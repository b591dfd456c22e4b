//! Operations: one file per command, each a short script of calls into the layers below.

pub mod archive;
pub mod backup;
pub mod check;
pub mod copy;
pub mod coverage;
pub mod drill;
pub mod forget;
pub mod pg;
pub mod repair;
pub mod restore;
pub mod sqlite;
pub mod stats;
pub mod walexpiry;

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancellation flag, set from a signal handler and polled by long operations.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once the flag is set.
    pub fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }
}
