//! `MysqlDb`: the metadata database in MySQL or MariaDB, through a pool of
//! mysql_async connections.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{
    Conn, DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Row, Value,
};
use ncps_core::{Error, MetadataDb, NarInfoRecord, NarRecord, Result};

use ncps_core::{NarStorage, PinRecord, StorageUsage, StoredNar};

use crate::db_url::{DbUrl, redact_url};
use crate::mysql_tls::{self, Mode as TlsMode};
use crate::values::{size_from_db, size_to_db, unix_now};

/// The schema migrations, applied in order; each version is applied once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/mysql/0001_initial.sql")),
    (
        2,
        include_str!("../migrations/mysql/0002_eviction_pins.sql"),
    ),
];

/// Most access times one statement records.
const ACCESS_CHUNK: usize = 500;

/// Pool size when none is given (ncps's default for MySQL).
const DEFAULT_MAX_CONNS: usize = 25;

/// How long opening a connection, or waiting for a free one, may take (as
/// long as PostgreSQL's connect timeout, so both fail alike).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one statement may take. A server that stopped answering (a
/// frozen host, a network dropping packets) keeps its connections open but
/// never replies; without this a request would wait for it forever. Every
/// statement here reads or writes a few rows by key, so one this slow means
/// the database is unusable for a cache anyway.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an instance waits for another one's migration to finish, in seconds.
const MIGRATION_LOCK_WAIT_SECS: i64 = 120;

/// How many times a statement is tried when the server reports a deadlock or
/// a lock wait timeout, which retrying resolves.
const ATTEMPTS: u32 = 5;

/// Session settings of every connection: errors instead of silently
/// truncated values, `utf8mb4`, and READ COMMITTED, which takes fewer gap
/// locks on upserts than the default and so deadlocks less.
const SESSION_SETUP: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
];

/// Server error codes after which a later try may succeed.
mod code {
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const DEADLOCK: u16 = 1213;
    pub const CONNECTION_KILLED: u16 = 1927;
}

/// The metadata database in MySQL or MariaDB.
///
/// Cloning shares the pool. Every instance connected to the same database
/// sees the same records, so several servers can share one.
#[derive(Clone)]
pub struct MysqlDb {
    pool: Pool,
    /// The URL with its password hidden, for messages.
    url: String,
}

impl fmt::Debug for MysqlDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlDb").field("url", &self.url).finish()
    }
}

impl MysqlDb {
    /// Connects to the database a URL names and migrates it to the current
    /// schema.
    ///
    /// Takes `mysql://user:password@host:port/dbname`, with
    /// `?socket=/path/mysqld.sock` for a Unix socket, and
    /// `mysql+unix:///path/mysqld.sock/dbname`. The Go driver's `charset`,
    /// `collation`, `parseTime` and `loc` parameters are accepted and ignored
    /// (connections always use utf8mb4). TLS follows the Go driver's `tls`
    /// parameter (`true`, `false` by default, `skip-verify`, `preferred`;
    /// also `require_ssl=true`), trusting the CAs of the PEM file
    /// `ssl-ca=<file>`, or else the system's roots (or `SSL_CERT_FILE`'s);
    /// see the `mysql_tls` module. `max_conns` bounds the pool; 0 means 25,
    /// ncps's default.
    ///
    /// A server that cannot be reached is [`Error::Unavailable`]; a
    /// certificate it cannot be trusted by is a backend error saying so.
    /// Messages show the URL with its password hidden.
    pub async fn connect(url: &str, max_conns: usize) -> Result<Self> {
        let max_size = if max_conns == 0 {
            DEFAULT_MAX_CONNS
        } else {
            max_conns
        };
        let opts = parse_opts(url, max_size)?;
        let mut db = MysqlDb {
            pool: Pool::new(opts.clone()),
            url: redact_url(url),
        };
        // Migrate on a connection of its own, closed afterwards, so the
        // migration lock never stays with a pooled connection.
        let mut first = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone()))
            .await
            .map_err(|_| db.timed_out("connecting"))?;
        if matches!(
            first,
            Err(mysql_async::Error::Driver(
                DriverError::NoClientSslFlagFromServer
            ))
        ) && tls_mode(&DbUrl::parse(url)?) == Ok(TlsMode::Preferred)
        {
            // `tls=preferred` and a server without TLS: talk without.
            let plain: Opts = OptsBuilder::from_opts(opts).ssl_opts(None).into();
            db.pool = Pool::new(plain.clone());
            first = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(plain))
                .await
                .map_err(|_| db.timed_out("connecting"))?;
        }
        let mut conn = first.map_err(|e| db.error("connecting", e))?;
        let migrated = migrate(&mut conn).await;
        let _ = conn.disconnect().await;
        migrated.map_err(|e| db.error("migrating the database", e))?;
        Ok(db)
    }

    /// A connection from the pool.
    async fn conn(&self, context: &str) -> Result<Conn> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.pool.get_conn())
            .await
            .map_err(|_| self.timed_out(context))?
            .map_err(|e| self.error(context, e))
    }

    /// The error of a connection that did not come in time.
    fn timed_out(&self, context: &str) -> Error {
        Error::Unavailable(format!(
            "{context}: database {}: no connection within {CONNECT_TIMEOUT:?}",
            self.url
        ))
    }

    /// Maps a driver error: a certificate not trusted is a backend error
    /// saying so; the server unreachable, shutting down, or busy means retry
    /// later; anything else is a backend error.
    fn error(&self, context: &str, e: mysql_async::Error) -> Error {
        if let Some(why) = crate::tls::problem(&e) {
            Error::backend(
                format!("{context}: database {}: TLS", self.url),
                format!("{why} ({})", crate::tls::TRUST_HINT),
            )
        } else if is_unavailable(&e) {
            Error::Unavailable(format!("{context}: database {}: {e}", self.url))
        } else {
            Error::backend(context, e)
        }
    }

    /// Runs one statement returning at most one row, retrying deadlocks.
    async fn exec_first(
        &self,
        context: &str,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Option<Row>> {
        self.run(context, sql, params, |conn, sql, params| {
            conn.exec_first(sql, params)
        })
        .await
    }

    /// Runs one statement returning any number of rows, retrying deadlocks.
    async fn exec(&self, context: &str, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.run(context, sql, params, |conn, sql, params| {
            conn.exec(sql, params)
        })
        .await
    }

    /// Runs one statement and returns the number of rows it changed,
    /// retrying deadlocks.
    async fn exec_drop(&self, context: &str, sql: &str, params: Vec<Value>) -> Result<u64> {
        self.run(context, sql, params, |conn, sql, params| {
            Box::pin(async move {
                conn.exec_drop(sql, params).await?;
                Ok(conn.affected_rows())
            })
        })
        .await
    }

    /// Runs `sql` on a pooled connection with `call`, retrying deadlocks.
    /// Each try has [`STATEMENT_TIMEOUT`]; a connection that does not answer
    /// in time is dropped and the database counts as unavailable.
    async fn run<T>(
        &self,
        context: &str,
        sql: &str,
        params: Vec<Value>,
        call: for<'a> fn(&'a mut Conn, &'a str, Params) -> Call<'a, T>,
    ) -> Result<T> {
        let mut attempt = 1;
        loop {
            let mut conn = self.conn(context).await?;
            let params = Params::Positional(params.clone());
            let answered =
                tokio::time::timeout(STATEMENT_TIMEOUT, call(&mut conn, sql, params)).await;
            let Ok(result) = answered else {
                // mysql_async marks a connection broken while a command is in
                // flight, so the pool closes it rather than reuse it (one left
                // mid-rows is drained before reuse).
                drop(conn);
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

/// A statement running on a connection, as [`MysqlDb::run`] calls it.
type Call<'a, T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, mysql_async::Error>> + Send + 'a>>;

/// The connection options a URL names. The password never appears in errors.
pub(crate) fn parse_opts(url: &str, max_size: usize) -> Result<Opts> {
    let invalid =
        |why: String| Error::InvalidInput(format!("database URL {}: {why}", redact_url(url)));
    let parsed = DbUrl::parse(url)?;
    let (socket, db_name) = match parsed.scheme.as_str() {
        "mysql" => (
            parsed.param("socket").map(str::to_string),
            parsed.path.clone(),
        ),
        "mysql+unix" => match parsed.path.rsplit_once('/') {
            Some((socket, db_name)) => (Some(format!("/{socket}")), db_name.to_string()),
            None => {
                return Err(invalid(
                    "expected mysql+unix:///path/to/socket/dbname".into(),
                ));
            }
        },
        _ => return Err(invalid("expected mysql:// or mysql+unix://".into())),
    };
    if db_name.is_empty() || db_name.contains('/') {
        return Err(invalid("no database name".into()));
    }
    for (key, _) in &parsed.query {
        match key.as_str() {
            "socket" | "charset" | "collation" | "parseTime" | "loc" => {}
            "tls" | "require_ssl" | "ssl-ca" => {}
            _ => tracing::warn!(
                parameter = %key,
                url = %redact_url(url),
                "database URL parameter not supported; ignored"
            ),
        }
    }
    let ssl_opts = tls_mode(&parsed)
        .and_then(|mode| mysql_tls::ssl_opts(mode, parsed.param("ssl-ca")))
        .map_err(invalid)?;
    let constraints = PoolConstraints::new(0, max_size)
        .ok_or_else(|| invalid(format!("pool size {max_size} is not valid")))?;
    let host = if parsed.host.is_empty() {
        "localhost".to_string()
    } else {
        parsed.host.clone()
    };
    let builder = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(parsed.port.unwrap_or(3306))
        .user(parsed.user.clone())
        .pass(parsed.password.clone())
        .db_name(Some(db_name))
        .socket(socket)
        // Connect the way the URL says, not over a socket found by asking the server.
        .prefer_socket(false)
        .ssl_opts(ssl_opts)
        .init(SESSION_SETUP.to_vec())
        .stmt_cache_size(64)
        .tcp_keepalive(Some(Duration::from_secs(60)))
        // No COM_RESET_CONNECTION on return to the pool: sessions keep their
        // settings and prepared statements.
        .pool_opts(
            PoolOpts::default()
                .with_constraints(constraints)
                .with_reset_connection(false),
        );
    Ok(builder.into())
}

/// The TLS a URL asks for: its `tls` parameter, else `require_ssl=true` or
/// `ssl-ca` mean [`TlsMode::Verify`], else none.
fn tls_mode(url: &DbUrl) -> std::result::Result<TlsMode, String> {
    match url.param("tls") {
        Some(value) => TlsMode::parse(value),
        None if url.param("require_ssl") == Some("true") || url.param("ssl-ca").is_some() => {
            Ok(TlsMode::Verify)
        }
        None => Ok(TlsMode::Off),
    }
}

/// Whether the server is unreachable, closed the connection, is shutting
/// down, or is too busy right now.
fn is_unavailable(e: &mysql_async::Error) -> bool {
    match e {
        mysql_async::Error::Io(_) => true,
        mysql_async::Error::Driver(
            DriverError::ConnectionClosed | DriverError::PoolDisconnected,
        ) => true,
        mysql_async::Error::Server(e) => [
            code::TOO_MANY_CONNECTIONS,
            code::SERVER_SHUTDOWN,
            code::LOCK_WAIT_TIMEOUT,
            code::DEADLOCK,
            code::CONNECTION_KILLED,
        ]
        .contains(&e.code),
        _ => false,
    }
}

/// Whether retrying the statement may succeed at once.
fn is_retryable(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(e)
        if e.code == code::DEADLOCK || e.code == code::LOCK_WAIT_TIMEOUT)
}

/// The statements of a migration file: comment lines dropped, split at each
/// `;` that ends a line (MySQL runs one statement per query here).
fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_string();
            statements.push(statement);
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_string());
    }
    statements
}

/// Applies the migrations not yet recorded in `schema_migrations`, holding a
/// named lock (per database) so instances starting together migrate one
/// after the other.
///
/// MySQL commits each DDL statement at once, so a migration that fails
/// midway can leave part of it applied; each migration file is kept small.
async fn migrate(conn: &mut Conn) -> std::result::Result<(), mysql_async::Error> {
    const LOCK_NAME: &str = "CONCAT('ncps-migrate-', SHA1(DATABASE()))";
    let locked: Option<Row> = conn
        .exec_first(
            format!("SELECT GET_LOCK({LOCK_NAME}, ?)"),
            (MIGRATION_LOCK_WAIT_SECS,),
        )
        .await?;
    let locked = locked.and_then(|mut row| row.take_opt::<Option<i64>, _>(0));
    if !matches!(locked, Some(Ok(Some(1)))) {
        return Err(mysql_async::Error::Other(
            format!("another instance held the migration lock for {MIGRATION_LOCK_WAIT_SECS} s")
                .into(),
        ));
    }
    let applied = apply_migrations(conn).await;
    let released = conn
        .query_drop(format!("DO RELEASE_LOCK({LOCK_NAME})"))
        .await;
    applied.and(released)
}

/// The migrations themselves, under the lock.
async fn apply_migrations(conn: &mut Conn) -> std::result::Result<(), mysql_async::Error> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT NOT NULL PRIMARY KEY,
            applied_at BIGINT NOT NULL
        ) ENGINE = InnoDB",
    )
    .await?;
    for &(version, sql) in MIGRATIONS {
        let applied: Option<Row> = conn
            .exec_first(
                "SELECT version FROM schema_migrations WHERE version = ?",
                (version,),
            )
            .await?;
        if applied.is_some() {
            continue;
        }
        tracing::info!(version, "applying database migration");
        for statement in statements(sql) {
            conn.query_drop(statement).await?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            (version, unix_now()),
        )
        .await?;
    }
    Ok(())
}

/// Takes column `name` out of `row` as a `T`.
fn take<T: FromValue>(row: &mut Row, name: &str, context: &str) -> Result<T> {
    match row.take_opt::<T, _>(name) {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(Error::backend(context, format!("column {name}: {e}"))),
        None => Err(Error::backend(context, format!("column {name} missing"))),
    }
}

/// A narinfo record from a `narinfos` row.
fn narinfo_from_row(mut row: Row) -> Result<NarInfoRecord> {
    let context = "reading a narinfo record";
    Ok(NarInfoRecord {
        hash: take(&mut row, "hash", context)?,
        narinfo: take(&mut row, "narinfo", context)?,
        nar_file: take(&mut row, "nar_file", context)?,
        created_at: take(&mut row, "created_at", context)?,
        last_accessed_at: take(&mut row, "last_accessed_at", context)?,
    })
}

/// A NAR record from a `nars` row.
fn nar_from_row(mut row: Row) -> Result<NarRecord> {
    let context = "reading a NAR record";
    let file_size: Option<i64> = take(&mut row, "file_size", context)?;
    Ok(NarRecord {
        file: take(&mut row, "file", context)?,
        compression: take(&mut row, "compression", context)?,
        file_hash: take(&mut row, "file_hash", context)?,
        file_size: file_size
            .map(|size| size_from_db("file_size", size))
            .transpose()?,
        nar_hash: take(&mut row, "nar_hash", context)?,
        nar_size: size_from_db("nar_size", take(&mut row, "nar_size", context)?)?,
        upstream_url: take(&mut row, "upstream_url", context)?,
        last_accessed_at: take(&mut row, "last_accessed_at", context)?,
    })
}

#[async_trait]
impl MetadataDb for MysqlDb {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>> {
        self.exec_first(
            "reading a narinfo record",
            "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
             FROM narinfos WHERE hash = ?",
            vec![hash.into()],
        )
        .await?
        .map(narinfo_from_row)
        .transpose()
    }

    async fn put_narinfo(&self, record: &NarInfoRecord) -> Result<()> {
        self.exec_drop(
            "writing a narinfo record",
            "INSERT INTO narinfos (hash, narinfo, nar_file, created_at, last_accessed_at)
             VALUES (?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE
                 narinfo = VALUES(narinfo),
                 nar_file = VALUES(nar_file),
                 created_at = VALUES(created_at),
                 last_accessed_at = VALUES(last_accessed_at)",
            vec![
                record.hash.as_str().into(),
                record.narinfo.as_str().into(),
                record.nar_file.as_str().into(),
                record.created_at.into(),
                record.last_accessed_at.into(),
            ],
        )
        .await
        .map(drop)
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        self.exec_drop(
            "deleting a narinfo record",
            "DELETE FROM narinfos WHERE hash = ?",
            vec![hash.into()],
        )
        .await
        .map(|n| n > 0)
    }

    async fn touch_narinfo(&self, hash: &str, at: i64) -> Result<()> {
        self.exec_drop(
            "touching a narinfo record",
            "UPDATE narinfos SET last_accessed_at = ? WHERE hash = ?",
            vec![at.into(), hash.into()],
        )
        .await
        .map(drop)
    }

    async fn get_nar(&self, file: &str) -> Result<Option<NarRecord>> {
        self.exec_first(
            "reading a NAR record",
            "SELECT file, compression, file_hash, file_size, nar_hash, nar_size,
                    upstream_url, last_accessed_at
             FROM nars WHERE file = ?",
            vec![file.into()],
        )
        .await?
        .map(nar_from_row)
        .transpose()
    }

    async fn put_nar(&self, record: &NarRecord) -> Result<()> {
        let file_size = record
            .file_size
            .map(|size| size_to_db("file_size", size))
            .transpose()?;
        let nar_size = size_to_db("nar_size", record.nar_size)?;
        self.exec_drop(
            "writing a NAR record",
            "INSERT INTO nars (file, compression, file_hash, file_size, nar_hash, nar_size,
                               upstream_url, last_accessed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE
                 compression = VALUES(compression),
                 file_hash = VALUES(file_hash),
                 file_size = VALUES(file_size),
                 nar_hash = VALUES(nar_hash),
                 nar_size = VALUES(nar_size),
                 upstream_url = VALUES(upstream_url),
                 last_accessed_at = VALUES(last_accessed_at)",
            vec![
                record.file.as_str().into(),
                record.compression.as_str().into(),
                record.file_hash.as_deref().into(),
                file_size.into(),
                record.nar_hash.as_str().into(),
                nar_size.into(),
                record.upstream_url.as_deref().into(),
                record.last_accessed_at.into(),
            ],
        )
        .await
        .map(drop)
    }

    async fn delete_nar(&self, file: &str) -> Result<bool> {
        self.exec_drop(
            "deleting a NAR record",
            "DELETE FROM nars WHERE file = ?",
            vec![file.into()],
        )
        .await
        .map(|n| n > 0)
    }

    async fn touch_nar(&self, file: &str, at: i64) -> Result<()> {
        self.exec_drop(
            "touching a NAR record",
            "UPDATE nars SET last_accessed_at = ? WHERE file = ?",
            vec![at.into(), file.into()],
        )
        .await
        .map(drop)
    }

    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let context = "reading a config value";
        self.exec_first(
            context,
            "SELECT `value` FROM config WHERE `key` = ?",
            vec![key.into()],
        )
        .await?
        .map(|mut row| take(&mut row, "value", context))
        .transpose()
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let context = "writing a config value";
        // Not INSERT IGNORE, which would also hide errors such as a value too long.
        self.exec_drop(
            context,
            "INSERT INTO config (`key`, `value`) VALUES (?, ?)
             ON DUPLICATE KEY UPDATE `key` = `key`",
            vec![key.into(), value.into()],
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
        self.exec_first("pinging the database", "SELECT 1", Vec::new())
            .await
            .map(drop)
    }

    async fn list_narinfos(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarInfoRecord>> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.exec(
            "listing narinfo records",
            "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
             FROM narinfos WHERE ? IS NULL OR hash > ? ORDER BY hash LIMIT ?",
            vec![after.into(), after.into(), limit.into()],
        )
        .await?
        .into_iter()
        .map(narinfo_from_row)
        .collect()
    }

    async fn list_nars(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarRecord>> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.exec(
            "listing NAR records",
            "SELECT file, compression, file_hash, file_size, nar_hash, nar_size,
                    upstream_url, last_accessed_at
             FROM nars WHERE ? IS NULL OR file > ? ORDER BY file LIMIT ?",
            vec![after.into(), after.into(), limit.into()],
        )
        .await?
        .into_iter()
        .map(nar_from_row)
        .collect()
    }

    async fn list_config(&self) -> Result<Vec<(String, String)>> {
        let context = "listing config values";
        self.exec(
            context,
            "SELECT `key`, `value` FROM config ORDER BY `key`",
            Vec::new(),
        )
        .await?
        .into_iter()
        .map(|mut row| {
            Ok((
                take(&mut row, "key", context)?,
                take(&mut row, "value", context)?,
            ))
        })
        .collect()
    }

    async fn set_nar_storage(&self, file: &str, storage: NarStorage) -> Result<bool> {
        // Only the rows found count: MySQL reports a row set to its old value as unchanged.
        self.exec_drop(
            "recording what storage holds of a NAR",
            "UPDATE nars SET stored_size = ? WHERE file = ?",
            vec![storage.to_column().into(), file.into()],
        )
        .await?;
        Ok(self.get_nar_storage(file).await? == Some(storage))
    }

    async fn get_nar_storage(&self, file: &str) -> Result<Option<NarStorage>> {
        let context = "reading what storage holds of a NAR";
        self.exec_first(
            context,
            "SELECT stored_size FROM nars WHERE file = ?",
            vec![file.into()],
        )
        .await?
        .map(|mut row| take::<Option<i64>>(&mut row, "stored_size", context))
        .transpose()
        .map(|found| found.map(NarStorage::from_column))
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
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.exec(
            context,
            "SELECT file, stored_size, last_accessed_at, upstream_url FROM nars
             WHERE stored_size >= 0
               AND (? IS NULL OR last_accessed_at > ? OR (last_accessed_at = ? AND file > ?))
             ORDER BY last_accessed_at, file LIMIT ?",
            vec![at.into(), at.into(), at.into(), file.into(), limit.into()],
        )
        .await?
        .into_iter()
        .map(|mut row| {
            Ok(StoredNar {
                file: take(&mut row, "file", context)?,
                size: size_from_db("stored_size", take(&mut row, "stored_size", context)?)?,
                last_accessed_at: take(&mut row, "last_accessed_at", context)?,
                upstream_url: take(&mut row, "upstream_url", context)?,
            })
        })
        .collect()
    }

    async fn nars_of_unknown_storage(&self, limit: usize) -> Result<Vec<String>> {
        let context = "listing NARs of unknown storage";
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        self.exec(
            context,
            "SELECT file FROM nars WHERE stored_size < 0 ORDER BY file LIMIT ?",
            vec![limit.into()],
        )
        .await?
        .into_iter()
        .map(|mut row| take(&mut row, "file", context))
        .collect()
    }

    async fn storage_usage(&self) -> Result<StorageUsage> {
        let context = "summing up storage";
        let mut row = self
            .exec_first(
                context,
                "SELECT (SELECT COUNT(*) FROM narinfos) AS narinfos,
                        (SELECT COUNT(*) FROM nars) AS nar_records,
                        (SELECT COUNT(*) FROM nars WHERE stored_size >= 0) AS stored_nars,
                        CAST((SELECT COALESCE(SUM(stored_size), 0) FROM nars
                              WHERE stored_size >= 0) AS SIGNED) AS stored_bytes,
                        (SELECT COUNT(*) FROM nars WHERE stored_size < 0) AS unknown_nars,
                        (SELECT COUNT(*) FROM pins) AS pins",
                Vec::new(),
            )
            .await?
            .ok_or_else(|| Error::backend(context, "no row"))?;
        let mut n = |name: &str| {
            take::<i64>(&mut row, name, context).map(|v| u64::try_from(v).unwrap_or(0))
        };
        Ok(StorageUsage {
            narinfos: n("narinfos")?,
            nar_records: n("nar_records")?,
            stored_nars: n("stored_nars")?,
            stored_bytes: n("stored_bytes")?,
            unknown_nars: n("unknown_nars")?,
            pins: n("pins")?,
        })
    }

    async fn narinfos_of_nar(&self, file: &str) -> Result<Vec<String>> {
        let context = "listing the narinfos of a NAR";
        self.exec(
            context,
            "SELECT hash FROM narinfos WHERE nar_file = ? ORDER BY hash",
            vec![file.into()],
        )
        .await?
        .into_iter()
        .map(|mut row| take(&mut row, "hash", context))
        .collect()
    }

    async fn record_accesses(
        &self,
        narinfos: &[(String, i64)],
        nars: &[(String, i64)],
    ) -> Result<()> {
        for (table, key, entries) in [("narinfos", "hash", narinfos), ("nars", "file", nars)] {
            for chunk in entries.chunks(ACCESS_CHUNK) {
                // One statement per chunk: the new time of each key by CASE.
                let cases = " WHEN ? THEN ?".repeat(chunk.len());
                let keys = vec!["?"; chunk.len()].join(", ");
                let sql = format!(
                    "UPDATE {table} SET last_accessed_at =
                     GREATEST(last_accessed_at, CASE {key}{cases} END)
                     WHERE {key} IN ({keys})"
                );
                let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
                for (k, at) in chunk {
                    params.push(k.as_str().into());
                    params.push((*at).into());
                }
                params.extend(chunk.iter().map(|(k, _)| Value::from(k.as_str())));
                self.exec_drop("recording accesses", &sql, params).await?;
            }
        }
        Ok(())
    }

    async fn add_pin(&self, hash: &str, at: i64) -> Result<bool> {
        let context = "pinning a store path";
        let existed = self
            .exec_first(
                context,
                "SELECT hash FROM pins WHERE hash = ?",
                vec![hash.into()],
            )
            .await?
            .is_some();
        self.exec_drop(
            context,
            "INSERT INTO pins (hash, created_at) VALUES (?, ?)
             ON DUPLICATE KEY UPDATE hash = hash",
            vec![hash.into(), at.into()],
        )
        .await?;
        Ok(!existed)
    }

    async fn delete_pin(&self, hash: &str) -> Result<bool> {
        self.exec_drop(
            "unpinning a store path",
            "DELETE FROM pins WHERE hash = ?",
            vec![hash.into()],
        )
        .await
        .map(|n| n > 0)
    }

    async fn list_pins(&self) -> Result<Vec<PinRecord>> {
        let context = "listing pins";
        self.exec(
            context,
            "SELECT hash, created_at FROM pins ORDER BY hash",
            Vec::new(),
        )
        .await?
        .into_iter()
        .map(|mut row| {
            Ok(PinRecord {
                hash: take(&mut row, "hash", context)?,
                created_at: take(&mut row, "created_at", context)?,
            })
        })
        .collect()
    }

    async fn add_counters(&self, deltas: &[(String, i64)]) -> Result<()> {
        let mut summed = std::collections::BTreeMap::<&str, i64>::new();
        for (name, delta) in deltas {
            *summed.entry(name.as_str()).or_default() += delta;
        }
        if summed.is_empty() {
            return Ok(());
        }
        let rows = vec!["(?, ?)"; summed.len()].join(", ");
        let sql = format!(
            "INSERT INTO counters (name, `value`) VALUES {rows}
             ON DUPLICATE KEY UPDATE `value` = `value` + VALUES(`value`)"
        );
        let params = summed
            .into_iter()
            .flat_map(|(name, delta)| [Value::from(name), Value::from(delta)])
            .collect();
        self.exec_drop("adding to counters", &sql, params)
            .await
            .map(drop)
    }

    async fn list_counters(&self) -> Result<Vec<(String, i64)>> {
        let context = "listing counters";
        self.exec(
            context,
            "SELECT name, `value` FROM counters ORDER BY name",
            Vec::new(),
        )
        .await?
        .into_iter()
        .map(|mut row| {
            Ok((
                take(&mut row, "name", context)?,
                take(&mut row, "value", context)?,
            ))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let opts = parse_opts(
            "mysql://ncps:p%40w@db:3307/cache?charset=utf8mb4&parseTime=true",
            7,
        )
        .unwrap();
        assert_eq!(opts.user(), Some("ncps"));
        assert_eq!(opts.pass(), Some("p@w"));
        assert_eq!(opts.ip_or_hostname(), "db");
        assert_eq!(opts.tcp_port(), 3307);
        assert_eq!(opts.db_name(), Some("cache"));
        assert_eq!(opts.socket(), None);
        assert_eq!(opts.pool_opts().constraints().max(), 7);
        assert_eq!(opts.ssl_opts(), None);

        let opts = parse_opts("mysql://ncps@db/cache?tls=skip-verify", 1).unwrap();
        assert!(
            opts.ssl_opts()
                .is_some_and(|ssl| ssl.accept_invalid_certs())
        );
        let opts = parse_opts("mysql://ncps@db/cache?tls=false", 1).unwrap();
        assert_eq!(opts.ssl_opts(), None);

        let opts = parse_opts("mysql://ncps:pw@/cache?socket=/run/mysqld/mysqld.sock", 1).unwrap();
        assert_eq!(opts.socket(), Some("/run/mysqld/mysqld.sock"));
        assert_eq!(opts.db_name(), Some("cache"));

        let opts = parse_opts("mysql+unix:///run/mysqld/mysqld.sock/cache", 1).unwrap();
        assert_eq!(opts.socket(), Some("/run/mysqld/mysqld.sock"));
        assert_eq!(opts.db_name(), Some("cache"));
        assert_eq!(opts.user(), None);
    }

    #[test]
    fn refuses_bad_urls_without_showing_the_password() {
        for url in [
            "mysql://ncps:secret@db/cache?tls=custom",
            "mysql://ncps:secret@db/cache?tls=true&ssl-ca=/nonexistent/ca.pem",
            "mysql://ncps:secret@db/",
            "mysql://ncps:secret@db:port/cache",
            "postgres://ncps:secret@db/cache",
        ] {
            let e = parse_opts(url, 1).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{url}: {e}");
            assert!(!e.to_string().contains("secret"), "{url}: {e}");
        }
    }

    #[test]
    fn splits_migration_statements() {
        let sql = "-- a comment\nCREATE TABLE a (\n  x INT\n);\n\nCREATE TABLE b (y INT);\n";
        assert_eq!(
            statements(sql),
            vec!["CREATE TABLE a (\n  x INT\n)", "CREATE TABLE b (y INT)"]
        );
        assert_eq!(statements(MIGRATIONS[0].1).len(), 3);
        assert_eq!(statements(MIGRATIONS[1].1).len(), 4);
    }
}
