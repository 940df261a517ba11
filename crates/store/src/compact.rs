//! Lake upkeep: compaction (a partition's small files merged toward a target size, sorted,
//! exact duplicates dropped, removes and add committed atomically), retention (partitions past
//! a table's retention removed by a commit) and vacuum (unreferenced files deleted after a
//! grace period, including files a crash left uncommitted).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use tokio::sync::watch;
use twinlake_model::Table;

use crate::StoreError;
use crate::file::{
    CommittedFiles, PersistedFile, encode_day, read_parquet, sort_dedup_chunks_by_day,
};
use crate::lake;
use crate::persist::{Persister, StoreMetrics, blocking};

/// How the lake is kept tidy.
#[derive(Debug, Clone)]
pub struct CompactionSettings {
    /// Files are merged toward this size.
    pub target_file_bytes: u64,
    /// A partition is compacted once it has this many candidate files: files from persists
    /// (each holds every entity over a span of time; compaction rewrites them as files of
    /// entity ranges) and compacted files under half the target size and half a bin.
    pub min_files: usize,
    /// At most this many rows are merged at once: this bounds the memory compaction uses
    /// (measured: about 360 bytes per measurement row at its peak, decoded rows, sort keys and
    /// output together), whatever the files' compression ratio.
    pub max_input_rows: u64,
    /// Unreferenced files are deleted once they are this old (longer than any query runs).
    pub vacuum_grace: Duration,
    /// Per table: partitions older than this many days are removed. None keeps everything.
    pub retention_days: Vec<(Table, Option<u32>)>,
    pub interval: Duration,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        Self {
            target_file_bytes: 256 * 1024 * 1024,
            min_files: 4,
            max_input_rows: 4_000_000,
            vacuum_grace: Duration::from_secs(3600),
            retention_days: Table::ALL
                .into_iter()
                .map(|table| (table, default_retention_days(table)))
                .collect(),
            interval: Duration::from_secs(600),
        }
    }
}

/// Rejected messages are kept for a month; everything else until a retention is configured
/// (history is what Twinlake is for, and data may be loaded with old timestamps).
pub fn default_retention_days(table: Table) -> Option<u32> {
    match table {
        Table::Rejected => Some(30),
        _ => None,
    }
}

/// What one upkeep pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpkeepReport {
    pub files_merged: usize,
    pub files_written: usize,
    pub duplicates_dropped: usize,
    pub files_expired: usize,
    pub files_vacuumed: usize,
}

impl Persister {
    /// Compacts, applies retention and vacuums every table.
    pub async fn upkeep(&self, settings: &CompactionSettings) -> Result<UpkeepReport, StoreError> {
        let mut report = UpkeepReport::default();
        let today = chrono::Utc::now().date_naive();
        for table in Table::ALL {
            let retention = settings
                .retention_days
                .iter()
                .find(|(t, _)| *t == table)
                .and_then(|(_, days)| *days);
            if let Some(days) = retention {
                let cutoff = today - chrono::Days::new(u64::from(days));
                report.files_expired += self.expire(table, &cutoff.to_string()).await?;
            }
            self.compact(table, settings, &mut report).await?;
            report.files_vacuumed += self.vacuum(table, settings.vacuum_grace).await?;
        }
        Ok(report)
    }

    /// Runs [`Persister::upkeep`] every `interval` until `stop`.
    pub async fn run_upkeep(
        self: Arc<Self>,
        settings: CompactionSettings,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(settings.interval) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            match self.upkeep(&settings).await {
                Ok(report) => tracing::info!(?report, "lake upkeep done"),
                Err(error) => tracing::warn!(%error, "lake upkeep failed; retried next interval"),
            }
        }
    }

    /// Merges each partition's small files, a bounded batch at a time.
    async fn compact(
        &self,
        table: Table,
        settings: &CompactionSettings,
        report: &mut UpkeepReport,
    ) -> Result<(), StoreError> {
        let files = self.live.files(table);
        let mut partitions: BTreeMap<&str, Vec<&PersistedFile>> = BTreeMap::new();
        for file in files.iter() {
            // A compacted file as large as half a target or half a bin would only be rewritten
            // into itself again.
            let small = file.size < settings.target_file_bytes / 2
                && file.rows < settings.max_input_rows / 2;
            if !file.compacted || small {
                partitions.entry(file.date.as_str()).or_default().push(file);
            }
        }
        for small in partitions.values() {
            for bin in bins(small, settings.max_input_rows) {
                if bin.len() < settings.min_files.max(2) {
                    continue;
                }
                let (written, dropped) =
                    self.merge(table, &bin, settings.target_file_bytes).await?;
                report.files_merged += bin.len();
                report.files_written += written;
                report.duplicates_dropped += dropped;
            }
        }
        Ok(())
    }

    /// Rewrites `files` (one partition) sorted and deduplicated, cut into files of about
    /// `target_bytes`: each output holds a contiguous range of entities, which is what lets
    /// the entity bitmaps skip files.
    async fn merge(
        &self,
        table: Table,
        files: &[PersistedFile],
        target_bytes: u64,
    ) -> Result<(usize, usize), StoreError> {
        let input_bytes: u64 = files.iter().map(|f| f.size).sum();
        let mut batches = Vec::new();
        for file in files {
            for batch in read_parquet(self.lake.store(), &file.path).await? {
                batches.push(to_table_schema(table, &batch)?);
            }
        }
        let entity_ids = self.live.entity_ids();
        let settings = self.settings().parquet;
        let (input_rows, encoded) = blocking(move || {
            let (input_rows, groups) = sort_dedup_chunks_by_day(table, &batches)?;
            drop(batches);
            let bytes_per_row = (input_bytes as f64 / input_rows.max(1) as f64).max(1.0);
            let rows_per_file = ((target_bytes as f64 / bytes_per_row) as usize).max(1);
            let mut encoded = Vec::new();
            for (day, batch) in groups {
                let mut offset = 0;
                while offset < batch.num_rows() {
                    let length = rows_per_file.min(batch.num_rows() - offset);
                    let part = batch.slice(offset, length);
                    let mut file = encode_day(table, day, &part, &entity_ids, settings)?;
                    file.file.compacted = true;
                    encoded.push(file);
                    offset += length;
                }
            }
            Ok((input_rows, encoded))
        })
        .await?;
        let kept: u64 = encoded.iter().map(|file| file.file.rows).sum();
        let dropped = input_rows.saturating_sub(kept as usize);
        let written = encoded.len();
        let operation = DeltaOperation::Optimize {
            predicate: None,
            target_size: files.iter().map(|f| f.size as i64).sum(),
        };
        let now = self
            .upload_and_commit(table, encoded, files.to_vec(), None, operation)
            .await?;
        self.publish_files(table, now)?;
        self.metrics.compacted_files.inc_by(files.len() as u64);
        self.metrics.duplicates_dropped.inc_by(dropped as u64);
        tracing::info!(%table, merged = files.len(), written, dropped, "compacted");
        Ok((written, dropped))
    }

    /// Removes the files of partitions dated before `cutoff` (`YYYY-MM-DD`).
    async fn expire(&self, table: Table, cutoff: &str) -> Result<usize, StoreError> {
        let expired: Vec<PersistedFile> = self
            .live
            .files(table)
            .iter()
            .filter(|file| !file.date.is_empty() && file.date.as_str() < cutoff)
            .cloned()
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let lake_table = self.lake.table(table);
        let actions = expired
            .iter()
            .map(|file| lake::remove_action(file, lake_table.name, true))
            .collect();
        let operation = DeltaOperation::Delete {
            predicate: Some(format!("{} < '{cutoff}'", lake::DATE_COLUMN)),
        };
        let now = {
            let mut delta = lake_table.delta.lock().await;
            lake::commit(lake_table, &mut delta, actions, operation, None).await
        }?;
        self.publish_files(table, now)?;
        self.metrics
            .retention_removed_files
            .inc_by(expired.len() as u64);
        tracing::info!(%table, files = expired.len(), before = cutoff, "retention removed old partitions");
        Ok(expired.len())
    }

    /// Deletes files no version needs any more and that are older than `grace`.
    pub(crate) async fn vacuum(&self, table: Table, grace: Duration) -> Result<usize, StoreError> {
        let lake_table = self.lake.table(table);
        let mut delta = lake_table.delta.lock().await;
        let retention = chrono::Duration::from_std(grace)
            .map_err(|e| StoreError::Config(format!("vacuum grace: {e}")))?;
        let (vacuumed, metrics) = delta
            .clone()
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            .await?;
        *delta = vacuumed;
        let deleted = metrics.files_deleted.len();
        self.metrics.vacuumed_files.inc_by(deleted as u64);
        Ok(deleted)
    }

    fn publish_files(&self, table: Table, files: CommittedFiles) -> Result<(), StoreError> {
        self.metrics
            .lake_files
            .get_or_create(&StoreMetrics::label(table))
            .set(files.files.len() as i64);
        self.live.set_files(table, files)?;
        Ok(())
    }
}

/// Groups files (in order) into bins of at most `max_rows` rows each.
fn bins(files: &[&PersistedFile], max_rows: u64) -> Vec<Vec<PersistedFile>> {
    let mut bins = Vec::new();
    let mut current: Vec<PersistedFile> = Vec::new();
    let mut rows = 0;
    for file in files {
        if !current.is_empty() && rows + file.rows > max_rows {
            bins.push(std::mem::take(&mut current));
            rows = 0;
        }
        rows += file.rows;
        current.push((*file).clone());
    }
    if !current.is_empty() {
        bins.push(current);
    }
    bins
}

/// Files hold times in microseconds; the table's rows in nanoseconds.
fn to_table_schema(table: Table, batch: &RecordBatch) -> Result<RecordBatch, StoreError> {
    let schema = table.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                StoreError::Corrupt(format!("{table}: a file has no column {}", field.name()))
            })?;
            Ok(arrow_cast::cast(column, field.data_type())?)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: u64) -> PersistedFile {
        PersistedFile {
            path: format!("t/{rows}"),
            date: "2026-11-21".to_owned(),
            size: 1,
            rows,
            min_time: 0,
            max_time: 0,
            entities: None,
            compacted: false,
        }
    }

    #[test]
    fn bins_stay_within_the_input_budget() {
        let files = [file(40), file(40), file(40), file(100), file(10)];
        let refs: Vec<&PersistedFile> = files.iter().collect();
        let sizes: Vec<Vec<u64>> = bins(&refs, 100)
            .iter()
            .map(|bin| bin.iter().map(|f| f.rows).collect())
            .collect();
        assert_eq!(sizes, [vec![40, 40], vec![40], vec![100], vec![10]]);
    }
}
