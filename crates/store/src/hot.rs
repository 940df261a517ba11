//! The hot buffer: per table, the batches written since start, as one growing list.

use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use twinlake_model::Table;

/// Small batches (one per group commit) are merged once this many rows have gathered, so a
/// scan reads a few large batches instead of thousands of tiny ones.
const MERGE_ROWS: usize = 64 * 1024;

#[derive(Debug, Default)]
struct HotTable {
    /// Merged batches of about `MERGE_ROWS` rows each.
    sealed: Vec<RecordBatch>,
    /// Recent batches, merged into one sealed batch once they hold `MERGE_ROWS` rows.
    recent: Vec<RecordBatch>,
    recent_rows: usize,
    rows: usize,
    bytes: usize,
}

/// What a table holds in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotTableStats {
    pub rows: usize,
    pub bytes: usize,
}

/// Every table's in-memory rows. Appends and snapshots may come from any thread; a snapshot
/// is a consistent list of batches (cheap: batches are reference-counted).
#[derive(Debug)]
pub struct HotBuffer {
    tables: Vec<RwLock<HotTable>>,
    bytes: AtomicUsize,
}

impl Default for HotBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl HotBuffer {
    pub fn new() -> Self {
        Self {
            tables: Table::ALL.iter().map(|_| RwLock::default()).collect(),
            bytes: AtomicUsize::new(0),
        }
    }

    fn table(&self, table: Table) -> &RwLock<HotTable> {
        &self.tables[table as usize]
    }

    /// Adds rows to `table`. The batch must have the table's schema.
    pub fn append(&self, table: Table, batch: RecordBatch) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.schema() != table.schema() {
            return Err(ArrowError::SchemaError(format!(
                "a batch for {table} does not have the table's schema"
            )));
        }
        let added = batch.get_array_memory_size();
        let mut hot = self.table(table).write().map_err(|_| poisoned(table))?;
        hot.rows += batch.num_rows();
        hot.recent_rows += batch.num_rows();
        hot.recent.push(batch);
        let mut size_change = added as isize;
        if hot.recent_rows >= MERGE_ROWS {
            let recent = std::mem::take(&mut hot.recent);
            let before: usize = recent.iter().map(RecordBatch::get_array_memory_size).sum();
            let merged = arrow_select::concat::concat_batches(&table.schema(), &recent)?;
            size_change += merged.get_array_memory_size() as isize - before as isize;
            hot.sealed.push(merged);
            hot.recent_rows = 0;
        }
        hot.bytes = hot.bytes.saturating_add_signed(size_change);
        if size_change >= 0 {
            self.bytes
                .fetch_add(size_change as usize, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(size_change.unsigned_abs(), Ordering::Relaxed);
        }
        Ok(())
    }

    /// The batches of `table` as they are now; later appends do not change the snapshot.
    pub fn snapshot(&self, table: Table) -> Vec<RecordBatch> {
        let Ok(hot) = self.table(table).read() else {
            return Vec::new();
        };
        hot.sealed
            .iter()
            .chain(hot.recent.iter())
            .cloned()
            .collect()
    }

    pub fn stats(&self, table: Table) -> HotTableStats {
        self.table(table)
            .read()
            .map(|hot| HotTableStats {
                rows: hot.rows,
                bytes: hot.bytes,
            })
            .unwrap_or_default()
    }

    /// Memory held by all tables' rows, in bytes: what the hot-buffer budget is checked against.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

fn poisoned(table: Table) -> ArrowError {
    ArrowError::ComputeError(format!(
        "the hot buffer of {table} is unusable after a panic"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinlake_model::{Parsed, TableBuilders, Timestamp, TopicRoot, parse_message};

    fn measurement_batch(values: usize) -> RecordBatch {
        let mut builders = TableBuilders::new();
        let payload = format!("{{\"v\":{values}}}");
        for _ in 0..values {
            let Parsed::Data(message) = parse_message(
                &TopicRoot::default(),
                b"te/device/main///m/t",
                payload.as_bytes(),
                Timestamp::from_unix_nanos(0),
            ) else {
                panic!("valid measurement");
            };
            builders.append(&message);
        }
        builders.finish().unwrap().remove(0).1
    }

    #[test]
    fn appends_are_visible_in_snapshots_and_merged_as_they_grow() {
        let hot = HotBuffer::new();
        for _ in 0..70 {
            hot.append(Table::Measurements, measurement_batch(1000))
                .unwrap();
        }
        let snapshot = hot.snapshot(Table::Measurements);
        assert_eq!(
            snapshot.iter().map(RecordBatch::num_rows).sum::<usize>(),
            70_000
        );
        assert!(
            snapshot.len() < 10,
            "{} batches: small batches were not merged",
            snapshot.len()
        );
        assert_eq!(hot.stats(Table::Measurements).rows, 70_000);
        assert!(hot.bytes() > 0);
        assert_eq!(hot.bytes(), hot.stats(Table::Measurements).bytes);
        assert!(hot.snapshot(Table::Events).is_empty());
    }

    #[test]
    fn a_batch_of_another_table_is_refused() {
        let hot = HotBuffer::new();
        assert!(hot.append(Table::Events, measurement_batch(1)).is_err());
    }
}
