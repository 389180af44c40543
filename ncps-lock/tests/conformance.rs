//! Runs the lock conformance suite on `LocalLock`.

use std::sync::Arc;

use ncps_lock::LocalLock;

#[tokio::test]
async fn local_lock_conforms() {
    ncps_core::testkit::lock_conformance(Arc::new(LocalLock::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_lock_conforms_multi_thread() {
    ncps_core::testkit::lock_conformance(Arc::new(LocalLock::new())).await;
}
