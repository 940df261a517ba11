//! The embedded MQTT broker, so that `twinlake serve` alone is enough to receive data.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A running rumqttd broker. It runs on its own threads for the life of the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("could not start the embedded MQTT broker on {listen}: {reason}")]
pub struct EmbeddedBrokerError {
    listen: SocketAddr,
    reason: String,
}

impl EmbeddedBroker {
    /// Starts a broker for MQTT 3.1.1 clients on `listen`. `max_payload_bytes` is the broker's
    /// own limit; keep it above Twinlake's payload limit so oversized messages still reach
    /// ingest and are recorded in `rejected`.
    pub fn start(
        listen: SocketAddr,
        max_payload_bytes: usize,
    ) -> Result<Self, EmbeddedBrokerError> {
        // Fail early and clearly when the port is taken; rumqttd would only log it.
        std::net::TcpListener::bind(listen).map_err(|e| EmbeddedBrokerError {
            listen,
            reason: e.to_string(),
        })?;
        let connections = rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload_bytes,
            max_inflight_count: 10_000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let server = rumqttd::ServerSettings {
            name: "mqtt".to_owned(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections,
        };
        let config = rumqttd::Config {
            router: rumqttd::RouterConfig {
                max_connections: 10_010,
                max_outgoing_packet_count: 10_000,
                max_segment_size: 100 * 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
            v4: Some(HashMap::from([("mqtt".to_owned(), server)])),
            ..Default::default()
        };
        let mut broker = rumqttd::Broker::new(config);
        std::thread::Builder::new()
            .name("twinlake-broker".to_owned())
            .spawn(move || {
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "the embedded MQTT broker stopped");
                }
            })
            .map_err(|e| EmbeddedBrokerError {
                listen,
                reason: e.to_string(),
            })?;
        tracing::info!(%listen, "embedded MQTT broker started");
        Ok(Self { listen })
    }
}
