//! The thin-edge topic grammar: `<root>/<s1>/<s2>/<s3>/<s4>/<channel…>`.
//!
//! Parsing follows thin-edge's own `MqttSchema::parse`: the first four segments after the root
//! are the entity topic id (padded with empty segments when the topic is shorter), and
//! everything after the fourth `/` is the channel.

use std::fmt;

/// The first topic segment of every thin-edge topic (`te` unless `mqtt.topic_root` is changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoot(String);

impl Default for TopicRoot {
    fn default() -> Self {
        Self("te".to_owned())
    }
}

impl TopicRoot {
    /// A root is one non-empty topic segment without MQTT wildcards.
    pub fn new(root: impl Into<String>) -> Result<Self, TopicError> {
        let root = root.into();
        if root.is_empty() || root.contains(['/', '+', '#']) {
            return Err(TopicError::InvalidRoot(root));
        }
        Ok(Self(root))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The MQTT filter that receives every thin-edge message under this root.
    pub fn subscription_filter(&self) -> String {
        format!("{}/#", self.0)
    }
}

/// One thin-edge gateway of the fleet: the device whose local `te/` tree it forwards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gateway(String);

/// The longest gateway id accepted.
const GATEWAY_MAX_CHARS: usize = 128;

impl Gateway {
    /// 1 to 128 characters, none of them `/`, `+`, `#` or a control character.
    pub fn parse(id: &str) -> Result<Self, TopicError> {
        let chars = id.chars().count();
        let valid = (1..=GATEWAY_MAX_CHARS).contains(&chars)
            && !id
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#') || c.is_control());
        if !valid {
            return Err(TopicError::InvalidGateway(id.to_owned()));
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The fleet-unique name of one of this gateway's entities, made as thin-edge's
    /// Cumulocity mapper makes external ids: `<gateway>` for its main device, else
    /// `<gateway>:` and the topic id with trailing `/` trimmed and every `/` made `:`.
    pub fn entity_name(&self, topic_id: &EntityTopicId) -> String {
        if topic_id.is_main_device() {
            return self.0.clone();
        }
        let local = topic_id.as_str().trim_end_matches('/');
        let mut name = String::with_capacity(self.0.len() + 1 + local.len());
        name.push_str(&self.0);
        name.push(':');
        name.extend(local.chars().map(|c| if c == '/' { ':' } else { c }));
        name
    }
}

impl fmt::Display for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where thin-edge topics are and which gateway each belongs to: `<prefix>/<gateway>/<root>/…`
/// (what a gateway's bridge forwards) names its gateway; plain `<root>/…` belongs to the
/// default gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetTopics {
    prefix: String,
    root: TopicRoot,
    default_gateway: Gateway,
}

impl Default for FleetTopics {
    fn default() -> Self {
        Self {
            prefix: "twinlake".to_owned(),
            root: TopicRoot::default(),
            default_gateway: Gateway("main".to_owned()),
        }
    }
}

impl FleetTopics {
    /// The prefix is one topic segment like the root, and must differ from it.
    pub fn new(
        prefix: impl Into<String>,
        root: TopicRoot,
        default_gateway: Gateway,
    ) -> Result<Self, TopicError> {
        let prefix = prefix.into();
        if TopicRoot::new(prefix.clone()).is_err() || prefix == root.as_str() {
            return Err(TopicError::InvalidPrefix(prefix));
        }
        Ok(Self {
            prefix,
            root,
            default_gateway,
        })
    }

    pub fn root(&self) -> &TopicRoot {
        &self.root
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn default_gateway(&self) -> &Gateway {
        &self.default_gateway
    }

    /// The MQTT filters that receive every gateway's thin-edge messages.
    pub fn subscription_filters(&self) -> [String; 2] {
        [
            self.root.subscription_filter(),
            format!("{}/+/{}/#", self.prefix, self.root.as_str()),
        ]
    }

    /// The gateway of a topic that may not parse otherwise (for a `rejected` row).
    pub fn gateway_of(&self, topic: &[u8]) -> Option<Gateway> {
        let topic = std::str::from_utf8(topic).ok()?;
        self.split(topic).ok().flatten().map(|(gateway, _)| gateway)
    }

    /// The gateway a topic belongs to and the topic as that gateway published it
    /// (`<root>/…`); `Ok(None)` for a topic that is neither under the prefix nor the root.
    pub fn split<'a>(&self, topic: &'a str) -> Result<Option<(Gateway, &'a str)>, TopicError> {
        let Some(forwarded) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return Ok(Some((self.default_gateway.clone(), topic)));
        };
        let Some((gateway, local)) = forwarded.split_once('/') else {
            return Ok(None);
        };
        Ok(Some((Gateway::parse(gateway)?, local)))
    }

    /// The fleet topic of a message `gateway` published on a connection of its own: a plain
    /// topic becomes `<prefix>/<gateway>/…`, its own prefixed topics stay as they are, and a
    /// topic under another gateway's prefix is refused unless the publisher may relay for
    /// every gateway (an upstream broker forwarding many).
    pub fn qualify<'a>(
        &self,
        topic: &'a str,
        gateway: &Gateway,
        relay: bool,
    ) -> Result<std::borrow::Cow<'a, str>, ForeignTopic> {
        let Some(forwarded) = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return Ok(format!("{}/{gateway}/{topic}", self.prefix).into());
        };
        let named = forwarded
            .split_once('/')
            .map_or(forwarded, |(named, _)| named);
        if relay || named == gateway.as_str() {
            return Ok(topic.into());
        }
        Err(ForeignTopic {
            named: named.to_owned(),
        })
    }
}

/// A publish under another gateway's prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a topic of gateway {named:?}, which this connection may not publish for")]
pub struct ForeignTopic {
    pub named: String,
}

const ENTITY_SEGMENTS: usize = 4;

/// The 4-segment entity topic id, e.g. `device/child01//` or `device/main/service/nodered`,
/// always stored padded to four segments so that `device/child01` and `device/child01//` are the
/// same entity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityTopicId(String);

/// What an entity topic id means under thin-edge's default scheme `device/<d>/service/<s>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultScheme<'a> {
    MainDevice,
    ChildDevice { device: &'a str },
    Service { device: &'a str, service: &'a str },
}

impl EntityTopicId {
    /// Parses an id written with at most four segments, padding the missing ones.
    pub fn parse(id: &str) -> Result<Self, TopicError> {
        let segments = id.matches('/').count() + 1;
        if segments > ENTITY_SEGMENTS {
            return Err(TopicError::EntityTooLong(id.to_owned()));
        }
        if id.contains(['+', '#']) {
            return Err(TopicError::Wildcard(id.to_owned()));
        }
        if id.split('/').all(str::is_empty) {
            return Err(TopicError::EmptyEntity);
        }
        let mut padded = String::with_capacity(id.len() + ENTITY_SEGMENTS - segments);
        padded.push_str(id);
        padded.extend(std::iter::repeat_n('/', ENTITY_SEGMENTS - segments));
        Ok(Self(padded))
    }

    /// `device/main//`: a gateway's main device, which thin-edge never registers.
    pub fn main_device() -> Self {
        Self("device/main//".to_owned())
    }

    pub fn is_main_device(&self) -> bool {
        self.0 == "device/main//"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> [&str; ENTITY_SEGMENTS] {
        let mut parts = self.0.splitn(ENTITY_SEGMENTS, '/');
        std::array::from_fn(|_| parts.next().unwrap_or(""))
    }

    /// The meaning of this id under the default scheme, or `None` for a custom schema, whose
    /// meaning comes only from an explicit registration.
    pub fn default_scheme(&self) -> Option<DefaultScheme<'_>> {
        match self.segments() {
            ["device", "main", "", ""] => Some(DefaultScheme::MainDevice),
            ["device", device, "", ""] if !device.is_empty() => {
                Some(DefaultScheme::ChildDevice { device })
            }
            ["device", device, "service", service] if !device.is_empty() && !service.is_empty() => {
                Some(DefaultScheme::Service { device, service })
            }
            _ => None,
        }
    }

    /// `device/<d>//` for an id of the default scheme (a device or one of its services).
    pub fn default_device(&self) -> Option<Self> {
        match self.default_scheme()? {
            DefaultScheme::MainDevice => Some(Self::main_device()),
            DefaultScheme::ChildDevice { .. } => Some(self.clone()),
            DefaultScheme::Service { device, .. } => Some(Self(format!("device/{device}//"))),
        }
    }
}

impl fmt::Display for EntityTopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of a topic after the entity id: what kind of message it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// Nothing after the id: the entity's registration.
    Registration,
    Twin {
        fragment: &'a str,
    },
    Measurement {
        measurement_type: &'a str,
    },
    MeasurementMeta {
        measurement_type: &'a str,
    },
    Event {
        event_type: &'a str,
    },
    EventMeta {
        event_type: &'a str,
    },
    Alarm {
        alarm_type: &'a str,
    },
    AlarmMeta {
        alarm_type: &'a str,
    },
    CommandCapability {
        operation: &'a str,
    },
    Command {
        operation: &'a str,
        command_id: &'a str,
    },
    Signal {
        signal_type: &'a str,
    },
    Health,
    Status {
        component: &'a str,
    },
    Config,
}

impl<'a> Channel<'a> {
    /// The complete channel list of thin-edge's `Channel::from_str`, plus `signal/<type>`,
    /// `status/<component>` and `config` from the current MQTT API reference.
    pub fn parse(channel: &'a str) -> Result<Self, TopicError> {
        let parts: Vec<&str> = channel.split('/').collect();
        let parsed = match parts[..] {
            [""] => Self::Registration,
            ["twin", fragment] => Self::Twin { fragment },
            ["m", measurement_type] => Self::Measurement { measurement_type },
            ["m", measurement_type, "meta"] => Self::MeasurementMeta { measurement_type },
            ["e", event_type] => Self::Event { event_type },
            ["e", event_type, "meta"] => Self::EventMeta { event_type },
            ["a", alarm_type] => Self::Alarm { alarm_type },
            ["a", alarm_type, "meta"] => Self::AlarmMeta { alarm_type },
            ["cmd", operation] => Self::CommandCapability { operation },
            ["cmd", operation, command_id] => Self::Command {
                operation,
                command_id,
            },
            ["signal", signal_type] => Self::Signal { signal_type },
            ["status", "health"] => Self::Health,
            ["status", component] => Self::Status { component },
            ["config"] => Self::Config,
            _ => return Err(TopicError::UnknownChannel(channel.to_owned())),
        };
        if let Self::Twin { fragment } = parsed
            && (fragment.is_empty() || fragment.starts_with('@'))
        {
            return Err(TopicError::InvalidTwinFragment(fragment.to_owned()));
        }
        Ok(parsed)
    }
}

/// A topic split into what it addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic<'a> {
    Entity {
        entity: EntityTopicId,
        channel: Channel<'a>,
    },
    /// `<root>/errors`: free-text errors from thin-edge's mappers; the text is not stable.
    MapperErrors,
    /// Not under the topic root: not a thin-edge message at all.
    OutsideRoot,
}

impl<'a> Topic<'a> {
    pub fn parse(root: &TopicRoot, topic: &'a str) -> Result<Self, TopicError> {
        let Some(rest) = topic
            .strip_prefix(root.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return Ok(Self::OutsideRoot);
        };
        if rest == "errors" {
            return Ok(Self::MapperErrors);
        }
        if rest.contains(['+', '#']) {
            return Err(TopicError::Wildcard(topic.to_owned()));
        }
        let split_at = rest
            .match_indices('/')
            .nth(ENTITY_SEGMENTS - 1)
            .map_or(rest.len(), |(index, _)| index);
        let (entity, channel) = rest.split_at(split_at);
        let entity = EntityTopicId::parse(entity)?;
        let channel = Channel::parse(channel.trim_start_matches('/'))?;
        Ok(Self::Entity { entity, channel })
    }
}

/// Why a topic cannot be read as thin-edge's topic grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error(
        "{0:?} is not a valid topic root: it must be one non-empty segment without '/', '+' or '#'"
    )]
    InvalidRoot(String),
    #[error(
        "{0:?} is not a valid fleet prefix: it must be one non-empty segment without '/', '+' or '#', other than the topic root"
    )]
    InvalidPrefix(String),
    #[error(
        "{0:?} is not a valid gateway id: it must be 1 to 128 characters, none of them '/', '+', '#' or a control character"
    )]
    InvalidGateway(String),
    #[error("{0:?} has more than the 4 segments of an entity topic id")]
    EntityTooLong(String),
    #[error("the entity topic id is empty: every one of its 4 segments is empty")]
    EmptyEntity,
    #[error("{0:?} contains an MQTT wildcard ('+' or '#')")]
    Wildcard(String),
    #[error(
        "unknown channel {0:?}: thin-edge channels are '' (registration), twin/<key>, m/<type>[/meta], e/<type>[/meta], a/<type>[/meta], cmd/<op>[/<id>], signal/<type>, status/<component> and config"
    )]
    UnknownChannel(String),
    #[error("invalid twin fragment key {0:?}: it must be non-empty and not start with '@'")]
    InvalidTwinFragment(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(topic: &str) -> Result<Topic<'_>, TopicError> {
        Topic::parse(&TopicRoot::default(), topic)
    }

    fn entity(id: &str) -> EntityTopicId {
        EntityTopicId::parse(id).unwrap()
    }

    #[test]
    fn a_connection_publishes_for_its_own_gateway_only() {
        let fleet = FleetTopics::default();
        let truck = Gateway::parse("truck042").unwrap();
        let own = |topic| fleet.qualify(topic, &truck, false);
        assert_eq!(
            own("te/device/main///m/env").unwrap(),
            "twinlake/truck042/te/device/main///m/env"
        );
        let forwarded = "twinlake/truck042/te/device/main///m/env";
        assert_eq!(own(forwarded).unwrap(), forwarded);
        let foreign = "twinlake/truck043/te/device/main///m/env";
        assert_eq!(own(foreign).unwrap_err().named, "truck043");
        // A prefix with nothing after it names no gateway, and still not this one.
        assert!(own("twinlake/truck0421").is_err());
        assert_eq!(fleet.qualify(foreign, &truck, true).unwrap(), foreign);
    }

    #[test]
    fn entity_names_follow_thin_edge_external_ids() {
        let name =
            |gateway: &str, id: &str| Gateway::parse(gateway).unwrap().entity_name(&entity(id));
        assert_eq!(name("truck042", "device/main//"), "truck042");
        assert_eq!(
            name("truck042", "device/sensor01//"),
            "truck042:device:sensor01"
        );
        assert_eq!(
            name("truck042", "device/main/service/tedge-agent"),
            "truck042:device:main:service:tedge-agent"
        );
        assert_eq!(
            name("truck042", "device/sensor01/service/probe"),
            "truck042:device:sensor01:service:probe"
        );
        assert_eq!(
            name("plant7", "factory01/hallA/packaging/belt001"),
            "plant7:factory01:hallA:packaging:belt001"
        );
    }

    #[test]
    fn gateway_ids_are_checked() {
        assert!(Gateway::parse("truck042").is_ok());
        assert!(Gateway::parse(&"x".repeat(128)).is_ok());
        for bad in ["", "a/b", "a+b", "a#b", "a\u{7}b", &"x".repeat(129)] {
            assert_eq!(
                Gateway::parse(bad),
                Err(TopicError::InvalidGateway(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fleet_topics_name_their_gateway_and_plain_ones_the_default() {
        let topics = FleetTopics::default();
        let (gateway, local) = topics
            .split("twinlake/truck042/te/device/main///m/env")
            .unwrap()
            .unwrap();
        assert_eq!(
            (gateway.as_str(), local),
            ("truck042", "te/device/main///m/env")
        );
        let (gateway, local) = topics.split("te/device/main///m/env").unwrap().unwrap();
        assert_eq!(
            (gateway.as_str(), local),
            ("main", "te/device/main///m/env")
        );
        assert_eq!(topics.split("twinlake/truck042"), Ok(None));
        assert_eq!(
            topics.split("twinlake//te/device/main///m/env"),
            Err(TopicError::InvalidGateway(String::new()))
        );
        assert_eq!(
            topics.subscription_filters(),
            ["te/#".to_owned(), "twinlake/+/te/#".to_owned()]
        );
        assert!(FleetTopics::new("te", TopicRoot::default(), gateway.clone()).is_err());
        assert!(FleetTopics::new("a/b", TopicRoot::default(), gateway).is_err());
    }

    #[test]
    fn short_ids_are_padded() {
        assert_eq!(entity("device/child01").as_str(), "device/child01//");
        assert_eq!(entity("device/child01//").as_str(), "device/child01//");
        assert_eq!(
            parse("te/device/child01").unwrap(),
            parse("te/device/child01//").unwrap()
        );
    }

    #[test]
    fn main_device_measurement_has_two_empty_segments() {
        assert_eq!(
            parse("te/device/main///m/environment").unwrap(),
            Topic::Entity {
                entity: EntityTopicId::main_device(),
                channel: Channel::Measurement {
                    measurement_type: "environment"
                },
            }
        );
    }

    #[test]
    fn empty_measurement_type_and_its_meta_are_valid() {
        let Topic::Entity { channel, .. } = parse("te/device/main///m/").unwrap() else {
            panic!("not an entity topic");
        };
        assert_eq!(
            channel,
            Channel::Measurement {
                measurement_type: ""
            }
        );
        let Topic::Entity { channel, .. } = parse("te/device/main///m//meta").unwrap() else {
            panic!("not an entity topic");
        };
        assert_eq!(
            channel,
            Channel::MeasurementMeta {
                measurement_type: ""
            }
        );
    }

    #[test]
    fn every_channel_kind_is_recognised() {
        let cases = [
            ("te/device/main//", Channel::Registration),
            (
                "te/device/main///twin/agent",
                Channel::Twin { fragment: "agent" },
            ),
            (
                "te/device/main///e/login",
                Channel::Event {
                    event_type: "login",
                },
            ),
            (
                "te/device/main///e/login/meta",
                Channel::EventMeta {
                    event_type: "login",
                },
            ),
            (
                "te/device/main///a/hot",
                Channel::Alarm { alarm_type: "hot" },
            ),
            (
                "te/device/main///a/hot/meta",
                Channel::AlarmMeta { alarm_type: "hot" },
            ),
            (
                "te/device/main///cmd/restart",
                Channel::CommandCapability {
                    operation: "restart",
                },
            ),
            (
                "te/device/main///cmd/restart/c8y-123",
                Channel::Command {
                    operation: "restart",
                    command_id: "c8y-123",
                },
            ),
            (
                "te/device/main///signal/sync",
                Channel::Signal {
                    signal_type: "sync",
                },
            ),
            ("te/device/main///status/health", Channel::Health),
            (
                "te/device/main///status/gps",
                Channel::Status { component: "gps" },
            ),
            ("te/device/main/service/tedge-agent/config", Channel::Config),
        ];
        for (topic, expected) in cases {
            let Topic::Entity { channel, .. } = parse(topic).unwrap() else {
                panic!("{topic} is not an entity topic");
            };
            assert_eq!(channel, expected, "{topic}");
        }
    }

    #[test]
    fn unknown_channels_are_classified_not_fatal() {
        for topic in [
            "te/device/main///m",
            "te/device/main///x/y",
            "te/device/main///m/t/notmeta",
            "te/device/main///m/t/meta/extra",
            "te/device/main///status",
        ] {
            assert!(
                matches!(parse(topic), Err(TopicError::UnknownChannel(_))),
                "{topic}"
            );
        }
    }

    #[test]
    fn twin_fragment_keys_are_checked() {
        assert!(matches!(
            parse("te/device/main///twin/"),
            Err(TopicError::InvalidTwinFragment(_))
        ));
        assert!(matches!(
            parse("te/device/main///twin/@id"),
            Err(TopicError::InvalidTwinFragment(_))
        ));
    }

    #[test]
    fn custom_schema_is_four_arbitrary_segments() {
        let Topic::Entity { entity, channel } =
            parse("te/factory01/hallA/packaging/belt001/m/speed").unwrap()
        else {
            panic!("not an entity topic");
        };
        assert_eq!(entity.as_str(), "factory01/hallA/packaging/belt001");
        assert_eq!(entity.default_scheme(), None);
        assert_eq!(
            channel,
            Channel::Measurement {
                measurement_type: "speed"
            }
        );
    }

    #[test]
    fn root_errors_and_foreign_topics() {
        assert_eq!(parse("te/errors").unwrap(), Topic::MapperErrors);
        assert_eq!(parse("c8y/s/us").unwrap(), Topic::OutsideRoot);
        assert_eq!(parse("tedge/device/main//").unwrap(), Topic::OutsideRoot);
        assert_eq!(parse("te").unwrap(), Topic::OutsideRoot);
        assert!(matches!(parse("te/"), Err(TopicError::EmptyEntity)));
        let custom = TopicRoot::new("thin-edge").unwrap();
        assert!(matches!(
            Topic::parse(&custom, "thin-edge/device/main//").unwrap(),
            Topic::Entity { .. }
        ));
        assert!(TopicRoot::new("a/b").is_err());
    }

    #[test]
    fn default_scheme_meaning() {
        assert_eq!(
            entity("device/main//").default_scheme(),
            Some(DefaultScheme::MainDevice)
        );
        assert_eq!(
            entity("device/child01//").default_scheme(),
            Some(DefaultScheme::ChildDevice { device: "child01" })
        );
        assert_eq!(
            entity("device/child01/service/nodered").default_scheme(),
            Some(DefaultScheme::Service {
                device: "child01",
                service: "nodered"
            })
        );
        assert_eq!(entity("device/main//foo").default_scheme(), None);
        assert_eq!(entity("custom/main//").default_scheme(), None);
        assert_eq!(
            entity("device/main/custom_service/foo").default_scheme(),
            None
        );
        assert_eq!(
            entity("device/child01/service/nodered").default_device(),
            Some(entity("device/child01//"))
        );
    }

    #[test]
    fn too_many_segments_in_an_id_is_an_error() {
        assert!(matches!(
            EntityTopicId::parse("device/too/many/segments/"),
            Err(TopicError::EntityTooLong(_))
        ));
    }
}
