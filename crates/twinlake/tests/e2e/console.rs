//! The web console in a real browser: headless Chromium (Debian's, through Selenium) against
//! `serve` with a simulated fleet, each page checked against the SQL API
//! (`console_browser.py`), and refused to a browser without credentials when there are users.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::access::{curl, serve_with_a_user};
use crate::support::{Broker, Twinlake, free_port, message, publish_as};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/console_browser.py");

fn run_browser(mode: &str, base: &str, screenshots: Option<&Path>) {
    let mut command = Command::new("python3");
    command.arg(SCRIPT).arg(mode).arg(base);
    if let Some(dir) = screenshots {
        command.arg(dir);
    }
    let output = command.output().expect("python3");
    let log = String::from_utf8_lossy(&output.stdout);
    println!("{log}");
    assert!(
        output.status.success(),
        "the console in Chromium (apt chromium chromium-driver, pip selenium; scripts/test \
         installs them):\n{log}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two hours of 12 trucks, ending now; a critical alarm raised on truck0003 half an hour ago
/// and left active; a payload that is not JSON, rejected.
fn simulated_fleet(twinlake: &Twinlake) {
    let status = Command::new(env!("CARGO_BIN_EXE_twinlake"))
        .args([
            "simulate",
            "--gateways",
            "12",
            "--rounds",
            "240",
            "--rate",
            "0",
        ])
        .args(["--step", "30s", "--mqtt-url", &twinlake.mqtt_url, "--start"])
        .arg(rfc3339(unix_now() - 7200))
        .env("RUST_LOG", "warn")
        .status()
        .expect("run twinlake simulate");
    assert!(status.success());
    let raised = rfc3339(unix_now() - 1800);
    let alarm = format!(r#"{{"severity":"critical","text":"Cargo too warm","time":"{raised}"}}"#);
    publish_as(
        &twinlake.mqtt_url,
        "truck0003",
        vec![message(
            "te/device/main///a/temperature_high",
            &alarm,
            true,
            1,
        )],
    );
    publish_as(
        &twinlake.mqtt_url,
        "truck0004",
        vec![message("te/device/main///m/env", "not json", false, 1)],
    );
    twinlake.wait_for_count("SELECT count(*) FROM rejected", 1, Duration::from_secs(10));
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Unix seconds as RFC 3339, by `date` (as a user would write it).
fn rfc3339(seconds: i64) -> String {
    let output = Command::new("date")
        .args(["-u", "-d", &format!("@{seconds}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn every_page_of_the_console_shows_what_sql_says_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(&dir.path().join("data"), Broker::Embedded(free_port()), &[]);
    simulated_fleet(&twinlake);
    // TWINLAKE_CONSOLE_SCREENSHOTS=docs/console keeps the screenshots for the docs.
    let screenshots = std::env::var_os("TWINLAKE_CONSOLE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("screenshots"));
    std::fs::create_dir_all(&screenshots).unwrap();
    run_browser("check", &twinlake.http, Some(&screenshots));
    for page in ["fleet", "gateway", "sql", "ingest"] {
        let shot = screenshots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map_or(0, |m| m.len());
        assert!(size > 10_000, "a screenshot of {page}: {size} bytes");
    }
}

#[test]
fn the_console_is_only_for_users_when_there_are_users() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, port) = serve_with_a_user(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    run_browser("anonymous", &base, None);
    for asset in ["/", "/console/app.js", "/console/examples.json"] {
        let url = format!("{base}{asset}");
        assert_eq!(curl(&url, &[]).0, 401, "{asset} anonymously");
        assert_eq!(
            curl(&url, &["-u", "ana:s3cret"]).0,
            200,
            "{asset} for a user"
        );
    }
    let (_, page) = curl(&base, &["-u", "ana:s3cret", "-D", "-"]);
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'; script-src 'self'"),
        "{page}"
    );
}
