//! Property tests: no topic and no payload, however malformed, makes the parser panic, and
//! whatever it accepts builds valid Arrow batches.

use proptest::prelude::*;
use twinlake_model::{FleetTopics, Parsed, TableBuilders, parse_message};

use crate::support::received_at;

/// Checks one message end to end: parse, then build batches from what came out.
fn check(topic: &[u8], payload: &[u8]) -> Result<(), TestCaseError> {
    let mut builders = TableBuilders::new();
    match parse_message(&FleetTopics::default(), topic, payload, received_at()) {
        Parsed::Data(message) => {
            prop_assert!(message.row_count() > 0);
            builders.append(&message);
            let batches = builders
                .finish()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(batches.len(), 1);
            prop_assert_eq!(batches[0].1.num_rows(), message.row_count());
        }
        Parsed::Rejected(rejection) => {
            prop_assert!(!rejection.reason.to_string().is_empty());
            prop_assert_eq!(&rejection.payload, &payload.to_vec());
            builders.append_rejection(&rejection);
            let batches = builders
                .finish()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(batches[0].1.num_rows(), 1);
        }
        Parsed::NotStored(_) | Parsed::OutsideRoot => {}
    }
    Ok(())
}

/// Topics built from the pieces thin-edge topics are made of, so most reach the payload parsers.
fn thin_edge_topic() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(String::new()),
        Just("device".to_owned()),
        Just("main".to_owned()),
        Just("service".to_owned()),
        "[a-zA-Z0-9_+#@é-]{0,6}",
    ];
    let channel = prop_oneof![
        Just(String::new()),
        Just("/m/t".to_owned()),
        Just("/m/".to_owned()),
        Just("/m/t/meta".to_owned()),
        Just("/e/t".to_owned()),
        Just("/a/t".to_owned()),
        Just("/twin/k".to_owned()),
        Just("/status/health".to_owned()),
        Just("/cmd/restart/1".to_owned()),
        "(/[a-z@]{0,3}){0,4}",
    ];
    (prop::collection::vec(segment, 0..6), channel)
        .prop_map(|(segments, channel)| format!("te/{}{}", segments.join("/"), channel))
}

/// Arbitrary JSON, a few levels deep, with the keys thin-edge reserves.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        "[a-z0-9 :T+.-]{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            Just("time".to_owned()),
            Just("type".to_owned()),
            Just("text".to_owned()),
            Just("severity".to_owned()),
            Just("properties".to_owned()),
            Just("status".to_owned()),
            Just("pid".to_owned()),
            Just("@type".to_owned()),
            Just("@parent".to_owned()),
            Just("@id".to_owned()),
            "[a-z.]{0,5}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_never_panic(topic in prop::collection::vec(any::<u8>(), 0..64), payload in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&topic, &payload)?;
    }

    #[test]
    fn any_json_on_any_thin_edge_topic_never_panics(topic in thin_edge_topic(), payload in json_value()) {
        check(topic.as_bytes(), payload.to_string().as_bytes())?;
    }

    #[test]
    fn arbitrary_text_payloads_never_panic(topic in thin_edge_topic(), payload in "\\PC{0,64}") {
        check(topic.as_bytes(), payload.as_bytes())?;
    }
}
