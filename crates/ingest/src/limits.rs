//! What devices may add to what Twinlake holds in memory: entities (each has an id, a place in
//! the hierarchy and its closure), how deep they nest, and measurement series (each has a
//! `latest` entry). Without bounds a device that invents names grows them until the process
//! runs out of memory; past a bound the message becomes a `rejected` row saying which limit it
//! hit, as InfluxDB refuses a write that would pass its series limit.

use twinlake_model::{EntityChangeRow, EntityHistory, Message, MessageBody, RejectReason};
use twinlake_store::LatestValues;

/// The bounds, each a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrowthLimits {
    /// Entities registered or waiting for their parent.
    pub max_entities: usize,
    /// Levels below the main device (a child device is 1, its service 2).
    pub max_entity_depth: usize,
    /// Measurement series (entity, type, series) with a latest value.
    pub max_series: usize,
}

impl Default for GrowthLimits {
    fn default() -> Self {
        Self {
            max_entities: 1_000_000,
            max_entity_depth: 16,
            max_series: 2_000_000,
        }
    }
}

impl GrowthLimits {
    /// The limit `message` would pass, if any. Cheap below the limits: a map lookup for the
    /// entity, and for a measurement nothing until the series limit is near.
    pub(crate) fn exceeded_by(
        &self,
        message: &Message,
        entities: &EntityHistory,
        latest: &LatestValues,
    ) -> Option<RejectReason> {
        let entity = message.entity.as_str();
        if !entities.is_known(entity) && entities.known() >= self.max_entities {
            return Some(RejectReason::TooManyEntities {
                entity: entity.to_owned(),
                limit: self.max_entities,
            });
        }
        match &message.body {
            MessageBody::EntityChange(change) => {
                let row = EntityChangeRow::new(&message.gateway, &message.topic_id, change);
                let parent = row.facts.as_ref()?.parent.as_deref();
                let depth = entities.depth_under(parent)?;
                (depth > self.max_entity_depth).then(|| RejectReason::TooDeep {
                    entity: entity.to_owned(),
                    depth,
                    limit: self.max_entity_depth,
                })
            }
            MessageBody::Measurement(measurement) if latest.len() >= self.max_series => {
                let new_series = measurement.values.iter().any(|value| {
                    !latest.holds(entity, &measurement.measurement_type, &value.series)
                });
                new_series.then_some(RejectReason::TooManySeries {
                    limit: self.max_series,
                })
            }
            _ => None,
        }
    }
}
