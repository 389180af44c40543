//! [`open`]: the storage, locks and database that [`Settings`] name, opened
//! as `serve` opens them, so every tool working on a cache (the server,
//! `ncps-cli gc`, `fsck`, `stats`, ...) finds the same one.

use std::sync::Arc;

use ncps_core::eviction::Backends;
use ncps_core::{Error, Lock, MetadataDb, Result, Storage};

use crate::error::invalid;
use crate::lock::LockSettings;
use crate::settings::Settings;
use crate::storage::StorageSettings;

/// Opens the backends of `settings`: storage (creating a local directory),
/// locks (asking Redis once; one that does not answer leaves the server
/// starting anyway) and the database (created and migrated). A server
/// that cannot be reached is [`Error::Unavailable`]; any other failure is
/// an [`Error::InvalidInput`] naming the option.
pub async fn open(settings: &Settings) -> Result<Backends> {
    Ok(Backends {
        storage: open_storage(&settings.storage).await?,
        lock: open_lock(&settings.lock, settings.server.advertise_url.as_deref()).await?,
        db: open_db(&settings.database.url, settings.database.max_open_conns).await?,
    })
}

async fn open_storage(storage: &StorageSettings) -> Result<Arc<dyn Storage>> {
    match storage {
        StorageSettings::S3(s3) => s3::open(s3).await,
        StorageSettings::Local(dir) => open_local_storage(dir),
    }
}

/// S3 storage; its errors name the bucket and endpoint, never the secret.
#[cfg(feature = "s3")]
mod s3 {
    use super::*;
    use crate::storage::S3Settings;

    pub(super) async fn open(s3: &S3Settings) -> Result<Arc<dyn Storage>> {
        let config = ncps_store::S3Config {
            bucket: s3.bucket.clone(),
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            force_path_style: s3.force_path_style,
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.as_ref().map(|s| s.expose().to_owned()),
            prefix: s3.prefix.clone(),
            proxy: ncps_store::S3Proxy::from_env(),
        };
        let storage = ncps_store::S3Storage::new(config)
            .await
            .map_err(|e| match e {
                Error::Unavailable(why) => {
                    Error::Unavailable(format!("--cache-storage-s3-bucket: {why}"))
                }
                e => invalid("--cache-storage-s3-bucket", e),
            })?;
        tracing::info!(
            bucket = s3.bucket,
            endpoint = s3.endpoint.as_deref().unwrap_or("AWS S3"),
            prefix = storage.prefix().unwrap_or(""),
            "S3 storage ready"
        );
        Ok(Arc::new(storage))
    }
}

#[cfg(not(feature = "s3"))]
mod s3 {
    use super::*;
    use crate::storage::S3Settings;

    pub(super) async fn open(s3: &S3Settings) -> Result<Arc<dyn Storage>> {
        Err(invalid(
            "--cache-storage-s3-bucket",
            format!("{}: built without S3 storage (feature `s3`)", s3.bucket),
        ))
    }
}

fn open_local_storage(dir: &std::path::Path) -> Result<Arc<dyn Storage>> {
    #[cfg(feature = "local-storage")]
    {
        let storage =
            ncps_store::LocalStorage::new(dir).map_err(|e| invalid("--cache-storage-local", e))?;
        Ok(Arc::new(storage))
    }
    #[cfg(not(feature = "local-storage"))]
    {
        Err(invalid(
            "--cache-storage-local",
            format!("{}: built without local storage", dir.display()),
        ))
    }
}

/// The lock backend; Redis locks are labelled with `--cache-advertise-url`.
async fn open_lock(lock: &LockSettings, label: Option<&str>) -> Result<Arc<dyn Lock>> {
    match lock {
        LockSettings::Local => open_local_lock(),
        LockSettings::Redis(redis) => redis::open(redis, label).await,
    }
}

fn open_local_lock() -> Result<Arc<dyn Lock>> {
    #[cfg(feature = "local-lock")]
    {
        Ok(Arc::new(ncps_lock::LocalLock::new()))
    }
    #[cfg(not(feature = "local-lock"))]
    {
        Err(invalid(
            "--cache-lock-backend",
            "local: built without local locks (feature `local-lock`)",
        ))
    }
}

/// Redis locks, behind the in-process fallback with
/// `--cache-lock-allow-degraded-mode`. Redis is asked once: if it cannot
/// answer, the server starts anyway (lock calls answer 503 until it is
/// back, or lock in-process in degraded mode); if it refuses us (a wrong
/// password or database), that is an invalid option.
#[cfg(feature = "redis-lock")]
mod redis {
    use super::*;
    use crate::lock::RedisSettings;

    pub(super) async fn open(redis: &RedisSettings, label: Option<&str>) -> Result<Arc<dyn Lock>> {
        let lock = ncps_lock::RedisLock::new(ncps_lock::RedisLockOptions {
            addrs: redis.addrs.clone(),
            username: redis.username.clone(),
            password: redis.password.as_ref().map(|s| s.expose().to_owned()),
            db: redis.db,
            use_tls: redis.use_tls,
            pool_size: redis.pool_size,
            key_prefix: redis.key_prefix.clone(),
            retry: ncps_lock::RetryPolicy {
                max_attempts: redis.retry_max_attempts,
                initial_delay: redis.retry_initial_delay,
                max_delay: redis.retry_max_delay,
                jitter: redis.retry_jitter,
            },
            label: label.map(str::to_owned),
        })
        .map_err(|e| invalid("--cache-redis-addrs", e))?;
        let degraded_mode = redis.allow_degraded_mode;
        match lock.ping().await {
            Ok(()) => tracing::info!(
                addrs = lock.addrs(),
                key_prefix = %redis.key_prefix,
                degraded_mode,
                "Redis locks ready"
            ),
            Err(Error::Unavailable(why)) if degraded_mode => tracing::warn!(
                error = %why,
                "Redis is unavailable at start: locking within this instance only until it answers (degraded mode)"
            ),
            Err(Error::Unavailable(why)) => tracing::warn!(
                error = %why,
                "Redis is unavailable at start: requests that need a lock answer 503 until it answers"
            ),
            Err(e) => return Err(invalid("--cache-redis-addrs", e)),
        }
        let lock: Arc<dyn Lock> = Arc::new(lock);
        Ok(if degraded_mode {
            Arc::new(ncps_lock::DegradableLock::new(lock))
        } else {
            lock
        })
    }
}

#[cfg(not(feature = "redis-lock"))]
mod redis {
    use super::*;
    use crate::lock::RedisSettings;

    pub(super) async fn open(
        _redis: &RedisSettings,
        _label: Option<&str>,
    ) -> Result<Arc<dyn Lock>> {
        Err(invalid(
            "--cache-lock-backend",
            "redis: built without Redis locks (feature `redis-lock`)",
        ))
    }
}

/// The metadata database by its URL's scheme (SQLite, PostgreSQL or MySQL,
/// as built), created and migrated; messages show the URL with its
/// password hidden.
async fn open_db(url: &str, max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    let db = ncps_db::open(url, max_conns).await.map_err(|e| match e {
        Error::Unavailable(why) => Error::Unavailable(format!("--cache-database-url: {why}")),
        e => invalid("--cache-database-url", e),
    })?;
    tracing::info!(url = %ncps_db::redact_url(url), "database ready");
    Ok(db)
}
