//! What ingest counts, in the Prometheus registry served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Ingest's counters; cheap to clone (every metric is shared).
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    pub messages: Counter,
    pub rows: Family<Labels, Counter>,
    pub rejected: Family<Labels, Counter>,
    pub not_stored: Family<Labels, Counter>,
    pub retained_duplicates: Counter,
    /// Retained messages stored but not remembered: the retained state is at its limit.
    pub retained_untracked: Counter,
    pub retained_bytes: Gauge,
    pub acks_pending: Gauge,
    /// Acknowledgements of durable messages not yet handed to the MQTT client: it sends them
    /// only as fast as its event loop turns, so they pile up while a broker floods.
    pub acks_queued: Gauge,
    /// Acks not sent because their connection ended meanwhile.
    pub acks_of_lost_sessions: Counter,
    pub wal_bytes: Gauge,
    /// 1 while the WAL waits for disk space: nothing is acknowledged meanwhile.
    pub wal_disk_full: Gauge,
    pub fsync_seconds: Histogram,
    /// From a message read to its acknowledgement released (its record durable, its rows
    /// queryable): the part of publish-to-acknowledged that is Twinlake's.
    pub durable_seconds: Histogram,
    pub hot_bytes: Gauge,
    /// 1 while ingest has stopped reading because a budget is reached.
    pub backpressure: Gauge,
    pub backpressure_episodes: Counter,
    /// 1 while ingest takes messages: the endpoint listens, or it is subscribed to the broker.
    pub subscribed: Gauge,
    /// Connections open on the embedded endpoint.
    pub connections: Gauge,
    /// Connections the endpoint refused or closed, per reason.
    pub connections_refused: Family<Labels, Counter>,
    /// Publishes the endpoint refused (never stored), per reason.
    pub publishes_refused: Family<Labels, Counter>,
    /// QoS 2 publishes sent again after their PUBREC was lost: acknowledged, not stored twice.
    pub qos2_duplicates: Counter,
    /// Will messages stored after a connection ended without DISCONNECT.
    pub wills: Counter,
}

impl IngestMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            messages: Counter::default(),
            rows: Family::default(),
            rejected: Family::default(),
            not_stored: Family::default(),
            retained_duplicates: Counter::default(),
            retained_untracked: Counter::default(),
            retained_bytes: Gauge::default(),
            acks_of_lost_sessions: Counter::default(),
            acks_pending: Gauge::default(),
            acks_queued: Gauge::default(),
            wal_bytes: Gauge::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            durable_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            hot_bytes: Gauge::default(),
            wal_disk_full: Gauge::default(),
            backpressure: Gauge::default(),
            backpressure_episodes: Counter::default(),
            subscribed: Gauge::default(),
            connections: Gauge::default(),
            connections_refused: Family::default(),
            publishes_refused: Family::default(),
            qos2_duplicates: Counter::default(),
            wills: Counter::default(),
        };
        let prefix = registry.sub_registry_with_prefix("twinlake");
        prefix.register(
            "durable_seconds",
            "From a message read to its acknowledgement released (WAL record fsynced, rows queryable)",
            metrics.durable_seconds.clone(),
        );
        prefix.register(
            "mqtt_messages_received",
            "MQTT messages received",
            metrics.messages.clone(),
        );
        prefix.register("rows", "Rows committed, per table", metrics.rows.clone());
        prefix.register(
            "rejected",
            "Messages stored in `rejected`, per reason code",
            metrics.rejected.clone(),
        );
        prefix.register(
            "not_stored",
            "Valid thin-edge messages Twinlake does not keep (commands, signals, ...), per channel",
            metrics.not_stored.clone(),
        );
        prefix.register(
            "retained_duplicates",
            "Retained messages replayed by the broker unchanged, not stored again",
            metrics.retained_duplicates.clone(),
        );
        prefix.register(
            "retained_untracked",
            "Retained messages stored but not remembered, the retained state being at its byte limit: the broker's next replay of their topic is stored again",
            metrics.retained_untracked.clone(),
        );
        prefix.register(
            "retained_bytes",
            "Bytes of the retained state (last payload of each retained topic), as of its last checkpoint",
            metrics.retained_bytes.clone(),
        );
        prefix.register(
            "acks_pending",
            "Messages received but not yet durable (their acknowledgement not yet queued)",
            metrics.acks_pending.clone(),
        );
        prefix.register(
            "acks_queued",
            "Acknowledgements of durable messages waiting for the MQTT client to take them",
            metrics.acks_queued.clone(),
        );
        prefix.register(
            "acks_of_lost_sessions",
            "Acknowledgements not sent because their connection to the broker ended meanwhile (the broker sends those messages again, or dropped them with their session)",
            metrics.acks_of_lost_sessions.clone(),
        );
        prefix.register(
            "wal_bytes",
            "Bytes in WAL segment files",
            metrics.wal_bytes.clone(),
        );
        prefix.register(
            "wal_disk_full",
            "1 while the WAL waits for disk space: ingest acknowledges nothing meanwhile",
            metrics.wal_disk_full.clone(),
        );
        prefix.register(
            "wal_fsync_seconds",
            "Duration of WAL fsyncs",
            metrics.fsync_seconds.clone(),
        );
        prefix.register(
            "hot_bytes",
            "Memory held by in-memory rows",
            metrics.hot_bytes.clone(),
        );
        prefix.register(
            "ingest_backpressure",
            "1 while ingest stops reading because the in-flight or hot-buffer budget is reached",
            metrics.backpressure.clone(),
        );
        prefix.register(
            "ingest_backpressure_episodes",
            "Times ingest stopped reading for a budget",
            metrics.backpressure_episodes.clone(),
        );
        prefix.register(
            "mqtt_subscribed",
            "1 while ingest takes messages: the embedded endpoint listens, or the subscription to the external broker is in place",
            metrics.subscribed.clone(),
        );
        prefix.register(
            "mqtt_connections",
            "Connections open on the embedded MQTT endpoint",
            metrics.connections.clone(),
        );
        prefix.register(
            "mqtt_connections_refused",
            "Connections the embedded MQTT endpoint refused or closed, per reason",
            metrics.connections_refused.clone(),
        );
        prefix.register(
            "mqtt_publishes_refused",
            "Publishes the embedded MQTT endpoint refused and did not store, per reason",
            metrics.publishes_refused.clone(),
        );
        prefix.register(
            "mqtt_qos2_duplicates",
            "QoS 2 publishes sent again after their PUBREC was lost: acknowledged again, stored once",
            metrics.qos2_duplicates.clone(),
        );
        prefix.register(
            "mqtt_wills",
            "Will messages stored after a connection ended without DISCONNECT",
            metrics.wills.clone(),
        );
        metrics
    }

    /// Messages taken from the broker (holding an in-flight permit) and not yet acknowledged.
    pub(crate) fn set_acks_pending(&self, max_inflight: usize, permits: &tokio::sync::Semaphore) {
        self.acks_pending
            .set(max_inflight.saturating_sub(permits.available_permits()) as i64);
    }

    pub(crate) fn count_not_stored(&self, channel: &str) {
        self.not_stored
            .get_or_create(&Self::label("channel", channel))
            .inc();
    }

    pub(crate) fn label(name: &str, value: &str) -> Labels {
        vec![(name.to_owned(), value.to_owned())]
    }
}
