//! Checks the database against storage (`ncps-cli fsck`): every NAR the
//! database says is stored is there with its size, every narinfo has its NAR
//! record, every object in storage has a record, and with
//! [`FsckOptions::verify_content`] every stored NAR still hashes to its
//! FileHash and NarHash. [`FsckOptions::repair`] removes what is broken, so
//! that a path from an upstream is fetched again on its next request.
//!
//! Each NAR is checked under its download lock, so a download or eviction
//! in progress is never reported (nor repaired) half done: NARs whose lock
//! is held are skipped and counted.

use std::collections::HashSet;

use futures::StreamExt;

use crate::eviction::Backends;
use crate::lock::LockKey;
use crate::nar_verify::{self, NarCheck};
use crate::{Error, LockGuard, NarInfo, NarRecord, NarStorage, Result};

/// How many records are read from the database at a time.
const PAGE: usize = 500;

/// What [`fsck`] does.
#[derive(Clone, Debug)]
pub struct FsckOptions {
    /// Read every stored NAR whole and check its FileHash and NarHash.
    pub verify_content: bool,
    /// Remove what is broken (and correct what the database says is stored).
    pub repair: bool,
    /// The TTL of the download lock taken on each NAR while it is checked.
    pub download_lock_ttl: std::time::Duration,
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The database says a NAR is stored, storage has no object for it.
    MissingNar {
        /// Its file name.
        file: String,
    },
    /// Storage holds a NAR of another size than the database says.
    WrongSize {
        /// Its file name.
        file: String,
        /// What the database says (`None`: not stored, or not known).
        recorded: Option<u64>,
        /// What storage holds.
        stored: u64,
    },
    /// A stored NAR does not hash (or decompress) as its record says.
    Corrupt {
        /// Its file name.
        file: String,
        /// What failed.
        error: String,
    },
    /// An uploaded NAR (no upstream to fetch it from) is not in storage.
    LostUpload {
        /// Its file name.
        file: String,
    },
    /// A narinfo whose NAR record is missing.
    DanglingNarinfo {
        /// Its store path hash.
        hash: String,
        /// The NAR it names.
        file: String,
    },
    /// A narinfo that does not parse.
    UnreadableNarinfo {
        /// Its store path hash.
        hash: String,
        /// The parse error.
        error: String,
    },
    /// An object in storage without a NAR record.
    Orphan {
        /// Its storage key.
        key: String,
        /// Its size.
        size: u64,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::MissingNar { file } => {
                write!(f, "nar/{file}: recorded as stored, not in storage")
            }
            Problem::WrongSize {
                file,
                recorded,
                stored,
            } => match recorded {
                Some(size) => write!(
                    f,
                    "nar/{file}: {stored} bytes in storage, the database says {size}"
                ),
                None => write!(
                    f,
                    "nar/{file}: {stored} bytes in storage, the database says it is not stored"
                ),
            },
            Problem::Corrupt { file, error } => write!(f, "nar/{file}: corrupt: {error}"),
            Problem::LostUpload { file } => {
                write!(
                    f,
                    "nar/{file}: uploaded, not in storage, and no upstream has it"
                )
            }
            Problem::DanglingNarinfo { hash, file } => {
                write!(f, "{hash}.narinfo: its NAR nar/{file} has no record")
            }
            Problem::UnreadableNarinfo { hash, error } => {
                write!(f, "{hash}.narinfo: does not parse: {error}")
            }
            Problem::Orphan { key, size } => {
                write!(f, "{key}: {size} bytes in storage without a record")
            }
        }
    }
}

/// A problem and whether it was repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What is wrong.
    pub problem: Problem,
    /// Whether [`FsckOptions::repair`] fixed it.
    pub repaired: bool,
}

/// What [`fsck`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// NAR records checked.
    pub nars: u64,
    /// Narinfo records checked.
    pub narinfos: u64,
    /// Stored NARs whose content was verified.
    pub verified: u64,
    /// Storage objects looked at for orphans (`None`: storage cannot list).
    pub objects: Option<u64>,
    /// NARs skipped because a download or eviction held them.
    pub busy: u64,
    /// What is wrong.
    pub findings: Vec<Finding>,
}

impl FsckReport {
    /// Problems not repaired.
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }
}

/// How far [`fsck`] is: items done, of about `total`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Checks (and with [`FsckOptions::repair`] repairs) `backends`.
pub async fn fsck(
    backends: &Backends,
    options: &FsckOptions,
    progress: Progress<'_>,
) -> Result<FsckReport> {
    let usage = backends.db.storage_usage().await?;
    let mut tally = Tally {
        done: 0,
        total: usage.nar_records + usage.narinfos,
        progress,
    };
    let mut report = FsckReport::default();
    let files = check_nars(backends, options, &mut tally, &mut report).await?;
    check_narinfos(backends, options, &files, &mut tally, &mut report).await?;
    check_objects(backends, options, &files, &mut report).await?;
    Ok(report)
}

/// Items done of about `total`, told to `progress` as they are.
struct Tally<'a> {
    done: u64,
    total: u64,
    progress: Progress<'a>,
}

impl Tally<'_> {
    fn step(&mut self) {
        self.done += 1;
        (self.progress)(self.done, self.total);
    }
}

/// Checks every NAR record against storage; returns their file names.
async fn check_nars(
    backends: &Backends,
    options: &FsckOptions,
    tally: &mut Tally<'_>,
    report: &mut FsckReport,
) -> Result<HashSet<String>> {
    let mut files = HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = backends.db.list_nars(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.file.clone());
        for record in page {
            files.insert(record.file.clone());
            check_nar(backends, options, &record, report).await?;
            report.nars += 1;
            tally.step();
        }
    }
    Ok(files)
}

/// Checks that every narinfo reads and names a NAR record (`files`, or one
/// recorded since).
async fn check_narinfos(
    backends: &Backends,
    options: &FsckOptions,
    files: &HashSet<String>,
    tally: &mut Tally<'_>,
    report: &mut FsckReport,
) -> Result<()> {
    let db = backends.db.as_ref();
    let mut after: Option<String> = None;
    loop {
        let page = db.list_narinfos(after.as_deref(), PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.hash.clone());
        for record in page {
            report.narinfos += 1;
            tally.step();
            let problem = if let Err(e) = record.narinfo.parse::<NarInfo>() {
                Problem::UnreadableNarinfo {
                    hash: record.hash.clone(),
                    error: e.to_string(),
                }
            } else if !files.contains(&record.nar_file)
                && db.get_nar(&record.nar_file).await?.is_none()
            {
                Problem::DanglingNarinfo {
                    hash: record.hash.clone(),
                    file: record.nar_file.clone(),
                }
            } else {
                continue;
            };
            // Gone, it is asked of the upstreams again on its next request.
            let repaired = options.repair && db.delete_narinfo(&record.hash).await?;
            report.findings.push(Finding { problem, repaired });
        }
    }
    Ok(())
}

/// Looks for objects in storage that no NAR record names (orphans).
async fn check_objects(
    backends: &Backends,
    options: &FsckOptions,
    files: &HashSet<String>,
    report: &mut FsckReport,
) -> Result<()> {
    let db = backends.db.as_ref();
    let Some(objects) = backends.storage.list_objects("nar").await? else {
        return Ok(());
    };
    report.objects = Some(objects.len() as u64);
    for (key, size) in objects {
        let Some(file) = key.strip_prefix("nar/") else {
            continue;
        };
        if files.contains(file) || db.get_nar(file).await?.is_some() {
            continue;
        }
        let Some(guard) = download_lock(backends, options, &key, report).await? else {
            continue;
        };
        let (orphan, repaired) = guard
            .release_after(async {
                // Recorded meanwhile (an upload or download just finished)?
                let orphan = db.get_nar(file).await?.is_none();
                let repaired = orphan && options.repair && backends.storage.delete(&key).await?;
                Ok((orphan, repaired))
            })
            .await?;
        if orphan {
            report.findings.push(Finding {
                problem: Problem::Orphan { key, size },
                repaired,
            });
        }
    }
    Ok(())
}

/// The download lock of the object under `key` if it is free; a busy one
/// is counted in `report`.
async fn download_lock(
    backends: &Backends,
    options: &FsckOptions,
    key: &str,
    report: &mut FsckReport,
) -> Result<Option<LockGuard>> {
    let ttl = options.download_lock_ttl;
    let guard = backends
        .lock
        .try_acquire_key(&LockKey::download_of(key), ttl)
        .await?;
    report.busy += u64::from(guard.is_none());
    Ok(guard)
}

/// Checks one NAR record against storage, under its download lock.
async fn check_nar(
    backends: &Backends,
    options: &FsckOptions,
    record: &NarRecord,
    report: &mut FsckReport,
) -> Result<()> {
    let key = format!("nar/{}", record.file);
    let Some(guard) = download_lock(backends, options, &key, report).await? else {
        return Ok(());
    };
    guard
        .release_after(check_nar_locked(backends, options, record, &key, report))
        .await
}

async fn check_nar_locked(
    backends: &Backends,
    options: &FsckOptions,
    record: &NarRecord,
    key: &str,
    report: &mut FsckReport,
) -> Result<()> {
    let db = backends.db.as_ref();
    let file = record.file.clone();
    let recorded = db.get_nar_storage(&file).await?;
    let stored = backends.storage.head(key).await?;
    let upload = record.upstream_url.is_none();
    let (problem, repaired) = match (recorded, stored) {
        (Some(NarStorage::Stored(_)) | Some(NarStorage::Unknown), None) if upload => {
            let repaired = options.repair && forget_nar(backends, &file).await?;
            (Problem::LostUpload { file }, repaired)
        }
        (Some(NarStorage::Absent), None) if upload => {
            let repaired = options.repair && forget_nar(backends, &file).await?;
            (Problem::LostUpload { file }, repaired)
        }
        (Some(NarStorage::Stored(_)), None) => {
            let repaired = options.repair && db.set_nar_storage(&file, NarStorage::Absent).await?;
            (Problem::MissingNar { file }, repaired)
        }
        (Some(NarStorage::Unknown), None) => {
            // Not a problem: the database did not know; now it does.
            db.set_nar_storage(&file, NarStorage::Absent).await?;
            return Ok(());
        }
        (Some(state), Some(size)) => {
            match check_stored(backends, options, record, key, state, size, report).await? {
                Some(found) => found,
                None => return Ok(()),
            }
        }
        // Not downloaded yet, or the record went meanwhile.
        (Some(NarStorage::Absent), None) | (None, _) => return Ok(()),
    };
    report.findings.push(Finding { problem, repaired });
    Ok(())
}

/// Checks a NAR storage holds (`size` bytes) whose record says `state`:
/// read whole if asked, its recorded size put right. `None` if all is well
/// (or, found corrupt, already reported).
async fn check_stored(
    backends: &Backends,
    options: &FsckOptions,
    record: &NarRecord,
    key: &str,
    state: NarStorage,
    size: u64,
    report: &mut FsckReport,
) -> Result<Option<(Problem, bool)>> {
    let db = backends.db.as_ref();
    let file = record.file.clone();
    if options.verify_content {
        report.verified += 1;
        if let Err(e) = verify(backends, record, key).await {
            let repaired = options.repair && discard_bytes(backends, record).await?;
            report.findings.push(Finding {
                problem: Problem::Corrupt {
                    file,
                    error: e.to_string(),
                },
                repaired,
            });
            return Ok(None);
        }
    }
    let recorded = match state {
        NarStorage::Stored(recorded) if recorded == size => return Ok(None),
        NarStorage::Unknown => {
            db.set_nar_storage(&file, NarStorage::Stored(size)).await?;
            return Ok(None);
        }
        NarStorage::Stored(recorded) => Some(recorded),
        NarStorage::Absent => None,
    };
    let repaired = options.repair && db.set_nar_storage(&file, NarStorage::Stored(size)).await?;
    let problem = Problem::WrongSize {
        file,
        recorded,
        stored: size,
    };
    Ok(Some((problem, repaired)))
}

/// Reads a stored NAR whole through the checks its record promises.
async fn verify(backends: &Backends, record: &NarRecord, key: &str) -> Result<()> {
    let check = NarCheck::of_record(record)?;
    let Some(object) = backends.storage.get(key).await? else {
        return Err(Error::Integrity("gone while being read".into()));
    };
    let mut body = nar_verify::verified(object.body, check)?;
    while let Some(chunk) = body.next().await {
        chunk.map_err(|e| Error::Integrity(e.to_string()))?;
    }
    Ok(())
}

/// Removes a broken NAR's bytes: one from an upstream is fetched again on
/// its next request; an upload, which cannot be, goes with its narinfos.
async fn discard_bytes(backends: &Backends, record: &NarRecord) -> Result<bool> {
    backends
        .storage
        .delete(&format!("nar/{}", record.file))
        .await?;
    if record.upstream_url.is_some() {
        backends
            .db
            .set_nar_storage(&record.file, NarStorage::Absent)
            .await
    } else {
        forget_nar(backends, &record.file).await
    }
}

/// Deletes a NAR record and the narinfos naming it.
async fn forget_nar(backends: &Backends, file: &str) -> Result<bool> {
    let db = backends.db.as_ref();
    for hash in db.narinfos_of_nar(file).await? {
        db.delete_narinfo(&hash).await?;
    }
    db.delete_nar(file).await
}
