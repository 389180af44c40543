//! What the engine tells observers: one typed [`Event`] for each thing that
//! happens (a hit, a miss, a fetch, a stored download, an eviction, a lock
//! wait, ...), handed to every [`Observer`] in turn. The Prometheus metrics
//! ([`crate::metrics::Metrics`]) and the database counters behind
//! `ncps-cli stats` ([`crate::access_log`]) are two observers of the same
//! events; an embedder adds its own with [`crate::CacheOptions::observers`].

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::lock::LockKey;
use crate::{Lock, LockGuard, Result, StorageUsage};

/// What a cache lookup or upstream fetch was for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    /// A narinfo.
    Narinfo,
    /// A NAR file.
    Nar,
}

impl Kind {
    /// Its label value: `narinfo` or `nar`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Narinfo => "narinfo",
            Kind::Nar => "nar",
        }
    }
}

/// How a lock request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock was taken (at once or after waiting).
    Acquired,
    /// `try_acquire` found it held by someone else.
    Busy,
    /// The lock backend failed.
    Error,
}

/// Something the engine did. Upstreams are named by their label
/// ([`crate::metrics::upstream_label`]): URL without query or user info.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A narinfo answered from memory or the database.
    NarinfoHit {
        /// Its store path hash.
        hash: &'a str,
        /// The NAR file it names.
        nar_file: &'a str,
    },
    /// A narinfo the database does not have (an upstream may have it).
    NarinfoMiss {
        /// Its store path hash.
        hash: &'a str,
    },
    /// A narinfo fetched from an upstream, checked and recorded.
    NarinfoFetched {
        /// The upstream it came from.
        upstream: &'a str,
    },
    /// No upstream has a narinfo (it is answered 404 for a while).
    NarinfoAbsent {
        /// Its store path hash.
        hash: &'a str,
    },
    /// A narinfo uploaded and recorded.
    NarinfoUploaded {
        /// Whether there was none for its path before.
        new: bool,
    },
    /// A NAR served from storage.
    NarHit {
        /// Its file name.
        file: &'a str,
        /// Whether it was the request's lookup: `false` for a peer replica's
        /// read and for a NAR found stored after waiting for its download
        /// lock (the request counted as a miss already).
        lookup: bool,
    },
    /// A range of a stored NAR served.
    NarRangeRead {
        /// Its file name.
        file: &'a str,
    },
    /// A NAR a client asked for that storage does not hold.
    NarMiss {
        /// Its file name.
        file: &'a str,
    },
    /// A NAR missing from storage that an upstream has: it is downloaded,
    /// or read from its download in flight.
    NarMissFrom {
        /// The upstream its record names.
        upstream: &'a str,
    },
    /// One request to an upstream (a whole narinfo, or a NAR's response headers).
    UpstreamFetch {
        /// The upstream.
        upstream: &'a str,
        /// What was asked for.
        kind: Kind,
        /// How long it took to answer.
        took: Duration,
        /// Whether it failed.
        failed: bool,
    },
    /// A fetch that failed after it started: its body broke off or its
    /// bytes did not check out.
    UpstreamBroke {
        /// The upstream.
        upstream: &'a str,
        /// What was fetched.
        kind: Kind,
    },
    /// Bytes of a NAR received from an upstream.
    UpstreamBytes {
        /// The upstream.
        upstream: &'a str,
        /// How many.
        bytes: u64,
    },
    /// A NAR download from an upstream started.
    NarFetchStarted {
        /// The upstream.
        upstream: &'a str,
    },
    /// A downloaded NAR checked out and is in storage.
    NarDownloaded {
        /// The upstream it came from.
        upstream: &'a str,
        /// Its size in storage.
        bytes: u64,
    },
    /// An uploaded NAR checked out and is in storage.
    NarUploaded {
        /// Its size in storage.
        bytes: u64,
    },
    /// Narinfos and NARs deleted on request.
    Deleted {
        /// Narinfo records removed.
        paths: u64,
        /// NAR files removed from storage.
        nars: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// An eviction run completed (not a dry run).
    Evicted {
        /// Narinfo records removed.
        paths: u64,
        /// NAR files removed from storage.
        nars: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// NARs of unknown storage found stored.
    NarsFound {
        /// How many.
        nars: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// What the database holds, read at start.
    StoreTotals(&'a StorageUsage),
    /// A lock request ended.
    Lock {
        /// The key's kind ([`LockKey::kind`]).
        kind: &'static str,
        /// How it ended.
        outcome: LockOutcome,
    },
    /// A lock request found the lock held and waits for it.
    LockWait {
        /// The key's kind ([`LockKey::kind`]).
        kind: &'static str,
    },
    /// A lock request that waited got its answer after this long.
    LockWaited {
        /// The key's kind ([`LockKey::kind`]).
        kind: &'static str,
        /// How long it waited.
        waited: Duration,
    },
}

/// Something that wants to know what the engine does. Called inline on the
/// serving path: recording must be quick and must not block.
pub trait Observer: Send + Sync + Debug {
    /// Takes note of `event`.
    fn observe(&self, event: &Event<'_>);
}

/// The engine's observers, each told every event in turn.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observers(Arc<[Arc<dyn Observer>]>);

impl Observers {
    /// Tells every observer in `observers`, in order.
    pub(crate) fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Observers(observers.into())
    }

    /// Tells every observer about `event`.
    pub(crate) fn emit(&self, event: Event<'_>) {
        for observer in self.0.iter() {
            observer.observe(&event);
        }
    }
}

/// A [`Lock`] that tells observers how its requests end and how long they
/// waited, in front of another.
///
/// [`Lock::acquire`] first tries to take the lock; only if it is held does
/// it emit a wait and time the backend's own `acquire`.
#[derive(Debug)]
pub(crate) struct ObservedLock {
    inner: Arc<dyn Lock>,
    observers: Observers,
}

impl ObservedLock {
    /// Observes `inner` into `observers`.
    pub(crate) fn new(inner: Arc<dyn Lock>, observers: Observers) -> Self {
        ObservedLock { inner, observers }
    }

    fn outcome(&self, kind: &'static str, outcome: LockOutcome) {
        self.observers.emit(Event::Lock { kind, outcome });
    }
}

#[async_trait]
impl Lock for ObservedLock {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<LockGuard> {
        let kind = LockKey::kind_of(key);
        match self.inner.try_acquire(key, ttl).await {
            Ok(Some(guard)) => {
                self.outcome(kind, LockOutcome::Acquired);
                return Ok(guard);
            }
            Ok(None) => {}
            Err(e) => {
                self.outcome(kind, LockOutcome::Error);
                return Err(e);
            }
        }
        self.observers.emit(Event::LockWait { kind });
        let started = Instant::now();
        let result = self.inner.acquire(key, ttl).await;
        let waited = started.elapsed();
        self.observers.emit(Event::LockWaited { kind, waited });
        let outcome = match result {
            Ok(_) => LockOutcome::Acquired,
            Err(_) => LockOutcome::Error,
        };
        self.outcome(kind, outcome);
        result
    }

    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        let result = self.inner.try_acquire(key, ttl).await;
        let outcome = match &result {
            Ok(Some(_)) => LockOutcome::Acquired,
            Ok(None) => LockOutcome::Busy,
            Err(_) => LockOutcome::Error,
        };
        self.outcome(LockKey::kind_of(key), outcome);
        result
    }

    async fn holder(&self, key: &str) -> Result<Option<String>> {
        self.inner.holder(key).await
    }
}
