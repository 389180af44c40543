//! `LocalLock`: expiring per-key locks within one process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ncps_core::{HeldLock, Lock, LockGuard, Result};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Expiry used when `now + ttl` does not fit in an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Locks held in this process. Cloning shares the locks.
///
/// Each held key maps to the holder's token and expiry. Waiters sleep until a
/// release (or the holder's expiry, whichever comes first), then try again.
#[derive(Debug, Clone, Default)]
pub struct LocalLock {
    inner: Arc<Inner>,
}

/// The state shared by a [`LocalLock`] and the locks it hands out.
#[derive(Debug, Default)]
struct Inner {
    /// Held keys: key -> holder.
    held: Mutex<HashMap<String, Holder>>,
    /// Source of holder tokens.
    next_token: AtomicU64,
    /// Signalled on every release.
    released: Notify,
}

/// Who holds a key, and until when.
#[derive(Debug, Clone, Copy)]
struct Holder {
    token: u64,
    expires: Instant,
}

impl Inner {
    /// The held-key map. Its invariants hold at every step, so a panic
    /// elsewhere while it was locked leaves it usable.
    fn held(&self) -> MutexGuard<'_, HashMap<String, Holder>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `key` if it is free or expired: `Ok(token)`, else `Err(expiry)`
    /// of the current holder.
    fn take(&self, key: &str, ttl: Duration) -> Result<u64, Instant> {
        let now = Instant::now();
        let mut held = self.held();
        if let Some(holder) = held.get(key)
            && holder.expires > now
        {
            return Err(holder.expires);
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let expires = now.checked_add(ttl).unwrap_or_else(|| now + FAR_FUTURE);
        held.insert(key.to_string(), Holder { token, expires });
        Ok(token)
    }

    /// Moves the expiry of `key` to `ttl` from now if `token` still holds it.
    fn extend(&self, key: &str, token: u64, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut held = self.held();
        match held.get_mut(key) {
            Some(holder) if holder.token == token && holder.expires > now => {
                holder.expires = now.checked_add(ttl).unwrap_or_else(|| now + FAR_FUTURE);
                true
            }
            _ => false,
        }
    }

    /// Releases `key` if `token` still holds it, waking waiters.
    fn release(&self, key: &str, token: u64) {
        let mut held = self.held();
        if held.get(key).is_some_and(|holder| holder.token == token) {
            held.remove(key);
            drop(held);
            self.released.notify_waiters();
        }
    }
}

impl LocalLock {
    /// A lock set with no key held.
    pub fn new() -> Self {
        Self::default()
    }

    /// The guard for a key just taken with `token`.
    fn guard(&self, key: &str, token: u64) -> LockGuard {
        LockGuard::new(Box::new(LocalHeld {
            inner: Arc::clone(&self.inner),
            key: key.to_string(),
            token,
        }))
    }
}

#[async_trait]
impl Lock for LocalLock {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<LockGuard> {
        loop {
            // Register for the release signal before looking, so a release
            // between the look and the wait is not missed.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.inner.take(key, ttl) {
                Ok(token) => return Ok(self.guard(key, token)),
                Err(expires) => {
                    // Woken by a release or the holder's expiry; either way, look again.
                    let _ = tokio::time::timeout_at(expires, released).await;
                }
            }
        }
    }

    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        Ok(self
            .inner
            .take(key, ttl)
            .ok()
            .map(|token| self.guard(key, token)))
    }
}

/// One held key of a [`LocalLock`].
struct LocalHeld {
    inner: Arc<Inner>,
    key: String,
    token: u64,
}

#[async_trait]
impl HeldLock for LocalHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        self.inner.release(&self.key, self.token);
        Ok(())
    }

    async fn extend(&self, ttl: Duration) -> Result<bool> {
        Ok(self.inner.extend(&self.key, self.token, ttl))
    }
}
