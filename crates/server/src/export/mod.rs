//! Export jobs: a slice of the fleet's history, with each row's place in the hierarchy and its
//! twin as they were at the row's time, written as a Parquet dataset for analysts.
//!
//! Layers, top to bottom (a file uses only those below it): `mod.rs` (the jobs: start, status,
//! cancel, list), `job.rs` (a request made into queries, run into files, the manifest last),
//! `destination.rs` (where files go, what may be replaced), `part.rs` (one Parquet file,
//! streamed), `request.rs` (the request and its checks).

mod destination;
mod job;
mod part;
mod request;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use twinlake_query::QueryEngine;
use twinlake_store::LakeConfig;

pub use job::{ExportState, ExportStatus};
pub use part::WrittenFile;
pub use request::ExportRequest;

/// How exports run.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Memory for an export's sorts; beyond it they spill to `spill_dir`.
    pub memory_bytes: usize,
    pub spill_dir: PathBuf,
    /// An export still running after this is stopped (and leaves no manifest).
    pub timeout: Duration,
    /// A file is closed and the next begun past this many rows (`--single-file` aside).
    pub rows_per_file: u64,
    /// `--single-file` is refused for a selection of more rows than this.
    pub single_file_max_rows: u64,
    /// Exports running at once; more are refused until one ends.
    pub max_running: usize,
    /// Directories local exports may go below; None: any the server may write.
    pub local_roots: Option<Vec<PathBuf>>,
    /// The lake: no export goes into it.
    pub lake: LakeConfig,
    /// object_store options of exports to S3 (the lake's S3 settings, `aws_endpoint`, …).
    pub s3_options: HashMap<String, String>,
}

impl ExportSettings {
    pub fn new(lake: LakeConfig, s3_options: HashMap<String, String>, spill_dir: PathBuf) -> Self {
        Self {
            memory_bytes: 512 * 1024 * 1024,
            spill_dir,
            timeout: Duration::from_secs(6 * 3600),
            rows_per_file: 2_000_000,
            single_file_max_rows: 10_000_000,
            max_running: 2,
            local_roots: None,
            lake,
            s3_options,
        }
    }
}

/// Why an export did not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request is wrong: the client's to fix. Nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// As many exports as allowed are running.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Destination(String),
    #[error("the export was cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl From<twinlake_query::QueryError> for ExportError {
    fn from(error: twinlake_query::QueryError) -> Self {
        match error {
            twinlake_query::QueryError::Invalid(message) => Self::Invalid(message),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<parquet::errors::ParquetError> for ExportError {
    fn from(error: parquet::errors::ParquetError) -> Self {
        Self::Failed(format!("writing Parquet: {error}"))
    }
}

/// What exports count, in `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ExportMetrics {
    running: Gauge,
    rows: Counter,
    bytes: Counter,
    finished: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
}

impl ExportMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "twinlake_exports_running",
            "Exports writing now",
            metrics.running.clone(),
        );
        registry.register(
            "twinlake_export_rows",
            "Rows written by exports",
            metrics.rows.clone(),
        );
        registry.register(
            "twinlake_export_bytes",
            "Parquet bytes written by exports",
            metrics.bytes.clone(),
        );
        registry.register(
            "twinlake_exports_ended",
            "Exports by how they ended: succeeded, failed, cancelled, refused (bad request or too many running)",
            metrics.finished.clone(),
        );
        metrics
    }

    fn ended(&self, how: &str) {
        self.finished
            .get_or_create(&vec![("state".to_owned(), how.to_owned())])
            .inc();
    }
}

/// Finished jobs kept for their status.
const KEPT_JOBS: usize = 100;

/// The export jobs of a server.
#[derive(Debug)]
pub struct Exports {
    engine: Arc<QueryEngine>,
    settings: ExportSettings,
    metrics: ExportMetrics,
    jobs: Mutex<VecDeque<Arc<job::Job>>>,
}

impl Exports {
    /// Exports of this server; what an export of an earlier run spilled and left behind (the
    /// server died meanwhile) is removed.
    pub fn new(engine: Arc<QueryEngine>, settings: ExportSettings, metrics: ExportMetrics) -> Self {
        if settings.spill_dir.exists()
            && let Err(error) = std::fs::remove_dir_all(&settings.spill_dir)
        {
            tracing::warn!(dir = %settings.spill_dir.display(), %error, "could not clear the export spill directory");
        }
        Self {
            engine,
            settings,
            metrics,
            jobs: Mutex::new(VecDeque::new()),
        }
    }

    /// Checks the request against the data and the destination, prepares the destination and
    /// starts writing in the background. A request that fails here has written nothing.
    pub async fn start(&self, request: ExportRequest) -> Result<ExportStatus, ExportError> {
        let started = self.try_start(request).await;
        if started.is_err() {
            self.metrics.ended("refused");
        }
        started
    }

    async fn try_start(&self, request: ExportRequest) -> Result<ExportStatus, ExportError> {
        if self.running() >= self.settings.max_running {
            tracing::warn!(
                limit = self.settings.max_running,
                "export refused: too many running"
            );
            return Err(ExportError::Busy(format!(
                "{} exports are running, the most at once (setting: --export-max-running): try \
                 again when one has ended",
                self.settings.max_running
            )));
        }
        let plan = job::Plan::make(&self.engine, &self.settings, request).await?;
        let job = Arc::new(job::Job::new(plan));
        job.prepare().await?;
        self.remember(Arc::clone(&job));
        tokio::spawn(job::run(
            Arc::clone(&job),
            Arc::clone(&self.engine),
            self.settings.clone(),
            self.metrics.clone(),
        ));
        Ok(job.status())
    }

    pub fn status(&self, id: &str) -> Option<ExportStatus> {
        self.find(id).map(|job| job.status())
    }

    /// Asks a running export to stop; it removes what it wrote and never writes its manifest.
    pub fn cancel(&self, id: &str) -> Option<ExportStatus> {
        let job = self.find(id)?;
        job.cancel();
        Some(job.status())
    }

    /// Every export this server ran since it started (the last [`KEPT_JOBS`]), newest first.
    pub fn list(&self) -> Vec<ExportStatus> {
        let jobs = self
            .jobs
            .lock()
            .map(|jobs| jobs.clone())
            .unwrap_or_default();
        jobs.iter().rev().map(|job| job.status()).collect()
    }

    fn running(&self) -> usize {
        self.jobs
            .lock()
            .map(|jobs| jobs.iter().filter(|job| job.is_running()).count())
            .unwrap_or(0)
    }

    fn find(&self, id: &str) -> Option<Arc<job::Job>> {
        let jobs = self.jobs.lock().ok()?;
        jobs.iter().find(|job| job.id() == id).cloned()
    }

    fn remember(&self, job: Arc<job::Job>) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.push_back(job);
            while jobs.len() > KEPT_JOBS {
                let Some(oldest) = jobs.iter().position(|job| !job.is_running()) else {
                    break;
                };
                jobs.remove(oldest);
            }
        }
    }
}
