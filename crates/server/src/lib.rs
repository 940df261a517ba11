//! Twinlake's network interfaces (not built yet: the ingest and Grafana issues build it).
//!
//! It will own the axum HTTP API (`/api/v1/query`, `/health`, `/metrics`), the PostgreSQL wire
//! protocol for Grafana and SQL clients, authentication and metrics.
//!
//! It must not hold storage logic: it asks the `query` crate.
