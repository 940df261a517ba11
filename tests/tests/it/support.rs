//! Helpers: parse a message as ingest would, and read the resulting rows back as JSON.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value};
use twinlake_model::{Parsed, TableBuilders, Timestamp, TopicRoot, parse_message};

/// The receive time every test uses, so that missing `time`s are predictable.
pub(crate) const RECEIVED: &str = "2026-11-21T00:00:00Z";

pub(crate) fn received_at() -> Timestamp {
    Timestamp::parse_rfc3339(RECEIVED).expect("valid receive time")
}

pub(crate) fn parse(topic: &str, payload: &str) -> Parsed {
    parse_message(
        &TopicRoot::default(),
        topic.as_bytes(),
        payload.as_bytes(),
        received_at(),
    )
}

/// The table and rows one message becomes, through the same builders ingest uses.
pub(crate) fn rows(topic: &str, payload: &str) -> (String, Vec<Value>) {
    let mut builders = TableBuilders::new();
    match parse(topic, payload) {
        Parsed::Data(message) => builders.append(&message),
        Parsed::Rejected(rejection) => builders.append_rejection(&rejection),
        other => panic!("{topic} {payload:?} gave no rows: {other:?}"),
    }
    let mut batches = builders.finish().expect("batches build");
    assert_eq!(batches.len(), 1, "one message fills exactly one table");
    let (table, batch) = batches.remove(0);
    (table.name().to_owned(), batch_rows(&batch))
}

/// Rows of the table a message must go to.
pub(crate) fn rows_of(table: &str, topic: &str, payload: &str) -> Vec<Value> {
    let (actual, rows) = rows(topic, payload);
    assert_eq!(
        actual, table,
        "{topic} {payload:?} went to {actual}: {rows:?}"
    );
    rows
}

/// Each row as a JSON object: times as RFC 3339, bytes as UTF-8 text (lossy).
pub(crate) fn batch_rows(batch: &RecordBatch) -> Vec<Value> {
    (0..batch.num_rows())
        .map(|row| {
            let mut object = Map::new();
            for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
                object.insert(field.name().clone(), cell(column.as_ref(), row));
            }
            Value::Object(object)
        })
        .collect()
}

fn cell(column: &dyn Array, row: usize) -> Value {
    if column.is_null(row) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Utf8 => Value::from(column.as_string::<i32>().value(row)),
        DataType::Float64 => Value::from(column.as_primitive::<Float64Type>().value(row)),
        DataType::Int64 => Value::from(column.as_primitive::<Int64Type>().value(row)),
        DataType::Binary => {
            Value::from(String::from_utf8_lossy(column.as_binary::<i32>().value(row)).into_owned())
        }
        DataType::Timestamp(_, _) => {
            let nanos = column.as_primitive::<TimestampNanosecondType>().value(row);
            Value::from(Timestamp::from_unix_nanos(nanos).to_rfc3339())
        }
        other => panic!("no test rendering for {other}"),
    }
}
