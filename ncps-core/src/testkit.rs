//! Conformance suites every backend runs: one async function per trait.
//!
//! A backend's test calls the suite with a fresh instance, for example
//! `ncps_core::testkit::storage_conformance(&storage).await`. The suites panic
//! with a message naming the broken rule. They use keys under a
//! `conformance` prefix, so run each suite on its own empty instance.

pub mod eviction_metadata;
pub mod upstream;

/// Whether tests must fail, not skip, when a service they need is missing
/// (`NCPS_TEST_REQUIRE_ALL=1`, as CI sets).
pub fn require_all() -> bool {
    std::env::var("NCPS_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// The value of the environment variable `var` naming a test service, or
/// `None` after a loud `SKIPPED:` line; a panic under [`require_all`].
/// `start` says how to start the service (for example `source .ci/s3.sh`).
pub fn service(test: &str, var: &str, start: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let why = format!("{test}: {var} is not set ({start})");
            if require_all() {
                panic!("{why}, and NCPS_TEST_REQUIRE_ALL=1");
            }
            // Straight to stderr: libtest captures eprintln! of passing tests.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED: {why}\n").as_bytes(),
            );
            None
        }
    }
}

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use crate::{ByteStream, Lock, MetadataDb, NarInfoRecord, NarRecord, Storage};

/// How long any single step may take before the suite calls it hung.
const STEP: Duration = Duration::from_secs(10);

/// Size of the chunks the suites stream.
const CHUNK: usize = 64 * 1024;

/// `len` bytes that depend only on `len` and `seed`.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 16) as u8))
        .collect()
}

/// A stream yielding `data` in chunks of [`CHUNK`] bytes.
fn chunked(data: &[u8]) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(stream::iter(chunks))
}

/// A stream yielding `data` in chunks, then an error instead of its end.
fn failing_after(data: &[u8]) -> ByteStream {
    let chunks = data
        .chunks(CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .chain(std::iter::once(Err(io::Error::other(
            "conformance: body failed midway",
        ))))
        .collect::<Vec<io::Result<Bytes>>>();
    Box::pin(stream::iter(chunks))
}

/// Reads the object under `key` whole: `None` if missing, else (size, bytes).
async fn read_all(storage: &dyn Storage, key: &str) -> Option<(u64, Vec<u8>)> {
    let object = storage
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("storage: get({key:?}) failed: {e}"))?;
    let size = object.size;
    let mut bytes = Vec::new();
    let mut body = object.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("storage: reading {key:?} failed: {e}"));
        bytes.extend_from_slice(&chunk);
    }
    Some((size, bytes))
}

/// Asserts that `key` holds exactly `expected` (via `get` and `head`).
async fn assert_holds(storage: &dyn Storage, key: &str, expected: &[u8], what: &str) {
    let (size, bytes) = read_all(storage, key)
        .await
        .unwrap_or_else(|| panic!("storage: {what}: get({key:?}) found nothing"));
    assert_eq!(
        size,
        expected.len() as u64,
        "storage: {what}: get({key:?}) reported the wrong size"
    );
    assert!(
        bytes == expected,
        "storage: {what}: get({key:?}) returned different bytes ({} bytes, expected {})",
        bytes.len(),
        expected.len()
    );
    let head = storage
        .head(key)
        .await
        .unwrap_or_else(|e| panic!("storage: {what}: head({key:?}) failed: {e}"));
    assert_eq!(
        head,
        Some(expected.len() as u64),
        "storage: {what}: head({key:?}) reported the wrong size"
    );
}

/// Checks the [`Storage`] contract on an empty `storage`.
///
/// Covers the put/get/head/delete round trip, a streamed multi-MiB put, `put`
/// replacing an object, a failing body leaving nothing (and an older object
/// untouched), missing keys, keys with slashes, and concurrent puts to one key
/// ending with one complete object.
pub async fn storage_conformance(storage: &dyn Storage) {
    // Round trip.
    let key = "conformance/round-trip";
    let small = b"hello, nix".to_vec();
    let stored = storage
        .put(key, chunked(&small))
        .await
        .expect("storage: put of a small object failed");
    assert_eq!(
        stored,
        small.len() as u64,
        "storage: put returned the wrong byte count"
    );
    assert_holds(storage, key, &small, "round trip").await;
    assert!(
        storage.delete(key).await.expect("storage: delete failed"),
        "storage: delete of an existing object returned false"
    );
    assert!(
        read_all(storage, key).await.is_none(),
        "storage: get after delete still found the object"
    );
    assert_eq!(
        storage.head(key).await.expect("storage: head failed"),
        None,
        "storage: head after delete still found the object"
    );

    // Empty object.
    let key = "conformance/empty";
    let stored = storage
        .put(key, chunked(&[]))
        .await
        .expect("storage: put of an empty object failed");
    assert_eq!(
        stored, 0,
        "storage: put of an empty object returned non-zero"
    );
    assert_holds(storage, key, &[], "empty object").await;

    // Several MiB, streamed.
    let key = "conformance/large";
    let large = pattern(5 * 1024 * 1024 + 12_345, 7);
    let stored = storage
        .put(key, chunked(&large))
        .await
        .expect("storage: streamed put of several MiB failed");
    assert_eq!(
        stored,
        large.len() as u64,
        "storage: streamed put returned the wrong byte count"
    );
    assert_holds(storage, key, &large, "streamed put").await;

    // Ranges: within, across chunk boundaries, past the end, empty.
    let size = large.len() as u64;
    for (offset, len) in [
        (0, 10),
        (1, 70_000),
        (65_535, 3),
        (size - 5, 100),
        (size, 10),
        (7, 0),
    ] {
        let object = storage
            .get_range(key, offset, len)
            .await
            .expect("storage: get_range failed")
            .expect("storage: get_range did not find the object");
        assert_eq!(
            object.size, size,
            "storage: get_range size is not the object's"
        );
        let mut body = object.body;
        let mut got = Vec::new();
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.expect("storage: get_range body failed"));
        }
        let end = (offset + len).min(size) as usize;
        assert!(
            got == large[(offset as usize).min(end)..end],
            "storage: get_range({offset}, {len}) returned the wrong bytes"
        );
    }
    assert!(
        storage
            .get_range("conformance/missing", 0, 1)
            .await
            .expect("storage: get_range of a missing key failed")
            .is_none(),
        "storage: get_range found a missing key"
    );

    // Put replaces.
    let replacement = pattern(100_000, 99);
    storage
        .put(key, chunked(&replacement))
        .await
        .expect("storage: put over an existing object failed");
    assert_holds(storage, key, &replacement, "replacing put").await;

    // A failing body stores nothing...
    let key = "conformance/failed";
    let result = storage
        .put(key, failing_after(&pattern(3 * CHUNK, 3)))
        .await;
    assert!(
        result.is_err(),
        "storage: put whose body failed midway returned Ok"
    );
    assert!(
        read_all(storage, key).await.is_none(),
        "storage: put whose body failed left an object behind"
    );
    assert_eq!(
        storage.head(key).await.expect("storage: head failed"),
        None,
        "storage: head found an object from a failed put"
    );
    // ...and leaves an older object as it was.
    let key = "conformance/large";
    let result = storage
        .put(key, failing_after(&pattern(3 * CHUNK, 4)))
        .await;
    assert!(
        result.is_err(),
        "storage: failing put over an existing object returned Ok"
    );
    assert_holds(storage, key, &replacement, "failed put over an object").await;

    // Missing keys.
    let missing = "conformance/missing";
    assert!(
        read_all(storage, missing).await.is_none(),
        "storage: get of a missing key found something"
    );
    assert_eq!(
        storage.head(missing).await.expect("storage: head failed"),
        None,
        "storage: head of a missing key found something"
    );
    assert!(
        !storage
            .delete(missing)
            .await
            .expect("storage: delete failed"),
        "storage: delete of a missing key returned true"
    );

    // Keys with slashes.
    let key = "nar/abc.nar.xz";
    let nar = pattern(3 * CHUNK + 17, 11);
    storage
        .put(key, chunked(&nar))
        .await
        .expect("storage: put under a key with slashes failed");
    assert_holds(storage, key, &nar, "key with slashes").await;
    assert!(
        storage.delete(key).await.expect("storage: delete failed"),
        "storage: delete under a key with slashes returned false"
    );
    assert!(
        read_all(storage, key).await.is_none(),
        "storage: key with slashes still there after delete"
    );

    // Concurrent puts to one key end with one complete object.
    let key = "conformance/concurrent";
    let bodies: Vec<Vec<u8>> = (0..8u8)
        .map(|i| pattern(512 * 1024 + usize::from(i) * 1000, i))
        .collect();
    let results =
        futures::future::join_all(bodies.iter().map(|b| storage.put(key, chunked(b)))).await;
    for (i, result) in results.into_iter().enumerate() {
        let stored = result.unwrap_or_else(|e| panic!("storage: concurrent put {i} failed: {e}"));
        assert_eq!(
            stored,
            bodies[i].len() as u64,
            "storage: concurrent put {i} returned the wrong byte count"
        );
    }
    let (size, bytes) = read_all(storage, key)
        .await
        .expect("storage: nothing stored after concurrent puts");
    assert_eq!(
        size,
        bytes.len() as u64,
        "storage: size after concurrent puts does not match the bytes read"
    );
    assert!(
        bodies.contains(&bytes),
        "storage: concurrent puts left an object that is none of the bodies put ({} bytes)",
        bytes.len()
    );
}

/// Checks the [`Lock`] contract on a `lock` nobody else uses.
///
/// Covers acquire/release, `try_acquire` on held and free keys, a second
/// `acquire` waiting for the release, expiry after the TTL, `extend` (keeping
/// a lock past its first TTL, and doing nothing once another holder took an
/// expired lock), release on drop, and mutual exclusion among many tasks.
pub async fn lock_conformance(lock: Arc<dyn Lock>) {
    let long = Duration::from_secs(60);

    // Acquire and release, twice.
    for round in 0..2 {
        let guard = timeout(STEP, lock.acquire("conformance/basic", long))
            .await
            .unwrap_or_else(|_| panic!("lock: acquire of a free key hung (round {round})"))
            .expect("lock: acquire of a free key failed");
        guard.release().await.expect("lock: release failed");
    }

    // try_acquire: None on a held key, Some on another.
    let held = lock
        .try_acquire("conformance/try", long)
        .await
        .expect("lock: try_acquire failed")
        .expect("lock: try_acquire of a free key gave None");
    assert!(
        lock.try_acquire("conformance/try", long)
            .await
            .expect("lock: try_acquire failed")
            .is_none(),
        "lock: try_acquire of a held key gave a lock"
    );
    let other = lock
        .try_acquire("conformance/try-other", long)
        .await
        .expect("lock: try_acquire failed")
        .expect("lock: try_acquire of a different key gave None");
    other.release().await.expect("lock: release failed");
    held.release().await.expect("lock: release failed");
    let again = lock
        .try_acquire("conformance/try", long)
        .await
        .expect("lock: try_acquire failed")
        .expect("lock: try_acquire after release gave None");
    again.release().await.expect("lock: release failed");

    // A second acquire waits until the first is released.
    let first = lock
        .acquire("conformance/wait", long)
        .await
        .expect("lock: acquire failed");
    let released = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let (acquired_tx, mut acquired_rx) = oneshot::channel();
    let waiter = {
        let lock = Arc::clone(&lock);
        let released = Arc::clone(&released);
        tokio::spawn(async move {
            let _ = started_tx.send(());
            let guard = lock
                .acquire("conformance/wait", long)
                .await
                .expect("lock: second acquire failed");
            let _ = acquired_tx.send(released.load(Ordering::SeqCst));
            guard.release().await.expect("lock: release failed");
        })
    };
    timeout(STEP, started_rx)
        .await
        .expect("lock: waiting task never started")
        .expect("lock: waiting task died before starting");
    // Give the waiter time to block in `acquire`; the ordering is checked
    // with the `released` flag, not by this pause.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        acquired_rx.try_recv().is_err(),
        "lock: a second acquire got the lock while the first was held"
    );
    released.store(true, Ordering::SeqCst);
    first.release().await.expect("lock: release failed");
    let saw_release = timeout(STEP, acquired_rx)
        .await
        .expect("lock: second acquire still waiting after the release")
        .expect("lock: waiting task died");
    assert!(
        saw_release,
        "lock: second acquire got the lock before the first was released"
    );
    timeout(STEP, waiter)
        .await
        .expect("lock: waiting task hung")
        .expect("lock: waiting task panicked");

    // A lock not released within its TTL can be taken by another acquirer.
    let ttl = Duration::from_millis(200);
    let stale = lock
        .acquire("conformance/ttl", ttl)
        .await
        .expect("lock: acquire failed");
    let fresh = timeout(STEP, lock.acquire("conformance/ttl", long))
        .await
        .expect("lock: acquire never took a lock whose TTL expired")
        .expect("lock: acquire after expiry failed");
    // Releasing the expired lock must not release the new holder's lock.
    let _ = stale.release().await;
    assert!(
        lock.try_acquire("conformance/ttl", long)
            .await
            .expect("lock: try_acquire failed")
            .is_none(),
        "lock: releasing an expired lock released the new holder's lock"
    );
    fresh.release().await.expect("lock: release failed");

    // try_acquire also sees expiry.
    let stale = lock
        .acquire("conformance/ttl-try", ttl)
        .await
        .expect("lock: acquire failed");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let taken = lock
        .try_acquire("conformance/ttl-try", long)
        .await
        .expect("lock: try_acquire failed")
        .expect("lock: try_acquire gave None for a lock whose TTL expired");
    let _ = stale.release().await;
    taken.release().await.expect("lock: release failed");

    // extend keeps a lock past its first TTL.
    let short = Duration::from_secs(1);
    let extended = lock
        .acquire("conformance/extend", short)
        .await
        .expect("lock: acquire failed");
    assert!(
        extended.extend(long).await.expect("lock: extend failed"),
        "lock: extend of a held lock returned false"
    );
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    assert!(
        lock.try_acquire("conformance/extend", long)
            .await
            .expect("lock: try_acquire failed")
            .is_none(),
        "lock: an extended lock expired with its first TTL"
    );
    extended.release().await.expect("lock: release failed");
    lock.try_acquire("conformance/extend", long)
        .await
        .expect("lock: try_acquire failed")
        .expect("lock: an extended lock was not freed by its release")
        .release()
        .await
        .expect("lock: release failed");

    // extend and release of a lock that expired, and that another then took, change nothing.
    let stale = lock
        .acquire("conformance/extend-stale", ttl)
        .await
        .expect("lock: acquire failed");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(
        !stale.extend(long).await.expect("lock: extend failed"),
        "lock: extend of an expired lock returned true"
    );
    let taker = lock
        .try_acquire("conformance/extend-stale", long)
        .await
        .expect("lock: try_acquire failed")
        .expect("lock: try_acquire gave None for a lock whose TTL expired");
    assert!(
        !stale.extend(long).await.expect("lock: extend failed"),
        "lock: extend of a lock another holder took returned true"
    );
    stale
        .release()
        .await
        .expect("lock: release of a lock another holder took failed");
    assert!(
        lock.try_acquire("conformance/extend-stale", long)
            .await
            .expect("lock: try_acquire failed")
            .is_none(),
        "lock: extend or release by an old holder freed the new holder's lock"
    );
    assert!(
        taker.extend(long).await.expect("lock: extend failed"),
        "lock: the new holder's extend returned false"
    );
    taker.release().await.expect("lock: release failed");

    // Dropping a guard releases it, eventually.
    let dropped = lock
        .acquire("conformance/drop", long)
        .await
        .expect("lock: acquire failed");
    drop(dropped);
    let mut retaken = None;
    for _ in 0..500 {
        retaken = lock
            .try_acquire("conformance/drop", long)
            .await
            .expect("lock: try_acquire failed");
        if retaken.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    retaken
        .expect("lock: a dropped guard was not released within 5s")
        .release()
        .await
        .expect("lock: release failed");

    // Many tasks under the lock never overlap.
    contend(&[lock], "conformance/counter", 20).await;
}

/// Checks that two instances of one backend sharing their locks (two clients
/// of one lock server, as two processes would be) exclude each other.
///
/// A key held through one is held for the other, a release through one frees
/// it for an `acquire` waiting on the other, and 32 tasks split across both
/// never overlap. For a backend without shared state, pass two clones of one
/// instance. Run it on a multi-threaded runtime so the tasks really overlap.
pub async fn lock_exclusion(a: Arc<dyn Lock>, b: Arc<dyn Lock>) {
    let long = Duration::from_secs(60);
    let key = "exclusion/handover";
    let held = a
        .try_acquire(key, long)
        .await
        .expect("exclusion: try_acquire failed")
        .expect("exclusion: try_acquire of a free key gave None");
    assert!(
        b.try_acquire(key, long)
            .await
            .expect("exclusion: try_acquire failed")
            .is_none(),
        "exclusion: a key held through one instance was free for the other"
    );
    let released = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = oneshot::channel();
    let waiter = {
        let b = Arc::clone(&b);
        let released = Arc::clone(&released);
        tokio::spawn(async move {
            let _ = started_tx.send(());
            let guard = b
                .acquire(key, long)
                .await
                .expect("exclusion: acquire failed");
            (guard, released.load(Ordering::SeqCst))
        })
    };
    timeout(STEP, started_rx)
        .await
        .expect("exclusion: waiting task never started")
        .expect("exclusion: waiting task died before starting");
    // Give the waiter time to block in `acquire`; the ordering is checked
    // with the `released` flag, not by this pause.
    tokio::time::sleep(Duration::from_millis(50)).await;
    released.store(true, Ordering::SeqCst);
    held.release().await.expect("exclusion: release failed");
    let (guard, saw_release) = timeout(STEP, waiter)
        .await
        .expect("exclusion: an acquire on one instance still waits after the release on the other")
        .expect("exclusion: the waiting task panicked");
    assert!(
        saw_release,
        "exclusion: an acquire on one instance got a key the other still held"
    );
    assert!(
        a.try_acquire(key, long)
            .await
            .expect("exclusion: try_acquire failed")
            .is_none(),
        "exclusion: a key taken through the second instance was free for the first"
    );
    guard.release().await.expect("exclusion: release failed");

    contend(&[a, b], "exclusion/counter", 32).await;
}

/// `tasks` tasks, spread over `locks` in turn, each taking `key` once: none
/// may hold it while another does, and no increment made under it is lost.
async fn contend(locks: &[Arc<dyn Lock>], key: &'static str, tasks: u64) {
    let long = Duration::from_secs(60);
    let inside = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = mpsc::channel(32);
    for task in 0..tasks {
        let lock = Arc::clone(&locks[task as usize % locks.len()]);
        let inside = Arc::clone(&inside);
        let counter = Arc::clone(&counter);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let guard = lock.acquire(key, long).await.expect("lock: acquire failed");
            let overlapped = inside.swap(true, Ordering::SeqCst);
            // Read, yield, write: lost updates show up if two tasks overlap.
            let value = counter.load(Ordering::SeqCst);
            tokio::task::yield_now().await;
            counter.store(value + 1, Ordering::SeqCst);
            inside.store(false, Ordering::SeqCst);
            guard.release().await.expect("lock: release failed");
            let _ = done_tx.send((task, overlapped)).await;
        });
    }
    drop(done_tx);
    for _ in 0..tasks {
        let (task, overlapped) = timeout(STEP, done_rx.recv())
            .await
            .expect("lock: tasks contending for one key hung")
            .expect("lock: a contending task panicked");
        assert!(
            !overlapped,
            "lock: task {task} got the lock while another task held it"
        );
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        tasks,
        "lock: increments under the lock were lost"
    );
}

/// A narinfo record for the metadata suite.
fn narinfo_record(hash: &str, nar_file: &str, at: i64) -> NarInfoRecord {
    NarInfoRecord {
        hash: hash.to_string(),
        narinfo: format!("StorePath: /nix/store/{hash}-conformance\nURL: nar/{nar_file}\n"),
        nar_file: nar_file.to_string(),
        created_at: at,
        last_accessed_at: at,
    }
}

/// Checks the [`MetadataDb`] contract on an empty `db`.
///
/// Covers put/get/delete/touch of narinfo and NAR records (optional fields
/// absent and present, upserts replacing), missing records,
/// `set_config_if_absent` keeping the first value, `get_config` and `ping`.
pub async fn metadata_conformance(db: &dyn MetadataDb) {
    db.ping().await.expect("metadata: ping failed");

    // Narinfo records.
    let hash = "0c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc";
    assert_eq!(
        db.get_narinfo(hash)
            .await
            .expect("metadata: get_narinfo failed"),
        None,
        "metadata: get_narinfo of a missing hash found a record"
    );
    assert!(
        !db.delete_narinfo(hash)
            .await
            .expect("metadata: delete_narinfo failed"),
        "metadata: delete_narinfo of a missing hash returned true"
    );
    let record = narinfo_record(hash, "1aaa.nar.xz", 1_700_000_000);
    db.put_narinfo(&record)
        .await
        .expect("metadata: put_narinfo failed");
    assert_eq!(
        db.get_narinfo(hash)
            .await
            .expect("metadata: get_narinfo failed"),
        Some(record.clone()),
        "metadata: get_narinfo did not return the record put"
    );
    let replaced = NarInfoRecord {
        narinfo: "StorePath: /nix/store/replaced\n".to_string(),
        nar_file: "2bbb.nar.zst".to_string(),
        created_at: 1_700_000_100,
        last_accessed_at: 1_700_000_200,
        ..record.clone()
    };
    db.put_narinfo(&replaced)
        .await
        .expect("metadata: put_narinfo over an existing record failed");
    assert_eq!(
        db.get_narinfo(hash)
            .await
            .expect("metadata: get_narinfo failed"),
        Some(replaced.clone()),
        "metadata: put_narinfo did not replace the existing record"
    );
    db.touch_narinfo(hash, 1_800_000_000)
        .await
        .expect("metadata: touch_narinfo failed");
    let touched = db
        .get_narinfo(hash)
        .await
        .expect("metadata: get_narinfo failed")
        .expect("metadata: narinfo record gone after touch");
    assert_eq!(
        touched,
        NarInfoRecord {
            last_accessed_at: 1_800_000_000,
            ..replaced.clone()
        },
        "metadata: touch_narinfo did not set last_accessed_at (or changed other fields)"
    );
    let other = narinfo_record("1c3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc", "3ccc.nar", 5);
    db.put_narinfo(&other)
        .await
        .expect("metadata: put_narinfo failed");
    assert!(
        db.delete_narinfo(hash)
            .await
            .expect("metadata: delete_narinfo failed"),
        "metadata: delete_narinfo of an existing record returned false"
    );
    assert_eq!(
        db.get_narinfo(hash)
            .await
            .expect("metadata: get_narinfo failed"),
        None,
        "metadata: narinfo record still there after delete"
    );
    assert_eq!(
        db.get_narinfo(&other.hash)
            .await
            .expect("metadata: get_narinfo failed"),
        Some(other.clone()),
        "metadata: deleting one narinfo record changed another"
    );

    // NAR records, optional fields absent.
    let file = "1aaa.nar.xz";
    assert_eq!(
        db.get_nar(file).await.expect("metadata: get_nar failed"),
        None,
        "metadata: get_nar of a missing file found a record"
    );
    assert!(
        !db.delete_nar(file)
            .await
            .expect("metadata: delete_nar failed"),
        "metadata: delete_nar of a missing file returned true"
    );
    let bare = NarRecord {
        file: file.to_string(),
        compression: "xz".to_string(),
        file_hash: None,
        file_size: None,
        nar_hash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".to_string(),
        nar_size: 123_456,
        upstream_url: None,
        last_accessed_at: 1_700_000_000,
    };
    db.put_nar(&bare).await.expect("metadata: put_nar failed");
    assert_eq!(
        db.get_nar(file).await.expect("metadata: get_nar failed"),
        Some(bare.clone()),
        "metadata: get_nar did not return the record put (optional fields absent)"
    );
    // Upsert with every field present, and large sizes.
    let full = NarRecord {
        file_hash: Some("sha256:0hjszid30ak3rkzvc3m94c3risg8wz2hayy100c1fg92bjvvvsms".to_string()),
        file_size: Some(5_000_000_000),
        nar_size: 9_000_000_000,
        upstream_url: Some("https://cache.nixos.org/nar/1aaa.nar.xz".to_string()),
        compression: "zstd".to_string(),
        last_accessed_at: 1_700_000_300,
        ..bare.clone()
    };
    db.put_nar(&full)
        .await
        .expect("metadata: put_nar over an existing record failed");
    assert_eq!(
        db.get_nar(file).await.expect("metadata: get_nar failed"),
        Some(full.clone()),
        "metadata: put_nar did not replace the existing record (optional fields present)"
    );
    // Upsert back to absent optional fields.
    db.put_nar(&bare).await.expect("metadata: put_nar failed");
    assert_eq!(
        db.get_nar(file).await.expect("metadata: get_nar failed"),
        Some(bare.clone()),
        "metadata: put_nar did not clear optional fields set before"
    );
    db.touch_nar(file, 1_800_000_000)
        .await
        .expect("metadata: touch_nar failed");
    assert_eq!(
        db.get_nar(file).await.expect("metadata: get_nar failed"),
        Some(NarRecord {
            last_accessed_at: 1_800_000_000,
            ..bare.clone()
        }),
        "metadata: touch_nar did not set last_accessed_at (or changed other fields)"
    );
    assert!(
        db.delete_nar(file)
            .await
            .expect("metadata: delete_nar failed"),
        "metadata: delete_nar of an existing record returned false"
    );
    assert_eq!(
        db.get_nar(file).await.expect("metadata: get_nar failed"),
        None,
        "metadata: NAR record still there after delete"
    );

    // Config.
    let key = "conformance-key";
    assert_eq!(
        db.get_config(key)
            .await
            .expect("metadata: get_config failed"),
        None,
        "metadata: get_config of a missing key found a value"
    );
    assert_eq!(
        db.set_config_if_absent(key, "first")
            .await
            .expect("metadata: set_config_if_absent failed"),
        "first",
        "metadata: set_config_if_absent on a missing key did not return the value given"
    );
    assert_eq!(
        db.set_config_if_absent(key, "second")
            .await
            .expect("metadata: set_config_if_absent failed"),
        "first",
        "metadata: set_config_if_absent replaced an existing value"
    );
    assert_eq!(
        db.get_config(key)
            .await
            .expect("metadata: get_config failed"),
        Some("first".to_string()),
        "metadata: get_config did not return the first value set"
    );

    metadata_listing(db, &other).await;
    eviction_metadata::eviction_metadata_conformance(db).await;
    db.ping().await.expect("metadata: ping failed");
}

/// The listing part of [`metadata_conformance`]: pages in key order, each
/// record once. `existing` is the one narinfo record the suite left.
async fn metadata_listing(db: &dyn MetadataDb, existing: &NarInfoRecord) {
    // Equal-length keys of digits and lower-case letters sort the same in
    // every collation.
    let mut narinfos = vec![existing.clone()];
    for i in 0..5 {
        let hash = format!("{i}l3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc");
        let record = narinfo_record(&hash, &format!("{i}list.nar.xz"), 10 + i);
        db.put_narinfo(&record)
            .await
            .expect("metadata: put_narinfo failed");
        narinfos.push(record);
    }
    narinfos.sort_by(|a, b| a.hash.cmp(&b.hash));
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = db
            .list_narinfos(after.as_deref(), 2)
            .await
            .expect("metadata: list_narinfos failed");
        assert!(
            page.len() <= 2,
            "metadata: list_narinfos returned more than the limit"
        );
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.hash.clone());
        listed.extend(page);
    }
    assert_eq!(
        listed, narinfos,
        "metadata: list_narinfos pages are not every record once, in hash order"
    );

    let mut nars = Vec::new();
    for i in 0..3 {
        let record = NarRecord {
            file: format!("{i}l3mv8n9fdmnmdl4qx3ppz5zzrn6xhgc.nar.zst"),
            compression: "zstd".to_string(),
            file_hash: None,
            file_size: Some(i as u64),
            nar_hash: format!("sha256:list-{i}"),
            nar_size: 100 + i as u64,
            upstream_url: None,
            last_accessed_at: 20,
        };
        db.put_nar(&record).await.expect("metadata: put_nar failed");
        nars.push(record);
    }
    assert_eq!(
        db.list_nars(None, 100)
            .await
            .expect("metadata: list_nars failed"),
        nars,
        "metadata: list_nars did not return every record in file order"
    );
    assert_eq!(
        db.list_nars(Some(&nars[0].file), 1)
            .await
            .expect("metadata: list_nars failed"),
        nars[1..2].to_vec(),
        "metadata: list_nars after a file did not start at the next one"
    );
    assert_eq!(
        db.list_config()
            .await
            .expect("metadata: list_config failed"),
        vec![("conformance-key".to_string(), "first".to_string())],
        "metadata: list_config did not return the one value set"
    );
}

/// How many tasks [`metadata_concurrency`] runs at once.
const CONCURRENT_TASKS: usize = 64;

/// A store path hash for task `task` of the concurrency suite.
fn concurrency_hash(prefix: char, task: usize) -> String {
    format!("{prefix}{task:031}")
}

/// Checks that two instances of a [`MetadataDb`] on the same empty database
/// (two connection pools, as two servers would have) stay consistent under
/// `CONCURRENT_TASKS` (64) tasks reading and writing the same records at once.
///
/// Each task, on one instance or the other, upserts a shared narinfo and a
/// shared NAR record, rewrites a record of its own and reads it back through
/// the other instance, touches the shared records, and races for a config
/// key. Checks: every call succeeds (an upsert that hits a duplicate key or
/// a deadlock fails), nothing hangs (each task is bounded in time), a write
/// acknowledged on one instance is read back on the other (no lost update),
/// shared records are whole rows written by one task (no mix of two), and
/// all racers for a config key agree on one value.
///
/// Run it on a multi-threaded runtime so the tasks really overlap.
pub async fn metadata_concurrency(a: Arc<dyn MetadataDb>, b: Arc<dyn MetadataDb>) {
    const ROUNDS: i64 = 4;
    let shared_hash = concurrency_hash('s', 0);
    let shared_file = "0concurrency.nar.zst".to_string();
    let race_key = "concurrency-race-key".to_string();

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..CONCURRENT_TASKS {
        let (db, other) = if task % 2 == 0 {
            (Arc::clone(&a), Arc::clone(&b))
        } else {
            (Arc::clone(&b), Arc::clone(&a))
        };
        let shared_hash = shared_hash.clone();
        let shared_file = shared_file.clone();
        let race_key = race_key.clone();
        tasks.spawn(async move {
            let work = async {
                let at = 1_700_000_000 + task as i64;
                // The shared narinfo: whole rows, each naming its writer in two fields.
                let shared = NarInfoRecord {
                    hash: shared_hash.clone(),
                    narinfo: format!("StorePath: /nix/store/{shared_hash}-writer-{task}\n"),
                    nar_file: format!("{task}.nar"),
                    created_at: at,
                    last_accessed_at: at,
                };
                db.put_narinfo(&shared).await.unwrap_or_else(|e| {
                    panic!("concurrency: task {task}: put_narinfo of the shared record failed: {e}")
                });
                // The shared NAR record.
                let nar = NarRecord {
                    file: shared_file.clone(),
                    compression: "zstd".to_string(),
                    file_hash: Some(format!("sha256:file-{task}")),
                    file_size: Some(task as u64),
                    nar_hash: format!("sha256:nar-{task}"),
                    nar_size: task as u64,
                    upstream_url: Some(format!("https://upstream.invalid/{task}")),
                    last_accessed_at: at,
                };
                db.put_nar(&nar).await.unwrap_or_else(|e| {
                    panic!("concurrency: task {task}: put_nar of the shared record failed: {e}")
                });
                // A record of its own, rewritten and read back through the other pool.
                let own_hash = concurrency_hash('o', task);
                for round in 0..ROUNDS {
                    let own = NarInfoRecord {
                        hash: own_hash.clone(),
                        narinfo: format!("StorePath: /nix/store/{own_hash}-round-{round}\n"),
                        nar_file: format!("{task}-{round}.nar"),
                        created_at: round,
                        last_accessed_at: round,
                    };
                    db.put_narinfo(&own).await.unwrap_or_else(|e| {
                        panic!("concurrency: task {task}: put_narinfo of its own record failed: {e}")
                    });
                    let read = other.get_narinfo(&own_hash).await.unwrap_or_else(|e| {
                        panic!("concurrency: task {task}: get_narinfo failed: {e}")
                    });
                    assert_eq!(
                        read,
                        Some(own),
                        "concurrency: task {task}: a write acknowledged on one pool was not read back on the other"
                    );
                    db.touch_narinfo(&shared_hash, at + round)
                        .await
                        .unwrap_or_else(|e| panic!("concurrency: task {task}: touch_narinfo failed: {e}"));
                    other
                        .touch_nar(&shared_file, at + round)
                        .await
                        .unwrap_or_else(|e| panic!("concurrency: task {task}: touch_nar failed: {e}"));
                    let shared_now = other.get_narinfo(&shared_hash).await.unwrap_or_else(|e| {
                        panic!("concurrency: task {task}: get_narinfo of the shared record failed: {e}")
                    });
                    assert_shared_narinfo_whole(shared_now.as_ref(), &shared_hash);
                }
                // Everyone races for one config key.
                db.set_config_if_absent(&race_key, &format!("value-{task}"))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("concurrency: task {task}: set_config_if_absent failed: {e}")
                    })
            };
            match timeout(STEP * 6, work).await {
                Ok(value) => (task, value),
                Err(_) => panic!("concurrency: task {task} hung (deadlock or a starved pool?)"),
            }
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, value)) => winners.push(value),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("concurrency: a task did not finish: {e}"),
        }
    }

    let first = winners[0].clone();
    assert!(
        winners.iter().all(|v| *v == first),
        "concurrency: set_config_if_absent racers got different values: {winners:?}"
    );
    for db in [&a, &b] {
        assert_eq!(
            db.get_config(&race_key)
                .await
                .expect("concurrency: get_config failed"),
            Some(first.clone()),
            "concurrency: get_config does not return the value every racer got"
        );
        for task in 0..CONCURRENT_TASKS {
            let own = db
                .get_narinfo(&concurrency_hash('o', task))
                .await
                .expect("concurrency: get_narinfo failed")
                .unwrap_or_else(|| panic!("concurrency: task {task}'s record is gone"));
            assert_eq!(
                own.created_at,
                ROUNDS - 1,
                "concurrency: task {task}'s last write was lost"
            );
        }
        let shared = db
            .get_narinfo(&shared_hash)
            .await
            .expect("concurrency: get_narinfo failed");
        assert_shared_narinfo_whole(shared.as_ref(), &shared_hash);
        let listed = db
            .list_narinfos(None, 10 * CONCURRENT_TASKS)
            .await
            .expect("concurrency: list_narinfos failed");
        let mut hashes: Vec<&str> = listed.iter().map(|r| r.hash.as_str()).collect();
        hashes.dedup();
        assert_eq!(
            (listed.len(), hashes.len()),
            (CONCURRENT_TASKS + 1, CONCURRENT_TASKS + 1),
            "concurrency: expected one row per task and one shared row, no duplicates"
        );
        let nar = db
            .get_nar(&shared_file)
            .await
            .expect("concurrency: get_nar failed")
            .expect("concurrency: the shared NAR record is gone");
        let writer = nar.nar_size;
        assert_eq!(
            (nar.file_hash, nar.file_size, nar.nar_hash, nar.upstream_url),
            (
                Some(format!("sha256:file-{writer}")),
                Some(writer),
                format!("sha256:nar-{writer}"),
                Some(format!("https://upstream.invalid/{writer}")),
            ),
            "concurrency: the shared NAR record mixes fields of different writers"
        );
    }
}

/// Asserts the shared narinfo of [`metadata_concurrency`] exists and its
/// `narinfo` and `nar_file` were written by the same task.
fn assert_shared_narinfo_whole(record: Option<&NarInfoRecord>, hash: &str) {
    let record = record.expect("concurrency: the shared narinfo record is gone");
    let writer = record
        .nar_file
        .strip_suffix(".nar")
        .unwrap_or_else(|| panic!("concurrency: unexpected nar_file {:?}", record.nar_file));
    assert_eq!(
        record.narinfo,
        format!("StorePath: /nix/store/{hash}-writer-{writer}\n"),
        "concurrency: the shared narinfo record mixes fields of different writers"
    );
}
