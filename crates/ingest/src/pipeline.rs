//! The ingest pipeline: MQTT reader → batcher (parse, group) → WAL → acker (hot buffer, PUBACK).
//!
//! Four tasks joined by FIFO channels keep acknowledgements in the order messages arrived, as
//! MQTT requires, while the next group is parsed during the current group's fsync:
//!
//! - the reader polls the MQTT connection and hands each publish on with an in-flight permit;
//!   when the in-flight or hot-buffer budget is reached it stops reading, which stops the broker
//!   from sending (backpressure) instead of dropping anything;
//! - the batcher parses messages into Arrow rows and, every `batch_window` or `batch_max_messages`,
//!   submits them to the WAL as one record;
//! - the acker waits for each record's fsync, moves its rows to the live tables (so an
//!   acknowledged message is queryable), then frees its messages' permits and passes their
//!   acknowledgements to the ack sender, which queues them on the MQTT client.
//!
//! After each persist the batcher writes a checkpoint of the retained state to the WAL (so it
//! outlives the segments that held it), and once that is durable the acker deletes the WAL
//! segments whose rows are all persisted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS, SubscribeFilter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use twinlake_model::{
    EntityChangeRow, EntityHistory, EntityTopicId, FleetTopics, Message, MessageBody, Parsed,
    Rejection, Table, TableBuilders, Timestamp, auto_registrations, main_device_registration,
    parse_message,
};
use twinlake_store::LiveTables;
use twinlake_wal::{PendingAppend, Wal, WalError, WalStats};

use crate::endpoint::{EndpointError, MqttEndpoint};
use crate::limits::GrowthLimits;
use crate::metrics::IngestMetrics;
use crate::retained::{RETAINED_TABLE, RetainedLog, RetainedState, is_retained_kind};
use crate::session::SessionGate;

/// The largest MQTT packet ingest and the embedded broker accept by default.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 64 * 1024 * 1024;

/// How ingest runs; every limit is here, with its default in [`IngestConfig::new`].
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub endpoint: MqttEndpoint,
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
    pub fn new(endpoint: MqttEndpoint) -> Self {
        Self {
            endpoint,
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

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("the WAL failed, so nothing more can be acknowledged: {0}")]
    Wal(#[from] WalError),
    #[error("storing rows: {0}")]
    Store(#[from] arrow_schema::ArrowError),
    #[error("acknowledging to the MQTT broker: {0}")]
    Ack(#[from] rumqttc::ClientError),
    #[error("an ingest task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A message with its place in the in-flight budget.
struct Received {
    publish: Publish,
    /// The connection it arrived on (see [`SessionGate`]).
    connection: u64,
    received_at: Timestamp,
    /// Its place in the in-flight budgets of messages and bytes.
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// The in-flight byte budget as semaphore permits (a semaphore counts in u32 per acquire).
fn inflight_byte_permits(config: &IngestConfig) -> usize {
    config.max_inflight_bytes.clamp(1, u32::MAX as usize)
}

/// What a message takes of the in-flight byte budget: its topic and payload, and never more
/// than the whole budget (a message larger than it still goes through, alone).
fn inflight_size(publish: &Publish, config: &IngestConfig) -> u32 {
    let bytes = publish.topic.len() + publish.payload.len();
    bytes.clamp(1, inflight_byte_permits(config)) as u32
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
/// acknowledges what it holds, and disconnects. Messages it did not take stay with the broker.
pub async fn run_ingest(
    config: IngestConfig,
    wal: Arc<Wal>,
    hot: Arc<LiveTables>,
    retained: RetainedState,
    entities: EntityHistory,
    metrics: IngestMetrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    // Requests (acks) leave this queue only while the reader polls; a full queue holds up
    // only `send_acks`, never the reader (see there), so its size is a matter of batching.
    let request_capacity = 2 * config.max_inflight_messages + 1_000;
    let options = config
        .endpoint
        .options(config.max_packet_bytes, request_capacity)?;
    let (client, eventloop) = AsyncClient::new(options, request_capacity);
    let permits = Arc::new(Semaphore::new(config.max_inflight_messages));
    let inflight_bytes = Arc::new(Semaphore::new(inflight_byte_permits(&config)));
    let (to_batcher, from_reader) = mpsc::unbounded_channel();
    let (to_acker, from_batcher) = mpsc::unbounded_channel();
    let (to_ack_sender, acks) = mpsc::unbounded_channel();
    tracing::info!(
        host = %config.endpoint.host,
        port = config.endpoint.port,
        client_id = %config.endpoint.client_id,
        filters = ?config.topics.subscription_filters(),
        "ingest connecting"
    );

    let gate = Arc::new(SessionGate::default());
    let reader = tokio::spawn(read(
        eventloop,
        (client.clone(), Arc::clone(&gate)),
        to_batcher,
        (Arc::clone(&permits), Arc::clone(&inflight_bytes)),
        Arc::clone(&hot),
        config.clone(),
        metrics.clone(),
    ));
    let mut retained = retained;
    retained.limit_to(config.max_retained_bytes);
    let batcher = tokio::spawn(batch(
        from_reader,
        to_acker,
        (Arc::clone(&wal), Arc::clone(&hot)),
        config.clone(),
        (retained, entities),
        metrics.clone(),
        shutdown,
    ));
    let ack_sender = tokio::spawn(send_acks(acks, (client.clone(), gate), metrics.clone()));
    let acked = acknowledge(
        from_batcher,
        to_ack_sender,
        wal,
        hot,
        permits.clone(),
        config,
        metrics,
    )
    .await;
    permits.close();
    inflight_bytes.close();
    let acked = acked.and(ack_sender.await?);
    if let Err(error) = client.disconnect().await {
        tracing::debug!(%error, "MQTT disconnect request not delivered");
    }
    let batched = batcher.await?;
    reader.await?;
    acked.and(batched)
}

async fn read(
    mut eventloop: EventLoop,
    (client, gate): (AsyncClient, Arc<SessionGate>),
    to_batcher: mpsc::UnboundedSender<Received>,
    (permits, inflight_bytes): (Arc<Semaphore>, Arc<Semaphore>),
    hot: Arc<LiveTables>,
    config: IngestConfig,
    metrics: IngestMetrics,
) {
    let filters = config.topics.subscription_filters();
    let filter = filters.join(" ");
    let mut last_error_log = None::<Instant>;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let received_at = Timestamp::now();
                wait_for_hot_budget(&hot, &config, &metrics, &permits).await;
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    // Shutting down: the message stays unacknowledged, so the broker keeps it.
                    continue;
                };
                let size = inflight_size(&publish, &config);
                let Ok(bytes_permit) = Arc::clone(&inflight_bytes).acquire_many_owned(size).await
                else {
                    continue;
                };
                metrics.set_acks_pending(config.max_inflight_messages, &permits);
                let received = Received {
                    publish,
                    connection: gate.connection(),
                    received_at,
                    _permits: (permit, bytes_permit),
                };
                // A closed batcher means shutdown: the message is left to the broker.
                let _ = to_batcher.send(received);
            }
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to the MQTT broker"
                );
                let queued = gate.connected(connack.session_present, || {
                    client.try_subscribe_many(subscription(&filters))
                });
                if let Err(error) = queued {
                    // The request queue is full (acks piling up): wait for room rather than
                    // stay connected and receive nothing.
                    tracing::warn!(%error, %filter, "subscription not queued yet; waiting for room");
                    subscribe_later(client.clone(), filters.clone(), Duration::ZERO);
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(suback))) => {
                if suback.return_codes.iter().all(granted) {
                    metrics.subscribed.set(1);
                    tracing::info!(%filter, "subscribed");
                } else {
                    metrics.subscribed.set(0);
                    tracing::error!(%filter, codes = ?suback.return_codes, "the broker refused the subscription: nothing is received; asking again in 10 s");
                    subscribe_later(client.clone(), filters.clone(), Duration::from_secs(10));
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                metrics.subscribed.set(0);
                if permits.is_closed() {
                    break;
                }
                // rumqttc reconnects on the next poll; log at most every 10 s while it retries.
                if last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(%error, "MQTT connection lost; reconnecting");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn granted(code: &rumqttc::SubscribeReasonCode) -> bool {
    matches!(code, rumqttc::SubscribeReasonCode::Success(_))
}

/// What ingest subscribes to: every gateway's thin-edge topics, at QoS 1.
fn subscription(filters: &[String]) -> Vec<SubscribeFilter> {
    filters
        .iter()
        .map(|filter| SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce))
        .collect()
}

/// Queues a subscription after `delay`, waiting for room in the request queue.
fn subscribe_later(client: AsyncClient, filters: [String; 2], delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Err(error) = client.subscribe_many(subscription(&filters)).await {
            tracing::error!(%error, ?filters, "could not subscribe: the MQTT client has stopped");
        }
    });
}

/// Holds the reader while the in-memory rows exceed their budget.
async fn wait_for_hot_budget(
    hot: &LiveTables,
    config: &IngestConfig,
    metrics: &IngestMetrics,
    permits: &Semaphore,
) {
    // Once shutting down (permits closed) nothing more is taken, so there is nothing to wait for.
    if hot.bytes() <= config.hot_budget_bytes || permits.is_closed() {
        return;
    }
    tracing::warn!(
        hot_bytes = hot.bytes(),
        budget = config.hot_budget_bytes,
        "hot-buffer budget reached: ingest stops reading until memory is freed"
    );
    metrics.backpressure.set(1);
    metrics.backpressure_episodes.inc();
    while hot.bytes() > config.hot_budget_bytes && !permits.is_closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    metrics.backpressure.set(0);
    tracing::info!("hot-buffer budget free again: ingest resumes");
}

/// The rows of one group commit being assembled.
struct Group {
    builders: TableBuilders,
    retained_log: RetainedLog,
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
    (mut retained, mut entities): (RetainedState, EntityHistory),
    metrics: IngestMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let mut persisted = live.persist_generation();
    let mut group = Group {
        builders: TableBuilders::new(),
        retained_log: RetainedLog::default(),
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
                    checkpoint(&retained, &wal, &to_acker)?;
                    metrics.retained_bytes.set(retained.bytes() as i64);
                }
                continue;
            }
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(received) = next else {
            break;
        };
        add(
            &mut group,
            received,
            &config,
            (&mut retained, &mut entities, &live),
            &metrics,
        );
        // Commit as soon as nothing more is waiting: a broker that sends only a few unacknowledged
        // messages at a time (rumqttd: 100) waits for this commit before sending more, so
        // holding the group for the window would only add latency. Under a flood the queue never
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

fn add(
    group: &mut Group,
    received: Received,
    config: &IngestConfig,
    (retained, entities, live): (&mut RetainedState, &mut EntityHistory, &LiveTables),
    metrics: &IngestMetrics,
) {
    metrics.messages.inc();
    group
        .deadline
        .get_or_insert_with(|| Instant::now() + config.batch_window);
    let publish = &received.publish;
    let topic = publish.topic.as_bytes();
    let payload = publish.payload.as_ref();
    if payload.len() > config.max_payload_bytes {
        let keep = 1024.min(config.max_payload_bytes);
        let rejection = Rejection::payload_too_large(
            config.topics.gateway_of(topic),
            topic,
            payload,
            config.max_payload_bytes,
            keep,
            received.received_at,
        );
        reject(group, &rejection, metrics);
        group.messages.push(received);
        return;
    }
    group.bytes += payload.len();
    match parse_message(&config.topics, topic, payload, received.received_at) {
        Parsed::Data(message) => {
            let (rows, bytes) = (message.row_count(), message.repeated_bytes());
            if rows > config.max_rows_per_message || bytes > config.max_message_row_bytes {
                let rejection = Rejection::too_many_rows(
                    Some(message.gateway.clone()),
                    topic,
                    payload,
                    received.received_at,
                    (rows, bytes),
                    (config.max_rows_per_message, config.max_message_row_bytes),
                );
                reject_over_limit(group, &rejection, metrics);
                group.messages.push(received);
                return;
            }
            group.bytes += bytes;
            if let Some(reason) = config.growth.exceeded_by(&message, entities, live.latest()) {
                let gateway = Some(message.gateway.clone());
                let rejection =
                    Rejection::over_limit(gateway, topic, payload, received.received_at, reason);
                reject_over_limit(group, &rejection, metrics);
                group.messages.push(received);
                return;
            }
            if is_retained_kind(message.table()) {
                // The retain flag cannot tell a replay: a gateway's bridge replays its retained
                // state at every reconnect over Twinlake's established subscription, and MQTT
                // 3.1.1 brokers clear the flag on such deliveries.
                if retained.is_unchanged(topic, payload) {
                    metrics.retained_duplicates.inc();
                    group.messages.push(received);
                    return;
                }
                let topic = Bytes::copy_from_slice(topic);
                // The WAL gets what the state now holds for the topic, so replay rebuilds it.
                if retained.record(topic.clone(), publish.payload.clone()) {
                    group.retained_log.push(topic, publish.payload.clone());
                } else {
                    metrics.retained_untracked.inc();
                    group.retained_log.push(topic, Bytes::new());
                }
            }
            if !payload.is_empty() {
                register(
                    &mut group.builders,
                    entities,
                    &message,
                    received.received_at,
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
    group.messages.push(received);
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
    let mut tables: Vec<(String, arrow_array::RecordBatch)> = rows
        .iter()
        .map(|(table, batch)| (table.name().to_owned(), batch.clone()))
        .collect();
    tables.extend(retained_batch.map(|batch| (RETAINED_TABLE.to_owned(), batch)));
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
    retained: &RetainedState,
    wal: &Wal,
    to_acker: &mpsc::UnboundedSender<Commit>,
) -> Result<(), IngestError> {
    let append = match retained.checkpoint_batch()? {
        Some(batch) => Some(wal.submit(vec![(RETAINED_TABLE.to_owned(), batch)])?),
        None => None,
    };
    let _ = to_acker.send(Commit {
        append,
        rows: Vec::new(),
        messages: Vec::new(),
        truncate: true,
    });
    Ok(())
}

/// What an acknowledgement needs of a message: its QoS, packet id and connection.
struct AckToken {
    publish: Publish,
    connection: u64,
}

fn ack_token(received: &Received) -> AckToken {
    let mut publish = Publish::new(String::new(), received.publish.qos, Vec::new());
    publish.pkid = received.publish.pkid;
    AckToken {
        publish,
        connection: received.connection,
    }
}

/// Queues the acknowledgements of durable messages on the MQTT client, in order.
///
/// A task of its own so that nothing the reader waits for waits on the client's request
/// queue: the queue drains only while the reader polls, and when the acker itself queued acks,
/// a full queue held the acker, the commits behind it held every in-flight permit, and the
/// reader, waiting for a permit, never polled again: ingest stalled for good with a broker
/// that sends without an in-flight limit (found by `benches/run.sh --scale medium`).
async fn send_acks(
    mut acks: mpsc::UnboundedReceiver<Vec<AckToken>>,
    (client, gate): (AsyncClient, Arc<SessionGate>),
    metrics: IngestMetrics,
) -> Result<(), IngestError> {
    while let Some(tokens) = acks.recv().await {
        for token in &tokens {
            send_ack(token, &client, &gate, &metrics).await?;
            metrics.acks_queued.dec();
        }
    }
    Ok(())
}

/// Queues one ack, waiting for room in the client's queue; an ack of a session the broker
/// no longer has is dropped (see [`SessionGate`]).
async fn send_ack(
    token: &AckToken,
    client: &AsyncClient,
    gate: &SessionGate,
    metrics: &IngestMetrics,
) -> Result<(), IngestError> {
    loop {
        match gate.admit(token.connection, || client.try_ack(&token.publish)) {
            None => {
                metrics.acks_of_lost_sessions.inc();
                return Ok(());
            }
            Some(Ok(())) => return Ok(()),
            Some(Err(rumqttc::ClientError::TryRequest(_))) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Some(Err(error)) => return Err(error.into()),
        }
    }
}

async fn acknowledge(
    mut from_batcher: mpsc::UnboundedReceiver<Commit>,
    to_ack_sender: mpsc::UnboundedSender<Vec<AckToken>>,
    wal: Arc<Wal>,
    hot: Arc<LiveTables>,
    permits: Arc<Semaphore>,
    config: IngestConfig,
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
        // Dropping the messages frees their in-flight permits; their acks go to `send_acks`.
        let tokens: Vec<AckToken> = commit.messages.iter().map(ack_token).collect();
        drop(commit.messages);
        metrics.set_acks_pending(config.max_inflight_messages, &permits);
        metrics.acks_queued.inc_by(tokens.len() as i64);
        if to_ack_sender.send(tokens).is_err() {
            // `send_acks` failed; run_ingest reports its error.
            break;
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

    fn received(publish: Publish) -> Received {
        let permit = || Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Received {
            publish,
            connection: 0,
            received_at: Timestamp::from_unix_nanos(1_700_000_000_000_000_000),
            _permits: (permit(), permit()),
        }
    }

    /// Messages each within the per-message bound, together far past Arrow's 2 GiB offsets:
    /// the batcher must commit them in groups whose columns stay far below that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_are_cut_by_bytes_long_before_arrow_offsets_could_overflow() {
        const MESSAGES: usize = 140;
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(WalConfig::new(dir.path())).unwrap();
        let mut config =
            IngestConfig::new(MqttEndpoint::parse("mqtt://127.0.0.1", "test").unwrap());
        // Neither the window nor the message count may end a group first.
        config.batch_window = Duration::from_secs(3600);
        // 160 values, each row repeating 100 KB of `properties`: 16 MB of rows per message,
        // under `max_message_row_bytes`; 2.2 GB for all of them.
        let values: String = (0..160).map(|n| format!(",\"v{n}\":1")).collect();
        let payload = format!("{{\"properties\":\"{}\"{values}}}", "p".repeat(100_000));
        let (to_batcher, from_reader) = mpsc::unbounded_channel();
        for _ in 0..MESSAGES {
            let publish = Publish::new("te/device/main///m/env", QoS::AtLeastOnce, payload.clone());
            to_batcher.send(received(publish)).unwrap();
        }
        let (to_acker, mut commits) = mpsc::unbounded_channel();
        let (stop, shutdown) = watch::channel(false);
        let batcher = tokio::spawn(batch(
            from_reader,
            to_acker,
            (Arc::new(wal), Arc::new(LiveTables::new())),
            config,
            (RetainedState::default(), EntityHistory::new()),
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
