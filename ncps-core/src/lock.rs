//! The `Lock` trait: exclusive, expiring locks per key, so one instance does one download.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::Result;

/// Exclusive locks per key. A lock not released within its TTL expires, so a
/// crashed holder never blocks the key for ever.
#[async_trait]
pub trait Lock: Send + Sync + Debug {
    /// Waits until `key` is free, then holds it for at most `ttl`.
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<LockGuard>;

    /// Takes `key` if it is free now; `None` if someone else holds it.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>>;

    /// The label of whoever holds `key` now, if it is held and the backend
    /// knows labels. A shared backend labels each lock with the holder's
    /// advertised URL, so a replica can stream a download from the peer doing
    /// it instead of waiting. Backends without labels answer `None`.
    async fn holder(&self, key: &str) -> Result<Option<String>> {
        let _ = key;
        Ok(None)
    }
}

/// A backend's handle on one held lock.
#[async_trait]
pub trait HeldLock: Send + Sync {
    /// Releases the lock, if it is still ours.
    async fn release(self: Box<Self>) -> Result<()>;

    /// Holds the lock for `ttl` from now; `false` if it is no longer ours
    /// (it expired and someone else took it), in which case nothing changes.
    async fn extend(&self, ttl: Duration) -> Result<bool>;
}

/// A held lock. Release it with [`LockGuard::release`]; dropping it releases it
/// in the background (or it expires with its TTL).
pub struct LockGuard(Option<Box<dyn HeldLock>>);

impl LockGuard {
    /// Wraps a backend's held lock.
    pub fn new(held: Box<dyn HeldLock>) -> Self {
        LockGuard(Some(held))
    }

    /// Holds the lock for `ttl` from now; `false` if it is no longer ours.
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        match &self.0 {
            Some(held) => held.extend(ttl).await,
            None => Ok(false),
        }
    }

    /// Releases the lock now.
    pub async fn release(mut self) -> Result<()> {
        match self.0.take() {
            Some(held) => held.release().await,
            None => Ok(()),
        }
    }
}

impl Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = held.release().await {
                    tracing::warn!(error = %e, "releasing a dropped lock failed; it expires with its TTL");
                }
            });
        }
    }
}
