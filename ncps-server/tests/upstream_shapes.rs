//! Upstreams of every shape real users have (issue 3, point 1), each built
//! from a real `nix copy` binary cache and rewritten to that shape, served by
//! a local test upstream ([`RouteServer`]), and fetched through the real
//! `ncps-server` binary by real Nix:
//!
//! - the standard layout with xz, zstd, bzip2 and no compression;
//! - nix-serve: `nar/<storehash>-<narhash>.nar`, `Compression: none`, no
//!   FileHash/FileSize;
//! - Attic: `nar/<storehash>.nar`, `Compression: zstd`, no FileHash/FileSize;
//! - an opaque NAR URL with a query string (`nar/blob?id=...&kind=nar`), which
//!   the upstream routes on path AND query;
//! - an upstream answering a `Compression: none` `.nar` with
//!   `Content-Encoding: zstd`.
//!
//! For each: a cold `nix copy --from` the proxy into a fresh store trusting
//! only the proxy's key (each NAR requested from the upstream exactly once), a
//! warm copy (no NAR requests upstream), then a copy with the upstream stopped.
//!
//! Tests skip loudly when Nix is missing and fail when
//! `NCPS_TEST_REQUIRE_ALL=1` is set.

mod common;

use std::collections::HashMap;

use common::*;

/// A test upstream of one shape.
struct Shape {
    name: &'static str,
    routes: Routes,
    /// Per closure path: the upstream request (path and query) for its NAR.
    nar_requests: HashMap<String, String>,
    /// Per closure path: the narinfo as the upstream serves it.
    narinfos: HashMap<String, String>,
    /// Per closure path: the NAR bytes the proxy must serve (no
    /// `Accept-Encoding`): the upstream's NAR bytes after content decoding.
    nar_bytes: HashMap<String, Vec<u8>>,
}

impl Shape {
    /// An upstream with only the `nix-cache-info` of the base cache `c`.
    fn empty(name: &'static str, fx: &NixFixture, c: Compression) -> Shape {
        let mut routes = Routes::new();
        routes.insert(
            "/nix-cache-info".to_string(),
            Route::file(&fx.cache(c).join("nix-cache-info"), "nix-cache-info"),
        );
        Shape {
            name,
            routes,
            nar_requests: HashMap::new(),
            narinfos: HashMap::new(),
            nar_bytes: HashMap::new(),
        }
    }

    /// Serve `narinfo` for `store_path`, and `nar` at the narinfo's `URL`
    /// (relative to the upstream root); `served` is what the proxy must end up
    /// serving for it.
    fn add(&mut self, store_path: &str, narinfo: String, nar: Route, served: Vec<u8>) {
        let url = narinfo_field(&narinfo, "URL").expect("URL in narinfo");
        let request = format!("/{url}");
        self.routes.insert(
            format!("/{}.narinfo", hash_part(store_path)),
            Route::narinfo(narinfo.clone()),
        );
        assert!(
            self.routes.insert(request.clone(), nar).is_none(),
            "[{}] two NARs at {request}",
            self.name
        );
        self.nar_requests.insert(store_path.to_string(), request);
        self.narinfos.insert(store_path.to_string(), narinfo);
        self.nar_bytes.insert(store_path.to_string(), served);
    }
}

/// The narinfo of `p` in base cache `c`, and the bytes of its NAR file there.
fn base(fx: &NixFixture, c: Compression, p: &str) -> (String, Vec<u8>) {
    let ni = fx.narinfo_in(fx.cache(c), p);
    let url = narinfo_field(&ni, "URL").unwrap();
    let nar = std::fs::read(fx.cache(c).join(&url)).unwrap();
    (ni, nar)
}

/// `sha256:<nix32>` -> `<nix32>`.
fn nix32_of(hash: &str) -> &str {
    hash.strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256:<nix32> hash: {hash}"))
}

/// The standard layout `nix copy --to file://...?compression=c` writes.
fn standard(name: &'static str, fx: &NixFixture, c: Compression) -> Shape {
    let mut shape = Shape::empty(name, fx, c);
    for p in &fx.closure {
        let (ni, nar) = base(fx, c, p);
        shape.add(p, ni, Route::nar(nar.clone()), nar);
    }
    shape
}

/// nix-serve: `URL: nar/<storehash>-<narhash nix32>.nar`, `Compression: none`,
/// no FileHash/FileSize.
fn nix_serve(fx: &NixFixture) -> Shape {
    let mut shape = Shape::empty("nix-serve", fx, Compression::None);
    for p in &fx.closure {
        let (ni, nar) = base(fx, Compression::None, p);
        let nar_hash = narinfo_field(&ni, "NarHash").unwrap();
        let url = format!("nar/{}-{}.nar", hash_part(p), nix32_of(&nar_hash));
        let ni = narinfo_with(&ni, "URL", Some(&url));
        let ni = narinfo_with(&ni, "Compression", Some("none"));
        let ni = narinfo_with(&ni, "FileHash", None);
        let ni = narinfo_with(&ni, "FileSize", None);
        shape.add(p, ni, Route::nar(nar.clone()), nar);
    }
    shape
}

/// Attic: `URL: nar/<storehash>.nar` holding zstd bytes, `Compression: zstd`,
/// no FileHash/FileSize.
fn attic(fx: &NixFixture) -> Shape {
    let mut shape = Shape::empty("attic", fx, Compression::Zstd);
    for p in &fx.closure {
        let (ni, nar) = base(fx, Compression::Zstd, p);
        let url = format!("nar/{}.nar", hash_part(p));
        let ni = narinfo_with(&ni, "URL", Some(&url));
        let ni = narinfo_with(&ni, "FileHash", None);
        let ni = narinfo_with(&ni, "FileSize", None);
        assert_eq!(narinfo_field(&ni, "Compression").as_deref(), Some("zstd"));
        shape.add(p, ni, Route::nar(nar.clone()), nar);
    }
    shape
}

/// An opaque URL with a query string, `nar/blob?id=<storehash>&kind=nar`, over
/// the xz cache (FileHash/FileSize kept): all three NARs share the path
/// `/nar/blob`, so only a proxy that keeps the query gets the right one.
fn query_url(fx: &NixFixture) -> Shape {
    let mut shape = Shape::empty("opaque URL with query", fx, Compression::Xz);
    for p in &fx.closure {
        let (ni, nar) = base(fx, Compression::Xz, p);
        let url = format!("nar/blob?id={}&kind=nar", hash_part(p));
        let ni = narinfo_with(&ni, "URL", Some(&url));
        shape.add(p, ni, Route::nar(nar.clone()), nar);
    }
    shape
}

/// The `Compression: none` cache unchanged (FileHash = NarHash), but every
/// `.nar` is sent zstd-compressed with `Content-Encoding: zstd` (the bytes of
/// the zstd cache's `.nar.zst`, which is zstd of the same NAR).
fn content_encoding_zstd(fx: &NixFixture) -> Shape {
    let mut shape = Shape::empty("Content-Encoding: zstd", fx, Compression::None);
    for p in &fx.closure {
        let (ni, nar) = base(fx, Compression::None, p);
        let (_, zst) = base(fx, Compression::Zstd, p);
        assert_ne!(zst, nar);
        let route = Route::nar(zst).header("content-encoding", "zstd");
        shape.add(p, ni, route, nar);
    }
    shape
}

/// The file extension of a NAR compressed with `compression`.
fn ext_of(compression: &str) -> &'static str {
    match compression {
        "none" => "",
        "xz" => ".xz",
        "zstd" => ".zst",
        "bzip2" => ".bz2",
        "br" => ".br",
        other => panic!("no extension known for compression {other}"),
    }
}

/// The upstream requests that were not for narinfos or nix-cache-info.
fn nar_hits(upstream: &RouteServer) -> HashMap<String, usize> {
    upstream
        .all_hits()
        .into_iter()
        .filter(|(p, _)| !p.ends_with(".narinfo") && p != "/nix-cache-info")
        .collect()
}

async fn check_shape(test: &str, build: fn(&NixFixture) -> Shape) {
    if !require_nix(test) {
        return;
    }
    let fx = nix_fixture();
    let shape = build(fx);
    let name = shape.name;
    assert_eq!(shape.nar_requests.len(), fx.closure.len(), "[{name}]");
    let mut upstream = RouteServer::start(shape.routes.clone()).await;
    let proxy = Proxy::start(
        ProxyConfig::new(upstream.url(), &[&fx.upstream_key.public]).secret_key(&fx.proxy_key),
    )
    .await;

    // 1. Cold: everything comes from the upstream, each NAR exactly once.
    let cold = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(
        cold.success(),
        "[{name}] cold nix copy failed: {cold:?}\nupstream requests: {:?}",
        upstream.all_hits()
    );
    assert!(
        cold.all_valid(&fx.closure).await,
        "[{name}] closure not valid after the cold copy: {cold:?}"
    );
    let after_cold = nar_hits(&upstream);
    for p in &fx.closure {
        let req = &shape.nar_requests[p];
        assert_eq!(
            upstream.hits(req),
            1,
            "[{name}] upstream requests for the NAR of {p} ({req}) during the cold copy; all: {:?}",
            upstream.all_hits()
        );
    }
    assert_eq!(
        after_cold.values().sum::<usize>(),
        fx.closure.len(),
        "[{name}] unexpected NAR requests upstream during the cold copy: {after_cold:?}"
    );

    // 2. What the proxy serves: its own narinfo (re-signed, URL
    //    nar/<nix32 of FileHash, else NarHash>.nar<ext>) and the right bytes.
    let client = http_client();
    for p in &fx.closure {
        let up_ni = &shape.narinfos[p];
        let got = fetch(
            &client,
            &format!("{}/{}.narinfo", proxy.url(), hash_part(p)),
        )
        .await;
        assert_eq!(got.status, 200, "[{name}] narinfo of {p}: {got:?}");
        let text = String::from_utf8(got.body).unwrap();
        assert_eq!(
            narinfo_field(&text, "StorePath").as_deref(),
            Some(p.as_str()),
            "[{name}]\n{text}"
        );
        assert_eq!(
            narinfo_field(&text, "NarHash"),
            narinfo_field(up_ni, "NarHash"),
            "[{name}]\n{text}"
        );
        assert_eq!(
            narinfo_field(&text, "NarSize"),
            narinfo_field(up_ni, "NarSize"),
            "[{name}]\n{text}"
        );
        let sigs = narinfo_fields(&text, "Sig");
        assert!(
            sigs.iter()
                .any(|s| s.starts_with(&format!("{}:", fx.proxy_key.name))),
            "[{name}] no proxy signature in\n{text}"
        );
        let compression = narinfo_field(up_ni, "Compression").unwrap_or_else(|| "bzip2".into());
        assert_eq!(
            narinfo_field(&text, "Compression").as_deref(),
            Some(compression.as_str()),
            "[{name}]\n{text}"
        );
        let id_hash = narinfo_field(up_ni, "FileHash")
            .or_else(|| narinfo_field(up_ni, "NarHash"))
            .unwrap();
        let expected_url = format!("nar/{}.nar{}", nix32_of(&id_hash), ext_of(&compression));
        let url = narinfo_field(&text, "URL").expect("URL in the proxy's narinfo");
        assert_eq!(url, expected_url, "[{name}] proxy narinfo of {p}:\n{text}");

        let nar = raw_get(proxy.addr(), &format!("/{url}"), &[]).await;
        assert_eq!(nar.status, 200, "[{name}] GET /{url}: {:?}", nar.headers);
        assert!(
            nar.header("content-encoding")
                .is_none_or(|e| e.eq_ignore_ascii_case("identity")),
            "[{name}] GET /{url} without Accept-Encoding came back with {:?}",
            nar.headers
        );
        let expected = &shape.nar_bytes[p];
        assert!(
            nar.body == *expected,
            "[{name}] GET /{url}: the proxy served {} bytes that differ from the {} expected ({:?})",
            nar.body.len(),
            expected.len(),
            nar.headers
        );
    }

    // 3. Warm, upstream still up: no NAR request reaches it.
    let warm = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(warm.success(), "[{name}] warm nix copy failed: {warm:?}");
    assert!(
        warm.all_valid(&fx.closure).await,
        "[{name}] closure not valid after the warm copy: {warm:?}"
    );
    assert_eq!(
        nar_hits(&upstream),
        after_cold,
        "[{name}] NAR requests reached the upstream during the warm copy"
    );

    // 4. Upstream stopped: served from the proxy's cache alone.
    upstream.stop().await;
    let alone = nix_copy_from(proxy.url(), &fx.closure, &fx.proxy_key.public).await;
    assert!(
        alone.success(),
        "[{name}] nix copy with the upstream stopped failed: {alone:?}"
    );
    assert!(
        alone.all_valid(&fx.closure).await,
        "[{name}] closure not valid after the copy with the upstream stopped: {alone:?}"
    );
    let big_url = narinfo_field(
        &String::from_utf8(
            fetch(
                &client,
                &format!("{}/{}.narinfo", proxy.url(), hash_part(&fx.big)),
            )
            .await
            .body,
        )
        .unwrap(),
        "URL",
    )
    .expect("URL in the proxy's narinfo with the upstream stopped");
    let nar = raw_get(proxy.addr(), &format!("/{big_url}"), &[]).await;
    assert_eq!(
        nar.status, 200,
        "[{name}] GET /{big_url} with the upstream stopped"
    );
    assert!(
        nar.body == shape.nar_bytes[&fx.big],
        "[{name}] GET /{big_url} with the upstream stopped: wrong bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_xz() {
    check_shape("standard_xz", |fx| {
        standard("standard xz", fx, Compression::Xz)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_zstd() {
    check_shape("standard_zstd", |fx| {
        standard("standard zstd", fx, Compression::Zstd)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_bzip2() {
    check_shape("standard_bzip2", |fx| {
        standard("standard bzip2", fx, Compression::Bzip2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_none() {
    check_shape("standard_none", |fx| {
        standard("standard none", fx, Compression::None)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_serve_shape() {
    check_shape("nix_serve_shape", nix_serve).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attic_shape() {
    check_shape("attic_shape", attic).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_url_with_query() {
    check_shape("opaque_url_with_query", query_url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_encoding_zstd_nar() {
    check_shape("content_encoding_zstd_nar", content_encoding_zstd).await;
}

/// The shapes are what they claim to be (no Nix needed beyond the fixture):
/// the rewritten narinfos still carry the upstream signature and the fields
/// each shape is defined by.
#[tokio::test(flavor = "multi_thread")]
async fn shapes_are_well_formed() {
    if !require_nix("shapes_are_well_formed") {
        return;
    }
    let fx = nix_fixture();
    let key: ncps_core::PublicKey = fx.upstream_key.public.parse().unwrap();
    let shapes = [
        nix_serve(fx),
        attic(fx),
        query_url(fx),
        content_encoding_zstd(fx),
    ];
    for shape in &shapes {
        for p in &fx.closure {
            let text = &shape.narinfos[p];
            let info: ncps_core::NarInfo = text.parse().unwrap();
            assert!(
                info.has_valid_signature(std::slice::from_ref(&key)),
                "[{}] rewritten narinfo lost its signature:\n{text}",
                shape.name
            );
            let url = narinfo_field(text, "URL").unwrap();
            let file_hash = narinfo_field(text, "FileHash");
            match shape.name {
                "nix-serve" => {
                    assert!(url.starts_with(&format!("nar/{}-", hash_part(p))), "{url}");
                    assert!(file_hash.is_none(), "{text}");
                }
                "attic" => {
                    assert_eq!(url, format!("nar/{}.nar", hash_part(p)));
                    assert!(file_hash.is_none(), "{text}");
                }
                "opaque URL with query" => assert!(url.contains('?'), "{url}"),
                _ => {
                    let route = &shape.routes[&format!("/{url}")];
                    assert!(
                        route
                            .headers
                            .contains(&("content-encoding".into(), "zstd".into()))
                    );
                }
            }
        }
    }
}
