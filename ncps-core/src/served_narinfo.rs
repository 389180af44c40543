//! A narinfo as this cache serves it: its signed text and its entity tag.

use std::sync::Arc;

use bytes::Bytes;

use crate::NixHash;

/// A narinfo's text as served, with the HTTP entity tag that names it.
///
/// Both are made once, when the narinfo is read from the database, and kept
/// with the hot narinfo, so a repeated hit neither copies the text nor
/// hashes it again. Cloning is cheap (two reference counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedNarinfo {
    /// The narinfo text, signed with this cache's key.
    pub text: Bytes,
    /// The strong entity tag, quoted: the first 32 nix32 characters of the
    /// text's SHA-256, such as `"0c5…"`.
    pub etag: Arc<str>,
}

impl ServedNarinfo {
    /// Wraps `text` and computes its entity tag.
    pub fn new(text: String) -> Self {
        let etag = format!("\"{}\"", &NixHash::digest(text.as_bytes()).to_nix32()[..32]);
        ServedNarinfo {
            text: Bytes::from(text),
            etag: etag.into(),
        }
    }

    /// The text as a `&str` (it was a `String` when made).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).expect("made from a String")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_follows_the_text() {
        let a = ServedNarinfo::new("StorePath: /nix/store/a\n".into());
        let b = ServedNarinfo::new("StorePath: /nix/store/b\n".into());
        assert_eq!(a.as_str(), "StorePath: /nix/store/a\n");
        assert_eq!(a.etag.len(), 34);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert_ne!(a.etag, b.etag);
        assert_eq!(a, ServedNarinfo::new(a.as_str().to_owned()));
    }
}
