//! `twinlake serve`: the embedded broker (or an external one), ingest, the WAL, SQL over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::watch;
use twinlake_ingest::{
    DEFAULT_MAX_PACKET_BYTES, EmbeddedBroker, IngestConfig, IngestMetrics, MqttEndpoint,
    restore_from_wal, run_ingest,
};
use twinlake_model::TopicRoot;
use twinlake_query::{QueryEngine, QueryLimits};
use twinlake_server::{HttpState, serve_http};
use twinlake_store::HotBuffer;
use twinlake_wal::{SyncMode, Wal, WalConfig};

/// Every setting of `serve`. Each is a flag, a `TWINLAKE_*` environment variable and a key of
/// the same name in `twinlake.toml`; a flag or variable wins over the file, the file over the
/// default.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct ServeOptions {
    /// A TOML file with any of these settings (keys as the flags, without `--`).
    #[arg(long, env = "TWINLAKE_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Where the WAL (and later the local table store) lives [default: ./twinlake-data].
    #[arg(long, env = "TWINLAKE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the embedded MQTT broker [default: 127.0.0.1:1883].
    #[arg(long, env = "TWINLAKE_MQTT_LISTEN")]
    pub(crate) mqtt_listen: Option<SocketAddr>,
    /// Use this external broker instead of the embedded one: mqtt://host:port or mqtts://host:port.
    #[arg(long, env = "TWINLAKE_MQTT_URL")]
    pub(crate) mqtt_url: Option<String>,
    /// CA certificate (PEM) of an mqtts:// broker.
    #[arg(long, env = "TWINLAKE_MQTT_CA_FILE")]
    pub(crate) mqtt_ca_file: Option<PathBuf>,
    #[arg(long, env = "TWINLAKE_MQTT_USERNAME")]
    pub(crate) mqtt_username: Option<String>,
    #[arg(long, env = "TWINLAKE_MQTT_PASSWORD", hide_env_values = true)]
    pub(crate) mqtt_password: Option<String>,
    /// MQTT client id; keep it stable, the broker keeps the session under it [default: twinlake].
    #[arg(long, env = "TWINLAKE_MQTT_CLIENT_ID")]
    pub(crate) mqtt_client_id: Option<String>,
    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "TWINLAKE_HTTP_LISTEN")]
    pub(crate) http_listen: Option<SocketAddr>,
    /// thin-edge's topic root (`mqtt.topic_root`) [default: te].
    #[arg(long, env = "TWINLAKE_TOPIC_ROOT")]
    pub(crate) topic_root: Option<String>,
    /// `always` fsyncs every group commit before acknowledging; `never` does not (unsafe) [default: always].
    #[arg(long, env = "TWINLAKE_WAL_SYNC")]
    pub(crate) wal_sync: Option<String>,
    /// How long a group commit waits for more messages, in milliseconds; at 0 a group is what
    /// arrives during the previous fsync [default: 0].
    #[arg(long, env = "TWINLAKE_WAL_COMMIT_WINDOW_MS")]
    pub(crate) wal_commit_window_ms: Option<u64>,
    /// Payloads above this size are stored in `rejected` with their first bytes [default: 262144].
    #[arg(long, env = "TWINLAKE_MAX_PAYLOAD_BYTES")]
    pub(crate) max_payload_bytes: Option<usize>,
    /// Messages received but not yet acknowledged before ingest stops reading [default: 20000].
    #[arg(long, env = "TWINLAKE_MAX_INFLIGHT_MESSAGES")]
    pub(crate) max_inflight_messages: Option<usize>,
    /// Memory for in-memory rows, in MiB; at the limit ingest stops reading [default: 2048].
    #[arg(long, env = "TWINLAKE_HOT_BUDGET_MB")]
    pub(crate) hot_budget_mb: Option<usize>,
    /// Wall time a query may run, in seconds [default: 60].
    #[arg(long, env = "TWINLAKE_QUERY_TIMEOUT_S")]
    pub(crate) query_timeout_s: Option<u64>,
    /// Memory a query may use for sorts, joins and aggregations, in MiB [default: 1024].
    #[arg(long, env = "TWINLAKE_QUERY_MEMORY_MB")]
    pub(crate) query_memory_mb: Option<usize>,
    /// Do not store messages on unknown channels in `rejected` (they are still counted).
    #[arg(long, env = "TWINLAKE_IGNORE_UNKNOWN_CHANNELS")]
    pub(crate) ignore_unknown_channels: Option<bool>,
}

macro_rules! prefer {
    ($first:ident, $second:ident, $($field:ident),*) => {
        ServeOptions { config: $first.config, $($field: $first.$field.or($second.$field)),* }
    };
}

impl ServeOptions {
    /// These options over those of the config file, if one is given.
    fn with_config_file(self) -> Result<Self, String> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file: ServeOptions =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(prefer!(
            self,
            file,
            data_dir,
            mqtt_listen,
            mqtt_url,
            mqtt_ca_file,
            mqtt_username,
            mqtt_password,
            mqtt_client_id,
            http_listen,
            topic_root,
            wal_sync,
            wal_commit_window_ms,
            max_payload_bytes,
            max_inflight_messages,
            hot_budget_mb,
            query_timeout_s,
            query_memory_mb,
            ignore_unknown_channels
        ))
    }
}

const MIB: usize = 1024 * 1024;

pub(crate) async fn serve(options: ServeOptions) -> Result<(), String> {
    let options = options.with_config_file()?;
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("twinlake-data"));
    let topic_root = TopicRoot::new(
        options
            .topic_root
            .clone()
            .unwrap_or_else(|| "te".to_owned()),
    )
    .map_err(|e| format!("--topic-root: {e}"))?;
    let sync = match options.wal_sync.as_deref().unwrap_or("always") {
        "always" => SyncMode::Always,
        "never" => SyncMode::Never,
        other => return Err(format!("--wal-sync {other:?}: use \"always\" or \"never\"")),
    };

    let mut registry = Registry::default();
    let metrics = IngestMetrics::register(&mut registry);
    let mut wal_config = WalConfig::new(data_dir.join("wal"));
    wal_config.sync = sync;
    wal_config.commit_window = options
        .wal_commit_window_ms
        .map_or(wal_config.commit_window, Duration::from_millis);
    let fsync_seconds = metrics.fsync_seconds.clone();
    wal_config.fsync_observer = Some(Arc::new(move |took: Duration| {
        fsync_seconds.observe(took.as_secs_f64())
    }));
    let (wal, replay) = Wal::open(wal_config).map_err(|e| e.to_string())?;
    let hot = Arc::new(HotBuffer::new());
    let (retained, rows) =
        restore_from_wal(&replay, &hot).map_err(|e| format!("restoring the WAL: {e}"))?;
    drop(replay);
    tracing::info!(
        rows,
        retained_topics = retained.len(),
        "rows restored from the WAL"
    );

    let client_id = options
        .mqtt_client_id
        .clone()
        .unwrap_or_else(|| "twinlake".to_owned());
    let mut endpoint = match &options.mqtt_url {
        Some(url) => MqttEndpoint::parse(url, client_id).map_err(|e| e.to_string())?,
        None => {
            let listen = options
                .mqtt_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883)));
            EmbeddedBroker::start(listen, DEFAULT_MAX_PACKET_BYTES).map_err(|e| e.to_string())?;
            MqttEndpoint::parse(&format!("mqtt://{listen}"), client_id)
                .map_err(|e| e.to_string())?
        }
    };
    endpoint.ca_file = options.mqtt_ca_file.clone();
    if options.mqtt_username.is_some() {
        endpoint.username = options.mqtt_username.clone();
        endpoint.password = options.mqtt_password.clone();
    }
    let mut ingest = IngestConfig::new(endpoint);
    ingest.topic_root = topic_root;
    if let Some(bytes) = options.max_payload_bytes {
        ingest.max_payload_bytes = bytes;
    }
    if let Some(count) = options.max_inflight_messages {
        ingest.max_inflight_messages = count.max(1);
    }
    if let Some(mb) = options.hot_budget_mb {
        ingest.hot_budget_bytes = mb * MIB;
    }
    ingest.ignore_unknown_channels = options.ignore_unknown_channels.unwrap_or(false);

    let limits = QueryLimits {
        timeout: Duration::from_secs(options.query_timeout_s.unwrap_or(60)),
        memory_bytes: options.query_memory_mb.unwrap_or(1024) * MIB,
    };
    let engine = Arc::new(QueryEngine::new(Arc::clone(&hot), limits).map_err(|e| e.to_string())?);
    let http_listen = options
        .http_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .map_err(|e| format!("HTTP listener on {http_listen}: {e}"))?;
    tracing::info!(%http_listen, "HTTP API listening: /api/v1/query, /health, /metrics");

    let (stop, stopped) = watch::channel(false);
    let wal = Arc::new(wal);
    let mut ingest_task = tokio::spawn(run_ingest(
        ingest,
        Arc::clone(&wal),
        hot,
        retained,
        metrics,
        stopped.clone(),
    ));
    let mut http_stopped = stopped.clone();
    let http_state = HttpState {
        engine,
        metrics: Arc::new(registry),
    };
    let http_task = tokio::spawn(serve_http(listener, http_state, async move {
        let _ = http_stopped.wait_for(|stop| *stop).await;
    }));

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: taking no new messages, committing and acknowledging the rest");
            let _ = stop.send(true);
            ingest_outcome(ingest_task.await)
        }
        ended = &mut ingest_task => {
            let _ = stop.send(true);
            ingest_outcome(ended).and(Err("ingest stopped unexpectedly".to_owned()))
        }
    };
    if let Ok(Err(error)) = http_task.await {
        tracing::warn!(%error, "HTTP server ended with an error");
    }
    wal.close();
    tracing::info!("stopped");
    outcome
}

fn ingest_outcome(
    ended: Result<Result<(), twinlake_ingest::IngestError>, tokio::task::JoinError>,
) -> Result<(), String> {
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(format!("ingest panicked: {error}")),
    }
}

async fn shutdown_signal() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
