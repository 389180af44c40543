//! `sha256:` hashes as narinfos write them (`NarHash`, `FileHash`).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{Context, SHA256, digest};

use crate::{Error, Result, nix32};

/// A SHA-256 hash, written `sha256:<nix32>`.
///
/// Parsing also accepts base16 (`sha256:<64 hex>`) and SRI (`sha256-<base64>`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NixHash([u8; 32]);

impl NixHash {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NixHash(bytes)
    }

    /// The SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        NixHash(to_array(digest(&SHA256, data)))
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 52-character nix32 form, without the `sha256:` prefix.
    pub fn to_nix32(&self) -> String {
        nix32::encode(&self.0)
    }
}

impl FromStr for NixHash {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidInput(format!("hash {s:?}: {why}"));
        let bytes = if let Some(b64) = s.strip_prefix("sha256-") {
            STANDARD
                .decode(b64)
                .map_err(|_| bad("SRI form is not valid base64"))?
        } else if let Some(rest) = s.strip_prefix("sha256:") {
            match rest.len() {
                52 => nix32::decode(rest, 32)?,
                64 => decode_hex(rest).ok_or_else(|| bad("invalid base16"))?,
                _ => return Err(bad("expected 52 nix32 or 64 base16 characters")),
            }
        } else {
            return Err(bad("only sha256 hashes are supported"));
        };
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("a sha256 hash has 32 bytes"))?;
        Ok(NixHash(bytes))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl fmt::Display for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn to_array(d: ring::digest::Digest) -> [u8; 32] {
    d.as_ref()
        .try_into()
        .expect("a SHA-256 digest has 32 bytes")
}

/// A running SHA-256 with a byte count: what a streamed NAR is checked with.
///
/// ring's SHA-256 (assembly with SSE/AVX paths) runs about 1.7x as fast as
/// sha2's portable code on CPUs without SHA extensions, and every byte of a
/// cold NAR goes through it.
#[derive(Clone)]
pub struct HashingCounter {
    hasher: Context,
    len: u64,
}

impl Default for HashingCounter {
    fn default() -> Self {
        HashingCounter {
            hasher: Context::new(&SHA256),
            len: 0,
        }
    }
}

impl HashingCounter {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }

    /// The number of bytes added so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes were added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash and size of everything added.
    pub fn finish(self) -> (NixHash, u64) {
        (NixHash(to_array(self.hasher.finish())), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_forms() {
        let nix32: NixHash = "sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
            .parse()
            .unwrap();
        let hex: NixHash =
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
                .parse()
                .unwrap();
        let sri: NixHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
            .parse()
            .unwrap();
        assert_eq!(nix32, NixHash::digest(b"hello"));
        assert_eq!(hex, nix32);
        assert_eq!(sri, nix32);
        assert_eq!(
            sri.to_string(),
            "sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
        );
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        for bad in [
            "md5:abc",
            "sha256:xyz",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98zz",
            "sha256-!!!",
            "sha256-aGVsbG8=",
            "",
        ] {
            assert!(bad.parse::<NixHash>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn counter_hashes_in_pieces() {
        let mut c = HashingCounter::default();
        c.update(b"he");
        c.update(b"llo");
        assert_eq!(c.finish(), (NixHash::digest(b"hello"), 5));
    }
}
