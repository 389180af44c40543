//! Narinfos no upstream has, remembered for a while so repeated misses cost
//! no upstream request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Past this many entries, expired ones are dropped; if all are live, all are.
const MAX_ENTRIES: usize = 100_000;

/// Expired entries are dropped whenever the map reaches 5/4 of the size it
/// had after the last such sweep (at least this), so a steady stream of
/// absent paths keeps it near its live size rather than [`MAX_ENTRIES`].
const FIRST_SWEEP: usize = 1024;

/// A store path hash as the map keeps it: its 32 nix32 characters inline,
/// with no allocation of their own (48 bytes an entry with its deadline).
type Key = [u8; 32];

fn key(hash: &str) -> Option<Key> {
    hash.as_bytes().try_into().ok()
}

/// Store path hashes known absent upstream, each until its TTL runs out.
/// Only 32-character hashes (what store paths have) are remembered.
#[derive(Debug)]
pub struct NegativeCache {
    ttl: Duration,
    until: Mutex<HashMap<Key, Instant>>,
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
        let Some(hash) = key(hash) else {
            return false;
        };
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        match until.get(&hash) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                until.remove(&hash);
                false
            }
            None => false,
        }
    }

    /// Remembers that no upstream has `hash`.
    pub fn remember(&self, hash: &str) {
        let Some(hash) = key(hash).filter(|_| !self.ttl.is_zero()) else {
            return;
        };
        let now = Instant::now();
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sweep_at = self.sweep_at.lock().unwrap_or_else(PoisonError::into_inner);
        if until.len() >= (*sweep_at).min(MAX_ENTRIES) {
            until.retain(|_, t| *t > now);
            if until.len() >= MAX_ENTRIES {
                until.clear();
            }
            // The table keeps its size after `retain`; give back what a
            // burst of absent paths left behind.
            let live = until.len();
            until.shrink_to(live * 2);
            *sweep_at = (live + live / 4).max(FIRST_SWEEP);
        }
        until.insert(hash, now + self.ttl);
    }

    /// Forgets `hash`, for example because it was just uploaded.
    pub fn forget(&self, hash: &str) {
        let Some(hash) = key(hash) else {
            return;
        };
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32-character hash numbered `i`.
    fn hash(i: usize) -> String {
        format!("{i:0>32}")
    }

    #[test]
    fn remembers_until_forgotten_or_expired() {
        let a = &hash(0);
        let cache = NegativeCache::new(Duration::from_secs(60));
        assert!(!cache.is_absent(a));
        cache.remember(a);
        assert!(cache.is_absent(a));
        assert!(!cache.is_absent(&hash(1)));
        cache.forget(a);
        assert!(!cache.is_absent(a));

        // Not a store path hash: never remembered.
        cache.remember("short");
        assert!(!cache.is_absent("short"));

        let expired = NegativeCache::new(Duration::from_nanos(1));
        expired.remember(a);
        std::thread::sleep(Duration::from_millis(2));
        assert!(!expired.is_absent(a));

        // Expired entries do not pile up, nor does the table they left.
        for i in 0..10 * FIRST_SWEEP {
            expired.remember(&hash(i));
        }
        let until = expired.until.lock().unwrap();
        assert!(until.len() <= FIRST_SWEEP + FIRST_SWEEP / 4);
        assert!(until.capacity() <= 4 * FIRST_SWEEP, "{}", until.capacity());
        drop(until);

        let disabled = NegativeCache::new(Duration::ZERO);
        disabled.remember(a);
        assert!(!disabled.is_absent(a));
    }
}
