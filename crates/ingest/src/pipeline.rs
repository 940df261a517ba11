//! The ingest pipeline: source → batcher (parse, group) → WAL → acker (hot buffer, acks).
//!
//! The source is the embedded MQTT endpoint (every connection of it) or a subscription to an
//! external broker; either hands each message on with its place in the in-flight budgets, and
//! stops reading while there is none (backpressure, never loss). Tasks joined by FIFO channels
//! keep acknowledgements in the order messages arrived, as MQTT requires, while the next group
//! is parsed during the current group's fsync:
//!
//! - the batcher parses messages into Arrow rows and, every `batch_window` or
//!   `batch_max_messages`, submits them to the WAL as one record, with the retained-state and
//!   QoS 2 changes they make;
//! - the acker waits for each record's fsync, moves its rows to the live tables (so an
//!   acknowledged message is queryable), then frees its messages' places and acknowledges them:
//!   to the endpoint connection each came on, or through the subscriber's MQTT client.
//!
//! After each persist the batcher writes a checkpoint of the retained and QoS 2 state to the
//! WAL (so it outlives the segments that held it), and once that is durable the acker deletes
//! the WAL segments whose rows are all persisted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use twinlake_model::{
    EntityChangeRow, EntityHistory, EntityTopicId, FleetTopics, Message, MessageBody, Parsed,
    Rejection, Table, TableBuilders, Timestamp, auto_registrations, main_device_registration,
    parse_message,
};
use twinlake_store::LiveTables;
use twinlake_wal::{PendingAppend, Wal, WalError, WalStats};

use crate::endpoint::MqttEndpoint;
use crate::error::IngestError;
use crate::inflight::{Ack, Budgets, Content, Received};
use crate::limits::GrowthLimits;
use crate::listener::{Listener, ListenerConfig};
use crate::metrics::IngestMetrics;
use crate::qos2::{QOS2_TABLE, Qos2Log, Qos2State};
use crate::retained::{RETAINED_TABLE, RetainedLog, RetainedState, is_retained_kind};
use crate::session::AckToken;
use crate::subscriber::Subscriber;

/// The largest MQTT packet ingest and the embedded broker accept by default.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 64 * 1024 * 1024;

/// How ingest runs; every limit is here, with its default in [`IngestConfig::new`].
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub source: Source,
    /// Where thin-edge topics are, and which gateway a plain one belongs to.
    pub topics: FleetTopics,
    /// Larger payloads become `rejected` rows holding their first bytes and their size.
    pub max_payload_bytes: usize,
    /// A message that would become more rows than this, or rows repeating more bytes than
    /// `max_message_row_bytes` (see `Message::repeated_bytes`), becomes a `rejected` row.
    pub max_rows_per_message: usize,
    pub max_message_row_bytes: usize,
    /// The largest MQTT packet accepted at all; above it the broker connection fails, so keep
    /// it well above `max_payload_bytes`.
    pub max_packet_bytes: usize,
    /// Messages received but not yet durable in the WAL; at the limit ingest stops reading.
    pub max_inflight_messages: usize,
    /// ... and their bytes (topic and payload): a count alone would let 20,000 messages of up
    /// to `max_packet_bytes` each sit in memory.
    pub max_inflight_bytes: usize,
    /// Memory of the in-memory rows; at the limit ingest stops reading until it drops.
    pub hot_budget_bytes: usize,
    /// A group is committed when no further message is waiting, when it holds this many
    /// messages, or when its first message has waited `batch_window`, whichever comes first.
    pub batch_max_messages: usize,
    pub batch_window: Duration,
    /// Keep topics with unknown channels out of `rejected` (they are still counted).
    pub ignore_unknown_channels: bool,
    /// Bytes of the last payload of each retained topic kept to recognise the broker's
    /// replays; beyond it, replays of further topics are stored again.
    pub max_retained_bytes: usize,
    /// How many entities and series devices may create, and how deep entities may nest.
    pub growth: GrowthLimits,
}

impl IngestConfig {
    pub fn new(source: Source) -> Self {
        Self {
            source,
            topics: FleetTopics::default(),
            max_payload_bytes: 256 * 1024,
            max_rows_per_message: 10_000,
            max_message_row_bytes: 16 * 1024 * 1024,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            max_inflight_messages: 20_000,
            max_inflight_bytes: 256 * 1024 * 1024,
            hot_budget_bytes: 2 * 1024 * 1024 * 1024,
            batch_max_messages: 5_000,
            batch_window: Duration::from_millis(5),
            ignore_unknown_channels: false,
            max_retained_bytes: 128 * 1024 * 1024,
            growth: GrowthLimits::default(),
        }
    }
}

/// Where messages come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Twinlake's own MQTT endpoint: devices and bridges connect to it.
    Listener(ListenerConfig),
    /// A subscription to an external broker.
    Broker(MqttEndpoint),
}

/// A started source, to be finished once the pipeline has acknowledged what it holds.
enum Started {
    Listener(Listener),
    Broker(Subscriber),
}

/// One group commit on its way to the acker.
struct Commit {
    append: Option<PendingAppend>,
    rows: Vec<(Table, arrow_array::RecordBatch)>,
    messages: Vec<Received>,
    /// Once `append` is durable, delete the WAL segments whose rows are all persisted.
    truncate: bool,
}

/// Runs ingest until `shutdown` turns true: then it stops taking messages, commits and
/// acknowledges what it holds, and disconnects. Messages it did not take stay with their
/// senders (or the broker), unacknowledged.
pub async fn run_ingest(
    config: IngestConfig,
    wal: Arc<Wal>,
    hot: Arc<LiveTables>,
    (retained, qos2): (RetainedState, Qos2State),
    entities: EntityHistory,
    metrics: IngestMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let budgets = Budgets::new(
        (config.max_inflight_messages, config.max_inflight_bytes),
        Arc::clone(&hot),
        config.hot_budget_bytes,
        metrics.clone(),
    );
    let (to_batcher, from_source) = mpsc::unbounded_channel();
    let (to_acker, from_batcher) = mpsc::unbounded_channel();
    let (to_broker, broker_acks) = mpsc::unbounded_channel();
    let started = match &config.source {
        Source::Listener(listener) => Started::Listener(
            Listener::start(
                listener.clone(),
                (config.topics.clone(), config.max_packet_bytes),
                &qos2,
                (to_batcher, budgets.clone()),
                metrics.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        Source::Broker(endpoint) => Started::Broker(Subscriber::start(
            endpoint,
            (config.max_packet_bytes, config.max_inflight_messages),
            config.topics.clone(),
            (to_batcher, broker_acks),
            budgets.clone(),
            metrics.clone(),
        )?),
    };
    let mut retained = retained;
    retained.limit_to(config.max_retained_bytes);
    let batcher = tokio::spawn(batch(
        from_source,
        to_acker,
        (Arc::clone(&wal), Arc::clone(&hot)),
        config.clone(),
        (retained, qos2, entities),
        metrics.clone(),
        shutdown,
    ));
    let acked = acknowledge(from_batcher, to_broker, wal, hot, budgets.clone(), metrics).await;
    budgets.close();
    let finished = match started {
        Started::Listener(listener) => listener.finish().await,
        Started::Broker(subscriber) => subscriber.finish().await,
    };
    let batched = batcher.await?;
    acked.and(finished).and(batched)
}

/// The rows of one group commit being assembled.
struct Group {
    builders: TableBuilders,
    retained_log: RetainedLog,
    qos2_log: Qos2Log,
    messages: Vec<Received>,
    /// When a limit's rejection was last logged, per reason code.
    limit_warnings: std::collections::HashMap<&'static str, Instant>,
    /// Payload and repeated bytes of the rows so far: a group is committed before its text
    /// could come near Arrow's 2 GiB offset limit, whatever the messages.
    bytes: usize,
    deadline: Option<Instant>,
}

/// A group is committed once its rows hold about this many bytes. With every message bounded
/// by `max_message_row_bytes` plus its payload, no column of a group reaches 2 GiB.
const GROUP_MAX_BYTES: usize = 64 * 1024 * 1024;

async fn batch(
    mut from_reader: mpsc::UnboundedReceiver<Received>,
    to_acker: mpsc::UnboundedSender<Commit>,
    (wal, live): (Arc<Wal>, Arc<LiveTables>),
    config: IngestConfig,
    (retained, qos2, entities): (RetainedState, Qos2State, EntityHistory),
    metrics: IngestMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let mut state = IngestState {
        retained,
        qos2,
        entities,
    };
    let mut persisted = live.persist_generation();
    let mut group = Group {
        builders: TableBuilders::new(),
        retained_log: RetainedLog::default(),
        qos2_log: Qos2Log::default(),
        messages: Vec::new(),
        limit_warnings: std::collections::HashMap::new(),
        bytes: 0,
        deadline: None,
    };
    loop {
        let deadline = group.deadline;
        let next = tokio::select! {
            received = from_reader.recv() => received,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                submit(&mut group, &wal, &to_acker)?;
                continue;
            }
            Ok(()) = persisted.changed() => {
                // Only worth a checkpoint (the whole retained state) when a segment could go.
                if WalStats::get(&wal.stats().closed_segments) > 0 {
                    // The group first: the checkpoint must not hold state of unsubmitted messages.
                    submit(&mut group, &wal, &to_acker)?;
                    checkpoint(&state, &wal, &to_acker)?;
                    metrics.retained_bytes.set(state.retained.bytes() as i64);
                }
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(received) = next else {
            break;
        };
        add(&mut group, received, &config, (&mut state, &live), &metrics);
        // Commit as soon as nothing more is waiting: a sender that keeps only a few messages
        // unacknowledged waits for this commit before sending more, so holding the group for
        // the window would only add latency. Under a flood the queue never
        // empties and groups grow to `batch_max_messages`.
        if group.messages.len() >= config.batch_max_messages
            || group.bytes >= GROUP_MAX_BYTES
            || from_reader.is_empty()
        {
            submit(&mut group, &wal, &to_acker)?;
        }
    }
    // Stop taking messages; those still queued are dropped unacknowledged and the broker keeps
    // them. What this group holds is committed and acknowledged.
    from_reader.close();
    submit(&mut group, &wal, &to_acker)
}

/// What the batcher keeps across groups: the state the WAL also holds (retained payloads, QoS 2
/// packet ids) and the hierarchy as registrations made it.
struct IngestState {
    retained: RetainedState,
    qos2: Qos2State,
    entities: EntityHistory,
}

fn add(
    group: &mut Group,
    received: Received,
    config: &IngestConfig,
    (state, live): (&mut IngestState, &LiveTables),
    metrics: &IngestMetrics,
) {
    group
        .deadline
        .get_or_insert_with(|| Instant::now() + config.batch_window);
    match &received.content {
        Content::Release(key) => {
            state.qos2.release(key);
            group.qos2_log.released(key);
        }
        Content::BeginSession(client_id) => {
            state.qos2.begin_session(client_id);
            group.qos2_log.session_begun(client_id);
        }
        Content::EndSession(client_id) => {
            state.qos2.end_session(client_id);
            group.qos2_log.session_ended(client_id);
        }
        Content::Publish {
            topic,
            payload,
            exactly_once,
        } => {
            metrics.messages.inc();
            let resent = exactly_once.as_ref().is_some_and(|key| {
                // Resent after a lost PUBREC: acknowledged again with this group, not stored.
                let pending = state.qos2.is_pending(key);
                if !pending {
                    state.qos2.receive(key);
                    group.qos2_log.received(key);
                }
                pending
            });
            if resent {
                metrics.qos2_duplicates.inc();
            } else {
                let message = (topic, payload, received.received_at);
                add_publish(group, message, config, (state, live), metrics);
            }
        }
    }
    group.messages.push(received);
}

fn add_publish(
    group: &mut Group,
    (topic, payload, received_at): (&Bytes, &Bytes, Timestamp),
    config: &IngestConfig,
    (state, live): (&mut IngestState, &LiveTables),
    metrics: &IngestMetrics,
) {
    if payload.len() > config.max_payload_bytes {
        let keep = 1024.min(config.max_payload_bytes);
        let rejection = Rejection::payload_too_large(
            config.topics.gateway_of(topic),
            topic,
            payload,
            config.max_payload_bytes,
            keep,
            received_at,
        );
        reject(group, &rejection, metrics);
        return;
    }
    group.bytes += payload.len();
    match parse_message(&config.topics, topic, payload, received_at) {
        Parsed::Data(message) => {
            let (rows, bytes) = (message.row_count(), message.repeated_bytes());
            if rows > config.max_rows_per_message || bytes > config.max_message_row_bytes {
                let rejection = Rejection::too_many_rows(
                    Some(message.gateway.clone()),
                    topic,
                    payload,
                    received_at,
                    (rows, bytes),
                    (config.max_rows_per_message, config.max_message_row_bytes),
                );
                reject_over_limit(group, &rejection, metrics);
                return;
            }
            group.bytes += bytes;
            let growth = config
                .growth
                .exceeded_by(&message, &state.entities, live.latest());
            if let Some(reason) = growth {
                let gateway = Some(message.gateway.clone());
                let rejection = Rejection::over_limit(gateway, topic, payload, received_at, reason);
                reject_over_limit(group, &rejection, metrics);
                return;
            }
            if is_retained_kind(message.table()) {
                // The retain flag cannot tell a replay: a gateway's bridge replays its retained
                // state at every reconnect over Twinlake's established subscription, and MQTT
                // 3.1.1 brokers clear the flag on such deliveries.
                if state.retained.is_unchanged(topic, payload) {
                    metrics.retained_duplicates.inc();
                    return;
                }
                // The WAL gets what the state now holds for the topic, so replay rebuilds it.
                if state.retained.record(topic.clone(), payload.clone()) {
                    group.retained_log.push(topic.clone(), payload.clone());
                } else {
                    metrics.retained_untracked.inc();
                    group.retained_log.push(topic.clone(), Bytes::new());
                }
            }
            if !payload.is_empty() {
                register(
                    &mut group.builders,
                    &mut state.entities,
                    &message,
                    received_at,
                );
            }
            group.builders.append(&message);
        }
        Parsed::Rejected(rejection) => {
            if config.ignore_unknown_channels && rejection.reason.is_unknown_channel() {
                metrics.count_not_stored("unknown");
            } else {
                reject(group, &rejection, metrics);
            }
        }
        Parsed::NotStored(kind) => {
            metrics.count_not_stored(kind.as_str());
        }
        Parsed::OutsideRoot => {
            metrics.count_not_stored("outside_root");
        }
    }
}

/// Keeps the hierarchy ingest knows current, registers a gateway's main device from the
/// gateway's first message (thin-edge never registers it), and registers an unregistered
/// default-scheme entity (and its device) when a non-empty message arrives from it, as
/// thin-edge's agent does, stamped like registrations with the receive time.
fn register(
    builders: &mut TableBuilders,
    entities: &mut EntityHistory,
    message: &Message,
    received_at: Timestamp,
) {
    let change = match &message.body {
        MessageBody::EntityChange(change) => Some(change),
        _ if entities.is_known(&message.entity) => return,
        _ => None,
    };
    let gateway = &message.gateway;
    if !entities.is_known(gateway.as_str()) {
        let main = EntityTopicId::main_device();
        let registration = main_device_registration(gateway, received_at);
        tracing::info!(%gateway, "new gateway: its main device is registered");
        entities.apply(EntityChangeRow::new(gateway, &main, &registration));
        builders.append_entity_change(gateway, &main, &registration);
    }
    if let Some(change) = change {
        entities.apply(EntityChangeRow::new(gateway, &message.topic_id, change));
        return;
    }
    for (topic_id, change) in auto_registrations(&message.topic_id, received_at) {
        let row = EntityChangeRow::new(gateway, &topic_id, &change);
        if entities.is_known(&row.entity) {
            continue;
        }
        tracing::debug!(entity = %row.entity, "auto-registered");
        entities.apply(row);
        builders.append_entity_change(gateway, &topic_id, &change);
    }
}

/// A rejection for a limit of Twinlake's (not a malformed message): the operator should hear
/// of it, but a device hammering a limit must not flood the log, so at most one warning per
/// reason every 10 s (the metric counts every one).
fn reject_over_limit(group: &mut Group, rejection: &Rejection, metrics: &IngestMetrics) {
    let code = rejection.reason.code();
    let due = group
        .limit_warnings
        .get(code)
        .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
    if due {
        tracing::warn!(topic = %rejection.topic, reason = %rejection.reason, "message rejected: over a limit");
        group.limit_warnings.insert(code, Instant::now());
    }
    reject(group, rejection, metrics);
}

fn reject(group: &mut Group, rejection: &Rejection, metrics: &IngestMetrics) {
    tracing::debug!(topic = %rejection.topic, reason = %rejection.reason, "message rejected");
    metrics
        .rejected
        .get_or_create(&IngestMetrics::label("reason", rejection.reason.code()))
        .inc();
    group.builders.append_rejection(rejection);
}

/// Hands the group to the WAL and the acker. On error its messages stay unacknowledged, so
/// the broker keeps them.
fn submit(
    group: &mut Group,
    wal: &Wal,
    to_acker: &mpsc::UnboundedSender<Commit>,
) -> Result<(), IngestError> {
    group.deadline = None;
    group.bytes = 0;
    if group.messages.is_empty() {
        return Ok(());
    }
    let messages = std::mem::take(&mut group.messages);
    let rows = group.builders.finish()?;
    let retained_batch = group.retained_log.take_batch()?;
    let qos2_batch = group.qos2_log.take_batch()?;
    let mut tables: Vec<(String, arrow_array::RecordBatch)> = rows
        .iter()
        .map(|(table, batch)| (table.name().to_owned(), batch.clone()))
        .collect();
    tables.extend(retained_batch.map(|batch| (RETAINED_TABLE.to_owned(), batch)));
    tables.extend(qos2_batch.map(|batch| (QOS2_TABLE.to_owned(), batch)));
    let append = if tables.is_empty() {
        None
    } else {
        Some(wal.submit(tables)?)
    };
    // A closed acker has failed; its error is the one reported.
    let _ = to_acker.send(Commit {
        append,
        rows,
        messages,
        truncate: false,
    });
    Ok(())
}

/// Writes the whole retained state as one record, and asks the acker to delete the segments
/// that only hold persisted rows once that record is durable: replay then still finds the
/// last payload of every retained topic.
fn checkpoint(
    state: &IngestState,
    wal: &Wal,
    to_acker: &mpsc::UnboundedSender<Commit>,
) -> Result<(), IngestError> {
    let mut tables = Vec::new();
    if let Some(batch) = state.retained.checkpoint_batch()? {
        tables.push((RETAINED_TABLE.to_owned(), batch));
    }
    if let Some(batch) = state.qos2.checkpoint_batch()? {
        tables.push((QOS2_TABLE.to_owned(), batch));
    }
    let append = match tables.is_empty() {
        true => None,
        false => Some(wal.submit(tables)?),
    };
    let _ = to_acker.send(Commit {
        append,
        rows: Vec::new(),
        messages: Vec::new(),
        truncate: true,
    });
    Ok(())
}

async fn acknowledge(
    mut from_batcher: mpsc::UnboundedReceiver<Commit>,
    to_broker: mpsc::UnboundedSender<Vec<AckToken>>,
    wal: Arc<Wal>,
    hot: Arc<LiveTables>,
    budgets: Budgets,
    metrics: IngestMetrics,
) -> Result<(), IngestError> {
    while let Some(commit) = from_batcher.recv().await {
        let record = match commit.append {
            Some(append) => match append.await {
                Ok(record) => Some(record),
                Err(WalError::DiskFull(reason)) => {
                    // Shutting down while the disk is full: these messages and those behind
                    // them stay unacknowledged, so the broker keeps them.
                    tracing::warn!(%reason, messages = commit.messages.len(), "stopped before the WAL had space for these messages");
                    break;
                }
                Err(error) => return Err(error.into()),
            },
            None => None,
        };
        if let Some(record) = record {
            for (table, batch) in commit.rows {
                metrics
                    .rows
                    .get_or_create(&IngestMetrics::label("table", table.name()))
                    .inc_by(batch.num_rows() as u64);
                hot.append(table, batch, record)?;
            }
        }
        if commit.truncate {
            // Asked here, not when the checkpoint was written: every record before the
            // checkpoint has its rows in the live tables by now (this task appended them, in
            // order), so a record whose rows are only in memory cannot look persisted.
            let through = hot.persisted_through();
            let segments = wal.truncate_through(through).await?;
            if segments > 0 {
                tracing::info!(
                    segments,
                    through = through.0,
                    "WAL segments of persisted rows deleted"
                );
            }
        }
        // Dropping the messages frees their in-flight places; the endpoint's connections get
        // their acks here, the subscriber's go to its ack sender.
        let mut tokens = Vec::new();
        let now = Timestamp::now();
        for received in commit.messages {
            let waited = now
                .unix_nanos()
                .saturating_sub(received.received_at.unix_nanos());
            metrics.durable_seconds.observe(waited.max(0) as f64 / 1e9);
            match received.ack {
                Ack::Endpoint(done) => {
                    // A connection that went away meanwhile has nobody left to tell.
                    let _ = done.send(());
                }
                Ack::Broker(token) => tokens.push(token),
                Ack::Nothing => {}
            }
        }
        budgets.update_metrics();
        if !tokens.is_empty() {
            metrics.acks_queued.inc_by(tokens.len() as i64);
            if to_broker.send(tokens).is_err() {
                // `send_acks` failed; run_ingest reports its error.
                break;
            }
        }
        metrics
            .wal_bytes
            .set(WalStats::get(&wal.stats().bytes) as i64);
        metrics.hot_bytes.set(hot.bytes() as i64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use twinlake_wal::WalConfig;

    use super::*;

    fn received(topic: &'static str, payload: &str) -> Received {
        Received {
            content: Content::Publish {
                topic: Bytes::from_static(topic.as_bytes()),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                exactly_once: None,
            },
            ack: Ack::Nothing,
            received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
            _place: crate::inflight::Place::outside_budgets(),
        }
    }

    /// Messages each within the per-message bound, together far past Arrow's 2 GiB offsets:
    /// the batcher must commit them in groups whose columns stay far below that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_are_cut_by_bytes_long_before_arrow_offsets_could_overflow() {
        const MESSAGES: usize = 140;
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let endpoint = MqttEndpoint::parse("mqtt://127.0.0.1", "test").unwrap();
        let mut config = IngestConfig::new(Source::Broker(endpoint));
        // Neither the window nor the message count may end a group first.
        config.batch_window = Duration::from_secs(3600);
        // 160 values, each row repeating 100 KB of `properties`: 16 MB of rows per message,
        // under `max_message_row_bytes`; 2.2 GB for all of them.
        let values: String = (0..160).map(|n| format!(",\"v{n}\":1")).collect();
        let payload = format!("{{\"properties\":\"{}\"{values}}}", "p".repeat(100_000));
        let (to_batcher, from_reader) = mpsc::unbounded_channel();
        for _ in 0..MESSAGES {
            let message = received("te/device/main///m/env", &payload);
            to_batcher.send(message).unwrap();
        }
        let (to_acker, mut commits) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let batcher = tokio::spawn(batch(
            from_reader,
            to_acker,
            (Arc::new(wal), Arc::new(LiveTables::new())),
            config,
            (
                RetainedState::default(),
                Qos2State::default(),
                EntityHistory::new(),
            ),
            IngestMetrics::register(&mut Registry::default()),
            shutdown,
        ));
        let mut groups = Vec::new();
        while groups.iter().sum::<usize>() < MESSAGES {
            let Some(commit) = commits.recv().await else {
                panic!("the batcher stopped: {:?}", batcher.await);
            };
            let measurements = commit.rows.iter().find(|(t, _)| *t == Table::Measurements);
            let bytes = measurements.map_or(0, |(_, rows)| rows.get_array_memory_size());
            assert!(bytes < 256 * 1024 * 1024, "a group of {bytes} bytes");
            commit.append.unwrap().await.unwrap();
            groups.push(commit.messages.len());
        }
        stop.send(true).unwrap();
        drop(to_batcher);
        batcher.await.unwrap().unwrap();
        assert!(groups.len() >= 20, "{groups:?}");
    }
}
