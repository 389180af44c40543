//! The `Storage` trait: where NAR bytes live, streamed in and out, and
//! what a read from storage returns: the bytes as a stream and, when they
//! are a stretch of a local file, that [`FileRegion`], so a server can send
//! them from the file without copying them through the process.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::Result;

/// A stream of bytes; an `Err` item aborts whoever consumes it.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An object read from storage.
pub struct StoredObject {
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes (of the range asked for, from [`Storage::get_range`]).
    pub body: ByteStream,
    /// Where `body`'s bytes lie in a local file, when they do: `body`
    /// yields exactly the bytes of this region, in order. `None` for
    /// bytes from elsewhere (S3, memory) or read into memory already.
    pub file: Option<FileRegion>,
}

impl Debug for StoredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredObject")
            .field("size", &self.size)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A stretch of a stored file: `len` bytes from `offset`. The file is never
/// changed in place while it can be read (backends replace and delete
/// files, never rewrite them), so sending the region (with `sendfile(2)`)
/// sends the same bytes as the body it describes.
#[derive(Clone, Debug)]
pub struct FileRegion {
    /// The open file.
    pub file: Arc<File>,
    /// Where the bytes start in the file.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

impl FileRegion {
    /// The `len` bytes of this region from `offset` on, cut at its end.
    pub fn slice(&self, offset: u64, len: u64) -> FileRegion {
        let offset = offset.min(self.len);
        FileRegion {
            file: self.file.clone(),
            offset: self.offset + offset,
            len: len.min(self.len - offset),
        }
    }
}

/// The `len` bytes of `body` from `offset` on.
pub fn slice(body: ByteStream, offset: u64, len: u64) -> ByteStream {
    let state = (body, offset, len);
    Box::pin(futures::stream::unfold(
        state,
        |(mut body, mut skip, mut left)| async move {
            while left > 0 {
                let mut chunk = match body.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (body, 0, 0))),
                };
                if skip >= chunk.len() as u64 {
                    skip -= chunk.len() as u64;
                    continue;
                }
                let _ = chunk.split_to(skip as usize);
                skip = 0;
                chunk.truncate(left.min(chunk.len() as u64) as usize);
                left -= chunk.len() as u64;
                return Some((Ok(chunk), (body, skip, left)));
            }
            None
        },
    ))
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

    /// Reads `len` bytes from `offset` of the object under `key`, or `None`
    /// if there is none. The returned `size` is the whole object's; the body
    /// holds only the range, cut short at the object's end.
    ///
    /// The default reads from the start and skips; backends that can seek override it.
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<StoredObject>> {
        Ok(self.get(key).await?.map(|object| StoredObject {
            size: object.size,
            file: object.file.map(|file| file.slice(offset, len)),
            body: slice(object.body, offset, len),
        }))
    }

    /// The size of the object under `key`, or `None` if there is none.
    async fn head(&self, key: &str) -> Result<Option<u64>>;

    /// Deletes the object under `key`; returns whether there was one.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Every object whose key starts with `prefix/`, as (key, size), for
    /// checks of storage against the database (`ncps-cli fsck`); `None` if
    /// the backend cannot list. The default: `None`.
    async fn list_objects(&self, prefix: &str) -> Result<Option<Vec<(String, u64)>>> {
        let _ = prefix;
        Ok(None)
    }

    /// Writes that started and never finished, as a crashed process leaves
    /// them (temporary files, multipart uploads); only those of `key` when
    /// given. Some may still be running in another process; see
    /// [`Incomplete`]. The default: none.
    async fn incomplete(&self, key: Option<&str>) -> Result<Vec<Incomplete>> {
        let _ = key;
        Ok(Vec::new())
    }

    /// Throws away an unfinished write found by [`Storage::incomplete`].
    async fn discard(&self, incomplete: &Incomplete) -> Result<()> {
        let _ = incomplete;
        Ok(())
    }

    /// How many more bytes can be stored, when the backend can tell (a
    /// local filesystem can; S3 has no such limit). The engine refuses a
    /// download that cannot fit with [`crate::Error::InsufficientStorage`]
    /// before it starts. The default: `None`, unknown.
    async fn available_space(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// An unfinished write: see [`Storage::incomplete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incomplete {
    /// The key being written, when the backend knows it: whoever holds that
    /// key's download lock may still be writing it.
    pub key: Option<String>,
    /// The backend's name for the write (a file name, an upload id).
    pub id: String,
    /// How long ago it started, when known.
    pub age: Option<std::time::Duration>,
}

impl Incomplete {
    /// Whether it started at least `age` ago; when its age is unknown,
    /// only if `age` is zero.
    pub fn older_than(&self, age: std::time::Duration) -> bool {
        age.is_zero() || self.age.is_some_and(|started| started >= age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slices_across_chunks() {
        let data: Vec<u8> = (0..100).collect();
        for (offset, len) in [
            (0, 100),
            (5, 10),
            (9, 2),
            (95, 50),
            (100, 5),
            (0, 0),
            (33, 1),
        ] {
            let chunks: Vec<io::Result<Bytes>> = data
                .chunks(10)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let body: ByteStream = Box::pin(futures::stream::iter(chunks));
            let got: Vec<u8> = slice(body, offset, len)
                .map(|c| c.unwrap().to_vec())
                .concat()
                .await;
            let end = (offset + len).min(100) as usize;
            let start = (offset as usize).min(end);
            assert_eq!(got, data[start..end], "{offset} {len}");
        }
    }

    #[test]
    fn file_regions_slice_within_themselves() {
        let region = FileRegion {
            file: Arc::new(tempfile::tempfile().unwrap()),
            offset: 100,
            len: 50,
        };
        for (offset, len, want) in [
            (0, 50, (100, 50)),
            (10, 5, (110, 5)),
            (40, 99, (140, 10)),
            (60, 5, (150, 0)),
        ] {
            let got = region.slice(offset, len);
            assert_eq!((got.offset, got.len), want, "{offset} {len}");
        }
    }
}
