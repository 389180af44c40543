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
//! The stream goes out with the [`ncps_core::FileRegion`] it covers
//! ([`ncps_core::StoredObject::file`]), so a writer that owns its socket can
//! send the region with `sendfile(2)` instead, and the mapped pages are
//! never touched (ncps-server's `zero_copy.rs` does this for plain HTTP
//! connections). The mapping is what is written when it cannot.
//!
//! Soundness: touching a mapped page that lies past the end of its file
//! raises `SIGBUS`. [`crate::LocalStorage`] never changes a stored file in
//! place: `put` writes a temporary file and renames it over the key, and
//! `delete` unlinks it, so a mapping always sees the whole file it was made
//! from (an unlinked or replaced file lives on until its last mapping goes).
//! Nothing else may truncate or rewrite files under the storage root.

use std::fs::File;
use std::io;
use std::sync::Arc;

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

/// `len` (> 0) bytes of `file` from `offset`, mapped read-only.
fn map(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: the file is never truncated or written in place while mapped
    // (see the module's notes), and `offset + len` is within its size.
    let mmap: Mmap = unsafe { MmapOptions::new().offset(offset).len(len).map(file)? };
    // Sent with sendfile, the window's pages are read (ahead) by the kernel's
    // own file reading and never touched here. Written as bytes (when the
    // connection cannot use sendfile), they are read in order: say so, which
    // only marks the mapping and makes page faults read further ahead.
    // (WILLNEED would look up every page of the window in the page cache
    // first: 7% of the server's CPU when sending cached NARs.)
    let _ = mmap.advise(Advice::Sequential);
    Ok(Bytes::from_owner(mmap))
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
}
