//! High availability: three ncps-server processes sharing one database
//! (PostgreSQL, or MariaDB), one S3 bucket and Redis locks, in front of an
//! upstream that counts requests.
//!
//! - 60 concurrent clients spread over the instances: every NAR and narinfo
//!   is fetched from the upstream once, cluster-wide;
//! - a replica asked for a NAR a peer is downloading streams it from that
//!   peer while the download runs, instead of waiting for its end;
//! - an instance killed mid-download: nothing partial is served, another
//!   instance takes over after the lock TTL, and the dead one's unfinished
//!   S3 upload is cleaned up;
//! - Redis lost: hits are still served; misses answer 503, or with
//!   `--cache-lock-allow-degraded-mode` are served under local locks.
//!
//! Needs `NCPS_TEST_REDIS_URL`, `NCPS_TEST_S3_ENDPOINT` and
//! `NCPS_TEST_POSTGRES_URL` / `NCPS_TEST_MYSQL_URL` (see `.ci/`); without
//! them the tests skip loudly, or fail under `NCPS_TEST_REQUIRE_ALL=1`.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use common::*;
use futures::StreamExt;
use ncps_core::SigningKey;
use ncps_core::testkit::service;
use ncps_core::testkit::upstream::{Fixture, Gate, TestUpstream, fixture};

/// The longest any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// What one test needs from outside.
struct Services {
    redis: String,
    /// The CA of a Redis that speaks only TLS (`--cache-redis-use-tls`),
    /// handed to the instances in `SSL_CERT_FILE`.
    redis_ca: Option<String>,
    s3: String,
    db: String,
}

/// The services of a test on `db_var`'s database, or `None` after a loud skip.
fn services(test: &str, db_var: &str) -> Option<Services> {
    Some(Services {
        redis: service(test, "NCPS_TEST_REDIS_URL", ".ci/redis.sh")?,
        redis_ca: None,
        s3: service(test, "NCPS_TEST_S3_ENDPOINT", ".ci/s3.sh")?,
        db: service(test, db_var, ".ci/services.sh")?,
    })
}

/// As [`services`], with the TLS-only Redis of `.ci/redis.sh`.
fn services_with_tls_redis(test: &str, db_var: &str) -> Option<Services> {
    Some(Services {
        redis: service(test, "NCPS_TEST_REDIS_TLS_ADDR", ".ci/redis.sh")?,
        redis_ca: Some(service(test, "NCPS_TEST_REDIS_TLS_CA", ".ci/redis.sh")?),
        ..services(test, db_var)?
    })
}

/// Instances sharing a fresh database, a fresh bucket and a Redis key prefix.
struct Cluster {
    instances: Vec<Proxy>,
    s3: Client,
    bucket: String,
    /// Arguments every instance shares.
    shared: ProxyConfig,
}

impl Cluster {
    async fn start(
        services: &Services,
        upstream: &TestUpstream,
        key: &SigningKey,
        size: usize,
        extra: &[&str],
    ) -> Cluster {
        let s3 = s3_client(&services.s3);
        let bucket = new_bucket(&s3, "ha").await;
        let db = fresh_database(&services.db).await;
        let mut shared = ProxyConfig::new(upstream.url.clone(), &[&key.public_key().to_string()]);
        shared.extra_args = s3_storage_args(&services.s3, &bucket, "test");
        shared.extra_args.extend(
            [
                "--cache-database-url",
                &db,
                "--cache-redis-addrs",
                &redis_addr(&services.redis),
                "--cache-lock-redis-key-prefix",
                &format!("{}:", unique("lock")),
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        if let Some(ca) = &services.redis_ca {
            shared.extra_args.push("--cache-redis-use-tls".into());
            shared.env.push(("SSL_CERT_FILE".into(), ca.clone()));
        }
        let mut cluster = Cluster {
            instances: Vec::new(),
            s3,
            bucket,
            shared,
        };
        for _ in 0..size {
            cluster.add(&[]).await;
        }
        cluster
    }

    /// Starts one more instance, with `extra` arguments of its own.
    async fn add(&mut self, extra: &[&str]) -> &Proxy {
        let port = free_port();
        let mut cfg = self.shared.clone();
        cfg.extra_args.extend(
            [
                "--cache-advertise-url".to_owned(),
                format!("http://127.0.0.1:{port}"),
            ]
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string())),
        );
        let proxy = Proxy::start_on(cfg, port).await;
        self.instances.push(proxy);
        self.instances.last().unwrap()
    }

    /// The bucket's multipart uploads never completed nor aborted.
    async fn unfinished_uploads(&self) -> Vec<String> {
        let listed = self
            .s3
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("ListMultipartUploads");
        listed
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_owned))
            .collect()
    }
}

/// The narinfo of `f` from `proxy`, and the URL of its NAR there.
async fn nar_url(client: &reqwest::Client, proxy: &Proxy, f: &Fixture) -> String {
    let url = format!("{}/{}.narinfo", proxy.url(), f.hash());
    let response = client.get(&url).send().await.expect("GET narinfo");
    assert_eq!(response.status(), 200, "GET {url}");
    let text = response.text().await.unwrap();
    let nar = narinfo_field(&text, "URL").expect("narinfo has a URL");
    format!("{}/{nar}", proxy.url())
}

/// Reads a response body whole; `Err` if it broke off.
async fn body(response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut stream = response.bytes_stream();
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.map_err(|e| format!("{e:?}"))?);
    }
    Ok(all)
}

async fn one_download_cluster_wide(test: &str, services: Option<Services>) {
    let Some(services) = services else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("upstream-1");
    let fixtures: Vec<Fixture> = (0..5)
        .map(|i| fixture(&format!("ha-{test}-{i}"), 1_000_000 + i * 700_000, &key))
        .collect();
    for f in &fixtures {
        f.publish(&upstream, &f.nar);
    }
    let cluster = Cluster::start(&services, &upstream, &key, 3, &[]).await;
    let client = http_client();

    let clients = (0..60).map(|i| {
        let proxy = &cluster.instances[i % 3];
        let f = &fixtures[i % fixtures.len()];
        let client = client.clone();
        async move {
            let url = nar_url(&client, proxy, f).await;
            let response = client.get(&url).send().await.expect("GET nar");
            assert_eq!(response.status(), 200, "GET {url}");
            let got = body(response)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(got == f.nar, "client {i}: wrong bytes from {url}");
        }
    });
    tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(clients))
        .await
        .expect("60 clients did not finish within 2 minutes");
    for f in &fixtures {
        assert_eq!(
            upstream.hits(&f.nar_path()),
            1,
            "{} fetched more than once",
            f.nar_path()
        );
        assert_eq!(
            upstream.hits(&format!("/{}.narinfo", f.hash())),
            1,
            "narinfo of {} fetched more than once",
            f.hash()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_download_cluster_wide_on_postgres() {
    let test = "one_download_cluster_wide_on_postgres";
    one_download_cluster_wide(test, services(test, "NCPS_TEST_POSTGRES_URL")).await;
}

/// The same over a Redis that speaks only TLS, its certificate signed by a
/// CA the instances trust through `SSL_CERT_FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_download_cluster_wide_with_redis_over_tls() {
    let test = "one_download_cluster_wide_with_redis_over_tls";
    let services = services_with_tls_redis(test, "NCPS_TEST_POSTGRES_URL");
    one_download_cluster_wide(test, services).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_download_cluster_wide_on_mariadb() {
    let test = "one_download_cluster_wide_on_mariadb";
    one_download_cluster_wide(test, services(test, "NCPS_TEST_MYSQL_URL")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_streams_a_download_in_progress_from_its_peer() {
    streams_from_peer(
        "a_replica_streams_a_download_in_progress_from_its_peer",
        None,
    )
    .await;
}

/// With `--cache-get-token`, the replica shows the token to its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_streams_from_its_peer_when_reads_need_a_token() {
    streams_from_peer(
        "a_replica_streams_from_its_peer_when_reads_need_a_token",
        Some("ha-read-token"),
    )
    .await;
}

async fn streams_from_peer(test: &str, token: Option<&str>) {
    let Some(services) = services(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("upstream-1");
    let f = fixture("ha-in-progress", 4_000_000, &key);
    f.publish(&upstream, &f.nar);
    // The upstream sends half, then waits for the test.
    let gate = Gate::new(2_000_000);
    upstream.put_gated(&f.nar_path(), f.nar.clone(), &gate);
    let extra: Vec<&str> = match token {
        Some(token) => vec!["--cache-get-token", token],
        None => Vec::new(),
    };
    let cluster = Cluster::start(&services, &upstream, &key, 2, &extra).await;
    let (a, b) = (&cluster.instances[0], &cluster.instances[1]);
    let client = match token {
        Some(token) => {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            reqwest::Client::builder()
                .default_headers(headers)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap()
        }
        None => http_client(),
    };

    let url_a = nar_url(&client, a, &f).await;
    let mut downloader = client.get(&url_a).send().await.unwrap().bytes_stream();
    let first = tokio::time::timeout(STEP, downloader.next())
        .await
        .expect("no first byte from the downloading instance")
        .unwrap()
        .unwrap();
    let downloader_first_byte = Instant::now();

    let url_b = nar_url(&client, b, &f).await;
    let response = client.get(&url_b).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut replica = response.bytes_stream();
    // The upstream is still paused half way: these bytes can only come
    // from the peer's download in progress.
    let replica_first = tokio::time::timeout(STEP, replica.next())
        .await
        .expect("the replica sent nothing while its peer's download ran")
        .unwrap()
        .unwrap();
    let lag = downloader_first_byte.elapsed();
    eprintln!("replica's first byte {lag:?} after the downloader's");
    assert!(
        lag < Duration::from_secs(2),
        "replica's first byte came {lag:?} later"
    );
    assert!(
        b.log().contains("streaming a NAR from the peer"),
        "{}",
        b.log()
    );

    gate.open();
    let mut whole = first.to_vec();
    while let Some(chunk) = downloader.next().await {
        whole.extend_from_slice(&chunk.unwrap());
    }
    assert!(whole == f.nar, "downloader got wrong bytes");
    let mut whole = replica_first.to_vec();
    while let Some(chunk) = replica.next().await {
        whole.extend_from_slice(&chunk.unwrap());
    }
    assert!(whole == f.nar, "replica got wrong bytes");
    assert_eq!(upstream.hits(&f.nar_path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_holder_is_taken_over_after_the_lock_ttl() {
    let test = "a_dead_holder_is_taken_over_after_the_lock_ttl";
    let Some(services) = services(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("upstream-1");
    // Larger than one S3 part, so the dead instance leaves a multipart upload.
    let f = fixture("ha-dead-holder", 20_000_000, &key);
    f.publish(&upstream, &f.nar);
    let gate = Gate::new(12_000_000);
    upstream.put_gated(&f.nar_path(), f.nar.clone(), &gate);
    let ttl = "3s";
    let mut cluster = Cluster::start(
        &services,
        &upstream,
        &key,
        2,
        &["--cache-lock-download-ttl", ttl],
    )
    .await;
    let client = http_client();

    let url_a = nar_url(&client, &cluster.instances[0], &f).await;
    let url_b = nar_url(&client, &cluster.instances[1], &f).await;
    let to_a = client.get(&url_a).send().await.unwrap();
    let mut from_a = to_a.bytes_stream();
    tokio::time::timeout(STEP, from_a.next())
        .await
        .expect("no first byte from the downloader")
        .unwrap()
        .unwrap();
    let to_b = client.get(&url_b).send().await.unwrap();
    let mut from_b = to_b.bytes_stream();
    tokio::time::timeout(STEP, from_b.next())
        .await
        .expect("no first byte through the replica")
        .unwrap()
        .unwrap();
    // Wait until the downloader has sent an S3 part: it has an upload open.
    let deadline = Instant::now() + STEP;
    while cluster.unfinished_uploads().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the downloader never started its S3 upload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9 the downloader half way.
    let dead = cluster.instances.remove(0);
    drop(dead);
    for (who, mut stream) in [("downloader", from_a), ("replica", from_b)] {
        let mut ended_well = true;
        while let Some(chunk) = tokio::time::timeout(STEP, stream.next())
            .await
            .unwrap_or_else(|_| panic!("{who}'s client hung after the kill"))
        {
            if chunk.is_err() {
                ended_well = false;
                break;
            }
        }
        assert!(
            !ended_well,
            "{who}'s client got a cut NAR as if it were whole"
        );
    }

    // A client that retries gets the right NAR from the survivor.
    gate.open();
    let started = Instant::now();
    let response = client.get(&url_b).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let got = body(response).await.expect("retry through the survivor");
    assert!(got == f.nar, "the retry got wrong bytes");
    eprintln!("the survivor took over after {:?}", started.elapsed());
    assert_eq!(upstream.hits(&f.nar_path()), 2);

    // The survivor threw away the dead instance's upload before its own.
    let survivor = &cluster.instances[0];
    assert!(
        survivor
            .log()
            .contains("discarded an unfinished write of an earlier download"),
        "{}",
        survivor.log()
    );
    let deadline = Instant::now() + STEP;
    loop {
        let left = cluster.unfinished_uploads().await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unfinished uploads left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_hits_are_served_and_misses_wait_or_degrade() {
    let test = "without_redis_hits_are_served_and_misses_wait_or_degrade";
    let Some(mut services) = services(test, "NCPS_TEST_POSTGRES_URL") else {
        return;
    };
    let mut relay = Relay::start(&redis_addr(&services.redis)).await;
    services.redis = format!("redis://{}", relay.addr());
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("upstream-1");
    let fixtures: Vec<Fixture> = (0..4)
        .map(|i| fixture(&format!("ha-redis-down-{i}"), 200_000, &key))
        .collect();
    for f in &fixtures {
        f.publish(&upstream, &f.nar);
    }
    let mut cluster = Cluster::start(&services, &upstream, &key, 1, &[]).await;
    cluster.add(&["--cache-lock-allow-degraded-mode"]).await;
    let (strict, degraded) = (&cluster.instances[0], &cluster.instances[1]);
    let client = http_client();
    let warm = &fixtures[0];
    let warm_url = nar_url(&client, strict, warm).await;
    assert!(
        body(client.get(&warm_url).send().await.unwrap())
            .await
            .unwrap()
            == warm.nar
    );

    relay.refuse().await;
    for proxy in [strict, degraded] {
        let url = nar_url(&client, proxy, warm).await;
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "a hit on {} without Redis",
            proxy.url()
        );
        assert!(body(response).await.unwrap() == warm.nar);
    }
    let ready = client
        .get(format!("{}/readyz", strict.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "readiness without Redis");
    let why = ready.text().await.unwrap();
    assert!(why.contains("lock") && !why.contains("database"), "{why}");
    let ready = client
        .get(format!("{}/readyz", degraded.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "readiness in degraded mode");

    let started = Instant::now();
    let response = client
        .get(format!("{}/{}.narinfo", strict.url(), fixtures[1].hash()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        503,
        "a miss without Redis or degraded mode"
    );
    eprintln!("503 without Redis after {:?}", started.elapsed());
    let text = response.text().await.unwrap();
    assert!(text.to_lowercase().contains("redis"), "{text}");

    let url = nar_url(&client, degraded, &fixtures[2]).await;
    let got = body(client.get(&url).send().await.unwrap()).await.unwrap();
    assert!(
        got == fixtures[2].nar,
        "degraded mode served a miss wrongly"
    );

    relay.restore().await;
    let deadline = Instant::now() + STEP;
    loop {
        let response = client
            .get(format!("{}/{}.narinfo", strict.url(), fixtures[3].hash()))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery once Redis is back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = client
        .get(format!("{}/readyz", strict.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "readiness once Redis is back");
    let url = nar_url(&client, strict, &fixtures[3]).await;
    assert!(body(client.get(&url).send().await.unwrap()).await.unwrap() == fixtures[3].nar);
}
