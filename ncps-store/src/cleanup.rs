//! `discard_incomplete`: throws away the unfinished writes a killed process
//! left in storage (S3 multipart uploads, whose parts are billed until
//! aborted; temporary files), once they are old enough that no live writer
//! can still own them.

use std::time::Duration;

use ncps_core::{Error, Incomplete, Result, Storage};

/// What [`discard_incomplete`] found and did.
#[derive(Debug, Default)]
pub struct Discarded {
    /// Those thrown away (in a dry run: those that would have been).
    pub discarded: Vec<Incomplete>,
    /// Those younger than the age asked for, left alone.
    pub kept: Vec<Incomplete>,
    /// Those that could not be thrown away, with why.
    pub failed: Vec<(Incomplete, Error)>,
}

/// Throws away every unfinished write of `storage` (under its S3 key
/// prefix, if any) that started at least `older_than` ago; one of unknown
/// age only when `older_than` is zero. With `dry_run`, only says which.
///
/// Nothing here knows whether a writer is still at work: `older_than` must
/// be far longer than any upload takes (the server uses 24 hours).
pub async fn discard_incomplete(
    storage: &dyn Storage,
    older_than: Duration,
    dry_run: bool,
) -> Result<Discarded> {
    let mut report = Discarded::default();
    for incomplete in storage.incomplete(None).await? {
        if !incomplete.older_than(older_than) {
            report.kept.push(incomplete);
            continue;
        }
        if dry_run {
            report.discarded.push(incomplete);
            continue;
        }
        match storage.discard(&incomplete).await {
            Ok(()) => report.discarded.push(incomplete),
            Err(e) => report.failed.push((incomplete, e)),
        }
    }
    Ok(report)
}
