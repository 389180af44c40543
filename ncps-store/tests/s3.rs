//! `S3Storage` against a real S3-compatible server (moto in CI, see
//! `.ci/s3.sh`), found through `NCPS_TEST_S3_ENDPOINT`. Each test makes its
//! own bucket. Without the variable the tests skip loudly; with
//! `NCPS_TEST_REQUIRE_ALL=1` they fail instead.

/// Skips (or, when every service is required, fails) a test that cannot run.
fn skip(why: &str) {
    if std::env::var("NCPS_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{why}, and NCPS_TEST_REQUIRE_ALL=1");
    }
    // Straight to stderr: libtest captures eprintln! of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {why} (set NCPS_TEST_REQUIRE_ALL=1 to make this fatal)"
    );
}

#[cfg(not(feature = "s3"))]
#[test]
fn s3_tests_need_the_s3_feature() {
    skip("S3 storage tests: ncps-store was built without the `s3` feature");
}

#[cfg(feature = "s3")]
mod s3 {
    use std::io;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use aws_sdk_s3::Client;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    use bytes::Bytes;
    use futures::StreamExt;
    use ncps_core::{ByteStream, Error, Storage};
    use ncps_store::{PART_SIZE, S3Config, S3Proxy, S3Storage, discard_incomplete};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    use super::skip;

    /// Distinguishes buckets made by one test process.
    static BUCKET_COUNTER: AtomicU64 = AtomicU64::new(0);

    /// The S3 endpoint under test, or `None` (after saying so) to skip.
    fn endpoint() -> Option<String> {
        match std::env::var("NCPS_TEST_S3_ENDPOINT") {
            Ok(endpoint) if !endpoint.is_empty() => Some(endpoint),
            _ => {
                skip("S3 storage tests: NCPS_TEST_S3_ENDPOINT is not set (source .ci/s3.sh)");
                None
            }
        }
    }

    /// A configuration for `bucket` at `endpoint` with moto's any-key credentials.
    fn config(endpoint: &str, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            endpoint: Some(endpoint.to_string()),
            region: Some("us-east-1".to_string()),
            force_path_style: true,
            access_key_id: Some("test".to_string()),
            secret_access_key: Some("testtest".to_string()),
            prefix: None,
            proxy: S3Proxy::default(),
        }
    }

    /// A plain SDK client for setting up and inspecting buckets.
    fn raw_client(endpoint: &str) -> Client {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new("test", "testtest", None, None, "test"))
            .build();
        Client::from_conf(config)
    }

    /// A bucket name no earlier run used.
    fn unique_bucket(what: &str) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = BUCKET_COUNTER.fetch_add(1, Ordering::Relaxed);
        format!(
            "ncps-{what}-{}-{n}-{}",
            std::process::id(),
            nanos % 1_000_000_000
        )
    }

    /// Creates a fresh bucket and returns its name.
    async fn new_bucket(client: &Client, what: &str) -> String {
        let bucket = unique_bucket(what);
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e:?}"));
        bucket
    }

    /// The in-progress multipart uploads in `bucket`, as (key, upload id).
    async fn multipart_uploads(client: &Client, bucket: &str) -> Vec<(String, String)> {
        let listed = client
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .expect("ListMultipartUploads");
        listed
            .uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap_or_default().to_string(),
                    u.upload_id().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Every key in `bucket`.
    async fn keys(client: &Client, bucket: &str) -> Vec<String> {
        let listed = client
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .expect("ListObjectsV2");
        let mut keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// `len` bytes that depend on `len` and `seed`.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ ((i >> 12) as u8))
            .collect()
    }

    /// `data` as a stream of 64 KiB chunks.
    fn chunked(data: &[u8]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(chunks))
    }

    /// Reads the object under `key` whole, or `None` if missing.
    async fn read_all(storage: &dyn Storage, key: &str) -> Option<(u64, Vec<u8>)> {
        let object = storage.get(key).await.expect("get")?;
        let mut bytes = Vec::new();
        let mut body = object.body;
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.expect("reading body"));
        }
        Some((object.size, bytes))
    }

    #[tokio::test]
    async fn s3_storage_conforms() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "conformance").await;
        let storage = S3Storage::new(config(&endpoint, &bucket))
            .await
            .expect("S3Storage::new");
        ncps_core::testkit::storage_conformance(&storage).await;
        assert_eq!(multipart_uploads(&client, &bucket).await, vec![]);
    }

    #[tokio::test]
    async fn a_crashed_writers_multipart_upload_is_found_and_discarded() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "incomplete").await;
        let mut prefixed = config(&endpoint, &bucket);
        prefixed.prefix = Some("team-a".into());
        let storage = S3Storage::new(prefixed).await.expect("S3Storage::new");
        // What a process killed mid-upload leaves: an upload never completed,
        // plus one of another cache sharing the bucket.
        for key in ["team-a/nar/left.nar", "team-b/nar/other.nar"] {
            client
                .create_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .expect("CreateMultipartUpload");
        }
        let found = storage.incomplete(None).await.expect("incomplete");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key.as_deref(), Some("nar/left.nar"));
        let of_key = storage
            .incomplete(Some("nar/left.nar"))
            .await
            .expect("incomplete");
        let ids = |found: &[ncps_core::Incomplete]| {
            found.iter().map(|i| i.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&of_key), ids(&found));
        let of_shorter = storage
            .incomplete(Some("nar/lef"))
            .await
            .expect("incomplete");
        assert!(of_shorter.is_empty(), "{of_shorter:?}");
        storage.discard(&found[0]).await.expect("discard");
        let left: Vec<String> = multipart_uploads(&client, &bucket)
            .await
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(left, vec!["team-b/nar/other.nar".to_string()]);
        assert!(
            storage
                .incomplete(None)
                .await
                .expect("incomplete")
                .is_empty()
        );

        // Without a prefix, every upload in the bucket is this storage's.
        let whole = S3Storage::new(config(&endpoint, &bucket))
            .await
            .expect("S3Storage::new");
        let found = whole.incomplete(None).await.expect("incomplete");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key.as_deref(), Some("team-b/nar/other.nar"));
    }

    #[tokio::test]
    async fn a_killed_writers_upload_is_aborted_once_old_enough() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "abort").await;
        let mut prefixed = config(&endpoint, &bucket);
        prefixed.prefix = Some("team-a".into());
        let storage = S3Storage::new(prefixed).await.expect("S3Storage::new");
        // What a process killed mid-upload leaves: an upload with a part and
        // never completed; and one of another cache sharing the bucket.
        for key in ["team-a/nar/killed.nar", "team-b/nar/other.nar"] {
            let created = client
                .create_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .expect("CreateMultipartUpload");
            client
                .upload_part()
                .bucket(&bucket)
                .key(key)
                .upload_id(created.upload_id().expect("upload id"))
                .part_number(1)
                .body(pattern(1024, 3).into())
                .send()
                .await
                .expect("UploadPart");
        }
        // The age comes from ListMultipartUploads' Initiated, which moto
        // fixes at 2010-11-10: only an age above it leaves the upload alone.
        let found = storage.incomplete(None).await.expect("incomplete");
        assert_eq!(found.len(), 1, "{found:?}");
        let age = found[0].age.expect("the upload's age (Initiated)");
        let older = age + Duration::from_secs(24 * 60 * 60);
        let young = discard_incomplete(&storage, older, false)
            .await
            .expect("discard");
        assert!(young.discarded.is_empty(), "{young:?}");
        assert_eq!(young.kept.len(), 1, "{young:?}");
        let dry = discard_incomplete(&storage, Duration::ZERO, true)
            .await
            .expect("dry run");
        assert_eq!(dry.discarded.len(), 1, "{dry:?}");
        assert_eq!(multipart_uploads(&client, &bucket).await.len(), 2);

        let done = discard_incomplete(&storage, Duration::ZERO, false)
            .await
            .expect("discard");
        assert_eq!(done.discarded.len(), 1, "{done:?}");
        assert_eq!(done.discarded[0].key.as_deref(), Some("nar/killed.nar"));
        assert!(done.failed.is_empty(), "{done:?}");
        let left: Vec<String> = multipart_uploads(&client, &bucket)
            .await
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(left, vec!["team-b/nar/other.nar".to_string()]);
        assert_eq!(storage.head("nar/killed.nar").await.expect("head"), None);
        assert!(keys(&client, &bucket).await.is_empty());
    }

    #[tokio::test]
    async fn large_objects_round_trip_through_multipart() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "multipart").await;
        let storage = S3Storage::new(config(&endpoint, &bucket))
            .await
            .expect("S3Storage::new");

        for (key, len) in [
            ("nar/two-and-a-bit.nar", 2 * PART_SIZE + 12_345),
            ("nar/exactly-one-part.nar", PART_SIZE),
            ("nar/one-part-and-a-byte.nar", PART_SIZE + 1),
        ] {
            let data = pattern(len, len as u8);
            let stored = storage.put(key, chunked(&data)).await.expect("put");
            assert_eq!(stored, len as u64, "{key}: put's byte count");
            assert_eq!(storage.head(key).await.expect("head"), Some(len as u64));
            let (size, bytes) = read_all(&storage, key).await.expect("object missing");
            assert_eq!(size, len as u64, "{key}: get's size");
            assert!(bytes == data, "{key}: different bytes came back");
            // A range across the first part boundary.
            let object = storage
                .get_range(key, PART_SIZE as u64 - 3, 10)
                .await
                .expect("get_range")
                .expect("object missing");
            assert_eq!(object.size, len as u64, "{key}: get_range's size");
            let mut got = Vec::new();
            let mut body = object.body;
            while let Some(chunk) = body.next().await {
                got.extend_from_slice(&chunk.expect("reading range"));
            }
            let end = (PART_SIZE + 7).min(len);
            assert!(got == data[PART_SIZE - 3..end], "{key}: wrong range bytes");
        }
        // S3 records the parts: a multipart object's ETag ends in -<parts>.
        let head = client
            .head_object()
            .bucket(&bucket)
            .key("nar/two-and-a-bit.nar")
            .send()
            .await
            .expect("HeadObject");
        assert!(
            head.e_tag()
                .is_some_and(|t| t.trim_matches('"').ends_with("-3")),
            "expected a 3-part multipart ETag, got {:?}",
            head.e_tag()
        );
        assert_eq!(multipart_uploads(&client, &bucket).await, vec![]);
    }

    #[tokio::test]
    async fn failed_multipart_upload_leaves_nothing() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "failed").await;
        let storage = S3Storage::new(config(&endpoint, &bucket))
            .await
            .expect("S3Storage::new");

        let old = pattern(1000, 1);
        storage
            .put("nar/kept.nar", chunked(&old))
            .await
            .expect("put");

        // More than one part goes up before the body fails.
        for key in ["nar/new.nar", "nar/kept.nar"] {
            let data = pattern(PART_SIZE + PART_SIZE / 2, 2);
            let failing: ByteStream =
                Box::pin(chunked(&data).chain(futures::stream::once(async {
                    Err(io::Error::other("test: body failed"))
                })));
            let result = storage.put(key, failing).await;
            assert!(
                result.is_err(),
                "{key}: put with a failing body returned Ok"
            );
        }
        assert_eq!(storage.head("nar/new.nar").await.expect("head"), None);
        let (_, bytes) = read_all(&storage, "nar/kept.nar")
            .await
            .expect("older object gone");
        assert!(bytes == old, "a failed put changed the older object");
        assert_eq!(keys(&client, &bucket).await, vec!["nar/kept.nar"]);
        assert_eq!(multipart_uploads(&client, &bucket).await, vec![]);
    }

    #[tokio::test]
    async fn cancelled_multipart_upload_is_aborted() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "cancelled").await;
        let storage = Arc::new(
            S3Storage::new(config(&endpoint, &bucket))
                .await
                .expect("S3Storage::new"),
        );

        // A body that sends one and a half parts, then never ends.
        let data = pattern(PART_SIZE + PART_SIZE / 2, 3);
        let hanging: ByteStream = Box::pin(chunked(&data).chain(futures::stream::pending()));
        let task = {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move { storage.put("nar/cancelled.nar", hanging).await })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while multipart_uploads(&client, &bucket).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the multipart upload never started"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));

        let deadline = Instant::now() + Duration::from_secs(20);
        while !multipart_uploads(&client, &bucket).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "a cancelled put left its multipart upload in progress"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(storage.head("nar/cancelled.nar").await.expect("head"), None);
        assert_eq!(keys(&client, &bucket).await, Vec::<String>::new());
    }

    #[tokio::test]
    async fn prefixes_keep_caches_apart() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "prefix").await;
        let open = |prefix: Option<&str>| {
            let mut config = config(&endpoint, &bucket);
            config.prefix = prefix.map(str::to_string);
            S3Storage::new(config)
        };
        let a = open(Some("/cache-a/")).await.expect("S3Storage::new a");
        let b = open(Some("cache-b")).await.expect("S3Storage::new b");
        let bare = open(None).await.expect("S3Storage::new");
        assert_eq!(a.prefix(), Some("cache-a"));

        a.put("nar/x.nar", chunked(b"from a")).await.expect("put a");
        b.put("nar/x.nar", chunked(b"from b, longer"))
            .await
            .expect("put b");
        assert_eq!(a.head("nar/x.nar").await.expect("head"), Some(6));
        assert_eq!(b.head("nar/x.nar").await.expect("head"), Some(14));
        assert_eq!(bare.head("nar/x.nar").await.expect("head"), None);
        assert_eq!(bare.head("cache-a/nar/x.nar").await.expect("head"), Some(6));
        assert_eq!(
            keys(&client, &bucket).await,
            vec!["cache-a/nar/x.nar", "cache-b/nar/x.nar"]
        );

        assert!(a.delete("nar/x.nar").await.expect("delete"));
        assert!(!a.delete("nar/x.nar").await.expect("delete"));
        assert_eq!(b.head("nar/x.nar").await.expect("head"), Some(14));
    }

    #[tokio::test]
    async fn missing_bucket_is_named_with_its_endpoint() {
        let Some(endpoint) = endpoint() else { return };
        let bucket = unique_bucket("missing");
        let err = S3Storage::new(config(&endpoint, &bucket))
            .await
            .expect_err("S3Storage::new on a missing bucket succeeded");
        let message = err.to_string();
        eprintln!("missing bucket: {message}");
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(message.contains(&bucket), "bucket not named: {message}");
        assert!(message.contains(&endpoint), "endpoint not named: {message}");
        assert!(message.contains("no such bucket"), "{message}");
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_unavailable_and_named() {
        // A port that was free a moment ago: connections are refused.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let started = Instant::now();
        let err = S3Storage::new(config(&endpoint, "some-bucket"))
            .await
            .expect_err("S3Storage::new on a closed port succeeded");
        let message = err.to_string();
        eprintln!("unreachable ({:?}): {message}", started.elapsed());
        assert!(err.is_temporary(), "not Unavailable: {err:?}");
        assert!(
            message.contains("some-bucket"),
            "bucket not named: {message}"
        );
        assert!(message.contains(&endpoint), "endpoint not named: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?} to give up",
            started.elapsed()
        );
    }

    #[cfg(feature = "local")]
    #[tokio::test]
    async fn copies_a_local_cache_to_s3_and_back_resumably() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "copy").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let local = ncps_store::LocalStorage::new(dir.path().join("a")).expect("LocalStorage");
        let mut config = config(&endpoint, &bucket);
        config.prefix = Some("cache".to_string());
        let s3 = S3Storage::new(config).await.expect("S3Storage::new");

        let objects = [
            ("nar/a.nar.xz", pattern(1000, 1)),
            ("nar/b.nar", pattern(PART_SIZE + 77, 2)),
            ("nar/sub/c.nar.zst", pattern(0, 3)),
        ];
        for (key, data) in &objects {
            local.put(key, chunked(data)).await.expect("put");
        }
        // Not under nar/: not listed.
        std::fs::create_dir_all(dir.path().join("a/db")).expect("mkdir");
        std::fs::write(dir.path().join("a/db/db.sqlite"), b"x").expect("write");

        let listed = local.list("nar").await.expect("list");
        let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["nar/a.nar.xz", "nar/b.nar", "nar/sub/c.nar.zst"]);

        let report = |_: &ncps_store::ObjectInfo, _: &ncps_store::CopyOutcome| {};
        let stats = ncps_store::copy_objects(&local, &s3, listed.clone(), 2, &report).await;
        assert_eq!((stats.copied, stats.skipped, stats.failed), (3, 0, 0));
        assert_eq!(s3.list("nar/").await.expect("list"), listed);

        // Again: everything is there already.
        let stats = ncps_store::copy_objects(&local, &s3, listed.clone(), 2, &report).await;
        assert_eq!((stats.copied, stats.skipped, stats.failed), (0, 3, 0));

        // A missing or wrong-sized object is copied again.
        s3.delete("nar/a.nar.xz").await.expect("delete");
        s3.put("nar/b.nar", chunked(b"short")).await.expect("put");
        let stats = ncps_store::copy_objects(&local, &s3, listed.clone(), 2, &report).await;
        assert_eq!((stats.copied, stats.skipped, stats.failed), (2, 1, 0));

        // And back into an empty directory.
        let back = ncps_store::LocalStorage::new(dir.path().join("b")).expect("LocalStorage");
        let from_s3 = s3.list("nar").await.expect("list");
        let stats = ncps_store::copy_objects(&s3, &back, from_s3, 2, &report).await;
        assert_eq!((stats.copied, stats.skipped, stats.failed), (3, 0, 0));
        for (key, data) in &objects {
            let (_, bytes) = read_all(&back, key).await.expect("copied object missing");
            assert!(
                &bytes == data,
                "{key}: different bytes after the round trip"
            );
        }

        // A listed object whose source is shorter than listed fails, storing nothing.
        let stale = vec![ncps_store::ObjectInfo {
            key: "nar/a.nar.xz".to_string(),
            size: 1000,
        }];
        local
            .put("nar/a.nar.xz", chunked(&pattern(10, 9)))
            .await
            .expect("put");
        s3.delete("nar/a.nar.xz").await.expect("delete");
        let stats = ncps_store::copy_objects(&local, &s3, stale, 1, &report).await;
        assert_eq!(
            (stats.copied, stats.failed),
            (1, 0),
            "a changed source is copied as it is now"
        );
        assert_eq!(s3.head("nar/a.nar.xz").await.expect("head"), Some(10));
    }

    /// A TCP proxy to S3 that can be switched off (connections refused,
    /// open ones cut) and on again at the same address.
    struct Proxy {
        addr: std::net::SocketAddr,
        upstream: String,
        task: Option<JoinHandle<()>>,
    }

    impl Proxy {
        async fn start(upstream: &str) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let upstream = upstream.trim_start_matches("http://").to_string();
            let task = Some(tokio::spawn(Self::serve(listener, upstream.clone())));
            Proxy {
                addr,
                upstream,
                task,
            }
        }

        async fn serve(listener: TcpListener, upstream: String) {
            // Dropping the set (when this task is aborted) cuts every connection.
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }

        fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        async fn stop(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
                let _ = task.await;
            }
        }

        async fn restart(&mut self) {
            self.stop().await;
            let listener = TcpListener::bind(self.addr).await.expect("rebind");
            self.task = Some(tokio::spawn(Self::serve(listener, self.upstream.clone())));
        }
    }

    #[tokio::test]
    async fn outage_is_unavailable_quickly_and_recovers() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "outage").await;
        let mut proxy = Proxy::start(&endpoint).await;
        let storage = S3Storage::new(config(&proxy.endpoint(), &bucket))
            .await
            .expect("S3Storage::new");
        storage
            .put("nar/a.nar", chunked(b"before"))
            .await
            .expect("put");

        proxy.stop().await;
        let started = Instant::now();
        let head = storage.head("nar/a.nar").await;
        assert!(
            matches!(head, Err(Error::Unavailable(_))),
            "head during an outage: {head:?}"
        );
        let get = storage.get("nar/a.nar").await;
        assert!(
            matches!(get, Err(Error::Unavailable(_))),
            "get during an outage: {get:?}"
        );
        let put = storage.put("nar/b.nar", chunked(b"during")).await;
        assert!(
            matches!(put, Err(Error::Unavailable(_))),
            "put during an outage: {put:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "three calls took {:?} to fail",
            started.elapsed()
        );

        proxy.restart().await;
        assert_eq!(storage.head("nar/a.nar").await.expect("head"), Some(6));
        assert_eq!(storage.head("nar/b.nar").await.expect("head"), None);
        proxy.stop().await;
    }

    /// An HTTP forward proxy: takes absolute-form requests (`GET
    /// http://host:port/path HTTP/1.1`), sends each to its host in origin
    /// form, one request per connection, and counts them.
    struct ForwardProxy {
        addr: std::net::SocketAddr,
        requests: Arc<AtomicU64>,
        task: JoinHandle<()>,
    }

    impl ForwardProxy {
        async fn start() -> ForwardProxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let requests = Arc::new(AtomicU64::new(0));
            let counter = requests.clone();
            let task = tokio::spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    connections.spawn(Self::forward(client, counter.clone()));
                }
            });
            ForwardProxy {
                addr,
                requests,
                task,
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn requests(&self) -> u64 {
            self.requests.load(Ordering::SeqCst)
        }

        /// Forwards one request and its answer, both marked `Connection:
        /// close` so the client never sends a second one on the connection.
        async fn forward(mut client: TcpStream, requests: Arc<AtomicU64>) {
            let Some((head, body_start)) = read_head(&mut client).await else {
                return;
            };
            let mut lines = head.lines();
            let request_line = lines.next().unwrap_or_default();
            let mut parts = request_line.splitn(3, ' ');
            let (Some(method), Some(target), Some(version)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return;
            };
            let Some(target) = target.strip_prefix("http://") else {
                let _ = client
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
                return;
            };
            let (host, path) = match target.find('/') {
                Some(i) => target.split_at(i),
                None => (target, "/"),
            };
            requests.fetch_add(1, Ordering::SeqCst);
            let Ok(mut server) = TcpStream::connect(host).await else {
                return;
            };
            let request = closing(&format!("{method} {path} {version}"), lines);
            if server.write_all(request.as_bytes()).await.is_err()
                || server.write_all(&body_start).await.is_err()
            {
                return;
            }
            // The request body, while the answer's head is read.
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let upload = tokio::io::copy(&mut client_read, &mut server_write);
            let answer = async {
                let (head, body_start) = read_head(&mut server_read).await?;
                let mut lines = head.lines();
                let status = lines.next().unwrap_or_default();
                client_write
                    .write_all(closing(status, lines).as_bytes())
                    .await
                    .ok()?;
                client_write.write_all(&body_start).await.ok()?;
                tokio::io::copy(&mut server_read, &mut client_write)
                    .await
                    .ok()
            };
            tokio::select! {
                _ = answer => {}
                _ = async { let _ = upload.await; std::future::pending::<()>().await } => {}
            }
        }
    }

    impl Drop for ForwardProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Reads an HTTP message head; returns it and the bytes read past it.
    async fn read_head<R: tokio::io::AsyncRead + Unpin>(
        stream: &mut R,
    ) -> Option<(String, Vec<u8>)> {
        let mut read = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = read.split_off(end + 4);
                return Some((String::from_utf8(read).ok()?, rest));
            }
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            read.extend_from_slice(&buf[..n]);
        }
    }

    /// A message head of `first` line and `headers`, with `Connection: close`
    /// instead of any connection or proxy headers.
    fn closing<'a>(first: &str, headers: impl Iterator<Item = &'a str>) -> String {
        let mut head = format!("{first}\r\n");
        for line in headers.filter(|l| !l.is_empty()) {
            let name = line.split(':').next().unwrap_or_default().trim();
            let drop = ["connection", "proxy-connection", "proxy-authorization"];
            if !drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                head.push_str(line);
                head.push_str("\r\n");
            }
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    }

    #[tokio::test]
    async fn requests_go_through_the_configured_proxy() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "proxy").await;
        let proxy = ForwardProxy::start().await;
        let mut through = config(&endpoint, &bucket);
        through.proxy = S3Proxy {
            http: Some(proxy.url()),
            ..S3Proxy::default()
        };
        let storage = S3Storage::new(through).await.expect("S3Storage::new");
        let data = pattern(100_000, 9);
        let written = storage
            .put("nar/proxied.nar", chunked(&data))
            .await
            .expect("put");
        assert_eq!(written, data.len() as u64);
        assert_eq!(
            read_all(&storage, "nar/proxied.nar").await,
            Some((data.len() as u64, data))
        );
        // HeadBucket, PutObject and GetObject at least.
        assert!(proxy.requests() >= 3, "{} requests", proxy.requests());
        assert_eq!(keys(&client, &bucket).await, vec!["nar/proxied.nar"]);
    }

    #[tokio::test]
    async fn no_proxy_hosts_are_reached_directly() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "noproxy").await;
        let proxy = ForwardProxy::start().await;
        let mut direct = config(&endpoint, &bucket);
        direct.proxy = S3Proxy {
            http: Some(proxy.url()),
            https: Some(proxy.url()),
            no_proxy: Some("example.com,127.0.0.1".to_string()),
        };
        let storage = S3Storage::new(direct).await.expect("S3Storage::new");
        storage
            .put("nar/direct.nar", chunked(b"direct"))
            .await
            .expect("put");
        assert_eq!(
            read_all(&storage, "nar/direct.nar").await,
            Some((6, b"direct".to_vec()))
        );
        assert_eq!(proxy.requests(), 0);
    }

    #[tokio::test]
    async fn secrets_stay_out_of_debug_output() {
        let Some(endpoint) = endpoint() else { return };
        let client = raw_client(&endpoint);
        let bucket = new_bucket(&client, "debug").await;
        let config = config(&endpoint, &bucket);
        let secret = config.secret_access_key.clone().expect("secret");
        assert!(!format!("{config:?}").contains(&secret));
        let storage = S3Storage::new(config).await.expect("S3Storage::new");
        assert!(!format!("{storage:?}").contains(&secret));
    }
}
