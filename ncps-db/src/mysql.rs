//! [`MysqlDb`]: the metadata database in MySQL or MariaDB, through a pool
//! of mysql_async connections. This file owns what is MySQL's own: its URLs
//! (and the Go driver's parameters ncps takes), the pool and its session
//! settings, running a statement (and a migration file, one statement at a
//! time), its values and rows, and which server errors mean "unavailable"
//! or "retry". Its SQL dialect and migration locking are
//! [`crate::dialect::MYSQL`].

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts};
use ncps_core::{Error, Result};

use crate::db_url::{DbUrl, redact_url};
use crate::dialect::{Dialect, MYSQL};
use crate::engine::{Answer, Connection, Engine, pool_size};
use crate::fault::{Fault, FaultKind};
use crate::migrate::migrate;
use crate::mysql_tls::{self, Mode as TlsMode};
use crate::sql_db::SqlDb;
use crate::values::{Row, Value};

/// How long opening a connection, or waiting for a free one, may take (as
/// long as PostgreSQL's connect timeout, so both fail alike).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Session settings of every connection: errors instead of silently
/// truncated values, `"` quoting identifiers (as in the other dialects),
/// `utf8mb4`, and READ COMMITTED, which takes fewer gap locks on upserts
/// than the default and so deadlocks less.
const SESSION_SETUP: &[&str] = &[
    "SET NAMES utf8mb4",
    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION,ANSI_QUOTES'",
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
pub type MysqlDb = SqlDb<Mysql>;

/// The MySQL engine of [`MysqlDb`]: its pool.
#[derive(Clone)]
pub struct Mysql {
    pool: Pool,
    /// The URL with its password hidden, for messages.
    url: String,
}

impl fmt::Debug for Mysql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlDb").field("url", &self.url).finish()
    }
}

impl SqlDb<Mysql> {
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
        let mut opts = parse_opts(url, pool_size(max_conns))?;
        let shown = redact_url(url);
        let error = |context: &str, f: Fault| f.into_error(context, Some(&shown));
        // Migrate on a connection of its own, closed afterwards, so the
        // migration lock never stays with a pooled connection.
        let mut first = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone()))
            .await
            .map_err(|_| error("connecting", no_connection()))?;
        if matches!(
            first,
            Err(mysql_async::Error::Driver(
                DriverError::NoClientSslFlagFromServer
            ))
        ) && tls_mode(&DbUrl::parse(url)?) == Ok(TlsMode::Preferred)
        {
            // `tls=preferred` and a server without TLS: talk without.
            opts = OptsBuilder::from_opts(opts).ssl_opts(None).into();
            first = tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone()))
                .await
                .map_err(|_| error("connecting", no_connection()))?;
        }
        let mut conn = first.map_err(|e| error("connecting", fault(&e)))?;
        let migrated = migrate(&mut conn, &MYSQL.migrations).await;
        let _ = conn.disconnect().await;
        migrated.map_err(|f| error("migrating the database", f))?;
        let engine = Mysql {
            pool: Pool::new(opts),
            url: shown.clone(),
        };
        Ok(SqlDb::new(engine, Some(shown)))
    }
}

/// The fault of a connection that did not come in time.
fn no_connection() -> Fault {
    Fault::new(
        FaultKind::Unavailable,
        format!("no connection within {CONNECT_TIMEOUT:?}"),
    )
}

#[async_trait]
impl Engine for Mysql {
    type Conn = Conn;
    const DIALECT: &'static Dialect = &MYSQL;

    async fn conn(&self) -> Result<Conn, Fault> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.pool.get_conn())
            .await
            .map_err(|_| no_connection())?
            .map_err(|e| fault(&e))
    }

    fn discard(conn: Conn) {
        // mysql_async marks a connection broken while a command is in
        // flight, so the pool closes it rather than reuse it (one left
        // mid-rows is drained before reuse).
        drop(conn);
    }
}

#[async_trait]
impl Connection for Conn {
    async fn run(&mut self, sql: &str, params: &[Value]) -> Result<Answer, Fault> {
        let params = Params::Positional(params.iter().map(to_mysql).collect());
        let rows: Vec<mysql_async::Row> = self.exec(sql, params).await.map_err(|e| fault(&e))?;
        let changed = self.affected_rows();
        let rows = rows.into_iter().map(row).collect::<Result<_, _>>()?;
        Ok(Answer { rows, changed })
    }

    async fn run_script(&mut self, sql: &str) -> Result<(), Fault> {
        for statement in statements(sql) {
            self.query_drop(statement).await.map_err(|e| fault(&e))?;
        }
        Ok(())
    }
}

/// A parameter as mysql_async sends it.
fn to_mysql(value: &Value) -> mysql_async::Value {
    match value {
        Value::Null => mysql_async::Value::NULL,
        Value::Int(v) => mysql_async::Value::Int(*v),
        Value::Text(text) => mysql_async::Value::Bytes(text.as_bytes().to_vec()),
    }
}

/// A row's values; the schema has only integer and text columns.
fn row(row: mysql_async::Row) -> Result<Row, Fault> {
    let other = |why: String| Fault::new(FaultKind::Other, why);
    row.unwrap_raw()
        .into_iter()
        .map(|value| match value {
            None | Some(mysql_async::Value::NULL) => Ok(Value::Null),
            Some(mysql_async::Value::Int(v)) => Ok(Value::Int(v)),
            Some(mysql_async::Value::UInt(v)) => i64::try_from(v)
                .map(Value::Int)
                .map_err(|_| other(format!("integer {v} out of range"))),
            Some(mysql_async::Value::Bytes(bytes)) => String::from_utf8(bytes)
                .map(Value::Text)
                .map_err(|e| other(format!("text column: {e}"))),
            Some(value) => Err(other(format!("unexpected column value {value:?}"))),
        })
        .collect()
}

/// Classifies a driver error.
fn fault(e: &mysql_async::Error) -> Fault {
    Fault::of_server(e, is_retryable(e), is_unavailable(e), e.to_string())
}

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
        // Statements count the rows they changed, not those they matched:
        // a pin or config value already there counts no row changed.
        .client_found_rows(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The MySQL migration files.
    const MIGRATIONS: &[(i64, &str)] = MYSQL.migrations.files;

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
