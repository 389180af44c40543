//! Every statement [`crate::SqlDb`] runs, written once with `?`
//! placeholders: constants where all backends take the same text, and
//! [`Queries`] for those built from the backend's [`Dialect`] (upserts and a
//! cast). The SELECTs list their columns in the order `records.rs` reads
//! them.

use crate::dialect::Dialect;

/// The columns of a narinfo record, as [`crate::records::narinfo`] reads them.
const NARINFO_COLUMNS: &[&str] = &[
    "hash",
    "narinfo",
    "nar_file",
    "created_at",
    "last_accessed_at",
];

/// The columns of a NAR record, as [`crate::records::nar`] reads them.
const NAR_COLUMNS: &[&str] = &[
    "file",
    "compression",
    "file_hash",
    "file_size",
    "nar_hash",
    "nar_size",
    "upstream_url",
    "last_accessed_at",
];

pub(crate) const GET_NARINFO: &str = "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
     FROM narinfos WHERE hash = ?";
pub(crate) const LIST_NARINFOS: &str =
    "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
     FROM narinfos ORDER BY hash LIMIT ?";
pub(crate) const LIST_NARINFOS_AFTER: &str =
    "SELECT hash, narinfo, nar_file, created_at, last_accessed_at
     FROM narinfos WHERE hash > ? ORDER BY hash LIMIT ?";
pub(crate) const DELETE_NARINFO: &str = "DELETE FROM narinfos WHERE hash = ?";
pub(crate) const TOUCH_NARINFO: &str = "UPDATE narinfos SET last_accessed_at = ? WHERE hash = ?";
pub(crate) const NARINFOS_OF_NAR: &str =
    "SELECT hash FROM narinfos WHERE nar_file = ? ORDER BY hash";

pub(crate) const GET_NAR: &str =
    "SELECT file, compression, file_hash, file_size, nar_hash, nar_size, upstream_url,
            last_accessed_at
     FROM nars WHERE file = ?";
pub(crate) const LIST_NARS: &str =
    "SELECT file, compression, file_hash, file_size, nar_hash, nar_size, upstream_url,
            last_accessed_at
     FROM nars ORDER BY file LIMIT ?";
pub(crate) const LIST_NARS_AFTER: &str =
    "SELECT file, compression, file_hash, file_size, nar_hash, nar_size, upstream_url,
            last_accessed_at
     FROM nars WHERE file > ? ORDER BY file LIMIT ?";
pub(crate) const DELETE_NAR: &str = "DELETE FROM nars WHERE file = ?";
pub(crate) const TOUCH_NAR: &str = "UPDATE nars SET last_accessed_at = ? WHERE file = ?";

pub(crate) const SET_NAR_STORAGE: &str = "UPDATE nars SET stored_size = ? WHERE file = ?";
pub(crate) const GET_NAR_STORAGE: &str = "SELECT stored_size FROM nars WHERE file = ?";
/// NARs in storage, least recently used first (the columns of a `StoredNar`).
pub(crate) const STORED_NARS: &str =
    "SELECT file, stored_size, last_accessed_at, upstream_url FROM nars
     WHERE stored_size >= 0
     ORDER BY last_accessed_at, file LIMIT ?";
/// [`STORED_NARS`] after a (last access, file).
pub(crate) const STORED_NARS_AFTER: &str =
    "SELECT file, stored_size, last_accessed_at, upstream_url FROM nars
     WHERE stored_size >= 0
       AND (last_accessed_at > ? OR (last_accessed_at = ? AND file > ?))
     ORDER BY last_accessed_at, file LIMIT ?";
pub(crate) const NARS_OF_UNKNOWN_STORAGE: &str =
    "SELECT file FROM nars WHERE stored_size < 0 ORDER BY file LIMIT ?";

pub(crate) const GET_CONFIG: &str = r#"SELECT "value" FROM config WHERE "key" = ?"#;
pub(crate) const LIST_CONFIG: &str = r#"SELECT "key", "value" FROM config ORDER BY "key""#;
pub(crate) const PING: &str = "SELECT 1";

pub(crate) const DELETE_PIN: &str = "DELETE FROM pins WHERE hash = ?";
pub(crate) const LIST_PINS: &str = "SELECT hash, created_at FROM pins ORDER BY hash";
pub(crate) const LIST_COUNTERS: &str = r#"SELECT name, "value" FROM counters ORDER BY name"#;

/// The statements built from a [`Dialect`], once per database.
#[derive(Debug)]
pub(crate) struct Queries {
    /// The dialect they were built from.
    pub dialect: Dialect,
    /// Inserts or replaces a narinfo record ([`NARINFO_COLUMNS`]).
    pub put_narinfo: String,
    /// Inserts or replaces a NAR record ([`NAR_COLUMNS`]), keeping what
    /// storage holds of it.
    pub put_nar: String,
    /// Stores a config value (key, value) unless the key has one.
    pub set_config: String,
    /// Pins (hash, created_at) unless pinned; changes no row if it was.
    pub add_pin: String,
    /// What the cache holds, in one row of six counts (see `StorageUsage`).
    pub storage_usage: String,
}

impl Queries {
    /// The statements of `dialect`.
    pub(crate) fn new(dialect: Dialect) -> Self {
        let conflict = dialect.conflict;
        Queries {
            dialect,
            put_narinfo: conflict.upsert("narinfos", NARINFO_COLUMNS),
            put_nar: conflict.upsert("nars", NAR_COLUMNS),
            set_config: conflict.insert_if_absent("config", &[r#""key""#, r#""value""#]),
            add_pin: conflict.insert_if_absent("pins", &["hash", "created_at"]),
            storage_usage: format!(
                "SELECT (SELECT COUNT(*) FROM narinfos), (SELECT COUNT(*) FROM nars),
                        (SELECT COUNT(*) FROM nars WHERE stored_size >= 0),
                        (SELECT CAST(COALESCE(SUM(stored_size), 0) AS {}) FROM nars
                         WHERE stored_size >= 0),
                        (SELECT COUNT(*) FROM nars WHERE stored_size < 0),
                        (SELECT COUNT(*) FROM pins)",
                dialect.bigint
            ),
        }
    }

    /// Adds `rows` (name, delta) pairs to their counters.
    pub(crate) fn add_counters(&self, rows: usize) -> String {
        self.dialect
            .conflict
            .add_to("counters", "name", r#""value""#, rows)
    }
}
