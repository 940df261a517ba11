//! The `twinlake` command: the CLI over the crates, holding no logic of its own.

mod bench;
mod bench_lake;
mod bench_queries;
mod check;
mod demo;
mod export;
mod passwd;
mod query;
mod serve;
mod simulate;
mod units;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Run Twinlake: MQTT ingest (its own endpoint by default), the WAL, and SQL over HTTP and
    /// the PostgreSQL wire protocol.
    Serve(serve::ServeArgs),
    /// Compact the lake now: merge small files, apply retention, vacuum (run while serve is stopped).
    Compact(serve::ServeOptions),
    /// Run SQL against a running Twinlake and print the result.
    Query(query::QueryArgs),
    /// Export a slice of the fleet's history as a Parquet dataset, with each row's place in the
    /// hierarchy and its twin as they were at its time (the server writes it).
    Export(export::ExportArgs),
    /// Publish a simulated fleet of thin-edge devices: the demo and the load generator.
    Simulate(simulate::SimulateArgs),
    /// Benchmarks that start their own broker and server (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Add or change a user of a password file, the MQTT endpoint's or the query surfaces' (the
    /// password is read from standard input, one line).
    Passwd {
        /// The password file (created when missing).
        file: std::path::PathBuf,
        /// The user: on the MQTT endpoint a gateway id, whose topics it may then publish.
        user: String,
        /// May publish for every gateway (an upstream broker forwarding a fleet).
        #[arg(long)]
        relay: bool,
        /// Store a SCRAM-SHA-256 verifier (PostgreSQL's format) instead of an argon2 hash: what
        /// a user of the query password file needs to sign in on the PostgreSQL port without
        /// TLS; it checks passwords over HTTP as well.
        #[arg(long)]
        scram: bool,
    },
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
    let outcome = match cli.command {
        Command::Check {
            topic,
            payload,
            topic_root,
            received_at,
        } => check::check(
            &topic,
            payload.as_deref(),
            &topic_root,
            received_at.as_deref(),
        ),
        Command::Serve(args) => run_async(serve::serve(args)).map(|()| ExitCode::SUCCESS),
        Command::Compact(options) => run_async(serve::compact(options)).map(|()| ExitCode::SUCCESS),
        Command::Query(args) => run_async(query::query(args)).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => run_async(export::export(args)).map(|()| ExitCode::SUCCESS),
        Command::Simulate(args) => run_async(simulate::simulate(args)).map(|()| ExitCode::SUCCESS),
        Command::Bench(command) => run_async(bench::bench(command)).map(|()| ExitCode::SUCCESS),
        Command::Passwd {
            file,
            user,
            relay,
            scram,
        } => passwd::passwd(&file, &user, relay, scram).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command on a multi-threaded runtime, with logs on standard error (`RUST_LOG` filters
/// them; default `info`).
fn run_async<F: std::future::Future<Output = Result<(), String>>>(
    command: F,
) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // The Delta kernel logs an error for every table it opens before creating it; Twinlake
        // reports the failures that matter itself.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,deltalake_core=warn,buoyant_kernel=off")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?
        .block_on(command)
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// The `command:` list of the `twinlake` service in docker-compose.yml.
    fn compose_command() -> Vec<String> {
        let compose = include_str!("../../../docker-compose.yml");
        let service = compose
            .split("\n  twinlake:\n")
            .nth(1)
            .expect("docker-compose.yml has a twinlake service");
        let command = service
            .split("\n    command:\n")
            .nth(1)
            .expect("the twinlake service has a command list");
        command
            .lines()
            .map_while(|line| line.trim_start().strip_prefix("- "))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_compose_files_serve_command_is_one_twinlake_accepts() {
        let command = compose_command();
        assert_eq!(command.first().map(String::as_str), Some("serve"));
        let arguments = std::iter::once("twinlake".to_owned()).chain(command);
        if let Err(error) = Cli::try_parse_from(arguments) {
            panic!("docker-compose.yml runs a command twinlake refuses: {error}");
        }
    }
}
