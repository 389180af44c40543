//! What went wrong with a statement, as every SQL backend classifies its
//! driver's errors ([`Fault`]): a TLS problem (retrying will not fix it),
//! the server unavailable (retry later), a conflict retrying at once
//! resolves (a deadlock), or anything else. Turning a fault into an
//! [`ncps_core::Error`] is written here once, so every backend's messages
//! read alike and show the URL only with its password hidden.

use ncps_core::Error;

/// How a driver error should be handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The server's certificate or the TLS handshake was refused, and why.
    Tls(String),
    /// The server is unreachable, shutting down, or too busy: retry later.
    Unavailable,
    /// A deadlock or serialization failure: retrying the statement at once
    /// may succeed (and if it keeps failing, the database is unavailable).
    Retryable,
    /// Anything else: a backend error.
    Other,
}

/// A driver error, classified, with its text.
#[derive(Debug)]
pub struct Fault {
    /// How to handle it.
    pub kind: FaultKind,
    /// What the driver said.
    pub message: String,
}

/// Said after a certificate error: where trusted certificates come from.
const TRUST_HINT: &str = "the server's certificate must be signed by a CA in the \
     URL's CA file (PostgreSQL's sslrootcert=, MySQL's ssl-ca=), or else by one among the \
     system's roots or those of the PEM file SSL_CERT_FILE names";

impl Fault {
    /// A fault of `kind` saying `message`.
    pub fn new(kind: FaultKind, message: impl Into<String>) -> Self {
        Fault {
            kind,
            message: message.into(),
        }
    }

    /// A server driver's error `e`, saying `message`: a TLS problem if
    /// rustls refused the certificate or the handshake, else retryable or
    /// unavailable as the driver's codes say, else another error.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn of_server(
        e: &(dyn std::error::Error + 'static),
        retryable: bool,
        unavailable: bool,
        message: String,
    ) -> Self {
        let kind = match crate::tls::problem(e) {
            Some(why) => FaultKind::Tls(why),
            None if retryable => FaultKind::Retryable,
            None if unavailable => FaultKind::Unavailable,
            None => FaultKind::Other,
        };
        Fault::new(kind, message)
    }

    /// Whether retrying the statement at once may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        self.kind == FaultKind::Retryable
    }

    /// The error of this fault while doing `context` on the database shown
    /// as `url` (its password already hidden; `None` for a local file).
    pub(crate) fn into_error(self, context: &str, url: Option<&str>) -> Error {
        let place = match url {
            Some(url) => format!("{context}: database {url}"),
            None => context.to_string(),
        };
        match self.kind {
            FaultKind::Tls(why) => {
                Error::backend(format!("{place}: TLS"), format!("{why} ({TRUST_HINT})"))
            }
            FaultKind::Unavailable | FaultKind::Retryable => {
                Error::Unavailable(format!("{place}: {}", self.message))
            }
            FaultKind::Other => Error::backend(context, self.message),
        }
    }
}
