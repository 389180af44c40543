//! A bounded in-memory cache whose entries are trusted for a fixed time
//! after they were put in: the least recently used go first when it is
//! full, and entries past their age are dropped when met and swept out
//! about once per that age, so memory follows what was asked for lately.
//! Hot narinfos (ncps-core) and kept-open files (ncps-store) use it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

/// Values by string key, each trusted for `ttl` after it was inserted.
pub struct AgedCache<V> {
    cache: Option<Cache<String, (V, Instant)>>,
    ttl: Duration,
    /// When entries past `ttl` were last swept out.
    swept: Mutex<Instant>,
}

impl<V> std::fmt::Debug for AgedCache<V>
where
    V: Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgedCache")
            .field("len", &self.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<V: Clone> AgedCache<V> {
    /// Room for `capacity` values, each kept `ttl` at most; zero keeps none.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        AgedCache {
            cache: (capacity > 0).then(|| Cache::new(capacity)),
            ttl,
            swept: Mutex::new(Instant::now()),
        }
    }

    /// How many values are held.
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, Cache::len)
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`, if held and young enough.
    pub fn get(&self, key: &str) -> Option<V> {
        let cache = self.cache.as_ref()?;
        let (value, at) = cache.get(key)?;
        if at.elapsed() > self.ttl {
            cache.remove(key);
            return None;
        }
        Some(value)
    }

    /// Holds `value` for `key`, sweeping out old entries first if it is time.
    pub fn insert(&self, key: &str, value: V) {
        if let Some(cache) = &self.cache {
            self.sweep(cache);
            cache.insert(key.to_owned(), (value, Instant::now()));
        }
    }

    /// Forgets the value of `key`.
    pub fn remove(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.remove(key);
        }
    }

    /// The key of some held value that `matches`, if any (a scan).
    pub fn find_key(&self, matches: impl Fn(&V) -> bool) -> Option<String> {
        let cache = self.cache.as_ref()?;
        cache
            .iter()
            .find(|(_, (value, _))| matches(value))
            .map(|(key, _)| key)
    }

    /// Drops the entries older than the age, at most once per age.
    fn sweep(&self, cache: &Cache<String, (V, Instant)>) {
        {
            let mut swept = self.swept.lock().unwrap_or_else(PoisonError::into_inner);
            if swept.elapsed() < self.ttl {
                return;
            }
            *swept = Instant::now();
        }
        cache.retain(|_, (_, at)| at.elapsed() <= self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_forgets_ages_and_stays_bounded() {
        let cache = AgedCache::new(10, Duration::from_secs(60));
        cache.insert("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.find_key(|v| *v == 1).as_deref(), Some("a"));
        cache.remove("a");
        assert_eq!(cache.get("a"), None);
        for i in 0..100 {
            cache.insert(&i.to_string(), i);
        }
        assert!(cache.len() <= 10, "{} kept", cache.len());
        // Old entries are neither served nor kept past a sweep.
        let ttl = Duration::from_millis(20);
        let young = AgedCache::new(10, ttl);
        young.insert("old", 1);
        std::thread::sleep(ttl * 2);
        assert_eq!(young.get("old"), None);
        young.insert("older", 2);
        std::thread::sleep(ttl * 2);
        young.insert("new", 3);
        assert_eq!(young.len(), 1);
        assert_eq!(young.get("new"), Some(3));
        let none = AgedCache::new(0, ttl);
        none.insert("a", 1);
        assert_eq!(none.get("a"), None);
        assert!(none.is_empty());
    }
}
