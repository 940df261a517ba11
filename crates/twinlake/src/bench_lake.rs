//! `twinlake bench lake`: persistence, compaction and pruning on simulated fleet data.
//!
//! The fleet of `twinlake simulate` (same seed, same messages) is parsed by the ingest parser
//! and handed to the store in rounds, without MQTT, so that the figures are the store's own:
//! persist throughput (sort, encode, write, commit), stored bytes per numeric value, compaction
//! throughput, and the time of a query over one depot's trucks (1% of them) next to a
//! full scan of the same data, before compaction (every file holds every entity) and after
//! (files hold entity ranges, so the roaring bitmaps skip most of them).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use prometheus_client::registry::Registry;
use twinlake_model::{
    EntityTopicId, FleetTopics, Gateway, Parsed, Table, TableBuilders, Timestamp,
    main_device_registration, parse_message,
};
use twinlake_query::{QueryEngine, QueryLimits};
use twinlake_store::{
    CompactionSettings, Lake, LakeConfig, LiveTables, PersistSettings, Persister, StoreMetrics,
};
use twinlake_wal::RecordId;

use crate::simulate::{Fleet, Outgoing, SimulateArgs};

#[derive(Debug, Args)]
pub(crate) struct LakeBenchArgs {
    /// Trucks in the fleet (each with 2 sensors, a probe and 2 services), 5 per depot.
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Rounds of readings (one message per truck and sensor per round, 10 s apart).
    #[arg(long, default_value_t = 2_000)]
    rounds: u64,
    /// Rounds held in memory between persists.
    #[arg(long, default_value_t = 200)]
    rounds_per_persist: u64,
    /// Compaction's target file size: small here so that this data set spans many files, as
    /// a day of a large fleet spans many 256 MB files.
    #[arg(long, default_value = "2MiB", value_parser = crate::units::parse_bytes)]
    target_file_bytes: u64,
    /// Timed runs of each query (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Where the lake is written [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A lake filled with a simulated fleet, as `twinlake simulate --seed 1` would publish it,
/// parsed by the ingest parser and persisted every `rounds_per_persist` rounds.
pub(crate) struct FleetLake {
    pub(crate) lake: Arc<Lake>,
    pub(crate) live: Arc<LiveTables>,
    pub(crate) persister: Persister,
    pub(crate) messages: u64,
    pub(crate) persisted_rows: usize,
    pub(crate) persist_time: Duration,
}

/// The shape of the simulated data: `rounds` rounds of every truck, `step` apart from `start`.
pub(crate) struct FleetShape<'a> {
    pub(crate) devices: usize,
    pub(crate) rounds: u64,
    pub(crate) step: Duration,
    pub(crate) start: &'a str,
    pub(crate) rounds_per_persist: u64,
    /// `twinlake simulate --late`: chance per truck and round of going offline for a while.
    pub(crate) late: f64,
    /// `twinlake simulate --missing`: chance that a value is missing from a reading.
    pub(crate) missing: f64,
}

pub(crate) async fn fleet_lake(
    dir: &std::path::Path,
    shape: &FleetShape<'_>,
) -> Result<FleetLake, String> {
    let lake = Arc::new(
        Lake::open(LakeConfig::local(&dir.join("lake")).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?,
    );
    let live = Arc::new(LiveTables::new());
    let mut registry = Registry::default();
    let settings = PersistSettings {
        max_rows: usize::MAX,
        max_bytes: usize::MAX,
        max_age: Duration::MAX,
        ..PersistSettings::default()
    };
    let (persister, _) = Persister::start(
        Arc::clone(&lake),
        Arc::clone(&live),
        settings,
        StoreMetrics::new(&mut registry),
    )
    .await
    .map_err(|e| e.to_string())?;

    let fleet_args = SimulateArgs::parse_options(&[
        "--gateways",
        &shape.devices.to_string(),
        "--seed",
        "1",
        "--late",
        &shape.late.to_string(),
        "--missing",
        &shape.missing.to_string(),
        // The benchmark's data stays what earlier runs measured.
        "--service-alarms",
        "0",
    ])?;
    let mut fleet = Fleet::new(&fleet_args);
    let start = Timestamp::parse_rfc3339(shape.start).map_err(|e| e.to_string())?;
    let step = shape.step.as_nanos() as i64;
    let mut ingest = FleetIngest::default();
    let mut builders = TableBuilders::new();
    let mut record = 0u64;
    let mut filled = FleetLake {
        lake,
        live,
        persister,
        messages: 0,
        persisted_rows: 0,
        persist_time: Duration::ZERO,
    };
    let mut setup = fleet.registrations();
    setup.extend(fleet.initial_health(start));
    ingest.add(&mut builders, setup, start, &mut filled.messages);
    for round in 0..shape.rounds {
        let at = Timestamp::from_unix_nanos(start.unix_nanos() + round as i64 * step);
        let last = round + 1 == shape.rounds;
        let mut messages = fleet.round(at, shape.step.as_secs_f64());
        if last {
            messages.extend(fleet.backlogs());
        }
        ingest.add(&mut builders, messages, at, &mut filled.messages);
        if (round + 1) % shape.rounds_per_persist == 0 || last {
            record += 1;
            for (table, batch) in builders.finish().map_err(|e| e.to_string())? {
                filled
                    .live
                    .append(table, batch, RecordId(record))
                    .map_err(|e| e.to_string())?;
            }
            let began = Instant::now();
            for table in Table::ALL {
                filled.persisted_rows += filled
                    .persister
                    .persist_table(table)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            filled.persist_time += began.elapsed();
        }
    }
    Ok(filled)
}

pub(crate) async fn lake(args: LakeBenchArgs) -> Result<(), String> {
    let temporary = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_owned());
    let FleetLake {
        lake,
        live,
        persister,
        messages,
        persisted_rows,
        persist_time,
    } = fleet_lake(
        &dir,
        &FleetShape {
            devices: args.devices,
            rounds: args.rounds,
            step: Duration::from_secs(10),
            start: "2026-01-05T00:00:00Z",
            rounds_per_persist: args.rounds_per_persist,
            late: 0.0,
            missing: 0.0,
        },
    )
    .await?;
    let values = total_rows(&live, Table::Measurements);
    let bytes = total_bytes(&live, Table::Measurements);
    let lake_bytes: u64 = Table::ALL.into_iter().map(|t| total_bytes(&live, t)).sum();
    let files_before = live.files(Table::Measurements).len();

    let engine = QueryEngine::new(Arc::clone(&live), lake.store(), QueryLimits::default())
        .await
        .map_err(|e| e.to_string())?;
    let subtree = depot_subtree(&engine).await?;
    let before = time_queries(&engine, &subtree, args.repeats).await?;

    let compaction = CompactionSettings {
        target_file_bytes: args.target_file_bytes,
        min_files: 2,
        max_input_rows: u64::MAX,
        retention_days: Vec::new(),
        ..CompactionSettings::default()
    };
    let began = Instant::now();
    let report = persister
        .upkeep(&compaction)
        .await
        .map_err(|e| e.to_string())?;
    let compaction_time = began.elapsed();
    let files_after = live.files(Table::Measurements).len();
    let bytes_after = total_bytes(&live, Table::Measurements);
    let after = time_queries(&engine, &subtree, args.repeats).await?;
    if !same_answer(&before.full_answer, &after.full_answer)
        || !same_answer(&before.subtree_answer, &after.subtree_answer)
    {
        return Err(format!(
            "compaction changed query answers: {before:?} vs {after:?}"
        ));
    }

    let seconds = |d: Duration| d.as_secs_f64();
    println!(
        "## twinlake bench lake: {} trucks, {} rounds, {messages} messages\n",
        args.devices, args.rounds
    );
    println!("| figure | value |\n|---|---|");
    println!("| numeric values (measurement rows) | {values} |");
    println!(
        "| stored bytes per value (measurements, zstd Parquet): after persist / after compaction | {:.2} / {:.2} |",
        bytes as f64 / values.max(1) as f64,
        bytes_after as f64 / values.max(1) as f64
    );
    println!(
        "| lake size, all tables | {:.1} MiB |",
        lake_bytes as f64 / 1048576.0
    );
    println!(
        "| persist throughput (sort, encode, write, commit; all tables) | {:.0} rows/s |",
        persisted_rows as f64 / seconds(persist_time)
    );
    println!(
        "| compaction: {} files merged into {} (measurements: {files_before} → {files_after}) | {:.1} s, {:.0} rows/s, {:.1} MiB/s |",
        report.files_merged,
        report.files_written,
        seconds(compaction_time),
        persisted_rows as f64 / seconds(compaction_time),
        lake_bytes as f64 / 1048576.0 / seconds(compaction_time)
    );
    println!(
        "| subtree = one depot: {} of {} entities | {:.1}% |",
        subtree.len(),
        before.entities,
        100.0 * subtree.len() as f64 / before.entities.max(1) as f64
    );
    for (label, timing) in [("before compaction", &before), ("after compaction", &after)] {
        println!(
            "| {label}: subtree by full scan / with pruning (median of {}) | {:.1} ms / {:.1} ms = {:.1}× |",
            args.repeats,
            timing.full.as_secs_f64() * 1e3,
            timing.subtree.as_secs_f64() * 1e3,
            timing.full.as_secs_f64() / timing.subtree.as_secs_f64()
        );
    }
    Ok(())
}

/// Same count, and sums equal up to floating-point summation order.
fn same_answer(a: &[String], b: &[String]) -> bool {
    let parse = |answer: &[String]| -> Option<(i64, f64)> {
        let (count, sum) = answer.first()?.split_once(' ')?;
        Some((count.parse().ok()?, sum.parse().ok()?))
    };
    match (parse(a), parse(b)) {
        (Some((n1, s1)), Some((n2, s2))) => n1 == n2 && (s1 - s2).abs() <= 1e-9 * s1.abs().max(1.0),
        _ => false,
    }
}

/// Messages parsed as ingest parses them, with what ingest adds: each gateway's main device
/// registered at the gateway's first message.
#[derive(Default)]
struct FleetIngest {
    topics: FleetTopics,
    gateways: std::collections::HashSet<Gateway>,
}

impl FleetIngest {
    fn add(
        &mut self,
        builders: &mut TableBuilders,
        messages: Vec<Outgoing>,
        at: Timestamp,
        count: &mut u64,
    ) {
        for message in messages {
            *count += 1;
            let topic = message.topic.as_bytes();
            let Parsed::Data(parsed) =
                parse_message(&self.topics, topic, message.payload.as_bytes(), at)
            else {
                continue;
            };
            if self.gateways.insert(parsed.gateway.clone()) {
                let main = EntityTopicId::main_device();
                let registration = main_device_registration(&parsed.gateway, at);
                builders.append_entity_change(&parsed.gateway, &main, &registration);
            }
            builders.append(&parsed);
        }
    }
}

fn total_rows(live: &LiveTables, table: Table) -> u64 {
    live.files(table).iter().map(|f| f.rows).sum()
}

fn total_bytes(live: &LiveTables, table: Table) -> u64 {
    live.files(table).iter().map(|f| f.size).sum()
}

/// The entities of depot 1's trucks: every entity of the gateways whose `depot` is depot01.
async fn depot_subtree(engine: &QueryEngine) -> Result<Vec<String>, String> {
    rows_of(
        engine,
        "SELECT DISTINCT m.entity FROM measurements m \
         JOIN twin d ON d.entity = m.gateway AND d.fragment = 'depot' \
         WHERE d.value = '\"depot01\"' ORDER BY m.entity",
    )
    .await
}

pub(crate) async fn rows_of(engine: &QueryEngine, sql: &str) -> Result<Vec<String>, String> {
    let output = engine.execute(sql).await.map_err(|e| e.to_string())?;
    let mut values = Vec::new();
    for batch in &output.batches {
        let column = arrow_cast::display::ArrayFormatter::try_new(
            batch.column(0).as_ref(),
            &arrow_cast::display::FormatOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            values.push(column.value(row).to_string());
        }
    }
    Ok(values)
}

#[derive(Debug)]
struct Timing {
    full: Duration,
    subtree: Duration,
    full_answer: Vec<String>,
    subtree_answer: Vec<String>,
    entities: usize,
}

async fn time_queries(
    engine: &QueryEngine,
    subtree: &[String],
    repeats: usize,
) -> Result<Timing, String> {
    let list = subtree
        .iter()
        .map(|e| format!("'{e}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let full_sql = "SELECT count(*) || ' ' || sum(value) FROM measurements";
    let subtree_sql =
        format!("SELECT count(*) || ' ' || sum(value) FROM measurements WHERE entity IN ({list})");
    let (full, full_answer) = median_time(engine, full_sql, repeats).await?;
    let (subtree_time, subtree_answer) = median_time(engine, &subtree_sql, repeats).await?;
    let entities = rows_of(engine, "SELECT count(DISTINCT entity) FROM measurements")
        .await?
        .first()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Timing {
        full,
        subtree: subtree_time,
        full_answer,
        subtree_answer,
        entities,
    })
}

pub(crate) async fn median_time(
    engine: &QueryEngine,
    sql: &str,
    repeats: usize,
) -> Result<(Duration, Vec<String>), String> {
    let mut times = Vec::new();
    let mut answer = Vec::new();
    for _ in 0..repeats.max(1) {
        let began = Instant::now();
        answer = rows_of(engine, sql).await?;
        times.push(began.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], answer))
}
