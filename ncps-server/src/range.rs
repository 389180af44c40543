//! `Range: bytes=...` requests, as Nix sends them to resume a NAR download.

/// What a `Range` header asks of an object of a known size.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `len` bytes from `start`.
    Satisfiable {
        /// The first byte.
        start: u64,
        /// How many bytes.
        len: u64,
    },
    /// Nothing of the object: answer 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range against an object of `size` bytes.
/// `None` means the header is to be ignored (malformed, another unit, or
/// several ranges) and the whole object served.
pub fn parse(header: &str, size: u64) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // The last `n` bytes.
        let n: u64 = last.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(ByteRange::Unsatisfiable);
        }
        let start = size.saturating_sub(n);
        ByteRange::Satisfiable {
            start,
            len: size - start,
        }
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            u64::MAX
        } else {
            last.parse().ok()?
        };
        if end < start {
            return None;
        }
        if start >= size {
            return Some(ByteRange::Unsatisfiable);
        }
        ByteRange::Satisfiable {
            start,
            len: end.min(size - 1) - start + 1,
        }
    };
    Some(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(start: u64, len: u64) -> Option<ByteRange> {
        Some(ByteRange::Satisfiable { start, len })
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse("bytes=0-9", 100), ok(0, 10));
        assert_eq!(parse("bytes=90-", 100), ok(90, 10));
        assert_eq!(parse("bytes=-5", 100), ok(95, 5));
        assert_eq!(parse("bytes=-500", 100), ok(0, 100));
        assert_eq!(parse("bytes=50-500", 100), ok(50, 50));
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(parse("bytes=100-", 100), Some(ByteRange::Unsatisfiable));
        assert_eq!(parse("bytes=-0", 100), Some(ByteRange::Unsatisfiable));
        assert_eq!(parse("bytes=0-", 0), Some(ByteRange::Unsatisfiable));
        assert_eq!(parse("bytes=5-1", 100), None);
        assert_eq!(parse("bytes=0-1,5-6", 100), None);
        assert_eq!(parse("items=0-1", 100), None);
        assert_eq!(parse("bytes=x-", 100), None);
    }
}
