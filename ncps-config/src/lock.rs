//! Where download and eviction locks live: in this process, or in Redis
//! (the default when `--cache-redis-addrs` is set) with its connection,
//! retry and degraded-mode options.

use std::time::Duration;

use ncps_core::Result;

use crate::error::invalid;
use crate::options::{LockBackend, Secret, ServeOptions};

/// The lock backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockSettings {
    /// In this process only.
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisSettings),
}

/// Redis and how locks use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `--cache-redis-addrs`, trimmed, none empty.
    pub addrs: Vec<String>,
    /// `--cache-redis-username`.
    pub username: Option<String>,
    /// `--cache-redis-password`.
    pub password: Option<Secret>,
    /// `--cache-redis-db` (0 with a Redis Cluster).
    pub db: i64,
    /// `--cache-redis-use-tls`.
    pub use_tls: bool,
    /// `--cache-redis-pool-size`, at least 1.
    pub pool_size: usize,
    /// `--cache-lock-redis-key-prefix`.
    pub key_prefix: String,
    /// `--cache-lock-retry-max-attempts`, at least 1.
    pub retry_max_attempts: u32,
    /// `--cache-lock-retry-initial-delay`.
    pub retry_initial_delay: Duration,
    /// `--cache-lock-retry-max-delay`.
    pub retry_max_delay: Duration,
    /// `--cache-lock-retry-jitter`.
    pub retry_jitter: bool,
    /// `--cache-lock-allow-degraded-mode`.
    pub allow_degraded_mode: bool,
}

impl LockSettings {
    pub(crate) fn from_options(options: &ServeOptions) -> Result<Self> {
        let addrs: Vec<String> = options
            .cache_redis_addrs
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let backend = options.cache_lock_backend.unwrap_or(if addrs.is_empty() {
            LockBackend::Local
        } else {
            LockBackend::Redis
        });
        match backend {
            LockBackend::Local if !cfg!(feature = "local-lock") => Err(invalid(
                "--cache-lock-backend",
                "local: built without local locks (feature `local-lock`)",
            )),
            LockBackend::Local => Ok(LockSettings::Local),
            LockBackend::Redis if !cfg!(feature = "redis-lock") => Err(invalid(
                "--cache-lock-backend",
                "redis: built without Redis locks (feature `redis-lock`)",
            )),
            LockBackend::Redis if addrs.is_empty() => Err(invalid(
                "--cache-lock-backend",
                "redis needs --cache-redis-addrs",
            )),
            LockBackend::Redis => {
                RedisSettings::from_options(options, addrs).map(LockSettings::Redis)
            }
        }
    }
}

impl RedisSettings {
    fn from_options(options: &ServeOptions, addrs: Vec<String>) -> Result<Self> {
        let db = options.cache_redis_db;
        if db < 0 {
            return Err(invalid("--cache-redis-db", format!("{db} is negative")));
        }
        if db != 0 && addrs.len() > 1 {
            return Err(invalid(
                "--cache-redis-db",
                format!("{db}: a Redis Cluster (several --cache-redis-addrs) has only database 0"),
            ));
        }
        if options.cache_redis_pool_size == 0 {
            return Err(invalid("--cache-redis-pool-size", "must be at least 1"));
        }
        if options.cache_lock_retry_max_attempts == 0 {
            return Err(invalid(
                "--cache-lock-retry-max-attempts",
                "must be at least 1",
            ));
        }
        Ok(RedisSettings {
            addrs,
            username: options.cache_redis_username.clone(),
            password: options.cache_redis_password.clone(),
            db,
            use_tls: options.cache_redis_use_tls,
            pool_size: options.cache_redis_pool_size,
            key_prefix: options.cache_lock_redis_key_prefix.clone(),
            retry_max_attempts: options.cache_lock_retry_max_attempts,
            retry_initial_delay: options.cache_lock_retry_initial_delay,
            retry_max_delay: options.cache_lock_retry_max_delay,
            retry_jitter: options.cache_lock_retry_jitter,
            allow_degraded_mode: options.cache_lock_allow_degraded_mode,
        })
    }
}
