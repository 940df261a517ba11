//! Messages of a fleet (fleet.md §3–4): what a gateway's bridge forwards under
//! `twinlake/<gateway>/te/...` is that gateway's, named by thin-edge's external-id rule.

use serde_json::{Value, json};
use twinlake_model::Parsed;

use crate::support::{RECEIVED, batch_rows, parse};

/// The rows one message becomes, every column as stored.
fn stored(topic: &str, payload: &str) -> (String, Vec<Value>) {
    let mut builders = twinlake_model::TableBuilders::new();
    match parse(topic, payload) {
        Parsed::Data(message) => builders.append(&message),
        Parsed::Rejected(rejection) => builders.append_rejection(&rejection),
        other => panic!("{topic} gave no rows: {other:?}"),
    }
    let (table, batch) = builders.finish().expect("batches build").remove(0);
    (table.name().to_owned(), batch_rows(&batch))
}

#[test]
fn a_forwarded_registration_is_named_within_its_gateway() {
    let (table, rows) = stored(
        "twinlake/truck042/te/device/sensor01//",
        r#"{"@type":"child-device","@id":"sensor-17","@health":"device/sensor01/service/probe"}"#,
    );
    assert_eq!(table, "entity_changes");
    assert_eq!(
        rows,
        vec![json!({
            "time": RECEIVED, "gateway": "truck042", "entity": "truck042:device:sensor01",
            "topic_id": "device/sensor01//", "change": "registered", "kind": "child-device",
            "parent": "truck042", "external_id": "sensor-17", "name": null, "type": null,
            "health_endpoint": "truck042:device:sensor01:service:probe", "attributes": null,
        })]
    );
    // An explicit @parent is a topic id of the same gateway.
    let (_, rows) = stored(
        "twinlake/truck042/te/device/main/service/tedge-agent",
        r#"{"@type":"service","@parent":"device/main//"}"#,
    );
    assert_eq!(
        rows[0]["entity"],
        "truck042:device:main:service:tedge-agent"
    );
    assert_eq!(rows[0]["parent"], "truck042");
}

#[test]
fn telemetry_names_its_gateway_and_entity() {
    let (table, rows) = stored(
        "twinlake/plant7/te/factory01/hallA/packaging/belt001/m/env",
        r#"{"speed":1.5}"#,
    );
    assert_eq!(table, "measurements");
    assert_eq!(rows[0]["gateway"], "plant7");
    assert_eq!(
        rows[0]["entity"],
        "plant7:factory01:hallA:packaging:belt001"
    );
    let (_, rows) = stored("twinlake/truck042/te/device/main///m/env", r#"{"t":1}"#);
    assert_eq!(
        (&rows[0]["gateway"], &rows[0]["entity"]),
        (&json!("truck042"), &json!("truck042"))
    );
    // The same topic id of two gateways is two entities.
    let (_, other) = stored("twinlake/truck043/te/device/main///m/env", r#"{"t":1}"#);
    assert_ne!(rows[0]["entity"], other[0]["entity"]);
}

#[test]
fn an_invalid_gateway_id_is_rejected_with_its_reason() {
    for topic in [
        "twinlake//te/device/main///m/env",
        "twinlake/a\u{1}b/te/device/main///m/env",
    ] {
        let (table, rows) = stored(topic, r#"{"t":1}"#);
        assert_eq!(table, "rejected", "{topic}");
        assert_eq!(rows[0]["reason_code"], "invalid_gateway", "{topic}");
        assert_eq!(rows[0]["gateway"], Value::Null, "{topic}");
        let reason = rows[0]["reason"].as_str().expect("a reason");
        assert!(reason.contains("not a valid gateway id"), "{reason}");
    }
    let long = format!("twinlake/{}/te/device/main///m/env", "g".repeat(129));
    assert_eq!(
        stored(&long, r#"{"t":1}"#).1[0]["reason_code"],
        "invalid_gateway"
    );
}

#[test]
fn a_rejected_message_keeps_its_gateway() {
    let (table, rows) = stored("twinlake/truck042/te/device/main///m/env", "not json");
    assert_eq!(table, "rejected");
    assert_eq!(rows[0]["gateway"], "truck042");
    assert_eq!(rows[0]["reason_code"], "invalid_payload");
}

#[test]
fn only_thin_edge_topics_under_the_prefix_are_read() {
    assert_eq!(
        parse("twinlake/truck042/c8y/s/us", "200"),
        Parsed::OutsideRoot
    );
    assert_eq!(parse("twinlake/truck042", "x"), Parsed::OutsideRoot);
}
