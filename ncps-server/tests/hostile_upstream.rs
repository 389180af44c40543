//! A hostile upstream (issue 10, point 2): a raw-TCP test upstream that
//! resets mid-body, truncates, sends wrong bytes, stalls before or after the
//! headers, answers 500, sends enormous headers or an endless body, in front
//! of the real `ncps-server` binary.
//!
//! Every case must end within the configured upstream timeouts with the right
//! status (502) or an aborted body, store nothing (no NAR file, nothing in
//! storage's `.tmp` or the spool directory), and leave nothing running: the
//! server's open file descriptors come back to what they were before the
//! case, and the upstream sees its connection closed. Afterwards the same NAR,
//! served right, is fetched and stored whole, so a failure poisons nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ncps_core::testkit::upstream::{Fixture, fixture};
use ncps_core::{NixHash, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `--cache-upstream-read-timeout` of the proxies here.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// `--cache-upstream-response-header-timeout` of the proxies here.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// What a case may take beyond its timeout (a loaded machine, retries).
const SLACK: Duration = Duration::from_secs(8);

/// How the upstream answers a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// A complete, correct answer.
    Normal,
    /// Headers and half the body, then a TCP reset.
    ResetMidBody,
    /// `Content-Length` of the whole, half the body, then a clean close.
    Truncate,
    /// The whole body with one byte flipped.
    WrongBytes,
    /// Nothing at all, until the client goes away.
    StallBeforeHeaders,
    /// Headers, then nothing until the client goes away.
    StallAfterHeaders,
    /// `500 Internal Server Error`.
    Status500,
    /// 2 MB of response headers.
    EnormousHeaders,
    /// A body without length that never ends.
    EndlessBody,
}

#[derive(Default)]
struct State {
    /// path -> (body, how to answer).
    files: HashMap<String, (Vec<u8>, Answer)>,
}

/// The raw-TCP upstream. Every answer closes its connection, so the proxy
/// keeps no pooled connection and its descriptors can be counted.
struct RawUpstream {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    /// Connections being answered now.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let open = Arc::new(AtomicUsize::new(0));
        let task = {
            let state = state.clone();
            let open = open.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    let open = open.clone();
                    open.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        answer(stream, &state).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        RawUpstream {
            addr,
            state,
            open,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn put(&self, path: &str, body: impl Into<Vec<u8>>, how: Answer) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_owned(), (body.into(), how));
    }

    fn set(&self, path: &str, how: Answer) {
        self.state.lock().unwrap().files.get_mut(path).unwrap().1 = how;
    }

    fn publish(&self, fx: &Fixture) {
        self.put(
            &format!("/{}.narinfo", fx.hash()),
            fx.info.to_string(),
            Answer::Normal,
        );
        self.put(&fx.nar_path(), fx.nar.clone(), Answer::Normal);
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head; its path.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.lines().next()?.split_whitespace().nth(1)?;
    Some(path.split('?').next().unwrap_or(path).to_owned())
}

/// Waits (at most a minute) until the client closes the connection.
async fn until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let wait = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), wait).await;
}

async fn answer(mut stream: TcpStream, state: &Mutex<State>) {
    let Some(path) = read_request(&mut stream).await else {
        return;
    };
    let found = state.lock().unwrap().files.get(&path).cloned();
    let Some((body, how)) = found else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let head = |len: Option<usize>| {
        let mut h = String::from("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n");
        if let Some(len) = len {
            h.push_str(&format!("Content-Length: {len}\r\n"));
        }
        h.push_str("Connection: close\r\n\r\n");
        h.into_bytes()
    };
    let half = body.len() / 2;
    match how {
        Answer::Normal => {
            let _ = stream.write_all(&head(Some(body.len()))).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
        Answer::ResetMidBody => {
            let _ = stream.write_all(&head(Some(body.len()))).await;
            let _ = stream.write_all(&body[..half]).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Answer::Truncate => {
            let _ = stream.write_all(&head(Some(body.len()))).await;
            let _ = stream.write_all(&body[..half]).await;
            let _ = stream.shutdown().await;
        }
        Answer::WrongBytes => {
            let mut wrong = body.clone();
            wrong[half] ^= 0x55;
            let _ = stream.write_all(&head(Some(body.len()))).await;
            let _ = stream.write_all(&wrong).await;
            let _ = stream.shutdown().await;
        }
        Answer::StallBeforeHeaders => until_closed(&mut stream).await,
        Answer::StallAfterHeaders => {
            let _ = stream.write_all(&head(Some(body.len()))).await;
            until_closed(&mut stream).await;
        }
        Answer::Status500 => {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops\n",
                )
                .await;
            let _ = stream.shutdown().await;
        }
        Answer::EnormousHeaders => {
            let mut h = String::from("HTTP/1.1 200 OK\r\n");
            let junk = "x".repeat(1000);
            for i in 0..2000 {
                h.push_str(&format!("X-Junk-{i}: {junk}\r\n"));
            }
            h.push_str(&format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ));
            let _ = stream.write_all(h.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        }
        Answer::EndlessBody => {
            let _ = stream.write_all(&head(None)).await;
            let chunk = vec![0x42u8; 64 * 1024];
            let started = Instant::now();
            // Bounded all the same: a minute, or 4 GiB.
            for _ in 0..65_536 {
                if stream.write_all(&chunk).await.is_err() || started.elapsed().as_secs() > 60 {
                    break;
                }
            }
        }
    }
}

/// How many file descriptors process `pid` has open.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

/// A client that keeps no connection, so the server's descriptors settle.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .no_gzip()
        .no_zstd()
        .no_brotli()
        .no_deflate()
        .build()
        .unwrap()
}

struct Setup {
    upstream: RawUpstream,
    proxy: Proxy,
    key: SigningKey,
    spool: tempfile::TempDir,
}

async fn setup() -> Setup {
    let upstream = RawUpstream::start().await;
    upstream.put(
        "/nix-cache-info",
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
        Answer::Normal,
    );
    let key = SigningKey::generate("hostile-upstream-1");
    let spool = tempfile::Builder::new()
        .prefix("ncps-hostile-spool-")
        .tempdir()
        .unwrap();
    let public = key.public_key().to_string();
    let mut cfg = ProxyConfig::new(upstream.url(), &[&public]);
    cfg.response_header_timeout = format!("{}s", HEADER_TIMEOUT.as_secs());
    cfg.extra_args = vec![
        "--cache-upstream-read-timeout".into(),
        format!("{}s", READ_TIMEOUT.as_secs()),
        "--cache-temp-path".into(),
        spool.path().display().to_string(),
    ];
    let proxy = Proxy::start(cfg).await;
    Setup {
        upstream,
        proxy,
        key,
        spool,
    }
}

impl Setup {
    fn storage(&self) -> PathBuf {
        self.proxy.dir().join("storage")
    }

    /// The stored file of `fx`'s NAR.
    fn stored(&self, fx: &Fixture) -> PathBuf {
        self.storage().join(&fx.info.url)
    }

    /// Nothing of a failed download is left: no NAR file, no temporary file
    /// in storage or the spool directory, the upstream connection closed, and
    /// the server's descriptors back to `baseline` (polled, 15 s at most).
    async fn assert_clean(&self, case: &str, fx: &Fixture, baseline: usize) {
        assert!(
            !self.stored(fx).exists(),
            "[{case}] a NAR was stored from a bad download"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let tmp = files_under(&self.storage().join(".tmp"));
            let spooled = files_under(self.spool.path());
            let fds = fd_count(self.proxy.pid());
            let open = self.upstream.open.load(Ordering::SeqCst);
            if tmp.is_empty() && spooled.is_empty() && fds <= baseline && open == 0 {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "[{case}] left behind: temp files {tmp:?}, spool files {spooled:?}, \
                     {fds} descriptors (baseline {baseline}), {open} upstream connections open"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The NAR cases: what the client sees, and how long the case may take.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 502 before any body.
    BadGateway,
    /// 200, then a body that ends in an error before it is complete.
    Aborted,
}

#[tokio::test]
async fn a_hostile_upstream_never_gets_a_bad_nar_stored_and_leaves_nothing_behind() {
    let s = setup().await;
    let cases = [
        (Answer::ResetMidBody, Expect::Aborted, READ_TIMEOUT),
        (Answer::Truncate, Expect::Aborted, READ_TIMEOUT),
        (Answer::WrongBytes, Expect::Aborted, READ_TIMEOUT),
        (
            Answer::StallBeforeHeaders,
            Expect::BadGateway,
            HEADER_TIMEOUT,
        ),
        (Answer::StallAfterHeaders, Expect::Aborted, READ_TIMEOUT),
        (Answer::Status500, Expect::BadGateway, READ_TIMEOUT),
        (Answer::EnormousHeaders, Expect::BadGateway, READ_TIMEOUT),
        (Answer::EndlessBody, Expect::Aborted, READ_TIMEOUT),
    ];
    // One store path per case (plus one without FileSize for the endless
    // body), all narinfos cached up front: a failing NAR marks the upstream
    // down for a while, which must not change what a later case sees.
    let mut fixtures = Vec::new();
    for (i, (how, _, _)) in cases.iter().enumerate() {
        let fx = fixture(&format!("hostile-{i}-{how:?}"), 300_000 + i * 1000, &s.key);
        s.upstream.publish(&fx);
        fixtures.push(fx);
    }
    let mut no_size = fixture("hostile-endless-no-file-size", 200_000, &s.key);
    no_size.info.file_size = None;
    no_size.info.file_hash = None;
    s.upstream.publish(&no_size);
    let client = client();
    for fx in fixtures.iter().chain([&no_size]) {
        let r = fetch(&client, &format!("{}/{}.narinfo", s.proxy.url(), fx.hash())).await;
        assert_eq!(r.status, 200, "narinfo of {}: {r:?}", fx.info.store_path);
    }
    let mut all = cases.to_vec();
    all.push((Answer::EndlessBody, Expect::Aborted, READ_TIMEOUT));
    let baseline = fd_count(s.proxy.pid());
    assert!(baseline > 0);

    for ((how, expect, timeout), fx) in all.into_iter().zip(fixtures.iter().chain([&no_size])) {
        let case = format!("{how:?}, FileSize {:?}", fx.info.file_size);
        s.upstream.set(&fx.nar_path(), how);
        let url = format!("{}/{}", s.proxy.url(), fx.info.url);
        let started = Instant::now();
        let r = fetch(&client, &url).await;
        let took = started.elapsed();
        match expect {
            Expect::BadGateway => {
                assert_eq!(r.status, 502, "[{case}] {r:?}");
                assert!(r.complete, "[{case}] {r:?}");
            }
            Expect::Aborted => {
                assert_eq!(r.status, 200, "[{case}] {:?}", r.error);
                assert!(
                    !r.complete && r.body.len() <= fx.nar.len() && r.body != fx.nar,
                    "[{case}] the client got a complete body ({} bytes, error {:?})",
                    r.body.len(),
                    r.error
                );
            }
        }
        eprintln!(
            "[{case}] status {} after {took:.2?}, {} body bytes",
            r.status,
            r.body.len()
        );
        assert!(
            took < timeout + SLACK,
            "[{case}] took {took:?}, timeout {timeout:?}"
        );
        s.assert_clean(&case, fx, baseline).await;

        // Served right, the same NAR now comes whole and is stored whole.
        s.upstream.set(&fx.nar_path(), Answer::Normal);
        let r = fetch(&client, &url).await;
        assert!(r.status == 200 && r.complete, "[{case}] after: {r:?}");
        assert_eq!(r.body, fx.nar, "[{case}] after: wrong bytes served");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !s.stored(fx).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stored = std::fs::read(s.stored(fx)).unwrap_or_default();
        assert_eq!(
            NixHash::digest(&stored),
            fx.info.nar_hash,
            "[{case}] after: stored NAR has the wrong hash"
        );
    }
    // Nothing but the good NARs is in storage.
    let mut stored: Vec<PathBuf> = files_under(&s.storage().join("nar"));
    stored.sort();
    let mut expected: Vec<PathBuf> = fixtures
        .iter()
        .chain([&no_size])
        .map(|fx| s.stored(fx))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);
    let log = s.proxy.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

#[tokio::test]
async fn a_hostile_upstream_answers_narinfos_with_502_in_time() {
    let cases = [
        (Answer::StallBeforeHeaders, HEADER_TIMEOUT),
        (Answer::StallAfterHeaders, READ_TIMEOUT),
        (Answer::Status500, READ_TIMEOUT),
        (Answer::EnormousHeaders, READ_TIMEOUT),
        (Answer::EndlessBody, READ_TIMEOUT),
        (Answer::ResetMidBody, READ_TIMEOUT),
        (Answer::Truncate, READ_TIMEOUT),
    ];
    // A fresh proxy per case: each failure marks the upstream down.
    for (how, timeout) in cases {
        let s = setup().await;
        let fx = fixture(&format!("hostile-narinfo-{how:?}"), 1000, &s.key);
        s.upstream.publish(&fx);
        let path = format!("/{}.narinfo", fx.hash());
        s.upstream.set(&path, how);
        let client = client();
        let baseline = fd_count(s.proxy.pid());
        let started = Instant::now();
        let r = fetch(&client, &format!("{}{path}", s.proxy.url())).await;
        let took = started.elapsed();
        eprintln!("[narinfo {how:?}] status {} after {took:.2?}", r.status);
        assert_eq!(r.status, 502, "[{how:?}] {r:?}");
        assert!(
            took < timeout + SLACK,
            "[{how:?}] took {took:?}, timeout {timeout:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while (fd_count(s.proxy.pid()) > baseline || s.upstream.open.load(Ordering::SeqCst) > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            fd_count(s.proxy.pid()) <= baseline,
            "[{how:?}] descriptors left open"
        );
        assert_eq!(
            s.upstream.open.load(Ordering::SeqCst),
            0,
            "[{how:?}] upstream connection left open"
        );
    }
}
