//! The engine's metrics: cache hits and misses, upstream fetches, locks,
//! what the store holds, and eviction, as Prometheus families a server
//! registers in its [`Registry`] (see [`Metrics::register`]).
//!
//! Recording is a few atomic operations, so the engine always records; a
//! scrape only reads. The store gauges (store paths, NARs in storage and
//! their bytes) are read from the database once, at start
//! ([`crate::Cache::load_store_totals`]), then moved by the engine as it
//! records paths ([`Metrics::record_added`]) and stores NARs
//! ([`Metrics::nar_stored`]), and by whatever removes them
//! ([`Metrics::record_removed`]): a scrape never queries the database.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::StorageUsage;

pub use crate::events::Kind;
use crate::events::{Event, LockOutcome, Observer};

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOnlyLabels {
    upstream: String,
}

impl EncodeLabelValue for LockOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        let value = match self {
            LockOutcome::Acquired => "acquired",
            LockOutcome::Busy => "busy",
            LockOutcome::Error => "error",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockLabels {
    kind: &'static str,
    outcome: LockOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockKindLabels {
    kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets from 1 ms to about 33 s, doubling: request, fetch and lock waits.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The engine's metric families. Cheap to record into from any task.
#[derive(Debug)]
pub struct Metrics {
    cache_hits: Family<KindLabels, Counter>,
    cache_misses: Family<KindLabels, Counter>,
    upstream_fetches: Family<UpstreamLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    upstream_duration: HistogramFamily<UpstreamLabels>,
    upstream_bytes: Family<UpstreamOnlyLabels, Counter>,
    store_paths: Gauge,
    store_nars: Gauge,
    store_nar_bytes: Gauge,
    nars_stored: Counter,
    nar_stored_bytes: Counter,
    lock_acquisitions: Family<LockLabels, Counter>,
    lock_waits: Family<LockKindLabels, Counter>,
    lock_wait_seconds: HistogramFamily<LockKindLabels>,
    eviction_runs: Counter,
    eviction_freed_bytes: Counter,
    store_totals_loads: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            upstream_fetches: Family::default(),
            upstream_errors: Family::default(),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            upstream_bytes: Family::default(),
            store_paths: Gauge::default(),
            store_nars: Gauge::default(),
            store_nar_bytes: Gauge::default(),
            nars_stored: Counter::default(),
            nar_stored_bytes: Counter::default(),
            lock_acquisitions: Family::default(),
            lock_waits: Family::default(),
            lock_wait_seconds: Family::new_with_constructor(latency_histogram),
            eviction_runs: Counter::default(),
            eviction_freed_bytes: Counter::default(),
            store_totals_loads: Counter::default(),
        };
        // Series with a fixed set of labels exist from the start, at 0, so
        // rates work before the first hit.
        for kind in [Kind::Narinfo, Kind::Nar] {
            let _ = metrics.cache_hits.get_or_create(&KindLabels { kind });
            let _ = metrics.cache_misses.get_or_create(&KindLabels { kind });
        }
        metrics
    }
}

/// The `upstream` label of an upstream: its URL without query (which may
/// hold a token) and without user info.
pub fn upstream_label(url: &url::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// What the store gauges say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreTotals {
    /// Store paths: narinfo records.
    pub paths: u64,
    /// NAR files in storage.
    pub nars: u64,
    /// Their bytes.
    pub nar_bytes: u64,
}

/// Saturating `u64` to the `i64` of a gauge.
fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every family to `registry`, under `ncps_` names (counters get
    /// `_total` when encoded).
    pub fn register(&self, registry: &mut Registry) {
        self.register_lookups(registry);
        self.register_store(registry);
    }

    /// The families of lookups and upstream fetches.
    fn register_lookups(&self, r: &mut Registry) {
        r.register(
            "ncps_cache_hits",
            "Lookups answered from this cache's database or storage, by kind (narinfo, nar)",
            self.cache_hits.clone(),
        );
        r.register(
            "ncps_cache_misses",
            "Lookups this cache could not answer from its own database or storage, by kind",
            self.cache_misses.clone(),
        );
        r.register(
            "ncps_upstream_fetches",
            "Requests to an upstream for a narinfo or a NAR, by upstream URL and kind",
            self.upstream_fetches.clone(),
        );
        r.register(
            "ncps_upstream_errors",
            "Upstream fetches that failed (connection, timeout, 5xx, bad signature, bad NAR bytes)",
            self.upstream_errors.clone(),
        );
        r.register(
            "ncps_upstream_fetch_duration_seconds",
            "Time an upstream took to answer: a whole narinfo, or a NAR's response headers",
            self.upstream_duration.clone(),
        );
        r.register(
            "ncps_upstream_received_bytes",
            "NAR bytes received from an upstream",
            self.upstream_bytes.clone(),
        );
    }

    /// The families of what the store holds, locks and eviction.
    fn register_store(&self, r: &mut Registry) {
        r.register(
            "ncps_store_paths",
            "Store paths (narinfos) the database holds; read at start, then kept up to date",
            self.store_paths.clone(),
        );
        r.register(
            "ncps_store_nars",
            "NAR files in storage; read at start, then kept up to date",
            self.store_nars.clone(),
        );
        r.register(
            "ncps_store_nar_bytes",
            "Bytes of the NAR files in storage; read at start, then kept up to date",
            self.store_nar_bytes.clone(),
        );
        r.register(
            "ncps_nars_stored",
            "NAR files this instance downloaded, checked and wrote to storage",
            self.nars_stored.clone(),
        );
        r.register(
            "ncps_nar_stored_bytes",
            "Bytes of the NAR files this instance wrote to storage",
            self.nar_stored_bytes.clone(),
        );
        r.register(
            "ncps_lock_acquisitions",
            "Lock requests, by lock kind (download, narinfo, lru, other) and outcome (acquired, busy, error)",
            self.lock_acquisitions.clone(),
        );
        r.register(
            "ncps_lock_waits",
            "Lock requests that found the lock held and waited for it",
            self.lock_waits.clone(),
        );
        r.register(
            "ncps_lock_wait_seconds",
            "How long lock requests that had to wait waited",
            self.lock_wait_seconds.clone(),
        );
        r.register(
            "ncps_eviction_runs",
            "Eviction runs completed",
            self.eviction_runs.clone(),
        );
        r.register(
            "ncps_eviction_freed_bytes",
            "Bytes of NAR files eviction removed",
            self.eviction_freed_bytes.clone(),
        );
        r.register(
            "ncps_store_totals_loads",
            "Times the store gauges were read from the database (once per start)",
            self.store_totals_loads.clone(),
        );
    }

    /// A lookup of `kind` answered locally.
    pub fn cache_hit(&self, kind: Kind) {
        self.cache_hits.get_or_create(&KindLabels { kind }).inc();
    }

    /// A lookup of `kind` that could not be answered locally.
    pub fn cache_miss(&self, kind: Kind) {
        self.cache_misses.get_or_create(&KindLabels { kind }).inc();
    }

    /// One request to `upstream` for `kind` that took `took` and did or did not fail.
    pub fn upstream_fetch(&self, upstream: &str, kind: Kind, took: Duration, failed: bool) {
        let labels = UpstreamLabels {
            upstream: upstream.to_owned(),
            kind,
        };
        self.upstream_fetches.get_or_create(&labels).inc();
        self.upstream_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.upstream_errors.get_or_create(&labels).inc();
        }
    }

    /// A fetch from `upstream` that failed after it started (its body broke
    /// off or did not check out).
    pub fn upstream_error(&self, upstream: &str, kind: Kind) {
        let labels = UpstreamLabels {
            upstream: upstream.to_owned(),
            kind,
        };
        self.upstream_errors.get_or_create(&labels).inc();
    }

    /// `bytes` of a NAR received from `upstream`.
    pub fn upstream_bytes(&self, upstream: &str, bytes: u64) {
        let labels = UpstreamOnlyLabels {
            upstream: upstream.to_owned(),
        };
        self.upstream_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Sets the store gauges to what the database holds; called once at start.
    pub fn set_store_totals(&self, usage: &StorageUsage) {
        self.store_paths.set(gauge_value(usage.narinfos));
        self.store_nars.set(gauge_value(usage.stored_nars));
        self.store_nar_bytes.set(gauge_value(usage.stored_bytes));
        self.store_totals_loads.inc();
    }

    /// Records additions: `paths` narinfo records, `nars` NAR files of
    /// `nar_bytes` bytes in all put in storage. The engine calls it as it
    /// records pulled paths (their NARs count through [`Metrics::nar_stored`]);
    /// code that adds paths another way (uploads) calls it too.
    pub fn record_added(&self, paths: u64, nars: u64, nar_bytes: u64) {
        self.store_paths.inc_by(gauge_value(paths));
        self.store_nars.inc_by(gauge_value(nars));
        self.store_nar_bytes.inc_by(gauge_value(nar_bytes));
    }

    /// Records removals: `paths` narinfo records, `nars` NAR files of
    /// `nar_bytes` bytes in all taken out of storage. For eviction and
    /// `DELETE`, so the store gauges stay right without a scan.
    pub fn record_removed(&self, paths: u64, nars: u64, nar_bytes: u64) {
        self.store_paths.dec_by(gauge_value(paths));
        self.store_nars.dec_by(gauge_value(nars));
        self.store_nar_bytes.dec_by(gauge_value(nar_bytes));
    }

    /// A NAR of `bytes` bytes downloaded and written to storage by this
    /// instance: counted, and added to the store gauges.
    pub fn nar_stored(&self, bytes: u64) {
        self.nars_stored.inc();
        self.nar_stored_bytes.inc_by(bytes);
        self.record_added(0, 1, bytes);
    }

    /// One eviction run completed, freeing `bytes_freed` bytes of NARs.
    ///
    /// This counts the run only; call [`Metrics::record_removed`] for the
    /// records it removed, so the store gauges follow.
    pub fn eviction_run(&self, bytes_freed: u64) {
        self.eviction_runs.inc();
        self.eviction_freed_bytes.inc_by(bytes_freed);
    }

    /// What the store gauges say now.
    pub fn store_totals(&self) -> StoreTotals {
        let n = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        StoreTotals {
            paths: n(&self.store_paths),
            nars: n(&self.store_nars),
            nar_bytes: n(&self.store_nar_bytes),
        }
    }

    fn lock_outcome(&self, kind: &'static str, outcome: LockOutcome) {
        self.lock_acquisitions
            .get_or_create(&LockLabels { kind, outcome })
            .inc();
    }
}

impl Observer for Metrics {
    fn observe(&self, event: &Event<'_>) {
        match *event {
            Event::NarinfoHit { .. } => self.cache_hit(Kind::Narinfo),
            Event::NarinfoMiss { .. } => self.cache_miss(Kind::Narinfo),
            // Its NAR counts once it is stored.
            Event::NarinfoFetched { .. } | Event::NarinfoUploaded { new: true } => {
                self.record_added(1, 0, 0)
            }
            Event::NarHit { lookup: true, .. } => self.cache_hit(Kind::Nar),
            Event::NarMiss { .. } => self.cache_miss(Kind::Nar),
            Event::UpstreamFetch {
                upstream,
                kind,
                took,
                failed,
            } => self.upstream_fetch(upstream, kind, took, failed),
            Event::UpstreamBroke { upstream, kind } => self.upstream_error(upstream, kind),
            Event::UpstreamBytes { upstream, bytes } => self.upstream_bytes(upstream, bytes),
            Event::NarDownloaded { bytes, .. } | Event::NarUploaded { bytes } => {
                self.nar_stored(bytes)
            }
            Event::Deleted { paths, nars, bytes } => self.record_removed(paths, nars, bytes),
            Event::Evicted { paths, nars, bytes } => {
                self.record_removed(paths, nars, bytes);
                self.eviction_run(bytes);
            }
            Event::NarsFound { nars, bytes } => self.record_added(0, nars, bytes),
            Event::StoreTotals(usage) => self.set_store_totals(usage),
            Event::Lock { kind, outcome } => self.lock_outcome(kind, outcome),
            Event::LockWait { kind } => {
                self.lock_waits
                    .get_or_create(&LockKindLabels { kind })
                    .inc();
            }
            Event::LockWaited { kind, waited } => self
                .lock_wait_seconds
                .get_or_create(&LockKindLabels { kind })
                .observe(waited.as_secs_f64()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn store_gauges_follow_additions_and_removals() {
        let metrics = Metrics::new();
        metrics.set_store_totals(&StorageUsage {
            narinfos: 3,
            nar_records: 5,
            stored_nars: 2,
            stored_bytes: 1000,
            ..StorageUsage::default()
        });
        metrics.record_added(1, 0, 0);
        metrics.nar_stored(24);
        metrics.record_removed(2, 1, 500);
        assert_eq!(
            metrics.store_totals(),
            StoreTotals {
                paths: 2,
                nars: 2,
                nar_bytes: 524
            }
        );
        let text = encoded(&metrics);
        assert!(text.contains("\nncps_store_nar_bytes 524\n"), "{text}");
        assert!(
            text.contains("\nncps_store_totals_loads_total 1\n"),
            "{text}"
        );
    }

    #[test]
    fn labels_are_bounded_names() {
        let metrics = Metrics::new();
        metrics.cache_hit(Kind::Narinfo);
        metrics.cache_miss(Kind::Nar);
        metrics.upstream_fetch("http://a/", Kind::Nar, Duration::from_millis(3), true);
        metrics.eviction_run(77);
        let text = encoded(&metrics);
        assert!(
            text.contains("ncps_cache_hits_total{kind=\"narinfo\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ncps_upstream_errors_total{upstream=\"http://a/\",kind=\"nar\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ncps_eviction_freed_bytes_total 77"),
            "{text}"
        );
    }
}
