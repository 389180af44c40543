//! Uploads (`nix copy --to http://<cache>/upload`): who may upload, and
//! the checks an upload passes ([`crate::Cache::upload_nar`] and
//! [`crate::Cache::upload_narinfo`] run them).
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

use crate::nar_file::NarFile;
use crate::nar_verify::{self, invalid};
use crate::{ByteStream, Error, NarInfo, NarRecord, NixHash, PublicKey, Result};

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
pub(crate) fn compression_of(file: &NarFile) -> Result<&'static str> {
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
pub(crate) fn named_file_hash(file: &NarFile) -> Result<NixHash> {
    let nix32 = file.as_str().split_once(".nar").map_or("", |(h, _)| h);
    format!("sha256:{nix32}").parse()
}

/// Whether a backend error came from a body that failed a check.
pub(crate) fn is_invalid_data(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    source
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::InvalidData)
}

/// Checks an uploaded narinfo's claims against what was measured of its NAR.
pub(crate) fn check_against(info: &NarInfo, record: &NarRecord) -> Result<()> {
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
pub(crate) fn measuring(
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
