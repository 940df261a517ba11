//! `twinlake bench queries`: the twin in SQL on a fleet's history: `latest` lookups, a
//! full-history join of every measurement to the hierarchy as it was at its time, and each
//! `queries/*.sql` example, on a lake filled and compacted as a running server would.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use twinlake_model::Table;
use twinlake_query::{QueryEngine, QueryLimits};
use twinlake_store::CompactionSettings;

use crate::bench::{percentile, write_json};
use crate::bench_lake::{FleetLake, FleetShape, fleet_lake, median_time, rows_of};

#[derive(Debug, Args)]
pub(crate) struct QueriesBenchArgs {
    /// Trucks in the fleet (each with 2 sensors, a probe and 2 services; 23 values a round).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// One-minute rounds from 2026-11-01 (4,350 rounds of 100 trucks: 10 M values, 3 days).
    #[arg(long, default_value_t = 4_350)]
    rounds: u64,
    /// Rounds held in memory between persists.
    #[arg(long, default_value_t = 500)]
    rounds_per_persist: u64,
    /// Chance per truck and round of losing the link for 10–120 rounds and sending the
    /// readings late (`twinlake simulate --late`): out-of-order data, as TSBS has.
    #[arg(long, default_value_t = 0.001)]
    late: f64,
    /// Chance that a value is missing from a reading (`twinlake simulate --missing`).
    #[arg(long, default_value_t = 0.01)]
    missing: f64,
    /// Timed runs of each query (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// `latest` lookups timed, one truck each.
    #[arg(long, default_value_t = 200)]
    lookups: usize,
    /// Compaction's target file size: small, so that this history spans many files as a large
    /// fleet's spans many 256 MB files, and subtree pruning has something to skip.
    #[arg(long, default_value = "1MiB", value_parser = crate::units::parse_bytes)]
    target_file_bytes: u64,
    /// The directory of `*.sql` examples.
    #[arg(long, default_value = "queries")]
    queries: PathBuf,
    /// Where the lake is written and kept [default: a temporary directory, removed after].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write each query's result here as `<name>.csv`, for comparison with other engines.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Also write the figures to this file as JSON (for `benches/run.sh`).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Every measurement joined to the version of its entity valid at its time.
const AS_OF_JOIN: &str = "SELECT h.parent, count(*) AS readings, avg(m.value) AS mean \
     FROM measurements m JOIN entity_history h ON m.entity = h.entity \
      AND m.time >= h.valid_from AND (h.valid_to IS NULL OR m.time < h.valid_to) \
     GROUP BY h.parent ORDER BY h.parent";

/// The same question against the current hierarchy only.
const CURRENT_JOIN: &str = "SELECT e.parent, count(*) AS readings, avg(m.value) AS mean \
     FROM measurements m JOIN entities e ON m.entity = e.entity \
     GROUP BY e.parent ORDER BY e.parent";

const FULL_SCAN: &str = "SELECT count(*), avg(value) FROM measurements";

/// One truck's subtree (the gateway and its devices) as it was at each reading's time: files
/// without its entities are skipped.
const SUBTREE: &str = "SELECT count(*), avg(value) FROM measurements \
     WHERE in_subtree(entity, 'truck0001', time)";

pub(crate) async fn queries(args: QueriesBenchArgs) -> Result<(), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.queries)
        .map_err(|e| format!("{}: {e}", args.queries.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let temporary = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_owned());
    let began = Instant::now();
    let FleetLake {
        lake,
        live,
        persister,
        messages,
        ..
    } = fleet_lake(
        &dir,
        &FleetShape {
            devices: args.devices,
            rounds: args.rounds,
            step: Duration::from_secs(60),
            start: "2026-11-01T00:00:00Z",
            rounds_per_persist: args.rounds_per_persist,
            late: args.late,
            missing: args.missing,
        },
    )
    .await?;
    let built = began.elapsed();
    let began = Instant::now();
    persister
        .upkeep(&CompactionSettings {
            target_file_bytes: args.target_file_bytes,
            retention_days: Vec::new(),
            ..CompactionSettings::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let compacted = began.elapsed();
    let lake_files = live.files(Table::Measurements).len();
    let engine = QueryEngine::new(live, lake.store(), QueryLimits::default())
        .await
        .map_err(|e| e.to_string())?;
    let values: u64 = first(&engine, "SELECT count(*) FROM measurements")
        .await?
        .parse()
        .map_err(|e| format!("counting values: {e}"))?;

    let began = Instant::now();
    let series = engine
        .load_latest_from_history()
        .await
        .map_err(|e| e.to_string())?;
    let latest_load = began.elapsed();
    let lookups = time_latest_lookups(&engine, args.devices, args.lookups).await?;

    println!(
        "## twinlake bench queries: {} trucks, {} one-minute rounds, {messages} messages, {values} values\n",
        args.devices, args.rounds
    );
    println!(
        "Lake built in {:.0} s, compacted in {:.0} s into {lake_files} `measurements` files.\n",
        built.as_secs_f64(),
        compacted.as_secs_f64()
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| `latest` filled from history at start ({series} series) | {:.0} ms |",
        ms(latest_load)
    );
    println!(
        "| `latest` lookup of one truck's series ({} lookups): p50 / p99 | {:.2} ms / {:.2} ms |",
        lookups.len(),
        ms(percentile(&lookups, 0.5)),
        ms(percentile(&lookups, 0.99))
    );
    let mut figures = serde_json::json!({
        "trucks": args.devices,
        "rounds": args.rounds,
        "messages": messages,
        "values": values,
        "build_seconds": built.as_secs_f64(),
        "compaction_seconds": compacted.as_secs_f64(),
        "measurement_files": lake_files,
        "latest_fill_ms": ms(latest_load),
        "latest_lookup_p50_ms": ms(percentile(&lookups, 0.5)),
        "latest_lookup_p99_ms": ms(percentile(&lookups, 0.99)),
    });
    let timed: [(&str, &str, &str); 4] = [
        (
            "full_scan_ms",
            "full scan: count and mean of every value",
            FULL_SCAN,
        ),
        (
            "subtree_ms",
            "the same over truck0001's subtree (the gateway and its devices), in_subtree with the row's time",
            SUBTREE,
        ),
        (
            "current_join_ms",
            "every value joined to its entity's current parent",
            CURRENT_JOIN,
        ),
        (
            "as_of_join_ms",
            "every value joined to the hierarchy as of its time (entity_history)",
            AS_OF_JOIN,
        ),
    ];
    for (key, label, sql) in timed {
        let (time, _) = median_time(&engine, sql, args.repeats).await?;
        println!(
            "| {label} (median of {}) | {:.0} ms |",
            args.repeats,
            ms(time)
        );
        figures[key] = ms(time).into();
    }
    println!(
        "\n| query | rows | median of {} |\n|---|---|---|",
        args.repeats
    );
    let mut query_figures = serde_json::Map::new();
    for file in &files {
        let sql = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let (time, _) = median_time(&engine, &sql, args.repeats).await?;
        let output = engine.execute(&sql).await.map_err(|e| e.to_string())?;
        let rows: usize = output.batches.iter().map(|b| b.num_rows()).sum();
        let name = file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("| `{name}.sql` | {rows} | {:.0} ms |", ms(time));
        query_figures.insert(
            name.clone(),
            serde_json::json!({"rows": rows, "median_ms": ms(time)}),
        );
        if let Some(results) = &args.results {
            write_csv(&results.join(format!("{name}.csv")), &output.batches)?;
        }
    }
    figures["queries"] = query_figures.into();
    write_json(args.json.as_ref(), &figures)
}

fn write_csv(path: &std::path::Path, batches: &[arrow_array::RecordBatch]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut writer = arrow_csv::Writer::new(file);
    for batch in batches {
        writer.write(batch).map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn first(engine: &QueryEngine, sql: &str) -> Result<String, String> {
    rows_of(engine, sql)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{sql}: no rows"))
}

/// Times `count` lookups of one truck's newest values each, trucks in turn.
async fn time_latest_lookups(
    engine: &QueryEngine,
    trucks: usize,
    count: usize,
) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(count);
    for lookup in 0..count {
        let truck = lookup % trucks.max(1) + 1;
        let sql =
            format!("SELECT series, value, time FROM latest WHERE entity = 'truck{truck:04}'");
        let began = Instant::now();
        let rows = rows_of(engine, &sql).await?;
        times.push(began.elapsed());
        if rows.len() != 10 {
            return Err(format!("{sql}: {} series, not 10", rows.len()));
        }
    }
    times.sort();
    Ok(times)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}
