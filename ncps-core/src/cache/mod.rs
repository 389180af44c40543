//! The cache engine's facade, the one entry point for embedders: [`Cache`]
//! answers narinfo and NAR requests from the index and the blobs, and on a
//! miss through the fetcher from the upstreams, checking and keeping what it
//! fetches. Reads say how far they may go ([`Fetch`]); writes, upkeep and
//! the background work ([`Cache::start`]) live in this module's files.

mod background;
mod reads;
mod upkeep;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::blobs::Blobs;
use crate::events::{ObservedLock, Observer, Observers};
pub use crate::fetcher::PEER_HEADER;
use crate::fetcher::{Fetcher, Parts};
use crate::index::Index;
use crate::metrics::Metrics;
pub use crate::nar_body::{NarBody, NarSize};
pub use crate::options::CacheOptions;
use crate::upstream::Upstream;
use crate::{CacheInfo, Lock, MetadataDb, PublicKey, Result, SigningKey, Storage, StorageUsage};
pub use background::{
    Background, BackgroundOptions, CLEANUP_INTERVAL, HEALTH_CHECK_INTERVAL, NextRun,
};
pub use reads::Fetch;

/// The database config key of the cache's secret key.
const SECRET_KEY_CONFIG: &str = "secret_key";

/// How often what was served is written to the database (see [`crate::access_log`]).
pub const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The cache engine. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// The parts the facade stands on.
#[derive(Debug)]
struct Inner {
    index: Arc<Index>,
    blobs: Arc<Blobs>,
    fetcher: Fetcher,
    /// The lock backend, observed.
    lock: Arc<dyn Lock>,
    access: Arc<AccessLog>,
    observers: Observers,
    metrics: Arc<Metrics>,
    signing_key: SigningKey,
    options: CacheOptions,
}

impl Cache {
    /// An engine over the given backends and upstreams (tried in priority order).
    pub fn new(
        storage: Arc<dyn Storage>,
        lock: Arc<dyn Lock>,
        db: Arc<dyn MetadataDb>,
        upstreams: Vec<Upstream>,
        signing_key: SigningKey,
        options: CacheOptions,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let access = Arc::new(AccessLog::default());
        let mut observers: Vec<Arc<dyn Observer>> = vec![metrics.clone(), access.clone()];
        observers.extend(options.observers.iter().cloned());
        let observers = Observers::new(observers);
        let lock: Arc<dyn Lock> = Arc::new(ObservedLock::new(lock, observers.clone()));
        let index = Arc::new(Index::new(db, &options, observers.clone()));
        let blobs = Arc::new(Blobs::new(
            storage,
            Arc::clone(&access),
            observers.clone(),
            options.temp_dir.clone(),
        ));
        let parts = Parts {
            index: Arc::clone(&index),
            blobs: Arc::clone(&blobs),
            lock: Arc::clone(&lock),
            observers: observers.clone(),
        };
        let fetcher = Fetcher::new(parts, upstreams, signing_key.clone(), options.clone());
        Cache {
            inner: Arc::new(Inner {
                index,
                blobs,
                fetcher,
                lock,
                access,
                observers,
                metrics,
                signing_key,
                options,
            }),
        }
    }

    /// The engine's metrics, for a server to register and serve.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Reads what the database holds into the store gauges of
    /// [`Cache::metrics`]: one query at start; the engine keeps them up to
    /// date from then on, so scrapes never query the database.
    pub async fn load_store_totals(&self) -> Result<StorageUsage> {
        let usage = self.inner.index.db().storage_usage().await?;
        self.inner
            .observers
            .emit(crate::events::Event::StoreTotals(&usage));
        Ok(usage)
    }

    /// The cache's signing key from the database, generating and storing one
    /// named `<hostname>-1` on first start. Racing instances end up with one key.
    pub async fn signing_key_from_db(db: &dyn MetadataDb, hostname: &str) -> Result<SigningKey> {
        if let Some(stored) = db.get_config(SECRET_KEY_CONFIG).await? {
            return stored.parse();
        }
        let generated = SigningKey::generate(&format!("{hostname}-1"));
        let stored = db
            .set_config_if_absent(SECRET_KEY_CONFIG, &generated.to_string())
            .await?;
        let key: SigningKey = stored.parse()?;
        if key.public_key() == generated.public_key() {
            tracing::info!(key = %key.public_key(), "generated a signing key");
        } else {
            tracing::info!(key = %key.public_key(), "using the signing key another instance generated");
        }
        Ok(key)
    }

    /// The key clients must trust for narinfos from this cache.
    pub fn public_key(&self) -> PublicKey {
        self.inner.signing_key.public_key()
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[Upstream] {
        self.inner.fetcher.upstreams()
    }

    /// This cache's nix-cache-info.
    pub fn cache_info(&self) -> CacheInfo {
        CacheInfo {
            priority: Some(self.inner.options.priority),
            ..CacheInfo::default()
        }
    }

    /// Checks every upstream's health now; see [`Upstream::check_health`].
    pub async fn check_upstreams(&self) {
        self.inner.fetcher.check_upstreams().await;
    }

    /// Waits for and takes the download lock of `file`: no download,
    /// upload, eviction or deletion of it meanwhile.
    async fn lock_download(&self, file: &crate::nar_file::NarFile) -> Result<crate::LockGuard> {
        let ttl = self.inner.options.download_lock_ttl;
        let key = crate::lock::LockKey::download(file);
        self.inner.lock.acquire_key(&key, ttl).await
    }

    /// Forgets that no upstream had `hash`, so the next request asks again.
    pub fn forget_absent(&self, hash: &crate::StorePathHash) {
        self.inner.index.forget_absent(hash);
    }

    /// How many NAR downloads are running (a client may have gone; the
    /// download goes on to storage).
    pub fn downloads_in_flight(&self) -> usize {
        self.inner.fetcher.downloads_in_flight()
    }

    /// Waits for the NAR downloads in flight to be stored (or to fail), for a
    /// graceful shutdown. Downloads started meanwhile are waited for too.
    pub async fn finish_downloads(&self) {
        self.inner.fetcher.finish_downloads().await;
    }
}
