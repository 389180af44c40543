//! What was served since the last flush to the database: access times of
//! narinfos and NARs, the NARs being read from storage right now, and
//! counters (hits, misses) kept across restarts.
//!
//! The log is an observer of the engine's events ([`crate::events`]): a hit
//! only updates it in memory; [`crate::Cache::flush_access_log`] writes it to the database in one batch (every minute, and before each
//! eviction run), so serving never waits for a database write. A NAR still
//! being read at a flush is recorded as used at that flush, so no instance
//! evicts it while a client reads it.

use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::events::{Event, Observer};
use crate::{ByteStream, MetadataDb, Result, now};

/// The names of the counters the engine keeps in the database.
pub mod counter {
    /// Narinfos served from the database.
    pub const NARINFO_HITS: &str = "narinfo_hits";
    /// Narinfos fetched from an upstream.
    pub const NARINFO_MISSES: &str = "narinfo_misses";
    /// Narinfos no upstream had.
    pub const NARINFO_ABSENT: &str = "narinfo_absent";
    /// NARs served from storage.
    pub const NAR_HITS: &str = "nar_hits";
    /// NARs not in storage (downloaded, or read from a download in flight).
    pub const NAR_MISSES: &str = "nar_misses";
    /// NAR downloads started from an upstream; the name is followed by the upstream's URL.
    pub const NAR_FETCHES_FROM: &str = "nar_fetches:";
    /// Bytes of NARs downloaded from an upstream and stored; followed by its URL.
    pub const NAR_FETCHED_BYTES_FROM: &str = "nar_fetched_bytes:";
    /// NARs of an upstream served from storage; followed by its URL.
    pub const NAR_HITS_FROM: &str = "nar_hits:";
    /// NARs of an upstream not in storage when asked for; followed by its URL.
    pub const NAR_MISSES_FROM: &str = "nar_misses:";
    /// Narinfos fetched from an upstream; followed by its URL.
    pub const NARINFO_FETCHES_FROM: &str = "narinfo_fetches:";
    /// NARs evicted.
    pub const EVICTED_NARS: &str = "evicted_nars";
    /// Bytes evicted.
    pub const EVICTED_BYTES: &str = "evicted_bytes";
    /// NARs uploaded.
    pub const UPLOADED_NARS: &str = "uploaded_nars";
}

/// The config key holding when the counters started, in seconds since the epoch.
pub const COUNTERS_SINCE_CONFIG: &str = "counters_since";

/// Most bytes of a counter name (the database keys are at most 255).
const COUNTER_NAME_MAX: usize = 200;

/// One flush's worth of the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AccessBatch {
    /// (store path hash, last access).
    pub narinfos: Vec<(String, i64)>,
    /// (NAR file name, last access).
    pub nars: Vec<(String, i64)>,
    /// (counter, delta).
    pub counters: Vec<(String, i64)>,
    /// (NAR file name, hits from storage): counted per upstream at a flush,
    /// which looks up where each NAR came from.
    pub nar_hits: Vec<(String, i64)>,
}

impl AccessBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.narinfos.is_empty()
            && self.nars.is_empty()
            && self.counters.is_empty()
            && self.nar_hits.is_empty()
    }
}

#[derive(Debug, Default)]
struct State {
    narinfos: HashMap<String, i64>,
    nars: HashMap<String, i64>,
    counters: HashMap<String, i64>,
    /// NAR file name -> hits from storage.
    nar_hits: HashMap<String, i64>,
    /// NAR file name -> readers of its stored bytes in this process.
    readers: HashMap<String, usize>,
}

/// The in-memory log. Cheap to share; every method takes a short lock.
#[derive(Debug, Default)]
pub(crate) struct AccessLog {
    state: Arc<Mutex<State>>,
    /// Whether this process made sure the database says when counting began.
    since_recorded: AtomicBool,
}

fn later(map: &mut HashMap<String, i64>, key: &str, at: i64) {
    match map.get_mut(key) {
        Some(old) => *old = (*old).max(at),
        None => {
            map.insert(key.to_owned(), at);
        }
    }
}

impl AccessLog {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A narinfo (and so its path, whose NAR is `nar_file`) was served at `at`.
    pub fn narinfo(&self, hash: &str, nar_file: &str, at: i64) {
        let mut state = self.state();
        later(&mut state.narinfos, hash, at);
        later(&mut state.nars, nar_file, at);
    }

    /// A NAR was served at `at`.
    pub fn nar(&self, file: &str, at: i64) {
        later(&mut self.state().nars, file, at);
    }

    /// The NAR `file` was served from storage.
    pub fn nar_hit(&self, file: &str) {
        *self.state().nar_hits.entry(file.to_owned()).or_default() += 1;
    }

    /// Adds `delta` to `counter`.
    pub fn count(&self, counter: &str, delta: i64) {
        let mut name = counter.to_owned();
        if name.len() > COUNTER_NAME_MAX {
            let mut end = COUNTER_NAME_MAX;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            name.truncate(end);
        }
        *self.state().counters.entry(name).or_default() += delta;
    }

    /// Whether this process is reading the stored bytes of NAR `file` now.
    pub fn is_read(&self, file: &str) -> bool {
        self.state().readers.get(file).is_some_and(|n| *n > 0)
    }

    /// `body`, the stored bytes of NAR `file`, counted as being read until
    /// it is dropped (finished, failed or abandoned).
    pub fn reading(&self, file: &str, body: ByteStream) -> ByteStream {
        *self.state().readers.entry(file.to_owned()).or_default() += 1;
        let guard = Reader {
            state: Arc::clone(&self.state),
            file: file.to_owned(),
        };
        Box::pin(body.map(move |item| {
            let _reading = &guard;
            item
        }))
    }

    /// Takes everything logged so far; NARs being read count as used `now`.
    pub fn take(&self, now: i64) -> AccessBatch {
        let mut state = self.state();
        let reading: Vec<String> = state
            .readers
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(file, _)| file.clone())
            .collect();
        for file in reading {
            later(&mut state.nars, &file, now);
        }
        AccessBatch {
            narinfos: state.narinfos.drain().collect(),
            nars: state.nars.drain().collect(),
            counters: state.counters.drain().filter(|(_, d)| *d != 0).collect(),
            nar_hits: state.nar_hits.drain().collect(),
        }
    }

    /// Puts back a batch that could not be written, to go with the next flush.
    pub fn restore(&self, batch: AccessBatch) {
        let mut state = self.state();
        for (hash, at) in batch.narinfos {
            later(&mut state.narinfos, &hash, at);
        }
        for (file, at) in batch.nars {
            later(&mut state.nars, &file, at);
        }
        for (name, delta) in batch.counters {
            *state.counters.entry(name).or_default() += delta;
        }
        for (file, hits) in batch.nar_hits {
            *state.nar_hits.entry(file).or_default() += hits;
        }
    }
}

impl AccessLog {
    /// Writes what was served since the last call (access times, counters)
    /// to `db` in one batch; `upstream_of` names the upstream of a NAR URL.
    /// On failure the batch is kept for the next call.
    pub async fn flush(
        &self,
        db: &dyn MetadataDb,
        upstream_of: &(dyn Fn(&str) -> String + Sync),
    ) -> Result<()> {
        let mut batch = self.take(now());
        if batch.is_empty() {
            return Ok(());
        }
        let counted = async {
            if !self.since_recorded.load(Ordering::Relaxed) {
                db.set_config_if_absent(COUNTERS_SINCE_CONFIG, &now().to_string())
                    .await?;
                self.since_recorded.store(true, Ordering::Relaxed);
            }
            nar_hits_by_upstream(db, &batch.nar_hits, upstream_of).await
        }
        .await;
        match counted {
            Ok(per_upstream) => {
                batch.nar_hits.clear();
                batch.counters.extend(per_upstream);
            }
            Err(e) => {
                self.restore(batch);
                return Err(e);
            }
        }
        let written = async {
            db.record_accesses(&batch.narinfos, &batch.nars).await?;
            db.add_counters(&batch.counters).await
        }
        .await;
        if let Err(e) = written {
            self.restore(batch);
            return Err(e);
        }
        Ok(())
    }

    fn count_from(&self, prefix: &str, upstream: &str, delta: i64) {
        self.count(&format!("{prefix}{upstream}"), delta);
    }
}

/// NAR hits (file, hits) as per-upstream counters: one database read
/// per NAR served since the last flush, off the serving path. Uploads
/// and NARs whose record is gone count in the total only.
async fn nar_hits_by_upstream(
    db: &dyn MetadataDb,
    hits: &[(String, i64)],
    upstream_of: &(dyn Fn(&str) -> String + Sync),
) -> Result<Vec<(String, i64)>> {
    let mut per_upstream: HashMap<String, i64> = HashMap::new();
    for (file, n) in hits {
        let Some(url) = db.get_nar(file).await?.and_then(|r| r.upstream_url) else {
            continue;
        };
        let name = format!("{}{}", counter::NAR_HITS_FROM, upstream_of(&url));
        *per_upstream.entry(name).or_default() += n;
    }
    Ok(per_upstream.into_iter().collect())
}

/// The database side of the engine's events: access times, and the
/// counters `ncps-cli stats` reads.
impl Observer for AccessLog {
    fn observe(&self, event: &Event<'_>) {
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match *event {
            Event::NarinfoHit { hash, nar_file } => {
                self.narinfo(hash, nar_file, now());
                self.count(counter::NARINFO_HITS, 1);
            }
            Event::NarinfoFetched { upstream } => {
                self.count(counter::NARINFO_MISSES, 1);
                self.count_from(counter::NARINFO_FETCHES_FROM, upstream, 1);
            }
            Event::NarinfoAbsent { .. } => self.count(counter::NARINFO_ABSENT, 1),
            Event::NarHit { file, .. } => {
                self.nar(file, now());
                self.count(counter::NAR_HITS, 1);
                self.nar_hit(file);
            }
            Event::NarRangeRead { file } => self.nar(file, now()),
            Event::NarMissFrom { upstream } => {
                self.count(counter::NAR_MISSES, 1);
                self.count_from(counter::NAR_MISSES_FROM, upstream, 1);
            }
            Event::NarFetchStarted { upstream } => {
                self.count_from(counter::NAR_FETCHES_FROM, upstream, 1)
            }
            Event::NarDownloaded { upstream, bytes: n } => {
                self.count_from(counter::NAR_FETCHED_BYTES_FROM, upstream, bytes(n))
            }
            Event::NarUploaded { .. } => self.count(counter::UPLOADED_NARS, 1),
            _ => {}
        }
    }
}

/// Counts one reader of a NAR's stored bytes while it lives.
struct Reader {
    state: Arc<Mutex<State>>,
    file: String,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = state.readers.get_mut(&self.file) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.readers.remove(&self.file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn keeps_the_latest_access_and_counts_readers() {
        let log = AccessLog::default();
        log.narinfo("h", "f.nar", 10);
        log.nar("f.nar", 5);
        log.nar("g.nar", 7);
        log.count(counter::NAR_HITS, 2);
        log.count(counter::NAR_HITS, 1);
        log.nar_hit("f.nar");
        log.nar_hit("f.nar");
        let body: ByteStream = Box::pin(futures::stream::iter(vec![Ok(Bytes::from("x"))]));
        let mut read = log.reading("r.nar", body);
        assert!(log.is_read("r.nar"));
        let mut batch = log.take(99);
        batch.nars.sort();
        assert_eq!(batch.narinfos, vec![("h".to_string(), 10)]);
        assert_eq!(
            batch.nars,
            vec![
                ("f.nar".to_string(), 10),
                ("g.nar".to_string(), 7),
                ("r.nar".to_string(), 99)
            ]
        );
        assert_eq!(batch.counters, vec![(counter::NAR_HITS.to_string(), 3)]);
        assert_eq!(batch.nar_hits, vec![("f.nar".to_string(), 2)]);
        assert!(log.take(100).nars.iter().any(|(f, _)| f == "r.nar"));
        while read.next().await.is_some() {}
        drop(read);
        assert!(!log.is_read("r.nar"));
        assert!(log.take(101).is_empty());

        log.restore(AccessBatch {
            narinfos: vec![("h".to_string(), 3)],
            nars: Vec::new(),
            counters: vec![("c".to_string(), 4)],
            nar_hits: vec![("f.nar".to_string(), 1)],
        });
        log.count("c", 1);
        let batch = log.take(0);
        assert_eq!(batch.narinfos, vec![("h".to_string(), 3)]);
        assert_eq!(batch.counters, vec![("c".to_string(), 5)]);
        assert_eq!(batch.nar_hits, vec![("f.nar".to_string(), 1)]);
    }
}
