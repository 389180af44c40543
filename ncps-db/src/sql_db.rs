//! [`SqlDb`]: the one implementation of [`MetadataDb`] over SQL, for every
//! backend. Each call is one statement of `queries.rs` (run with retries
//! and a timeout by `statement.rs`) and its rows mapped by `records.rs`;
//! the backend, an [`Engine`], supplies only connections and its dialect.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ncps_core::{Error, MetadataDb, NarInfoRecord, NarRecord, Result};
use ncps_core::{NarStorage, PinRecord, StorageUsage, StoredNar};

use crate::engine::{Answer, Engine};
use crate::queries::{self as q, Queries};
use crate::records;
use crate::values::{Row, Value, limit_to_db, size_to_db};

/// The metadata database in a SQL database: `SqliteDb`, `PostgresDb` or
/// `MysqlDb` (each with its cargo feature), which are this type over each
/// backend's engine.
///
/// Cloning shares the connections.
#[derive(Clone)]
pub struct SqlDb<E> {
    engine: E,
    /// The URL with its password hidden, for messages; `None` for a file.
    url: Option<Arc<str>>,
    queries: Arc<Queries>,
}

impl<E: fmt::Debug> fmt::Debug for SqlDb<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.engine.fmt(f)
    }
}

impl<E: Engine> SqlDb<E> {
    /// The database over `engine`, whose schema is already migrated, shown
    /// as `url` in messages (its password hidden; `None` for a file).
    pub(crate) fn new(engine: E, url: Option<String>) -> Self {
        SqlDb {
            engine,
            url: url.map(Arc::from),
            queries: Arc::new(Queries::new(*E::DIALECT)),
        }
    }

    async fn run(&self, context: &str, sql: &str, params: &[Value]) -> Result<Answer> {
        let url = self.url.as_deref();
        crate::statement::run(&self.engine, url, context, sql, params).await
    }

    /// The rows `sql` answers.
    async fn rows(&self, context: &str, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        Ok(self.run(context, sql, params).await?.rows)
    }

    /// The first row `sql` answers, if any.
    async fn first(&self, context: &str, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.rows(context, sql, params).await?.into_iter().next())
    }

    /// How many rows `sql` changed.
    async fn changed(&self, context: &str, sql: &str, params: &[Value]) -> Result<u64> {
        Ok(self.run(context, sql, params).await?.changed)
    }

    /// Single text columns of the rows `sql` answers.
    async fn texts(&self, context: &str, sql: &str, params: &[Value]) -> Result<Vec<String>> {
        let rows = self.rows(context, sql, params).await?;
        rows.into_iter()
            .map(|r| records::text(r, context))
            .collect()
    }

    /// Records access times on `table` keyed by `key`, in batches; of a key
    /// given twice only its latest time counts.
    async fn record_batch(&self, table: &str, key: &str, entries: &[(String, i64)]) -> Result<()> {
        let mut latest = BTreeMap::<&str, i64>::new();
        for (k, at) in entries {
            let time = latest.entry(k.as_str()).or_insert(*at);
            *time = (*time).max(*at);
        }
        let latest: Vec<(&str, i64)> = latest.into_iter().collect();
        let access = self.queries.dialect.access;
        for chunk in latest.chunks(access.chunk()) {
            let (sql, params) = access.statement(table, key, chunk);
            self.run("recording accesses", &sql, &params).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<E: Engine> MetadataDb for SqlDb<E> {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarInfoRecord>> {
        let context = "reading a narinfo record";
        let row = self.first(context, q::GET_NARINFO, &[hash.into()]).await?;
        row.map(records::narinfo).transpose()
    }

    async fn put_narinfo(&self, record: &NarInfoRecord) -> Result<()> {
        let params = [
            Value::from(&record.hash),
            Value::from(&record.narinfo),
            Value::from(&record.nar_file),
            Value::Int(record.created_at),
            Value::Int(record.last_accessed_at),
        ];
        let sql = &self.queries.put_narinfo;
        self.run("writing a narinfo record", sql, &params)
            .await
            .map(drop)
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let context = "deleting a narinfo record";
        Ok(self
            .changed(context, q::DELETE_NARINFO, &[hash.into()])
            .await?
            > 0)
    }

    async fn touch_narinfo(&self, hash: &str, at: i64) -> Result<()> {
        let params = [Value::Int(at), hash.into()];
        let touched = self.run("touching a narinfo record", q::TOUCH_NARINFO, &params);
        touched.await.map(drop)
    }

    async fn get_nar(&self, file: &str) -> Result<Option<NarRecord>> {
        let row = self
            .first("reading a NAR record", q::GET_NAR, &[file.into()])
            .await?;
        row.map(records::nar).transpose()
    }

    async fn put_nar(&self, record: &NarRecord) -> Result<()> {
        let file_size = record.file_size.map(|size| size_to_db("file_size", size));
        let params = [
            Value::from(&record.file),
            Value::from(&record.compression),
            Value::from(record.file_hash.as_ref()),
            Value::from(file_size.transpose()?),
            Value::from(&record.nar_hash),
            Value::Int(size_to_db("nar_size", record.nar_size)?),
            Value::from(record.upstream_url.as_ref()),
            Value::Int(record.last_accessed_at),
        ];
        let sql = &self.queries.put_nar;
        self.run("writing a NAR record", sql, &params)
            .await
            .map(drop)
    }

    async fn delete_nar(&self, file: &str) -> Result<bool> {
        let context = "deleting a NAR record";
        Ok(self.changed(context, q::DELETE_NAR, &[file.into()]).await? > 0)
    }

    async fn touch_nar(&self, file: &str, at: i64) -> Result<()> {
        let params = [Value::Int(at), file.into()];
        let touched = self.run("touching a NAR record", q::TOUCH_NAR, &params);
        touched.await.map(drop)
    }

    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let context = "reading a config value";
        let row = self.first(context, q::GET_CONFIG, &[key.into()]).await?;
        row.map(|row| records::text(row, context)).transpose()
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let context = "writing a config value";
        // Two statements: the read must come after the insert waited for a
        // racing instance's row (in PostgreSQL, with a snapshot taken after
        // it), which one statement's would not. A stored value never changes.
        let sql = &self.queries.set_config;
        self.run(context, sql, &[key.into(), value.into()]).await?;
        match self.get_config(key).await? {
            Some(stored) => Ok(stored),
            None => Err(Error::backend(
                context,
                format!("config value {key:?} missing right after it was written"),
            )),
        }
    }

    async fn ping(&self) -> Result<()> {
        self.run("pinging the database", q::PING, &[])
            .await
            .map(drop)
    }

    async fn list_narinfos(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarInfoRecord>> {
        let context = "listing narinfo records";
        let rows = match after {
            Some(after) => {
                let params = [after.into(), limit_to_db(limit)];
                self.rows(context, q::LIST_NARINFOS_AFTER, &params).await?
            }
            None => {
                self.rows(context, q::LIST_NARINFOS, &[limit_to_db(limit)])
                    .await?
            }
        };
        rows.into_iter().map(records::narinfo).collect()
    }

    async fn list_nars(&self, after: Option<&str>, limit: usize) -> Result<Vec<NarRecord>> {
        let context = "listing NAR records";
        let rows = match after {
            Some(after) => {
                let params = [after.into(), limit_to_db(limit)];
                self.rows(context, q::LIST_NARS_AFTER, &params).await?
            }
            None => {
                self.rows(context, q::LIST_NARS, &[limit_to_db(limit)])
                    .await?
            }
        };
        rows.into_iter().map(records::nar).collect()
    }

    async fn list_config(&self) -> Result<Vec<(String, String)>> {
        let context = "listing config values";
        let rows = self.rows(context, q::LIST_CONFIG, &[]).await?;
        rows.into_iter()
            .map(|row| records::text_pair(row, context))
            .collect()
    }

    async fn set_nar_storage(&self, file: &str, storage: NarStorage) -> Result<bool> {
        let context = "recording what storage holds of a NAR";
        let params = [storage.to_column().into(), file.into()];
        if self.changed(context, q::SET_NAR_STORAGE, &params).await? > 0 {
            return Ok(true);
        }
        // MySQL counts a row set to the value it holds as unchanged.
        Ok(self.get_nar_storage(file).await?.is_some())
    }

    async fn get_nar_storage(&self, file: &str) -> Result<Option<NarStorage>> {
        let context = "reading what storage holds of a NAR";
        let row = self
            .first(context, q::GET_NAR_STORAGE, &[file.into()])
            .await?;
        let column = row.map(records::nar_storage).transpose()?;
        Ok(column.map(NarStorage::from_column))
    }

    async fn stored_nars_by_last_access(
        &self,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<StoredNar>> {
        let context = "listing NARs by last access";
        let rows = match after {
            Some((at, file)) => {
                let params = [
                    Value::Int(at),
                    Value::Int(at),
                    file.into(),
                    limit_to_db(limit),
                ];
                self.rows(context, q::STORED_NARS_AFTER, &params).await?
            }
            None => {
                self.rows(context, q::STORED_NARS, &[limit_to_db(limit)])
                    .await?
            }
        };
        rows.into_iter().map(records::stored_nar).collect()
    }

    async fn nars_of_unknown_storage(&self, limit: usize) -> Result<Vec<String>> {
        let context = "listing NARs of unknown storage";
        let params = [limit_to_db(limit)];
        self.texts(context, q::NARS_OF_UNKNOWN_STORAGE, &params)
            .await
    }

    async fn storage_usage(&self) -> Result<StorageUsage> {
        let context = "summing up storage";
        let row = self
            .first(context, &self.queries.storage_usage, &[])
            .await?;
        records::storage_usage(row.ok_or_else(|| Error::backend(context, "no row"))?)
    }

    async fn narinfos_of_nar(&self, file: &str) -> Result<Vec<String>> {
        let context = "listing the narinfos of a NAR";
        self.texts(context, q::NARINFOS_OF_NAR, &[file.into()])
            .await
    }

    async fn record_accesses(
        &self,
        narinfos: &[(String, i64)],
        nars: &[(String, i64)],
    ) -> Result<()> {
        self.record_batch("narinfos", "hash", narinfos).await?;
        self.record_batch("nars", "file", nars).await
    }

    async fn add_pin(&self, hash: &str, at: i64) -> Result<bool> {
        let params = [hash.into(), Value::Int(at)];
        let sql = &self.queries.add_pin;
        Ok(self.changed("pinning a store path", sql, &params).await? > 0)
    }

    async fn delete_pin(&self, hash: &str) -> Result<bool> {
        let context = "unpinning a store path";
        Ok(self.changed(context, q::DELETE_PIN, &[hash.into()]).await? > 0)
    }

    async fn list_pins(&self) -> Result<Vec<PinRecord>> {
        let rows = self.rows("listing pins", q::LIST_PINS, &[]).await?;
        rows.into_iter().map(records::pin).collect()
    }

    async fn add_counters(&self, deltas: &[(String, i64)]) -> Result<()> {
        // Summed per name first: one statement may not change a row twice.
        let mut summed = BTreeMap::<&str, i64>::new();
        for (name, delta) in deltas {
            *summed.entry(name.as_str()).or_default() += delta;
        }
        if summed.is_empty() {
            return Ok(());
        }
        let sql = self.queries.add_counters(summed.len());
        let params: Vec<Value> = summed
            .into_iter()
            .flat_map(|(name, delta)| [Value::from(name), Value::Int(delta)])
            .collect();
        self.run("adding to counters", &sql, &params)
            .await
            .map(drop)
    }

    async fn list_counters(&self) -> Result<Vec<(String, i64)>> {
        let rows = self.rows("listing counters", q::LIST_COUNTERS, &[]).await?;
        rows.into_iter().map(records::counter).collect()
    }
}
