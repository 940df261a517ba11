//! The twin in SQL, from real thin-edge message sequences published over MQTT: registrations
//! (child before parent, nested, services, a custom 4-segment id), auto-registration, a move,
//! a deregistration cascade, twin fragments, health and alarms; then the views and functions
//! of docs/sql.md read back over HTTP SQL, through the embedded broker and Mosquitto, and
//! again after a restart (the hierarchy is rebuilt from the stored changes).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Broker, Message, Mosquitto, Twinlake, free_port, message, publish};

fn retained(topic: &str, payload: &str) -> Message {
    message(topic, payload, true, 1)
}

fn live(topic: &str, payload: &str) -> Message {
    message(topic, payload, false, 1)
}

/// Step 1: a plant whose registrations arrive child first, with telemetry, alarms, twin data.
fn plant() -> Vec<Message> {
    vec![
        retained(
            "te/device/probe01//",
            r#"{"@type":"child-device","@parent":"device/sensor01//","name":"probe01"}"#,
        ),
        retained(
            "te/device/sensor01//",
            r#"{"@type":"child-device","@parent":"device/line1//","@id":"plant-sensor01","name":"sensor01","type":"Sensor"}"#,
        ),
        retained(
            "te/device/line1//",
            r#"{"@type":"child-device","name":"line1","type":"Line"}"#,
        ),
        retained(
            "te/device/line2//",
            r#"{"@type":"child-device","name":"line2","type":"Line"}"#,
        ),
        retained(
            "te/device/sensor01/service/logger",
            r#"{"@type":"service","name":"logger"}"#,
        ),
        retained(
            "te/factory/plant/cell/robot1",
            r#"{"@type":"child-device","@parent":"device/line1//","name":"robot1","type":"Robot"}"#,
        ),
        live("te/device/auto01///m/env", r#"{"temperature":20}"#),
        live("te/device/auto02/service/app/m/env", r#"{"x":1}"#),
        live("te/factory/plant/cell/robot2/m/env", r#"{"x":1}"#),
        live("te/device/sensor01///m/env", r#"{"temperature":21.5}"#),
        live("te/device/probe01///m/env", r#"{"temperature":4.0}"#),
        retained("te/device/sensor01///twin/firmware", r#"{"version":"1.0"}"#),
        retained(
            "te/device/sensor01/service/logger/status/health",
            r#"{"pid":42,"status":"up"}"#,
        ),
        retained(
            "te/device/line1///a/overheat",
            r#"{"severity":"major","text":"hot"}"#,
        ),
        retained(
            "te/device/line1///a/overheat",
            r#"{"severity":"critical","text":"hotter"}"#,
        ),
        retained("te/device/line1///a/door", r#"{"text":"open"}"#),
        retained("te/device/line1///a/door", ""),
    ]
}

/// Step 2: the sensor moves to line 2, gets new firmware, its logger goes down, line 1 is
/// re-registered unchanged.
fn move_sensor() -> Vec<Message> {
    vec![
        retained(
            "te/device/sensor01//",
            r#"{"@type":"child-device","@parent":"device/line2//","@id":"plant-sensor01","name":"sensor01","type":"Sensor"}"#,
        ),
        live(
            "te/device/line1//",
            r#"{"@type":"child-device","name":"line1","type":"Line"}"#,
        ),
        live("te/device/sensor01///m/env", r#"{"temperature":22.5}"#),
        retained("te/device/sensor01///twin/firmware", r#"{"version":"1.1"}"#),
        retained(
            "te/device/sensor01/service/logger/status/health",
            r#"{"pid":42,"status":"down"}"#,
        ),
    ]
}

/// Step 3: line 2 is deregistered, and with it the sensor, its probe and its service.
fn deregister_line2() -> Vec<Message> {
    vec![retained("te/device/line2//", "")]
}

/// When the newest change of `entity` was received, in ns.
fn last_change(twinlake: &Twinlake, entity: &str) -> i64 {
    let rows = twinlake.query(&format!(
        "SELECT CAST(CAST(max(time) AS BIGINT) AS VARCHAR) AS ns FROM entity_changes \
         WHERE entity = '{entity}'"
    ));
    rows[0]["ns"].as_str().unwrap().parse().unwrap()
}

fn at(ns: i64) -> String {
    format!("to_timestamp_nanos({ns})")
}

fn column(rows: &[Value], name: &str) -> Vec<Value> {
    rows.iter().map(|row| row[name].clone()).collect()
}

fn run_sequence(twinlake: &Twinlake) -> (i64, i64, i64) {
    publish(&twinlake.mqtt_url, plant());
    // The gateway's main device (registered at its first message), 6 registrations and
    // 3 auto-registrations (auto01; auto02 and its service).
    let changes = twinlake.wait_for_count(
        "SELECT count(*) FROM entity_changes",
        10,
        Duration::from_secs(20),
    );
    assert_eq!(changes, 10);
    twinlake.wait_for_count("SELECT count(*) FROM alarms", 4, Duration::from_secs(20));
    let step1 = last_change(twinlake, "main:device:auto02:service:app");
    std::thread::sleep(Duration::from_millis(20));
    publish(&twinlake.mqtt_url, move_sensor());
    twinlake.wait_for_count(
        "SELECT count(*) FROM health WHERE status = 'down'",
        1,
        Duration::from_secs(20),
    );
    // The sensor's move is a row; line 1's registration, identical to the stored one, is not.
    let moved = twinlake.wait_for_count(
        "SELECT count(*) FROM entity_changes",
        11,
        Duration::from_secs(20),
    );
    assert_eq!(moved, 11);
    let step2 = last_change(twinlake, "main:device:sensor01");
    std::thread::sleep(Duration::from_millis(20));
    publish(&twinlake.mqtt_url, deregister_line2());
    twinlake.wait_for_count(
        "SELECT count(*) FROM entity_changes",
        12,
        Duration::from_secs(20),
    );
    let step3 = last_change(twinlake, "main:device:line2");
    (step1, step2, step3)
}

fn check(twinlake: &Twinlake, (step1, step2, step3): (i64, i64, i64)) {
    // The current hierarchy: line 2's subtree is gone, auto-registrations are in, the
    // custom-scheme robot2 that only sent telemetry is not.
    let entities = twinlake.query("SELECT entity, kind, parent FROM entities ORDER BY entity");
    assert_eq!(
        entities,
        vec![
            json!({"entity": "main", "kind": "device", "parent": null}),
            json!({"entity": "main:device:auto01", "kind": "child-device", "parent": "main"}),
            json!({"entity": "main:device:auto02", "kind": "child-device", "parent": "main"}),
            json!({"entity": "main:device:auto02:service:app", "kind": "service", "parent": "main:device:auto02"}),
            json!({"entity": "main:device:line1", "kind": "child-device", "parent": "main"}),
            json!({"entity": "main:factory:plant:cell:robot1", "kind": "child-device", "parent": "main:device:line1"}),
        ]
    );
    let auto = twinlake.query(
        "SELECT entity, name FROM entity_changes WHERE change = 'auto_registered' ORDER BY entity",
    );
    assert_eq!(
        auto,
        vec![
            json!({"entity": "main", "name": "main"}),
            json!({"entity": "main:device:auto01", "name": "auto01"}),
            json!({"entity": "main:device:auto02", "name": "auto02"}),
            json!({"entity": "main:device:auto02:service:app", "name": "app"}),
        ]
    );

    // The sensor's versions: under line 1 from the beginning, under line 2 from the move,
    // ended by the deregistration of line 2. The unchanged line 1 has one version.
    let sensor = twinlake.query(&format!(
        "SELECT parent, external_id, type, \
                CAST(valid_from AS BIGINT) AS valid_from, CAST(valid_to AS BIGINT) AS valid_to, \
                updated_at = {} AS moved \
         FROM entity_history WHERE entity = 'main:device:sensor01' ORDER BY valid_from",
        at(step2)
    ));
    assert_eq!(
        sensor,
        vec![
            json!({"parent": "main:device:line1", "external_id": "plant-sensor01", "type": "Sensor", "valid_from": 0, "valid_to": step2, "moved": false}),
            json!({"parent": "main:device:line2", "external_id": "plant-sensor01", "type": "Sensor", "valid_from": step2, "valid_to": step3, "moved": true}),
        ]
    );
    assert_eq!(
        twinlake.count("SELECT count(*) FROM entity_history WHERE entity = 'main:device:line1'"),
        1
    );
    let ended = twinlake.query(&format!(
        "SELECT entity FROM entity_history WHERE valid_to = {} ORDER BY entity",
        at(step3)
    ));
    assert_eq!(
        column(&ended, "entity"),
        vec![
            json!("main:device:line2"),
            json!("main:device:probe01"),
            json!("main:device:sensor01"),
            json!("main:device:sensor01:service:logger"),
        ]
    );

    // descendants / ancestors as of a time, and now.
    let before_move = twinlake.query(&format!(
        "SELECT entity, depth FROM descendants('main:device:line1', {}) ORDER BY depth, entity",
        at(step1)
    ));
    assert_eq!(
        before_move,
        vec![
            json!({"entity": "main:device:sensor01", "depth": 1}),
            json!({"entity": "main:factory:plant:cell:robot1", "depth": 1}),
            json!({"entity": "main:device:probe01", "depth": 2}),
            json!({"entity": "main:device:sensor01:service:logger", "depth": 2}),
        ]
    );
    let now = twinlake.query("SELECT entity, depth FROM descendants('main:device:line1')");
    assert_eq!(
        now,
        vec![json!({"entity": "main:factory:plant:cell:robot1", "depth": 1})]
    );
    let probe_up = twinlake.query(&format!(
        "SELECT entity, depth FROM ancestors('main:device:probe01', {}) ORDER BY depth",
        at(step2)
    ));
    assert_eq!(
        probe_up,
        vec![
            json!({"entity": "main:device:sensor01", "depth": 1}),
            json!({"entity": "main:device:line2", "depth": 2}),
            json!({"entity": "main", "depth": 3}),
        ]
    );
    assert_eq!(
        twinlake.count(&format!(
            "SELECT count(*) FROM ancestors('main:device:probe01', {})",
            at(step3)
        )),
        0
    );
    assert_eq!(
        twinlake.count(&format!(
            "SELECT count(*) FROM entities_at({}) WHERE parent = 'main:device:line2'",
            at(step2)
        )),
        1
    );
    assert_eq!(
        twinlake.count("SELECT count(*) FROM entity_ancestors WHERE ancestor = 'main'"),
        5
    );
    assert_eq!(
        twinlake.count(&format!(
            "SELECT count(*) FROM entity_ancestors_at({}) WHERE descendant = 'main:device:probe01'",
            at(step1)
        )),
        3
    );
    let path = twinlake.query(
        "SELECT entity_path('main:factory:plant:cell:robot1') AS p, entity_path('main:device:auto02:service:app') AS q",
    );
    assert_eq!(
        path,
        vec![json!({"p": "main/line1/robot1", "q": "main/auto02/app"})]
    );

    // Telemetry against the hierarchy as it was: the sensor's first reading counts for line 1,
    // its second for line 2, by the documented join and by in_subtree with the row's time.
    let per_line = twinlake.query(
        "SELECT h.parent, count(*) AS readings FROM measurements m \
         JOIN entity_history h ON m.entity = h.entity \
          AND m.time >= h.valid_from AND (h.valid_to IS NULL OR m.time < h.valid_to) \
         WHERE m.entity = 'main:device:sensor01' GROUP BY h.parent ORDER BY h.parent",
    );
    assert_eq!(
        per_line,
        vec![
            json!({"parent": "main:device:line1", "readings": 1}),
            json!({"parent": "main:device:line2", "readings": 1}),
        ]
    );
    let in_line1 = twinlake.query(
        "SELECT entity, value FROM measurements \
         WHERE in_subtree(entity, 'main:device:line1', time) ORDER BY entity",
    );
    assert_eq!(
        in_line1,
        vec![
            json!({"entity": "main:device:probe01", "value": 4.0}),
            json!({"entity": "main:device:sensor01", "value": 21.5}),
        ]
    );
    assert_eq!(
        twinlake.count(
            "SELECT count(*) FROM measurements WHERE in_subtree(entity, 'main:device:line2', time)"
        ),
        1
    );
    // Now main's subtree holds auto01 and auto02's service, not the unregistered robot2 nor
    // the deregistered sensor.
    assert_eq!(
        twinlake.count("SELECT count(*) FROM measurements WHERE in_subtree(entity, 'main')"),
        twinlake.count(
            "SELECT count(*) FROM measurements \
             WHERE entity IN ('main:device:auto01', 'main:device:auto02:service:app')"
        ),
    );

    // Twin, health, alarms, latest.
    let twin = twinlake.query(
        "SELECT value, valid_to IS NULL AS current FROM twin_history \
         WHERE entity = 'main:device:sensor01' AND fragment = 'firmware' ORDER BY valid_from",
    );
    assert_eq!(
        twin,
        vec![
            json!({"value": r#"{"version":"1.0"}"#, "current": false}),
            json!({"value": r#"{"version":"1.1"}"#, "current": true}),
        ]
    );
    assert_eq!(
        twinlake.query("SELECT fragment, value FROM twin WHERE entity = 'main:device:sensor01'"),
        vec![json!({"fragment": "firmware", "value": r#"{"version":"1.1"}"#})]
    );
    assert_eq!(
        twinlake.query("SELECT entity, status, pid FROM health_current"),
        vec![json!({"entity": "main:device:sensor01:service:logger", "status": "down", "pid": 42})]
    );
    assert_eq!(
        twinlake.query(
            "SELECT entity, type, severity, text, count, first_raised < last_updated AS repeated \
             FROM alarms_active"
        ),
        vec![
            json!({"entity": "main:device:line1", "type": "overheat", "severity": "critical", "text": "hotter", "count": 2, "repeated": true})
        ]
    );
    let latest =
        twinlake.query("SELECT series, value FROM latest WHERE entity = 'main:device:sensor01'");
    assert_eq!(
        latest,
        vec![json!({"series": "temperature", "value": 22.5})]
    );
}

#[test]
fn the_twin_through_the_embedded_endpoint_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut twinlake = Twinlake::start(dir.path(), Broker::Embedded(free_port()), &[]);
    let steps = run_sequence(&twinlake);
    check(&twinlake, steps);
    // After a restart the hierarchy comes from the stored changes, `latest` from history,
    // and ingest still knows what is registered (no second auto-registration).
    twinlake.restart();
    publish(
        &twinlake.mqtt_url,
        vec![live("te/device/auto01///m/env", r#"{"temperature":19}"#)],
    );
    twinlake.wait_for_count(
        "SELECT count(*) FROM measurements WHERE entity = 'main:device:auto01'",
        2,
        Duration::from_secs(20),
    );
    assert_eq!(twinlake.count("SELECT count(*) FROM entity_changes"), 12);
    twinlake.wait_for_count(
        "SELECT count(*) FROM latest WHERE entity = 'main:device:sensor01'",
        1,
        Duration::from_secs(20),
    );
    check(&twinlake, steps);
}

#[test]
fn the_twin_through_mosquitto() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let twinlake = Twinlake::start(dir.path(), Broker::External(mosquitto.url()), &[]);
    let steps = run_sequence(&twinlake);
    check(&twinlake, steps);
}
