//! Measurement metadata (`m/<type>/meta`): units per series; `group.member` keys for groups.

use serde_json::Value;

use crate::json::attributes_text;
use crate::reject::{PayloadKind, RejectReason};
use crate::time::Timestamp;

use super::payload_object;

/// The metadata of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesMeta {
    pub series: String,
    /// The `unit` member when it is a string.
    pub unit: Option<String>,
    /// Everything else said about the series (`precision`, `min`, `max`, ...), as JSON.
    pub attributes: Option<String>,
}

/// The rows of `measurement_meta` for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementMeta {
    pub time: Timestamp,
    pub measurement_type: String,
    /// Empty when the metadata was cleared (empty retained payload, or `{}`).
    pub series: Vec<SeriesMeta>,
}

pub(crate) fn parse_meta(
    measurement_type: &str,
    payload: &str,
    received_at: Timestamp,
) -> Result<MeasurementMeta, RejectReason> {
    let object = if payload.is_empty() {
        serde_json::Map::new()
    } else {
        payload_object(PayloadKind::MeasurementMeta, payload)?
    };
    let series = object
        .into_iter()
        .map(|(series, value)| match value {
            Value::Object(mut member) => {
                let unit = match member.shift_remove("unit") {
                    Some(Value::String(unit)) => Some(unit),
                    Some(other) => {
                        member.insert("unit".to_owned(), other);
                        None
                    }
                    None => None,
                };
                SeriesMeta {
                    series,
                    unit,
                    attributes: attributes_text(&member),
                }
            }
            other => SeriesMeta {
                series,
                unit: None,
                attributes: Some(other.to_string()),
            },
        })
        .collect();
    Ok(MeasurementMeta {
        time: received_at,
        measurement_type: measurement_type.to_owned(),
        series,
    })
}
