//! Builds the cache engine, and the state the routes see, from the
//! settings: the files they name ([`ncps_config::load()`]) and the backends
//! they open ([`ncps_config::open()`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ncps_config::{Loaded, Settings};
use ncps_core::eviction::Backends;
use ncps_core::upstream::Upstream;
use ncps_core::{Cache, CacheOptions, Result, SigningKey};

use crate::metrics::ServerMetrics;
use crate::service::AppState;

/// Reads the files `settings` name, asks every upstream for its priority,
/// opens the backends and builds the engine on them. Any invalid option is
/// an [`ncps_core::Error::InvalidInput`] naming it.
pub async fn build(settings: &Settings) -> Result<AppState> {
    let Loaded {
        signing_key,
        upstreams,
    } = ncps_config::load(settings)?;
    let upstreams = discover_priorities(upstreams).await;
    let backends = ncps_config::open(settings).await?;
    build_on(settings, signing_key, upstreams, backends).await
}

/// Asks every upstream for its priority at once, so a dead one delays the
/// start by one timeout at most.
async fn discover_priorities(
    upstreams: Vec<(Upstream, ncps_core::upstream::UpstreamConfig)>,
) -> Vec<Upstream> {
    futures::future::join_all(upstreams.into_iter().map(|(mut upstream, config)| async move {
        upstream.discover_priority(&config).await;
        tracing::info!(url = %upstream.url(), priority = upstream.priority(), keys = ?upstream.public_keys(), "upstream");
        upstream
    }))
    .await
}

/// The engine on `backends`, its background tasks started, and the state
/// the routes see.
async fn build_on(
    settings: &Settings,
    signing_key: Option<SigningKey>,
    upstreams: Vec<Upstream>,
    backends: Backends,
) -> Result<AppState> {
    let hostname = settings.server.hostname.clone();
    let Backends { storage, lock, db } = backends;
    let signing_key = match signing_key {
        Some(key) => key,
        None => Cache::signing_key_from_db(db.as_ref(), &hostname).await?,
    };
    let cache_options = CacheOptions {
        sign_narinfo: settings.cache.sign_narinfo,
        download_lock_ttl: settings.cache.download_lock_ttl,
        negative_ttl: settings.cache.negative_narinfo_ttl,
        temp_dir: writable_temp_dir(&settings.cache.temp_dir)?,
        advertise_url: settings.server.advertise_url.clone(),
        peer_token: settings
            .server
            .get_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .filter(|t| !t.is_empty()),
        ..CacheOptions::default()
    };
    let writes = settings.writes.clone();
    let tokens = crate::auth::Tokens::from_settings(&settings.server);
    let cache = Cache::new(storage, lock, db, upstreams, signing_key, cache_options);
    crate::housekeeping::start(&cache, settings.cache.eviction(), &writes, &tokens);
    tracing::info!(public_key = %cache.public_key(), data_dir = %settings.data_dir.display(), "cache ready");
    let metrics = if settings.server.prometheus_enabled {
        Some(metrics(&cache).await)
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

/// `--cache-temp-path`, created and checked to take files.
fn writable_temp_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .and_then(|()| tempfile::tempfile_in(dir).map(drop))
        .map_err(|e| {
            ncps_config::error::invalid(
                "--cache-temp-path",
                format!("{}: not a writable directory: {e}", dir.display()),
            )
        })?;
    Ok(dir.to_owned())
}

/// What `/metrics` serves, starting from the store totals read once here:
/// scrapes never query the database.
async fn metrics(cache: &Cache) -> Arc<ServerMetrics> {
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
    Arc::new(ServerMetrics::new(cache.metrics()))
}
