//! `ncps-cli migrate` and `ncps-cli db copy`: SQLite always; a copy from
//! SQLite through PostgreSQL and MySQL back to SQLite when the servers of
//! `NCPS_TEST_POSTGRES_URL` and `NCPS_TEST_MYSQL_URL` are there (a missing
//! one skips loudly, or fails with `NCPS_TEST_REQUIRE_ALL=1`).

use ncps_core::testkit::service as shared_service;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;
use ncps_core::{MetadataDb, NarInfoRecord, NarRecord};
use ncps_db::SqliteDb;

const CLI: &str = env!("CARGO_BIN_EXE_ncps-cli");

fn cli(args: &[&str]) -> Output {
    Command::new(CLI)
        .env_remove("CACHE_DATABASE_URL")
        .args(args)
        .output()
        .expect("run ncps-cli")
}

fn assert_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `server` naming a new empty database instead of its own.
fn with_new_database(server: &str) -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    let name = format!("ncps_cli_{}_{nanos}", std::process::id());
    let mut url = url::Url::parse(server).expect("test database URL");
    url.set_path(&format!("/{name}"));
    (name, url.to_string())
}

/// Everything a database holds, in key order.
async fn contents(
    db: &dyn MetadataDb,
) -> (Vec<NarInfoRecord>, Vec<NarRecord>, Vec<(String, String)>) {
    (
        db.list_narinfos(None, usize::MAX)
            .await
            .expect("list_narinfos"),
        db.list_nars(None, usize::MAX).await.expect("list_nars"),
        db.list_config().await.expect("list_config"),
    )
}

/// A SQLite database at `path` with a few records and a signing key.
async fn fill(path: &std::path::Path) {
    let db = SqliteDb::open(path).expect("open");
    for i in 0..12 {
        let hash = format!("{i:032}");
        db.put_narinfo(&NarInfoRecord {
            hash: hash.clone(),
            narinfo: format!("StorePath: /nix/store/{hash}-cli\n"),
            nar_file: format!("{hash}.nar"),
            created_at: i,
            last_accessed_at: i,
        })
        .await
        .expect("put_narinfo");
        db.put_nar(&NarRecord {
            file: format!("{hash}.nar"),
            compression: "none".to_string(),
            file_hash: None,
            file_size: Some(i as u64),
            nar_hash: format!("sha256:{i}"),
            nar_size: i as u64,
            upstream_url: None,
            last_accessed_at: i,
        })
        .await
        .expect("put_nar");
    }
    db.set_config_if_absent("secret-key", "cli-test-1:secret")
        .await
        .expect("set_config_if_absent");
}

#[tokio::test]
async fn migrate_and_copy_between_sqlite_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.sqlite"), dir.path().join("b/b.sqlite"));
    fill(&a).await;
    let b_url = format!("sqlite:{}", b.display());
    let out = assert_ok(&cli(&["migrate", "--database-url", &b_url]));
    assert!(out.contains("schema is current"), "{out}");

    let a_url = format!("sqlite:{}", a.display());
    let out = assert_ok(&cli(&[
        "db",
        "copy",
        "--from",
        &a_url,
        "--to",
        &b_url,
        "--batch-size",
        "5",
    ]));
    assert!(
        out.contains("copied 12 narinfos, 12 NAR records and 1 config values"),
        "{out}"
    );
    let (a, b) = (
        SqliteDb::open(&a).expect("a"),
        SqliteDb::open(&b).expect("b"),
    );
    assert_eq!(contents(&b).await, contents(&a).await);
}

#[test]
fn unreachable_database_fails_without_showing_the_password() {
    for url in [
        "postgres://ncps:hunter2@127.0.0.1:1/ncps",
        "mysql://ncps:hunter2@127.0.0.1:1/ncps",
    ] {
        let output = cli(&["migrate", "--database-url", url]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}: {stderr}");
        assert!(stderr.contains("unavailable"), "{url}: {stderr}");
        assert!(stderr.contains("ncps:***@127.0.0.1:1"), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
    }
}

#[tokio::test]
async fn copy_from_sqlite_through_postgres_and_mysql_and_back() {
    let test = "copy_from_sqlite_through_postgres_and_mysql_and_back";
    let Some(pg_server) = service(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    let Some(my_server) = service(test, "NCPS_TEST_MYSQL_URL") else {
        return;
    };
    let (pg_name, pg_url) = with_new_database(&pg_server);
    let (client, connection) = tokio_postgres::connect(&pg_server, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test PostgreSQL");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {pg_name}"))
        .await
        .expect("CREATE DATABASE");
    let (my_name, my_url) = with_new_database(&my_server);
    let mut conn = mysql_async::Conn::from_url(&my_server)
        .await
        .expect("connecting to the test MySQL");
    conn.query_drop(format!("CREATE DATABASE {my_name}"))
        .await
        .expect("CREATE DATABASE");

    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.sqlite"), dir.path().join("b.sqlite"));
    fill(&a).await;
    let (a_url, b_url) = (
        format!("sqlite:{}", a.display()),
        format!("sqlite:{}", b.display()),
    );
    assert_ok(&cli(&["migrate", "--database-url", &pg_url]));
    for (from, to) in [(&a_url, &pg_url), (&pg_url, &my_url), (&my_url, &b_url)] {
        let out = assert_ok(&cli(&["db", "copy", "--from", from, "--to", to]));
        assert!(out.contains("copied 12 narinfos"), "{from} -> {to}: {out}");
    }
    let (a, b) = (
        SqliteDb::open(&a).expect("a"),
        SqliteDb::open(&b).expect("b"),
    );
    assert_eq!(contents(&b).await, contents(&a).await);

    let _ = client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"))
        .await;
    let _ = conn
        .query_drop(format!("DROP DATABASE IF EXISTS {my_name}"))
        .await;
    let _ = conn.disconnect().await;
}

/// The service in `var`, or `None` after a loud skip.
fn service(test: &str, var: &str) -> Option<String> {
    shared_service(test, var, "source .ci/services.sh")
}
