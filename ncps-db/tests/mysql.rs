//! `MysqlDb` against a real MySQL or MariaDB server: the metadata conformance
//! suite, the concurrency case, migrations, Unix-socket URLs, and a server
//! that is down. The server comes from `NCPS_TEST_MYSQL_URL` (a user who may
//! create databases, for a fresh database per test); see
//! `tests/common/mod.rs` for skipping.

mod common;

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_tests_need_the_mysql_feature() {
    common::skip("mysql", "ncps-db was built without the `mysql` feature");
}

#[cfg(feature = "mysql")]
mod with_feature {
    use std::sync::Arc;

    use mysql_async::prelude::Queryable;
    use ncps_core::MetadataDb;
    use ncps_db::MysqlDb;

    use crate::common;

    async fn fresh_database(test: &str) -> Option<(String, String)> {
        common::fresh_mysql(test).await
    }

    async fn drop_database(server: &str, url: &str) {
        common::drop_mysql(server, url).await
    }

    /// The recorded migrations: (version, applied_at).
    async fn migrations(url: &str) -> Vec<(i64, i64)> {
        let mut conn = common::mysql_conn(url).await;
        let rows = conn
            .query("SELECT version, applied_at FROM schema_migrations ORDER BY version")
            .await
            .expect("schema_migrations");
        let _ = conn.disconnect().await;
        rows
    }

    #[tokio::test]
    async fn mysql_conforms() {
        let Some((url, server)) = fresh_database("mysql_conforms").await else {
            return;
        };
        let db = MysqlDb::connect(&url, 0).await.expect("connect");
        ncps_core::testkit::metadata_conformance(&db).await;
        drop(db);
        drop_database(&server, &url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_two_pools_under_concurrency() {
        let Some((url, server)) = fresh_database("mysql_two_pools_under_concurrency").await else {
            return;
        };
        // Small pools, so tasks also queue for connections.
        let a = MysqlDb::connect(&url, 8).await.expect("connect a");
        let b = MysqlDb::connect(&url, 8).await.expect("connect b");
        ncps_core::testkit::metadata_concurrency(Arc::new(a), Arc::new(b)).await;
        drop_database(&server, &url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_instances_starting_together_migrate_once() {
        let Some((url, server)) =
            fresh_database("mysql_instances_starting_together_migrate_once").await
        else {
            return;
        };
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { MysqlDb::connect(&url, 2).await })
            })
            .collect();
        for start in starts {
            start.await.expect("task").expect("connect");
        }
        let recorded = migrations(&url).await;
        assert_eq!(
            recorded.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![1, 2],
            "each migration recorded once"
        );
        drop_database(&server, &url).await;
    }

    /// A database left by a build with only migration 1 moves to the
    /// current schema, its NARs marked as not known to be in storage.
    #[tokio::test]
    async fn mysql_migrates_from_v1() {
        let Some((url, server)) = fresh_database("mysql_migrates_from_v1").await else {
            return;
        };
        {
            use mysql_async::prelude::Queryable;
            let mut conn = common::mysql_conn(&url).await;
            let v1 = include_str!("../migrations/mysql/0001_initial.sql");
            let statements = v1
                .split(";\n")
                .map(|s| {
                    s.lines()
                        .filter(|l| !l.trim_start().starts_with("--"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .filter(|s| !s.trim().is_empty());
            for statement in statements {
                conn.query_drop(statement).await.expect("v1 schema");
            }
            for statement in [
                "CREATE TABLE schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL)",
                "INSERT INTO schema_migrations VALUES (1, 1)",
                "INSERT INTO nars VALUES ('old.nar.xz', 'xz', NULL, 5, 'sha256:x', 9, NULL, 3)",
            ] {
                conn.query_drop(statement).await.expect("v1 rows");
            }
            let _ = conn.disconnect().await;
        }
        let db = MysqlDb::connect(&url, 0).await.expect("migrating connect");
        let versions = migrations(&url).await.iter().map(|(v, _)| *v).collect();
        common::assert_migrated_from_v1(&db, versions).await;
        drop(db);
        drop_database(&server, &url).await;
    }

    #[tokio::test]
    async fn mysql_reconnecting_keeps_data_and_does_not_rerun_migrations() {
        let Some((url, server)) =
            fresh_database("mysql_reconnecting_keeps_data_and_does_not_rerun_migrations").await
        else {
            return;
        };
        common::assert_reconnecting_keeps_data(
            async || MysqlDb::connect(&url, 0).await.expect("connect"),
            async || migrations(&url).await,
        )
        .await;
        drop_database(&server, &url).await;
    }

    #[tokio::test]
    async fn mysql_keys_compare_byte_for_byte() {
        let Some((url, server)) = fresh_database("mysql_keys_compare_byte_for_byte").await else {
            return;
        };
        let db = MysqlDb::connect(&url, 0).await.expect("connect");
        db.set_config_if_absent("Key", "upper").await.expect("set");
        assert_eq!(db.get_config("key").await.expect("get"), None);
        assert_eq!(
            db.set_config_if_absent("key", "lower").await.expect("set"),
            "lower"
        );
        drop(db);
        drop_database(&server, &url).await;
    }

    #[tokio::test]
    async fn mysql_socket_urls_and_open_dispatch() {
        let test = "mysql_socket_urls_and_open_dispatch";
        let Some(socket) = common::service(test, "NCPS_TEST_MYSQL_SOCKET") else {
            return;
        };
        let Some((url, server)) = fresh_database(test).await else {
            return;
        };
        let parsed = url::Url::parse(&url).expect("url");
        let name = &parsed.path()[1..];
        let user = parsed.username();
        let password = parsed.password().unwrap_or("");
        for socket_url in [
            format!("mysql://{user}:{password}@/{name}?socket={socket}"),
            format!("mysql+unix://{user}:{password}@{socket}/{name}"),
        ] {
            let db = ncps_db::open(&socket_url, 2)
                .await
                .unwrap_or_else(|e| panic!("{socket_url}: {e}"));
            db.ping().await.expect("ping");
        }
        let db = ncps_db::open(&url, 0).await.expect("open");
        db.set_config_if_absent("k", "v").await.expect("config");
        drop(db);
        drop_database(&server, &url).await;
    }

    #[tokio::test]
    async fn mysql_down_is_unavailable_and_hides_the_password() {
        // Port 1 on loopback: nothing listens there, so the connection is refused.
        let url = "mysql://ncps:hunter2@127.0.0.1:1/ncps";
        let e = MysqlDb::connect(url, 0)
            .await
            .expect_err("connected to nothing");
        common::assert_down_hiding_the_password(e, "mysql://ncps:***@127.0.0.1:1/ncps");
    }
}
