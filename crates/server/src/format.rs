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
}

/// Encodes a result batch by batch, so that an answer is never whole in memory: the bytes of
/// each batch can go to the client before the next batch is computed. CPU work: call it off
/// the async runtime.
pub(crate) struct ResultEncoder {
    state: Encoding,
}

impl std::fmt::Debug for ResultEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultEncoder").finish_non_exhaustive()
    }
}

enum Encoding {
    /// A JSON array: `[` first, `,` between batches, `]` last.
    Json {
        rows_written: bool,
    },
    Ndjson,
    Csv {
        header_written: bool,
    },
    Arrow(arrow_ipc::writer::StreamWriter<Vec<u8>>),
    Parquet(parquet::arrow::ArrowWriter<Vec<u8>>),
}

/// Rows per Parquet row group of an answer: a row group is held until it is complete.
const PARQUET_ROW_GROUP_ROWS: usize = 64 * 1024;

impl ResultEncoder {
    /// An encoder, and the bytes that open the answer (an Arrow schema message, `[`).
    pub(crate) fn start(
        format: ResultFormat,
        schema: &SchemaRef,
    ) -> Result<(Self, Vec<u8>), ArrowError> {
        let (state, head) = match format {
            ResultFormat::Json => (
                Encoding::Json {
                    rows_written: false,
                },
                b"[".to_vec(),
            ),
            ResultFormat::Ndjson => (Encoding::Ndjson, Vec::new()),
            ResultFormat::Csv => (
                Encoding::Csv {
                    header_written: false,
                },
                Vec::new(),
            ),
            ResultFormat::Arrow => {
                let mut writer = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
                let head = std::mem::take(writer.get_mut());
                (Encoding::Arrow(writer), head)
            }
            ResultFormat::Parquet => {
                let properties = parquet::file::properties::WriterProperties::builder()
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP_ROWS))
                    .build();
                let writer = parquet::arrow::ArrowWriter::try_new(
                    Vec::new(),
                    schema.clone(),
                    Some(properties),
                )
                .map_err(parquet_error)?;
                (Encoding::Parquet(writer), Vec::new())
            }
        };
        Ok((Self { state }, head))
    }

    /// The bytes of one more batch.
    pub(crate) fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
        match &mut self.state {
            Encoding::Json { rows_written } => {
                let array = json::<arrow_json::writer::JsonArray>(batch)?;
                // `[row,row]` of this batch without its brackets, after a comma if need be.
                let Some(rows) = array
                    .trim_ascii()
                    .strip_prefix(b"[")
                    .and_then(|a| a.strip_suffix(b"]"))
                    .filter(|rows| !rows.is_empty())
                else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::with_capacity(rows.len() + 1);
                if *rows_written {
                    out.push(b',');
                }
                out.extend_from_slice(rows);
                *rows_written = true;
                Ok(out)
            }
            Encoding::Ndjson => json::<arrow_json::writer::LineDelimited>(batch),
            Encoding::Csv { header_written } => {
                let batch = text_times(batch)?;
                let mut writer = arrow_csv::WriterBuilder::new()
                    .with_header(!*header_written)
                    .build(Vec::new());
                writer.write(&batch)?;
                *header_written = true;
                Ok(writer.into_inner())
            }
            Encoding::Arrow(writer) => {
                writer.write(batch)?;
                Ok(std::mem::take(writer.get_mut()))
            }
            Encoding::Parquet(writer) => {
                writer.write(batch).map_err(parquet_error)?;
                // Row groups already written can go; the footer comes with `finish`.
                Ok(std::mem::take(writer.inner_mut()))
            }
        }
    }

    /// The bytes that close the answer (`]`, the Arrow end-of-stream, the Parquet footer).
    pub(crate) fn finish(self) -> Result<Vec<u8>, ArrowError> {
        match self.state {
            Encoding::Json { .. } => Ok(b"]".to_vec()),
            Encoding::Ndjson | Encoding::Csv { .. } => Ok(Vec::new()),
            Encoding::Arrow(mut writer) => {
                writer.finish()?;
                Ok(std::mem::take(writer.get_mut()))
            }
            Encoding::Parquet(writer) => writer.into_inner().map_err(parquet_error),
        }
    }
}

fn parquet_error(error: parquet::errors::ParquetError) -> ArrowError {
    ArrowError::ExternalError(Box::new(error))
}

/// JSON rows in `F`'s layout (array or lines), nulls written out, times as text.
fn json<F: arrow_json::writer::JsonFormat>(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let batch = text_times(batch)?;
    let mut writer = arrow_json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, F>(Vec::new());
    writer.write(&batch)?;
    writer.finish()?;
    Ok(writer.into_inner())
}

/// Time columns as RFC 3339 text in UTC with the `Z` suffix and only the fraction digits needed
/// (`2021-01-01T05:30:45Z`, `…:22.123Z`), the way Twinlake writes times everywhere.
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};

    use super::{ResultEncoder, ResultFormat};

    /// Three batches of 1,000 rows (one empty batch among them), as a query streams them.
    fn batches() -> Vec<RecordBatch> {
        let batch = |from: i64, rows: i64| {
            let n: ArrayRef = Arc::new(Int64Array::from_iter_values(from..from + rows));
            let text: ArrayRef = Arc::new(StringArray::from_iter_values(
                (from..from + rows).map(|v| format!("row \"{v}\"")),
            ));
            let time: ArrayRef = Arc::new(
                TimestampNanosecondArray::from_iter_values((from..from + rows).map(|v| v * 1_000))
                    .with_timezone("UTC"),
            );
            RecordBatch::try_from_iter([("n", n), ("text", text), ("time", time)]).unwrap()
        };
        vec![
            batch(0, 1_000),
            batch(1_000, 0),
            batch(1_000, 1_000),
            batch(2_000, 1_000),
        ]
    }

    /// The whole answer, as a client receives it.
    fn encode(format: ResultFormat) -> Vec<u8> {
        let batches = batches();
        let (mut encoder, mut out) = ResultEncoder::start(format, &batches[0].schema()).unwrap();
        for batch in &batches {
            out.extend(encoder.batch(batch).unwrap());
        }
        out.extend(encoder.finish().unwrap());
        out
    }

    #[test]
    fn answers_encoded_batch_by_batch_read_back_whole_in_every_format() {
        let json: serde_json::Value = serde_json::from_slice(&encode(ResultFormat::Json)).unwrap();
        let rows = json.as_array().unwrap();
        assert_eq!(rows.len(), 3_000);
        assert_eq!(rows[2_999]["n"], 2_999);
        assert_eq!(rows[1]["time"], "1970-01-01T00:00:00.000001Z");

        let ndjson = String::from_utf8(encode(ResultFormat::Ndjson)).unwrap();
        assert_eq!(ndjson.lines().count(), 3_000);

        let csv = String::from_utf8(encode(ResultFormat::Csv)).unwrap();
        assert_eq!(csv.lines().count(), 1 + 3_000, "one header, then the rows");
        assert!(csv.starts_with("n,text,time\n"), "{}", &csv[..40]);

        let arrow = encode(ResultFormat::Arrow);
        let reader =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow), None).unwrap();
        let rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
        assert_eq!(rows, 3_000);

        let parquet = bytes::Bytes::from(encode(ResultFormat::Parquet));
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
                .unwrap()
                .build()
                .unwrap();
        let rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
        assert_eq!(rows, 3_000);
    }

    #[test]
    fn an_answer_without_rows_is_still_well_formed() {
        let schema = batches()[0].schema();
        let (encoder, head) = ResultEncoder::start(ResultFormat::Json, &schema).unwrap();
        let mut whole = head;
        whole.extend(encoder.finish().unwrap());
        assert_eq!(whole, b"[]");
    }
}
