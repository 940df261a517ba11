//! The log against real files: round trips, group commit, rotation, truncation, and a torn
//! tail at every byte offset of the last record.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};

use crate::{RecordId, SyncMode, TableBatches, Wal, WalConfig, WalStats};

fn batch(values: &[i64]) -> RecordBatch {
    let ids: ArrayRef = Arc::new(Int64Array::from(values.to_vec()));
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(
        values.iter().map(|v| format!("row-{v}")),
    ));
    RecordBatch::try_from_iter([("id", ids), ("name", names)]).unwrap()
}

fn tables(values: &[i64]) -> TableBatches {
    vec![
        ("measurements".to_owned(), batch(values)),
        ("events".to_owned(), batch(&[values[0] * 10])),
    ]
}

fn config(dir: &std::path::Path) -> WalConfig {
    let mut config = WalConfig::new(dir);
    config.commit_window = Duration::from_millis(1);
    config
}

/// The oldest segment file in `dir`.
fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap()
}

/// Damages the last record of the oldest segment in `dir`, inside its compressed body.
fn flip_a_bit_in_the_last_record(dir: &std::path::Path) {
    let segment = first_segment(dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every value of the `id` columns of the replayed records, in order.
fn replayed_ids(dir: &std::path::Path) -> (Vec<i64>, crate::ReplayStats) {
    let (wal, replay) = Wal::open(config(dir)).unwrap();
    wal.close();
    let ids = replay
        .records
        .iter()
        .flat_map(|(_, tables)| tables.iter().filter(|(name, _)| name == "measurements"))
        .flat_map(|(_, batch)| {
            let column = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            column.values().to_vec()
        })
        .collect();
    (ids, replay.stats)
}

#[test]
fn appended_records_replay_in_order_with_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (wal, replay) = Wal::open(config(dir.path())).unwrap();
    assert!(replay.records.is_empty());
    let first = rt.block_on(wal.append(tables(&[1, 2, 3]))).unwrap();
    let second = rt.block_on(wal.append(tables(&[4]))).unwrap();
    assert_eq!(second, RecordId(first.0 + 1));
    wal.close();

    let (wal, replay) = Wal::open(config(dir.path())).unwrap();
    assert_eq!(replay.records.len(), 2);
    let (id, record) = &replay.records[0];
    assert_eq!(*id, first);
    assert_eq!(record, &tables(&[1, 2, 3]));
    assert_eq!(replay.records[1].1, tables(&[4]));
    // Ids continue after a reopen.
    assert_eq!(
        rt.block_on(wal.append(tables(&[5]))).unwrap(),
        RecordId(second.0 + 1)
    );
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = config(dir.path());
    config.commit_window = Duration::from_millis(20);
    let (wal, _) = Wal::open(config).unwrap();
    let wal = Arc::new(wal);
    let appends = 200;
    rt.block_on(async {
        let tasks: Vec<_> = (0..appends)
            .map(|i| {
                let wal = Arc::clone(&wal);
                tokio::spawn(async move { wal.append(tables(&[i])).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    let stats = wal.stats();
    let fsyncs = WalStats::get(&stats.fsyncs);
    assert_eq!(WalStats::get(&stats.appends), appends as u64);
    assert_eq!(WalStats::get(&stats.records_written), appends as u64);
    assert!(
        fsyncs < appends as u64 / 4,
        "{fsyncs} fsyncs for {appends} appends: no group commit"
    );
    wal.close();
    let (mut ids, _) = replayed_ids(dir.path());
    ids.sort_unstable();
    assert_eq!(ids, (0..appends).collect::<Vec<_>>());
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (wal, _) = Wal::open(config(dir.path())).unwrap();
    rt.block_on(wal.append(tables(&[1, 2]))).unwrap();
    rt.block_on(wal.append(tables(&[3]))).unwrap();
    let size_before_last = WalStats::get(&wal.stats().bytes);
    rt.block_on(wal.append(tables(&[4, 5, 6]))).unwrap();
    let size_after_last = WalStats::get(&wal.stats().bytes);
    wal.close();
    let segment = first_segment(dir.path());
    let whole = std::fs::read(&segment).unwrap();
    assert_eq!(whole.len() as u64, size_after_last);

    for cut in size_before_last..size_after_last {
        let case = tempfile::tempdir().unwrap();
        let path = case.path().join(segment.file_name().unwrap());
        std::fs::write(&path, &whole[..cut as usize]).unwrap();
        let (ids, stats) = replayed_ids(case.path());
        assert_eq!(ids, vec![1, 2, 3], "cut at {cut}");
        assert_eq!(stats.torn_bytes, cut - size_before_last, "cut at {cut}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            size_before_last,
            "tail truncated (cut at {cut})"
        );
        // The log goes on after the cut, and the next replay sees old and new records.
        let (wal, _) = Wal::open(config(case.path())).unwrap();
        rt.block_on(wal.append(tables(&[7]))).unwrap();
        wal.close();
        assert_eq!(
            replayed_ids(case.path()).0,
            vec![1, 2, 3, 7],
            "cut at {cut}"
        );
    }
}

#[test]
fn a_flipped_bit_in_the_last_record_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (wal, _) = Wal::open(config(dir.path())).unwrap();
    rt.block_on(wal.append(tables(&[1]))).unwrap();
    rt.block_on(wal.append(tables(&[2]))).unwrap();
    wal.close();
    flip_a_bit_in_the_last_record(dir.path());
    let (ids, stats) = replayed_ids(dir.path());
    assert_eq!(ids, vec![1]);
    assert!(stats.torn_bytes > 0);
}

/// A log of small (600-byte) segments holding 20 records, one row each; returns its config,
/// the open log and the record ids.
fn twenty_records_in_small_segments(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
) -> (WalConfig, Wal, Vec<RecordId>) {
    let mut config = config(dir);
    config.segment_bytes = 600;
    let (wal, _) = Wal::open(config.clone()).unwrap();
    let ids = (0..20)
        .map(|i| rt.block_on(wal.append(tables(&[i]))).unwrap())
        .collect();
    (config, wal, ids)
}

#[test]
fn segments_rotate_by_size_and_truncation_drops_whole_persisted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (config, wal, ids) = twenty_records_in_small_segments(dir.path(), &rt);
    let segments = WalStats::get(&wal.stats().segments);
    assert!(segments > 3, "{segments} segments");
    let removed = rt.block_on(wal.truncate_through(ids[9])).unwrap();
    assert!(removed > 0);
    wal.close();
    let (replayed, _) = replayed_ids(dir.path());
    // Everything after the truncation point is kept; only whole segments at or below it went.
    assert!(
        replayed.ends_with(&(10..20).collect::<Vec<_>>()),
        "{replayed:?}"
    );
    assert!(replayed.len() < 20, "{replayed:?}");
    // Truncating everything still keeps ids growing.
    let (wal, _) = Wal::open(config).unwrap();
    rt.block_on(wal.truncate_through(RecordId(u64::MAX)))
        .unwrap();
    let next = rt.block_on(wal.append(tables(&[99]))).unwrap();
    assert!(next > ids[19], "{next:?} after {:?}", ids[19]);
}

#[test]
fn sync_never_still_writes_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut config = config(dir.path());
    config.sync = SyncMode::Never;
    let (wal, _) = Wal::open(config).unwrap();
    rt.block_on(wal.append(tables(&[1]))).unwrap();
    assert_eq!(WalStats::get(&wal.stats().fsyncs), 0);
    wal.close();
    assert_eq!(replayed_ids(dir.path()).0, vec![1]);
}

#[test]
fn appends_after_close_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(config(dir.path())).unwrap();
    wal.close();
    let result = runtime().block_on(wal.append(tables(&[1])));
    assert!(matches!(result, Err(crate::WalError::Closed)), "{result:?}");
}

#[test]
fn a_new_log_continues_after_the_ids_the_lake_recorded() {
    // The WAL directory was replaced (a new container whose lake is on S3) while the lake says
    // it persisted records through 41: a new record must not reuse an id up to 41, or replay
    // would take it for a persisted one and skip it.
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut config = config(dir.path());
    config.ids_after = Some(RecordId(41));
    let (wal, _) = Wal::open(config.clone()).unwrap();
    assert_eq!(rt.block_on(wal.append(tables(&[1]))).unwrap(), RecordId(42));
    wal.close();
    // A floor below the log's own ids changes nothing.
    config.ids_after = Some(RecordId(3));
    let (wal, replay) = Wal::open(config).unwrap();
    assert_eq!(replay.records[0].0, RecordId(42));
    assert_eq!(rt.block_on(wal.append(tables(&[2]))).unwrap(), RecordId(43));
}

#[test]
fn ids_of_segments_set_aside_after_damage_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (config, wal, ids) = twenty_records_in_small_segments(dir.path(), &rt);
    wal.close();
    // Damage the first segment's last record: every later segment is set aside.
    flip_a_bit_in_the_last_record(dir.path());
    let (wal, replay) = Wal::open(config).unwrap();
    assert!(replay.stats.orphaned_segments > 0);
    let next = rt.block_on(wal.append(tables(&[99]))).unwrap();
    assert!(
        next > ids[19],
        "{next:?} reuses an id of a set-aside record ({:?})",
        ids[19]
    );
}

/// Ingest applies the appends of one group commit to its tables one at a time, and a persist may
/// come in between; it then records the last record it holds, and replay skips records up to it.
/// Had two appends shared a record, the persist after the first would have claimed the second's
/// rows too, and replay would have skipped them: acknowledged rows lost at the next crash.
#[test]
fn a_group_commit_gives_each_append_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut config = config(dir.path());
    config.commit_window = Duration::from_millis(200);
    let (wal, _) = Wal::open(config).unwrap();
    let (first, second) = rt.block_on(async {
        let first = wal.submit(tables(&[1, 2])).unwrap();
        let second = wal.submit(tables(&[3])).unwrap();
        (first.await.unwrap(), second.await.unwrap())
    });
    assert_eq!(WalStats::get(&wal.stats().fsyncs), 1, "one group commit");
    assert_eq!(second, RecordId(first.0 + 1));
    wal.close();
    let (_, replay) = Wal::open(crate::tests::config(dir.path())).unwrap();
    let records: Vec<(RecordId, usize)> = replay
        .records
        .iter()
        .map(|(id, tables)| (*id, tables[0].1.num_rows()))
        .collect();
    assert_eq!(records, [(first, 2), (second, 1)]);
}
