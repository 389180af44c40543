//! Builds the cache engine and its backends from the serve options.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ncps_core::netrc::Netrc;
use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions, bind_keys};
use ncps_core::{Cache, CacheOptions, Error, Lock, MetadataDb, Result, SigningKey, Storage};

use crate::metrics::ServerMetrics;
use crate::options::{DEFAULT_UPSTREAM, DEFAULT_UPSTREAM_KEY, LockBackend, ServeOptions};
use crate::service::AppState;

/// The netrc file of `--netrc-file`, or `~/.netrc` when it exists.
pub(crate) fn read_netrc(path: Option<&Path>) -> Result<Option<Netrc>> {
    let (path, explicit) = match path {
        Some(path) => (path.to_owned(), true),
        None => match std::env::var_os("HOME") {
            Some(home) => (PathBuf::from(home).join(".netrc"), false),
            None => return Ok(None),
        },
    };
    if !explicit && !path.exists() {
        return Ok(None);
    }
    Netrc::read(&path)
        .map(Some)
        .map_err(|e| invalid("--netrc-file", e))
}

/// The data directory used when `--cache-storage-local` is not given.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ncps");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/ncps"),
        None => PathBuf::from("ncps-data"),
    }
}

/// The machine's hostname, the default `--cache-hostname`.
pub(crate) fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ncps".to_owned())
}

/// An invalid-option error naming the option, without repeating "invalid input".
pub(crate) fn invalid(option: &str, cause: impl std::fmt::Display) -> Error {
    let cause = cause.to_string();
    let cause = cause.strip_prefix("invalid input: ").unwrap_or(&cause);
    Error::InvalidInput(format!("{option}: {cause}"))
}

/// The S3 options that only mean something with a bucket.
pub(crate) fn s3_options_given(options: &ServeOptions) -> Option<&'static str> {
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

/// Opens the NAR storage: the S3 bucket when one is given, else the local
/// directory `dir`. The two exclude each other.
async fn open_storage(options: &ServeOptions, dir: &Path) -> Result<Arc<dyn Storage>> {
    match &options.cache_storage_s3_bucket {
        Some(_) if options.cache_storage_local.is_some() => Err(invalid(
            "--cache-storage-local",
            "cannot be used with --cache-storage-s3-bucket: choose one storage",
        )),
        Some(bucket) => open_s3_storage(options, bucket).await,
        None => match s3_options_given(options) {
            Some(option) => Err(invalid(option, "needs --cache-storage-s3-bucket")),
            None => open_local_storage(dir),
        },
    }
}

/// Opens S3 storage; its errors name the bucket and endpoint, never the secret.
#[cfg(feature = "s3")]
async fn open_s3_storage(options: &ServeOptions, bucket: &str) -> Result<Arc<dyn Storage>> {
    let config = ncps_store::S3Config {
        bucket: bucket.to_owned(),
        endpoint: options.cache_storage_s3_endpoint.clone(),
        region: options.cache_storage_s3_region.clone(),
        force_path_style: options.cache_storage_s3_force_path_style,
        access_key_id: options.cache_storage_s3_access_key_id.clone(),
        secret_access_key: options
            .cache_storage_s3_secret_access_key
            .as_ref()
            .map(|s| s.expose().to_owned()),
        prefix: options.cache_storage_s3_prefix.clone(),
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
        bucket,
        endpoint = options
            .cache_storage_s3_endpoint
            .as_deref()
            .unwrap_or("AWS S3"),
        prefix = storage.prefix().unwrap_or(""),
        "S3 storage ready"
    );
    Ok(Arc::new(storage))
}

#[cfg(not(feature = "s3"))]
async fn open_s3_storage(_options: &ServeOptions, bucket: &str) -> Result<Arc<dyn Storage>> {
    Err(invalid(
        "--cache-storage-s3-bucket",
        format!("{bucket}: built without S3 storage (feature `s3`)"),
    ))
}

fn open_local_storage(dir: &Path) -> Result<Arc<dyn Storage>> {
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

/// Opens the lock backend of `--cache-lock-backend`: `redis` by default when
/// `--cache-redis-addrs` is set, else `local`.
async fn open_lock(options: &ServeOptions) -> Result<Arc<dyn Lock>> {
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
        LockBackend::Local => open_local_lock(),
        LockBackend::Redis if addrs.is_empty() => Err(invalid(
            "--cache-lock-backend",
            "redis needs --cache-redis-addrs",
        )),
        LockBackend::Redis => open_redis_lock(options, addrs).await,
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

/// Opens Redis locks labelled with `--cache-advertise-url`, behind the
/// in-process fallback with `--cache-lock-allow-degraded-mode`. Redis is
/// asked once: if it cannot answer, the server starts anyway (lock calls
/// answer 503 until it is back, or lock in-process in degraded mode); if it
/// refuses us (a wrong password or database), that is an invalid option.
#[cfg(feature = "redis-lock")]
async fn open_redis_lock(options: &ServeOptions, addrs: Vec<String>) -> Result<Arc<dyn Lock>> {
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
    let redis = ncps_lock::RedisLock::new(ncps_lock::RedisLockOptions {
        addrs,
        username: options.cache_redis_username.clone(),
        password: options
            .cache_redis_password
            .as_ref()
            .map(|s| s.expose().to_owned()),
        db,
        use_tls: options.cache_redis_use_tls,
        pool_size: options.cache_redis_pool_size,
        key_prefix: options.cache_lock_redis_key_prefix.clone(),
        retry: ncps_lock::RetryPolicy {
            max_attempts: options.cache_lock_retry_max_attempts,
            initial_delay: options.cache_lock_retry_initial_delay,
            max_delay: options.cache_lock_retry_max_delay,
            jitter: options.cache_lock_retry_jitter,
        },
        label: advertise_url(options)?,
    })
    .map_err(|e| invalid("--cache-redis-addrs", e))?;
    let degraded_mode = options.cache_lock_allow_degraded_mode;
    match redis.ping().await {
        Ok(()) => tracing::info!(
            addrs = redis.addrs(),
            key_prefix = %options.cache_lock_redis_key_prefix,
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
    let redis: Arc<dyn Lock> = Arc::new(redis);
    Ok(if degraded_mode {
        Arc::new(ncps_lock::DegradableLock::new(redis))
    } else {
        redis
    })
}

#[cfg(not(feature = "redis-lock"))]
async fn open_redis_lock(_options: &ServeOptions, _addrs: Vec<String>) -> Result<Arc<dyn Lock>> {
    Err(invalid(
        "--cache-lock-backend",
        "redis: built without Redis locks (feature `redis-lock`)",
    ))
}

/// Opens the metadata database by its URL's scheme (SQLite, PostgreSQL or
/// MySQL, as built). A server that cannot be reached stays
/// [`Error::Unavailable`]; messages show the URL with its password hidden.
async fn open_db(url: &str, max_conns: usize) -> Result<Arc<dyn MetadataDb>> {
    let db = ncps_db::open(url, max_conns).await.map_err(|e| match e {
        Error::Unavailable(why) => Error::Unavailable(format!("--cache-database-url: {why}")),
        e => invalid("--cache-database-url", e),
    })?;
    tracing::info!(url = %ncps_db::redact_url(url), "database ready");
    Ok(db)
}

/// `--cache-temp-path`, checked to be a writable directory.
fn temp_dir(options: &ServeOptions) -> Result<PathBuf> {
    let dir = options
        .cache_temp_path
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir)
        .and_then(|()| tempfile::tempfile_in(&dir).map(drop))
        .map_err(|e| {
            invalid(
                "--cache-temp-path",
                format!("{}: not a writable directory: {e}", dir.display()),
            )
        })?;
    Ok(dir)
}

/// `--cache-advertise-url`, checked to be an http(s) URL without a query.
pub(crate) fn advertise_url(options: &ServeOptions) -> Result<Option<String>> {
    let Some(raw) = &options.cache_advertise_url else {
        return Ok(None);
    };
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {
            Ok(Some(raw.trim_end_matches('/').to_owned()))
        }
        Ok(_) => Err(invalid(
            "--cache-advertise-url",
            format!("{raw}: must be an http:// or https:// URL without a query"),
        )),
        Err(e) => Err(invalid("--cache-advertise-url", format!("{raw}: {e}"))),
    }
}

/// Opens the storage, locks and database `options` name, as `serve` does,
/// for tools that work on a cache without serving it (`ncps-cli gc`,
/// `fsck`, `stats`): the same defaults, so they find what the server uses.
pub async fn open_backends(options: &ServeOptions) -> Result<ncps_core::eviction::Backends> {
    let data_dir = options
        .cache_storage_local
        .clone()
        .unwrap_or_else(default_data_dir);
    let database_url = options
        .cache_database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("db/db.sqlite").display()));
    Ok(ncps_core::eviction::Backends {
        storage: open_storage(options, &data_dir).await?,
        lock: open_lock(options).await?,
        db: open_db(&database_url, options.cache_database_pool_max_open_conns).await?,
    })
}

/// Builds the engine and the state the routes see. Any invalid option is an
/// [`Error::InvalidInput`] naming it.
pub async fn build(options: &ServeOptions) -> Result<AppState> {
    let hostname = options
        .cache_hostname
        .clone()
        .unwrap_or_else(machine_hostname);
    if hostname.is_empty() || hostname.contains([':', ' ', '/']) {
        return Err(invalid(
            "--cache-hostname",
            format!("{hostname:?} is not a host name"),
        ));
    }
    let data_dir = options
        .cache_storage_local
        .clone()
        .unwrap_or_else(default_data_dir);
    let database_url = options
        .cache_database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("db/db.sqlite").display()));

    let (urls, keys) = if options.cache_upstream_urls.is_empty() {
        (
            vec![DEFAULT_UPSTREAM.to_owned()],
            vec![DEFAULT_UPSTREAM_KEY.to_owned()],
        )
    } else {
        (
            options.cache_upstream_urls.clone(),
            options.cache_upstream_public_keys.clone(),
        )
    };
    let upstream_options = UpstreamOptions {
        dial_timeout: options.cache_upstream_dialer_timeout,
        response_header_timeout: options.cache_upstream_response_header_timeout,
        read_timeout: options.cache_upstream_read_timeout,
        netrc: read_netrc(options.netrc_file.as_deref())?.map(Arc::new),
    };
    let configs = urls
        .iter()
        .map(|u| UpstreamConfig::parse(u))
        .collect::<Result<Vec<_>>>()
        .map_err(|e| invalid("--cache-upstream-url", e))?;
    let configs =
        bind_keys(configs, &keys).map_err(|e| invalid("--cache-upstream-public-key", e))?;
    let upstreams = configs
        .into_iter()
        .map(|config| {
            let upstream = Upstream::new(config.clone(), upstream_options.clone())
                .map_err(|e| invalid("--cache-upstream-url", e))?;
            Ok((upstream, config))
        })
        .collect::<Result<Vec<_>>>()?;
    // Ask every upstream for its priority at once, so a dead one delays the start by one timeout at most.
    let upstreams = futures::future::join_all(upstreams.into_iter().map(|(mut upstream, config)| async move {
        upstream.discover_priority(&config).await;
        tracing::info!(url = %upstream.url(), priority = upstream.priority(), keys = ?upstream.public_keys(), "upstream");
        upstream
    }))
    .await;

    let eviction = crate::lru_schedule::from_options(options)?;
    let writes = crate::writes::WriteOptions::from_options(options)?;
    let tokens = crate::auth::Tokens::from_options(options);
    let storage = open_storage(options, &data_dir).await?;
    let lock = open_lock(options).await?;
    let db = open_db(&database_url, options.cache_database_pool_max_open_conns).await?;
    let signing_key = match &options.cache_secret_key_path {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| {
                invalid(
                    "--cache-secret-key-path",
                    format!("{}: {e}", path.display()),
                )
            })?
            .parse::<SigningKey>()
            .map_err(|e| invalid("--cache-secret-key-path", e))?,
        None => Cache::signing_key_from_db(db.as_ref(), &hostname).await?,
    };
    let cache_options = CacheOptions {
        sign_narinfo: options.cache_sign_narinfo,
        download_lock_ttl: options.cache_lock_download_ttl,
        negative_ttl: options.cache_negative_narinfo_ttl,
        temp_dir: temp_dir(options)?,
        advertise_url: advertise_url(options)?,
        peer_token: options
            .cache_get_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .filter(|t| !t.is_empty()),
        ..CacheOptions::default()
    };
    let cache = Cache::new(storage, lock, db, upstreams, signing_key, cache_options);
    crate::housekeeping::start(&cache, eviction, &writes, &tokens);
    tracing::info!(public_key = %cache.public_key(), data_dir = %data_dir.display(), "cache ready");
    let metrics = if options.prometheus_enabled {
        // Once, here: scrapes never query the database.
        match cache.load_store_totals().await {
            Ok(usage) => tracing::info!(
                paths = usage.narinfos,
                stored_nars = usage.stored_nars,
                stored_bytes = usage.stored_bytes,
                "store totals read for /metrics"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store totals; the store gauges count from 0")
            }
        }
        Some(Arc::new(ServerMetrics::new(cache.metrics())))
    } else {
        None
    };
    Ok(AppState {
        cache,
        hostname,
        metrics,
        tokens: Arc::new(tokens),
        writes: Arc::new(writes),
    })
}
