//! Export for analysts: `POST /api/v1/export` and `twinlake export` write a Parquet dataset that
//! DuckDB, pandas (pyarrow) and Polars read (`export_readers.py`), with each row's path, parent
//! and twin as they were at its time; to a directory and to S3 (moto); bad requests write
//! nothing; a cancelled or killed export leaves no manifest; a persist and a compaction during
//! an export change nothing in it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::queries::{simulate_with, wait_for_ingest};
use crate::support::reqwest::{blocking_delete, blocking_get, blocking_post};
use crate::support::{Broker, Message, Moto, TcpProxy, Twinlake, free_port, message, publish_as};

fn live(topic: &str, payload: &str) -> Message {
    message(topic, payload, false, 1)
}

fn retained(topic: &str, payload: &str) -> Message {
    message(topic, payload, true, 1)
}

/// Three readings of each of truck1, its sensor and truck2.
fn readings(twinlake: &Twinlake, round: u32) {
    for (gateway, topics) in [
        (
            "truck1",
            ["te/device/main///m/env", "te/device/sensor///m/env"].as_slice(),
        ),
        ("truck2", ["te/device/main///m/env"].as_slice()),
    ] {
        let messages = (0..3)
            .flat_map(|i| {
                topics
                    .iter()
                    .map(move |topic| live(topic, &format!(r#"{{"speed":{}}}"#, round * 100 + i)))
            })
            .collect();
        publish_as(&twinlake.mqtt_url, gateway, messages);
    }
}

/// truck1 (depot north) with a hub and a sensor, truck2 (depot north); a round of readings;
/// then truck1's sensor moves onto its hub and truck1 to depot south; a second round. Twin and
/// registrations are stamped when received, so the readings fall on either side of the moves.
fn fleet_that_moves(twinlake: &Twinlake) {
    publish_as(
        &twinlake.mqtt_url,
        "truck1",
        vec![
            retained("te/device/main///twin/depot", r#""north""#),
            retained(
                "te/device/hub//",
                r#"{"@type":"child-device","name":"hub"}"#,
            ),
            retained(
                "te/device/sensor//",
                r#"{"@type":"child-device","name":"sensor"}"#,
            ),
        ],
    );
    publish_as(
        &twinlake.mqtt_url,
        "truck2",
        vec![retained("te/device/main///twin/depot", r#""north""#)],
    );
    readings(twinlake, 1);
    twinlake.wait_for_count(
        "SELECT count(*) FROM measurements",
        9,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(50));
    publish_as(
        &twinlake.mqtt_url,
        "truck1",
        vec![
            retained("te/device/main///twin/depot", r#""south""#),
            retained(
                "te/device/sensor//",
                r#"{"@type":"child-device","@parent":"device/hub//","name":"sensor"}"#,
            ),
        ],
    );
    twinlake.wait_for_count(
        "SELECT count(*) FROM twin_changes WHERE value = '\"south\"'",
        1,
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_millis(50));
    readings(twinlake, 2);
    twinlake.wait_for_count(
        "SELECT count(*) FROM measurements",
        18,
        Duration::from_secs(30),
    );
}

/// Starts an export; the status code and the answer.
fn start_export(twinlake: &Twinlake, request: &Value) -> (u16, Value) {
    let (status, body) = blocking_post(&format!("{}/api/v1/export", twinlake.http), request);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn export_status(twinlake: &Twinlake, id: &str) -> Value {
    let body = blocking_get(&format!("{}/api/v1/export/{id}", twinlake.http)).unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Waits for an export to end; its last status.
fn wait_for_export(twinlake: &Twinlake, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = export_status(twinlake, id);
        if status["state"] != "running" {
            return status;
        }
        assert!(Instant::now() < deadline, "export still running: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Exports and waits for success; the final status.
fn export(twinlake: &Twinlake, request: Value) -> Value {
    let (code, started) = start_export(twinlake, &request);
    assert_eq!(code, 202, "{request} was refused: {started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let status = wait_for_export(twinlake, &id, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status}");
    status
}

/// What DuckDB, pandas and Polars read of the export at `root` (see export_readers.py).
fn read_back(root: &str, s3_endpoint: Option<&str>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/export_readers.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(root)
        .args(s3_endpoint)
        .output()
        .expect("python3 with pyarrow, pandas, polars and duckdb (scripts/test installs them)");
    assert!(
        output.status.success(),
        "reading the export back failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every reader saw `rows` rows summing to `sum`.
fn assert_readers_agree(table: &Value, rows: i64, sum: f64) {
    for reader in ["duckdb", "pandas", "polars"] {
        let Some(seen) = table.get(reader) else {
            continue;
        };
        assert_eq!(seen["rows"].as_i64(), Some(rows), "{reader}: {seen}");
        let got = seen["sum"].as_f64().unwrap();
        assert!(
            (got - sum).abs() < 1e-6,
            "{reader}: sum {got} against {sum}"
        );
    }
}

fn sql_count_and_sum(twinlake: &Twinlake, filter: &str) -> (i64, f64) {
    let row = twinlake.query(&format!(
        "SELECT count(*) AS n, coalesce(sum(value), 0) AS total FROM measurements {filter}"
    ));
    (
        row[0]["n"].as_i64().unwrap(),
        row[0]["total"].as_f64().unwrap(),
    )
}

/// The rows of one entity in the export's listing, in time order.
fn rows_of<'a>(table: &'a Value, entity: &str) -> Vec<&'a Value> {
    table["listing"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["entity"] == entity)
        .collect()
}

#[test]
fn an_export_reads_back_in_duckdb_pandas_and_polars_with_the_twin_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    // Small persists: the export reads rows from files and from memory alike.
    let twinlake = Twinlake::start(
        dir.path(),
        Broker::Embedded(free_port()),
        &["--persist-max-rows", "4"],
    );
    fleet_that_moves(&twinlake);
    let out = dir.path().join("exports");
    let all = out.join("all").display().to_string();

    let status = export(&twinlake, json!({"out": all, "twin": ["depot"]}));
    let (rows, sum) = sql_count_and_sum(&twinlake, "");
    assert_eq!(status["rows"], status["rows_total"], "{status}");
    let seen = read_back(&all, None);
    assert_eq!(
        seen["manifest"]["tables"]["measurements"]["rows"].as_i64(),
        Some(rows)
    );
    let measurements = &seen["tables"]["measurements"];
    assert_readers_agree(measurements, rows, sum);
    assert!(
        seen["checksums_ok"].as_bool().unwrap(),
        "{}",
        seen["checksums"]
    );

    // The sensor was on the truck, then on its hub: its path and parent as of each reading.
    let sensor = rows_of(measurements, "truck1:device:sensor");
    assert_eq!(sensor.len(), 6);
    for (i, row) in sensor.iter().enumerate() {
        let (path, parent, depot) = if i < 3 {
            ("truck1/sensor", "truck1", "north")
        } else {
            ("truck1/hub/sensor", "truck1:device:hub", "south")
        };
        assert_eq!(row["path"], path, "{row}");
        assert_eq!(row["parent"], parent, "{row}");
        // Its truck's depot, inherited, as of the reading.
        assert_eq!(row["depot"], depot, "{row}");
    }
    let truck1: Vec<&Value> = rows_of(measurements, "truck1");
    let depots: Vec<&str> = truck1
        .iter()
        .map(|r| r["depot"].as_str().unwrap())
        .collect();
    assert_eq!(
        depots,
        ["north", "north", "north", "south", "south", "south"]
    );
    assert!(
        truck1
            .iter()
            .all(|r| r["path"] == "truck1" && r["parent"].is_null())
    );
    assert!(
        rows_of(measurements, "truck2")
            .iter()
            .all(|r| r["depot"] == "north")
    );
    // One directory per UTC date of the rows, named as Hive partitions.
    let dates = measurements["date_dirs"].as_array().unwrap();
    assert!(
        !dates.is_empty()
            && dates
                .iter()
                .all(|d| d.as_str().unwrap().starts_with("date=20"))
    );
    // Events and alarms are there too (empty tables give no files but are listed).
    assert!(seen["manifest"]["tables"].get("measurements").is_some());

    // The same export again is refused, then replaces the first with --overwrite.
    let (code, refused) = start_export(&twinlake, &json!({"out": all, "twin": ["depot"]}));
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("--overwrite"),
        "{refused}"
    );
    export(
        &twinlake,
        json!({"out": all, "tables": ["measurements"], "overwrite": true}),
    );
    let again = read_back(&all, None);
    assert_eq!(
        again["manifest"]["tables"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["measurements"]
    );
    assert_readers_agree(&again["tables"]["measurements"], rows, sum);

    // A gateway; a subtree as of each row's time (the sensor is below the hub only after it moved).
    let truck2 = out.join("truck2").display().to_string();
    export(
        &twinlake,
        json!({"out": truck2, "tables": ["measurements"], "gateways": ["truck2"]}),
    );
    let (rows2, sum2) = sql_count_and_sum(&twinlake, "WHERE gateway = 'truck2'");
    assert_readers_agree(
        &read_back(&truck2, None)["tables"]["measurements"],
        rows2,
        sum2,
    );
    let hub = out.join("hub").display().to_string();
    export(
        &twinlake,
        json!({"out": hub, "tables": ["measurements"], "subtree": "truck1:device:hub"}),
    );
    let below_hub = read_back(&hub, None);
    let listing = below_hub["tables"]["measurements"]["listing"]
        .as_array()
        .unwrap();
    assert_eq!(listing.len(), 3, "{listing:?}");
    assert!(listing.iter().all(|r| r["path"] == "truck1/hub/sensor"));

    // One file; any read-only query.
    let single = out.join("single").display().to_string();
    export(
        &twinlake,
        json!({"out": single, "tables": ["measurements"], "single_file": true}),
    );
    assert!(Path::new(&single).join("measurements.parquet").is_file());
    assert_readers_agree(
        &read_back(&single, None)["tables"]["measurements"],
        rows,
        sum,
    );
    let query = out.join("query").display().to_string();
    export(
        &twinlake,
        json!({"out": query, "sql": "SELECT gateway, count(*) AS n FROM measurements GROUP BY gateway"}),
    );
    let query_seen = read_back(&query, None);
    assert_eq!(query_seen["tables"]["query"]["pandas"]["rows"], 2);

    // Bad requests fail at once with what to fix, and write nothing.
    let bad = out.join("bad").display().to_string();
    for (request, says) in [
        (
            json!({"out": bad, "tables": ["measurments"]}),
            "unknown table",
        ),
        (
            json!({"out": bad, "from": "2026-11-02", "to": "2026-11-01"}),
            "is not after --from",
        ),
        (
            json!({"out": bad, "subtree": "truck9:device:nothing"}),
            "no such entity",
        ),
        (
            json!({"out": bad, "gateways": ["truck9"]}),
            "no such gateway",
        ),
        (
            json!({"out": bad, "sql": "DELETE FROM measurements"}),
            "--sql",
        ),
        (
            json!({"out": bad, "sql": "CREATE TABLE x AS SELECT 1"}),
            "--sql",
        ),
        (
            json!({"out": bad, "twin": ["value"]}),
            "already has a column",
        ),
        (json!({"out": "relative/dir"}), "absolute path"),
        (
            json!({"out": dir.path().join("lake/x").display().to_string()}),
            "the lake is at",
        ),
    ] {
        let (code, refused) = start_export(&twinlake, &request);
        assert_eq!(code, 400, "{request}: {refused}");
        let message = refused["error"].as_str().unwrap();
        assert!(message.contains(says), "{request}: {message}");
    }
    assert!(!Path::new(&bad).exists(), "a refused export wrote {bad}");
    assert_eq!(
        twinlake.metric("twinlake_exports_ended_total{state=\"refused\"}"),
        Some(10.0)
    );

    // As a new user: the CLI, relative --from, a progress line, a dataset DuckDB reads.
    let cli_out = out.join("cli");
    let output = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args([
            "export",
            "--from",
            "-1d",
            "--gateway",
            "truck1",
            "--twin",
            "depot",
            "--out",
        ])
        .arg(&cli_out)
        .env("TWINLAKE_URL", &twinlake.http)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}{stderr}");
    let (rows1, _) = sql_count_and_sum(&twinlake, "WHERE gateway = 'truck1'");
    assert!(stderr.contains("export succeeded"), "{stderr}");
    assert!(stdout.contains("manifest:"), "{stdout}");
    let counted = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM '{}/measurements/**/*.parquet'\").fetchall()[0][0])",
            cli_out.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout).trim(),
        rows1.to_string()
    );
}

/// The flags that give Twinlake moto's S3 (through `proxy`) for exports; the lake stays local.
fn s3_export_flags(proxy: &TcpProxy) -> Vec<String> {
    let lake_flags = proxy.s3_flags("unused");
    // Everything but --store-url and its value.
    lake_flags[2..].to_vec()
}

/// The objects under `prefix` of bucket `twinlake` on moto.
fn bucket_listing(moto: &Moto, prefix: &str) -> Vec<String> {
    let output = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import pyarrow.fs as f\n\
             fs = f.S3FileSystem(endpoint_override='http://127.0.0.1:{}', access_key='test', \
             secret_key='testtesttest', region='us-east-1', scheme='http')\n\
             sel = f.FileSelector('twinlake/{prefix}', recursive=True, allow_not_found=True)\n\
             print('\\n'.join(i.path for i in fs.get_file_info(sel) if i.type == f.FileType.File))",
            moto.port
        ))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn exports_to_s3_stop_cleanly_and_read_one_snapshot() {
    let moto = Moto::start("twinlake");
    let proxy = TcpProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = s3_export_flags(&proxy);
    flags.extend(
        [
            "--persist-max-rows",
            "300",
            "--compact-interval-s",
            "1",
            "--compact-min-files",
            "2",
        ]
        .map(str::to_owned),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &flags);
    let fleet = |twinlake: &Twinlake, rounds: &str, start: &str| {
        let published = simulate_with(
            &twinlake.mqtt_url,
            &[
                "--seed",
                "3",
                "--gateways",
                "3",
                "--start",
                start,
                "--step",
                "30m",
                "--rounds",
                rounds,
                "--rate",
                "0",
            ],
        );
        wait_for_ingest(twinlake, published);
    };
    fleet(&twinlake, "150", "2026-11-01T00:00:00Z");
    let endpoint = format!("http://127.0.0.1:{}", moto.port);

    // To S3, read back with pyarrow's S3 filesystem and Polars.
    export(
        &twinlake,
        json!({"out": "s3://twinlake/exports/full", "tables": ["measurements"]}),
    );
    let (rows, sum) = sql_count_and_sum(&twinlake, "");
    let seen = read_back("s3://twinlake/exports/full", Some(&endpoint));
    assert_readers_agree(&seen["tables"]["measurements"], rows, sum);
    assert!(
        seen["tables"]["measurements"]["date_dirs"]
            .as_array()
            .unwrap()
            .len()
            >= 3
    );

    // Cancelled while its uploads hang: no manifest, and the files it finished are removed.
    let (code, started) = start_export(
        &twinlake,
        &json!({"out": "s3://twinlake/exports/cancelled", "tables": ["measurements"]}),
    );
    assert_eq!(code, 202, "{started}");
    proxy.set_blackhole(true);
    let id = started["id"].as_str().unwrap();
    let cancelled = blocking_delete(&format!("{}/api/v1/export/{id}", twinlake.http));
    assert_eq!(cancelled, 202);
    let status = wait_for_export(&twinlake, id, Duration::from_secs(30));
    assert_eq!(status["state"], "cancelled", "{status}");
    proxy.set_blackhole(false);
    let left = wait_for_listing(&moto, "exports/cancelled", |objects| {
        objects.iter().all(|o| !o.ends_with(".parquet"))
    });
    assert!(
        !left.iter().any(|o| o.ends_with("_manifest.json")),
        "{left:?}"
    );

    // Killed while its uploads hang: no manifest.
    let (code, started) = start_export(
        &twinlake,
        &json!({"out": "s3://twinlake/exports/killed", "tables": ["measurements"]}),
    );
    assert_eq!(code, 202, "{started}");
    proxy.set_blackhole(true);
    twinlake.kill();
    proxy.set_blackhole(false);
    let left = bucket_listing(&moto, "exports/killed");
    assert!(
        left.iter().any(|o| o.ends_with("_twinlake_export.json")),
        "{left:?}"
    );
    assert!(
        !left.iter().any(|o| o.ends_with("_manifest.json")),
        "{left:?}"
    );
    twinlake.start_again();

    // An export reads the tables as they were when it was asked for: rows that arrive, persist
    // and compaction meanwhile neither add to it nor double it. Its destination hangs until
    // all of that has happened.
    let (rows, sum) = sql_count_and_sum(&twinlake, "");
    let files_before = twinlake
        .metric("twinlake_compacted_files_total")
        .unwrap_or(0.0);
    proxy.set_blackhole(true);
    let http = twinlake.http.clone();
    let asked = std::thread::spawn(move || {
        let request = json!({"out": "s3://twinlake/exports/snapshot", "tables": ["measurements"]});
        blocking_post(&format!("{http}/api/v1/export"), &request)
    });
    std::thread::sleep(Duration::from_secs(2));
    // Readings 15 minutes off the first ones, on days the export reads.
    fleet(&twinlake, "60", "2026-11-02T00:15:00Z");
    twinlake.wait_for_metric(
        "twinlake_compacted_files_total",
        Duration::from_secs(60),
        |compacted| compacted > files_before,
    );
    proxy.set_blackhole(false);
    let (code, body) = asked.join().unwrap();
    assert_eq!(code, 202, "{body}");
    let started: Value = serde_json::from_str(&body).unwrap();
    let status = wait_for_export(
        &twinlake,
        started["id"].as_str().unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(status["state"], "succeeded", "{status}");
    assert!(
        sql_count_and_sum(&twinlake, "").0 > rows,
        "no rows arrived meanwhile"
    );
    let seen = read_back("s3://twinlake/exports/snapshot", Some(&endpoint));
    assert_readers_agree(&seen["tables"]["measurements"], rows, sum);
}

/// Waits until the listing of `prefix` satisfies `done` (a removal runs after the state says
/// cancelled); the listing.
fn wait_for_listing(moto: &Moto, prefix: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listing = bucket_listing(moto, prefix);
        if done(&listing) || Instant::now() > deadline {
            return listing;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
