//! The `Lock` trait: exclusive, expiring locks per key, so one instance does
//! one download; and [`LockKey`], the keys the engine takes, written and
//! read only here because every replica sharing a lock backend must agree
//! on them byte for byte.

use std::fmt::{self, Debug};
use std::time::Duration;

use async_trait::async_trait;

use crate::nar_file::NarFile;
use crate::{Result, StorePathHash};

/// The key of eviction runs, shared by every instance.
pub const EVICTION_KEY: &str = "lru:eviction";

/// The key the readiness probe takes and gives back.
const READINESS_PROBE_KEY: &str = "readiness-probe";

/// What a lock guards. Its string form ([`fmt::Display`]) is the key in the
/// lock backend, shared with replicas running other versions, so it never
/// changes: `download:<storage key>`, `narinfo:<hash>`, `lru:eviction`,
/// `readiness-probe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockKey {
    /// Writing or removing the object under this storage key (`nar/<file>`):
    /// its download, upload, eviction, deletion or check.
    Download(String),
    /// Pulling the narinfo of this store path hash from the upstreams.
    Narinfo(String),
    /// An eviction run, one at a time across every instance.
    Eviction,
    /// The readiness probe's check that the backend hands out locks.
    ReadinessProbe,
    /// A key of none of these kinds.
    Other(String),
}

impl LockKey {
    /// The download lock of a NAR file.
    pub fn download(file: &NarFile) -> Self {
        LockKey::Download(file.storage_key())
    }

    /// The download lock of the object under a storage key (`nar/<file>`).
    pub fn download_of(storage_key: &str) -> Self {
        LockKey::Download(storage_key.to_owned())
    }

    /// The lock of pulling the narinfo of `hash`.
    pub fn narinfo(hash: &StorePathHash) -> Self {
        LockKey::Narinfo(hash.as_str().to_owned())
    }

    /// Reads a key back from its string form.
    pub fn parse(key: &str) -> Self {
        match key.split_once(':') {
            Some(("download", rest)) => LockKey::Download(rest.to_owned()),
            Some(("narinfo", rest)) => LockKey::Narinfo(rest.to_owned()),
            _ if key == EVICTION_KEY => LockKey::Eviction,
            _ if key == READINESS_PROBE_KEY => LockKey::ReadinessProbe,
            _ => LockKey::Other(key.to_owned()),
        }
    }

    /// Its kind, as the `kind` label of the lock metrics: `download`,
    /// `narinfo`, `lru` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            LockKey::Download(_) => "download",
            LockKey::Narinfo(_) => "narinfo",
            LockKey::Eviction => "lru",
            LockKey::ReadinessProbe => "other",
            LockKey::Other(key) => Self::kind_of(key),
        }
    }

    /// The kind of the key whose string form is `key`, without parsing it
    /// into a [`LockKey`]: the prefix before its `:`.
    pub fn kind_of(key: &str) -> &'static str {
        match key.split_once(':').map(|(prefix, _)| prefix) {
            Some("download") => "download",
            Some("narinfo") => "narinfo",
            Some("lru") => "lru",
            _ => "other",
        }
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKey::Download(key) => write!(f, "download:{key}"),
            LockKey::Narinfo(hash) => write!(f, "narinfo:{hash}"),
            LockKey::Eviction => f.write_str(EVICTION_KEY),
            LockKey::ReadinessProbe => f.write_str(READINESS_PROBE_KEY),
            LockKey::Other(key) => f.write_str(key),
        }
    }
}

impl dyn Lock + '_ {
    /// [`Lock::acquire`] of a typed key.
    pub async fn acquire_key(&self, key: &LockKey, ttl: Duration) -> Result<LockGuard> {
        self.acquire(&key.to_string(), ttl).await
    }

    /// [`Lock::try_acquire`] of a typed key.
    pub async fn try_acquire_key(&self, key: &LockKey, ttl: Duration) -> Result<Option<LockGuard>> {
        self.try_acquire(&key.to_string(), ttl).await
    }

    /// [`Lock::holder`] of a typed key.
    pub async fn holder_of(&self, key: &LockKey) -> Result<Option<String>> {
        self.holder(&key.to_string()).await
    }
}

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

    /// Runs `work` holding the lock, then releases it whatever `work`
    /// returned: the one place a lock taken for a piece of work is given
    /// back, so early returns inside `work` need no release of their own.
    /// A failed release is reported before `work`'s own result.
    pub async fn release_after<T>(self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let result = work.await;
        self.release().await?;
        result
    }

    /// Runs `work` while extending the lock every third of `ttl`, so it
    /// lasts as long as the work and expires soon after a crash.
    pub async fn hold_while<T>(&self, work: impl Future<Output = T>, ttl: Duration) -> T {
        tokio::pin!(work);
        let mut ticks = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
        ticks.tick().await;
        loop {
            tokio::select! {
                result = &mut work => return result,
                _ = ticks.tick() => match self.extend(ttl).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("a download outlived its lock; another instance may fetch it too"),
                    Err(e) => tracing::warn!(error = %e, "cannot extend a download lock"),
                },
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_form_replicas_share() {
        let file: NarFile = format!("{}.nar.xz", "0".repeat(52)).parse().unwrap();
        let hash: StorePathHash = "c2lps5fw8gs12sf22r14z39rnjffilzp".parse().unwrap();
        let keys = [
            (
                LockKey::download(&file),
                format!("download:nar/{file}"),
                "download",
            ),
            (
                LockKey::narinfo(&hash),
                format!("narinfo:{hash}"),
                "narinfo",
            ),
            (LockKey::Eviction, "lru:eviction".to_owned(), "lru"),
            (
                LockKey::ReadinessProbe,
                "readiness-probe".to_owned(),
                "other",
            ),
        ];
        for (key, text, kind) in keys {
            assert_eq!(key.to_string(), text);
            assert_eq!(LockKey::parse(&text), key);
            assert_eq!(key.kind(), kind);
            assert_eq!(LockKey::kind_of(&text), kind);
        }
        assert_eq!(LockKey::parse("lru:x").kind(), "lru");
        assert_eq!(LockKey::parse("x").to_string(), "x");
    }
}
