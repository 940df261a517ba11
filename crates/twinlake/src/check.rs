//! `twinlake check`: what one thin-edge message becomes, without a server.

use std::io::Read;
use std::process::ExitCode;

use twinlake_model::{FleetTopics, Parsed, TableBuilders, Timestamp, TopicRoot, parse_message};

use crate::print_out;

pub(crate) fn check(
    topic: &str,
    payload: Option<&str>,
    root: &str,
    received_at: Option<&str>,
) -> Result<ExitCode, String> {
    let root = TopicRoot::new(root).map_err(|e| e.to_string())?;
    let defaults = FleetTopics::default();
    let topics = FleetTopics::new(defaults.prefix(), root, defaults.default_gateway().clone())
        .map_err(|e| e.to_string())?;
    let received_at = match received_at {
        Some(text) => Timestamp::parse_rfc3339(text).map_err(|e| format!("--received-at: {e}"))?,
        None => Timestamp::now(),
    };
    let payload = match payload {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| format!("reading the payload from standard input: {e}"))?;
            bytes
        }
        Some(text) => text.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let mut builders = TableBuilders::new();
    let code = match parse_message(&topics, topic.as_bytes(), &payload, received_at) {
        Parsed::Data(message) => {
            builders.append(&message);
            ExitCode::SUCCESS
        }
        Parsed::Rejected(rejection) => {
            print_out(&format!(
                "rejected ({}): {}\n",
                rejection.reason.code(),
                rejection.reason
            ));
            builders.append_rejection(&rejection);
            ExitCode::from(1)
        }
        Parsed::NotStored(kind) => {
            print_out(&format!(
                "valid thin-edge message ({}), not stored by Twinlake\n",
                kind.as_str()
            ));
            return Ok(ExitCode::SUCCESS);
        }
        Parsed::OutsideRoot => {
            print_out(&format!(
                "not a thin-edge message: the topic is not under '{}/' or '{}/<gateway>/{}/'\n",
                topics.root().as_str(),
                topics.prefix(),
                topics.root().as_str()
            ));
            return Ok(ExitCode::SUCCESS);
        }
    };
    for (table, batch) in builders.finish().map_err(|e| e.to_string())? {
        let rendered =
            arrow_cast::pretty::pretty_format_batches(&[batch]).map_err(|e| e.to_string())?;
        print_out(&format!("{table}:\n{rendered}\n"));
    }
    Ok(code)
}
