//! Runs the lock conformance suites on `LocalLock`, and on `DegradableLock`
//! over a backend that always answers.

use std::sync::Arc;

use ncps_core::Lock;
use ncps_lock::{DegradableLock, LocalLock};

#[tokio::test]
async fn local_lock_conforms() {
    ncps_core::testkit::lock_conformance(Arc::new(LocalLock::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_lock_conforms_multi_thread() {
    ncps_core::testkit::lock_conformance(Arc::new(LocalLock::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_lock_clones_exclude_each_other() {
    let lock: Arc<dyn Lock> = Arc::new(LocalLock::new());
    ncps_core::testkit::lock_exclusion(Arc::clone(&lock), lock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn degradable_lock_over_a_healthy_backend_conforms() {
    let lock = DegradableLock::new(Arc::new(LocalLock::new()));
    ncps_core::testkit::lock_conformance(Arc::new(lock.clone())).await;
    assert!(!lock.is_degraded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn degradable_locks_over_one_backend_exclude_each_other() {
    let shared: Arc<dyn Lock> = Arc::new(LocalLock::new());
    ncps_core::testkit::lock_exclusion(
        Arc::new(DegradableLock::new(Arc::clone(&shared))),
        Arc::new(DegradableLock::new(shared)),
    )
    .await;
}
