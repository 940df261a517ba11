//! Twinlake's integration tests: one binary, a module per area.

mod fleet;
mod no_panic;
mod payload_schemas;
mod rejected;
mod schema_docs;
mod spec_examples;
mod support;
