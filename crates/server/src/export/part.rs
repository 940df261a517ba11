//! One Parquet file of an export, streamed to its destination as it is encoded: encoding runs
//! off the async runtime, each encoded chunk goes on as a part of a multipart upload (a staging
//! file on a local directory, renamed at the end), so a file appears whole or not at all and
//! memory holds one row group and one upload chunk whatever the file's size.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, TimestampNanosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::compute;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ExportError;

/// Rows per row group: small enough that a group of wide rows stays a few MiB in memory, large
/// enough for good compression and few groups to skip.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Upload chunks in flight per file.
const UPLOADS_IN_FLIGHT: usize = 2;

/// What the manifest says of a written file.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenFile {
    /// Relative to the export's root.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// The earliest and latest `time` in the file (RFC 3339), when it has a `time` column.
    pub min_time: Option<String>,
    pub max_time: Option<String>,
    pub sha256: String,
}

/// The schema as files carry it: nanosecond times as microseconds (Spark and other Parquet
/// readers refuse nanosecond timestamps, and persisted times are microseconds anyway), and
/// text as plain `Utf8` (the query's `Utf8View` would be recorded in the file's Arrow schema,
/// and older readers do not know it).
fn file_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, zone) => field
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, zone.clone())),
            DataType::Utf8View => field.as_ref().clone().with_data_type(DataType::Utf8),
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn as_file_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ExportError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(
            |(column, field)| match column.data_type() == field.data_type() {
                true => Ok(Arc::clone(column)),
                false => arrow_cast::cast(column, field.data_type()),
            },
        )
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ExportError::Failed(format!("converting for the file: {e}")))?;
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| ExportError::Failed(format!("converting for the file: {e}")))
}

/// The encoding half of a part: moved to a blocking thread for each batch.
struct Encoder {
    writer: ArrowWriter<Vec<u8>>,
    /// What the file holds (times in microseconds, text as `Utf8`).
    schema: SchemaRef,
    sha: Sha256,
}

pub(crate) struct PartWriter {
    path: String,
    encoder: Option<Encoder>,
    upload: WriteMultipart,
    bytes: u64,
    rows: u64,
    time_column: Option<usize>,
    times: Option<(i64, i64)>,
}

impl PartWriter {
    /// Starts `path` (relative to `store`'s root); `sorted_by`: the columns the rows come
    /// sorted by, recorded in the file for readers that use it.
    pub(crate) async fn create(
        store: &Arc<dyn ObjectStore>,
        path: String,
        schema: &SchemaRef,
        sorted_by: &[&str],
    ) -> Result<Self, ExportError> {
        let schema = &file_schema(schema);
        let sorting: Vec<SortingColumn> = sorted_by
            .iter()
            .filter_map(|name| schema.index_of(name).ok())
            .map(|index| SortingColumn {
                column_idx: index as i32,
                descending: false,
                nulls_first: false,
            })
            .collect();
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_sorting_columns((!sorting.is_empty()).then_some(sorting))
            .build();
        let writer = ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(properties))?;
        let upload = store
            .put_multipart(&Path::from(path.as_str()))
            .await
            .map_err(|e| ExportError::Destination(format!("starting {path}: {e}")))?;
        let time_column = schema
            .index_of("time")
            .ok()
            .filter(|&i| matches!(schema.field(i).data_type(), DataType::Timestamp(_, _)));
        Ok(Self {
            path,
            encoder: Some(Encoder {
                writer,
                schema: Arc::clone(schema),
                sha: Sha256::new(),
            }),
            upload: WriteMultipart::new(upload),
            bytes: 0,
            rows: 0,
            time_column,
            times: None,
        })
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes sent to the destination so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) async fn write(&mut self, batch: RecordBatch) -> Result<(), ExportError> {
        self.note_times(&batch);
        self.rows += batch.num_rows() as u64;
        let encoder = self.take_encoder()?;
        let (encoder, chunk) = tokio::task::spawn_blocking(move || {
            let mut encoder = encoder;
            let batch = as_file_batch(&batch, &encoder.schema)?;
            encoder.writer.write(&batch)?;
            let chunk = std::mem::take(encoder.writer.inner_mut());
            encoder.sha.update(&chunk);
            Ok::<_, ExportError>((encoder, chunk))
        })
        .await
        .map_err(|e| ExportError::Failed(format!("encoding {}: {e}", self.path)))??;
        self.encoder = Some(encoder);
        self.send(&chunk).await
    }

    /// Writes the footer and completes the upload: only now does the file appear.
    pub(crate) async fn finish(mut self) -> Result<WrittenFile, ExportError> {
        let encoder = self.take_encoder()?;
        let (chunk, sha) = tokio::task::spawn_blocking(move || {
            let Encoder {
                writer, mut sha, ..
            } = encoder;
            let chunk = writer.into_inner()?;
            sha.update(&chunk);
            Ok::<_, ExportError>((chunk, sha))
        })
        .await
        .map_err(|e| ExportError::Failed(format!("encoding {}: {e}", self.path)))??;
        self.send(&chunk).await?;
        let path = self.path;
        self.upload
            .finish()
            .await
            .map_err(|e| ExportError::Destination(format!("completing {path}: {e}")))?;
        let rfc3339 = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339();
        Ok(WrittenFile {
            path,
            rows: self.rows,
            bytes: self.bytes,
            min_time: self.times.map(|(min, _)| rfc3339(min)),
            max_time: self.times.map(|(_, max)| rfc3339(max)),
            sha256: sha.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// Drops what was uploaded: the file never appears.
    pub(crate) async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::warn!(path = self.path, %error, "could not abort an export file's upload");
        }
    }

    fn take_encoder(&mut self) -> Result<Encoder, ExportError> {
        self.encoder
            .take()
            .ok_or_else(|| ExportError::Failed(format!("{}: an earlier write failed", self.path)))
    }

    async fn send(&mut self, chunk: &[u8]) -> Result<(), ExportError> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.upload
            .wait_for_capacity(UPLOADS_IN_FLIGHT)
            .await
            .map_err(|e| ExportError::Destination(format!("writing {}: {e}", self.path)))?;
        self.upload.write(chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    fn note_times(&mut self, batch: &RecordBatch) {
        let Some(times) = self.time_column.and_then(|i| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
        }) else {
            return;
        };
        let (Some(min), Some(max)) = (compute::min(times), compute::max(times)) else {
            return;
        };
        self.times = Some(match self.times {
            Some((lo, hi)) => (lo.min(min), hi.max(max)),
            None => (min, max),
        });
    }
}
