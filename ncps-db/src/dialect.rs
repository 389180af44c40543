//! Where the SQL of the backends truly differs, side by side: each
//! backend's [`Dialect`] ([`SQLITE`], [`POSTGRES`], [`MYSQL`]) says how an
//! insert meets an existing key (`ON CONFLICT` or MySQL's `ON DUPLICATE
//! KEY`), the name of a signed 64-bit cast, how a batch of access times is
//! written, and how its migrations are locked. The statements built from
//! these live in `queries.rs`.
//!
//! Statements are written with `?` placeholders; identifiers that are
//! keywords somewhere (`"key"`, `"value"`) are double-quoted, which MySQL
//! reads as identifiers too since its sessions run with `ANSI_QUOTES`.

use crate::migrate::{Migrations, migration_files};
use crate::values::Value;

/// A statement built at run time, with its parameters.
pub type Statement = (String, Vec<Value>);

/// How a backend's SQL differs from the others'.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    /// How an insert handles a row whose key exists.
    pub conflict: Conflict,
    /// The type a value is cast to as a signed 64-bit integer.
    pub bigint: &'static str,
    /// How a batch of access times is written.
    pub access: AccessBatch,
    /// The schema migrations and how they are locked.
    pub migrations: Migrations,
}

/// SQLite: one connection per process, so the lock is the database file's.
#[cfg(feature = "sqlite")]
pub const SQLITE: Dialect = Dialect {
    conflict: Conflict::OnConflict,
    bigint: "BIGINT",
    access: AccessBatch::Case {
        greatest: "MAX",
        chunk: 500,
    },
    migrations: Migrations {
        files: migration_files!("sqlite"),
        table_options: "",
        // A second process opening the same file at the same time waits
        // here (for the busy timeout), then sees the versions recorded.
        lock: &["BEGIN IMMEDIATE"],
        unlock: &["COMMIT"],
    },
};

/// PostgreSQL: its DDL is transactional, so all migrations run in one
/// transaction, and a failed one leaves nothing behind; a second instance
/// starting at the same time waits for the advisory lock ("ncpsmigr" in
/// ASCII), then finds everything applied.
#[cfg(feature = "postgres")]
pub const POSTGRES: Dialect = Dialect {
    conflict: Conflict::OnConflict,
    bigint: "BIGINT",
    access: AccessBatch::Unnest { chunk: 5000 },
    migrations: Migrations {
        files: migration_files!("postgres"),
        table_options: "",
        lock: &[
            "BEGIN",
            "SELECT 1 FROM pg_advisory_xact_lock(7954325007925602162)",
        ],
        unlock: &["COMMIT"],
    },
};

/// MySQL and MariaDB: each DDL statement commits at once, so a migration
/// that fails midway can leave part of it applied (each file is kept
/// small); instances starting together wait up to 120 s for a named lock
/// per database.
#[cfg(feature = "mysql")]
pub const MYSQL: Dialect = Dialect {
    conflict: Conflict::OnDuplicateKey,
    bigint: "SIGNED",
    access: AccessBatch::Case {
        greatest: "GREATEST",
        chunk: 500,
    },
    migrations: Migrations {
        files: migration_files!("mysql"),
        table_options: " ENGINE = InnoDB",
        lock: &["SELECT GET_LOCK(CONCAT('ncps-migrate-', SHA1(DATABASE())), 120)"],
        unlock: &["SELECT RELEASE_LOCK(CONCAT('ncps-migrate-', SHA1(DATABASE())))"],
    },
};

/// How a batch of access times (key, time) is written: never moving a time
/// back, skipping records that do not exist. Each key appears once in a
/// batch.
#[derive(Clone, Copy, Debug)]
pub enum AccessBatch {
    /// One UPDATE choosing each key's time by `CASE`, the later of it and
    /// the stored one by `greatest` (`GREATEST`, or SQLite's two-argument
    /// `MAX`), for up to `chunk` keys.
    Case {
        /// The function of two values answering the larger.
        greatest: &'static str,
        /// Most keys in one statement.
        chunk: usize,
    },
    /// One UPDATE joining the keys and times, each passed as one array
    /// literal (PostgreSQL's `UNNEST`), so the statement's text is the same
    /// for every batch, for up to `chunk` keys.
    Unnest {
        /// Most keys in one statement.
        chunk: usize,
    },
}

impl AccessBatch {
    /// Most keys in one statement.
    pub fn chunk(self) -> usize {
        match self {
            AccessBatch::Case { chunk, .. } | AccessBatch::Unnest { chunk } => chunk.max(1),
        }
    }

    /// The statement recording `chunk` on `table`, keyed by column `key`.
    pub fn statement(self, table: &str, key: &str, chunk: &[(&str, i64)]) -> Statement {
        match self {
            AccessBatch::Case { greatest, .. } => case_statement(greatest, table, key, chunk),
            AccessBatch::Unnest { .. } => unnest_statement(table, key, chunk),
        }
    }
}

/// How an insert handles a row whose key exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// `ON CONFLICT (key) DO ...`, new values as `excluded.column`.
    OnConflict,
    /// `ON DUPLICATE KEY UPDATE ...`, new values as `VALUES(column)`.
    OnDuplicateKey,
}

impl Conflict {
    /// `INSERT INTO table (columns) VALUES (?, ...)`, replacing the other
    /// columns of a row with the same `key` (the first column).
    pub fn upsert(self, table: &str, columns: &[&str]) -> String {
        let (key, rest) = columns
            .split_first()
            .map_or(("", &[][..]), |(k, r)| (*k, r));
        let set: Vec<String> = rest
            .iter()
            .map(|c| format!("{c} = {}", self.new_value(c)))
            .collect();
        format!(
            "{} {}",
            insert(table, columns, 1),
            self.update(key, &set.join(", "))
        )
    }

    /// `INSERT INTO table (columns) VALUES (?, ...)` that changes nothing
    /// (and counts no row changed) when a row with the same `key` (the
    /// first column) exists.
    pub fn insert_if_absent(self, table: &str, columns: &[&str]) -> String {
        let key = columns.first().copied().unwrap_or("");
        let ignore = match self {
            Conflict::OnConflict => format!("ON CONFLICT ({key}) DO NOTHING"),
            // Not INSERT IGNORE, which would also hide errors such as a value
            // too long. Setting a row to what it holds counts as no change.
            Conflict::OnDuplicateKey => format!("ON DUPLICATE KEY UPDATE {key} = {key}"),
        };
        format!("{} {ignore}", insert(table, columns, 1))
    }

    /// `INSERT INTO table (key, column) VALUES (?, ?), ...` of `rows` rows,
    /// adding each value to the one of a row with the same key.
    pub fn add_to(self, table: &str, key: &str, column: &str, rows: usize) -> String {
        let set = format!("{column} = {table}.{column} + {}", self.new_value(column));
        format!(
            "{} {}",
            insert(table, &[key, column], rows),
            self.update(key, &set)
        )
    }

    /// The clause that updates a row whose `key` exists with `set`.
    fn update(self, key: &str, set: &str) -> String {
        match self {
            Conflict::OnConflict => format!("ON CONFLICT ({key}) DO UPDATE SET {set}"),
            Conflict::OnDuplicateKey => format!("ON DUPLICATE KEY UPDATE {set}"),
        }
    }

    /// The value the insert would have put in `column`.
    fn new_value(self, column: &str) -> String {
        match self {
            Conflict::OnConflict => format!("excluded.{column}"),
            Conflict::OnDuplicateKey => format!("VALUES({column})"),
        }
    }
}

/// `INSERT INTO table (columns) VALUES (?, ...), ...` of `rows` rows.
fn insert(table: &str, columns: &[&str], rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        vec![row; rows].join(", ")
    )
}

/// [`AccessBatch::Case`]'s statement.
fn case_statement(greatest: &str, table: &str, key: &str, chunk: &[(&str, i64)]) -> Statement {
    let cases = " WHEN ? THEN ?".repeat(chunk.len());
    let keys = vec!["?"; chunk.len()].join(", ");
    let sql = format!(
        "UPDATE {table} SET last_accessed_at =
         {greatest}(last_accessed_at, CASE {key}{cases} END)
         WHERE {key} IN ({keys})"
    );
    let mut params = Vec::with_capacity(chunk.len() * 3);
    for (k, at) in chunk {
        params.push(Value::from(*k));
        params.push(Value::Int(*at));
    }
    params.extend(chunk.iter().map(|(k, _)| Value::from(*k)));
    (sql, params)
}

/// [`AccessBatch::Unnest`]'s statement: the keys as a `TEXT[]` literal
/// (each quoted, `\` and `"` escaped), the times as a `BIGINT[]` one.
fn unnest_statement(table: &str, key: &str, chunk: &[(&str, i64)]) -> Statement {
    let quoted: Vec<String> = chunk
        .iter()
        .map(|(k, _)| format!("\"{}\"", k.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let ats: Vec<String> = chunk.iter().map(|(_, at)| at.to_string()).collect();
    let sql = format!(
        "UPDATE {table} AS t SET last_accessed_at = GREATEST(t.last_accessed_at, v.at)
         FROM UNNEST(?::TEXT::TEXT[], ?::TEXT::BIGINT[]) AS v({key}, at)
         WHERE t.{key} = v.{key}"
    );
    let params = vec![
        Value::Text(format!("{{{}}}", quoted.join(","))),
        Value::Text(format!("{{{}}}", ats.join(","))),
    ];
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_upserts_for_both_conflict_styles() {
        assert_eq!(
            Conflict::OnConflict.upsert("t", &["k", "a", "b"]),
            "INSERT INTO t (k, a, b) VALUES (?, ?, ?) \
             ON CONFLICT (k) DO UPDATE SET a = excluded.a, b = excluded.b"
        );
        assert_eq!(
            Conflict::OnDuplicateKey.upsert("t", &["k", "a"]),
            "INSERT INTO t (k, a) VALUES (?, ?) ON DUPLICATE KEY UPDATE a = VALUES(a)"
        );
        assert_eq!(
            Conflict::OnDuplicateKey.insert_if_absent("t", &["k", "a"]),
            "INSERT INTO t (k, a) VALUES (?, ?) ON DUPLICATE KEY UPDATE k = k"
        );
        assert_eq!(
            Conflict::OnConflict.add_to("c", "n", "v", 2),
            "INSERT INTO c (n, v) VALUES (?, ?), (?, ?) \
             ON CONFLICT (n) DO UPDATE SET v = c.v + excluded.v"
        );
    }

    #[test]
    fn passes_unnest_keys_as_array_literals() {
        let (_, params) = unnest_statement("t", "k", &[("a\"b", 1), ("c\\d", 2)]);
        assert_eq!(
            params,
            vec![
                Value::Text(r#"{"a\"b","c\\d"}"#.to_string()),
                Value::Text("{1,2}".to_string()),
            ]
        );
    }
}
