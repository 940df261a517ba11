//! Where ingest connects: `mqtt://host:port` or `mqtts://host:port`, with credentials.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

/// An MQTT broker to subscribe to, and how to present ourselves to it.
#[derive(Debug, Clone)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://` only); without it the
    /// system's trust roots are used.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The MQTT client id. With a persistent session the broker keeps what arrives while
    /// Twinlake is away under this id, so it must be stable across restarts.
    pub client_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("MQTT URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("reading the MQTT CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MqttEndpoint {
    /// Parses `mqtt://host[:port]` (port 1883 by default) or `mqtts://host[:port]` (8883);
    /// user and password may be given in the URL too.
    pub fn parse(url: &str, client_id: impl Into<String>) -> Result<Self, EndpointError> {
        let invalid = |reason: &str| EndpointError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let (tls, default_port) = match parsed.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            _ => return Err(invalid("the scheme must be mqtt:// or mqtts://")),
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("no host"))?
            .to_owned();
        let username = Some(parsed.username().to_owned()).filter(|u| !u.is_empty());
        Ok(Self {
            host,
            port: parsed.port().unwrap_or(default_port),
            tls,
            ca_file: None,
            username,
            password: parsed.password().map(str::to_owned),
            client_id: client_id.into(),
        })
    }

    /// The client options for ingest: QoS 1 with manual acknowledgements and a persistent
    /// session, so that unacknowledged messages are redelivered after any reconnect.
    pub(crate) fn options(
        &self,
        max_packet_bytes: usize,
        ack_capacity: usize,
    ) -> Result<MqttOptions, EndpointError> {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(max_packet_bytes, max_packet_bytes)
            .set_request_channel_capacity(ack_capacity);
        if let Some(username) = &self.username {
            options.set_credentials(username, self.password.clone().unwrap_or_default());
        }
        if self.tls {
            // Another crate of the process may have installed one already; either will do.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let transport = match &self.ca_file {
                Some(path) => {
                    let ca = std::fs::read(path).map_err(|source| EndpointError::CaFile {
                        path: path.clone(),
                        source,
                    })?;
                    Transport::tls_with_config(TlsConfiguration::Simple {
                        ca,
                        alpn: None,
                        client_auth: None,
                    })
                }
                None => Transport::tls_with_default_config(),
            };
            options.set_transport(transport);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_tls_and_credentials() {
        let plain = MqttEndpoint::parse("mqtt://broker.local", "id").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls),
            ("broker.local", 1883, false)
        );
        let secure = MqttEndpoint::parse("mqtts://alice:s3cret@10.0.0.5:8884", "id").unwrap();
        assert_eq!((secure.port, secure.tls), (8884, true));
        assert_eq!(secure.username.as_deref(), Some("alice"));
        assert_eq!(secure.password.as_deref(), Some("s3cret"));
        assert!(MqttEndpoint::parse("http://x", "id").is_err());
        assert!(MqttEndpoint::parse("not a url", "id").is_err());
    }
}
