//! `DegradableLock`: a shared lock backend that falls back to in-process
//! locks while its server is unavailable (ncps's `--cache-lock-allow-degraded-mode`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ncps_core::{Error, HeldLock, Lock, LockGuard, Result};
use tokio::time::Instant;

use crate::LocalLock;

/// How long after an outage is seen the shared backend is asked again.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A shared backend (such as [`RedisLock`](crate::RedisLock)) that, while it
/// answers [`Error::Unavailable`], hands out in-process locks instead of
/// failing: instances then exclude only themselves, not each other, so two
/// may download the same thing, but none stops serving.
///
/// Every lock is also taken in a [`LocalLock`], after the shared one, so this
/// process's own tasks exclude each other across an outage and the recovery:
/// a task that took a key in-process only during the outage still holds it
/// after the shared backend is back. An outage is logged once as a warning
/// when first seen, and its end once; while it lasts, the shared backend is
/// asked again at most every few seconds (one call at a time), so callers do
/// not each wait for its timeouts. Other errors of the shared backend pass
/// through.
#[derive(Debug, Clone)]
pub struct DegradableLock {
    shared: Arc<Shared>,
}

/// What a [`DegradableLock`] and its held locks share.
#[derive(Debug)]
struct Shared {
    primary: Arc<dyn Lock>,
    local: LocalLock,
    probe_interval: Duration,
    state: Mutex<State>,
}

/// Whether the primary is thought down, and when to ask it again.
#[derive(Debug)]
struct State {
    degraded: bool,
    next_probe: Instant,
}

impl Shared {
    /// Whether to ask the primary now: always while it answers; during an
    /// outage, the first caller after each probe interval.
    fn use_primary(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.degraded {
            return true;
        }
        let now = Instant::now();
        if now < state.next_probe {
            return false;
        }
        state.next_probe = now + self.probe_interval;
        true
    }

    /// Notes that the primary is unavailable, warning at the start of an outage.
    fn outage(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.next_probe = Instant::now() + self.probe_interval;
        if !state.degraded {
            state.degraded = true;
            tracing::warn!(
                error = why,
                "lock server unavailable: degraded mode, locks exclude only this instance's tasks until it answers again"
            );
        }
    }

    /// Notes that the primary answered, ending an outage.
    fn answered(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.degraded {
            state.degraded = false;
            tracing::info!("lock server answers again: shared locks again");
        }
    }

    /// The primary's answer, or `None` if it is unavailable (noting either).
    fn check<T>(&self, result: Result<T>) -> Result<Option<T>> {
        match result {
            Ok(value) => {
                self.answered();
                Ok(Some(value))
            }
            Err(Error::Unavailable(why)) => {
                self.outage(&why);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl DegradableLock {
    /// Wraps `primary`; the fallback is a fresh [`LocalLock`].
    pub fn new(primary: Arc<dyn Lock>) -> Self {
        Self::with_probe_interval(primary, PROBE_INTERVAL)
    }

    /// The same with the primary asked again every `interval` during an
    /// outage (5s by default).
    pub fn with_probe_interval(primary: Arc<dyn Lock>, interval: Duration) -> Self {
        DegradableLock {
            shared: Arc::new(Shared {
                primary,
                local: LocalLock::new(),
                probe_interval: interval,
                state: Mutex::new(State {
                    degraded: false,
                    next_probe: Instant::now(),
                }),
            }),
        }
    }

    /// Whether the last call found the shared backend unavailable.
    pub fn is_degraded(&self) -> bool {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .degraded
    }

    /// The guard over a primary lock (if the primary answered) and a local one.
    fn guard(&self, primary: Option<LockGuard>, local: LockGuard) -> LockGuard {
        LockGuard::new(Box::new(DegradableHeld {
            shared: Arc::clone(&self.shared),
            primary,
            local,
        }))
    }
}

#[async_trait]
impl Lock for DegradableLock {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<LockGuard> {
        let shared = &self.shared;
        let primary = if shared.use_primary() {
            shared.check(shared.primary.acquire(key, ttl).await)?
        } else {
            None
        };
        let local = shared.local.acquire(key, ttl).await?;
        Ok(self.guard(primary, local))
    }

    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        let shared = &self.shared;
        let primary = if shared.use_primary() {
            match shared.check(shared.primary.try_acquire(key, ttl).await)? {
                Some(Some(guard)) => Some(guard),
                Some(None) => return Ok(None),
                None => None,
            }
        } else {
            None
        };
        match shared.local.try_acquire(key, ttl).await? {
            Some(local) => Ok(Some(self.guard(primary, local))),
            None => {
                // Held in-process since the outage: give the shared lock back.
                if let Some(primary) = primary {
                    shared.check(primary.release().await)?;
                }
                Ok(None)
            }
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<String>> {
        let shared = &self.shared;
        if !shared.use_primary() {
            return Ok(None);
        }
        Ok(shared.check(shared.primary.holder(key).await)?.flatten())
    }
}

/// One lock of a [`DegradableLock`]: the shared one unless it was taken
/// during an outage, and the in-process one.
struct DegradableHeld {
    shared: Arc<Shared>,
    primary: Option<LockGuard>,
    local: LockGuard,
}

#[async_trait]
impl HeldLock for DegradableHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        let DegradableHeld {
            shared,
            primary,
            local,
        } = *self;
        local.release().await?;
        if let Some(primary) = primary {
            // Unavailable: the shared lock expires with its TTL.
            shared.check(primary.release().await)?;
        }
        Ok(())
    }

    async fn extend(&self, ttl: Duration) -> Result<bool> {
        let primary = match &self.primary {
            // Unavailable: ours as far as this instance can tell.
            Some(primary) => self
                .shared
                .check(primary.extend(ttl).await)?
                .unwrap_or(true),
            None => true,
        };
        let local = self.local.extend(ttl).await?;
        Ok(primary && local)
    }
}
