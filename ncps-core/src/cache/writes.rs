//! Writes: uploads (checked as [`crate::upload`] says), deletions, and pins
//! ([`crate::pins`]).

use std::sync::{Arc, Mutex, PoisonError};

use super::{Cache, Fetch};
use crate::events::Event;
use crate::nar_file::NarFile;
use crate::pins::{Pinned, closure};
use crate::upload::{
    UploadPolicy, UploadedNar, check_against, compression_of, is_invalid_data, measuring,
    named_file_hash,
};
use crate::{
    ByteStream, Error, NarInfo, NarInfoRecord, NarRecord, NarStorage, PinRecord, PublicKey, Result,
    StorePathHash, now,
};

impl Cache {
    /// Stores an uploaded NAR under `nar/<file>`, checking that its bytes
    /// hash to the FileHash its name says and that it decompresses as its
    /// extension says. Nothing is stored if a check fails
    /// ([`Error::Integrity`]) or the body breaks off.
    pub async fn upload_nar(&self, file: &NarFile, body: ByteStream) -> Result<UploadedNar> {
        let compression = compression_of(file)?;
        let expected = named_file_hash(file)?;
        let key = file.storage_key();
        let ttl = self.inner.options.download_lock_ttl;
        let guard = self.lock_download(file).await?;
        let measured = Arc::new(Mutex::new(None));
        let checked = measuring(body, compression, expected, Arc::clone(&measured))?;
        let storage = self.inner.blobs.storage();
        let stored = guard.hold_while(storage.put(&key, checked), ttl).await;
        let uploaded = guard
            .release_after(async {
                let stored = stored.map_err(|e| match e {
                    Error::Backend { context, source } if is_invalid_data(source.as_ref()) => {
                        Error::Integrity(format!("nar/{file}: {context}: {source}"))
                    }
                    e => e,
                })?;
                let (nar_hash, nar_size) = measured
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .ok_or_else(|| {
                        Error::backend("uploading a NAR", "stored without being measured")
                    })?;
                let db = self.inner.index.db();
                let existing = db.get_nar(file.as_str()).await?;
                let record = NarRecord {
                    file: file.as_str().to_owned(),
                    compression: compression.to_owned(),
                    file_hash: Some(expected.to_string()),
                    file_size: Some(stored),
                    nar_hash: nar_hash.to_string(),
                    nar_size,
                    // A NAR an upstream also serves keeps its source.
                    upstream_url: existing.and_then(|r| r.upstream_url),
                    last_accessed_at: now(),
                };
                db.put_nar(&record).await?;
                db.set_nar_storage(file.as_str(), NarStorage::Stored(stored))
                    .await?;
                Ok(UploadedNar {
                    file: file.as_str().to_owned(),
                    file_size: stored,
                    nar_hash,
                    nar_size,
                })
            })
            .await?;
        self.inner.observers.emit(Event::NarUploaded {
            bytes: uploaded.file_size,
        });
        tracing::info!(file = %file, size = uploaded.file_size, nar_size = uploaded.nar_size, "NAR uploaded");
        Ok(uploaded)
    }

    /// Stores an uploaded narinfo for `hash`, after checking it against the
    /// NAR its `URL:` names (which must be stored here) and, if `policy`
    /// asks, its signatures. Signed with this cache's key when the cache
    /// signs narinfos.
    pub async fn upload_narinfo(
        &self,
        hash: &StorePathHash,
        text: &str,
        policy: &UploadPolicy,
    ) -> Result<()> {
        let mut info: NarInfo = text.parse()?;
        if info.store_path.hash() != hash {
            return Err(Error::InvalidInput(format!(
                "{hash}.narinfo holds {}, another store path",
                info.store_path
            )));
        }
        if policy.require_trusted_signature && !info.has_valid_signature(&policy.trusted_keys) {
            let names: Vec<&str> = policy.trusted_keys.iter().map(PublicKey::name).collect();
            return Err(Error::Forbidden(format!(
                "{}: no valid signature by a trusted upload key ({})",
                info.store_path,
                names.join(", ")
            )));
        }
        let file = uploaded_nar_of(&info)?;
        let db = self.inner.index.db();
        let record = match db.get_nar_storage(file.as_str()).await? {
            Some(NarStorage::Stored(_)) => db.get_nar(file.as_str()).await?,
            _ => None,
        }
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{}: its NAR nar/{file} is not stored here; upload it first",
                info.store_path
            ))
        })?;
        check_against(&info, &record)?;
        if self.inner.options.sign_narinfo {
            info.sign(&self.inner.signing_key);
        }
        let now = now();
        let existed = db.get_narinfo(hash.as_str()).await?.is_some();
        db.put_narinfo(&NarInfoRecord {
            hash: hash.as_str().to_owned(),
            narinfo: info.to_string(),
            nar_file: file.as_str().to_owned(),
            created_at: now,
            last_accessed_at: now,
        })
        .await?;
        self.forget_absent(hash);
        // Its NAR counted in the store gauges when it was stored.
        self.inner
            .observers
            .emit(Event::NarinfoUploaded { new: !existed });
        tracing::info!(path = %info.store_path, "narinfo uploaded");
        Ok(())
    }

    /// Deletes the narinfo of `hash` (its NAR stays, until evicted or
    /// deleted); whether there was one.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<bool> {
        let deleted = self.inner.index.db().delete_narinfo(hash.as_str()).await?;
        self.inner.index.forget_hot(hash.as_str());
        if deleted {
            self.inner.observers.emit(Event::Deleted {
                paths: 1,
                nars: 0,
                bytes: 0,
            });
            tracing::info!(%hash, "narinfo deleted");
        }
        Ok(deleted)
    }

    /// Deletes a NAR: its bytes, its record and the narinfos naming it
    /// (which would otherwise point at nothing); whether there was one.
    pub async fn delete_nar(&self, file: &NarFile) -> Result<bool> {
        let key = file.storage_key();
        let guard = self.lock_download(file).await?;
        let (deleted, hashes, stored_size) = guard
            .release_after(async {
                let db = self.inner.index.db();
                // What the store gauges lose: the NAR's bytes, if it was stored.
                let stored_size = match db.get_nar_storage(file.as_str()).await? {
                    Some(NarStorage::Stored(size)) => Some(size),
                    _ => None,
                };
                let bytes = self.inner.blobs.storage().delete(&key).await?;
                let hashes = db.narinfos_of_nar(file.as_str()).await?;
                for hash in &hashes {
                    db.delete_narinfo(hash).await?;
                }
                let record = db.delete_nar(file.as_str()).await?;
                Ok((bytes || record, hashes, stored_size))
            })
            .await?;
        for hash in &hashes {
            self.inner.index.forget_hot(hash);
        }
        let paths = hashes.len();
        if deleted {
            self.inner.observers.emit(Event::Deleted {
                paths: paths as u64,
                nars: u64::from(stored_size.is_some()),
                bytes: stored_size.unwrap_or(0),
            });
            tracing::info!(%file, paths, "NAR deleted");
        }
        Ok(deleted)
    }

    /// Pins `hash` and its closure against eviction. The narinfo is fetched
    /// from the upstreams if it is not cached; `None` if no one has it (and
    /// nothing is pinned).
    pub async fn pin(&self, hash: &StorePathHash) -> Result<Option<Pinned>> {
        let Some(served) = self.get_narinfo(hash, Fetch::Upstream).await? else {
            return Ok(None);
        };
        let db = self.inner.index.db();
        let new = db.add_pin(hash.as_str(), now()).await?;
        let closure = closure(db.as_ref(), vec![hash.as_str().to_owned()]).await?;
        let store_path = served
            .as_str()
            .parse::<NarInfo>()
            .ok()
            .map(|i| i.store_path.to_string());
        tracing::info!(%hash, new, closure = closure.paths.len(), "pinned");
        Ok(Some(Pinned {
            new,
            store_path,
            closure_paths: closure.paths.len(),
        }))
    }

    /// Unpins `hash`; whether it was pinned.
    pub async fn unpin(&self, hash: &StorePathHash) -> Result<bool> {
        let removed = self.inner.index.db().delete_pin(hash.as_str()).await?;
        if removed {
            tracing::info!(%hash, "unpinned");
        }
        Ok(removed)
    }

    /// Every pin, in hash order.
    pub async fn pins(&self) -> Result<Vec<PinRecord>> {
        self.inner.index.db().list_pins().await
    }
}

/// The NAR an uploaded narinfo's `URL:` names, which must be under `nar/`.
fn uploaded_nar_of(info: &NarInfo) -> Result<NarFile> {
    info.url
        .strip_prefix("nar/")
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "URL: {} must name a NAR uploaded under nar/",
                info.url
            ))
        })?
        .parse()
}
