//! The PostgreSQL wire port, for Grafana's PostgreSQL data source, psql and BI tools.
//!
//! Built on datafusion-postgres (parsing, pg_catalog, SET/SHOW, Arrow to PostgreSQL
//! encoding) with what it leaves to its user: its own session, so pg_catalog never shows over
//! HTTP; a read-only gate before anything runs; queries run by the query engine under its
//! limits, their rows stopped by a cancel; SCRAM sign-in against the query password file;
//! TLS that fails the start when it cannot be loaded; a connection limit.

mod catalog;
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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use twinlake_auth::PasswordFile;
use twinlake_query::QueryEngine;

use crate::postgres::handlers::{Connection, Port};
use crate::postgres::login::Gatekeeper;
use crate::postgres::statements::{EngineQueries, ReadOnlyGate};

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
    #[error("PostgreSQL port TLS ({path}): {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("PostgreSQL port session: {0}")]
    Session(String),
}

/// The port, ready to accept connections.
pub struct PostgresPort {
    port: Arc<Port>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
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
    ) -> Result<Self, PostgresError> {
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
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
                tracing::warn!(%address, limit = self.max_connections, "PostgreSQL port: connection refused, at its connection limit (setting: pg max connections)");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let handlers = Connection::new(&self.port);
            let tls = self.tls.clone();
            tokio::spawn(async move {
                if let Err(error) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!(%address, %error, "PostgreSQL connection ended");
                }
                drop(turn);
            });
        }
    }
}

fn tls_acceptor(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, PostgresError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let failed = |path: &PathBuf, reason: String| PostgresError::Tls {
        path: path.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(failed(cert, "no certificate in it".to_owned()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| failed(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| failed(key, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
