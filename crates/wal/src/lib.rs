//! The write-ahead log of Twinlake: what makes a message durable before it is acknowledged.
//!
//! This crate owns segment files of records. A record holds the rows of one append as the Arrow
//! IPC encoding of one batch per table, zstd-compressed, behind a length and a CRC32C so that a
//! torn tail is found on replay. One writer thread does all file I/O: it gathers the appends that
//! arrive within the commit window, writes each as a record of its own (so each has its own id)
//! with one write, fsyncs once, and only then releases every waiter. On a full disk the records
//! wait (their waiters with them) until there is space; any other write error stops the log.
//! Segments rotate by size; replay reads records
//! in order, stops at the first bad one and truncates the torn tail; record ids never go back
//! (not below what the caller says was persisted elsewhere); segments whose records are all
//! persisted elsewhere are deleted on request.
//!
//! It must not know about MQTT or SQL: it stores named Arrow batches and gives them back.

mod record;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;

pub use record::RecordId;
pub use segment::{Replay, ReplayStats};
pub use writer::{PendingAppend, Wal};

/// Whether a commit waits for the data to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync every group commit before releasing its waiters: the durability contract.
    #[default]
    Always,
    /// Write without fsync: a crash of the machine (not just the process) can lose
    /// acknowledged data. An explicit opt-out, logged loudly at open.
    Never,
}

/// Called with the duration of each fsync, e.g. to feed a latency histogram.
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// How the log is kept.
#[derive(Clone)]
pub struct WalConfig {
    /// The directory of the segment files; created if missing.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// How long the first append of a group waits for others to share its fsync. Even at zero,
    /// everything submitted while the previous group was being written and fsynced shares the
    /// next fsync: the group then spans one fsync, which adapts to the disk.
    pub commit_window: Duration,
    pub sync: SyncMode,
    /// zstd level of records: low, because the WAL is on the ingest path.
    pub zstd_level: i32,
    pub fsync_observer: Option<FsyncObserver>,
    /// The highest record id anything outside the log has recorded (the lake's "persisted
    /// through" markers): new records must come after it even when the log's own files are
    /// gone or older, or replay would take them for records already persisted and skip them.
    pub ids_after: Option<RecordId>,
    /// Called with true when a record starts waiting for disk space, false when it stops.
    pub disk_full_observer: Option<DiskFullObserver>,
}

/// Told whether the log is waiting for disk space, e.g. to feed a gauge.
pub type DiskFullObserver = Arc<dyn Fn(bool) + Send + Sync>;

impl std::fmt::Debug for WalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalConfig")
            .field("dir", &self.dir)
            .field("segment_bytes", &self.segment_bytes)
            .field("commit_window", &self.commit_window)
            .field("sync", &self.sync)
            .field("zstd_level", &self.zstd_level)
            .field("ids_after", &self.ids_after)
            .finish_non_exhaustive()
    }
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            // Measured with `twinlake bench ingest` (docs/benchmarks.md): with one appender (the
            // ingest batcher) a fixed wait only adds latency; 2 ms cut ingest through the
            // embedded broker from 71k to 29k messages/s.
            commit_window: Duration::ZERO,
            sync: SyncMode::Always,
            zstd_level: 1,
            fsync_observer: None,
            ids_after: None,
            disk_full_observer: None,
        }
    }
}

/// Rows for the log: one batch per table name.
pub type TableBatches = Vec<(String, RecordBatch)>;

/// Counters of the log, readable at any time.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Bytes currently held in segment files.
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
    /// Segments no longer written to: the ones truncation may delete.
    pub closed_segments: AtomicU64,
    pub records_written: AtomicU64,
    pub appends: AtomicU64,
    pub fsyncs: AtomicU64,
    /// 1 while a record waits for disk space.
    pub disk_full: AtomicU64,
}

impl WalStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding a WAL record: {0}")]
    Encode(#[source] arrow_schema::ArrowError),
    #[error(
        "the WAL stopped accepting writes after an earlier failure ({0}); restart Twinlake to replay it"
    )]
    Poisoned(String),
    #[error("the WAL is closed")]
    Closed,
    #[error("the WAL closed while its disk was full, before these rows were written: {0}")]
    DiskFull(String),
}

impl WalError {
    /// The disk or the quota is full: a condition to wait out, not a broken log.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            Self::DiskFull(_) => true,
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
