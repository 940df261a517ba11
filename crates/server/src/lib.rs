//! Twinlake's network interfaces.
//!
//! This crate owns the HTTP API: `GET|POST /api/v1/query` answering SQL in JSON, NDJSON, CSV,
//! Arrow IPC or Parquet, export jobs (`/api/v1/export`: Parquet datasets with the twin as of each
//! row), `GET /health`, `GET /metrics` in the Prometheus text format, and the web console
//! (`GET /`, its assets built into the binary), behind HTTP basic authentication when a query
//! password file is given; and the PostgreSQL wire port (Grafana, psql, BI tools), read-only,
//! behind SCRAM sign-in when there are users.
//!
//! It must not hold storage logic: it asks the `query` crate and encodes the answer.

mod access;
mod console;
mod export;
mod format;
mod http;
mod postgres;
mod tls;

pub use export::{
    ExportError, ExportMetrics, ExportRequest, ExportSettings, ExportState, ExportStatus, Exports,
    WrittenFile,
};
pub use format::ResultFormat;
pub use http::{HttpState, router, serve_http};
pub use postgres::{PostgresError, PostgresPort, PostgresSettings};
pub use tls::{TlsAcceptor, TlsError, tls_acceptor};
