//! Persistence against a real lake directory, where a fault after the commit used to lose data.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use twinlake_model::Table;
use twinlake_wal::RecordId;

use crate::test_rows::measurements;
use crate::{Lake, LakeConfig, LiveTables, PersistSettings, Persister, StoreMetrics};

async fn persister(dir: &std::path::Path) -> (Persister, Arc<LiveTables>) {
    let lake = Lake::open(LakeConfig::local(dir).unwrap()).await.unwrap();
    start(lake).await
}

async fn start(lake: Lake) -> (Persister, Arc<LiveTables>) {
    let live = Arc::new(LiveTables::new());
    let (persister, _) = Persister::start(
        Arc::new(lake),
        Arc::clone(&live),
        PersistSettings::default(),
        StoreMetrics::new(&mut Registry::default()),
    )
    .await
    .unwrap();
    (persister, live)
}

/// Every file the table's current version references is on disk.
fn missing_files(dir: &std::path::Path, live: &LiveTables, table: Table) -> Vec<String> {
    live.files(table)
        .iter()
        .filter(|file| !dir.join(&file.path).exists())
        .map(|file| file.path.clone())
        .collect()
}

#[tokio::test]
async fn a_failed_checkpoint_after_the_commit_keeps_the_committed_files() {
    let dir = tempfile::tempdir().unwrap();
    let (persister, live) = persister(dir.path()).await;
    // Delta writes a checkpoint after every 100th version (version 99 first). Make that write
    // fail: a directory stands where the checkpoint file goes.
    let log = dir.path().join("measurements/_delta_log");
    std::fs::create_dir_all(log.join("00000000000000000099.checkpoint.parquet")).unwrap();
    for n in 0..99_i64 {
        let payload = format!("{{\"t\":{n}}}");
        let rows = measurements(&[("device/main//", payload.as_str(), 1_700_000_000 + n)]);
        live.append(Table::Measurements, rows, RecordId(n as u64))
            .unwrap();
        let persisted = persister.persist_table(Table::Measurements).await;
        // The commit of version 99 happened: its post-commit failure must not undo it.
        assert_eq!(persisted.unwrap(), 1, "persist {n}");
    }
    assert!(log.join("00000000000000000099.json").exists());
    assert_eq!(
        missing_files(dir.path(), &live, Table::Measurements),
        Vec::<String>::new()
    );
    let files = live.files(Table::Measurements);
    assert_eq!(files.iter().map(|file| file.rows).sum::<u64>(), 99);
    assert!(live.snapshot(Table::Measurements).batches.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_during_a_slow_upload_leaves_the_files_about_to_be_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut lake = Lake::open(LakeConfig::local(dir.path()).unwrap())
        .await
        .unwrap();
    lake.slow_uploads(Duration::from_secs(1));
    let (persister, live) = start(lake).await;
    let persister = Arc::new(persister);
    // Two days: two files, uploaded one after the other, then one commit.
    let rows = measurements(&[
        ("device/main//", "{\"t\":1}", 1_700_000_000),
        ("device/main//", "{\"t\":2}", 1_700_086_400),
    ]);
    live.append(Table::Measurements, rows, RecordId(1)).unwrap();
    let persist = tokio::spawn({
        let persister = Arc::clone(&persister);
        async move { persister.persist_table(Table::Measurements).await }
    });
    // While the second file waits to be uploaded the first is in the store, not yet
    // committed: a vacuum with no grace at all must still leave it.
    let day = dir.path().join("measurements/date=2023-11-14");
    while std::fs::read_dir(&day).map_or(0, Iterator::count) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let vacuumed = persister
        .vacuum(Table::Measurements, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(persist.await.unwrap().unwrap(), 2);
    assert_eq!(vacuumed, 0);
    assert_eq!(
        missing_files(dir.path(), &live, Table::Measurements),
        Vec::<String>::new()
    );
    assert_eq!(live.files(Table::Measurements).len(), 2);
}

/// A lake whose tables were written with other columns (before the fleet model: no `gateway`)
/// is refused with a message that says so, never read as if it were this version's.
#[tokio::test]
async fn a_lake_of_other_columns_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let url = LakeConfig::local(dir.path())
        .unwrap()
        .url
        .join("measurements/")
        .unwrap();
    let old_columns = ["time", "entity", "type", "series", "value"].map(|name| {
        let data_type = match name {
            "time" => deltalake::kernel::DataType::TIMESTAMP,
            "value" => deltalake::kernel::DataType::DOUBLE,
            _ => deltalake::kernel::DataType::STRING,
        };
        deltalake::kernel::StructField::new(name, data_type, false)
    });
    std::fs::create_dir_all(dir.path().join("measurements")).unwrap();
    deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns(old_columns)
        .await
        .unwrap();
    let error = Lake::open(LakeConfig::local(dir.path()).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("measurements"), "{error}");
    assert!(
        error.contains("(time, entity, type, series, value)"),
        "{error}"
    );
    assert!(error.contains("gateway"), "{error}");
}
