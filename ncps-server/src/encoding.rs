//! zstd transfer encoding of uncompressed NARs for clients that accept it.

use ncps_core::ByteStream;
use tokio_util::io::{ReaderStream, StreamReader};

/// Whether an `Accept-Encoding` value accepts zstd (with a non-zero q).
pub fn accepts_zstd(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q_zero = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        coding.eq_ignore_ascii_case("zstd") && !q_zero
    })
}

/// Compresses a body with zstd as it streams.
pub fn zstd(body: ByteStream) -> ByteStream {
    let reader = StreamReader::new(body);
    let encoder = async_compression::tokio::bufread::ZstdEncoder::new(reader);
    Box::pin(ReaderStream::new(encoder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_accept_encoding() {
        assert!(accepts_zstd("zstd"));
        assert!(accepts_zstd("deflate, gzip, br, zstd"));
        assert!(accepts_zstd("gzip;q=1.0, ZSTD;q=0.5"));
        assert!(!accepts_zstd("zstd;q=0"));
        assert!(!accepts_zstd("gzip, br"));
        assert!(!accepts_zstd(""));
    }
}
