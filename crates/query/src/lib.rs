//! Twinlake's SQL engine.
//!
//! This crate owns the DataFusion session: every table of Twinlake registered as a table
//! provider over its rows in memory and its committed Parquet files, with files pruned by
//! time range and by the roaring bitmap of their entities before any is opened (their
//! microsecond times read as nanoseconds in one vectorised pass), the
//! read-only SQL policy (no DDL, no DML, no `SET`), the limits a query runs within (memory,
//! time, result size, queries at once) on a runtime of its own, results as streams, and the
//! twin in SQL: the hierarchy through time folded from `entity_changes`
//! (views, table functions, `entity_path` and `entity_parent` now or as of a time, `in_subtree`,
//! whose subtree reaches file pruning), the twin, health and alarm views, `latest` from the
//! cache ingest keeps, and export sessions: tables pinned to one snapshot, memory of their own
//! that spills, `twin_at` (a fragment's value as of a time, inherited down the hierarchy); and
//! the plans they run as: a row joined to the version valid at its time by a join of its own
//! (`ValidityJoinExec`) and aggregated by that version
//! (`ValidityAggregateExec`), joins sized so that each holds its smaller side.
//!
//! It must not open sockets: the `server` crate serves what this crate answers.

mod budget_lru;
mod engine;
mod file_cache;
mod hierarchy;
mod join_sizes;
mod kept_file;
mod lake_adapter;
mod lake_dictionary;
mod lake_reader;
mod lake_table;
mod lake_time;
mod latest;
mod parquet_cache;
mod plan_rules;
mod run_states;
mod runtime;
mod table_derived;
mod twin_at;
mod validity_aggregate;
mod validity_join;
mod views;

pub use engine::{
    ExportSessionSettings, Query, QueryEngine, QueryError, QueryLimits, QueryOutput, ResultStream,
};
