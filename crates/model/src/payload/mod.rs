//! Payload parsing, one module per kind of thin-edge message (spec §3).

pub(crate) mod entity;
pub(crate) mod event;
pub(crate) mod health;
pub(crate) mod measurement;
pub(crate) mod meta;
pub(crate) mod twin;

use serde_json::{Map, Value};

use crate::json::kind_of;
use crate::reject::{PayloadKind, RejectReason};
use crate::time::{Timestamp, time_from_json};

/// Reads the UTF-8 text of a payload that `kind` expects to be JSON.
pub(crate) fn payload_text(kind: PayloadKind, payload: &[u8]) -> Result<&str, RejectReason> {
    std::str::from_utf8(payload).map_err(|error| RejectReason::PayloadNotUtf8 {
        kind,
        valid_up_to: error.valid_up_to(),
    })
}

/// Reads a payload that must be a JSON object.
pub(crate) fn payload_object(
    kind: PayloadKind,
    payload: &str,
) -> Result<Map<String, Value>, RejectReason> {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(RejectReason::payload(
            kind,
            format!("the payload must be a JSON object, not {}", kind_of(&other)),
        )),
        Err(error) => Err(RejectReason::payload(
            kind,
            format!("invalid JSON: {error}"),
        )),
    }
}

/// Takes `time` out of `object`: the payload's own time, or the receive time when absent.
pub(crate) fn take_time(
    kind: PayloadKind,
    object: &mut Map<String, Value>,
    received_at: Timestamp,
) -> Result<Timestamp, RejectReason> {
    match object.shift_remove("time") {
        None => Ok(received_at),
        Some(value) => time_from_json(&value).map_err(|source| RejectReason::Time { kind, source }),
    }
}

/// Takes a string member out of `object`, rejecting any other JSON type for it.
pub(crate) fn take_string(
    kind: PayloadKind,
    object: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<String>, RejectReason> {
    match object.shift_remove(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(RejectReason::payload(
            kind,
            format!("`{key}` must be a string, not {}", kind_of(&other)),
        )),
    }
}
