//! What clients may change: uploads (`--cache-allow-put-verb`), deletes
//! (`--cache-allow-delete-verb`), and which uploaded narinfos are trusted.

use ncps_core::upload::UploadPolicy;
use ncps_core::{Error, PublicKey, Result};

use crate::options::ServeOptions;

/// The write policy.
#[derive(Clone, Debug, Default)]
pub struct WritePolicy {
    /// `--cache-allow-put-verb`.
    pub allow_put: bool,
    /// `--cache-allow-delete-verb`.
    pub allow_delete: bool,
    /// `--cache-require-trusted-signature` and `--cache-trusted-upload-key`.
    pub upload_policy: UploadPolicy,
}

impl WritePolicy {
    /// An unreadable trusted key, or requiring trusted signatures without
    /// any trusted key, is an error naming the option.
    pub(crate) fn from_options(options: &ServeOptions) -> Result<Self> {
        let trusted_keys = options
            .cache_trusted_upload_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| {
                k.parse::<PublicKey>().map_err(|e| {
                    Error::InvalidInput(format!("--cache-trusted-upload-key {k:?}: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if options.cache_require_trusted_signature && trusted_keys.is_empty() {
            return Err(Error::InvalidInput(
                "--cache-require-trusted-signature needs at least one --cache-trusted-upload-key"
                    .into(),
            ));
        }
        Ok(WritePolicy {
            allow_put: options.cache_allow_put_verb,
            allow_delete: options.cache_allow_delete_verb,
            upload_policy: UploadPolicy {
                require_trusted_signature: options.cache_require_trusted_signature,
                trusted_keys,
            },
        })
    }
}
