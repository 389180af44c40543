//! Free space on a filesystem, so that a download that cannot fit is refused
//! before it starts (HTTP 507) rather than failing half-way.

use std::io;
use std::path::Path;

use crate::{Error, Result};

/// Bytes kept free beyond a download's size: filesystem blocks and metadata.
pub const MARGIN: u64 = 256 * 1024;

/// The bytes an unprivileged process can still write on the filesystem of `path`.
pub fn available(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// [`Error::InsufficientStorage`] naming `what` when `free` bytes cannot hold
/// `needed` bytes plus [`MARGIN`].
pub fn require(what: &str, free: u64, needed: u64) -> Result<()> {
    if free < needed.saturating_add(MARGIN) {
        return Err(Error::InsufficientStorage(format!(
            "{what} has {free} bytes free; this NAR needs {needed} (plus {MARGIN} to spare)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available(dir.path()).unwrap() > 0);
        assert!(available(&dir.path().join("missing")).is_err());
        assert!(require("storage", 10 * MARGIN, MARGIN).is_ok());
        let e = require("storage", MARGIN, MARGIN).unwrap_err();
        assert!(matches!(e, Error::InsufficientStorage(_)), "{e}");
        assert!(e.to_string().contains("storage has"), "{e}");
    }
}
