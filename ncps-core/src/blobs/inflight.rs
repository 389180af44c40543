//! Downloads in progress in this process, readable by any number of clients
//! while they run.
//!
//! A download writes its checked bytes to a spool file that is unlinked as
//! soon as it is created, so a crash leaves nothing behind. Every reader
//! follows the file as it grows, at its own pace: a slow client never slows
//! the download or the other clients, and a client that arrives late starts
//! from the first byte without asking the upstream again.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::watch;

use crate::ByteStream;

/// Most bytes a reader takes from the spool file in one read.
const READ_CHUNK: u64 = 256 * 1024;

/// How far a download has come.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    /// This many bytes are in the spool file; more may follow.
    Writing(u64),
    /// The download is whole and checked: this many bytes.
    Complete(u64),
    /// The download failed, for this reason; readers must abort.
    Failed(Arc<str>),
}

/// One download in progress, as its readers see it.
#[derive(Debug)]
pub(crate) struct Download {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
}

impl Download {
    /// The bytes of the download from the first, as they arrive. Ends with an
    /// error item if the download fails.
    pub(crate) fn reader(&self) -> ByteStream {
        let state = Reader {
            file: Arc::clone(&self.file),
            progress: self.progress.clone(),
            offset: 0,
            done: false,
        };
        Box::pin(futures::stream::unfold(state, Reader::next))
    }
}

/// A reader's position in a download.
struct Reader {
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    offset: u64,
    done: bool,
}

impl Reader {
    async fn next(mut self) -> Option<(io::Result<Bytes>, Reader)> {
        if self.done {
            return None;
        }
        loop {
            let progress = self.progress.borrow_and_update().clone();
            let available = match progress {
                Progress::Writing(n) | Progress::Complete(n) => n,
                Progress::Failed(why) => return Some(self.fail(&why)),
            };
            if self.offset < available {
                let len = (available - self.offset).min(READ_CHUNK);
                let file = Arc::clone(&self.file);
                let offset = self.offset;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; len as usize];
                    file.read_exact_at(&mut buf, offset)
                        .map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
                return match read {
                    Ok(bytes) => {
                        self.offset += len;
                        Some((Ok(bytes), self))
                    }
                    Err(e) => {
                        self.done = true;
                        Some((Err(e), self))
                    }
                };
            }
            if let Progress::Complete(_) = progress {
                return None;
            }
            if self.progress.changed().await.is_err() {
                // The writer went away without finishing.
                if let Progress::Complete(_) = *self.progress.borrow() {
                    continue;
                }
                return Some(self.fail("the download of this NAR stopped unfinished"));
            }
        }
    }

    fn fail(mut self, why: &str) -> (io::Result<Bytes>, Reader) {
        self.done = true;
        (Err(io::Error::other(why.to_owned())), self)
    }
}

/// The writing end of a download.
#[derive(Debug)]
pub(crate) struct SpoolWriter {
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    written: u64,
}

impl SpoolWriter {
    /// Appends checked bytes and lets the readers have them.
    pub(crate) async fn write(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        let offset = self.written;
        let written = tokio::task::spawn_blocking(move || {
            let mut at = offset;
            for chunk in &chunks {
                file.write_all_at(chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok::<_, io::Error>(at - offset)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match written {
            Ok(n) => {
                self.written += n;
                self.progress.send_replace(Progress::Writing(self.written));
                Ok(())
            }
            Err(e) => {
                let why = format!("cannot write the download spool: {e}");
                self.progress.send_replace(Progress::Failed(why.into()));
                Err(e)
            }
        }
    }

    /// Marks the download whole and checked.
    pub(crate) fn complete(self) -> u64 {
        self.progress.send_replace(Progress::Complete(self.written));
        self.written
    }

    /// Marks the download failed, telling its readers why.
    pub(crate) fn fail(self, why: &io::Error) {
        self.progress
            .send_replace(Progress::Failed(why.to_string().into()));
    }
}

/// Starts a download's spool in `dir`.
pub(crate) fn spool(dir: &Path) -> io::Result<(SpoolWriter, Arc<Download>)> {
    // An unnamed (or at once unlinked) file: nothing to clean up after a crash.
    let file = Arc::new(tempfile::tempfile_in(dir)?);
    let (tx, rx) = watch::channel(Progress::Writing(0));
    let writer = SpoolWriter {
        file: Arc::clone(&file),
        progress: tx,
        written: 0,
    };
    Ok((writer, Arc::new(Download { file, progress: rx })))
}

/// The downloads in progress in this process, by storage key.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    downloads: Mutex<HashMap<String, Arc<Download>>>,
    starters: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InFlight {
    /// The download of `key` in progress here, if any; one that failed is
    /// not worth joining.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Download>> {
        locked(&self.downloads)
            .get(key)
            .filter(|d| !matches!(*d.progress.borrow(), Progress::Failed(_)))
            .cloned()
    }

    /// Publishes a download of `key` to later readers.
    pub(crate) fn insert(&self, key: &str, download: Arc<Download>) {
        locked(&self.downloads).insert(key.to_owned(), download);
    }

    /// Withdraws the download of `key`; its readers keep reading.
    pub(crate) fn remove(&self, key: &str) {
        locked(&self.downloads).remove(key);
    }

    /// Waits until no other request of this process is starting a download
    /// of `key`, so that one starts it and the others read it.
    pub(crate) async fn starting(&self, key: &str) -> StartGuard<'_> {
        let mutex = Arc::clone(locked(&self.starters).entry(key.to_owned()).or_default());
        let guard = mutex.lock_owned().await;
        StartGuard {
            inflight: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

/// Held while one request starts a download; see [`InFlight::starting`].
pub(crate) struct StartGuard<'a> {
    inflight: &'a InFlight,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        let mut starters = locked(&self.inflight.starters);
        drop(self.guard.take());
        // Forget the key's mutex once nobody holds or waits for it.
        if starters
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            starters.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk?);
        }
        Ok(all)
    }

    #[tokio::test]
    async fn readers_follow_the_writer_from_the_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, download) = spool(dir.path()).unwrap();
        let early = tokio::spawn(collect(download.reader()));
        writer
            .write(vec![Bytes::from_static(b"hello ")])
            .await
            .unwrap();
        let late = tokio::spawn(collect(download.reader()));
        writer
            .write(vec![Bytes::from_static(b"world")])
            .await
            .unwrap();
        assert_eq!(writer.complete(), 11);
        assert_eq!(early.await.unwrap().unwrap(), b"hello world");
        assert_eq!(late.await.unwrap().unwrap(), b"hello world");
        assert_eq!(collect(download.reader()).await.unwrap(), b"hello world");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the spool file has no name"
        );
    }

    #[tokio::test]
    async fn a_failed_download_fails_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, download) = spool(dir.path()).unwrap();
        writer
            .write(vec![Bytes::from_static(b"part")])
            .await
            .unwrap();
        let reader = tokio::spawn(collect(download.reader()));
        writer.fail(&io::Error::other("NarHash mismatch"));
        let error = reader.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("NarHash mismatch"), "{error}");
    }

    #[tokio::test]
    async fn a_writer_dropped_unfinished_fails_its_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, download) = spool(dir.path()).unwrap();
        let reader = tokio::spawn(collect(download.reader()));
        drop(writer);
        assert!(reader.await.unwrap().is_err());
    }
}
