//! The real binary's logs: `--log-format json` writes one JSON object per
//! line with one `request` line per request (method, path, status, bytes,
//! duration, request id); the request id is the client's `X-Request-Id` or
//! a fresh one, echoed in the response and carried by the lines logged while
//! serving the request. Text logs written to a file have no colour codes.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, ProxyConfig};
use ncps_core::SigningKey;
use ncps_core::testkit::upstream::{TestUpstream, fixture};
use serde_json::Value;

/// Polls the server log until `find` finds something in it (lines are
/// written when a response body is done, a moment after the client read it).
async fn wait_for_log<T>(proxy: &Proxy, find: impl Fn(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = proxy.log();
        if let Some(found) = find(&log) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "not found in the server log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every line of `log` as JSON; panics on a line that is not.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `request` line of the request with id `id`.
fn request_line(log: &str, id: &str) -> Option<Value> {
    json_lines(log)
        .into_iter()
        .find(|v| v["message"] == "request" && v["request_id"] == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_lines_carry_the_request_fields() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("logs-up-1");
    let f = fixture("logs-json", 5_000, &key);
    f.publish(&upstream, &f.nar);
    let mut cfg = ProxyConfig::new(upstream.url.clone(), &[&key.public_key().to_string()]);
    cfg.extra_args = vec!["--log-format".into(), "json".into()];
    let proxy = Proxy::start(cfg).await;
    let client = reqwest::Client::new();

    // The client's id is kept and echoed.
    let path = format!("/{}.narinfo", f.hash());
    let response = client
        .get(format!("{}{path}", proxy.url()))
        .header("X-Request-Id", "test-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "test-req-42");
    let body = response.bytes().await.unwrap();

    let line = wait_for_log(&proxy, |log| request_line(log, "test-req-42")).await;
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], path.as_str(), "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes"], body.len() as u64, "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(line["timestamp"].is_string(), "{line}");
    // What the engine logged while serving it carries the id too.
    let log = proxy.log();
    let cached = json_lines(&log)
        .into_iter()
        .find(|v| v["message"] == "narinfo cached")
        .unwrap_or_else(|| panic!("no `narinfo cached` line:\n{log}"));
    assert_eq!(cached["span"]["request_id"], "test-req-42", "{cached}");

    // Without one (or with one not fit to log), a fresh id.
    let response = client
        .get(format!("{}/no-such-route", proxy.url()))
        .header("X-Request-Id", "has spaces\tand tabs")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    let line = wait_for_log(&proxy, |log| request_line(log, &id)).await;
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["path"], "/no-such-route", "{line}");

    // Every line, startup included, is JSON.
    json_lines(&proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_in_a_file_have_no_colour_codes() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("logs-up-1");
    let f = fixture("logs-text", 1_000, &key);
    f.publish(&upstream, &f.nar);
    let proxy = Proxy::start(ProxyConfig::new(
        upstream.url.clone(),
        &[&key.public_key().to_string()],
    ))
    .await;
    let response = reqwest::Client::new()
        .get(format!("{}/{}.narinfo", proxy.url(), f.hash()))
        .header("X-Request-Id", "text-req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = wait_for_log(&proxy, |log| {
        log.lines()
            .find(|l| l.contains("request_id=text-req-7") && l.contains(" request "))
            .map(str::to_owned)
    })
    .await;
    assert!(line.contains("status=200"), "{line}");
    assert!(line.contains("method=GET"), "{line}");
    let log = proxy.log();
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log file:\n{log}"
    );
}
