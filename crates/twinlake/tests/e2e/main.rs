//! End-to-end tests: the real `twinlake` binary, real MQTT (Twinlake's own endpoint and
//! Mosquitto), a real MQTT client publishing, and SQL over HTTP and the PostgreSQL port (psql,
//! Grafana's Go drivers, psycopg) to check what was stored.

// In a test harness a panic is the failure report, helpers included.
#![allow(clippy::unwrap_used)]

mod access;
mod console;
mod demo;
mod durability;
mod endpoint;
mod export;
mod faults;
mod fleet;
mod lake;
mod postgres;
mod queries;
mod spec;
mod support;
mod twin;
