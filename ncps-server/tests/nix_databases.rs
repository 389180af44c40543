//! Real Nix through `ncps-server` with PostgreSQL and with MariaDB as the
//! metadata database, and a cache moved from SQLite to PostgreSQL and MySQL
//! with `ncps_db::copy` (what `ncps-cli db copy` runs) that then serves the
//! same closure with its upstream gone.
//!
//! Needs Nix and the servers of `NCPS_TEST_POSTGRES_URL` /
//! `NCPS_TEST_MYSQL_URL` (see `.ci/services.sh`); a missing one skips
//! loudly, or fails with `NCPS_TEST_REQUIRE_ALL=1`.

mod common;

use ncps_core::testkit::service as shared_service;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use mysql_async::prelude::Queryable;

/// `server` naming a new database name instead of its own: (name, URL).
fn new_database(server: &str) -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    let name = format!("ncps_nix_{}_{nanos}", std::process::id());
    let mut url = url::Url::parse(server).expect("test database URL");
    url.set_path(&format!("/{name}"));
    (name, url.to_string())
}

/// A fresh database on the PostgreSQL server `server`; its URL.
async fn fresh_postgres(server: &str) -> String {
    let (name, url) = new_database(server);
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test PostgreSQL");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    url
}

/// A fresh database on the MySQL server `server`; its URL.
async fn fresh_mysql(server: &str) -> String {
    let (name, url) = new_database(server);
    let mut conn = mysql_async::Conn::from_url(server)
        .await
        .expect("connecting to the test MySQL");
    conn.query_drop(format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    let _ = conn.disconnect().await;
    url
}

/// Nix copies the closure through a proxy on `database` (cold, from the
/// upstream), then again with the upstream stopped (from the cache alone).
async fn copy_with_database(database: String) {
    let fx = nix_fixture();
    let mut upstream = StaticServer::start(fx.cache(Compression::Zstd)).await;
    let mut config =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
    config.extra_args = vec!["--cache-database-url".to_string(), database];
    let proxy = Proxy::start(config).await;

    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "first nix copy failed: {copy:?}");
    assert!(copy.all_valid(&fx.closure).await, "{copy:?}");

    upstream.stop().await;
    let again = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(
        again.success(),
        "nix copy from the cache alone failed: {again:?}"
    );
    assert!(again.all_valid(&fx.closure).await, "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_with_postgres() {
    let test = "nix_copy_with_postgres";
    if !require_nix(test) {
        return;
    }
    let Some(server) = service(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    copy_with_database(fresh_postgres(&server).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_with_mariadb() {
    let test = "nix_copy_with_mariadb";
    if !require_nix(test) {
        return;
    }
    let Some(server) = service(test, "NCPS_TEST_MYSQL_URL") else {
        return;
    };
    copy_with_database(fresh_mysql(&server).await).await;
}

/// A cache filled on SQLite, its metadata copied to PostgreSQL and on to
/// MySQL, and its NAR files kept: a proxy on each new database serves the
/// closure to a fresh Nix store with the upstream gone.
#[tokio::test(flavor = "multi_thread")]
async fn cache_moved_from_sqlite_to_postgres_and_mysql_still_serves() {
    let test = "cache_moved_from_sqlite_to_postgres_and_mysql_still_serves";
    if !require_nix(test) {
        return;
    }
    let Some(pg_server) = service(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    let Some(my_server) = service(test, "NCPS_TEST_MYSQL_URL") else {
        return;
    };
    let (pg_url, my_url) = (
        fresh_postgres(&pg_server).await,
        fresh_mysql(&my_server).await,
    );
    let fx = nix_fixture();
    let mut upstream = StaticServer::start(fx.cache(Compression::Xz)).await;
    let config =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);

    // Fill the cache on SQLite, then move its metadata and keep its NARs.
    let nars = tempfile::tempdir().expect("tempdir");
    {
        let first = Proxy::start(config.clone()).await;
        let copy = nix_copy_from(first.url(), &fx.closure, &fx.proxy_key.public).await;
        assert!(copy.success(), "nix copy on SQLite failed: {copy:?}");
        let sqlite = format!("sqlite:{}", first.dir().join("db.sqlite").display());
        let from = ncps_db::open(&sqlite, 0).await.expect("open SQLite");
        let pg = ncps_db::open(&pg_url, 2).await.expect("open PostgreSQL");
        let my = ncps_db::open(&my_url, 2).await.expect("open MySQL");
        let stats = ncps_db::copy(from.as_ref(), pg.as_ref(), 0)
            .await
            .expect("copy to PostgreSQL");
        assert!(
            stats.narinfos >= fx.closure.len() as u64,
            "copied only {stats:?}"
        );
        ncps_db::copy(pg.as_ref(), my.as_ref(), 0)
            .await
            .expect("copy to MySQL");
        copy_dir(&first.dir().join("storage"), nars.path());
    }
    upstream.stop().await;

    for database in [pg_url, my_url] {
        let mut config = config.clone();
        config.extra_args = vec!["--cache-database-url".to_string(), database.clone()];
        let moved = Proxy::start(config).await;
        copy_dir(nars.path(), &moved.dir().join("storage"));
        let copy = nix_copy_from(moved.url(), &fx.closure, &fx.proxy_key.public).await;
        assert!(
            copy.success(),
            "nix copy from the moved cache on {database} failed: {copy:?}"
        );
        assert!(copy.all_valid(&fx.closure).await, "{copy:?}");
    }
}

/// The service in `var`, or `None` after a loud skip.
fn service(test: &str, var: &str) -> Option<String> {
    shared_service(test, var, "source .ci/services.sh")
}
