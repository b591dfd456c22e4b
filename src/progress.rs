//! Progress reporting as a library trait; the CLI implements it with indicatif on a
//! terminal, and everything else uses [`Silent`]; and the cancellation flag long
//! operations poll.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub trait Progress: Send + Sync {
    /// A phase begins; `total` is in bytes when known.
    fn begin(&self, _label: &str, _total: Option<u64>) {}
    /// Bytes of the current phase done.
    fn advance(&self, _bytes: u64) {}
    /// The current phase is over.
    fn end(&self) {}
}

pub struct Silent;

impl Progress for Silent {}

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
