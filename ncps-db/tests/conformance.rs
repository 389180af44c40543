//! Runs the metadata conformance suite and the concurrency case on
//! `SqliteDb`, and checks reopening.

#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;

use ncps_core::{MetadataDb, NarRecord, NarStorage};
use ncps_db::SqliteDb;

#[tokio::test]
async fn sqlite_file_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = SqliteDb::open(dir.path().join("nested/dir/db.sqlite")).expect("open");
    ncps_core::testkit::metadata_conformance(&db).await;
}

#[tokio::test]
async fn sqlite_memory_conforms() {
    let db = SqliteDb::open_url(":memory:").expect("open_url");
    ncps_core::testkit::metadata_conformance(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_connections_under_concurrency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.sqlite");
    let a = SqliteDb::open(&path).expect("open a");
    let b = SqliteDb::open(&path).expect("open b");
    ncps_core::testkit::metadata_concurrency(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn sqlite_url_opens_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("url.sqlite");
    let url = format!("sqlite://{}", path.display());
    let db = SqliteDb::open_url(&url).expect("open_url");
    db.ping().await.expect("ping");
    assert!(path.is_file(), "sqlite:///abs did not create {path:?}");
}

/// The recorded migrations: (version, applied_at).
fn migrations(path: &std::path::Path) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open(path).expect("open raw");
    let mut stmt = conn
        .prepare("SELECT version, applied_at FROM schema_migrations ORDER BY version")
        .expect("prepare");
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_rerun_migrations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.sqlite");
    let record = NarRecord {
        file: "abc.nar.zst".to_string(),
        compression: "zstd".to_string(),
        file_hash: None,
        file_size: Some(42),
        nar_hash: "sha256:xyz".to_string(),
        nar_size: 100,
        upstream_url: Some("https://cache.nixos.org/nar/abc.nar.zst".to_string()),
        last_accessed_at: 7,
    };
    {
        let db = SqliteDb::open(&path).expect("first open");
        db.put_nar(&record).await.expect("put_nar");
        db.set_config_if_absent("key", "v1")
            .await
            .expect("set_config_if_absent");
    }
    let before = migrations(&path);
    assert_eq!(
        before.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![1, 2],
        "each migration recorded once: {before:?}"
    );

    let db = SqliteDb::open(&path).expect("second open");
    assert_eq!(
        db.get_nar("abc.nar.zst").await.expect("get_nar"),
        Some(record)
    );
    assert_eq!(
        db.get_config("key").await.expect("get_config"),
        Some("v1".to_string())
    );
    drop(db);
    assert_eq!(migrations(&path), before, "migrations re-run on reopen");
}

/// A database left by a build with only migration 1 moves to the current
/// schema with its records kept, its NARs marked as not known to be in
/// storage (so the server looks), and pins working.
#[tokio::test]
async fn migrating_from_v1_keeps_records_and_marks_their_storage_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).expect("open raw");
        conn.execute_batch(include_str!("../migrations/sqlite/0001_initial.sql"))
            .expect("v1 schema");
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER);
             INSERT INTO schema_migrations VALUES (1, 1);
             INSERT INTO nars VALUES ('old.nar.xz', 'xz', NULL, 5, 'sha256:x', 9, NULL, 3);
             INSERT INTO narinfos VALUES ('0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc', 'StorePath: x', 'old.nar.xz', 1, 2);",
        )
        .expect("v1 rows");
    }
    let db = SqliteDb::open(&path).expect("migrating open");
    let versions = migrations(&path).iter().map(|(v, _)| *v).collect();
    common::assert_migrated_from_v1(&db, versions).await;
    assert_eq!(
        db.get_narinfo("0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc")
            .await
            .expect("get_narinfo")
            .map(|r| r.nar_file),
        Some("old.nar.xz".to_string())
    );
    // A record written after the migration is not in storage until stored.
    db.put_nar(&NarRecord {
        file: "new.nar".to_string(),
        compression: "none".to_string(),
        file_hash: None,
        file_size: None,
        nar_hash: "sha256:y".to_string(),
        nar_size: 1,
        upstream_url: None,
        last_accessed_at: 5,
    })
    .await
    .expect("put_nar");
    assert_eq!(
        db.get_nar_storage("new.nar")
            .await
            .expect("get_nar_storage"),
        Some(NarStorage::Absent)
    );
}
