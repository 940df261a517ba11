//! Parsing throughput: thin-edge message bytes to rows in the Arrow builders, the work ingest
//! does for every message. Run with `cargo bench -p twinlake-benches --bench parse`.
//!
//! Criterion reports elements per second; an element is one row (a value for measurements, so
//! the grouped measurement's figure is values/s and messages/s is a tenth of it).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twinlake_model::{FleetTopics, Parsed, TableBuilders, Timestamp, parse_message};

/// A vehicle's grouped reading with ten values: what a thin-edge device typically sends.
const GROUPED_MEASUREMENT: (&str, &str, u64) = (
    "te/device/truck0042///m/telemetry",
    r#"{"time":"2026-11-21T00:08:39.180999994Z","engine":{"rpm":2412.5,"temperature":88.1,"oil_pressure":3.4},"fuel":{"level":61.2,"rate":12.7},"gps":{"lat":48.137154,"lon":11.576124,"alt":519.0,"speed":63.2},"load":0.71}"#,
    10,
);

const EVENT: (&str, &str, u64) = (
    "te/device/truck0042/service/door-monitor/e/door_opened",
    r#"{"text":"Rear door opened","time":"2026-11-21T00:08:40.5Z","door":{"id":"rear","operator":"badge-1137"}}"#,
    1,
);

const ALARM: (&str, &str, u64) = (
    "te/device/truck0042///a/engine_overheat",
    r#"{"text":"Engine temperature above 105 °C","severity":"major","time":"2026-11-21T00:08:41Z","temperature":106.2}"#,
    1,
);

/// Messages appended to the builders between two `finish` calls, as a WAL group commit would.
const BATCH: usize = 1024;

fn parse_and_append(c: &mut Criterion) {
    let root = FleetTopics::default();
    let received_at = Timestamp::from_unix_nanos(1_795_219_644_000_000_000);
    let mut group = c.benchmark_group("parse_and_append");
    for (name, (topic, payload, rows)) in [
        ("grouped_measurement_10_values", GROUPED_MEASUREMENT),
        ("event", EVENT),
        ("alarm", ALARM),
    ] {
        assert!(matches!(
            parse_message(&root, topic.as_bytes(), payload.as_bytes(), received_at),
            Parsed::Data(_)
        ));
        group.throughput(Throughput::Elements(rows * BATCH as u64));
        group.bench_function(name, |b| {
            let mut builders = TableBuilders::new();
            b.iter(|| {
                for _ in 0..BATCH {
                    let parsed = parse_message(
                        &root,
                        black_box(topic.as_bytes()),
                        black_box(payload.as_bytes()),
                        received_at,
                    );
                    if let Parsed::Data(message) = parsed {
                        builders.append(&message);
                    }
                }
                black_box(builders.finish().expect("batches build"))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, parse_and_append);
criterion_main!(benches);
