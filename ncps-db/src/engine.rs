//! What each SQL backend supplies to the one implementation of
//! [`ncps_core::MetadataDb`] ([`crate::SqlDb`]): an [`Engine`] hands out
//! connections (from a pool, or SQLite's one), and a [`Connection`] runs one
//! statement with [`Value`] parameters and answers rows, or runs a migration
//! file. Everything else (the SQL, retries, timeouts, row mapping,
//! migrations) is written once on top of these.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::dialect::Dialect;
use crate::fault::Fault;
use crate::values::{Row, Value};

/// What a statement answered.
#[derive(Debug, Default)]
pub struct Answer {
    /// The rows of a query (none for other statements).
    pub rows: Vec<Row>,
    /// How many rows an INSERT, UPDATE or DELETE changed.
    pub changed: u64,
}

/// One connection to the database.
#[async_trait]
pub trait Connection: Send {
    /// Runs one statement, its parameters written `?` in `sql`.
    async fn run(&mut self, sql: &str, params: &[Value]) -> Result<Answer, Fault>;
    /// Runs the statements of a migration file.
    async fn run_script(&mut self, sql: &str) -> Result<(), Fault>;
}

/// A SQL database backend: its connections and its SQL dialect.
#[async_trait]
pub trait Engine: Clone + Debug + Send + Sync + 'static {
    /// A connection as [`Engine::conn`] lends it; back to the pool when dropped.
    type Conn: Connection;
    /// Where this backend's SQL differs, and its migrations.
    const DIALECT: &'static Dialect;
    /// How long one statement may take, if limited. A server that stopped
    /// answering (a frozen host, a network dropping packets) keeps its
    /// connections open but never replies; without a limit a request would
    /// wait for it forever. Every statement here reads or writes a few rows
    /// by key, so one this slow means the database is unusable for a cache
    /// anyway.
    const STATEMENT_TIMEOUT: Option<Duration> = Some(Duration::from_secs(5));
    /// How many times a statement is tried when it fails with a
    /// [`crate::fault::FaultKind::Retryable`] fault (a deadlock).
    const ATTEMPTS: u32 = 5;

    /// A connection; a pool that has none free in time is unavailable.
    async fn conn(&self) -> Result<Self::Conn, Fault>;

    /// Drops a connection that did not answer in time, so that it never
    /// serves anyone again (its reply may still come). By default it is
    /// dropped, for drivers that never pool a connection left mid-command.
    fn discard(conn: Self::Conn) {
        drop(conn);
    }
}

/// Pool size when none is given (ncps's default for PostgreSQL and MySQL).
#[cfg(any(feature = "postgres", feature = "mysql"))]
const DEFAULT_MAX_CONNS: usize = 25;

/// The size of a server backend's pool: `max_conns`, or 25 for 0.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn pool_size(max_conns: usize) -> usize {
    if max_conns == 0 {
        DEFAULT_MAX_CONNS
    } else {
        max_conns
    }
}
