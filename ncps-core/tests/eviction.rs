//! LRU eviction, pins and access times in the engine, against real HTTP
//! upstreams served in-process and real backends (local storage, local
//! locks, SQLite). Access times are set through the database where a test
//! needs an order, rather than waiting for the clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ncps_core::eviction::{EvictionOptions, LRU_LOCK_KEY};
use ncps_core::nar_file::NarFile;
use ncps_core::testkit::upstream::{Fixture, TestUpstream, fixture};
use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions};
use ncps_core::{
    Cache, CacheOptions, Lock, MetadataDb, NarInfo, NarStorage, SigningKey, Storage, StorePath,
};

/// The longest any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

struct Setup {
    cache: Cache,
    storage: Arc<dyn Storage>,
    db: Arc<dyn MetadataDb>,
    lock: Arc<dyn Lock>,
    upstream: TestUpstream,
    key: SigningKey,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(ncps_store::LocalStorage::new(dir.path().join("store")).unwrap());
    let db: Arc<dyn MetadataDb> =
        Arc::new(ncps_db::SqliteDb::open(dir.path().join("db.sqlite")).unwrap());
    let lock: Arc<dyn Lock> = Arc::new(ncps_lock::LocalLock::new());
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let mut config = UpstreamConfig::parse(&upstream.url).unwrap();
    config.public_keys.push(key.public_key());
    let upstreams = vec![Upstream::new(config, UpstreamOptions::default()).unwrap()];
    let cache = Cache::new(
        storage.clone(),
        lock.clone(),
        db.clone(),
        upstreams,
        SigningKey::generate("proxy-1"),
        CacheOptions::default(),
    );
    Setup {
        cache,
        storage,
        db,
        lock,
        upstream,
        key,
        _dir: dir,
    }
}

impl Setup {
    /// A path of `size` NAR bytes referencing `references`, on the upstream
    /// (the bytes depend on the name's length: give paths of one test names
    /// of different lengths).
    fn path(&self, name: &str, size: usize, references: &[&Fixture]) -> Fixture {
        let mut f = fixture(name, size, &self.key);
        f.info.references = references
            .iter()
            .map(|r| r.info.store_path.clone())
            .collect::<Vec<StorePath>>();
        f.info.sigs.clear();
        f.info.sign(&self.key);
        f.publish(&self.upstream, &f.nar);
        f
    }

    /// Fetches a path's narinfo and NAR through the cache, and waits until
    /// the NAR is stored.
    async fn fetch(&self, f: &Fixture) -> NarFile {
        let text = self
            .cache
            .narinfo(&f.hash())
            .await
            .unwrap()
            .expect("narinfo");
        let info: NarInfo = text.parse().unwrap();
        let file: NarFile = info.url.strip_prefix("nar/").unwrap().parse().unwrap();
        let body = self.cache.nar(&file).await.unwrap().expect("nar").body;
        assert_eq!(read_all(body).await, f.nar);
        let started = Instant::now();
        while !matches!(
            self.db.get_nar_storage(file.as_str()).await.unwrap(),
            Some(NarStorage::Stored(_))
        ) {
            assert!(started.elapsed() < DEADLINE, "{file} never stored");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        file
    }

    /// Sets the last use of a NAR and its narinfo to `at` (seconds since the epoch).
    async fn used_at(&self, f: &Fixture, file: &NarFile, at: i64) {
        self.db.touch_nar(file.as_str(), at).await.unwrap();
        self.db.touch_narinfo(f.hash().as_str(), at).await.unwrap();
    }

    async fn stored(&self, file: &NarFile) -> bool {
        self.storage
            .head(&file.storage_key())
            .await
            .unwrap()
            .is_some()
    }
}

async fn read_all(mut body: ncps_core::ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn options(max_size: u64) -> EvictionOptions {
    EvictionOptions {
        min_age: Duration::ZERO,
        ..EvictionOptions::new(max_size)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicts_least_recently_used_until_under_the_limit_and_fetches_again() {
    let s = setup().await;
    let a = s.path("lru-a", 100_000, &[]);
    let b = s.path("lru-bb", 100_000, &[]);
    let c = s.path("lru-ccc", 100_000, &[]);
    let d = s.path("lru-dddd", 100_000, &[]);
    let mut files = Vec::new();
    for f in [&a, &b, &c, &d] {
        files.push(s.fetch(f).await);
    }
    s.cache.flush_access_log().await.unwrap();
    // Used in the order a, c, d, b (long ago, so no minimum age applies).
    for (f, file, at) in [
        (&a, &files[0], 1_000),
        (&b, &files[1], 4_000),
        (&c, &files[2], 2_000),
        (&d, &files[3], 3_000),
    ] {
        s.used_at(f, file, at).await;
    }

    let dry = s
        .cache
        .evict(&EvictionOptions {
            dry_run: true,
            ..options(250_000)
        })
        .await
        .unwrap();
    assert_eq!(
        dry.evicted
            .iter()
            .map(|n| n.file.as_str())
            .collect::<Vec<_>>(),
        vec![files[0].as_str(), files[2].as_str()],
        "a dry run lists a and c"
    );
    assert!(s.stored(&files[0]).await, "a dry run removed a NAR");

    let report = s.cache.evict(&options(250_000)).await.unwrap();
    assert!(report.ran);
    assert_eq!(report.bytes_before, 400_000);
    assert_eq!(report.bytes_after, 200_000);
    assert_eq!(
        report
            .evicted
            .iter()
            .map(|n| n.file.as_str())
            .collect::<Vec<_>>(),
        vec![files[0].as_str(), files[2].as_str()],
        "the two least recently used go, oldest first"
    );
    assert_eq!(
        report.evicted[0].store_paths,
        vec![a.info.store_path.to_string()]
    );
    for (file, kept) in files.iter().zip([false, true, false, true]) {
        assert_eq!(s.stored(file).await, kept, "{file}");
    }
    assert!(s.db.get_narinfo(a.hash().as_str()).await.unwrap().is_none());
    assert!(s.db.get_nar(files[0].as_str()).await.unwrap().is_none());
    assert_eq!(
        s.db.storage_usage().await.unwrap().stored_bytes,
        200_000,
        "the database adds up what storage holds"
    );

    // Under the limit, a run removes nothing.
    let again = s.cache.evict(&options(250_000)).await.unwrap();
    assert!(again.evicted.is_empty());

    // An evicted path is fetched again from the upstream.
    assert_eq!(s.upstream.hits(&a.nar_path()), 1);
    s.fetch(&a).await;
    assert_eq!(s.upstream.hits(&a.nar_path()), 2, "not fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_closure_is_never_evicted() {
    let s = setup().await;
    let leaf = s.path("pin-leaf", 50_000, &[]);
    let middle = s.path("pin-middle", 50_000, &[&leaf]);
    let top = s.path("pin-top", 50_000, &[&middle]);
    let other = s.path("pin-other", 50_000, &[]);
    let mut files = Vec::new();
    for (i, f) in [&leaf, &middle, &top, &other].into_iter().enumerate() {
        let file = s.fetch(f).await;
        s.cache.flush_access_log().await.unwrap();
        s.used_at(f, &file, 1_000 + i as i64).await;
        files.push(file);
    }
    let pinned = s.cache.pin(&top.hash()).await.unwrap().expect("pinned");
    assert!(pinned.new);
    assert_eq!(pinned.closure_paths, 3, "top, middle and leaf");

    let report = s.cache.evict(&options(0)).await.unwrap();
    assert_eq!(
        report
            .evicted
            .iter()
            .map(|n| n.file.as_str())
            .collect::<Vec<_>>(),
        vec![files[3].as_str()],
        "only the unpinned path goes"
    );
    assert_eq!(report.skipped_pinned, 3);
    assert!(!report.within_limit());
    for file in &files[..3] {
        assert!(s.stored(file).await, "{file} of the pinned closure went");
    }

    assert!(s.cache.unpin(&top.hash()).await.unwrap());
    assert!(!s.cache.unpin(&top.hash()).await.unwrap());
    let report = s.cache.evict(&options(0)).await.unwrap();
    assert_eq!(report.evicted.len(), 3, "unpinned, the closure goes");
    assert_eq!(report.bytes_after, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nar_being_read_or_downloaded_is_not_evicted() {
    let s = setup().await;
    let a = s.path("busy-a", 80_000, &[]);
    let b = s.path("busy-bb", 80_000, &[]);
    let file_a = s.fetch(&a).await;
    let file_b = s.fetch(&b).await;
    s.cache.flush_access_log().await.unwrap();
    s.used_at(&a, &file_a, 1_000).await;
    s.used_at(&b, &file_b, 1_000).await;

    // A client is reading a's stored bytes; someone holds b's download lock.
    let reading = s.cache.nar(&file_a).await.unwrap().expect("nar").body;
    let held = s
        .lock
        .try_acquire(
            &format!("download:{}", file_b.storage_key()),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("download lock");
    let report = s.cache.evict(&options(0)).await.unwrap();
    assert!(report.evicted.is_empty(), "{report:?}");
    assert_eq!(report.skipped_busy, 2);
    assert_eq!(read_all(reading).await, a.nar, "the reader got every byte");

    // Read and released, both go.
    held.release().await.unwrap();
    s.used_at(&a, &file_a, 1_000).await;
    let report = s.cache.evict(&options(0)).await.unwrap();
    assert_eq!(report.evicted.len(), 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recent_paths_are_kept_and_one_instance_evicts_at_a_time() {
    let s = setup().await;
    let a = s.path("recent-a", 10_000, &[]);
    let file = s.fetch(&a).await;

    // Just used: within the minimum age.
    let report = s.cache.evict(&EvictionOptions::new(0)).await.unwrap();
    assert!(report.evicted.is_empty());
    assert!(report.stopped_at_recent);
    assert!(s.stored(&file).await);

    // Another instance is evicting: this one skips its run.
    let held = s
        .lock
        .try_acquire(LRU_LOCK_KEY, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("eviction lock");
    let report = s.cache.evict(&options(0)).await.unwrap();
    assert!(!report.ran);
    assert!(s.stored(&file).await);
    held.release().await.unwrap();
    assert_eq!(s.cache.evict(&options(0)).await.unwrap().evicted.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_write_nothing_until_the_access_log_is_flushed() {
    let s = setup().await;
    let a = s.path("hits-a", 10_000, &[]);
    let file = s.fetch(&a).await;
    s.cache.flush_access_log().await.unwrap();
    s.used_at(&a, &file, 1_000).await;

    for _ in 0..5 {
        s.cache.narinfo(&a.hash()).await.unwrap().expect("narinfo");
        let body = s.cache.nar(&file).await.unwrap().expect("nar").body;
        read_all(body).await;
    }
    assert_eq!(
        s.db.get_nar(file.as_str())
            .await
            .unwrap()
            .unwrap()
            .last_accessed_at,
        1_000,
        "a hit wrote to the database"
    );
    assert_eq!(
        s.db.get_narinfo(a.hash().as_str())
            .await
            .unwrap()
            .unwrap()
            .last_accessed_at,
        1_000
    );
    s.cache.flush_access_log().await.unwrap();
    let flushed =
        s.db.get_nar(file.as_str())
            .await
            .unwrap()
            .unwrap()
            .last_accessed_at;
    assert!(flushed > 1_000, "the flush did not record the hits");
    let counters: std::collections::HashMap<String, i64> =
        s.db.list_counters().await.unwrap().into_iter().collect();
    assert_eq!(counters.get("nar_hits"), Some(&5), "{counters:?}");
    assert_eq!(counters.get("narinfo_hits"), Some(&5), "{counters:?}");
    assert_eq!(counters.get("narinfo_misses"), Some(&1), "{counters:?}");
    assert_eq!(
        counters.get(&format!("nar_fetches:{}/", s.upstream.url)),
        Some(&1),
        "{counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nars_of_unknown_storage_are_looked_up_before_eviction() {
    let s = setup().await;
    let a = s.path("unknown-a", 30_000, &[]);
    let file = s.fetch(&a).await;
    s.db.set_nar_storage(file.as_str(), NarStorage::Unknown)
        .await
        .unwrap();
    assert_eq!(s.db.storage_usage().await.unwrap().stored_bytes, 0);
    let report = s
        .cache
        .evict(&EvictionOptions::new(1_000_000))
        .await
        .unwrap();
    assert_eq!(
        report.bytes_before, 30_000,
        "the unknown NAR was not counted"
    );
    assert_eq!(
        s.db.get_nar_storage(file.as_str()).await.unwrap(),
        Some(NarStorage::Stored(30_000))
    );
}
