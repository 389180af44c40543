//! The cache engine against real HTTP upstreams served in-process, with
//! real backends (local storage, local locks, SQLite). Needs no outside service.

use std::sync::Arc;

use futures::StreamExt;
use hyper::StatusCode;
use ncps_core::nar_file::NarFile;
use ncps_core::testkit::upstream::{Gate, TestUpstream, fixture};
use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions};
use ncps_core::{Cache, CacheOptions, NarInfo, SigningKey, Storage};

/// The longest any one step may take before the test fails.
const STEP: std::time::Duration = std::time::Duration::from_secs(10);

struct Setup {
    cache: Cache,
    storage: Arc<dyn Storage>,
    db: Arc<dyn ncps_core::MetadataDb>,
    _dir: tempfile::TempDir,
}

fn setup(upstreams: &[(&TestUpstream, &SigningKey, Option<u32>)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(ncps_store::LocalStorage::new(dir.path().join("store")).unwrap());
    setup_with(dir, storage, upstreams)
}

/// [`setup`] with the given storage; the database goes in `dir`.
fn setup_with(
    dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    upstreams: &[(&TestUpstream, &SigningKey, Option<u32>)],
) -> Setup {
    let db: Arc<dyn ncps_core::MetadataDb> =
        Arc::new(ncps_db::SqliteDb::open(dir.path().join("db.sqlite")).unwrap());
    let lock = Arc::new(ncps_lock::LocalLock::new());
    let upstreams = upstreams
        .iter()
        .map(|(u, key, priority)| {
            let mut config = UpstreamConfig::parse(&u.url).unwrap();
            config.priority = *priority;
            config.public_keys.push(key.public_key());
            Upstream::new(config, UpstreamOptions::default()).unwrap()
        })
        .collect();
    let cache = Cache::new(
        storage.clone(),
        lock,
        db.clone(),
        upstreams,
        SigningKey::generate("proxy-1"),
        CacheOptions::default(),
    );
    Setup {
        cache,
        storage,
        db,
        _dir: dir,
    }
}

async fn read_all(mut body: ncps_core::ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narinfo_is_resigned_and_nar_cached_after_one_download() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("hello", 300_000, &key);
    f.publish(&upstream, &f.nar);
    let s = setup(&[(&upstream, &key, None)]);

    let text = s.cache.narinfo(&f.hash()).await.unwrap().expect("narinfo");
    let served: NarInfo = text.parse().unwrap();
    assert!(
        served.has_valid_signature(&[s.cache.public_key()]),
        "not signed by the proxy"
    );
    assert!(
        served.has_valid_signature(&[key.public_key()]),
        "upstream signature lost"
    );
    let file: NarFile = served.url.strip_prefix("nar/").unwrap().parse().unwrap();

    // A second lookup comes from the database.
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    assert_eq!(upstream.hits(&format!("/{}.narinfo", f.hash())), 1);

    let nar = s.cache.nar(&file).await.unwrap().expect("nar");
    assert_eq!(nar.size, Some(f.nar.len() as u64));
    assert_eq!(read_all(nar.body).await.unwrap(), f.nar);
    let again = s.cache.nar(&file).await.unwrap().expect("nar");
    assert_eq!(read_all(again.body).await.unwrap(), f.nar);
    assert_eq!(
        upstream.hits(&f.nar_path()),
        1,
        "the warm hit went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_upstream_download() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("popular", 2_000_000, &key);
    f.publish(&upstream, &f.nar);
    let s = setup(&[(&upstream, &key, None)]);
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    let file = NarFile::for_narinfo(&f.info).unwrap();

    let requests = (0..8).map(|_| {
        let cache = s.cache.clone();
        let file = file.clone();
        tokio::spawn(async move {
            read_all(cache.nar(&file).await.unwrap().unwrap().body)
                .await
                .unwrap()
        })
    });
    for body in futures::future::join_all(requests).await {
        assert_eq!(body.unwrap(), f.nar);
    }
    assert_eq!(upstream.hits(&f.nar_path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_nar_is_aborted_and_never_stored() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("corrupt", 500_000, &key);
    let mut bad = f.nar.clone();
    bad[250_000] ^= 0xff;
    f.publish(&upstream, &bad);
    let s = setup(&[(&upstream, &key, None)]);
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    let file = NarFile::for_narinfo(&f.info).unwrap();

    for _ in 0..2 {
        let nar = s.cache.nar(&file).await.unwrap().expect("nar");
        let error = read_all(nar.body).await.unwrap_err();
        assert!(error.to_string().contains("FileHash"), "{error}");
    }
    assert_eq!(s.storage.head(&file.storage_key()).await.unwrap(), None);
    assert_eq!(upstream.hits(&f.nar_path()), 2, "each try fetches anew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narinfos_need_a_signature_by_their_own_upstreams_key() {
    let good = TestUpstream::start().await;
    let evil = TestUpstream::start().await;
    let good_key = SigningKey::generate("good-1");
    let evil_key = SigningKey::generate("evil-1");
    let f = fixture("target", 1000, &good_key);
    let forged = fixture("target", 1000, &evil_key);
    forged.publish(&evil, &forged.nar);
    // The evil upstream is preferred, but its narinfo is not signed by a key of its own.
    let evil_trusts = SigningKey::generate("evil-trusted-1");
    let s = setup(&[
        (&evil, &evil_trusts, Some(10)),
        (&good, &good_key, Some(20)),
    ]);
    assert_eq!(s.cache.narinfo(&forged.hash()).await.unwrap(), None);
    assert_eq!(evil.hits(&format!("/{}.narinfo", forged.hash())), 1);

    // Once the good upstream has it, it comes from there, though the evil one still answers first.
    f.publish(&good, &f.nar);
    let text = s
        .cache
        .narinfo(&f.hash())
        .await
        .unwrap()
        .expect("narinfo from the good upstream");
    assert!(
        text.parse::<NarInfo>()
            .unwrap()
            .has_valid_signature(&[good_key.public_key()])
    );
    assert!(
        !text
            .parse::<NarInfo>()
            .unwrap()
            .has_valid_signature(&[evil_key.public_key()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_tried_in_priority_order_past_errors() {
    let broken = TestUpstream::start().await;
    let first = TestUpstream::start().await;
    let second = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("prio", 1000, &key);
    f.publish(&first, &f.nar);
    f.publish(&second, &f.nar);
    broken.put(
        &format!("/{}.narinfo", f.hash()),
        StatusCode::INTERNAL_SERVER_ERROR,
        "oops",
    );
    let s = setup(&[
        (&second, &key, Some(30)),
        (&broken, &key, Some(5)),
        (&first, &key, Some(10)),
    ]);

    s.cache.narinfo(&f.hash()).await.unwrap().expect("narinfo");
    let narinfo = format!("/{}.narinfo", f.hash());
    assert_eq!(
        (
            broken.hits(&narinfo),
            first.hits(&narinfo),
            second.hits(&narinfo)
        ),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_path_is_none_and_unreachable_upstreams_an_error() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let s = setup(&[(&upstream, &key, None)]);
    let missing = fixture("missing", 10, &key);
    assert_eq!(s.cache.narinfo(&missing.hash()).await.unwrap(), None);

    let dead = TestUpstream::dead();
    let s = setup(&[(&dead, &key, None)]);
    let e = s.cache.narinfo(&missing.hash()).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_priority_comes_from_nix_cache_info() {
    let upstream = TestUpstream::start().await;
    upstream.put(
        "/nix-cache-info",
        StatusCode::OK,
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 7\n",
    );
    let key = SigningKey::generate("up-1");
    let mut config = UpstreamConfig::parse(&upstream.url).unwrap();
    config.public_keys.push(key.public_key());
    let mut u = Upstream::new(config.clone(), UpstreamOptions::default()).unwrap();
    u.discover_priority(&config).await;
    assert_eq!(u.priority(), 7);
    assert_eq!(upstream.hits("/nix-cache-info"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_misses_are_answered_from_the_negative_cache() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let s = setup(&[(&upstream, &key, None)]);
    let f = fixture("later", 100, &key);
    let narinfo = format!("/{}.narinfo", f.hash());
    for _ in 0..3 {
        assert_eq!(s.cache.narinfo(&f.hash()).await.unwrap(), None);
    }
    assert_eq!(
        upstream.hits(&narinfo),
        1,
        "a remembered miss went upstream"
    );

    // Once forgotten (as an upload does), the next request asks again.
    f.publish(&upstream, &f.nar);
    s.cache.forget_absent(&f.hash());
    assert!(s.cache.narinfo(&f.hash()).await.unwrap().is_some());
    assert_eq!(upstream.hits(&narinfo), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_is_not_remembered_as_a_miss() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let s = setup(&[(&upstream, &key, None)]);
    let f = fixture("flaky", 100, &key);
    let narinfo = format!("/{}.narinfo", f.hash());
    upstream.put(&narinfo, StatusCode::SERVICE_UNAVAILABLE, "busy");
    assert!(s.cache.narinfo(&f.hash()).await.is_err());
    f.publish(&upstream, &f.nar);
    // The failed upstream is skipped until a health check finds it back.
    s.cache.check_upstreams().await;
    assert!(s.cache.narinfo(&f.hash()).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_holds_back_no_one() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("stalled-reader", 3_000_000, &key);
    f.publish(&upstream, &f.nar);
    let s = setup(&[(&upstream, &key, None)]);
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    let file = NarFile::for_narinfo(&f.info).unwrap();

    // The first client takes the body and does not read it for now.
    let stalled = s.cache.nar(&file).await.unwrap().unwrap();
    let second = s.cache.nar(&file).await.unwrap().unwrap();
    let read = tokio::time::timeout(STEP, read_all(second.body))
        .await
        .expect("a reader waited for another that stopped reading");
    assert_eq!(read.unwrap(), f.nar);
    assert_eq!(read_all(stalled.body).await.unwrap(), f.nar);
    assert_eq!(upstream.hits(&f.nar_path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reader_streams_a_download_in_progress() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("in-progress", 2_000_000, &key);
    f.publish(&upstream, &f.nar);
    let gate = Gate::new(1_000_000);
    upstream.put_gated(&f.nar_path(), f.nar.clone(), &gate);
    let s = setup(&[(&upstream, &key, None)]);
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    let file = NarFile::for_narinfo(&f.info).unwrap();

    let mut first = s.cache.nar(&file).await.unwrap().unwrap().body;
    let first_chunk = tokio::time::timeout(STEP, first.next())
        .await
        .expect("no first byte while the upstream sends half")
        .unwrap()
        .unwrap();
    // The upstream is paused half way; a new reader still gets bytes now.
    let mut late = s.cache.nar(&file).await.unwrap().unwrap().body;
    let late_chunk = tokio::time::timeout(STEP, late.next())
        .await
        .expect("a late reader got nothing until the download ended")
        .unwrap()
        .unwrap();
    assert!(!late_chunk.is_empty());
    gate.open();
    let mut whole = first_chunk.to_vec();
    whole.extend(read_all(first).await.unwrap());
    assert_eq!(whole, f.nar);
    let mut whole = late_chunk.to_vec();
    whole.extend(read_all(late).await.unwrap());
    assert_eq!(whole, f.nar);
    assert_eq!(upstream.hits(&f.nar_path()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_narinfos_come_from_memory_until_deleted_here() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("hot", 1000, &key);
    let g = fixture("hot-deleted", 1000, &key);
    f.publish(&upstream, &f.nar);
    g.publish(&upstream, &g.nar);
    let s = setup(&[(&upstream, &key, None)]);
    let first = s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    assert_eq!(s.cache.narinfo(&f.hash()).await.unwrap().unwrap(), first);

    // Another process removes the record: this one still answers from memory
    // (for 30 s at most), without asking the database.
    assert!(s.db.delete_narinfo(f.hash().as_str()).await.unwrap());
    assert_eq!(s.cache.narinfo(&f.hash()).await.unwrap().unwrap(), first);
    assert_eq!(upstream.hits(&format!("/{}.narinfo", f.hash())), 1);

    // A delete through this engine is seen at once.
    s.cache.narinfo(&g.hash()).await.unwrap().unwrap();
    s.cache.narinfo(&g.hash()).await.unwrap().unwrap();
    upstream.put(
        &format!("/{}.narinfo", g.hash()),
        StatusCode::NOT_FOUND,
        Vec::new(),
    );
    assert!(s.cache.delete_narinfo(&g.hash()).await.unwrap());
    assert_eq!(s.cache.narinfo(&g.hash()).await.unwrap(), None);
}

#[tokio::test]
async fn a_nar_evicted_by_another_process_while_its_narinfo_is_hot_is_fetched_again() {
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("hot-evicted", 50_000, &key);
    f.publish(&upstream, &f.nar);
    let s = setup(&[(&upstream, &key, None)]);
    let file = NarFile::for_narinfo(&f.info).unwrap();
    // Stored, and its narinfo hot (the second request reads the database).
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    let body = s.cache.nar(&file).await.unwrap().unwrap().body;
    assert_eq!(read_all(body).await.unwrap(), f.nar);
    let mut stored = false;
    for _ in 0..200 {
        stored = s.storage.head(&file.storage_key()).await.unwrap().is_some();
        if stored {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(stored, "the NAR was never stored");

    // Another process (`ncps-cli gc`) evicts it: records and object.
    assert!(s.db.delete_narinfo(f.hash().as_str()).await.unwrap());
    s.db.delete_nar(file.as_str()).await.unwrap();
    s.storage.delete(&file.storage_key()).await.unwrap();

    // This one still serves the narinfo from memory, and then its NAR.
    s.cache.narinfo(&f.hash()).await.unwrap().unwrap();
    let body = s
        .cache
        .nar(&file)
        .await
        .unwrap()
        .expect("the NAR of a hot narinfo answered 404 after an eviction elsewhere");
    assert_eq!(read_all(body.body).await.unwrap(), f.nar);
    assert_eq!(upstream.hits(&format!("/{}.narinfo", f.hash())), 2);
    assert_eq!(upstream.hits(&f.nar_path()), 2);
}

/// Storage that reports fixed unfinished writes and records which are discarded.
#[derive(Debug)]
struct Unfinished {
    found: Vec<ncps_core::Incomplete>,
    discarded: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Storage for Unfinished {
    async fn put(&self, _: &str, _: ncps_core::ByteStream) -> ncps_core::Result<u64> {
        Err(ncps_core::Error::InvalidInput("read-only".into()))
    }
    async fn get(&self, _: &str) -> ncps_core::Result<Option<ncps_core::StoredObject>> {
        Ok(None)
    }
    async fn head(&self, _: &str) -> ncps_core::Result<Option<u64>> {
        Ok(None)
    }
    async fn delete(&self, _: &str) -> ncps_core::Result<bool> {
        Ok(false)
    }
    async fn incomplete(&self, _: Option<&str>) -> ncps_core::Result<Vec<ncps_core::Incomplete>> {
        Ok(self.found.clone())
    }
    async fn discard(&self, incomplete: &ncps_core::Incomplete) -> ncps_core::Result<()> {
        self.discarded.lock().unwrap().push(incomplete.id.clone());
        Ok(())
    }
}

#[tokio::test]
async fn unfinished_uploads_are_discarded_only_once_old_enough() {
    use std::time::Duration;
    let hour = Duration::from_secs(3600);
    let upload = |id: &str, key: Option<&str>, age: Option<Duration>| ncps_core::Incomplete {
        key: key.map(str::to_owned),
        id: id.to_owned(),
        age,
    };
    let storage = Arc::new(Unfinished {
        found: vec![
            // Perhaps another instance's, or `ncps-cli storage copy`'s, right now.
            upload("young", Some("nar/a.nar"), Some(hour)),
            upload("unknown-age", Some("nar/b.nar"), None),
            upload("old", Some("nar/c.nar"), Some(25 * hour)),
            // The backend knows its writer is dead.
            upload("dead-writer", None, Some(Duration::ZERO)),
        ],
        discarded: std::sync::Mutex::new(Vec::new()),
    });
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(ncps_db::SqliteDb::open(dir.path().join("db.sqlite")).unwrap());
    let cache = Cache::new(
        storage.clone(),
        Arc::new(ncps_lock::LocalLock::new()),
        db,
        Vec::new(),
        SigningKey::generate("proxy-1"),
        CacheOptions::default(),
    );
    assert_eq!(cache.clean_incomplete().await.unwrap(), 2);
    assert_eq!(
        *storage.discarded.lock().unwrap(),
        vec!["old".to_string(), "dead-writer".to_string()]
    );
}

/// Local storage whose writes, once complete (renamed into place), never
/// return: the moment a crash between storage and database would freeze.
#[derive(Debug)]
struct StalledAfterPut {
    inner: ncps_store::LocalStorage,
    stored: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Storage for StalledAfterPut {
    async fn put(&self, key: &str, body: ncps_core::ByteStream) -> ncps_core::Result<u64> {
        self.inner.put(key, body).await?;
        self.stored.notify_one();
        std::future::pending().await
    }
    async fn get(&self, key: &str) -> ncps_core::Result<Option<ncps_core::StoredObject>> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> ncps_core::Result<Option<u64>> {
        self.inner.head(key).await
    }
    async fn delete(&self, key: &str) -> ncps_core::Result<bool> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nar_in_storage_is_never_recorded_as_absent() {
    use ncps_core::NarStorage;
    let upstream = TestUpstream::start().await;
    let key = SigningKey::generate("up-1");
    let f = fixture("stalled", 50_000, &key);
    f.publish(&upstream, &f.nar);
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(StalledAfterPut {
        inner: ncps_store::LocalStorage::new(dir.path().join("store")).unwrap(),
        stored: tokio::sync::Notify::new(),
    });
    let Setup {
        cache, db, _dir, ..
    } = setup_with(dir, storage.clone(), &[(&upstream, &key, None)]);
    let file = NarFile::for_narinfo(&f.info).unwrap();
    cache.narinfo(&f.hash()).await.unwrap().unwrap();
    assert_eq!(
        db.get_nar_storage(file.as_str()).await.unwrap(),
        Some(NarStorage::Absent)
    );
    let body = cache.nar(&file).await.unwrap().unwrap().body;
    assert_eq!(read_all(body).await.unwrap(), f.nar);
    tokio::time::timeout(STEP, storage.stored.notified())
        .await
        .expect("the NAR was never stored");
    // The bytes are in storage and the database has not caught up (a kill
    // now would leave it so): it must not say "not stored".
    assert!(storage.head(&file.storage_key()).await.unwrap().is_some());
    assert_eq!(
        db.get_nar_storage(file.as_str()).await.unwrap(),
        Some(NarStorage::Unknown)
    );
}
