//! `/metrics` of the real binary after real traffic through an in-process
//! upstream: cache hits and misses, upstream fetches and bytes, bytes
//! served, requests by route, locks, and the store gauges, which are read
//! from the database once at start (a record written behind the server's
//! back shows only after a restart) and then follow what the server stores.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, ProxyConfig};
use ncps_core::testkit::upstream::{Fixture, Gate, TestUpstream, fixture};
use ncps_core::{MetadataDb, NarInfoRecord, SigningKey};

/// GET `/metrics`, checking its status and type.
async fn scrape(proxy: &Proxy) -> String {
    let response = reqwest::get(format!("{}/metrics", proxy.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of the series `series` (name and labels exactly as exposed), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{series}: {v:?}")))
        .unwrap_or(0.0)
}

/// Scrapes until `series` reaches `want` (the server records a request when
/// its body is done, a moment after the client has read it); the last scrape.
async fn scrape_until(proxy: &Proxy, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(proxy).await;
        if value(&text, series) == want || Instant::now() > deadline {
            assert_eq!(value(&text, series), want, "{series}\n{text}");
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that asks for no `Content-Encoding`, so bytes served are the
/// stored bytes.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .build()
        .unwrap()
}

async fn get(url: &str) -> Vec<u8> {
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.bytes().await.unwrap().to_vec()
}

struct Setup {
    upstream: TestUpstream,
    /// The key the proxy trusts for the upstream.
    key: SigningKey,
    small: Fixture,
    big: Fixture,
    proxy: Proxy,
}

async fn setup(extra_args: &[&str]) -> Setup {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("metrics-up-1");
    let big = fixture("metrics-big", 300_000, &key);
    let small = fixture("metrics-small", 20_000, &key);
    big.publish(&upstream, &big.nar);
    small.publish(&upstream, &small.nar);
    let mut cfg = ProxyConfig::new(upstream.url.clone(), &[&key.public_key().to_string()]);
    cfg.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    let proxy = Proxy::start(cfg).await;
    Setup {
        upstream,
        key,
        small,
        big,
        proxy,
    }
}

/// The proxy's URL of a fixture's NAR, from the narinfo it serves.
fn nar_url(proxy: &Proxy, narinfo: &[u8]) -> String {
    let narinfo = String::from_utf8_lossy(narinfo);
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line");
    format!("{}/{url}", proxy.url())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_miss_then_hits_move_the_counters() {
    let Setup {
        upstream,
        small,
        big,
        proxy,
        ..
    } = setup(&[]).await;
    let up = format!("{}/", upstream.url);
    let before = scrape(&proxy).await;
    assert_eq!(value(&before, "ncps_store_paths"), 0.0, "{before}");
    assert_eq!(value(&before, "ncps_store_totals_loads_total"), 1.0);

    // Narinfo: one miss (one upstream fetch), then two hits.
    let narinfo_url = format!("{}/{}.narinfo", proxy.url(), big.hash());
    let narinfo = get(&narinfo_url).await;
    assert_eq!(get(&narinfo_url).await, narinfo);
    assert_eq!(get(&narinfo_url).await, narinfo);
    assert_eq!(upstream.hits(&format!("/{}.narinfo", big.hash())), 1);

    // NAR: one miss (one upstream fetch), stored, then two hits from storage.
    let nar_url = nar_url(&proxy, &narinfo);
    assert_eq!(get(&nar_url).await, big.nar);
    scrape_until(&proxy, "ncps_nars_stored_total", 1.0).await;
    assert_eq!(get(&nar_url).await, big.nar);
    assert_eq!(get(&nar_url).await, big.nar);
    assert_eq!(upstream.hits(&big.nar_path()), 1);

    // The small path's narinfo only: its NAR is never fetched.
    let small_narinfo = get(&format!("{}/{}.narinfo", proxy.url(), small.hash())).await;

    let nar_len = big.nar.len() as f64;
    let text = scrape_until(
        &proxy,
        "ncps_http_served_bytes_total{route=\"nar\"}",
        3.0 * nar_len,
    )
    .await;
    let expect = |series: &str, want: f64| {
        assert_eq!(value(&text, series), want, "{series}\n{text}");
    };
    expect("ncps_cache_hits_total{kind=\"narinfo\"}", 2.0);
    expect("ncps_cache_misses_total{kind=\"narinfo\"}", 2.0);
    expect("ncps_cache_hits_total{kind=\"nar\"}", 2.0);
    expect("ncps_cache_misses_total{kind=\"nar\"}", 1.0);
    expect(
        &format!("ncps_upstream_fetches_total{{upstream=\"{up}\",kind=\"narinfo\"}}"),
        2.0,
    );
    expect(
        &format!("ncps_upstream_fetches_total{{upstream=\"{up}\",kind=\"nar\"}}"),
        1.0,
    );
    expect(
        &format!("ncps_upstream_errors_total{{upstream=\"{up}\",kind=\"nar\"}}"),
        0.0,
    );
    expect(
        &format!("ncps_upstream_received_bytes_total{{upstream=\"{up}\"}}"),
        nar_len,
    );
    expect(
        &format!("ncps_upstream_fetch_duration_seconds_count{{upstream=\"{up}\",kind=\"nar\"}}"),
        1.0,
    );
    expect("ncps_nar_stored_bytes_total", nar_len);
    expect(
        "ncps_http_requests_total{route=\"narinfo\",method=\"GET\",status=\"200\"}",
        4.0,
    );
    expect(
        "ncps_http_requests_total{route=\"nar\",method=\"GET\",status=\"200\"}",
        3.0,
    );
    expect(
        "ncps_http_request_duration_seconds_count{route=\"nar\"}",
        3.0,
    );
    expect(
        "ncps_http_served_bytes_total{route=\"narinfo\"}",
        (3 * narinfo.len() + small_narinfo.len()) as f64,
    );
    // The store: two paths recorded, one NAR stored.
    expect("ncps_store_paths", 2.0);
    expect("ncps_store_nar_bytes", nar_len);
    // Every narinfo miss took the narinfo lock, the NAR miss its download lock.
    expect(
        "ncps_lock_acquisitions_total{kind=\"narinfo\",outcome=\"acquired\"}",
        2.0,
    );
    assert!(
        value(
            &text,
            "ncps_lock_acquisitions_total{kind=\"download\",outcome=\"acquired\"}"
        ) >= 1.0,
        "{text}"
    );

    // A path no upstream has: a miss and a 404, counted by status.
    let missing = format!("{}/{}.narinfo", proxy.url(), "a".repeat(32));
    assert_eq!(reqwest::get(&missing).await.unwrap().status(), 404);
    let text = scrape_until(
        &proxy,
        "ncps_http_requests_total{route=\"narinfo\",method=\"GET\",status=\"404\"}",
        1.0,
    )
    .await;
    assert_eq!(
        value(&text, "ncps_cache_misses_total{kind=\"narinfo\"}"),
        3.0
    );
    // Raw paths never become labels.
    assert!(!text.contains("aaaaaaaa"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_totals_come_from_the_database_once_per_start() {
    let Setup {
        upstream: _upstream,
        big,
        mut proxy,
        ..
    } = setup(&[]).await;
    let narinfo = get(&format!("{}/{}.narinfo", proxy.url(), big.hash())).await;
    assert_eq!(get(&nar_url(&proxy, &narinfo)).await, big.nar);
    let text = scrape_until(&proxy, "ncps_nars_stored_total", 1.0).await;
    let nar_len = big.nar.len() as f64;
    assert_eq!(value(&text, "ncps_store_paths"), 1.0, "{text}");
    assert_eq!(value(&text, "ncps_store_nar_bytes"), nar_len, "{text}");

    // A record written behind the server's back: scrapes do not see it,
    // since they never query the database.
    let db = ncps_db::SqliteDb::open(proxy.dir().join("db.sqlite")).unwrap();
    db.put_narinfo(&NarInfoRecord {
        hash: "0".repeat(32),
        narinfo: "StorePath: /nix/store/00000000000000000000000000000000-x\n".into(),
        nar_file: "x.nar".into(),
        created_at: 1,
        last_accessed_at: 1,
    })
    .await
    .unwrap();
    drop(db);
    for _ in 0..3 {
        let text = scrape(&proxy).await;
        assert_eq!(value(&text, "ncps_store_paths"), 1.0, "{text}");
        assert_eq!(value(&text, "ncps_store_totals_loads_total"), 1.0);
    }

    // A restart reads the totals back from the database, once.
    let (status, _) = proxy.terminate().await;
    assert!(status.success(), "{status}");
    proxy.restart().await;
    let text = scrape(&proxy).await;
    assert_eq!(value(&text, "ncps_store_paths"), 2.0, "{text}");
    assert_eq!(value(&text, "ncps_store_nar_bytes"), nar_len, "{text}");
    assert_eq!(value(&text, "ncps_store_totals_loads_total"), 1.0);
    // The counters of the new process start from zero.
    assert_eq!(value(&text, "ncps_nars_stored_total"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_can_be_turned_off() {
    let Setup { proxy, .. } = setup(&["--prometheus-enabled=false"]).await;
    let response = reqwest::get(format!("{}/metrics", proxy.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = response.text().await.unwrap();
    assert!(body.contains("--prometheus-enabled"), "{body}");
    let health = reqwest::get(format!("{}/healthz", proxy.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_are_counted() {
    let Setup {
        upstream,
        key,
        proxy,
        ..
    } = setup(&[]).await;
    let up = format!("{}/", upstream.url);
    let errors =
        |kind: &str| format!("ncps_upstream_errors_total{{upstream=\"{up}\",kind=\"{kind}\"}}");

    // A narinfo signed by a key the proxy does not trust: refused, 404.
    let stranger = SigningKey::generate("stranger-1");
    let untrusted = fixture("metrics-untrusted", 1_000, &stranger);
    untrusted.publish(&upstream, &untrusted.nar);
    let response = client()
        .get(format!("{}/{}.narinfo", proxy.url(), untrusted.hash()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let text = scrape(&proxy).await;
    assert_eq!(value(&text, &errors("narinfo")), 1.0, "{text}");
    assert_eq!(value(&text, "ncps_store_paths"), 0.0, "{text}");

    // A NAR whose bytes do not match its narinfo: the client's transfer is
    // aborted, nothing is stored, and the upstream gets the blame.
    let damaged = fixture("metrics-damaged", 200_000, &key);
    let mut bytes = damaged.nar.clone();
    bytes[150_000] ^= 0xff;
    damaged.publish(&upstream, &bytes);
    let narinfo = get(&format!("{}/{}.narinfo", proxy.url(), damaged.hash())).await;
    let fetched = common::fetch(&client(), &nar_url(&proxy, &narinfo)).await;
    assert!(!fetched.complete, "a damaged NAR was served whole");
    let text = scrape_until(&proxy, &errors("nar"), 1.0).await;
    assert_eq!(value(&text, "ncps_nars_stored_total"), 0.0, "{text}");
    assert_eq!(value(&text, "ncps_store_nars"), 0.0, "{text}");
    assert_eq!(value(&text, "ncps_store_paths"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_waiting_for_a_lock_is_counted() {
    let Setup {
        upstream,
        key,
        proxy,
        ..
    } = setup(&[]).await;
    let slow = fixture("metrics-slow", 1_000, &key);
    slow.publish(&upstream, &slow.nar);
    // The narinfo's body stalls until the gate opens, holding the narinfo lock.
    let gate = Gate::new(10);
    let narinfo_path = format!("/{}.narinfo", slow.hash());
    upstream.put_gated(&narinfo_path, slow.info.to_string(), &gate);
    let url = format!("{}{narinfo_path}", proxy.url());
    let first = tokio::spawn(get_owned(url.clone()));
    let second = tokio::spawn(get_owned(url));
    // One fetches, the other waits for its lock.
    scrape_until(&proxy, "ncps_lock_waits_total{kind=\"narinfo\"}", 1.0).await;
    gate.open();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(a, b);
    assert_eq!(upstream.hits(&narinfo_path), 1);
    let text = scrape(&proxy).await;
    assert_eq!(
        value(&text, "ncps_lock_wait_seconds_count{kind=\"narinfo\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "ncps_lock_acquisitions_total{kind=\"narinfo\",outcome=\"acquired\"}"
        ),
        2.0,
        "{text}"
    );
}

async fn get_owned(url: String) -> Vec<u8> {
    get(&url).await
}
