//! Upstream behaviour against real HTTP servers in-process: health, retries
//! of reset connections, and credentials for private upstreams.

use std::io::{Read, Write};
use std::sync::Arc;

use base64::Engine;
use hyper::StatusCode;
use ncps_core::netrc::Netrc;
use ncps_core::testkit::upstream::{TestUpstream, fixture};
use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions};
use ncps_core::{Cache, CacheOptions, SigningKey};

fn upstream(
    url: &str,
    key: &SigningKey,
    priority: Option<u32>,
    options: UpstreamOptions,
) -> Upstream {
    let mut config = UpstreamConfig::parse(url).unwrap();
    config.priority = priority;
    config.public_keys.push(key.public_key());
    Upstream::new(config, options).unwrap()
}

fn cache(upstreams: Vec<Upstream>, dir: &tempfile::TempDir) -> Cache {
    Cache::new(
        Arc::new(ncps_store::LocalStorage::new(dir.path().join("store")).unwrap()),
        Arc::new(ncps_lock::LocalLock::new()),
        Arc::new(ncps_db::SqliteDb::open(dir.path().join("db.sqlite")).unwrap()),
        upstreams,
        SigningKey::generate("proxy-1"),
        CacheOptions::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_skipped_until_a_health_check_finds_it_back() {
    let flaky = TestUpstream::start().await;
    let steady = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let paths: Vec<_> = ["one", "two", "three"]
        .iter()
        .map(|n| fixture(n, 100, &key))
        .collect();
    for f in &paths {
        f.publish(&steady, &f.nar);
        flaky.put(
            &format!("/{}.narinfo", f.hash()),
            StatusCode::SERVICE_UNAVAILABLE,
            "down",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(
        vec![
            upstream(&flaky.url, &key, Some(10), UpstreamOptions::default()),
            upstream(&steady.url, &key, Some(20), UpstreamOptions::default()),
        ],
        &dir,
    );
    let hits =
        |f: &ncps_core::testkit::upstream::Fixture| flaky.hits(&format!("/{}.narinfo", f.hash()));

    assert!(cache.narinfo(&paths[0].hash()).await.unwrap().is_some());
    assert_eq!(hits(&paths[0]), 1);
    assert!(!cache.upstreams()[0].is_healthy());
    // Down: the next request does not go there at all.
    assert!(cache.narinfo(&paths[1].hash()).await.unwrap().is_some());
    assert_eq!(hits(&paths[1]), 0);

    // Back: its nix-cache-info answers, and a health check notices.
    flaky.put("/nix-cache-info", StatusCode::OK, "StoreDir: /nix/store\n");
    cache.check_upstreams().await;
    assert!(cache.upstreams()[0].is_healthy());
    assert!(cache.narinfo(&paths[2].hash()).await.unwrap().is_some());
    assert_eq!(hits(&paths[2]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_upstream_down_stored_paths_are_still_served() {
    let up = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("kept", 1000, &key);
    f.publish(&up, &f.nar);
    let dir = tempfile::tempdir().unwrap();
    let first = cache(
        vec![upstream(&up.url, &key, None, UpstreamOptions::default())],
        &dir,
    );
    let text = first.narinfo(&f.hash()).await.unwrap().unwrap();
    let file = ncps_core::nar_file::NarFile::for_narinfo(&f.info).unwrap();
    let mut body = first.nar(&file).await.unwrap().unwrap().body;
    while futures::StreamExt::next(&mut body).await.is_some() {}
    first.stored_nar_size(&file).await.unwrap().expect("stored");
    drop(first);

    // A restart with the upstream gone.
    let dead = TestUpstream::dead();
    let mut down = upstream(&dead.url, &key, None, UpstreamOptions::default());
    assert!(!down.check_health().await);
    down.discover_priority(&UpstreamConfig::parse(&dead.url).unwrap())
        .await;
    let second = cache(vec![down], &dir);
    assert_eq!(second.narinfo(&f.hash()).await.unwrap(), Some(text));
    assert!(second.nar(&file).await.unwrap().is_some());
    let other = fixture("never-seen", 10, &key);
    let e = second.narinfo(&other.hash()).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
}

/// A server whose first connection is closed without an answer, and whose
/// second gets `response`.
fn resetting_server(response: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let (first, _) = listener.accept().unwrap();
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = second.read(&mut buf).unwrap();
        second.write_all(response.as_bytes()).unwrap();
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_is_retried() {
    let key = SigningKey::generate("up-1");
    let f = fixture("retried", 100, &key);
    let text = f.info.to_string();
    let url = resetting_server(format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    ));
    let u = upstream(&url, &key, None, UpstreamOptions::default());
    let got = u
        .narinfo(&f.hash())
        .await
        .unwrap()
        .expect("narinfo after a retry");
    assert_eq!(got, f.info);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_upstreams_get_basic_auth_from_netrc_or_a_bearer_token() {
    let key = SigningKey::generate("up-1");
    let f = fixture("private", 100, &key);
    let up = TestUpstream::start().await;
    f.publish(&up, &f.nar);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pass")
    );
    up.require_authorization(&basic);

    // Without credentials: a clear error that names no secret.
    let anonymous = upstream(&up.url, &key, None, UpstreamOptions::default());
    let e = anonymous.narinfo(&f.hash()).await.unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");

    let netrc = Netrc::parse("machine 127.0.0.1 login alice password s3cret-pass\n").unwrap();
    let options = UpstreamOptions {
        netrc: Some(Arc::new(netrc)),
        ..UpstreamOptions::default()
    };
    let with_netrc = upstream(&up.url, &key, None, options);
    assert!(with_netrc.narinfo(&f.hash()).await.unwrap().is_some());
    assert!(
        !format!("{with_netrc:?}").contains("s3cret"),
        "{with_netrc:?}"
    );

    // User info in the URL works too, and is never shown.
    let with_userinfo = upstream(
        &up.url.replace("http://", "http://alice:s3cret-pass@"),
        &key,
        None,
        UpstreamOptions::default(),
    );
    assert!(with_userinfo.narinfo(&f.hash()).await.unwrap().is_some());
    assert!(!format!("{with_userinfo:?}").contains("s3cret"));
    assert!(!with_userinfo.url().as_str().contains("s3cret"));

    // A bearer token from a file, bound to this upstream only.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-123\n").unwrap();
    up.require_authorization("Bearer tok-123");
    let bearer = upstream(
        &format!("{}?bearer-token-file={}", up.url, token_file.display()),
        &key,
        None,
        UpstreamOptions::default(),
    );
    assert!(bearer.narinfo(&f.hash()).await.unwrap().is_some());
    assert!(!format!("{bearer:?}").contains("tok-123"));
    assert!(!bearer.url().as_str().contains("token"));

    let bad = UpstreamConfig::parse("http://alice:s3cret-pass@[::1")
        .unwrap_err()
        .to_string();
    assert!(!bad.contains("s3cret"), "{bad}");
}
