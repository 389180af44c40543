//! The cache policy: signing, how long misses and locks last, where
//! downloads spool, and how big the cache may grow and when eviction runs.

use std::path::PathBuf;
use std::time::Duration;

use ncps_core::eviction::EvictionOptions;
use ncps_core::{Error, Result};

use crate::machine::Machine;
use crate::options::ServeOptions;
use crate::schedule::{DEFAULT_SCHEDULE, Schedule};

/// How the cache behaves.
#[derive(Clone, Debug)]
pub struct CachePolicy {
    /// `--cache-sign-narinfo`.
    pub sign_narinfo: bool,
    /// `--cache-secret-key-path`; without it the key is kept in the database.
    pub secret_key_path: Option<PathBuf>,
    /// `--cache-negative-narinfo-ttl`.
    pub negative_narinfo_ttl: Duration,
    /// `--cache-lock-download-ttl`.
    pub download_lock_ttl: Duration,
    /// `--cache-temp-path`, else the OS temporary directory.
    pub temp_dir: PathBuf,
    /// `--cache-max-size`.
    pub max_size: Option<u64>,
    /// When eviction runs: `--cache-lru-schedule` in its time zone, hourly
    /// by default; `None` without `--cache-max-size`.
    pub schedule: Option<Schedule>,
    /// `--cache-lru-min-age`.
    pub lru_min_age: Duration,
    /// `--cache-lock-lru-ttl`.
    pub lru_lock_ttl: Duration,
}

impl CachePolicy {
    pub(crate) fn from_options(options: &ServeOptions, machine: &Machine) -> Result<Self> {
        let invalid = |why: String| Error::InvalidInput(why);
        let schedule = match (options.cache_max_size, &options.cache_lru_schedule) {
            (None, Some(spec)) => {
                return Err(invalid(format!(
                    "--cache-lru-schedule {spec:?} needs --cache-max-size: the size to keep the cache under"
                )));
            }
            (None, None) => None,
            (Some(_), spec) => Some(
                Schedule::parse(
                    spec.as_deref().unwrap_or(DEFAULT_SCHEDULE),
                    &options.cache_lru_schedule_timezone,
                )
                .map_err(invalid)?,
            ),
        };
        Ok(CachePolicy {
            sign_narinfo: options.cache_sign_narinfo,
            secret_key_path: options.cache_secret_key_path.clone(),
            negative_narinfo_ttl: options.cache_negative_narinfo_ttl,
            download_lock_ttl: options.cache_lock_download_ttl,
            temp_dir: options
                .cache_temp_path
                .clone()
                .unwrap_or_else(|| machine.temp_dir.clone()),
            max_size: options.cache_max_size,
            schedule,
            lru_min_age: options.cache_lru_min_age,
            lru_lock_ttl: options.cache_lock_lru_ttl,
        })
    }

    /// How an eviction run keeps the cache under `max_size`.
    pub fn eviction_options(&self, max_size: u64) -> EvictionOptions {
        EvictionOptions {
            max_size,
            min_age: self.lru_min_age,
            lock_ttl: self.lru_lock_ttl,
            download_lock_ttl: self.download_lock_ttl,
            dry_run: false,
        }
    }

    /// The scheduled eviction of `--cache-max-size`, or `None` when the
    /// cache is unlimited.
    pub fn eviction(&self) -> Option<(Schedule, EvictionOptions)> {
        let schedule = self.schedule.clone()?;
        let max_size = self.max_size?;
        Some((schedule, self.eviction_options(max_size)))
    }
}
