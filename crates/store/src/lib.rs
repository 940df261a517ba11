//! Twinlake's storage.
//!
//! This crate owns the hot buffer: the rows of every table since start (and, once persistence
//! exists, since the last persist), in memory as Arrow batches, readable by queries while ingest
//! appends to them. Persistence to Parquet in Delta Lake tables, compaction, retention and the
//! roaring file index come with the persistence issue.
//!
//! It must not parse payloads: rows arrive as Arrow batches built by the `model` crate.

mod hot;

pub use hot::{HotBuffer, HotTableStats};
