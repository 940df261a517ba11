//! The way in through an external broker (Mosquitto, a gateway's upstream broker): an MQTT
//! client subscribed to every gateway's thin-edge topics with QoS 1 and a persistent session,
//! acknowledging each message only once the pipeline says it is durable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS, SubscribeFilter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twinlake_model::{FleetTopics, Timestamp};

use crate::endpoint::{EndpointError, MqttEndpoint};
use crate::error::IngestError;
use crate::inflight::{Ack, Budgets, Content, Received};
use crate::metrics::IngestMetrics;
use crate::session::{AckToken, SessionGate};

/// The subscriber's tasks: its reader and the sender of its acknowledgements.
pub(crate) struct Subscriber {
    client: AsyncClient,
    reader: JoinHandle<()>,
    ack_sender: JoinHandle<Result<(), rumqttc::ClientError>>,
}

impl Subscriber {
    /// Connects (in the background, retrying) and reads into `to_batcher`; the acks of durable
    /// messages come back on `acks`.
    pub(crate) fn start(
        endpoint: &MqttEndpoint,
        (max_packet_bytes, max_inflight_messages): (usize, usize),
        topics: FleetTopics,
        (to_batcher, acks): (
            mpsc::UnboundedSender<Received>,
            mpsc::UnboundedReceiver<Vec<AckToken>>,
        ),
        budgets: Budgets,
        metrics: IngestMetrics,
    ) -> Result<Self, EndpointError> {
        // Requests (acks) leave this queue only while the reader polls; a full queue holds up
        // only `send_acks`, never the reader (see there), so its size is a matter of batching.
        let request_capacity = 2 * max_inflight_messages + 1_000;
        let options = endpoint.options(max_packet_bytes, request_capacity)?;
        let (client, eventloop) = AsyncClient::new(options, request_capacity);
        tracing::info!(
            host = %endpoint.host,
            port = endpoint.port,
            client_id = %endpoint.client_id,
            filters = ?topics.subscription_filters(),
            "ingest connecting"
        );
        let gate = Arc::new(SessionGate::default());
        let reader = tokio::spawn(read(
            eventloop,
            (client.clone(), Arc::clone(&gate)),
            to_batcher,
            budgets,
            topics,
            metrics.clone(),
        ));
        let ack_sender = tokio::spawn(send_acks(acks, (client.clone(), gate), metrics));
        Ok(Self {
            client,
            reader,
            ack_sender,
        })
    }

    /// Once the pipeline has acknowledged what it holds: sends the last acks, disconnects.
    pub(crate) async fn finish(self) -> Result<(), IngestError> {
        let acked = self.ack_sender.await?;
        if let Err(error) = self.client.disconnect().await {
            tracing::debug!(%error, "MQTT disconnect request not delivered");
        }
        self.reader.await?;
        Ok(acked?)
    }
}

async fn read(
    mut eventloop: EventLoop,
    (client, gate): (AsyncClient, Arc<SessionGate>),
    to_batcher: mpsc::UnboundedSender<Received>,
    budgets: Budgets,
    topics: FleetTopics,
    metrics: IngestMetrics,
) {
    let filters = topics.subscription_filters();
    let filter = filters.join(" ");
    let mut last_error_log = None::<Instant>;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let received_at = Timestamp::now();
                let size = publish.topic.len() + publish.payload.len();
                let Some(place) = budgets.admit(size, None).await else {
                    // Shutting down: the message stays unacknowledged, so the broker keeps it.
                    continue;
                };
                let ack = Ack::Broker(AckToken::of(&publish, gate.connection()));
                let received = Received {
                    content: Content::Publish {
                        topic: Bytes::from(publish.topic),
                        payload: publish.payload,
                        exactly_once: None,
                    },
                    ack,
                    received_at,
                    _place: place,
                };
                // A closed batcher means shutdown: the message is left to the broker.
                let _ = to_batcher.send(received);
            }
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to the MQTT broker"
                );
                let queued = gate.connected(|| client.try_subscribe_many(subscription(&filters)));
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
                if budgets.is_closed() {
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
) -> Result<(), rumqttc::ClientError> {
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
) -> Result<(), rumqttc::ClientError> {
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
            Some(Err(error)) => return Err(error),
        }
    }
}
