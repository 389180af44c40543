//! `PostgresDb`: the metadata database in PostgreSQL, through a pool of
//! tokio-postgres connections.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use ncps_core::{Error, MetadataDb, NarInfoRecord, NarRecord, Result};
use ncps_core::{NarStorage, PinRecord, StorageUsage, StoredNar};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db_url::{DbUrl, redact_url};
use crate::postgres_tls::TlsParams;
use crate::values::{size_from_db, size_to_db, unix_now};

/// The schema migrations, applied in order; each version is applied once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_initial.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_eviction_pins.sql"),
    ),
];

/// Most access times one statement records.
const ACCESS_CHUNK: usize = 5000;

/// The advisory lock key held while migrating, so instances starting together
/// migrate one after the other ("ncpsmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6e63_7073_6d69_6772;

/// Pool size when none is given (ncps's default for PostgreSQL).
const DEFAULT_MAX_CONNS: usize = 25;

/// How long opening a connection may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free connection when all are busy.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one statement may take. A server that stopped answering (a
/// frozen host, a network dropping packets) keeps its connections open but
/// never replies; without this a request would wait for it forever. Every
/// statement here reads or writes a few rows by key, so one this slow means
/// the database is unusable for a cache anyway.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a statement is tried when the server reports a deadlock or
/// serialization failure, which retrying resolves.
const ATTEMPTS: u32 = 5;

/// The metadata database in PostgreSQL.
///
/// Cloning shares the pool. Every instance connected to the same database
/// sees the same records, so several servers can share one.
#[derive(Clone)]
pub struct PostgresDb {
    pool: Pool,
    /// The URL with its password hidden, for messages.
    url: String,
}

impl fmt::Debug for PostgresDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDb")
            .field("url", &self.url)
            .field("max_conns", &self.pool.status().max_size)
            .finish()
    }
}

impl PostgresDb {
    /// Connects to the database a URL names and migrates it to the current
    /// schema.
    ///
    /// Takes `postgres://` and `postgresql://` URLs (with libpq parameters
    /// such as `?host=/run/postgresql` for a Unix socket directory,
    /// `connect_timeout`) and `postgres+unix:///socket/dir/dbname`.
    /// `max_conns` bounds the pool; 0 means 25, ncps's default.
    ///
    /// TLS follows libpq's `sslmode` (`disable`, `allow`, `prefer` by
    /// default, `require`, `verify-ca`, `verify-full`) and `sslrootcert`
    /// (a PEM file of trusted CAs; without it the system's roots, or
    /// `SSL_CERT_FILE`'s, are trusted); see the `postgres_tls` module.
    ///
    /// A server that cannot be reached is [`Error::Unavailable`]; a
    /// certificate it cannot be trusted by is a backend error saying so.
    /// Messages show the URL with its password hidden.
    pub async fn connect(url: &str, max_conns: usize) -> Result<Self> {
        let (config, tls) = parse_config(url)?;
        let max_size = if max_conns == 0 {
            DEFAULT_MAX_CONNS
        } else {
            max_conns
        };
        let shown = redact_url(url);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                // A connection the server closed is dropped when taken from the pool.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::backend(format!("database {shown}"), e))?;
        let db = PostgresDb { pool, url: shown };
        let mut client = db.client("connecting").await?;
        migrate(&mut client)
            .await
            .map_err(|e| db.error("migrating the database", e))?;
        Ok(db)
    }

    /// A connection from the pool.
    async fn client(&self, context: &str) -> Result<Object> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => self.error(context, e),
            PoolError::Timeout(_) | PoolError::Closed => {
                Error::Unavailable(format!("{context}: database {}: {e}", self.url))
            }
            e => Error::backend(format!("{context}: database {}", self.url), e),
        })
    }

    /// Maps a driver error: a certificate not trusted is a backend error
    /// saying so; the server unreachable, restarting, or busy means retry
    /// later; anything else is a backend error.
    fn error(&self, context: &str, e: tokio_postgres::Error) -> Error {
        if let Some(why) = crate::tls::problem(&e) {
            Error::backend(
                format!("{context}: database {}: TLS", self.url),
                format!("{why} ({})", crate::tls::TRUST_HINT),
            )
        } else if is_unavailable(&e) {
            Error::Unavailable(format!(
                "{context}: database {}: {}",
                self.url,
                describe(&e)
            ))
        } else {
            Error::backend(context, describe(&e))
        }
    }

    /// Runs one statement returning at most one row, retrying deadlocks.
    async fn query_opt(
        &self,
        context: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        self.run(context, sql, params, |client, statement, params| {
            Box::pin(client.query_opt(statement, params))
        })
        .await
    }

    /// Runs one statement returning any number of rows, retrying deadlocks.
    async fn query(
        &self,
        context: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.run(context, sql, params, |client, statement, params| {
            Box::pin(client.query(statement, params))
        })
        .await
    }

    /// Runs one statement and returns the number of rows it changed,
    /// retrying deadlocks.
    async fn execute(
        &self,
        context: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        self.run(context, sql, params, |client, statement, params| {
            Box::pin(client.execute(statement, params))
        })
        .await
    }

    /// Prepares `sql` on a pooled connection and runs it with `call`,
    /// retrying deadlocks. Each try has [`STATEMENT_TIMEOUT`]; a connection
    /// that does not answer in time is dropped, not pooled again, and the
    /// database counts as unavailable.
    async fn run<T>(
        &self,
        context: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        call: for<'a> fn(&'a Client, &'a Statement, &'a [&'a (dyn ToSql + Sync)]) -> Call<'a, T>,
    ) -> Result<T> {
        let mut attempt = 1;
        loop {
            let client = self.client(context).await?;
            let answered = tokio::time::timeout(STATEMENT_TIMEOUT, async {
                let statement = client.prepare_cached(sql).await?;
                call(&client, &statement, params).await
            })
            .await;
            let Ok(result) = answered else {
                // Its reply may still come, so the connection cannot serve anyone else.
                drop(Object::take(client));
                return Err(Error::Unavailable(format!(
                    "{context}: database {}: no answer within {STATEMENT_TIMEOUT:?}",
                    self.url
                )));
            };
            match result {
                Err(e) if is_retryable(&e) && attempt < ATTEMPTS => attempt += 1,
                result => return result.map_err(|e| self.error(context, e)),
            }
        }
    }
}

/// A statement running on a connection, as [`PostgresDb::run`] calls it.
type Call<'a, T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'a>>;

/// The connection settings a URL names, and the TLS connector its `sslmode`
/// and `sslrootcert` ask for (with the trusted roots read). The password
/// never appears in errors.
pub(crate) fn parse_config(url: &str) -> Result<(Config, MakeRustlsConnect)> {
    let invalid = |why: &dyn fmt::Display| {
        Error::InvalidInput(format!("database URL {}: {why}", redact_url(url)))
    };
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    let (rest, tls) = TlsParams::take(url).map_err(|why| invalid(&why))?;
    let mut config = match scheme.as_deref() {
        Some("postgres" | "postgresql") => {
            Config::from_str(&rest).map_err(|e| invalid(&describe(&e)))?
        }
        Some("postgres+unix") => {
            socket_config(&DbUrl::parse(&rest)?).map_err(|e| invalid(&describe(&e)))?
        }
        _ => {
            return Err(invalid(
                &"expected postgres://, postgresql:// or postgres+unix://",
            ));
        }
    };
    config.ssl_mode(tls.ssl_mode());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let connector = tls.connector().map_err(|why| invalid(&why))?;
    Ok((config, connector))
}

/// The settings of `postgres+unix:///socket/dir/dbname`: the last path
/// segment is the database, the rest the socket directory.
fn socket_config(url: &DbUrl) -> std::result::Result<Config, tokio_postgres::Error> {
    let (dir, dbname) = url.path.rsplit_once('/').unwrap_or(("", &url.path));
    // libpq's key=value form, whose values are quoted with `\` escapes.
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut pairs = vec![format!("host={}", quote(&format!("/{dir}")))];
    if !dbname.is_empty() {
        pairs.push(format!("dbname={}", quote(dbname)));
    }
    if let Some(user) = &url.user {
        pairs.push(format!("user={}", quote(user)));
    }
    if let Some(password) = &url.password {
        pairs.push(format!("password={}", quote(password)));
    }
    for (key, value) in &url.query {
        pairs.push(format!("{key}={}", quote(value)));
    }
    Config::from_str(&pairs.join(" "))
}

/// The error with its causes: tokio-postgres's own text is only the kind
/// ("db error"), the server's message is in the source.
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether the server is unreachable, closed the connection, is shutting
/// down or starting, or has no connection slot free.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
            ]
            .contains(code);
    }
    // I/O errors (refused, reset) carry the io::Error; a connect timeout says so.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
}

/// Whether retrying the statement may succeed at once.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// Applies the migrations not yet recorded in `schema_migrations`, all in one
/// transaction under an advisory lock: PostgreSQL's DDL is transactional, so
/// a failed migration leaves nothing behind, and a second instance starting
/// at the same time waits, then finds everything applied.
async fn migrate(client: &mut Object) -> std::result::Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )
    .await?;
    for (version, sql) in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if applied {
            continue;
        }
        tracing::info!(version, "applying database migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version, &unix_now()],
        )
        .await?;
    }
    tx.commit().await
}

/// A narinfo record from a `narinfos` row.
fn narinfo_from_row(row: &Row) -> std::result::Result<NarInfoRecord, tokio_postgres::Error> {
    Ok(NarInfoRecord {
        hash: row.try_get("hash")?,
        narinfo: row.try_get("narinfo")?,
        nar_file: row.try_get("nar_file")?,
        created_at: row.try_get("created_at")?,
        last_accessed_at: row.try_get("last_accessed_at")?,
    })
}

/// A NAR record from a `nars` row.
fn nar_from_row(row: &Row) -> Result<NarRecord> {
    let column = |e: tokio_postgres::Error| Error::backend("reading a NAR record", describe(&e));
    let file_size: Option<i64> = row.try_get("file_size").map_err(column)?;
    Ok(NarRecord {
        file: row.try_get("file").map_err(column)?,
        compression: row.try_get("compression").map_err(column)?,
        file_hash: row.try_get("file_hash").map_err(column)?,
        file_size: file_size
            .map(|size| size_from_db("file_size", size))
            .transpose()?,
        nar_hash: row.try_get("nar_hash").map_err(column)?,
        nar_size: size_from_db("nar_size", row.try_get("nar_size").map_err(column)?)?,
        upstream_url: row.try_get("upstream_url").map_err(column)?,
        last_accessed_at: row.try_get("last_accessed_at").map_err(column)?,
    })
}

#[async_trait]
impl MetadataDb for PostgresDb {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>> {
        let context = "reading a narinfo record";
        self.query_opt(
            context,
            "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
             FROM narinfos WHERE hash = $1",
            &[&hash],
        )
        .await?
        .map(|row| narinfo_from_row(&row).map_err(|e| Error::backend(context, describe(&e))))
        .transpose()
    }

    async fn put_narinfo(&self, record: &NarInfoRecord) -> Result<()> {
        self.execute(
            "writing a narinfo record",
            "INSERT INTO narinfos (hash, narinfo, nar_file, created_at, last_accessed_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hash) DO UPDATE SET
                 narinfo = excluded.narinfo,
                 nar_file = excluded.nar_file,
                 created_at = excluded.created_at,
                 last_accessed_at = excluded.last_accessed_at",
            &[
                &record.hash,
                &record.narinfo,
                &record.nar_file,
                &record.created_at,
                &record.last_accessed_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        self.execute(
            "deleting a narinfo record",
            "DELETE FROM narinfos WHERE hash = $1",
            &[&hash],
        )
        .await
        .map(|n| n > 0)
    }

    async fn touch_narinfo(&self, hash: &str, at: i64) -> Result<()> {
        self.execute(
            "touching a narinfo record",
            "UPDATE narinfos SET last_accessed_at = $2 WHERE hash = $1",
            &[&hash, &at],
        )
        .await
        .map(drop)
    }

    async fn get_nar(&self, file: &str) -> Result<Option<NarRecord>> {
        self.query_opt(
            "reading a NAR record",
            "SELECT file, compression, file_hash, file_size, nar_hash, nar_size,
                    upstream_url, last_accessed_at
             FROM nars WHERE file = $1",
            &[&file],
        )
        .await?
        .map(|row| nar_from_row(&row))
        .transpose()
    }

    async fn put_nar(&self, record: &NarRecord) -> Result<()> {
        let file_size = record
            .file_size
            .map(|size| size_to_db("file_size", size))
            .transpose()?;
        let nar_size = size_to_db("nar_size", record.nar_size)?;
        self.execute(
            "writing a NAR record",
            "INSERT INTO nars (file, compression, file_hash, file_size, nar_hash, nar_size,
                               upstream_url, last_accessed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (file) DO UPDATE SET
                 compression = excluded.compression,
                 file_hash = excluded.file_hash,
                 file_size = excluded.file_size,
                 nar_hash = excluded.nar_hash,
                 nar_size = excluded.nar_size,
                 upstream_url = excluded.upstream_url,
                 last_accessed_at = excluded.last_accessed_at",
            &[
                &record.file,
                &record.compression,
                &record.file_hash,
                &file_size,
                &record.nar_hash,
                &nar_size,
                &record.upstream_url,
                &record.last_accessed_at,
            ],
        )
        .await
        .map(drop)
    }

    async fn delete_nar(&self, file: &str) -> Result<bool> {
        self.execute(
            "deleting a NAR record",
            "DELETE FROM nars WHERE file = $1",
            &[&file],
        )
        .await
        .map(|n| n > 0)
    }

    async fn touch_nar(&self, file: &str, at: i64) -> Result<()> {
        self.execute(
            "touching a NAR record",
            "UPDATE nars SET last_accessed_at = $2 WHERE file = $1",
            &[&file, &at],
        )
        .await
        .map(drop)
    }

    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let context = "reading a config value";
        self.query_opt(context, "SELECT value FROM config WHERE key = $1", &[&key])
            .await?
            .map(|row| {
                row.try_get(0)
                    .map_err(|e| Error::backend(context, describe(&e)))
            })
            .transpose()
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let context = "writing a config value";
        // Two statements: the SELECT must run with a snapshot taken after the
        // INSERT waited for a racing instance's row, which one statement's would not.
        self.execute(
            context,
            "INSERT INTO config (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await?;
        match self.get_config(key).await? {
            Some(stored) => Ok(stored),
            None => Err(Error::backend(
                context,
                format!("config value {key:?} missing right after it was written"),
            )),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.query_opt("pinging the database", "SELECT 1", &[])
            .await
            .map(drop)
    }

    async fn list_narinfos(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarInfoRecord>> {
        let context = "listing narinfo records";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            context,
            "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
             FROM narinfos WHERE $1::TEXT IS NULL OR hash > $1 ORDER BY hash LIMIT $2",
            &[&after, &limit],
        )
        .await?
        .iter()
        .map(|row| narinfo_from_row(row).map_err(|e| Error::backend(context, describe(&e))))
        .collect()
    }

    async fn list_nars(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            "listing NAR records",
            "SELECT file, compression, file_hash, file_size, nar_hash, nar_size,
                    upstream_url, last_accessed_at
             FROM nars WHERE $1::TEXT IS NULL OR file > $1 ORDER BY file LIMIT $2",
            &[&after, &limit],
        )
        .await?
        .iter()
        .map(nar_from_row)
        .collect()
    }

    async fn list_config(&self) -> Result<Vec<(String, String)>> {
        let context = "listing config values";
        self.query(context, "SELECT key, value FROM config ORDER BY key", &[])
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get(0)
                        .map_err(|e| Error::backend(context, describe(&e)))?,
                    row.try_get(1)
                        .map_err(|e| Error::backend(context, describe(&e)))?,
                ))
            })
            .collect()
    }

    async fn set_nar_storage(&self, file: &str, storage: NarStorage) -> Result<bool> {
        self.execute(
            "recording what storage holds of a NAR",
            "UPDATE nars SET stored_size = $2 WHERE file = $1",
            &[&file, &storage.to_column()],
        )
        .await
        .map(|n| n > 0)
    }

    async fn get_nar_storage(&self, file: &str) -> Result<Option<NarStorage>> {
        let context = "reading what storage holds of a NAR";
        self.query_opt(
            context,
            "SELECT stored_size FROM nars WHERE file = $1",
            &[&file],
        )
        .await?
        .map(|row| {
            row.try_get::<_, Option<i64>>(0)
                .map(NarStorage::from_column)
                .map_err(|e| Error::backend(context, describe(&e)))
        })
        .transpose()
    }

    async fn stored_nars_by_last_access(
        &self,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredNar>> {
        let context = "listing NARs by last access";
        let (at, file) = match after {
            Some((at, file)) => (Some(at), Some(file)),
            None => (None, None),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            context,
            "SELECT file, stored_size, last_accessed_at, upstream_url FROM nars
             WHERE stored_size >= 0
               AND ($1::BIGINT IS NULL OR (last_accessed_at, file) > ($1, $2::TEXT))
             ORDER BY last_accessed_at, file LIMIT $3",
            &[&at, &file, &limit],
        )
        .await?
        .iter()
        .map(|row| {
            let column = |e: tokio_postgres::Error| Error::backend(context, describe(&e));
            Ok(StoredNar {
                file: row.try_get(0).map_err(column)?,
                size: size_from_db("stored_size", row.try_get(1).map_err(column)?)?,
                last_accessed_at: row.try_get(2).map_err(column)?,
                upstream_url: row.try_get(3).map_err(column)?,
            })
        })
        .collect()
    }

    async fn nars_of_unknown_storage(&self, limit: usize) -> Result<Vec<String>> {
        let context = "listing NARs of unknown storage";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(
            context,
            "SELECT file FROM nars WHERE stored_size < 0 ORDER BY file LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(|row| {
            row.try_get(0)
                .map_err(|e| Error::backend(context, describe(&e)))
        })
        .collect()
    }

    async fn storage_usage(&self) -> Result<StorageUsage> {
        let context = "summing up storage";
        let row = self
            .query_opt(
                context,
                "SELECT (SELECT COUNT(*) FROM narinfos), (SELECT COUNT(*) FROM nars),
                        (SELECT COUNT(*) FROM nars WHERE stored_size >= 0),
                        (SELECT COALESCE(SUM(stored_size), 0)::BIGINT FROM nars
                         WHERE stored_size >= 0),
                        (SELECT COUNT(*) FROM nars WHERE stored_size < 0),
                        (SELECT COUNT(*) FROM pins)",
                &[],
            )
            .await?
            .ok_or_else(|| Error::backend(context, "no row"))?;
        let n = |i: usize| {
            row.try_get::<_, i64>(i)
                .map(|v| u64::try_from(v).unwrap_or(0))
                .map_err(|e| Error::backend(context, describe(&e)))
        };
        Ok(StorageUsage {
            narinfos: n(0)?,
            nar_records: n(1)?,
            stored_nars: n(2)?,
            stored_bytes: n(3)?,
            unknown_nars: n(4)?,
            pins: n(5)?,
        })
    }

    async fn narinfos_of_nar(&self, file: &str) -> Result<Vec<String>> {
        let context = "listing the narinfos of a NAR";
        self.query(
            context,
            "SELECT hash FROM narinfos WHERE nar_file = $1 ORDER BY hash",
            &[&file],
        )
        .await?
        .iter()
        .map(|row| {
            row.try_get(0)
                .map_err(|e| Error::backend(context, describe(&e)))
        })
        .collect()
    }

    async fn record_accesses(
        &self,
        narinfos: &[(String, i64)],
        nars: &[(String, i64)],
    ) -> Result<()> {
        // One statement per chunk: arrays of keys and times, joined by UNNEST.
        for chunk in narinfos.chunks(ACCESS_CHUNK) {
            let (keys, ats): (Vec<&str>, Vec<i64>) =
                chunk.iter().map(|(k, at)| (k.as_str(), *at)).unzip();
            self.execute(
                "recording narinfo accesses",
                "UPDATE narinfos AS n SET last_accessed_at = GREATEST(n.last_accessed_at, v.at)
                 FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS v(hash, at) WHERE n.hash = v.hash",
                &[&keys, &ats],
            )
            .await?;
        }
        for chunk in nars.chunks(ACCESS_CHUNK) {
            let (keys, ats): (Vec<&str>, Vec<i64>) =
                chunk.iter().map(|(k, at)| (k.as_str(), *at)).unzip();
            self.execute(
                "recording NAR accesses",
                "UPDATE nars AS n SET last_accessed_at = GREATEST(n.last_accessed_at, v.at)
                 FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS v(file, at) WHERE n.file = v.file",
                &[&keys, &ats],
            )
            .await?;
        }
        Ok(())
    }

    async fn add_pin(&self, hash: &str, at: i64) -> Result<bool> {
        self.execute(
            "pinning a store path",
            "INSERT INTO pins (hash, created_at) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            &[&hash, &at],
        )
        .await
        .map(|n| n > 0)
    }

    async fn delete_pin(&self, hash: &str) -> Result<bool> {
        self.execute(
            "unpinning a store path",
            "DELETE FROM pins WHERE hash = $1",
            &[&hash],
        )
        .await
        .map(|n| n > 0)
    }

    async fn list_pins(&self) -> Result<Vec<PinRecord>> {
        let context = "listing pins";
        self.query(
            context,
            "SELECT hash, created_at FROM pins ORDER BY hash",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            let column = |e: tokio_postgres::Error| Error::backend(context, describe(&e));
            Ok(PinRecord {
                hash: row.try_get(0).map_err(column)?,
                created_at: row.try_get(1).map_err(column)?,
            })
        })
        .collect()
    }

    async fn add_counters(&self, deltas: &[(String, i64)]) -> Result<()> {
        // Summed per name first: one row may not be updated twice by one statement.
        let mut summed = std::collections::BTreeMap::<&str, i64>::new();
        for (name, delta) in deltas {
            *summed.entry(name.as_str()).or_default() += delta;
        }
        if summed.is_empty() {
            return Ok(());
        }
        let (names, values): (Vec<&str>, Vec<i64>) = summed.into_iter().unzip();
        self.execute(
            "adding to counters",
            "INSERT INTO counters (name, value)
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[])
             ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
            &[&names, &values],
        )
        .await
        .map(drop)
    }

    async fn list_counters(&self) -> Result<Vec<(String, i64)>> {
        let context = "listing counters";
        self.query(
            context,
            "SELECT name, value FROM counters ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|row| {
            let column = |e: tokio_postgres::Error| Error::backend(context, describe(&e));
            Ok((
                row.try_get(0).map_err(column)?,
                row.try_get(1).map_err(column)?,
            ))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::{Host, SslMode};

    #[test]
    fn parses_urls() {
        let (config, _) = parse_config("postgres://ncps:pw@db:5433/cache?sslmode=disable").unwrap();
        assert_eq!(config.get_user(), Some("ncps"));
        assert_eq!(config.get_dbname(), Some("cache"));
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);

        let (config, _) = parse_config("postgresql:///ncps?host=/run/postgresql").unwrap();
        assert_eq!(config.get_hosts(), &[Host::Unix("/run/postgresql".into())]);
        assert_eq!(config.get_dbname(), Some("ncps"));
        assert_eq!(config.get_ssl_mode(), SslMode::Prefer);

        let (config, _) = parse_config("postgres://ncps@db/cache?sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);

        let (config, _) = parse_config(
            "postgres+unix://ncps:p'w@/run/postgresql/cache?connect_timeout=2&sslmode=disable",
        )
        .unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(config.get_hosts(), &[Host::Unix("/run/postgresql".into())]);
        assert_eq!(config.get_dbname(), Some("cache"));
        assert_eq!(config.get_password(), Some(&b"p'w"[..]));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(2)));
    }

    #[test]
    fn refuses_bad_urls_without_showing_the_password() {
        for url in [
            "postgres://ncps:secret@db/ncps?sslmode=required",
            "postgres://ncps:secret@db/ncps?sslmode=verify-ca&sslrootcert=/nonexistent.pem",
            "postgres://ncps:secret@db/ncps?nonsense=1",
            "mysql://ncps:secret@db/ncps",
        ] {
            let e = parse_config(url).err().unwrap();
            assert!(matches!(e, Error::InvalidInput(_)), "{url}: {e}");
            assert!(!e.to_string().contains("secret"), "{url}: {e}");
        }
    }
}
