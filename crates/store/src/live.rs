//! Every table as queries see it: the list of committed Parquet files plus the rows in memory
//! that are not persisted yet, swapped together so that no row is seen twice or missed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use tokio::sync::watch;
use twinlake_model::Table;
use twinlake_wal::RecordId;

use crate::entity_ids::EntityIds;
use crate::latest::LatestValues;
use crate::{CommittedFiles, PersistedFile};

/// Small batches (one per group commit) are merged once this many rows have gathered, so a
/// scan reads a few large batches instead of thousands of tiny ones.
const MERGE_ROWS: usize = 64 * 1024;
/// ... or this many bytes: a merged batch stays far below Arrow's 2 GiB offset limit of a
/// text column, however large each row is.
const MERGE_BYTES: usize = 64 * 1024 * 1024;

/// Rows in memory, in WAL record order.
#[derive(Debug, Default)]
struct HotRows {
    /// Merged batches of about `MERGE_ROWS` rows each.
    sealed: Vec<RecordBatch>,
    /// Recent batches, merged into one sealed batch once they hold `MERGE_ROWS` rows.
    recent: Vec<RecordBatch>,
    recent_rows: usize,
    recent_bytes: usize,
    rows: usize,
    bytes: usize,
    /// The WAL records the rows came from.
    first_record: Option<RecordId>,
    last_record: Option<RecordId>,
    /// When the oldest row arrived: the age that triggers a persist.
    since: Option<Instant>,
}

impl HotRows {
    fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.sealed.iter().chain(self.recent.iter())
    }
}

#[derive(Debug)]
struct LiveTable {
    /// The files of the table's latest Delta version that Twinlake has loaded.
    files: Arc<[PersistedFile]>,
    /// That version: file lists arrive from concurrent commits (persists, compaction) and only
    /// a newer one may replace the current one.
    version: i64,
    /// Rows being persisted: still read by queries until the files holding them are committed.
    frozen: Option<HotRows>,
    /// Rows arriving now.
    active: HotRows,
    /// Bumped whenever what a query reads of the table may have changed (rows appended,
    /// another file list), so derived state (the hierarchy) knows when to be rebuilt.
    changes: u64,
}

impl Default for LiveTable {
    fn default() -> Self {
        Self {
            files: Arc::from(Vec::new()),
            version: -1,
            frozen: None,
            active: HotRows::default(),
            changes: 0,
        }
    }
}

impl LiveTable {
    fn replace_files(&mut self, committed: CommittedFiles) {
        if committed.version >= self.version {
            self.files = committed.files.into();
            self.version = committed.version;
            self.changes += 1;
        }
    }
}

/// What a table holds in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotTableStats {
    pub rows: usize,
    pub bytes: usize,
}

/// What a query reads of one table: the committed files and the in-memory rows that are not
/// in them, taken at one instant.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub files: Arc<[PersistedFile]>,
    pub batches: Vec<RecordBatch>,
}

/// Rows taken out of the active set to be written to files.
#[derive(Debug)]
pub struct FrozenRows {
    pub table: Table,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// The last WAL record whose rows of this table are in `batches`: rows of this table in
    /// records up to it are persisted once the files are committed.
    pub through: RecordId,
}

/// Every table's committed files and in-memory rows. Appends, snapshots and swaps may come
/// from any thread; a snapshot is cheap (batches and file lists are reference-counted).
#[derive(Debug)]
pub struct LiveTables {
    tables: Vec<RwLock<LiveTable>>,
    bytes: AtomicUsize,
    /// The last WAL record whose rows were appended.
    last_record: AtomicU64,
    /// Bumped after each persist commit, so the WAL owner knows when to look for segments it
    /// may delete.
    persisted: watch::Sender<u64>,
    entity_ids: RwLock<Arc<EntityIds>>,
    latest: LatestValues,
}

impl Default for LiveTables {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveTables {
    pub fn new() -> Self {
        Self {
            tables: Table::ALL.iter().map(|_| RwLock::default()).collect(),
            bytes: AtomicUsize::new(0),
            last_record: AtomicU64::new(0),
            persisted: watch::Sender::new(0),
            entity_ids: RwLock::default(),
            latest: LatestValues::default(),
        }
    }

    fn table(&self, table: Table) -> &RwLock<LiveTable> {
        &self.tables[table as usize]
    }

    /// Adds the rows of WAL record `record` to `table`. The batch must have the table's
    /// schema, and records must come in WAL order.
    pub fn append(
        &self,
        table: Table,
        batch: RecordBatch,
        record: RecordId,
    ) -> Result<(), ArrowError> {
        if batch.num_rows() == 0 {
            self.last_record.fetch_max(record.0, Ordering::Relaxed);
            return Ok(());
        }
        if batch.schema() != table.schema() {
            return Err(ArrowError::SchemaError(format!(
                "a batch for {table} does not have the table's schema"
            )));
        }
        if table == Table::Measurements {
            self.latest.update(&batch);
        }
        let added = batch.get_array_memory_size();
        let mut live = self.table(table).write().map_err(|_| poisoned(table))?;
        live.changes += 1;
        let hot = &mut live.active;
        hot.rows += batch.num_rows();
        hot.recent_rows += batch.num_rows();
        hot.recent_bytes += added;
        hot.first_record.get_or_insert(record);
        hot.last_record = Some(record);
        hot.since.get_or_insert_with(Instant::now);
        hot.recent.push(batch);
        let mut size_change = added as isize;
        if hot.recent_rows >= MERGE_ROWS || hot.recent_bytes >= MERGE_BYTES {
            let recent = std::mem::take(&mut hot.recent);
            let before: usize = recent.iter().map(RecordBatch::get_array_memory_size).sum();
            let merged = arrow_select::concat::concat_batches(&table.schema(), &recent)?;
            size_change += merged.get_array_memory_size() as isize - before as isize;
            hot.sealed.push(merged);
            hot.recent_rows = 0;
            hot.recent_bytes = 0;
        }
        hot.bytes = hot.bytes.saturating_add_signed(size_change);
        self.add_bytes(size_change);
        // Only now: with the rows in place first, `persisted_through` never counts a record
        // whose rows are in neither a file nor this table.
        self.last_record.fetch_max(record.0, Ordering::Relaxed);
        Ok(())
    }

    fn add_bytes(&self, change: isize) {
        if change >= 0 {
            self.bytes.fetch_add(change as usize, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(change.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// The files and rows of `table` as they are now; later appends and commits do not change
    /// the snapshot.
    pub fn snapshot(&self, table: Table) -> TableSnapshot {
        let Ok(live) = self.table(table).read() else {
            return TableSnapshot {
                files: Arc::from(Vec::new()),
                batches: Vec::new(),
            };
        };
        let frozen = live.frozen.iter().flat_map(HotRows::batches);
        TableSnapshot {
            files: Arc::clone(&live.files),
            batches: frozen.chain(live.active.batches()).cloned().collect(),
        }
    }

    /// Sets the committed files, e.g. as loaded at start or after a compaction, unless a newer
    /// version is already in place.
    pub fn set_files(&self, table: Table, committed: CommittedFiles) -> Result<(), ArrowError> {
        let mut live = self.table(table).write().map_err(|_| poisoned(table))?;
        live.replace_files(committed);
        Ok(())
    }

    pub fn files(&self, table: Table) -> Arc<[PersistedFile]> {
        self.table(table)
            .read()
            .map(|live| Arc::clone(&live.files))
            .unwrap_or_else(|_| Arc::from(Vec::new()))
    }

    /// Takes the active rows of `table` for persisting. They stay visible to queries until
    /// [`LiveTables::commit_frozen`]. None when there is nothing to persist or a persist of
    /// this table is still under way.
    pub fn freeze(&self, table: Table) -> Result<Option<FrozenRows>, ArrowError> {
        let mut live = self.table(table).write().map_err(|_| poisoned(table))?;
        if live.frozen.is_some() || live.active.rows == 0 {
            return Ok(None);
        }
        let active = std::mem::take(&mut live.active);
        let frozen = FrozenRows {
            table,
            batches: active.batches().cloned().collect(),
            rows: active.rows,
            through: active.last_record.unwrap_or(RecordId(0)),
        };
        live.frozen = Some(active);
        Ok(Some(frozen))
    }

    /// Swaps the frozen rows of `table` for the files now holding them, in one step.
    /// When a newer version (a compaction that committed meanwhile) is in place already, it
    /// holds these files too, so it stays.
    pub fn commit_frozen(&self, table: Table, committed: CommittedFiles) -> Result<(), ArrowError> {
        let mut live = self.table(table).write().map_err(|_| poisoned(table))?;
        live.replace_files(committed);
        if let Some(frozen) = live.frozen.take() {
            self.add_bytes(-(frozen.bytes as isize));
        }
        drop(live);
        self.persisted.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Gives frozen rows back to the active set after a failed persist, so that the next
    /// attempt takes them again (with whatever arrived meanwhile).
    pub fn unfreeze(&self, table: Table) -> Result<(), ArrowError> {
        let mut live = self.table(table).write().map_err(|_| poisoned(table))?;
        let Some(mut frozen) = live.frozen.take() else {
            return Ok(());
        };
        let active = std::mem::take(&mut live.active);
        frozen.sealed.append(&mut frozen.recent);
        frozen.sealed.extend(active.sealed);
        frozen.recent = active.recent;
        frozen.recent_rows = active.recent_rows;
        frozen.recent_bytes = active.recent_bytes;
        frozen.rows += active.rows;
        frozen.bytes += active.bytes;
        frozen.first_record = frozen.first_record.or(active.first_record);
        frozen.last_record = active.last_record.or(frozen.last_record);
        live.active = frozen;
        Ok(())
    }

    /// The last WAL record all of whose rows, in every table, are in committed files: WAL
    /// segments up to it may be deleted.
    pub fn persisted_through(&self) -> RecordId {
        let mut oldest_pending = None::<u64>;
        for table in Table::ALL {
            let Ok(live) = self.table(table).read() else {
                return RecordId(0);
            };
            let first = live
                .frozen
                .as_ref()
                .and_then(|frozen| frozen.first_record)
                .or(live.active.first_record);
            if let Some(first) = first {
                oldest_pending = Some(oldest_pending.map_or(first.0, |o| o.min(first.0)));
            }
        }
        match oldest_pending {
            Some(first) => RecordId(first.saturating_sub(1)),
            None => RecordId(self.last_record.load(Ordering::Relaxed)),
        }
    }

    /// A number that changes whenever what a query reads of `table` may have changed.
    pub fn changes(&self, table: Table) -> u64 {
        self.table(table).read().map_or(0, |live| live.changes)
    }

    /// The newest value of every measurement series: kept current by [`LiveTables::append`],
    /// and seeded from the persisted history at start by whoever reads it.
    pub fn latest(&self) -> &LatestValues {
        &self.latest
    }

    /// The committed entity ids: every entity of every committed file has one.
    pub fn entity_ids(&self) -> Arc<EntityIds> {
        self.entity_ids
            .read()
            .map(|ids| Arc::clone(&ids))
            .unwrap_or_default()
    }

    pub(crate) fn set_entity_ids(&self, ids: Arc<EntityIds>) {
        if let Ok(mut current) = self.entity_ids.write() {
            *current = ids;
        }
    }

    /// Changes after each persist commit.
    pub fn persist_generation(&self) -> watch::Receiver<u64> {
        self.persisted.subscribe()
    }

    /// Rows and memory of the rows of `table` not yet in files.
    pub fn stats(&self, table: Table) -> HotTableStats {
        self.table(table)
            .read()
            .map(|live| {
                let frozen = live.frozen.as_ref();
                HotTableStats {
                    rows: live.active.rows + frozen.map_or(0, |f| f.rows),
                    bytes: live.active.bytes + frozen.map_or(0, |f| f.bytes),
                }
            })
            .unwrap_or_default()
    }

    /// How long the oldest active row of `table` has waited to be persisted.
    pub fn active_age(&self, table: Table) -> Option<std::time::Duration> {
        let live = self.table(table).read().ok()?;
        live.active.since.map(|since| since.elapsed())
    }

    /// Active rows and bytes of `table` (what persist thresholds are checked against).
    pub fn active_stats(&self, table: Table) -> HotTableStats {
        self.table(table)
            .read()
            .map(|live| HotTableStats {
                rows: live.active.rows,
                bytes: live.active.bytes,
            })
            .unwrap_or_default()
    }

    /// Memory held by all tables' in-memory rows, in bytes: what the hot-buffer budget is
    /// checked against.
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

    /// `values` one-value measurements of the main device.
    fn measurement_batch(values: usize) -> RecordBatch {
        crate::test_rows::measurements(&vec![("device/main//", r#"{"v":1}"#, 0); values])
    }

    #[test]
    fn appends_are_visible_in_snapshots_and_merged_as_they_grow() {
        let hot = LiveTables::new();
        for _ in 0..70 {
            hot.append(Table::Measurements, measurement_batch(1000), RecordId(1))
                .unwrap();
        }
        let snapshot = hot.snapshot(Table::Measurements).batches;
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
        assert!(hot.snapshot(Table::Events).batches.is_empty());
    }

    #[test]
    fn batches_of_large_rows_are_merged_by_bytes_well_before_the_row_count() {
        let hot = LiveTables::new();
        // 40 batches of 100 rows whose `properties` hold 32 KiB each: 125 MiB in 4,000 rows,
        // far below the row count that merges, far above the bytes that do.
        let properties = format!("\"{}\"", "p".repeat(32 * 1024));
        let payload = format!("{{\"properties\":{properties},\"t\":1}}");
        let rows: Vec<(&str, &str, i64)> = (0..100)
            .map(|n| ("device/main//", payload.as_str(), n))
            .collect();
        for _ in 0..40 {
            let batch = crate::test_rows::measurements(&rows);
            hot.append(Table::Measurements, batch, RecordId(1)).unwrap();
        }
        let batches = hot.snapshot(Table::Measurements).batches;
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            4_000
        );
        assert!(
            batches.len() < 40,
            "{} batches: nothing was merged",
            batches.len()
        );
        let largest = batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .max()
            .unwrap();
        assert!(
            largest < 2 * MERGE_BYTES,
            "a merged batch of {largest} bytes"
        );
    }

    #[test]
    fn a_record_counts_as_persisted_only_once_its_rows_are_in_the_table() {
        let live = Arc::new(LiveTables::new());
        // A query or a persist holds the table while record 1's rows wait for it.
        let held = live.table(Table::Measurements).write().unwrap();
        let appending = std::thread::spawn({
            let live = Arc::clone(&live);
            move || live.append(Table::Measurements, measurement_batch(2), RecordId(1))
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        // With no rows pending anywhere, `persisted_through` answers from this counter: had it
        // moved already, a WAL truncation now would delete record 1, whose rows are only in
        // the thread above.
        assert_eq!(live.last_record.load(Ordering::Relaxed), 0);
        drop(held);
        appending.join().unwrap().unwrap();
        assert_eq!(live.persisted_through(), RecordId(0));
        assert_eq!(live.last_record.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn wal_records_are_released_only_once_every_table_has_persisted_them() {
        let live = LiveTables::new();
        live.append(Table::Measurements, measurement_batch(2), RecordId(1))
            .unwrap();
        live.append(Table::Measurements, measurement_batch(3), RecordId(2))
            .unwrap();
        assert_eq!(live.persisted_through(), RecordId(0));

        let frozen = live.freeze(Table::Measurements).unwrap().unwrap();
        assert_eq!((frozen.rows, frozen.through), (5, RecordId(2)));
        live.append(Table::Measurements, measurement_batch(4), RecordId(3))
            .unwrap();
        // Frozen rows stay visible until their files are committed, and a second freeze waits.
        let rows = |live: &LiveTables| -> usize {
            live.snapshot(Table::Measurements)
                .batches
                .iter()
                .map(RecordBatch::num_rows)
                .sum()
        };
        assert_eq!(rows(&live), 9);
        assert!(live.freeze(Table::Measurements).unwrap().is_none());

        // A failed persist gives the rows back, in order, with what arrived meanwhile.
        live.unfreeze(Table::Measurements).unwrap();
        assert_eq!(rows(&live), 9);
        let frozen = live.freeze(Table::Measurements).unwrap().unwrap();
        assert_eq!((frozen.rows, frozen.through), (9, RecordId(3)));

        live.commit_frozen(Table::Measurements, CommittedFiles::default())
            .unwrap();
        assert_eq!(rows(&live), 0);
        assert_eq!(live.bytes(), 0);
        assert_eq!(live.persisted_through(), RecordId(3));

        // A file list from an older Delta version never replaces a newer one.
        let version = |version, paths: &[&str]| CommittedFiles {
            version,
            files: paths
                .iter()
                .map(|path| crate::PersistedFile {
                    path: (*path).to_owned(),
                    date: String::new(),
                    size: 1,
                    rows: 1,
                    min_time: 0,
                    max_time: 0,
                    entities: None,
                    compacted: false,
                })
                .collect(),
        };
        live.set_files(Table::Measurements, version(5, &["compacted"]))
            .unwrap();
        live.set_files(Table::Measurements, version(4, &["a", "b"]))
            .unwrap();
        assert_eq!(live.files(Table::Measurements)[0].path, "compacted");
    }

    #[test]
    fn a_batch_of_another_table_is_refused() {
        let hot = LiveTables::new();
        assert!(
            hot.append(Table::Events, measurement_batch(1), RecordId(1))
                .is_err()
        );
    }
}
