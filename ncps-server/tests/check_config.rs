//! `ncps-server --check-config` (and `serve --check-config`): a valid
//! configuration prints the effective settings, where each came from, with
//! every secret hidden, and exits 0 without contacting or creating
//! anything; an invalid one exits non-zero naming the option.

use std::path::Path;
use std::process::{Command, Output};

const SECRETS: &[&str] = &["hunter2", "s3cr3t-key", "dbpass", "uppass", "filepass"];

/// Runs the binary with only `env` in its environment.
fn run(args: &[&str], env: &[(&str, &str)], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncps-server"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .envs(env.iter().copied())
        .output()
        .expect("running ncps-server")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The printed line of `flag`.
fn setting<'a>(stdout: &'a str, flag: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
        .unwrap_or_else(|| panic!("{flag} not printed:\n{stdout}"))
}

#[test]
fn a_valid_config_prints_settings_and_sources_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ncps.yaml");
    std::fs::write(
        &config,
        "cache:\n  hostname: cache.example.org\n  upstream:\n    urls:\n      - https://user:uppass@up.example.org?priority=10\n    public-keys:\n      - cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n  redis:\n    password: filepass\n    addrs: [127.0.0.1:1]\n",
    )
    .unwrap();
    let storage = dir.path().join("not-created");
    let args = [
        "serve",
        "--check-config",
        "--config",
        config.to_str().unwrap(),
        "--cache-storage-local",
        storage.to_str().unwrap(),
        // Nothing listens there: it must not be contacted.
        "--cache-database-url",
        "postgres://ncps:dbpass@127.0.0.1:1/ncps",
    ];
    // An S3 secret without a bucket is an error, named without its value.
    let output = run(
        &args,
        &[("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", "s3cr3t-key")],
        dir.path(),
    );
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("--cache-storage-s3-secret-access-key"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t-key"), "{stderr}");

    let output = run(
        &args,
        &[
            ("LOG_LEVEL", "debug"),
            ("CACHE_REDIS_PASSWORD", "hunter2"),
            ("CACHE_LOCK_RETRY_MAX_ATTEMPTS", "5"),
        ],
        dir.path(),
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    for secret in SECRETS {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} shown:\n{stdout}{stderr}"
        );
    }
    let line = setting(&stdout, "--cache-database-url");
    assert!(
        line.contains("postgres://ncps:***@127.0.0.1:1/ncps"),
        "{line}"
    );
    assert!(line.ends_with("[flag]"), "{line}");
    let line = setting(&stdout, "--cache-hostname");
    assert!(line.contains("cache.example.org"), "{line}");
    assert!(line.ends_with("[file cache.hostname]"), "{line}");
    let line = setting(&stdout, "--cache-upstream-url");
    assert!(line.contains("https://user:***@up.example.org"), "{line}");
    assert!(line.ends_with("[file cache.upstream.urls]"), "{line}");
    // The environment wins over the file, and says so.
    let line = setting(&stdout, "--cache-redis-password");
    assert!(line.contains("<hidden>"), "{line}");
    assert!(line.ends_with("[env CACHE_REDIS_PASSWORD]"), "{line}");
    let line = setting(&stdout, "--log-level");
    assert!(
        line.contains("debug") && line.ends_with("[env LOG_LEVEL]"),
        "{line}"
    );
    let line = setting(&stdout, "--cache-lock-retry-max-attempts");
    assert!(line.contains(" 5 "), "{line}");
    let line = setting(&stdout, "--server-addr");
    assert!(
        line.contains(":8501") && line.ends_with("[default]"),
        "{line}"
    );
    let line = setting(&stdout, "--cache-storage-s3-bucket");
    assert!(line.contains("(not set)"), "{line}");
    // Nothing was created.
    assert!(!storage.exists(), "--check-config created {storage:?}");
}

#[test]
fn check_config_works_without_serve_too() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        &["--check-config", "--cache-hostname", "h.example"],
        &[],
        dir.path(),
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        setting(&stdout, "--cache-hostname").ends_with("h.example  [flag]"),
        "{stdout}"
    );
    assert!(
        !dir.path().join(".local").exists(),
        "--check-config created the default data directory"
    );
}

#[test]
fn invalid_configs_exit_non_zero_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.key");
    std::fs::write(&key, "not a key").unwrap();
    let key = key.to_str().unwrap();
    let bad_config = dir.path().join("bad.yaml");
    std::fs::write(
        &bad_config,
        "cache:\n  upstream:\n    dialer-timeout: soon\n",
    )
    .unwrap();
    let bad_config = bad_config.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--cache-storage-local",
                "/tmp/x",
                "--cache-storage-s3-bucket",
                "b",
            ],
            "--cache-storage-local",
        ),
        (
            &["--cache-database-url", "oracle://u:dbpass@h/db"],
            "--cache-database-url",
        ),
        (&["--cache-lock-backend", "redis"], "--cache-lock-backend"),
        (
            &["--cache-redis-addrs", "a:1,b:2", "--cache-redis-db", "3"],
            "--cache-redis-db",
        ),
        (
            &["--cache-upstream-dialer-timeout", "soon"],
            "--cache-upstream-dialer-timeout",
        ),
        (&["--config", bad_config], "--cache-upstream-dialer-timeout"),
        (&["--cache-upstream-url", "ftp://x"], "--cache-upstream-url"),
        (
            &[
                "--cache-upstream-url",
                "https://a",
                "--cache-upstream-url",
                "https://b",
                "--cache-upstream-public-key",
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            ],
            "--cache-upstream-public-key",
        ),
        (
            &["--cache-upstream-url", "https://no-key.example"],
            "--cache-upstream-url",
        ),
        (&["--cache-secret-key-path", key], "--cache-secret-key-path"),
        (&["--cache-hostname", "a b"], "--cache-hostname"),
        (&["--server-addr", "nowhere"], "--server-addr"),
        (&["--log-level", "info,=["], "--log-level"),
        (&["--log-format", "xml"], "--log-format"),
        (&["--prometheus-enabled", "maybe"], "--prometheus-enabled"),
        (
            &["--cache-advertise-url", "ftp://peer"],
            "--cache-advertise-url",
        ),
    ];
    for (args, option) in cases {
        let mut all = vec!["serve", "--check-config"];
        all.extend_from_slice(args);
        let output = run(&all, &[], dir.path());
        let (stdout, stderr) = text(&output);
        assert!(
            !output.status.success(),
            "{args:?} passed:\n{stdout}{stderr}"
        );
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(option),
            "{args:?} should name {option}:\n{stderr}"
        );
        assert!(!stderr.contains("dbpass"), "{stderr}");
    }
}

#[test]
fn otel_without_the_feature_is_a_clear_error() {
    if cfg!(feature = "otel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--check-config", "--otel-enabled"], &[], dir.path());
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("built without OpenTelemetry (feature otel)"),
        "{stderr}"
    );
}
