//! Crashes and budgets: no acknowledged message is lost.

use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::support::{Broker, Mosquitto, Twinlake, free_port, url_parts};

pub(crate) const EPOCH: i64 = 1_700_000_000;

/// Publishes `count` numbered measurements (QoS 1, `rate` per second) and returns how many the
/// broker acknowledged. Message `n` is `{"seq": n, "time": EPOCH + n}`.
pub(crate) fn publish_numbered(
    mqtt_url: String,
    entity: &'static str,
    count: u64,
    rate: f64,
    values: usize,
) -> u64 {
    let topic = format!("te/device/{entity}///m/seq");
    publish_sequence(mqtt_url, topic, count, rate, move |n| {
        let extra: String = (1..values).map(|v| format!(",\"v{v}\":{v}")).collect();
        format!("{{\"seq\":{n},\"time\":{}{extra}}}", EPOCH + n as i64)
    })
}

/// Publishes `payload(n)` for n in 0..count to `topic` (QoS 1, `rate` per second, 0 for as
/// fast as acknowledged) and returns how many the broker acknowledged.
pub(crate) fn publish_sequence(
    mqtt_url: String,
    topic: String,
    count: u64,
    rate: f64,
    payload: impl Fn(u64) -> String + Send + 'static,
) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (host, port) = url_parts(&mqtt_url);
        let mut options = MqttOptions::new(format!("numbered-{}", free_port()), host, port);
        // The gateway `main`, on Twinlake's endpoint (a broker without passwords ignores it).
        options.set_inflight(200).set_credentials("main", "");
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let sender = tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            for n in 0..count {
                client
                    .publish(&topic, QoS::AtLeastOnce, false, payload(n))
                    .await
                    .unwrap();
                if rate > 0.0 {
                    tokio::time::sleep_until(
                        began + Duration::from_secs_f64((n + 1) as f64 / rate),
                    )
                    .await;
                }
            }
            client
        });
        let mut acked = 0;
        while acked < count {
            match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher lost its connection to mosquitto: {e}"),
                Err(_) => break,
            }
        }
        let client = sender.await.unwrap();
        let _ = client.disconnect().await;
        acked
    })
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_message() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &[]);
    let total = 12_000;
    let url = mosquitto.url();
    let publisher = std::thread::spawn(move || publish_numbered(url, "crash", total, 2_000.0, 1));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = Vec::new();
    for _ in 0..4 {
        let wait = rng.random_range(300..1300);
        std::thread::sleep(Duration::from_millis(wait));
        let before = twinlake.count("SELECT count(*) FROM measurements");
        twinlake.kill();
        kills.push((wait, before));
        twinlake.start_again();
    }
    let acked = publisher.join().unwrap();
    assert_eq!(
        acked, total,
        "mosquitto acknowledged only {acked} of {total} publishes"
    );

    let distinct =
        "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:crash'";
    let found = twinlake.wait_for_count(distinct, total as i64, Duration::from_secs(60));
    assert_eq!(
        found, total as i64,
        "kills (ms, rows before) {kills:?}, seed {seed}"
    );
    // Exactly as sent: every row carries the time its message carried.
    let altered = "SELECT count(*) FROM measurements WHERE entity = 'main:device:crash' AND date_part('epoch', time) <> value + 1700000000";
    assert_eq!(twinlake.count(altered), 0);
    let rows =
        twinlake.count("SELECT count(*) FROM measurements WHERE entity = 'main:device:crash'");
    eprintln!(
        "crash test: {} kills (ms after start, rows then) {kills:?}; {total} messages, {rows} rows ({} redelivered twice), seed {seed}",
        kills.len(),
        rows - total as i64
    );
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmRSS:` now, `VmHWM:` its peak),
/// in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

#[test]
fn a_full_hot_buffer_stops_ingest_without_losing_anything() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let budget = ["--hot-budget-mb", "1", "--max-inflight-messages", "500"];
    let mut twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &budget);
    let messages = 20_000u64;
    let values = 10;
    let acked = publish_numbered(mosquitto.url(), "burst", messages, 0.0, values);
    assert_eq!(acked, messages);

    let deadline = Instant::now() + Duration::from_secs(20);
    while twinlake.metric("twinlake_ingest_backpressure") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "ingest never stopped at its 1 MiB budget"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stored = twinlake.count("SELECT count(*) FROM measurements");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        twinlake.count("SELECT count(*) FROM measurements"),
        stored,
        "ingest kept reading past its budget"
    );
    assert!(
        stored < (messages as i64) * values as i64,
        "the whole burst fit: the test proves nothing"
    );
    // What is held stays near the budget: at most the in-flight window above it.
    let hot = twinlake.metric("twinlake_hot_bytes").unwrap_or(f64::MAX);
    assert!(
        hot < 4.0 * 1024.0 * 1024.0,
        "hot buffer {hot} bytes with a 1 MiB budget"
    );
    let rss = rss_kib(twinlake.pid());
    eprintln!("backpressure test: stopped at {stored} rows, hot {hot} bytes, RSS {rss} KiB");

    // Nothing was dropped: with room again, everything the broker kept arrives.
    twinlake.stop();
    drop(twinlake);
    let twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &[]);
    // QoS 1 allows a redelivered message to be stored twice (compaction removes exact repeats);
    // what must hold is that every message is there.
    let distinct = "SELECT count(DISTINCT value) FROM measurements WHERE entity = 'main:device:burst' AND series = 'seq'";
    assert_eq!(
        twinlake.wait_for_count(distinct, messages as i64, Duration::from_secs(60)),
        messages as i64
    );
    let rows =
        twinlake.count("SELECT count(*) FROM measurements WHERE entity = 'main:device:burst'");
    assert_eq!(rows % values as i64, 0, "a message was stored in part");
    eprintln!(
        "backpressure test: all {messages} messages after the restart, {} stored twice",
        rows / values as i64 - messages as i64
    );
}

/// Mosquitto without an in-flight limit sends as fast as it can; acknowledgements then pile up
/// in the MQTT client's request queue faster than they leave. A small in-flight window (and so
/// a small request queue) makes the pile-up that stalled ingest for good in the benchmark
/// happen within a few thousand messages.
#[test]
fn a_flood_from_a_broker_without_inflight_limit_never_stalls_ingest() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let window = ["--max-inflight-messages", "20"];
    let twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &window);
    let messages = 30_000u64;
    let acked = publish_numbered(mosquitto.url(), "flood", messages, 0.0, 1);
    assert_eq!(acked, messages);
    let stored = twinlake.wait_for_count(
        "SELECT count(*) FROM measurements WHERE entity = 'main:device:flood'",
        messages as i64,
        Duration::from_secs(60),
    );
    assert_eq!(stored, messages as i64, "ingest stalled");
    let deadline = Instant::now() + Duration::from_secs(20);
    while twinlake.metric("twinlake_acks_queued") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "acknowledgements still queued: {:?}",
            twinlake.metric("twinlake_acks_queued")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
