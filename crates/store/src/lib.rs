//! Twinlake's storage (not built yet: the ingest and persistence issues build it).
//!
//! It will own the in-memory hot buffer of each table, persistence to Parquet in Delta Lake
//! tables on object storage (a local directory or S3), compaction, retention and the per-file
//! roaring bitmap index of entity ids.
//!
//! It must not parse payloads: rows arrive as Arrow batches built by the `model` crate.
