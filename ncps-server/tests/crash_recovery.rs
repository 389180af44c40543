//! Crashes (issue 10, point 3): the real `ncps-server` binary is killed with
//! SIGKILL 50 times at random points (from a seeded RNG, so every run kills
//! at the same offsets) while clients download NARs from a slow upstream.
//! After each kill, while the server is down:
//!
//! - `fsck` with content verification (the check `ncps-cli fsck
//!   --verify-content` runs, called as a library on the same backends) finds
//!   no inconsistency between the database and storage;
//! - every file under storage's `nar/` is a NAR of a fixture and hashes to
//!   its NarHash (checked here independently of fsck).
//!
//! Each restart then cleans up what the crash left (storage `.tmp`), no
//! client ever received a complete body with wrong bytes, and at the end
//! every NAR is served whole and matches its hash.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use ncps_core::fsck::{FsckOptions, fsck};
use ncps_core::testkit::upstream::{Fixture, fixture};
use ncps_core::{NixHash, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Kills in all.
const KILLS: usize = 50;
/// The seed of the kill points.
const SEED: u64 = 0x5eed_0fc4_a5a5;

/// A small deterministic RNG (xorshift64*), so kill points repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An upstream that sends bodies slowly (16 KiB every 5 ms), so kills land
/// in the middle of downloads. Survives the proxy's restarts.
struct SlowUpstream {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SlowUpstream {
    async fn start(files: HashMap<String, Vec<u8>>) -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Arc::new(files);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(answer(stream, files.clone()));
            }
        });
        SlowUpstream { addr, task }
    }
}

impl Drop for SlowUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream, files: Arc<HashMap<String, Vec<u8>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let Some(body) = files.get(&path) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for chunk in body.chunks(16 * 1024) {
        if stream.write_all(chunk).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stream.shutdown().await;
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            } else {
                found.push(e.path());
            }
        }
    }
    found
}

/// What the proxy was started with, as the server's own options, for fsck.
fn serve_options(proxy: &Proxy) -> ncps_server::options::ServeOptions {
    let storage = proxy.dir().join("storage");
    let db = proxy.dir().join("db.sqlite");
    let args = [
        "ncps-server".to_string(),
        "serve".into(),
        "--cache-storage-local".into(),
        storage.display().to_string(),
        "--cache-database-url".into(),
        format!("sqlite:{}", db.display()),
    ];
    ncps_server::options::Cli::parse_from(args)
        .serve_options()
        .1
}

/// The database and storage agree, and every stored NAR is whole: fsck
/// with content verification, and an independent hash of every file.
async fn consistent(proxy: &Proxy, by_file: &HashMap<String, &Fixture>, round: usize) -> usize {
    let options = serve_options(proxy);
    let settings = ncps_config::Settings::from_options(&options, &ncps_config::Machine::detect())
        .unwrap_or_else(|e| panic!("round {round}: the settings: {e}"));
    let backends = ncps_config::open(&settings)
        .await
        .unwrap_or_else(|e| panic!("round {round}: opening the backends: {e}"));
    let report = fsck(
        &backends,
        &FsckOptions {
            verify_content: true,
            repair: false,
            download_lock_ttl: Duration::from_secs(60),
        },
        &|_, _| {},
    )
    .await
    .unwrap_or_else(|e| panic!("round {round}: fsck failed to run: {e}"));
    assert!(
        report.findings.is_empty(),
        "round {round}: fsck found {:?}",
        report.findings
    );
    assert_eq!(
        report.busy, 0,
        "round {round}: NARs busy with the server down"
    );
    drop(backends);

    let stored = files_under(&proxy.dir().join("storage").join("nar"));
    for path in &stored {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let fx = by_file
            .get(&name)
            .unwrap_or_else(|| panic!("round {round}: unknown file in storage: {name}"));
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            NixHash::digest(&bytes),
            fx.info.nar_hash,
            "round {round}: {name} is stored with wrong bytes ({} of {} bytes)",
            bytes.len(),
            fx.nar.len()
        );
    }
    report.verified as usize
}

#[tokio::test]
async fn kill_9_during_downloads_loses_nothing_and_corrupts_nothing() {
    let key = SigningKey::generate("crash-1");
    // Different sizes make different NARs: more than the rounds use, so most
    // requests are misses that download.
    let fixtures: Vec<Fixture> = (0..4 * KILLS)
        .map(|i| fixture(&format!("crash-{i}"), 150_000 + i * 4_001, &key))
        .collect();
    let mut files = HashMap::new();
    files.insert(
        "/nix-cache-info".to_string(),
        b"StoreDir: /nix/store\n".to_vec(),
    );
    for fx in &fixtures {
        files.insert(
            format!("/{}.narinfo", fx.hash()),
            fx.info.to_string().into_bytes(),
        );
        files.insert(fx.nar_path(), fx.nar.clone());
    }
    let by_file: HashMap<String, &Fixture> = fixtures
        .iter()
        .map(|fx| (fx.info.url.trim_start_matches("nar/").to_owned(), fx))
        .collect();
    let upstream = SlowUpstream::start(files).await;
    let mut cfg = ProxyConfig::new(
        format!("http://{}", upstream.addr),
        &[&key.public_key().to_string()],
    );
    let spool = tempfile::tempdir().unwrap();
    cfg.extra_args = vec![
        "--cache-temp-path".into(),
        spool.path().display().to_string(),
    ];
    let mut proxy = Proxy::start(cfg).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let started = Instant::now();
    let mut rng = Rng(SEED);
    let (mut cut, mut whole, mut verified) = (0, 0, 0);
    let mut next_new = 0;
    for round in 0..KILLS {
        // Two to four clients: mostly a path not asked for yet (a miss), now
        // and then one that may be stored already (a hit).
        let mut clients = Vec::new();
        for _ in 0..2 + rng.below(3) {
            let fx = if rng.below(4) == 0 {
                &fixtures[rng.below(next_new.max(1) as u64) as usize]
            } else {
                let fx = &fixtures[next_new % fixtures.len()];
                next_new += 1;
                fx
            };
            let base = proxy.url().to_owned();
            let (hash, url) = (fx.hash().to_string(), fx.info.url.clone());
            let client = client.clone();
            clients.push((
                fx,
                tokio::spawn(async move {
                    let r = fetch(&client, &format!("{base}/{hash}.narinfo")).await;
                    if r.status != 200 {
                        return r;
                    }
                    fetch(&client, &format!("{base}/{url}")).await
                }),
            ));
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        proxy.kill();
        for (fx, client) in clients {
            let r = client.await.unwrap();
            if r.complete && r.status == 200 && r.body.len() == fx.nar.len() {
                assert_eq!(
                    r.body, fx.nar,
                    "round {round}: a complete body with wrong bytes"
                );
                whole += 1;
            } else {
                assert!(
                    r.body.len() <= fx.nar.len(),
                    "round {round}: more bytes than the NAR has"
                );
                cut += 1;
            }
        }
        verified = consistent(&proxy, &by_file, round).await;
        proxy.restart().await;
        // The restart throws away what the crash left half written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !files_under(&proxy.dir().join("storage").join(".tmp")).is_empty() {
            assert!(
                Instant::now() < deadline,
                "round {round}: unfinished writes left after a restart: {:?}",
                files_under(&proxy.dir().join("storage").join(".tmp"))
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every NAR asked for is served whole, from storage or fetched again.
    for fx in fixtures.iter().take(next_new.min(fixtures.len())) {
        let r = fetch(&client, &format!("{}/{}.narinfo", proxy.url(), fx.hash())).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = fetch(&client, &format!("{}/{}", proxy.url(), fx.info.url)).await;
        assert!(r.complete && r.status == 200, "{r:?}");
        assert_eq!(NixHash::digest(&r.body), fx.info.nar_hash);
    }
    eprintln!(
        "{KILLS} kills in {:?}: {whole} downloads complete before a kill, {cut} cut; \
         {verified} NARs stored and verified after the last kill",
        started.elapsed()
    );
    assert!(cut > 0, "no kill landed during a download");
}
