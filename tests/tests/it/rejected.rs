//! Every invalid example of spec §6.22 and §3 lands in `rejected`, whole, with a reason a person
//! can act on.

use twinlake_model::{FleetTopics, Parsed, TopicRoot, parse_message};

use crate::support::{RECEIVED, parse, received_at, rows_of};

/// Asserts the message becomes one `rejected` row keeping topic and payload whole, with the
/// given reason code and a reason that mentions every one of `mentions`.
fn assert_rejected(topic: &str, payload: &str, code: &str, mentions: &[&str]) {
    let rows = rows_of("rejected", topic, payload);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["received_at"], RECEIVED);
    assert_eq!(row["topic"], topic);
    assert_eq!(row["payload"], payload, "the payload is kept whole");
    assert_eq!(
        row["reason_code"], code,
        "{topic} {payload:?}: {}",
        row["reason"]
    );
    let reason = row["reason"].as_str().unwrap_or_default();
    for mention in mentions {
        assert!(
            reason.contains(mention),
            "reason {reason:?} should mention {mention:?}"
        );
    }
}

const M: &str = "te/device/main///m/env";

#[test]
fn spec_6_22_measurements_rejected_by_the_mapper() {
    assert_rejected(
        M,
        r#"{"running":true,"temperature":25}"#,
        "invalid_payload",
        &["measurement", "\"running\"", "boolean"],
    );
    assert_rejected(
        M,
        r#"{"a":{"b":{"c":1}}}"#,
        "invalid_payload",
        &["\"a\"", "\"b\"", "one level"],
    );
    assert_rejected(M, "{}", "invalid_payload", &["at least one number"]);
    assert_rejected(M, r#"{"g":{}}"#, "invalid_payload", &["\"g\"", "empty"]);
    assert_rejected(M, r#"{"x":null}"#, "invalid_payload", &["\"x\"", "null"]);
    assert_rejected(M, r#"{"x":[1,2]}"#, "invalid_payload", &["\"x\"", "array"]);
    assert_rejected(
        M,
        r#"{"time":"2021-01-01 05:30:45","x":1}"#,
        "invalid_time",
        &["2021-01-01 05:30:45", "RFC 3339"],
    );
    assert_rejected(M, "hello", "invalid_payload", &["invalid JSON"]);
}

#[test]
fn spec_6_22_event_with_unreadable_time() {
    assert_rejected(
        "te/device/main///e/login",
        r#"{"text":"x","time":"yesterday"}"#,
        "invalid_time",
        &["event", "\"yesterday\""],
    );
}

#[test]
fn spec_3_measurement_rules() {
    // Numbers that are not finite cannot even be written in JSON; a literal that overflows f64 is
    // an invalid JSON number.
    assert_rejected(
        M,
        r#"{"x":1e400}"#,
        "invalid_payload",
        &["number out of range"],
    );
    assert_rejected(M, r#"{"x":NaN}"#, "invalid_payload", &["invalid JSON"]);
    assert_rejected(
        M,
        r#"{"x":2.2250738585072014e-309}"#,
        "invalid_payload",
        &["subnormal"],
    );
    assert_rejected(
        M,
        r#"{"g":{"x":false}}"#,
        "invalid_payload",
        &["\"g.x\"", "boolean"],
    );
    assert_rejected(
        M,
        r#"{"state":"ok"}"#,
        "invalid_payload",
        &["string values are ignored"],
    );
    assert_rejected(
        M,
        r#"{"time":"2021-01-01T05:30:45","x":1}"#,
        "invalid_time",
        &["offset"],
    );
    assert_rejected(M, r#"{"time":true,"x":1}"#, "invalid_time", &["boolean"]);
    assert_rejected(
        M,
        r#"{"time":"2021-01-01T05:30:45Z"}"#,
        "invalid_payload",
        &["at least one number"],
    );
    assert_rejected(M, "[1,2]", "invalid_payload", &["invalid JSON"]);
    assert_rejected(M, "", "invalid_payload", &["invalid JSON"]);
    assert_rejected(M, r#"{"x":1}{"y":2}"#, "invalid_payload", &["trailing"]);
    assert_rejected(
        M,
        r#"{"time":99999999999999,"x":1}"#,
        "invalid_time",
        &["outside"],
    );
}

#[test]
fn events_and_alarms_with_wrongly_typed_members() {
    assert_rejected(
        "te/device/main///e/login",
        r#"{"text":5}"#,
        "invalid_payload",
        &["event", "`text`", "number"],
    );
    assert_rejected(
        "te/device/main///e/login",
        "[]",
        "invalid_payload",
        &["JSON object", "array"],
    );
    assert_rejected(
        "te/device/main///a/hot",
        r#"{"type":1}"#,
        "invalid_payload",
        &["alarm", "`type`"],
    );
    assert_rejected(
        "te/device/main///a/hot",
        "not json",
        "invalid_payload",
        &["alarm", "invalid JSON"],
    );
    assert_rejected(
        "te/device/main///a/hot",
        r#"{"time":"noon"}"#,
        "invalid_time",
        &["alarm", "\"noon\""],
    );
}

#[test]
fn invalid_registrations() {
    let topic = "te/device/child01//";
    assert_rejected(
        topic,
        r#"{"name":"child01"}"#,
        "invalid_payload",
        &["`@type` is missing"],
    );
    assert_rejected(
        topic,
        r#"{"@type":"gateway"}"#,
        "invalid_payload",
        &["\"gateway\"", "child-device"],
    );
    assert_rejected(
        topic,
        r#"{"@type":3}"#,
        "invalid_payload",
        &["`@type` must be a string"],
    );
    assert_rejected(
        topic,
        r#"{"@type":"child-device","@parent":5}"#,
        "invalid_payload",
        &["`@parent`"],
    );
    assert_rejected(
        topic,
        r#"{"@type":"child-device","@parent":"a/b/c/d/e"}"#,
        "invalid_payload",
        &["`@parent`", "4 segments"],
    );
    assert_rejected(
        topic,
        r#"{"@type":"child-device","@id":false}"#,
        "invalid_payload",
        &["`@id`"],
    );
    assert_rejected(
        topic,
        "[1]",
        "invalid_payload",
        &["entity registration", "JSON object"],
    );
    // A measurement topic missing the id's empty segments reads as a registration: say so.
    assert_rejected(
        "te/device/child01/m/temperature",
        r#"{"t":21.5}"#,
        "invalid_payload",
        &["`@type` is missing", "te/device/child01///m/temperature"],
    );
}

#[test]
fn invalid_twin_health_and_meta() {
    assert_rejected(
        "te/device/main///twin/x",
        "{oops",
        "invalid_payload",
        &["twin fragment", "invalid JSON"],
    );
    assert_rejected(
        "te/device/main///twin/@x",
        "1",
        "invalid_topic",
        &["twin fragment key", "\"@x\""],
    );
    assert_rejected(
        "te/device/main///twin/",
        "1",
        "invalid_topic",
        &["twin fragment key"],
    );
    assert_rejected(
        "te/device/main///status/health",
        "maybe",
        "invalid_payload",
        &["health", "invalid JSON"],
    );
    assert_rejected(
        "te/device/main///status/health",
        r#"{"status":"up","pid":"x"}"#,
        "invalid_payload",
        &["`pid`"],
    );
    assert_rejected(
        "te/device/main///status/health",
        r#"{"status":"up","time":"soon"}"#,
        "invalid_time",
        &["health"],
    );
    assert_rejected(
        "te/device/main///m/env/meta",
        r#""°C""#,
        "invalid_payload",
        &["measurement metadata", "string"],
    );
}

#[test]
fn unknown_channels_are_classified_so_ingest_can_choose() {
    for topic in [
        "te/device/main///m",
        "te/device/main///x/y",
        "te/device/main///m/t/notmeta",
    ] {
        assert_rejected(topic, "{}", "unknown_channel", &["unknown channel"]);
        let Parsed::Rejected(rejection) = parse(topic, "{}") else {
            panic!("{topic} should be rejected");
        };
        assert!(rejection.reason.is_unknown_channel());
    }
    let Parsed::Rejected(rejection) = parse(M, "{}") else {
        panic!("rejected expected");
    };
    assert!(!rejection.reason.is_unknown_channel());
}

#[test]
fn invalid_topics_and_bytes() {
    assert_rejected(
        "te/device/+//m/env",
        r#"{"x":1}"#,
        "invalid_topic",
        &["wildcard"],
    );
    assert_rejected("te/", r#"{"x":1}"#, "invalid_topic", &["empty"]);

    let topics = FleetTopics::default();
    let Parsed::Rejected(bad_topic) =
        parse_message(&topics, b"te/device/\xff//m/x", b"{\"x\":1}", received_at())
    else {
        panic!("non-UTF-8 topic must be rejected");
    };
    assert_eq!(bad_topic.reason.code(), "invalid_topic");
    assert_eq!(bad_topic.topic, "te/device/\u{fffd}//m/x");

    let payload = b"{\"x\":\xff}";
    let Parsed::Rejected(bad_payload) =
        parse_message(&topics, b"te/device/main///m/x", payload, received_at())
    else {
        panic!("non-UTF-8 payload must be rejected");
    };
    assert_eq!(bad_payload.payload, payload.to_vec(), "bytes kept whole");
    assert!(
        bad_payload.reason.to_string().contains("offset 5"),
        "{}",
        bad_payload.reason
    );
}

#[test]
fn foreign_topics_are_not_rejections() {
    assert_eq!(parse("c8y/s/us", "200"), Parsed::OutsideRoot);
    let defaults = FleetTopics::default();
    let custom = FleetTopics::new(
        "twinlake",
        TopicRoot::new("thin-edge").expect("valid root"),
        defaults.default_gateway().clone(),
    )
    .expect("valid topics");
    assert_eq!(
        parse_message(
            &custom,
            b"te/device/main///m/env",
            b"{\"x\":1}",
            received_at()
        ),
        Parsed::OutsideRoot
    );
}
