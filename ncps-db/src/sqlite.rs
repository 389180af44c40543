//! `SqliteDb`: the metadata database in a SQLite file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ncps_core::{Error, MetadataDb, NarInfoRecord, NarRecord, Result};
use ncps_core::{NarStorage, PinRecord, StorageUsage, StoredNar};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

use crate::values::unix_now;

/// The schema migrations, applied in order; each version is applied once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_initial.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_eviction_pins.sql"),
    ),
];

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The metadata database in SQLite.
///
/// One connection serves all calls, one at a time, on Tokio's blocking
/// threads. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    /// Opens (creating it and its parent directories if needed) the database
    /// file at `path`, and migrates it to the current schema.
    ///
    /// This blocks the calling thread while it opens and migrates.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::backend(
                    format!("creating database directory {}", parent.display()),
                    e,
                )
            })?;
        }
        let conn = Connection::open(path)
            .map_err(|e| Error::backend(format!("opening database {}", path.display()), e))?;
        Self::setup(conn)
    }

    /// Opens a fresh database in memory, gone when the last clone is dropped.
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()
            .map_err(|e| Error::backend("opening an in-memory database", e))?;
        Self::setup(conn)
    }

    /// Opens the database a URL names: `sqlite:/abs/path`,
    /// `sqlite:relative/path`, `sqlite:///abs/path`, `sqlite://relative/path`,
    /// or `:memory:` (also `sqlite::memory:`) for a database in memory.
    ///
    /// Query strings (`?mode=...`) are not supported.
    pub fn open_url(url: &str) -> Result<Self> {
        match parse_url(url)? {
            None => Self::open_in_memory(),
            Some(path) => Self::open(path),
        }
    }

    /// Configures a new connection and migrates it.
    fn setup(mut conn: Connection) -> Result<Self> {
        configure(&conn).map_err(|e| Error::backend("configuring the database", e))?;
        migrate(&mut conn).map_err(|e| db_error("migrating the database", e))?;
        Ok(SqliteDb {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on a blocking thread.
    async fn call<T, F>(&self, context: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| Error::backend(context, "database connection mutex poisoned"))?;
            f(&mut conn).map_err(|e| db_error(context, e))
        })
        .await
        .map_err(|e| Error::backend(context, e))?
    }
}

/// The file path a database URL names, or `None` for an in-memory database.
pub(crate) fn parse_url(url: &str) -> Result<Option<&str>> {
    if url == ":memory:" || url == "sqlite::memory:" {
        return Ok(None);
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(Error::InvalidInput(format!(
            "database URL {url:?}: expected sqlite:<path> or :memory:"
        )));
    };
    if rest.contains('?') {
        return Err(Error::InvalidInput(format!(
            "database URL {url:?}: query parameters are not supported"
        )));
    }
    // `sqlite:///abs` -> `/abs`; `sqlite://rel` -> `rel`; `sqlite:/abs`, `sqlite:rel` as they are.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(Error::InvalidInput(format!(
            "database URL {url:?}: no path"
        )));
    }
    Ok(Some(path))
}

/// Sets the pragmas every connection uses.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // In-memory databases answer `memory`; that is fine.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // 1 MiB of page cache instead of SQLite's 2 MB: hits are served from
    // memory above it, and pages past it come from the OS page cache.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(())
}

/// Applies the migrations not yet recorded in `schema_migrations`, each in
/// its own transaction.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER
        )",
    )?;
    for &(version, sql) in MIGRATIONS {
        // IMMEDIATE: a second process opening the same file at the same time
        // waits here, then sees the version recorded.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if applied {
            continue;
        }
        tracing::info!(version, "applying database migration");
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, unix_now()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Maps a SQLite error: busy or locked means retry later, anything else is a backend error.
fn db_error(context: &str, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::Unavailable(format!("{context}: {e}"))
        }
        _ => Error::backend(context, e),
    }
}

/// A narinfo record from a `narinfos` row.
fn narinfo_from_row(row: &Row<'_>) -> rusqlite::Result<NarInfoRecord> {
    Ok(NarInfoRecord {
        hash: row.get("hash")?,
        narinfo: row.get("narinfo")?,
        nar_file: row.get("nar_file")?,
        created_at: row.get("created_at")?,
        last_accessed_at: row.get("last_accessed_at")?,
    })
}

/// A NAR record from a `nars` row.
fn nar_from_row(row: &Row<'_>) -> rusqlite::Result<NarRecord> {
    Ok(NarRecord {
        file: row.get("file")?,
        compression: row.get("compression")?,
        file_hash: row.get("file_hash")?,
        file_size: row.get("file_size")?,
        nar_hash: row.get("nar_hash")?,
        nar_size: row.get("nar_size")?,
        upstream_url: row.get("upstream_url")?,
        last_accessed_at: row.get("last_accessed_at")?,
    })
}

#[async_trait]
impl MetadataDb for SqliteDb {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>> {
        let hash = hash.to_string();
        self.call("reading a narinfo record", move |conn| {
            conn.query_row(
                "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
                 FROM narinfos WHERE hash = ?1",
                [hash],
                narinfo_from_row,
            )
            .optional()
        })
        .await
    }

    async fn put_narinfo(&self, record: &NarInfoRecord) -> Result<()> {
        let record = record.clone();
        self.call("writing a narinfo record", move |conn| {
            conn.execute(
                "INSERT INTO narinfos (hash, narinfo, nar_file, created_at, last_accessed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (hash) DO UPDATE SET
                     narinfo = excluded.narinfo,
                     nar_file = excluded.nar_file,
                     created_at = excluded.created_at,
                     last_accessed_at = excluded.last_accessed_at",
                params![
                    record.hash,
                    record.narinfo,
                    record.nar_file,
                    record.created_at,
                    record.last_accessed_at
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let hash = hash.to_string();
        self.call("deleting a narinfo record", move |conn| {
            conn.execute("DELETE FROM narinfos WHERE hash = ?1", [hash])
                .map(|n| n > 0)
        })
        .await
    }

    async fn touch_narinfo(&self, hash: &str, at: i64) -> Result<()> {
        let hash = hash.to_string();
        self.call("touching a narinfo record", move |conn| {
            conn.execute(
                "UPDATE narinfos SET last_accessed_at = ?2 WHERE hash = ?1",
                params![hash, at],
            )
            .map(drop)
        })
        .await
    }

    async fn get_nar(&self, file: &str) -> Result<Option<NarRecord>> {
        let file = file.to_string();
        self.call("reading a NAR record", move |conn| {
            conn.query_row(
                "SELECT file, compression, file_hash, file_size, nar_hash, nar_size,
                        upstream_url, last_accessed_at
                 FROM nars WHERE file = ?1",
                [file],
                nar_from_row,
            )
            .optional()
        })
        .await
    }

    async fn put_nar(&self, record: &NarRecord) -> Result<()> {
        let record = record.clone();
        self.call("writing a NAR record", move |conn| {
            conn.execute(
                "INSERT INTO nars (file, compression, file_hash, file_size, nar_hash, nar_size,
                                   upstream_url, last_accessed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (file) DO UPDATE SET
                     compression = excluded.compression,
                     file_hash = excluded.file_hash,
                     file_size = excluded.file_size,
                     nar_hash = excluded.nar_hash,
                     nar_size = excluded.nar_size,
                     upstream_url = excluded.upstream_url,
                     last_accessed_at = excluded.last_accessed_at",
                params![
                    record.file,
                    record.compression,
                    record.file_hash,
                    record.file_size,
                    record.nar_hash,
                    record.nar_size,
                    record.upstream_url,
                    record.last_accessed_at
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn delete_nar(&self, file: &str) -> Result<bool> {
        let file = file.to_string();
        self.call("deleting a NAR record", move |conn| {
            conn.execute("DELETE FROM nars WHERE file = ?1", [file])
                .map(|n| n > 0)
        })
        .await
    }

    async fn touch_nar(&self, file: &str, at: i64) -> Result<()> {
        let file = file.to_string();
        self.call("touching a NAR record", move |conn| {
            conn.execute(
                "UPDATE nars SET last_accessed_at = ?2 WHERE file = ?1",
                params![file, at],
            )
            .map(drop)
        })
        .await
    }

    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_string();
        self.call("reading a config value", move |conn| {
            conn.query_row("SELECT value FROM config WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
        })
        .await
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let key = key.to_string();
        let value = value.to_string();
        self.call("writing a config value", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO config (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )?;
            let stored: String =
                tx.query_row("SELECT value FROM config WHERE key = ?1", [&key], |row| {
                    row.get(0)
                })?;
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.call("pinging the database", |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
        })
        .await
    }

    async fn list_narinfos(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarInfoRecord>> {
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call("listing narinfo records", move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
                 FROM narinfos WHERE ?1 IS NULL OR hash > ?1 ORDER BY hash LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], narinfo_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn list_nars(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarRecord>> {
        let after = after.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call("listing NAR records", move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT file, compression, file_hash, file_size, nar_hash, nar_size,
                        upstream_url, last_accessed_at
                 FROM nars WHERE ?1 IS NULL OR file > ?1 ORDER BY file LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], nar_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn list_config(&self) -> Result<Vec<(String, String)>> {
        self.call("listing config values", |conn| {
            let mut statement =
                conn.prepare_cached("SELECT key, value FROM config ORDER BY key")?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn set_nar_storage(&self, file: &str, storage: NarStorage) -> Result<bool> {
        let file = file.to_string();
        self.call("recording what storage holds of a NAR", move |conn| {
            conn.execute(
                "UPDATE nars SET stored_size = ?2 WHERE file = ?1",
                params![file, storage.to_column()],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn get_nar_storage(&self, file: &str) -> Result<Option<NarStorage>> {
        let file = file.to_string();
        self.call("reading what storage holds of a NAR", move |conn| {
            conn.query_row(
                "SELECT stored_size FROM nars WHERE file = ?1",
                [file],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(|found| found.map(NarStorage::from_column))
        })
        .await
    }

    async fn stored_nars_by_last_access(
        &self,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredNar>> {
        let (at, file) = match after {
            Some((at, file)) => (Some(at), Some(file.to_string())),
            None => (None, None),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call("listing NARs by last access", move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT file, stored_size, last_accessed_at, upstream_url FROM nars
                 WHERE stored_size >= 0
                   AND (?1 IS NULL OR last_accessed_at > ?1
                        OR (last_accessed_at = ?1 AND file > ?2))
                 ORDER BY last_accessed_at, file LIMIT ?3",
            )?;
            let rows = statement.query_map(params![at, file, limit], |row| {
                Ok(StoredNar {
                    file: row.get(0)?,
                    size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    last_accessed_at: row.get(2)?,
                    upstream_url: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn nars_of_unknown_storage(&self, limit: usize) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call("listing NARs of unknown storage", move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT file FROM nars WHERE stored_size < 0 ORDER BY file LIMIT ?1",
            )?;
            let rows = statement.query_map([limit], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn storage_usage(&self) -> Result<StorageUsage> {
        self.call("summing up storage", |conn| {
            conn.query_row(STORAGE_USAGE_SQL, [], |row| {
                let n = |i: usize| row.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                Ok(StorageUsage {
                    narinfos: n(0)?,
                    nar_records: n(1)?,
                    stored_nars: n(2)?,
                    stored_bytes: n(3)?,
                    unknown_nars: n(4)?,
                    pins: n(5)?,
                })
            })
        })
        .await
    }

    async fn narinfos_of_nar(&self, file: &str) -> Result<Vec<String>> {
        let file = file.to_string();
        self.call("listing the narinfos of a NAR", move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT hash FROM narinfos WHERE nar_file = ?1 ORDER BY hash")?;
            let rows = statement.query_map([file], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn record_accesses(
        &self,
        narinfos: &[(String, i64)],
        nars: &[(String, i64)],
    ) -> Result<()> {
        let narinfos = narinfos.to_vec();
        let nars = nars.to_vec();
        self.call("recording accesses", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut statement = tx.prepare_cached(
                    "UPDATE narinfos SET last_accessed_at = MAX(last_accessed_at, ?2)
                     WHERE hash = ?1",
                )?;
                for (hash, at) in &narinfos {
                    statement.execute(params![hash, at])?;
                }
                let mut statement = tx.prepare_cached(
                    "UPDATE nars SET last_accessed_at = MAX(last_accessed_at, ?2) WHERE file = ?1",
                )?;
                for (file, at) in &nars {
                    statement.execute(params![file, at])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn add_pin(&self, hash: &str, at: i64) -> Result<bool> {
        let hash = hash.to_string();
        self.call("pinning a store path", move |conn| {
            conn.execute(
                "INSERT INTO pins (hash, created_at) VALUES (?1, ?2) ON CONFLICT (hash) DO NOTHING",
                params![hash, at],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn delete_pin(&self, hash: &str) -> Result<bool> {
        let hash = hash.to_string();
        self.call("unpinning a store path", move |conn| {
            conn.execute("DELETE FROM pins WHERE hash = ?1", [hash])
                .map(|n| n > 0)
        })
        .await
    }

    async fn list_pins(&self) -> Result<Vec<PinRecord>> {
        self.call("listing pins", |conn| {
            let mut statement =
                conn.prepare_cached("SELECT hash, created_at FROM pins ORDER BY hash")?;
            let rows = statement.query_map([], |row| {
                Ok(PinRecord {
                    hash: row.get(0)?,
                    created_at: row.get(1)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn add_counters(&self, deltas: &[(String, i64)]) -> Result<()> {
        let deltas = deltas.to_vec();
        self.call("adding to counters", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut statement = tx.prepare_cached(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                )?;
                for (name, delta) in &deltas {
                    statement.execute(params![name, delta])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn list_counters(&self) -> Result<Vec<(String, i64)>> {
        self.call("listing counters", |conn| {
            let mut statement =
                conn.prepare_cached("SELECT name, value FROM counters ORDER BY name")?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }
}

/// What the cache holds (see [`StorageUsage`]), in one statement.
const STORAGE_USAGE_SQL: &str =
    "SELECT (SELECT COUNT(*) FROM narinfos), (SELECT COUNT(*) FROM nars),
        (SELECT COUNT(*) FROM nars WHERE stored_size >= 0),
        (SELECT COALESCE(SUM(stored_size), 0) FROM nars WHERE stored_size >= 0),
        (SELECT COUNT(*) FROM nars WHERE stored_size < 0), (SELECT COUNT(*) FROM pins)";

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn parses_urls() {
        assert_eq!(parse_url(":memory:").ok(), Some(None));
        assert_eq!(parse_url("sqlite::memory:").ok(), Some(None));
        assert_eq!(
            parse_url("sqlite:/var/db.sqlite").ok(),
            Some(Some("/var/db.sqlite"))
        );
        assert_eq!(
            parse_url("sqlite:db/x.sqlite").ok(),
            Some(Some("db/x.sqlite"))
        );
        assert_eq!(
            parse_url("sqlite:///var/db.sqlite").ok(),
            Some(Some("/var/db.sqlite"))
        );
        assert_eq!(
            parse_url("sqlite://db.sqlite").ok(),
            Some(Some("db.sqlite"))
        );
        assert!(parse_url("postgres://x").is_err());
        assert!(parse_url("sqlite:").is_err());
        assert!(parse_url("sqlite://").is_err());
        assert!(parse_url("sqlite:/x.db?mode=rwc").is_err());
    }
}
