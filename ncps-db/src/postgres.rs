//! [`PostgresDb`]: the metadata database in PostgreSQL, through a pool of
//! tokio-postgres connections. This file owns what is PostgreSQL's own: its
//! URLs (libpq's, and `postgres+unix://`), the pool, running a statement
//! (`?` placeholders numbered `$1`, `$2`, ...), its values and rows, and
//! which server errors mean "unavailable" or "retry". Its SQL dialect and
//! migration locking are [`crate::dialect::POSTGRES`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use ncps_core::{Error, Result};
use tokio_postgres::Config;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db_url::{DbUrl, redact_url};
use crate::dialect::{Dialect, POSTGRES};
use crate::engine::{Answer, Connection, Engine, pool_size};
use crate::fault::{Fault, FaultKind};
use crate::migrate::migrate;
use crate::postgres_tls::TlsParams;
use crate::sql_db::SqlDb;
use crate::values::{Row, Value};

/// How long opening a connection may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free connection when all are busy.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata database in PostgreSQL.
///
/// Cloning shares the pool. Every instance connected to the same database
/// sees the same records, so several servers can share one.
pub type PostgresDb = SqlDb<Postgres>;

/// The PostgreSQL engine of [`PostgresDb`]: its pool.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    /// The URL with its password hidden, for messages.
    url: String,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDb")
            .field("url", &self.url)
            .field("max_conns", &self.pool.status().max_size)
            .finish()
    }
}

impl SqlDb<Postgres> {
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
            .max_size(pool_size(max_conns))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::backend(format!("database {shown}"), e))?;
        let error = |context: &str, f: Fault| f.into_error(context, Some(&shown));
        let engine = Postgres {
            pool,
            url: shown.clone(),
        };
        let mut client = engine.conn().await.map_err(|f| error("connecting", f))?;
        if let Err(f) = migrate(&mut client, &POSTGRES.migrations).await {
            // Closing it rolls its transaction back and frees the lock.
            drop(Object::take(client));
            return Err(error("migrating the database", f));
        }
        Ok(SqlDb::new(engine, Some(shown)))
    }
}

#[async_trait]
impl Engine for Postgres {
    type Conn = Object;
    const DIALECT: &'static Dialect = &POSTGRES;

    async fn conn(&self) -> Result<Object, Fault> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => fault(&e),
            PoolError::Timeout(_) | PoolError::Closed => {
                Fault::new(FaultKind::Unavailable, e.to_string())
            }
            e => Fault::new(FaultKind::Other, e.to_string()),
        })
    }

    fn discard(conn: Object) {
        // Taken out of the pool, it closes when dropped.
        drop(Object::take(conn));
    }
}

#[async_trait]
impl Connection for Object {
    async fn run(&mut self, sql: &str, params: &[Value]) -> Result<Answer, Fault> {
        let statement = self
            .prepare_cached(&numbered(sql))
            .await
            .map_err(|e| fault(&e))?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as _).collect();
        if statement.columns().is_empty() {
            let changed = self
                .execute(&statement, &params)
                .await
                .map_err(|e| fault(&e))?;
            return Ok(Answer {
                rows: Vec::new(),
                changed,
            });
        }
        let rows = self
            .query(&statement, &params)
            .await
            .map_err(|e| fault(&e))?;
        let rows = rows.iter().map(row).collect::<Result<_, _>>();
        Ok(Answer {
            rows: rows.map_err(|e| fault(&e))?,
            changed: 0,
        })
    }

    async fn run_script(&mut self, sql: &str) -> Result<(), Fault> {
        self.batch_execute(sql).await.map_err(|e| fault(&e))
    }
}

/// `sql` with its `?` placeholders numbered `$1`, `$2`, ... (none is
/// inside a quoted string or identifier).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut count = 0;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, '?') => {
                count += 1;
                out.push_str(&format!("${count}"));
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A row's values: integer columns as integers, anything else as text.
fn row(row: &tokio_postgres::Row) -> std::result::Result<Row, tokio_postgres::Error> {
    (0..row.len())
        .map(|i| {
            Ok(match *row.columns()[i].type_() {
                Type::INT8 => row.try_get::<_, Option<i64>>(i)?.into(),
                Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(i64::from).into(),
                Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(i64::from).into(),
                _ => row.try_get::<_, Option<String>>(i)?.into(),
            })
        })
        .collect()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(v), &Type::INT8) => v.to_sql(ty, out),
            (Value::Int(v), &Type::INT4) => i32::try_from(*v)?.to_sql(ty, out),
            (Value::Int(v), &Type::INT2) => i16::try_from(*v)?.to_sql(ty, out),
            (Value::Text(text), _) if <&str as ToSql>::accepts(ty) => text.as_str().to_sql(ty, out),
            (value, _) => Err(format!("{value:?} cannot be sent as {ty}").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked against the value in `to_sql`.
        true
    }

    to_sql_checked!();
}

/// Classifies a driver error.
fn fault(e: &tokio_postgres::Error) -> Fault {
    Fault::of_server(e, is_retryable(e), is_unavailable(e), describe(e))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::{Host, SslMode};

    #[test]
    fn numbers_placeholders_outside_quotes() {
        assert_eq!(
            numbered(r#"SELECT '?', "a?" FROM t WHERE a = ? AND b > ?"#),
            r#"SELECT '?', "a?" FROM t WHERE a = $1 AND b > $2"#
        );
    }

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
