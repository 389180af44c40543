//! Runs the metadata conformance suite and the concurrency case on
//! `SqliteDb`, and checks reopening.

#![cfg(feature = "sqlite")]

use std::sync::Arc;

use ncps_core::{MetadataDb, NarRecord};
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
    assert_eq!(before.len(), 1, "one migration recorded: {before:?}");

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
