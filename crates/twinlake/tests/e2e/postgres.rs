//! The PostgreSQL port with the clients users connect with: Grafana's two drivers (lib/pq and
//! pgx's pgconn, built from Debian's Go packages by `grafana_client.go`) sending what Grafana
//! sends, psql, psycopg2 (simple protocol, named cursors) and psycopg 3 (extended, with
//! parameters); sign-in with SCRAM and over TLS; what a read-only server refuses; a cancel that
//! stops the scan.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::access::Serve;
use crate::endpoint::add_user;
use crate::queries::{simulate_with, wait_for_ingest};
use crate::support::{
    Broker, Twinlake, free_port, make_certificates, message, publish, wait_for_port,
};

/// 4 trucks, one hour of one-minute rounds from 2026-11-01T00:00:00Z.
fn simulate_fleet(twinlake: &Twinlake) {
    let published = simulate_with(
        &twinlake.mqtt_url,
        &[
            "--seed",
            "7",
            "--start",
            "2026-11-01T00:00:00Z",
            "--step",
            "60s",
            "--rounds",
            "60",
            "--rate",
            "0",
            "--gateways",
            "4",
        ],
    );
    wait_for_ingest(twinlake, published);
}

/// A server with [`simulate_fleet`] in it, part of it persisted; the directory holds its data.
fn simulated_fleet() -> (tempfile::TempDir, Twinlake) {
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(
        dir.path(),
        Broker::Embedded(free_port()),
        &["--persist-max-rows", "2000"],
    );
    simulate_fleet(&twinlake);
    (dir, twinlake)
}

/// The Grafana stand-in, built once per test run.
fn grafana_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/grafana_client.go");
        let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grafana_client");
        let output = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(&source)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache"))
            .output()
            .expect("go is installed (golang-go, golang-github-lib-pq-dev, golang-github-jackc-pgx-v4-dev)");
        assert!(
            output.status.success(),
            "building grafana_client: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        binary
    })
}

/// Grafana's connection string for the data source, as it builds it.
fn grafana_dsn(port: u16, user: &str, password: &str) -> String {
    format!(
        "user='{user}' password='{password}' host='127.0.0.1' dbname='twinlake' port={port} sslmode='disable'"
    )
}

/// The report of `grafana_client` with `driver` for `queries`.
fn grafana(driver: &str, dsn: &str, queries: &[&str]) -> Value {
    grafana_outcome(driver, dsn, queries).unwrap_or_else(|error| panic!("{error}"))
}

/// [`grafana`], or why the client could not connect.
fn grafana_outcome(driver: &str, dsn: &str, queries: &[&str]) -> Result<Value, String> {
    let mut child = Command::new(grafana_client())
        .args([driver, dsn])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run grafana_client");
    {
        use std::io::Write;
        let input = serde_json::to_vec(queries).unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("grafana_client {driver}: {stderr}"));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("{e}: {stderr}"))
}

/// `$__timeFilter(time)` for the simulated hour, as Grafana expands it.
const TIME_FILTER: &str = "time BETWEEN '2026-11-01T00:00:00Z' AND '2026-11-01T01:00:00Z'";

/// Grafana's table builder query (postgresMetaQuery.ts), verbatim.
const GRAFANA_TABLES: &str = r#"SELECT
    CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          ) THEN 0 ELSE 1 END, 1"#;

/// Grafana's column builder query for the table `measurements`, verbatim.
const GRAFANA_COLUMNS: &str = r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('measurements'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('measurements'))[1]
          AND quote_ident(table_name) = (parse_ident('measurements'))[2]
        ELSE quote_ident(table_name) = 'measurements'
          AND
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      END"#;

fn column_names(result: &Value) -> Vec<&str> {
    result["columns"]
        .as_array()
        .map(|columns| columns.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn column_types(result: &Value) -> Vec<&str> {
    result["columns"]
        .as_array()
        .map(|columns| columns.iter().filter_map(|c| c["type"].as_str()).collect())
        .unwrap_or_default()
}

fn cells(result: &Value, column: usize) -> Vec<String> {
    result["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| row[column].as_str().unwrap_or("NULL").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn grafanas_drivers_get_what_grafana_expects() {
    let (_dir, twinlake) = simulated_fleet();
    let series_panel = format!(
        "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", entity AS metric, \
         avg(value) AS value FROM measurements WHERE {TIME_FILTER} AND series = 'gps.speed' \
         GROUP BY 1,2 ORDER BY 1"
    );
    let binned_panel = format!(
        "SELECT date_bin(interval '5 minutes', time) AS \"time\", avg(value) AS value \
         FROM measurements WHERE {TIME_FILTER} AND series = 'gps.speed' GROUP BY 1 ORDER BY 1"
    );
    let annotations = format!(
        "SELECT time AS \"time\", text AS text, severity || ',' || gateway AS tags \
         FROM alarms WHERE {TIME_FILTER} ORDER BY 1"
    );
    let variable = "SELECT DISTINCT gateway AS __text, gateway AS __value FROM gateways ORDER BY 1";
    let queries = [
        "SELECT current_setting('server_version_num')::int/100 as version",
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
        GRAFANA_TABLES,
        GRAFANA_COLUMNS,
        &series_panel,
        &binned_panel,
        &annotations,
        variable,
        "SELECT 1 AS a; SELECT 2 AS a /*application='grafana',source='bi'*/;",
        "CREATE TABLE grafana_was_here (a int)",
        "DELETE FROM measurements",
        "SET datafusion.execution.batch_size = 1",
    ];
    for driver in ["pq", "pgconn"] {
        let report = grafana(
            driver,
            &grafana_dsn(twinlake.pg_port, "grafana", ""),
            &queries,
        );
        assert_eq!(report["ping"], "ok", "{driver}: {report}");
        let results = report["results"].as_array().unwrap();
        for (result, query) in results.iter().zip(&queries).take(9) {
            assert!(result["error"].is_null(), "{driver}: {query}\n{result}");
        }
        assert_eq!(cells(&results[0], 0), ["1600"], "{driver}");
        assert_eq!(cells(&results[1], 0), Vec::<String>::new(), "{driver}");
        let tables = cells(&results[2], 0);
        for table in [
            "measurements",
            "alarms",
            "events",
            "twin",
            "gateways",
            "entities",
        ] {
            assert!(
                tables.iter().any(|t| t == table),
                "{driver}: {table} not in {tables:?}"
            );
        }
        let columns: Vec<(String, String)> = cells(&results[3], 0)
            .into_iter()
            .zip(cells(&results[3], 1))
            .collect();
        for expected in [
            ("time", "timestamp with time zone"),
            ("value", "double precision"),
            ("entity", "text"),
        ] {
            assert!(
                columns
                    .iter()
                    .any(|(c, t)| (c.as_str(), t.as_str()) == expected),
                "{driver}: {expected:?} not in {columns:?}"
            );
        }
        // A series panel: a numeric `time` ascending, a `metric` label, a float `value`.
        let panel = &results[4];
        assert_eq!(column_names(panel), ["time", "metric", "value"], "{driver}");
        let times: Vec<f64> = cells(panel, 0).iter().map(|t| t.parse().unwrap()).collect();
        assert!(times.len() >= 4 * 12, "{driver}: {} points", times.len());
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{driver}: time not ascending"
        );
        assert_eq!(times[0], 1_793_491_200.0, "{driver}: first 5-minute group");
        let binned = &results[5];
        // lib/pq hands a parsed time (Go formats it in RFC 3339); pgconn the text as sent,
        // in the form pgx parses.
        let first_time = cells(binned, 0)[0].clone();
        let expected = if driver == "pq" {
            "2026-11-01T00:00:00Z"
        } else {
            "2026-11-01 00:00:00.000000+00"
        };
        assert_eq!(first_time, expected, "{driver}: timestamptz");
        let annotation = &results[6];
        assert_eq!(
            column_names(annotation),
            ["time", "text", "tags"],
            "{driver}"
        );
        let variable = &results[7];
        assert_eq!(cells(variable, 0).len(), 4, "{driver}: {variable}");
        assert_eq!(
            results[8]["sets"], 2,
            "{driver}: two statements, two results"
        );
        assert_eq!(cells(&results[8], 0).last().map(String::as_str), Some("2"));
        let codes: Vec<&str> = results[9..]
            .iter()
            .map(|r| r["code"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(codes, ["25006", "25006", "42501"], "{driver}: {results:?}");
        if driver == "pgconn" {
            // The type OIDs Grafana decodes by: float8, text, float8; timestamptz.
            assert_eq!(column_types(panel), ["701", "25", "701"]);
            assert_eq!(column_types(binned)[0], "1184");
            assert!(
                panel["tag"].as_str().unwrap().starts_with("SELECT "),
                "{panel}"
            );
        } else {
            assert_eq!(column_types(panel), ["FLOAT8", "TEXT", "FLOAT8"]);
            assert_eq!(column_types(binned)[0], "TIMESTAMPTZ");
        }
    }
    // Nothing the clients tried changed anything, and the port's catalogs stay on the port.
    assert!(twinlake.count("SELECT count(*) FROM measurements") > 0);
    let (status, body) = twinlake.query_as("SELECT count(*) FROM pg_catalog.pg_class", "csv");
    assert_eq!(status, 400, "pg_catalog over HTTP: {body}");
}

/// psql with `args`, as `user` with `password`: (exit code, stdout and stderr).
fn psql(port: u16, user: &str, password: &str, sslmode: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new("psql")
        .arg("-X")
        .args(["-v", "ON_ERROR_STOP=1"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=twinlake sslmode={sslmode} connect_timeout=10"
        ))
        .args(args)
        .env("PGPASSWORD", password)
        .output()
        .expect("psql is installed (postgresql-client)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn psql_and_psycopg_read_and_cannot_write_and_a_cancel_stops_the_scan() {
    let (dir, twinlake) = simulated_fleet();
    let port = twinlake.pg_port;

    let (code, out) = psql(port, "analyst", "", "disable", &["-c", "\\dt"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("measurements") && out.contains("alarms"),
        "{out}"
    );
    let (code, out) = psql(port, "analyst", "", "disable", &["-c", "\\d measurements"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("timestamp with time zone") && out.contains("double precision"),
        "{out}"
    );
    let (code, out) = psql(
        port,
        "analyst",
        "",
        "disable",
        &[
            "-At",
            "-c",
            "SELECT count(DISTINCT gateway) FROM measurements",
        ],
    );
    assert_eq!((code, out.trim()), (0, "4"), "{out}");
    let copied = dir.path().join("copied.csv");
    let copy = format!(
        "\\copy (SELECT * FROM measurements) to '{}'",
        copied.display()
    );
    let (code, out) = psql(port, "analyst", "", "disable", &["-c", &copy]);
    assert_ne!(code, 0, "\\copy must be refused: {out}");
    assert!(out.contains("COPY is not supported"), "{out}");
    let (code, out) = psql(
        port,
        "analyst",
        "",
        "disable",
        &[
            "-c",
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        ],
    );
    assert_ne!(code, 0, "{out}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/postgres_clients.py");
    let dsn = format!("host=127.0.0.1 port={port} user=analyst dbname=twinlake sslmode=disable");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&dsn)
        .arg(twinlake.pid().to_string())
        .output()
        .expect("python3 with psycopg2 and psycopg");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    eprintln!("{report}");
    let expected = twinlake.query(
        "SELECT gateway, count(*) AS n FROM measurements WHERE series = 'gps.speed' \
         GROUP BY gateway ORDER BY gateway",
    );
    let expected: Vec<Value> = expected
        .iter()
        .map(|row| json!([row["gateway"], row["n"]]))
        .collect();
    assert_eq!(report["psycopg2_rows"].as_array().unwrap(), &expected);
    assert_eq!(report["psycopg2_update"], "25006");
    let speeds: i64 = expected.iter().map(|row| row[1].as_i64().unwrap()).sum();
    assert_eq!(
        report["cursor_rows"], speeds,
        "a named cursor reads every row"
    );
    assert_eq!(report["cursor_ordered"], true);
    let parameterised: Vec<Value> = report["psycopg3_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| json!([row[0], row[1]]))
        .collect();
    assert_eq!(parameterised, expected, "psycopg 3 with parameters");
    assert!(
        report["psycopg3_binary"][0]
            .as_str()
            .unwrap()
            .starts_with("2026-11-01T00:"),
        "{report}"
    );
    assert_eq!(report["psycopg3_drop"], "25006");
    assert_eq!(
        report["extended_pings"],
        json!([0, 0, 0]),
        "PGRES_EMPTY_QUERY"
    );
    let tables = report["schema_tables"].as_array().unwrap();
    assert!(
        tables.contains(&json!("measurements")) && tables.contains(&json!("twin")),
        "{tables:?}"
    );
    assert_eq!(
        report["schema_columns"][0],
        json!(["time", "timestamp with time zone", "timestamptz", 1])
    );

    // The join runs for minutes; cancelled after 2 s, it must stop using the server's CPU.
    let running = report["cpu_while_running"].as_f64().unwrap();
    assert!(running > 1.0, "the query was not running: {report}");
    assert_eq!(report["cancelled"]["code"], "57014", "{report}");
    let after_cancel = report["cpu_after_cancel"].as_f64().unwrap();
    assert!(
        after_cancel < 0.5,
        "CPU after the cancel: {after_cancel} s in 2 s: {report}"
    );
    assert_eq!(report["timeout"]["code"], "57014", "{report}");
    assert!(
        report["timeout"]["seconds"].as_f64().unwrap() < 10.0,
        "{report}"
    );
    let after_timeout = report["cpu_after_timeout"].as_f64().unwrap();
    assert!(
        after_timeout < 0.5,
        "CPU after the timeout: {after_timeout} s in 2 s: {report}"
    );
}

/// `serve` with `flags`, which must refuse to start: what it said.
fn refused_start(data: &Path, flags: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--mqtt-listen", &format!("127.0.0.1:{}", free_port())])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start twinlake serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started with {flags:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "serve started with {flags:?}");
    stderr
}

#[test]
fn signing_in_takes_a_user_of_the_query_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("query-users");
    add_scram_user(&users, "ana", "pencil");
    add_user(&users, "bob", "hunter2", false);
    let certificates = dir.path().join("certificates");
    std::fs::create_dir(&certificates).unwrap();
    make_certificates(&certificates);
    let users_flag = users.display().to_string();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{}", free_port());
    let serve = Serve::start(
        &dir.path().join("plain"),
        &http,
        &["--query-password-file", &users_flag, "--pg-listen", &listen],
    );
    wait_for_port(port, "twinlake's PostgreSQL port");
    let select = ["-At", "-c", "SELECT 41 + 1"];
    let (code, out) = psql(port, "ana", "pencil", "disable", &select);
    assert_eq!((code, out.trim()), (0, "42"), "SCRAM: {out}");
    let (code, out) = psql(port, "ana", "wrong", "disable", &select);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("password authentication failed"), "{out}");
    let (code, out) = psql(port, "nobody", "pencil", "disable", &select);
    assert!(
        code != 0 && out.contains("password authentication failed"),
        "{out}"
    );
    // An argon2 hash cannot answer SCRAM, and a cleartext password needs TLS.
    let (code, out) = psql(port, "bob", "hunter2", "disable", &select);
    assert!(
        code != 0 && out.contains("password authentication failed"),
        "{out}"
    );
    // Grafana's drivers sign in with SCRAM too; without a password they do not get in.
    for driver in ["pq", "pgconn"] {
        let report = grafana(
            driver,
            &grafana_dsn(port, "ana", "pencil"),
            &["SELECT 1 AS one"],
        );
        assert_eq!(report["ping"], "ok", "{driver}: {report}");
        let refused = grafana_outcome(driver, &grafana_dsn(port, "ana", ""), &["SELECT 1 AS one"]);
        assert!(
            refused.is_err() || refused.as_ref().is_ok_and(|r| r["ping"] != "ok"),
            "{driver}: {refused:?}"
        );
    }
    drop(serve);

    let cert = certificates.join("broker.pem").display().to_string();
    let key = certificates.join("broker.key").display().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve = Serve::start(
        &dir.path().join("tls"),
        &http,
        &[
            "--query-password-file",
            &users_flag,
            "--pg-listen",
            &listen,
            "--pg-tls-cert",
            &cert,
            "--pg-tls-key",
            &key,
        ],
    );
    wait_for_port(port, "twinlake's PostgreSQL port");
    let (code, out) = psql(port, "bob", "hunter2", "require", &select);
    assert_eq!((code, out.trim()), (0, "42"), "cleartext over TLS: {out}");
    let (code, out) = psql(port, "ana", "pencil", "require", &select);
    assert_eq!((code, out.trim()), (0, "42"), "SCRAM over TLS: {out}");
    let (code, out) = psql(port, "ana", "pencil", "disable", &select);
    assert!(
        code != 0 && out.contains("encrypted connections only"),
        "{out}"
    );
    drop(serve);

    // TLS that cannot be loaded stops the start, rather than serving in plaintext.
    let missing = dir.path().join("missing.key").display().to_string();
    let said = refused_start(
        &dir.path().join("bad-tls"),
        &[
            "--pg-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--pg-tls-cert",
            &cert,
            "--pg-tls-key",
            &missing,
        ],
    );
    assert!(said.contains("PostgreSQL port TLS"), "{said}");
    // Beyond loopback, nobody without a password file, unless allowed explicitly.
    let said = refused_start(
        &dir.path().join("open"),
        &["--pg-listen", &format!("0.0.0.0:{}", free_port())],
    );
    assert!(said.contains("--pg-allow-anonymous true"), "{said}");
}

fn add_scram_user(file: &Path, user: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args(["passwd", "--scram"])
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(child.stdin.as_mut().unwrap(), "{password}").unwrap();
    }
    assert!(child.wait().unwrap().success());
}

/// The simulated hour as Grafana sends its range.
const FROM: &str = "2026-11-01T00:00:00Z";
const TO: &str = "2026-11-01T01:00:00Z";

/// `sql` with Grafana's PostgreSQL macros and the template variables expanded as Grafana
/// expands them before sending (grafana.md §2.6), for the range [`FROM`]..[`TO`] and a
/// `$__interval` of one minute.
fn expand(sql: &str, variables: &[(String, String)]) -> String {
    let mut sql = sql.replace("$__interval", "1m");
    for (name, value) in variables {
        sql = sql.replace(&format!("${name}"), value);
    }
    while let Some(start) = sql.find("$__") {
        let open = start + sql[start..].find('(').expect("a macro's (");
        let close = open + sql[open..].find(')').expect("a macro's )");
        let name = &sql[start + 3..open];
        let args: Vec<&str> = sql[open + 1..close].split(',').map(str::trim).collect();
        let group = |column: &str, interval: &str| {
            let interval = interval.trim_matches('\'');
            let (number, unit) = interval.split_at(interval.len() - 1);
            let seconds: u64 = number.parse::<u64>().expect("an interval")
                * match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    other => panic!("interval unit {other}"),
                };
            format!("floor(extract(epoch from {column})/{seconds})*{seconds}")
        };
        let expanded = match name {
            "timeFilter" => format!("{} BETWEEN '{FROM}' AND '{TO}'", args[0]),
            "timeFrom" => format!("'{FROM}'"),
            "timeTo" => format!("'{TO}'"),
            "timeGroup" => group(args[0], args[1]),
            "timeGroupAlias" => format!("{} AS \"time\"", group(args[0], args[1])),
            other => panic!("macro $__{other} is not expanded by this test"),
        };
        sql.replace_range(start..=close, &expanded);
    }
    sql
}

/// Every query of every provisioned dashboard (panels, variables, annotations) runs over the
/// PostgreSQL port, with Grafana's macros expanded, and gives Grafana a shape it can draw.
#[test]
fn every_dashboard_query_runs_and_has_the_shape_grafana_needs() {
    let (_dir, twinlake) = simulated_fleet();
    let dsn = grafana_dsn(twinlake.pg_port, "grafana", "");
    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dashboards)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "dashboards: {files:?}");
    let mut checked = 0;
    for file in &files {
        let board: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // Variables in order, each from the first value of its own query, as Grafana picks.
        let mut variables: Vec<(String, String)> = Vec::new();
        for variable in board["templating"]["list"].as_array().unwrap() {
            let sql = expand(variable["query"].as_str().unwrap(), &variables);
            let report = grafana("pgconn", &dsn, &[&sql]);
            let result = &report["results"][0];
            assert!(
                result["error"].is_null(),
                "{name}: variable {}: {sql}\n{result}",
                variable["name"]
            );
            let column = if column_names(result).contains(&"__value") {
                1
            } else {
                0
            };
            let first = cells(result, column).into_iter().next();
            let first = first
                .unwrap_or_else(|| panic!("{name}: variable {} has no values", variable["name"]));
            variables.push((variable["name"].as_str().unwrap().to_owned(), first));
        }
        variables.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        for annotation in board["annotations"]["list"].as_array().unwrap() {
            let Some(sql) = annotation["target"]["rawSql"].as_str() else {
                continue;
            };
            let sql = expand(sql, &variables);
            let result = &grafana("pgconn", &dsn, &[&sql])["results"][0];
            assert!(
                result["error"].is_null(),
                "{name}: {}: {sql}\n{result}",
                annotation["name"]
            );
            assert_eq!(
                column_names(result).first(),
                Some(&"time"),
                "{name}: {result}"
            );
            assert!(column_names(result).contains(&"text"), "{name}: {result}");
            checked += 1;
        }
        for panel in board["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            for target in panel["targets"].as_array().unwrap() {
                let sql = expand(target["rawSql"].as_str().unwrap(), &variables);
                let result = &grafana("pgconn", &dsn, &[&sql])["results"][0];
                assert!(
                    result["error"].is_null(),
                    "{name}: {title}: {sql}\n{result}"
                );
                if target["format"] == "time_series" {
                    // Grafana's long format: a `time` column, ascending.
                    assert_eq!(
                        column_names(result).first(),
                        Some(&"time"),
                        "{name}: {title}"
                    );
                    let times: Vec<f64> = cells(result, 0)
                        .iter()
                        .map(|t| t.parse().unwrap())
                        .collect();
                    assert!(
                        !times.is_empty() || title.contains("rejected"),
                        "{name}: {title}: no points"
                    );
                    assert!(
                        times.windows(2).all(|w| w[0] <= w[1]),
                        "{name}: {title}: time not ascending"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "{checked} dashboard queries");
}

/// Connections past `--pg-max-connections` get PostgreSQL's "too many clients" and are counted.
#[test]
fn connections_past_the_limit_are_told_so_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(
        dir.path(),
        Broker::Embedded(free_port()),
        &["--pg-max-connections", "1"],
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=analyst dbname=twinlake sslmode=disable",
        twinlake.pg_port
    );
    let holder = "import psycopg2, sys, time\n\
                  c = psycopg2.connect(sys.argv[1])\n\
                  print('connected', flush=True)\n\
                  time.sleep(30)\n";
    let mut holding = Command::new("python3")
        .args(["-c", holder, &dsn])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holding.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "connected");
    let (code, out) = psql(
        twinlake.pg_port,
        "analyst",
        "",
        "disable",
        &["-c", "SELECT 1"],
    );
    let open = twinlake.metric("twinlake_pg_connections");
    let _ = holding.kill();
    let _ = holding.wait();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("too many clients"), "{out}");
    assert_eq!(
        twinlake.metric("twinlake_pg_connections_refused_total"),
        Some(1.0)
    );
    assert_eq!(open, Some(1.0));
}

/// A query that keeps both cores busy until its timeout, over the PostgreSQL port, while a
/// gateway publishes: every message is acknowledged and stored, and the query ends with
/// PostgreSQL's query_canceled (57014).
#[test]
fn ingest_goes_on_while_a_query_runs_into_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &[]);
    let port = twinlake.pg_port;
    let heavy = std::thread::spawn(move || {
        let join = "SELECT count(*) FROM generate_series(1, 3000000) a \
                    JOIN generate_series(1, 3000000) b ON a.value % 1000 = b.value % 1000";
        let started = std::time::Instant::now();
        let timeout = ["-c", "SET statement_timeout = '8s'", "-c", join];
        let (code, out) = psql(port, "analyst", "", "disable", &timeout);
        (code, out, started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let messages: Vec<_> = (0..3000)
        .map(|n| {
            let payload = format!("{{\"load\":{n}}}");
            message("te/device/main///m/under_load", &payload, false, 1)
        })
        .collect();
    let began = std::time::Instant::now();
    publish(&twinlake.mqtt_url, messages);
    let acknowledged = began.elapsed();
    let (code, out, ran) = heavy.join().unwrap();
    assert!(
        ran > acknowledged + std::time::Duration::from_secs(1),
        "the query did not run beside the publishing: {ran:?} against {acknowledged:?}"
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("ran longer than its limit"), "{out}");
    assert_eq!(
        twinlake.count("SELECT count(*) FROM measurements WHERE series = 'load'"),
        3000
    );
    eprintln!(
        "3000 QoS 1 messages acknowledged in {acknowledged:?} while a query ran {ran:?} into its timeout"
    );
}

/// tokio-postgres, as Rust programs connect: the simple protocol (text) and the extended one
/// with `$1` parameters and binary results, on Grafana's newest schema API queries too.
#[test]
fn tokio_postgres_queries_with_and_without_parameters() {
    let (_dir, twinlake) = simulated_fleet();
    let config = format!(
        "host=127.0.0.1 port={} user=analyst dbname=twinlake",
        twinlake.pg_port
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let simple = client
            .simple_query("SELECT count(DISTINCT gateway) AS gateways FROM measurements")
            .await
            .unwrap();
        let gateways = simple.iter().find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(gateways.as_deref(), Some("4"));

        let rows = client
            .query(
                "SELECT gateway, count(*) AS n, max(time) AS newest FROM measurements \
                 WHERE series = $1 AND value >= $2 GROUP BY gateway ORDER BY gateway",
                &[&"gps.speed", &0.0f64],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 4);
        let first: &str = rows[0].get("gateway");
        let count: i64 = rows[0].get("n");
        let newest: std::time::SystemTime = rows[0].get("newest");
        assert_eq!((first, count), ("truck0001", 60));
        let newest = newest
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(newest, 1_793_491_200 + 59 * 60, "the last one-minute round");

        let columns = client
            .query(
                "SELECT column_name, data_type, udt_name FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&"public", &"alarms"],
            )
            .await
            .unwrap();
        let time: (String, String) = (columns[0].get(0), columns[0].get(1));
        assert_eq!(
            time,
            ("time".to_owned(), "timestamp with time zone".to_owned())
        );
        let refused = client.execute("DELETE FROM alarms", &[]).await.unwrap_err();
        assert_eq!(refused.code().map(|c| c.code()), Some("25006"), "{refused}");
    });
}
