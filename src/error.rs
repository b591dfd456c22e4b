//! The library's one error type.
//!
//! Every fallible function in the library returns [`Result`]. An [`Error`] carries a small
//! [`ErrorKind`] that callers branch on (the CLI maps it to an exit code), a one-line message
//! that names the object, file or offset involved and says what to do, and whether retrying
//! could help. Messages are lowercase and never contain key material or credentials.

use std::fmt;

/// What went wrong, coarsely: enough to choose an exit code or decide on a retry.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An object, snapshot or file that was asked for does not exist.
    NotFound,
    /// There is no repository at the given location.
    NoRepository,
    /// A write-once object or a repository already exists.
    AlreadyExists,
    /// Another process holds a lock that this operation needs.
    Locked,
    /// No key slot opens with the given password, or the key file does not fit.
    WrongPassword,
    /// Stored data is truncated, missing or fails authentication.
    Corrupt,
    /// The storage backend failed.
    Backend,
    /// A backup source (a file, a producer command, a stream) failed.
    Source,
    /// A setting or argument is invalid.
    InvalidInput,
    /// A local I/O operation failed.
    Io,
    /// The operation is not supported here.
    Unsupported,
    /// The operation was interrupted by a signal.
    Cancelled,
    /// The reader of our output went away (a closed pipe: `cairn ... | head`).
    OutputClosed,
}

/// The library error: a kind, a message, and whether a retry may succeed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    transient: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), transient: false }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation could succeed (timeouts, 5xx, resets).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    pub(crate) fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn source(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Source, message)
    }
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Backend, message)
    }
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "interrupted: nothing was committed")
    }

    /// An I/O error on a local path, with the action that failed.
    pub fn io(action: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        let hint = match err.raw_os_error() {
            Some(28) => ": the disk is full; free space and run again",
            Some(13) => ": permission denied; run as a user who may access it",
            _ => "",
        };
        Self::new(kind, format!("cannot {action} {}: {err}{hint}", path.display()))
    }

    /// An error writing output (standard output, a tar stream): a closed pipe is
    /// [`ErrorKind::OutputClosed`], ended quietly by the CLI.
    pub fn output(what: &str, err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            return Self::new(ErrorKind::OutputClosed, format!("the reader of {what} went away"));
        }
        Self::new(ErrorKind::Io, format!("cannot write {what}: {err}"))
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Prefix the message with more context, keeping kind and transience.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::new(ErrorKind::Io, format!("local catalog: {err}; delete the cache directory if this persists"))
    }
}
