//! `twinlake serve`: the embedded MQTT endpoint (or an external broker), ingest, the WAL, SQL over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::watch;
use twinlake_ingest::{
    IngestConfig, IngestMetrics, ListenerConfig, MqttEndpoint, Source, TlsListener,
    restore_from_wal, run_ingest,
};
use twinlake_model::{FleetTopics, Gateway, TopicRoot};
use twinlake_query::{QueryEngine, QueryLimits};
use twinlake_server::{
    ExportMetrics, ExportSettings, Exports, HttpState, PostgresPort, PostgresSettings, serve_http,
    tls_acceptor,
};
use twinlake_store::{
    CompactionSettings, Lake, LakeConfig, LiveTables, PersistSettings, Persister, StoreMetrics,
};
use twinlake_wal::{RecordId, SyncMode, Wal, WalConfig, WalStats};

/// `twinlake serve`: the settings, and whether to run the demo fleet beside them.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) options: ServeOptions,
    /// Also run a simulated fleet of 10 trucks (each a thin-edge gateway with child devices,
    /// services, twin data, events and alarms) inside the server, publishing to its MQTT
    /// endpoint, with data kept in ./twinlake-demo unless --data-dir says otherwise.
    #[arg(long)]
    pub(crate) demo: bool,
}

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
    /// Where the WAL and, unless --store-url says otherwise, the lake live [default: ./twinlake-data].
    #[arg(long, env = "TWINLAKE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Address of the embedded MQTT endpoint (plain MQTT) [default: 127.0.0.1:1883].
    #[arg(long, env = "TWINLAKE_MQTT_LISTEN")]
    pub(crate) mqtt_listen: Option<SocketAddr>,
    /// Address of the embedded MQTT endpoint over TLS (needs --mqtt-tls-cert and --mqtt-tls-key).
    #[arg(long, env = "TWINLAKE_MQTTS_LISTEN")]
    pub(crate) mqtts_listen: Option<SocketAddr>,
    /// The endpoint's TLS certificate chain (PEM).
    #[arg(long, env = "TWINLAKE_MQTT_TLS_CERT")]
    pub(crate) mqtt_tls_cert: Option<PathBuf>,
    /// The endpoint's TLS private key (PEM).
    #[arg(long, env = "TWINLAKE_MQTT_TLS_KEY")]
    pub(crate) mqtt_tls_key: Option<PathBuf>,
    /// CA (PEM) of client certificates: a certificate it signed names its gateway by its CN.
    #[arg(long, env = "TWINLAKE_MQTT_TLS_CLIENT_CA")]
    pub(crate) mqtt_tls_client_ca: Option<PathBuf>,
    /// Users of the endpoint: `name:argon2-hash[:relay]` lines, as `twinlake passwd` writes them.
    #[arg(long, env = "TWINLAKE_MQTT_PASSWORD_FILE")]
    pub(crate) mqtt_password_file: Option<PathBuf>,
    /// Let clients in without credentials or certificate [default: only on loopback, and only
    /// without a password file].
    #[arg(long, env = "TWINLAKE_MQTT_ALLOW_ANONYMOUS")]
    pub(crate) mqtt_allow_anonymous: Option<bool>,
    /// Connections the endpoint keeps at once [default: 20000].
    #[arg(long, env = "TWINLAKE_MQTT_MAX_CONNECTIONS")]
    pub(crate) mqtt_max_connections: Option<usize>,
    /// Publishes one connection may have unacknowledged (MQTT 5 Receive Maximum) [default: 1000].
    #[arg(long, env = "TWINLAKE_MQTT_RECEIVE_MAXIMUM")]
    pub(crate) mqtt_receive_maximum: Option<u16>,
    /// Bytes of one connection's unacknowledged publishes, e.g. 64MiB [default: 64MiB].
    #[arg(long, env = "TWINLAKE_MQTT_MAX_CONNECTION_INFLIGHT_BYTES", value_parser = crate::units::parse_bytes)]
    #[serde(default, deserialize_with = "crate::units::deserialize_bytes")]
    pub(crate) mqtt_max_connection_inflight_bytes: Option<u64>,
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
    /// Users who may query, over HTTP (basic authentication) and the PostgreSQL port (SCRAM,
    /// or a cleartext password over TLS): `name:hash` lines, as `twinlake passwd [--scram]`
    /// writes them; read again when it changes. Without it anyone may query.
    #[arg(long, env = "TWINLAKE_QUERY_PASSWORD_FILE")]
    pub(crate) query_password_file: Option<PathBuf>,
    /// Answer queries without authentication on an address beyond loopback [default: false].
    #[arg(long, env = "TWINLAKE_HTTP_ALLOW_ANONYMOUS")]
    pub(crate) http_allow_anonymous: Option<bool>,
    /// The HTTP API's TLS certificate chain (PEM): with it the API speaks HTTPS only.
    #[arg(long, env = "TWINLAKE_HTTP_TLS_CERT")]
    pub(crate) http_tls_cert: Option<PathBuf>,
    /// The HTTP API's TLS private key (PEM).
    #[arg(long, env = "TWINLAKE_HTTP_TLS_KEY")]
    pub(crate) http_tls_key: Option<PathBuf>,
    /// Address of the PostgreSQL wire port (Grafana, psql, BI tools); `off` for none
    /// [default: 127.0.0.1:5433].
    #[arg(long, env = "TWINLAKE_PG_LISTEN")]
    pub(crate) pg_listen: Option<String>,
    /// The PostgreSQL port's TLS certificate chain (PEM); with it, every connection must use TLS.
    #[arg(long, env = "TWINLAKE_PG_TLS_CERT")]
    pub(crate) pg_tls_cert: Option<PathBuf>,
    /// The PostgreSQL port's TLS private key (PEM).
    #[arg(long, env = "TWINLAKE_PG_TLS_KEY")]
    pub(crate) pg_tls_key: Option<PathBuf>,
    /// Answer the PostgreSQL port without authentication beyond loopback [default: false].
    #[arg(long, env = "TWINLAKE_PG_ALLOW_ANONYMOUS")]
    pub(crate) pg_allow_anonymous: Option<bool>,
    /// PostgreSQL connections at once; more are refused [default: 64].
    #[arg(long, env = "TWINLAKE_PG_MAX_CONNECTIONS")]
    pub(crate) pg_max_connections: Option<usize>,
    /// thin-edge's topic root (`mqtt.topic_root`) [default: te].
    #[arg(long, env = "TWINLAKE_TOPIC_ROOT")]
    pub(crate) topic_root: Option<String>,
    /// First topic segment of what gateways forward: `<prefix>/<gateway>/<topic root>/...` [default: twinlake].
    #[arg(long, env = "TWINLAKE_FLEET_PREFIX")]
    pub(crate) fleet_prefix: Option<String>,
    /// The gateway plain `<topic root>/...` topics belong to [default: main].
    #[arg(long, env = "TWINLAKE_DEFAULT_GATEWAY")]
    pub(crate) default_gateway: Option<String>,
    /// `always` fsyncs every group commit before acknowledging; `never` does not (unsafe) [default: always].
    #[arg(long, env = "TWINLAKE_WAL_SYNC")]
    pub(crate) wal_sync: Option<String>,
    /// How long a group commit waits for more messages, in milliseconds; at 0 a group is what
    /// arrives during the previous fsync [default: 0].
    #[arg(long, env = "TWINLAKE_WAL_COMMIT_WINDOW_MS")]
    pub(crate) wal_commit_window_ms: Option<u64>,
    /// WAL segment size in MiB; segments are deleted whole once their rows are persisted [default: 64].
    #[arg(long, env = "TWINLAKE_WAL_SEGMENT_MB")]
    pub(crate) wal_segment_mb: Option<u64>,
    /// Payloads above this size are stored in `rejected` with their first bytes [default: 262144].
    #[arg(long, env = "TWINLAKE_MAX_PAYLOAD_BYTES")]
    pub(crate) max_payload_bytes: Option<usize>,
    /// A message that would become more rows than this is stored in `rejected` [default: 10000].
    #[arg(long, env = "TWINLAKE_MAX_ROWS_PER_MESSAGE")]
    pub(crate) max_rows_per_message: Option<usize>,
    /// A message whose rows would repeat more text than this (entity, type and `properties` on
    /// every row), e.g. 16MiB, is stored in `rejected` [default: 16MiB].
    #[arg(long, env = "TWINLAKE_MAX_MESSAGE_ROW_BYTES", value_parser = crate::units::parse_bytes)]
    #[serde(default, deserialize_with = "crate::units::deserialize_bytes")]
    pub(crate) max_message_row_bytes: Option<u64>,
    /// Messages received but not yet acknowledged before ingest stops reading [default: 20000].
    #[arg(long, env = "TWINLAKE_MAX_INFLIGHT_MESSAGES")]
    pub(crate) max_inflight_messages: Option<usize>,
    /// Bytes (topic and payload) of messages received but not yet acknowledged before ingest
    /// stops reading, e.g. 256MiB [default: 256MiB].
    #[arg(long, env = "TWINLAKE_MAX_INFLIGHT_BYTES", value_parser = crate::units::parse_bytes)]
    #[serde(default, deserialize_with = "crate::units::deserialize_bytes")]
    pub(crate) max_inflight_bytes: Option<u64>,
    /// Memory for in-memory rows, in MiB; at the limit ingest stops reading [default: 2048].
    #[arg(long, env = "TWINLAKE_HOT_BUDGET_MB")]
    pub(crate) hot_budget_mb: Option<usize>,
    /// Memory for the last payload of each retained topic (to recognise the broker's replays),
    /// e.g. 128MiB; past it, replays of further topics are stored again [default: 128MiB].
    #[arg(long, env = "TWINLAKE_MAX_RETAINED_BYTES", value_parser = crate::units::parse_bytes)]
    #[serde(default, deserialize_with = "crate::units::deserialize_bytes")]
    pub(crate) max_retained_bytes: Option<u64>,
    /// Entities (registered or waiting for their parent); a message from a further new entity
    /// is stored in `rejected` [default: 1000000].
    #[arg(long, env = "TWINLAKE_MAX_ENTITIES")]
    pub(crate) max_entities: Option<usize>,
    /// Levels an entity may be below the main device; a deeper registration is stored in
    /// `rejected` [default: 16].
    #[arg(long, env = "TWINLAKE_MAX_ENTITY_DEPTH")]
    pub(crate) max_entity_depth: Option<usize>,
    /// Measurement series (entity, type, series); a measurement starting a further series is
    /// stored in `rejected` [default: 2000000].
    #[arg(long, env = "TWINLAKE_MAX_SERIES")]
    pub(crate) max_series: Option<usize>,
    /// Wall time a query may run, in seconds [default: 60].
    #[arg(long, env = "TWINLAKE_QUERY_TIMEOUT_S")]
    pub(crate) query_timeout_s: Option<u64>,
    /// Memory a query may use for sorts, joins and aggregations, in MiB [default: 1024].
    #[arg(long, env = "TWINLAKE_QUERY_MEMORY_MB")]
    pub(crate) query_memory_mb: Option<usize>,
    /// A query result with more rows is stopped with an error [default: 5000000].
    #[arg(long, env = "TWINLAKE_QUERY_MAX_RESULT_ROWS")]
    pub(crate) query_max_result_rows: Option<usize>,
    /// A query result returning more Arrow data than this in all, e.g. 256MiB, is stopped with
    /// an error [default: a quarter of the query memory].
    #[arg(long, env = "TWINLAKE_QUERY_MAX_RESULT_BYTES", value_parser = crate::units::parse_bytes)]
    #[serde(default, deserialize_with = "crate::units::deserialize_bytes")]
    pub(crate) query_max_result_bytes: Option<u64>,
    /// Queries that run at once; more wait for their turn within their timeout [default: 8].
    #[arg(long, env = "TWINLAKE_QUERY_MAX_CONCURRENT")]
    pub(crate) query_max_concurrent: Option<usize>,
    /// Memory all queries share to keep the small tables' files decoded (alarms, events,
    /// health, twin and entity changes), in MiB; 0 reads them from Parquet each time
    /// [default: 128].
    #[arg(long, env = "TWINLAKE_QUERY_FILE_CACHE_MB")]
    pub(crate) query_file_cache_mb: Option<usize>,
    /// Memory all queries share to keep lake files whole as Parquet (`measurements`), in
    /// MiB: a file is read from the object store once, not by every query; a file larger
    /// than an eighth of this is read range by range; 0 turns it off [default: 1024].
    #[arg(long, env = "TWINLAKE_QUERY_PARQUET_CACHE_MB")]
    pub(crate) query_parquet_cache_mb: Option<usize>,
    /// Memory an export may use for its sorts, in MiB; beyond it they spill to
    /// <data-dir>/export-spill [default: 512].
    #[arg(long, env = "TWINLAKE_EXPORT_MEMORY_MB")]
    pub(crate) export_memory_mb: Option<usize>,
    /// Wall time an export may run, in seconds; then it stops and leaves no manifest. At most
    /// the vacuum grace less a minute [default: that].
    #[arg(long, env = "TWINLAKE_EXPORT_TIMEOUT_S")]
    pub(crate) export_timeout_s: Option<u64>,
    /// An export's file is closed and the next begun past this many rows [default: 2000000].
    #[arg(long, env = "TWINLAKE_EXPORT_ROWS_PER_FILE")]
    pub(crate) export_rows_per_file: Option<u64>,
    /// `--single-file` is refused for a selection of more rows [default: 10000000].
    #[arg(long, env = "TWINLAKE_EXPORT_SINGLE_FILE_MAX_ROWS")]
    pub(crate) export_single_file_max_rows: Option<u64>,
    /// Exports running at once; more are refused until one ends [default: 2].
    #[arg(long, env = "TWINLAKE_EXPORT_MAX_RUNNING")]
    pub(crate) export_max_running: Option<usize>,
    /// Directories exports to this machine's disk may go below (repeatable) [default: any,
    /// when the HTTP API is on loopback; none beyond it].
    #[arg(long, env = "TWINLAKE_EXPORT_ROOT", value_delimiter = ',')]
    pub(crate) export_root: Option<Vec<PathBuf>>,
    /// Do not store messages on unknown channels in `rejected` (they are still counted).
    #[arg(long, env = "TWINLAKE_IGNORE_UNKNOWN_CHANNELS")]
    pub(crate) ignore_unknown_channels: Option<bool>,
    /// Where the Delta Lake tables live: file:///path or s3://bucket/prefix [default: <data-dir>/lake].
    #[arg(long, env = "TWINLAKE_STORE_URL")]
    pub(crate) store_url: Option<String>,
    /// S3 endpoint, for S3-compatible servers (e.g. http://127.0.0.1:9000) [default: AWS].
    #[arg(long, env = "TWINLAKE_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1].
    #[arg(long, env = "TWINLAKE_S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// Allow plain HTTP to the S3 endpoint.
    #[arg(long, env = "TWINLAKE_S3_ALLOW_HTTP")]
    pub(crate) s3_allow_http: Option<bool>,
    /// Use virtual-hosted-style requests (bucket in the host name) instead of path style.
    #[arg(long, env = "TWINLAKE_S3_VIRTUAL_HOSTED_STYLE")]
    pub(crate) s3_virtual_hosted_style: Option<bool>,
    /// S3 access key [default: AWS_ACCESS_KEY_ID].
    #[arg(long, env = "TWINLAKE_S3_ACCESS_KEY_ID")]
    pub(crate) s3_access_key_id: Option<String>,
    /// S3 secret key [default: AWS_SECRET_ACCESS_KEY].
    #[arg(long, env = "TWINLAKE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub(crate) s3_secret_access_key: Option<String>,
    /// Persist a table once it holds this many rows in memory [default: 1000000].
    #[arg(long, env = "TWINLAKE_PERSIST_MAX_ROWS")]
    pub(crate) persist_max_rows: Option<usize>,
    /// Persist a table once its rows take this much memory, e.g. 128MiB [default: 128MiB].
    #[arg(long, env = "TWINLAKE_PERSIST_MAX_BYTES", value_parser = crate::units::parse_bytes)]
    #[serde(default, deserialize_with = "crate::units::deserialize_bytes")]
    pub(crate) persist_max_bytes: Option<u64>,
    /// Persist a table once its oldest row in memory is this old, e.g. 10m [default: 10m].
    #[arg(long, env = "TWINLAKE_PERSIST_MAX_AGE", value_parser = crate::units::parse_duration)]
    #[serde(default, deserialize_with = "crate::units::deserialize_duration")]
    pub(crate) persist_max_age: Option<Duration>,
    /// Compaction merges small files toward this size, in MiB [default: 256].
    #[arg(long, env = "TWINLAKE_COMPACT_TARGET_MB")]
    pub(crate) compact_target_mb: Option<u64>,
    /// Compaction merges at most this many rows at once: bounds its memory (about 360 bytes
    /// per row at the peak) [default: 4000000].
    #[arg(long, env = "TWINLAKE_COMPACT_MAX_INPUT_ROWS")]
    pub(crate) compact_max_input_rows: Option<u64>,
    /// A partition is compacted once it has this many small files [default: 4].
    #[arg(long, env = "TWINLAKE_COMPACT_MIN_FILES")]
    pub(crate) compact_min_files: Option<usize>,
    /// How often compaction, retention and vacuum run, in seconds [default: 600].
    #[arg(long, env = "TWINLAKE_COMPACT_INTERVAL_S")]
    pub(crate) compact_interval_s: Option<u64>,
    /// Unreferenced files are deleted once this old, in seconds [default: 3600].
    #[arg(long, env = "TWINLAKE_VACUUM_GRACE_S")]
    pub(crate) vacuum_grace_s: Option<u64>,
    /// Retention per table as TABLE=DAYS (repeatable; `none` keeps forever)
    /// [default: rejected=30, others none].
    #[arg(long, env = "TWINLAKE_RETENTION", value_delimiter = ',')]
    pub(crate) retention: Option<Vec<String>>,
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
            mqtts_listen,
            mqtt_tls_cert,
            mqtt_tls_key,
            mqtt_tls_client_ca,
            mqtt_password_file,
            mqtt_allow_anonymous,
            mqtt_max_connections,
            mqtt_receive_maximum,
            mqtt_max_connection_inflight_bytes,
            mqtt_url,
            mqtt_ca_file,
            mqtt_username,
            mqtt_password,
            mqtt_client_id,
            http_listen,
            query_password_file,
            http_allow_anonymous,
            http_tls_cert,
            http_tls_key,
            pg_listen,
            pg_tls_cert,
            pg_tls_key,
            pg_allow_anonymous,
            pg_max_connections,
            topic_root,
            fleet_prefix,
            default_gateway,
            wal_sync,
            wal_commit_window_ms,
            wal_segment_mb,
            max_payload_bytes,
            max_rows_per_message,
            max_message_row_bytes,
            max_inflight_messages,
            max_inflight_bytes,
            hot_budget_mb,
            max_retained_bytes,
            max_entities,
            max_entity_depth,
            max_series,
            query_timeout_s,
            query_memory_mb,
            query_max_result_rows,
            query_max_result_bytes,
            query_max_concurrent,
            query_file_cache_mb,
            query_parquet_cache_mb,
            export_memory_mb,
            export_timeout_s,
            export_rows_per_file,
            export_single_file_max_rows,
            export_max_running,
            export_root,
            ignore_unknown_channels,
            store_url,
            s3_endpoint,
            s3_region,
            s3_allow_http,
            s3_virtual_hosted_style,
            s3_access_key_id,
            s3_secret_access_key,
            persist_max_rows,
            persist_max_bytes,
            persist_max_age,
            compact_target_mb,
            compact_max_input_rows,
            compact_min_files,
            compact_interval_s,
            vacuum_grace_s,
            retention
        ))
    }
}

const MIB: usize = 1024 * 1024;

/// How much longer than a query or an export a replaced file is kept.
const VACUUM_MARGIN: Duration = Duration::from_secs(60);

/// The users who may query; refuses to answer anyone beyond loopback unless that is allowed
/// explicitly, on each query surface.
fn query_users(
    options: &ServeOptions,
    http_listen: SocketAddr,
    pg_listen: Option<SocketAddr>,
) -> Result<Option<Arc<twinlake_auth::PasswordFile>>, String> {
    let Some(path) = &options.query_password_file else {
        let surfaces = [
            (
                "HTTP API",
                Some(http_listen),
                options.http_allow_anonymous,
                "--http-allow-anonymous",
            ),
            (
                "PostgreSQL port",
                pg_listen,
                options.pg_allow_anonymous,
                "--pg-allow-anonymous",
            ),
        ];
        for (surface, listen, allowed, flag) in surfaces {
            let Some(listen) = listen else { continue };
            if !listen.ip().is_loopback() && allowed != Some(true) {
                return Err(format!(
                    "the {surface} would answer anyone on {listen}, which is not a loopback \
                     address: give --query-password-file, or allow it explicitly with {flag} true"
                ));
            }
        }
        return Ok(None);
    };
    let users = twinlake_auth::PasswordFile::open(path.clone(), "query")
        .map_err(|e| format!("query {e}"))?;
    Ok(Some(Arc::new(users)))
}

/// A certificate and its key, given together or not at all.
fn tls_files(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    flags: &str,
) -> Result<Option<(PathBuf, PathBuf)>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        (None, None) => Ok(None),
        _ => Err(format!("{flags}-cert and {flags}-key go together")),
    }
}

/// The PostgreSQL port's address; None when it is off.
fn postgres_listen(options: &ServeOptions) -> Result<Option<SocketAddr>, String> {
    match options.pg_listen.as_deref() {
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 5433)))),
        Some("off" | "") => Ok(None),
        Some(listen) => listen
            .parse()
            .map(Some)
            .map_err(|e| format!("--pg-listen {listen:?}: {e}")),
    }
}

/// The PostgreSQL port, bound: a certificate that cannot be loaded stops the start.
async fn start_postgres(
    options: &ServeOptions,
    listen: SocketAddr,
    engine: &Arc<QueryEngine>,
    users: Option<Arc<twinlake_auth::PasswordFile>>,
    registry: &mut Registry,
) -> Result<(PostgresPort, tokio::net::TcpListener), String> {
    let tls = tls_files(&options.pg_tls_cert, &options.pg_tls_key, "--pg-tls")?;
    let encrypted = tls.is_some();
    let settings = PostgresSettings {
        users,
        tls,
        max_connections: options.pg_max_connections.unwrap_or(64),
    };
    let port = PostgresPort::new(Arc::clone(engine), settings, registry)
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("PostgreSQL listener on {listen}: {e}"))?;
    tracing::info!(%listen, tls = encrypted, "PostgreSQL port listening");
    Ok((port, listener))
}

/// deltalake 1.x ignores a DynamoDB locking provider (it only logs an error), so a setting that
/// asks for one would promise a safety nobody gives: stop rather than start without it.
fn refuse_locking_provider() -> Result<(), String> {
    for name in ["TWINLAKE_S3_LOCKING_PROVIDER", "AWS_S3_LOCKING_PROVIDER"] {
        if std::env::var_os(name).is_some() {
            return Err(format!(
                "{name} is set, but Delta Lake locking providers are not supported (deltalake 1.x \
                 dropped its DynamoDB log store): unset it and use a store that honours \
                 conditional writes (If-None-Match), see docs/storage.md"
            ));
        }
    }
    Ok(())
}

impl ServeOptions {
    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("twinlake-data"))
    }

    fn lake_config(&self) -> Result<LakeConfig, String> {
        let Some(url) = &self.store_url else {
            return LakeConfig::local(&self.data_dir().join("lake")).map_err(|e| e.to_string());
        };
        let url = url::Url::parse(url).map_err(|e| format!("--store-url {url}: {e}"))?;
        refuse_locking_provider()?;
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|()| format!("--store-url {url}: not a local path"))?;
            return LakeConfig::local(&path).map_err(|e| e.to_string());
        }
        let storage_options = self.s3_options();
        Ok(LakeConfig {
            url,
            storage_options,
        })
    }

    /// The S3 settings given, as object_store options: the lake's, and those of exports to S3.
    fn s3_options(&self) -> std::collections::HashMap<String, String> {
        let mut options = std::collections::HashMap::new();
        let mut set = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                options.insert(key.to_owned(), value);
            }
        };
        set("aws_endpoint", self.s3_endpoint.clone());
        set("aws_region", self.s3_region.clone());
        set("aws_allow_http", self.s3_allow_http.map(|b| b.to_string()));
        set(
            "aws_virtual_hosted_style_request",
            self.s3_virtual_hosted_style.map(|b| b.to_string()),
        );
        set("aws_access_key_id", self.s3_access_key_id.clone());
        set("aws_secret_access_key", self.s3_secret_access_key.clone());
        options
    }

    fn persist_settings(&self) -> PersistSettings {
        let defaults = PersistSettings::default();
        PersistSettings {
            max_rows: self.persist_max_rows.unwrap_or(defaults.max_rows).max(1),
            max_bytes: self
                .persist_max_bytes
                .map_or(defaults.max_bytes, |bytes| bytes as usize),
            max_age: self.persist_max_age.unwrap_or(defaults.max_age),
            parquet: defaults.parquet,
        }
    }

    /// The embedded endpoint, or the external broker of --mqtt-url.
    fn source(&self) -> Result<Source, String> {
        let Some(url) = &self.mqtt_url else {
            return self.listener().map(Source::Listener);
        };
        let client_id = self.mqtt_client_id.clone();
        let client_id = client_id.unwrap_or_else(|| "twinlake".to_owned());
        let mut endpoint = MqttEndpoint::parse(url, client_id).map_err(|e| e.to_string())?;
        endpoint.ca_file = self.mqtt_ca_file.clone();
        if self.mqtt_username.is_some() {
            endpoint.username = self.mqtt_username.clone();
            endpoint.password = self.mqtt_password.clone();
        }
        Ok(Source::Broker(endpoint))
    }

    fn listener(&self) -> Result<ListenerConfig, String> {
        let plain = self
            .mqtt_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 1883)));
        let mut listener = ListenerConfig::new(plain);
        listener.tls = match (self.mqtts_listen, &self.mqtt_tls_cert, &self.mqtt_tls_key) {
            (None, None, None) => None,
            (Some(listen), Some(cert), Some(key)) => Some(TlsListener {
                listen,
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.mqtt_tls_client_ca.clone(),
            }),
            _ => {
                return Err(
                    "MQTT over TLS needs all of --mqtts-listen, --mqtt-tls-cert and --mqtt-tls-key"
                        .to_owned(),
                );
            }
        };
        listener.password_file = self.mqtt_password_file.clone();
        listener.allow_anonymous = self.mqtt_allow_anonymous;
        if let Some(count) = self.mqtt_max_connections {
            listener.max_connections = count.max(1);
        }
        if let Some(count) = self.mqtt_receive_maximum {
            listener.receive_maximum = count.max(1);
        }
        if let Some(bytes) = self.mqtt_max_connection_inflight_bytes {
            listener.max_connection_inflight_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        Ok(listener)
    }

    fn vacuum_grace(&self) -> Duration {
        self.vacuum_grace_s.map_or(
            CompactionSettings::default().vacuum_grace,
            Duration::from_secs,
        )
    }

    /// An export reads the files of its snapshot to its end: unless set, its time limit is what
    /// the vacuum grace leaves (a minute less).
    fn export_timeout(&self) -> Duration {
        self.export_timeout_s.map_or_else(
            || self.vacuum_grace().saturating_sub(VACUUM_MARGIN),
            Duration::from_secs,
        )
    }

    fn export_settings(&self, lake: LakeConfig, http_listen: SocketAddr) -> ExportSettings {
        let mut settings = ExportSettings::new(
            lake,
            self.s3_options(),
            self.data_dir().join("export-spill"),
        );
        if let Some(mb) = self.export_memory_mb {
            settings.memory_bytes = mb.max(16) * MIB;
        }
        settings.timeout = self.export_timeout();
        if let Some(rows) = self.export_rows_per_file {
            settings.rows_per_file = rows.max(1);
        }
        if let Some(rows) = self.export_single_file_max_rows {
            settings.single_file_max_rows = rows;
        }
        if let Some(running) = self.export_max_running {
            settings.max_running = running.max(1);
        }
        // Beyond loopback a query user is not someone at this machine: where the server may
        // write is for the operator to say.
        settings.local_roots = match &self.export_root {
            Some(roots) => Some(
                roots
                    .iter()
                    .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
                    .collect(),
            ),
            None if http_listen.ip().is_loopback() => None,
            None => Some(Vec::new()),
        };
        settings
    }

    fn query_timeout(&self) -> Duration {
        Duration::from_secs(self.query_timeout_s.unwrap_or(60))
    }

    fn compaction_settings(&self) -> Result<CompactionSettings, String> {
        let defaults = CompactionSettings::default();
        let mb = |value: Option<u64>, default: u64| value.map_or(default, |mb| mb * MIB as u64);
        let mut retention_days = defaults.retention_days;
        for entry in self.retention.iter().flatten() {
            let (table, days) = entry
                .split_once('=')
                .ok_or_else(|| format!("--retention {entry}: use TABLE=DAYS"))?;
            let table = twinlake_model::Table::from_name(table.trim())
                .ok_or_else(|| format!("--retention {entry}: no table {table}"))?;
            let days = match days.trim() {
                "none" => None,
                days => Some(
                    days.trim_end_matches('d')
                        .parse()
                        .map_err(|e| format!("--retention {entry}: {e}"))?,
                ),
            };
            for (t, d) in &mut retention_days {
                if *t == table {
                    *d = days;
                }
            }
        }
        let vacuum_grace = self.vacuum_grace();
        // A query reads the files of the snapshot it started with for up to its timeout (an
        // export, for up to its own); a file compaction removed meanwhile must outlive that. (A
        // persist's uploads are safe anyway: vacuum waits for the table lock that a persist
        // holds from upload to commit.)
        let least = self.query_timeout().max(self.export_timeout()) + VACUUM_MARGIN;
        if vacuum_grace < least {
            return Err(format!(
                "--vacuum-grace-s {}: at least the query and export timeouts plus a minute ({} s), \
                 or vacuum could delete files a running query or export still reads",
                vacuum_grace.as_secs(),
                least.as_secs()
            ));
        }
        Ok(CompactionSettings {
            target_file_bytes: mb(self.compact_target_mb, defaults.target_file_bytes),
            min_files: self.compact_min_files.unwrap_or(defaults.min_files),
            max_input_rows: self
                .compact_max_input_rows
                .unwrap_or(defaults.max_input_rows)
                .max(1),
            vacuum_grace,
            retention_days,
            interval: self
                .compact_interval_s
                .map_or(defaults.interval, Duration::from_secs)
                .max(Duration::from_secs(1)),
        })
    }
}

/// `twinlake compact`: compaction, retention and vacuum of the lake now. Run it while `serve`
/// is stopped (a running server keeps doing the same every --compact-interval-s).
pub(crate) async fn compact(options: ServeOptions) -> Result<(), String> {
    let options = options.with_config_file()?;
    let settings = options.compaction_settings()?;
    let lake = Lake::open(options.lake_config()?)
        .await
        .map_err(|e| e.to_string())?;
    let live = Arc::new(LiveTables::new());
    let mut registry = Registry::default();
    let (persister, _) = Persister::start(
        Arc::new(lake),
        live,
        options.persist_settings(),
        StoreMetrics::new(&mut registry),
    )
    .await
    .map_err(|e| e.to_string())?;
    let report = persister
        .upkeep(&settings)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "merged {} files into {}, dropped {} duplicate rows, expired {} files, vacuumed {} files",
        report.files_merged,
        report.files_written,
        report.duplicates_dropped,
        report.files_expired,
        report.files_vacuumed
    );
    Ok(())
}

/// Seeds the `latest` cache from the persisted history; until it is done, `latest` holds
/// only series that reported since start.
async fn load_latest(engine: Arc<QueryEngine>) {
    let began = std::time::Instant::now();
    match engine.load_latest_from_history().await {
        Ok(series) => tracing::info!(
            series,
            seconds = began.elapsed().as_secs_f64(),
            "latest values loaded from history"
        ),
        Err(error) => {
            tracing::warn!(%error, "latest values not loaded from history: `latest` shows only new readings")
        }
    }
}

/// Where gateways' topics are, from `--topic-root`, `--fleet-prefix` and `--default-gateway`.
fn fleet_topics(options: &ServeOptions) -> Result<FleetTopics, String> {
    let defaults = FleetTopics::default();
    let root = match &options.topic_root {
        Some(root) => TopicRoot::new(root.clone()).map_err(|e| format!("--topic-root: {e}"))?,
        None => defaults.root().clone(),
    };
    let gateway = match &options.default_gateway {
        Some(id) => Gateway::parse(id).map_err(|e| format!("--default-gateway: {e}"))?,
        None => defaults.default_gateway().clone(),
    };
    let prefix = options.fleet_prefix.as_deref().unwrap_or(defaults.prefix());
    FleetTopics::new(prefix, root, gateway).map_err(|e| format!("--fleet-prefix: {e}"))
}

pub(crate) async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut options = args.options.with_config_file()?;
    if args.demo {
        options = crate::demo::demo_options(options)?;
    }
    let data_dir = options.data_dir();
    let topics = fleet_topics(&options)?;
    let sync = match options.wal_sync.as_deref().unwrap_or("always") {
        "always" => SyncMode::Always,
        "never" => SyncMode::Never,
        other => return Err(format!("--wal-sync {other:?}: use \"always\" or \"never\"")),
    };

    let mut registry = Registry::default();
    let metrics = IngestMetrics::register(&mut registry);
    let mut wal_config = WalConfig::new(data_dir.join("wal"));
    wal_config.sync = sync;
    if let Some(mb) = options.wal_segment_mb {
        wal_config.segment_bytes = mb.max(1) * MIB as u64;
    }
    wal_config.commit_window = options
        .wal_commit_window_ms
        .map_or(wal_config.commit_window, Duration::from_millis);
    let fsync_seconds = metrics.fsync_seconds.clone();
    wal_config.fsync_observer = Some(Arc::new(move |took: Duration| {
        fsync_seconds.observe(took.as_secs_f64())
    }));
    let disk_full = metrics.wal_disk_full.clone();
    wal_config.disk_full_observer = Some(Arc::new(move |full: bool| {
        disk_full.set(i64::from(full));
    }));
    let compaction = options.compaction_settings()?;
    let lake_config = options.lake_config()?;
    tracing::info!(lake = %lake_config.describe(), "opening the lake");
    let lake = Arc::new(
        Lake::open(lake_config.clone())
            .await
            .map_err(|e| format!("opening the lake: {e}"))?,
    );
    let hot = Arc::new(LiveTables::new());
    let (persister, persisted) = Persister::start(
        Arc::clone(&lake),
        Arc::clone(&hot),
        options.persist_settings(),
        StoreMetrics::new(&mut registry),
    )
    .await
    .map_err(|e| format!("loading the lake: {e}"))?;
    let persister = Arc::new(persister);
    wal_config.ids_after = persisted
        .iter()
        .filter_map(|(_, through)| *through)
        .max()
        .map(RecordId);
    let (wal, replay) = Wal::open(wal_config).map_err(|e| e.to_string())?;
    let restored = restore_from_wal(&replay, &hot, &persisted)
        .map_err(|e| format!("restoring the WAL: {e}"))?;
    drop(replay);
    tracing::info!(
        rows = restored.rows,
        retained_topics = restored.retained.len(),
        "rows not yet persisted restored from the WAL"
    );

    let mut ingest = IngestConfig::new(options.source()?);
    ingest.topics = topics;
    if let Some(bytes) = options.max_payload_bytes {
        ingest.max_payload_bytes = bytes;
    }
    if let Some(rows) = options.max_rows_per_message {
        ingest.max_rows_per_message = rows.max(1);
    }
    if let Some(bytes) = options.max_message_row_bytes {
        // Above this a single message could fill a text column past Arrow's 2 GiB offsets.
        const MOST: u64 = 512 * MIB as u64;
        if bytes > MOST {
            return Err(format!(
                "--max-message-row-bytes {bytes}: at most 512MiB (one message's rows must stay far below Arrow's 2 GiB per column)"
            ));
        }
        ingest.max_message_row_bytes = bytes as usize;
    }
    if let Some(count) = options.max_inflight_messages {
        ingest.max_inflight_messages = count.max(1);
    }
    if let Some(bytes) = options.max_inflight_bytes {
        ingest.max_inflight_bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1);
    }
    if let Some(mb) = options.hot_budget_mb {
        ingest.hot_budget_bytes = mb * MIB;
    }
    let growth = &mut ingest.growth;
    growth.max_entities = options.max_entities.unwrap_or(growth.max_entities);
    growth.max_entity_depth = options.max_entity_depth.unwrap_or(growth.max_entity_depth);
    growth.max_series = options.max_series.unwrap_or(growth.max_series);
    if let Some(bytes) = options.max_retained_bytes {
        ingest.max_retained_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    ingest.ignore_unknown_channels = options.ignore_unknown_channels.unwrap_or(false);

    let defaults = QueryLimits::default();
    let memory_bytes = options.query_memory_mb.unwrap_or(1024) * MIB;
    let limits = QueryLimits {
        timeout: options.query_timeout(),
        memory_bytes,
        max_result_rows: options
            .query_max_result_rows
            .unwrap_or(defaults.max_result_rows),
        max_result_bytes: options
            .query_max_result_bytes
            .map_or(memory_bytes / 4, |bytes| {
                usize::try_from(bytes).unwrap_or(usize::MAX)
            }),
        max_concurrent: options
            .query_max_concurrent
            .unwrap_or(defaults.max_concurrent)
            .max(1),
        file_cache_bytes: options
            .query_file_cache_mb
            .map_or(defaults.file_cache_bytes, |mb| mb * MIB),
        parquet_cache_bytes: options
            .query_parquet_cache_mb
            .map_or(defaults.parquet_cache_bytes, |mb| mb * MIB),
    };
    let engine = Arc::new(
        QueryEngine::new(Arc::clone(&hot), lake.store(), limits)
            .await
            .map_err(|e| e.to_string())?,
    );
    let folding = std::time::Instant::now();
    let entities = engine
        .entity_history()
        .await
        .map_err(|e| format!("reading the entity hierarchy: {e}"))?;
    tracing::info!(
        entities = entities.known(),
        seconds = folding.elapsed().as_secs_f64(),
        "hierarchy folded from entity_changes"
    );
    tokio::spawn(load_latest(Arc::clone(&engine)));
    engine.register_metrics(&mut registry);
    let http_listen = options
        .http_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let pg_listen = postgres_listen(&options)?;
    let users = query_users(&options, http_listen, pg_listen)?;
    if let Some(users) = &users {
        tokio::spawn(Arc::clone(users).keep_current());
    }
    let http_tls = tls_files(&options.http_tls_cert, &options.http_tls_key, "--http-tls")?
        .map(|(cert, key)| tls_acceptor(&cert, &key).map_err(|e| format!("HTTP API {e}")))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(http_listen)
        .await
        .map_err(|e| format!("HTTP listener on {http_listen}: {e}"))?;
    let https = http_tls.is_some();
    tracing::info!(%http_listen, https, "HTTP API listening: /api/v1/query, /health, /metrics");
    let postgres = match pg_listen {
        Some(listen) => {
            let port = start_postgres(&options, listen, &engine, users.clone(), &mut registry);
            Some(port.await?)
        }
        None => None,
    };

    let (stop, stopped) = watch::channel(false);
    let wal = Arc::new(wal);
    let persist_task = tokio::spawn(Arc::clone(&persister).run(stopped.clone()));
    let upkeep_task = tokio::spawn(Arc::clone(&persister).run_upkeep(compaction, stopped.clone()));
    let mut ingest_task = tokio::spawn(run_ingest(
        ingest,
        Arc::clone(&wal),
        hot,
        (restored.retained, restored.qos2),
        entities,
        metrics,
        stopped.clone(),
    ));
    let demo_task = match args.demo {
        true => options
            .listener()?
            .listen
            .map(|endpoint| tokio::spawn(crate::demo::run_demo_fleet(endpoint))),
        false => None,
    };
    let postgres_task = postgres.map(|(port, listener)| {
        let mut pg_stopped = stopped.clone();
        tokio::spawn(port.serve(listener, async move {
            let _ = pg_stopped.wait_for(|stop| *stop).await;
        }))
    });
    let mut http_stopped = stopped.clone();
    let exports = Exports::new(
        Arc::clone(&engine),
        options.export_settings(lake_config, http_listen),
        ExportMetrics::register(&mut registry),
    );
    let http_state = HttpState {
        engine,
        metrics: Arc::new(registry),
        users,
        exports: Arc::new(exports),
    };
    let http_task = tokio::spawn(serve_http(listener, http_tls, http_state, async move {
        let _ = http_stopped.wait_for(|stop| *stop).await;
    }));

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down: taking no new messages, committing and acknowledging the rest");
            if let Some(demo) = &demo_task {
                demo.abort();
            }
            let _ = stop.send(true);
            ingest_outcome(finish_ingest(ingest_task, &wal).await)
        }
        ended = &mut ingest_task => {
            let _ = stop.send(true);
            ingest_outcome(ended).and(Err("ingest stopped unexpectedly".to_owned()))
        }
    };
    if let Ok(Err(error)) = http_task.await {
        tracing::warn!(%error, "HTTP server ended with an error");
    }
    if let Some(task) = postgres_task {
        let _ = task.await;
    }
    // Rows not persisted stay in the WAL and are replayed at the next start.
    let _ = persist_task.await;
    let _ = upkeep_task.await;
    wal.close();
    tracing::info!("stopped");
    outcome
}

/// Waits for ingest to commit and acknowledge what it holds. A record waiting for disk space
/// would hold that up until space returns, so while the disk is full the WAL is closed: the
/// waiting messages stay unacknowledged, and the broker keeps them.
async fn finish_ingest(
    mut ingest_task: tokio::task::JoinHandle<Result<(), twinlake_ingest::IngestError>>,
    wal: &Arc<Wal>,
) -> Result<Result<(), twinlake_ingest::IngestError>, tokio::task::JoinError> {
    loop {
        tokio::select! {
            ended = &mut ingest_task => return ended,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if WalStats::get(&wal.stats().disk_full) == 1 {
                    tracing::warn!("the WAL disk is full: stopping without the messages that wait for it (the broker keeps them)");
                    let wal = Arc::clone(wal);
                    let _ = tokio::task::spawn_blocking(move || wal.close()).await;
                    return ingest_task.await;
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ServeOptions;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeOptions,
    }

    fn options(arguments: &[&str]) -> ServeOptions {
        let arguments = std::iter::once("serve").chain(arguments.iter().copied());
        Command::parse_from(arguments).serve
    }

    #[test]
    fn a_vacuum_grace_a_running_query_could_outlast_is_refused() {
        let short = options(&["--vacuum-grace-s", "30"]).compaction_settings();
        let message = short.expect_err("a 30 s grace under a 60 s query timeout");
        assert!(message.contains("120 s"), "{message}");
        let slow_queries = options(&["--vacuum-grace-s", "600", "--query-timeout-s", "900"]);
        assert!(slow_queries.compaction_settings().is_err());
        let enough = options(&["--vacuum-grace-s", "120"]).compaction_settings();
        assert_eq!(enough.map(|s| s.vacuum_grace.as_secs()), Ok(120));
        // An export's limit follows the grace unless set; set past it, it is refused.
        assert_eq!(
            options(&["--vacuum-grace-s", "120"])
                .export_timeout()
                .as_secs(),
            60
        );
        let slow_exports = options(&["--vacuum-grace-s", "600", "--export-timeout-s", "900"]);
        assert!(slow_exports.compaction_settings().is_err());
    }
}
