//! A message on its way from a connection to the WAL, and the budgets that bound how many such
//! messages (and bytes) are in memory: the reader of an external broker and every connection of
//! the embedded endpoint take a place in them before they hand a message on, and wait (stop
//! reading) while there is none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use twinlake_model::Timestamp;
use twinlake_store::LiveTables;

use crate::metrics::IngestMetrics;
use crate::qos2::PacketKey;

/// What arrived, with how to acknowledge it once it is durable.
pub(crate) struct Received {
    pub(crate) content: Content,
    pub(crate) ack: Ack,
    pub(crate) received_at: Timestamp,
    /// Its place in the in-flight budgets, freed once it is durable.
    pub(crate) _place: Place,
}

pub(crate) enum Content {
    /// A message on its fleet topic (`<prefix>/<gateway>/…` on the embedded endpoint). A QoS 2
    /// message carries its packet id, so that a resend is recognised.
    Publish {
        topic: Bytes,
        payload: Bytes,
        exactly_once: Option<PacketKey>,
    },
    /// PUBREL: the client may use the packet id again.
    Release(PacketKey),
    /// A client began a persistent session: it is present when the client comes back, also
    /// after a restart.
    BeginSession(Arc<str>),
    /// A client's session ended (a clean start, or a connection whose session ends with it):
    /// its packet ids mean nothing now.
    EndSession(Arc<str>),
}

/// How a durable message is acknowledged.
pub(crate) enum Ack {
    /// Through the MQTT client of an external broker (packet id and connection).
    Broker(crate::session::AckToken),
    /// To the endpoint connection waiting for it.
    Endpoint(oneshot::Sender<()>),
    /// Nothing waits (QoS 0, a will message).
    Nothing,
}

/// Places in the message and byte budgets of messages received and not yet durable.
pub(crate) struct Place {
    _message: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    /// The connection's own byte budget, on the embedded endpoint.
    _connection_bytes: Option<OwnedSemaphorePermit>,
}

impl Place {
    /// A place in budgets of one message that nobody else shares.
    #[cfg(test)]
    pub(crate) fn outside_budgets() -> Self {
        let permit = || Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        Self {
            _message: permit(),
            _bytes: permit(),
            _connection_bytes: None,
        }
    }
}

/// The in-flight budgets every source of messages shares, and the hot-buffer budget.
#[derive(Clone)]
pub(crate) struct Budgets {
    pub(crate) messages: Arc<Semaphore>,
    max_messages: usize,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    hot: Arc<LiveTables>,
    /// Set by the one waiter that reports a hot-buffer stop, of however many wait.
    hot_stop_reported: Arc<AtomicBool>,
    hot_budget_bytes: usize,
    metrics: IngestMetrics,
}

impl Budgets {
    pub(crate) fn new(
        (max_messages, max_bytes): (usize, usize),
        hot: Arc<LiveTables>,
        hot_budget_bytes: usize,
        metrics: IngestMetrics,
    ) -> Self {
        Self {
            messages: Arc::new(Semaphore::new(max_messages)),
            max_messages,
            bytes: Arc::new(Semaphore::new(Self::byte_permits(max_bytes))),
            max_bytes,
            hot,
            hot_stop_reported: Arc::new(AtomicBool::new(false)),
            hot_budget_bytes,
            metrics,
        }
    }

    /// A semaphore counts in u32 per acquire.
    fn byte_permits(bytes: usize) -> usize {
        bytes.clamp(1, u32::MAX as usize)
    }

    /// What a message of `bytes` takes of a byte budget of `budget`: never more than the whole
    /// budget (a message larger than it still goes through, alone).
    pub(crate) fn share(bytes: usize, budget: usize) -> u32 {
        bytes.clamp(1, Self::byte_permits(budget)) as u32
    }

    /// Waits for a place for a message of `bytes` (topic and payload): while the hot buffer
    /// is over its budget or the in-flight budgets are taken, the caller stops reading, which
    /// stops the sender. None once ingest is shutting down.
    pub(crate) async fn admit(
        &self,
        bytes: usize,
        connection: Option<(&Arc<Semaphore>, usize)>,
    ) -> Option<Place> {
        self.wait_for_hot_budget().await;
        let connection_bytes = match connection {
            Some((budget, size)) => Some(
                Arc::clone(budget)
                    .acquire_many_owned(Self::share(bytes, size))
                    .await
                    .ok()?,
            ),
            None => None,
        };
        let message = Arc::clone(&self.messages).acquire_owned().await.ok()?;
        let bytes = Arc::clone(&self.bytes)
            .acquire_many_owned(Self::share(bytes, self.max_bytes))
            .await
            .ok()?;
        self.update_metrics();
        Some(Place {
            _message: message,
            _bytes: bytes,
            _connection_bytes: connection_bytes,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.messages.is_closed()
    }

    /// No more places: whoever waits for one gives up (shutdown).
    pub(crate) fn close(&self) {
        self.messages.close();
        self.bytes.close();
    }

    pub(crate) fn update_metrics(&self) {
        self.metrics
            .set_acks_pending(self.max_messages, &self.messages);
    }

    /// Holds the caller while the in-memory rows exceed their budget.
    async fn wait_for_hot_budget(&self) {
        // Once shutting down nothing more is taken, so there is nothing to wait for.
        if self.hot.bytes() <= self.hot_budget_bytes || self.is_closed() {
            return;
        }
        let reporter = !self.hot_stop_reported.swap(true, Ordering::AcqRel);
        if reporter {
            tracing::warn!(
                hot_bytes = self.hot.bytes(),
                budget = self.hot_budget_bytes,
                "hot-buffer budget reached: ingest stops reading until memory is freed"
            );
            self.metrics.backpressure.set(1);
            self.metrics.backpressure_episodes.inc();
        }
        while self.hot.bytes() > self.hot_budget_bytes && !self.is_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if reporter {
            self.metrics.backpressure.set(0);
            self.hot_stop_reported.store(false, Ordering::Release);
            tracing::info!("hot-buffer budget free again: ingest resumes");
        }
    }
}
