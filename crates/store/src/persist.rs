//! Persisting: when a table's in-memory rows reach a row count, a size or an age, they are
//! sorted, written as Parquet files per UTC date and committed to the table's Delta log with
//! the last WAL record they hold. Only then do they leave memory; the WAL owner deletes the
//! segments once every table has persisted past them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, watch};
use twinlake_model::Table;

use crate::StoreError;
use crate::entity_ids::EntityIds;
use crate::file::{
    CommittedFiles, EncodedFile, ParquetSettings, PersistedFile, encode_day,
    sort_dedup_chunks_by_day,
};
use crate::lake::{self, CommitFailure, Lake};
use crate::live::{FrozenRows, LiveTables};
use crate::workers;

/// When a table's rows are persisted, and how files are written.
#[derive(Debug, Clone)]
pub struct PersistSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub parquet: ParquetSettings,
}

impl Default for PersistSettings {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(600),
            parquet: ParquetSettings::default(),
        }
    }
}

type TableLabel = Vec<(&'static str, &'static str)>;

/// What persistence and compaction do, for `/metrics`.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub persisted_rows: Family<TableLabel, Counter>,
    pub persisted_files: Counter,
    pub persisted_bytes: Counter,
    pub persist_failures: Counter,
    pub persist_seconds: Histogram,
    pub lake_files: Family<TableLabel, Gauge>,
    pub compacted_files: Counter,
    pub duplicates_dropped: Counter,
    pub retention_removed_files: Counter,
    pub vacuumed_files: Counter,
}

impl StoreMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            persisted_rows: Family::default(),
            persisted_files: Counter::default(),
            persisted_bytes: Counter::default(),
            persist_failures: Counter::default(),
            persist_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            lake_files: Family::default(),
            compacted_files: Counter::default(),
            duplicates_dropped: Counter::default(),
            retention_removed_files: Counter::default(),
            vacuumed_files: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("twinlake");
        r.register(
            "persisted_rows",
            "Rows committed to the lake, per table",
            metrics.persisted_rows.clone(),
        );
        r.register(
            "persisted_files",
            "Parquet files committed by persists",
            metrics.persisted_files.clone(),
        );
        r.register(
            "persisted_bytes",
            "Bytes of Parquet committed by persists",
            metrics.persisted_bytes.clone(),
        );
        r.register(
            "persist_failures",
            "Persist attempts that failed (retried with backoff)",
            metrics.persist_failures.clone(),
        );
        r.register(
            "persist_seconds",
            "Time to persist one table: sort, encode, upload, commit",
            metrics.persist_seconds.clone(),
        );
        r.register(
            "lake_files",
            "Files in each table's current Delta version",
            metrics.lake_files.clone(),
        );
        r.register(
            "compacted_files",
            "Small files merged away by compaction",
            metrics.compacted_files.clone(),
        );
        r.register(
            "duplicates_dropped",
            "Exact duplicate rows dropped by persist and compaction",
            metrics.duplicates_dropped.clone(),
        );
        r.register(
            "retention_removed_files",
            "Files removed because their date is past the table's retention",
            metrics.retention_removed_files.clone(),
        );
        r.register(
            "vacuumed_files",
            "Unreferenced files deleted by vacuum",
            metrics.vacuumed_files.clone(),
        );
        metrics
    }

    pub(crate) fn label(table: Table) -> TableLabel {
        vec![("table", table.name())]
    }
}

/// Moves rows from memory to the lake.
#[derive(Debug)]
pub struct Persister {
    pub(crate) lake: Arc<Lake>,
    pub(crate) live: Arc<LiveTables>,
    entity_ids: Mutex<EntityIds>,
    settings: PersistSettings,
    pub(crate) metrics: StoreMetrics,
}

impl Persister {
    /// Loads the entity ids and each table's files into `live`. Returns, per table, the last
    /// WAL record already persisted: replay must skip that table's rows up to it.
    pub async fn start(
        lake: Arc<Lake>,
        live: Arc<LiveTables>,
        settings: PersistSettings,
        metrics: StoreMetrics,
    ) -> Result<(Self, Vec<(Table, Option<u64>)>), StoreError> {
        let entity_ids = EntityIds::load(&lake).await?;
        let mut persisted = Vec::new();
        for table in Table::ALL {
            let files = lake.files(table).await?;
            metrics
                .lake_files
                .get_or_create(&StoreMetrics::label(table))
                .set(files.files.len() as i64);
            live.set_files(table, files)?;
            persisted.push((table, lake.persisted_through(table).await?));
        }
        live.set_entity_ids(Arc::new(entity_ids.clone()));
        tracing::info!(
            lake = %lake.url(),
            entities = entity_ids.len(),
            "lake loaded"
        );
        let persister = Self {
            lake,
            live,
            entity_ids: Mutex::new(entity_ids),
            settings,
            metrics,
        };
        Ok((persister, persisted))
    }

    pub fn settings(&self) -> &PersistSettings {
        &self.settings
    }

    /// Why `table` should be persisted now, if it should.
    fn due(&self, table: Table) -> Option<&'static str> {
        let stats = self.live.active_stats(table);
        if stats.rows == 0 {
            return None;
        }
        if stats.rows >= self.settings.max_rows {
            return Some("rows");
        }
        if stats.bytes >= self.settings.max_bytes {
            return Some("bytes");
        }
        let age = self.live.active_age(table)?;
        (age >= self.settings.max_age).then_some("age")
    }

    /// Persists every table that is due, until `stop`; failures are retried with backoff
    /// while the rows stay in memory and in the WAL.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        let mut retry_at = None::<Instant>;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            if retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            match self.persist_due().await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    retry_at = None;
                }
                Err(_) => {
                    self.metrics.persist_failures.inc();
                    // Each failing table and its error was logged by `persist_due`.
                    tracing::warn!(retry_in = ?backoff, "persists failed; their rows stay in memory and in the WAL");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Persists every due table; one table's failure does not hold up the others (their
    /// persists free memory and let the WAL be truncated). Returns the first failure.
    async fn persist_due(&self) -> Result<(), StoreError> {
        let mut first_failure = Ok(());
        for table in Table::ALL {
            if let Some(reason) = self.due(table) {
                tracing::debug!(%table, reason, "persist due");
                if let Err(error) = self.persist_table(table).await {
                    tracing::warn!(%table, %error, "persist failed");
                    first_failure = first_failure.and(Err(error));
                }
            }
        }
        first_failure
    }

    /// Writes the table's active rows to the lake. Returns the rows persisted.
    pub async fn persist_table(&self, table: Table) -> Result<usize, StoreError> {
        let Some(frozen) = self.live.freeze(table)? else {
            return Ok(0);
        };
        let started = Instant::now();
        let rows = frozen.rows;
        match self.write_and_commit(&frozen).await {
            Ok(files) => {
                self.metrics
                    .lake_files
                    .get_or_create(&StoreMetrics::label(table))
                    .set(files.files.len() as i64);
                self.live.commit_frozen(table, files)?;
                self.metrics
                    .persisted_rows
                    .get_or_create(&StoreMetrics::label(table))
                    .inc_by(rows as u64);
                self.metrics
                    .persist_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(%table, rows, through = frozen.through.0, took = ?started.elapsed(), "persisted");
                Ok(rows)
            }
            Err(error) => {
                self.live.unfreeze(table)?;
                Err(error)
            }
        }
    }

    async fn write_and_commit(&self, frozen: &FrozenRows) -> Result<CommittedFiles, StoreError> {
        let table = frozen.table;
        let batches = frozen.batches.clone();
        let groups = blocking(move || sort_dedup_chunks_by_day(table, &batches)).await?;
        let (input_rows, groups) = groups;
        let kept: usize = groups.iter().map(|(_, batch)| batch.num_rows()).sum();
        self.metrics
            .duplicates_dropped
            .inc_by((input_rows - kept) as u64);
        let entity_ids = self.register_entities(table, &groups).await?;
        let settings = self.settings.parquet;
        let encoded = blocking(move || {
            groups
                .iter()
                .map(|(day, batch)| encode_day(table, *day, batch, &entity_ids, settings))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
        self.upload_and_commit(
            table,
            encoded,
            Vec::new(),
            Some(frozen.through.0),
            lake::write_operation(),
        )
        .await
    }

    /// Uploads files and commits them (with the removes, for compaction). When the commit
    /// surely did not happen the uploaded files are deleted again; when its outcome is unknown
    /// they stay, and vacuum deletes them if no version references them.
    ///
    /// The table's lock is held from the first upload to the commit, so vacuum (which takes it
    /// too) never sees these files uploaded but not yet committed, however slow the upload.
    pub(crate) async fn upload_and_commit(
        &self,
        table: Table,
        encoded: Vec<EncodedFile>,
        removed: Vec<PersistedFile>,
        through: Option<u64>,
        operation: deltalake::protocol::DeltaOperation,
    ) -> Result<CommittedFiles, StoreError> {
        let lake_table = self.lake.table(table);
        let mut delta = lake_table.delta.lock().await;
        let mut uploaded = Vec::new();
        let mut actions = Vec::new();
        for file in encoded {
            if let Err(error) = self.lake.put(&file.file.path, file.bytes).await {
                self.delete_uncommitted(&uploaded).await;
                return Err(error);
            }
            self.metrics.persisted_bytes.inc_by(file.file.size);
            actions.push(lake::add_action(&file.file, lake_table.name, file.stats));
            uploaded.push(file.file.path);
        }
        actions.extend(
            removed
                .iter()
                .map(|file| lake::remove_action(file, lake_table.name, false)),
        );
        match lake::commit(lake_table, &mut delta, actions, operation, through).await {
            Ok(files) => {
                self.metrics.persisted_files.inc_by(uploaded.len() as u64);
                Ok(files)
            }
            Err(CommitFailure::NotCommitted(error)) => {
                self.delete_uncommitted(&uploaded).await;
                Err(error)
            }
            Err(CommitFailure::Unknown(error)) => Err(error),
        }
    }

    async fn delete_uncommitted(&self, paths: &[String]) {
        for path in paths {
            self.lake.delete_uncommitted(path).await;
        }
    }

    /// Gives ids to the entities of the rows that have none and commits them; returns the
    /// ids to encode the files with.
    async fn register_entities(
        &self,
        table: Table,
        groups: &[(i32, RecordBatch)],
    ) -> Result<EntityIds, StoreError> {
        let mut ids = self.entity_ids.lock().await;
        let Some(column) = table.entity_column() else {
            return Ok(ids.clone());
        };
        let mut candidate = ids.clone();
        let mut added = Vec::new();
        for (_, batch) in groups {
            if let Some(values) = batch
                .column_by_name(column)
                .and_then(|c| arrow_array::cast::AsArray::as_string_opt::<i32>(c.as_ref()))
            {
                added.extend(candidate.assign(values.iter().flatten()));
            }
        }
        if added.is_empty() {
            return Ok(ids.clone());
        }
        EntityIds::commit(&self.lake, &added).await?;
        // Queries see the new ids before any file that holds them.
        self.live.set_entity_ids(Arc::new(candidate.clone()));
        *ids = candidate;
        Ok(ids.clone())
    }
}

/// Runs CPU-heavy work (sorting, encoding, decoding) off the async runtime, on the lake's
/// low-priority work threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: workers::Job = Box::new(move || {
        // The waiter may have gone (its task was cancelled); the work is simply dropped.
        let _ = done.send(work());
    });
    if let Err(job) = workers::submit(job) {
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| StoreError::Corrupt(format!("a persist worker panicked: {e}")))?;
    }
    result
        .await
        .map_err(|_| StoreError::Corrupt("a persist worker panicked".to_owned()))?
}
