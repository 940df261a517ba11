//! The tables of Twinlake and their Arrow schemas, defined once, here.
//!
//! The column lists below are the single source: the Arrow schemas are built from them and so
//! are the Markdown pages in `schemas/`, which a test keeps identical to [`Table::markdown`].

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Every table Twinlake stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Measurements,
    Events,
    Alarms,
    EntityChanges,
    TwinChanges,
    Health,
    MeasurementMeta,
    Rejected,
}

/// The Arrow type of a column, in the few shapes Twinlake uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `Timestamp(Nanosecond, "UTC")`.
    Time,
    /// `Utf8`.
    Text,
    /// `Utf8` holding a JSON document (an object unless the column says otherwise).
    Json,
    /// `Float64`.
    Float,
    /// `Int64`.
    Integer,
    /// `Binary`.
    Bytes,
}

impl ColumnType {
    pub fn data_type(self) -> DataType {
        match self {
            Self::Time => DataType::Timestamp(TimeUnit::Nanosecond, Some(UTC.into())),
            Self::Text | Self::Json => DataType::Utf8,
            Self::Float => DataType::Float64,
            Self::Integer => DataType::Int64,
            Self::Bytes => DataType::Binary,
        }
    }

    fn sql_name(self) -> &'static str {
        match self {
            Self::Time => "timestamp (ns, UTC)",
            Self::Text => "text",
            Self::Json => "text (JSON)",
            Self::Float => "double",
            Self::Integer => "bigint",
            Self::Bytes => "bytes",
        }
    }
}

/// The time zone of every time column.
pub const UTC: &str = "UTC";

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub column_type: ColumnType,
    pub nullable: bool,
    pub doc: &'static str,
}

const fn required(name: &'static str, column_type: ColumnType, doc: &'static str) -> Column {
    Column {
        name,
        column_type,
        nullable: false,
        doc,
    }
}

const fn optional(name: &'static str, column_type: ColumnType, doc: &'static str) -> Column {
    Column {
        name,
        column_type,
        nullable: true,
        doc,
    }
}

use ColumnType::{Bytes, Float, Integer, Json, Text, Time};

const TIME_DOC: &str = "The payload's `time`, or the time Twinlake received the message.";
const ENTITY_DOC: &str = "The entity's fleet-unique name: the gateway id for its main device (`truck042`), else the gateway id, `:` and the topic id with `/` made `:` and trailing ones dropped (`truck042:device:sensor01`).";
const GATEWAY_DOC: &str = "The thin-edge gateway the message came from (`twinlake/<gateway>/te/...`, or the default gateway for a plain `te/...` topic).";

const MEASUREMENTS: &[Column] = &[
    required("time", Time, TIME_DOC),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    required(
        "type",
        Text,
        "Measurement type from the topic (`m/<type>`); may be empty.",
    ),
    required(
        "series",
        Text,
        "The key of the value, `group.key` for a member of a group.",
    ),
    required("value", Float, "The value; integers are stored as doubles."),
    optional(
        "properties",
        Json,
        "The message's reserved `properties` member, passed through unchanged (any JSON).",
    ),
];

const EVENTS: &[Column] = &[
    required("time", Time, TIME_DOC),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    required(
        "type",
        Text,
        "Event type: the topic's (`e/<type>`) unless the payload's `type` overrides it.",
    ),
    required(
        "text",
        Text,
        "The payload's `text`, or the event type when there is none.",
    ),
    optional(
        "attributes",
        Json,
        "Custom fragments: every other member of the payload.",
    ),
];

const ALARMS: &[Column] = &[
    required("time", Time, TIME_DOC),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    required(
        "type",
        Text,
        "Alarm type: the topic's (`a/<type>`) unless the payload's `type` overrides it. With the entity, the alarm's identity.",
    ),
    optional(
        "severity",
        Text,
        "`critical`, `major`, `minor` or `warning`; missing or unknown severities are `minor`. Null for a clear.",
    ),
    optional(
        "text",
        Text,
        "The payload's `text`, or the alarm type. Null for a clear.",
    ),
    required(
        "status",
        Text,
        "`raised`, or `cleared` for the empty retained payload.",
    ),
    optional(
        "attributes",
        Json,
        "Custom fragments; an unknown severity is kept here under `severity`.",
    ),
];

const ENTITY_CHANGES: &[Column] = &[
    required(
        "time",
        Time,
        "When Twinlake received the registration (registrations carry no time).",
    ),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    required(
        "topic_id",
        Text,
        "The entity topic id as its gateway knows it, padded to 4 segments (`device/sensor01//`).",
    ),
    required(
        "change",
        Text,
        "`registered` (new or updated), `auto_registered` (from telemetry of an unregistered default-scheme id) or `deregistered` (the entity and all its descendants).",
    ),
    optional(
        "kind",
        Text,
        "`@type`: `device` (the main device), `child-device` or `service`. Null for a deregistration.",
    ),
    optional(
        "parent",
        Text,
        "`@parent` (mapped to its fleet-unique name within the gateway), or thin-edge's default parent for the kind. Null for a gateway's main device and deregistrations.",
    ),
    optional(
        "external_id",
        Text,
        "`@id`: the entity's external identity.",
    ),
    optional("name", Text, "The `name` member, when it is a string."),
    optional(
        "type",
        Text,
        "The `type` member (device or service type), when it is a string.",
    ),
    optional(
        "health_endpoint",
        Text,
        "`@health`: the entity that reports this one's health (its fleet-unique name).",
    ),
    optional(
        "attributes",
        Json,
        "Every member except `@type`, `@id`, `@parent`, `@health`: the twin data of the registration, `name` and `type` included.",
    ),
];

const TWIN_CHANGES: &[Column] = &[
    required("time", Time, "When Twinlake received the fragment."),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    required(
        "fragment",
        Text,
        "The fragment key from the topic (`twin/<fragment>`).",
    ),
    optional(
        "value",
        Json,
        "The fragment's value as JSON (any JSON value). Null when the fragment was deleted (empty payload).",
    ),
];

const HEALTH: &[Column] = &[
    required("time", Time, TIME_DOC),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    optional(
        "status",
        Text,
        "`up`, `down` (also for the bare `1`/`0` of bridges), another status as sent, or `unknown` when the payload has none. Null when the retained status was cleared.",
    ),
    optional("pid", Integer, "The reporting process id."),
    optional("attributes", Json, "Every other member of the payload."),
];

const MEASUREMENT_META: &[Column] = &[
    required(
        "time",
        Time,
        "When Twinlake received the metadata; it applies to later measurements.",
    ),
    required("gateway", Text, GATEWAY_DOC),
    required("entity", Text, ENTITY_DOC),
    required(
        "type",
        Text,
        "Measurement type from the topic (`m/<type>/meta`).",
    ),
    optional(
        "series",
        Text,
        "The series the metadata is for (`group.member` for a member of a group). Null when the metadata of the type was cleared.",
    ),
    optional("unit", Text, "The `unit` member, when it is a string."),
    optional(
        "attributes",
        Json,
        "Everything else said about the series (`precision`, `min`, `max`, ...).",
    ),
];

const REJECTED: &[Column] = &[
    required("received_at", Time, "When Twinlake received the message."),
    optional(
        "gateway",
        Text,
        "The gateway the topic names, or the default gateway for a plain topic. Null when the topic names no valid gateway.",
    ),
    required(
        "topic",
        Text,
        "The topic as received (invalid UTF-8 replaced by U+FFFD).",
    ),
    required(
        "payload",
        Bytes,
        "The whole payload, byte for byte (only the first bytes of an oversized one).",
    ),
    required(
        "reason_code",
        Text,
        "A stable name for the kind of reason: `invalid_topic`, `invalid_gateway`, `unknown_channel`, `invalid_payload`, `invalid_time`, `payload_too_large`, `too_many_rows`, `too_many_entities`, `too_deep`, `too_many_series`.",
    ),
    required("reason", Text, "What was wrong, for a person to act on."),
];

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Measurements,
        Table::Events,
        Table::Alarms,
        Table::EntityChanges,
        Table::TwinChanges,
        Table::Health,
        Table::MeasurementMeta,
        Table::Rejected,
    ];

    /// The table's name in SQL and in storage paths.
    pub fn name(self) -> &'static str {
        match self {
            Self::Measurements => "measurements",
            Self::Events => "events",
            Self::Alarms => "alarms",
            Self::EntityChanges => "entity_changes",
            Self::TwinChanges => "twin_changes",
            Self::Health => "health",
            Self::MeasurementMeta => "measurement_meta",
            Self::Rejected => "rejected",
        }
    }

    /// The column that orders the table in time: `time`, or `received_at` for `rejected`.
    pub fn time_column(self) -> &'static str {
        match self {
            Self::Rejected => "received_at",
            _ => "time",
        }
    }

    /// The entity topic id column; `rejected` has none (its topic may not name an entity).
    pub fn entity_column(self) -> Option<&'static str> {
        match self {
            Self::Rejected => None,
            _ => Some("entity"),
        }
    }

    /// The natural key, time last: persisted files are sorted by it, so that a scan of one
    /// entity or series reads neighbouring rows.
    pub fn sort_key(self) -> &'static [&'static str] {
        match self {
            Self::Measurements | Self::MeasurementMeta => &["entity", "type", "series", "time"],
            Self::Events | Self::Alarms => &["entity", "type", "time"],
            Self::EntityChanges | Self::Health => &["entity", "time"],
            Self::TwinChanges => &["entity", "fragment", "time"],
            Self::Rejected => &["topic", "received_at"],
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|table| table.name() == name)
    }

    /// What one row is.
    pub fn description(self) -> &'static str {
        match self {
            Self::Measurements => {
                "One row per numeric value: a message `{\"t\":21.5,\"g\":{\"a\":1}}` on `te/<entity>/m/<type>` gives the rows `t` and `g.a`."
            }
            Self::Events => "One row per event (`te/<entity>/e/<type>`).",
            Self::Alarms => "One row per alarm raise or clear (`te/<entity>/a/<type>`).",
            Self::EntityChanges => {
                "One row per registration, update or deregistration of an entity (`te/<entity>`), and per auto-registration."
            }
            Self::TwinChanges => {
                "One row per twin fragment set or deleted (`te/<entity>/twin/<fragment>`)."
            }
            Self::Health => "One row per health status message (`te/<entity>/status/health`).",
            Self::MeasurementMeta => {
                "One row per series described by a metadata message (`te/<entity>/m/<type>/meta`), or one row with a null series when it was cleared."
            }
            Self::Rejected => {
                "One row per message that could not become data, with the reason. Nothing is dropped silently."
            }
        }
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            Self::Measurements => MEASUREMENTS,
            Self::Events => EVENTS,
            Self::Alarms => ALARMS,
            Self::EntityChanges => ENTITY_CHANGES,
            Self::TwinChanges => TWIN_CHANGES,
            Self::Health => HEALTH,
            Self::MeasurementMeta => MEASUREMENT_META,
            Self::Rejected => REJECTED,
        }
    }

    /// The table's Arrow schema, built once.
    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
        let schemas = SCHEMAS.get_or_init(|| {
            Self::ALL
                .iter()
                .map(|table| {
                    let fields: Vec<Field> = table
                        .columns()
                        .iter()
                        .map(|c| Field::new(c.name, c.column_type.data_type(), c.nullable))
                        .collect();
                    Arc::new(Schema::new(fields))
                })
                .collect()
        });
        Arc::clone(&schemas[self as usize])
    }

    /// The documentation page of the table, as kept in `schemas/<table>.md`.
    pub fn markdown(self) -> String {
        let mut page = format!(
            "# `{}`\n\n{}\n\n<!-- Generated from crates/model/src/schema.rs by `TWINLAKE_BLESS=1 cargo test -p twinlake-tests schema_docs`; do not edit by hand. -->\n\n| column | type | null | meaning |\n|---|---|---|---|\n",
            self.name(),
            self.description()
        );
        for column in self.columns() {
            page.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                column.name,
                column.column_type.sql_name(),
                if column.nullable { "yes" } else { "no" },
                column.doc.replace('|', "\\|")
            ));
        }
        page
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
