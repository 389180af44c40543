//! A TCP stream that sends memory-mapped NAR bytes with `sendfile(2)`.
//!
//! Local storage hands large NARs to hyper as slices of memory maps
//! (`ncps_store::file_region`). Written with `write(2)`, the kernel copies
//! each byte from the mapping into the socket. This stream looks up every
//! slice hyper asks it to write: a slice of a mapped window goes out with
//! `sendfile(2)` from the file and offset it maps, so the page cache's pages
//! go to the socket without that copy (as nginx's `sendfile on`); anything
//! else (headers, narinfos, small NARs) is written as usual, except that
//! bytes written just before a file region (a response's headers) are sent
//! with `MSG_MORE`, so they share segments with the file's first bytes (as
//! nginx's `tcp_nopush`).
//!
//! The bytes on the wire are the same either way: a window maps a file that
//! is never changed in place, and it stays mapped while hyper holds the
//! slice. Built on Linux with local storage only; elsewhere connections use
//! a plain [`TcpStream`] (see `limits::Watched`).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A [`TcpStream`] whose writes of mapped file slices use `sendfile(2)`.
pub(crate) struct ZeroCopy {
    stream: TcpStream,
}

impl From<TcpStream> for ZeroCopy {
    fn from(stream: TcpStream) -> ZeroCopy {
        ZeroCopy { stream }
    }
}

impl ZeroCopy {
    /// Writes the slices from the first on: runs of plain slices with one
    /// `writev`, each mapped slice with `sendfile`, until one is written
    /// short or the socket is full. Returns how many bytes went out.
    fn write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut written = 0;
        let mut rest = bufs;
        while let Some(first) = rest.first() {
            let (step, wanted, used) = match ncps_store::file_region(first) {
                Some(region) => (self.send_region(cx, &region), region.len, 1),
                None => {
                    let plain = 1 + rest[1..]
                        .iter()
                        .take_while(|b| ncps_store::file_region(b).is_none())
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
                    // A region shorter than its slice (never, in practice)
                    // counts as a short write: hyper asks again for the rest.
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
    fn send_region(
        &self,
        cx: &mut Context<'_>,
        region: &ncps_store::FileRegion,
    ) -> Poll<io::Result<usize>> {
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
                        "a stored file ended before its mapping did",
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
    use ncps_core::Storage;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes [`ZeroCopy`] sent with `sendfile`, in this test binary.
    pub(crate) static SENT_FROM_FILES: AtomicU64 = AtomicU64::new(0);

    #[tokio::test]
    async fn mapped_slices_go_out_with_sendfile_and_arrive_whole() {
        // A stored NAR of three map windows and a bit, read back as slices
        // of mappings, as a NAR hit is.
        let dir = tempfile::tempdir().unwrap();
        let storage = ncps_store::LocalStorage::new(dir.path()).unwrap();
        let data: Vec<u8> = (0..12_500_000u32).map(|i| (i % 253) as u8).collect();
        let body = futures::stream::iter([Ok(Bytes::from(data.clone()))]).boxed();
        storage.put("nar/x.nar", body).await.unwrap();
        let mut stored = storage.get("nar/x.nar").await.unwrap().unwrap().body;
        let mut pieces = vec![Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n")];
        while let Some(chunk) = stored.next().await {
            pieces.push(chunk.unwrap());
        }
        assert!(pieces.len() >= 4, "{} windows", pieces.len() - 1);
        assert!(ncps_store::file_region(&pieces[1]).is_some());
        pieces.push(Bytes::from_static(b"trailing plain bytes"));
        let want: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut client, (server, _)) = (client.unwrap(), accepted.unwrap());
        let before = SENT_FROM_FILES.load(Ordering::Relaxed);
        // The writer gives every unwritten piece at once, as hyper does; the
        // socket fills long before 12 MB, so writes come back short.
        let writer = tokio::spawn(async move {
            let mut out = ZeroCopy::from(server);
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
            sent >= data.len() as u64,
            "only {sent} bytes went out with sendfile"
        );
    }
}
