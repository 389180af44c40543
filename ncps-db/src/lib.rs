//! Metadata database backends for ncps-rs: implementations of
//! [`ncps_core::MetadataDb`], which keeps narinfo and NAR records, their access
//! times and the cache's configuration. One cargo feature per backend:
//!
//! - `sqlite` (on by default): `SqliteDb`, a SQLite file;
//! - `postgres`: `PostgresDb`, a pool of PostgreSQL connections;
//! - `mysql`: `MysqlDb`, a pool of MySQL or MariaDB connections.
//!
//! All three are one implementation, [`SqlDb`], over each backend's driver
//! and SQL dialect. Each migrates its database to the current schema when
//! opened, with versioned plain-SQL migrations per dialect
//! (`migrations/<dialect>/`) recorded in a `schema_migrations` table. [`open`] picks the backend by the
//! URL's scheme; [`copy()`] moves all metadata between any two of them.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ncps_core::Result<()> {
//! // `postgres://...` or `mysql://...` work the same, with those features.
//! let db = ncps_db::open("sqlite::memory:", 0).await?;
//! let key = db.set_config_if_absent("secret-key", "cache-1:...").await?;
//! assert_eq!(db.get_config("secret-key").await?, Some(key));
//!
//! let moved = ncps_db::open("sqlite::memory:", 0).await?;
//! let stats = ncps_db::copy(db.as_ref(), moved.as_ref(), 0).await?;
//! assert_eq!(stats.config, 1);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

// What every SQL backend shares: one `MetadataDb` implementation (`SqlDb`),
// its statements, row mapping, retries and migrations.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod dialect;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod engine;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod fault;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod migrate;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod queries;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod records;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod sql_db;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod statement;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod values;

mod copy;
mod db_url;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "mysql")]
mod mysql_tls;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_tls;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod tls;

pub use copy::{CopyStats, DEFAULT_BATCH, copy};
pub use db_url::redact_url;
#[cfg(feature = "mysql")]
pub use mysql::MysqlDb;
pub use open::{check_url, open};
#[cfg(feature = "postgres")]
pub use postgres::PostgresDb;
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use sql_db::SqlDb;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDb;
