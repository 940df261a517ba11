//! End-to-end tests: the real `twinlake` binary, a real MQTT broker (the embedded one and
//! Mosquitto), a real MQTT client publishing, and SQL over HTTP to check what was stored.

mod durability;
mod spec;
mod support;
