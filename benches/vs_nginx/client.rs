//! The clients: plain HTTP/1.1 keep-alive GETs, one connection per worker,
//! no content encoding asked for (as Nix does), bodies read to the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ncps_core::hash::HashingCounter;

use crate::cache::{Cache, CachedPath};

/// A client that keeps one connection and asks for no encoding.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .no_zstd()
        .no_brotli()
        .no_deflate()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// GETs `url` and reads the body; its hash when `hash` is set.
async fn get(client: &reqwest::Client, url: &str, hash: bool) -> (u64, Option<ncps_core::NixHash>) {
    let mut response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200, "GET {url}");
    let mut hasher = HashingCounter::default();
    let mut len = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    {
        len += chunk.len() as u64;
        if hash {
            hasher.update(&chunk);
        }
    }
    (len, hash.then(|| hasher.finish().0))
}

/// Every URL in turn over one connection.
pub async fn sequential(base: &str, paths: &[String]) -> Duration {
    let client = client();
    let started = Instant::now();
    for path in paths {
        get(&client, &format!("{base}{path}"), false).await;
    }
    started.elapsed()
}

/// Every URL once, shared among `connections` workers of one connection each.
pub async fn parallel(base: &str, paths: &[String], connections: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(paths.to_vec());
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (next, paths, base) = (next.clone(), paths.clone(), base.to_owned());
            tokio::spawn(async move {
                let client = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    get(&client, &format!("{base}{path}"), false).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    started.elapsed()
}

/// What Nix does for each path: its narinfo, then its NAR, over one
/// connection; with `verify`, each NAR's hash is checked.
pub async fn pass(base: &str, cache: &Cache, verify: bool) -> Duration {
    let client = client();
    let started = Instant::now();
    for path in &cache.paths {
        get(&client, &format!("{base}{}", path.narinfo_url), false).await;
        let (len, hash) = get(&client, &format!("{base}{}", path.nar_url), verify).await;
        assert_eq!(len, path.nar_size, "{}", path.nar_url);
        if verify {
            assert_eq!(hash, Some(path.nar_hash), "{}", path.nar_url);
        }
    }
    started.elapsed()
}

/// `clients` clients at once asking for one uncached NAR (after its
/// narinfo); how many got it whole and right.
pub async fn herd(base: &str, path: &CachedPath, clients: usize) -> usize {
    get(&client(), &format!("{base}{}", path.narinfo_url), false).await;
    let url = format!("{base}{}", path.nar_url);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&client(), &url, true).await })
        })
        .collect();
    let mut right = 0;
    for task in tasks {
        let (len, hash) = task.await.unwrap();
        if len == path.nar_size && hash == Some(path.nar_hash) {
            right += 1;
        }
    }
    right
}
