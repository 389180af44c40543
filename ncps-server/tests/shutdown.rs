//! A graceful shutdown lets the NAR downloads still running reach storage:
//! a download whose client went away is finished after SIGTERM, up to the
//! drain deadline, and one the deadline cuts leaves nothing half-stored.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ncps_core::SigningKey;
use ncps_core::testkit::upstream::{Fixture, Gate, TestUpstream, fixture};

/// The longest any one wait may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// Polls the server log until it contains `what`.
async fn log_shows(proxy: &Proxy, what: &str) {
    let deadline = Instant::now() + STEP;
    while !proxy.log().contains(what) {
        assert!(
            Instant::now() < deadline,
            "the log never showed {what:?}:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy whose upstream holds `f`'s NAR back after 64 KiB until `gate`
/// opens; a client has started the NAR and gone away, so the download runs
/// on its own.
async fn download_left_running(env: &[(&str, &str)]) -> (TestUpstream, Fixture, Gate, Proxy) {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("shutdown-1");
    let f = fixture("shutdown", 3_000_000, &key);
    f.publish(&upstream, &f.nar);
    let gate = Gate::new(64 * 1024);
    upstream.put_gated(&f.nar_path(), f.nar.clone(), &gate);
    let mut cfg = ProxyConfig::new(upstream.url.clone(), &[&key.public_key().to_string()]);
    cfg.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let proxy = Proxy::start(cfg).await;

    let client = http_client();
    let nar_url = proxy_nar_url(&client, proxy.url(), &f.hash().to_string()).await;
    let mut response = client.get(&nar_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap();
    assert!(first.is_some_and(|c| !c.is_empty()), "no first bytes");
    drop(response);
    drop(client);
    // The server has seen the client go; only the download is left.
    log_shows(&proxy, "client went away").await;
    assert_eq!(upstream.hits(&f.nar_path()), 1);
    (upstream, f, gate, proxy)
}

/// The NAR from `proxy`, whole; the test fails if it differs from `f`'s.
async fn fetch_nar(proxy: &Proxy, f: &Fixture) {
    let client = http_client();
    let nar_url = proxy_nar_url(&client, proxy.url(), &f.hash().to_string()).await;
    let response = client.get(&nar_url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {nar_url}");
    let body = response.bytes().await.unwrap();
    assert!(body == f.nar, "wrong NAR bytes after the restart");
}

#[tokio::test]
async fn sigterm_lets_a_download_whose_client_left_reach_storage() {
    let (upstream, f, gate, mut proxy) = download_left_running(&[]).await;

    proxy.send_sigterm();
    log_shows(&proxy, "for 1 downloads to be stored").await;
    // The server is still there, waiting for the download.
    assert!(
        proxy.log().contains("drained 0 connections"),
        "{}",
        proxy.log()
    );
    gate.open();
    let (status, _) = proxy.wait_exit().await;
    assert!(status.success(), "exit {status}:\n{}", proxy.log());
    assert!(
        proxy.log().contains("1 downloads stored or ended"),
        "{}",
        proxy.log()
    );

    proxy.restart().await;
    fetch_nar(&proxy, &f).await;
    assert_eq!(
        upstream.hits(&f.nar_path()),
        1,
        "the NAR was downloaded again: the first download was lost at shutdown"
    );
}

#[tokio::test]
async fn the_drain_deadline_cuts_a_download_and_nothing_half_stored_is_served() {
    let (upstream, f, gate, mut proxy) =
        download_left_running(&[("SERVER_DRAIN_TIMEOUT", "1s")]).await;

    let (status, took) = proxy.terminate().await;
    assert!(status.success(), "exit {status}:\n{}", proxy.log());
    assert!(
        proxy.log().contains("cutting 1 downloads"),
        "{}",
        proxy.log()
    );
    assert!(took < STEP, "shutdown took {took:?}");

    gate.open();
    proxy.restart().await;
    fetch_nar(&proxy, &f).await;
    assert_eq!(
        upstream.hits(&f.nar_path()),
        2,
        "the cut download should have been fetched again"
    );
}
