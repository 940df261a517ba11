//! The JSON Schema files in `schemas/payloads/` agree with the parser: for each payload below,
//! the schema and Twinlake give the same verdict, so the published schemas cannot drift from
//! the code. (What JSON Schema cannot say, such as "at least one number" or "not subnormal", is
//! written in the schemas' descriptions and tested in `rejected`.)

use std::path::PathBuf;

use twinlake_model::Parsed;

use crate::support::parse;

fn validator(file: &str) -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/payloads")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{file} is not a valid JSON Schema: {e}"))
}

/// Asserts that schema and parser both accept (`valid`) or both refuse each payload.
fn agree(file: &str, topic: &str, cases: &[(&str, bool)]) {
    let schema = validator(file);
    for (payload, valid) in cases {
        let instance: serde_json::Value =
            serde_json::from_str(payload).expect("test payloads are JSON");
        assert_eq!(schema.is_valid(&instance), *valid, "{file} on {payload}");
        let parsed = parse(topic, payload);
        assert_eq!(
            matches!(parsed, Parsed::Data(_)),
            *valid,
            "parser on {topic} {payload}: {parsed:?}"
        );
    }
}

#[test]
fn measurement_schema() {
    agree(
        "measurement.schema.json",
        "te/device/main///m/env",
        &[
            (
                r#"{"time":"2020-10-15T05:30:47+00:00","temperature":25,"three_phase_current":{"L1":9.5,"L2":10.3},"pressure":98}"#,
                true,
            ),
            (r#"{"time":1702373722.123,"humidity":55}"#, true),
            (
                r#"{"x":1,"properties":{"sensor":"DS18B20","ok":false}}"#,
                true,
            ),
            (r#"{"state":"ok","temperature":25}"#, true),
            (
                r#"{"time":"2026-11-21T00:08:39.180999994Z","load":{"a":0.33}}"#,
                true,
            ),
            (r#"{"running":true,"temperature":25}"#, false),
            (r#"{"a":{"b":{"c":1}}}"#, false),
            ("{}", false),
            (r#"{"g":{}}"#, false),
            (r#"{"x":null}"#, false),
            (r#"{"x":[1,2]}"#, false),
            (r#"{"time":"2021-01-01 05:30:45","x":1}"#, false),
            (r#"{"time":"2021-01-01T05:30:45","x":1}"#, false),
            (r#""hello""#, false),
            ("[1]", false),
        ],
    );
}

#[test]
fn event_and_alarm_schemas() {
    let event_cases = [
        (
            r#"{"text":"A user just logged in","time":"2021-01-01T05:30:45+00:00","custom":{"nested":1}}"#,
            true,
        ),
        ("{}", true),
        (r#"{"type":"logout"}"#, true),
        (r#"{"text":"x","time":"yesterday"}"#, false),
        (r#"{"text":5}"#, false),
        (r#"{"type":null}"#, false),
        ("[]", false),
        ("3", false),
    ];
    agree(
        "event.schema.json",
        "te/device/main///e/login",
        &event_cases,
    );
    agree("alarm.schema.json", "te/device/main///a/hot", &event_cases);
    agree(
        "alarm.schema.json",
        "te/device/main///a/hot",
        &[
            (r#"{"severity":"fatal"}"#, true),
            (r#"{"severity":"critical","text":"hot"}"#, true),
            (r#"{"severity":1}"#, true),
        ],
    );
}

#[test]
fn registration_schema() {
    agree(
        "registration.schema.json",
        "te/device/child01//",
        &[
            (
                r#"{"@type":"child-device","name":"child01","type":"SmartHomeHub"}"#,
                true,
            ),
            (
                r#"{"@type":"service","@parent":"device/child01//","name":"nodered"}"#,
                true,
            ),
            (r#"{"@type":"device"}"#, true),
            (
                r#"{"@type":"child-device","@parent":"device/child01"}"#,
                true,
            ),
            (
                r#"{"@type":"child-device","@id":"c8y-1","@health":"device/child01/service/agent"}"#,
                true,
            ),
            (r#"{"name":"child01"}"#, false),
            (r#"{"@type":"gateway"}"#, false),
            (r#"{"@type":"child-device","@parent":5}"#, false),
            (r#"{"@type":"child-device","@parent":"a/b/c/d/e"}"#, false),
            (r#"{"@type":"child-device","@id":false}"#, false),
            ("[1]", false),
        ],
    );
}

#[test]
fn twin_health_and_meta_schemas() {
    agree(
        "twin.schema.json",
        "te/device/main///twin/x",
        &[
            (r#"{"family":"Debian"}"#, true),
            (r#""service""#, true),
            ("true", true),
            ("null", true),
            ("[1]", true),
            ("4.5", true),
        ],
    );
    agree(
        "health.schema.json",
        "te/device/main///status/health",
        &[
            (
                r#"{"pid":7579,"status":"up","time":1795219644.3183434}"#,
                true,
            ),
            (r#"{"pid":4703,"status":"down"}"#, true),
            (r#"{"status":"up","time":"2021-01-01T05:30:45Z"}"#, true),
            ("1", true),
            ("0", true),
            ("{}", true),
            ("2", false),
            (r#""up""#, false),
            (r#"{"status":"up","pid":"x"}"#, false),
            (r#"{"status":"up","time":"soon"}"#, false),
        ],
    );
    agree(
        "measurement-meta.schema.json",
        "te/device/main///m/battery/meta",
        &[
            (
                r#"{"temperature":{"unit":"°C","precision":"±0.1°C"},"voltage":{"unit":"V","min":0,"max":20}}"#,
                true,
            ),
            (r#"{"Climate.Temperature":{"unit":"°C"}}"#, true),
            (r#"{"x":"free text"}"#, true),
            ("{}", true),
            (r#""°C""#, false),
            ("[1]", false),
        ],
    );
}
