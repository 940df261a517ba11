//! Helpers: parse a message as ingest would, and read the resulting rows back as JSON.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde_json::{Map, Value};
use twinlake_model::{FleetTopics, Parsed, TableBuilders, Timestamp, parse_message};

/// The receive time every test uses, so that missing `time`s are predictable.
pub(crate) const RECEIVED: &str = "2026-11-21T00:00:00Z";

pub(crate) fn received_at() -> Timestamp {
    Timestamp::parse_rfc3339(RECEIVED).expect("valid receive time")
}

pub(crate) fn parse(topic: &str, payload: &str) -> Parsed {
    parse_message(
        &FleetTopics::default(),
        topic.as_bytes(),
        payload.as_bytes(),
        received_at(),
    )
}

/// The table and rows one message becomes, through the same builders ingest uses, in the
/// default gateway's local view (see [`local_rows`]).
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
    (table.name().to_owned(), local_rows(&batch))
}

/// The gateway plain `te/` topics belong to when nothing else is configured.
const DEFAULT_GATEWAY: &str = "main";

/// Rows of a plain `te/` message, as the gateway that sent it names its entities: every row
/// must carry the default gateway and fleet-unique names (`main:device:child01`); they are
/// checked, then turned back into topic ids (`device/child01//`), the form the thin-edge spec's
/// examples are written in. `gateway` and `topic_id` (which must agree with `entity`) go.
pub(crate) fn local_rows(batch: &RecordBatch) -> Vec<Value> {
    batch_rows(batch)
        .into_iter()
        .map(|mut row| {
            let object = row.as_object_mut().expect("a row is an object");
            if let Some(gateway) = object.remove("gateway") {
                assert_eq!(gateway, DEFAULT_GATEWAY, "{object:?}");
            }
            for column in ["entity", "parent", "health_endpoint"] {
                if let Some(Value::String(name)) = object.get(column) {
                    let topic_id = topic_id_of(name);
                    object.insert(column.to_owned(), Value::from(topic_id));
                }
            }
            if let Some(topic_id) = object.remove("topic_id") {
                assert_eq!(topic_id, object["entity"], "topic_id and entity disagree");
            }
            row
        })
        .collect()
}

/// The topic id a fleet-unique name of the default gateway's was made from (fleet.md §4):
/// `main` is `device/main//`, `main:a:b` is `a/b//`.
fn topic_id_of(name: &str) -> String {
    if name == DEFAULT_GATEWAY {
        return "device/main//".to_owned();
    }
    let local = name
        .strip_prefix(DEFAULT_GATEWAY)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{name:?} is not an entity of gateway {DEFAULT_GATEWAY}"));
    let mut segments: Vec<&str> = local.split(':').collect();
    segments.resize(segments.len().max(4), "");
    segments.join("/")
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
