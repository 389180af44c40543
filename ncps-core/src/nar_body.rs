//! What the engine answers for a NAR: its bytes on their way to a client
//! ([`NarBody`]), or what it can say of its size ([`NarSize`]).

use crate::ByteStream;

/// A NAR on its way to a client.
pub struct NarBody {
    /// The size of the file, when known before the body is sent.
    pub size: Option<u64>,
    /// The bytes; an `Err` item means the transfer must be aborted.
    pub body: ByteStream,
    /// Where `body`'s bytes lie in a stored file, when they do (see
    /// [`crate::StoredObject::file`]): a server may send them from there.
    pub file: Option<crate::FileRegion>,
}

impl std::fmt::Debug for NarBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarBody")
            .field("size", &self.size)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// What the cache can say of a NAR's size, without sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarSize {
    /// The cache cannot serve this NAR.
    Absent,
    /// The cache can serve it: this many bytes.
    Known(u64),
    /// The cache can serve it (from an upstream) but does not know its size
    /// before the download.
    Unknown,
}

impl NarSize {
    /// Whether the cache can serve the NAR.
    pub fn is_available(self) -> bool {
        self != NarSize::Absent
    }

    /// Its size, if known.
    pub fn bytes(self) -> Option<u64> {
        match self {
            NarSize::Known(size) => Some(size),
            NarSize::Absent | NarSize::Unknown => None,
        }
    }
}
