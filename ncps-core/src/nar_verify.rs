//! Checks a NAR while it streams: `FileHash`/`FileSize` of the bytes as
//! transferred, `NarHash`/`NarSize` of the decompressed NAR.
//!
//! The last chunk is held back until every check has passed, so a consumer
//! never sees a complete body that turns out to be wrong: it sees an error
//! instead, and aborts (a client's transfer, a storage write).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use async_compression::tokio::write::{BrotliDecoder, BzDecoder, XzDecoder, ZstdDecoder};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::hash::HashingCounter;
use crate::{ByteStream, Error, NarInfo, NarRecord, NixHash, Result};

/// What a NAR file must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarCheck {
    /// `Compression:` of the file.
    pub compression: String,
    /// `FileHash:`, if known.
    pub file_hash: Option<NixHash>,
    /// `FileSize:`, if known.
    pub file_size: Option<u64>,
    /// `NarHash:`
    pub nar_hash: NixHash,
    /// `NarSize:`
    pub nar_size: u64,
}

impl NarCheck {
    /// The checks a NAR record promises.
    pub fn of_record(record: &NarRecord) -> Result<Self> {
        Ok(NarCheck {
            compression: record.compression.clone(),
            file_hash: record.file_hash.as_deref().map(str::parse).transpose()?,
            file_size: record.file_size,
            nar_hash: record.nar_hash.parse()?,
            nar_size: record.nar_size,
        })
    }

    /// The checks a narinfo promises.
    pub fn from_narinfo(info: &NarInfo) -> Self {
        NarCheck {
            compression: info.compression.clone(),
            file_hash: info.file_hash,
            file_size: info.file_size,
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
        }
    }

    /// Whether a NAR file that turned out as `m` is the one promised.
    fn judge(&self, m: Measured) -> io::Result<()> {
        if let Some(size) = self.file_size
            && size != m.file_size
        {
            return Err(invalid(format!(
                "NAR file has {} bytes, FileSize says {size}",
                m.file_size
            )));
        }
        if let Some(hash) = self.file_hash
            && hash != m.file_hash
        {
            return Err(invalid(format!(
                "NAR file hashes to {}, FileHash says {hash}",
                m.file_hash
            )));
        }
        if m.nar_size != self.nar_size {
            return Err(invalid(format!(
                "NAR has {} bytes, NarSize says {}",
                m.nar_size, self.nar_size
            )));
        }
        if m.nar_hash != self.nar_hash {
            return Err(invalid(format!(
                "NAR hashes to {}, NarHash says {}",
                m.nar_hash, self.nar_hash
            )));
        }
        Ok(())
    }
}

/// What a NAR file turned out to be, read to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Measured {
    /// The hash of the file as transferred.
    pub(crate) file_hash: NixHash,
    /// Its size.
    pub(crate) file_size: u64,
    /// The hash of the decompressed NAR.
    pub(crate) nar_hash: NixHash,
    /// Its size.
    pub(crate) nar_size: u64,
}

/// Sizes a NAR file and its NAR may not pass while they stream.
#[derive(Clone, Copy, Debug, Default)]
struct Bounds {
    /// The file's exact size (`FileSize:`), if known.
    file_size: Option<u64>,
    /// The NAR's exact size (`NarSize:`), if known; without a `FileSize` it
    /// also bounds the file: exactly when `uncompressed`, else
    /// [`max_file_size`].
    nar_size: Option<u64>,
    /// Whether the file is the NAR itself (`Compression: none`).
    uncompressed: bool,
}

impl Bounds {
    /// Whether `file_len` bytes of the file are still within bounds.
    fn check(&self, file_len: u64) -> io::Result<()> {
        match *self {
            Bounds {
                file_size: Some(size),
                ..
            } if file_len > size => Err(invalid(format!(
                "NAR file is larger than its FileSize {size}"
            ))),
            // Without a FileSize, an uncompressed file is the NAR: cut it
            // at the first byte past NarSize.
            Bounds {
                file_size: None,
                nar_size: Some(nar_size),
                uncompressed: true,
            } if file_len > nar_size => Err(invalid(format!(
                "NAR file (Compression: none) is larger than its NarSize {nar_size}"
            ))),
            // Without a FileSize, an endless body is still cut: no
            // compression makes a NAR much larger than it is.
            Bounds {
                file_size: None,
                nar_size: Some(nar_size),
                ..
            } if file_len > max_file_size(nar_size) => Err(invalid(format!(
                "NAR file is larger than {} bytes, too large for its NarSize {nar_size}",
                max_file_size(nar_size),
            ))),
            _ => Ok(()),
        }
    }
}

/// What decides, once a NAR file is read, whether it passes.
type Judge = Box<dyn FnOnce(Measured) -> io::Result<()> + Send>;

/// Whether NARs with this `Compression:` can be checked (and so served) here.
pub fn is_supported_compression(compression: &str) -> bool {
    matches!(compression, "none" | "xz" | "zstd" | "bzip2" | "br")
}

/// The file name extension Nix gives NARs with this `Compression:`.
pub fn compression_extension(compression: &str) -> Option<&'static str> {
    Some(match compression {
        "none" => "",
        "xz" => ".xz",
        "zstd" => ".zst",
        "bzip2" => ".bz2",
        "br" => ".br",
        "lz4" => ".lz4",
        "lzip" => ".lzip",
        _ => return None,
    })
}

/// The most bytes a NAR file of `nar_size` bytes may take when its narinfo
/// gives no `FileSize`: the NAR plus the worst expansion of xz, zstd, bzip2
/// or brotli on incompressible data (well under 1/64), plus their headers.
pub fn max_file_size(nar_size: u64) -> u64 {
    nar_size
        .saturating_add(nar_size / 64)
        .saturating_add(64 * 1024)
}

/// Hashes and counts decompressed NAR bytes, refusing more than the NAR's size.
struct NarSink {
    counter: Arc<Mutex<HashingCounter>>,
    limit: u64,
}

impl AsyncWrite for NarSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut counter = self.counter.lock().unwrap_or_else(PoisonError::into_inner);
        if counter.len() + buf.len() as u64 > self.limit {
            return Poll::Ready(Err(invalid(format!(
                "NAR is larger than its NarSize {}",
                self.limit
            ))));
        }
        counter.update(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A NAR that fails its checks, as the I/O error the streams carry.
pub(crate) fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

type Decoder = Pin<Box<dyn AsyncWrite + Send>>;

fn decoder(compression: &str, sink: NarSink) -> Result<Decoder> {
    Ok(match compression {
        "none" => Box::pin(sink),
        "xz" => Box::pin(XzDecoder::new(sink)),
        "zstd" => Box::pin(ZstdDecoder::new(sink)),
        "bzip2" => Box::pin(BzDecoder::new(sink)),
        "br" => Box::pin(BrotliDecoder::new(sink)),
        other => {
            return Err(Error::InvalidInput(format!(
                "NARs with Compression: {other} cannot be checked here"
            )));
        }
    })
}

/// Chunks the stream may run ahead of the checks. The checks (hashing,
/// decompressing) run in a task of their own, so on a multi-core machine
/// they overlap with receiving the next chunks and passing them on.
const AHEAD: usize = 16;

/// The checks themselves: fed every chunk in order, then asked for a verdict.
struct Checker {
    compression: String,
    judge: Option<Judge>,
    file: HashingCounter,
    nar: Arc<Mutex<HashingCounter>>,
    decoder: Decoder,
    /// `Compression: none`: the file is the NAR, hashed once for both checks.
    uncompressed: bool,
    /// Bytes of the file so far, when `file` does not hash them.
    file_len: u64,
}

impl Checker {
    /// Checks every chunk `chunks` brings, then the whole; stops at the
    /// first failure.
    async fn run(mut self, mut chunks: mpsc::Receiver<Bytes>) -> io::Result<()> {
        while let Some(chunk) = chunks.recv().await {
            self.take(&chunk).await?;
        }
        let measured = self.finish().await?;
        match self.judge.take() {
            Some(judge) => judge(measured),
            None => Ok(()),
        }
    }

    async fn take(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.uncompressed {
            self.file_len += chunk.len() as u64;
        } else {
            self.file.update(chunk);
        }
        let written = self.decoder.write_all(chunk).await;
        if self.uncompressed {
            return written;
        }
        written.map_err(|e| self.not_decompressing(e))
    }

    fn not_decompressing(&self, e: io::Error) -> io::Error {
        invalid(format!(
            "NAR does not decompress as {}: {e}",
            self.compression
        ))
    }

    async fn finish(&mut self) -> io::Result<Measured> {
        if let Err(e) = self.decoder.shutdown().await {
            return Err(self.not_decompressing(e));
        }
        let nar = std::mem::take(&mut *self.nar.lock().unwrap_or_else(PoisonError::into_inner));
        let (nar_hash, nar_size) = nar.finish();
        let (file_hash, file_size) = if self.uncompressed {
            (nar_hash, self.file_len)
        } else {
            std::mem::take(&mut self.file).finish()
        };
        Ok(Measured {
            file_hash,
            file_size,
            nar_hash,
            nar_size,
        })
    }
}

/// The checks' task: not started until the stream is first polled (so inside
/// the runtime), then fed through a channel.
struct Checks {
    idle: Option<Checker>,
    chunks: Option<mpsc::Sender<Bytes>>,
    verdict: Option<JoinHandle<io::Result<()>>>,
}

impl Checks {
    fn start(&mut self) {
        if let Some(checker) = self.idle.take() {
            let (chunks, receiver) = mpsc::channel(AHEAD);
            self.chunks = Some(chunks);
            self.verdict = Some(tokio::spawn(checker.run(receiver)));
        }
    }

    /// Hands a chunk to the checks; false once they have stopped (failed).
    async fn feed(&mut self, chunk: Bytes) -> bool {
        self.start();
        match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        }
    }

    /// Ends the input and waits for the checks' verdict (asked once).
    async fn verdict(&mut self) -> io::Result<()> {
        self.start();
        self.chunks = None;
        match self.verdict.take() {
            Some(verdict) => verdict
                .await
                .unwrap_or_else(|e| Err(io::Error::other(format!("NAR check stopped: {e}")))),
            None => Err(io::Error::other("NAR check already ended")),
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        if let Some(verdict) = &self.verdict {
            verdict.abort();
        }
    }
}

struct State {
    input: ByteStream,
    /// Checked here, before a chunk is passed on, not in the checks' task:
    /// a body that runs past them must never reach its consumer whole.
    bounds: Bounds,
    /// Bytes of the file so far.
    file_len: u64,
    checks: Checks,
    held: Option<Bytes>,
    finished: bool,
}

impl State {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.finished {
            return None;
        }
        loop {
            match self.input.next().await {
                Some(Ok(chunk)) => {
                    self.file_len += chunk.len() as u64;
                    if let Err(e) = self.bounds.check(self.file_len) {
                        return self.fail(e);
                    }
                    if !self.checks.feed(chunk.clone()).await {
                        let e = match self.checks.verdict().await {
                            Err(e) => e,
                            Ok(()) => io::Error::other("NAR check stopped early"),
                        };
                        return self.fail(e);
                    }
                    if let Some(out) = self.held.replace(chunk) {
                        return Some(Ok(out));
                    }
                }
                Some(Err(e)) => return self.fail(e),
                None => {
                    self.finished = true;
                    return match self.checks.verdict().await {
                        Ok(()) => self.held.take().map(Ok),
                        Err(e) => Some(Err(e)),
                    };
                }
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Option<io::Result<Bytes>> {
        self.finished = true;
        Some(Err(e))
    }
}

/// Wraps `input` so that it yields the same bytes, but ends with an error
/// instead of its last chunk if any check of `check` fails.
///
/// The checks run in a task spawned on the current Tokio runtime when the
/// stream is first polled.
pub fn verified(input: ByteStream, check: NarCheck) -> Result<ByteStream> {
    let bounds = Bounds {
        file_size: check.file_size,
        nar_size: Some(check.nar_size),
        uncompressed: check.compression == "none",
    };
    let compression = check.compression.clone();
    checking(
        input,
        &compression,
        bounds,
        Box::new(move |measured| check.judge(measured)),
    )
}

/// Wraps `input`, a NAR file with this `Compression:` whose sizes and
/// hashes are not known yet, so that it yields the same bytes but ends with
/// an error instead of its last chunk if it does not decompress or `judge`
/// refuses what it measured.
pub(crate) fn measured(
    input: ByteStream,
    compression: &str,
    judge: impl FnOnce(Measured) -> io::Result<()> + Send + 'static,
) -> Result<ByteStream> {
    checking(input, compression, Bounds::default(), Box::new(judge))
}

fn checking(
    input: ByteStream,
    compression: &str,
    bounds: Bounds,
    judge: Judge,
) -> Result<ByteStream> {
    let nar = Arc::new(Mutex::new(HashingCounter::default()));
    let decoder = decoder(
        compression,
        NarSink {
            counter: nar.clone(),
            limit: bounds.nar_size.unwrap_or(u64::MAX),
        },
    )?;
    let checker = Checker {
        compression: compression.to_owned(),
        uncompressed: compression == "none",
        judge: Some(judge),
        file_len: 0,
        file: HashingCounter::default(),
        nar,
        decoder,
    };
    let state = State {
        input,
        bounds,
        file_len: 0,
        checks: Checks {
            idle: Some(checker),
            chunks: None,
            verdict: None,
        },
        held: None,
        finished: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut state| async move { state.next().await.map(|item| (item, state)) },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_compression::tokio::bufread::XzEncoder;
    use tokio::io::AsyncReadExt;

    fn chunks(data: &[u8]) -> ByteStream {
        let parts: Vec<io::Result<Bytes>> = data
            .chunks(1000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(parts))
    }

    async fn collect(stream: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn nar_bytes() -> Vec<u8> {
        (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect()
    }

    async fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        XzEncoder::new(data).read_to_end(&mut out).await.unwrap();
        out
    }

    fn check(compression: &str, file: &[u8], nar: &[u8]) -> NarCheck {
        NarCheck {
            compression: compression.into(),
            file_hash: Some(NixHash::digest(file)),
            file_size: Some(file.len() as u64),
            nar_hash: NixHash::digest(nar),
            nar_size: nar.len() as u64,
        }
    }

    #[tokio::test]
    async fn passes_good_bytes_through() {
        let nar = nar_bytes();
        let file = xz(&nar).await;
        let out = collect(verified(chunks(&file), check("xz", &file, &nar)).unwrap()).await;
        assert_eq!(out.unwrap(), file);
        let out = collect(verified(chunks(&nar), check("none", &nar, &nar)).unwrap()).await;
        assert_eq!(out.unwrap(), nar);
    }

    #[tokio::test]
    async fn fails_before_the_last_chunk_on_a_flipped_byte() {
        let nar = nar_bytes();
        let mut bad = nar.clone();
        bad[20_000] ^= 1;
        let mut stream = verified(chunks(&bad), check("none", &nar, &nar)).unwrap();
        let mut received = 0;
        let mut failed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(c) => received += c.len(),
                Err(e) => {
                    failed = true;
                    assert!(e.to_string().contains("FileHash"), "{e}");
                }
            }
        }
        assert!(failed);
        assert!(received < nar.len());
    }

    #[tokio::test]
    async fn checks_nar_hash_when_file_hash_is_unknown() {
        let nar = nar_bytes();
        let mut bad = nar.clone();
        bad[7] ^= 1;
        let mut c = check("none", &nar, &nar);
        c.file_hash = None;
        c.file_size = None;
        let e = collect(verified(chunks(&bad), c).unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("NarHash"), "{e}");
    }

    #[tokio::test]
    async fn fails_on_truncated_and_oversized_bodies() {
        let nar = nar_bytes();
        let file = xz(&nar).await;
        let e =
            collect(verified(chunks(&file[..file.len() / 2]), check("xz", &file, &nar)).unwrap())
                .await
                .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut c = check("none", &nar, &nar);
        c.file_size = None;
        c.file_hash = None;
        let mut longer = nar.clone();
        longer.push(0);
        let e = collect(verified(chunks(&longer), c).unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
    }

    #[tokio::test]
    async fn a_body_past_its_file_size_never_reaches_the_consumer_whole() {
        let nar = nar_bytes();
        // The right bytes, then more: the consumer must not get all of the
        // NAR (with a Content-Length of FileSize, it would look complete).
        let (received, e) = past_the_end(&nar, check("none", &nar, &nar)).await;
        assert!(e.to_string().contains("FileSize"), "{e}");
        assert!(received < nar.len(), "{received} bytes passed on");
    }

    /// Checks `nar` followed by 100,000 more bytes against `check`: how many
    /// bytes the consumer got, and the error the stream ended with.
    async fn past_the_end(nar: &[u8], check: NarCheck) -> (usize, io::Error) {
        let mut longer = nar.to_vec();
        longer.extend(std::iter::repeat_n(0u8, 100 * 1000));
        let mut stream = verified(chunks(&longer), check).unwrap();
        let mut received = 0;
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(c) => received += c.len(),
                Err(e) => failed = Some(e),
            }
        }
        (received, failed.expect("no error"))
    }

    #[tokio::test]
    async fn an_uncompressed_body_past_its_nar_size_never_reaches_the_consumer_whole() {
        // As above without a FileSize: an uncompressed file is cut at NarSize,
        // not at the slack compressed files get (max_file_size).
        let nar = nar_bytes();
        let mut c = check("none", &nar, &nar);
        c.file_size = None;
        c.file_hash = None;
        let (received, e) = past_the_end(&nar, c).await;
        assert!(e.to_string().contains("NarSize"), "{e}");
        assert!(received < nar.len(), "{received} bytes passed on");
    }

    #[tokio::test]
    async fn cuts_an_endless_body_without_file_size() {
        let nar = nar_bytes();
        let file = xz(&nar).await;
        let mut c = check("xz", &file, &nar);
        c.file_size = None;
        c.file_hash = None;
        let limit = max_file_size(nar.len() as u64);
        // A valid file followed by zeros (xz stream padding) that never end:
        // the decoder or the size cap stops it.
        for (compression, head) in [("xz", file.clone()), ("none", Vec::new())] {
            let pulled = Arc::new(Mutex::new(0u64));
            let counted = pulled.clone();
            let endless = futures::stream::iter(
                std::iter::once(Bytes::from(head))
                    .chain(std::iter::repeat_with(|| Bytes::from(vec![0u8; 4096]))),
            )
            .map(move |chunk| {
                *counted.lock().unwrap() += chunk.len() as u64;
                Ok(chunk)
            });
            let mut c = c.clone();
            c.compression = compression.into();
            collect(verified(Box::pin(endless), c).unwrap())
                .await
                .unwrap_err();
            assert!(*pulled.lock().unwrap() <= limit + 4096, "{compression}");
        }
        assert!(limit > nar.len() as u64);
    }

    #[test]
    fn refuses_compressions_it_cannot_check() {
        let nar = nar_bytes();
        assert!(verified(chunks(&nar), check("lz4", &nar, &nar)).is_err());
        assert!(!is_supported_compression("lzip"));
        assert_eq!(compression_extension("zstd"), Some(".zst"));
    }
}
