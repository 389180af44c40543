//! A database written by the schema deployments have today (the migration
//! files as they were at commit bf66f00, applied with the driver itself and
//! recorded as the runner of that time recorded them) opens with this
//! code on each engine, is not migrated again, and every row reads back
//! unchanged through [`MetadataDb`]: narinfos, NARs and what storage holds
//! of them, pins, counters and config. Fails if a migration runs again (the
//! second one would mark every NAR as of unknown storage, the first would
//! not even run) or a column is read into the wrong field. PostgreSQL and
//! MySQL come from `NCPS_TEST_POSTGRES_URL` and `NCPS_TEST_MYSQL_URL`; see
//! `tests/common/mod.rs` for skipping.

mod common;

use ncps_core::{MetadataDb, NarInfoRecord, NarRecord, NarStorage, PinRecord};
use ncps_core::{StorageUsage, StoredNar};

/// A column value as inserted: text or an integer, either maybe NULL.
#[derive(Clone, Debug)]
enum Column {
    Text(Option<String>),
    Int(Option<i64>),
}

/// One row to insert: its table, its columns and their values.
struct Insert {
    table: &'static str,
    columns: &'static [&'static str],
    values: Vec<Column>,
}

/// The schema_migrations rows the runner of bf66f00 left: (version, applied_at).
const RECORDED: [(i64, i64); 2] = [(1, 100), (2, 200)];

fn text(value: &str) -> Column {
    Column::Text(Some(value.to_string()))
}

fn narinfos() -> Vec<NarInfoRecord> {
    vec![
        NarInfoRecord {
            hash: "0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc".to_string(),
            narinfo: "StorePath: /nix/store/0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc-hello-2.12\n\
                      URL: nar/1aaa.nar.xz\nCompression: xz\nSig: cache-1:ab+/cd==\n"
                .to_string(),
            nar_file: "1aaa.nar.xz".to_string(),
            created_at: 1_700_000_000,
            last_accessed_at: 1_800_000_000,
        },
        NarInfoRecord {
            hash: "1c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc".to_string(),
            narinfo: "StorePath: /nix/store/x-ünï 'single' \"double\" back\\slash 😀\n".to_string(),
            nar_file: "2bbb.nar".to_string(),
            created_at: 5,
            last_accessed_at: 6,
        },
    ]
}

/// NAR records with their `stored_size` column: in storage, absent, unknown.
fn nars() -> Vec<(NarRecord, Option<i64>, NarStorage)> {
    let url = |file: &str| Some(format!("https://cache.nixos.org/nar/{file}"));
    vec![
        (
            NarRecord {
                file: "1aaa.nar.xz".to_string(),
                compression: "xz".to_string(),
                file_hash: Some(
                    "sha256:0hjszid30ak3rkzvc3m94c3risg8wz2hayy100c1fg92bjvvvsms".into(),
                ),
                file_size: Some(5_000_000_000),
                nar_hash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
                nar_size: 9_000_000_000,
                upstream_url: url("1aaa.nar.xz"),
                last_accessed_at: 1_800_000_000,
            },
            Some(4_900_000_000),
            NarStorage::Stored(4_900_000_000),
        ),
        (
            NarRecord {
                file: "2bbb.nar".to_string(),
                compression: "none".to_string(),
                file_hash: None,
                file_size: None,
                nar_hash: "sha256:2".to_string(),
                nar_size: 1,
                upstream_url: None,
                last_accessed_at: 6,
            },
            None,
            NarStorage::Absent,
        ),
        (
            NarRecord {
                file: "3ccc.nar.zst".to_string(),
                compression: "zstd".to_string(),
                file_hash: Some("sha256:3".to_string()),
                file_size: Some(10),
                nar_hash: "sha256:3n".to_string(),
                nar_size: 20,
                upstream_url: url("3ccc.nar.zst"),
                last_accessed_at: 7,
            },
            Some(-1),
            NarStorage::Unknown,
        ),
    ]
}

fn pins() -> Vec<PinRecord> {
    vec![
        PinRecord {
            hash: "0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc".to_string(),
            created_at: 1_700_000_500,
        },
        PinRecord {
            hash: "9z3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc".to_string(),
            created_at: 3,
        },
    ]
}

fn counters() -> Vec<(String, i64)> {
    vec![
        ("hits".to_string(), 123_456_789_012),
        ("misses".to_string(), 0),
        ("weird".to_string(), -5),
    ]
}

fn config() -> Vec<(String, String)> {
    vec![
        (
            "Key 'quoted'".to_string(),
            "välue\nline 2 \\ \"x\"".to_string(),
        ),
        ("secret-key".to_string(), "cache-1:AAAA+/==".to_string()),
    ]
}

/// Every row above, as today's code stores it.
fn inserts() -> Vec<Insert> {
    let mut rows = Vec::new();
    for r in narinfos() {
        rows.push(Insert {
            table: "narinfos",
            columns: &[
                "hash",
                "narinfo",
                "nar_file",
                "created_at",
                "last_accessed_at",
            ],
            values: vec![
                text(&r.hash),
                text(&r.narinfo),
                text(&r.nar_file),
                Column::Int(Some(r.created_at)),
                Column::Int(Some(r.last_accessed_at)),
            ],
        });
    }
    for (r, stored_size, _) in nars() {
        let size = |s: u64| i64::try_from(s).expect("size");
        rows.push(Insert {
            table: "nars",
            columns: &[
                "file",
                "compression",
                "file_hash",
                "file_size",
                "nar_hash",
                "nar_size",
                "upstream_url",
                "last_accessed_at",
                "stored_size",
            ],
            values: vec![
                text(&r.file),
                text(&r.compression),
                Column::Text(r.file_hash.clone()),
                Column::Int(r.file_size.map(size)),
                text(&r.nar_hash),
                Column::Int(Some(size(r.nar_size))),
                Column::Text(r.upstream_url.clone()),
                Column::Int(Some(r.last_accessed_at)),
                Column::Int(stored_size),
            ],
        });
    }
    for p in pins() {
        let values = vec![text(&p.hash), Column::Int(Some(p.created_at))];
        let columns = &["hash", "created_at"];
        rows.push(Insert {
            table: "pins",
            columns,
            values,
        });
    }
    for (name, value) in counters() {
        let values = vec![text(&name), Column::Int(Some(value))];
        let columns = &["name", "value"];
        rows.push(Insert {
            table: "counters",
            columns,
            values,
        });
    }
    for (key, value) in config() {
        let values = vec![text(&key), text(&value)];
        let columns = &["key", "value"];
        rows.push(Insert {
            table: "config",
            columns,
            values,
        });
    }
    rows
}

/// `INSERT INTO` each row's table, columns quoted by `quote`, its `n`th
/// placeholder written by `placeholder`.
fn insert_sql(row: &Insert, quote: &str, placeholder: impl Fn(usize) -> String) -> String {
    let columns: Vec<String> = row
        .columns
        .iter()
        .map(|c| format!("{quote}{c}{quote}"))
        .collect();
    let placeholders: Vec<String> = (1..=row.columns.len()).map(placeholder).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        row.table,
        columns.join(", "),
        placeholders.join(", ")
    )
}

/// Checks that `db` reads back every row [`inserts`] wrote, unchanged.
async fn assert_reads_back(db: &dyn MetadataDb) {
    for record in narinfos() {
        let read = db.get_narinfo(&record.hash).await.expect("get_narinfo");
        assert_eq!(read, Some(record), "narinfo");
    }
    let listed = db.list_narinfos(None, 100).await.expect("list_narinfos");
    assert_eq!(listed, narinfos(), "list_narinfos");
    let mut in_storage = Vec::new();
    for (record, stored_size, storage) in nars() {
        let read = db.get_nar(&record.file).await.expect("get_nar");
        assert_eq!(read.as_ref(), Some(&record), "NAR");
        let read = db.get_nar_storage(&record.file).await.expect("storage");
        assert_eq!(read, Some(storage), "storage of {}", record.file);
        if let Some(size) = stored_size.and_then(|s| u64::try_from(s).ok()) {
            in_storage.push(StoredNar {
                file: record.file,
                size,
                last_accessed_at: record.last_accessed_at,
                upstream_url: record.upstream_url,
            });
        }
    }
    let listed = db.list_nars(None, 100).await.expect("list_nars");
    let expected: Vec<NarRecord> = nars().into_iter().map(|(r, _, _)| r).collect();
    assert_eq!(listed, expected, "list_nars");
    let lru = db.stored_nars_by_last_access(None, 100).await.expect("lru");
    assert_eq!(lru, in_storage, "stored_nars_by_last_access");
    let unknown = db.nars_of_unknown_storage(100).await.expect("unknown");
    assert_eq!(unknown, vec!["3ccc.nar.zst".to_string()]);
    assert_eq!(db.list_pins().await.expect("list_pins"), pins());
    assert_eq!(db.list_counters().await.expect("counters"), counters());
    assert_eq!(db.list_config().await.expect("list_config"), config());
    for (key, value) in config() {
        assert_eq!(db.get_config(&key).await.expect("get_config"), Some(value));
    }
    let usage = db.storage_usage().await.expect("storage_usage");
    let expected = StorageUsage {
        narinfos: 2,
        nar_records: 3,
        stored_nars: 1,
        stored_bytes: 4_900_000_000,
        unknown_nars: 1,
        pins: 2,
    };
    assert_eq!(usage, expected, "storage_usage");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_database_of_todays_schema_reads_back_unchanged() {
    use rusqlite::types::Value;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("today.sqlite");
    let recorded = |conn: &rusqlite::Connection| -> Vec<(i64, i64)> {
        let sql = "SELECT version, applied_at FROM schema_migrations ORDER BY version";
        let mut statement = conn.prepare(sql).expect("prepare");
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)));
        rows.expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    {
        let conn = rusqlite::Connection::open(&path).expect("open raw");
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER)",
        )
        .expect("schema_migrations");
        for (version, sql) in [
            (1, include_str!("../migrations/sqlite/0001_initial.sql")),
            (
                2,
                include_str!("../migrations/sqlite/0002_eviction_pins.sql"),
            ),
        ] {
            conn.execute_batch(sql).expect("migration");
            let at = RECORDED[version - 1].1;
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2)",
                [version as i64, at],
            )
            .expect("record");
        }
        for row in inserts() {
            let sql = insert_sql(&row, "", |n| format!("?{n}"));
            let values = row.values.iter().map(|v| match v {
                Column::Text(t) => t.clone().map_or(Value::Null, Value::Text),
                Column::Int(i) => i.map_or(Value::Null, Value::Integer),
            });
            conn.execute(&sql, rusqlite::params_from_iter(values))
                .expect("insert");
        }
    }
    let db = ncps_db::SqliteDb::open(&path).expect("open");
    assert_reads_back(&db).await;
    drop(db);
    let conn = rusqlite::Connection::open(&path).expect("open raw");
    assert_eq!(recorded(&conn), RECORDED.to_vec(), "migrations ran again");
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_database_of_todays_schema_reads_back_unchanged() {
    use tokio_postgres::types::ToSql;

    let test = "postgres_database_of_todays_schema_reads_back_unchanged";
    let Some((url, server)) = common::fresh_postgres(test).await else {
        return;
    };
    let client = common::postgres_client(&url).await;
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .expect("schema_migrations");
    for (version, sql) in [
        (1, include_str!("../migrations/postgres/0001_initial.sql")),
        (
            2,
            include_str!("../migrations/postgres/0002_eviction_pins.sql"),
        ),
    ] {
        client.batch_execute(sql).await.expect("migration");
        let (version, at) = RECORDED[version - 1];
        client
            .execute(
                "INSERT INTO schema_migrations VALUES ($1, $2)",
                &[&version, &at],
            )
            .await
            .expect("record");
    }
    for row in inserts() {
        let sql = insert_sql(&row, "", |n| format!("${n}"));
        let values: Vec<Box<dyn ToSql + Sync>> = row
            .values
            .iter()
            .map(|v| -> Box<dyn ToSql + Sync> {
                match v {
                    Column::Text(t) => Box::new(t.clone()),
                    Column::Int(i) => Box::new(*i),
                }
            })
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        client.execute(&sql, &params).await.expect("insert");
    }
    let db = ncps_db::PostgresDb::connect(&url, 2)
        .await
        .expect("connect");
    assert_reads_back(&db).await;
    drop(db);
    let recorded: Vec<(i64, i64)> = client
        .query(
            "SELECT version, applied_at FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("schema_migrations")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(recorded, RECORDED.to_vec(), "migrations ran again");
    drop(client);
    common::drop_postgres(&server, &url).await;
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_database_of_todays_schema_reads_back_unchanged() {
    use mysql_async::Value;
    use mysql_async::prelude::Queryable;

    let test = "mysql_database_of_todays_schema_reads_back_unchanged";
    let Some((url, server)) = common::fresh_mysql(test).await else {
        return;
    };
    let mut conn = common::mysql_conn(&url).await;
    conn.query_drop(
        "CREATE TABLE schema_migrations (version BIGINT NOT NULL PRIMARY KEY, \
         applied_at BIGINT NOT NULL) ENGINE = InnoDB",
    )
    .await
    .expect("schema_migrations");
    for (version, sql) in [
        (1, include_str!("../migrations/mysql/0001_initial.sql")),
        (
            2,
            include_str!("../migrations/mysql/0002_eviction_pins.sql"),
        ),
    ] {
        // bf66f00's runner: comment lines dropped, one statement per `;` ending a line.
        let kept: Vec<&str> = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        for statement in kept.join("\n").split(";\n") {
            if !statement.trim().is_empty() {
                conn.query_drop(statement.trim().trim_end_matches(';'))
                    .await
                    .expect("migration");
            }
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations VALUES (?, ?)",
            RECORDED[version - 1],
        )
        .await
        .expect("record");
    }
    for row in inserts() {
        let sql = insert_sql(&row, "`", |_| "?".to_string());
        let values: Vec<Value> = row
            .values
            .iter()
            .map(|v| match v {
                Column::Text(t) => t
                    .clone()
                    .map_or(Value::NULL, |t| Value::Bytes(t.into_bytes())),
                Column::Int(i) => i.map_or(Value::NULL, Value::Int),
            })
            .collect();
        conn.exec_drop(sql, values).await.expect("insert");
    }
    let db = ncps_db::MysqlDb::connect(&url, 2).await.expect("connect");
    assert_reads_back(&db).await;
    drop(db);
    let recorded: Vec<(i64, i64)> = conn
        .query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .await
        .expect("schema_migrations");
    assert_eq!(recorded, RECORDED.to_vec(), "migrations ran again");
    let _ = conn.disconnect().await;
    common::drop_mysql(&server, &url).await;
}

#[cfg(not(all(feature = "sqlite", feature = "postgres", feature = "mysql")))]
#[test]
fn databases_of_todays_schema_need_every_backend_feature() {
    common::skip(
        "existing_schema",
        "ncps-db was built without the `sqlite`, `postgres` and `mysql` features",
    );
}
