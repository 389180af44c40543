//! [`SqliteDb`]: the metadata database in a SQLite file. This file owns
//! what is SQLite's own: opening the file (or memory) and its pragmas, its
//! URLs, running a statement with rusqlite on Tokio's blocking threads,
//! its values and rows, and which errors mean "busy". Its SQL dialect and
//! migration locking are [`crate::dialect::SQLITE`].

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use ncps_core::{Error, Result};
use rusqlite::ErrorCode;
use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::dialect::{Dialect, SQLITE};
use crate::engine::{Answer, Connection, Engine};
use crate::fault::{Fault, FaultKind};
use crate::migrate::migrate;
use crate::sql_db::SqlDb;
use crate::values::{Row, Value};

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The metadata database in SQLite.
///
/// One connection serves all calls, one at a time, on Tokio's blocking
/// threads. Cloning shares the connection.
pub type SqliteDb = SqlDb<Sqlite>;

/// The SQLite engine of [`SqliteDb`]: its one connection.
#[derive(Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<rusqlite::Connection>>,
    /// The file, or `None` in memory.
    path: Option<PathBuf>,
}

impl fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.path)
            .finish()
    }
}

impl SqlDb<Sqlite> {
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
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| Error::backend(format!("opening database {}", path.display()), e))?;
        Self::setup(conn, Some(path.to_path_buf()))
    }

    /// Opens a fresh database in memory, gone when the last clone is dropped.
    pub fn open_in_memory() -> Result<Self> {
        let conn = rusqlite::Connection::open_in_memory()
            .map_err(|e| Error::backend("opening an in-memory database", e))?;
        Self::setup(conn, None)
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
    fn setup(mut conn: rusqlite::Connection, path: Option<PathBuf>) -> Result<Self> {
        configure(&conn).map_err(|e| Error::backend("configuring the database", e))?;
        // The shared runner is async, but on this connection every statement
        // runs synchronously (SQLite waits only inside one, for its busy
        // timeout), so the migration is done when first polled.
        let polled = pin!(migrate(&mut conn, &SQLITE.migrations))
            .poll(&mut Context::from_waker(Waker::noop()));
        match polled {
            Poll::Ready(done) => done.map_err(|f| f.into_error("migrating the database", None))?,
            Poll::Pending => return Err(Error::backend("migrating the database", "not finished")),
        }
        let engine = Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            path,
        };
        Ok(SqlDb::new(engine, None))
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
fn configure(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
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

#[async_trait]
impl Engine for Sqlite {
    type Conn = SharedConn;
    const DIALECT: &'static Dialect = &SQLITE;
    // The busy timeout bounds how long a statement waits for a lock, and
    // busy is not retried at once.
    const STATEMENT_TIMEOUT: Option<Duration> = None;
    const ATTEMPTS: u32 = 1;

    async fn conn(&self) -> Result<SharedConn, Fault> {
        Ok(SharedConn(Arc::clone(&self.conn)))
    }
}

/// The one connection, as each call borrows it.
pub struct SharedConn(Arc<Mutex<rusqlite::Connection>>);

#[async_trait]
impl Connection for SharedConn {
    async fn run(&mut self, sql: &str, params: &[Value]) -> Result<Answer, Fault> {
        let conn = Arc::clone(&self.0);
        let (sql, params) = (sql.to_string(), params.to_vec());
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| Fault::new(FaultKind::Other, "database connection mutex poisoned"))?;
            run(&conn, &sql, &params)
        })
        .await
        .map_err(|e| Fault::new(FaultKind::Other, e.to_string()))?
    }

    async fn run_script(&mut self, _sql: &str) -> Result<(), Fault> {
        Err(Fault::new(
            FaultKind::Other,
            "scripts run only while opening",
        ))
    }
}

/// The connection itself, as the migrations use it while opening.
#[async_trait]
impl Connection for rusqlite::Connection {
    async fn run(&mut self, sql: &str, params: &[Value]) -> Result<Answer, Fault> {
        run(self, sql, params)
    }

    async fn run_script(&mut self, sql: &str) -> Result<(), Fault> {
        self.execute_batch(sql).map_err(fault)
    }
}

/// Runs one statement: a query answers its rows, anything else how many
/// rows it changed.
fn run(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Answer, Fault> {
    let mut statement = conn.prepare_cached(sql).map_err(fault)?;
    let params = rusqlite::params_from_iter(params);
    let columns = statement.column_count();
    if columns == 0 {
        let changed = statement.execute(params).map_err(fault)?;
        return Ok(Answer {
            rows: Vec::new(),
            changed: changed as u64,
        });
    }
    let mut rows = statement.query(params).map_err(fault)?;
    let mut answer = Answer::default();
    while let Some(row) = rows.next().map_err(fault)? {
        let row: Row = (0..columns)
            .map(|i| value(row.get_ref(i).map_err(fault)?))
            .collect::<Result<_, Fault>>()?;
        answer.rows.push(row);
    }
    Ok(answer)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(value) => ToSqlOutput::Borrowed(ValueRef::Integer(*value)),
            Value::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        })
    }
}

/// A column's value; the schema has no real or blob columns.
fn value(column: ValueRef<'_>) -> Result<Value, Fault> {
    match column {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Integer(value) => Ok(Value::Int(value)),
        ValueRef::Text(text) => String::from_utf8(text.to_vec())
            .map(Value::Text)
            .map_err(|e| Fault::new(FaultKind::Other, format!("text column: {e}"))),
        other => Err(Fault::new(
            FaultKind::Other,
            format!("unexpected column type {}", other.data_type()),
        )),
    }
}

/// Classifies a SQLite error: busy or locked means retry later.
fn fault(e: rusqlite::Error) -> Fault {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => FaultKind::Unavailable,
        _ => FaultKind::Other,
    };
    Fault::new(kind, e.to_string())
}

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
