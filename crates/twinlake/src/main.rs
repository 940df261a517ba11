//! The `twinlake` command: the CLI over the crates, holding no logic of its own.

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use twinlake_model::{Parsed, TableBuilders, Timestamp, TopicRoot, parse_message};

#[derive(Debug, Parser)]
#[command(
    name = "twinlake",
    version,
    about = "Twinlake: the store for thin-edge.io digital-twin telemetry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the rows one thin-edge MQTT message becomes, or why Twinlake rejects it.
    ///
    /// Exits with 0 when the message becomes data or is valid traffic Twinlake does not keep,
    /// and 1 when it would land in `rejected`.
    Check {
        /// The MQTT topic, e.g. 'te/device/main///m/environment'.
        topic: String,
        /// The payload; '-' reads it from standard input; leave it out for an empty payload.
        payload: Option<String>,
        /// The first topic segment thin-edge uses (its `mqtt.topic_root`).
        #[arg(long, env = "TWINLAKE_TOPIC_ROOT", default_value = "te")]
        topic_root: String,
        /// The receive time to use where the payload has no `time` (RFC 3339); default: now.
        #[arg(long)]
        received_at: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            topic,
            payload,
            topic_root,
            received_at,
        } => match check(
            &topic,
            payload.as_deref(),
            &topic_root,
            received_at.as_deref(),
        ) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
    }
}

fn check(
    topic: &str,
    payload: Option<&str>,
    root: &str,
    received_at: Option<&str>,
) -> Result<ExitCode, String> {
    let root = TopicRoot::new(root).map_err(|e| e.to_string())?;
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
    let code = match parse_message(&root, topic.as_bytes(), &payload, received_at) {
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
                "not a thin-edge message: the topic is not under '{}/'\n",
                root.as_str()
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

/// Prints to standard output; a reader that went away (`twinlake check … | head`) ends the
/// output quietly instead of panicking.
fn print_out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(text.as_bytes())
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing to standard output: {error}");
    }
}
