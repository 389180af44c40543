//! The `MetadataDb` trait: narinfo and NAR records, access times, and cache config.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::Result;

/// A narinfo as this cache serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfoRecord {
    /// The 32-character store path hash, the key of the record.
    pub hash: String,
    /// The narinfo text served to clients (URL rewritten, signed by this cache).
    pub narinfo: String,
    /// The file name under `nar/` of its NAR (the key of a [`NarRecord`]).
    pub nar_file: String,
    /// When the record was written, in seconds since the Unix epoch.
    pub created_at: i64,
    /// When it was last served, in seconds since the Unix epoch.
    pub last_accessed_at: i64,
}

/// Where a NAR comes from and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarRecord {
    /// Its file name under `nar/`, for example `<nix32>.nar.xz`.
    pub file: String,
    /// `Compression:` of the file (`none`, `xz`, `zstd`, ...).
    pub compression: String,
    /// `sha256:<nix32>` of the file, if known.
    pub file_hash: Option<String>,
    /// Size of the file, if known.
    pub file_size: Option<u64>,
    /// `sha256:<nix32>` of the uncompressed NAR.
    pub nar_hash: String,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// The absolute URL an upstream serves it at; `None` for uploads.
    pub upstream_url: Option<String>,
    /// When it was last served, in seconds since the Unix epoch.
    pub last_accessed_at: i64,
}

/// Durable metadata of the cache.
///
/// Writes are upserts by key; lookups answer `Ok(None)` when nothing is there.
#[async_trait]
pub trait MetadataDb: Send + Sync + Debug {
    /// The narinfo record for a store path hash.
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>>;
    /// Inserts or replaces the narinfo record with `record.hash`.
    async fn put_narinfo(&self, record: &NarInfoRecord) -> Result<()>;
    /// Deletes a narinfo record; returns whether there was one.
    async fn delete_narinfo(&self, hash: &str) -> Result<bool>;
    /// Records that a narinfo was served at `at` (seconds since the epoch).
    async fn touch_narinfo(&self, hash: &str, at: i64) -> Result<()>;

    /// The NAR record for a file name under `nar/`.
    async fn get_nar(&self, file: &str) -> Result<Option<NarRecord>>;
    /// Inserts or replaces the NAR record with `record.file`.
    async fn put_nar(&self, record: &NarRecord) -> Result<()>;
    /// Deletes a NAR record; returns whether there was one.
    async fn delete_nar(&self, file: &str) -> Result<bool>;
    /// Records that a NAR was served at `at` (seconds since the epoch).
    async fn touch_nar(&self, file: &str, at: i64) -> Result<()>;

    /// A configuration value, such as the signing key.
    async fn get_config(&self, key: &str) -> Result<Option<String>>;
    /// Stores `value` under `key` unless a value is already there; returns the
    /// value now stored, so racing instances agree on one.
    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String>;
    /// Whether the database answers (for readiness checks).
    async fn ping(&self) -> Result<()>;

    /// Up to `limit` narinfo records whose hash sorts after `after` (from the
    /// first if `None`), in hash order: pages for copying a whole database.
    async fn list_narinfos(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarInfoRecord>>;
    /// Up to `limit` NAR records whose file name sorts after `after` (from
    /// the first if `None`), in file name order.
    async fn list_nars(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarRecord>>;
    /// Every configuration value, as (key, value) in key order.
    async fn list_config(&self) -> Result<Vec<(String, String)>>;
}
