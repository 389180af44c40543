//! The ncps-server binary on S3 storage: the storage options (flags, config
//! file), refusing local and S3 storage together, clear start-up errors that
//! name bucket and endpoint but never the secret, and real Nix copying a
//! closure through a server whose NARs live in S3, across an S3 outage.
//!
//! The S3 server comes from `NCPS_TEST_S3_ENDPOINT` (see `.ci/s3.sh`); a
//! missing one skips loudly, or fails with `NCPS_TEST_REQUIRE_ALL=1`. Tests
//! that need neither S3 nor Nix always run.

mod common;

use ncps_core::testkit::service;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const SERVER: &str = env!("CARGO_BIN_EXE_ncps-server");

/// The secret access key every test uses; it must never appear in output.
const SECRET: &str = "ncps-test-secret-c4f1e2";

/// The S3 storage options for `bucket` at `endpoint`, under `prefix`.
fn s3_args(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let mut args = s3_storage_args(endpoint, bucket, SECRET);
    args.extend(["--cache-storage-s3-prefix".to_string(), prefix.to_string()]);
    args
}

/// Runs the server until it exits, in a clean environment whose only
/// upstream never answers; its output and how long it ran.
fn run_to_exit_timed(home: &Path, args: &[String], envs: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let mut command = offline_server(home);
    command
        .envs(envs.iter().copied())
        .args([
            "serve",
            "--server-addr",
            "127.0.0.1:0",
            "--cache-upstream-url",
            "http://127.0.0.1:9",
            "--cache-upstream-public-key",
            STATIC_PUBLIC_KEY,
            "--cache-upstream-dialer-timeout",
            "200ms",
        ])
        .args(args);
    (run_to_exit(command), started.elapsed())
}

/// Asserts the server refused to start (exit 2) with `needles` in its
/// message and the secret nowhere in its output.
fn assert_refused(output: &Output, needles: &[&str]) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from:\n{stderr}"
        );
    }
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret access key was printed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn local_and_s3_storage_exclude_each_other() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut args = s3_args("http://127.0.0.1:9", "some-bucket", "p");
    args.extend(["--cache-storage-local".to_string(), "/tmp/x".to_string()]);
    let (output, _) = run_to_exit_timed(home.path(), &args, &[]);
    assert_refused(
        &output,
        &["--cache-storage-local", "--cache-storage-s3-bucket"],
    );
}

#[test]
fn s3_options_need_a_bucket() {
    let home = tempfile::tempdir().expect("tempdir");
    let args = ["--cache-storage-s3-endpoint", "http://127.0.0.1:9"].map(String::from);
    let (output, _) = run_to_exit_timed(home.path(), &args, &[]);
    assert_refused(
        &output,
        &["--cache-storage-s3-endpoint", "--cache-storage-s3-bucket"],
    );
}

#[test]
fn unreachable_s3_stops_the_start_quickly_naming_bucket_and_endpoint() {
    let home = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let (output, took) =
        run_to_exit_timed(home.path(), &s3_args(&endpoint, "some-bucket", "p"), &[]);
    assert_refused(
        &output,
        &["some-bucket", &endpoint, "--cache-storage-s3-bucket"],
    );
    assert!(took < Duration::from_secs(15), "took {took:?} to give up");
}

#[test]
fn help_never_shows_the_secret_from_the_environment() {
    let output = Command::new(SERVER)
        .env_clear()
        .env("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", SECRET)
        .args(["serve", "--help"])
        .output()
        .expect("ncps-server serve --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--cache-storage-s3-bucket",
        "--cache-storage-s3-endpoint",
        "--cache-storage-s3-region",
        "--cache-storage-s3-access-key-id",
        "--cache-storage-s3-secret-access-key",
        "--cache-storage-s3-force-path-style",
        "--cache-storage-s3-prefix",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
    assert!(!help.contains(SECRET), "--help shows the secret:\n{help}");
}

#[test]
fn missing_bucket_from_the_config_file_is_named_with_its_endpoint() {
    let test = "missing_bucket_from_the_config_file_is_named_with_its_endpoint";
    let Some(endpoint) = s3_endpoint(test) else {
        return;
    };
    let home = tempfile::tempdir().expect("tempdir");
    let bucket = unique("missing");
    let config = home.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "cache:\n  storage:\n    s3:\n      bucket: {bucket}\n      endpoint: {endpoint}\n      \
             region: us-east-1\n      force-path-style: true\n      access-key-id: test\n      \
             secret-access-key: {SECRET}\n      prefix: p\n"
        ),
    )
    .expect("writing the config file");
    let args = ["--config".to_string(), config.display().to_string()];
    let (output, _) = run_to_exit_timed(home.path(), &args, &[]);
    assert_refused(&output, &[&bucket, &endpoint, "no such bucket"]);

    // The same through the environment.
    let bucket_env = unique("missing-env");
    let (output, _) = run_to_exit_timed(
        home.path(),
        &[],
        &[
            ("CACHE_STORAGE_S3_BUCKET", &bucket_env),
            ("CACHE_STORAGE_S3_ENDPOINT", &endpoint),
            ("CACHE_STORAGE_S3_FORCE_PATH_STYLE", "true"),
            ("CACHE_STORAGE_S3_ACCESS_KEY_ID", "test"),
            ("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    assert_refused(&output, &[&bucket_env, &endpoint, "no such bucket"]);

    // Without keys, the AWS default credential chain (here its environment
    // variables) signs the requests, which got as far as the missing bucket.
    let bucket_chain = unique("missing-chain");
    let (output, _) = run_to_exit_timed(
        home.path(),
        &[],
        &[
            ("CACHE_STORAGE_S3_BUCKET", &bucket_chain),
            ("CACHE_STORAGE_S3_ENDPOINT", &endpoint),
            ("CACHE_STORAGE_S3_FORCE_PATH_STYLE", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_refused(&output, &[&bucket_chain, &endpoint, "no such bucket"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_through_s3_storage_survives_an_s3_outage() {
    let test = "nix_copy_through_s3_storage_survives_an_s3_outage";
    if !require_nix(test) {
        return;
    }
    let Some(endpoint) = s3_endpoint(test) else {
        return;
    };
    copy_through_s3(&endpoint, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_through_s3_storage_with_postgres() {
    let test = "nix_copy_through_s3_storage_with_postgres";
    if !require_nix(test) {
        return;
    }
    let Some(endpoint) = s3_endpoint(test) else {
        return;
    };
    let server = match std::env::var("NCPS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let why = format!("{test}: NCPS_TEST_POSTGRES_URL is not set (source .ci/services.sh)");
            if std::env::var("NCPS_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!("{why}, and NCPS_TEST_REQUIRE_ALL=1");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
            return;
        }
    };
    let database = fresh_database(&server).await;
    copy_through_s3(&endpoint, Some(database)).await;
}

/// Real Nix copies the fixture closure through a server storing NARs in a
/// fresh bucket (under a prefix), with `database` or the default SQLite;
/// then S3 goes down (fast server errors) and comes back (served again).
async fn copy_through_s3(endpoint: &str, database: Option<String>) {
    let endpoint = endpoint.to_string();
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3, "e2e").await;
    // S3 through a relay, so it can go down and come back at the same address.
    let mut gate = Relay::start(endpoint.trim_start_matches("http://")).await;

    let fx = nix_fixture();
    let c = Compression::Xz;
    let mut upstream = StaticServer::start(fx.cache(c)).await;
    let mut config =
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
    config.extra_args = s3_args(&gate.url(), &bucket, "cache-a");
    if let Some(database) = database {
        config
            .extra_args
            .extend(["--cache-database-url".to_string(), database]);
    }
    let proxy = Proxy::start(config).await;

    // Cold: everything comes from the upstream and goes into S3.
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "first nix copy failed: {copy:?}");
    assert!(
        copy.all_valid(&fx.closure).await,
        "closure not valid: {copy:?}"
    );
    let stored = bucket_keys(&s3, &bucket, "").await;
    let nars: Vec<&String> = stored
        .iter()
        .filter(|k| k.starts_with("cache-a/nar/"))
        .collect();
    assert!(
        nars.len() >= fx.closure.len(),
        "expected the closure's NARs under cache-a/nar/ in S3, found {stored:?}"
    );
    assert!(
        stored.iter().all(|k| k.starts_with("cache-a/")),
        "objects outside the prefix: {stored:?}"
    );
    assert!(
        !proxy.dir().join("storage").join("nar").exists(),
        "NARs were written to local storage"
    );

    // S3 down: what needs it answers 503 quickly, and nothing hangs.
    let client = http_client();
    let narinfo = fetch(
        &client,
        &format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.big)),
    )
    .await;
    assert_eq!(narinfo.status, 200, "{narinfo:?}");
    let text = String::from_utf8(narinfo.body).expect("narinfo is UTF-8");
    let nar_url = format!(
        "{}/{}",
        proxy.url(),
        narinfo_field(&text, "URL").expect("narinfo URL")
    );
    upstream.stop().await;
    gate.refuse().await;
    let started = Instant::now();
    let during = fetch(&client, &nar_url).await;
    let took = started.elapsed();
    assert_eq!(
        during.status, 503,
        "NAR with S3 down: expected 503, got {} after {took:?}",
        during.status
    );
    assert!(
        took < Duration::from_secs(15),
        "NAR with S3 down took {took:?}"
    );

    // S3 back: served again without a restart, from S3 alone.
    gate.restore().await;
    let after = fetch(&client, &nar_url).await;
    assert_eq!(after.status, 200, "NAR after S3 came back: {after:?}");
    assert!(after.complete, "NAR after S3 came back: {after:?}");
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "nix copy from S3 alone failed: {copy:?}");
    assert!(
        copy.all_valid(&fx.closure).await,
        "closure not valid: {copy:?}"
    );
    gate.refuse().await;
}

/// The S3 endpoint under test, or `None` after a loud skip.
fn s3_endpoint(test: &str) -> Option<String> {
    service(test, "NCPS_TEST_S3_ENDPOINT", "source .ci/s3.sh")
}
