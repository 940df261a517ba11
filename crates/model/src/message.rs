//! From one MQTT message (topic + payload) to typed rows of one table.

use crate::payload::entity::{EntityChange, parse_registration};
use crate::payload::event::{Alarm, Event, parse_alarm, parse_event};
use crate::payload::health::{HealthStatus, parse_health};
use crate::payload::measurement::{MeasurementError, SeriesValue, parse_measurement};
use crate::payload::meta::{MeasurementMeta, parse_meta};
use crate::payload::payload_text;
use crate::payload::twin::{TwinChange, parse_twin};
use crate::reject::{PayloadKind, RejectReason, Rejection};
use crate::schema::Table;
use crate::time::Timestamp;
use crate::topic::{Channel, EntityTopicId, FleetTopics, Gateway, Topic};

/// One message that became data: the entity it is about and its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub gateway: Gateway,
    /// The entity's topic id as its gateway knows it (`device/main//`).
    pub topic_id: EntityTopicId,
    /// The entity's fleet-unique name (see [`Gateway::entity_name`]): the `entity` of its rows.
    pub entity: String,
    pub body: MessageBody,
}

/// The rows of one message, by table.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageBody {
    Measurement(Measurement),
    MeasurementMeta(MeasurementMeta),
    Event(Event),
    Alarm(Alarm),
    EntityChange(EntityChange),
    TwinChange(TwinChange),
    Health(HealthStatus),
}

/// The rows of `measurements` from one message: one per numeric value.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub time: Timestamp,
    /// From the topic (`m/<type>`); may be empty.
    pub measurement_type: String,
    pub values: Vec<SeriesValue>,
    /// The reserved `properties` member as JSON text, passed through.
    pub properties: Option<String>,
}

impl Message {
    pub fn table(&self) -> Table {
        match &self.body {
            MessageBody::Measurement(_) => Table::Measurements,
            MessageBody::MeasurementMeta(_) => Table::MeasurementMeta,
            MessageBody::Event(_) => Table::Events,
            MessageBody::Alarm(_) => Table::Alarms,
            MessageBody::EntityChange(_) => Table::EntityChanges,
            MessageBody::TwinChange(_) => Table::TwinChanges,
            MessageBody::Health(_) => Table::Health,
        }
    }

    /// How many rows the message adds to its table.
    pub fn row_count(&self) -> usize {
        match &self.body {
            MessageBody::Measurement(m) => m.values.len(),
            MessageBody::MeasurementMeta(meta) => meta.series.len().max(1),
            _ => 1,
        }
    }

    /// The bytes of text the message's rows repeat beyond its payload: the entity and type on
    /// every row, and a measurement's `properties` on every value. A small payload can make
    /// many large rows (110 KB of `properties` times 22,000 values is 2.4 GB), so limits on
    /// what one message may become count this, not the payload's size.
    pub fn repeated_bytes(&self) -> usize {
        const FIXED: usize = 16; // a time and a value or status
        let per_row = self.gateway.as_str().len() + self.entity.len() + FIXED;
        match &self.body {
            MessageBody::Measurement(m) => {
                let properties = m.properties.as_ref().map_or(0, String::len);
                let per_value = per_row + m.measurement_type.len() + properties;
                m.values.len().saturating_mul(per_value)
            }
            MessageBody::MeasurementMeta(meta) => {
                (per_row + meta.measurement_type.len()).saturating_mul(self.row_count())
            }
            _ => per_row,
        }
    }
}

/// thin-edge traffic that is valid but is not telemetry or twin state, so Twinlake does not
/// keep it: commands, signals, configuration and the like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    CommandCapability,
    Command,
    Signal,
    Config,
    /// `status/<component>` other than `health`.
    Status,
    EventMeta,
    AlarmMeta,
    /// `<root>/errors`: mapper error text, not stable enough to parse.
    MapperErrors,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CommandCapability => "command_capability",
            Self::Command => "command",
            Self::Signal => "signal",
            Self::Config => "config",
            Self::Status => "status",
            Self::EventMeta => "event_meta",
            Self::AlarmMeta => "alarm_meta",
            Self::MapperErrors => "mapper_errors",
        }
    }
}

/// What a message is to Twinlake.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Rows for one table.
    Data(Message),
    /// A row for `rejected`.
    Rejected(Rejection),
    /// Valid thin-edge traffic that has no table (yet).
    NotStored(NotStored),
    /// Not under the topic root.
    OutsideRoot,
}

/// Parses one MQTT message. `received_at` stands in for every missing `time`, so the result is
/// a pure function of its arguments. Never panics, whatever the bytes.
pub fn parse_message(
    topics: &FleetTopics,
    topic: &[u8],
    payload: &[u8],
    received_at: Timestamp,
) -> Parsed {
    let reject = |gateway: Option<Gateway>, reason: RejectReason| {
        Parsed::Rejected(Rejection {
            received_at,
            gateway,
            topic: String::from_utf8_lossy(topic).into_owned(),
            payload: payload.to_vec(),
            reason,
        })
    };
    let Ok(topic_text) = std::str::from_utf8(topic) else {
        return reject(None, RejectReason::TopicNotUtf8);
    };
    let (gateway, local) = match topics.split(topic_text) {
        Ok(Some(split)) => split,
        Ok(None) => return Parsed::OutsideRoot,
        Err(error) => return reject(None, RejectReason::Topic(error)),
    };
    let (topic_id, channel) = match Topic::parse(topics.root(), local) {
        Ok(Topic::Entity { entity, channel }) => (entity, channel),
        Ok(Topic::MapperErrors) => return Parsed::NotStored(NotStored::MapperErrors),
        Ok(Topic::OutsideRoot) => return Parsed::OutsideRoot,
        Err(error) => return reject(Some(gateway), RejectReason::Topic(error)),
    };
    let body = match channel_body(channel, &topic_id, payload, received_at) {
        Ok(ChannelContent::Body(body)) => body,
        Ok(ChannelContent::NotStored(kind)) => return Parsed::NotStored(kind),
        Err(reason) => return reject(Some(gateway), reason),
    };
    Parsed::Data(Message {
        entity: gateway.entity_name(&topic_id),
        gateway,
        topic_id,
        body,
    })
}

/// What a channel's payload becomes, before it is paired with its entity.
enum ChannelContent {
    Body(MessageBody),
    NotStored(NotStored),
}

fn channel_body(
    channel: Channel<'_>,
    entity: &EntityTopicId,
    payload: &[u8],
    now: Timestamp,
) -> Result<ChannelContent, RejectReason> {
    let text = |kind| payload_text(kind, payload);
    let body = match channel {
        Channel::Measurement { measurement_type } => MessageBody::Measurement(measurement(
            measurement_type,
            text(PayloadKind::Measurement)?,
            now,
        )?),
        Channel::MeasurementMeta { measurement_type } => MessageBody::MeasurementMeta(parse_meta(
            measurement_type,
            text(PayloadKind::MeasurementMeta)?,
            now,
        )?),
        Channel::Event { event_type } => {
            MessageBody::Event(parse_event(event_type, text(PayloadKind::Event)?, now)?)
        }
        Channel::Alarm { alarm_type } => {
            MessageBody::Alarm(parse_alarm(alarm_type, text(PayloadKind::Alarm)?, now)?)
        }
        Channel::Registration => MessageBody::EntityChange(parse_registration(
            entity,
            text(PayloadKind::Registration)?,
            now,
        )?),
        Channel::Twin { fragment } => {
            MessageBody::TwinChange(parse_twin(fragment, text(PayloadKind::Twin)?, now)?)
        }
        Channel::Health => MessageBody::Health(parse_health(text(PayloadKind::Health)?, now)?),
        Channel::EventMeta { .. } => return Ok(ChannelContent::NotStored(NotStored::EventMeta)),
        Channel::AlarmMeta { .. } => return Ok(ChannelContent::NotStored(NotStored::AlarmMeta)),
        Channel::CommandCapability { .. } => {
            return Ok(ChannelContent::NotStored(NotStored::CommandCapability));
        }
        Channel::Command { .. } => return Ok(ChannelContent::NotStored(NotStored::Command)),
        Channel::Signal { .. } => return Ok(ChannelContent::NotStored(NotStored::Signal)),
        Channel::Status { .. } => return Ok(ChannelContent::NotStored(NotStored::Status)),
        Channel::Config => return Ok(ChannelContent::NotStored(NotStored::Config)),
    };
    Ok(ChannelContent::Body(body))
}

fn measurement(
    measurement_type: &str,
    payload: &str,
    now: Timestamp,
) -> Result<Measurement, RejectReason> {
    const KIND: PayloadKind = PayloadKind::Measurement;
    let parsed = parse_measurement(payload).map_err(|error| match error {
        MeasurementError::Time(source) => RejectReason::Time { kind: KIND, source },
        other => RejectReason::payload(KIND, other.to_string()),
    })?;
    Ok(Measurement {
        time: parsed.time.unwrap_or(now),
        measurement_type: measurement_type.to_owned(),
        values: parsed.values,
        properties: parsed.properties,
    })
}
