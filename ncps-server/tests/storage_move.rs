//! A cache moved between storages with `ncps-cli storage copy`: a server on
//! local storage fills its cache from an upstream through real Nix; it is
//! stopped and its NARs copied to S3; a server on S3 with the same SQLite
//! database then serves the whole closure, and so does one on a new local
//! directory copied back from S3. The upstream holding the closure is
//! stopped by then, and the moved servers' only upstream is an empty cache
//! that counts requests: it must see none but `nix-cache-info`.
//!
//! Needs Nix, the S3 server at `NCPS_TEST_S3_ENDPOINT` (see `.ci/s3.sh`;
//! a missing one skips loudly, or fails with `NCPS_TEST_REQUIRE_ALL=1`),
//! and the `ncps-cli` binary, which [`cli_binary`] builds if needed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ncps_core::testkit::service;

/// The secret access key; it must never appear in any output.
const SECRET: &str = "ncps-storage-move-secret-7b21";

/// Where the moved cache lives in its bucket.
const PREFIX: &str = "moved";

/// The server's options for S3 storage in `bucket` under [`PREFIX`].
fn server_s3_args(endpoint: &str, bucket: &str) -> Vec<String> {
    let mut args = s3_storage_args(endpoint, bucket, SECRET);
    args.extend(["--cache-storage-s3-prefix".to_string(), PREFIX.to_string()]);
    args
}

/// `ncps-cli storage copy --from from --to to`; its stdout, after checking
/// it succeeded and printed no secret (bounded by 120 s).
async fn storage_copy(endpoint: &str, from: &str, to: &str) -> String {
    let mut cmd = tokio::process::Command::new(cli_binary());
    cmd.env_clear()
        .env("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", SECRET)
        .args(["storage", "copy", "--from", from, "--to", to])
        .args(s3_connection_args(endpoint))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!("ncps-cli storage copy {from} -> {to}: still running after 120 s")
        })
        .expect("running ncps-cli");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "ncps-cli storage copy {from} -> {to} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "ncps-cli printed the secret:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The NAR files under a local storage directory: (file name, bytes), sorted.
fn local_nars(storage: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = storage.join("nar");
    let mut nars: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).expect("reading a NAR"))
        })
        .collect();
    nars.sort();
    nars
}

/// A cache with no paths: only its `nix-cache-info`, so a server using it
/// as its upstream sees it healthy and asks it on every miss.
fn empty_cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )
    .expect("writing nix-cache-info");
    dir
}

/// Real Nix copies the whole closure from `proxy` into a fresh store,
/// trusting only the proxy's key.
async fn closure_served(proxy: &Proxy, fx: &NixFixture, what: &str) {
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "nix copy from {what} failed: {copy:?}");
    assert!(
        copy.all_valid(&fx.closure).await,
        "closure not valid after nix copy from {what}: {copy:?}"
    );
}

/// Requests other than for `nix-cache-info` an upstream has seen.
fn content_requests(upstream: &StaticServer) -> Vec<(String, usize)> {
    let mut seen: Vec<(String, usize)> = upstream
        .all_hits()
        .into_iter()
        .filter(|(path, _)| path != "/nix-cache-info")
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_moved_local_to_s3_and_back_serves_without_its_upstream() {
    let test = "cache_moved_local_to_s3_and_back_serves_without_its_upstream";
    if !require_nix(test) {
        return;
    }
    let Some(endpoint) = service(test, "NCPS_TEST_S3_ENDPOINT", "source .ci/s3.sh") else {
        return;
    };
    cli_binary();
    let fx = nix_fixture();

    // Fill a cache on local storage through real Nix, then stop its server.
    let mut upstream = StaticServer::start(fx.cache(Compression::Xz)).await;
    let mut first = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    closure_served(&first, fx, "the server on local storage").await;
    let (status, _) = first.terminate().await;
    assert!(
        status.success(),
        "ncps-server on local storage exited {status}"
    );
    upstream.stop().await;
    let local = first.dir().join("storage");
    let database = format!("sqlite:{}", first.dir().join("db.sqlite").display());
    let nars = local_nars(&local);
    assert!(
        nars.len() >= fx.closure.len(),
        "expected the closure's {} NARs in {}, found {:?}",
        fx.closure.len(),
        local.display(),
        nars.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );

    // Local -> S3.
    let s3 = s3_client(&endpoint);
    let bucket = new_bucket(&s3, "storage-move").await;
    let to_s3 = format!("s3://{bucket}/{PREFIX}");
    let out = storage_copy(&endpoint, &local.display().to_string(), &to_s3).await;
    assert!(
        out.contains(&format!("copied {} NARs", nars.len())),
        "local -> S3 copied other than {} NARs:\n{out}",
        nars.len()
    );
    let expected: Vec<String> = nars
        .iter()
        .map(|(name, _)| format!("{PREFIX}/nar/{name}"))
        .collect();
    assert_eq!(bucket_keys(&s3, &bucket, "").await, expected, "{out}");

    // A server on S3 with the same database; its upstream has nothing.
    let empty = empty_cache();
    let witness = StaticServer::start(empty.path()).await;
    let moved = |storage_args: Vec<String>| {
        let mut config =
            ProxyConfig::new(witness.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key);
        config.extra_args = storage_args;
        config
            .extra_args
            .extend(["--cache-database-url".to_string(), database.clone()]);
        config
    };
    let mut on_s3 = Proxy::start(moved(server_s3_args(&endpoint, &bucket))).await;
    closure_served(&on_s3, fx, "the server on S3").await;
    assert!(
        !on_s3.dir().join("storage").join("nar").exists(),
        "the server on S3 wrote NARs to local storage"
    );
    assert_eq!(
        content_requests(&witness),
        vec![],
        "the server on S3 asked its upstream for content"
    );
    let (status, _) = on_s3.terminate().await;
    assert!(status.success(), "ncps-server on S3 exited {status}");

    // S3 -> a new local directory, byte for byte what the first server stored.
    let back = tempfile::tempdir().expect("tempdir");
    let back_storage = back.path().join("storage");
    let out = storage_copy(&endpoint, &to_s3, &back_storage.display().to_string()).await;
    assert!(
        out.contains(&format!("copied {} NARs", nars.len())),
        "S3 -> local copied other than {} NARs:\n{out}",
        nars.len()
    );
    assert!(
        local_nars(&back_storage) == nars,
        "the NARs copied back from S3 differ from the ones first stored"
    );

    let on_local = Proxy::start(moved(vec![
        "--cache-storage-local".to_string(),
        back_storage.display().to_string(),
    ]))
    .await;
    closure_served(&on_local, fx, "the server on the copied-back directory").await;
    assert_eq!(
        content_requests(&witness),
        vec![],
        "the server on the copied-back directory asked its upstream for content"
    );
}
