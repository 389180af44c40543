//! TLS to real PostgreSQL and MariaDB servers: each `sslmode` (PostgreSQL)
//! and `tls` value (MySQL) gives an encrypted session or not as it says,
//! and a certificate no trusted CA signed stops the connection with a
//! message saying so. The servers come from `NCPS_TEST_POSTGRES_URL` and
//! `NCPS_TEST_MYSQL_URL`, talking TLS with a certificate for 127.0.0.1
//! signed by the CA in the PEM file `NCPS_TEST_DB_TLS_CA` (as
//! `.ci/services.sh` starts them); see `tests/common/mod.rs` for skipping.

mod common;

/// The message of a connection refused over the server's certificate: a
/// TLS error about the certificate, naming the URL as `shown`, its password
/// (`hunter2`) hidden.
fn assert_certificate_refused(e: ncps_core::Error, shown: &str) {
    let message = e.to_string();
    assert!(!e.is_temporary(), "{message}");
    assert!(message.contains("TLS"), "{message}");
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains(shown), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[cfg(not(all(feature = "postgres", feature = "mysql")))]
#[test]
fn tls_tests_need_the_postgres_and_mysql_features() {
    common::skip(
        "tls",
        "ncps-db was built without the `postgres` and `mysql` features",
    );
}

#[cfg(feature = "postgres")]
mod postgres {
    use ncps_core::MetadataDb;
    use ncps_db::PostgresDb;

    use crate::common;

    /// A fresh database, its URL with the password `hunter2` (the test
    /// server trusts loopback, so it is never checked), the server's URL,
    /// and the CA file; `None` after a skip.
    async fn fresh(test: &str) -> Option<(String, String, String)> {
        let ca = common::service(test, "NCPS_TEST_DB_TLS_CA")?;
        let (url, server) = common::fresh_postgres(test).await?;
        let mut parsed = url::Url::parse(&url).expect("url");
        parsed.set_password(Some("hunter2")).expect("password");
        Some((parsed.to_string(), server, ca))
    }

    /// Whether each session open on the database `url` names as
    /// application `app` is encrypted, as the server says (`pg_stat_ssl`),
    /// asked over the server's URL.
    async fn sessions_encrypted(server: &str, url: &str, app: &str) -> Vec<bool> {
        common::postgres_client(server)
            .await
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = $1 AND a.application_name = $2",
                &[&common::database_name(url), &app],
            )
            .await
            .expect("pg_stat_ssl")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Connects with `params` added to `url` as application `app` (a name
    /// no other connection of the test uses), checks the pool works, and
    /// returns whether its session is encrypted.
    async fn connect_encrypted(server: &str, url: &str, params: &str, app: &str) -> bool {
        let with = format!("{url}?{params}&application_name={app}");
        let db = PostgresDb::connect(&with, 1)
            .await
            .unwrap_or_else(|e| panic!("{params}: {e}"));
        db.set_config_if_absent("k", "v").await.expect("config");
        assert_eq!(db.get_config("k").await.expect("config"), Some("v".into()));
        // The pool holds its one connection, the one that just answered.
        let sessions = sessions_encrypted(server, url, app).await;
        assert_eq!(sessions.len(), 1, "{params}: sessions {sessions:?}");
        sessions[0]
    }

    #[tokio::test]
    async fn postgres_sslmodes_encrypt_as_they_say() {
        let Some((url, server, ca)) = fresh("postgres_sslmodes_encrypt_as_they_say").await else {
            return;
        };
        let modes = [
            (format!("sslmode=verify-full&sslrootcert={ca}"), true),
            (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
            (format!("sslmode=require&sslrootcert={ca}"), true),
            ("sslmode=require".to_string(), true),
            ("sslmode=prefer".to_string(), true),
            ("sslmode=disable".to_string(), false),
        ];
        for (i, (params, encrypted)) in modes.iter().enumerate() {
            let app = format!("mode{i}");
            assert_eq!(
                connect_encrypted(&server, &url, params, &app).await,
                *encrypted,
                "{params}"
            );
        }
        // The default is `prefer`: encrypted when the server offers TLS.
        assert!(connect_encrypted(&server, &url, "connect_timeout=5", "default").await);
        common::drop_postgres(&server, &url).await;
    }

    #[tokio::test]
    async fn postgres_verify_refuses_a_certificate_no_trusted_ca_signed() {
        let test = "postgres_verify_refuses_a_certificate_no_trusted_ca_signed";
        let Some((url, server, _ca)) = fresh(test).await else {
            return;
        };
        // The throwaway CA is not among the system's roots.
        for mode in ["verify-full", "verify-ca"] {
            let with = format!("{url}?sslmode={mode}");
            let e = PostgresDb::connect(&with, 1)
                .await
                .expect_err("trusted a certificate of an unknown CA");
            super::assert_certificate_refused(e, &with.replace("hunter2", "***"));
        }
        common::drop_postgres(&server, &url).await;
    }

    #[tokio::test]
    async fn postgres_verify_full_checks_the_host_name_and_verify_ca_does_not() {
        let test = "postgres_verify_full_checks_the_host_name_and_verify_ca_does_not";
        let Some((url, server, ca)) = fresh(test).await else {
            return;
        };
        // Connect to 127.0.0.1 while calling it a name the certificate does not hold.
        let parsed = url::Url::parse(&url).expect("url");
        let mut renamed = parsed.clone();
        renamed.set_host(Some("db.invalid")).expect("host");
        let renamed = format!("{renamed}?hostaddr=127.0.0.1&sslrootcert={ca}");

        let full = format!("{renamed}&sslmode=verify-full");
        let e = PostgresDb::connect(&full, 1)
            .await
            .expect_err("verify-full took a certificate for another name");
        super::assert_certificate_refused(e, &full.replace("hunter2", "***"));

        let ca_only = format!("{renamed}&sslmode=verify-ca&application_name=ca_only");
        let db = PostgresDb::connect(&ca_only, 1)
            .await
            .expect("verify-ca checks the CA only");
        db.ping().await.expect("ping");
        assert_eq!(sessions_encrypted(&server, &url, "ca_only").await, [true]);
        drop(db);
        common::drop_postgres(&server, &url).await;
    }

    #[tokio::test]
    async fn postgres_a_missing_root_cert_file_is_a_configuration_error() {
        let url = "postgres://ncps:hunter2@127.0.0.1:1/ncps?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        let e = PostgresDb::connect(url, 1)
            .await
            .expect_err("connected without its CA file");
        let message = e.to_string();
        assert!(matches!(e, ncps_core::Error::InvalidInput(_)), "{message}");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use mysql_async::prelude::Queryable;
    use ncps_core::MetadataDb;
    use ncps_db::MysqlDb;

    use crate::common;

    /// A fresh database, the URL of a user of it with password `hunter2`
    /// the server lets in only over TLS (`REQUIRE SSL`), the server's URL,
    /// and the CA file; `None` after a skip.
    async fn fresh(test: &str) -> Option<(String, String, String)> {
        let ca = common::service(test, "NCPS_TEST_DB_TLS_CA")?;
        let (url, server) = common::fresh_mysql(test).await?;
        let name = common::database_name(&url);
        let mut conn = common::mysql_conn(&server).await;
        conn.query_drop(format!(
            "CREATE USER '{name}'@'127.0.0.1' IDENTIFIED BY 'hunter2' REQUIRE SSL"
        ))
        .await
        .expect("CREATE USER ... REQUIRE SSL");
        // `.ci/services.sh` gives the test user the GRANT OPTION for this.
        conn.query_drop(format!(
            "GRANT ALL PRIVILEGES ON {name}.* TO '{name}'@'127.0.0.1'"
        ))
        .await
        .expect("GRANT");
        let _ = conn.disconnect().await;
        let mut parsed = url::Url::parse(&url).expect("url");
        parsed.set_username(&name).expect("user");
        parsed.set_password(Some("hunter2")).expect("password");
        Some((parsed.to_string(), server, ca))
    }

    /// Drops the database and its user.
    async fn drop_fresh(server: &str, url: &str) {
        let name = common::database_name(url);
        let mut conn = common::mysql_conn(server).await;
        let _ = conn
            .query_drop(format!("DROP USER IF EXISTS '{name}'@'127.0.0.1'"))
            .await;
        let _ = conn.disconnect().await;
        common::drop_mysql(server, url).await;
    }

    #[tokio::test]
    async fn mysql_tls_values_encrypt_as_they_say() {
        let Some((url, server, ca)) = fresh("mysql_tls_values_encrypt_as_they_say").await else {
            return;
        };
        // The user may log in only over TLS, so each success is an encrypted session.
        for params in [
            format!("tls=true&ssl-ca={ca}"),
            format!("ssl-ca={ca}"),
            "tls=skip-verify".to_string(),
            "tls=preferred".to_string(),
        ] {
            let db = MysqlDb::connect(&format!("{url}?{params}"), 1)
                .await
                .unwrap_or_else(|e| panic!("{params}: {e}"));
            db.set_config_if_absent("k", "v").await.expect("config");
            assert_eq!(db.get_config("k").await.expect("config"), Some("v".into()));
        }
        // Without TLS the same user is turned away: the check above means something.
        for params in ["tls=false", "charset=utf8mb4"] {
            let e = MysqlDb::connect(&format!("{url}?{params}"), 1)
                .await
                .expect_err("a REQUIRE SSL user got in without TLS");
            assert!(e.to_string().contains("Access denied"), "{params}: {e}");
        }
        drop_fresh(&server, &url).await;
    }

    #[tokio::test]
    async fn mysql_verify_refuses_a_certificate_no_trusted_ca_signed() {
        let test = "mysql_verify_refuses_a_certificate_no_trusted_ca_signed";
        let Some((url, server, _ca)) = fresh(test).await else {
            return;
        };
        // The throwaway CA is not among the system's roots.
        for params in ["tls=true", "require_ssl=true"] {
            let with = format!("{url}?{params}");
            let e = MysqlDb::connect(&with, 1)
                .await
                .expect_err("trusted a certificate of an unknown CA");
            super::assert_certificate_refused(e, &with.replace("hunter2", "***"));
        }
        drop_fresh(&server, &url).await;
    }
}
