//! Fuzzes the topic + payload parser and the Arrow builders behind it.
//!
//! The input is split at the first NUL byte: topic before, payload after (no NUL: all topic,
//! empty payload), so the fuzzer explores both and their combinations.

#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_model::{FleetTopics, Parsed, TableBuilders, Timestamp, parse_message};

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let mut builders = TableBuilders::new();
    match parse_message(&FleetTopics::default(), topic, payload, Timestamp::from_unix_nanos(0)) {
        Parsed::Data(message) => {
            builders.append(&message);
            let batches = builders.finish().expect("accepted messages always build");
            assert_eq!(batches[0].1.num_rows(), message.row_count());
        }
        Parsed::Rejected(rejection) => {
            assert_eq!(rejection.payload, payload);
            builders.append_rejection(&rejection);
            builders.finish().expect("rejections always build");
        }
        Parsed::NotStored(_) | Parsed::OutsideRoot => {}
    }
});
