//! Stored files kept open between requests, as nginx's `open_file_cache`
//! keeps them: a repeated hit on the same NAR needs no `open(2)` or
//! `fstat(2)`, and so, when its bytes are mapped or already in the page
//! cache, no trip to tokio's blocking pool at all.
//!
//! Bounded by count (the least recently used go first) and by age: an entry
//! is used for [`VALID`] after it was opened, then the file is opened again.
//! Deleting or replacing a key through [`crate::LocalStorage`] forgets it at
//! once. A file deleted by another process (`ncps-cli gc`) can still be
//! served from here for up to [`VALID`]: its bytes are the same (stored
//! files never change in place), and its disk space comes back when the
//! entry goes.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ncps_core::aged_cache::AgedCache;

/// How long an open file is used before it is opened again.
pub(crate) const VALID: Duration = Duration::from_secs(30);

/// How many files are kept open at most, unless the process's descriptor
/// limit asks for fewer (see [`capacity`]).
pub(crate) const MAX_OPEN: usize = 1000;

/// A stored file as opened: the descriptor and the size it had.
#[derive(Clone, Debug)]
pub(crate) struct OpenFile {
    pub(crate) file: Arc<File>,
    pub(crate) size: u64,
}

impl OpenFile {
    pub(crate) fn new(file: File, size: u64) -> Self {
        OpenFile {
            file: Arc::new(file),
            size,
        }
    }
}

/// The open files by storage key.
#[derive(Debug)]
pub(crate) struct OpenFiles {
    /// Each kept [`VALID`] after it was opened; swept out about as often, so
    /// idle descriptors do not linger until the bound.
    cache: AgedCache<OpenFile>,
    /// Moves on at every forget, so a file opened before a delete is not
    /// remembered after it.
    generation: AtomicU64,
}

impl OpenFiles {
    /// Room for `capacity` open files; zero keeps none.
    pub(crate) fn new(capacity: usize) -> Self {
        OpenFiles {
            cache: AgedCache::new(capacity, VALID),
            generation: AtomicU64::new(0),
        }
    }

    /// The open file of `key`, if kept and young enough.
    pub(crate) fn get(&self, key: &str) -> Option<OpenFile> {
        self.cache.get(key)
    }

    /// What to pass to [`OpenFiles::insert`] for a file about to be opened.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `open`, just opened, for `key`, unless some key was forgotten
    /// since `generation` was taken (the file may be one just deleted).
    pub(crate) fn insert(&self, key: &str, open: &OpenFile, generation: u64) {
        self.cache.insert(key, open.clone());
        if self.generation() != generation {
            self.cache.remove(key);
        }
    }

    /// Forgets the file of `key`: it is being deleted or replaced.
    pub(crate) fn forget(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(key);
    }
}

/// How many files to keep open: [`MAX_OPEN`], or a quarter of the
/// process's descriptor limit if that is less, so connections and
/// downloads keep most of it.
pub(crate) fn capacity() -> usize {
    MAX_OPEN.min(descriptor_limit() / 4)
}

fn descriptor_limit() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// `len` bytes of `file` from `offset` if the page cache holds them all
/// already, read without blocking (`preadv2` with `RWF_NOWAIT`); `None` when
/// reading would wait for the disk or the file system cannot say, so the
/// caller reads in the blocking pool instead.
#[cfg(target_os = "linux")]
pub(crate) fn read_cached(file: &File, offset: u64, len: usize) -> Option<Bytes> {
    use rustix::io::{ReadWriteFlags, preadv2};
    if len == 0 {
        return Some(Bytes::new());
    }
    let mut buf = vec![0u8; len];
    let read = preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf)],
        offset,
        ReadWriteFlags::NOWAIT,
    );
    // A short read (part of the range not cached) or any error (EAGAIN,
    // EOPNOTSUPP, ...) sends the caller to the blocking read.
    (read.ok() == Some(len)).then(|| Bytes::from(buf))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn read_cached(_file: &File, _offset: u64, _len: usize) -> Option<Bytes> {
    None
}

/// `len` bytes of `file` from `offset`, waiting for the disk if need be.
pub(crate) fn read(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let mut bytes = vec![0; len];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, offset)?;
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn open(data: &[u8]) -> OpenFile {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        OpenFile::new(file, data.len() as u64)
    }

    #[test]
    fn keeps_forgets_and_stays_bounded() {
        let files = OpenFiles::new(4);
        let a = open(b"a");
        files.insert("nar/a.nar", &a, files.generation());
        assert_eq!(files.get("nar/a.nar").unwrap().size, 1);
        files.forget("nar/a.nar");
        assert!(files.get("nar/a.nar").is_none());
        for i in 0..20 {
            files.insert(&format!("nar/{i}.nar"), &a, files.generation());
        }
        let kept = (0..20)
            .filter(|i| files.get(&format!("nar/{i}.nar")).is_some())
            .count();
        assert!(kept <= 4, "{kept} kept");
        let none = OpenFiles::new(0);
        none.insert("nar/a.nar", &a, none.generation());
        assert!(none.get("nar/a.nar").is_none());
    }

    #[test]
    fn a_file_opened_before_a_forget_is_not_kept() {
        let files = OpenFiles::new(4);
        let generation = files.generation();
        // Opened, then the key is deleted before the file is remembered.
        files.forget("nar/a.nar");
        files.insert("nar/a.nar", &open(b"old"), generation);
        assert!(files.get("nar/a.nar").is_none());
    }

    #[test]
    fn reads_what_is_cached_and_says_when_it_cannot() {
        let data: Vec<u8> = (0..10_000).map(|i| (i % 253) as u8).collect();
        let open = open(&data);
        assert_eq!(read(&open.file, 100, 50).unwrap(), data[100..150]);
        // Just written, so in the page cache; where RWF_NOWAIT is not
        // supported the answer is None, never wrong bytes.
        if let Some(bytes) = read_cached(&open.file, 100, 50) {
            assert_eq!(bytes, data[100..150]);
        }
        assert!(read_cached(&open.file, 9_990, 50).is_none(), "past the end");
        assert!(read(&open.file, 9_990, 50).is_err());
        assert!(capacity() <= MAX_OPEN);
    }
}
