//! The engine's background work, started by one call ([`Cache::start`]):
//! writing the access log, checking the upstreams' health, throwing away
//! unfinished writes, looking up NARs of unknown storage once, and eviction
//! on a schedule. The [`Background`] handle stops it all when dropped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{ACCESS_FLUSH_INTERVAL, Cache};
use crate::eviction::EvictionOptions;

/// How often the upstreams' health is checked unless told otherwise.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// How often unfinished writes are looked for unless told otherwise.
pub const CLEANUP_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// When eviction runs: how long from now until the next run, asked again
/// after each run; `None` stops eviction.
pub type NextRun = Arc<dyn Fn() -> Option<Duration> + Send + Sync>;

/// Which background work [`Cache::start`] starts. Each interval `None`
/// leaves that work to the embedder.
#[derive(Clone)]
pub struct BackgroundOptions {
    /// How often the access log is written to the database
    /// ([`Cache::flush_access_log`]).
    pub access_flush: Option<Duration>,
    /// How often every upstream's health is checked, so an upstream that
    /// went down is used again as soon as it is back.
    pub health_checks: Option<Duration>,
    /// How often unfinished writes are thrown away
    /// ([`Cache::clean_incomplete`]), the first time at once.
    pub cleanup: Option<Duration>,
    /// Whether NARs of unknown storage are looked up once, at start
    /// ([`Cache::reconcile_storage`]).
    pub reconcile_storage: bool,
    /// Eviction with these options, run when the schedule says.
    pub eviction: Option<(NextRun, EvictionOptions)>,
}

impl Default for BackgroundOptions {
    /// Everything but eviction, at the intervals ncps-server uses.
    fn default() -> Self {
        BackgroundOptions {
            access_flush: Some(ACCESS_FLUSH_INTERVAL),
            health_checks: Some(HEALTH_CHECK_INTERVAL),
            cleanup: Some(CLEANUP_INTERVAL),
            reconcile_storage: true,
            eviction: None,
        }
    }
}

impl fmt::Debug for BackgroundOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundOptions")
            .field("access_flush", &self.access_flush)
            .field("health_checks", &self.health_checks)
            .field("cleanup", &self.cleanup)
            .field("reconcile_storage", &self.reconcile_storage)
            .field("eviction", &self.eviction.as_ref().map(|(_, o)| o))
            .finish()
    }
}

/// The background work of one [`Cache::start`]: stopped by [`Background::stop`]
/// or when dropped, unless detached.
#[derive(Debug)]
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Stops the work now (a task in the middle of its work stops there).
    pub fn stop(mut self) {
        self.abort();
    }

    /// Lets the work run for as long as the runtime does.
    pub fn detach(mut self) {
        self.tasks.clear();
    }

    fn abort(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.abort();
    }
}

impl Cache {
    /// Starts the background work `options` asks for, on the current Tokio
    /// runtime.
    pub fn start(&self, options: BackgroundOptions) -> Background {
        let mut tasks = Vec::new();
        if let Some(interval) = options.access_flush {
            tasks.push(self.spawn_access_flush(interval));
        }
        if let Some(interval) = options.health_checks {
            tasks.push(self.spawn_health_checks(interval));
        }
        if let Some(interval) = options.cleanup {
            tasks.push(self.spawn_cleanup(interval));
        }
        if options.reconcile_storage {
            let cache = self.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = cache.reconcile_storage().await {
                    tracing::warn!(error = %e, "cannot look up NARs of unknown storage; eviction will retry");
                }
            }));
        }
        if let Some((next, eviction)) = options.eviction {
            tasks.push(self.spawn_eviction(next, eviction));
        }
        Background { tasks }
    }

    /// Runs [`Cache::flush_access_log`] every `interval`, in the background.
    pub fn spawn_access_flush(&self, interval: Duration) -> JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = cache.flush_access_log().await {
                    tracing::warn!(error = %e, "cannot write access times; keeping them for the next try");
                }
            }
        })
    }

    /// Checks every upstream's health every `interval`, in the background,
    /// so an upstream that went down is used again as soon as it is back.
    pub fn spawn_health_checks(&self, interval: Duration) -> JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                cache.check_upstreams().await;
            }
        })
    }

    /// Runs [`Cache::clean_incomplete`] now and then every `interval`, in the background.
    pub fn spawn_cleanup(&self, interval: Duration) -> JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = cache.clean_incomplete().await {
                    tracing::warn!(error = %e, "cannot look for unfinished writes");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Runs eviction with `options` whenever `next` says, in the background.
    /// A run that fails is logged and the schedule goes on.
    pub fn spawn_eviction(&self, next: NextRun, options: EvictionOptions) -> JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                let Some(wait) = next() else {
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
}
