//! The background task that runs [`Cache::evict`] on the schedule of
//! `--cache-lru-schedule` (parsed by [`ncps_config::schedule`]).

use ncps_core::Cache;
use ncps_core::eviction::EvictionOptions;

pub use ncps_config::schedule::Schedule;

/// Runs eviction with `options` on `schedule`, in the background. A run that
/// fails is logged and the schedule goes on.
pub fn spawn(
    cache: Cache,
    schedule: Schedule,
    options: EvictionOptions,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(wait) = schedule.until_next() else {
                tracing::warn!("--cache-lru-schedule has no next time; eviction stops");
                return;
            };
            tokio::time::sleep(wait).await;
            if let Err(e) = cache.evict(&options).await {
                tracing::error!(error = %e, "eviction run failed");
            }
        }
    })
}
