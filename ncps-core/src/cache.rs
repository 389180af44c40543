//! The cache engine: answers narinfo and NAR requests from the database and
//! storage, and on a miss from the upstreams, checking and keeping what it
//! fetches.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use crate::access_log::{AccessLog, counter};
use crate::hot_narinfos::HotNarinfos;
use crate::inflight::{self, Download, InFlight, SpoolWriter};
use crate::metrics::{Kind, MeteredLock, Metrics, upstream_label};
use crate::nar_file::NarFile;
use crate::nar_verify::{self, NarCheck, is_supported_compression};
use crate::negative_cache::NegativeCache;
use crate::upstream::Upstream;
use crate::{
    ByteStream, CacheInfo, Error, Lock, LockGuard, MetadataDb, NarInfo, NarInfoRecord, NarRecord,
    PublicKey, Result, ServedNarinfo, SigningKey, Storage, StorageUsage, StorePathHash,
};
use crate::{NarStorage, eviction::Backends};

/// The database config key of the cache's secret key.
const SECRET_KEY_CONFIG: &str = "secret_key";

/// How often what was served is written to the database (see [`crate::access_log`]).
pub const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// How many chunks may wait between the download and storage.
const CHANNEL_CHUNKS: usize = 16;

/// The request header a replica sends when it streams a NAR from the peer
/// downloading it; see [`Cache::nar_for_peer`].
pub const PEER_HEADER: &str = "x-ncps-peer";

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
    /// How many narinfos are served from memory (for 30 s each at most);
    /// zero asks the database every time.
    pub hot_narinfos: usize,
    /// Where downloads in progress are spooled (their files are unlinked at once).
    pub temp_dir: PathBuf,
    /// This instance's URL as peers reach it; it labels the download locks it
    /// holds, so a peer asked for the same NAR can stream it from here.
    pub advertise_url: Option<String>,
    /// The token reads need (`--cache-get-token`), sent to peers when
    /// streaming a NAR from them.
    pub peer_token: Option<String>,
    /// How old an unfinished write of a known key must be before
    /// [`Cache::clean_incomplete`] throws it away. Its free download lock
    /// already says no instance of this cache is writing it; the age also
    /// spares writers that take no lock (`ncps-cli storage copy` into the
    /// same bucket, a download that outlived its lock), so it must be far
    /// longer than any upload takes.
    pub incomplete_min_age: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            sign_narinfo: true,
            download_lock_ttl: Duration::from_secs(300),
            priority: 40,
            negative_ttl: Duration::from_secs(300),
            hot_narinfos: 10_000,
            temp_dir: std::env::temp_dir(),
            advertise_url: None,
            peer_token: None,
            incomplete_min_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A NAR on its way to a client.
pub struct NarBody {
    /// The size of the file, when known before the body is sent.
    pub size: Option<u64>,
    /// The bytes; an `Err` item means the transfer must be aborted.
    pub body: ByteStream,
    /// Where `body`'s bytes lie in a stored file, when they do (see
    /// [`crate::StoredObject::file`]): a server may send them from there.
    pub file: Option<crate::FileRegion>,
}

impl std::fmt::Debug for NarBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarBody")
            .field("size", &self.size)
            .field("file", &self.file)
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
    hot: HotNarinfos,
    inflight: InFlight,
    /// The download tasks, which outlive the request that started them.
    downloads: tokio_util::task::TaskTracker,
    peer_client: reqwest::Client,
    access: AccessLog,
    options: CacheOptions,
    metrics: Arc<Metrics>,
}

/// The client for peers: raw bytes (no decompression), no proxy (peers are
/// on the same network), and a bounded wait for the first answer.
fn peer_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_zstd()
        .no_brotli()
        .no_deflate()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
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
        let metrics = Arc::new(Metrics::new());
        let lock: Arc<dyn Lock> = Arc::new(MeteredLock::new(lock, Arc::clone(&metrics)));
        Cache {
            inner: Arc::new(Inner {
                storage,
                lock,
                db,
                upstreams,
                signing_key,
                negative: NegativeCache::new(options.negative_ttl),
                hot: HotNarinfos::new(options.hot_narinfos),
                inflight: InFlight::default(),
                downloads: tokio_util::task::TaskTracker::new(),
                peer_client: peer_client(),
                access: AccessLog::default(),
                options,
                metrics,
            }),
        }
    }

    /// The backends, for the engine's other modules (eviction, pins, uploads).
    pub(crate) fn backends(&self) -> Backends {
        Backends {
            storage: Arc::clone(&self.inner.storage),
            db: Arc::clone(&self.inner.db),
            lock: Arc::clone(&self.inner.lock),
        }
    }

    /// What was served since the last flush.
    pub(crate) fn access_log(&self) -> &AccessLog {
        &self.inner.access
    }

    /// The upstream a NAR URL belongs to, as counters and metrics name it:
    /// the configured upstream whose URL it starts with, else its origin.
    pub(crate) fn upstream_of(&self, nar_url: &str) -> String {
        match self
            .inner
            .upstreams
            .iter()
            .find(|u| nar_url.starts_with(u.url().as_str()))
        {
            Some(upstream) => upstream_label(upstream.url()),
            None => url::Url::parse(nar_url)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_else(|_| nar_url.to_owned()),
        }
    }

    /// How the engine behaves.
    pub(crate) fn options(&self) -> &CacheOptions {
        &self.inner.options
    }

    /// The key this cache signs narinfos with.
    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.inner.signing_key
    }

    /// The engine's metrics, for a server to register and serve.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Reads what the database holds into the store gauges of
    /// [`Cache::metrics`]: one query at start; the engine keeps them up to
    /// date from then on, so scrapes never query the database.
    pub async fn load_store_totals(&self) -> Result<StorageUsage> {
        let usage = self.inner.db.storage_usage().await?;
        self.inner.metrics.set_store_totals(&usage);
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

    /// Throws away unfinished writes that no one is doing any more (what a
    /// crashed instance left in storage): those the backend knows are dead,
    /// and those of a key whose download lock is free that started at least
    /// [`CacheOptions::incomplete_min_age`] ago. Returns how many went.
    pub async fn clean_incomplete(&self) -> Result<usize> {
        let storage = &self.inner.storage;
        let min_age = self.inner.options.incomplete_min_age;
        let mut discarded = 0;
        for incomplete in storage.incomplete(None).await? {
            let guard = match &incomplete.key {
                Some(_) if !incomplete.older_than(min_age) => continue,
                Some(key) => {
                    let lock_key = format!("download:{key}");
                    let ttl = self.inner.options.download_lock_ttl;
                    match self.inner.lock.try_acquire(&lock_key, ttl).await? {
                        Some(guard) => Some(guard),
                        // Someone is writing it now.
                        None => continue,
                    }
                }
                None => None,
            };
            let result = storage.discard(&incomplete).await;
            if let Some(guard) = guard {
                guard.release().await?;
            }
            match result {
                Ok(()) => {
                    tracing::info!(id = %incomplete.id, age = ?incomplete.age, "discarded an unfinished write");
                    discarded += 1;
                }
                Err(e) => {
                    tracing::warn!(id = %incomplete.id, error = %e, "cannot discard an unfinished write")
                }
            }
        }
        Ok(discarded)
    }

    /// Discards the unfinished writes of `key`, whose download lock the
    /// caller holds; failures only warn.
    async fn discard_incomplete(&self, key: &str) {
        let storage = &self.inner.storage;
        let found = match storage.incomplete(Some(key)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot look for unfinished writes");
                return;
            }
        };
        for incomplete in found {
            match storage.discard(&incomplete).await {
                Ok(()) => {
                    tracing::info!(%key, id = %incomplete.id, "discarded an unfinished write of an earlier download")
                }
                Err(e) => {
                    tracing::warn!(%key, id = %incomplete.id, error = %e, "cannot discard an unfinished write")
                }
            }
        }
    }

    /// Runs [`Cache::clean_incomplete`] now and then every `interval`, in the background.
    pub fn spawn_cleanup(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = cache.clean_incomplete().await {
                    tracing::warn!(error = %e, "cannot look for unfinished writes");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Checks each backend the way a request would use it: the database
    /// answers, storage answers a lookup, the lock backend hands out and takes
    /// back a lock. Returns each part's name with its failure, if any.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<()>)> {
        let db = self.inner.db.ping();
        let storage = async {
            self.inner
                .storage
                .head("nar/readiness-probe.nar")
                .await
                .map(drop)
        };
        let lock = async {
            let key = "readiness-probe";
            // Held by a concurrent probe counts as working.
            match self
                .inner
                .lock
                .try_acquire(key, Duration::from_secs(5))
                .await?
            {
                Some(guard) => guard.release().await,
                None => Ok(()),
            }
        };
        let (db, storage, lock) = tokio::join!(db, storage, lock);
        vec![("database", db), ("storage", storage), ("lock", lock)]
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.inner.db.ping().await
    }

    /// The narinfo of `hash` as this cache serves it, fetching it from the
    /// upstreams on a miss. Never downloads the NAR.
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        let served = self.served_narinfo(hash).await?;
        Ok(served.map(|narinfo| narinfo.as_str().to_owned()))
    }

    /// [`Cache::narinfo`] with its entity tag, as an HTTP server sends it: a
    /// hot narinfo comes from memory without copying or hashing its text.
    pub async fn served_narinfo(&self, hash: &StorePathHash) -> Result<Option<ServedNarinfo>> {
        let db = &self.inner.db;
        if let Some(hot) = self.inner.hot.get(hash.as_str()) {
            self.inner.metrics.cache_hit(Kind::Narinfo);
            self.inner
                .access
                .narinfo(hash.as_str(), &hot.nar_file, now());
            self.inner.access.count(counter::NARINFO_HITS, 1);
            return Ok(Some(hot.narinfo));
        }
        if let Some(record) = db.get_narinfo(hash.as_str()).await? {
            let served = ServedNarinfo::new(record.narinfo);
            self.inner
                .hot
                .insert(&record.hash, &served, &record.nar_file);
            self.inner.metrics.cache_hit(Kind::Narinfo);
            // Recorded in memory; written in the next batch (see `access_log`).
            self.inner
                .access
                .narinfo(&record.hash, &record.nar_file, now());
            self.inner.access.count(counter::NARINFO_HITS, 1);
            return Ok(Some(served));
        }
        // Boxed, as in [`Cache::nar`]: a miss's state stays out of a hit's.
        Box::pin(self.narinfo_miss(hash)).await
    }

    /// [`Cache::served_narinfo`] for a narinfo the database does not have.
    async fn narinfo_miss(&self, hash: &StorePathHash) -> Result<Option<ServedNarinfo>> {
        self.inner.metrics.cache_miss(Kind::Narinfo);
        if self.inner.negative.is_absent(hash.as_str()) {
            return Ok(None);
        }
        let guard = self.lock(&format!("narinfo:{hash}")).await?;
        let result = match self.inner.db.get_narinfo(hash.as_str()).await? {
            Some(record) => Ok(Some(record.narinfo)),
            None => self.pull_narinfo(hash).await,
        };
        guard.release().await?;
        Ok(result?.map(ServedNarinfo::new))
    }

    /// Waits for and takes the lock of one download.
    async fn lock(&self, key: &str) -> Result<LockGuard> {
        let ttl = self.inner.options.download_lock_ttl;
        self.inner.lock.acquire(key, ttl).await
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
            let started = Instant::now();
            let fetched = upstream.narinfo(hash).await;
            self.inner.metrics.upstream_fetch(
                &upstream_label(upstream.url()),
                Kind::Narinfo,
                started.elapsed(),
                fetched.is_err(),
            );
            match fetched {
                Ok(None) => continue,
                Ok(Some(info)) => match self.keep_narinfo(upstream, info).await {
                    Ok(text) => {
                        let access = &self.inner.access;
                        access.count(counter::NARINFO_MISSES, 1);
                        let label = upstream_label(upstream.url());
                        access.count(&format!("{}{label}", counter::NARINFO_FETCHES_FROM), 1);
                        return Ok(Some(text));
                    }
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
            self.inner.access.count(counter::NARINFO_ABSENT, 1);
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
        // Its NAR counts once it is stored.
        self.inner.metrics.record_added(1, 0, 0);
        tracing::info!(path = %info.store_path, upstream = %upstream.url(), "narinfo cached");
        Ok(text)
    }

    /// Stops serving the narinfo of `hash` from memory (it was deleted or evicted).
    pub(crate) fn forget_hot(&self, hash: &str) {
        self.inner.hot.remove(hash);
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
    /// checked and stored. Concurrent requests for a missing NAR read the one
    /// download as it arrives instead of starting their own; with a shared
    /// lock, a replica asked for a NAR that a peer is downloading streams it
    /// from that peer.
    pub async fn nar(&self, file: &NarFile) -> Result<Option<NarBody>> {
        let key = file.storage_key();
        if let Some(body) = self.stored_nar(file, &key).await? {
            self.inner.metrics.cache_hit(Kind::Nar);
            return Ok(Some(body));
        }
        // Boxed: the state of a miss (locks, peers, the download) would
        // otherwise make every hit's future larger, and servers move it.
        Box::pin(self.nar_miss(file, key)).await
    }

    /// [`Cache::nar`] for a NAR not stored here.
    async fn nar_miss(&self, file: &NarFile, key: String) -> Result<Option<NarBody>> {
        self.inner.metrics.cache_miss(Kind::Nar);
        let record = match self.inner.db.get_nar(file.as_str()).await? {
            Some(record) => record,
            None => match self.renew_evicted(file).await? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        let Some(upstream_url) = &record.upstream_url else {
            return Ok(None);
        };
        self.inner.access.count(counter::NAR_MISSES, 1);
        let upstream = self.upstream_of(upstream_url);
        self.inner
            .access
            .count(&format!("{}{upstream}", counter::NAR_MISSES_FROM), 1);
        if let Some(download) = self.inner.inflight.get(&key) {
            return Ok(Some(reading(&record, &download)));
        }
        // One request of this process at a time starts the download; the
        // others then find it in flight or stored.
        let _starting = self.inner.inflight.starting(&key).await;
        if let Some(download) = self.inner.inflight.get(&key) {
            return Ok(Some(reading(&record, &download)));
        }
        let lock_key = format!("download:{key}");
        let ttl = self.inner.options.download_lock_ttl;
        let guard = match self.inner.lock.try_acquire(&lock_key, ttl).await? {
            Some(guard) => guard,
            None => {
                if let Some(body) = self.stream_from_peer(&lock_key, file, &record).await {
                    return Ok(Some(body));
                }
                self.inner.lock.acquire(&lock_key, ttl).await?
            }
        };
        // Whoever held the lock before us, even just before, may have stored it.
        if let Some(body) = self.stored_nar(file, &key).await? {
            guard.release().await?;
            return Ok(Some(body));
        }
        match self.start_download(file, &record, guard).await? {
            Some(download) => Ok(Some(reading(&record, &download))),
            None => Ok(None),
        }
    }

    /// A NAR for a peer replica: only what is stored or being downloaded
    /// here, never a new download, so peers cannot send each other in circles.
    pub async fn nar_for_peer(&self, file: &NarFile) -> Result<Option<NarBody>> {
        let key = file.storage_key();
        if let Some(download) = self.inner.inflight.get(&key) {
            let size = match self.inner.db.get_nar(file.as_str()).await {
                Ok(Some(record)) => record.file_size,
                _ => None,
            };
            return Ok(Some(NarBody {
                size,
                body: download.reader(),
                file: None,
            }));
        }
        self.stored_nar(file, &key).await
    }

    /// Streams a NAR from the peer holding its download lock, checking it as
    /// it comes; `None` if there is no such peer or it cannot serve it.
    async fn stream_from_peer(
        &self,
        lock_key: &str,
        file: &NarFile,
        record: &NarRecord,
    ) -> Option<NarBody> {
        let own = self.inner.options.advertise_url.as_deref();
        let peer = match self.inner.lock.holder(lock_key).await {
            Ok(Some(peer)) if Some(peer.as_str()) != own => peer,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(%file, error = %e, "cannot tell who is downloading a NAR");
                return None;
            }
        };
        let url = format!("{}/nar/{file}", peer.trim_end_matches('/'));
        let mut request = self.inner.peer_client.get(&url).header(PEER_HEADER, "1");
        if let Some(token) = &self.inner.options.peer_token {
            // Peers guard reads with the same --cache-get-token.
            request = request.bearer_auth(token);
        }
        let response = request.send().await;
        let response = match response {
            Ok(r) if r.status() == reqwest::StatusCode::OK => r,
            Ok(r) => {
                tracing::info!(%url, status = %r.status(), "peer cannot serve a NAR it was downloading");
                return None;
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "peer unreachable; waiting for its download instead");
                return None;
            }
        };
        let body: ByteStream = Box::pin(
            response
                .bytes_stream()
                .map(|item| item.map_err(io::Error::other)),
        );
        let check = match nar_check(record) {
            Ok(check) => check,
            Err(e) => {
                tracing::warn!(%file, error = %e, "stored NAR record is unreadable");
                return None;
            }
        };
        match nar_verify::verified(body, check) {
            Ok(body) => {
                tracing::info!(%url, "streaming a NAR from the peer downloading it");
                Some(NarBody {
                    size: record.file_size,
                    body,
                    file: None,
                })
            }
            Err(e) => {
                tracing::warn!(%file, error = %e, "cannot check a NAR from a peer");
                None
            }
        }
    }

    /// Starts the download of a NAR whose lock `guard` holds, in the
    /// background; it outlives the request that started it. `None` if the
    /// upstream no longer has it.
    async fn start_download(
        &self,
        file: &NarFile,
        record: &NarRecord,
        guard: LockGuard,
    ) -> Result<Option<Arc<Download>>> {
        let key = file.storage_key();
        let url = record.upstream_url.clone().unwrap_or_default();
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
        // Holding the lock, no one else is writing this key: what an earlier
        // holder left unfinished is dead.
        self.discard_incomplete(&key).await;
        // A NAR that cannot fit is refused before a byte is fetched (507).
        if let Err(e) = room_for(
            self.inner.storage.as_ref(),
            &self.inner.options.temp_dir,
            record,
        )
        .await
        {
            guard.release().await?;
            return Err(e);
        }
        let metrics = Arc::clone(&self.inner.metrics);
        let upstream_url = upstream_label(upstream.url());
        let started = Instant::now();
        let fetched = upstream.nar(&url).await;
        metrics.upstream_fetch(
            &upstream_url,
            Kind::Nar,
            started.elapsed(),
            fetched.is_err(),
        );
        let download = match fetched {
            Ok(Some(download)) => download,
            Ok(None) => {
                guard.release().await?;
                tracing::warn!(%url, "upstream no longer has a NAR its narinfo named");
                return Ok(None);
            }
            Err(e) => {
                guard.release().await?;
                return Err(e);
            }
        };
        // Storage may hold the NAR before the database says so: a crash
        // between the two leaves a record of unknown storage, which fsck and
        // the storage check look up, never one that says "not stored".
        if let Err(e) = self
            .inner
            .db
            .set_nar_storage(&record.file, NarStorage::Unknown)
            .await
        {
            guard.release().await?;
            return Err(e);
        }
        let verified = nar_verify::verified(download.body, nar_check(record)?)?;
        self.inner
            .access
            .count(&format!("{}{upstream_url}", counter::NAR_FETCHES_FROM), 1);
        let fetched_bytes = format!("{}{upstream_url}", counter::NAR_FETCHED_BYTES_FROM);
        let verified = counted(verified, metrics, upstream_url);
        let (writer, spooled) = inflight::spool(&self.inner.options.temp_dir).map_err(|e| {
            Error::backend(
                format!("spool file in {}", self.inner.options.temp_dir.display()),
                e,
            )
        })?;
        self.inner.inflight.insert(&key, Arc::clone(&spooled));
        let cache = self.clone();
        let record = record.clone();
        self.inner.downloads.spawn(async move {
            let ttl = cache.inner.options.download_lock_ttl;
            let work = spool_and_store(verified, writer, cache.inner.storage.clone(), &key);
            match hold_while(work, &guard, ttl).await {
                Ok(size) => {
                    cache.inner.metrics.nar_stored(size);
                    let bytes = i64::try_from(size).unwrap_or(i64::MAX);
                    cache.inner.access.count(&fetched_bytes, bytes);
                    cache.record_stored(&record, size).await;
                    tracing::info!(%key, size, "NAR stored")
                }
                Err(e) => {
                    tracing::error!(%key, %url, error = %e, "NAR download failed; nothing stored")
                }
            }
            cache.inner.inflight.remove(&key);
            if let Err(e) = guard.release().await {
                tracing::warn!(%key, error = %e, "releasing the download lock failed");
            }
        });
        Ok(Some(spooled))
    }

    /// How many NAR downloads are running (a client may have gone; the
    /// download goes on to storage).
    pub fn downloads_in_flight(&self) -> usize {
        self.inner.downloads.len()
    }

    /// Waits for the NAR downloads in flight to be stored (or to fail), for a
    /// graceful shutdown. Downloads started meanwhile are waited for too.
    pub async fn finish_downloads(&self) {
        self.inner.downloads.close();
        self.inner.downloads.wait().await;
        self.inner.downloads.reopen();
    }

    /// The record of a NAR the database no longer knows but a hot narinfo
    /// still names: another process (`ncps-cli gc`, another instance) evicted
    /// it while this one served its narinfo from memory. The narinfo is
    /// fetched again from the upstreams, which records the NAR again.
    async fn renew_evicted(&self, file: &NarFile) -> Result<Option<NarRecord>> {
        let Some(hash) = self.inner.hot.hash_naming(file.as_str()) else {
            return Ok(None);
        };
        self.inner.hot.remove(&hash);
        let Ok(hash) = hash.parse::<StorePathHash>() else {
            return Ok(None);
        };
        tracing::info!(%file, "NAR evicted elsewhere while its narinfo was hot; fetching the narinfo again");
        self.narinfo(&hash).await?;
        self.inner.db.get_nar(file.as_str()).await
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
        Ok(object.map(|object| {
            self.inner.access.nar(file.as_str(), now());
            NarBody {
                size: Some(object.size),
                body: self.inner.access.reading(file.as_str(), object.body),
                file: object.file,
            }
        }))
    }

    /// Records in the database that the NAR of `record` is in storage, with
    /// `size` bytes. If its record went meanwhile (evicted while it was
    /// downloaded again), it is put back, so the bytes are never unaccounted.
    async fn record_stored(&self, record: &NarRecord, size: u64) {
        let db = &self.inner.db;
        let stored = NarStorage::Stored(size);
        let result = match db.set_nar_storage(&record.file, stored).await {
            Ok(true) => Ok(()),
            Ok(false) => match db.put_nar(record).await {
                Ok(()) => db.set_nar_storage(&record.file, stored).await.map(drop),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // The next storage check (`reconcile_storage`) finds it.
            tracing::warn!(file = %record.file, error = %e, "cannot record a stored NAR");
            let _ = db.set_nar_storage(&record.file, NarStorage::Unknown).await;
        }
    }

    async fn stored_nar(&self, file: &NarFile, key: &str) -> Result<Option<NarBody>> {
        let Some(object) = self.inner.storage.get(key).await? else {
            return Ok(None);
        };
        // Recorded in memory, written in the next batch: a hit writes nothing.
        let access = &self.inner.access;
        access.nar(file.as_str(), now());
        access.count(counter::NAR_HITS, 1);
        access.nar_hit(file.as_str());
        Ok(Some(NarBody {
            size: Some(object.size),
            body: access.reading(file.as_str(), object.body),
            file: object.file,
        }))
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// How a NAR record says its bytes must check out.
fn nar_check(record: &NarRecord) -> Result<NarCheck> {
    Ok(NarCheck {
        compression: record.compression.clone(),
        file_hash: record.file_hash.as_deref().map(str::parse).transpose()?,
        file_size: record.file_size,
        nar_hash: record.nar_hash.parse()?,
        nar_size: record.nar_size,
    })
}

/// `body` from `upstream`, counting its bytes and any failure (a broken
/// transfer or bytes that do not check out) into `metrics`.
fn counted(body: ByteStream, metrics: Arc<Metrics>, upstream: String) -> ByteStream {
    Box::pin(body.inspect(move |item| match item {
        Ok(chunk) => metrics.upstream_bytes(&upstream, chunk.len() as u64),
        Err(_) => metrics.upstream_error(&upstream, Kind::Nar),
    }))
}

/// Whether storage and the spool directory have room for the NAR of
/// `record` (its FileSize, else its NarSize), where they can tell.
async fn room_for(
    storage: &dyn Storage,
    spool: &std::path::Path,
    record: &NarRecord,
) -> Result<()> {
    let needed = record.file_size.unwrap_or(record.nar_size);
    if let Some(free) = storage.available_space().await? {
        crate::disk_space::require("storage", free, needed)?;
    }
    let dir = spool.to_path_buf();
    match tokio::task::spawn_blocking(move || crate::disk_space::available(&dir)).await {
        Ok(Ok(free)) => crate::disk_space::require(
            &format!("the download spool {}", spool.display()),
            free,
            needed,
        ),
        // Unknown: the spool itself reports a failure.
        _ => Ok(()),
    }
}

/// A reader of a download in progress, sized as the record says.
fn reading(record: &NarRecord, download: &Download) -> NarBody {
    NarBody {
        size: record.file_size,
        body: download.reader(),
        file: None,
    }
}

/// Runs `work` while extending `guard` every third of `ttl`, so the lock
/// lasts as long as the work and expires soon after a crash.
pub(crate) async fn hold_while<T>(
    work: impl Future<Output = T>,
    guard: &LockGuard,
    ttl: Duration,
) -> T {
    tokio::pin!(work);
    let mut ticks = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    ticks.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticks.tick() => match guard.extend(ttl).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("a download outlived its lock; another instance may fetch it too"),
                Err(e) => tracing::warn!(error = %e, "cannot extend a download lock"),
            },
        }
    }
}

/// Feeds a checked download into the spool its readers follow and into
/// storage. The spool is complete once the bytes are checked; the result is
/// that of storing them.
async fn spool_and_store(
    verified: ByteStream,
    mut spool: SpoolWriter,
    storage: Arc<dyn Storage>,
    key: &str,
) -> Result<u64> {
    let (mut store_tx, store_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let pump = async move {
        let mut batches = verified.ready_chunks(CHANNEL_CHUNKS);
        let mut storing = true;
        while let Some(batch) = batches.next().await {
            let mut chunks = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(chunk) => chunks.push(chunk),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Err(e) = spool.write(chunks.clone()).await {
                tracing::error!(%key, error = %e, "cannot write the download spool");
                failure.get_or_insert(e);
            }
            for chunk in chunks {
                if storing && store_tx.send(Ok(chunk)).await.is_err() {
                    // Storage gave up and reports why; the readers still get the NAR.
                    storing = false;
                }
            }
            if let Some(e) = failure {
                spool.fail(&e);
                let _ = store_tx.send(Err(copy_error(&e))).await;
                return;
            }
        }
        spool.complete();
    };
    let put = storage.put(key, Box::pin(store_rx));
    let (stored, ()) = tokio::join!(put, pump);
    stored
}
