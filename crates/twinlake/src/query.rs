//! `twinlake query`: SQL against a running server, printed as a table, CSV or JSON.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PrintFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// The SQL to run.
    sql: String,
    /// The Twinlake server.
    #[arg(long, env = "TWINLAKE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    format: PrintFormat,
}

pub(crate) async fn query(args: QueryArgs) -> Result<(), String> {
    let wire_format = match args.format {
        PrintFormat::Table => "arrow",
        PrintFormat::Csv => "csv",
        PrintFormat::Json => "json",
    };
    let endpoint = format!("{}/api/v1/query", args.url.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&endpoint)
        .json(&serde_json::json!({ "sql": args.sql, "format": wire_format }))
        .send()
        .await
        .map_err(|e| format!("cannot reach Twinlake at {}: {e}", args.url))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{status}: {message}"));
    }
    let text = match args.format {
        PrintFormat::Table => table(&body)?,
        PrintFormat::Csv | PrintFormat::Json => String::from_utf8_lossy(&body).into_owned(),
    };
    crate::print_out(&text);
    if !text.ends_with('\n') {
        crate::print_out("\n");
    }
    Ok(())
}

fn table(arrow_stream: &[u8]) -> Result<String, String> {
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow_stream), None)
        .map_err(|e| format!("decoding the answer: {e}"))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("decoding the answer: {e}"))?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let rendered = if batches.is_empty() {
        arrow_cast::pretty::pretty_format_batches(&[arrow_array::RecordBatch::new_empty(schema)])
    } else {
        arrow_cast::pretty::pretty_format_batches(&batches)
    }
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "{rendered}\n({rows} row{})\n",
        if rows == 1 { "" } else { "s" }
    ))
}
