//! Rows into records, once for every backend: a narinfo, a NAR, a pin, a
//! NAR in storage, what storage holds, and the counts of `StorageUsage`,
//! each from the columns of its SELECT in `queries.rs`, in that order.

use ncps_core::{NarInfoRecord, NarRecord, PinRecord, Result, StorageUsage, StoredNar};

use crate::values::{Columns, Row};

/// A narinfo record from the columns of `queries::GET_NARINFO`.
pub(crate) fn narinfo(row: Row) -> Result<NarInfoRecord> {
    let mut c = Columns::new(row, "reading a narinfo record");
    Ok(NarInfoRecord {
        hash: c.text()?,
        narinfo: c.text()?,
        nar_file: c.text()?,
        created_at: c.int()?,
        last_accessed_at: c.int()?,
    })
}

/// A NAR record from the columns of `queries::GET_NAR`.
pub(crate) fn nar(row: Row) -> Result<NarRecord> {
    let mut c = Columns::new(row, "reading a NAR record");
    Ok(NarRecord {
        file: c.text()?,
        compression: c.text()?,
        file_hash: c.opt_text()?,
        file_size: c.opt_size("file_size")?,
        nar_hash: c.text()?,
        nar_size: c.size("nar_size")?,
        upstream_url: c.opt_text()?,
        last_accessed_at: c.int()?,
    })
}

/// A NAR in storage from the columns of `queries::STORED_NARS`.
pub(crate) fn stored_nar(row: Row) -> Result<StoredNar> {
    let mut c = Columns::new(row, "listing NARs by last access");
    Ok(StoredNar {
        file: c.text()?,
        size: c.size("stored_size")?,
        last_accessed_at: c.int()?,
        upstream_url: c.opt_text()?,
    })
}

/// A pin from the columns of `queries::LIST_PINS`.
pub(crate) fn pin(row: Row) -> Result<PinRecord> {
    let mut c = Columns::new(row, "listing pins");
    Ok(PinRecord {
        hash: c.text()?,
        created_at: c.int()?,
    })
}

/// What storage holds of a NAR: the `stored_size` column.
pub(crate) fn nar_storage(row: Row) -> Result<Option<i64>> {
    Columns::new(row, "reading what storage holds of a NAR").opt_int()
}

/// The counts of `Queries::storage_usage`.
pub(crate) fn storage_usage(row: Row) -> Result<StorageUsage> {
    let mut c = Columns::new(row, "summing up storage");
    Ok(StorageUsage {
        narinfos: c.count()?,
        nar_records: c.count()?,
        stored_nars: c.count()?,
        stored_bytes: c.count()?,
        unknown_nars: c.count()?,
        pins: c.count()?,
    })
}

/// A single text column (a hash, a file name, a config value).
pub(crate) fn text(row: Row, context: &str) -> Result<String> {
    Columns::new(row, context).text()
}

/// A (text, text) pair: a config key and value.
pub(crate) fn text_pair(row: Row, context: &str) -> Result<(String, String)> {
    let mut c = Columns::new(row, context);
    Ok((c.text()?, c.text()?))
}

/// A (text, integer) pair: a counter's name and value.
pub(crate) fn counter(row: Row) -> Result<(String, i64)> {
    let mut c = Columns::new(row, "listing counters");
    Ok((c.text()?, c.int()?))
}
