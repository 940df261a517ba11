//! The small tables' files (alarms, events, health, twin and entity changes), decoded once and
//! kept in memory within a budget. A query over them had spent more time opening and decoding
//! a file per day than computing: 10 of the 15 ms of a query counting 8 K alarms. Lake files
//! never change under their name, so a decoded file stays right until it is evicted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use twinlake_model::Table;

/// Whether a table's files are decoded into the cache: not measurements (the large table,
/// whose row-group and page pruning a scan needs) nor rejected messages (whole payloads,
/// rarely queried).
pub(crate) fn is_cached(table: Table) -> bool {
    !matches!(table, Table::Measurements | Table::Rejected)
}

#[derive(Debug, Clone, Default)]
pub(crate) struct FileCacheMetrics {
    bytes: Gauge,
    hits: Counter,
    loads: Counter,
    evictions: Counter,
    /// Files decoded but not kept: larger than the whole budget.
    too_large: Counter,
}

impl FileCacheMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "twinlake_query_file_cache_bytes",
            "Arrow memory of the small tables' files kept decoded for queries",
            self.bytes.clone(),
        );
        registry.register(
            "twinlake_query_file_cache_hits",
            "Files a query read from the decoded-file cache",
            self.hits.clone(),
        );
        registry.register(
            "twinlake_query_file_cache_loads",
            "Files decoded into the cache",
            self.loads.clone(),
        );
        registry.register(
            "twinlake_query_file_cache_evictions",
            "Decoded files evicted to stay within the cache's budget",
            self.evictions.clone(),
        );
        registry.register(
            "twinlake_query_file_cache_too_large",
            "Decoded files larger than the cache's whole budget, read and not kept",
            self.too_large.clone(),
        );
    }
}

#[derive(Debug)]
pub(crate) struct FileCache {
    /// Arrow memory of the decoded files kept, least recently used evicted first.
    budget_bytes: usize,
    entries: Mutex<Entries>,
    pub(crate) metrics: FileCacheMetrics,
}

#[derive(Debug, Default)]
struct Entries {
    files: HashMap<String, Entry>,
    bytes: usize,
    /// Counts uses; an entry's stamp says when it was last used.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    batches: Arc<[RecordBatch]>,
    bytes: usize,
    used: u64,
}

impl FileCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            entries: Mutex::default(),
            metrics: FileCacheMetrics::default(),
        }
    }

    /// A table is read from the cache only while its files (compressed) are at most this
    /// large: decoded, text and JSON take several times their Parquet size, and a table
    /// larger than the budget would evict its own files query after query.
    pub(crate) fn max_table_file_bytes(&self) -> u64 {
        u64::try_from(self.budget_bytes / 16).unwrap_or(u64::MAX)
    }

    /// The file's rows in `schema` (the table's query schema), from the cache or read from
    /// `store` and decoded. None when the file does not have the table's columns in the
    /// table's order (a file another tool wrote): the Parquet scan, which adapts schemas,
    /// reads it then.
    pub(crate) async fn read(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &str,
        schema: &SchemaRef,
    ) -> Result<Option<Arc<[RecordBatch]>>, object_store::Error> {
        if let Some(batches) = self.get(path) {
            self.metrics.hits.inc();
            return Ok(Some(batches));
        }
        let bytes = store.get(&Path::from(path)).await?.bytes().await?;
        let schema = Arc::clone(schema);
        let decoded = tokio::task::spawn_blocking(move || decode(bytes, schema)).await;
        let Ok(Some(batches)) = decoded else {
            return Ok(None);
        };
        self.metrics.loads.inc();
        let batches: Arc<[RecordBatch]> = batches.into();
        self.insert(path, Arc::clone(&batches));
        Ok(Some(batches))
    }

    fn get(&self, path: &str) -> Option<Arc<[RecordBatch]>> {
        let mut entries = self.entries.lock().ok()?;
        entries.clock += 1;
        let clock = entries.clock;
        let entry = entries.files.get_mut(path)?;
        entry.used = clock;
        Some(Arc::clone(&entry.batches))
    }

    /// Keeps the file, evicting the least recently used ones until it fits.
    fn insert(&self, path: &str, batches: Arc<[RecordBatch]>) {
        let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if bytes > self.budget_bytes {
            self.metrics.too_large.inc();
            tracing::debug!(
                path,
                bytes,
                budget = self.budget_bytes,
                "a decoded file is larger than the query file cache's budget: not kept"
            );
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        while entries.bytes + bytes > self.budget_bytes {
            let Some(oldest) = entries
                .files
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            if let Some(evicted) = entries.files.remove(&oldest) {
                entries.bytes -= evicted.bytes;
                self.metrics.evictions.inc();
            }
        }
        entries.clock += 1;
        let used = entries.clock;
        let replaced = entries.files.insert(
            path.to_owned(),
            Entry {
                batches,
                bytes,
                used,
            },
        );
        entries.bytes += bytes;
        if let Some(replaced) = replaced {
            entries.bytes -= replaced.bytes;
        }
        self.metrics
            .bytes
            .set(i64::try_from(entries.bytes).unwrap_or(i64::MAX));
    }
}

/// The file's rows in `schema`: text columns read as string views straight from the pages,
/// other columns cast where the file stores them otherwise (times in µs, as Delta's
/// timestamps are). None when the file's columns are not the schema's, by name and order.
fn decode(bytes: bytes::Bytes, schema: SchemaRef) -> Option<Vec<RecordBatch>> {
    let file = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::new()).ok()?;
    let stored = file.schema();
    let same_columns = stored.fields().len() == schema.fields().len()
        && stored
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(stored, wanted)| stored.name() == wanted.name());
    if !same_columns {
        return None;
    }
    let read: Vec<Field> = stored
        .fields()
        .iter()
        .zip(schema.fields())
        .map(|(stored, wanted)| match wanted.data_type() {
            DataType::Utf8View => stored.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => stored.as_ref().clone(),
        })
        .collect();
    let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(read)));
    let file = ArrowReaderMetadata::try_new(Arc::clone(file.metadata()), options).ok()?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, file)
        .build()
        .ok()?;
    reader
        .map(|batch| {
            let batch = batch.ok()?;
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, wanted)| cast(column, wanted.data_type()).ok())
                .collect::<Option<Vec<_>>>()?;
            RecordBatch::try_new(Arc::clone(&schema), columns).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;

    use super::*;

    fn rows(count: usize) -> Arc<[RecordBatch]> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let values = Int64Array::from_iter_values(0..count as i64);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap();
        vec![batch].into()
    }

    #[test]
    fn the_least_recently_used_file_is_evicted_to_stay_within_the_budget() {
        let one = rows(1000);
        let size: usize = one.iter().map(RecordBatch::get_array_memory_size).sum();
        let cache = FileCache::new(size * 2);
        cache.insert("a", Arc::clone(&one));
        cache.insert("b", Arc::clone(&one));
        assert!(cache.get("a").is_some(), "a used after b");
        cache.insert("c", Arc::clone(&one));
        assert!(
            cache.get("b").is_none(),
            "b, the least recently used, evicted"
        );
        assert!(cache.get("a").is_some());
        assert!(cache.get("c").is_some());
        assert_eq!(cache.metrics.evictions.get(), 1);
        assert_eq!(cache.metrics.bytes.get(), i64::try_from(size * 2).unwrap());
    }

    #[test]
    fn a_file_larger_than_the_budget_is_not_kept() {
        let cache = FileCache::new(100);
        cache.insert("a", rows(1000));
        assert!(cache.get("a").is_none());
        assert_eq!(cache.metrics.too_large.get(), 1);
        assert_eq!(cache.metrics.bytes.get(), 0);
    }
}
