//! Twinlake's SQL engine (not built yet: the ingest and hierarchy issues build it).
//!
//! It will own the DataFusion session: table providers over hot and persisted data, the twin
//! hierarchy views and functions (`entities`, `entity_history`, `descendants(...)`, `latest`,
//! ...) and the read-only SQL policy.
//!
//! It must not open sockets: the `server` crate serves what this crate answers.
