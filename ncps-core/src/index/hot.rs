//! Hot narinfos kept in memory, so a repeated narinfo hit asks nothing of
//! the database. Bounded by count (the least recently used go first) and by
//! age: an entry is trusted for [`HOT_TTL`] at most, which bounds how long a
//! narinfo another process deleted or evicted can still be served here.
//! Entries past that age are swept out about every [`HOT_TTL`], so memory
//! follows the narinfos asked for lately, not the bound.

use std::sync::Arc;
use std::time::Duration;

use crate::ServedNarinfo;
use crate::aged_cache::AgedCache;

/// How long a hot narinfo is served without asking the database again.
pub(crate) const HOT_TTL: Duration = Duration::from_secs(30);

/// A narinfo as served, with the NAR file it names (for access records).
#[derive(Clone, Debug)]
pub(crate) struct HotNarinfo {
    /// The narinfo as served, with its entity tag.
    pub(crate) narinfo: ServedNarinfo,
    /// Its NAR file, `<hash>.nar[.ext]`.
    pub(crate) nar_file: Arc<str>,
}

/// The hot narinfos by store path hash.
#[derive(Debug)]
pub(crate) struct HotNarinfos {
    cache: AgedCache<HotNarinfo>,
}

impl HotNarinfos {
    /// Room for `capacity` narinfos; zero keeps none.
    pub(crate) fn new(capacity: usize) -> Self {
        HotNarinfos {
            cache: AgedCache::new(capacity, HOT_TTL),
        }
    }

    /// The narinfo of `hash`, if hot and young enough.
    pub(crate) fn get(&self, hash: &str) -> Option<HotNarinfo> {
        self.cache.get(hash)
    }

    /// Remembers the narinfo of `hash`.
    pub(crate) fn insert(&self, hash: &str, narinfo: &ServedNarinfo, nar_file: &str) {
        let hot = HotNarinfo {
            narinfo: narinfo.clone(),
            nar_file: nar_file.into(),
        };
        self.cache.insert(hash, hot);
    }

    /// The store path hash of a hot narinfo naming `nar_file`, if any. A
    /// scan, for the rare NAR the database no longer knows.
    pub(crate) fn hash_naming(&self, nar_file: &str) -> Option<String> {
        self.cache.find_key(|hot| &*hot.nar_file == nar_file)
    }

    /// Forgets the narinfo of `hash` (it was deleted or evicted).
    pub(crate) fn remove(&self, hash: &str) {
        self.cache.remove(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(text: &str) -> ServedNarinfo {
        ServedNarinfo::new(text.to_owned())
    }

    #[test]
    fn keeps_forgets_and_stays_bounded() {
        let hot = HotNarinfos::new(10);
        hot.insert("a", &served("StorePath: a"), "a.nar");
        assert_eq!(hot.get("a").unwrap().narinfo.as_str(), "StorePath: a");
        assert_eq!(hot.hash_naming("a.nar").as_deref(), Some("a"));
        assert_eq!(hot.hash_naming("b.nar"), None);
        hot.remove("a");
        assert!(hot.get("a").is_none());
        for i in 0..100 {
            hot.insert(&i.to_string(), &served("x"), "x.nar");
        }
        let kept = (0..100)
            .filter(|i| hot.get(&i.to_string()).is_some())
            .count();
        assert!(kept <= 10, "{kept} kept");
        // Old entries are swept out.
        let ttl = Duration::from_millis(20);
        let young = HotNarinfos {
            cache: AgedCache::new(10, ttl),
        };
        young.insert("old", &served("x"), "x.nar");
        std::thread::sleep(ttl * 2);
        young.insert("new", &served("y"), "y.nar");
        assert_eq!(young.cache.len(), 1);
        assert!(young.get("new").is_some());
        let none = HotNarinfos::new(0);
        none.insert("a", &served("x"), "x.nar");
        assert!(none.get("a").is_none());
    }
}
