//! Copying all metadata from one database to another, whatever their
//! backends: narinfo and NAR records, and configuration (the signing key).
//! Pins are copied too, counters not; NARs that were in the source's storage
//! are marked as not known in the target's, so a server using the target
//! looks each one up once.

use ncps_core::{Error, MetadataDb, NarStorage, Result};

/// How many records [`copy`] reads per page when not told.
pub const DEFAULT_BATCH: usize = 1000;

/// What [`copy`] copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Narinfo records written.
    pub narinfos: u64,
    /// NAR records written.
    pub nars: u64,
    /// Configuration values written or found already equal.
    pub config: u64,
    /// Pins written or found already there.
    pub pins: u64,
}

/// Copies every record of `from` into `to`, reading `batch` records at a time.
///
/// Records are upserted, so copying again, or into a database that already
/// holds some of the same records, is safe. Configuration values are never
/// replaced: a value in `to` that differs from `from`'s (for example another
/// signing key) is [`Error::Conflict`], since serving with the wrong key
/// would break every client's trust.
///
/// Nothing should write to `from` while it is copied; records written
/// meanwhile may or may not be copied.
pub async fn copy(from: &dyn MetadataDb, to: &dyn MetadataDb, batch: usize) -> Result<CopyStats> {
    let batch = if batch == 0 { DEFAULT_BATCH } else { batch };
    let mut stats = CopyStats::default();

    for (key, value) in from.list_config().await? {
        let stored = to.set_config_if_absent(&key, &value).await?;
        if stored != value {
            return Err(Error::Conflict(format!(
                "config value {key:?} differs in the target database; not replaced"
            )));
        }
        stats.config += 1;
    }

    let mut after: Option<String> = None;
    loop {
        let page = from.list_narinfos(after.as_deref(), batch).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.hash.clone());
        for record in &page {
            to.put_narinfo(record).await?;
            stats.narinfos += 1;
        }
    }

    let mut after: Option<String> = None;
    loop {
        let page = from.list_nars(after.as_deref(), batch).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.file.clone());
        for record in &page {
            to.put_nar(record).await?;
            // What was in storage is looked up again by the server using the
            // target: its storage may not be the source's.
            let storage = match from.get_nar_storage(&record.file).await? {
                Some(NarStorage::Absent) => NarStorage::Absent,
                _ => NarStorage::Unknown,
            };
            to.set_nar_storage(&record.file, storage).await?;
            stats.nars += 1;
        }
    }
    for pin in from.list_pins().await? {
        to.add_pin(&pin.hash, pin.created_at).await?;
        stats.pins += 1;
    }
    tracing::info!(?stats, "copied metadata");
    Ok(stats)
}
