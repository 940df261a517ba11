//! The spec §6 examples, published with a real MQTT client (retained where thin-edge retains),
//! through the embedded broker and through Mosquitto, then read back over HTTP SQL.

use serde_json::{Value, json};

use crate::support::{Broker, Mosquitto, Twinlake, free_port, message, publish};

pub(crate) fn spec_messages() -> Vec<crate::support::Message> {
    vec![
        message(
            "te/device/main/service/tedge-agent",
            r#"{"@parent":"device/main//","@type":"service","name":"tedge-agent"}"#,
            true,
            1,
        ),
        message(
            "te/device/main/service/tedge-agent/twin/type",
            r#""service""#,
            true,
            1,
        ),
        message(
            "te/device/main/service/tedge-agent/status/health",
            r#"{"pid":7579,"status":"up","time":1795219644.3183434}"#,
            true,
            1,
        ),
        message(
            "te/device/main///twin/agent",
            r#"{"name":"thin-edge.io","url":"https://thin-edge.io","version":"2.0.1"}"#,
            true,
            1,
        ),
        message(
            "te/device/main///cmd/software_list",
            r#"{"types":[]}"#,
            true,
            1,
        ),
        message(
            "te/device/main/service/tedge-agent/config",
            r#"{"device.id":"tedge-research-01"}"#,
            true,
            1,
        ),
        message(
            "te/device/main///m/",
            r#"{"time":"2026-11-21T00:08:39.180999994Z","load":{"load_val3":0.33,"load_val2":0.22,"load_val1":0.11},"cpu":{"percent-active":0.0}}"#,
            false,
            1,
        ),
        message(
            "te/device/child01//",
            r#"{"@type":"child-device","name":"child01","type":"SmartHomeHub"}"#,
            true,
            1,
        ),
        message("te/device/child01///twin/name", r#""child01""#, true, 1),
        message(
            "te/device/nested_child01//",
            r#"{"@type":"child-device","@parent":"device/child01//","name":"nested_child01"}"#,
            true,
            1,
        ),
        message(
            "te/device/child01/service/nodered",
            r#"{"@type":"service","@parent":"device/child01//","name":"nodered","type":"systemd"}"#,
            true,
            1,
        ),
        message(
            "te/device/auto01/service/collectd/m/cpu_usage",
            r#"{"percent":12.5}"#,
            false,
            1,
        ),
        message(
            "te/device/main///m/electrical",
            r#"{"time":"2020-10-15T05:30:47+00:00","temperature":25,"three_phase_current":{"L1":9.5,"L2":10.3,"L3":8.8},"pressure":98}"#,
            false,
            1,
        ),
        message(
            "te/device/child01///m/environment",
            r#"{"time":1702373722.123,"humidity":55}"#,
            false,
            1,
        ),
        message(
            "te/device/main///m/props",
            r#"{"x":1,"properties":{"sensor":"DS18B20","ok":false}}"#,
            false,
            1,
        ),
        message(
            "te/device/main///m/battery_reading/meta",
            r#"{"temperature":{"unit":"°C","precision":"±0.1°C"},"voltage":{"unit":"V","min":0,"max":20},"current":{"unit":"A"}}"#,
            true,
            1,
        ),
        message(
            "te/device/main///e/login",
            r#"{"text":"A user just logged in","time":"2021-01-01T05:30:45+00:00","someOtherCustomFragment":{"nested":{"value":"extra info"}}}"#,
            false,
            1,
        ),
        message("te/device/main///e/no_payload", "", false, 1),
        message(
            "te/device/main///a/temperature_high",
            r#"{"text":"Temperature is very high","severity":"warning","time":"2021-01-01T05:30:45+00:00"}"#,
            true,
            2,
        ),
        message("te/device/main///a/temperature_high", "", true, 2),
        message(
            "te/device/main///twin/device_OS",
            r#"{"family":"Debian","version":"11"}"#,
            true,
            1,
        ),
        message("te/device/child01///twin/maintenanceMode", "true", true, 1),
        message(
            "te/device/main/service/tedge-mapper-c8y/status/health",
            r#"{"pid":4703,"status":"down"}"#,
            true,
            1,
        ),
        message(
            "te/device/main/service/mosquitto-c8y-bridge/status/health",
            "1",
            true,
            1,
        ),
        message(
            "te/factory01/hallA/packaging/belt001",
            r#"{"@type":"child-device","name":"belt001","type":"ConveyorBelt","factory":"factory01"}"#,
            true,
            1,
        ),
        message(
            "te/factory01/hallA/packaging/belt001/m/speed",
            r#"{"rpm":1200}"#,
            false,
            1,
        ),
        // §6.22: rejected by thin-edge, so by Twinlake, into `rejected`.
        message(
            "te/device/main///m/bad_bool",
            r#"{"running":true,"temperature":25}"#,
            false,
            1,
        ),
        message(
            "te/device/main///m/bad_deep",
            r#"{"a":{"b":{"c":1}}}"#,
            false,
            1,
        ),
        message("te/device/main///m/bad_empty", "{}", false, 1),
        message("te/device/main///m/bad_text", "hello", false, 1),
        message(
            "te/device/main///e/bad_time",
            r#"{"text":"x","time":"yesterday"}"#,
            false,
            1,
        ),
        message("te/device/main///unknown/channel", "{}", false, 1),
    ]
}

/// The rows of the spec examples; `topic_prefix` is what a bridge put before their topics.
pub(crate) fn check_spec_rows(twinlake: &Twinlake, topic_prefix: &str) {
    let all_rows = "SELECT (SELECT count(*) FROM measurements) + (SELECT count(*) FROM events) + (SELECT count(*) FROM alarms) + (SELECT count(*) FROM rejected) AS n";
    assert_eq!(
        twinlake.wait_for_count(all_rows, 23, std::time::Duration::from_secs(10)),
        23
    );

    assert_eq!(
        twinlake
            .query("SELECT entity, kind, parent, name, type FROM entity_changes ORDER BY entity"),
        vec![
            json!({"entity": "main", "kind": "device", "parent": null, "name": "main", "type": null}),
            // Auto-registered by collectd's measurement, as thin-edge's agent does (below: the
            // bridge and the mapper by their health messages).
            json!({"entity": "main:device:auto01", "kind": "child-device", "parent": "main", "name": "auto01", "type": null}),
            json!({"entity": "main:device:auto01:service:collectd", "kind": "service", "parent": "main:device:auto01", "name": "collectd", "type": null}),
            json!({"entity": "main:device:child01", "kind": "child-device", "parent": "main", "name": "child01", "type": "SmartHomeHub"}),
            json!({"entity": "main:device:child01:service:nodered", "kind": "service", "parent": "main:device:child01", "name": "nodered", "type": "systemd"}),
            json!({"entity": "main:device:main:service:mosquitto-c8y-bridge", "kind": "service", "parent": "main", "name": "mosquitto-c8y-bridge", "type": null}),
            json!({"entity": "main:device:main:service:tedge-agent", "kind": "service", "parent": "main", "name": "tedge-agent", "type": null}),
            json!({"entity": "main:device:main:service:tedge-mapper-c8y", "kind": "service", "parent": "main", "name": "tedge-mapper-c8y", "type": null}),
            json!({"entity": "main:device:nested_child01", "kind": "child-device", "parent": "main:device:child01", "name": "nested_child01", "type": null}),
            json!({"entity": "main:factory01:hallA:packaging:belt001", "kind": "child-device", "parent": "main", "name": "belt001", "type": "ConveyorBelt"}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT time, entity, type, series, value FROM measurements WHERE type IN ('', 'electrical', 'environment') ORDER BY type, series"),
        vec![
            json!({"time": "2026-11-21T00:08:39.180999994Z", "entity": "main", "type": "", "series": "cpu.percent-active", "value": 0.0}),
            json!({"time": "2026-11-21T00:08:39.180999994Z", "entity": "main", "type": "", "series": "load.load_val1", "value": 0.11}),
            json!({"time": "2026-11-21T00:08:39.180999994Z", "entity": "main", "type": "", "series": "load.load_val2", "value": 0.22}),
            json!({"time": "2026-11-21T00:08:39.180999994Z", "entity": "main", "type": "", "series": "load.load_val3", "value": 0.33}),
            json!({"time": "2020-10-15T05:30:47Z", "entity": "main", "type": "electrical", "series": "pressure", "value": 98.0}),
            json!({"time": "2020-10-15T05:30:47Z", "entity": "main", "type": "electrical", "series": "temperature", "value": 25.0}),
            json!({"time": "2020-10-15T05:30:47Z", "entity": "main", "type": "electrical", "series": "three_phase_current.L1", "value": 9.5}),
            json!({"time": "2020-10-15T05:30:47Z", "entity": "main", "type": "electrical", "series": "three_phase_current.L2", "value": 10.3}),
            json!({"time": "2020-10-15T05:30:47Z", "entity": "main", "type": "electrical", "series": "three_phase_current.L3", "value": 8.8}),
            json!({"time": "2023-12-12T09:35:22.123Z", "entity": "main:device:child01", "type": "environment", "series": "humidity", "value": 55.0}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT entity, type, series, value, properties FROM measurements WHERE type IN ('cpu_usage', 'props', 'speed') ORDER BY type"),
        vec![
            json!({"entity": "main:device:auto01:service:collectd", "type": "cpu_usage", "series": "percent", "value": 12.5, "properties": null}),
            json!({"entity": "main", "type": "props", "series": "x", "value": 1.0, "properties": r#"{"sensor":"DS18B20","ok":false}"#}),
            json!({"entity": "main:factory01:hallA:packaging:belt001", "type": "speed", "series": "rpm", "value": 1200.0, "properties": null}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT type, text, attributes FROM events ORDER BY type"),
        vec![
            json!({"type": "login", "text": "A user just logged in", "attributes": r#"{"someOtherCustomFragment":{"nested":{"value":"extra info"}}}"#}),
            json!({"type": "no_payload", "text": "no_payload", "attributes": null}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT type, severity, text, status FROM alarms ORDER BY status DESC"),
        vec![
            json!({"type": "temperature_high", "severity": "warning", "text": "Temperature is very high", "status": "raised"}),
            json!({"type": "temperature_high", "severity": null, "text": null, "status": "cleared"}),
        ]
    );
    assert_eq!(
        twinlake
            .query("SELECT entity, fragment, value FROM twin_changes ORDER BY entity, fragment"),
        vec![
            json!({"entity": "main", "fragment": "agent", "value": r#"{"name":"thin-edge.io","url":"https://thin-edge.io","version":"2.0.1"}"#}),
            json!({"entity": "main", "fragment": "device_OS", "value": r#"{"family":"Debian","version":"11"}"#}),
            json!({"entity": "main:device:child01", "fragment": "maintenanceMode", "value": "true"}),
            json!({"entity": "main:device:child01", "fragment": "name", "value": r#""child01""#}),
            json!({"entity": "main:device:main:service:tedge-agent", "fragment": "type", "value": r#""service""#}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT entity, status, pid FROM health ORDER BY entity"),
        vec![
            json!({"entity": "main:device:main:service:mosquitto-c8y-bridge", "status": "up", "pid": null}),
            json!({"entity": "main:device:main:service:tedge-agent", "status": "up", "pid": 7579}),
            json!({"entity": "main:device:main:service:tedge-mapper-c8y", "status": "down", "pid": 4703}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT time FROM health WHERE pid = 7579"),
        vec![json!({"time": "2026-11-21T00:07:24.318Z"})]
    );
    assert_eq!(
        twinlake.query("SELECT series, unit FROM measurement_meta ORDER BY series"),
        vec![
            json!({"series": "current", "unit": "A"}),
            json!({"series": "temperature", "unit": "°C"}),
            json!({"series": "voltage", "unit": "V"}),
        ]
    );
    let rejected =
        twinlake.query("SELECT topic, reason_code, reason, payload FROM rejected ORDER BY topic");
    let summary: Vec<(String, String)> = rejected
        .iter()
        .map(|r| {
            (
                r["topic"].as_str().unwrap().to_owned(),
                r["reason_code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                format!("{topic_prefix}te/device/main///e/bad_time"),
                "invalid_time".to_owned()
            ),
            (
                format!("{topic_prefix}te/device/main///m/bad_bool"),
                "invalid_payload".to_owned()
            ),
            (
                format!("{topic_prefix}te/device/main///m/bad_deep"),
                "invalid_payload".to_owned()
            ),
            (
                format!("{topic_prefix}te/device/main///m/bad_empty"),
                "invalid_payload".to_owned()
            ),
            (
                format!("{topic_prefix}te/device/main///m/bad_text"),
                "invalid_payload".to_owned()
            ),
            (
                format!("{topic_prefix}te/device/main///unknown/channel"),
                "unknown_channel".to_owned()
            ),
        ]
    );
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("\"running\" is a boolean")
    );
    // The payload column is binary; JSON shows it as hex, and it is the whole payload.
    assert_eq!(rejected[4]["payload"], Value::from(hex("hello")));
}

/// The counters of the process that received the messages (they start at zero on restart).
fn check_spec_metrics(twinlake: &Twinlake) {
    assert_eq!(
        twinlake.metric("twinlake_not_stored_total{channel=\"command_capability\"}"),
        Some(1.0)
    );
    assert_eq!(
        twinlake.metric("twinlake_not_stored_total{channel=\"config\"}"),
        Some(1.0)
    );
    assert_eq!(
        twinlake.metric("twinlake_rejected_total{reason=\"invalid_payload\"}"),
        Some(4.0)
    );
    assert_eq!(
        twinlake.metric("twinlake_rejected_total{reason=\"unknown_channel\"}"),
        Some(1.0)
    );
    assert_eq!(
        twinlake.metric("twinlake_rows_total{table=\"measurements\"}"),
        Some(13.0)
    );
    assert_eq!(twinlake.metric("twinlake_acks_pending"), Some(0.0));
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn spec_examples_through_the_embedded_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &[]);
    publish(&twinlake.mqtt_url, spec_messages());
    // The endpoint files a plain topic under its connection's gateway (`main` here): rejected
    // rows show the fleet topic, as for a gateway's bridge.
    check_spec_rows(&twinlake, "twinlake/main/");
    check_spec_metrics(&twinlake);
    // After a restart the rows come back from the WAL, unchanged.
    twinlake.restart();
    check_spec_rows(&twinlake, "twinlake/main/");

    // Over the payload limit (256 KiB by default): a `rejected` row with the first KiB and the size.
    let big = format!("{{\"x\":1,\"pad\":\"{}\"}}", "a".repeat(300 * 1024));
    publish(
        &twinlake.mqtt_url,
        vec![message("te/device/main///m/huge", &big, false, 1)],
    );
    let oversized = "SELECT count(*) FROM rejected WHERE reason_code = 'payload_too_large'";
    assert_eq!(
        twinlake.wait_for_count(oversized, 1, std::time::Duration::from_secs(10)),
        1
    );
    let row = &twinlake.query(
        "SELECT topic, payload, reason FROM rejected WHERE reason_code = 'payload_too_large'",
    )[0];
    assert_eq!(row["topic"], "twinlake/main/te/device/main///m/huge");
    let kept = row["payload"].as_str().unwrap();
    assert_eq!(kept.len(), 2 * 1024, "the first KiB, shown as hex");
    assert!(kept.starts_with(&hex("{\"x\":1")));
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains(&big.len().to_string()) && reason.contains("262144"),
        "{reason}"
    );
}

#[test]
fn spec_examples_through_mosquitto_and_retained_replays_are_not_stored_twice() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &[]);
    publish(&mosquitto.url(), spec_messages());
    check_spec_rows(&twinlake, "");
    check_spec_metrics(&twinlake);
    // Mosquitto replays every retained message to the new connection; none is new.
    twinlake.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut replayed = 0.0;
    while replayed < 16.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        replayed = twinlake
            .metric("twinlake_mqtt_messages_received_total")
            .unwrap_or(0.0);
    }
    check_spec_rows(&twinlake, "");
    // 16 retained topics are replayed: 5 registrations, 5 twin fragments, 3 health, 1 meta, and
    // the command capability and config, which are not stored anyway.
    assert_eq!(replayed, 16.0);
    assert_eq!(
        twinlake.metric("twinlake_retained_duplicates_total"),
        Some(14.0)
    );
    // A changed retained message is new data.
    publish(
        &mosquitto.url(),
        vec![message(
            "te/device/child01///twin/maintenanceMode",
            "false",
            true,
            1,
        )],
    );
    assert_eq!(
        twinlake.wait_for_count(
            "SELECT count(*) FROM twin_changes WHERE fragment = 'maintenanceMode'",
            2,
            std::time::Duration::from_secs(10)
        ),
        2
    );
}

#[test]
fn spec_examples_through_mosquitto_over_tls_with_a_password() {
    let mosquitto = Mosquitto::start_with_tls();
    let tls = mosquitto.tls.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = tls.ca_file.display().to_string();
    let twinlake = Twinlake::start(
        dir.path(),
        Broker::External(format!("mqtts://127.0.0.1:{}", tls.port)),
        &[
            "--mqtt-ca-file",
            &ca_file,
            "--mqtt-username",
            tls.username,
            "--mqtt-password",
            tls.password,
        ],
    );
    // Devices publish on the plain listener; Twinlake reads them through the TLS one.
    publish(&mosquitto.url(), spec_messages());
    check_spec_rows(&twinlake, "");
}
