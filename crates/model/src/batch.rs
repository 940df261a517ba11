//! Arrow `RecordBatch` builders: typed rows in, one batch per table out.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::ArrowError;

use crate::message::{Message, MessageBody};
use crate::payload::entity::EntityChange;
use crate::payload::event::AlarmState;
use crate::reject::Rejection;
use crate::schema::{Table, UTC};
use crate::topic::{EntityTopicId, Gateway};

/// How a column builder starts empty; time columns carry the UTC zone of the schema.
trait NewColumn {
    fn new_column() -> Self;
}

impl NewColumn for TimestampNanosecondBuilder {
    fn new_column() -> Self {
        TimestampNanosecondBuilder::new().with_timezone(UTC)
    }
}

macro_rules! new_column_default {
    ($($builder:ty),*) => {
        $(impl NewColumn for $builder {
            fn new_column() -> Self {
                <$builder>::new()
            }
        })*
    };
}
new_column_default!(StringBuilder, Float64Builder, Int64Builder, BinaryBuilder);

/// A builder per table whose fields are its columns, in the order of [`Table::columns`].
macro_rules! table_builder {
    ($name:ident, $table:expr, { $($column:ident : $builder:ty),* $(,)? }) => {
        #[derive(Debug)]
        struct $name {
            rows: usize,
            $($column: $builder),*
        }

        impl $name {
            fn new() -> Self {
                Self { rows: 0, $($column: <$builder as NewColumn>::new_column()),* }
            }

            fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
                self.rows = 0;
                let columns: Vec<ArrayRef> = vec![$(Arc::new(self.$column.finish())),*];
                RecordBatch::try_new($table.schema(), columns)
            }
        }
    };
}

table_builder!(MeasurementsBuilder, Table::Measurements, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    measurement_type: StringBuilder,
    series: StringBuilder,
    value: Float64Builder,
    properties: StringBuilder,
});

table_builder!(EventsBuilder, Table::Events, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    event_type: StringBuilder,
    text: StringBuilder,
    attributes: StringBuilder,
});

table_builder!(AlarmsBuilder, Table::Alarms, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    alarm_type: StringBuilder,
    severity: StringBuilder,
    text: StringBuilder,
    status: StringBuilder,
    attributes: StringBuilder,
});

table_builder!(EntityChangesBuilder, Table::EntityChanges, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    topic_id: StringBuilder,
    change: StringBuilder,
    kind: StringBuilder,
    parent: StringBuilder,
    external_id: StringBuilder,
    name: StringBuilder,
    entity_type: StringBuilder,
    health_endpoint: StringBuilder,
    attributes: StringBuilder,
});

table_builder!(TwinChangesBuilder, Table::TwinChanges, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    fragment: StringBuilder,
    value: StringBuilder,
});

table_builder!(HealthBuilder, Table::Health, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    status: StringBuilder,
    pid: Int64Builder,
    attributes: StringBuilder,
});

table_builder!(MeasurementMetaBuilder, Table::MeasurementMeta, {
    time: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    entity: StringBuilder,
    measurement_type: StringBuilder,
    series: StringBuilder,
    unit: StringBuilder,
    attributes: StringBuilder,
});

table_builder!(RejectedBuilder, Table::Rejected, {
    received_at: TimestampNanosecondBuilder,
    gateway: StringBuilder,
    topic: StringBuilder,
    payload: BinaryBuilder,
    reason_code: StringBuilder,
    reason: StringBuilder,
});

/// Rows of every table accumulated from parsed messages, turned into one `RecordBatch` per
/// non-empty table by [`TableBuilders::finish`].
#[derive(Debug)]
pub struct TableBuilders {
    measurements: MeasurementsBuilder,
    events: EventsBuilder,
    alarms: AlarmsBuilder,
    entity_changes: EntityChangesBuilder,
    twin_changes: TwinChangesBuilder,
    health: HealthBuilder,
    measurement_meta: MeasurementMetaBuilder,
    rejected: RejectedBuilder,
}

impl Default for TableBuilders {
    fn default() -> Self {
        Self::new()
    }
}

impl TableBuilders {
    pub fn new() -> Self {
        Self {
            measurements: MeasurementsBuilder::new(),
            events: EventsBuilder::new(),
            alarms: AlarmsBuilder::new(),
            entity_changes: EntityChangesBuilder::new(),
            twin_changes: TwinChangesBuilder::new(),
            health: HealthBuilder::new(),
            measurement_meta: MeasurementMetaBuilder::new(),
            rejected: RejectedBuilder::new(),
        }
    }

    /// Rows accumulated for `table` since the last [`TableBuilders::finish`].
    pub fn rows(&self, table: Table) -> usize {
        match table {
            Table::Measurements => self.measurements.rows,
            Table::Events => self.events.rows,
            Table::Alarms => self.alarms.rows,
            Table::EntityChanges => self.entity_changes.rows,
            Table::TwinChanges => self.twin_changes.rows,
            Table::Health => self.health.rows,
            Table::MeasurementMeta => self.measurement_meta.rows,
            Table::Rejected => self.rejected.rows,
        }
    }

    pub fn is_empty(&self) -> bool {
        Table::ALL.iter().all(|table| self.rows(*table) == 0)
    }

    pub fn append(&mut self, message: &Message) {
        let gateway = message.gateway.as_str();
        let entity = message.entity.as_str();
        match &message.body {
            MessageBody::Measurement(m) => {
                let b = &mut self.measurements;
                for value in &m.values {
                    b.time.append_value(m.time.unix_nanos());
                    b.gateway.append_value(gateway);
                    b.entity.append_value(entity);
                    b.measurement_type.append_value(&m.measurement_type);
                    b.series.append_value(&value.series);
                    b.value.append_value(value.value);
                    b.properties.append_option(m.properties.as_deref());
                }
                b.rows += m.values.len();
            }
            MessageBody::MeasurementMeta(meta) => {
                let b = &mut self.measurement_meta;
                let mut append =
                    |series: Option<&str>, unit: Option<&str>, attributes: Option<&str>| {
                        b.time.append_value(meta.time.unix_nanos());
                        b.gateway.append_value(gateway);
                        b.entity.append_value(entity);
                        b.measurement_type.append_value(&meta.measurement_type);
                        b.series.append_option(series);
                        b.unit.append_option(unit);
                        b.attributes.append_option(attributes);
                        b.rows += 1;
                    };
                if meta.series.is_empty() {
                    append(None, None, None);
                }
                for series in &meta.series {
                    append(
                        Some(&series.series),
                        series.unit.as_deref(),
                        series.attributes.as_deref(),
                    );
                }
            }
            MessageBody::Event(event) => {
                let b = &mut self.events;
                b.time.append_value(event.time.unix_nanos());
                b.gateway.append_value(gateway);
                b.entity.append_value(entity);
                b.event_type.append_value(&event.event_type);
                b.text.append_value(&event.text);
                b.attributes.append_option(event.attributes.as_deref());
                b.rows += 1;
            }
            MessageBody::Alarm(alarm) => {
                let b = &mut self.alarms;
                b.time.append_value(alarm.time.unix_nanos());
                b.gateway.append_value(gateway);
                b.entity.append_value(entity);
                b.alarm_type.append_value(&alarm.alarm_type);
                match &alarm.state {
                    AlarmState::Raised {
                        severity,
                        text,
                        attributes,
                    } => {
                        b.severity.append_value(severity.as_str());
                        b.text.append_value(text);
                        b.status.append_value("raised");
                        b.attributes.append_option(attributes.as_deref());
                    }
                    AlarmState::Cleared => {
                        b.severity.append_null();
                        b.text.append_null();
                        b.status.append_value("cleared");
                        b.attributes.append_null();
                    }
                }
                b.rows += 1;
            }
            MessageBody::EntityChange(change) => {
                self.append_entity_change(&message.gateway, &message.topic_id, change);
            }
            MessageBody::TwinChange(twin) => {
                let b = &mut self.twin_changes;
                b.time.append_value(twin.time.unix_nanos());
                b.gateway.append_value(gateway);
                b.entity.append_value(entity);
                b.fragment.append_value(&twin.fragment);
                b.value.append_option(twin.value.as_deref());
                b.rows += 1;
            }
            MessageBody::Health(health) => {
                let b = &mut self.health;
                b.time.append_value(health.time.unix_nanos());
                b.gateway.append_value(gateway);
                b.entity.append_value(entity);
                b.status.append_option(health.status.as_deref());
                b.pid.append_option(health.pid);
                b.attributes.append_option(health.attributes.as_deref());
                b.rows += 1;
            }
        }
    }

    /// Appends one `entity_changes` row; also used for auto-registrations, which have no
    /// message of their own. Topic ids in the registration are named within `gateway`.
    pub fn append_entity_change(
        &mut self,
        gateway: &Gateway,
        topic_id: &EntityTopicId,
        change: &EntityChange,
    ) {
        let b = &mut self.entity_changes;
        let registration = change.registration.as_ref();
        let name = |id: &EntityTopicId| gateway.entity_name(id);
        b.time.append_value(change.time.unix_nanos());
        b.gateway.append_value(gateway.as_str());
        b.entity.append_value(name(topic_id));
        b.topic_id.append_value(topic_id.as_str());
        b.change.append_value(change.change.as_str());
        b.kind.append_option(registration.map(|r| r.kind.as_str()));
        b.parent
            .append_option(registration.and_then(|r| r.parent.as_ref()).map(name));
        b.external_id
            .append_option(registration.and_then(|r| r.external_id.as_deref()));
        b.name
            .append_option(registration.and_then(|r| r.name.as_deref()));
        b.entity_type
            .append_option(registration.and_then(|r| r.entity_type.as_deref()));
        b.health_endpoint.append_option(
            registration
                .and_then(|r| r.health_endpoint.as_ref())
                .map(name),
        );
        b.attributes
            .append_option(registration.and_then(|r| r.attributes.as_deref()));
        b.rows += 1;
    }

    pub fn append_rejection(&mut self, rejection: &Rejection) {
        let b = &mut self.rejected;
        b.received_at
            .append_value(rejection.received_at.unix_nanos());
        b.gateway
            .append_option(rejection.gateway.as_ref().map(Gateway::as_str));
        b.topic.append_value(&rejection.topic);
        b.payload.append_value(&rejection.payload);
        b.reason_code.append_value(rejection.reason.code());
        b.reason.append_value(rejection.reason.to_string());
        b.rows += 1;
    }

    /// One batch per table that has rows, in [`Table::ALL`] order; the builders start over.
    pub fn finish(&mut self) -> Result<Vec<(Table, RecordBatch)>, ArrowError> {
        let mut batches = Vec::new();
        for table in Table::ALL {
            if self.rows(table) == 0 {
                continue;
            }
            let batch = match table {
                Table::Measurements => self.measurements.finish(),
                Table::Events => self.events.finish(),
                Table::Alarms => self.alarms.finish(),
                Table::EntityChanges => self.entity_changes.finish(),
                Table::TwinChanges => self.twin_changes.finish(),
                Table::Health => self.health.finish(),
                Table::MeasurementMeta => self.measurement_meta.finish(),
                Table::Rejected => self.rejected.finish(),
            }?;
            batches.push((table, batch));
        }
        Ok(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_builders_produce_no_batches_and_every_table_builds_its_schema() {
        let mut builders = TableBuilders::new();
        assert!(builders.is_empty());
        assert!(builders.finish().unwrap().is_empty());
        // finish() validates column types against the schema for every table
        assert!(MeasurementsBuilder::new().finish().is_ok());
        assert!(EventsBuilder::new().finish().is_ok());
        assert!(AlarmsBuilder::new().finish().is_ok());
        assert!(EntityChangesBuilder::new().finish().is_ok());
        assert!(TwinChangesBuilder::new().finish().is_ok());
        assert!(HealthBuilder::new().finish().is_ok());
        assert!(MeasurementMetaBuilder::new().finish().is_ok());
        assert!(RejectedBuilder::new().finish().is_ok());
    }
}
