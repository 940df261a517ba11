//! Twinlake's network interfaces.
//!
//! This crate owns the HTTP API: `GET|POST /api/v1/query` answering SQL in JSON, NDJSON, CSV,
//! Arrow IPC or Parquet, `GET /health`, and `GET /metrics` in the Prometheus text format, behind HTTP basic
//! authentication when a query password file is given. The PostgreSQL wire protocol for Grafana
//! comes with its own issue.
//!
//! It must not hold storage logic: it asks the `query` crate and encodes the answer.

mod access;
mod format;
mod http;

pub use format::ResultFormat;
pub use http::{HttpState, router, serve_http};
