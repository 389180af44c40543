//! Narinfos no upstream has, remembered for a while so repeated misses cost
//! no upstream request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::nix32;

/// Past this many entries, expired ones are dropped; if all are live, all are.
const MAX_ENTRIES: usize = 100_000;

/// Expired entries are dropped whenever the table is full (before it would
/// grow), into a new table with room for 5/4 of the live entries (at least
/// this many), so a steady stream of absent paths keeps one table size.
const FIRST_SWEEP: usize = 1024;

/// A store path hash as the map keeps it: the 20 bytes its 32 nix32
/// characters encode, inline. With its deadline an entry takes 24 bytes.
type Key = [u8; 20];

fn key(hash: &str) -> Option<Key> {
    if hash.len() != 32 {
        return None;
    }
    nix32::decode(hash, 20).ok()?.try_into().ok()
}

/// Store path hashes known absent upstream, each until its TTL runs out.
/// Only 32-character nix32 hashes (what store paths have) are remembered.
#[derive(Debug)]
pub struct NegativeCache {
    ttl: Duration,
    /// Deadlines are whole seconds since this instant.
    start: Instant,
    until: Mutex<HashMap<Key, u32>>,
}

impl NegativeCache {
    /// A negative cache whose entries live for `ttl`; zero disables it.
    pub fn new(ttl: Duration) -> Self {
        NegativeCache {
            ttl,
            start: Instant::now(),
            until: Mutex::default(),
        }
    }

    /// Seconds since `start`, rounded down.
    fn now(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Whether `hash` was found absent less than the TTL ago (to the second).
    pub fn is_absent(&self, hash: &str) -> bool {
        self.is_absent_at(hash, self.now())
    }

    /// Remembers that no upstream has `hash`.
    pub fn remember(&self, hash: &str) {
        self.remember_at(hash, self.now());
    }

    /// [`Self::is_absent`] at `now` seconds since `start`.
    fn is_absent_at(&self, hash: &str, now: u32) -> bool {
        let Some(hash) = key(hash) else {
            return false;
        };
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        match until.get(&hash) {
            Some(t) if *t > now => true,
            Some(_) => {
                until.remove(&hash);
                false
            }
            None => false,
        }
    }

    /// [`Self::remember`] at `now` seconds since `start`.
    fn remember_at(&self, hash: &str, now: u32) {
        let Some(hash) = key(hash).filter(|_| !self.ttl.is_zero()) else {
            return;
        };
        // Rounded up, so an entry lives at least a second.
        let ttl = u32::try_from(self.ttl.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u32::MAX);
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        // Full: the next insert would grow the table (or rehash it, when
        // removals left tombstones). Sweep instead, into a new table: with
        // `retain` the tombstones would soon make it double anyway (a 3 MB
        // step under steady load in the soak test).
        if until.len() >= until.capacity() {
            let mut live = until.values().filter(|t| **t > now).count();
            if live >= MAX_ENTRIES {
                until.clear();
                live = 0;
            }
            let mut fresh =
                HashMap::with_capacity((live + live / 4).clamp(FIRST_SWEEP, MAX_ENTRIES));
            fresh.extend(until.drain().filter(|(_, t)| *t > now));
            *until = fresh;
        }
        until.insert(hash, now.saturating_add(ttl));
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
    fn keys_are_the_20_bytes_of_the_hash() {
        let h = "0mdqa9w1p6cmli6976v4wi0sw9r4p5pr";
        assert_eq!(key(h).map(|k| nix32::encode(&k)), Some(h.to_owned()));
        assert_eq!(key("0mdqa9w1p6cmli6976v4wi0sw9r4p5p"), None);
        assert_eq!(std::mem::size_of::<(Key, u32)>(), 24);
    }

    #[test]
    fn a_steady_stream_keeps_one_table_size() {
        // 100 absent paths a second for 30 TTLs: about 6000 live at a time.
        let cache = NegativeCache::new(Duration::from_secs(60));
        let mut capacities = Vec::new();
        for i in 0..180_000 {
            cache.remember_at(&hash(i), u32::try_from(i / 100).unwrap());
            if i >= 60_000 {
                capacities.push(cache.until.lock().unwrap().capacity());
            }
        }
        capacities.dedup();
        assert_eq!(capacities.len(), 1, "{capacities:?}");
        assert!(capacities[0] < 2 * 6000 * 5 / 4, "{capacities:?}");
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

        // Not a nix32 hash either.
        cache.remember(&"e".repeat(32));
        assert!(!cache.is_absent(&"e".repeat(32)));

        // Entries live for the TTL, to the second.
        let expiring = NegativeCache::new(Duration::from_secs(10));
        expiring.remember_at(a, 5);
        assert!(expiring.is_absent_at(a, 14));
        assert!(!expiring.is_absent_at(a, 15));
        assert!(!expiring.is_absent_at(a, 14), "removed when found expired");

        // Expired entries do not pile up, nor does the table they left.
        for i in 0..10 * FIRST_SWEEP {
            expiring.remember_at(&hash(i), 100 + 20 * u32::try_from(i).unwrap());
        }
        let until = expiring.until.lock().unwrap();
        assert!(until.capacity() <= 2 * FIRST_SWEEP, "{}", until.capacity());
        drop(until);

        let disabled = NegativeCache::new(Duration::ZERO);
        disabled.remember(a);
        assert!(!disabled.is_absent(a));
    }
}
