//! Large stored files read through memory maps instead of `read()`.
//!
//! hyper takes a body as byte buffers and does not hand out its socket, so
//! a large NAR goes to it as slices of a mapping of the file. Written as
//! they are, those are the page cache's own pages: the kernel copies them
//! once, straight to the socket, with no `read()` into a user-space buffer
//! first and no hop to tokio's blocking pool per chunk.
//!
//! A file is mapped in windows of [`WINDOW`] bytes, each unmapped as soon as
//! the last slice of it is dropped (written out), so a download keeps at most
//! a window or two of the file mapped however large it is.
//!
//! Every live window is also registered with the file and offset it maps, so
//! a writer that owns its socket can find, for a slice it is asked to write,
//! the file behind it ([`file_region`]) and send it with `sendfile(2)`: then
//! the bytes never pass through the process at all (ncps-server's
//! `zero_copy.rs` does this for plain HTTP connections).
//!
//! Soundness: touching a mapped page that lies past the end of its file
//! raises `SIGBUS`. [`crate::LocalStorage`] never changes a stored file in
//! place: `put` writes a temporary file and renames it over the key, and
//! `delete` unlinks it, so a mapping always sees the whole file it was made
//! from (an unlinked or replaced file lives on until its last mapping goes).
//! Nothing else may truncate or rewrite files under the storage root.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use memmap2::{Advice, Mmap, MmapOptions};
use ncps_core::ByteStream;

/// Files (or ranges) of at least this many bytes are mapped; smaller ones
/// cost less to read than to map and unmap.
pub(crate) const MAP_THRESHOLD: u64 = 64 * 1024;

/// How much of a file one mapping covers, and so one chunk of the stream.
const WINDOW: u64 = 4 * 1024 * 1024;

/// What is left to map of a file.
struct Windows {
    file: Arc<File>,
    offset: u64,
    end: u64,
}

/// The bytes of `file` from `offset` to `end`, as slices of mappings.
///
/// `end` must not exceed the file's size, and the file must never shrink
/// while mapped (see the module's notes).
pub(crate) fn stream(file: Arc<File>, offset: u64, end: u64) -> ByteStream {
    let windows = Windows { file, offset, end };
    Box::pin(futures::stream::unfold(windows, |mut w| async move {
        if w.offset >= w.end {
            return None;
        }
        let len = (w.end - w.offset).min(WINDOW);
        match map(&w.file, w.offset, len) {
            Ok(bytes) => {
                w.offset += len;
                Some((Ok(bytes), w))
            }
            Err(e) => {
                w.offset = w.end;
                Some((Err(e), w))
            }
        }
    }))
}

/// `len` (> 0) bytes of `file` from `offset`, mapped read-only and
/// registered for [`file_region`] while mapped.
fn map(file: &Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the file is never truncated or written in place while mapped
    // (see the module's notes), and `offset + len` is within its size.
    let mmap: Mmap = unsafe { MmapOptions::new().offset(offset).len(len).map(&**file)? };
    // Sent with sendfile, the window's pages are read (ahead) by the kernel's
    // own file reading and never touched here. Written as bytes (when the
    // connection cannot use sendfile), they are read in order: say so, which
    // only marks the mapping and makes page faults read further ahead.
    // (WILLNEED would look up every page of the window in the page cache
    // first: 7% of the server's CPU when sending cached NARs.)
    let _ = mmap.advise(Advice::Sequential);
    Ok(Bytes::from_owner(Window::register(
        mmap,
        file.clone(),
        offset,
    )))
}

/// Where the bytes of a slice of a mapped window come from.
#[derive(Clone, Debug)]
pub struct FileRegion {
    /// The stored file.
    pub file: Arc<File>,
    /// Where in the file the slice starts.
    pub offset: u64,
    /// How many bytes from there.
    pub len: usize,
}

/// The file region behind `bytes`, when `bytes` is (the start of) a slice of
/// a window this module mapped and that is still mapped; `None` for any
/// other memory. While the caller holds `bytes`, the window stays mapped and
/// the file holds exactly these bytes at that offset (files under the
/// storage root are never changed in place), so writing the region out with
/// `sendfile(2)` sends the same bytes as writing `bytes`.
pub fn file_region(bytes: &[u8]) -> Option<FileRegion> {
    if bytes.is_empty() || LIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let at = bytes.as_ptr() as usize;
    let windows = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
    let (&start, window) = windows.range(..=at).next_back()?;
    let skip = at - start;
    (skip < window.len).then(|| FileRegion {
        file: window.file.clone(),
        offset: window.offset + skip as u64,
        len: bytes.len().min(window.len - skip),
    })
}

/// A registered window: its length, file and offset in the file.
struct Registered {
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// The live windows by start address.
static WINDOWS: Mutex<BTreeMap<usize, Registered>> = Mutex::new(BTreeMap::new());

/// How many windows are registered, so [`file_region`] takes no lock while
/// none is.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A mapped window, registered in [`WINDOWS`] until dropped.
struct Window {
    mmap: Mmap,
}

impl Window {
    fn register(mmap: Mmap, file: Arc<File>, offset: u64) -> Window {
        let registered = Registered {
            len: mmap.len(),
            file,
            offset,
        };
        let mut windows = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
        windows.insert(mmap.as_ptr() as usize, registered);
        LIVE.fetch_add(1, Ordering::Relaxed);
        Window { mmap }
    }
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.mmap
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // Before the mapping goes (the field is dropped after this), so the
        // address is never registered for another mapping's bytes.
        let mut windows = WINDOWS.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.remove(&(self.mmap.as_ptr() as usize)).is_some() {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::Write;

    #[tokio::test]
    async fn streams_every_range_of_a_file() {
        let data: Vec<u8> = (0..(WINDOW as usize * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let size = data.len() as u64;
        for (offset, end) in [
            (0, size),
            (1, size),
            (4095, WINDOW + 1),
            (WINDOW, size),
            (size - 1, size),
            (size, size),
            (10, 10),
        ] {
            let got: Vec<u8> = stream(Arc::new(file.try_clone().unwrap()), offset, end)
                .map(|chunk| chunk.unwrap().to_vec())
                .concat()
                .await;
            assert_eq!(got, data[offset as usize..end as usize], "{offset}..{end}");
        }
    }

    #[tokio::test]
    async fn slices_of_live_windows_name_their_file_region() {
        let data: Vec<u8> = (0..(WINDOW as usize + 100_000))
            .map(|i| (i % 241) as u8)
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let mut chunks = stream(Arc::new(file), 1000, data.len() as u64);
        let first = chunks.next().await.unwrap().unwrap();
        let second = chunks.next().await.unwrap().unwrap();
        for (chunk, start) in [(&first, 1000u64), (&second, 1000 + WINDOW)] {
            let region = file_region(&chunk[10..20]).expect("a mapped slice");
            assert_eq!((region.offset, region.len), (start + 10, 10));
            let mut back = vec![0; region.len];
            std::os::unix::fs::FileExt::read_exact_at(&*region.file, &mut back, region.offset)
                .unwrap();
            assert_eq!(back, chunk[10..20]);
        }
        // Memory this module did not map names nothing.
        assert!(file_region(&data[..10]).is_none());
    }
}
