//! Twinlake's MQTT ingest.
//!
//! This crate owns the way in: the embedded MQTT endpoint that `serve` starts by default
//! (MQTT 3.1.1 and 5, TLS, who each connection is and which gateway's topics it may publish),
//! or the MQTT client (rumqttc) that subscribes to an external broker with QoS 1 and a
//! persistent session; batching of parsed messages into group commits, acknowledging each
//! message only after the WAL record holding it is fsynced, QoS 2 exactly once, dropping
//! retained messages replayed unchanged, backpressure (no more reading, no more acknowledging)
//! when the in-flight or hot-buffer budget is reached, and the limits on what devices may add
//! (rows per message, entities, depth, series, retained state).
//!
//! It must not know Parquet or the table format: committed rows go to the `store` crate's hot
//! buffer, which owns what happens to them next. It must not deliver messages to subscribers:
//! it is an ingest endpoint, not a broker.

mod endpoint;
mod error;
mod inflight;
mod limits;
mod listener;
mod metrics;
mod pipeline;
mod qos2;
mod retained;
mod session;
mod subscriber;

pub use endpoint::{EndpointError, MqttEndpoint};
pub use error::{IngestError, ListenerError};
pub use limits::GrowthLimits;
pub use listener::{ListenerConfig, TlsListener};
pub use metrics::IngestMetrics;
pub use pipeline::{DEFAULT_MAX_PACKET_BYTES, IngestConfig, Source, run_ingest};
pub use qos2::Qos2State;
pub use retained::{RETAINED_TABLE, RestoreError, Restored, RetainedState, restore_from_wal};
