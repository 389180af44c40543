//! A TCP stream that sends the bytes of stored files with `sendfile(2)`.
//!
//! Storage says when a NAR's bytes are a region of a local file
//! ([`ncps_core::FileRegion`], in [`ncps_core::NarBody::file`]); local
//! storage then hands them over as slices of memory maps of the file.
//! Written with `write(2)`, the kernel copies each byte from the mapping
//! into the socket. Instead, the NAR endpoint declares each chunk of such a
//! body to its connection's [`FileSends`] with where in the file it lies,
//! and this stream, asked by hyper to write a slice of a declared chunk,
//! sends it with `sendfile(2)` from the file and offset declared, so the
//! page cache's pages go to the socket without that copy (as nginx's
//! `sendfile on`). Anything else (headers, narinfos, small NARs) is written
//! as usual, except that bytes written just before a file region (a
//! response's headers) are sent with `MSG_MORE`, so they share segments
//! with the file's first bytes (as nginx's `tcp_nopush`).
//!
//! The bytes on the wire are the same either way: a declared chunk holds
//! the file's bytes at its offset (stored files are never changed in
//! place), and a declaration keeps its chunk alive, so no other memory can
//! take its address while it is declared. Built on Linux only; elsewhere
//! connections use a plain [`TcpStream`] (see `limits::Watched`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::TryStreamExt;
use ncps_core::{ByteStream, FileRegion, NarBody};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most chunks declared and not yet sent on one connection: hyper
/// holds a few at a time; past this the oldest go (and are written as
/// bytes, should hyper still hold them).
const MAX_DECLARED: usize = 64;

/// The chunks of file bytes a connection's responses have declared, in
/// the order hyper will write them; shared by the connection's stream and
/// the requests it serves (a request extension).
#[derive(Clone, Debug, Default)]
pub(crate) struct FileSends(Arc<Mutex<VecDeque<Declared>>>);

/// A chunk of a body and where its bytes lie in a file.
#[derive(Debug)]
struct Declared {
    /// The chunk, kept so its memory stays what it was declared.
    chunk: Bytes,
    file: Arc<File>,
    offset: u64,
}

/// A stretch of a file to send in place of the slice hyper asked for.
struct Region {
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// Whether it ends its declared chunk.
    ends_chunk: bool,
}

impl FileSends {
    fn declared(&self) -> std::sync::MutexGuard<'_, VecDeque<Declared>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `body`, whose bytes are those of `region` in order, declaring each
    /// chunk with its place in the file as it goes to hyper.
    pub(crate) fn declare(&self, body: ByteStream, region: FileRegion) -> ByteStream {
        let sends = self.clone();
        let (mut offset, end) = (region.offset, region.offset + region.len);
        Box::pin(body.map_ok(move |chunk| {
            let next = offset + chunk.len() as u64;
            // Beyond the region (never, as storage promises) is not declared.
            if !chunk.is_empty() && next <= end {
                let mut declared = sends.declared();
                if declared.len() >= MAX_DECLARED {
                    declared.pop_front();
                }
                declared.push_back(Declared {
                    chunk: chunk.clone(),
                    file: region.file.clone(),
                    offset,
                });
            }
            offset = next;
            chunk
        }))
    }

    /// The file region behind `slice`, when it is (the start of) a slice of
    /// a declared chunk.
    fn region(&self, slice: &[u8]) -> Option<Region> {
        if slice.is_empty() {
            return None;
        }
        let at = slice.as_ptr() as usize;
        let declared = self.declared();
        declared.iter().find_map(|d| {
            let start = d.chunk.as_ptr() as usize;
            let skip = at.checked_sub(start).filter(|skip| *skip < d.chunk.len())?;
            let len = slice.len().min(d.chunk.len() - skip);
            Some(Region {
                file: d.file.clone(),
                offset: d.offset + skip as u64,
                len,
                ends_chunk: skip + len == d.chunk.len(),
            })
        })
    }

    /// Forgets the chunks up to the one ending at `region`: all written.
    fn sent(&self, region: &Region) {
        let mut declared = self.declared();
        if let Some(at) = declared.iter().position(|d| {
            Arc::ptr_eq(&d.file, &region.file)
                && d.offset + d.chunk.len() as u64 == region.offset + region.len as u64
        }) {
            declared.drain(..=at);
        }
    }
}

/// The bytes of `nar` for a response to `request`: declared to its
/// connection when they are a file region and the connection sends those
/// (HTTP/1 on a [`ZeroCopy`] stream), else as they are.
pub(crate) fn declared<B>(request: &http::Request<B>, nar: NarBody) -> ByteStream {
    match (request.extensions().get::<FileSends>(), nar.file) {
        (Some(sends), Some(region)) if request.version() <= http::Version::HTTP_11 => {
            sends.declare(nar.body, region)
        }
        _ => nar.body,
    }
}

/// A [`TcpStream`] whose writes of declared file bytes use `sendfile(2)`.
pub(crate) struct ZeroCopy {
    stream: TcpStream,
    sends: FileSends,
}

impl ZeroCopy {
    /// `stream`, sending from files what `sends` declares.
    pub(crate) fn new(stream: TcpStream, sends: FileSends) -> ZeroCopy {
        ZeroCopy { stream, sends }
    }

    /// Writes the slices from the first on: runs of plain slices with one
    /// `writev`, each declared slice with `sendfile`, until one is written
    /// short or the socket is full. Returns how many bytes went out.
    fn write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        let mut rest = bufs;
        while let Some(first) = rest.first() {
            let (step, wanted, used) = match self.sends.region(first) {
                Some(region) => {
                    let step = self.send_region(cx, &region);
                    if let Poll::Ready(Ok(n)) = step
                        && n == region.len
                        && region.ends_chunk
                    {
                        self.sends.sent(&region);
                    }
                    (step, region.len, 1)
                }
                None => {
                    let plain = 1 + rest[1..]
                        .iter()
                        .take_while(|b| self.sends.region(b).is_none())
                        .count();
                    let wanted = rest[..plain].iter().map(|b| b.len()).sum();
                    let step = if plain < rest.len() {
                        // Headers before a file's bytes: held back to go
                        // out in the same segments (as nginx's tcp_nopush).
                        self.send_more(cx, &rest[..plain])
                    } else {
                        Pin::new(&mut self.stream).poll_write_vectored(cx, &rest[..plain])
                    };
                    (step, wanted, plain)
                }
            };
            match step {
                Poll::Ready(Ok(n)) => {
                    written += n;
                    // A region shorter than its slice (a slice running past
                    // its chunk) counts as a short write: hyper asks again
                    // for the rest.
                    if n < wanted || wanted < rest[..used].iter().map(|b| b.len()).sum() {
                        break;
                    }
                    rest = &rest[used..];
                }
                // Report what went out; the error or the wait comes again on
                // the next call.
                Poll::Ready(Err(_)) | Poll::Pending if written > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(written))
    }

    /// Sends `bufs` (or as much as the socket takes) with `MSG_MORE`: more
    /// is coming at once (a file region), so the kernel waits for it to fill
    /// the segment instead of sending these few bytes alone.
    fn send_more(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(tokio::io::Interest::WRITABLE, || {
                let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
                sendmsg(
                    &self.stream,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    flags,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// Sends `region` (or as much as the socket takes) from its file.
    fn send_region(&self, cx: &mut Context<'_>, region: &Region) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let mut offset = region.offset;
            let sent = self.stream.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.stream, &*region.file, Some(&mut offset), region.len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a stored file ended before its declared bytes did",
                    )));
                }
                Ok(n) => {
                    #[cfg(test)]
                    tests::SENT_FROM_FILES
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for ZeroCopy {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopy {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_slices(cx, bufs)
    }

    /// Always: hyper then queues body chunks as they are instead of copying
    /// them into one buffer, so a mapped slice reaches [`ZeroCopy`] whole.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    #[cfg(feature = "local-storage")]
    use ncps_core::Storage;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes [`ZeroCopy`] sent with `sendfile`, in this test binary.
    pub(crate) static SENT_FROM_FILES: AtomicU64 = AtomicU64::new(0);

    #[cfg(feature = "local-storage")]
    #[tokio::test]
    async fn mapped_slices_go_out_with_sendfile_and_arrive_whole() {
        // A stored NAR of three map windows and a bit, read back from an
        // odd offset (a resumed download) as slices of mappings declared to
        // the connection, as a NAR hit is.
        let dir = tempfile::tempdir().unwrap();
        let storage = ncps_store::LocalStorage::new(dir.path()).unwrap();
        let data: Vec<u8> = (0..12_500_000u32).map(|i| (i % 253) as u8).collect();
        let body = futures::stream::iter([Ok(Bytes::from(data.clone()))]).boxed();
        storage.put("nar/x.nar", body).await.unwrap();
        let from = 1001;
        let object = storage.get_range("nar/x.nar", from, u64::MAX).await;
        let object = object.unwrap().unwrap();
        assert!(object.file.is_some(), "a large range is a file region");
        let sends = FileSends::default();
        let mut request = http::Request::new(());
        request.extensions_mut().insert(sends.clone());
        let (size, body, file) = (Some(object.size), object.body, object.file);
        let mut stored = declared(&request, NarBody { size, body, file });
        let mut pieces = vec![Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n")];
        while let Some(chunk) = stored.next().await {
            pieces.push(chunk.unwrap());
        }
        assert!(pieces.len() >= 4, "{} windows", pieces.len() - 1);
        assert!(sends.region(&pieces[1][5..]).is_some());
        pieces.push(Bytes::from_static(b"trailing plain bytes"));
        let want: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        assert!(want[19..want.len() - 20] == data[from as usize..]);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, (server, _)) = (client.unwrap(), accepted.unwrap());
        let before = SENT_FROM_FILES.load(Ordering::Relaxed);
        // The writer gives every unwritten piece at once, as hyper does; the
        // socket fills long before 12 MB, so writes come back short.
        let writer = tokio::spawn(async move {
            let mut out = ZeroCopy::new(server, sends);
            let (mut at, mut skip) = (0, 0);
            let mut calls = 0;
            while at < pieces.len() {
                let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&pieces[at][skip..]))
                    .chain(pieces[at + 1..].iter().map(|p| IoSlice::new(p)))
                    .collect();
                let mut n = out.write_vectored(&slices).await.unwrap();
                calls += 1;
                while n > 0 {
                    let left = pieces[at].len() - skip;
                    if n >= left {
                        n -= left;
                        (at, skip) = (at + 1, 0);
                    } else {
                        skip += n;
                        n = 0;
                    }
                }
            }
            out.shutdown().await.unwrap();
            calls
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let calls = writer.await.unwrap();
        assert!(
            got == want,
            "{} bytes arrived, {} sent",
            got.len(),
            want.len()
        );
        assert!(calls > 1, "one write call took everything");
        let sent = SENT_FROM_FILES.load(Ordering::Relaxed) - before;
        assert!(
            sent >= data.len() as u64 - from,
            "only {sent} bytes went out with sendfile"
        );
    }
}
