//! The blobs: NAR bytes in storage and the downloads in flight in this
//! process, and what is being read of them. It serves stored bytes (each
//! read counted, so eviction spares what a client is reading), hands out
//! spools for downloads, and throws away unfinished writes.

mod inflight;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::events::{Event, Observers};
use crate::lock::LockKey;
use crate::{Error, Lock, NarBody, NarRecord, Result, Storage, StoredObject};
use inflight::InFlight;
pub(crate) use inflight::{Download, SpoolWriter, StartGuard};

/// Storage and the downloads in flight.
#[derive(Debug)]
pub(crate) struct Blobs {
    storage: Arc<dyn Storage>,
    inflight: InFlight,
    /// Readers of stored bytes, and access times.
    access: Arc<AccessLog>,
    observers: Observers,
    /// Where download spools go.
    spool_dir: PathBuf,
}

impl Blobs {
    /// Blobs in `storage`, spooling downloads in `spool_dir`.
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        access: Arc<AccessLog>,
        observers: Observers,
        spool_dir: PathBuf,
    ) -> Self {
        Blobs {
            storage,
            inflight: InFlight::default(),
            access,
            observers,
            spool_dir,
        }
    }

    /// The storage backend.
    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The size of the object under `key`, if stored.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<u64>> {
        self.storage.head(key).await
    }

    /// The stored NAR `file` (under storage key `key`), counted as a hit;
    /// `lookup` says whether it answers the request's own lookup (see
    /// [`Event::NarHit`]).
    pub(crate) async fn serve(
        &self,
        file: &str,
        key: &str,
        lookup: bool,
    ) -> Result<Option<NarBody>> {
        let Some(object) = self.storage.get(key).await? else {
            return Ok(None);
        };
        // Recorded in memory, written in the next batch: a hit writes nothing.
        self.observers.emit(Event::NarHit { file, lookup });
        Ok(Some(self.reading(file, object)))
    }

    /// The stored NAR `file`, counting nothing but its reader.
    pub(crate) async fn read(&self, file: &str, key: &str) -> Result<Option<NarBody>> {
        let object = self.storage.get(key).await?;
        Ok(object.map(|object| self.reading(file, object)))
    }

    /// `len` bytes from `offset` of the stored NAR `file`.
    pub(crate) async fn range(
        &self,
        file: &str,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<NarBody>> {
        let object = self.storage.get_range(key, offset, len).await?;
        Ok(object.map(|object| {
            self.observers.emit(Event::NarRangeRead { file });
            self.reading(file, object)
        }))
    }

    fn reading(&self, file: &str, object: StoredObject) -> NarBody {
        NarBody {
            size: Some(object.size),
            body: self.access.reading(file, object.body),
            file: object.file,
        }
    }

    /// The download of `key` in flight here, if any.
    pub(crate) fn in_flight(&self, key: &str) -> Option<Arc<Download>> {
        self.inflight.get(key)
    }

    /// Waits until no other request of this process is starting a download
    /// of `key`, so that one starts it and the others read it.
    pub(crate) async fn starting(&self, key: &str) -> StartGuard<'_> {
        self.inflight.starting(key).await
    }

    /// A spool for a download of `key`, published to later readers until
    /// [`Blobs::withdraw`].
    pub(crate) fn spool(&self, key: &str) -> Result<(SpoolWriter, Arc<Download>)> {
        let (writer, download) = inflight::spool(&self.spool_dir).map_err(|e| {
            Error::backend(format!("spool file in {}", self.spool_dir.display()), e)
        })?;
        self.inflight.insert(key, Arc::clone(&download));
        Ok((writer, download))
    }

    /// Withdraws the download of `key`; its readers keep reading.
    pub(crate) fn withdraw(&self, key: &str) {
        self.inflight.remove(key);
    }

    /// Whether storage and the spool directory have room for the NAR of
    /// `record` (its FileSize, else its NarSize), where they can tell.
    pub(crate) async fn room_for(&self, record: &NarRecord) -> Result<()> {
        let needed = record.file_size.unwrap_or(record.nar_size);
        if let Some(free) = self.storage.available_space().await? {
            crate::disk_space::require("storage", free, needed)?;
        }
        let dir = self.spool_dir.clone();
        match tokio::task::spawn_blocking(move || crate::disk_space::available(&dir)).await {
            Ok(Ok(free)) => crate::disk_space::require(
                &format!("the download spool {}", self.spool_dir.display()),
                free,
                needed,
            ),
            // Unknown: the spool itself reports a failure.
            _ => Ok(()),
        }
    }

    /// Discards the unfinished writes of `key`, whose download lock the
    /// caller holds; failures only warn.
    pub(crate) async fn discard_incomplete(&self, key: &str) {
        let found = match self.storage.incomplete(Some(key)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot look for unfinished writes");
                return;
            }
        };
        for incomplete in found {
            match self.storage.discard(&incomplete).await {
                Ok(()) => {
                    tracing::info!(%key, id = %incomplete.id, "discarded an unfinished write of an earlier download")
                }
                Err(e) => {
                    tracing::warn!(%key, id = %incomplete.id, error = %e, "cannot discard an unfinished write")
                }
            }
        }
    }

    /// Throws away unfinished writes that no one is doing any more: those
    /// the backend knows are dead, and those of a key whose download lock
    /// (taken from `lock` for `ttl`) is free that started at least
    /// `min_age` ago. Returns how many went.
    pub(crate) async fn clean_incomplete(
        &self,
        lock: &dyn Lock,
        ttl: Duration,
        min_age: Duration,
    ) -> Result<usize> {
        let mut discarded = 0;
        for incomplete in self.storage.incomplete(None).await? {
            let guard = match &incomplete.key {
                Some(_) if !incomplete.older_than(min_age) => continue,
                Some(key) => match lock
                    .try_acquire_key(&LockKey::download_of(key), ttl)
                    .await?
                {
                    Some(guard) => Some(guard),
                    // Someone is writing it now.
                    None => continue,
                },
                None => None,
            };
            let discard = async { Ok(self.storage.discard(&incomplete).await) };
            let result = match guard {
                Some(guard) => guard.release_after(discard).await?,
                None => discard.await?,
            };
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
}
