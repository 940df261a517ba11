//! Small helpers for payloads that are read as whole JSON documents.

use serde_json::{Map, Value};

/// How a JSON value is named in a rejection reason.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a payload that must be a JSON object (events, alarms, registrations, meta).
pub(crate) fn parse_object(payload: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "the payload must be a JSON object, not {}",
            kind_of(&other)
        )),
        Err(error) => Err(format!("invalid JSON: {error}")),
    }
}

/// Takes `key` out of `object` if it is a string; `Err` names the key if it is anything else.
pub(crate) fn take_string(
    object: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<String>, String> {
    match object.shift_remove(key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!("`{key}` must be a string, not {}", kind_of(&other))),
    }
}

/// The members left in `object` as compact JSON text, or `None` when nothing is left.
pub(crate) fn attributes_text(object: &Map<String, Value>) -> Option<String> {
    if object.is_empty() {
        return None;
    }
    Some(Value::Object(object.clone()).to_string())
}
