//! Twinlake's SQL engine.
//!
//! This crate owns the DataFusion session: every table of Twinlake registered as a table
//! provider over the hot buffer (and, once persistence exists, the persisted files), the
//! read-only SQL policy (no DDL, no DML, no `SET`), and the limits a query runs within (memory,
//! time). The twin hierarchy views and functions come with the hierarchy issue.
//!
//! It must not open sockets: the `server` crate serves what this crate answers.

mod engine;
mod hot_table;

pub use engine::{QueryEngine, QueryError, QueryLimits, QueryOutput};
