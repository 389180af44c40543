//! HTTP as caches in front of the proxy and Nix expect it: ETag and
//! If-None-Match, Cache-Control, Range, zstd to clients, HEAD lengths and
//! Expect: 100-continue. Needs no outside service: the upstream is in-process.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Proxy, ProxyConfig, proxy_nar_url};
use ncps_core::SigningKey;
use ncps_core::testkit::upstream::{Fixture, TestUpstream, fixture};
use tokio::io::AsyncReadExt;

/// A client that sends and decodes nothing on its own.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn setup(size: usize) -> (TestUpstream, Fixture, Proxy) {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("http-semantics", size, &key);
    f.publish(&upstream, &f.nar);
    let public = key.public_key().to_string();
    let proxy = Proxy::start(ProxyConfig::new(upstream.url.clone(), &[&public])).await;
    (upstream, f, proxy)
}

/// The proxy's NAR URL of the fixture, from its narinfo.
async fn nar_url(proxy: &Proxy, f: &Fixture) -> String {
    proxy_nar_url(&client(), proxy.url(), &f.hash().to_string()).await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn narinfo_etag_and_cache_control() {
    let (_upstream, f, proxy) = setup(1000).await;
    let url = format!("{}/{}.narinfo", proxy.url(), f.hash());
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = header(&first, "etag").expect("ETag").to_owned();

    let again = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), Some(etag.as_str()));
    let other = client()
        .get(&url)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    let head = client().head(&url).send().await.unwrap();
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert_eq!(
        len,
        first.text().await.unwrap().len(),
        "HEAD length differs from GET body"
    );

    let missing = client()
        .get(format!("{}/{}.narinfo", proxy.url(), "0".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        header(&missing, "cache-control"),
        Some("public, max-age=60")
    );
    let bad = client()
        .get(format!("{}/bad.narinfo", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(header(&bad, "cache-control"), Some("no-store"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_ranges_resume_downloads() {
    let (_upstream, f, proxy) = setup(300_000).await;
    let url = nar_url(&proxy, &f).await;
    let size = f.nar.len();

    // A range of a cold NAR gets the whole NAR (it is fetched whole first).
    let cold = client()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(cold.status(), 200);
    assert_eq!(cold.bytes().await.unwrap(), f.nar);

    let part = client()
        .get(&url)
        .header("range", "bytes=1000-199999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(&part, "content-range"),
        Some(format!("bytes 1000-199999/{size}").as_str())
    );
    assert_eq!(header(&part, "content-length"), Some("199000"));
    assert_eq!(part.bytes().await.unwrap(), f.nar[1000..200000]);

    let tail = client()
        .get(&url)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), f.nar[size - 10..]);

    let open = client()
        .get(&url)
        .header("range", "bytes=299990-")
        .send()
        .await
        .unwrap();
    assert_eq!(open.bytes().await.unwrap(), f.nar[299_990..]);

    let beyond = client()
        .get(&url)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        header(&beyond, "content-range"),
        Some(format!("bytes */{size}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_etag_head_and_cache_control() {
    let (upstream, f, proxy) = setup(50_000).await;
    let url = nar_url(&proxy, &f).await;

    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), Some("50000"));
    assert_eq!(upstream.hits(&f.nar_path()), 0, "HEAD downloaded the NAR");

    let get = client().get(&url).send().await.unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(header(&get, "accept-ranges"), Some("bytes"));
    assert_eq!(
        header(&get, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let etag = header(&get, "etag").expect("ETag").to_owned();
    assert_eq!(get.bytes().await.unwrap().len(), 50_000);

    let cached = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(header(&head, "content-length"), Some("50000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_to_clients_that_accept_it() {
    let (_upstream, f, proxy) = setup(400_000).await;
    let url = nar_url(&proxy, &f).await;

    for round in ["cold", "warm"] {
        let response = client()
            .get(&url)
            .header("accept-encoding", "gzip, zstd")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{round}");
        assert_eq!(
            header(&response, "content-encoding"),
            Some("zstd"),
            "{round}"
        );
        assert_eq!(header(&response, "vary"), Some("Accept-Encoding"));
        assert_eq!(header(&response, "content-length"), None, "{round}");
        let encoded = response.bytes().await.unwrap();
        assert!(encoded.len() < f.nar.len(), "{round}: zstd saved nothing");
        let mut decoded = Vec::new();
        async_compression::tokio::bufread::ZstdDecoder::new(&encoded[..])
            .read_to_end(&mut decoded)
            .await
            .unwrap();
        assert!(
            decoded == f.nar,
            "{round}: decoded bytes differ from the NAR"
        );
    }

    let plain = client().get(&url).send().await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(plain.bytes().await.unwrap(), f.nar);
    let refused = client()
        .get(&url)
        .header("accept-encoding", "zstd;q=0")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&refused, "content-encoding"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_at_once() {
    let (_upstream, _f, proxy) = setup(10).await;
    let addr = proxy.url().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The body is never sent: the server must answer without waiting for it.
    write!(
        stream,
        "PUT /nar/x.nar HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\nExpect: 100-continue\r\nContent-Type: application/x-nix-nar\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = stream
        .read(&mut buf)
        .expect("no answer to Expect: 100-continue");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 100") || answer.starts_with("HTTP/1.1 405"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn private_upstream_through_netrc_file_without_leaking_it() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("private", 1000, &key);
    f.publish(&upstream, &f.nar);
    upstream.require_authorization("Basic YWxpY2U6c2VjcmV0LXB3"); // alice:secret-pw
    let dir = tempfile::tempdir().unwrap();
    let public = key.public_key().to_string();

    for (password, status) in [("secret-pw", 200), ("wrong-pw", 502)] {
        let netrc = dir.path().join(format!("netrc-{password}"));
        std::fs::write(
            &netrc,
            format!("machine 127.0.0.1 login alice password {password}\n"),
        )
        .unwrap();
        let mut config = ProxyConfig::new(upstream.url.clone(), &[&public]);
        config.extra_args = vec![
            "--netrc-file".into(),
            netrc.display().to_string(),
            "--log-level".into(),
            "debug".into(),
        ];
        let proxy = Proxy::start(config).await;
        let response = client()
            .get(format!("{}/{}.narinfo", proxy.url(), f.hash()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "password {password}");
        let body = response.text().await.unwrap();
        assert!(!body.contains(password), "{body}");
        assert!(
            !proxy.log().contains(password),
            "the log shows the password"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_and_readiness_answer_and_are_never_cached() {
    let (_upstream, _f, proxy) = setup(1000).await;
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let response = client()
            .get(format!("{}{path}", proxy.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        if path == "/readyz" {
            assert_eq!(response.headers()["cache-control"], "no-store");
        }
        assert_eq!(response.text().await.unwrap(), body, "{path}");
    }
}
