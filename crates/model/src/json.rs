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

/// The members left in `object` as compact JSON text, or `None` when nothing is left.
pub(crate) fn attributes_text(object: &Map<String, Value>) -> Option<String> {
    if object.is_empty() {
        return None;
    }
    Some(Value::Object(object.clone()).to_string())
}
