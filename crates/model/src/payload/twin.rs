//! Twin fragments (`twin/<key>`): any JSON value; the empty payload deletes the fragment.

use crate::reject::{PayloadKind, RejectReason};
use crate::time::Timestamp;

/// A row of the `twin_changes` table.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinChange {
    pub time: Timestamp,
    pub fragment: String,
    /// The fragment's value as compact JSON text; `None` when the fragment is deleted.
    pub value: Option<String>,
}

pub(crate) fn parse_twin(
    fragment: &str,
    payload: &str,
    received_at: Timestamp,
) -> Result<TwinChange, RejectReason> {
    let value = if payload.is_empty() {
        None
    } else {
        let value: serde_json::Value = serde_json::from_str(payload).map_err(|error| {
            RejectReason::payload(PayloadKind::Twin, format!("invalid JSON: {error}"))
        })?;
        Some(value.to_string())
    };
    Ok(TwinChange {
        time: received_at,
        fragment: fragment.to_owned(),
        value,
    })
}
