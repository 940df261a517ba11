//! The thin-edge.io data model of Twinlake.
//!
//! This crate owns the topic grammar (`[twinlake/<gateway>/]te/<entity topic id>/<channel>`)
//! and the fleet-unique entity names, the parsing and
//! validation of every thin-edge payload, the Arrow schemas of every Twinlake table and the
//! builders that turn parsed messages into `RecordBatch`es. One MQTT message becomes rows of
//! exactly one table, or a row of `rejected` that says why it could not.
//!
//! It must not do I/O: no sockets, no files, and no reading of the clock while parsing (the
//! receive time is an argument), so that every result is a pure function of its inputs.
//!
//! ```
//! use twinlake_model::{parse_message, FleetTopics, Parsed, Timestamp};
//!
//! let received_at = Timestamp::from_unix_seconds(1_700_000_000).unwrap();
//! let parsed = parse_message(
//!     &FleetTopics::default(),
//!     b"twinlake/truck042/te/device/sensor01///m/environment",
//!     br#"{"temperature":21.5,"current":{"L1":9.5}}"#,
//!     received_at,
//! );
//! let Parsed::Data(message) = parsed else { panic!("not data") };
//! assert_eq!(message.gateway.as_str(), "truck042");
//! assert_eq!(message.topic_id.as_str(), "device/sensor01//");
//! assert_eq!(message.entity, "truck042:device:sensor01");
//! assert_eq!(message.row_count(), 2);
//! ```

mod batch;
mod hierarchy;
mod json;
mod message;
mod payload;
mod reject;
mod schema;
mod time;
mod topic;

pub use batch::TableBuilders;
pub use hierarchy::{
    Ancestry, EntityChangeRow, EntityFacts, EntityHistory, EntityVersion, intersect, path_of,
    valid_at,
};
pub use message::{Measurement, Message, MessageBody, NotStored, Parsed, parse_message};
pub use payload::entity::{
    ChangeKind, EntityChange, EntityKind, Registration, auto_registrations, default_parent,
    main_device_registration,
};
pub use payload::event::{Alarm, AlarmState, Event, Severity};
pub use payload::health::HealthStatus;
pub use payload::measurement::SeriesValue;
pub use payload::meta::{MeasurementMeta, SeriesMeta};
pub use payload::twin::TwinChange;
pub use reject::{PayloadKind, RejectReason, Rejection};
pub use schema::{Column, ColumnType, Table, UTC};
pub use time::{TimeError, Timestamp};
pub use topic::{
    Channel, DefaultScheme, EntityTopicId, FleetTopics, ForeignTopic, Gateway, Topic, TopicError,
    TopicRoot,
};
