//! Conversions between record fields and the column values the SQL backends
//! store, and the clock migrations are stamped with.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(any(feature = "postgres", feature = "mysql"))]
use ncps_core::{Error, Result};

/// Seconds since the Unix epoch (0 if the clock is before it).
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A size as a signed 64-bit column value; sizes past `i64::MAX` are refused.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn size_to_db(field: &str, size: u64) -> Result<i64> {
    i64::try_from(size)
        .map_err(|_| Error::InvalidInput(format!("{field} {size} is too large to store")))
}

/// A size read back from a signed 64-bit column; a negative value is corrupt data.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn size_from_db(field: &str, size: i64) -> Result<u64> {
    u64::try_from(size).map_err(|_| {
        Error::backend(
            format!("reading {field}"),
            format!("negative size {size} in the database"),
        )
    })
}
