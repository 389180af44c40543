//! `ncps-cli storage copy` between a local cache directory and S3, against
//! the S3 server at `NCPS_TEST_S3_ENDPOINT` (see `.ci/s3.sh`); without it the
//! tests skip loudly, or fail with `NCPS_TEST_REQUIRE_ALL=1`.

use ncps_core::testkit::service;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(s3_client(endpoint).create_bucket().bucket(&bucket).send())
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e:?}"));
    bucket
}

/// A plain SDK client for `endpoint`, to set up and inspect buckets.
fn s3_client(endpoint: &str) -> Client {
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
    Client::from_conf(config)
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

/// `ncps-cli --json storage abort-uploads --at at --older-than older_than`
/// with S3 options for `endpoint` and the environment `env`.
fn abort_uploads(endpoint: &str, at: &str, older_than: &str, env: &[(&str, &str)]) -> Output {
    Command::new(CLI)
        .env_clear()
        .envs(env.iter().copied())
        .env("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", SECRET)
        .args(["--json", "storage", "abort-uploads", "--at", at])
        .args(["--older-than", older_than])
        .args(["--cache-storage-s3-endpoint", endpoint])
        .args(["--cache-storage-s3-force-path-style"])
        .args(["--cache-storage-s3-region", "us-east-1"])
        .args(["--cache-storage-s3-access-key-id", "test"])
        .output()
        .expect("running ncps-cli")
}

/// A listener that closes every connection at once, as a proxy that lets
/// nothing through; returns its URL and how many connections it took.
fn refusing_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = taken.clone();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(connection);
        }
    });
    (url, taken)
}

#[test]
fn aborts_a_killed_processs_uploads_through_the_environments_proxy() {
    let Some(endpoint) = s3_endpoint("aborts_a_killed_processs_uploads") else {
        return;
    };
    let bucket = new_bucket(&endpoint);
    let client = s3_client(&endpoint);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let uploads = || {
        runtime
            .block_on(client.list_multipart_uploads().bucket(&bucket).send())
            .expect("ListMultipartUploads")
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    // A process killed mid-upload, and another cache's upload in the bucket.
    for key in ["cache-a/nar/killed.nar", "cache-b/nar/other.nar"] {
        runtime
            .block_on(
                client
                    .create_multipart_upload()
                    .bucket(&bucket)
                    .key(key)
                    .send(),
            )
            .expect("CreateMultipartUpload");
    }
    let at = format!("s3://{bucket}/cache-a");
    let json = |output: &Output| -> serde_json::Value {
        serde_json::from_str(&succeeded(output)).expect("JSON output")
    };

    // moto dates every upload 2010-11-10 (ListMultipartUploads' Initiated):
    // only an age above that leaves it alone.
    let kept = json(&abort_uploads(&endpoint, &at, "100y", &[]));
    assert_eq!(kept["aborted"], serde_json::json!([]), "{kept}");
    assert_eq!(kept["kept"], 1, "{kept}");
    assert_eq!(uploads().len(), 2);

    // HTTP_PROXY is honoured: every request goes to the proxy, which lets
    // nothing through...
    let (proxy, taken) = refusing_proxy();
    let output = abort_uploads(&endpoint, &at, "0s", &[("HTTP_PROXY", &proxy)]);
    assert!(!output.status.success(), "{output:?}");
    assert!(taken.load(Ordering::SeqCst) > 0);
    assert_eq!(uploads().len(), 2);
    // ... unless NO_PROXY names the endpoint's host.
    let before = taken.load(Ordering::SeqCst);
    let env = [("http_proxy", proxy.as_str()), ("no_proxy", "127.0.0.1")];
    let done = json(&abort_uploads(&endpoint, &at, "0s", &env));
    assert_eq!(taken.load(Ordering::SeqCst), before);
    assert_eq!(done["aborted"][0]["key"], "nar/killed.nar", "{done}");
    assert_eq!(uploads(), vec!["cache-b/nar/other.nar".to_string()]);
}

/// The S3 endpoint under test, or `None` after a loud skip.
fn s3_endpoint(test: &str) -> Option<String> {
    service(test, "NCPS_TEST_S3_ENDPOINT", "source .ci/s3.sh")
}
