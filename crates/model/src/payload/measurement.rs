//! Measurements (`m/<type>`): thin-edge JSON, read in one streaming pass.
//!
//! The rules are thin-edge's own parser's: a JSON object of numbers and one level of groups of
//! numbers, a reserved root-level `time`, a reserved `properties` that is kept but is not a
//! value; string values are ignored; booleans, `null`, arrays, deeper nesting, empty groups and
//! numbers that are not finite or are subnormal reject the whole message. Twinlake is stricter in
//! one place: a message with no numeric value at all (`{}`, or only strings) is rejected rather
//! than stored as nothing, so that it shows up in `rejected` instead of vanishing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::time::{TimeError, Timestamp};

/// One numeric value of a measurement message: a row of the `measurements` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesValue {
    /// The key, or `group.key` for a member of a group.
    pub series: String,
    pub value: f64,
}

/// What a measurement payload holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct MeasurementPayload {
    pub(crate) time: Option<Timestamp>,
    pub(crate) values: Vec<SeriesValue>,
    pub(crate) properties: Option<String>,
}

/// Why a measurement payload was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum MeasurementError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Time(TimeError),
    #[error(
        "{key:?} is {found}; measurement values must be numbers or groups of numbers (strings are ignored), so the whole message is dropped"
    )]
    UnsupportedValue { key: String, found: &'static str },
    #[error("group {group:?} nests an object under {key:?}; only one level of grouping is allowed")]
    TooDeep { group: String, key: String },
    #[error("group {0:?} is empty; a group must hold at least one measurement")]
    EmptyGroup(String),
    #[error("{0:?} is not a finite number")]
    NotFinite(String),
    #[error(
        "{key:?} is subnormal ({value:e}); thin-edge rejects numbers below the normal f64 range"
    )]
    Subnormal { key: String, value: f64 },
    #[error(
        "no numeric value: a measurement must hold at least one number (string values are ignored, `time` and `properties` are not values)"
    )]
    NoValue,
}

pub(crate) fn parse_measurement(payload: &str) -> Result<MeasurementPayload, MeasurementError> {
    let mut out = MeasurementPayload::default();
    let mut failure = None;
    let mut deserializer = serde_json::Deserializer::from_str(payload);
    let parsed = deserializer
        .deserialize_any(RootVisitor {
            out: &mut out,
            failure: &mut failure,
        })
        .and_then(|()| deserializer.end());
    if let Some(failure) = failure {
        return Err(failure);
    }
    parsed.map_err(|error| MeasurementError::Json(error.to_string()))?;
    if out.values.is_empty() {
        return Err(MeasurementError::NoValue);
    }
    Ok(out)
}

/// The typed reason is kept aside because serde's error type can only carry a string; the
/// string error merely unwinds the parse.
type Failure<'f> = &'f mut Option<MeasurementError>;

fn fail<E: de::Error>(failure: Failure<'_>, error: MeasurementError) -> E {
    let message = error.to_string();
    *failure = Some(error);
    E::custom(message)
}

/// A map key that borrows from the payload when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct RootVisitor<'o, 'f> {
    out: &'o mut MeasurementPayload,
    failure: Failure<'f>,
}

impl<'de> Visitor<'de> for RootVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a thin-edge measurement: a JSON object of numbers and groups of numbers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "time" => {
                    let time = map.next_value_seed(TimeSeed)?;
                    match time {
                        Ok(time) => self.out.time = Some(time),
                        Err(error) => {
                            return Err(fail(self.failure, MeasurementError::Time(error)));
                        }
                    }
                }
                "properties" => {
                    let properties: serde_json::Value = map.next_value()?;
                    self.out.properties = Some(properties.to_string());
                }
                _ => map.next_value_seed(ValueSeed {
                    group: None,
                    key: &key,
                    out: &mut self.out.values,
                    failure: self.failure,
                })?,
            }
        }
        Ok(())
    }
}

/// Reads `time`: an RFC 3339 string or unix seconds. A wrong time is reported as a typed error
/// in the `Ok` side so it is not confused with malformed JSON.
struct TimeSeed;

impl<'de> DeserializeSeed<'de> for TimeSeed {
    type Value = Result<Timestamp, TimeError>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let value: serde_json::Value = de::Deserialize::deserialize(deserializer)?;
        Ok(crate::time::time_from_json(&value))
    }
}

/// One value at the root (`group: None`) or inside a group.
struct ValueSeed<'k, 'o, 'f> {
    group: Option<&'k str>,
    key: &'k str,
    out: &'o mut Vec<SeriesValue>,
    failure: Failure<'f>,
}

impl ValueSeed<'_, '_, '_> {
    fn series(&self) -> String {
        match self.group {
            None => self.key.to_owned(),
            Some(group) => {
                let mut series = String::with_capacity(group.len() + 1 + self.key.len());
                series.push_str(group);
                series.push('.');
                series.push_str(self.key);
                series
            }
        }
    }

    fn unsupported<E: de::Error>(self, found: &'static str) -> E {
        let key = self.series();
        fail(
            self.failure,
            MeasurementError::UnsupportedValue { key, found },
        )
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a string or a group of numbers")
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        if !value.is_finite() {
            let key = self.series();
            return Err(fail(self.failure, MeasurementError::NotFinite(key)));
        }
        if value.is_subnormal() {
            let key = self.series();
            return Err(fail(
                self.failure,
                MeasurementError::Subnormal { key, value },
            ));
        }
        let series = self.series();
        self.out.push(SeriesValue { series, value });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.visit_f64(value as f64)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.visit_f64(value as f64)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.unsupported("a boolean"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.unsupported("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.unsupported("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if let Some(group) = self.group {
            let error = MeasurementError::TooDeep {
                group: group.to_owned(),
                key: self.key.to_owned(),
            };
            return Err(fail(self.failure, error));
        }
        let mut members = 0usize;
        while let Some(Key(member)) = map.next_key()? {
            members += 1;
            map.next_value_seed(ValueSeed {
                group: Some(self.key),
                key: &member,
                out: self.out,
                failure: self.failure,
            })?;
        }
        if members == 0 {
            let group = self.key.to_owned();
            return Err(fail(self.failure, MeasurementError::EmptyGroup(group)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(payload: &str) -> Vec<(String, f64)> {
        parse_measurement(payload)
            .unwrap()
            .values
            .into_iter()
            .map(|v| (v.series, v.value))
            .collect()
    }

    fn error(payload: &str) -> MeasurementError {
        parse_measurement(payload).unwrap_err()
    }

    #[test]
    fn groups_become_dotted_series_in_payload_order() {
        assert_eq!(
            values(r#"{"t":21.5,"g":{"b":2,"a":-1},"z":3}"#),
            vec![
                ("t".to_owned(), 21.5),
                ("g.b".to_owned(), 2.0),
                ("g.a".to_owned(), -1.0),
                ("z".to_owned(), 3.0)
            ]
        );
    }

    #[test]
    fn strings_are_ignored_but_a_message_of_only_strings_is_rejected() {
        assert_eq!(
            values(r#"{"state":"ok","temperature":25}"#),
            vec![("temperature".to_owned(), 25.0)]
        );
        assert_eq!(error(r#"{"state":"ok"}"#), MeasurementError::NoValue);
        assert_eq!(error(r#"{"g":{"s":"x"}}"#), MeasurementError::NoValue);
    }

    #[test]
    fn escaped_keys_are_unescaped() {
        assert_eq!(values(r#"{"a\"b":1}"#), vec![("a\"b".to_owned(), 1.0)]);
    }

    #[test]
    fn every_invalid_shape_names_the_culprit() {
        assert!(matches!(
            error(r#"{"running":true,"temperature":25}"#),
            MeasurementError::UnsupportedValue { key, found: "a boolean" } if key == "running"
        ));
        assert!(matches!(
            error(r#"{"a":{"b":{"c":1}}}"#),
            MeasurementError::TooDeep { group, key } if group == "a" && key == "b"
        ));
        assert_eq!(
            error(r#"{"g":{}}"#),
            MeasurementError::EmptyGroup("g".to_owned())
        );
        assert!(matches!(
            error(r#"{"x":null}"#),
            MeasurementError::UnsupportedValue { found: "null", .. }
        ));
        assert!(matches!(
            error(r#"{"x":[1,2]}"#),
            MeasurementError::UnsupportedValue {
                found: "an array",
                ..
            }
        ));
        assert!(
            matches!(error(r#"{"g":{"x":false}}"#), MeasurementError::UnsupportedValue { key, .. } if key == "g.x")
        );
        assert!(matches!(
            error(r#"{"x":2.2250738585072014e-309}"#),
            MeasurementError::Subnormal { .. }
        ));
        assert!(matches!(error(r#"{"x":1e400}"#), MeasurementError::Json(_)));
        assert!(matches!(error("hello"), MeasurementError::Json(_)));
        assert!(matches!(error("[1]"), MeasurementError::Json(_)));
        assert!(matches!(
            error(r#"{"x":1} trailing"#),
            MeasurementError::Json(_)
        ));
        assert_eq!(error("{}"), MeasurementError::NoValue);
    }

    #[test]
    fn time_and_properties_are_reserved_at_the_root_only() {
        let parsed = parse_measurement(
            r#"{"time":1702373722,"x":1,"properties":{"ok":false},"g":{"time":5}}"#,
        )
        .unwrap();
        assert_eq!(
            parsed.time,
            Some(Timestamp::from_unix_seconds(1702373722).unwrap())
        );
        assert_eq!(parsed.properties.as_deref(), Some(r#"{"ok":false}"#));
        assert_eq!(parsed.values.len(), 2);
        assert_eq!(parsed.values[1].series, "g.time");
        assert!(matches!(
            error(r#"{"time":"2021-01-01 05:30:45","x":1}"#),
            MeasurementError::Time(TimeError::NotRfc3339(_))
        ));
        assert!(matches!(
            error(r#"{"time":true,"x":1}"#),
            MeasurementError::Time(TimeError::WrongType(_))
        ));
    }

    #[test]
    fn zero_and_extremes_are_values() {
        assert_eq!(
            values(r#"{"zero":0,"nz":-0.0,"big":1e308,"small":-1.5e-7,"u":18446744073709551615}"#)
                .len(),
            5
        );
    }
}
