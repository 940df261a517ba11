//! Every `queries/*.sql` against a fleet simulated with a fixed seed and start time, part of it
//! persisted to Parquet and part still in memory; each result must equal the reviewed CSV in
//! `queries/expected/`. `TWINLAKE_BLESS=1` rewrites the CSV files instead (review the diff).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Broker, Twinlake, free_port};

/// The data set: 10 trucks in 2 depots, two days of one-minute rounds (662,400 values).
pub(crate) const SIMULATION: [&str; 12] = [
    "--seed",
    "7",
    "--start",
    "2026-11-01T00:00:00Z",
    "--step",
    "60s",
    "--rounds",
    "2880",
    "--rate",
    "0",
    "--devices",
    "10",
];

fn queries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../queries")
}

/// Runs `twinlake simulate` against `mqtt_url` and returns how many messages it published.
pub(crate) fn simulate(mqtt_url: &str) -> u64 {
    let output = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .arg("simulate")
        .arg("--mqtt-url")
        .arg(mqtt_url)
        .args(SIMULATION)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("run twinlake simulate");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "simulate failed: {log}");
    let published = log
        .split_whitespace()
        .find_map(|word| strip_ansi(word).strip_prefix("published=")?.parse().ok());
    published.unwrap_or_else(|| panic!("simulate did not say how many it published: {log}"))
}

fn strip_ansi(word: &str) -> String {
    let mut text = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
            continue;
        }
        text.push(c);
    }
    text
}

/// Waits until Twinlake has received and acknowledged `published` messages.
pub(crate) fn wait_for_ingest(twinlake: &Twinlake, published: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let received = twinlake.metric("twinlake_mqtt_messages_received_total");
        let pending = twinlake.metric("twinlake_acks_pending");
        if received == Some(published as f64) && pending == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ingest stalled: received {received:?} of {published}, {pending:?} pending"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_query_gives_its_reviewed_result() {
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(
        dir.path(),
        Broker::Embedded(free_port()),
        &["--persist-max-rows", "200000"],
    );
    let published = simulate(&twinlake.mqtt_url);
    wait_for_ingest(&twinlake, published);
    let persisted = twinlake
        .metric("twinlake_persisted_files_total")
        .unwrap_or(0.0);
    assert!(
        persisted > 0.0,
        "part of the data must come from Parquet files"
    );

    let bless = std::env::var_os("TWINLAKE_BLESS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(queries_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "queries/ holds {} queries", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        let sql = std::fs::read_to_string(file).unwrap();
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let (status, csv) = twinlake.query_as(&sql, "csv");
        assert_eq!(status, 200, "{name}: {csv}");
        assert!(
            csv.lines().count() > 1,
            "{name} returned no rows: a check of nothing"
        );
        let expected_path = queries_dir().join("expected").join(format!("{name}.csv"));
        if bless {
            std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
            std::fs::write(&expected_path, &csv).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        if expected != csv {
            wrong.push(format!("{name}\n--- expected\n{expected}\n--- got\n{csv}"));
        }
    }
    assert!(wrong.is_empty(), "results differ:\n{}", wrong.join("\n"));
}
