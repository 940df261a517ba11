//! Health status (`status/health`): a JSON object, or the bare `1`/`0` of Mosquitto bridges.

use serde_json::Value;

use crate::json::{attributes_text, kind_of};
use crate::reject::{PayloadKind, RejectReason};
use crate::time::Timestamp;

use super::{payload_object, take_time};

const KIND: PayloadKind = PayloadKind::Health;

/// A row of the `health` table.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthStatus {
    /// The payload's `time` when present, else the receive time.
    pub time: Timestamp,
    /// `up`, `down`, another status string as sent, `unknown` when the object has no string
    /// `status` (as thin-edge treats it), or `None` when the retained status was cleared.
    pub status: Option<String>,
    pub pid: Option<i64>,
    /// Every other member.
    pub attributes: Option<String>,
}

pub(crate) fn parse_health(
    payload: &str,
    received_at: Timestamp,
) -> Result<HealthStatus, RejectReason> {
    let bare = |status: &str| HealthStatus {
        time: received_at,
        status: Some(status.to_owned()),
        pid: None,
        attributes: None,
    };
    match payload.trim() {
        "" => {
            return Ok(HealthStatus {
                time: received_at,
                status: None,
                pid: None,
                attributes: None,
            });
        }
        "1" => return Ok(bare("up")),
        "0" => return Ok(bare("down")),
        _ => {}
    }
    let mut object = payload_object(KIND, payload)?;
    let time = take_time(KIND, &mut object, received_at)?;
    let status = match object.shift_remove("status") {
        Some(Value::String(status)) => status,
        Some(other) => {
            object.insert("status".to_owned(), other);
            "unknown".to_owned()
        }
        None => "unknown".to_owned(),
    };
    let pid = match object.shift_remove("pid") {
        None => None,
        Some(Value::Number(pid)) if pid.as_i64().is_some() => pid.as_i64(),
        Some(other) => {
            return Err(RejectReason::payload(
                KIND,
                format!("`pid` must be an integer, not {}", kind_of(&other)),
            ));
        }
    };
    Ok(HealthStatus {
        time,
        status: Some(status),
        pid,
        attributes: attributes_text(&object),
    })
}
