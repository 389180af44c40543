//! Hostile clients (issue 10, point 5) against the real `ncps-server`
//! binary: path traversal in every encoding, oversized headers and bodies,
//! slow-loris clients, thousands of idle connections and more connections
//! than allowed. Each is refused or timed out while normal clients keep being
//! served, and the server's descriptors come back to where they were.
//!
//! The limits come from `SERVER_READ_HEADER_TIMEOUT`, `SERVER_IDLE_TIMEOUT`,
//! `SERVER_MAX_HEADER_BYTES` and `SERVER_MAX_CONNECTIONS` (see
//! `ncps_server::limits`), set short here.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ncps_core::SigningKey;
use ncps_core::testkit::upstream::{Fixture, fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `SERVER_READ_HEADER_TIMEOUT` here.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// `SERVER_IDLE_TIMEOUT` here.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// What a timeout may take beyond itself on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);

struct Setup {
    upstream: RouteServer,
    proxy: Proxy,
    fx: Fixture,
}

async fn setup(env: &[(&str, &str)]) -> Setup {
    let key = SigningKey::generate("hostile-clients-1");
    let fx = fixture("hostile-clients", 100_000, &key);
    let mut routes = Routes::new();
    routes.insert(
        "/nix-cache-info".into(),
        Route::new("StoreDir: /nix/store\n", "text/x-nix-cache-info"),
    );
    routes.insert(
        format!("/{}.narinfo", fx.hash()),
        Route::narinfo(fx.info.to_string()),
    );
    routes.insert(fx.nar_path(), Route::nar(fx.nar.clone()));
    let upstream = RouteServer::start(routes).await;
    let mut cfg = ProxyConfig::new(upstream.url(), &[&key.public_key().to_string()]);
    cfg.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let proxy = Proxy::start(cfg).await;
    Setup {
        upstream,
        proxy,
        fx,
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls (30 s at most) until the server has at least `count` descriptors
/// open: the connections just made have been accepted.
async fn held_by_server(proxy: &Proxy, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(proxy.pid()) < count {
        assert!(
            Instant::now() < deadline,
            "the server accepted too few connections: {} descriptors open, expected {count}",
            fd_count(proxy.pid())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls (20 s at most) until the server has at most `baseline` descriptors open.
async fn settles(proxy: &Proxy, baseline: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while fd_count(proxy.pid()) > baseline {
        assert!(
            Instant::now() < deadline,
            "{what}: the server still has {} descriptors open (baseline {baseline})",
            fd_count(proxy.pid())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `request` as is on a fresh connection and reads until the server
/// closes it (10 s at most); what came back.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    answer
}

fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A normal client: the narinfo, then the NAR, whole.
async fn normal_fetch(proxy: &Proxy, fx: &Fixture) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = fetch(&client, &format!("{}/{}.narinfo", proxy.url(), fx.hash())).await;
    assert!(
        r.status == 200 && r.complete,
        "normal client, narinfo: {r:?}"
    );
    let r = fetch(&client, &format!("{}/{}", proxy.url(), fx.info.url)).await;
    assert!(r.status == 200 && r.complete, "normal client: {r:?}");
    assert_eq!(r.body, fx.nar, "normal client: wrong bytes");
}

#[tokio::test]
async fn path_traversal_in_any_encoding_is_refused_without_reaching_anything() {
    let s = setup(&[]).await;
    normal_fetch(&s.proxy, &s.fx).await;
    let hits = s.upstream.total_hits();
    // What a traversal would be after: the key and the database beside storage.
    let secret = std::fs::read_to_string(s.proxy.dir().join("static.sec")).unwrap();
    let secret = secret.trim().split(':').nth(1).unwrap().to_owned();
    let nar = s.fx.info.url.clone();
    let hash = s.fx.hash().to_string();
    let paths = [
        "/nar/../static.sec".to_string(),
        "/nar/../../static.sec".into(),
        "/nar/..%2f..%2fstatic.sec".into(),
        "/nar/..%2F..%2Fdb.sqlite".into(),
        "/nar/%2e%2e/%2e%2e/static.sec".into(),
        "/nar/%2e%2e%2f%2e%2e%2fstatic.sec".into(),
        "/nar/.%2e/.%2e/static.sec".into(),
        "/nar/%252e%252e%252f%252e%252e%252fstatic.sec".into(),
        "/nar/%25252e%25252e%25252fstatic.sec".into(),
        "/nar/..%5c..%5cstatic.sec".into(),
        "/nar/..\\..\\static.sec".into(),
        "/nar/%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afstatic.sec".into(),
        "/nar/%e0%80%ae%e0%80%ae%e0%80%afstatic.sec".into(),
        "/nar/..%c0%af..%c0%afstatic.sec".into(),
        "/nar/..%c1%9c..%c1%9cstatic.sec".into(),
        "/nar/%u002e%u002e%u2215static.sec".into(),
        "/nar/..%00/static.sec".into(),
        "/nar/x%00.nar".into(),
        format!("/nar/{nar}%00.txt"),
        format!("/{nar}/../../static.sec"),
        format!("/{nar}%2f..%2f..%2fstatic.sec"),
        format!("/{hash}.narinfo/../../static.sec"),
        format!("/..%2f{hash}.narinfo"),
        "/../../static.sec".into(),
        "/..%2f..%2fstatic.sec".into(),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        "/..%2f..%2f..%2fetc%2fpasswd.narinfo".into(),
        "/../../../../etc/passwd.narinfo".into(),
        "//etc/passwd".into(),
        "/nar//etc/passwd".into(),
        "/nar/%2fetc%2fpasswd".into(),
        "/nar/....//....//static.sec".into(),
        "/nar/..;/..;/static.sec".into(),
        "http://ncps.test/nar/../../static.sec".into(),
        "/nar/.tmp/x.nar".into(),
    ];
    for path in &paths {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let answer = exchange(s.proxy.addr(), request.as_bytes()).await;
        let text = String::from_utf8_lossy(&answer);
        let status = status_of(&answer);
        assert!(
            matches!(status, 400 | 404),
            "GET {path}: answered {status}: {text}"
        );
        assert!(
            !text.contains(&secret) && !text.contains("SQLite format") && !text.contains("root:"),
            "GET {path} leaked a file: {text}"
        );
    }
    // Bytes no URL may hold: a NUL, a bare overlong UTF-8 sequence, a space.
    for raw in [
        &b"GET /nar/\x00../static.sec HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /nar/\xc0\xae\xc0\xae/static.sec HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /nar/.. /static.sec HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let answer = exchange(s.proxy.addr(), raw).await;
        let status = status_of(&answer);
        assert!(
            matches!(status, 400 | 404),
            "{:?}: answered {status}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(
        s.upstream.total_hits(),
        hits,
        "a traversal attempt reached the upstream"
    );
    normal_fetch(&s.proxy, &s.fx).await;
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    let s = setup(&[("SERVER_MAX_HEADER_BYTES", "16384")]).await;
    let addr = s.proxy.addr();
    normal_fetch(&s.proxy, &s.fx).await;
    let baseline = fd_count(s.proxy.pid());

    // One huge header, then many small ones: 431.
    let big = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let many = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    for (what, request) in [("a 100 kB header", big), ("500 headers", many)] {
        let answer = exchange(addr, request.as_bytes()).await;
        assert_eq!(
            status_of(&answer),
            431,
            "{what}: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    // A 10 GB upload: 405 at once, without reading it.
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "PUT /nar/{} HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000000\r\n\r\n",
            s.fx.info.url.trim_start_matches("nar/")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let _ = conn.write_all(&vec![0u8; 64 * 1024]).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .expect("no answer to a huge upload")
        .unwrap();
    assert_eq!(status_of(&answer[..n]), 405);
    drop(conn);

    // A GET with an endless chunked body: answered, and the server stops
    // taking the body (the writer's socket fails or stalls) within bounds.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        b"GET /nix-cache-info HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut read, mut write) = conn.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let chunk = format!("10000\r\n{}\r\n", "z".repeat(0x10000));
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    write.write_all(chunk.as_bytes()),
                )
                .await
                {
                    Ok(Ok(())) => {
                        sent.fetch_add(chunk.len(), Ordering::SeqCst);
                    }
                    // Refused, or no longer read: either way the server stopped taking it.
                    _ => return true,
                }
            }
            false
        })
    };
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut answer))
        .await
        .expect("no answer to a GET with an endless body")
        .unwrap();
    assert_eq!(status_of(&answer[..n]), 200);
    assert!(
        writer.await.unwrap(),
        "the server kept reading an endless request body ({} bytes)",
        sent.load(Ordering::SeqCst)
    );
    drop(read);
    assert!(started.elapsed() < Duration::from_secs(60));

    normal_fetch(&s.proxy, &s.fx).await;
    settles(&s.proxy, baseline, "after oversized requests").await;
}

#[tokio::test]
async fn slow_loris_clients_are_cut_while_others_are_served() {
    let header_timeout = format!("{}s", HEADER_TIMEOUT.as_secs());
    let idle_timeout = format!("{}s", IDLE_TIMEOUT.as_secs());
    let s = setup(&[
        ("SERVER_READ_HEADER_TIMEOUT", &header_timeout),
        ("SERVER_IDLE_TIMEOUT", &idle_timeout),
    ])
    .await;
    let addr = s.proxy.addr();
    normal_fetch(&s.proxy, &s.fx).await;
    let baseline = fd_count(s.proxy.pid());

    // 100 clients each sending one byte of a never-ending header every 200 ms.
    let started = Instant::now();
    let cut = Arc::new(AtomicUsize::new(0));
    let mut lorises = Vec::new();
    for _ in 0..100 {
        let cut = cut.clone();
        lorises.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: t\r\nX-Slow: ")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            // At most a minute of trickling.
            for _ in 0..300 {
                if s.write_all(b"a").await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    // An answer (408) before the close is fine too.
                    Ok(Ok(_)) | Err(_) => {}
                }
            }
            let took = started.elapsed();
            cut.fetch_add(1, Ordering::SeqCst);
            took
        }));
    }
    // Meanwhile, normal clients are served.
    let mut served = 0;
    while cut.load(Ordering::SeqCst) < 100 && started.elapsed() < Duration::from_secs(60) {
        normal_fetch(&s.proxy, &s.fx).await;
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served > 0);
    for loris in lorises {
        let took = loris.await.unwrap();
        assert!(
            took < HEADER_TIMEOUT + SLACK,
            "a slow-loris client was kept {took:?} (header timeout {HEADER_TIMEOUT:?})"
        );
    }
    eprintln!(
        "100 slow-loris clients cut within {:?}; {served} normal fetches meanwhile",
        started.elapsed()
    );
    settles(&s.proxy, baseline, "after slow-loris clients").await;
}

#[tokio::test]
async fn thousands_of_idle_connections_time_out_while_others_are_served() {
    // Long enough to open them all before the first times out.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
    let s = setup(&[
        ("SERVER_READ_HEADER_TIMEOUT", "10s"),
        ("SERVER_IDLE_TIMEOUT", "10s"),
    ])
    .await;
    let addr = s.proxy.addr();
    normal_fetch(&s.proxy, &s.fx).await;
    let baseline = fd_count(s.proxy.pid());

    // 2000 connections that say nothing, and 500 kept alive after one request.
    let started = Instant::now();
    let mut idle = Vec::new();
    for round in 1..=10 {
        let batch = (0..200).map(|_| async {
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                .await
                .expect("connect timed out")
                .unwrap()
        });
        idle.extend(futures::future::join_all(batch).await);
        // Each burst is accepted before the next: the kernel's accept queue
        // (the listen backlog) is what a burst tests, and it is tested on its
        // own in `server.rs`.
        held_by_server(&s.proxy, baseline + round * 200 - 50).await;
    }
    for _ in 0..500 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(status_of(&buf[..n]), 200);
        idle.push(c);
    }
    // The server holds them all (polled: the last ones may still be in the
    // accept queue).
    // Generous: on a loaded machine the server may take a while to accept
    // 2500 connections; the poll ends as soon as it holds them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak = fd_count(s.proxy.pid());
    // Some slack below 2500: descriptors of the baseline may have gone.
    while peak < baseline + 2400 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(fd_count(s.proxy.pid()));
    }
    assert!(
        peak >= baseline + 2400,
        "the server did not hold the connections ({peak} descriptors, baseline {baseline}, \
         after {:?})",
        started.elapsed()
    );
    // Normal clients are served while they are all open.
    for _ in 0..5 {
        normal_fetch(&s.proxy, &s.fx).await;
    }
    // Every idle connection is closed by the server.
    let closed = Arc::new(AtomicBool::new(true));
    let mut waits = Vec::new();
    for mut c in idle {
        let closed = closed.clone();
        waits.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let wait = async {
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            if tokio::time::timeout(IDLE_TIMEOUT + SLACK + Duration::from_secs(30), wait)
                .await
                .is_err()
            {
                closed.store(false, Ordering::SeqCst);
            }
        }));
    }
    for w in waits {
        w.await.unwrap();
    }
    assert!(
        closed.load(Ordering::SeqCst),
        "an idle connection was kept open"
    );
    eprintln!(
        "2500 idle connections ({peak} server descriptors at peak) all closed by the server after {:?}",
        started.elapsed()
    );
    settles(&s.proxy, baseline, "after idle connections").await;
    normal_fetch(&s.proxy, &s.fx).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_answered_503_until_some_close() {
    let s = setup(&[("SERVER_MAX_CONNECTIONS", "20")]).await;
    let addr = s.proxy.addr();
    normal_fetch(&s.proxy, &s.fx).await;
    let mut held = Vec::new();
    // 20 connections, each served once and kept alive.
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(status_of(&buf[..n]), 200);
        held.push(c);
    }
    let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 503, "{text}");
    assert!(text.contains("too many connections"), "{text}");
    assert!(s.proxy.log().contains("SERVER_MAX_CONNECTIONS"));
    drop(held);
    // Once they are gone, normal clients are served again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status_of(&answer) == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the connections closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    normal_fetch(&s.proxy, &s.fx).await;
}
