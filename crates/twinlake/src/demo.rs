//! `serve --demo`: a small simulated fleet publishing to the embedded endpoint from inside the
//! server, so that a new user has data to query, chart and export with one command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::serve::ServeOptions;
use crate::simulate::{SimulateArgs, simulate};

/// Trucks in the demo fleet, each a thin-edge gateway on its own connection.
const TRUCKS: &str = "10";
/// Messages per second across the fleet: a reading of every truck every few seconds, little
/// enough to leave running for days (about 1.7 M messages a day).
const RATE: &str = "20";

/// The options a demo runs with: its own data directory unless one is given (the simulated
/// fleet must not land in a real one), and the embedded endpoint, which it publishes to
/// anonymously over loopback.
pub(crate) fn demo_options(mut options: ServeOptions) -> Result<ServeOptions, String> {
    if options.mqtt_url.is_some() {
        return Err(
            "--demo publishes to Twinlake's own MQTT endpoint: leave out --mqtt-url".to_owned(),
        );
    }
    if options.mqtt_password_file.is_some() {
        return Err(
            "--demo publishes without a password: leave out --mqtt-password-file".to_owned(),
        );
    }
    options
        .data_dir
        .get_or_insert_with(|| PathBuf::from("twinlake-demo"));
    Ok(options)
}

/// Publishes the demo fleet to the endpoint at `endpoint` until the server stops (the task is
/// aborted then), once the endpoint accepts connections.
pub(crate) async fn run_demo_fleet(endpoint: SocketAddr) {
    let loopback = SocketAddr::from(([127, 0, 0, 1], endpoint.port()));
    let address = if endpoint.ip().is_unspecified() {
        loopback
    } else {
        endpoint
    };
    if !endpoint_is_up(address).await {
        tracing::warn!(%address, "demo: the MQTT endpoint did not come up; no simulated fleet");
        return;
    }
    let url = format!("mqtt://{address}");
    let options = [
        "--gateways",
        TRUCKS,
        "--rate",
        RATE,
        "--duration",
        "0",
        "--mqtt-url",
        &url,
    ];
    let args = match SimulateArgs::parse_options(&options) {
        Ok(args) => args,
        Err(error) => {
            tracing::warn!(%error, "demo: the simulated fleet's options");
            return;
        }
    };
    tracing::info!(
        trucks = TRUCKS,
        rate = RATE,
        "demo: a simulated fleet publishes to the endpoint"
    );
    if let Err(error) = simulate(args).await {
        tracing::warn!(%error, "demo: the simulated fleet stopped");
    }
}

async fn endpoint_is_up(address: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
