//! `serve --demo`: one command, and a fleet to query within a minute.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Broker, Twinlake, free_port};

/// `twinlake query` (the CLI the README shows) against `twinlake`, as CSV lines.
fn query_cli(twinlake: &Twinlake, sql: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args(["query", "--url", &twinlake.http, "--format", "csv", sql])
        .output()
        .expect("run twinlake query");
    assert!(
        output.status.success(),
        "twinlake query: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn serve_demo_has_a_fleet_to_query_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &["--demo"]);
    let began = Instant::now();
    let readings = "SELECT count(DISTINCT gateway) AS trucks, count(*) AS readings \
                    FROM measurements";
    loop {
        let lines = query_cli(&twinlake, readings);
        let (trucks, count) = lines[1].split_once(',').expect("two columns");
        if trucks == "10" && count.parse::<u64>().unwrap() > 0 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "after a minute the demo fleet has sent {lines:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Each truck a gateway with its child devices and services registered, and its depot as
    // twin data.
    let devices = twinlake.count(
        "SELECT count(*) FROM entities WHERE gateway = 'truck0001' AND entity <> 'truck0001'",
    );
    assert!(
        devices >= 2,
        "truck0001 has {devices} child devices and services"
    );
    let depots = twinlake.count("SELECT count(*) FROM twin WHERE fragment = 'depot'");
    assert_eq!(depots, 10, "every truck's depot is in its twin");
}
