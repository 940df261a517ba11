//! Retained messages the broker replays at every (re)connect: the last stored payload of each
//! retained topic, so that an unchanged replay is recognised and not stored again.
//!
//! The state is rebuilt on start from an internal WAL table, `_retained`, that records every
//! stored retained payload along with the rows it produced.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::BinaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use twinlake_model::Table;
use twinlake_store::LiveTables;
use twinlake_wal::Replay;

use crate::qos2::{QOS2_TABLE, Qos2State};

/// The WAL table holding `(topic, payload)` of stored retained messages.
pub const RETAINED_TABLE: &str = "_retained";

fn retained_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Binary, false),
        Field::new("payload", DataType::Binary, false),
    ]))
}

/// The tables whose messages thin-edge publishes retained, so the broker replays them.
pub(crate) fn is_retained_kind(table: Table) -> bool {
    matches!(
        table,
        Table::EntityChanges
            | Table::TwinChanges
            | Table::Alarms
            | Table::Health
            | Table::MeasurementMeta
    )
}

/// The last stored payload of every retained topic, up to a byte limit: past it a new topic
/// is stored as data but not remembered, so its next replay by the broker is stored again (a
/// repeat, never a loss), instead of the state growing with whatever topics devices invent.
#[derive(Debug)]
pub struct RetainedState {
    last: HashMap<Bytes, Bytes>,
    bytes: usize,
    limit: usize,
}

impl Default for RetainedState {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

impl RetainedState {
    pub fn with_limit(limit: usize) -> Self {
        Self {
            last: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Sets the byte limit, forgetting topics until the state is within it.
    pub fn limit_to(&mut self, limit: usize) {
        self.limit = limit;
        while self.bytes > limit {
            let Some(topic) = self.last.keys().next().cloned() else {
                break;
            };
            self.forget(&topic);
        }
    }

    /// Bytes of topics and payloads held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when `payload` on `topic` is exactly what was last stored for it.
    pub(crate) fn is_unchanged(&self, topic: &[u8], payload: &[u8]) -> bool {
        self.last
            .get(topic)
            .is_some_and(|last| last.as_ref() == payload)
    }

    /// Remembers a stored retained message; an empty payload clears the topic, as it does in
    /// the broker. False when it did not fit within the limit (the topic is then forgotten).
    pub(crate) fn record(&mut self, topic: Bytes, payload: Bytes) -> bool {
        self.forget(&topic);
        if payload.is_empty() {
            return true;
        }
        let size = topic.len() + payload.len();
        if self.bytes.saturating_add(size) > self.limit {
            return false;
        }
        self.bytes += size;
        self.last.insert(topic, payload);
        true
    }

    fn forget(&mut self, topic: &Bytes) {
        if let Some(payload) = self.last.remove(topic) {
            self.bytes -= topic.len() + payload.len();
        }
    }

    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// The whole state as one `_retained` batch, for a WAL checkpoint.
    pub(crate) fn checkpoint_batch(&self) -> Result<Option<RecordBatch>, ArrowError> {
        let mut log = RetainedLog::default();
        for (topic, payload) in &self.last {
            log.push(topic.clone(), payload.clone());
        }
        log.take_batch()
    }

    fn apply(&mut self, batch: &RecordBatch) {
        let topics = batch.column(0).as_binary::<i32>();
        let payloads = batch.column(1).as_binary::<i32>();
        for row in 0..batch.num_rows() {
            self.record(
                Bytes::copy_from_slice(topics.value(row)),
                Bytes::copy_from_slice(payloads.value(row)),
            );
        }
    }
}

/// Collects the retained messages of one group commit for the `_retained` WAL table.
#[derive(Debug, Default)]
pub(crate) struct RetainedLog {
    topics: Vec<Bytes>,
    payloads: Vec<Bytes>,
}

impl RetainedLog {
    pub(crate) fn push(&mut self, topic: Bytes, payload: Bytes) {
        self.topics.push(topic);
        self.payloads.push(payload);
    }

    pub(crate) fn take_batch(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.topics.is_empty() {
            return Ok(None);
        }
        let column = |values: Vec<Bytes>| -> ArrayRef {
            let mut builder = BinaryBuilder::new();
            for value in values {
                builder.append_value(value);
            }
            Arc::new(builder.finish())
        };
        let topics = column(std::mem::take(&mut self.topics));
        let payloads = column(std::mem::take(&mut self.payloads));
        RecordBatch::try_new(retained_schema(), vec![topics, payloads]).map(Some)
    }
}

/// Why the WAL's records could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Written by another version of Twinlake: replaying without it would let truncation
    /// delete rows that were never persisted, so the start stops here.
    #[error(
        "WAL record {record} holds rows of a table this version of Twinlake does not know, \
         {table:?}: it was written by another version. Start that version (it persists and \
         truncates its WAL), or move the WAL aside knowing that these rows are not in the lake"
    )]
    UnknownTable { record: u64, table: String },
    /// The same, for a known table whose columns were different then.
    #[error(
        "WAL record {record} holds rows of {table} with the columns ({found}), not those this \
         version of Twinlake writes: it was written by another version (before the fleet model, \
         which added `gateway`). Start that version (it persists and truncates its WAL), or move \
         the WAL aside knowing that these rows are not in the lake"
    )]
    OtherColumns {
        record: u64,
        table: Table,
        found: String,
    },
    #[error("restoring WAL rows: {0}")]
    Store(#[from] ArrowError),
}

/// What ingest rebuilds from the WAL at start.
#[derive(Debug, Default)]
pub struct Restored {
    pub retained: RetainedState,
    pub qos2: Qos2State,
    /// Rows put back into the live tables.
    pub rows: usize,
}

/// Puts the rows of replayed WAL records that are not persisted yet back into the live tables,
/// and rebuilds the retained and QoS 2 state. `persisted` gives, per table, the last WAL
/// record whose rows of that table are in the lake.
pub fn restore_from_wal(
    replay: &Replay,
    live: &LiveTables,
    persisted: &[(Table, Option<u64>)],
) -> Result<Restored, RestoreError> {
    let mut restored = Restored::default();
    for (record, tables) in &replay.records {
        for (name, batch) in tables {
            if name == RETAINED_TABLE {
                restored.retained.apply(batch);
                continue;
            }
            if name == QOS2_TABLE {
                restored.qos2.apply(batch);
                continue;
            }
            match Table::from_name(name) {
                Some(table) => {
                    let done = persisted
                        .iter()
                        .any(|(t, through)| *t == table && through.is_some_and(|t| record.0 <= t));
                    if done {
                        continue;
                    }
                    if batch.schema() != table.schema() {
                        let schema = batch.schema();
                        let names: Vec<&str> =
                            schema.fields().iter().map(|f| f.name().as_str()).collect();
                        return Err(RestoreError::OtherColumns {
                            record: record.0,
                            table,
                            found: names.join(", "),
                        });
                    }
                    restored.rows += batch.num_rows();
                    live.append(table, batch.clone(), *record)?;
                }
                None => {
                    return Err(RestoreError::UnknownTable {
                        record: record.0,
                        table: name.clone(),
                    });
                }
            }
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    use twinlake_store::LiveTables;
    use twinlake_wal::{RecordId, Replay};

    use bytes::Bytes;

    use super::{RestoreError, RetainedState, restore_from_wal};

    #[test]
    fn the_retained_state_stays_within_its_byte_limit() {
        let mut state = RetainedState::with_limit(40);
        let topic = |n: u32| Bytes::from(format!("te/device/d{n}///a/x"));
        assert!(state.record(topic(1), Bytes::from_static(b"0123456789")));
        assert_eq!(state.bytes(), 18 + 10);
        // A second topic does not fit: it is stored as data but not remembered.
        assert!(!state.record(topic(2), Bytes::from_static(b"0123456789")));
        assert!(!state.is_unchanged(&topic(2), b"0123456789"));
        // A smaller payload for a known topic replaces the old one and frees the difference.
        assert!(state.record(topic(1), Bytes::from_static(b"01")));
        assert_eq!(state.bytes(), 18 + 2);
        assert!(state.is_unchanged(&topic(1), b"01"));
        // An empty payload clears the topic.
        assert!(state.record(topic(1), Bytes::new()));
        assert_eq!((state.bytes(), state.len()), (0, 0));
        // A lower limit forgets topics until the state fits.
        let mut state = RetainedState::default();
        for n in 0..10 {
            assert!(state.record(topic(n), Bytes::from_static(b"x")));
        }
        state.limit_to(40);
        assert!(state.bytes() <= 40, "{}", state.bytes());
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn a_wal_record_written_before_the_fleet_model_stops_the_start() {
        let column: ArrayRef = Arc::new(arrow_array::StringArray::from(vec!["device/main//"]));
        let batch = RecordBatch::try_from_iter([("entity", column)]).unwrap();
        let mut replay = Replay::default();
        replay
            .records
            .push((RecordId(3), vec![("measurements".to_owned(), batch)]));
        let live = LiveTables::new();
        match restore_from_wal(&replay, &live, &[]) {
            Err(error @ RestoreError::OtherColumns { .. }) => {
                let message = error.to_string();
                assert!(message.contains("record 3"), "{message}");
                assert!(message.contains("(entity)"), "{message}");
            }
            other => panic!("restored rows of other columns: {other:?}"),
        }
        assert!(
            live.snapshot(twinlake_model::Table::Measurements)
                .batches
                .is_empty()
        );
    }

    #[test]
    fn a_wal_table_this_version_does_not_know_stops_the_start() {
        let column: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_from_iter([("x", column)]).unwrap();
        let mut replay = Replay::default();
        replay
            .records
            .push((RecordId(7), vec![("from_the_future".to_owned(), batch)]));
        let result = restore_from_wal(&replay, &LiveTables::new(), &[]);
        match result {
            Err(error @ RestoreError::UnknownTable { .. }) => {
                let message = error.to_string();
                assert!(message.contains("record 7"), "{message}");
                assert!(message.contains("from_the_future"), "{message}");
            }
            other => panic!("restored a WAL with an unknown table: {other:?}"),
        }
    }
}
