//! The one error type of the library boundary: each variant says what a caller can do about it.

use std::io;

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, sorted by what the caller can do about it.
///
/// "Not there" is never an error: lookups return `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input (a request path, a narinfo, a key, a URL) is malformed.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Bytes or metadata failed a hash, size or signature check.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// A needed service (the database, storage, a lock server) cannot answer now; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Every upstream that might have it failed (connection, timeout, HTTP error); retry later.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The operation conflicts with what is stored (for example an existing object).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A backend failed; the source says how.
    #[error("{context}: {source}")]
    Backend {
        /// What was being done.
        context: String,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A backend error with what was being done.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Upstream(_))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::backend("i/o", e)
    }
}
