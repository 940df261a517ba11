//! The write-ahead log of Twinlake (not built yet: the ingest issue builds it).
//!
//! It will own segment files of records, each the zstd-compressed Arrow IPC encoding of the rows
//! of one group commit, with a length and a CRC32C so that a torn tail is found; group commit
//! (one fsync releases every waiter of the commit window); replay on start; and truncation of
//! segments whose rows are persisted.
//!
//! It must not know about MQTT or SQL: it stores batches of the `model` crate's tables.
