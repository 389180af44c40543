//! Uploads (`nix copy --to http://<cache>/upload`) and deletions.
//!
//! Nix uploads a path's NAR first (`PUT nar/<FileHash>.nar<ext>`), then its
//! narinfo. A NAR is checked while it streams into storage: its bytes must
//! hash to the FileHash its name says, and it must decompress as its
//! extension says; its NarHash and NarSize are measured on the way and kept
//! with it. A narinfo is then accepted only if the NAR its `URL:` names is
//! stored and matches its `FileHash`, `FileSize`, `NarHash` and `NarSize`,
//! and, when the policy asks, if it carries a signature by a trusted key.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use crate::access_log::counter;
use crate::cache::now;
use crate::nar_file::NarFile;
use crate::nar_verify::{self, invalid};
use crate::{
    ByteStream, Cache, Error, NarBody, NarInfo, NarInfoRecord, NarRecord, NarStorage, NixHash,
    PublicKey, Result, StorePathHash,
};

/// Who may upload narinfos.
#[derive(Clone, Debug, Default)]
pub struct UploadPolicy {
    /// Refuse narinfos without a signature by one of `trusted_keys`
    /// (`--cache-require-trusted-signature`).
    pub require_trusted_signature: bool,
    /// Keys whose signatures are trusted (`--cache-trusted-upload-key`).
    pub trusted_keys: Vec<PublicKey>,
}

/// An uploaded NAR, as measured while it was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedNar {
    /// Its file name under `nar/`.
    pub file: String,
    /// Bytes stored.
    pub file_size: u64,
    /// `sha256:<nix32>` of the uncompressed NAR.
    pub nar_hash: NixHash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
}

/// The `Compression:` a NAR file name's extension stands for.
fn compression_of(file: &NarFile) -> Result<&'static str> {
    let ext = file
        .as_str()
        .split_once(".nar")
        .map(|(_, ext)| ext)
        .unwrap_or("");
    Ok(match ext {
        "" => "none",
        ".xz" => "xz",
        ".zst" => "zstd",
        ".bz2" => "bzip2",
        ".br" => "br",
        other => {
            return Err(Error::InvalidInput(format!(
                "nar/{file}: NARs ending in {other} cannot be checked here; upload xz, zstd, bzip2, br or none"
            )));
        }
    })
}

/// The FileHash a canonical NAR file name says: the nix32 before `.nar`.
fn named_file_hash(file: &NarFile) -> Result<NixHash> {
    let nix32 = file.as_str().split_once(".nar").map_or("", |(h, _)| h);
    format!("sha256:{nix32}").parse()
}

impl Cache {
    /// Stores an uploaded NAR under `nar/<file>`, checking that its bytes
    /// hash to the FileHash its name says and that it decompresses as its
    /// extension says. Nothing is stored if a check fails
    /// ([`Error::Integrity`]) or the body breaks off.
    pub async fn upload_nar(&self, file: &NarFile, body: ByteStream) -> Result<UploadedNar> {
        let compression = compression_of(file)?;
        let expected = named_file_hash(file)?;
        let backends = self.backends();
        let key = file.storage_key();
        let lock_key = format!("download:{key}");
        let ttl = self.options().download_lock_ttl;
        // No download or eviction of this key meanwhile.
        let guard = backends.lock.acquire(&lock_key, ttl).await?;
        let measured = Arc::new(Mutex::new(None));
        let checked = measuring(body, compression, expected, Arc::clone(&measured))?;
        let stored =
            crate::cache::hold_while(backends.storage.put(&key, checked), &guard, ttl).await;
        let result = async {
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
            let db = &backends.db;
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
            Ok::<_, Error>(UploadedNar {
                file: file.as_str().to_owned(),
                file_size: stored,
                nar_hash,
                nar_size,
            })
        }
        .await;
        guard.release().await?;
        let uploaded = result?;
        self.access_log().count(counter::UPLOADED_NARS, 1);
        self.metrics().nar_stored(uploaded.file_size);
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
        let file: NarFile = info
            .url
            .strip_prefix("nar/")
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "URL: {} must name a NAR uploaded under nar/",
                    info.url
                ))
            })?
            .parse()?;
        let db = self.backends().db;
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
        if self.options().sign_narinfo {
            info.sign(self.signing_key());
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
        if !existed {
            // Its NAR counted in the store gauges when it was stored.
            self.metrics().record_added(1, 0, 0);
        }
        tracing::info!(path = %info.store_path, "narinfo uploaded");
        Ok(())
    }

    /// Deletes the narinfo of `hash` (its NAR stays, until evicted or
    /// deleted); whether there was one.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<bool> {
        let deleted = self.backends().db.delete_narinfo(hash.as_str()).await?;
        self.forget_hot(hash.as_str());
        if deleted {
            self.metrics().record_removed(1, 0, 0);
            tracing::info!(%hash, "narinfo deleted");
        }
        Ok(deleted)
    }

    /// Deletes a NAR: its bytes, its record and the narinfos naming it
    /// (which would otherwise point at nothing); whether there was one.
    pub async fn delete_nar(&self, file: &NarFile) -> Result<bool> {
        let backends = self.backends();
        let key = file.storage_key();
        let ttl = self.options().download_lock_ttl;
        let guard = backends
            .lock
            .acquire(&format!("download:{key}"), ttl)
            .await?;
        let result = async {
            let db = &backends.db;
            // What the store gauges lose: the NAR's bytes, if it was stored.
            let stored_size = match db.get_nar_storage(file.as_str()).await? {
                Some(NarStorage::Stored(size)) => Some(size),
                _ => None,
            };
            let bytes = backends.storage.delete(&key).await?;
            let hashes = db.narinfos_of_nar(file.as_str()).await?;
            for hash in &hashes {
                db.delete_narinfo(hash).await?;
            }
            let record = db.delete_nar(file.as_str()).await?;
            Ok::<_, Error>((bytes || record, hashes, stored_size))
        }
        .await;
        guard.release().await?;
        let (deleted, hashes, stored_size) = result?;
        for hash in &hashes {
            self.forget_hot(hash);
        }
        let paths = hashes.len();
        if deleted {
            self.metrics().record_removed(
                paths as u64,
                u64::from(stored_size.is_some()),
                stored_size.unwrap_or(0),
            );
            tracing::info!(%file, paths, "NAR deleted");
        }
        Ok(deleted)
    }

    /// The size of a stored NAR, never fetching it (for `/upload/...`).
    pub async fn stored_nar_size_only(&self, file: &NarFile) -> Result<Option<u64>> {
        self.backends().storage.head(&file.storage_key()).await
    }

    /// A stored NAR, never fetching it (for `/upload/...`).
    pub async fn stored_nar_only(&self, file: &NarFile) -> Result<Option<NarBody>> {
        let Some(object) = self.backends().storage.get(&file.storage_key()).await? else {
            return Ok(None);
        };
        Ok(Some(NarBody {
            size: Some(object.size),
            body: self.access_log().reading(file.as_str(), object.body),
            file: object.file,
        }))
    }

    /// A narinfo this cache has, never asking an upstream (for `/upload/...`).
    pub async fn cached_narinfo(&self, hash: &StorePathHash) -> Result<Option<String>> {
        Ok(self
            .backends()
            .db
            .get_narinfo(hash.as_str())
            .await?
            .map(|r| r.narinfo))
    }
}

/// Whether a backend error came from a body that failed a check.
fn is_invalid_data(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    source
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::InvalidData)
}

/// Checks an uploaded narinfo's claims against what was measured of its NAR.
fn check_against(info: &NarInfo, record: &NarRecord) -> Result<()> {
    let path = &info.store_path;
    let mismatch = |what: &str, says: String, is: String| {
        Error::Integrity(format!(
            "{path}: {what} says {says}, the uploaded NAR {} has {is}",
            record.file
        ))
    };
    if info.compression != record.compression {
        return Err(mismatch(
            "Compression",
            info.compression.clone(),
            record.compression.clone(),
        ));
    }
    if info.nar_hash.to_string() != record.nar_hash {
        return Err(mismatch(
            "NarHash",
            info.nar_hash.to_string(),
            record.nar_hash.clone(),
        ));
    }
    if info.nar_size != record.nar_size {
        return Err(mismatch(
            "NarSize",
            info.nar_size.to_string(),
            record.nar_size.to_string(),
        ));
    }
    if let Some(hash) = info.file_hash
        && Some(hash.to_string()) != record.file_hash
    {
        return Err(mismatch(
            "FileHash",
            hash.to_string(),
            record.file_hash.clone().unwrap_or_default(),
        ));
    }
    if let Some(size) = info.file_size
        && Some(size) != record.file_size
    {
        return Err(mismatch(
            "FileSize",
            size.to_string(),
            record.file_size.map(|s| s.to_string()).unwrap_or_default(),
        ));
    }
    Ok(())
}

/// `input`, passed through; it ends with an error instead of its last chunk
/// if its bytes do not hash to `expected` or do not decompress. On success,
/// `result` holds the NarHash and NarSize of the decompressed NAR.
fn measuring(
    input: ByteStream,
    compression: &str,
    expected: NixHash,
    result: Arc<Mutex<Option<(NixHash, u64)>>>,
) -> Result<ByteStream> {
    nar_verify::measured(input, compression, move |measured| {
        if measured.file_hash != expected {
            return Err(invalid(format!(
                "the file hashes to {}, its name says {expected}",
                measured.file_hash
            )));
        }
        if measured.nar_size == 0 {
            return Err(invalid("the NAR is empty".into()));
        }
        *result.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((measured.nar_hash, measured.nar_size));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;

    fn body(data: &[u8]) -> ByteStream {
        let chunks: Vec<io::Result<Bytes>> = data
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(chunks))
    }

    async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn measures_a_file_that_matches_its_name() {
        let data = b"nix-archive-1 pretend".to_vec();
        let result = Arc::new(Mutex::new(None));
        let out = collect(
            measuring(body(&data), "none", NixHash::digest(&data), result.clone()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(out, data);
        assert_eq!(
            *result.lock().unwrap(),
            Some((NixHash::digest(&data), data.len() as u64))
        );
    }

    #[tokio::test]
    async fn refuses_a_file_its_name_does_not_match() {
        let data = b"nix-archive-1 pretend".to_vec();
        let result = Arc::new(Mutex::new(None));
        let e = collect(
            measuring(
                body(&data),
                "none",
                NixHash::digest(b"other"),
                result.clone(),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("its name says"), "{e}");
        assert_eq!(*result.lock().unwrap(), None);
        let e = collect(
            measuring(
                body(&data),
                "xz",
                NixHash::digest(&data),
                Arc::new(Mutex::new(None)),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("decompress"), "{e}");
    }

    #[test]
    fn names_say_compression_and_file_hash() {
        let file: NarFile = "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.zst"
            .parse()
            .unwrap();
        assert_eq!(compression_of(&file).unwrap(), "zstd");
        assert_eq!(
            named_file_hash(&file).unwrap().to_string(),
            "sha256:1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp"
        );
        let lz4: NarFile = "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.lz4"
            .parse()
            .unwrap();
        assert!(compression_of(&lz4).is_err());
    }
}
