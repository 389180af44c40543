//! Hot narinfos kept in memory, so a repeated narinfo hit asks nothing of
//! the database. Bounded by count (the least recently used go first) and by
//! age: an entry is trusted for [`HOT_TTL`] at most, which bounds how long a
//! narinfo another process deleted or evicted can still be served here.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a hot narinfo is served without asking the database again.
pub(crate) const HOT_TTL: Duration = Duration::from_secs(30);

use quick_cache::sync::Cache;

/// A narinfo as served, with the NAR file it names (for access records).
#[derive(Clone, Debug)]
pub(crate) struct HotNarinfo {
    /// The narinfo text, signed as served.
    pub(crate) narinfo: Arc<str>,
    /// Its NAR file, `<hash>.nar[.ext]`.
    pub(crate) nar_file: Arc<str>,
    /// When it was read from the database.
    at: Instant,
}

/// The hot narinfos by store path hash.
pub(crate) struct HotNarinfos(Option<Cache<String, HotNarinfo>>);

impl std::fmt::Debug for HotNarinfos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotNarinfos")
            .field("len", &self.0.as_ref().map_or(0, Cache::len))
            .finish()
    }
}

impl HotNarinfos {
    /// Room for `capacity` narinfos; zero keeps none.
    pub(crate) fn new(capacity: usize) -> Self {
        HotNarinfos((capacity > 0).then(|| Cache::new(capacity)))
    }

    /// The narinfo of `hash`, if hot and young enough.
    pub(crate) fn get(&self, hash: &str) -> Option<HotNarinfo> {
        let cache = self.0.as_ref()?;
        let hot = cache.get(hash)?;
        if hot.at.elapsed() > HOT_TTL {
            cache.remove(hash);
            return None;
        }
        Some(hot)
    }

    /// Remembers the narinfo of `hash`.
    pub(crate) fn insert(&self, hash: &str, narinfo: &str, nar_file: &str) {
        if let Some(cache) = &self.0 {
            cache.insert(
                hash.to_owned(),
                HotNarinfo {
                    narinfo: narinfo.into(),
                    nar_file: nar_file.into(),
                    at: Instant::now(),
                },
            );
        }
    }

    /// The store path hash of a hot narinfo naming `nar_file`, if any. A
    /// scan, for the rare NAR the database no longer knows.
    pub(crate) fn hash_naming(&self, nar_file: &str) -> Option<String> {
        let cache = self.0.as_ref()?;
        cache
            .iter()
            .find(|(_, hot)| &*hot.nar_file == nar_file)
            .map(|(hash, _)| hash)
    }

    /// Forgets the narinfo of `hash` (it was deleted or evicted).
    pub(crate) fn remove(&self, hash: &str) {
        if let Some(cache) = &self.0 {
            cache.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_forgets_and_stays_bounded() {
        let hot = HotNarinfos::new(10);
        hot.insert("a", "StorePath: a", "a.nar");
        assert_eq!(&*hot.get("a").unwrap().narinfo, "StorePath: a");
        assert_eq!(hot.hash_naming("a.nar").as_deref(), Some("a"));
        assert_eq!(hot.hash_naming("b.nar"), None);
        hot.remove("a");
        assert!(hot.get("a").is_none());
        for i in 0..100 {
            hot.insert(&i.to_string(), "x", "x.nar");
        }
        let kept = (0..100)
            .filter(|i| hot.get(&i.to_string()).is_some())
            .count();
        assert!(kept <= 10, "{kept} kept");
        let none = HotNarinfos::new(0);
        none.insert("a", "x", "x.nar");
        assert!(none.get("a").is_none());
    }
}
