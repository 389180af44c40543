//! Where NARs are kept: a local directory or an S3 bucket (never both), and
//! the data directory the default SQLite database lives under.

use std::path::PathBuf;

use ncps_core::Result;

use crate::error::invalid;
use crate::machine::Machine;
use crate::options::{Secret, ServeOptions};

/// The NAR storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageSettings {
    /// `--cache-storage-local`, else the machine's data directory.
    Local(PathBuf),
    /// `--cache-storage-s3-bucket` and its options.
    S3(S3Settings),
}

/// An S3 bucket and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Settings {
    /// `--cache-storage-s3-bucket`.
    pub bucket: String,
    /// `--cache-storage-s3-endpoint` (default: AWS S3).
    pub endpoint: Option<String>,
    /// `--cache-storage-s3-region`.
    pub region: Option<String>,
    /// `--cache-storage-s3-force-path-style`.
    pub force_path_style: bool,
    /// `--cache-storage-s3-access-key-id` (default: the AWS credential chain).
    pub access_key_id: Option<String>,
    /// `--cache-storage-s3-secret-access-key`.
    pub secret_access_key: Option<Secret>,
    /// `--cache-storage-s3-prefix`.
    pub prefix: Option<String>,
}

impl StorageSettings {
    /// The storage `options` name, and the data directory: the local
    /// storage directory, else the machine's (the default database is there
    /// even with S3 storage).
    pub(crate) fn from_options(
        options: &ServeOptions,
        machine: &Machine,
    ) -> Result<(StorageSettings, PathBuf)> {
        let data_dir = options
            .cache_storage_local
            .clone()
            .unwrap_or_else(|| machine.data_dir.clone());
        let storage = match &options.cache_storage_s3_bucket {
            Some(_) if options.cache_storage_local.is_some() => {
                return Err(invalid(
                    "--cache-storage-local",
                    "cannot be used with --cache-storage-s3-bucket: choose one storage",
                ));
            }
            Some(bucket) if !cfg!(feature = "s3") => {
                return Err(invalid(
                    "--cache-storage-s3-bucket",
                    format!("{bucket}: built without S3 storage (feature `s3`)"),
                ));
            }
            Some(bucket) => StorageSettings::S3(S3Settings {
                bucket: bucket.clone(),
                endpoint: options.cache_storage_s3_endpoint.clone(),
                region: options.cache_storage_s3_region.clone(),
                force_path_style: options.cache_storage_s3_force_path_style,
                access_key_id: options.cache_storage_s3_access_key_id.clone(),
                secret_access_key: options.cache_storage_s3_secret_access_key.clone(),
                prefix: options.cache_storage_s3_prefix.clone(),
            }),
            None => match s3_options_given(options) {
                Some(option) => return Err(invalid(option, "needs --cache-storage-s3-bucket")),
                None if !cfg!(feature = "local-storage") => {
                    return Err(invalid(
                        "--cache-storage-local",
                        format!("{}: built without local storage", data_dir.display()),
                    ));
                }
                None => StorageSettings::Local(data_dir.clone()),
            },
        };
        Ok((storage, data_dir))
    }
}

/// The first S3 option given, of those that only mean something with a bucket.
fn s3_options_given(options: &ServeOptions) -> Option<&'static str> {
    [
        (
            "--cache-storage-s3-endpoint",
            options.cache_storage_s3_endpoint.is_some(),
        ),
        (
            "--cache-storage-s3-region",
            options.cache_storage_s3_region.is_some(),
        ),
        (
            "--cache-storage-s3-access-key-id",
            options.cache_storage_s3_access_key_id.is_some(),
        ),
        (
            "--cache-storage-s3-secret-access-key",
            options.cache_storage_s3_secret_access_key.is_some(),
        ),
        (
            "--cache-storage-s3-prefix",
            options.cache_storage_s3_prefix.is_some(),
        ),
    ]
    .into_iter()
    .find_map(|(name, given)| given.then_some(name))
}
