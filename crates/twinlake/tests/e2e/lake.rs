//! Persistence: rows reach Delta Lake tables on a local directory or S3 (moto), survive
//! restarts, are read by other engines, are compacted, and are never lost to a store outage.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::durability::{EPOCH, publish_numbered, publish_sequence};
use crate::support::{Broker, Moto, TcpProxy, Twinlake, free_port};

const PERSISTED: &str = "twinlake_persisted_rows_total{table=\"measurements\"}";
const SMALL_PERSISTS: [&str; 4] = ["--persist-max-rows", "500", "--persist-max-age", "1s"];
/// Many small persists, compacted as soon as there are two files: two candidates suffice, as
/// the last persist of a test may leave just one file beside a compacted one.
const COMPACTING: [&str; 8] = [
    "--persist-max-rows",
    "200",
    "--persist-max-age",
    "1s",
    "--compact-interval-s",
    "1",
    "--compact-min-files",
    "2",
];

/// `seq` is 0..count, so its values sum to this.
fn seq_sum(count: u64) -> f64 {
    (count * count.saturating_sub(1) / 2) as f64
}

fn seq_totals(twinlake: &Twinlake, entity: &str) -> (i64, f64) {
    let rows = twinlake.query(&format!(
        "SELECT count(*) AS n, sum(value) AS s FROM measurements \
         WHERE entity = 'main:device:{entity}' AND series = 'seq'"
    ));
    (
        rows[0]["n"].as_i64().unwrap(),
        rows[0]["s"].as_f64().unwrap_or(0.0),
    )
}

fn wait_for_metric(twinlake: &Twinlake, sample: &str, at_least: f64, timeout: Duration) -> f64 {
    twinlake.wait_for_metric(sample, timeout, |value| value >= at_least)
}

fn wal_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

/// Counts and sums of the measurements table as Python's `deltalake` (with pyarrow) and polars
/// read it: the check that other engines read what Twinlake wrote.
fn external_reader_totals(table_dir: &Path) -> [(i64, f64); 2] {
    let script = r#"
import sys, deltalake, polars as pl, pyarrow.compute as pc
path = sys.argv[1]
t = deltalake.DeltaTable(path).to_pyarrow_table()
t = t.filter(pc.equal(t["series"], "seq"))
print(t.num_rows, pc.sum(t["value"]).as_py() or 0.0)
df = pl.read_delta(path).filter(pl.col("series") == "seq")
print(df.height, df["value"].sum())
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(table_dir)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "python deltalake/polars (pip install deltalake polars pyarrow; scripts/test does it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines().map(|line| {
        let (n, s) = line.split_once(' ').unwrap();
        (n.parse().unwrap(), s.parse().unwrap())
    });
    [lines.next().unwrap(), lines.next().unwrap()]
}

#[test]
fn persisted_rows_match_what_was_published_across_restarts_and_other_readers() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = SMALL_PERSISTS.to_vec();
    flags.extend(["--wal-segment-mb", "1"]);
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    let count = 20_000;
    let acked = publish_numbered(twinlake.mqtt_url.clone(), "lake01", count, 0.0, 5);
    assert_eq!(acked, count);
    let persisted = wait_for_metric(
        &twinlake,
        PERSISTED,
        (count * 5) as f64,
        Duration::from_secs(60),
    );
    assert_eq!(persisted, (count * 5) as f64, "every value persisted");
    assert_eq!(
        seq_totals(&twinlake, "lake01"),
        (count as i64, seq_sum(count))
    );
    // Several persists, so several files; the WAL keeps only what is not persisted.
    let files = twinlake
        .metric("twinlake_lake_files{table=\"measurements\"}")
        .unwrap();
    assert!(files >= 2.0, "{files} files");
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal_bytes(dir.path()) > 2 * 1024 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wal_bytes(dir.path()) <= 2 * 1024 * 1024,
        "WAL segments of persisted rows are deleted: {} bytes left",
        wal_bytes(dir.path())
    );

    // After a restart the rows come from the lake (and the WAL's unpersisted rest), once each.
    twinlake.restart();
    assert_eq!(
        seq_totals(&twinlake, "lake01"),
        (count as i64, seq_sum(count))
    );
    let on_time = twinlake.count(&format!(
        "SELECT count(*) FROM measurements WHERE time >= to_timestamp({}) \
         AND time < to_timestamp({})",
        EPOCH + 100,
        EPOCH + 200
    ));
    assert_eq!(on_time, 500, "100 messages of 5 values in that time range");

    // Killed without a chance to flush: replay must not add rows the lake already holds.
    twinlake.kill();
    twinlake.start_again();
    assert_eq!(
        seq_totals(&twinlake, "lake01"),
        (count as i64, seq_sum(count))
    );
    twinlake.stop();

    let table = dir.path().join("lake").join("measurements");
    for (reader, totals) in ["deltalake+pyarrow", "polars"]
        .iter()
        .zip(external_reader_totals(&table))
    {
        assert_eq!(totals, (count as i64, seq_sum(count)), "{reader}");
    }
}

#[test]
fn s3_lake_rides_out_a_store_outage_without_losing_rows() {
    let moto = Moto::start("twinlake");
    let mut proxy = TcpProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let s3 = proxy.s3_flags("fleet");
    let mut flags = SMALL_PERSISTS.to_vec();
    flags.extend(s3.iter().map(String::as_str));
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    let first = publish_numbered(twinlake.mqtt_url.clone(), "s3a", 2_000, 0.0, 1);
    assert_eq!(first, 2_000);
    assert_eq!(
        wait_for_metric(&twinlake, PERSISTED, 2_000.0, Duration::from_secs(60)),
        2_000.0
    );

    // The store goes away: ingest goes on into the WAL and memory, persists fail and retry.
    proxy.set_up(false);
    let second = publish_numbered(twinlake.mqtt_url.clone(), "s3b", 2_000, 0.0, 1);
    assert_eq!(second, 2_000);
    // The embedded broker acknowledged them on receipt; wait until ingest has them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seq_totals(&twinlake, "s3b").0 < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seq_totals(&twinlake, "s3b"), (2_000, seq_sum(2_000)));
    let failures = wait_for_metric(
        &twinlake,
        "twinlake_persist_failures_total",
        1.0,
        Duration::from_secs(30),
    );
    assert!(failures >= 1.0, "persisting without a store must fail");

    // It comes back: persistence catches up.
    proxy.set_up(true);
    assert_eq!(
        wait_for_metric(&twinlake, PERSISTED, 4_000.0, Duration::from_secs(120)),
        4_000.0
    );

    // A second Twinlake with an empty WAL sees every row: they are in S3.
    let fresh = tempfile::tempdir().unwrap();
    let mut reader_flags: Vec<&str> = s3.iter().map(String::as_str).collect();
    reader_flags.extend(["--persist-max-age", "1h"]);
    drop(twinlake);
    let reader = Twinlake::start(fresh.path(), Broker::Embedded(free_port()), &reader_flags);
    assert_eq!(seq_totals(&reader, "s3a"), (2_000, seq_sum(2_000)));
    assert_eq!(seq_totals(&reader, "s3b"), (2_000, seq_sum(2_000)));
}

#[test]
fn a_store_that_ignores_conditional_writes_is_refused_at_start() {
    let moto = Moto::start("twinlake");
    let proxy = TcpProxy::start_ignoring_conditional_writes(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--pg-listen", "off"])
        .args(proxy.s3_flags("lake"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while serve.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("twinlake started against a store without conditional writes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = serve.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("does not honour conditional writes"),
        "{stderr}"
    );
}

/// Queries run in a loop while rows are persisted and compacted: a row seen twice would make
/// `n` exceed the distinct times `d`, a row missed would make `n` go down.
struct RowWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl RowWatcher {
    /// `sql` returns one row of `n` (rows) and `d` (distinct times).
    fn start(twinlake: &Twinlake, sql: &'static str) -> Self {
        let http = twinlake.http.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let probe = Twinlake::client(&http);
            let mut last = 0;
            let mut checks = 0;
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                let row = &probe.query(sql)[0];
                let (n, d) = (row["n"].as_i64().unwrap(), row["d"].as_i64().unwrap());
                assert_eq!(n, d, "a row was seen twice");
                assert!(n >= last, "rows went missing: {n} after {last}");
                last = n;
                checks += 1;
            }
            checks
        });
        Self { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let checks = self
            .thread
            .join()
            .expect("the query loop saw every row once");
        assert!(checks > 10, "only {checks} queries ran during the test");
    }
}

/// Queries read `measurements` through the Parquet cache (files kept whole in memory): each
/// row is seen once while files are persisted, compacted and replaced under them, and a
/// server with the cache turned off gives the same totals.
#[test]
fn compaction_merges_files_and_drops_redelivered_rows_while_queries_see_each_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &COMPACTING);
    let count = 3_000;

    let watcher = RowWatcher::start(
        &twinlake,
        "SELECT count(*) AS n, count(DISTINCT time) AS d FROM measurements \
         WHERE entity = 'main:device:c1'",
    );
    assert_eq!(
        publish_numbered(twinlake.mqtt_url.clone(), "c1", count, 1_500.0, 1),
        count
    );
    wait_for_metric(&twinlake, PERSISTED, count as f64, Duration::from_secs(60));
    let compacted = wait_for_metric(
        &twinlake,
        "twinlake_compacted_files_total",
        3.0,
        Duration::from_secs(60),
    );
    watcher.stop();
    assert!(compacted >= 3.0, "small files were compacted");
    assert_eq!(seq_totals(&twinlake, "c1"), (count as i64, seq_sum(count)));

    // The same messages again (as a broker redelivers after a lost acknowledgement): stored
    // at first, then dropped by compaction as exact duplicates.
    assert_eq!(
        publish_numbered(twinlake.mqtt_url.clone(), "c1", count, 0.0, 1),
        count
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut totals = seq_totals(&twinlake, "c1");
    while totals != (count as i64, seq_sum(count)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        totals = seq_totals(&twinlake, "c1");
    }
    assert_eq!(totals, (count as i64, seq_sum(count)), "duplicates dropped");
    let files = twinlake
        .metric("twinlake_lake_files{table=\"measurements\"}")
        .unwrap();
    assert!(files <= 3.0, "{files} files left after compaction");
    let loads = twinlake.metric("twinlake_query_parquet_cache_loads_total");
    assert!(loads.unwrap() >= 1.0, "files read into the Parquet cache");
    let hits = twinlake.metric("twinlake_query_parquet_cache_hits_total");
    assert!(
        hits.unwrap() >= 1.0,
        "scans read files from the Parquet cache"
    );
    twinlake.stop();

    let uncached = Twinlake::start(
        dir.path(),
        Broker::Embedded(free_port()),
        &["--query-parquet-cache-mb", "0"],
    );
    assert_eq!(seq_totals(&uncached, "c1"), totals);
    assert_eq!(
        uncached.metric("twinlake_query_parquet_cache_loads_total"),
        Some(0.0),
        "with no budget nothing is kept"
    );
}

/// Events, like the other small tables, are read through the cache of decoded files: each
/// file decoded once and then read from memory, every row seen once while files are persisted
/// and compacted under the queries, and the same answers with the cache turned off.
#[test]
fn small_tables_read_through_the_file_cache_see_each_row_once_across_persists_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &COMPACTING);
    const TICKS: &str = "SELECT count(*) AS n, count(DISTINCT time) AS d FROM events \
         WHERE entity = 'main:device:ev1' AND type = 'tick'";
    let watcher = RowWatcher::start(&twinlake, TICKS);
    let count = 2_000;
    let published = publish_sequence(
        twinlake.mqtt_url.clone(),
        "te/device/ev1///e/tick".to_owned(),
        count,
        1_000.0,
        |n| format!("{{\"text\":\"tick {n}\",\"time\":{}}}", EPOCH + n as i64),
    );
    assert_eq!(published, count);
    let events = "twinlake_persisted_rows_total{table=\"events\"}";
    wait_for_metric(&twinlake, events, count as f64, Duration::from_secs(60));
    let compacted = wait_for_metric(
        &twinlake,
        "twinlake_compacted_files_total",
        2.0,
        Duration::from_secs(60),
    );
    assert!(compacted >= 2.0, "event files were compacted");
    watcher.stop();

    let ticks = |twinlake: &Twinlake| {
        let row = &twinlake.query(TICKS)[0];
        (row["n"].as_i64().unwrap(), row["d"].as_i64().unwrap())
    };
    assert_eq!(ticks(&twinlake), (count as i64, count as i64));
    let loads = twinlake.metric("twinlake_query_file_cache_loads_total");
    assert!(loads.unwrap() >= 1.0, "files decoded into the cache");
    let hits = twinlake.metric("twinlake_query_file_cache_hits_total");
    assert!(hits.unwrap() >= 1.0, "queries read files from the cache");
    twinlake.stop();

    let uncached = Twinlake::start(
        dir.path(),
        Broker::Embedded(free_port()),
        &["--query-file-cache-mb", "0"],
    );
    assert_eq!(ticks(&uncached), (count as i64, count as i64));
    assert_eq!(
        uncached.metric("twinlake_query_file_cache_loads_total"),
        Some(0.0),
        "with no budget nothing is decoded into the cache"
    );
}
