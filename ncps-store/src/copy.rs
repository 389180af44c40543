//! Copying objects from one storage to another (a local cache onto S3 and
//! back): resumable, since objects already there with the right size are
//! skipped, and checked, since a copy whose size differs is never stored.

use std::io;

use futures::StreamExt;
use ncps_core::{ByteStream, Error, Result, Storage};

/// An object found by listing a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its storage key, such as `nar/<hash>.nar.xz`.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What happened to one object in [`copy_objects`].
#[derive(Debug)]
pub enum CopyOutcome {
    /// Copied; this many bytes.
    Copied(u64),
    /// Already in the target with the same size.
    Skipped,
    /// Not copied, for this reason.
    Failed(Error),
}

/// Totals of a [`copy_objects`] run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyStats {
    /// Objects copied.
    pub copied: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Objects already in the target with the same size.
    pub skipped: u64,
    /// Objects that failed.
    pub failed: u64,
}

/// Copies `objects` from `source` to `target`, `jobs` at a time, calling
/// `report` for each as it finishes. A failed object does not stop the rest;
/// running again resumes where this run left off.
pub async fn copy_objects(
    source: &dyn Storage,
    target: &dyn Storage,
    objects: Vec<ObjectInfo>,
    jobs: usize,
    report: &(dyn Fn(&ObjectInfo, &CopyOutcome) + Sync),
) -> CopyStats {
    let mut stats = CopyStats::default();
    let mut done = futures::stream::iter(objects)
        .map(|object| async move {
            let outcome = match copy_one(source, target, &object).await {
                Ok(outcome) => outcome,
                Err(e) => CopyOutcome::Failed(e),
            };
            (object, outcome)
        })
        .buffer_unordered(jobs.max(1));
    while let Some((object, outcome)) = done.next().await {
        match &outcome {
            CopyOutcome::Copied(bytes) => {
                stats.copied += 1;
                stats.bytes += bytes;
            }
            CopyOutcome::Skipped => stats.skipped += 1,
            CopyOutcome::Failed(_) => stats.failed += 1,
        }
        report(&object, &outcome);
    }
    stats
}

/// Copies one object unless the target already has it with the same size.
async fn copy_one(
    source: &dyn Storage,
    target: &dyn Storage,
    object: &ObjectInfo,
) -> Result<CopyOutcome> {
    let key = &object.key;
    if target.head(key).await? == Some(object.size) {
        return Ok(CopyOutcome::Skipped);
    }
    let Some(stored) = source.get(key).await? else {
        return Err(Error::Conflict(format!(
            "{key}: no longer in the source storage"
        )));
    };
    let size = stored.size;
    let written = target.put(key, exact_size(stored.body, size)).await?;
    let there = target.head(key).await?;
    if written != size || there != Some(size) {
        return Err(Error::Integrity(format!(
            "{key}: {size} bytes read, {written} written, target reports {there:?}"
        )));
    }
    Ok(CopyOutcome::Copied(size))
}

/// `body`, failing instead of ending if it does not hold exactly `size`
/// bytes, so `put` stores nothing from a short or long read.
fn exact_size(body: ByteStream, size: u64) -> ByteStream {
    let state = (body, 0u64, false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut body, seen, done)| async move {
            if done {
                return None;
            }
            let item = match body.next().await {
                Some(Ok(chunk)) if seen + chunk.len() as u64 > size => Err(io::Error::other(
                    format!("the source sent more than its {size} bytes"),
                )),
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    return Some((Ok(chunk), (body, seen, false)));
                }
                Some(Err(e)) => Err(e),
                None if seen == size => return None,
                None => Err(io::Error::other(format!(
                    "the source ended after {seen} of its {size} bytes"
                ))),
            };
            Some((item, (body, seen, true)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::exact_size;
    use bytes::Bytes;
    use futures::StreamExt;
    use std::io;

    async fn drain(sizes: &[usize], expected: u64) -> io::Result<u64> {
        let chunks: Vec<io::Result<Bytes>> = sizes
            .iter()
            .map(|n| Ok(Bytes::from(vec![0u8; *n])))
            .collect();
        let mut body = exact_size(Box::pin(futures::stream::iter(chunks)), expected);
        let mut total = 0;
        while let Some(chunk) = body.next().await {
            total += chunk?.len() as u64;
        }
        Ok(total)
    }

    #[tokio::test]
    async fn passes_exact_bodies_and_fails_others() {
        assert_eq!(drain(&[3, 4], 7).await.ok(), Some(7));
        assert_eq!(drain(&[], 0).await.ok(), Some(0));
        assert!(drain(&[3], 7).await.is_err());
        assert!(drain(&[3, 5], 7).await.is_err());
    }
}
