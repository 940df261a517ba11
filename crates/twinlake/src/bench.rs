//! `twinlake bench ingest`: the end-to-end ingest benchmark, against the embedded broker or
//! Mosquitto, in one run:
//!
//! (a) the broker's raw delivery rate to a subscriber that does nothing (the physical limit here),
//! (b) Twinlake's sustained ingest rate (QoS 1, WAL fsync before every acknowledgement),
//! (c) publish-to-queryable latency of probe events polled through SQL, under load,
//! (d) Twinlake's peak RSS.
//!
//! The broker, the publishers and Twinlake share the machine, as they would on a small box;
//! ratios between (b) and (a) are what carry over to other machines.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::time::Instant;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Ingest throughput, latency and memory, next to the broker's raw delivery rate.
    Ingest(IngestBenchArgs),
    /// Persistence, compaction, bytes per value and subtree pruning on simulated fleet data.
    Lake(crate::bench_lake::LakeBenchArgs),
    /// `latest` lookups, the full-history hierarchy join and every `queries/*.sql` example.
    Queries(crate::bench_queries::QueriesBenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchBroker {
    Embedded,
    Mosquitto,
}

#[derive(Debug, Args)]
pub(crate) struct IngestBenchArgs {
    #[arg(long, value_enum, default_value = "embedded")]
    broker: BenchBroker,
    /// Messages per throughput measurement, each a 10-value grouped reading.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Parallel publishing connections.
    #[arg(long, default_value_t = 4)]
    publishers: u64,
    /// Latency probes (one every 20 ms, under a background load at half the measured rate).
    #[arg(long, default_value_t = 250)]
    probes: u64,
    /// The Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Also write the figures to this file as JSON (for `benches/run.sh`).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Writes `figures` as pretty JSON to `path`, when given.
pub(crate) fn write_json(
    path: Option<&PathBuf>,
    figures: &serde_json::Value,
) -> Result<(), String> {
    let Some(path) = path else {
        return Ok(());
    };
    let text = serde_json::to_string_pretty(figures).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

const VALUES_PER_MESSAGE: u64 = 10;

pub(crate) async fn bench(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Lake(args) => crate::bench_lake::lake(args).await,
        BenchCommand::Queries(args) => crate::bench_queries::queries(args).await,
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

async fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on port {port}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_mosquitto(binary: &PathBuf, dir: &std::path::Path) -> Result<(Process, u16), String> {
    let port = free_port()?;
    let config = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000000\nmax_inflight_messages 0\n"),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "starting {} (apt-get install mosquitto): {e}",
                binary.display()
            )
        })?;
    Ok((Process(child), port))
}

/// Mosquitto on its own: the reference both ingest paths are measured against.
async fn start_broker(
    args: &IngestBenchArgs,
    dir: &std::path::Path,
) -> Result<(Process, u16), String> {
    let (process, port) = start_mosquitto(&args.mosquitto, dir)?;
    wait_for_port(port).await?;
    Ok((process, port))
}

fn payload(n: u64) -> String {
    let x = (n % 1000) as f64;
    format!(
        r#"{{"engine":{{"rpm":{},"temperature":{},"oil_pressure":{}}},"fuel":{{"level":{},"rate":{}}},"gps":{{"lat":{},"lon":{},"alt":{},"speed":{}}},"load":{}}}"#,
        2000.0 + x,
        80.0 + x / 100.0,
        3.0 + x / 1000.0,
        60.0 - x / 100.0,
        12.5,
        48.1 + x / 10000.0,
        11.5 + x / 10000.0,
        519.0,
        60.0 + x / 50.0,
        x / 1000.0
    )
}

fn client(port: u16, id: String) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_inflight(1000)
        .set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(1 << 20, 1 << 20);
    AsyncClient::new(options, 10_000)
}

/// Publishes `messages` readings with QoS 1 over `publishers` connections, at most `rate`
/// messages per second in all (0: as fast as acknowledged). Returns when all are acknowledged.
async fn publish_readings(
    port: u16,
    messages: u64,
    publishers: u64,
    rate: f64,
    tag: &str,
) -> Result<(), String> {
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (client, mut eventloop) =
            client(port, format!("bench-{tag}-{p}-{}", std::process::id()));
        let share = messages / publishers + u64::from(p < messages % publishers);
        let per_publisher_rate = rate / publishers as f64;
        tasks.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                let began = Instant::now();
                for i in 0..share {
                    let n = i * publishers + p;
                    let topic = format!("te/device/truck{:04}///m/telemetry", n % 200);
                    client
                        .publish(topic, QoS::AtLeastOnce, false, payload(n))
                        .await
                        .map_err(|e| e.to_string())?;
                    if per_publisher_rate > 0.0 {
                        tokio::time::sleep_until(
                            began + Duration::from_secs_f64((i + 1) as f64 / per_publisher_rate),
                        )
                        .await;
                    }
                }
                Ok::<_, String>(client)
            });
            let mut acked = 0;
            while acked < share {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => return Err(format!("publisher: {e}")),
                }
            }
            let client = sender.await.map_err(|e| e.to_string())??;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A QoS 1 subscription to `filter`, returned once the broker has acknowledged it.
async fn subscribed(
    port: u16,
    name: &str,
    filter: &str,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let (subscriber, mut eventloop) = client(port, format!("bench-{name}-{}", std::process::id()));
    subscriber
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::SubAck(_))) => return Ok((subscriber, eventloop)),
            Ok(_) => {}
            Err(e) => return Err(format!("{name} subscriber: {e}")),
        }
    }
}

/// (a) The broker's delivery rate to a QoS 1 subscriber that only counts.
async fn raw_delivery(port: u16, args: &IngestBenchArgs) -> Result<f64, String> {
    let (_subscriber, mut eventloop) = subscribed(port, "null", "te/#").await?;
    let expected = args.messages;
    let counter = tokio::spawn(async move {
        let mut received = 0u64;
        let mut first = None;
        while received < expected {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(_))) => {
                    first.get_or_insert_with(Instant::now);
                    received += 1;
                }
                Ok(_) => {}
                Err(e) => return Err(format!("null subscriber: {e}")),
            }
        }
        Ok(first.map(|t| t.elapsed()))
    });
    let began = Instant::now();
    publish_readings(port, args.messages, args.publishers, 0.0, "raw").await?;
    counter.await.map_err(|e| e.to_string())??;
    Ok(args.messages as f64 / began.elapsed().as_secs_f64())
}

struct Server {
    process: Process,
    http: String,
    pid: u32,
}

async fn start_twinlake(
    args: &IngestBenchArgs,
    dir: &std::path::Path,
    broker_port: Option<u16>,
) -> Result<(Server, u16), String> {
    let http_port = free_port()?;
    let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.join("twinlake-data"))
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "warn,buoyant_kernel=off")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mqtt_port = match (args.broker, broker_port) {
        (BenchBroker::Mosquitto, Some(port)) => {
            command.args(["--mqtt-url", &format!("mqtt://127.0.0.1:{port}")]);
            port
        }
        _ => {
            let port = free_port()?;
            command.args(["--mqtt-listen", &format!("127.0.0.1:{port}")]);
            port
        }
    };
    let child = command.spawn().map_err(|e| e.to_string())?;
    let pid = child.id();
    let server = Server {
        process: Process(child),
        http: format!("http://127.0.0.1:{http_port}"),
        pid,
    };
    wait_for_port(http_port).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&server.http, "twinlake_mqtt_subscribed").await != Some(1.0) {
        if Instant::now() > deadline {
            return Err("twinlake did not subscribe".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((server, mqtt_port))
}

async fn metric(http: &str, sample: &str) -> Option<f64> {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn rows(http: &str) -> f64 {
    metric(http, "twinlake_rows_total{table=\"measurements\"}")
        .await
        .unwrap_or(0.0)
}

/// (b) How fast readings become committed rows.
async fn sustained_ingest(
    server: &Server,
    mqtt_port: u16,
    args: &IngestBenchArgs,
) -> Result<f64, String> {
    let before = rows(&server.http).await;
    let target = before + (args.messages * VALUES_PER_MESSAGE) as f64;
    let began = Instant::now();
    publish_readings(mqtt_port, args.messages, args.publishers, 0.0, "ingest").await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while rows(&server.http).await < target {
        if Instant::now() > deadline {
            return Err("Twinlake did not commit all rows within 10 minutes".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(args.messages as f64 / began.elapsed().as_secs_f64())
}

/// Probe latencies: publish to queryable in Twinlake, and, as its floor, publish to delivery
/// at a subscriber of the same broker at the same moment (through Mosquitto), or acknowledged
/// to the publisher (Twinlake's endpoint, where the acknowledgement waits for the fsync).
struct ProbeLatencies {
    queryable: Vec<Duration>,
    delivered: Vec<Duration>,
}

/// (c) Publish-to-queryable latency of probe events, under a background load of `load_rate`,
/// next to the broker's own publish-to-delivery latency of the same probes.
async fn latency(
    server: &Server,
    mqtt_port: u16,
    args: &IngestBenchArgs,
    load_rate: f64,
) -> Result<ProbeLatencies, String> {
    let load_messages = (load_rate * (args.probes as f64 * 0.02 + 2.0)) as u64;
    let load = tokio::spawn(publish_readings(
        mqtt_port,
        load_messages,
        args.publishers,
        load_rate,
        "load",
    ));
    let (probe, mut eventloop) = client(mqtt_port, format!("bench-probe-{}", std::process::id()));
    let origin = Instant::now();
    // One probe in flight at a time: the n-th PUBACK is the n-th probe's.
    let probes = args.probes;
    let acked = tokio::spawn(async move {
        let mut acked = Vec::new();
        while (acked.len() as u64) < probes {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_))) => {
                    acked.push(Some(origin.elapsed().as_micros() as u64));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        acked
    });
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..args.probes).map(|_| AtomicU64::new(0)).collect());
    let delivered = match args.broker {
        BenchBroker::Mosquitto => Some(watch_probe_delivery(mqtt_port, args.probes, origin).await?),
        BenchBroker::Embedded => None,
    };
    let publisher = {
        let sent = Arc::clone(&sent);
        let probes = args.probes;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for id in 0..probes {
                sent[id as usize].store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
                let payload = format!(r#"{{"text":"{id}"}}"#);
                if probe
                    .publish(
                        "te/device/probe///e/probe",
                        QoS::AtLeastOnce,
                        false,
                        payload,
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let http = reqwest::Client::new();
    let mut seen = vec![None; args.probes as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.iter().any(Option::is_none) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let response = http
            .post(format!("{}/api/v1/query", server.http))
            .json(&serde_json::json!({"sql": "SELECT text FROM events WHERE type = 'probe'", "format": "csv"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let now = origin.elapsed().as_micros() as u64;
        let body = response.text().await.map_err(|e| e.to_string())?;
        for id in body
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().parse::<usize>().ok())
        {
            if let Some(slot) = seen.get_mut(id)
                && slot.is_none()
            {
                *slot = Some(now);
            }
        }
    }
    publisher.await.map_err(|e| e.to_string())?;
    load.await.map_err(|e| e.to_string())??;
    let delivered = match delivered {
        Some(delivered) => tokio::time::timeout(Duration::from_secs(30), delivered)
            .await
            .map_err(|_| "the probe subscriber did not receive every probe".to_owned())?
            .map_err(|e| e.to_string())??,
        None => {
            let acked = tokio::time::timeout(Duration::from_secs(5), acked).await;
            acked.map_or_else(|_| Vec::new(), |a| a.unwrap_or_default())
        }
    };
    Ok(ProbeLatencies {
        queryable: since_sent(&seen, &sent, "became visible")?,
        delivered: since_sent(&delivered, &sent, "were delivered")?,
    })
}

/// Subscribes to the probes and returns a task that yields when each arrived (µs since `origin`).
async fn watch_probe_delivery(
    port: u16,
    probes: u64,
    origin: Instant,
) -> Result<tokio::task::JoinHandle<Result<Vec<Option<u64>>, String>>, String> {
    let (subscriber, mut eventloop) =
        subscribed(port, "probe-watch", "te/device/probe///e/probe").await?;
    Ok(tokio::spawn(async move {
        let mut arrived = vec![None; probes as usize];
        while arrived.iter().any(Option::is_none) {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let at = origin.elapsed().as_micros() as u64;
                    let id = serde_json::from_slice::<serde_json::Value>(&publish.payload)
                        .ok()
                        .and_then(|probe| probe["text"].as_str()?.parse::<usize>().ok());
                    if let Some(slot) = id.and_then(|id| arrived.get_mut(id)) {
                        slot.get_or_insert(at);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("probe subscriber: {e}")),
            }
        }
        // Held until here: the event loop stops once its client is gone.
        drop(subscriber);
        Ok(arrived)
    }))
}

/// Sorted latencies from each probe's send time to its arrival; every probe must have arrived.
fn since_sent(
    arrived: &[Option<u64>],
    sent: &[AtomicU64],
    what: &str,
) -> Result<Vec<Duration>, String> {
    let mut latencies: Vec<Duration> = arrived
        .iter()
        .zip(sent)
        .filter_map(|(at, sent)| {
            Some(Duration::from_micros(
                at.as_ref()?.saturating_sub(sent.load(Ordering::Relaxed)),
            ))
        })
        .collect();
    if latencies.len() < sent.len() {
        return Err(format!(
            "only {} of {} probes {what}",
            latencies.len(),
            sent.len()
        ));
    }
    latencies.sort();
    Ok(latencies)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn ingest(args: IngestBenchArgs) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let broker_name = match args.broker {
        BenchBroker::Embedded => "Twinlake's endpoint",
        BenchBroker::Mosquitto => "Mosquitto",
    };
    eprintln!("(a) raw delivery through Mosquitto...");
    let raw = {
        let (_broker, port) = start_broker(&args, &dir).await?;
        raw_delivery(port, &args).await?
    };
    eprintln!("    {raw:.0} messages/s");

    let external = match args.broker {
        BenchBroker::Mosquitto => Some(start_mosquitto(&args.mosquitto, &dir)?),
        BenchBroker::Embedded => None,
    };
    if let Some((_, port)) = &external {
        wait_for_port(*port).await?;
    }
    let (server, mqtt_port) =
        start_twinlake(&args, &dir, external.as_ref().map(|(_, p)| *p)).await?;
    eprintln!("(b) Twinlake ingest, QoS 1, fsync before acknowledging...");
    let ingest = sustained_ingest(&server, mqtt_port, &args).await?;
    eprintln!("    {ingest:.0} messages/s");
    eprintln!(
        "(c) publish-to-queryable latency under a load of {:.0} messages/s...",
        ingest / 2.0
    );
    let probes = latency(&server, mqtt_port, &args, ingest / 2.0).await?;
    let rss = peak_rss_mib(server.pid);
    let rows = rows(&server.http).await;
    drop(server.process);

    let latencies = &probes.queryable;
    let p50 = percentile(latencies, 0.5);
    let p99 = percentile(latencies, 0.99);
    let delivered_p50 = percentile(&probes.delivered, 0.5);
    let delivered_p99 = percentile(&probes.delivered, 0.99);
    println!("broker: {broker_name}");
    println!(
        "messages per throughput run: {} (10 values each), publishers: {}",
        args.messages, args.publishers
    );
    println!("(a) raw delivery to a do-nothing QoS 1 subscriber: {raw:.0} messages/s");
    println!(
        "(b) Twinlake sustained ingest: {ingest:.0} messages/s = {:.0} values/s",
        ingest * VALUES_PER_MESSAGE as f64
    );
    println!("    ratio (b)/(a): {:.2}", ingest / raw);
    println!(
        "(c) publish-to-queryable latency over {} probes: p50 {:.1} ms, p99 {:.1} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let second = match args.broker {
        BenchBroker::Embedded => "acknowledged to the publisher (after the fsync)",
        BenchBroker::Mosquitto => "delivered by the broker to a subscriber",
    };
    println!(
        "    the same probes {second}: p50 {:.1} ms, p99 {:.1} ms",
        delivered_p50.as_secs_f64() * 1e3,
        delivered_p99.as_secs_f64() * 1e3
    );
    println!("(d) Twinlake peak RSS: {rss:.0} MiB (holding {rows:.0} rows in memory)");
    println!(
        "| {broker_name} | {raw:.0} | {ingest:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {rss:.0} |",
        ingest * VALUES_PER_MESSAGE as f64,
        ingest / raw,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    write_json(
        args.json.as_ref(),
        &serde_json::json!({
            "broker": broker_name,
            "messages": args.messages,
            "values_per_message": VALUES_PER_MESSAGE,
            "raw_delivery_messages_per_s": raw,
            "ingest_messages_per_s": ingest,
            "ingest_values_per_s": ingest * VALUES_PER_MESSAGE as f64,
            "ratio_to_raw_delivery": ingest / raw,
            "latency_p50_ms": p50.as_secs_f64() * 1e3,
            "latency_p99_ms": p99.as_secs_f64() * 1e3,
            "delivery_latency_p50_ms": delivered_p50.as_secs_f64() * 1e3,
            "delivery_latency_p99_ms": delivered_p99.as_secs_f64() * 1e3,
            "twinlake_peak_rss_mib": rss,
        }),
    )
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("twinlake-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
