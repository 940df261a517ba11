//! Which connection to the broker an acknowledgement belongs to.
//!
//! Acknowledgements are queued on the MQTT client by a task of their own, after the message's
//! record is durable, so one can be queued after the connection it came on has dropped. rumqttc
//! discards the acks still queued when a connection fails, but not those queued later, and
//! sends them on the next connection, where they must not go: with a new session the old packet
//! ids mean nothing, and with a resumed one the broker sends every unacknowledged message again
//! under its packet id, whose copy gets its own ack. The stale ack would free the id first, the
//! broker would give it to a new message, and the copy's ack would then acknowledge that new
//! message before it is durable, to be lost at a crash. So
//! only acks of messages that came on the current connection are sent, and the subscription of
//! a new connection is queued under the same lock, so no stale ack can follow it.

use std::sync::RwLock;

use rumqttc::Publish;

/// What an acknowledgement needs of a message: its QoS, packet id and connection.
pub(crate) struct AckToken {
    pub(crate) publish: Publish,
    pub(crate) connection: u64,
}

impl AckToken {
    pub(crate) fn of(received: &Publish, connection: u64) -> Self {
        let mut publish = Publish::new(String::new(), received.qos, Vec::new());
        publish.pkid = received.pkid;
        Self {
            publish,
            connection,
        }
    }
}

#[derive(Debug, Default)]
struct Sessions {
    /// Counts connections (ConnAcks); messages carry the one they arrived on.
    connection: u64,
}

/// Decides whether an acknowledgement may still be sent.
#[derive(Debug, Default)]
pub(crate) struct SessionGate {
    sessions: RwLock<Sessions>,
}

impl SessionGate {
    /// The connection messages arrive on now.
    pub(crate) fn connection(&self) -> u64 {
        self.sessions.read().map_or(0, |s| s.connection)
    }

    /// A new connection: `subscribe` runs while no ack can be queued, so every stale ack is
    /// either queued before the subscription (when the broker has sent nothing on this
    /// connection yet to confuse it with) or dropped.
    pub(crate) fn connected<T>(&self, subscribe: impl FnOnce() -> T) -> T {
        let mut sessions = match self.sessions.write() {
            Ok(sessions) => sessions,
            Err(poisoned) => poisoned.into_inner(),
        };
        sessions.connection += 1;
        subscribe()
    }

    /// Runs `send` for the ack of a message that arrived on `connection`, unless a later
    /// connection has begun; None then.
    pub(crate) fn admit<T>(&self, connection: u64, send: impl FnOnce() -> T) -> Option<T> {
        let sessions = match self.sessions.read() {
            Ok(sessions) => sessions,
            Err(poisoned) => poisoned.into_inner(),
        };
        (connection == sessions.connection).then(send)
    }
}

#[cfg(test)]
mod tests {
    use super::SessionGate;

    #[test]
    fn acks_of_an_earlier_connection_are_not_sent() {
        let gate = SessionGate::default();
        gate.connected(|| ());
        let first = gate.connection();
        assert_eq!(gate.admit(first, || "sent"), Some("sent"));
        // Whether the broker resumed the session (it sends the message again, whose copy is
        // acknowledged on its own) or began a new one (the old packet id means nothing now).
        gate.connected(|| ());
        assert_eq!(gate.admit(first, || "sent"), None);
        assert_eq!(gate.admit(gate.connection(), || "sent"), Some("sent"));
    }
}
