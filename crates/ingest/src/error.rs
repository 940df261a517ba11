//! What can stop ingest, and what can stop the embedded endpoint from starting.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::endpoint::EndpointError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("the WAL failed, so nothing more can be acknowledged: {0}")]
    Wal(#[from] twinlake_wal::WalError),
    #[error("storing rows: {0}")]
    Store(#[from] arrow_schema::ArrowError),
    #[error("acknowledging to the MQTT broker: {0}")]
    Ack(#[from] rumqttc::ClientError),
    #[error("an ingest task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The embedded MQTT endpoint could not start as configured.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("the MQTT endpoint cannot listen on {listen}: {source}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the MQTT endpoint would accept anyone on {listen}, which is not a loopback address: give \
         --mqtt-password-file or --mqtt-tls-client-ca, or allow anonymous clients explicitly \
         with --mqtt-allow-anonymous true"
    )]
    Unauthenticated { listen: SocketAddr },
    #[error("MQTT TLS: {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("MQTT TLS: {0}")]
    TlsConfig(String),
    #[error("MQTT {0}")]
    PasswordFile(#[from] twinlake_auth::PasswordFileError),
}
