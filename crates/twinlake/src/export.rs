//! `twinlake export`: asks a running server for an export and follows it to its end with a
//! progress bar (plain lines when standard error is not a terminal). Ctrl-C cancels it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::Value;
use twinlake_server::ExportRequest;

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Tables to export, comma-separated [default: measurements,events,alarms].
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Start: RFC 3339, a date (2026-11-01), now, or before now (-7d, -12h, -30m).
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End (exclusive), as --from [default: everything up to now].
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Only this gateway's rows (repeatable).
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// Only rows of this entity and of those below it at the row's time.
    #[arg(long)]
    subtree: Option<String>,
    /// Only these measurement series, comma-separated (other tables are not filtered).
    #[arg(long, value_delimiter = ',')]
    series: Vec<String>,
    /// Any read-only query instead of the selection flags.
    #[arg(long)]
    sql: Option<String>,
    /// Twin fragments added to each row as of its time, comma-separated (e.g. depot,firmware).
    #[arg(long, value_delimiter = ',')]
    twin: Vec<String>,
    /// Where the dataset goes: a directory (on the server's machine) or s3://bucket/prefix.
    #[arg(long)]
    out: String,
    /// One file per table instead of <table>/date=YYYY-MM-DD/part-NNNNN.parquet.
    #[arg(long)]
    single_file: bool,
    /// Replace an earlier export at --out.
    #[arg(long)]
    overwrite: bool,
    /// Start the export, print its id and return without waiting.
    #[arg(long)]
    detach: bool,
    /// The Twinlake server (with user:password@ when it has users).
    #[arg(long, env = "TWINLAKE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

const POLL: Duration = Duration::from_millis(250);

pub(crate) async fn export(args: ExportArgs) -> Result<(), String> {
    let out = if args.out.starts_with("s3://") {
        args.out.clone()
    } else {
        let path =
            std::path::absolute(&args.out).map_err(|e| format!("--out {}: {e}", args.out))?;
        path.display().to_string()
    };
    let request = ExportRequest {
        tables: args.tables,
        from: args.from,
        to: args.to,
        gateways: args.gateways,
        subtree: args.subtree,
        series: args.series,
        sql: args.sql,
        twin: args.twin,
        out,
        single_file: args.single_file,
        overwrite: args.overwrite,
    };
    let client = reqwest::Client::new();
    let base = format!("{}/api/v1/export", args.url.trim_end_matches('/'));
    let started = call(client.post(&base).json(&request), &args.url).await?;
    let id = text(&started, "id");
    if args.detach {
        crate::print_out(&format!("{id}\n"));
        return Ok(());
    }
    let job = format!("{base}/{id}");
    let progress = Progress::new(&started);
    let began = Instant::now();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut cancelling = false;
    let status = loop {
        let status = call(client.get(&job), &args.url).await?;
        progress.show(&status, began);
        if text(&status, "state") != "running" {
            break status;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted, if !cancelling => {
                cancelling = true;
                progress.note("cancelling: the export removes what it wrote");
                call(client.delete(&job), &args.url).await?;
            }
        }
    };
    progress.finish();
    let summary = format!(
        "{} rows in {} files ({}) to {} in {:.1} s",
        number(&status, "rows"),
        number(&status, "files"),
        HumanBytes(number(&status, "bytes")),
        text(&status, "out"),
        began.elapsed().as_secs_f64()
    );
    match text(&status, "state").as_str() {
        "succeeded" => {
            crate::print_out(&format!(
                "exported {summary}\nmanifest: {}\n",
                text(&status, "manifest")
            ));
            Ok(())
        }
        "cancelled" => Err("the export was cancelled; it left no manifest".to_owned()),
        _ => Err(format!(
            "the export failed: {}; it left no manifest",
            text(&status, "error")
        )),
    }
}

async fn call(request: reqwest::RequestBuilder, url: &str) -> Result<Value, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach Twinlake at {url}: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("reading the answer ({status}): {e}"))?;
    if !status.is_success() {
        let message = body.get("error").and_then(Value::as_str).unwrap_or("");
        return Err(format!("{status}: {message}"));
    }
    Ok(body)
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn number(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// A bar on a terminal; a line every few seconds otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    last_line: std::cell::Cell<Option<Instant>>,
}

const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    fn new(started: &Value) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                last_line: std::cell::Cell::new(None),
            };
        }
        let total = started.get("rows_total").and_then(Value::as_u64);
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} rows, {msg}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {human_pos} rows, {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        Self {
            bar: Some(bar),
            last_line: std::cell::Cell::new(None),
        }
    }

    fn show(&self, status: &Value, began: Instant) {
        let (rows, bytes, files) = (
            number(status, "rows"),
            number(status, "bytes"),
            number(status, "files"),
        );
        if let Some(bar) = &self.bar {
            bar.set_position(rows);
            bar.set_message(format!("{} in {files} files", HumanBytes(bytes)));
            return;
        }
        let due = self
            .last_line
            .get()
            .is_none_or(|last| last.elapsed() >= PLAIN_EVERY);
        if due || text(status, "state") != "running" {
            self.last_line.set(Some(Instant::now()));
            let total = status
                .get("rows_total")
                .and_then(Value::as_u64)
                .map_or(String::new(), |t| format!(" of {t}"));
            eprintln!(
                "export {}: {rows}{total} rows, {files} files, {} after {:.0} s",
                text(status, "state"),
                HumanBytes(bytes),
                began.elapsed().as_secs_f64()
            );
        }
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
            // The bar's line stays; what follows starts on a line of its own.
            eprintln!();
        }
    }
}
