//! The background work of a cache kept for a team, which the engine runs
//! ([`Cache::start`]): writing access times in batches, upstream health
//! checks, cleanup of unfinished writes, looking up NARs of unknown storage
//! once, and eviction on its schedule; and warnings at start about writes
//! open to anyone.

use std::sync::Arc;

use ncps_config::WritePolicy;
use ncps_config::byte_size::format_size;
use ncps_config::schedule::Schedule;
use ncps_core::eviction::EvictionOptions;
use ncps_core::{BackgroundOptions, Cache};

use crate::auth::Tokens;

/// Starts the background tasks of `cache`.
pub fn start(
    cache: &Cache,
    eviction: Option<(Schedule, EvictionOptions)>,
    writes: &WritePolicy,
    tokens: &Tokens,
) {
    let eviction = match eviction {
        Some((schedule, options)) => {
            tracing::info!(
                max_size = %format_size(options.max_size),
                schedule = ?schedule,
                min_age = ?options.min_age,
                "LRU eviction on"
            );
            // The engine's eviction task asks the schedule for its next run.
            let next_run: ncps_core::cache::NextRun = Arc::new(move || schedule.until_next());
            Some((next_run, options))
        }
        None => {
            tracing::info!("no --cache-max-size: the cache grows without limit");
            None
        }
    };
    // NARs recorded before the database tracked what storage holds are
    // looked up once; the work runs as long as the server.
    cache
        .start(BackgroundOptions {
            eviction,
            ..BackgroundOptions::default()
        })
        .detach();
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
