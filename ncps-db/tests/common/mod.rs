//! Helpers of the database tests: where the servers are, fresh databases
//! with unique names so runs never share state, and the checks every
//! backend's migration tests share.
//!
//! The servers come from environment variables (`.ci/services.sh` starts
//! throwaway ones and sets them). A missing variable skips the test with a
//! loud `SKIPPED:` line, or fails it when `NCPS_TEST_REQUIRE_ALL=1`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ncps_core::{Error, MetadataDb, NarRecord, NarStorage};

/// Whether missing services fail tests instead of skipping them.
pub fn require_all() -> bool {
    std::env::var("NCPS_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips (or, with `NCPS_TEST_REQUIRE_ALL=1`, fails) a test for `why`.
pub fn skip(test: &str, why: &str) {
    if require_all() {
        panic!("{test}: {why}, and NCPS_TEST_REQUIRE_ALL=1");
    }
    eprintln!("SKIPPED: {test}: {why}");
}

/// The value of environment variable `var`, or `None` after skipping `test`.
pub fn service(test: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            skip(
                test,
                &format!("{var} is not set (source .ci/services.sh to start the servers)"),
            );
            None
        }
    }
}

/// A database name no other test or run uses.
pub fn unique_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!(
        "ncps_test_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// `url` naming database `name` instead of its own.
pub fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("test database URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A new empty PostgreSQL database on the server `NCPS_TEST_POSTGRES_URL`
/// names (a superuser URL); its URL and the server's, or `None` after a skip.
#[cfg(feature = "postgres")]
pub async fn fresh_postgres(test: &str) -> Option<(String, String)> {
    let server = service(test, "NCPS_TEST_POSTGRES_URL")?;
    let name = unique_name();
    postgres_client(&server)
        .await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    Some((with_database(&server, &name), server))
}

/// A raw connection to the PostgreSQL database `url` names.
#[cfg(feature = "postgres")]
pub async fn postgres_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Drops the PostgreSQL database `url` names (best effort: the server is throwaway).
#[cfg(feature = "postgres")]
pub async fn drop_postgres(server: &str, url: &str) {
    let name = database_name(url);
    if let Ok((client, connection)) = tokio_postgres::connect(server, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// A new empty MySQL database on the server `NCPS_TEST_MYSQL_URL` names (a
/// user who may create databases); its URL and the server's, or `None` after
/// a skip.
#[cfg(feature = "mysql")]
pub async fn fresh_mysql(test: &str) -> Option<(String, String)> {
    use mysql_async::prelude::Queryable;
    let server = service(test, "NCPS_TEST_MYSQL_URL")?;
    let name = unique_name();
    let mut conn = mysql_conn(&server).await;
    conn.query_drop(format!(
        "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))
    .await
    .expect("CREATE DATABASE");
    let _ = conn.disconnect().await;
    Some((with_database(&server, &name), server))
}

/// A raw connection to the MySQL database `url` names.
#[cfg(feature = "mysql")]
pub async fn mysql_conn(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::from_url(url)
        .await
        .expect("connecting to the test MySQL")
}

/// Drops the MySQL database `url` names (best effort: the server is throwaway).
#[cfg(feature = "mysql")]
pub async fn drop_mysql(server: &str, url: &str) {
    use mysql_async::prelude::Queryable;
    let name = database_name(url);
    if let Ok(mut conn) = mysql_async::Conn::from_url(server).await {
        let _ = conn
            .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
            .await;
        let _ = conn.disconnect().await;
    }
}

/// The database name in `url`'s path.
pub fn database_name(url: &str) -> String {
    let parsed = url::Url::parse(url).expect("test database URL");
    parsed.path().trim_start_matches('/').to_string()
}

/// Checks a database migrated from one left by a build with only migration
/// 1, holding the NAR `old.nar.xz`: `versions` (the recorded migrations)
/// are both, the NAR is marked as not known to be in storage, and the pins
/// of migration 2 work.
pub async fn assert_migrated_from_v1(db: &dyn MetadataDb, versions: Vec<i64>) {
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(
        db.get_nar_storage("old.nar.xz")
            .await
            .expect("get_nar_storage"),
        Some(NarStorage::Unknown)
    );
    assert!(
        db.add_pin("0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc", 4)
            .await
            .expect("add_pin")
    );
}

/// Checks that a second connection made by `connect` finds the NAR record
/// the first one wrote, and that `migrations` (the recorded migrations,
/// with their times) are the same after it: nothing was migrated again.
pub async fn assert_reconnecting_keeps_data<D: MetadataDb>(
    connect: impl AsyncFn() -> D,
    migrations: impl AsyncFn() -> Vec<(i64, i64)>,
) {
    let record = NarRecord {
        file: "abc.nar.zst".to_string(),
        compression: "zstd".to_string(),
        file_hash: None,
        file_size: Some(42),
        nar_hash: "sha256:xyz".to_string(),
        nar_size: 100,
        upstream_url: None,
        last_accessed_at: 7,
    };
    connect().await.put_nar(&record).await.expect("put_nar");
    let before = migrations().await;
    let db = connect().await;
    assert_eq!(
        db.get_nar("abc.nar.zst").await.expect("get_nar"),
        Some(record)
    );
    assert_eq!(migrations().await, before, "migrations re-run");
}

/// Checks the error of connecting to a server that is down with the
/// password `hunter2`: unavailable (retry later), naming the URL as `shown`,
/// its password hidden.
pub fn assert_down_hiding_the_password(e: Error, shown: &str) {
    let message = e.to_string();
    assert!(matches!(e, Error::Unavailable(_)), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains(shown), "{message}");
}
