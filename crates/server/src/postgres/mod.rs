//! The PostgreSQL wire port, for Grafana's PostgreSQL data source, psql and BI tools.
//!
//! Built on datafusion-postgres (parsing, pg_catalog, SET/SHOW, Arrow to PostgreSQL
//! encoding) with what it leaves to its user: its own session, so pg_catalog never shows over
//! HTTP; a read-only gate before anything runs; queries run by the query engine under its
//! limits, their rows stopped by a cancel; SCRAM sign-in against the query password file;
//! TLS that fails the start when it cannot be loaded; a connection limit.

mod catalog;
mod cursors;
mod handlers;
mod login;
mod statements;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::DefaultServerParameterProvider;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::{ConnectionManager, RandomPidSecretKeyGenerator};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use twinlake_auth::PasswordFile;
use twinlake_query::QueryEngine;

use crate::postgres::cursors::Cursors;
use crate::postgres::handlers::{Connection, Port};
use crate::postgres::login::Gatekeeper;
use crate::postgres::statements::{EngineQueries, ReadOnlyGate};
use crate::tls::{TlsAcceptor, TlsError, tls_acceptor};

/// How the port is set up.
#[derive(Debug)]
pub struct PostgresSettings {
    /// None: anyone may sign in (allowed on loopback, or when the operator says so).
    pub users: Option<Arc<PasswordFile>>,
    /// Certificate chain and private key (PEM); when set, every connection must use TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connections at once; more are refused.
    pub max_connections: usize,
}

/// Why the port cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("PostgreSQL port {0}")]
    Tls(TlsError),
    #[error("PostgreSQL port session: {0}")]
    Session(String),
}

/// What the port tells Prometheus.
#[derive(Debug, Clone, Default)]
struct PostgresMetrics {
    connections: Gauge,
    refused: Counter,
}

impl PostgresMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let prefix = registry.sub_registry_with_prefix("twinlake");
        prefix.register(
            "pg_connections",
            "PostgreSQL connections open",
            metrics.connections.clone(),
        );
        prefix.register(
            "pg_connections_refused",
            "PostgreSQL connections refused at the connection limit",
            metrics.refused.clone(),
        );
        metrics
    }
}

/// The port, ready to accept connections.
pub struct PostgresPort {
    port: Arc<Port>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    metrics: PostgresMetrics,
}

impl std::fmt::Debug for PostgresPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresPort")
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl PostgresPort {
    pub async fn new(
        engine: Arc<QueryEngine>,
        settings: PostgresSettings,
        registry: &mut Registry,
    ) -> Result<Self, PostgresError> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key).map_err(PostgresError::Tls)?),
            None => None,
        };
        let session = catalog::postgres_session(&engine)
            .await
            .map_err(|e| PostgresError::Session(e.to_string()))?;
        let session = Arc::new(session);
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnlyGate),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
            Arc::new(Cursors {
                engine: Arc::clone(&engine),
            }),
            Arc::new(EngineQueries {
                engine: Arc::clone(&engine),
            }),
        ];
        let service = Arc::new(DfSessionService::new_with_hooks(
            Arc::clone(&session),
            hooks,
        ));
        let connections = Arc::new(ConnectionManager::new());
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.6 (Twinlake {})", env!("CARGO_PKG_VERSION"));
        parameters.time_zone = "UTC".to_owned();
        parameters.date_style = "ISO, MDY".to_owned();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        let gatekeeper = Gatekeeper {
            users: settings.users,
            require_tls: tls.is_some(),
            parameters,
            connections: Arc::clone(&connections),
            pids: RandomPidSecretKeyGenerator::default(),
        };
        let port = Port {
            engine,
            session,
            service,
            gatekeeper: Arc::new(gatekeeper),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        };
        Ok(Self {
            port: Arc::new(port),
            tls,
            max_connections: settings.max_connections.max(1),
            metrics: PostgresMetrics::register(registry),
        })
    }

    /// Accepts connections on `listener` until `shutdown` completes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (socket, address) = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "PostgreSQL port: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(turn) = Arc::clone(&limit).try_acquire_owned() else {
                self.metrics.refused.inc();
                tracing::warn!(%address, limit = self.max_connections, "PostgreSQL port: connection refused, at its connection limit (setting: pg max connections)");
                tokio::spawn(too_many_connections(socket));
                continue;
            };
            let _ = socket.set_nodelay(true);
            let handlers = Connection::new(&self.port);
            let (tls, open) = (self.tls.clone(), self.metrics.connections.clone());
            open.inc();
            tokio::spawn(async move {
                if let Err(error) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%address, %error, "PostgreSQL connection ended");
                }
                open.dec();
                drop(turn);
            });
        }
    }
}

/// Tells a client over the limit why, as PostgreSQL does (SQLSTATE 53300), and hangs up.
async fn too_many_connections(mut socket: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut fields = Vec::new();
    for (code, text) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        fields.push(code);
        fields.extend_from_slice(text.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let length = u32::try_from(fields.len() + 4).unwrap_or(u32::MAX);
    let mut message = vec![b'E'];
    message.extend_from_slice(&length.to_be_bytes());
    message.extend_from_slice(&fields);
    let write = socket.write_all(&message);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
}
