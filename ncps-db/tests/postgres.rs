//! `PostgresDb` against a real PostgreSQL server: the metadata conformance
//! suite, the concurrency case, migrations, Unix-socket URLs, and a server
//! that is down. The server comes from `NCPS_TEST_POSTGRES_URL` (a
//! superuser URL, for creating a fresh database per test); see
//! `tests/common/mod.rs` for skipping.

mod common;

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_tests_need_the_postgres_feature() {
    common::skip(
        "postgres",
        "ncps-db was built without the `postgres` feature",
    );
}

#[cfg(feature = "postgres")]
mod with_feature {
    use std::sync::Arc;

    use ncps_db::PostgresDb;

    use crate::common;

    async fn fresh_database(test: &str) -> Option<(String, String)> {
        common::fresh_postgres(test).await
    }

    async fn drop_database(server: &str, url: &str) {
        common::drop_postgres(server, url).await
    }

    /// The recorded migrations: (version, applied_at).
    async fn migrations(url: &str) -> Vec<(i64, i64)> {
        common::postgres_client(url)
            .await
            .query(
                "SELECT version, applied_at FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .expect("schema_migrations")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    #[tokio::test]
    async fn postgres_conforms() {
        let Some((url, server)) = fresh_database("postgres_conforms").await else {
            return;
        };
        let db = PostgresDb::connect(&url, 0).await.expect("connect");
        ncps_core::testkit::metadata_conformance(&db).await;
        drop(db);
        drop_database(&server, &url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_two_pools_under_concurrency() {
        let Some((url, server)) = fresh_database("postgres_two_pools_under_concurrency").await
        else {
            return;
        };
        // Small pools, so tasks also queue for connections.
        let a = PostgresDb::connect(&url, 8).await.expect("connect a");
        let b = PostgresDb::connect(&url, 8).await.expect("connect b");
        ncps_core::testkit::metadata_concurrency(Arc::new(a), Arc::new(b)).await;
        drop_database(&server, &url).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_instances_starting_together_migrate_once() {
        let Some((url, server)) =
            fresh_database("postgres_instances_starting_together_migrate_once").await
        else {
            return;
        };
        let starts = (0..8).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresDb::connect(&url, 2).await })
        });
        for start in futures_join(starts).await {
            start.expect("connect");
        }
        let recorded = migrations(&url).await;
        assert_eq!(
            recorded.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![1, 2],
            "each migration recorded once"
        );
        drop_database(&server, &url).await;
    }

    /// Awaits every task, in order.
    async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for task in tasks.collect::<Vec<_>>() {
            out.push(task.await.expect("task"));
        }
        out
    }

    /// A database left by a build with only migration 1 moves to the
    /// current schema, its NARs marked as not known to be in storage.
    #[tokio::test]
    async fn postgres_migrates_from_v1() {
        let Some((url, server)) = fresh_database("postgres_migrates_from_v1").await else {
            return;
        };
        let client = common::postgres_client(&url).await;
        client
            .batch_execute(include_str!("../migrations/postgres/0001_initial.sql"))
            .await
            .expect("v1 schema");
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
                 INSERT INTO schema_migrations VALUES (1, 1);
                 INSERT INTO nars VALUES ('old.nar.xz', 'xz', NULL, 5, 'sha256:x', 9, NULL, 3);",
            )
            .await
            .expect("v1 rows");
        drop(client);
        let db = PostgresDb::connect(&url, 0)
            .await
            .expect("migrating connect");
        let versions = migrations(&url).await.iter().map(|(v, _)| *v).collect();
        common::assert_migrated_from_v1(&db, versions).await;
        drop(db);
        drop_database(&server, &url).await;
    }

    #[tokio::test]
    async fn postgres_reconnecting_keeps_data_and_does_not_rerun_migrations() {
        let Some((url, server)) =
            fresh_database("postgres_reconnecting_keeps_data_and_does_not_rerun_migrations").await
        else {
            return;
        };
        common::assert_reconnecting_keeps_data(
            async || PostgresDb::connect(&url, 0).await.expect("connect"),
            async || migrations(&url).await,
        )
        .await;
        drop_database(&server, &url).await;
    }

    #[tokio::test]
    async fn postgres_socket_urls_and_open_dispatch() {
        let test = "postgres_socket_urls_and_open_dispatch";
        let Some(dir) = common::service(test, "NCPS_TEST_POSTGRES_SOCKET_DIR") else {
            return;
        };
        let Some((url, server)) = fresh_database(test).await else {
            return;
        };
        let parsed = url::Url::parse(&url).expect("url");
        let name = &parsed.path()[1..];
        let user = parsed.username();
        let port = parsed.port().unwrap_or(5432);
        for socket_url in [
            format!("postgresql:///{name}?host={dir}&port={port}&user={user}"),
            format!("postgres+unix://{user}@{dir}/{name}?port={port}"),
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
    async fn postgres_down_is_unavailable_and_hides_the_password() {
        // Port 1 on loopback: nothing listens there, so the connection is refused.
        let url = "postgres://ncps:hunter2@127.0.0.1:1/ncps";
        let e = PostgresDb::connect(url, 0)
            .await
            .expect_err("connected to nothing");
        common::assert_down_hiding_the_password(e, "postgres://ncps:***@127.0.0.1:1/ncps");
    }
}
