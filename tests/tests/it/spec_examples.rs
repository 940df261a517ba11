//! Every example message of the thin-edge MQTT spec (§6), parsed exactly as the spec says.

use serde_json::json;
use twinlake_model::{
    ChangeKind, EntityTopicId, NotStored, Parsed, TableBuilders, auto_registrations,
};

use crate::support::{RECEIVED, local_rows, parse, rows_of};

fn measurement(
    time: &str,
    entity: &str,
    mtype: &str,
    series: &str,
    value: f64,
) -> serde_json::Value {
    json!({"time": time, "entity": entity, "type": mtype, "series": series, "value": value, "properties": null})
}

fn registration(
    entity: &str,
    kind: &str,
    parent: &str,
    name: Option<&str>,
    etype: Option<&str>,
    attributes: serde_json::Value,
) -> serde_json::Value {
    json!({
        "time": RECEIVED, "entity": entity, "change": "registered", "kind": kind, "parent": parent,
        "external_id": null, "name": name, "type": etype, "health_endpoint": null,
        "attributes": attributes.to_string(),
    })
}

fn twin(entity: &str, fragment: &str, value: &str) -> serde_json::Value {
    json!({"time": RECEIVED, "entity": entity, "fragment": fragment, "value": value})
}

#[test]
fn ex01_agent_service_registration() {
    assert_eq!(
        rows_of(
            "entity_changes",
            "te/device/main/service/tedge-agent",
            r#"{"@parent":"device/main//","@type":"service","name":"tedge-agent"}"#
        ),
        vec![registration(
            "device/main/service/tedge-agent",
            "service",
            "device/main//",
            Some("tedge-agent"),
            None,
            json!({"name": "tedge-agent"})
        )]
    );
    // The earlier copy that also carried "type":"service".
    let rows = rows_of(
        "entity_changes",
        "te/device/main/service/tedge-agent",
        r#"{"@parent":"device/main//","@type":"service","name":"tedge-agent","type":"service"}"#,
    );
    assert_eq!(rows[0]["type"], "service");
}

#[test]
fn ex01_service_default_parent_rules() {
    let parent = |topic: &str| {
        rows_of("entity_changes", topic, r#"{"@type":"service"}"#)[0]["parent"].clone()
    };
    assert_eq!(
        parent("te/device/main/service/tedge-agent"),
        "device/main//"
    );
    assert_eq!(
        parent("te/device/child01/service/nodered"),
        "device/child01//"
    );
    // A custom-schema service has no default-scheme device: its parent is the main device.
    assert_eq!(parent("te/factory01/hallA/packaging/svc"), "device/main//");
    let main = rows_of(
        "entity_changes",
        "te/device/main//",
        r#"{"@type":"device"}"#,
    );
    assert_eq!(main[0]["parent"], serde_json::Value::Null);
    assert_eq!(main[0]["kind"], "device");
}

#[test]
fn ex02_twin_string_fragment() {
    assert_eq!(
        rows_of(
            "twin_changes",
            "te/device/main/service/tedge-agent/twin/type",
            r#""service""#
        ),
        vec![twin(
            "device/main/service/tedge-agent",
            "type",
            r#""service""#
        )]
    );
}

#[test]
fn ex03_health_up_with_unix_float_time() {
    assert_eq!(
        rows_of(
            "health",
            "te/device/main/service/tedge-agent/status/health",
            r#"{"pid":7579,"status":"up","time":1795219644.3183434}"#
        ),
        vec![json!({
            "time": "2026-11-21T00:07:24.318Z", "entity": "device/main/service/tedge-agent",
            "status": "up", "pid": 7579, "attributes": null,
        })]
    );
}

#[test]
fn ex04_twin_object_fragment_keeps_member_order() {
    assert_eq!(
        rows_of(
            "twin_changes",
            "te/device/main///twin/agent",
            r#"{"name":"thin-edge.io","url":"https://thin-edge.io","version":"2.0.1"}"#
        ),
        vec![twin(
            "device/main//",
            "agent",
            r#"{"name":"thin-edge.io","url":"https://thin-edge.io","version":"2.0.1"}"#
        )]
    );
}

#[test]
fn ex05_ex06_commands_and_config_are_valid_but_not_stored() {
    assert_eq!(
        parse("te/device/main///cmd/software_list", r#"{"types":[]}"#),
        Parsed::NotStored(NotStored::CommandCapability)
    );
    assert_eq!(
        parse("te/device/main///cmd/restart", "{}"),
        Parsed::NotStored(NotStored::CommandCapability)
    );
    assert_eq!(
        parse(
            "te/device/main///cmd/restart/c8y-mapper-1",
            r#"{"status":"init"}"#
        ),
        Parsed::NotStored(NotStored::Command)
    );
    assert_eq!(
        parse(
            "te/device/main/service/tedge-agent/config",
            r#"{"device.id":"tedge-research-01","mqtt.topic_root":"te","mqtt.device_topic_id":"device/main//"}"#
        ),
        Parsed::NotStored(NotStored::Config)
    );
    assert_eq!(
        parse("te/device/main///signal/sync", "{}"),
        Parsed::NotStored(NotStored::Signal)
    );
    assert_eq!(
        parse("te/errors", "anything at all"),
        Parsed::NotStored(NotStored::MapperErrors)
    );
}

#[test]
fn ex07_collectd_empty_type_nanosecond_time() {
    let time = "2026-11-21T00:08:39.180999994Z";
    assert_eq!(
        rows_of(
            "measurements",
            "te/device/main///m/",
            r#"{"time":"2026-11-21T00:08:39.180999994Z","load":{"load_val3":0.33,"load_val2":0.22,"load_val1":0.11},"cpu":{"percent-active":0.0}}"#
        ),
        vec![
            measurement(time, "device/main//", "", "load.load_val3", 0.33),
            measurement(time, "device/main//", "", "load.load_val2", 0.22),
            measurement(time, "device/main//", "", "load.load_val1", 0.11),
            measurement(time, "device/main//", "", "cpu.percent-active", 0.0),
        ]
    );
}

#[test]
fn ex08_child_device_registration_and_its_twin_name() {
    assert_eq!(
        rows_of(
            "entity_changes",
            "te/device/child01//",
            r#"{"@type":"child-device","name":"child01","type":"SmartHomeHub"}"#
        ),
        vec![registration(
            "device/child01//",
            "child-device",
            "device/main//",
            Some("child01"),
            Some("SmartHomeHub"),
            json!({"name": "child01", "type": "SmartHomeHub"})
        )]
    );
    assert_eq!(
        rows_of(
            "twin_changes",
            "te/device/child01///twin/name",
            r#""child01""#
        ),
        vec![twin("device/child01//", "name", r#""child01""#)]
    );
    // The short form of the id is the same entity.
    assert_eq!(
        rows_of(
            "entity_changes",
            "te/device/child01",
            r#"{"@type":"child-device"}"#
        )[0]["entity"],
        "device/child01//"
    );
}

#[test]
fn ex09_nested_child_with_explicit_parent() {
    assert_eq!(
        rows_of(
            "entity_changes",
            "te/device/nested_child01//",
            r#"{"@type":"child-device","@parent":"device/child01//","name":"nested_child01"}"#
        ),
        vec![registration(
            "device/nested_child01//",
            "child-device",
            "device/child01//",
            Some("nested_child01"),
            None,
            json!({"name": "nested_child01"})
        )]
    );
}

#[test]
fn ex10_service_of_a_child() {
    assert_eq!(
        rows_of(
            "entity_changes",
            "te/device/child01/service/nodered",
            r#"{"@type":"service","@parent":"device/child01//","name":"nodered","type":"systemd"}"#
        ),
        vec![registration(
            "device/child01/service/nodered",
            "service",
            "device/child01//",
            Some("nodered"),
            Some("systemd"),
            json!({"name": "nodered", "type": "systemd"})
        )]
    );
}

#[test]
fn ex11_telemetry_of_unregistered_service_auto_registers_device_then_service() {
    let Parsed::Data(message) = parse(
        "te/device/auto01/service/collectd/m/cpu_usage",
        r#"{"percent":12.5}"#,
    ) else {
        panic!("measurement expected");
    };
    assert_eq!(message.entity, "main:device:auto01:service:collectd");
    let mut builders = TableBuilders::new();
    builders.append(&message);
    let at = twinlake_model::Timestamp::parse_rfc3339(RECEIVED).unwrap();
    for (topic_id, change) in auto_registrations(&message.topic_id, at) {
        assert_eq!(change.change, ChangeKind::AutoRegistered);
        builders.append_entity_change(&message.gateway, &topic_id, &change);
    }
    let batches = builders.finish().unwrap();
    let changes = &batches
        .iter()
        .find(|(t, _)| t.name() == "entity_changes")
        .unwrap()
        .1;
    let auto = |entity: &str, kind: &str, parent: &str, name: &str| {
        json!({
            "time": RECEIVED, "entity": entity, "change": "auto_registered", "kind": kind,
            "parent": parent, "external_id": null, "name": name, "type": null,
            "health_endpoint": null, "attributes": json!({"name": name}).to_string(),
        })
    };
    assert_eq!(
        local_rows(changes),
        vec![
            auto("device/auto01//", "child-device", "device/main//", "auto01"),
            auto(
                "device/auto01/service/collectd",
                "service",
                "device/auto01//",
                "collectd"
            ),
        ]
    );
    let measurements = &batches
        .iter()
        .find(|(t, _)| t.name() == "measurements")
        .unwrap()
        .1;
    assert_eq!(
        local_rows(measurements),
        vec![measurement(
            RECEIVED,
            "device/auto01/service/collectd",
            "cpu_usage",
            "percent",
            12.5
        )]
    );
}

#[test]
fn ex11_auto_registration_never_applies_to_main_device_or_custom_schemas() {
    let at = twinlake_model::Timestamp::from_unix_nanos(0);
    let ids = ["device/main//", "factory01/hallA/packaging/belt001"];
    for id in ids {
        assert!(
            auto_registrations(&EntityTopicId::parse(id).unwrap(), at).is_empty(),
            "{id}"
        );
    }
    let main_service =
        auto_registrations(&EntityTopicId::parse("device/main/service/x").unwrap(), at);
    assert_eq!(
        main_service.len(),
        1,
        "a service of main registers only the service"
    );
    let child = auto_registrations(&EntityTopicId::parse("device/auto02//").unwrap(), at);
    assert_eq!(child.len(), 1);
    assert_eq!(
        child[0].1.registration.as_ref().unwrap().name.as_deref(),
        Some("auto02")
    );
}

#[test]
fn ex12_grouped_measurement_with_rfc3339_time() {
    let time = "2020-10-15T05:30:47Z";
    let main = "device/main//";
    assert_eq!(
        rows_of(
            "measurements",
            "te/device/main///m/electrical",
            r#"{"time":"2020-10-15T05:30:47+00:00","temperature":25,"three_phase_current":{"L1":9.5,"L2":10.3,"L3":8.8},"pressure":98}"#
        ),
        vec![
            measurement(time, main, "electrical", "temperature", 25.0),
            measurement(time, main, "electrical", "three_phase_current.L1", 9.5),
            measurement(time, main, "electrical", "three_phase_current.L2", 10.3),
            measurement(time, main, "electrical", "three_phase_current.L3", 8.8),
            measurement(time, main, "electrical", "pressure", 98.0),
        ]
    );
}

#[test]
fn ex13_unix_float_time_is_read_to_milliseconds() {
    assert_eq!(
        rows_of(
            "measurements",
            "te/device/child01///m/environment",
            r#"{"time":1702373722.123,"humidity":55}"#
        ),
        vec![measurement(
            "2023-12-12T09:35:22.123Z",
            "device/child01//",
            "environment",
            "humidity",
            55.0
        )]
    );
    let rows = rows_of(
        "measurements",
        "te/device/child01///m/environment",
        r#"{"time":1702373722.123456,"h":1}"#,
    );
    assert_eq!(rows[0]["time"], "2023-12-12T09:35:22.123Z");
    let rows = rows_of(
        "measurements",
        "te/device/child01///m/environment",
        r#"{"time":1702373722,"h":1}"#,
    );
    assert_eq!(rows[0]["time"], "2023-12-12T09:35:22Z");
}

#[test]
fn ex14_properties_pass_through_and_are_not_values() {
    assert_eq!(
        rows_of(
            "measurements",
            "te/device/main///m/props",
            r#"{"x":1,"properties":{"sensor":"DS18B20","ok":false}}"#
        ),
        vec![json!({
            "time": RECEIVED, "entity": "device/main//", "type": "props", "series": "x", "value": 1.0,
            "properties": r#"{"sensor":"DS18B20","ok":false}"#,
        })]
    );
}

#[test]
fn ex15_unicode_keys_and_extreme_values() {
    assert_eq!(
        rows_of(
            "measurements",
            "te/device/main///m/unicode",
            r#"{"température":21.5,"ÄÖÜ_°":{"µ":1}}"#
        ),
        vec![
            measurement(RECEIVED, "device/main//", "unicode", "température", 21.5),
            measurement(RECEIVED, "device/main//", "unicode", "ÄÖÜ_°.µ", 1.0),
        ]
    );
    assert_eq!(
        rows_of(
            "measurements",
            "te/device/main///m/unicode",
            r#"{"big":1e308,"small":-1.5e-7}"#
        ),
        vec![
            measurement(RECEIVED, "device/main//", "unicode", "big", 1e308),
            measurement(RECEIVED, "device/main//", "unicode", "small", -1.5e-7),
        ]
    );
}

#[test]
fn ex16_measurement_meta_units_per_series() {
    let meta = |series: &str, unit: Option<&str>, attributes: Option<&str>| json!({"time": RECEIVED, "entity": "device/main//", "type": "battery_reading", "series": series, "unit": unit, "attributes": attributes});
    assert_eq!(
        rows_of(
            "measurement_meta",
            "te/device/main///m/battery_reading/meta",
            r#"{"temperature":{"unit":"°C","precision":"±0.1°C"},"voltage":{"unit":"V","min":0,"max":20},"current":{"unit":"A"}}"#
        ),
        vec![
            meta("temperature", Some("°C"), Some(r#"{"precision":"±0.1°C"}"#)),
            meta("voltage", Some("V"), Some(r#"{"min":0,"max":20}"#)),
            meta("current", Some("A"), None),
        ]
    );
    let dotted = rows_of(
        "measurement_meta",
        "te/device/main///m/env/meta",
        r#"{"Climate.Temperature":{"unit":"°C"}}"#,
    );
    assert_eq!(dotted[0]["series"], "Climate.Temperature");
    assert_eq!(dotted[0]["unit"], "°C");
    // An empty retained payload clears the metadata: one row with a null series.
    let cleared = rows_of("measurement_meta", "te/device/main///m/env/meta", "");
    assert_eq!(
        cleared,
        vec![
            json!({"time": RECEIVED, "entity": "device/main//", "type": "env", "series": null, "unit": null, "attributes": null})
        ]
    );
}

#[test]
fn ex17_events_with_custom_fragments_and_empty_payload() {
    assert_eq!(
        rows_of(
            "events",
            "te/device/main///e/login",
            r#"{"text":"A user just logged in","time":"2021-01-01T05:30:45+00:00","someOtherCustomFragment":{"nested":{"value":"extra info"}}}"#
        ),
        vec![json!({
            "time": "2021-01-01T05:30:45Z", "entity": "device/main//", "type": "login",
            "text": "A user just logged in",
            "attributes": r#"{"someOtherCustomFragment":{"nested":{"value":"extra info"}}}"#,
        })]
    );
    assert_eq!(
        rows_of("events", "te/device/main///e/no_payload", ""),
        vec![
            json!({"time": RECEIVED, "entity": "device/main//", "type": "no_payload", "text": "no_payload", "attributes": null})
        ]
    );
    // A `type` member overrides the topic's type.
    let rows = rows_of("events", "te/device/main///e/login", r#"{"type":"logout"}"#);
    assert_eq!(
        (rows[0]["type"].as_str(), rows[0]["text"].as_str()),
        (Some("logout"), Some("logout"))
    );
}

#[test]
fn ex18_alarm_raise_then_clear() {
    assert_eq!(
        rows_of(
            "alarms",
            "te/device/main///a/temperature_high",
            r#"{"text":"Temperature is very high","severity":"warning","time":"2021-01-01T05:30:45+00:00"}"#
        ),
        vec![json!({
            "time": "2021-01-01T05:30:45Z", "entity": "device/main//", "type": "temperature_high",
            "severity": "warning", "text": "Temperature is very high", "status": "raised", "attributes": null,
        })]
    );
    assert_eq!(
        rows_of("alarms", "te/device/main///a/temperature_high", ""),
        vec![json!({
            "time": RECEIVED, "entity": "device/main//", "type": "temperature_high",
            "severity": null, "text": null, "status": "cleared", "attributes": null,
        })]
    );
}

#[test]
fn ex18_alarm_defaults() {
    // `{}` is a raise with defaults, not a clear.
    assert_eq!(
        rows_of("alarms", "te/device/main///a/door_open", "{}"),
        vec![json!({
            "time": RECEIVED, "entity": "device/main//", "type": "door_open",
            "severity": "minor", "text": "door_open", "status": "raised", "attributes": null,
        })]
    );
    let fatal = rows_of(
        "alarms",
        "te/device/main///a/door_open",
        r#"{"severity":"fatal","type":"door_forced"}"#,
    );
    assert_eq!(fatal[0]["severity"], "minor");
    assert_eq!(fatal[0]["type"], "door_forced");
    assert_eq!(fatal[0]["attributes"], r#"{"severity":"fatal"}"#);
}

#[test]
fn ex19_twin_object_and_boolean() {
    assert_eq!(
        rows_of(
            "twin_changes",
            "te/device/main///twin/device_OS",
            r#"{"family":"Debian","version":"11"}"#
        ),
        vec![twin(
            "device/main//",
            "device_OS",
            r#"{"family":"Debian","version":"11"}"#
        )]
    );
    assert_eq!(
        rows_of(
            "twin_changes",
            "te/device/child01///twin/maintenanceMode",
            "true"
        ),
        vec![twin("device/child01//", "maintenanceMode", "true")]
    );
    // An empty payload deletes the fragment.
    assert_eq!(
        rows_of(
            "twin_changes",
            "te/device/child01///twin/maintenanceMode",
            ""
        ),
        vec![
            json!({"time": RECEIVED, "entity": "device/child01//", "fragment": "maintenanceMode", "value": null})
        ]
    );
}

#[test]
fn ex20_health_down_and_bridge_bare_values() {
    assert_eq!(
        rows_of(
            "health",
            "te/device/main/service/tedge-mapper-c8y/status/health",
            r#"{"pid":4703,"status":"down"}"#
        ),
        vec![
            json!({"time": RECEIVED, "entity": "device/main/service/tedge-mapper-c8y", "status": "down", "pid": 4703, "attributes": null})
        ]
    );
    let bridge = "te/device/main/service/mosquitto-c8y-bridge/status/health";
    assert_eq!(rows_of("health", bridge, "1")[0]["status"], "up");
    assert_eq!(rows_of("health", bridge, "0")[0]["status"], "down");
    // An object without a status string is `unknown`, as thin-edge treats it.
    assert_eq!(
        rows_of("health", bridge, r#"{"pid":1}"#)[0]["status"],
        "unknown"
    );
    assert_eq!(
        rows_of("health", bridge, "")[0]["status"],
        serde_json::Value::Null
    );
}

#[test]
fn ex21_custom_schema_registration_and_telemetry() {
    let entity = "factory01/hallA/packaging/belt001";
    assert_eq!(
        rows_of(
            "entity_changes",
            "te/factory01/hallA/packaging/belt001",
            r#"{"@type":"child-device","name":"belt001","type":"ConveyorBelt","factory":"factory01"}"#
        ),
        vec![registration(
            entity,
            "child-device",
            "device/main//",
            Some("belt001"),
            Some("ConveyorBelt"),
            json!({"name": "belt001", "type": "ConveyorBelt", "factory": "factory01"})
        )]
    );
    assert_eq!(
        rows_of(
            "measurements",
            "te/factory01/hallA/packaging/belt001/m/speed",
            r#"{"rpm":1200}"#
        ),
        vec![measurement(RECEIVED, entity, "speed", "rpm", 1200.0)]
    );
}

#[test]
fn registration_external_id_health_endpoint_and_deregistration() {
    let rows = rows_of(
        "entity_changes",
        "te/device/child02//",
        r#"{"@type":"child-device","@id":"c8y-child02","@health":"device/child02/service/agent","@parent":"device/child01"}"#,
    );
    assert_eq!(rows[0]["external_id"], "c8y-child02");
    assert_eq!(rows[0]["health_endpoint"], "device/child02/service/agent");
    assert_eq!(
        rows[0]["parent"], "device/child01//",
        "a short parent id is padded"
    );
    assert_eq!(rows[0]["attributes"], serde_json::Value::Null);
    assert_eq!(
        rows_of("entity_changes", "te/device/child02//", ""),
        vec![json!({
            "time": RECEIVED, "entity": "device/child02//", "change": "deregistered", "kind": null,
            "parent": null, "external_id": null, "name": null, "type": null,
            "health_endpoint": null, "attributes": null,
        })]
    );
}
