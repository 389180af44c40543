//! The schema migrations runner, once for every backend: versioned plain-SQL
//! files per dialect (`migrations/<dialect>/`), each applied once and
//! recorded in `schema_migrations`, under the dialect's lock so that
//! instances starting together migrate one after the other (SQLite's
//! `BEGIN IMMEDIATE`, PostgreSQL's advisory lock in one transaction,
//! MySQL's `GET_LOCK`). A failed run leaves its connection to be closed,
//! which rolls back what the dialect can roll back and frees its lock.

use crate::engine::Connection;
use crate::fault::{Fault, FaultKind};
use crate::values::{Value, unix_now};

/// The migration files of a dialect (its directory under `migrations/`),
/// as (version, SQL) in order. A new migration is one file per dialect and
/// one line here.
macro_rules! migration_files {
    ($dialect:literal) => {
        &[
            (
                1,
                include_str!(concat!("../migrations/", $dialect, "/0001_initial.sql")),
            ),
            (
                2,
                include_str!(concat!(
                    "../migrations/",
                    $dialect,
                    "/0002_eviction_pins.sql"
                )),
            ),
        ]
    };
}
pub(crate) use migration_files;

/// A dialect's migrations and how they are locked.
#[derive(Clone, Copy, Debug)]
pub struct Migrations {
    /// (version, SQL) of each migration file, in order.
    pub files: &'static [(i64, &'static str)],
    /// What follows `CREATE TABLE schema_migrations (...)`.
    pub table_options: &'static str,
    /// Statements run first, taking the lock (and opening the transaction,
    /// where there is one). Each answers no row, or a row whose first value
    /// is 1 when the lock was granted.
    pub lock: &'static [&'static str],
    /// Statements run last: commit, release the lock.
    pub unlock: &'static [&'static str],
}

/// The table recording the migrations applied.
const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT NOT NULL PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// Applies the migrations of `migrations` not yet recorded, on `conn`.
pub(crate) async fn migrate<C: Connection + ?Sized>(
    conn: &mut C,
    migrations: &Migrations,
) -> Result<(), Fault> {
    for sql in migrations.lock {
        let answer = conn.run(sql, &[]).await?;
        let granted = match answer.rows.first().and_then(|row| row.first()) {
            None => true,
            Some(value) => *value == Value::Int(1),
        };
        if !granted {
            return Err(Fault::new(
                FaultKind::Other,
                format!("another instance held the migration lock too long ({sql})"),
            ));
        }
    }
    let create = format!("{CREATE_TABLE}{}", migrations.table_options);
    conn.run_script(&create).await?;
    for &(version, sql) in migrations.files {
        let recorded = conn
            .run(
                "SELECT version FROM schema_migrations WHERE version = ?",
                &[Value::Int(version)],
            )
            .await?;
        if !recorded.rows.is_empty() {
            continue;
        }
        tracing::info!(version, "applying database migration");
        conn.run_script(sql).await?;
        conn.run(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            &[Value::Int(version), Value::Int(unix_now())],
        )
        .await?;
    }
    for sql in migrations.unlock {
        conn.run(sql, &[]).await?;
    }
    Ok(())
}
