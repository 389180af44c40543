//! Least-recently-used eviction: keeps the NARs in storage under a size
//! limit by removing the paths used longest ago.
//!
//! A run takes the cluster-wide lock [`LRU_LOCK_KEY`] (skipping the run if
//! another instance holds it), writes this instance's access log, adds up
//! what storage holds from the database, and removes least recently used
//! NARs (their bytes, their record and the narinfos naming them) until the
//! total is under the limit. It never removes:
//!
//! - a NAR in the closure of a pin (see [`crate::pins`]);
//! - a NAR whose download lock is held (being downloaded or removed elsewhere);
//! - a NAR this instance is reading from storage for a client;
//! - a NAR used within [`EvictionOptions::min_age`]: every instance writes
//!   its reads at least every [`crate::cache::ACCESS_FLUSH_INTERVAL`], and
//!   counts a NAR still being read as used at each write, so a NAR another
//!   instance is serving is always that recent.
//!
//! An evicted path is fetched again from its upstream when next asked for.

use std::sync::Arc;
use std::time::Duration;

use crate::access_log::{AccessLog, counter};
use crate::lock::{EVICTION_KEY, LockKey};
use crate::pins::pinned_closure;
use crate::{Lock, MetadataDb, NarStorage, Result, Storage, StoredNar, now};

/// The lock key of eviction runs, shared by every instance ([`LockKey::Eviction`]).
pub const LRU_LOCK_KEY: &str = EVICTION_KEY;

/// [`EvictionOptions::min_age`] unless told otherwise.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(5 * 60);

/// [`EvictionOptions::lock_ttl`] unless told otherwise (ncps's `--cache-lock-lru-ttl`).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// How many NARs are read from the database at a time.
const PAGE: usize = 500;

/// The backends a cache runs on, for the tools that work on them without a
/// running engine (`ncps-cli gc`, `fsck`).
#[derive(Clone, Debug)]
pub struct Backends {
    /// Where NAR bytes live.
    pub storage: Arc<dyn Storage>,
    /// The metadata database.
    pub db: Arc<dyn MetadataDb>,
    /// The locks, shared with the servers when they share them.
    pub lock: Arc<dyn Lock>,
}

/// How an eviction run behaves.
#[derive(Clone, Debug)]
pub struct EvictionOptions {
    /// The most bytes of NARs to keep in storage.
    pub max_size: u64,
    /// NARs used more recently than this are kept even over the limit.
    pub min_age: Duration,
    /// How long the eviction lock is held without being extended (it is
    /// extended while the run goes on).
    pub lock_ttl: Duration,
    /// The TTL of the download lock taken on each NAR while it is removed.
    pub download_lock_ttl: Duration,
    /// Only say what would go.
    pub dry_run: bool,
}

impl EvictionOptions {
    /// Keep at most `max_size` bytes, with the default ages and TTLs.
    pub fn new(max_size: u64) -> Self {
        EvictionOptions {
            max_size,
            min_age: DEFAULT_MIN_AGE,
            lock_ttl: DEFAULT_LOCK_TTL,
            download_lock_ttl: Duration::from_secs(300),
            dry_run: false,
        }
    }
}

/// A NAR an eviction run removed (or, dry, would remove).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictedNar {
    /// Its file name under `nar/`.
    pub file: String,
    /// Its size in storage.
    pub size: u64,
    /// When it was last used, in seconds since the epoch.
    pub last_accessed_at: i64,
    /// The store paths whose narinfos named it (removed with it).
    pub store_paths: Vec<String>,
}

/// What an eviction run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvictionReport {
    /// Whether it ran: `false` when another instance held the eviction lock.
    pub ran: bool,
    /// Whether it only said what would go.
    pub dry_run: bool,
    /// The limit.
    pub max_size: u64,
    /// Bytes of NARs in storage before.
    pub bytes_before: u64,
    /// Bytes of NARs in storage after (or, dry, that would be left).
    pub bytes_after: u64,
    /// NARs in storage before.
    pub nars_before: u64,
    /// What went, least recently used first.
    pub evicted: Vec<EvictedNar>,
    /// NARs passed over because a pin's closure holds them.
    pub skipped_pinned: u64,
    /// NARs passed over because they were being downloaded, read or removed.
    pub skipped_busy: u64,
    /// NARs that could not be removed (storage or database errors; logged).
    pub failed: u64,
    /// Whether the run stopped at NARs used within the minimum age while
    /// still over the limit.
    pub stopped_at_recent: bool,
}

impl EvictionReport {
    /// Bytes freed (or, dry, that would be).
    pub fn freed_bytes(&self) -> u64 {
        self.evicted.iter().map(|n| n.size).sum()
    }

    /// Whether storage is within the limit now.
    pub fn within_limit(&self) -> bool {
        self.bytes_after <= self.max_size
    }
}

/// Runs eviction on `backends` from outside a server (`ncps-cli gc`): as
/// [`crate::Cache::evict`], without an engine's access log.
pub async fn evict(backends: &Backends, options: &EvictionOptions) -> Result<EvictionReport> {
    run(backends, None, options, &|_| {}).await
}

/// [`evict`], calling `progress` after each NAR it removes.
pub async fn evict_with_progress(
    backends: &Backends,
    options: &EvictionOptions,
    progress: &(dyn Fn(&EvictedNar) + Sync),
) -> Result<EvictionReport> {
    run(backends, None, options, progress).await
}

/// Looks up in storage every NAR whose storage the database does not know
/// (recorded before it tracked that, or copied from another database), and
/// records what it finds. NARs being downloaded are left for a later run.
/// Returns how many it looked up.
pub async fn reconcile_storage(backends: &Backends, download_lock_ttl: Duration) -> Result<u64> {
    Ok(reconcile(backends, download_lock_ttl).await?.0)
}

/// [`reconcile_storage`]: how many it looked up, and how many of those (and
/// their bytes) it found stored.
pub(crate) async fn reconcile(
    backends: &Backends,
    download_lock_ttl: Duration,
) -> Result<(u64, u64, u64)> {
    let (mut stored, mut stored_bytes) = (0, 0);
    let mut checked = 0;
    let mut busy = std::collections::HashSet::new();
    loop {
        let files = backends.db.nars_of_unknown_storage(PAGE).await?;
        if files.iter().all(|f| busy.contains(f)) {
            break;
        }
        for file in files {
            if busy.contains(&file) {
                continue;
            }
            let key = format!("nar/{file}");
            let Some(guard) = backends
                .lock
                .try_acquire_key(&LockKey::download_of(&key), download_lock_ttl)
                .await?
            else {
                busy.insert(file);
                continue;
            };
            let found = guard
                .release_after(async {
                    let found = backends.storage.head(&key).await?;
                    let storage = found.map_or(NarStorage::Absent, NarStorage::Stored);
                    backends.db.set_nar_storage(&file, storage).await?;
                    Ok(found)
                })
                .await?;
            if let Some(size) = found {
                stored += 1;
                stored_bytes += size;
            }
            checked += 1;
        }
    }
    if checked > 0 {
        tracing::info!(checked, "looked up NARs of unknown storage");
    }
    Ok((checked, stored, stored_bytes))
}

/// One run; `access` is the running engine's log, if any.
pub(crate) async fn run(
    backends: &Backends,
    access: Option<&AccessLog>,
    options: &EvictionOptions,
    progress: &(dyn Fn(&EvictedNar) + Sync),
) -> Result<EvictionReport> {
    let mut report = EvictionReport {
        dry_run: options.dry_run,
        max_size: options.max_size,
        ..EvictionReport::default()
    };
    let Some(guard) = backends
        .lock
        .try_acquire_key(&LockKey::Eviction, options.lock_ttl)
        .await?
    else {
        tracing::info!("another instance is evicting; skipping this run");
        return Ok(report);
    };
    report.ran = true;
    let work = evict_under_lock(backends, access, options, progress, &mut report);
    let result = guard.hold_while(work, options.lock_ttl).await;
    guard.release_after(async { result }).await?;
    let freed = report.freed_bytes();
    if report.dry_run {
        tracing::info!(
            would_evict = report.evicted.len(),
            would_free = freed,
            "eviction dry run"
        );
    } else if !report.evicted.is_empty() || !report.within_limit() {
        tracing::info!(
            evicted = report.evicted.len(),
            freed,
            bytes = report.bytes_after,
            max_size = report.max_size,
            skipped_pinned = report.skipped_pinned,
            skipped_busy = report.skipped_busy,
            "eviction run"
        );
    }
    if !report.within_limit() {
        tracing::warn!(
            bytes = report.bytes_after,
            max_size = report.max_size,
            stopped_at_recent = report.stopped_at_recent,
            "still over --cache-max-size: what is left is pinned, in use or used too recently"
        );
    }
    Ok(report)
}

async fn evict_under_lock(
    backends: &Backends,
    access: Option<&AccessLog>,
    options: &EvictionOptions,
    progress: &(dyn Fn(&EvictedNar) + Sync),
    report: &mut EvictionReport,
) -> Result<()> {
    let db = backends.db.as_ref();
    reconcile_storage(backends, options.download_lock_ttl).await?;
    let usage = db.storage_usage().await?;
    report.bytes_before = usage.stored_bytes;
    report.nars_before = usage.stored_nars;
    let mut bytes = usage.stored_bytes;
    if bytes <= options.max_size {
        report.bytes_after = bytes;
        return Ok(());
    }
    let protected = pinned_closure(db).await?.nar_files;
    let newest = now() - i64::try_from(options.min_age.as_secs()).unwrap_or(i64::MAX);
    let mut after: Option<(i64, String)> = None;
    'pages: while bytes > options.max_size {
        let page = db
            .stored_nars_by_last_access(after.as_ref().map(|(at, f)| (*at, f.as_str())), PAGE)
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.last_accessed_at, last.file.clone()));
        for nar in page {
            if bytes <= options.max_size {
                break 'pages;
            }
            if nar.last_accessed_at > newest {
                report.stopped_at_recent = true;
                break 'pages;
            }
            if protected.contains(&nar.file) {
                report.skipped_pinned += 1;
                continue;
            }
            if access.is_some_and(|a| a.is_read(&nar.file)) {
                report.skipped_busy += 1;
                continue;
            }
            match evict_one(backends, &nar, options).await {
                Ok(Some(evicted)) => {
                    bytes = bytes.saturating_sub(evicted.size);
                    progress(&evicted);
                    report.evicted.push(evicted);
                }
                Ok(None) => report.skipped_busy += 1,
                Err(e) => {
                    tracing::warn!(file = %nar.file, error = %e, "cannot evict a NAR");
                    report.failed += 1;
                }
            }
        }
    }
    report.bytes_after = bytes;
    if !options.dry_run && !report.evicted.is_empty() {
        let deltas = [
            (
                counter::EVICTED_NARS.to_owned(),
                report.evicted.len() as i64,
            ),
            (
                counter::EVICTED_BYTES.to_owned(),
                i64::try_from(report.freed_bytes()).unwrap_or(i64::MAX),
            ),
        ];
        if let Err(e) = db.add_counters(&deltas).await {
            tracing::warn!(error = %e, "cannot count evicted NARs");
        }
    }
    Ok(())
}

/// Removes one NAR (bytes first, then the narinfos naming it, then its
/// record) under its download lock; `None` if the lock is held.
async fn evict_one(
    backends: &Backends,
    nar: &StoredNar,
    options: &EvictionOptions,
) -> Result<Option<EvictedNar>> {
    let db = backends.db.as_ref();
    let hashes = db.narinfos_of_nar(&nar.file).await?;
    let mut store_paths = Vec::new();
    for hash in &hashes {
        let path = db
            .get_narinfo(hash)
            .await?
            .and_then(|r| {
                r.narinfo
                    .lines()
                    .find_map(|l| l.strip_prefix("StorePath: ").map(str::to_owned))
            })
            .unwrap_or_else(|| hash.clone());
        store_paths.push(path);
    }
    let evicted = EvictedNar {
        file: nar.file.clone(),
        size: nar.size,
        last_accessed_at: nar.last_accessed_at,
        store_paths,
    };
    if options.dry_run {
        return Ok(Some(evicted));
    }
    let key = format!("nar/{}", nar.file);
    let Some(guard) = backends
        .lock
        .try_acquire_key(&LockKey::download_of(&key), options.download_lock_ttl)
        .await?
    else {
        return Ok(None);
    };
    guard
        .release_after(async {
            // Bytes first: until the records go, a request finds the record and
            // fetches the NAR again from its upstream rather than failing.
            backends.storage.delete(&key).await?;
            for hash in &hashes {
                db.delete_narinfo(hash).await?;
            }
            db.delete_nar(&nar.file).await
        })
        .await?;
    tracing::debug!(file = %nar.file, size = nar.size, paths = ?evicted.store_paths, "evicted");
    Ok(Some(evicted))
}
