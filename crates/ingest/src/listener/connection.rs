//! One client connection of the endpoint, from CONNECT to its end: publishes go to the pipeline
//! and are acknowledged (PUBACK, PUBREC) only once durable, in the order they came; releases
//! (PUBREL) are acknowledged (PUBCOMP) once the release is durable; subscriptions are refused;
//! a will is stored when the connection ends without DISCONNECT.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use twinlake_model::{FleetTopics, Timestamp};

use super::identity::{Authenticator, Identity};
use super::packet::{
    self, Connect, DisconnectReason, Incoming, Outgoing, PacketError, Publish, Refusal, Version,
    Will,
};
use crate::inflight::{Ack, Budgets, Content, Received};
use crate::metrics::IngestMetrics;
use crate::qos2::{PacketKey, Qos2State};

/// A client must send CONNECT this soon after it connects.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that takes no bytes for this long is gone (a slow reader must not hold a task).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// What the last replies of a closing connection may take.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// What every connection of the endpoint shares.
pub(crate) struct Shared {
    pub(crate) topics: FleetTopics,
    pub(crate) max_packet_bytes: usize,
    pub(crate) receive_maximum: u16,
    pub(crate) connection_inflight_bytes: usize,
    pub(crate) auth: Authenticator,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) to_batcher: mpsc::UnboundedSender<Received>,
    pub(crate) budgets: Budgets,
    pub(crate) metrics: IngestMetrics,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// A connection refused or closed at once: logged, and counted by `code`.
    pub(crate) fn refuse_connection(&self, address: SocketAddr, (code, detail): (&str, &str)) {
        tracing::warn!(peer = %address, reason = code, detail, "MQTT connection refused");
        self.metrics
            .connections_refused
            .get_or_create(&IngestMetrics::label("reason", code))
            .inc();
    }
}

/// The sessions of client ids: which are persistent, which have QoS 2 state, which connection
/// holds each (a new connection with the same client id takes the session over).
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    persistent: HashSet<Arc<str>>,
    exactly_once: HashSet<Arc<str>>,
    live: HashMap<Arc<str>, (u64, Arc<Notify>)>,
    connections: u64,
}

impl Sessions {
    /// The sessions the WAL held.
    pub(crate) fn restored(state: &Qos2State) -> Self {
        Self {
            persistent: state.persistent_sessions().cloned().collect(),
            exactly_once: state.clients_with_packets().cloned().collect(),
            ..Self::default()
        }
    }
}

/// A connection's place among the sessions.
struct Opened {
    number: u64,
    session_present: bool,
    /// The session it ends: a clean start of a client that had one.
    end_earlier_session: bool,
    /// A persistent session not known before, to be made durable before CONNACK.
    begin_session: bool,
    taken_over: Arc<Notify>,
}

impl Sessions {
    fn open(&mut self, client_id: &Arc<str>, connect: &Connect) -> Opened {
        self.connections += 1;
        let session_present = !connect.clean_start && self.persistent.contains(client_id);
        let mut end_earlier_session = false;
        if connect.clean_start {
            let had_packets = self.exactly_once.remove(client_id);
            end_earlier_session = self.persistent.remove(client_id) || had_packets;
        }
        let begin_session = connect.persistent && self.persistent.insert(Arc::clone(client_id));
        let taken_over = Arc::new(Notify::new());
        let earlier = self.live.insert(
            Arc::clone(client_id),
            (self.connections, Arc::clone(&taken_over)),
        );
        if let Some((_, earlier)) = earlier {
            earlier.notify_one();
        }
        Opened {
            number: self.connections,
            session_present,
            end_earlier_session,
            begin_session,
            taken_over,
        }
    }

    /// The connection ended. True when its session ends with it and had QoS 2 state, which
    /// must go then.
    fn close(
        &mut self,
        client_id: &Arc<str>,
        number: u64,
        (persistent, used_exactly_once): (bool, bool),
    ) -> bool {
        if self.live.get(client_id).is_some_and(|(n, _)| *n == number) {
            self.live.remove(client_id);
        }
        if persistent {
            if used_exactly_once {
                self.exactly_once.insert(Arc::clone(client_id));
            }
            return false;
        }
        self.exactly_once.remove(client_id) || used_exactly_once
    }
}

/// Where a connection comes from.
pub(crate) struct Peer {
    pub(crate) address: SocketAddr,
    pub(crate) certificate_cn: Option<String>,
    pub(crate) anonymous: bool,
}

/// A reply owed to the client, in the order of the packets it answers.
struct Owed {
    reply: Outgoing,
    /// Until this completes the message is not durable; None for replies owed at once.
    durable: Option<oneshot::Receiver<()>>,
}

/// How a connection ends.
enum End {
    /// DISCONNECT: no will, unless an MQTT 5 client asked for it.
    Disconnected { with_will: bool },
    /// The network connection failed or the client broke the protocol: the will is stored.
    Lost(String),
    /// The server closes it (shutdown, taken over, refused publish): `will` says whether the
    /// will is stored.
    Closed {
        reason: DisconnectReason,
        will: bool,
    },
}

pub(crate) async fn serve<S>(stream: S, peer: Peer, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(4096);
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_connect(&mut reader, &mut buf, shared.max_packet_bytes),
    )
    .await;
    let connect = match first {
        Ok(Ok(connect)) => connect,
        Ok(Err(PacketError::Version(level))) => {
            // Answered as 3.1.1 does, which every MQTT client understands.
            let mut out = BytesMut::new();
            let refusal = Outgoing::ConnAck {
                session_present: false,
                refusal: Some(Refusal::ProtocolVersion),
                receive_maximum: 0,
                max_packet_bytes: 0,
            };
            packet::write(&mut out, Version::V311, refusal);
            let _ = writer.write_all(&out).await;
            let detail = format!("protocol level {level}");
            return shared
                .refuse_connection(peer.address, (Refusal::ProtocolVersion.code(), &detail));
        }
        Ok(Err(error)) => {
            return shared.refuse_connection(peer.address, ("malformed", &error.to_string()));
        }
        Err(_) => {
            return shared.refuse_connection(peer.address, ("timeout", "no CONNECT within 10 s"));
        }
    };
    let identity = shared
        .auth
        .identify(&connect, peer.certificate_cn.clone(), peer.anonymous)
        .await;
    let identity = match identity {
        Ok(identity) => identity,
        Err(refusal) => {
            let mut out = BytesMut::new();
            connack(&mut out, &connect, &shared, Some(refusal), false);
            let _ = writer.write_all(&out).await;
            let detail = format!("client id {:?}", connect.client_id);
            return shared.refuse_connection(peer.address, (refusal.code(), &detail));
        }
    };
    let client_id: Arc<str> = match connect.client_id.is_empty() {
        // MQTT lets the server name a client that gives no id.
        true => Arc::from(format!("{}-{}", identity.gateway, peer.address)),
        false => Arc::from(connect.client_id.as_str()),
    };
    let opened = match shared.sessions.lock() {
        Ok(mut sessions) => sessions.open(&client_id, &connect),
        Err(_) => return,
    };
    shared.metrics.connections.inc();
    tracing::debug!(client_id = %client_id, gateway = %identity.gateway, session_present = opened.session_present, "MQTT client connected");
    let mut connection = Connection {
        version: connect.version,
        client_id,
        identity,
        shared: Arc::clone(&shared),
        connection_bytes: Arc::new(Semaphore::new(shared.connection_inflight_bytes.max(1))),
        owed: VecDeque::new(),
        out: BytesMut::new(),
        used_exactly_once: false,
    };
    if opened.end_earlier_session {
        connection.end_session().await;
    }
    if opened.begin_session && !connection.begin_session().await {
        shared.metrics.connections.dec();
        return;
    }
    connack(
        &mut connection.out,
        &connect,
        &shared,
        None,
        opened.session_present,
    );
    let end = connection
        .run(
            &mut reader,
            &mut writer,
            buf,
            (connect.keep_alive, &opened.taken_over),
        )
        .await;
    connection
        .finish(
            &mut writer,
            end,
            connect.will,
            (&opened, connect.persistent),
        )
        .await;
    shared.metrics.connections.dec();
}

fn connack(
    out: &mut BytesMut,
    connect: &Connect,
    shared: &Shared,
    refusal: Option<Refusal>,
    session_present: bool,
) {
    let ack = Outgoing::ConnAck {
        session_present,
        refusal,
        receive_maximum: shared.receive_maximum,
        max_packet_bytes: u32::try_from(shared.max_packet_bytes).unwrap_or(u32::MAX),
    };
    packet::write(out, connect.version, ack);
}

async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Connect, PacketError> {
    loop {
        if let Some(connect) = packet::read_connect(buf, max_packet_bytes)? {
            return Ok(connect);
        }
        let read = reader.read_buf(buf).await;
        if read.is_err() || read.is_ok_and(|n| n == 0) {
            return Err(PacketError::Malformed("closed before CONNECT".to_owned()));
        }
    }
}

struct Connection {
    version: Version,
    client_id: Arc<str>,
    identity: Identity,
    shared: Arc<Shared>,
    /// This connection's own in-flight byte budget.
    connection_bytes: Arc<Semaphore>,
    owed: VecDeque<Owed>,
    out: BytesMut,
    used_exactly_once: bool,
}

impl Connection {
    async fn run<R, W>(
        &mut self,
        reader: &mut R,
        writer: &mut W,
        mut buf: BytesMut,
        (keep_alive, taken_over): (u16, &Notify),
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // MQTT: a client silent for one and a half keep-alive periods is gone.
        let silence = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut heard = Instant::now();
        let mut shutdown = self.shared.shutdown.clone();
        let receive_maximum = usize::from(self.shared.receive_maximum.max(1));
        loop {
            // Every packet already read, as far as the client's quota of unanswered ones goes.
            while self.owed.len() < receive_maximum {
                match packet::read(&mut buf, self.version, self.shared.max_packet_bytes) {
                    Ok(Some(incoming)) => {
                        if let Some(end) = self.handle(incoming).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return self.broken(error),
                }
            }
            if let Some(end) = self.send_owed(writer).await {
                return end;
            }
            let reading = self.owed.len() < receive_maximum;
            let deadline = silence.map(|s| heard + s);
            tokio::select! {
                biased;
                () = taken_over.notified() => {
                    return End::Closed { reason: DisconnectReason::SessionTakenOver, will: true };
                }
                _ = shutdown.wait_for(|stop| *stop) => {
                    return stopping();
                }
                durable = async { self.owed.front_mut().and_then(|o| o.durable.as_mut()).expect("guarded").await }, if self.front_waits() => {
                    if durable.is_err() {
                        // The pipeline stopped without making it durable: nothing to acknowledge.
                        return stopping();
                    }
                    if let Some(owed) = self.owed.front_mut() {
                        owed.durable = None;
                    }
                }
                read = reader.read_buf(&mut buf), if reading => match read {
                    Ok(0) => return End::Lost("the client closed the connection".to_owned()),
                    Ok(_) => heard = Instant::now(),
                    Err(error) => return End::Lost(error.to_string()),
                },
                () = sleep_until(deadline) => {
                    return End::Closed { reason: DisconnectReason::KeepAliveTimeout, will: true };
                }
            }
        }
    }

    fn front_waits(&self) -> bool {
        self.owed.front().is_some_and(|owed| owed.durable.is_some())
    }

    /// Writes the replies whose messages are durable, in order, up to the first that is not.
    async fn send_owed<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> Option<End> {
        while let Some(owed) = self.owed.front_mut() {
            if let Some(durable) = owed.durable.as_mut() {
                match durable.try_recv() {
                    Ok(()) => owed.durable = None,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => return Some(stopping()),
                }
            }
            if let Some(owed) = self.owed.pop_front() {
                packet::write(&mut self.out, self.version, owed.reply);
            }
        }
        self.flush(writer).await.err().map(End::Lost)
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, writer: &mut W) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&self.out)).await;
        self.out.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("the client took nothing for {WRITE_TIMEOUT:?}")),
        }
    }

    /// One packet; Some when it ends the connection.
    async fn handle(&mut self, incoming: Incoming) -> Option<End> {
        match incoming {
            Incoming::Publish(publish) => return self.publish(publish).await,
            Incoming::PubRel(packet_id) => {
                let key = self.packet_key(packet_id);
                let Some(durable) = self.hand_on(Content::Release(key), 0, true).await else {
                    return Some(stopping());
                };
                self.owe(Outgoing::PubComp { packet_id }, durable);
            }
            Incoming::Subscribe { packet_id, filters } => {
                tracing::debug!(client_id = %self.client_id, "SUBSCRIBE refused: the endpoint delivers nothing");
                self.owe(Outgoing::SubAck { packet_id, filters }, None);
            }
            Incoming::Unsubscribe { packet_id, filters } => {
                self.owe(Outgoing::UnsubAck { packet_id, filters }, None);
            }
            Incoming::PingReq => packet::write(&mut self.out, self.version, Outgoing::PingResp),
            Incoming::Disconnect { with_will } => return Some(End::Disconnected { with_will }),
            Incoming::Unexpected(name) => {
                return Some(self.protocol_error(&format!("{name} from a client")));
            }
        }
        None
    }

    async fn publish(&mut self, publish: Publish) -> Option<End> {
        if publish.topic_alias {
            self.count_refused("topic_alias");
            return Some(End::Closed {
                reason: DisconnectReason::TopicAliasInvalid,
                will: true,
            });
        }
        if publish.topic.is_empty() || publish.topic.contains(['+', '#']) {
            self.count_refused("topic_invalid");
            return Some(End::Closed {
                reason: DisconnectReason::TopicNameInvalid,
                will: true,
            });
        }
        let topic = match self.fleet_topic(&publish.topic) {
            Some(topic) => topic,
            None => return self.refuse(publish),
        };
        let exactly_once = (publish.qos == 2).then(|| self.packet_key(publish.packet_id));
        self.used_exactly_once |= exactly_once.is_some();
        let size = topic.len() + publish.payload.len();
        let content = Content::Publish {
            topic,
            payload: publish.payload,
            exactly_once,
        };
        let Some(durable) = self.hand_on(content, size, publish.qos > 0).await else {
            return Some(stopping());
        };
        let packet_id = publish.packet_id;
        match publish.qos {
            0 => {}
            1 => self.owe(
                Outgoing::PubAck {
                    packet_id,
                    refused: false,
                },
                durable,
            ),
            _ => self.owe(
                Outgoing::PubRec {
                    packet_id,
                    refused: false,
                },
                durable,
            ),
        }
        None
    }

    /// The fleet topic of a publish, None when it is another gateway's.
    fn fleet_topic(&self, topic: &str) -> Option<Bytes> {
        let qualified =
            self.shared
                .topics
                .qualify(topic, &self.identity.gateway, self.identity.relay);
        match qualified {
            Ok(topic) => Some(Bytes::from(topic.into_owned())),
            Err(foreign) => {
                tracing::warn!(client_id = %self.client_id, gateway = %self.identity.gateway, %topic, %foreign, "publish refused: not stored");
                None
            }
        }
    }

    /// A publish under another gateway's prefix: MQTT 5 says so in the acknowledgement,
    /// MQTT 3.1.1 has no way but to close the connection.
    fn refuse(&mut self, publish: Publish) -> Option<End> {
        self.count_refused("foreign_topic");
        let packet_id = publish.packet_id;
        match (self.version, publish.qos) {
            (Version::V311, _) => Some(End::Closed {
                reason: DisconnectReason::NotAuthorized,
                will: true,
            }),
            (Version::V5, 0) => None,
            (Version::V5, 1) => {
                self.owe(
                    Outgoing::PubAck {
                        packet_id,
                        refused: true,
                    },
                    None,
                );
                None
            }
            (Version::V5, _) => {
                self.owe(
                    Outgoing::PubRec {
                        packet_id,
                        refused: true,
                    },
                    None,
                );
                None
            }
        }
    }

    fn count_refused(&self, reason: &str) {
        self.shared
            .metrics
            .publishes_refused
            .get_or_create(&IngestMetrics::label("reason", reason))
            .inc();
    }

    fn packet_key(&self, packet_id: u16) -> PacketKey {
        PacketKey {
            client_id: Arc::clone(&self.client_id),
            packet_id,
        }
    }

    fn owe(&mut self, reply: Outgoing, durable: Option<oneshot::Receiver<()>>) {
        self.owed.push_back(Owed { reply, durable });
    }

    /// Takes a place in the budgets (waiting, and so reading nothing more, while there is
    /// none) and hands `content` to the pipeline. Outer None: ingest is stopping, the
    /// connection ends; inner: what completes once it is durable, if `acknowledged`.
    async fn hand_on(
        &mut self,
        content: Content,
        size: usize,
        acknowledged: bool,
    ) -> Option<Option<oneshot::Receiver<()>>> {
        let budget = (
            &self.connection_bytes,
            self.shared.connection_inflight_bytes,
        );
        let place = self.shared.budgets.admit(size, Some(budget)).await?;
        let (ack, durable) = match acknowledged {
            true => {
                let (done, durable) = oneshot::channel();
                (Ack::Endpoint(done), Some(durable))
            }
            false => (Ack::Nothing, None),
        };
        let received = Received {
            content,
            ack,
            received_at: Timestamp::now(),
            _place: place,
        };
        self.shared.to_batcher.send(received).ok()?;
        Some(durable)
    }

    /// Makes the new persistent session durable; false when ingest stopped meanwhile.
    async fn begin_session(&mut self) -> bool {
        let content = Content::BeginSession(Arc::clone(&self.client_id));
        match self.hand_on(content, 0, true).await {
            Some(Some(durable)) => durable.await.is_ok(),
            _ => false,
        }
    }

    async fn end_session(&mut self) {
        let content = Content::EndSession(Arc::clone(&self.client_id));
        let _ = self.hand_on(content, 0, false).await;
    }

    fn broken(&self, error: PacketError) -> End {
        let reason = match error {
            PacketError::TooLarge(_) => DisconnectReason::PacketTooLarge,
            _ => DisconnectReason::ProtocolError,
        };
        tracing::info!(client_id = %self.client_id, %error, "MQTT connection closed");
        End::Closed { reason, will: true }
    }

    fn protocol_error(&self, what: &str) -> End {
        tracing::info!(client_id = %self.client_id, what, "MQTT connection closed: protocol error");
        End::Closed {
            reason: DisconnectReason::ProtocolError,
            will: true,
        }
    }

    /// Sends what is owed and durable, says why (MQTT 5), stores the will when the connection
    /// ended uncleanly, and gives the session up.
    async fn finish<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        end: End,
        will: Option<Will>,
        (opened, persistent): (&Opened, bool),
    ) {
        let store_will = match &end {
            End::Disconnected { with_will } => *with_will,
            End::Lost(reason) => {
                tracing::debug!(client_id = %self.client_id, reason, "MQTT connection lost");
                true
            }
            End::Closed { reason, will } => {
                if self.version == Version::V5 {
                    packet::write(&mut self.out, self.version, Outgoing::Disconnect(*reason));
                }
                *will
            }
        };
        if !matches!(end, End::Lost(_)) {
            // A last, short chance for what is owed: a client that stopped reading would
            // otherwise hold the will and the session for another write timeout.
            let farewell = async {
                let _ = self.send_owed(writer).await;
                let _ = self.flush(writer).await;
                let _ = writer.shutdown().await;
            };
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await;
        }
        if let Some(will) = will.filter(|_| store_will) {
            self.store_will(will).await;
        }
        let used = (persistent, self.used_exactly_once);
        let end_session = self
            .shared
            .sessions
            .lock()
            .is_ok_and(|mut s| s.close(&self.client_id, opened.number, used));
        if end_session {
            self.end_session().await;
        }
    }

    async fn store_will(&mut self, will: Will) {
        let Some(topic) = self.fleet_topic(&will.topic) else {
            self.count_refused("foreign_topic");
            return;
        };
        self.shared.metrics.wills.inc();
        let size = topic.len() + will.payload.len();
        let content = Content::Publish {
            topic,
            payload: will.payload,
            exactly_once: None,
        };
        let _ = self.hand_on(content, size, false).await;
    }
}

/// Ingest is stopping: what was not handed on stays unacknowledged, with the client.
fn stopping() -> End {
    End::Closed {
        reason: DisconnectReason::ServerShuttingDown,
        will: false,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
