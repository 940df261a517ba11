//! Encoding query results for HTTP clients.

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, DataType, SchemaRef, TimeUnit};

/// The `format` of a query request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultFormat {
    /// An array of objects, one per row; times as RFC 3339 strings.
    #[default]
    Json,
    /// One JSON object per line.
    Ndjson,
    Csv,
    /// Arrow IPC stream.
    Arrow,
    Parquet,
}

impl ResultFormat {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "ndjson" | "jsonl" => Some(Self::Ndjson),
            "csv" => Some(Self::Csv),
            "arrow" => Some(Self::Arrow),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// Encodes the whole result. CPU work: call it off the async runtime.
    pub fn encode(
        self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<Vec<u8>, ArrowError> {
        match self {
            Self::Json => {
                let bytes = json::<arrow_json::writer::JsonArray>(batches)?;
                // With no rows at all the writer writes nothing; an empty result is still an array.
                Ok(if bytes.is_empty() {
                    b"[]".to_vec()
                } else {
                    bytes
                })
            }
            Self::Ndjson => json::<arrow_json::writer::LineDelimited>(batches),
            Self::Csv => {
                let batches = with_text_times(batches)?;
                let mut writer = arrow_csv::WriterBuilder::new()
                    .with_header(true)
                    .build(Vec::new());
                for batch in &batches {
                    writer.write(batch)?;
                }
                Ok(writer.into_inner())
            }
            Self::Arrow => {
                let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
                for batch in batches {
                    writer.write(batch)?;
                }
                writer.finish()?;
                writer.into_inner()
            }
            Self::Parquet => {
                let mut writer =
                    parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), None)
                        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                for batch in batches {
                    writer
                        .write(batch)
                        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                }
                writer
                    .into_inner()
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))
            }
        }
    }
}

/// JSON rows in `F`'s layout (array or lines), nulls written out, times as text.
fn json<F: arrow_json::writer::JsonFormat>(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let batches = with_text_times(batches)?;
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, F>(Vec::new());
    for batch in &batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner())
}

/// Time columns as RFC 3339 text in UTC with the `Z` suffix and only the fraction digits needed
/// (`2021-01-01T05:30:45Z`, `…:22.123Z`), the way Twinlake writes times everywhere.
fn with_text_times(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, ArrowError> {
    batches.iter().map(text_times).collect()
}

fn text_times(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampNanosecondType;
    use arrow_array::{Array, ArrayRef, StringArray};
    use arrow_schema::{Field, Schema};

    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Timestamp(..)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let DataType::Timestamp(_, zone) = field.data_type() else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
            continue;
        };
        let nanos = arrow_cast::cast(
            column,
            &DataType::Timestamp(TimeUnit::Nanosecond, zone.clone()),
        )?;
        let nanos = nanos.as_primitive::<TimestampNanosecondType>();
        let text: StringArray = (0..nanos.len())
            .map(|i| {
                nanos.is_valid(i).then(|| {
                    twinlake_model::Timestamp::from_unix_nanos(nanos.value(i)).to_rfc3339()
                })
            })
            .collect();
        fields.push(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        ));
        columns.push(Arc::new(text));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}
