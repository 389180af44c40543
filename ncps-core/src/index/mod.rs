//! The index: what the database records of narinfos and NARs, the hot
//! narinfos served from memory in front of it, and the narinfos no upstream
//! has. It answers "is this path known here" and records what the fetcher
//! and uploads bring; it never asks an upstream.

mod hot;

use std::sync::Arc;

use crate::events::{Event, Observers};
use crate::negative_cache::NegativeCache;
use crate::options::CacheOptions;
use crate::{
    MetadataDb, NarInfo, NarInfoRecord, NarRecord, NarStorage, Result, ServedNarinfo, SigningKey,
    StorePathHash, now,
};
use hot::HotNarinfos;

/// The narinfo records and what stands in front of them.
#[derive(Debug)]
pub(crate) struct Index {
    db: Arc<dyn MetadataDb>,
    hot: HotNarinfos,
    negative: NegativeCache,
    observers: Observers,
}

impl Index {
    /// The index over `db`, sized as `options` say.
    pub(crate) fn new(
        db: Arc<dyn MetadataDb>,
        options: &CacheOptions,
        observers: Observers,
    ) -> Self {
        Index {
            db,
            hot: HotNarinfos::new(options.hot_narinfos),
            negative: NegativeCache::new(options.negative_ttl),
            observers,
        }
    }

    /// The database.
    pub(crate) fn db(&self) -> &Arc<dyn MetadataDb> {
        &self.db
    }

    /// The narinfo of `hash` from memory or the database, counted as a hit;
    /// `None` if the database does not have it.
    pub(crate) async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<ServedNarinfo>> {
        if let Some(hot) = self.hot.get(hash.as_str()) {
            self.observers.emit(Event::NarinfoHit {
                hash: hash.as_str(),
                nar_file: &hot.nar_file,
            });
            return Ok(Some(hot.narinfo));
        }
        let Some(record) = self.db.get_narinfo(hash.as_str()).await? else {
            return Ok(None);
        };
        let served = ServedNarinfo::new(record.narinfo);
        self.hot.insert(&record.hash, &served, &record.nar_file);
        self.observers.emit(Event::NarinfoHit {
            hash: &record.hash,
            nar_file: &record.nar_file,
        });
        Ok(Some(served))
    }

    /// The narinfo text the database holds for `hash`, counting nothing.
    pub(crate) async fn narinfo_text(&self, hash: &StorePathHash) -> Result<Option<String>> {
        Ok(self.db.get_narinfo(hash.as_str()).await?.map(|r| r.narinfo))
    }

    /// Whether no upstream had `hash` lately.
    pub(crate) fn is_absent(&self, hash: &StorePathHash) -> bool {
        self.negative.is_absent(hash.as_str())
    }

    /// Remembers that no upstream has `hash`.
    pub(crate) fn remember_absent(&self, hash: &StorePathHash) {
        self.negative.remember(hash.as_str());
        self.observers.emit(Event::NarinfoAbsent {
            hash: hash.as_str(),
        });
    }

    /// Forgets that no upstream had `hash`, so the next request asks again.
    pub(crate) fn forget_absent(&self, hash: &StorePathHash) {
        self.negative.forget(hash.as_str());
    }

    /// Stops serving the narinfo of `hash` from memory (it was deleted or evicted).
    pub(crate) fn forget_hot(&self, hash: &str) {
        self.hot.remove(hash);
    }

    /// The store path hash of a hot narinfo naming `nar_file`, forgotten
    /// from memory: the database no longer knows its NAR (another process
    /// evicted it), so the narinfo must be fetched again.
    pub(crate) fn take_hot_naming(&self, nar_file: &str) -> Option<String> {
        let hash = self.hot.hash_naming(nar_file)?;
        self.hot.remove(&hash);
        Some(hash)
    }

    /// The record of NAR `file`.
    pub(crate) async fn nar(&self, file: &str) -> Result<Option<NarRecord>> {
        self.db.get_nar(file).await
    }

    /// Records a narinfo pulled from the upstream at `upstream_url` (its
    /// NAR's URL there) as this cache serves it: pointing at `nar/<file>`,
    /// signed with `key` if given. Returns its text.
    pub(crate) async fn record_pulled(
        &self,
        mut info: NarInfo,
        file: &str,
        upstream_url: &str,
        key: Option<&SigningKey>,
    ) -> Result<String> {
        let now = now();
        if self.db.get_nar(file).await?.is_none() {
            self.db
                .put_nar(&NarRecord {
                    file: file.to_owned(),
                    compression: info.compression.clone(),
                    file_hash: info.file_hash.map(|h| h.to_string()),
                    file_size: info.file_size,
                    nar_hash: info.nar_hash.to_string(),
                    nar_size: info.nar_size,
                    upstream_url: Some(upstream_url.to_owned()),
                    last_accessed_at: now,
                })
                .await?;
        }
        info.url = format!("nar/{file}");
        if let Some(key) = key {
            info.sign(key);
        }
        let text = info.to_string();
        self.db
            .put_narinfo(&NarInfoRecord {
                hash: info.store_path.hash().as_str().to_owned(),
                narinfo: text.clone(),
                nar_file: file.to_owned(),
                created_at: now,
                last_accessed_at: now,
            })
            .await?;
        Ok(text)
    }

    /// Records in the database that the NAR of `record` is in storage, with
    /// `size` bytes. If its record went meanwhile (evicted while it was
    /// downloaded again), it is put back, so the bytes are never unaccounted.
    pub(crate) async fn record_stored(&self, record: &NarRecord, size: u64) {
        let db = &self.db;
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
}
