//! When eviction runs: `--cache-lru-schedule` (parsed by
//! [`ncps_config::schedule`]), as the engine's background work asks for its
//! next run ([`ncps_core::Cache::start`]).

use std::sync::Arc;

use ncps_core::cache::NextRun;

pub use ncps_config::schedule::Schedule;

/// The schedule as the engine's eviction task asks it.
pub fn next_run(schedule: Schedule) -> NextRun {
    Arc::new(move || schedule.until_next())
}
