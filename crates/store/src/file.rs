//! Parquet files of a table: rows sorted by the natural key and deduplicated, split by UTC
//! date, written with zstd, dictionaries, statistics and page index; and what the Delta log
//! says about each file (the pruning index rides in the add action's tags).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{Array, ArrayRef, Int32Array, RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use base64::Engine as _;
use bytes::Bytes;
use deltalake::kernel::Add;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use roaring::RoaringBitmap;
use twinlake_model::{Table, UTC};

use crate::StoreError;
use crate::entity_ids::EntityIds;

const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;
const TAG_ROWS: &str = "twinlake.rows";
const TAG_MIN_TIME: &str = "twinlake.min_time_ns";
const TAG_MAX_TIME: &str = "twinlake.max_time_ns";
const TAG_ENTITY_IDS: &str = "twinlake.entity_ids";
const TAG_COMPACTED: &str = "twinlake.compacted";

/// A committed Parquet file of a table, as the query layer needs it for pruning.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistedFile {
    /// Relative to the lake root: `<table>/date=YYYY-MM-DD/part-<uuid>.parquet`.
    pub path: String,
    /// The UTC date partition, `YYYY-MM-DD`.
    pub date: String,
    pub size: u64,
    pub rows: u64,
    /// Time range of the rows, in ns since the epoch; the whole range when unknown (files
    /// written by another tool).
    pub min_time: i64,
    pub max_time: i64,
    /// Ids of the entities in the file; None when unknown (no pruning by entity).
    pub entities: Option<Arc<RoaringBitmap>>,
    /// Written by compaction (rows of a range of entities), not by a persist (rows of every
    /// entity over a span of time).
    pub compacted: bool,
}

impl PersistedFile {
    /// The add action's tags: Twinlake's pruning index. Other Delta readers ignore tags.
    pub(crate) fn tags(&self) -> HashMap<String, Option<String>> {
        let mut tags = HashMap::from([
            (TAG_ROWS.to_owned(), Some(self.rows.to_string())),
            (TAG_MIN_TIME.to_owned(), Some(self.min_time.to_string())),
            (TAG_MAX_TIME.to_owned(), Some(self.max_time.to_string())),
        ]);
        if self.compacted {
            tags.insert(TAG_COMPACTED.to_owned(), Some("true".to_owned()));
        }
        if let Some(entities) = &self.entities {
            let mut bytes = Vec::with_capacity(entities.serialized_size());
            // Writing into a Vec cannot fail.
            let _ = entities.serialize_into(&mut bytes);
            tags.insert(
                TAG_ENTITY_IDS.to_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            );
        }
        tags
    }

    pub(crate) fn from_add(table_name: &str, add: &Add) -> Result<Self, StoreError> {
        let tag = |name: &str| {
            add.tags
                .as_ref()
                .and_then(|tags| tags.get(name).cloned().flatten())
        };
        let number = |name: &str| tag(name).and_then(|v| v.parse::<i64>().ok());
        let entities = match tag(TAG_ENTITY_IDS) {
            Some(encoded) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| StoreError::Corrupt(format!("{}: entity ids: {e}", add.path)))?;
                let bitmap = RoaringBitmap::deserialize_from(bytes.as_slice())
                    .map_err(|e| StoreError::Corrupt(format!("{}: entity ids: {e}", add.path)))?;
                Some(Arc::new(bitmap))
            }
            None => None,
        };
        let date = add
            .partition_values
            .get(crate::lake::DATE_COLUMN)
            .cloned()
            .flatten()
            .unwrap_or_default();
        Ok(Self {
            path: format!("{table_name}/{}", decode_path(&add.path)),
            date,
            size: u64::try_from(add.size).unwrap_or(0),
            rows: number(TAG_ROWS).map_or(0, |rows| rows as u64),
            min_time: number(TAG_MIN_TIME).unwrap_or(i64::MIN),
            max_time: number(TAG_MAX_TIME).unwrap_or(i64::MAX),
            entities,
            compacted: tag(TAG_COMPACTED).is_some_and(|v| v == "true"),
        })
    }
}

/// Add paths are URI-encoded (`date=2026-11-21` is plain, but other tools may escape).
pub(crate) fn decode_path(path: &str) -> String {
    url::form_urlencoded::parse(format!("p={path}").as_bytes())
        .next()
        .map_or_else(|| path.to_owned(), |(_, value)| value.into_owned())
}

/// A table's files as of one Delta version.
#[derive(Debug, Clone, Default)]
pub struct CommittedFiles {
    /// The Delta version; -1 before the first commit.
    pub version: i64,
    pub files: Vec<PersistedFile>,
}

/// One file's worth of rows, encoded and ready to upload.
#[derive(Debug)]
pub(crate) struct EncodedFile {
    pub(crate) file: PersistedFile,
    pub(crate) bytes: Bytes,
    /// Delta statistics JSON, for other readers' data skipping.
    pub(crate) stats: String,
}

/// How Parquet files are written.
#[derive(Debug, Clone, Copy)]
pub struct ParquetSettings {
    pub zstd_level: i32,
    pub row_group_rows: usize,
}

impl Default for ParquetSettings {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            row_group_rows: 1024 * 1024,
        }
    }
}

/// Rows are sorted and deduplicated in chunks of at most this many bytes of Arrow memory: one
/// chunk is concatenated into one batch, and a text column of a batch must stay below 2 GiB.
/// (Exact repeats in different chunks are left for compaction, which merges files again.)
const SORT_CHUNK_BYTES: usize = 512 * 1024 * 1024;

/// [`sort_dedup_by_day`] over many batches, a bounded chunk at a time. Returns the rows read
/// and the day groups (a day may have a group per chunk).
pub(crate) fn sort_dedup_chunks_by_day(
    table: Table,
    batches: &[RecordBatch],
) -> Result<(usize, Vec<(i32, RecordBatch)>), StoreError> {
    sort_dedup_in_chunks(table, batches, SORT_CHUNK_BYTES)
}

fn sort_dedup_in_chunks(
    table: Table,
    batches: &[RecordBatch],
    chunk_limit: usize,
) -> Result<(usize, Vec<(i32, RecordBatch)>), StoreError> {
    let mut rows = 0;
    let mut groups = Vec::new();
    let mut chunk: Vec<&RecordBatch> = Vec::new();
    let mut chunk_bytes = 0;
    let mut flush = |chunk: &mut Vec<&RecordBatch>| -> Result<(), StoreError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let merged = arrow_select::concat::concat_batches(&table.schema(), chunk.iter().copied())?;
        rows += merged.num_rows();
        groups.extend(sort_dedup_by_day(table, &merged)?);
        chunk.clear();
        Ok(())
    };
    for batch in batches {
        let bytes = batch.get_array_memory_size();
        if chunk_bytes + bytes > chunk_limit {
            flush(&mut chunk)?;
            chunk_bytes = 0;
        }
        chunk.push(batch);
        chunk_bytes += bytes;
    }
    flush(&mut chunk)?;
    Ok((rows, groups))
}

/// Sorts rows by the table's key (then by every other column, so identical rows are
/// neighbours), drops exact duplicates (at-least-once delivery repeats messages) and returns
/// the rows grouped by UTC day, each group sorted.
pub(crate) fn sort_dedup_by_day(
    table: Table,
    batch: &RecordBatch,
) -> Result<Vec<(i32, RecordBatch)>, StoreError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let days = day_of_rows(table, batch)?;
    let schema = batch.schema();
    let mut order: Vec<usize> = Vec::new();
    for key in table.sort_key() {
        order.push(schema.index_of(key)?);
    }
    for index in 0..schema.fields().len() {
        if !order.contains(&index) {
            order.push(index);
        }
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(days.clone())];
    columns.extend(order.iter().map(|&i| Arc::clone(batch.column(i))));
    let fields = columns
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let rows = converter.convert_columns(&columns)?;
    let mut indices: Vec<u32> = (0..batch.num_rows() as u32).collect();
    indices.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    indices.dedup_by(|a, b| rows.row(*a as usize) == rows.row(*b as usize));
    let sorted = arrow_select::take::take_record_batch(batch, &UInt32Array::from(indices.clone()))?;
    let mut groups = Vec::new();
    let mut start = 0;
    while start < indices.len() {
        let day = days.value(indices[start] as usize);
        let mut end = start + 1;
        while end < indices.len() && days.value(indices[end] as usize) == day {
            end += 1;
        }
        groups.push((day, sorted.slice(start, end - start)));
        start = end;
    }
    Ok(groups)
}

fn day_of_rows(table: Table, batch: &RecordBatch) -> Result<Int32Array, StoreError> {
    let times = time_values(table, batch)?;
    Ok(times
        .values()
        .iter()
        .map(|ns| ns.div_euclid(NANOS_PER_DAY) as i32)
        .collect())
}

fn time_values(
    table: Table,
    batch: &RecordBatch,
) -> Result<&arrow_array::PrimitiveArray<TimestampNanosecondType>, StoreError> {
    let column = batch
        .column_by_name(table.time_column())
        .ok_or_else(|| StoreError::Corrupt(format!("{table} has no time column")))?;
    column
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| StoreError::Corrupt(format!("{table}: time is not in nanoseconds")))
}

/// Encodes the rows of one day (sorted, deduplicated) as a Parquet file.
pub(crate) fn encode_day(
    table: Table,
    day: i32,
    batch: &RecordBatch,
    entity_ids: &EntityIds,
    settings: ParquetSettings,
) -> Result<EncodedFile, StoreError> {
    let times = time_values(table, batch)?;
    let min_time = times.values().iter().copied().min().unwrap_or(0);
    let max_time = times.values().iter().copied().max().unwrap_or(0);
    let entities = match table.entity_column() {
        Some(column) => {
            let values = batch
                .column_by_name(column)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| StoreError::Corrupt(format!("{table}: entity is not text")))?;
            let mut bitmap = RoaringBitmap::new();
            for entity in values.iter().flatten() {
                bitmap.insert(entity_ids.id(entity).ok_or_else(|| {
                    StoreError::Corrupt(format!("entity {entity} has no id yet"))
                })?);
            }
            Some(Arc::new(bitmap))
        }
        None => None,
    };
    let bytes = write_parquet(table, batch, settings)?;
    let date = date_string(day);
    let stats = delta_stats(table, batch, min_time, max_time);
    let file = PersistedFile {
        path: format!(
            "{}/{}={date}/part-{}.zstd.parquet",
            table.name(),
            crate::lake::DATE_COLUMN,
            uuid::Uuid::new_v4()
        ),
        date,
        size: bytes.len() as u64,
        rows: batch.num_rows() as u64,
        min_time,
        max_time,
        entities,
        compacted: false,
    };
    Ok(EncodedFile { file, bytes, stats })
}

fn date_string(day: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".to_owned())
}

/// The schema of the Parquet files: the table's, with times in microseconds (what Delta's
/// `timestamp` is, and what Spark and every other reader accept).
pub(crate) fn file_schema(table: Table) -> SchemaRef {
    let fields: Vec<Field> = table
        .schema()
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Timestamp(_, _) => field
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))),
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn write_parquet(
    table: Table,
    batch: &RecordBatch,
    settings: ParquetSettings,
) -> Result<Bytes, StoreError> {
    let schema = file_schema(table);
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| arrow_cast::cast(column, field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let level = ZstdLevel::try_new(settings.zstd_level)?;
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(settings.row_group_rows))
        .set_created_by(format!("twinlake {}", env!("CARGO_PKG_VERSION")));
    // Rows are sorted by series, then time: times within a series rise by similar steps, which
    // delta encoding turns into a few bits each. Values and strings stay dictionary-encoded
    // (measured with `twinlake bench lake`: byte-stream-split values took 4.2 bytes per value
    // against 2.4 with dictionaries, as sensors repeat their rounded readings).
    for field in schema.fields() {
        let encoding = match field.data_type() {
            DataType::Timestamp(_, _) | DataType::Int64 => Encoding::DELTA_BINARY_PACKED,
            _ => continue,
        };
        let column = ColumnPath::from(field.name().as_str());
        properties = properties
            .set_column_dictionary_enabled(column.clone(), false)
            .set_column_encoding(column, encoding);
    }
    let properties = properties.build();
    let mut buffer = Vec::with_capacity(batch.get_array_memory_size() / 8);
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(buffer))
}

/// Delta file statistics: row count, and min/max/null count of the time and entity columns.
/// Times are written in milliseconds (as Spark does), the max rounded up so that no reader
/// skips a file that holds a matching row.
fn delta_stats(table: Table, batch: &RecordBatch, min_time: i64, max_time: i64) -> String {
    let time = table.time_column();
    let millis = |ns: i64, round_up: bool| {
        let ms = if round_up {
            ns.div_euclid(1_000_000) + i64::from(ns.rem_euclid(1_000_000) != 0)
        } else {
            ns.div_euclid(1_000_000)
        };
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    };
    let mut min_values = serde_json::Map::new();
    let mut max_values = serde_json::Map::new();
    let mut null_count = serde_json::Map::new();
    if let (Some(min), Some(max)) = (millis(min_time, false), millis(max_time, true)) {
        min_values.insert(time.to_owned(), min.into());
        max_values.insert(time.to_owned(), max.into());
        null_count.insert(time.to_owned(), 0.into());
    }
    if let Some(column) = table.entity_column()
        && let Some(values) = batch
            .column_by_name(column)
            .and_then(|c| c.as_string_opt::<i32>())
    {
        // Sorted by entity first, so the first and last rows hold the extremes.
        if !values.is_empty() {
            min_values.insert(column.to_owned(), values.value(0).into());
            max_values.insert(column.to_owned(), values.value(values.len() - 1).into());
            null_count.insert(column.to_owned(), 0.into());
        }
    }
    serde_json::json!({
        "numRecords": batch.num_rows(),
        "minValues": min_values,
        "maxValues": max_values,
        "nullCount": null_count,
    })
    .to_string()
}

/// Reads a whole Parquet file of the lake (fetched in one request, decoded off the runtime).
pub(crate) async fn read_parquet(
    store: Arc<dyn ObjectStore>,
    path: &str,
) -> Result<Vec<RecordBatch>, StoreError> {
    let bytes = store.get(&Path::from(path)).await?.bytes().await?;
    crate::persist::blocking(move || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        Ok(reader.collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rows::measurements;

    #[test]
    fn rows_are_sorted_by_key_deduplicated_and_split_by_day() {
        let day = 86_400;
        let batch = measurements(&[
            ("device/b//", r#"{"t":2}"#, 10),
            ("device/a//", r#"{"t":1}"#, day + 5),
            ("device/a//", r#"{"t":1}"#, 20),
            ("device/b//", r#"{"t":2}"#, 10),
            ("device/a//", r#"{"t":3}"#, 20),
        ]);
        let groups = sort_dedup_by_day(Table::Measurements, &batch).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, 0);
        assert_eq!(groups[1].0, 1);
        let first = &groups[0].1;
        let entities: Vec<&str> = first
            .column_by_name("entity")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        // The repeated device/b row is gone; the two device/a rows at 20 s differ in value.
        assert_eq!(
            entities,
            ["main:device:a", "main:device:a", "main:device:b"]
        );
        assert_eq!(groups[1].1.num_rows(), 1);
    }

    #[test]
    fn batches_beyond_a_chunk_are_sorted_apart_and_no_row_is_lost() {
        let batch = |seconds: i64| {
            measurements(&[
                ("device/b//", r#"{"t":2}"#, seconds),
                ("device/a//", r#"{"t":1}"#, seconds),
                ("device/a//", r#"{"t":1}"#, seconds),
            ])
        };
        let batches = [batch(10), batch(20), batch(30)];
        let one_batch = batches[0].get_array_memory_size();
        // Room for one batch a chunk: three chunks, each sorted and deduplicated alone.
        let (rows, groups) =
            sort_dedup_in_chunks(Table::Measurements, &batches, one_batch).unwrap();
        assert_eq!(rows, 9);
        assert_eq!(groups.len(), 3);
        assert!(
            groups
                .iter()
                .all(|(day, group)| *day == 0 && group.num_rows() == 2)
        );
        // Room for all: one chunk.
        let (_, groups) =
            sort_dedup_in_chunks(Table::Measurements, &batches, 3 * one_batch).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].1.num_rows(), 6);
    }

    #[test]
    fn tags_round_trip_through_an_add_action() {
        let file = PersistedFile {
            path: "measurements/date=2026-11-21/part-x.parquet".to_owned(),
            date: "2026-11-21".to_owned(),
            size: 10,
            rows: 3,
            min_time: 5,
            max_time: 9,
            entities: Some(Arc::new(RoaringBitmap::from_iter([1u32, 7, 4000]))),
            compacted: true,
        };
        let add = Add {
            path: "date=2026-11-21/part-x.parquet".to_owned(),
            partition_values: HashMap::from([("date".to_owned(), Some(file.date.clone()))]),
            size: 10,
            modification_time: 0,
            data_change: true,
            stats: None,
            tags: Some(file.tags()),
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        };
        assert_eq!(PersistedFile::from_add("measurements", &add).unwrap(), file);
    }

    #[test]
    fn days_before_1970_and_dates() {
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(date_string(-1), "1969-12-31");
        assert_eq!(date_string(20_413), "2025-11-21");
    }
}
