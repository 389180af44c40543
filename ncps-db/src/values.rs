//! The column values every SQL backend binds and reads back ([`Value`], one
//! small type for all three drivers), reading a row's columns in order
//! ([`Columns`]), conversions between record sizes and signed columns, and
//! the clock migrations are stamped with.

use std::time::{SystemTime, UNIX_EPOCH};

use ncps_core::{Error, Result};

/// A value bound to a statement or read from a row: the schema holds only
/// text and 64-bit integers, either of which may be NULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An integer column or parameter.
    Int(i64),
    /// A text column or parameter.
    Text(String),
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Text(value.to_string())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Text(value)
    }
}

impl From<&String> for Value {
    fn from(value: &String) -> Self {
        Value::Text(value.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// One row of an answer, its columns in the order of the SELECT.
pub type Row = Vec<Value>;

/// Reads a row's columns one after another, each as the type asked for; a
/// column of another type is a backend error naming what was being read.
pub(crate) struct Columns<'a> {
    values: std::vec::IntoIter<Value>,
    index: usize,
    context: &'a str,
}

impl<'a> Columns<'a> {
    /// The columns of `row`, read while doing `context`.
    pub(crate) fn new(row: Row, context: &'a str) -> Self {
        Columns {
            values: row.into_iter(),
            index: 0,
            context,
        }
    }

    fn next(&mut self, want: &str) -> Result<Value> {
        self.index += 1;
        self.values.next().ok_or_else(|| {
            Error::backend(
                self.context,
                format!("column {}: missing, expected {want}", self.index),
            )
        })
    }

    fn wrong(&self, want: &str, found: &Value) -> Error {
        Error::backend(
            self.context,
            format!("column {}: expected {want}, found {found:?}", self.index),
        )
    }

    /// The next column, text or NULL.
    pub(crate) fn opt_text(&mut self) -> Result<Option<String>> {
        match self.next("text")? {
            Value::Text(text) => Ok(Some(text)),
            Value::Null => Ok(None),
            other => Err(self.wrong("text", &other)),
        }
    }

    /// The next column, an integer or NULL.
    pub(crate) fn opt_int(&mut self) -> Result<Option<i64>> {
        match self.next("an integer")? {
            Value::Int(value) => Ok(Some(value)),
            Value::Null => Ok(None),
            other => Err(self.wrong("an integer", &other)),
        }
    }

    /// The next column, text.
    pub(crate) fn text(&mut self) -> Result<String> {
        self.opt_text()?
            .ok_or_else(|| self.wrong("text", &Value::Null))
    }

    /// The next column, an integer.
    pub(crate) fn int(&mut self) -> Result<i64> {
        self.opt_int()?
            .ok_or_else(|| self.wrong("an integer", &Value::Null))
    }

    /// The next column, a size (an integer that must not be negative).
    pub(crate) fn size(&mut self, field: &str) -> Result<u64> {
        size_from_db(field, self.int()?)
    }

    /// The next column, a size or NULL.
    pub(crate) fn opt_size(&mut self, field: &str) -> Result<Option<u64>> {
        self.opt_int()?
            .map(|size| size_from_db(field, size))
            .transpose()
    }

    /// The next column, a count (a negative one reads as 0).
    pub(crate) fn count(&mut self) -> Result<u64> {
        Ok(u64::try_from(self.int()?).unwrap_or(0))
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A size as a signed 64-bit column value; sizes past `i64::MAX` are refused.
pub(crate) fn size_to_db(field: &str, size: u64) -> Result<i64> {
    i64::try_from(size)
        .map_err(|_| Error::InvalidInput(format!("{field} {size} is too large to store")))
}

/// A size read back from a signed 64-bit column; a negative value is corrupt data.
pub(crate) fn size_from_db(field: &str, size: i64) -> Result<u64> {
    u64::try_from(size).map_err(|_| {
        Error::backend(
            format!("reading {field}"),
            format!("negative size {size} in the database"),
        )
    })
}

/// A count or limit as a column value (counts past `i64::MAX` are clamped).
pub(crate) fn limit_to_db(limit: usize) -> Value {
    Value::Int(i64::try_from(limit).unwrap_or(i64::MAX))
}
