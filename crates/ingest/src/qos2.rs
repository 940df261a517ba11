//! The sessions of the embedded endpoint that outlive their connections: which client ids have
//! a persistent session, and which QoS 2 packet ids each has had stored and not yet released.
//!
//! A client whose CONNACK says its session is not present must discard what it has not seen
//! acknowledged (MQTT 3.1.1 §3.2.2.2, and rumqttc does), so a persistent session must survive
//! a crash of Twinlake like the rows. And a QoS 2 sender that lost our PUBREC sends the PUBLISH
//! again, with the same packet id, on its next connection. So this state is durable: every change is written to the WAL in the record of the messages it belongs to
//! (a PUBREC leaves only after the record holding both the rows and the packet id is fsynced,
//! a PUBCOMP only after the record holding the release), replayed at start, and checkpointed
//! with the retained state so that WAL truncation cannot take it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, StringBuilder, UInt16Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt16Type;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

/// The WAL table of QoS 2 state changes (not a table of the lake).
pub(crate) const QOS2_TABLE: &str = "_mqtt_qos2";

/// Packet id 0 is not a valid MQTT packet id; a row with it stands for the client's whole
/// session: begun (`received` true) or ended (false).
const WHOLE_SESSION: u16 = 0;

fn qos2_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("client_id", DataType::Utf8, false),
        Field::new("packet_id", DataType::UInt16, false),
        Field::new("received", DataType::Boolean, false),
    ]))
}

/// A QoS 2 publish of one client: its packet id stays taken until the client releases it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PacketKey {
    pub(crate) client_id: Arc<str>,
    pub(crate) packet_id: u16,
}

/// Persistent sessions, and packet ids stored and not yet released per client id.
#[derive(Debug, Default)]
pub struct Qos2State {
    persistent: HashSet<Arc<str>>,
    pending: HashMap<Arc<str>, HashSet<u16>>,
}

impl Qos2State {
    /// Clients with a persistent session: it is present when they connect again.
    pub fn persistent_sessions(&self) -> impl Iterator<Item = &Arc<str>> {
        self.persistent.iter()
    }

    /// Clients with QoS 2 packet ids pending.
    pub fn clients_with_packets(&self) -> impl Iterator<Item = &Arc<str>> {
        self.pending.keys()
    }

    pub(crate) fn begin_session(&mut self, client_id: &Arc<str>) {
        self.persistent.insert(Arc::clone(client_id));
    }

    pub(crate) fn is_pending(&self, key: &PacketKey) -> bool {
        self.pending
            .get(&key.client_id)
            .is_some_and(|ids| ids.contains(&key.packet_id))
    }

    pub(crate) fn receive(&mut self, key: &PacketKey) {
        self.pending
            .entry(Arc::clone(&key.client_id))
            .or_default()
            .insert(key.packet_id);
    }

    pub(crate) fn release(&mut self, key: &PacketKey) {
        if let Some(ids) = self.pending.get_mut(&key.client_id) {
            ids.remove(&key.packet_id);
            if ids.is_empty() {
                self.pending.remove(&key.client_id);
            }
        }
    }

    pub(crate) fn end_session(&mut self, client_id: &str) {
        self.pending.remove(client_id);
        self.persistent.remove(client_id);
    }

    /// Every pending packet id as one WAL batch.
    pub(crate) fn checkpoint_batch(&self) -> Result<Option<RecordBatch>, ArrowError> {
        let mut log = Qos2Log::default();
        for client_id in &self.persistent {
            log.session_begun(client_id);
        }
        for (client_id, ids) in &self.pending {
            for &packet_id in ids {
                log.received(&PacketKey {
                    client_id: Arc::clone(client_id),
                    packet_id,
                });
            }
        }
        log.take_batch()
    }

    /// Applies a WAL batch of changes, in order.
    pub(crate) fn apply(&mut self, batch: &RecordBatch) {
        let clients = batch.column(0).as_string::<i32>();
        let ids = batch.column(1).as_primitive::<UInt16Type>();
        let received = batch.column(2).as_boolean();
        for row in 0..batch.num_rows() {
            let key = PacketKey {
                client_id: Arc::from(clients.value(row)),
                packet_id: ids.value(row),
            };
            match (received.value(row), key.packet_id) {
                (true, WHOLE_SESSION) => self.begin_session(&key.client_id),
                (true, _) => self.receive(&key),
                (false, WHOLE_SESSION) => self.end_session(&key.client_id),
                (false, _) => self.release(&key),
            }
        }
    }
}

/// The QoS 2 changes of one group commit, for its WAL record.
#[derive(Debug, Default)]
pub(crate) struct Qos2Log {
    rows: Vec<(Arc<str>, u16, bool)>,
}

impl Qos2Log {
    pub(crate) fn received(&mut self, key: &PacketKey) {
        self.rows
            .push((Arc::clone(&key.client_id), key.packet_id, true));
    }

    pub(crate) fn released(&mut self, key: &PacketKey) {
        self.rows
            .push((Arc::clone(&key.client_id), key.packet_id, false));
    }

    pub(crate) fn session_begun(&mut self, client_id: &Arc<str>) {
        self.rows.push((Arc::clone(client_id), WHOLE_SESSION, true));
    }

    pub(crate) fn session_ended(&mut self, client_id: &Arc<str>) {
        self.rows
            .push((Arc::clone(client_id), WHOLE_SESSION, false));
    }

    pub(crate) fn take_batch(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let mut clients = StringBuilder::new();
        let mut ids = UInt16Builder::new();
        let mut received = BooleanBuilder::new();
        for (client_id, packet_id, was_received) in self.rows.drain(..) {
            clients.append_value(&client_id);
            ids.append_value(packet_id);
            received.append_value(was_received);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(clients.finish()),
            Arc::new(ids.finish()),
            Arc::new(received.finish()),
        ];
        RecordBatch::try_new(qos2_schema(), columns).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str, packet_id: u16) -> PacketKey {
        PacketKey {
            client_id: Arc::from(client),
            packet_id,
        }
    }

    #[test]
    fn replaying_the_log_gives_the_pending_packet_ids() {
        let mut log = Qos2Log::default();
        log.received(&key("truck1", 7));
        log.received(&key("truck1", 8));
        log.received(&key("truck2", 7));
        log.session_begun(&Arc::from("truck2"));
        log.session_begun(&Arc::from("truck3"));
        log.released(&key("truck1", 7));
        log.session_ended(&Arc::from("truck2"));
        let mut state = Qos2State::default();
        state.apply(&log.take_batch().unwrap().unwrap());
        assert!(!state.is_pending(&key("truck1", 7)));
        assert!(state.is_pending(&key("truck1", 8)));
        assert!(!state.is_pending(&key("truck2", 7)));
        let mut restored = Qos2State::default();
        restored.apply(&state.checkpoint_batch().unwrap().unwrap());
        assert!(restored.is_pending(&key("truck1", 8)));
        assert_eq!(restored.clients_with_packets().count(), 1);
        let sessions: Vec<&str> = restored.persistent_sessions().map(|c| &**c).collect();
        assert_eq!(sessions, ["truck3"]);
    }
}
