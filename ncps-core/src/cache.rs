//! The cache engine: answers narinfo and NAR requests from the database and
//! storage, and on a miss from the upstreams, checking and keeping what it
//! fetches.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use crate::nar_file::NarFile;
use crate::nar_verify::{self, NarCheck, is_supported_compression};
use crate::negative_cache::NegativeCache;
use crate::upstream::Upstream;
use crate::{
    ByteStream, CacheInfo, Error, Lock, LockGuard, MetadataDb, NarInfo, NarInfoRecord, NarRecord,
    PublicKey, Result, SigningKey, Storage, StorePathHash,
};

/// The database config key of the cache's secret key.
const SECRET_KEY_CONFIG: &str = "secret_key";

/// A served object is marked accessed at most this often, to spare the database a write per hit.
const TOUCH_INTERVAL_SECS: i64 = 60;

/// How many chunks may wait between the download and a slow consumer.
const CHANNEL_CHUNKS: usize = 16;

/// How the engine behaves.
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Whether served narinfos carry this cache's signature.
    pub sign_narinfo: bool,
    /// How long a download or narinfo lock is held at most.
    pub download_lock_ttl: Duration,
    /// `Priority:` this cache advertises in its nix-cache-info.
    pub priority: u32,
    /// How long a narinfo no upstream has is answered 404 without asking again; zero disables.
    pub negative_ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            sign_narinfo: true,
            download_lock_ttl: Duration::from_secs(300),
            priority: 40,
            negative_ttl: Duration::from_secs(300),
        }
    }
}

/// A NAR on its way to a client.
pub struct NarBody {
    /// The size of the file, when known before the body is sent.
    pub size: Option<u64>,
    /// The bytes; an `Err` item means the transfer must be aborted.
    pub body: ByteStream,
}

impl std::fmt::Debug for NarBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarBody")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The cache engine. Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    lock: Arc<dyn Lock>,
    db: Arc<dyn MetadataDb>,
    upstreams: Vec<Upstream>,
    signing_key: SigningKey,
    negative: NegativeCache,
    options: CacheOptions,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Cache {
    /// An engine over the given backends and upstreams (tried in priority order).
    pub fn new(
        storage: Arc<dyn Storage>,
        lock: Arc<dyn Lock>,
        db: Arc<dyn MetadataDb>,
        mut upstreams: Vec<Upstream>,
        signing_key: SigningKey,
        options: CacheOptions,
    ) -> Self {
        upstreams.sort_by_key(Upstream::priority);
        Cache {
            inner: Arc::new(Inner {
                storage,
                lock,
                db,
                upstreams,
                signing_key,
                negative: NegativeCache::new(options.negative_ttl),
                options,
            }),
        }
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
        tracing::info!(key = %generated.public_key(), "generated a signing key");
        stored.parse()
    }

    /// The key clients must trust for narinfos from this cache.
    pub fn public_key(&self) -> PublicKey {
        self.inner.signing_key.public_key()
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.inner.upstreams
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
        futures::future::join_all(self.inner.upstreams.iter().map(Upstream::check_health)).await;
    }

    /// Checks every upstream's health every `interval`, in the background,
    /// so an upstream that went down is used again as soon as it is back.
    pub fn spawn_health_checks(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                cache.check_upstreams().await;
            }
        })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.inner.db.ping().await
    }

    /// The narinfo of `hash` as this cache serves it, fetching it from the
    /// upstreams on a miss. Never downloads the NAR.
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        let db = &self.inner.db;
        if let Some(record) = db.get_narinfo(hash.as_str()).await? {
            self.touch_narinfo(&record).await;
            return Ok(Some(record.narinfo));
        }
        if self.inner.negative.is_absent(hash.as_str()) {
            return Ok(None);
        }
        let guard = self.lock(&format!("narinfo:{hash}")).await?;
        let result = match db.get_narinfo(hash.as_str()).await? {
            Some(record) => Ok(Some(record.narinfo)),
            None => self.pull_narinfo(hash).await,
        };
        guard.release().await?;
        result
    }

    /// Waits for and takes the lock of one download.
    async fn lock(&self, key: &str) -> Result<LockGuard> {
        let ttl = self.inner.options.download_lock_ttl;
        self.inner.lock.acquire(key, ttl).await
    }

    async fn touch_narinfo(&self, record: &NarInfoRecord) {
        let now = now();
        if now - record.last_accessed_at >= TOUCH_INTERVAL_SECS
            && let Err(e) = self.inner.db.touch_narinfo(&record.hash, now).await
        {
            tracing::warn!(hash = %record.hash, error = %e, "cannot record a narinfo access");
        }
    }

    /// Asks the upstreams in order; keeps and returns the first valid answer.
    async fn pull_narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        let mut failures = Vec::new();
        let healthy: Vec<&Upstream> = self
            .inner
            .upstreams
            .iter()
            .filter(|u| u.is_healthy())
            .collect();
        if healthy.is_empty() && !self.inner.upstreams.is_empty() {
            return Err(Error::Upstream("every upstream is down".into()));
        }
        for upstream in healthy {
            match upstream.narinfo(hash).await {
                Ok(None) => continue,
                Ok(Some(info)) => match self.keep_narinfo(upstream, info).await {
                    Ok(text) => return Ok(Some(text)),
                    Err(e) => failures.push(e),
                },
                Err(e) => failures.push(e),
            }
        }
        for e in &failures {
            tracing::warn!(%hash, error = %e, "upstream narinfo refused");
        }
        if failures.is_empty() {
            self.inner.negative.remember(hash.as_str());
        }
        match failures.into_iter().next() {
            // An upstream that could not answer may have it: say so rather than "absent".
            Some(e @ Error::Upstream(_)) => Err(e),
            _ => Ok(None),
        }
    }

    async fn keep_narinfo(&self, upstream: &Upstream, mut info: NarInfo) -> Result<String> {
        if !is_supported_compression(&info.compression) {
            return Err(Error::InvalidInput(format!(
                "{}: NARs with Compression: {} cannot be checked here",
                info.store_path, info.compression
            )));
        }
        let file = NarFile::for_narinfo(&info)?;
        let upstream_url = upstream.nar_url(&info.url)?;
        let now = now();
        let db = &self.inner.db;
        if db.get_nar(file.as_str()).await?.is_none() {
            db.put_nar(&NarRecord {
                file: file.as_str().to_owned(),
                compression: info.compression.clone(),
                file_hash: info.file_hash.map(|h| h.to_string()),
                file_size: info.file_size,
                nar_hash: info.nar_hash.to_string(),
                nar_size: info.nar_size,
                upstream_url: Some(upstream_url.to_string()),
                last_accessed_at: now,
            })
            .await?;
        }
        info.url = format!("nar/{file}");
        if self.inner.options.sign_narinfo {
            info.sign(&self.inner.signing_key);
        }
        let text = info.to_string();
        db.put_narinfo(&NarInfoRecord {
            hash: info.store_path.hash().as_str().to_owned(),
            narinfo: text.clone(),
            nar_file: file.as_str().to_owned(),
            created_at: now,
            last_accessed_at: now,
        })
        .await?;
        tracing::info!(path = %info.store_path, upstream = %upstream.url(), "narinfo cached");
        Ok(text)
    }

    /// Forgets that no upstream had `hash`, so the next request asks again.
    pub fn forget_absent(&self, hash: &StorePathHash) {
        self.inner.negative.forget(hash.as_str());
    }

    /// The size of a NAR file if this cache can serve it, without downloading it.
    pub async fn nar_size(&self, file: &NarFile) -> Result<Option<Option<u64>>> {
        if let Some(size) = self.inner.storage.head(&file.storage_key()).await? {
            return Ok(Some(Some(size)));
        }
        Ok(self
            .inner
            .db
            .get_nar(file.as_str())
            .await?
            .filter(|r| r.upstream_url.is_some())
            .map(|r| r.file_size))
    }

    /// A NAR file: from storage, or streamed from its upstream while it is
    /// checked and stored. Concurrent requests for a missing NAR wait for the
    /// one download instead of starting their own.
    pub async fn nar(&self, file: &NarFile) -> Result<Option<NarBody>> {
        let key = file.storage_key();
        if let Some(body) = self.stored_nar(file, &key).await? {
            return Ok(Some(body));
        }
        let Some(record) = self.inner.db.get_nar(file.as_str()).await? else {
            return Ok(None);
        };
        let Some(url) = record.upstream_url.clone() else {
            return Ok(None);
        };
        let guard = self.lock(&format!("download:{key}")).await?;
        // Whoever held the lock before us may have stored it.
        if let Some(body) = self.stored_nar(file, &key).await? {
            guard.release().await?;
            return Ok(Some(body));
        }
        let url = url::Url::parse(&url).map_err(|e| Error::backend("stored upstream URL", e))?;
        let Some(upstream) = self
            .inner
            .upstreams
            .iter()
            .find(|u| url.as_str().starts_with(u.url().as_str()))
        else {
            guard.release().await?;
            return Err(Error::Upstream(format!(
                "no configured upstream serves {url}"
            )));
        };
        let Some(download) = upstream.nar(&url).await? else {
            guard.release().await?;
            tracing::warn!(%url, "upstream no longer has a NAR its narinfo named");
            return Ok(None);
        };
        let check = NarCheck {
            compression: record.compression.clone(),
            file_hash: record.file_hash.as_deref().map(str::parse).transpose()?,
            file_size: record.file_size,
            nar_hash: record.nar_hash.parse()?,
            nar_size: record.nar_size,
        };
        let verified = nar_verify::verified(download.body, check)?;
        let (client_tx, client_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let storage = self.inner.storage.clone();
        tokio::spawn(async move {
            let result = tee_into_storage(verified, storage, &key, client_tx).await;
            match result {
                Ok(size) => tracing::info!(%key, size, "NAR stored"),
                Err(e) => {
                    tracing::error!(%key, %url, error = %e, "NAR download failed; nothing stored")
                }
            }
            if let Err(e) = guard.release().await {
                tracing::warn!(%key, error = %e, "releasing the download lock failed");
            }
        });
        Ok(Some(NarBody {
            size: record.file_size.or(download.content_length),
            body: Box::pin(client_rx),
        }))
    }

    /// The size of a NAR in storage, after any download of it in flight;
    /// `None` if it is not stored.
    pub async fn stored_nar_size(&self, file: &NarFile) -> Result<Option<u64>> {
        let key = file.storage_key();
        if let Some(size) = self.inner.storage.head(&key).await? {
            return Ok(Some(size));
        }
        self.lock(&format!("download:{key}"))
            .await?
            .release()
            .await?;
        self.inner.storage.head(&key).await
    }

    /// `len` bytes from `offset` of a stored NAR; `None` if it is not stored.
    /// Ranges are served from storage only: a cold NAR is fetched whole first.
    pub async fn stored_nar_range(
        &self,
        file: &NarFile,
        offset: u64,
        len: u64,
    ) -> Result<Option<NarBody>> {
        let object = self
            .inner
            .storage
            .get_range(&file.storage_key(), offset, len)
            .await?;
        Ok(object.map(|object| NarBody {
            size: Some(object.size),
            body: object.body,
        }))
    }

    async fn stored_nar(&self, file: &NarFile, key: &str) -> Result<Option<NarBody>> {
        let Some(object) = self.inner.storage.get(key).await? else {
            return Ok(None);
        };
        let now = now();
        if let Ok(Some(record)) = self.inner.db.get_nar(file.as_str()).await
            && now - record.last_accessed_at >= TOUCH_INTERVAL_SECS
            && let Err(e) = self.inner.db.touch_nar(file.as_str(), now).await
        {
            tracing::warn!(%file, error = %e, "cannot record a NAR access");
        }
        Ok(Some(NarBody {
            size: Some(object.size),
            body: object.body,
        }))
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Feeds a checked download into storage and, while it listens, a client.
/// A client that goes away does not stop the download.
async fn tee_into_storage(
    mut verified: ByteStream,
    storage: Arc<dyn Storage>,
    key: &str,
    mut client: mpsc::Sender<io::Result<bytes::Bytes>>,
) -> Result<u64> {
    let (mut store_tx, store_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let pump = async move {
        let mut client_listening = true;
        while let Some(item) = verified.next().await {
            let failed = item.is_err();
            let for_store = match &item {
                Ok(chunk) => Ok(chunk.clone()),
                Err(e) => Err(copy_error(e)),
            };
            if store_tx.send(for_store).await.is_err() {
                // Storage gave up; it reports why.
                let _ = client
                    .send(Err(io::Error::other("storing the NAR failed")))
                    .await;
                break;
            }
            if client_listening && client.send(item).await.is_err() {
                client_listening = false;
            }
            if failed {
                break;
            }
        }
    };
    let put = storage.put(key, Box::pin(store_rx));
    let (stored, ()) = tokio::join!(put, pump);
    stored
}
