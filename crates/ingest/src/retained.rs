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

/// The last stored payload of every retained topic.
#[derive(Debug, Default)]
pub struct RetainedState {
    last: HashMap<Bytes, Bytes>,
}

impl RetainedState {
    /// True when `payload` on `topic` is exactly what was last stored for it.
    pub(crate) fn is_unchanged(&self, topic: &[u8], payload: &[u8]) -> bool {
        self.last
            .get(topic)
            .is_some_and(|last| last.as_ref() == payload)
    }

    /// Remembers a stored retained message; an empty payload clears the topic, as it does in
    /// the broker.
    pub(crate) fn record(&mut self, topic: Bytes, payload: Bytes) {
        if payload.is_empty() {
            self.last.remove(&topic);
        } else {
            self.last.insert(topic, payload);
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
    #[error("restoring WAL rows: {0}")]
    Store(#[from] ArrowError),
}

/// Puts the rows of replayed WAL records that are not persisted yet back into the live tables,
/// and rebuilds the retained state. `persisted` gives, per table, the last WAL record whose
/// rows of that table are in the lake. Returns the state and how many rows were restored.
pub fn restore_from_wal(
    replay: &Replay,
    live: &LiveTables,
    persisted: &[(Table, Option<u64>)],
) -> Result<(RetainedState, usize), RestoreError> {
    let mut retained = RetainedState::default();
    let mut rows = 0;
    for (record, tables) in &replay.records {
        for (name, batch) in tables {
            if name == RETAINED_TABLE {
                retained.apply(batch);
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
                    rows += batch.num_rows();
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
    Ok((retained, rows))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch};
    use twinlake_store::LiveTables;
    use twinlake_wal::{RecordId, Replay};

    use super::{RestoreError, restore_from_wal};

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
