//! The download pipeline of one NAR, under its download lock: find its
//! upstream, make room, fetch it, check its bytes as they come, spool them
//! for every reader and store them, in a task that outlives the request that
//! started it; then record it stored and give the lock back.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::Fetcher;
use crate::blobs::{Download, SpoolWriter};
use crate::events::{Event, Kind, Observers};
use crate::metrics::upstream_label;
use crate::nar_file::NarFile;
use crate::nar_verify::{self, NarCheck};
use crate::{ByteStream, Error, LockGuard, NarBody, NarRecord, NarStorage, Result, Storage};

/// How many chunks may wait between the download and storage.
const CHANNEL_CHUNKS: usize = 16;

/// What a request holding a NAR's download lock found it must do.
enum Start {
    /// Download it: everything is ready.
    Download(Box<Prepared>),
    /// Nothing to download: it was stored meanwhile (the body), or the
    /// upstream no longer has it (`None`).
    Settled(Option<NarBody>),
}

/// A download ready to run.
struct Prepared {
    key: String,
    url: url::Url,
    record: NarRecord,
    /// The upstream's label.
    upstream: String,
    /// The upstream's bytes, checked as they come.
    verified: ByteStream,
    writer: SpoolWriter,
    spooled: Arc<Download>,
}

impl Fetcher {
    /// Downloads a NAR whose lock `guard` holds, in the background, and
    /// returns a reader of it; or what was stored meanwhile; `None` if the
    /// upstream no longer has it. The lock goes back when the download ends,
    /// or at once if there is none.
    pub(super) async fn start_download(
        &self,
        file: &NarFile,
        record: &NarRecord,
        guard: LockGuard,
    ) -> Result<Option<NarBody>> {
        match self.prepare_download(file, record).await {
            Ok(Start::Download(prepared)) => Ok(Some(self.spawn_download(*prepared, guard))),
            settled => {
                let body = settled.map(|start| match start {
                    Start::Settled(body) => body,
                    Start::Download(_) => None,
                });
                guard.release_after(async { body }).await
            }
        }
    }

    /// Everything before the first byte, holding the NAR's download lock.
    async fn prepare_download(&self, file: &NarFile, record: &NarRecord) -> Result<Start> {
        let key = file.storage_key();
        // Whoever held the lock before us, even just before, may have stored it.
        if let Some(body) = self.blobs.serve(file.as_str(), &key, false).await? {
            return Ok(Start::Settled(Some(body)));
        }
        let url = record.upstream_url.clone().unwrap_or_default();
        let url = url::Url::parse(&url).map_err(|e| Error::backend("stored upstream URL", e))?;
        let Some(upstream) = self
            .upstreams
            .iter()
            .find(|u| url.as_str().starts_with(u.url().as_str()))
        else {
            return Err(Error::Upstream(format!(
                "no configured upstream serves {url}"
            )));
        };
        // Holding the lock, no one else is writing this key: what an earlier
        // holder left unfinished is dead.
        self.blobs.discard_incomplete(&key).await;
        // A NAR that cannot fit is refused before a byte is fetched (507).
        self.blobs.room_for(record).await?;
        let label = upstream_label(upstream.url());
        let started = Instant::now();
        let fetched = upstream.nar(&url).await;
        self.observers.emit(Event::UpstreamFetch {
            upstream: &label,
            kind: Kind::Nar,
            took: started.elapsed(),
            failed: fetched.is_err(),
        });
        let Some(download) = fetched? else {
            tracing::warn!(%url, "upstream no longer has a NAR its narinfo named");
            return Ok(Start::Settled(None));
        };
        // Storage may hold the NAR before the database says so: a crash
        // between the two leaves a record of unknown storage, which fsck and
        // the storage check look up, never one that says "not stored".
        self.index
            .db()
            .set_nar_storage(&record.file, NarStorage::Unknown)
            .await?;
        let verified = nar_verify::verified(download.body, NarCheck::of_record(record)?)?;
        self.observers
            .emit(Event::NarFetchStarted { upstream: &label });
        let verified = counted(verified, self.observers.clone(), label.clone());
        let (writer, spooled) = self.blobs.spool(&key)?;
        Ok(Start::Download(Box::new(Prepared {
            key,
            url,
            record: record.clone(),
            upstream: label,
            verified,
            writer,
            spooled,
        })))
    }

    /// Runs a prepared download in the background, holding `guard` until it
    /// ends; returns a reader of it.
    fn spawn_download(&self, prepared: Prepared, guard: LockGuard) -> NarBody {
        let body = reading(&prepared.record, &prepared.spooled);
        let blobs = Arc::clone(&self.blobs);
        let index = Arc::clone(&self.index);
        let observers = self.observers.clone();
        let ttl = self.options.download_lock_ttl;
        self.downloads.spawn(async move {
            let Prepared {
                key,
                url,
                record,
                upstream,
                verified,
                writer,
                spooled: _,
            } = prepared;
            let work = spool_and_store(verified, writer, Arc::clone(blobs.storage()), &key);
            match guard.hold_while(work, ttl).await {
                Ok(size) => {
                    observers.emit(Event::NarDownloaded {
                        upstream: &upstream,
                        bytes: size,
                    });
                    index.record_stored(&record, size).await;
                    tracing::info!(%key, size, "NAR stored")
                }
                Err(e) => {
                    tracing::error!(%key, %url, error = %e, "NAR download failed; nothing stored")
                }
            }
            blobs.withdraw(&key);
            if let Err(e) = guard.release().await {
                tracing::warn!(%key, error = %e, "releasing the download lock failed");
            }
        });
        body
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// `body` from `upstream`, telling `observers` of its bytes and of any
/// failure (a broken transfer or bytes that do not check out).
fn counted(body: ByteStream, observers: Observers, upstream: String) -> ByteStream {
    Box::pin(body.inspect(move |item| match item {
        Ok(chunk) => observers.emit(Event::UpstreamBytes {
            upstream: &upstream,
            bytes: chunk.len() as u64,
        }),
        Err(_) => observers.emit(Event::UpstreamBroke {
            upstream: &upstream,
            kind: Kind::Nar,
        }),
    }))
}

/// A reader of a download in progress, sized as the record says.
pub(super) fn reading(record: &NarRecord, download: &Download) -> NarBody {
    NarBody {
        size: record.file_size,
        body: download.reader(),
        file: None,
    }
}

/// Feeds a checked download into the spool its readers follow and into
/// storage. The spool is complete once the bytes are checked; the result is
/// that of storing them.
async fn spool_and_store(
    verified: ByteStream,
    mut spool: SpoolWriter,
    storage: Arc<dyn Storage>,
    key: &str,
) -> Result<u64> {
    let (mut store_tx, store_rx) = mpsc::channel(CHANNEL_CHUNKS);
    let pump = async move {
        let mut batches = verified.ready_chunks(CHANNEL_CHUNKS);
        let mut storing = true;
        while let Some(batch) = batches.next().await {
            let mut chunks = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(chunk) => chunks.push(chunk),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Err(e) = spool.write(chunks.clone()).await {
                tracing::error!(%key, error = %e, "cannot write the download spool");
                failure.get_or_insert(e);
            }
            for chunk in chunks {
                if storing && store_tx.send(Ok(chunk)).await.is_err() {
                    // Storage gave up and reports why; the readers still get the NAR.
                    storing = false;
                }
            }
            if let Some(e) = failure {
                spool.fail(&e);
                let _ = store_tx.send(Err(copy_error(&e))).await;
                return;
            }
        }
        spool.complete();
    };
    let put = storage.put(key, Box::pin(store_rx));
    let (stored, ()) = tokio::join!(put, pump);
    stored
}
