//! Rows for unit tests, built by the real parser.

use arrow_array::RecordBatch;
use twinlake_model::{Parsed, TableBuilders, Timestamp, TopicRoot, parse_message};

/// A `measurements` batch from `(entity, payload, unix seconds)` messages on `m/env`.
pub(crate) fn measurements(rows: &[(&str, &str, i64)]) -> RecordBatch {
    let mut builders = TableBuilders::new();
    for (entity, payload, seconds) in rows {
        let topic = format!("te/{entity}/m/env");
        let Parsed::Data(message) = parse_message(
            &TopicRoot::default(),
            topic.as_bytes(),
            payload.as_bytes(),
            Timestamp::from_unix_nanos(seconds * 1_000_000_000),
        ) else {
            panic!("valid measurement");
        };
        builders.append(&message);
    }
    builders.finish().unwrap().remove(0).1
}
