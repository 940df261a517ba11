//! Twinlake's SQL engine.
//!
//! This crate owns the DataFusion session: every table of Twinlake registered as a table
//! provider over its rows in memory and its committed Parquet files, with files pruned by
//! time range and by the roaring bitmap of their entities before any is opened, the
//! read-only SQL policy (no DDL, no DML, no `SET`), and the limits a query runs within (memory,
//! time). The twin hierarchy views and functions come with the hierarchy issue.
//!
//! It must not open sockets: the `server` crate serves what this crate answers.

mod engine;
mod lake_table;

pub use engine::{QueryEngine, QueryError, QueryLimits, QueryOutput};
