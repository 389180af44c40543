//! The metadata database: its URL (by default SQLite in the data
//! directory), checked to name a backend this build has, and its pool size.

use std::path::Path;

use ncps_core::Result;

use crate::error::invalid;
use crate::options::ServeOptions;

/// The metadata database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// `--cache-database-url`, else `sqlite:<data dir>/db/db.sqlite`.
    pub url: String,
    /// `--cache-database-pool-max-open-conns` (0: the backend's default).
    pub max_open_conns: usize,
}

impl DatabaseSettings {
    pub(crate) fn from_options(options: &ServeOptions, data_dir: &Path) -> Result<Self> {
        let url = options
            .cache_database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("db/db.sqlite").display()));
        ncps_db::check_url(&url).map_err(|e| invalid("--cache-database-url", e))?;
        Ok(DatabaseSettings {
            url,
            max_open_conns: options.cache_database_pool_max_open_conns,
        })
    }
}
