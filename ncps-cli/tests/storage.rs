//! `ncps-cli storage copy` between a local cache directory and S3, against
//! the S3 server at `NCPS_TEST_S3_ENDPOINT` (see `.ci/s3.sh`); without it the
//! tests skip loudly, or fail with `NCPS_TEST_REQUIRE_ALL=1`.

use ncps_core::testkit::service;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

const CLI: &str = env!("CARGO_BIN_EXE_ncps-cli");

/// The secret access key; it must never appear in output.
const SECRET: &str = "ncps-cli-test-secret-9d3a";

/// Creates a fresh bucket at `endpoint` and returns its name.
fn new_bucket(endpoint: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let bucket = format!("ncps-cli-copy-{}-{nanos}", std::process::id());
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http_client)
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", SECRET, None, None, "test"))
        .build();
    let client = Client::from_conf(config);
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(client.create_bucket().bucket(&bucket).send())
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e:?}"));
    bucket
}

/// `ncps-cli storage copy --from from --to to` with S3 options for `endpoint`.
fn copy(endpoint: &str, from: &str, to: &str) -> Output {
    Command::new(CLI)
        .env_clear()
        .env("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", SECRET)
        .args(["storage", "copy", "--from", from, "--to", to, "--jobs", "3"])
        .args(["--cache-storage-s3-endpoint", endpoint])
        .args(["--cache-storage-s3-force-path-style"])
        .args(["--cache-storage-s3-region", "us-east-1"])
        .args(["--cache-storage-s3-access-key-id", "test"])
        .output()
        .expect("running ncps-cli")
}

/// Stdout of a successful run; panics with its output otherwise.
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ncps-cli failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    stdout
}

/// Writes `len` bytes of a pattern to `root/key`.
fn write_nar(root: &Path, key: &str, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, &data).expect("write");
    data
}

#[test]
fn copies_a_cache_to_s3_and_back_resumably() {
    let Some(endpoint) = s3_endpoint("copies_a_cache_to_s3_and_back_resumably") else {
        return;
    };
    let bucket = new_bucket(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("source");
    let nars = [
        ("nar/0a.nar.xz", write_nar(&source, "nar/0a.nar.xz", 1234)),
        (
            "nar/0b.nar",
            write_nar(&source, "nar/0b.nar", 9 * 1024 * 1024 + 5),
        ),
        ("nar/0c.nar.zst", write_nar(&source, "nar/0c.nar.zst", 0)),
    ];
    // The server's data directory also holds its database; that stays.
    write_nar(&source, "db/db.sqlite", 10);
    let s3 = format!("s3://{bucket}/cache-a");
    let from = source.display().to_string();

    let out = succeeded(&copy(&endpoint, &from, &s3));
    assert!(out.contains("3 NARs in"), "{out}");
    assert!(out.contains("copied 3 NARs"), "{out}");

    let out = succeeded(&copy(&endpoint, &from, &s3));
    assert!(
        out.contains("copied 0 NARs (0 bytes), skipped 3"),
        "second run was not a no-op:\n{out}"
    );

    // Back into an empty directory: the same bytes, and no database.
    let back = dir.path().join("back");
    let out = succeeded(&copy(&endpoint, &s3, &back.display().to_string()));
    assert!(out.contains("copied 3 NARs"), "{out}");
    for (key, data) in &nars {
        let got = std::fs::read(back.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(&got == data, "{key}: different bytes after the round trip");
    }
    assert!(!back.join("db").exists(), "the database was copied");
}

#[test]
fn a_missing_bucket_fails_naming_it() {
    let Some(endpoint) = s3_endpoint("a_missing_bucket_fails_naming_it") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let output = copy(
        &endpoint,
        &dir.path().display().to_string(),
        "s3://ncps-cli-no-such-bucket/x",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("ncps-cli-no-such-bucket"), "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

/// The S3 endpoint under test, or `None` after a loud skip.
fn s3_endpoint(test: &str) -> Option<String> {
    service(test, "NCPS_TEST_S3_ENDPOINT", "source .ci/s3.sh")
}
