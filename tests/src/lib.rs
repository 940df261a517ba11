//! Tests live in tests/it.
