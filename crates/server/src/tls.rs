//! TLS for the query surfaces, from PEM files: a certificate or key that cannot be loaded is an
//! error at start, never a fallback to plaintext.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

pub use tokio_rustls::TlsAcceptor;

pub use twinlake_auth::pem::PemError as TlsError;

/// A server's TLS from its certificate chain and private key (PEM).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = twinlake_auth::pem::certificates(cert)?;
    let private = twinlake_auth::pem::private_key(key)?;
    let failed = |path: &Path, reason: String| TlsError {
        path: path.to_owned(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| failed(key, e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long a client has for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of a TCP listener after their TLS handshake, for `axum::serve`. Handshakes run
/// in tasks of their own, so that a slow or silent client holds up nobody else.
#[derive(Debug)]
pub(crate) struct TlsListener {
    local: std::net::SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (handshaken, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Once the server is gone, so is the listener.
                let accepted = tokio::select! {
                    () = handshaken.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (socket, address) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "HTTPS: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, handshaken) = (acceptor.clone(), handshaken.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let _ = handshaken.send((stream, address)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%address, %error, "HTTPS: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%address, "HTTPS: no TLS handshake in 10 s"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task ends only when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
