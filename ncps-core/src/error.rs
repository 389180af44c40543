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
    /// Storage (or the download spool) has no room left (`ENOSPC`, a quota);
    /// nothing was stored. Retry once space is freed. HTTP 507.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// Every upstream that might have it failed (connection, timeout, HTTP error); retry later.
    #[error("upstream failed: {0}")]
    Upstream(String),
    /// The caller may not do this (for example an upload without a trusted signature).
    #[error("forbidden: {0}")]
    Forbidden(String),
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
        matches!(
            self,
            Error::Unavailable(_) | Error::Upstream(_) | Error::InsufficientStorage(_)
        )
    }

    /// An i/o error while doing `context`: [`Error::InsufficientStorage`]
    /// when the disk or a quota is full, else a backend error.
    pub fn io(context: impl Into<String>, e: io::Error) -> Self {
        let context = context.into();
        if is_out_of_space(&e) {
            Error::InsufficientStorage(format!("{context}: {e}"))
        } else {
            Error::backend(context, e)
        }
    }
}

/// Whether an i/o error means the disk (or a quota) is full.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::io("i/o", e)
    }
}
