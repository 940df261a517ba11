//! Every `queries/*.sql` against a fleet simulated with a fixed seed and start time, part of it
//! persisted to Parquet and part still in memory; each result must equal the reviewed CSV in
//! `queries/expected/`. `TWINLAKE_BLESS=1` rewrites the CSV files instead (review the diff).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Broker, Twinlake, free_port};

/// The data set: 10 trucks, each a gateway, in 2 depots, two days of one-minute rounds; the
/// truck0007 stops reporting for the last tenth of them.
pub(crate) const SIMULATION: [&str; 16] = [
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
    "--gateways",
    "10",
    "--silent",
    "truck0007",
    // The expected answers were taken without services due.
    "--service-alarms",
    "0",
];

fn queries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../queries")
}

/// Runs `twinlake simulate` against `mqtt_url` and returns how many messages it published.
pub(crate) fn simulate(mqtt_url: &str) -> u64 {
    simulate_with(mqtt_url, &SIMULATION)
}

/// [`simulate`] with other simulation flags.
pub(crate) fn simulate_with(mqtt_url: &str, flags: &[&str]) -> u64 {
    let output = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .arg("simulate")
        .arg("--mqtt-url")
        .arg(mqtt_url)
        .args(flags)
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
    // Persists run at a lower priority than ingest: on a busy machine the first may still be
    // under way when every message is in.
    let persisted = twinlake.wait_for_metric(
        "twinlake_persisted_files_total",
        Duration::from_secs(60),
        |n| n > 0.0,
    );
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
        if !same_result(&expected, &csv) {
            wrong.push(format!("{name}\n--- expected\n{expected}\n--- got\n{csv}"));
        }
    }
    assert!(wrong.is_empty(), "results differ:\n{}", wrong.join("\n"));
    polars_agrees(&twinlake, dir.path());
}

/// The same CSV, cell by cell, where a rounded number may differ by one unit in its last shown
/// digit: DataFusion sums floats of several partitions in whatever order they finish, so a sum
/// right at a rounding boundary rounds either way (seen: 21.765… as 21.77 and 21.76).
fn same_result(expected: &str, got: &str) -> bool {
    let (expected, got): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), got.lines().collect());
    expected.len() == got.len()
        && expected.iter().zip(&got).all(|(e, g)| {
            let (e, g): (Vec<&str>, Vec<&str>) = (e.split(',').collect(), g.split(',').collect());
            e.len() == g.len()
                && e.iter()
                    .zip(&g)
                    .all(|(e, g)| e == g || within_last_digit(e, g))
        })
}

fn within_last_digit(expected: &str, got: &str) -> bool {
    // Whole numbers (counts) must match exactly.
    if !expected.contains('.') || !got.contains('.') {
        return false;
    }
    let (Ok(e), Ok(g)) = (expected.parse::<f64>(), got.parse::<f64>()) else {
        return false;
    };
    let decimals = |text: &str| text.split_once('.').map_or(0, |(_, d)| d.len());
    let unit = 10f64.powi(-(decimals(expected).max(decimals(got)) as i32));
    (e - g).abs() <= unit * 1.000_001
}

/// Recomputes two TSBS-shaped answers (driving hours per truck and day; breakdowns per model)
/// with polars from the raw readings, so that the reviewed results are also checked by an
/// engine that shares no code with Twinlake.
fn polars_agrees(twinlake: &Twinlake, dir: &Path) {
    let export = |sql: &str, name: &str| {
        let (status, csv) = twinlake.query_as(sql, "csv");
        assert_eq!(status, 200, "{csv}");
        let path = dir.join(name);
        std::fs::write(&path, csv).unwrap();
        path
    };
    let speeds = export(
        "SELECT entity, CAST(time AS BIGINT) AS ns, value FROM measurements \
         WHERE type = 'telemetry' AND series = 'gps.speed'",
        "speeds.csv",
    );
    let models = export(
        "SELECT entity, json_get_str(value) AS model FROM twin WHERE fragment = 'model'",
        "models.csv",
    );
    let script = r#"
import sys, polars as pl
speeds = pl.read_csv(sys.argv[1]).with_columns(pl.from_epoch("ns", time_unit="ns").alias("time"))
models = pl.read_csv(sys.argv[2])
b = (speeds.with_columns(pl.col("time").dt.truncate("10m").alias("bucket"))
     .group_by(["entity", "bucket"])
     .agg(pl.col("value").mean().alias("speed"), ((pl.col("value") == 0).sum() / pl.len()).alias("zero")))
hours = (b.with_columns(pl.col("bucket").dt.truncate("1d").alias("day"))
         .group_by(["entity", "day"]).agg(((pl.col("speed") > 1).sum() / 6.0).round(2).alias("h"))
         .sort(["entity", "day"]))
for r in hours.iter_rows():
    print("hours", r[0].split(":")[-1], r[1].strftime("%Y-%m-%d"), r[2])
b = b.sort(["entity", "bucket"]).with_columns((pl.col("zero") >= 0.5).alias("down"))
b = b.with_columns(pl.col("down").shift(-1).over("entity").alias("next"))
downs = (b.filter(~pl.col("down") & pl.col("next").fill_null(False)).join(models, on="entity")
         .group_by("model").agg(pl.len().alias("n"), pl.col("entity").n_unique().alias("t")).sort("model"))
for r in downs.iter_rows():
    print("breakdowns", r[0].replace(" ", "_"), r[1], r[2])
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&speeds)
        .arg(&models)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "python polars (pip install polars; scripts/test does it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let polars = String::from_utf8(output.stdout).unwrap();
    let csv_rows = |name: &str| -> Vec<Vec<String>> {
        let sql = std::fs::read_to_string(queries_dir().join(format!("{name}.sql"))).unwrap();
        let (_, csv) = twinlake.query_as(&sql, "csv");
        csv.lines()
            .skip(1)
            .map(|line| line.split(',').map(str::to_owned).collect())
            .collect()
    };
    let mut twinlake_lines: Vec<String> = csv_rows("06-average-daily-driving-duration")
        .into_iter()
        .map(|r| format!("hours {} {} {}", r[1], &r[2][..10], r[3]))
        .collect();
    twinlake_lines.extend(
        csv_rows("08-breakdown-frequency")
            .into_iter()
            .map(|r| format!("breakdowns {} {} {}", r[0].replace(' ', "_"), r[1], r[2])),
    );
    let polars_lines: Vec<String> = polars.lines().map(str::to_owned).collect();
    assert_eq!(
        polars_lines.len(),
        10 * 2 + 4,
        "10 trucks × 2 days, 4 models"
    );
    assert_eq!(twinlake_lines, polars_lines);
}

#[test]
fn rounded_cells_may_differ_in_their_last_digit_only() {
    assert!(same_result("t,v\ntruck1,21.77\n", "t,v\ntruck1,21.76\n"));
    assert!(!same_result("t,v\ntruck1,21.77\n", "t,v\ntruck1,21.75\n"));
    assert!(!same_result("t,v\ntruck1,21.77\n", "t,v\ntruck2,21.77\n"));
    assert!(!same_result("t,v\ntruck1,2\n", "t,v\ntruck1,3\n"));
    assert!(!same_result("t,v\ntruck1,2\n", "t,v\ntruck1,2\ntruck2,2\n"));
}
