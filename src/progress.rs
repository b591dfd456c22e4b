//! Progress reporting as a library trait; the CLI implements it with indicatif on a
//! terminal, and everything else uses [`Silent`].

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
