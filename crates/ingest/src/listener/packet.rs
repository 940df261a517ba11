//! MQTT 3.1.1 and 5 packets as the endpoint needs them, over rumqttc's `mqttbytes` codecs: one
//! shape for both versions, so that the connection's logic is written once.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// The protocol a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V311,
    V5,
}

#[derive(Debug)]
pub(crate) struct Connect {
    pub(crate) version: Version,
    pub(crate) client_id: String,
    /// Begin a new session (3.1.1 CleanSession, 5 Clean Start).
    pub(crate) clean_start: bool,
    /// The session outlives the connection (3.1.1: not clean; 5: a session expiry above 0).
    pub(crate) persistent: bool,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) will: Option<Will>,
}

#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
}

#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) packet_id: u16,
    /// MQTT 5 topic alias, which this endpoint does not offer.
    pub(crate) topic_alias: bool,
}

#[derive(Debug)]
pub(crate) enum Incoming {
    Publish(Publish),
    PubRel(u16),
    Subscribe {
        packet_id: u16,
        filters: usize,
    },
    Unsubscribe {
        packet_id: u16,
        filters: usize,
    },
    PingReq,
    /// `with_will`: an MQTT 5 client asked for its will to be published anyway (0x04).
    Disconnect {
        with_will: bool,
    },
    /// Acknowledgements of publishes this endpoint never sends, and AUTH.
    Unexpected(&'static str),
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ProtocolVersion,
    ClientId,
    Credentials,
    NotAuthorized,
}

impl Refusal {
    /// The reason label of the refused-connections metric.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::ProtocolVersion => "protocol_version",
            Self::ClientId => "invalid_gateway_id",
            Self::Credentials => "bad_credentials",
            Self::NotAuthorized => "not_authorized",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Outgoing {
    ConnAck {
        session_present: bool,
        refusal: Option<Refusal>,
        receive_maximum: u16,
        max_packet_bytes: u32,
    },
    PubAck {
        packet_id: u16,
        refused: bool,
    },
    PubRec {
        packet_id: u16,
        refused: bool,
    },
    PubComp {
        packet_id: u16,
    },
    /// Every filter refused: the endpoint ingests, it delivers nothing.
    SubAck {
        packet_id: u16,
        filters: usize,
    },
    UnsubAck {
        packet_id: u16,
        filters: usize,
    },
    PingResp,
    /// MQTT 5 only: why the server closes the connection.
    Disconnect(DisconnectReason),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum DisconnectReason {
    ProtocolError,
    NotAuthorized,
    TopicNameInvalid,
    PacketTooLarge,
    TopicAliasInvalid,
    SessionTakenOver,
    ServerShuttingDown,
    KeepAliveTimeout,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PacketError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("a packet larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("MQTT protocol level {0} (only 3.1.1 and 5 are spoken here)")]
    Version(u8),
}

/// The length of a fixed header whose remaining-length bytes are all in `buf`.
fn fixed_header_len(buf: &[u8]) -> Option<usize> {
    let varint = buf
        .get(1..)?
        .iter()
        .take(4)
        .position(|byte| byte & 0x80 == 0)?;
    Some(2 + varint)
}

/// The first packet of a connection, which must be CONNECT; None while incomplete.
pub(crate) fn read_connect(
    buf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<Option<Connect>, PacketError> {
    let Some(header) = fixed_header_len(buf) else {
        return Ok(None);
    };
    if buf[0] >> 4 != 1 {
        return Err(PacketError::Malformed(
            "the first packet is not CONNECT".to_owned(),
        ));
    }
    // Protocol name (2-byte length, then the name), then the level.
    let Some(name_len) = buf.get(header..header + 2) else {
        return Ok(None);
    };
    let level_at = header + 2 + usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    let Some(&level) = buf.get(level_at) else {
        return Ok(None);
    };
    match level {
        5 => read_connect_v5(buf, max_packet_bytes),
        4 => read_connect_v311(buf, max_packet_bytes),
        other => Err(PacketError::Version(other)),
    }
}

fn read_connect_v311(buf: &mut BytesMut, max: usize) -> Result<Option<Connect>, PacketError> {
    let Some(packet) = incomplete_as_none_v4(v4::Packet::read(buf, max), max)? else {
        return Ok(None);
    };
    let v4::Packet::Connect(connect) = packet else {
        return Err(PacketError::Malformed("expected CONNECT".to_owned()));
    };
    let (username, password) = connect
        .login
        .map(|login| (login.username, login.password))
        .unzip();
    Ok(Some(Connect {
        version: Version::V311,
        persistent: !connect.clean_session,
        clean_start: connect.clean_session,
        client_id: connect.client_id,
        keep_alive: connect.keep_alive,
        username: username.filter(|u| !u.is_empty()),
        password,
        will: connect.last_will.map(|will| Will {
            topic: will.topic,
            payload: will.message,
        }),
    }))
}

fn read_connect_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Connect>, PacketError> {
    let Some(packet) = incomplete_as_none_v5(v5::Packet::read(buf, Some(max_u32(max))), max)?
    else {
        return Ok(None);
    };
    let v5::Packet::Connect(connect, will, login) = packet else {
        return Err(PacketError::Malformed("expected CONNECT".to_owned()));
    };
    let expiry = connect
        .properties
        .as_ref()
        .and_then(|p| p.session_expiry_interval)
        .unwrap_or(0);
    let will = match will {
        Some(will) => Some(Will {
            topic: String::from_utf8(will.topic.to_vec())
                .map_err(|_| PacketError::Malformed("a will topic that is not UTF-8".to_owned()))?,
            payload: will.message,
        }),
        None => None,
    };
    let (username, password) = login.map(|l| (l.username, l.password)).unzip();
    Ok(Some(Connect {
        version: Version::V5,
        clean_start: connect.clean_start,
        persistent: expiry > 0,
        client_id: connect.client_id,
        keep_alive: connect.keep_alive,
        username: username.filter(|u| !u.is_empty()),
        password,
        will,
    }))
}

/// The next packet after CONNECT; None while incomplete.
pub(crate) fn read(
    buf: &mut BytesMut,
    version: Version,
    max_packet_bytes: usize,
) -> Result<Option<Incoming>, PacketError> {
    match version {
        Version::V311 => read_v311(buf, max_packet_bytes),
        Version::V5 => read_v5(buf, max_packet_bytes),
    }
}

fn read_v311(buf: &mut BytesMut, max: usize) -> Result<Option<Incoming>, PacketError> {
    let Some(packet) = incomplete_as_none_v4(v4::Packet::read(buf, max), max)? else {
        return Ok(None);
    };
    Ok(Some(match packet {
        v4::Packet::Publish(publish) => Incoming::Publish(Publish {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos as u8,
            packet_id: publish.pkid,
            topic_alias: false,
        }),
        v4::Packet::PubRel(release) => Incoming::PubRel(release.pkid),
        v4::Packet::Subscribe(subscribe) => Incoming::Subscribe {
            packet_id: subscribe.pkid,
            filters: subscribe.filters.len(),
        },
        v4::Packet::Unsubscribe(unsubscribe) => Incoming::Unsubscribe {
            packet_id: unsubscribe.pkid,
            filters: unsubscribe.topics.len(),
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect { with_will: false },
        v4::Packet::Connect(_) => return Err(second_connect()),
        other => Incoming::Unexpected(name_v4(&other)),
    }))
}

fn read_v5(buf: &mut BytesMut, max: usize) -> Result<Option<Incoming>, PacketError> {
    // rumqttc reads a DISCONNECT without reason code (remaining length 0, a normal
    // disconnection in MQTT 5) as an error.
    if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
        let _ = buf.split_to(2);
        return Ok(Some(Incoming::Disconnect { with_will: false }));
    }
    let Some(packet) = incomplete_as_none_v5(v5::Packet::read(buf, Some(max_u32(max))), max)?
    else {
        return Ok(None);
    };
    Ok(Some(match packet {
        v5::Packet::Publish(publish) => Incoming::Publish(Publish {
            topic: String::from_utf8(publish.topic.to_vec())
                .map_err(|_| PacketError::Malformed("a topic that is not UTF-8".to_owned()))?,
            topic_alias: publish
                .properties
                .as_ref()
                .is_some_and(|p| p.topic_alias.is_some()),
            payload: publish.payload,
            qos: publish.qos as u8,
            packet_id: publish.pkid,
        }),
        v5::Packet::PubRel(release) => Incoming::PubRel(release.pkid),
        v5::Packet::Subscribe(subscribe) => Incoming::Subscribe {
            packet_id: subscribe.pkid,
            filters: subscribe.filters.len(),
        },
        v5::Packet::Unsubscribe(unsubscribe) => Incoming::Unsubscribe {
            packet_id: unsubscribe.pkid,
            filters: unsubscribe.filters.len(),
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(disconnect) => Incoming::Disconnect {
            with_will: disconnect.reason_code
                == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::Connect(..) => return Err(second_connect()),
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::PubAck(_) => Incoming::Unexpected("PUBACK"),
        v5::Packet::PubRec(_) => Incoming::Unexpected("PUBREC"),
        v5::Packet::PubComp(_) => Incoming::Unexpected("PUBCOMP"),
        v5::Packet::ConnAck(_)
        | v5::Packet::SubAck(_)
        | v5::Packet::UnsubAck(_)
        | v5::Packet::PingResp(_) => Incoming::Unexpected("a packet only servers send"),
    }))
}

fn second_connect() -> PacketError {
    PacketError::Malformed("a second CONNECT".to_owned())
}

fn name_v4(packet: &v4::Packet) -> &'static str {
    match packet {
        v4::Packet::PubAck(_) => "PUBACK",
        v4::Packet::PubRec(_) => "PUBREC",
        v4::Packet::PubComp(_) => "PUBCOMP",
        _ => "a packet only servers send",
    }
}

fn max_u32(max: usize) -> u32 {
    u32::try_from(max).unwrap_or(u32::MAX)
}

fn incomplete_as_none_v4(
    read: Result<v4::Packet, rumqttc::mqttbytes::Error>,
    max: usize,
) -> Result<Option<v4::Packet>, PacketError> {
    use rumqttc::mqttbytes::Error;
    match read {
        Ok(packet) => Ok(Some(packet)),
        Err(Error::InsufficientBytes(_)) => Ok(None),
        Err(Error::PayloadSizeLimitExceeded(_)) => Err(PacketError::TooLarge(max)),
        Err(error) => Err(PacketError::Malformed(error.to_string())),
    }
}

fn incomplete_as_none_v5(
    read: Result<v5::Packet, rumqttc::v5::mqttbytes::Error>,
    max: usize,
) -> Result<Option<v5::Packet>, PacketError> {
    use rumqttc::v5::mqttbytes::Error;
    match read {
        Ok(packet) => Ok(Some(packet)),
        Err(Error::InsufficientBytes(_)) => Ok(None),
        Err(Error::PayloadSizeLimitExceeded { .. }) => Err(PacketError::TooLarge(max)),
        Err(error) => Err(PacketError::Malformed(error.to_string())),
    }
}

/// Appends `packet` to `out`, encoded for `version`.
pub(crate) fn write(out: &mut BytesMut, version: Version, packet: Outgoing) {
    let written = match version {
        Version::V311 => write_v311(out, packet),
        Version::V5 => write_v5(out, packet),
    };
    // Only packets this endpoint builds are written, all far below any size limit.
    if let Err(error) = written {
        tracing::error!(%error, "an MQTT packet of the endpoint could not be encoded");
    }
}

fn write_v311(out: &mut BytesMut, packet: Outgoing) -> Result<usize, String> {
    let written = match packet {
        Outgoing::ConnAck {
            session_present,
            refusal,
            ..
        } => {
            let code = match refusal {
                None => v4::ConnectReturnCode::Success,
                Some(Refusal::ProtocolVersion) => v4::ConnectReturnCode::RefusedProtocolVersion,
                Some(Refusal::ClientId) => v4::ConnectReturnCode::BadClientId,
                Some(Refusal::Credentials) => v4::ConnectReturnCode::BadUserNamePassword,
                Some(Refusal::NotAuthorized) => v4::ConnectReturnCode::NotAuthorized,
            };
            v4::ConnAck::new(code, session_present && refusal.is_none()).write(out)
        }
        // 3.1.1 has no refusal in an acknowledgement: the connection closes after this.
        Outgoing::PubAck { packet_id, .. } => v4::PubAck::new(packet_id).write(out),
        Outgoing::PubRec { packet_id, .. } => v4::PubRec::new(packet_id).write(out),
        Outgoing::PubComp { packet_id } => v4::PubComp::new(packet_id).write(out),
        Outgoing::SubAck { packet_id, filters } => {
            let codes = vec![v4::SubscribeReasonCode::Failure; filters];
            v4::SubAck::new(packet_id, codes).write(out)
        }
        Outgoing::UnsubAck { packet_id, .. } => v4::UnsubAck::new(packet_id).write(out),
        Outgoing::PingResp => v4::PingResp.write(out),
        Outgoing::Disconnect(_) => return Ok(0),
    };
    written.map_err(|e| e.to_string())
}

fn write_v5(out: &mut BytesMut, packet: Outgoing) -> Result<usize, String> {
    let written = match packet {
        Outgoing::ConnAck {
            session_present,
            refusal,
            receive_maximum,
            max_packet_bytes,
        } => {
            let code = match refusal {
                None => v5::ConnectReturnCode::Success,
                Some(Refusal::ProtocolVersion) => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                Some(Refusal::ClientId) => v5::ConnectReturnCode::ClientIdentifierNotValid,
                Some(Refusal::Credentials) => v5::ConnectReturnCode::BadUserNamePassword,
                Some(Refusal::NotAuthorized) => v5::ConnectReturnCode::NotAuthorized,
            };
            let properties = v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(receive_maximum),
                max_qos: None,
                retain_available: Some(1),
                max_packet_size: Some(max_packet_bytes),
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            v5::ConnAck {
                session_present: session_present && refusal.is_none(),
                code,
                properties: Some(properties),
            }
            .write(out)
        }
        Outgoing::PubAck { packet_id, refused } => {
            let mut ack = v5::PubAck::new(packet_id, None);
            if refused {
                ack.reason = v5::PubAckReason::NotAuthorized;
            }
            ack.write(out)
        }
        Outgoing::PubRec { packet_id, refused } => {
            let mut ack = v5::PubRec::new(packet_id, None);
            if refused {
                ack.reason = v5::PubRecReason::NotAuthorized;
            }
            ack.write(out)
        }
        Outgoing::PubComp { packet_id } => v5::PubComp::new(packet_id, None).write(out),
        Outgoing::SubAck { packet_id, filters } => {
            let codes = vec![v5::SubscribeReasonCode::NotAuthorized; filters];
            v5::SubAck {
                pkid: packet_id,
                return_codes: codes,
                properties: None,
            }
            .write(out)
        }
        Outgoing::UnsubAck { packet_id, filters } => {
            let reasons = vec![v5::UnsubAckReason::NoSubscriptionExisted; filters];
            v5::UnsubAck {
                pkid: packet_id,
                reasons,
                properties: None,
            }
            .write(out)
        }
        Outgoing::PingResp => v5::PingResp::write(out),
        Outgoing::Disconnect(reason) => {
            use v5::DisconnectReasonCode as Code;
            let reason_code = match reason {
                DisconnectReason::ProtocolError => Code::ProtocolError,
                DisconnectReason::NotAuthorized => Code::NotAuthorized,
                DisconnectReason::TopicNameInvalid => Code::TopicNameInvalid,
                DisconnectReason::PacketTooLarge => Code::PacketTooLarge,
                DisconnectReason::TopicAliasInvalid => Code::TopicAliasInvalid,
                DisconnectReason::SessionTakenOver => Code::SessionTakenOver,
                DisconnectReason::ServerShuttingDown => Code::ServerShuttingDown,
                DisconnectReason::KeepAliveTimeout => Code::KeepAliveTimeout,
            };
            v5::Disconnect::new(reason_code).write(out)
        }
    };
    written.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(packet: v5::Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, None).unwrap();
        buf
    }

    #[test]
    fn the_protocol_is_read_off_the_connect() {
        let mut buf = BytesMut::new();
        let mut connect = v4::Connect::new("truck042");
        connect.keep_alive = 30;
        connect.set_login("truck042", "s3cret");
        v4::Packet::Connect(connect).write(&mut buf, 1024).unwrap();
        // Byte by byte: nothing until the packet is whole.
        let whole = buf.split();
        for end in 1..whole.len() {
            let mut part = BytesMut::from(&whole[..end]);
            assert!(read_connect(&mut part, 1024).unwrap().is_none(), "{end}");
        }
        let connect = read_connect(&mut whole.clone(), 1024).unwrap().unwrap();
        assert_eq!(connect.version, Version::V311);
        assert_eq!(connect.username.as_deref(), Some("truck042"));
        assert!(connect.persistent || connect.clean_start);

        let mut properties = v5::ConnectProperties::new();
        properties.session_expiry_interval = Some(3600);
        let mut connect = v5::Connect {
            keep_alive: 30,
            client_id: "truck043".to_owned(),
            clean_start: false,
            properties: Some(properties),
        };
        connect.keep_alive = 10;
        let will = v5::LastWill::new(
            "te/device/main///status/health",
            "{}",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            None,
        );
        let mut buf = encoded(v5::Packet::Connect(connect, Some(will), None));
        let connect = read_connect(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(connect.version, Version::V5);
        assert!(connect.persistent && !connect.clean_start);
        assert_eq!(
            connect.will.unwrap().topic,
            "te/device/main///status/health"
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_bare_v5_disconnect_is_a_normal_one() {
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        let packet = read(&mut buf, Version::V5, 1024).unwrap().unwrap();
        assert!(matches!(packet, Incoming::Disconnect { with_will: false }));
    }

    #[test]
    fn packets_over_the_limit_are_refused_before_they_are_whole() {
        let mut publish = v5::Publish::new(
            "te/device/main///m/env",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            vec![b'x'; 2000],
            None,
        );
        publish.pkid = 1;
        let mut buf = encoded(v5::Packet::Publish(publish));
        buf.truncate(10);
        assert!(matches!(
            read(&mut buf, Version::V5, 1024),
            Err(PacketError::TooLarge(1024))
        ));
    }
}
