//! Rows for unit tests, built by the real parser.

use arrow_array::RecordBatch;
use twinlake_model::{FleetTopics, Parsed, TableBuilders, Timestamp, parse_message};

/// A `measurements` batch from `(topic id, payload, unix seconds)` messages on `m/env` of the
/// default gateway, `main`.
pub(crate) fn measurements(rows: &[(&str, &str, i64)]) -> RecordBatch {
    let mut builders = TableBuilders::new();
    for (entity, payload, seconds) in rows {
        let topic = format!("te/{entity}/m/env");
        let Parsed::Data(message) = parse_message(
            &FleetTopics::default(),
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
