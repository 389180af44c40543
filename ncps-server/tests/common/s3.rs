//! The test S3 server (`NCPS_TEST_S3_ENDPOINT`, a moto from `.ci/s3.sh`):
//! a plain SDK client, fresh buckets and their keys, and the options that
//! put a server's (or `ncps-cli`'s) storage in a bucket.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::unique;

/// A plain SDK client for making and inspecting buckets at `endpoint`. The
/// test server takes any credentials, so these are fixed.
pub fn s3_client(endpoint: &str) -> Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http_client)
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// Creates a bucket no other test or run uses (named by [`unique`]); its name.
pub async fn new_bucket(client: &Client, what: &str) -> String {
    let bucket = unique(what);
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e:?}"));
    bucket
}

/// Every key in `bucket` that starts with `prefix` (`""` for all), sorted.
pub async fn bucket_keys(client: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap_or_else(|e| panic!("listing bucket {bucket}: {e:?}"));
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// The S3 connection options (endpoint, region, path style, access key ID),
/// as both `ncps-server` and `ncps-cli` take them; no bucket and no secret.
pub fn s3_connection_args(endpoint: &str) -> Vec<String> {
    [
        "--cache-storage-s3-endpoint",
        endpoint,
        "--cache-storage-s3-region",
        "us-east-1",
        "--cache-storage-s3-force-path-style",
        "--cache-storage-s3-access-key-id",
        "test",
    ]
    .map(String::from)
    .to_vec()
}

/// The options for S3 storage in `bucket` at `endpoint`, signed with `secret`.
pub fn s3_storage_args(endpoint: &str, bucket: &str, secret: &str) -> Vec<String> {
    let mut args = s3_connection_args(endpoint);
    args.extend(
        [
            "--cache-storage-s3-bucket",
            bucket,
            "--cache-storage-s3-secret-access-key",
            secret,
        ]
        .map(String::from),
    );
    args
}
