//! Twinlake's storage: every table's rows in memory and in the lake.
//!
//! This crate owns the live tables (rows in memory that are not persisted yet, and the list of
//! committed files, swapped together so a query never sees a row twice or misses one),
//! persistence (sorted, deduplicated Parquet per UTC date, committed to one Delta Lake table
//! per Twinlake table on a local directory or S3, with the last WAL record it holds), the
//! durable entity ids and the roaring bitmaps that let queries skip files, and lake upkeep:
//! compaction, retention and vacuum.
//!
//! It must not parse payloads (rows arrive as Arrow batches built by the `model` crate), plan
//! queries (the `query` crate reads [`TableSnapshot`]s), or delete WAL segments (their owner
//! does, once [`LiveTables::persisted_through`] has moved past them).

mod compact;
mod entity_ids;
mod file;
mod lake;
mod latest;
mod live;
mod persist;
#[cfg(test)]
mod test_rows;
#[cfg(test)]
mod tests;
mod workers;

use std::path::PathBuf;

pub use compact::{CompactionSettings, UpkeepReport, default_retention_days};
pub use entity_ids::EntityIds;
pub use file::{CommittedFiles, ParquetSettings, PersistedFile};
pub use lake::{DATE_COLUMN, Lake, LakeConfig, open_object_store};
pub use latest::{LatestRow, LatestValue, LatestValues};
pub use live::{FrozenRows, HotTableStats, LiveTables, TableSnapshot};
pub use persist::{PersistSettings, Persister, StoreMetrics};

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("Delta Lake: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Config(String),
    #[error(
        "the object store at {0} overwrote an object written with \"create only\": it does not \
         honour conditional writes (If-None-Match), so two commits could claim the same Delta \
         version. Use a store that does (AWS S3, MinIO, moto, s3s)"
    )]
    NoConditionalPut(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(
        "the lake's table {table} has the columns ({found}), not the ({expected}) this version \
         of Twinlake writes: it was written by another version (before the fleet model, which \
         added `gateway` and fleet-unique entity names). Twinlake will not misread it: give this \
         version a new lake (another --data-dir or S3 prefix), or run the version that wrote it"
    )]
    IncompatibleTable {
        table: String,
        found: String,
        expected: String,
    },
}
