//! Upkeep: writing the access log, eviction, looking up NARs of unknown
//! storage, throwing away unfinished writes, and the readiness checks.

use std::time::Duration;

use super::Cache;
use crate::Result;
use crate::events::Event;
use crate::eviction::{self, Backends, EvictionOptions, EvictionReport};
use crate::lock::LockKey;

impl Cache {
    /// The backends, as the tools that work on them without an engine take
    /// them (eviction, fsck).
    fn backends(&self) -> Backends {
        Backends {
            storage: self.inner.blobs.storage().clone(),
            db: self.inner.index.db().clone(),
            lock: self.inner.lock.clone(),
        }
    }

    /// Writes what was served since the last call (access times, counters)
    /// to the database in one batch. On failure the batch is kept for the
    /// next call.
    pub async fn flush_access_log(&self) -> Result<()> {
        let fetcher = &self.inner.fetcher;
        let upstream_of = |url: &str| fetcher.upstream_of(url);
        let db = self.inner.index.db();
        self.inner.access.flush(db.as_ref(), &upstream_of).await
    }

    /// Runs eviction now (see [`crate::eviction`]): writes this instance's
    /// access log first, and never removes a NAR it is serving from storage.
    pub async fn evict(&self, options: &EvictionOptions) -> Result<EvictionReport> {
        if let Err(e) = self.flush_access_log().await {
            // Eviction may then see older access times; min_age covers that.
            tracing::warn!(error = %e, "cannot write access times before eviction");
        }
        let access = Some(self.inner.access.as_ref());
        let report = eviction::run(&self.backends(), access, options, &|_| {}).await?;
        if !report.dry_run {
            for path in report.evicted.iter().flat_map(|n| &n.store_paths) {
                // `/nix/store/<hash>-<name>`, or the bare hash.
                let base = path.rsplit('/').next().unwrap_or(path);
                self.inner
                    .index
                    .forget_hot(base.split('-').next().unwrap_or(base));
            }
        }
        if report.ran && !report.dry_run {
            let paths: usize = report.evicted.iter().map(|n| n.store_paths.len()).sum();
            self.inner.observers.emit(Event::Evicted {
                paths: paths as u64,
                nars: report.evicted.len() as u64,
                bytes: report.freed_bytes(),
            });
        }
        Ok(report)
    }

    /// [`eviction::reconcile_storage`] on this engine's backends.
    pub async fn reconcile_storage(&self) -> Result<u64> {
        let ttl = self.inner.options.download_lock_ttl;
        let (checked, nars, bytes) = eviction::reconcile(&self.backends(), ttl).await?;
        // The store gauges did not count NARs of unknown storage.
        self.inner.observers.emit(Event::NarsFound { nars, bytes });
        Ok(checked)
    }

    /// Throws away unfinished writes that no one is doing any more (what a
    /// crashed instance left in storage): those the backend knows are dead,
    /// and those of a key whose download lock is free that started at least
    /// [`crate::CacheOptions::incomplete_min_age`] ago. Returns how many went.
    pub async fn clean_incomplete(&self) -> Result<usize> {
        let options = &self.inner.options;
        self.inner
            .blobs
            .clean_incomplete(
                self.inner.lock.as_ref(),
                options.download_lock_ttl,
                options.incomplete_min_age,
            )
            .await
    }

    /// Checks each backend the way a request would use it: the database
    /// answers, storage answers a lookup, the lock backend hands out and takes
    /// back a lock. Returns each part's name with its failure, if any.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<()>)> {
        let db = self.inner.index.db().ping();
        let storage = async {
            self.inner
                .blobs
                .head("nar/readiness-probe.nar")
                .await
                .map(drop)
        };
        let lock = async {
            let ttl = Duration::from_secs(5);
            // Held by a concurrent probe counts as working.
            match self
                .inner
                .lock
                .try_acquire_key(&LockKey::ReadinessProbe, ttl)
                .await?
            {
                Some(guard) => guard.release().await,
                None => Ok(()),
            }
        };
        let (db, storage, lock) = tokio::join!(db, storage, lock);
        vec![("database", db), ("storage", storage), ("lock", lock)]
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.inner.index.db().ping().await
    }
}
