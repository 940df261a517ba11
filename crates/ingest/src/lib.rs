//! Twinlake's MQTT ingest.
//!
//! This crate owns the way in: the embedded MQTT broker (rumqttd) that `serve` starts by
//! default, the MQTT client (rumqttc) that subscribes to `<root>/#` with QoS 1 and a persistent
//! session, batching of parsed messages into group commits, acknowledging each message only
//! after the WAL record holding it is fsynced, dropping retained messages the broker replays
//! unchanged, backpressure (no more reading, no more acknowledging) when the in-flight or
//! hot-buffer budget is reached, the limits on what devices may add (rows per message,
//! entities, depth, series, retained state), and which MQTT session an acknowledgement belongs
//! to.
//!
//! It must not know Parquet or the table format: committed rows go to the `store` crate's hot
//! buffer, which owns what happens to them next.

mod broker;
mod endpoint;
mod limits;
mod metrics;
mod pipeline;
mod retained;
mod session;

pub use broker::{EmbeddedBroker, EmbeddedBrokerError};
pub use endpoint::{EndpointError, MqttEndpoint};
pub use limits::GrowthLimits;
pub use metrics::IngestMetrics;
pub use pipeline::{DEFAULT_MAX_PACKET_BYTES, IngestConfig, IngestError, run_ingest};
pub use retained::{RETAINED_TABLE, RestoreError, RetainedState, restore_from_wal};
