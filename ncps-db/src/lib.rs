//! Metadata database backends for ncps-rs: implementations of
//! [`ncps_core::MetadataDb`], which keeps narinfo and NAR records, their access
//! times and the cache's configuration. The `sqlite` feature (on by default)
//! provides [`SqliteDb`], a SQLite file migrated to the current schema when
//! opened.

#![warn(missing_docs)]

#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDb;
