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

    // Schema v2: what storage holds, pins and counters (eviction, `ncps-cli`).

    /// Records what storage holds of the NAR `file`; returns whether there
    /// is a NAR record of that name.
    async fn set_nar_storage(&self, file: &str, storage: NarStorage) -> Result<bool>;
    /// What storage holds of the NAR `file`; `None` if there is no record.
    async fn get_nar_storage(&self, file: &str) -> Result<Option<NarStorage>>;
    /// Up to `limit` NARs in storage, least recently used first (by last
    /// access, then file name), after the (last access, file) `after`.
    async fn stored_nars_by_last_access(
        &self,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredNar>>;
    /// Up to `limit` file names of NAR records whose storage is
    /// [`NarStorage::Unknown`].
    async fn nars_of_unknown_storage(&self, limit: usize) -> Result<Vec<String>>;
    /// What the cache holds, in one query per table.
    async fn storage_usage(&self) -> Result<StorageUsage>;
    /// The store path hashes of the narinfo records whose NAR is `file`.
    async fn narinfos_of_nar(&self, file: &str) -> Result<Vec<String>>;
    /// Records that narinfos (by hash) and NARs (by file) were served at the
    /// given times, in one batch. Never moves an access time back; records
    /// that do not exist are skipped. The default touches one by one.
    async fn record_accesses(
        &self,
        narinfos: &[(String, i64)],
        nars: &[(String, i64)],
    ) -> Result<()> {
        for (hash, at) in narinfos {
            self.touch_narinfo(hash, *at).await?;
        }
        for (file, at) in nars {
            self.touch_nar(file, *at).await?;
        }
        Ok(())
    }
    /// Pins the store path with hash `hash` (and so its closure) against
    /// eviction; returns whether it was not pinned before.
    async fn add_pin(&self, hash: &str, at: i64) -> Result<bool>;
    /// Unpins `hash`; returns whether it was pinned.
    async fn delete_pin(&self, hash: &str) -> Result<bool>;
    /// Every pin, in hash order.
    async fn list_pins(&self) -> Result<Vec<PinRecord>>;
    /// Adds each delta to its named counter (missing counters start at 0).
    async fn add_counters(&self, deltas: &[(String, i64)]) -> Result<()>;
    /// Every counter, in name order.
    async fn list_counters(&self) -> Result<Vec<(String, i64)>>;
}

/// What storage holds of one NAR, as the database knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarStorage {
    /// Not in storage: only its narinfo was asked for, or it was evicted.
    Absent,
    /// In storage, this many bytes.
    Stored(u64),
    /// Not known (being downloaded, a download that ended without being
    /// recorded, recorded before the database tracked it, or copied from
    /// another database): look in storage.
    Unknown,
}

impl NarStorage {
    /// The column value: `NULL`, the size, or -1.
    pub fn to_column(self) -> Option<i64> {
        match self {
            NarStorage::Absent => None,
            NarStorage::Stored(size) => Some(i64::try_from(size).unwrap_or(i64::MAX)),
            NarStorage::Unknown => Some(-1),
        }
    }

    /// From the column value; any negative value means unknown.
    pub fn from_column(value: Option<i64>) -> Self {
        match value {
            None => NarStorage::Absent,
            Some(size) => u64::try_from(size).map_or(NarStorage::Unknown, NarStorage::Stored),
        }
    }
}

/// A NAR in storage, as eviction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredNar {
    /// Its file name under `nar/`.
    pub file: String,
    /// Its size in storage.
    pub size: u64,
    /// When it was last served, in seconds since the Unix epoch.
    pub last_accessed_at: i64,
    /// Where it came from; `None` for uploads.
    pub upstream_url: Option<String>,
}

/// What the cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageUsage {
    /// Narinfo records.
    pub narinfos: u64,
    /// NAR records, in storage or not.
    pub nar_records: u64,
    /// NARs in storage.
    pub stored_nars: u64,
    /// Their bytes.
    pub stored_bytes: u64,
    /// NAR records whose storage is not known yet.
    pub unknown_nars: u64,
    /// Pinned store paths.
    pub pins: u64,
}

/// A pinned store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRecord {
    /// Its store path hash.
    pub hash: String,
    /// When it was pinned, in seconds since the Unix epoch.
    pub created_at: i64,
}
