//! The background work of a cache kept for a team: writing access times in
//! batches, looking up NARs of unknown storage once, and eviction on its
//! schedule; and warnings at start about writes open to anyone.

use ncps_config::byte_size::format_size;
use ncps_core::Cache;
use ncps_core::cache::ACCESS_FLUSH_INTERVAL;
use ncps_core::eviction::EvictionOptions;

use crate::auth::Tokens;
use crate::lru_schedule::{self, Schedule};
use crate::writes::WriteOptions;

/// Starts the background tasks of `cache`.
pub fn start(
    cache: &Cache,
    eviction: Option<(Schedule, EvictionOptions)>,
    writes: &WriteOptions,
    tokens: &Tokens,
) {
    cache.spawn_access_flush(ACCESS_FLUSH_INTERVAL);
    // NARs recorded before the database tracked what storage holds, once.
    let reconciling = cache.clone();
    tokio::spawn(async move {
        if let Err(e) = reconciling.reconcile_storage().await {
            tracing::warn!(error = %e, "cannot look up NARs of unknown storage; eviction will retry");
        }
    });
    match eviction {
        Some((schedule, options)) => {
            tracing::info!(
                max_size = %format_size(options.max_size),
                schedule = ?schedule,
                min_age = ?options.min_age,
                "LRU eviction on"
            );
            lru_schedule::spawn(cache.clone(), schedule, options);
        }
        None => tracing::info!("no --cache-max-size: the cache grows without limit"),
    }
    if (writes.allow_put || writes.allow_delete) && tokens.writes_open() {
        tracing::warn!(
            "uploads or deletes are on without --cache-put-token or --cache-get-token: anyone who reaches this server can change it"
        );
    }
    if writes.allow_put && !writes.upload_policy.require_trusted_signature {
        tracing::info!(
            "uploads are accepted without a trusted signature (--cache-require-trusted-signature is off); their NARs are still checked"
        );
    }
}
