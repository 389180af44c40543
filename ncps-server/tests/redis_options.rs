//! The lock options (`--cache-lock-*`, `--cache-redis-*`): options that
//! cannot work exit naming themselves, a Redis that is down at start does not
//! stop the server, a TLS Redis needs a trusted certificate, and the config
//! file keys reach the server. The refused-login test needs a Redis
//! (`NCPS_TEST_REDIS_URL`) and the TLS test the TLS-only one
//! (`NCPS_TEST_REDIS_TLS_ADDR`, `NCPS_TEST_REDIS_TLS_CA`), see `.ci/redis.sh`;
//! the HA tests cover locking through Redis end to end.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{assert_refused_naming, free_port, offline_server, redis_addr, run_to_exit};

/// The upstream is a dead loopback port: tests must not reach the internet.
const UPSTREAM: &[&str] = &[
    "--cache-upstream-url",
    "http://127.0.0.1:9",
    "--cache-upstream-public-key",
    "up-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=",
];

/// The server on local storage under `home`, offline, with [`UPSTREAM`].
fn command(home: &Path) -> Command {
    let mut command = offline_server(home);
    command
        .args(UPSTREAM)
        .arg("--cache-storage-local")
        .arg(home.join("data"));
    command
}

/// An address where nothing listens.
fn closed_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Runs the server expecting it to exit (bounded: it would otherwise serve).
fn run_expecting_exit(home: &Path, args: &[&str]) -> Output {
    let mut command = command(home);
    command
        .args(["--server-addr", &format!("127.0.0.1:{}", free_port())])
        .args(args);
    run_to_exit(command)
}

struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on `port` with `args` and `envs`; waits until
/// `/healthz` answers 200.
fn start(home: &Path, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let log = home.join("server.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = command(home)
        .args(["--server-addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut running = Running { child, log };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap();
    for _ in 0..400 {
        if let Some(status) = running.child.try_wait().unwrap() {
            panic!("the server exited ({status}):\n{}", running.log());
        }
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            return running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server never answered:\n{}", running.log());
}

#[test]
fn lock_options_that_cannot_work_exit_naming_the_option() {
    let home = tempfile::tempdir().unwrap();
    let closed = closed_addr();
    let cases: &[(&[&str], &str)] = &[
        (&["--cache-lock-backend", "redis"], "--cache-lock-backend"),
        (
            &["--cache-lock-backend", "memcached"],
            "--cache-lock-backend",
        ),
        (
            &["--cache-redis-addrs", "http://127.0.0.1:6379"],
            "--cache-redis-addrs",
        ),
        (
            &[
                "--cache-redis-addrs",
                "redis://127.0.0.1:6379",
                "--cache-redis-use-tls",
            ],
            "--cache-redis-addrs",
        ),
        (
            &["--cache-redis-addrs", "127.0.0.1:6379,nonsense"],
            "--cache-redis-addrs",
        ),
        (
            &["--cache-redis-addrs", &closed, "--cache-redis-db=-1"],
            "--cache-redis-db",
        ),
        (
            &[
                "--cache-redis-addrs",
                "127.0.0.1:1,127.0.0.1:2",
                "--cache-redis-db",
                "1",
            ],
            "--cache-redis-db",
        ),
        (
            &[
                "--cache-redis-addrs",
                &closed,
                "--cache-redis-pool-size",
                "0",
            ],
            "--cache-redis-pool-size",
        ),
        (
            &[
                "--cache-redis-addrs",
                &closed,
                "--cache-lock-retry-max-attempts",
                "0",
            ],
            "--cache-lock-retry-max-attempts",
        ),
        (
            &["--cache-lock-retry-initial-delay", "soon"],
            "--cache-lock-retry-initial-delay",
        ),
        (
            &["--cache-lock-allow-degraded-mode", "maybe"],
            "--cache-lock-allow-degraded-mode",
        ),
    ];
    for (args, option) in cases {
        assert_refused_naming(&run_expecting_exit(home.path(), args), args, option);
    }
}

#[test]
fn redis_down_at_start_does_not_stop_the_server() {
    for degraded in ["false", "true"] {
        let home = tempfile::tempdir().unwrap();
        let closed = closed_addr();
        let server = start(
            home.path(),
            free_port(),
            &[
                "--cache-redis-addrs",
                &closed,
                "--cache-lock-allow-degraded-mode",
                degraded,
            ],
            &[],
        );
        let log = server.log();
        assert!(
            log.contains("Redis is unavailable at start") && log.contains(&closed),
            "degraded mode {degraded}: no warning naming Redis:\n{log}"
        );
    }
}

#[test]
fn config_file_keys_reach_the_lock_options() {
    let home = tempfile::tempdir().unwrap();
    let closed = closed_addr();
    let config = home.path().join("ncps.yaml");
    std::fs::write(
        &config,
        format!(
            "cache:\n  redis:\n    addrs: [\"{closed}\"]\n    db: 0\n    pool-size: 4\n    use-tls: false\n  lock:\n    backend: redis\n    allow-degraded-mode: true\n    redis:\n      key-prefix: \"test:lock:\"\n    retry:\n      max-attempts: 2\n      initial-delay: 50ms\n      max-delay: 1s\n      jitter: false\n"
        ),
    )
    .unwrap();
    let server = start(
        home.path(),
        free_port(),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let log = server.log();
    assert!(
        log.contains("degraded mode") && log.contains(&closed),
        "the config file's Redis and degraded mode did not reach the server:\n{log}"
    );
    assert!(
        !log.contains("not supported"),
        "a lock config key was not recognised:\n{log}"
    );
}

#[test]
fn a_refused_redis_login_exits_without_showing_the_password() {
    let Some(url) = ncps_core::testkit::service(
        "a_refused_redis_login_exits_without_showing_the_password",
        "NCPS_TEST_REDIS_URL",
        "source .ci/redis.sh",
    ) else {
        return;
    };
    let addr = redis_addr(&url);
    let home = tempfile::tempdir().unwrap();
    let secret = "wrong-password-5d21";
    let out = run_expecting_exit(
        home.path(),
        &[
            "--cache-redis-addrs",
            &addr,
            "--cache-redis-username",
            "nobody",
            "--cache-redis-password",
            secret,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refused login was accepted");
    assert!(stderr.contains("--cache-redis-addrs"), "{stderr}");
    assert!(!stderr.contains(secret), "the password shows: {stderr}");
}

/// A Redis that speaks only TLS: with `--cache-redis-use-tls` and its CA in
/// `SSL_CERT_FILE` the locks are ready; without the CA the server exits at
/// once naming the certificate problem, instead of answering 503 for ever.
#[test]
fn redis_over_tls_needs_a_trusted_certificate() {
    let test = "redis_over_tls_needs_a_trusted_certificate";
    let Some(addr) = ncps_core::testkit::service(test, "NCPS_TEST_REDIS_TLS_ADDR", ".ci/redis.sh")
    else {
        return;
    };
    let Some(ca) = ncps_core::testkit::service(test, "NCPS_TEST_REDIS_TLS_CA", ".ci/redis.sh")
    else {
        return;
    };
    let tls = [
        "--cache-redis-addrs",
        addr.as_str(),
        "--cache-redis-use-tls",
    ];

    let home = tempfile::tempdir().unwrap();
    let out = run_expecting_exit(home.path(), &tls);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--cache-redis-addrs")
            && stderr.contains("UnknownIssuer")
            && stderr.contains("SSL_CERT_FILE"),
        "the untrusted certificate is not named: {stderr}"
    );

    let home = tempfile::tempdir().unwrap();
    let server = start(home.path(), free_port(), &tls, &[("SSL_CERT_FILE", &ca)]);
    let log = server.log();
    assert!(
        log.contains("Redis locks ready") && log.contains(&addr),
        "the locks are not ready over TLS:\n{log}"
    );

    // `rediss://` means TLS without the flag.
    let home = tempfile::tempdir().unwrap();
    let rediss = format!("rediss://{addr}");
    let server = start(
        home.path(),
        free_port(),
        &["--cache-redis-addrs", rediss.as_str()],
        &[("SSL_CERT_FILE", &ca)],
    );
    let log = server.log();
    assert!(
        log.contains("Redis locks ready"),
        "the locks are not ready with {rediss}:\n{log}"
    );

    // Plain Redis commands to a TLS-only port are refused, so the TLS
    // handshake above is what made the locks ready.
    let home = tempfile::tempdir().unwrap();
    let plain = start(
        home.path(),
        free_port(),
        &["--cache-redis-addrs", addr.as_str()],
        &[],
    );
    assert!(
        plain.log().contains("Redis is unavailable at start"),
        "a plain connection to the TLS port worked:\n{}",
        plain.log()
    );
}
