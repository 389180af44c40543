//! What the routes that change the cache may do: uploads
//! (`--cache-allow-put-verb`, [`crate::endpoints::upload`]), deletes
//! (`--cache-allow-delete-verb`, [`crate::endpoints::delete`]) and which
//! uploaded narinfos are accepted. Writes and pins need the write token
//! (see [`crate::auth`]).

use ncps_core::Error;
use ncps_core::upload::UploadPolicy;

/// What the write routes may do.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `--cache-allow-put-verb`.
    pub allow_put: bool,
    /// `--cache-allow-delete-verb`.
    pub allow_delete: bool,
    /// Which uploaded narinfos are accepted.
    pub upload_policy: UploadPolicy,
}

impl WriteOptions {
    /// The write options of `options`; an unreadable trusted key, or
    /// requiring trusted signatures without any trusted key, is an error
    /// naming the option.
    pub fn from_options(options: &crate::options::ServeOptions) -> ncps_core::Result<Self> {
        let trusted_keys = options
            .cache_trusted_upload_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| {
                k.parse::<ncps_core::PublicKey>().map_err(|e| {
                    Error::InvalidInput(format!("--cache-trusted-upload-key {k:?}: {e}"))
                })
            })
            .collect::<ncps_core::Result<Vec<_>>>()?;
        if options.cache_require_trusted_signature && trusted_keys.is_empty() {
            return Err(Error::InvalidInput(
                "--cache-require-trusted-signature needs at least one --cache-trusted-upload-key"
                    .into(),
            ));
        }
        Ok(WriteOptions {
            allow_put: options.cache_allow_put_verb,
            allow_delete: options.cache_allow_delete_verb,
            upload_policy: UploadPolicy {
                require_trusted_signature: options.cache_require_trusted_signature,
                trusted_keys,
            },
        })
    }
}
