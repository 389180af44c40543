//! Opening the backend a database URL names, by its scheme.

use std::sync::Arc;

use ncps_core::{Error, MetadataDb, Result};

use crate::db_url::redact_url;

/// Opens the metadata database `url` names, migrated to the current schema:
///
/// - `sqlite:/path/db.sqlite` (also `sqlite3:`, `sqlite:///abs`, `:memory:`)
///   with the `sqlite` feature;
/// - `postgres://`, `postgresql://` or `postgres+unix:///socket/dir/dbname`
///   with the `postgres` feature (see `PostgresDb::connect`);
/// - `mysql://` or `mysql+unix:///path/mysqld.sock/dbname` with the `mysql`
///   feature (see `MysqlDb::connect`).
///
/// `max_conns` bounds the connection pool of PostgreSQL and MySQL; 0 means
/// the backend's default. SQLite always uses one connection.
///
/// A URL this build cannot open is [`Error::InvalidInput`]; a server that
/// cannot be reached is [`Error::Unavailable`]. Messages never show the
/// URL's password.
pub async fn open(url: &str, max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    let scheme = if url == ":memory:" {
        "sqlite"
    } else {
        url.split_once(':').map_or("", |(scheme, _)| scheme)
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" | "sqlite3" => open_sqlite(url).await,
        "postgres" | "postgresql" | "postgres+unix" => open_postgres(url, max_conns).await,
        "mysql" | "mysql+unix" => open_mysql(url, max_conns).await,
        _ => Err(Error::InvalidInput(format!(
            "database URL {}: expected sqlite:, postgres://, postgresql:// or mysql://",
            redact_url(url)
        ))),
    }
}

/// Checks that this build can open `url` and that it is well formed,
/// without connecting to anything or creating any file: what
/// `ncps-server --check-config` says about `--cache-database-url`.
pub fn check_url(url: &str) -> Result<()> {
    let scheme = if url == ":memory:" {
        "sqlite"
    } else {
        url.split_once(':').map_or("", |(scheme, _)| scheme)
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" | "sqlite3" => check_sqlite(url),
        "postgres" | "postgresql" | "postgres+unix" => check_postgres(url),
        "mysql" | "mysql+unix" => check_mysql(url),
        _ => Err(Error::InvalidInput(format!(
            "database URL {}: expected sqlite:, postgres://, postgresql:// or mysql://",
            redact_url(url)
        ))),
    }
}

#[cfg(feature = "sqlite")]
fn check_sqlite(url: &str) -> Result<()> {
    let url = match url.get(..8) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sqlite3:") => format!("sqlite:{}", &url[8..]),
        _ => url.to_string(),
    };
    crate::sqlite::parse_url(&url).map(drop)
}

#[cfg(not(feature = "sqlite"))]
fn check_sqlite(url: &str) -> Result<()> {
    Err(not_built(url, "SQLite", "sqlite"))
}

#[cfg(feature = "postgres")]
fn check_postgres(url: &str) -> Result<()> {
    crate::postgres::parse_config(url).map(drop)
}

#[cfg(not(feature = "postgres"))]
fn check_postgres(url: &str) -> Result<()> {
    Err(not_built(url, "PostgreSQL", "postgres"))
}

#[cfg(feature = "mysql")]
fn check_mysql(url: &str) -> Result<()> {
    crate::mysql::parse_opts(url, 1).map(drop)
}

#[cfg(not(feature = "mysql"))]
fn check_mysql(url: &str) -> Result<()> {
    Err(not_built(url, "MySQL", "mysql"))
}

/// The error for a backend this build was compiled without.
#[allow(dead_code)]
fn not_built(url: &str, backend: &str, feature: &str) -> Error {
    Error::InvalidInput(format!(
        "database URL {}: this build has no {backend} support (cargo feature `{feature}`)",
        redact_url(url)
    ))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(url: &str) -> Result<Arc<dyn MetadataDb>> {
    // ncps also spells it `sqlite3:`.
    let url = match url.get(..8) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sqlite3:") => format!("sqlite:{}", &url[8..]),
        _ => url.to_string(),
    };
    let db = tokio::task::spawn_blocking(move || crate::SqliteDb::open_url(&url))
        .await
        .map_err(|e| Error::backend("opening the database", e))??;
    Ok(Arc::new(db))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(url: &str) -> Result<Arc<dyn MetadataDb>> {
    Err(not_built(url, "SQLite", "sqlite"))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    Ok(Arc::new(crate::PostgresDb::connect(url, max_conns).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str, _max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    Err(not_built(url, "PostgreSQL", "postgres"))
}

#[cfg(feature = "mysql")]
async fn open_mysql(url: &str, max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    Ok(Arc::new(crate::MysqlDb::connect(url, max_conns).await?))
}

#[cfg(not(feature = "mysql"))]
async fn open_mysql(url: &str, _max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    Err(not_built(url, "MySQL", "mysql"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_url_connects_to_nothing_and_hides_passwords() {
        assert!(check_url("sqlite:/nonexistent/dir/db.sqlite").is_ok());
        assert!(check_url(":memory:").is_ok());
        assert!(check_url("sqlite:/x?mode=ro").is_err());
        let e = check_url("redis://u:hunter2@h/0").unwrap_err().to_string();
        assert!(e.contains("expected sqlite:"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        #[cfg(feature = "postgres")]
        assert!(check_url("postgres://u:p@127.0.0.1:1/db").is_ok());
        #[cfg(feature = "mysql")]
        assert!(check_url("mysql://u:p@127.0.0.1:1/db").is_ok());
    }
}
