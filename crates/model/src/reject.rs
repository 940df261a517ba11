//! Messages that cannot become data, and why.

use crate::time::{TimeError, Timestamp};
use crate::topic::{Gateway, TopicError};

/// A message that becomes a row of the `rejected` table instead of data.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub received_at: Timestamp,
    /// The gateway the topic names (or the default gateway's, for a plain topic); None when
    /// the topic names none that is valid.
    pub gateway: Option<Gateway>,
    /// The topic as received (invalid UTF-8 replaced by U+FFFD).
    pub topic: String,
    /// The whole payload, byte for byte, so nothing is lost and the message can be replayed.
    pub payload: Vec<u8>,
    pub reason: RejectReason,
}

/// Which kind of payload a reason is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Measurement,
    MeasurementMeta,
    Event,
    Alarm,
    Registration,
    Twin,
    Health,
}

impl PayloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Measurement => "measurement",
            Self::MeasurementMeta => "measurement metadata",
            Self::Event => "event",
            Self::Alarm => "alarm",
            Self::Registration => "entity registration",
            Self::Twin => "twin fragment",
            Self::Health => "health status",
        }
    }
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message was rejected: the text is for people, [`RejectReason::code`] for metrics and
/// for deciding what to do with whole classes of rejections.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("the topic is not valid UTF-8")]
    TopicNotUtf8,
    #[error("{0}")]
    Topic(#[from] TopicError),
    #[error(
        "{kind} rejected: the payload is not valid UTF-8 (invalid byte at offset {valid_up_to})"
    )]
    PayloadNotUtf8 {
        kind: PayloadKind,
        valid_up_to: usize,
    },
    #[error("{kind} rejected: {problem}")]
    Payload { kind: PayloadKind, problem: String },
    #[error("{kind} rejected: {source}")]
    Time {
        kind: PayloadKind,
        #[source]
        source: TimeError,
    },
    #[error(
        "payload of {size} bytes exceeds the limit of {limit} bytes; only its first bytes are kept"
    )]
    PayloadTooLarge { size: usize, limit: usize },
    #[error(
        "the message would become {rows} rows of {bytes} bytes, over the limit of {row_limit} \
         rows or {byte_limit} bytes per message"
    )]
    TooManyRows {
        rows: usize,
        bytes: usize,
        row_limit: usize,
        byte_limit: usize,
    },
    #[error(
        "{entity} is a new entity, and Twinlake already knows its limit of {limit} entities \
         (setting: max entities)"
    )]
    TooManyEntities { entity: String, limit: usize },
    #[error(
        "{entity} would be {depth} levels below the main device, deeper than the limit of \
         {limit} (setting: max entity depth)"
    )]
    TooDeep {
        entity: String,
        depth: usize,
        limit: usize,
    },
    #[error(
        "the measurement starts a new series, and Twinlake already holds its limit of {limit} \
         series (setting: max series)"
    )]
    TooManySeries { limit: usize },
}

impl RejectReason {
    /// A stable, low-cardinality name for the reason (a metrics label, a filter in SQL).
    pub fn code(&self) -> &'static str {
        match self {
            Self::TopicNotUtf8 => "invalid_topic",
            Self::Topic(TopicError::UnknownChannel(_)) => "unknown_channel",
            Self::Topic(TopicError::InvalidGateway(_)) => "invalid_gateway",
            Self::Topic(_) => "invalid_topic",
            Self::PayloadNotUtf8 { .. } => "invalid_payload",
            Self::Payload { .. } => "invalid_payload",
            Self::Time { .. } => "invalid_time",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::TooManyRows { .. } => "too_many_rows",
            Self::TooManyEntities { .. } => "too_many_entities",
            Self::TooDeep { .. } => "too_deep",
            Self::TooManySeries { .. } => "too_many_series",
        }
    }

    /// A topic under the root whose channel thin-edge does not define: ingest may be configured
    /// to ignore these rather than keep them.
    pub fn is_unknown_channel(&self) -> bool {
        matches!(self, Self::Topic(TopicError::UnknownChannel(_)))
    }

    pub(crate) fn payload(kind: PayloadKind, problem: impl Into<String>) -> Self {
        Self::Payload {
            kind,
            problem: problem.into(),
        }
    }
}

impl Rejection {
    /// A message over one of Twinlake's limits; the payload is kept whole.
    pub fn over_limit(
        gateway: Option<Gateway>,
        topic: &[u8],
        payload: &[u8],
        received_at: Timestamp,
        reason: RejectReason,
    ) -> Self {
        Self {
            received_at,
            gateway,
            topic: String::from_utf8_lossy(topic).into_owned(),
            payload: payload.to_vec(),
            reason,
        }
    }

    /// A message whose rows would exceed what one message may become; the payload is kept whole.
    pub fn too_many_rows(
        gateway: Option<Gateway>,
        topic: &[u8],
        payload: &[u8],
        received_at: Timestamp,
        (rows, bytes): (usize, usize),
        (row_limit, byte_limit): (usize, usize),
    ) -> Self {
        let reason = RejectReason::TooManyRows {
            rows,
            bytes,
            row_limit,
            byte_limit,
        };
        Self::over_limit(gateway, topic, payload, received_at, reason)
    }

    /// A message over the payload size limit: keeps the first `keep` bytes and says how large
    /// the whole message was.
    pub fn payload_too_large(
        gateway: Option<Gateway>,
        topic: &[u8],
        payload: &[u8],
        limit: usize,
        keep: usize,
        received_at: Timestamp,
    ) -> Self {
        Self {
            received_at,
            gateway,
            topic: String::from_utf8_lossy(topic).into_owned(),
            payload: payload[..keep.min(payload.len())].to_vec(),
            reason: RejectReason::PayloadTooLarge {
                size: payload.len(),
                limit,
            },
        }
    }
}
