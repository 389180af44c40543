//! End-to-end tests of the `ncps-server` binary against real Nix (`nix copy`)
//! and a static HTTP upstream serving real binary caches.
//!
//! Tests that need Nix skip loudly when it is missing, and fail when
//! `NCPS_TEST_REQUIRE_ALL=1` is set (as CI does).

mod common;

use common::*;

/// Copy the closure through a proxy in front of the `c` cache, trusting only
/// the proxy's key; then stop the upstream and copy again from the cache alone.
async fn copy_through_proxy(test: &str, c: Compression) {
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let mut upstream = StaticServer::start(fx.cache(c)).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let client = http_client();

    // /pubkey is the proxy's key.
    let pubkey = fetch(&client, &format!("{}/pubkey", proxy.url())).await;
    assert_eq!(pubkey.status, 200, "{pubkey:?}");
    assert_eq!(
        String::from_utf8_lossy(&pubkey.body).trim(),
        fx.proxy_key.public,
        "GET /pubkey"
    );

    // First copy: cold cache, everything comes from the upstream.
    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "first nix copy ({c:?}) failed: {copy:?}");
    assert!(
        copy.all_valid(&fx.closure).await,
        "closure not valid after first copy: {copy:?}"
    );
    let nar_hits = upstream.hits_with_prefix("/nar/");
    assert!(
        nar_hits >= fx.closure.len(),
        "upstream saw only {nar_hits} NAR requests: {:?}",
        upstream.all_hits()
    );

    // The served narinfo: re-signed by the proxy, upstream sig kept, URL
    // rewritten to nar/<nix32 FileHash>.nar<ext>.
    for p in &fx.closure {
        let got = fetch(
            &client,
            &format!("{}/{}.narinfo", proxy.url(), hash_part(p)),
        )
        .await;
        assert_eq!(got.status, 200, "narinfo of {p}: {got:?}");
        let text = String::from_utf8(got.body).unwrap();
        assert_eq!(
            narinfo_field(&text, "StorePath").as_deref(),
            Some(p.as_str())
        );
        let sigs = narinfo_fields(&text, "Sig");
        assert!(
            sigs.iter()
                .any(|s| s.starts_with(&format!("{}:", fx.proxy_key.name))),
            "no proxy signature in\n{text}"
        );
        assert!(
            sigs.iter()
                .any(|s| s.starts_with(&format!("{}:", fx.upstream_key.name))),
            "upstream signature dropped in\n{text}"
        );
        let upstream_ni = fx.narinfo_in(fx.cache(c), p);
        let file_hash = narinfo_field(&upstream_ni, "FileHash").unwrap();
        let nix32 = file_hash.strip_prefix("sha256:").unwrap();
        assert_eq!(
            narinfo_field(&text, "URL"),
            Some(format!("nar/{nix32}{}", c.nar_ext())),
            "URL not rewritten as expected in\n{text}"
        );
        assert_eq!(
            narinfo_field(&text, "NarHash"),
            narinfo_field(&upstream_ni, "NarHash")
        );
    }

    // Second copy with the upstream gone: served from the cache alone.
    upstream.stop().await;
    let copy2 = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(
        copy2.success(),
        "nix copy ({c:?}) from the cache alone (upstream stopped) failed: {copy2:?}"
    );
    assert!(
        copy2.all_valid(&fx.closure).await,
        "closure not valid after copy from cache alone: {copy2:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_through_proxy_xz() {
    copy_through_proxy("nix_copy_through_proxy_xz", Compression::Xz).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_through_proxy_zstd() {
    copy_through_proxy("nix_copy_through_proxy_zstd", Compression::Zstd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_through_proxy_none() {
    copy_through_proxy("nix_copy_through_proxy_none", Compression::None).await;
}

/// Two upstreams at once, with priorities, keys bound by position.
#[tokio::test(flavor = "multi_thread")]
async fn two_upstreams_with_priorities() {
    if !require_nix("two_upstreams_with_priorities") {
        return;
    }
    let fx = nix_fixture();
    let mut up_xz = StaticServer::start(fx.cache(Compression::Xz)).await;
    let mut up_zstd = StaticServer::start(fx.cache(Compression::Zstd)).await;
    let urls = vec![
        format!("{}?priority=10", up_xz.url()),
        format!("{}?priority=20", up_zstd.url()),
    ];
    let keys = [
        fx.upstream_key.public.as_str(),
        fx.upstream_key.public.as_str(),
    ];
    let proxy = Proxy::start(ProxyConfig::multi(&urls, &keys).secret_key(&fx.proxy_key)).await;

    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(
        copy.success(),
        "nix copy via two upstreams failed: {copy:?}"
    );
    assert!(copy.all_valid(&fx.closure).await, "{copy:?}");
    let nar_hits = up_xz.hits_with_prefix("/nar/") + up_zstd.hits_with_prefix("/nar/");
    assert!(
        nar_hits >= fx.closure.len(),
        "xz upstream: {:?}\nzstd upstream: {:?}",
        up_xz.all_hits(),
        up_zstd.all_hits()
    );

    up_xz.stop().await;
    up_zstd.stop().await;
    let copy2 = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy2.success(), "copy from cache alone failed: {copy2:?}");
    assert!(copy2.all_valid(&fx.closure).await, "{copy2:?}");
}

/// Two upstreams with their keys bound in the URL (`?public-key=`); the first
/// upstream holds only the wrong-signature path, so the closure must come from
/// the second.
#[tokio::test(flavor = "multi_thread")]
async fn two_upstreams_keys_in_url() {
    if !require_nix("two_upstreams_keys_in_url") {
        return;
    }
    let fx = nix_fixture();
    let up_bad = StaticServer::start(&fx.bad_cache).await;
    let up_zstd = StaticServer::start(fx.cache(Compression::Zstd)).await;
    let key = query_escape(&fx.upstream_key.public);
    let urls = vec![
        format!("{}?priority=10&public-key={key}", up_bad.url()),
        format!("{}?priority=20&public-key={key}", up_zstd.url()),
    ];
    let proxy = Proxy::start(ProxyConfig::multi(&urls, &[]).secret_key(&fx.proxy_key)).await;

    let copy = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(copy.success(), "nix copy failed: {copy:?}");
    assert!(copy.all_valid(&fx.closure).await, "{copy:?}");
    assert!(up_zstd.hits_with_prefix("/nar/") >= fx.closure.len());

    // The bad path is in the first upstream but not validly signed for it.
    let bad = nix_copy_from(
        proxy.url(),
        std::slice::from_ref(&fx.bad_path),
        &fx.proxy_key.public,
    )
    .await;
    assert!(!bad.success(), "badly signed path was copied: {bad:?}");
}

/// A path signed only by a key the proxy does not trust for the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn bad_signature_is_rejected() {
    if !require_nix("bad_signature_is_rejected") {
        return;
    }
    let fx = nix_fixture();
    let upstream = StaticServer::start(&fx.bad_cache).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let client = http_client();

    let ni = fetch(
        &client,
        &format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.bad_path)),
    )
    .await;
    assert_ne!(
        ni.status,
        200,
        "narinfo with only a wrong-key signature was served: {}",
        String::from_utf8_lossy(&ni.body)
    );
    assert!(
        upstream.hits(&format!("/{}.narinfo", hash_part(&fx.bad_path))) >= 1,
        "the proxy never asked the upstream: {:?}",
        upstream.all_hits()
    );

    let copy = nix_copy_from(
        proxy.url(),
        std::slice::from_ref(&fx.bad_path),
        &fx.proxy_key.public,
    )
    .await;
    assert!(!copy.success(), "badly signed path was copied: {copy:?}");
    assert!(
        !copy.all_valid(std::slice::from_ref(&fx.bad_path)).await,
        "badly signed path is valid in the target store"
    );
    // Also when the client trusts the wrong key itself, the proxy must not
    // hand the path out.
    let copy = nix_copy_from(
        proxy.url(),
        std::slice::from_ref(&fx.bad_path),
        &fx.wrong_key.public,
    )
    .await;
    assert!(!copy.success(), "badly signed path was copied: {copy:?}");
}

fn assert_not_served(what: &str, got: &Fetched, expected_len: usize) {
    let full_success = (200..300).contains(&got.status)
        && got.complete
        && got.error.is_none()
        && got.body.len() >= expected_len;
    eprintln!(
        "{what}: status {}, {} of {expected_len} bytes, complete {}, error {:?}",
        got.status,
        got.body.len(),
        got.complete,
        got.error
            .as_deref()
            .map(|e| e.chars().take(200).collect::<String>())
    );
    assert!(
        !full_success,
        "{what}: a damaged NAR was served completely and successfully \
         (status {}, {} bytes, expected {expected_len})",
        got.status,
        got.body.len()
    );
}

enum Damage {
    FlipMiddleByte,
    TruncateHalf,
}

async fn damaged_nar_not_served(test: &str, damage: Damage) {
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let copy_dir_tmp = tempfile::tempdir().unwrap();
    let cache = copy_dir_tmp.path().join("cache");
    copy_dir(fx.cache(Compression::None), &cache);
    let upstream_ni = fx.narinfo_in(&cache, &fx.big);
    let up_url = narinfo_field(&upstream_ni, "URL").unwrap();
    let nar_file = cache.join(&up_url);
    let mut data = std::fs::read(&nar_file).unwrap();
    let file_size: usize = narinfo_field(&upstream_ni, "FileSize")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(data.len(), file_size);
    assert!(file_size >= 1 << 20);
    match damage {
        Damage::FlipMiddleByte => {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        Damage::TruncateHalf => data.truncate(data.len() / 2),
    }
    std::fs::write(&nar_file, &data).unwrap();

    let mut upstream = StaticServer::start(&cache).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let client = http_client();

    let ni = fetch(
        &client,
        &format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.big)),
    )
    .await;
    assert_eq!(ni.status, 200, "narinfo of {}: {ni:?}", fx.big);
    let text = String::from_utf8(ni.body).unwrap();
    let url = narinfo_field(&text, "URL").expect("URL in narinfo");
    let expected_len: usize = narinfo_field(&text, "FileSize")
        .or_else(|| narinfo_field(&text, "NarSize"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(expected_len, file_size);
    let nar_url = format!("{}/{url}", proxy.url());

    let first = fetch(&client, &nar_url).await;
    assert_not_served("first GET", &first, expected_len);
    assert!(upstream.hits(&format!("/{up_url}")) >= 1);

    let second = fetch(&client, &nar_url).await;
    assert_not_served("second GET", &second, expected_len);

    // Nothing was stored: with the upstream gone it is still not served.
    upstream.stop().await;
    let third = fetch(&client, &nar_url).await;
    assert_not_served("GET after stopping the upstream", &third, expected_len);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_nar_is_not_served() {
    damaged_nar_not_served("corrupt_nar_is_not_served", Damage::FlipMiddleByte).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_nar_is_not_served() {
    damaged_nar_not_served("truncated_nar_is_not_served", Damage::TruncateHalf).await;
}

/// Ten concurrent GETs of one cold NAR: one upstream request, ten full bodies.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_nar_fetches_one_upstream_request() {
    if !require_nix("concurrent_cold_nar_fetches_one_upstream_request") {
        return;
    }
    let fx = nix_fixture();
    let c = Compression::Xz;
    let upstream = StaticServer::start(fx.cache(c)).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let client = http_client();

    let upstream_ni = fx.narinfo_in(fx.cache(c), &fx.big);
    let up_url = narinfo_field(&upstream_ni, "URL").unwrap();
    let expected = std::fs::read(fx.cache(c).join(&up_url)).unwrap();

    let ni = fetch(
        &client,
        &format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.big)),
    )
    .await;
    assert_eq!(ni.status, 200, "{ni:?}");
    let text = String::from_utf8(ni.body).unwrap();
    let url = narinfo_field(&text, "URL").unwrap();
    let nar_url = format!("{}/{url}", proxy.url());

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        let nar_url = nar_url.clone();
        tasks.push(tokio::spawn(async move { fetch(&client, &nar_url).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200, "GET #{i}: {:?}", got.error);
        assert!(got.complete, "GET #{i} body incomplete: {:?}", got.error);
        assert_eq!(got.body.len(), expected.len(), "GET #{i} length");
        assert!(got.body == expected, "GET #{i}: body differs from upstream");
    }
    assert_eq!(
        upstream.hits(&format!("/{up_url}")),
        1,
        "upstream NAR requests: {:?}",
        upstream.all_hits()
    );
}

/// An upstream that accepts connections but never answers: the proxy answers
/// (not 200) instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn hanging_upstream_times_out() {
    let hang = HangingUpstream::start();
    let mut cfg = ProxyConfig::new(format!("{}?priority=10", hang.url()), &[STATIC_PUBLIC_KEY]);
    cfg.dialer_timeout = "1s".into();
    cfg.response_header_timeout = "1s".into();
    let proxy = Proxy::start(cfg).await;
    let client = http_client();
    let url = format!("{}/{}.narinfo", proxy.url(), "0".repeat(32));
    let got = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer from the proxy within 30 s: {e:?}"));
    assert_ne!(got.status(), reqwest::StatusCode::OK);
}

/// Malformed paths are rejected with 400 without asking the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_paths_are_rejected() {
    // Works without Nix: an empty cache dir is upstream enough.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(
        empty.path().join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n",
    )
    .unwrap();
    let upstream = StaticServer::start(empty.path()).await;
    let proxy = Proxy::start(ProxyConfig::new(upstream.url(), &[STATIC_PUBLIC_KEY])).await;
    let before = upstream.all_hits();

    let e_hash = format!("{}e{}", "0".repeat(15), "0".repeat(16));
    assert_eq!(e_hash.len(), 32);
    let cases = [
        "/notahash.narinfo".to_string(),
        "/nar/../../etc/passwd".to_string(),
        format!("/{e_hash}.narinfo"),
    ];
    for path in &cases {
        let status = raw_request(proxy.addr(), "GET", path).await;
        assert_eq!(status, 400, "GET {path}");
    }
    let after = upstream.all_hits();
    let new: Vec<_> = after
        .iter()
        .filter(|(p, n)| p.as_str() != "/nix-cache-info" && before.get(*p) != Some(n))
        .collect();
    assert!(
        new.is_empty(),
        "the upstream was asked for malformed paths: {new:?}"
    );
}

/// HEAD of a cold narinfo answers 200 and does not fetch a NAR.
#[tokio::test(flavor = "multi_thread")]
async fn head_narinfo_cold_fetches_no_nar() {
    if !require_nix("head_narinfo_cold_fetches_no_nar") {
        return;
    }
    let fx = nix_fixture();
    let upstream = StaticServer::start(fx.cache(Compression::None)).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;
    let client = http_client();
    let resp = client
        .head(format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.top)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    // Give a background prefetch, if any, a moment to show up.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        upstream.hits_with_prefix("/nar/"),
        0,
        "HEAD of a narinfo fetched NARs: {:?}",
        upstream.all_hits()
    );
}

/// Every narinfo real Nix wrote into the fixture caches parses, verifies
/// against the upstream key, and is written back byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn narinfos_written_by_nix_round_trip() {
    if !require_nix("narinfos_written_by_nix_round_trip") {
        return;
    }
    let fx = nix_fixture();
    let key: ncps_core::PublicKey = fx.upstream_key.public.parse().unwrap();
    let mut seen = 0;
    for c in Compression::ALL {
        for p in &fx.closure {
            let text = fx.narinfo_in(fx.cache(c), p);
            let info: ncps_core::NarInfo = text.parse().unwrap();
            assert_eq!(
                info.to_string(),
                text,
                "{c:?} narinfo of {p} did not round-trip"
            );
            assert!(info.has_valid_signature(std::slice::from_ref(&key)), "{p}");
            assert_eq!(info.compression, c.as_str());
            seen += 1;
        }
    }
    assert!(seen >= 9, "only {seen} narinfos checked");
}
