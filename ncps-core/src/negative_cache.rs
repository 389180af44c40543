//! Narinfos no upstream has, remembered for a while so repeated misses cost
//! no upstream request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Past this many entries, expired ones are dropped; if all are live, all are.
const MAX_ENTRIES: usize = 100_000;

/// Expired entries are dropped whenever the map reaches twice the size it
/// had after the last such sweep (at least this), so a steady stream of
/// absent paths keeps it near its live size rather than [`MAX_ENTRIES`].
const FIRST_SWEEP: usize = 1024;

/// Store path hashes known absent upstream, each until its TTL runs out.
#[derive(Debug)]
pub struct NegativeCache {
    ttl: Duration,
    until: Mutex<HashMap<String, Instant>>,
    /// The size at which expired entries are next swept out.
    sweep_at: Mutex<usize>,
}

impl NegativeCache {
    /// A negative cache whose entries live for `ttl`; zero disables it.
    pub fn new(ttl: Duration) -> Self {
        NegativeCache {
            ttl,
            until: Mutex::default(),
            sweep_at: Mutex::new(FIRST_SWEEP),
        }
    }

    /// Whether `hash` was found absent less than the TTL ago.
    pub fn is_absent(&self, hash: &str) -> bool {
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        match until.get(hash) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                until.remove(hash);
                false
            }
            None => false,
        }
    }

    /// Remembers that no upstream has `hash`.
    pub fn remember(&self, hash: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sweep_at = self.sweep_at.lock().unwrap_or_else(PoisonError::into_inner);
        if until.len() >= (*sweep_at).min(MAX_ENTRIES) {
            until.retain(|_, t| *t > now);
            if until.len() >= MAX_ENTRIES {
                until.clear();
            }
            *sweep_at = (until.len() * 2).max(FIRST_SWEEP);
        }
        until.insert(hash.to_owned(), now + self.ttl);
    }

    /// Forgets `hash`, for example because it was just uploaded.
    pub fn forget(&self, hash: &str) {
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_forgotten_or_expired() {
        let cache = NegativeCache::new(Duration::from_secs(60));
        assert!(!cache.is_absent("a"));
        cache.remember("a");
        assert!(cache.is_absent("a"));
        cache.forget("a");
        assert!(!cache.is_absent("a"));

        let expired = NegativeCache::new(Duration::from_nanos(1));
        expired.remember("a");
        std::thread::sleep(Duration::from_millis(2));
        assert!(!expired.is_absent("a"));

        // Expired entries do not pile up.
        for i in 0..10 * FIRST_SWEEP {
            expired.remember(&i.to_string());
        }
        assert!(expired.until.lock().unwrap().len() <= 2 * FIRST_SWEEP);

        let disabled = NegativeCache::new(Duration::ZERO);
        disabled.remember("a");
        assert!(!disabled.is_absent("a"));
    }
}
