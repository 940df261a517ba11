//! Events (`e/<type>`) and alarms (`a/<type>`): objects with optional `text`, `time` and `type`
//! and any custom fragments.

use crate::json::attributes_text;
use crate::reject::{PayloadKind, RejectReason};
use crate::time::Timestamp;

use super::{payload_object, take_string, take_time};

/// A row of the `events` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: Timestamp,
    /// The topic's type, unless the payload overrides it with a `type` member.
    pub event_type: String,
    /// The payload's `text`, or the event type when there is none (as thin-edge's mappers do).
    pub text: String,
    /// Custom fragments: every other member, as a JSON object.
    pub attributes: Option<String>,
}

/// An alarm's severity. A missing or unknown severity is `minor`, as thin-edge's mapper does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    Critical,
    Major,
    #[default]
    Minor,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Major => "major",
            Self::Minor => "minor",
            Self::Warning => "warning",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "critical" => Some(Self::Critical),
            "major" => Some(Self::Major),
            "minor" => Some(Self::Minor),
            "warning" => Some(Self::Warning),
            _ => None,
        }
    }
}

/// A row of the `alarms` table. The alarm's identity is (entity, type).
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    pub time: Timestamp,
    pub alarm_type: String,
    pub state: AlarmState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlarmState {
    Raised {
        severity: Severity,
        /// The payload's `text`, or the alarm type.
        text: String,
        /// Custom fragments. An unknown severity is kept here under `severity`.
        attributes: Option<String>,
    },
    /// The empty retained payload that clears the alarm; its time is the receive time.
    Cleared,
}

struct Common {
    time: Timestamp,
    type_name: String,
    text: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

/// What events and alarms share: `time`, a `type` override and `text` defaulting to the type.
fn read_common(
    kind: PayloadKind,
    topic_type: &str,
    payload: &str,
    received_at: Timestamp,
) -> Result<Common, RejectReason> {
    let mut rest = payload_object(kind, payload)?;
    let time = take_time(kind, &mut rest, received_at)?;
    let type_name = take_string(kind, &mut rest, "type")?.unwrap_or_else(|| topic_type.to_owned());
    let text = take_string(kind, &mut rest, "text")?.unwrap_or_else(|| type_name.clone());
    Ok(Common {
        time,
        type_name,
        text,
        rest,
    })
}

pub(crate) fn parse_event(
    topic_type: &str,
    payload: &str,
    received_at: Timestamp,
) -> Result<Event, RejectReason> {
    if payload.is_empty() {
        return Ok(Event {
            time: received_at,
            event_type: topic_type.to_owned(),
            text: topic_type.to_owned(),
            attributes: None,
        });
    }
    let common = read_common(PayloadKind::Event, topic_type, payload, received_at)?;
    Ok(Event {
        time: common.time,
        event_type: common.type_name,
        text: common.text,
        attributes: attributes_text(&common.rest),
    })
}

pub(crate) fn parse_alarm(
    topic_type: &str,
    payload: &str,
    received_at: Timestamp,
) -> Result<Alarm, RejectReason> {
    if payload.is_empty() {
        return Ok(Alarm {
            time: received_at,
            alarm_type: topic_type.to_owned(),
            state: AlarmState::Cleared,
        });
    }
    let mut common = read_common(PayloadKind::Alarm, topic_type, payload, received_at)?;
    let severity = match common.rest.shift_remove("severity") {
        None => Severity::default(),
        Some(value) => match value.as_str().and_then(Severity::parse) {
            Some(severity) => severity,
            None => {
                common.rest.insert("severity".to_owned(), value);
                Severity::default()
            }
        },
    };
    Ok(Alarm {
        time: common.time,
        alarm_type: common.type_name,
        state: AlarmState::Raised {
            severity,
            text: common.text,
            attributes: attributes_text(&common.rest),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_unix_nanos(1_000_000_000);

    #[test]
    fn event_type_override_and_default_text() {
        let event = parse_event("login", r#"{"type":"logout","x":{"y":1}}"#, NOW).unwrap();
        assert_eq!(event.event_type, "logout");
        assert_eq!(event.text, "logout");
        assert_eq!(event.attributes.as_deref(), Some(r#"{"x":{"y":1}}"#));
        assert_eq!(event.time, NOW);
    }

    #[test]
    fn event_members_of_the_wrong_type_are_rejected() {
        assert!(parse_event("e", r#"{"text":5}"#, NOW).is_err());
        assert!(parse_event("e", r#"{"type":null}"#, NOW).is_err());
        assert!(parse_event("e", r#""just text""#, NOW).is_err());
        assert!(parse_event("e", "not json", NOW).is_err());
    }

    #[test]
    fn alarm_severity_defaults_and_unknown_is_kept() {
        let Alarm { state, .. } = parse_alarm("hot", "{}", NOW).unwrap();
        assert_eq!(
            state,
            AlarmState::Raised {
                severity: Severity::Minor,
                text: "hot".to_owned(),
                attributes: None
            }
        );
        let Alarm { state, .. } = parse_alarm("hot", r#"{"severity":"fatal"}"#, NOW).unwrap();
        assert_eq!(
            state,
            AlarmState::Raised {
                severity: Severity::Minor,
                text: "hot".to_owned(),
                attributes: Some(r#"{"severity":"fatal"}"#.to_owned())
            }
        );
        let Alarm { state, .. } = parse_alarm("hot", r#"{"severity":"critical"}"#, NOW).unwrap();
        assert!(matches!(
            state,
            AlarmState::Raised {
                severity: Severity::Critical,
                ..
            }
        ));
    }
}
