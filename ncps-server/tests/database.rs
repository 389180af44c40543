//! The ncps-server binary on PostgreSQL and MySQL/MariaDB: a database that is
//! down at start stops the server with a message naming the URL (password
//! hidden); on a real server, two instances sharing one database agree on one
//! generated signing key, which survives a restart, and the pool size option
//! is taken from the flag, the environment and the config file.
//!
//! The servers come from `NCPS_TEST_POSTGRES_URL` and `NCPS_TEST_MYSQL_URL`
//! (see `.ci/services.sh`); a missing one skips loudly, or fails with
//! `NCPS_TEST_REQUIRE_ALL=1`.

use ncps_core::testkit::service as shared_service;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mysql_async::prelude::Queryable;

const SERVER: &str = env!("CARGO_BIN_EXE_ncps-server");

/// Outside requests go to a loopback port that refuses them.
const DEAD_PROXY: &str = "http://127.0.0.1:9";

/// A valid upstream key; the upstream itself (port 9) never answers.
const UPSTREAM_KEY: &str = "ncps-test-static-1:QD0w2G0MdfXNIl4JQoJkbON6J/hO2SVD0l9PC7fmxaY=";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The server with `args`, in a clean environment plus `envs`, with
/// everything it needs except a database.
fn command(home: &Path, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(SERVER);
    command
        .env_clear()
        .env("HOME", home)
        .env("HTTPS_PROXY", DEAD_PROXY)
        .env("HTTP_PROXY", DEAD_PROXY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .envs(envs.iter().copied())
        .args(["serve", "--server-addr", &format!("127.0.0.1:{port}")])
        .args(["--cache-hostname", "db-test.invalid"])
        .args(["--cache-upstream-url", "http://127.0.0.1:9"])
        .args(["--cache-upstream-public-key", UPSTREAM_KEY])
        .args(["--cache-upstream-dialer-timeout", "1s"])
        .arg("--cache-storage-local")
        .arg(home.join("storage"))
        .args(args);
    command
}

/// A running server, killed on drop.
struct Running {
    child: Child,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let port = free_port();
    let child = command(home, port, args, envs)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ncps-server");
    Running { child, port }
}

/// `GET /pubkey` once the server answers, within ~20 s.
fn pubkey(server: &mut Running) -> String {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{}/pubkey", server.port);
    for _ in 0..400 {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("ncps-server exited early: {status}");
        }
        if let Ok(response) = client.get(&url).send()
            && response.status().is_success()
        {
            return response.text().expect("pubkey body");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ncps-server did not answer {url}");
}

/// A database name no other test or run uses.
fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("ncps_srv_{}_{nanos}", std::process::id())
}

/// `url` naming database `name` instead of its own.
fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("test database URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A fresh PostgreSQL database; its URL.
fn fresh_postgres(server: &str) -> String {
    let name = unique_name();
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .expect("connecting to the test PostgreSQL");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
    });
    with_database(server, &name)
}

/// A fresh MySQL database; its URL.
fn fresh_mysql(server: &str) -> String {
    let name = unique_name();
    runtime().block_on(async {
        let mut conn = mysql_async::Conn::from_url(server)
            .await
            .expect("connecting to the test MySQL");
        conn.query_drop(format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let _ = conn.disconnect().await;
    });
    with_database(server, &name)
}

#[test]
fn database_down_at_start_exits_naming_the_url_without_the_password() {
    let home = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback: nothing listens, so connecting is refused at once.
    for (url, shown) in [
        (
            "postgres://ncps:hunter2@127.0.0.1:1/ncps",
            "postgres://ncps:***@127.0.0.1:1/ncps",
        ),
        (
            "mysql://ncps:hunter2@127.0.0.1:1/ncps",
            "mysql://ncps:***@127.0.0.1:1/ncps",
        ),
    ] {
        let started = Instant::now();
        let output = command(
            home.path(),
            free_port(),
            &["--cache-database-url", url],
            &[],
        )
        .output()
        .expect("run ncps-server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}: started anyway: {stderr}");
        assert!(
            stderr.contains(shown) && stderr.contains("--cache-database-url"),
            "{url}: message does not name the URL: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "{url}: message shows the password: {stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{url}: took {:?} to give up",
            started.elapsed()
        );
    }
}

#[test]
fn bad_pool_size_is_refused_naming_the_option() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = command(
        home.path(),
        free_port(),
        &["--cache-database-pool-max-open-conns", "many"],
        &[],
    )
    .output()
    .expect("run ncps-server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started anyway: {stderr}");
    assert!(
        stderr.contains("--cache-database-pool-max-open-conns"),
        "{stderr}"
    );
}

/// Two servers started together on one fresh database agree on the signing
/// key they generate, with the pool size given three ways; a restarted one
/// still has it.
fn shares_one_generated_key(url: &str) {
    let home_a = tempfile::tempdir().expect("tempdir");
    let home_b = tempfile::tempdir().expect("tempdir");
    let config = home_b.path().join("config.yaml");
    std::fs::write(
        &config,
        "cache:\n  database:\n    pool:\n      max-open-conns: 3\n",
    )
    .expect("config file");
    let config = config.display().to_string();

    let mut a = start(
        home_a.path(),
        &[
            "--cache-database-url",
            url,
            "--cache-database-pool-max-open-conns",
            "4",
        ],
        &[],
    );
    let mut b = start(
        home_b.path(),
        &["--config", &config],
        &[("CACHE_DATABASE_URL", url)],
    );
    let key_a = pubkey(&mut a);
    let key_b = pubkey(&mut b);
    assert!(key_a.starts_with("db-test.invalid-1:"), "{key_a}");
    assert_eq!(
        key_a, key_b,
        "two instances on one database disagree on the key"
    );
    drop(a);
    drop(b);

    let mut again = start(
        home_a.path(),
        &["--cache-database-url", url],
        &[("CACHE_DATABASE_POOL_MAX_OPEN_CONNS", "2")],
    );
    assert_eq!(
        pubkey(&mut again),
        key_a,
        "the key changed across a restart"
    );
}

#[test]
fn postgres_instances_share_one_generated_key() {
    let Some(server) = service(
        "postgres_instances_share_one_generated_key",
        "NCPS_TEST_POSTGRES_URL",
    ) else {
        return;
    };
    shares_one_generated_key(&fresh_postgres(&server));
}

#[test]
fn mysql_instances_share_one_generated_key() {
    let Some(server) = service(
        "mysql_instances_share_one_generated_key",
        "NCPS_TEST_MYSQL_URL",
    ) else {
        return;
    };
    shares_one_generated_key(&fresh_mysql(&server));
}

/// The service in `var`, or `None` after a loud skip.
fn service(test: &str, var: &str) -> Option<String> {
    shared_service(test, var, "source .ci/services.sh")
}

/// Over TLS checked against the test CA (`sslmode=verify-full`), the server
/// starts on PostgreSQL and answers from it (its key lives there); without
/// the CA, the server's certificate is not trusted and the server exits
/// saying so, naming the URL with its password hidden.
#[test]
fn postgres_over_verified_tls() {
    let test = "postgres_over_verified_tls";
    let Some(server) = service(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    let Some(ca) = service(test, "NCPS_TEST_DB_TLS_CA") else {
        return;
    };
    let mut url = url::Url::parse(&fresh_postgres(&server)).expect("url");
    // The test server trusts loopback, so the password is never checked.
    url.set_password(Some("hunter2")).expect("password");
    let home = tempfile::tempdir().expect("tempdir");

    let verified = format!("{url}?sslmode=verify-full&sslrootcert={ca}");
    let mut running = start(home.path(), &["--cache-database-url", &verified], &[]);
    let key = pubkey(&mut running);
    assert!(key.starts_with("db-test.invalid-1:"), "{key}");
    drop(running);

    let untrusted = format!("{url}?sslmode=verify-full");
    let output = command(
        home.path(),
        free_port(),
        &["--cache-database-url", &untrusted],
        &[],
    )
    .output()
    .expect("run ncps-server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started anyway: {stderr}");
    let shown = untrusted.replace("hunter2", "***");
    assert!(
        stderr.contains(&shown) && stderr.contains("--cache-database-url"),
        "message does not name the URL: {stderr}"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
