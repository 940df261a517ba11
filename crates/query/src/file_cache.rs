//! The small tables' files (alarms, events, health, twin and entity changes), decoded once and
//! kept in memory within a budget. A query over them had spent more time opening and decoding
//! a file per day than computing: 10 of the 15 ms of a query counting 8 K alarms. Lake files
//! never change under their name, so a decoded file stays right until it is evicted.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prometheus_client::registry::Registry;
use twinlake_model::Table;

use crate::budget_lru::BudgetLru;

/// Whether a table's files are decoded into the cache: not measurements (the large table,
/// whose row-group and page pruning a scan needs) nor rejected messages (whole payloads,
/// rarely queried).
pub(crate) fn is_cached(table: Table) -> bool {
    !matches!(table, Table::Measurements | Table::Rejected)
}

/// The small tables' files, decoded, within a budget of Arrow memory.
#[derive(Debug)]
pub(crate) struct FileCache {
    files: BudgetLru<Arc<[RecordBatch]>>,
}

impl FileCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            files: BudgetLru::new(budget_bytes),
        }
    }

    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        let what = "small tables' files, decoded (Arrow memory)";
        self.files.metrics.register(registry, "file_cache", what);
    }

    /// A table is read from the cache only while its files (compressed) are at most this
    /// large: decoded, text and JSON take several times their Parquet size, and a table
    /// larger than the budget would evict its own files query after query.
    pub(crate) fn max_table_file_bytes(&self) -> u64 {
        u64::try_from(self.files.budget_bytes() / 16).unwrap_or(u64::MAX)
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
        if let Some(batches) = self.files.get(path) {
            self.files.metrics.hits.inc();
            return Ok(Some(batches));
        }
        let bytes = store.get(&Path::from(path)).await?.bytes().await?;
        let schema = Arc::clone(schema);
        let decoded = tokio::task::spawn_blocking(move || decode(bytes, schema)).await;
        let Ok(Some(batches)) = decoded else {
            return Ok(None);
        };
        self.files.metrics.loads.inc();
        let batches: Arc<[RecordBatch]> = batches.into();
        let size = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        self.files.insert(path, Arc::clone(&batches), size);
        Ok(Some(batches))
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
