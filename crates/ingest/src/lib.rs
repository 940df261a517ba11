//! Twinlake's MQTT ingest (not built yet: the ingest issue builds it).
//!
//! It will own the MQTT client (rumqttc) and the embedded broker (rumqttd), batching of parsed
//! messages, acknowledging each message only after the WAL record holding it is fsynced, and
//! backpressure when the memory or disk budget is reached.
//!
//! It must not know Parquet or the table format: it hands rows to the `store` crate.
