//! `LocalStorage`: objects as files under a root directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ncps_core::{ByteStream, Error, FileRegion, Incomplete, Result, Storage, StoredObject};
use tokio::io::AsyncWriteExt;

use crate::open_files::{self, OpenFile, OpenFiles};
use crate::{ObjectInfo, mapped};

/// Name of the directory under the root where `put` writes before renaming.
const TMP_DIR: &str = ".tmp";

/// Distinguishes temporary files written by one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Storage in a local directory: the object under `nar/x.nar.xz` is the file
/// `<root>/nar/x.nar.xz`.
///
/// `put` writes to a temporary file under `<root>/.tmp`, syncs it, and renames
/// it into place, so readers see either the old object or the whole new one;
/// `delete` unlinks. A stored file is never truncated or rewritten in place,
/// which is what makes serving large ones from memory maps sound: nothing
/// else may truncate or rewrite files under the root.
///
/// Files read are kept open for a while, as nginx's `open_file_cache` does
/// (up to 1000, or a quarter of the descriptor limit; 30 s each), so a
/// repeated hit skips `open` and `fstat`. Clones share them.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    tmp: PathBuf,
    open_files: Arc<OpenFiles>,
}

/// A stored file's bytes as opened: a range worth mapping, or a small one
/// already read.
enum Opened {
    Map {
        file: Arc<std::fs::File>,
        start: u64,
        end: u64,
    },
    Read(Bytes),
}

impl Opened {
    /// The object of `size` bytes whose range this is; a mapped range says
    /// which region of its file it is, so it can be sent from there.
    fn object(self, size: u64) -> StoredObject {
        let (body, file): (ByteStream, _) = match self {
            Opened::Map { file, start, end } => {
                let region = FileRegion {
                    file: file.clone(),
                    offset: start,
                    len: end - start,
                };
                (mapped::stream(file, start, end), Some(region))
            }
            Opened::Read(bytes) if bytes.is_empty() => (Box::pin(futures::stream::empty()), None),
            Opened::Read(bytes) => (Box::pin(futures::stream::once(async { Ok(bytes) })), None),
        };
        StoredObject { size, body, file }
    }
}

impl LocalStorage {
    /// The bytes of `key` from `offset` on, at most `len` of them, with the
    /// file's size; `None` if there is no such file. A range of at least
    /// [`mapped::MAP_THRESHOLD`] bytes is served from memory maps; a smaller
    /// one is read there and then. A file kept open whose bytes are mapped
    /// or already in the page cache is served without leaving the runtime;
    /// otherwise opening, sizing and reading take one call to tokio's
    /// blocking pool, not one per step.
    async fn open(&self, key: &str, offset: u64, len: u64) -> Result<Option<(u64, Opened)>> {
        validate_key(key)?;
        let kept = self.open_files.get(key);
        if let Some(open) = &kept
            && let Ok(Some(opened)) = take(open, offset, len, |file, offset, len| {
                Ok(open_files::read_cached(file, offset, len))
            })
        {
            return Ok(Some((open.size, opened)));
        }
        let generation = self.open_files.generation();
        let path = self.path_for(key)?;
        let was_kept = kept.is_some();
        let opened = tokio::task::spawn_blocking(move || {
            let open = match kept {
                Some(open) => open,
                None => match open_file(&path)? {
                    Some(open) => open,
                    None => return Ok(None),
                },
            };
            let opened = take(&open, offset, len, |file, offset, len| {
                open_files::read(file, offset, len).map(Some)
            })?;
            io::Result::Ok(opened.map(|opened| (open, opened)))
        })
        .await
        .map_err(|e| Error::backend(format!("reading {key}"), e))?
        .map_err(|e| Error::backend(format!("reading {key}"), e))?;
        Ok(opened.map(|(open, opened)| {
            // Kept files keep the age they were opened with.
            if !was_kept {
                self.open_files.insert(key, &open, generation);
            }
            (open.size, opened)
        }))
    }

    /// Storage under `root`, creating the directory (and its `.tmp`
    /// subdirectory) if needed.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp).map_err(|e| {
            Error::backend(format!("creating storage directory {}", tmp.display()), e)
        })?;
        Ok(LocalStorage {
            root,
            tmp,
            open_files: Arc::new(OpenFiles::new(open_files::capacity())),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every object under the key prefix `under` (such as `nar`), sorted by
    /// key. Files whose names are not UTF-8 cannot be keys and are left out.
    pub async fn list(&self, under: &str) -> Result<Vec<ObjectInfo>> {
        let under = under.trim_end_matches('/').to_owned();
        validate_key(&under)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || walk(&root, &under))
            .await
            .map_err(|e| Error::backend("listing local storage", e))?
    }

    /// The file for `key`, after checking that `key` stays under the root.
    fn path_for(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// A fresh path for a temporary file.
    fn tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let r: u64 = rand::random();
        self.tmp
            .join(format!("{}-{n}-{r:016x}.part", std::process::id()))
    }
}

/// Opens the file at `path`; `None` if there is none (or it is not a file).
fn open_file(path: &Path) -> io::Result<Option<OpenFile>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Ok(None);
    }
    Ok(Some(OpenFile::new(file, metadata.len())))
}

/// The bytes of `open` from `offset` on, at most `len`: mapped if at least
/// [`mapped::MAP_THRESHOLD`], else read with `read` (`Ok(None)`: it could
/// not read without waiting).
fn take(
    open: &OpenFile,
    offset: u64,
    len: u64,
    read: impl FnOnce(&std::fs::File, u64, usize) -> io::Result<Option<Bytes>>,
) -> io::Result<Option<Opened>> {
    let start = offset.min(open.size);
    let end = start.saturating_add(len).min(open.size);
    if end - start >= mapped::MAP_THRESHOLD {
        let file = open.file.clone();
        return Ok(Some(Opened::Map { file, start, end }));
    }
    // Under MAP_THRESHOLD, so it fits in usize.
    Ok(read(&open.file, start, (end - start) as usize)?.map(Opened::Read))
}

/// Applies the common key rules and rejects keys inside the temporary
/// directory.
fn validate_key(key: &str) -> Result<()> {
    crate::key::validate_key(key)?;
    if key.split('/').next() == Some(TMP_DIR) {
        return Err(Error::InvalidInput(format!(
            "storage key {key:?}: reserved prefix"
        )));
    }
    Ok(())
}

/// The files under `<root>/<under>`, as objects.
fn walk(root: &Path, under: &str) -> Result<Vec<ObjectInfo>> {
    let listing = |dir: &str, e: io::Error| Error::backend(format!("listing {dir}"), e);
    let mut objects = Vec::new();
    let mut dirs = vec![under.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(root.join(&dir)) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(listing(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| listing(&dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let key = format!("{dir}/{name}");
            let file_type = entry.file_type().map_err(|e| listing(&key, e))?;
            if file_type.is_dir() {
                dirs.push(key);
            } else if file_type.is_file() {
                let size = entry.metadata().map_err(|e| listing(&key, e))?.len();
                objects.push(ObjectInfo { key, size });
            }
        }
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(objects)
}

/// Whether an open or stat error means "no object there".
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Whether process `pid` (this one included) may still be writing its
/// temporary files. Where that cannot be told, it is assumed alive.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// A temporary file removed on drop unless persisted, so a failed or
/// cancelled `put` leaves nothing behind.
struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted
            && let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "removing a temporary file failed");
        }
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn list_objects(&self, prefix: &str) -> Result<Option<Vec<(String, u64)>>> {
        let objects = self.list(prefix).await?;
        Ok(Some(objects.into_iter().map(|o| (o.key, o.size)).collect()))
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<u64> {
        let path = self.path_for(key)?;
        let mut tmp = TempFile {
            path: self.tmp_path(),
            persisted: false,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)
            .await
            .map_err(|e| Error::io(format!("creating temporary file {}", tmp.path.display()), e))?;

        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::backend(format!("reading body of {key}"), e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {key}"), e))?;
            written += chunk.len() as u64;
        }
        file.flush()
            .await
            .map_err(|e| Error::io(format!("writing {key}"), e))?;
        file.sync_all()
            .await
            .map_err(|e| Error::io(format!("syncing {key}"), e))?;
        drop(file);

        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Error::io(format!("creating directory for {key}"), e))?;
        }
        tokio::fs::rename(&tmp.path, &path)
            .await
            .map_err(|e| Error::backend(format!("renaming {key} into place"), e))?;
        tmp.persisted = true;
        self.open_files.forget(key);
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<Option<StoredObject>> {
        self.get_range(key, 0, u64::MAX).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Option<StoredObject>> {
        let Some((size, opened)) = self.open(key, offset, len).await? else {
            return Ok(None);
        };
        Ok(Some(opened.object(size)))
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path_for(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(metadata.len())),
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(Error::backend(format!("reading metadata of {key}"), e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        let path = self.path_for(key)?;
        let removed = tokio::fs::remove_file(&path).await;
        // After the unlink: a file opened before it is then not kept.
        self.open_files.forget(key);
        match removed {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(Error::backend(format!("deleting {key}"), e)),
        }
    }

    /// Temporary files of processes that are gone (a crash mid-`put`).
    /// Their keys are unknown, so asking for one key's finds none.
    async fn incomplete(&self, key: Option<&str>) -> Result<Vec<Incomplete>> {
        let mut found = Vec::new();
        if key.is_some() {
            return Ok(found);
        }
        let mut entries = match tokio::fs::read_dir(&self.tmp).await {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => return Ok(found),
            Err(e) => return Err(Error::backend(format!("listing {}", self.tmp.display()), e)),
        };
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| Error::backend(format!("listing {}", self.tmp.display()), e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if process_alive(pid) {
                continue;
            }
            let age = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok());
            found.push(Incomplete {
                key: None,
                id: name,
                age,
            });
        }
        Ok(found)
    }

    async fn available_space(&self) -> Result<Option<u64>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || ncps_core::disk_space::available(&root))
            .await
            .map_err(|e| Error::backend("measuring free space", e))?
            .map(Some)
            .map_err(|e| Error::backend(format!("free space of {}", self.root.display()), e))
    }

    async fn discard(&self, incomplete: &Incomplete) -> Result<()> {
        if incomplete.id.contains('/') || !incomplete.id.ends_with(".part") {
            return Err(Error::InvalidInput(format!(
                "{}: not a temporary file of this storage",
                incomplete.id
            )));
        }
        let path = self.tmp.join(&incomplete.id);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(Error::backend(format!("removing {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A mapped range says which stretch of its file it is; a small one,
    /// read into memory already, says none.
    #[tokio::test]
    async fn mapped_ranges_declare_their_file_region() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path()).unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let body = futures::stream::iter([Ok(Bytes::from(data.clone()))]).boxed();
        storage.put("nar/x.nar", body).await.unwrap();
        for (offset, len) in [(0, u64::MAX), (1001, 4_500_000), (4_000_000, 2_000_000)] {
            let object = storage.get_range("nar/x.nar", offset, len).await.unwrap();
            let object = object.unwrap();
            let region = object.file.clone().expect("a mapped range");
            let end = offset.saturating_add(len).min(data.len() as u64);
            assert_eq!((region.offset, region.len), (offset, end - offset));
            let body: Vec<u8> = object.body.map(|c| c.unwrap().to_vec()).concat().await;
            let mut from_file = vec![0; region.len as usize];
            region
                .file
                .read_exact_at(&mut from_file, region.offset)
                .unwrap();
            assert!(body == from_file && body == data[offset as usize..end as usize]);
        }
        let small = storage.get_range("nar/x.nar", 10, 100).await.unwrap();
        assert!(small.unwrap().file.is_none());
    }
}
