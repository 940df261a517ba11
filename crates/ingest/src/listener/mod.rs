//! The embedded MQTT endpoint: MQTT 3.1.1 and 5 over TCP and TLS, where gateways and devices
//! publish and where a publish is acknowledged only once its WAL record is fsynced. It ingests;
//! it does not route: subscriptions are refused (every filter gets a failure code).
//!
//! Built on rumqttc's `mqttbytes` codecs under a tokio accept loop rather than on ntex-mqtt:
//! ntex-mqtt 8.2 keeps QoS 2 packet ids per connection and answers (3.1.1: closes the
//! connection on) a PUBREL for a packet id of an earlier connection, so a persistent session's
//! QoS 2 flow could not finish after a reconnect; here the QoS 2 state is the session's and
//! durable (see `qos2`).

mod connection;
mod identity;
mod packet;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use twinlake_model::FleetTopics;

use self::connection::{Peer, Sessions, Shared};
use self::identity::Authenticator;
use crate::error::{IngestError, ListenerError};
use crate::inflight::{Budgets, Received};
use crate::metrics::IngestMetrics;
use crate::qos2::Qos2State;

/// The endpoint's listeners, authentication and per-connection limits.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Plain MQTT; None for TLS only.
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsListener>,
    /// Users and their argon2 password hashes (see `twinlake passwd`).
    pub password_file: Option<PathBuf>,
    /// Let clients in without credentials or certificate (their gateway is their client id or
    /// username). None: only on a loopback listener without a password file.
    pub allow_anonymous: Option<bool>,
    /// Connections at once; more are closed as they come.
    pub max_connections: usize,
    /// Publishes a connection may have unacknowledged (MQTT 5 Receive Maximum; for 3.1.1
    /// the endpoint stops reading the connection at this many).
    pub receive_maximum: u16,
    /// Bytes of one connection's unacknowledged publishes.
    pub max_connection_inflight_bytes: usize,
}

impl ListenerConfig {
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen: Some(listen),
            tls: None,
            password_file: None,
            allow_anonymous: None,
            max_connections: 20_000,
            receive_maximum: 1_000,
            max_connection_inflight_bytes: 64 * 1024 * 1024,
        }
    }

    fn anonymous_on(&self, listen: SocketAddr) -> bool {
        self.allow_anonymous
            .unwrap_or(listen.ip().is_loopback() && self.password_file.is_none())
    }

    /// A listener beyond loopback must be able to tell who connects, unless the operator said
    /// otherwise.
    fn check_authentication(&self) -> Result<(), ListenerError> {
        let listeners = self.listen.iter().map(|l| (*l, false));
        let tls = self.tls.iter().map(|t| (t.listen, t.client_ca.is_some()));
        for (listen, certificates) in listeners.chain(tls) {
            let open = self.allow_anonymous == Some(true);
            let authenticated = self.password_file.is_some() || certificates;
            if !listen.ip().is_loopback() && !open && !authenticated {
                return Err(ListenerError::Unauthenticated { listen });
            }
        }
        Ok(())
    }
}

/// MQTT over TLS: the server's certificate and key, and the CA of client certificates.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by this CA are accepted, and their CN is the gateway;
    /// clients without one must give a password (or be anonymous where that is allowed).
    pub client_ca: Option<PathBuf>,
}

/// The running endpoint.
pub(crate) struct Listener {
    shared: Arc<Shared>,
    accepting: Vec<JoinHandle<()>>,
    slots: Arc<Semaphore>,
    max_connections: usize,
}

impl Listener {
    /// Binds every listener (failing loudly when one cannot be, or when its TLS files do not
    /// load) and starts accepting.
    pub(crate) async fn start(
        config: ListenerConfig,
        (topics, max_packet_bytes): (FleetTopics, usize),
        restored: &Qos2State,
        (to_batcher, budgets): (mpsc::UnboundedSender<Received>, Budgets),
        metrics: IngestMetrics,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, IngestError> {
        config.check_authentication()?;
        let auth = Authenticator::new(config.password_file.clone())?;
        let shared = Arc::new(Shared {
            topics,
            max_packet_bytes,
            receive_maximum: config.receive_maximum.max(1),
            connection_inflight_bytes: config.max_connection_inflight_bytes.max(1),
            auth,
            sessions: Mutex::new(Sessions::restored(restored)),
            to_batcher,
            budgets,
            metrics,
            shutdown,
        });
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut accepting = Vec::new();
        if let Some(listen) = config.listen {
            let listener = bind(listen).await?;
            tracing::info!(%listen, anonymous = config.anonymous_on(listen), "MQTT endpoint listening");
            let accept = Accept {
                listener,
                tls: None,
                anonymous: config.anonymous_on(listen),
                slots: Arc::clone(&slots),
                shared: Arc::clone(&shared),
            };
            accepting.push(tokio::spawn(accept.run()));
        }
        if let Some(tls) = &config.tls {
            let acceptor = tls_acceptor(tls)?;
            let listener = bind(tls.listen).await?;
            tracing::info!(listen = %tls.listen, client_certificates = tls.client_ca.is_some(), "MQTT endpoint listening (TLS)");
            let accept = Accept {
                listener,
                tls: Some(acceptor),
                anonymous: config.anonymous_on(tls.listen),
                slots: Arc::clone(&slots),
                shared: Arc::clone(&shared),
            };
            accepting.push(tokio::spawn(accept.run()));
        }
        if let Some(file) = shared.auth.password_file() {
            accepting.push(tokio::spawn(file.keep_current()));
        }
        shared.metrics.subscribed.set(1);
        Ok(Self {
            shared: Arc::clone(&shared),
            accepting,
            slots,
            max_connections: config.max_connections.max(1),
        })
    }

    /// Once shutting down: waits (a few seconds at most) for the connections to send what they
    /// owe and close.
    pub(crate) async fn finish(self) -> Result<(), IngestError> {
        self.shared.metrics.subscribed.set(0);
        for task in &self.accepting {
            task.abort();
        }
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let closed = tokio::time::timeout(Duration::from_secs(5), self.slots.acquire_many(all));
        if closed.await.is_err() {
            tracing::warn!("MQTT connections still open at shutdown are cut");
        }
        Ok(())
    }
}

async fn bind(listen: SocketAddr) -> Result<TcpListener, ListenerError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| ListenerError::Bind { listen, source })
}

struct Accept {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    anonymous: bool,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
}

impl Accept {
    async fn run(self) {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let (stream, address) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(%error, "accepting an MQTT connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                let detail = "at the connection limit (setting: mqtt max connections)";
                self.shared
                    .refuse_connection(address, ("max_connections", detail));
                continue;
            };
            let _ = stream.set_nodelay(true);
            bound_send_buffer(&stream);
            let shared = Arc::clone(&self.shared);
            let (tls, anonymous) = (self.tls.clone(), self.anonymous);
            tokio::spawn(async move {
                let _slot = slot;
                let peer = |certificate_cn| Peer {
                    address,
                    certificate_cn,
                    anonymous,
                };
                let Some(acceptor) = tls else {
                    return connection::serve(stream, peer(None), shared).await;
                };
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let cn = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|certificate| identity::common_name(certificate));
                        connection::serve(stream, peer(cn), shared).await;
                    }
                    Ok(Err(error)) => {
                        let detail = format!("TLS handshake failed: {error}");
                        shared.refuse_connection(address, ("tls", &detail));
                    }
                    Err(_) => {
                        shared.refuse_connection(address, ("tls", "no TLS handshake in 10 s"))
                    }
                }
            });
        }
    }
}

/// The kernel's send buffer of a connection. The endpoint only ever sends acknowledgements of a
/// few bytes, at most a receive maximum of them outstanding, so this is ample; left to grow, a
/// client that never reads could make the kernel hold megabytes of acknowledgements for it
/// before the endpoint stops reading from it (see `a_client_that_reads_nothing_stalls_only_itself`).
const SEND_BUFFER_BYTES: usize = 64 * 1024;

fn bound_send_buffer(stream: &tokio::net::TcpStream) {
    if let Err(error) = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER_BYTES) {
        tracing::debug!(%error, "could not bound an MQTT connection's send buffer");
    }
}

fn tls_acceptor(tls: &TlsListener) -> Result<TlsAcceptor, ListenerError> {
    let failed = |path: &Path, reason: String| ListenerError::Tls {
        path: path.to_owned(),
        reason,
    };
    let certificates =
        |path: &Path| twinlake_auth::pem::certificates(path).map_err(|e| failed(&e.path, e.reason));
    let chain = certificates(&tls.cert)?;
    let key = twinlake_auth::pem::private_key(&tls.key).map_err(|e| failed(&e.path, e.reason))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenerError::TlsConfig(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|e| failed(path, e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| failed(path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| failed(&tls.key, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
