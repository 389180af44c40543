//! The fetcher: the upstreams and peer replicas, and the download pipeline
//! ([`download`]) that brings what the index and the blobs lack. It pulls
//! narinfos (checking their signatures) into the index, and NARs (checking
//! their bytes) into the blobs, one download per NAR across every instance
//! sharing the lock backend.

mod download;
mod peer;

use std::sync::Arc;
use std::time::Instant;

use crate::blobs::Blobs;
use crate::events::{Event, Kind, Observers};
use crate::index::Index;
use crate::lock::LockKey;
use crate::metrics::upstream_label;
use crate::nar_file::NarFile;
use crate::nar_verify::is_supported_compression;
use crate::options::CacheOptions;
use crate::upstream::Upstream;
use crate::{
    Error, Lock, LockGuard, NarBody, NarInfo, NarRecord, Result, ServedNarinfo, SigningKey,
    StorePathHash,
};
pub use peer::PEER_HEADER;

/// The upstreams, the peers, and the downloads running.
#[derive(Debug)]
pub(crate) struct Fetcher {
    index: Arc<Index>,
    blobs: Arc<Blobs>,
    lock: Arc<dyn Lock>,
    observers: Observers,
    upstreams: Vec<Upstream>,
    signing_key: SigningKey,
    options: CacheOptions,
    peer_client: reqwest::Client,
    /// The download tasks, which outlive the request that started them.
    downloads: tokio_util::task::TaskTracker,
}

/// What the fetcher works with: the parts below it and how to behave.
pub(crate) struct Parts {
    /// The narinfo records.
    pub index: Arc<Index>,
    /// Storage and downloads in flight.
    pub blobs: Arc<Blobs>,
    /// The (observed) lock backend.
    pub lock: Arc<dyn Lock>,
    /// Who is told what happens.
    pub observers: Observers,
}

impl Fetcher {
    /// A fetcher over `upstreams` (tried in priority order).
    pub(crate) fn new(
        parts: Parts,
        mut upstreams: Vec<Upstream>,
        signing_key: SigningKey,
        options: CacheOptions,
    ) -> Self {
        upstreams.sort_by_key(Upstream::priority);
        Fetcher {
            index: parts.index,
            blobs: parts.blobs,
            lock: parts.lock,
            observers: parts.observers,
            upstreams,
            signing_key,
            options,
            peer_client: peer::client(),
            downloads: tokio_util::task::TaskTracker::new(),
        }
    }

    /// The upstreams, in the order they are tried.
    pub(crate) fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// Checks every upstream's health now; see [`Upstream::check_health`].
    pub(crate) async fn check_upstreams(&self) {
        futures::future::join_all(self.upstreams.iter().map(Upstream::check_health)).await;
    }

    /// The upstream a NAR URL belongs to, as counters and metrics name it:
    /// the configured upstream whose URL it starts with, else its origin.
    pub(crate) fn upstream_of(&self, nar_url: &str) -> String {
        match self
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

    /// Waits for and takes a lock.
    async fn lock(&self, key: &LockKey) -> Result<LockGuard> {
        let ttl = self.options.download_lock_ttl;
        self.lock.acquire_key(key, ttl).await
    }

    /// The narinfo of `hash` from the index, else from the upstreams.
    pub(crate) async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<ServedNarinfo>> {
        if let Some(served) = self.index.narinfo(hash).await? {
            return Ok(Some(served));
        }
        // Boxed, as in [`Fetcher::nar`]: a miss's state stays out of a hit's.
        Box::pin(self.narinfo_miss(hash)).await
    }

    /// [`Fetcher::narinfo`] for a narinfo the database does not have.
    async fn narinfo_miss(&self, hash: &StorePathHash) -> Result<Option<ServedNarinfo>> {
        self.observers.emit(Event::NarinfoMiss {
            hash: hash.as_str(),
        });
        if self.index.is_absent(hash) {
            return Ok(None);
        }
        let guard = self.lock(&LockKey::narinfo(hash)).await?;
        let text = guard
            .release_after(async {
                match self.index.narinfo_text(hash).await? {
                    Some(text) => Ok(Some(text)),
                    None => self.pull_narinfo(hash).await,
                }
            })
            .await?;
        Ok(text.map(ServedNarinfo::new))
    }

    /// Asks the upstreams in order; keeps and returns the first valid answer.
    async fn pull_narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        let mut failures = Vec::new();
        let healthy: Vec<&Upstream> = self.upstreams.iter().filter(|u| u.is_healthy()).collect();
        if healthy.is_empty() && !self.upstreams.is_empty() {
            return Err(Error::Upstream("every upstream is down".into()));
        }
        for upstream in healthy {
            let label = upstream_label(upstream.url());
            let started = Instant::now();
            let fetched = upstream.narinfo(hash).await;
            self.observers.emit(Event::UpstreamFetch {
                upstream: &label,
                kind: Kind::Narinfo,
                took: started.elapsed(),
                failed: fetched.is_err(),
            });
            let kept = match fetched {
                Ok(None) => continue,
                Ok(Some(info)) => self.keep_narinfo(upstream, info).await,
                Err(e) => Err(e),
            };
            match kept {
                Ok(text) => {
                    self.observers
                        .emit(Event::NarinfoFetched { upstream: &label });
                    return Ok(Some(text));
                }
                Err(e) => failures.push(e),
            }
        }
        for e in &failures {
            tracing::warn!(%hash, error = %e, "upstream narinfo refused");
        }
        if failures.is_empty() {
            self.index.remember_absent(hash);
        }
        match failures.into_iter().next() {
            // An upstream that could not answer may have it: say so rather than "absent".
            Some(e @ Error::Upstream(_)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Records a narinfo `upstream` answered (checked against its keys there).
    async fn keep_narinfo(&self, upstream: &Upstream, info: NarInfo) -> Result<String> {
        if !is_supported_compression(&info.compression) {
            return Err(Error::InvalidInput(format!(
                "{}: NARs with Compression: {} cannot be checked here",
                info.store_path, info.compression
            )));
        }
        let file = NarFile::for_narinfo(&info)?;
        let upstream_url = upstream.nar_url(&info.url)?;
        let path = info.store_path.clone();
        let key = self.options.sign_narinfo.then_some(&self.signing_key);
        let text = self
            .index
            .record_pulled(info, file.as_str(), upstream_url.as_str(), key)
            .await?;
        tracing::info!(%path, upstream = %upstream.url(), "narinfo cached");
        Ok(text)
    }

    /// A NAR file not in storage (or stored meanwhile): read from its
    /// download in flight, streamed from the peer downloading it, or
    /// downloaded from its upstream while it is checked and stored.
    /// Concurrent requests for it read the one download as it arrives.
    pub(crate) async fn nar(&self, file: &NarFile, key: String) -> Result<Option<NarBody>> {
        self.observers.emit(Event::NarMiss {
            file: file.as_str(),
        });
        let record = match self.index.nar(file.as_str()).await? {
            Some(record) => record,
            None => match self.renew_evicted(file).await? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        let Some(upstream_url) = &record.upstream_url else {
            return Ok(None);
        };
        let upstream = self.upstream_of(upstream_url);
        self.observers.emit(Event::NarMissFrom {
            upstream: &upstream,
        });
        if let Some(download) = self.blobs.in_flight(&key) {
            return Ok(Some(download::reading(&record, &download)));
        }
        // One request of this process at a time starts the download; the
        // others then find it in flight or stored.
        let _starting = self.blobs.starting(&key).await;
        if let Some(download) = self.blobs.in_flight(&key) {
            return Ok(Some(download::reading(&record, &download)));
        }
        let lock_key = LockKey::download(file);
        let ttl = self.options.download_lock_ttl;
        let guard = match self.lock.try_acquire_key(&lock_key, ttl).await? {
            Some(guard) => guard,
            None => {
                if let Some(body) = self.stream_from_peer(&lock_key, file, &record).await {
                    return Ok(Some(body));
                }
                self.lock.acquire_key(&lock_key, ttl).await?
            }
        };
        self.start_download(file, &record, guard).await
    }

    /// A NAR stored or being downloaded here, never a new download (what a
    /// peer replica may ask for, so peers cannot send each other in circles).
    pub(crate) async fn nar_in_flight(&self, file: &NarFile, key: &str) -> Result<Option<NarBody>> {
        if let Some(download) = self.blobs.in_flight(key) {
            let size = match self.index.nar(file.as_str()).await {
                Ok(Some(record)) => record.file_size,
                _ => None,
            };
            return Ok(Some(NarBody {
                size,
                body: download.reader(),
                file: None,
            }));
        }
        self.blobs.serve(file.as_str(), key, false).await
    }

    /// The size of a NAR in storage, after any download of it in flight;
    /// `None` if it is not stored.
    pub(crate) async fn stored_size_after_download(&self, file: &NarFile) -> Result<Option<u64>> {
        let key = file.storage_key();
        if let Some(size) = self.blobs.head(&key).await? {
            return Ok(Some(size));
        }
        self.lock(&LockKey::download(file)).await?.release().await?;
        self.blobs.head(&key).await
    }

    /// The record of a NAR the database no longer knows but a hot narinfo
    /// still names: another process (`ncps-cli gc`, another instance) evicted
    /// it while this one served its narinfo from memory. The narinfo is
    /// fetched again from the upstreams, which records the NAR again.
    async fn renew_evicted(&self, file: &NarFile) -> Result<Option<NarRecord>> {
        let Some(hash) = self.index.take_hot_naming(file.as_str()) else {
            return Ok(None);
        };
        let Ok(hash) = hash.parse::<StorePathHash>() else {
            return Ok(None);
        };
        tracing::info!(%file, "NAR evicted elsewhere while its narinfo was hot; fetching the narinfo again");
        self.narinfo(&hash).await?;
        self.index.nar(file.as_str()).await
    }

    /// How many NAR downloads are running.
    pub(crate) fn downloads_in_flight(&self) -> usize {
        self.downloads.len()
    }

    /// Waits for the NAR downloads in flight to be stored (or to fail).
    pub(crate) async fn finish_downloads(&self) {
        self.downloads.close();
        self.downloads.wait().await;
        self.downloads.reopen();
    }
}
