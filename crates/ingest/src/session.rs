//! Which MQTT session an acknowledgement belongs to.
//!
//! Acknowledgements are queued on the MQTT client by a task of their own, after the message's
//! record is durable, so one can be queued after the connection it came on has dropped. rumqttc
//! discards the acks still queued when a connection fails, but not those queued later, and
//! sends them on the next connection. When the broker resumed the session that is right: it
//! resends the unacknowledged messages under the same packet ids. When it started a new session
//! (`session_present` false) the old packet ids mean nothing, and a stale PUBACK could
//! acknowledge a new message that is not durable yet. So acks of a session the broker no
//! longer has are dropped (the broker has dropped those messages too), and the subscription of
//! a new session is queued under the same lock, so no stale ack can follow it.

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
    /// The first connection of the broker's current session.
    session_began: u64,
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

    /// A new connection: `subscribe` runs while no ack can be queued, so with a new session
    /// every stale ack is either queued before the subscription (when the broker has nothing of
    /// ours yet to confuse it with) or dropped.
    pub(crate) fn connected<T>(&self, session_present: bool, subscribe: impl FnOnce() -> T) -> T {
        let mut sessions = match self.sessions.write() {
            Ok(sessions) => sessions,
            Err(poisoned) => poisoned.into_inner(),
        };
        sessions.connection += 1;
        if !session_present {
            sessions.session_began = sessions.connection;
        }
        subscribe()
    }

    /// Runs `send` for the ack of a message that arrived on `connection`, unless that
    /// connection's session is gone; None then.
    pub(crate) fn admit<T>(&self, connection: u64, send: impl FnOnce() -> T) -> Option<T> {
        let sessions = match self.sessions.read() {
            Ok(sessions) => sessions,
            Err(poisoned) => poisoned.into_inner(),
        };
        (connection >= sessions.session_began).then(send)
    }
}

#[cfg(test)]
mod tests {
    use super::SessionGate;

    #[test]
    fn acks_of_a_session_the_broker_dropped_are_not_sent() {
        let gate = SessionGate::default();
        gate.connected(false, || ());
        let first = gate.connection();
        assert_eq!(gate.admit(first, || "sent"), Some("sent"));
        // The broker resumed the session: it resends under the same packet ids.
        gate.connected(true, || ());
        assert_eq!(gate.admit(first, || "sent"), Some("sent"));
        // A new session: the old packet ids mean nothing any more.
        gate.connected(false, || ());
        assert_eq!(gate.admit(first, || "sent"), None);
        assert_eq!(gate.admit(gate.connection(), || "sent"), Some("sent"));
    }
}
