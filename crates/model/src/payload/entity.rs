//! Entity registrations (the entity topic itself), deregistrations and auto-registration.

use serde_json::Value;

use crate::json::{attributes_text, kind_of};
use crate::reject::{PayloadKind, RejectReason};
use crate::time::Timestamp;
use crate::topic::{DefaultScheme, EntityTopicId, Gateway};

use super::{payload_object, take_string};

const KIND: PayloadKind = PayloadKind::Registration;

/// The `@type` of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    /// The main device.
    Device,
    ChildDevice,
    Service,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::ChildDevice => "child-device",
            Self::Service => "service",
        }
    }

    /// The kind a `@type` (or the `kind` column) names.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "device" => Some(Self::Device),
            "child-device" => Some(Self::ChildDevice),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// The `change` column of `entity_changes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A registration message: a new entity or an update of a known one.
    Registered,
    /// Registered by Twinlake because telemetry arrived from an unregistered default-scheme id,
    /// as thin-edge's agent does.
    AutoRegistered,
    /// The empty retained registration: the entity and all its descendants are gone.
    Deregistered,
}

impl ChangeKind {
    /// The change the `change` column names.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "registered" => Some(Self::Registered),
            "auto_registered" => Some(Self::AutoRegistered),
            "deregistered" => Some(Self::Deregistered),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::AutoRegistered => "auto_registered",
            Self::Deregistered => "deregistered",
        }
    }
}

/// A row of the `entity_changes` table.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityChange {
    pub time: Timestamp,
    pub change: ChangeKind,
    /// `None` for a deregistration.
    pub registration: Option<Registration>,
}

/// What a registration says about an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub kind: EntityKind,
    /// The explicit `@parent`, or the default parent thin-edge gives this kind of entity.
    pub parent: Option<EntityTopicId>,
    /// `@id`: the external identity, e.g. the cloud's.
    pub external_id: Option<String>,
    /// The `name` member when it is a string.
    pub name: Option<String>,
    /// The `type` member when it is a string (the device or service type, e.g. `systemd`).
    pub entity_type: Option<String>,
    /// `@health`: the entity that reports this one's health.
    pub health_endpoint: Option<EntityTopicId>,
    /// Every member that is not `@type`, `@id`, `@parent` or `@health`: the twin data the
    /// registration carries, `name` and `type` included.
    pub attributes: Option<String>,
}

/// thin-edge's default parents: none for the main device; the main device for a child device;
/// for a service, its default-scheme device (`device/<d>//`), else the main device.
pub fn default_parent(kind: EntityKind, entity: &EntityTopicId) -> Option<EntityTopicId> {
    match kind {
        EntityKind::Device => None,
        EntityKind::ChildDevice => Some(EntityTopicId::main_device()),
        EntityKind::Service => Some(match entity.default_scheme() {
            Some(DefaultScheme::Service { .. }) => entity
                .default_device()
                .unwrap_or_else(EntityTopicId::main_device),
            _ => EntityTopicId::main_device(),
        }),
    }
}

fn take_entity_id(
    object: &mut serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<EntityTopicId>, RejectReason> {
    let Some(text) = take_string(KIND, object, key)? else {
        return Ok(None);
    };
    EntityTopicId::parse(&text).map(Some).map_err(|error| {
        RejectReason::payload(KIND, format!("`{key}` is not an entity topic id: {error}"))
    })
}

/// A topic like `te/device/child01/m/temp` lacks the two empty segments of a device id, so its
/// channel was read as part of the entity id and it looks like a registration. Say so.
fn missing_segments_hint(entity: &EntityTopicId) -> String {
    match entity.segments() {
        [
            first,
            second,
            channel @ ("m" | "e" | "a" | "twin" | "status" | "cmd"),
            rest,
        ] => format!(
            "; if this was meant for the {channel}/ channel of {first}/{second}//, the topic lacks the id's two empty segments: write te/{first}/{second}///{channel}/{rest}"
        ),
        _ => String::new(),
    }
}

pub(crate) fn parse_registration(
    entity: &EntityTopicId,
    payload: &str,
    received_at: Timestamp,
) -> Result<EntityChange, RejectReason> {
    if payload.is_empty() {
        return Ok(EntityChange {
            time: received_at,
            change: ChangeKind::Deregistered,
            registration: None,
        });
    }
    let mut object = payload_object(KIND, payload)?;
    let kind = match object.shift_remove("@type") {
        None => {
            let problem = format!(
                "`@type` is missing: it must be \"device\", \"child-device\" or \"service\"{}",
                missing_segments_hint(entity)
            );
            return Err(RejectReason::payload(KIND, problem));
        }
        Some(Value::String(text)) => EntityKind::parse(&text).ok_or_else(|| {
            RejectReason::payload(
                KIND,
                format!(
                    "`@type` is {text:?}: it must be \"device\", \"child-device\" or \"service\""
                ),
            )
        })?,
        Some(other) => {
            return Err(RejectReason::payload(
                KIND,
                format!("`@type` must be a string, not {}", kind_of(&other)),
            ));
        }
    };
    let external_id = take_string(KIND, &mut object, "@id")?;
    let parent = match take_entity_id(&mut object, "@parent")? {
        Some(parent) => Some(parent),
        None => default_parent(kind, entity),
    };
    let health_endpoint = take_entity_id(&mut object, "@health")?;
    let string_member = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(EntityChange {
        time: received_at,
        change: ChangeKind::Registered,
        registration: Some(Registration {
            kind,
            parent,
            external_id,
            name: string_member("name"),
            entity_type: string_member("type"),
            health_endpoint,
            attributes: attributes_text(&object),
        }),
    })
}

/// A gateway's main device, registered by Twinlake from the gateway's first message (thin-edge
/// never registers it): a root, named after the gateway.
pub fn main_device_registration(gateway: &Gateway, time: Timestamp) -> EntityChange {
    EntityChange {
        time,
        change: ChangeKind::AutoRegistered,
        registration: Some(Registration {
            kind: EntityKind::Device,
            parent: None,
            external_id: None,
            name: Some(gateway.as_str().to_owned()),
            entity_type: None,
            health_endpoint: None,
            attributes: Some(serde_json::json!({ "name": gateway.as_str() }).to_string()),
        }),
    }
}

/// The registrations thin-edge's agent makes when a non-empty message arrives from an
/// unregistered default-scheme id: `device/<d>//` becomes a child device of the main device,
/// and `device/<d>/service/<s>` a service of `device/<d>//` (with that device registered first
/// when it is not the main device). Callers keep the ones for entities they do not know yet.
/// The main device and custom-scheme ids are never auto-registered.
pub fn auto_registrations(
    entity: &EntityTopicId,
    time: Timestamp,
) -> Vec<(EntityTopicId, EntityChange)> {
    let auto = |kind, parent: EntityTopicId, name: &str| EntityChange {
        time,
        change: ChangeKind::AutoRegistered,
        registration: Some(Registration {
            kind,
            parent: Some(parent),
            external_id: None,
            name: Some(name.to_owned()),
            entity_type: None,
            health_endpoint: None,
            attributes: Some(serde_json::json!({ "name": name }).to_string()),
        }),
    };
    match entity.default_scheme() {
        None | Some(DefaultScheme::MainDevice) => Vec::new(),
        Some(DefaultScheme::ChildDevice { device }) => vec![(
            entity.clone(),
            auto(
                EntityKind::ChildDevice,
                EntityTopicId::main_device(),
                device,
            ),
        )],
        Some(DefaultScheme::Service { device, service }) => {
            let device_id = entity
                .default_device()
                .unwrap_or_else(EntityTopicId::main_device);
            let mut changes = Vec::with_capacity(2);
            if device_id != EntityTopicId::main_device() {
                changes.push((
                    device_id.clone(),
                    auto(
                        EntityKind::ChildDevice,
                        EntityTopicId::main_device(),
                        device,
                    ),
                ));
            }
            changes.push((
                entity.clone(),
                auto(EntityKind::Service, device_id, service),
            ));
            changes
        }
    }
}
