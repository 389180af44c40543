//! The `Storage` trait: where NAR bytes live, streamed in and out.

use std::fmt::Debug;
use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::Result;

/// A stream of bytes; an `Err` item aborts whoever consumes it.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An object read from storage.
pub struct StoredObject {
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes.
    pub body: ByteStream,
}

impl Debug for StoredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredObject")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Byte storage for NARs, addressed by keys such as `nar/<hash>.nar.xz`.
///
/// Implementations never hold a whole object in memory, and never make a
/// partly written object visible: after `put` fails, `get` still answers what
/// it answered before.
#[async_trait]
pub trait Storage: Send + Sync + Debug {
    /// Stores `body` under `key`, replacing any object there once complete.
    ///
    /// If `body` yields an error, nothing is stored and that error is returned.
    /// Returns the number of bytes stored.
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64>;

    /// Reads the object under `key`, or `None` if there is none.
    async fn get(&self, key: &str) -> Result<Option<StoredObject>>;

    /// The size of the object under `key`, or `None` if there is none.
    async fn head(&self, key: &str) -> Result<Option<u64>>;

    /// Deletes the object under `key`; returns whether there was one.
    async fn delete(&self, key: &str) -> Result<bool>;
}
