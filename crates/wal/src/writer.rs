//! The writer thread and the handle callers append through.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::record::{self, RecordId};
use crate::segment::{self, ActiveSegment, Replay, SegmentInfo};
use crate::{SyncMode, TableBatches, WalConfig, WalError, WalStats};

enum Command {
    Append {
        tables: TableBatches,
        done: oneshot::Sender<Result<RecordId, WalError>>,
    },
    Truncate {
        through: RecordId,
        done: oneshot::Sender<Result<usize, WalError>>,
    },
    Close,
}

/// Rows queued by [`Wal::submit`]: resolves with their record's id once it is on disk.
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<RecordId, WalError>>);

impl std::future::Future for PendingAppend {
    type Output = Result<RecordId, WalError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(WalError::Closed)))
    }
}

/// The open log. Appends from any task are group-committed by one writer thread, which does
/// all the file I/O so that fsync never blocks the async runtime.
#[derive(Debug)]
pub struct Wal {
    commands: Mutex<Option<Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Deletes the segments truncation gave up, off the writer's path.
    cleaner: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<WalStats>,
}

impl Wal {
    /// Opens the log in `config.dir`, replaying what it holds: the records come back in order,
    /// a torn tail is cut off, and new records continue the id sequence.
    pub fn open(config: WalConfig) -> Result<(Self, Replay), WalError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| WalError::io(&config.dir, e))?;
        let (replay, mut closed) = segment::replay(&config.dir)?;
        tracing::info!(
            dir = %config.dir.display(),
            segments = replay.stats.segments,
            records = replay.stats.records,
            bytes = replay.stats.bytes,
            torn_bytes = replay.stats.torn_bytes,
            "WAL replayed"
        );
        if config.sync == SyncMode::Never {
            tracing::warn!(
                "WAL sync = \"never\": records are not fsynced, so a machine crash can lose acknowledged messages"
            );
        }
        let own =
            next_record_id(&closed, &replay).max(RecordId(segment::after_orphaned(&config.dir)?));
        let next = own.max(RecordId(config.ids_after.map_or(0, |id| id.0 + 1)));
        if next > own {
            tracing::warn!(
                own = own.0,
                next = next.0,
                "the lake holds records beyond the WAL's (its directory was replaced or restored): new records continue after the lake's"
            );
        }
        // An empty segment left by a crash right after creation is reused under the same name.
        if let Some(empty) = closed.last().filter(|s| s.last.is_none()) {
            std::fs::remove_file(&empty.path).map_err(|e| WalError::io(&empty.path, e))?;
            closed.pop();
        }
        // On a full disk the log still opens (replay needs no space) and makes its segment
        // with the first record, which waits for space: Twinlake starts, answers queries and
        // persists what it replayed.
        let active = match ActiveSegment::create(&config.dir, next) {
            Ok(active) => Some(active),
            Err(error) if error.is_disk_full() => {
                tracing::warn!(%error, "WAL disk full at start: new messages wait for space");
                None
            }
            Err(error) => return Err(error),
        };
        let stats = Arc::new(WalStats::default());
        let (cleaner, deletions) = start_cleaner(&config.dir);
        let state = WriterState {
            config,
            active,
            closed,
            next,
            poisoned: None,
            stats: Arc::clone(&stats),
            backlog: VecDeque::new(),
            deletions,
        };
        state.publish_sizes();
        let (commands, receiver) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("twinlake-wal".to_owned())
            .spawn(move || state.run(receiver))
            .map_err(|e| WalError::io(PathBuf::from("<wal writer thread>"), e))?;
        Ok((
            Self {
                commands: Mutex::new(Some(commands)),
                writer: Mutex::new(Some(writer)),
                cleaner: Mutex::new(cleaner),
                stats,
            },
            replay,
        ))
    }

    /// Appends rows; resolves once the record holding them is on disk (fsynced with
    /// `SyncMode::Always`). Rows appended together stay in one record.
    pub async fn append(&self, tables: TableBatches) -> Result<RecordId, WalError> {
        self.submit(tables)?.await
    }

    /// Queues rows for the next group commit now, and returns what resolves once they are on
    /// disk. Records are written in the order of `submit` calls, so a caller that must release
    /// its work in order (MQTT acknowledgements) submits in that order.
    pub fn submit(&self, tables: TableBatches) -> Result<PendingAppend, WalError> {
        let (done, result) = oneshot::channel();
        self.send(Command::Append { tables, done })?;
        Ok(PendingAppend(result))
    }

    /// Deletes the closed segments whose records all have ids up to `through` (their rows are
    /// persisted elsewhere). Returns how many segments went.
    pub async fn truncate_through(&self, through: RecordId) -> Result<usize, WalError> {
        let (done, result) = oneshot::channel();
        self.send(Command::Truncate { through, done })?;
        result.await.map_err(|_| WalError::Closed)?
    }

    pub fn stats(&self) -> &Arc<WalStats> {
        &self.stats
    }

    /// Commits what is queued and stops the writer. Later appends fail with `Closed`.
    pub fn close(&self) {
        if let Some(commands) = self.commands.lock().ok().and_then(|mut c| c.take()) {
            // The writer may already be gone; then there is nothing left to flush.
            let _ = commands.send(Command::Close);
        }
        if let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take())
            && writer.join().is_err()
        {
            tracing::error!("the WAL writer thread panicked");
        }
        // The writer is gone, and with it the cleaner's queue: its last deletions finish now.
        if let Some(cleaner) = self.cleaner.lock().ok().and_then(|mut c| c.take())
            && cleaner.join().is_err()
        {
            tracing::error!("the WAL segment cleaner thread panicked");
        }
    }

    fn send(&self, command: Command) -> Result<(), WalError> {
        let commands = self.commands.lock().map_err(|_| WalError::Closed)?;
        commands
            .as_ref()
            .ok_or(WalError::Closed)?
            .send(command)
            .map_err(|_| WalError::Closed)
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

fn next_record_id(closed: &[SegmentInfo], replay: &Replay) -> RecordId {
    let after_records = replay.records.last().map_or(0, |(id, _)| id.0 + 1);
    // An empty segment still tells where the sequence stood, even after truncation removed
    // every segment with records: ids must never go back.
    let after_segments = closed
        .iter()
        .filter_map(|s| s.path.file_stem()?.to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    RecordId(after_records.max(after_segments))
}

struct WriterState {
    config: WalConfig,
    /// The segment records go to; none until the first record after a rotation, or after
    /// a start on a full disk, creates it.
    active: Option<ActiveSegment>,
    closed: Vec<SegmentInfo>,
    next: RecordId,
    poisoned: Option<String>,
    stats: Arc<WalStats>,
    /// Commands that arrived while a record waited for disk space, to be taken in order.
    backlog: VecDeque<Command>,
    /// Where truncated segments go to be deleted; None to delete them here.
    deletions: Option<Sender<Vec<PathBuf>>>,
}

type AppendWaiter = oneshot::Sender<Result<RecordId, WalError>>;

/// The commands gathered within one commit window.
#[derive(Default)]
struct Group {
    appends: Vec<(TableBatches, AppendWaiter)>,
    truncations: Vec<(RecordId, oneshot::Sender<Result<usize, WalError>>)>,
    closing: bool,
}

impl Group {
    fn add(&mut self, command: Command) {
        match command {
            Command::Append { tables, done } => self.appends.push((tables, done)),
            Command::Truncate { through, done } => self.truncations.push((through, done)),
            Command::Close => self.closing = true,
        }
    }
}

/// Why a record was not written.
enum WriteFailure {
    /// The disk (or quota) is full: nothing of the record is in the log, and it can be
    /// written again once there is space.
    DiskFull(String),
    /// Anything else: the log takes no more writes.
    Failed(String),
}

/// How long a record waits between attempts while the disk is full.
const DISK_FULL_RETRY: Duration = Duration::from_secs(1);

impl WriterState {
    fn run(mut self, commands: Receiver<Command>) {
        while let Some(first) = self.backlog.pop_front().or_else(|| commands.recv().ok()) {
            let mut group = Group::default();
            group.add(first);
            let deadline = Instant::now() + self.config.commit_window;
            while !group.closing {
                match self.next_command(&commands, deadline) {
                    Ok(command) => group.add(command),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => group.closing = true,
                }
            }
            self.commit(group.appends, &commands);
            for (through, done) in group.truncations {
                // The caller may have stopped waiting; the truncation happened regardless.
                let _ = done.send(self.truncate(through));
            }
            if group.closing {
                break;
            }
        }
        tracing::info!(records = self.next.0, "WAL closed");
    }

    /// The next command of the group, from the backlog first.
    fn next_command(
        &mut self,
        commands: &Receiver<Command>,
        deadline: Instant,
    ) -> Result<Command, RecvTimeoutError> {
        match self.backlog.pop_front() {
            Some(command) => Ok(command),
            None => commands.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        }
    }

    /// Writes a record for each of `appends`, all with one write and one fsync, and releases
    /// their waiters. Each append keeps a record (and an id) of its own: a caller that applies
    /// appends one by one can then say exactly which records it has applied, which a record
    /// shared by several appends would blur (see `a_group_commit_gives_each_append_its_own_record`).
    /// While the disk is full the records wait (their waiters with them, so ingest stops
    /// acknowledging) and are written as soon as there is space.
    fn commit(&mut self, appends: Vec<(TableBatches, AppendWaiter)>, commands: &Receiver<Command>) {
        if appends.is_empty() {
            return;
        }
        let (tables, waiters): (Vec<TableBatches>, Vec<AppendWaiter>) = appends.into_iter().unzip();
        let mut full_since = None::<Instant>;
        let result = loop {
            match self.write_records(&tables) {
                Err(WriteFailure::DiskFull(reason)) => {
                    if full_since.is_none() {
                        tracing::warn!(%reason, "WAL disk full: nothing more is acknowledged until there is space; queries go on");
                        self.set_disk_full(true);
                    }
                    full_since.get_or_insert_with(Instant::now);
                    if !self.wait_for_space(commands) {
                        break Err(WalError::DiskFull(reason));
                    }
                }
                Err(WriteFailure::Failed(reason)) => break Err(WalError::Poisoned(reason)),
                Ok(first) => break Ok(first),
            }
        };
        if let Some(since) = full_since {
            self.set_disk_full(false);
            tracing::info!(waited = ?since.elapsed(), "WAL disk space back, or the log closed");
        }
        self.stats
            .appends
            .fetch_add(waiters.len() as u64, Ordering::Relaxed);
        for (offset, done) in (0..).zip(waiters) {
            // A waiter that went away (its task was cancelled) still had its rows written.
            let _ = done.send(match &result {
                Ok(first) => Ok(RecordId(first.0 + offset)),
                Err(WalError::DiskFull(reason)) => Err(WalError::DiskFull(reason.clone())),
                Err(error) => Err(WalError::Poisoned(error.to_string())),
            });
        }
    }

    /// Waits a moment for space. Truncations are done meanwhile (they free space), appends
    /// kept for later in their order. False when the log is closing: then the record is given
    /// up (its messages stay unacknowledged, so the broker keeps them).
    fn wait_for_space(&mut self, commands: &Receiver<Command>) -> bool {
        let until = Instant::now() + DISK_FULL_RETRY;
        loop {
            match commands.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Command::Truncate { through, done }) => {
                    let _ = done.send(self.truncate(through));
                }
                Ok(Command::Close) => {
                    self.backlog.push_back(Command::Close);
                    return false;
                }
                Ok(append) => self.backlog.push_back(append),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn set_disk_full(&self, full: bool) {
        self.stats
            .disk_full
            .store(u64::from(full), Ordering::Relaxed);
        if let Some(observe) = &self.config.disk_full_observer {
            observe(full);
        }
    }

    /// Appends one record per entry of `tables`, with consecutive ids, and syncs once; returns
    /// the first id. On failure none of them is in the log.
    fn write_records(&mut self, tables: &[TableBatches]) -> Result<RecordId, WriteFailure> {
        if let Some(reason) = &self.poisoned {
            return Err(WriteFailure::Failed(reason.clone()));
        }
        let first = self.next;
        let mut framed = Vec::new();
        let mut last = first;
        for (id, tables) in (first.0..).map(RecordId).zip(tables) {
            let record = record::encode(id, tables, self.config.zstd_level)
                .map_err(|e| WriteFailure::Failed(e.to_string()))?;
            framed.extend_from_slice(&record);
            last = id;
        }
        let mut active = match self.active.take() {
            Some(active) => active,
            None => ActiveSegment::create(&self.config.dir, first).map_err(|e| self.fail(e))?,
        };
        let before = active.info.clone();
        let written = active
            .append(&framed, last)
            .and_then(|()| sync(&active, &self.config, &self.stats));
        if let Err(error) = written {
            // On a full disk, cut back to the last whole record: the next attempt writes the
            // records anew, so nothing depends on pages a failed write or fsync left behind. A
            // cut that fails leaves part of a record behind, which must never be written after.
            let cut = match error.is_disk_full() {
                true => active.cut_back(before),
                false => Ok(()),
            };
            self.active = Some(active);
            return Err(match cut {
                Ok(()) => self.fail(error),
                Err(cut) => self.poison(cut.to_string()),
            });
        }
        self.next = RecordId(last.0 + 1);
        self.stats
            .records_written
            .fetch_add(tables.len() as u64, Ordering::Relaxed);
        if active.info.bytes >= self.config.segment_bytes {
            // The next record starts a new segment.
            self.closed.push(active.info);
        } else {
            self.active = Some(active);
        }
        self.publish_sizes();
        Ok(first)
    }

    /// A full disk can be waited out; after any other failed write or fsync the file's tail is
    /// unknown and the page cache cannot be trusted, so writing on could put acknowledged
    /// records behind garbage: the log takes no more writes.
    fn fail(&mut self, error: WalError) -> WriteFailure {
        let reason = error.to_string();
        if error.is_disk_full() {
            return WriteFailure::DiskFull(reason);
        }
        self.poison(reason)
    }

    fn poison(&mut self, reason: String) -> WriteFailure {
        tracing::error!(%reason, "WAL write failed; no further writes are accepted");
        self.poisoned = Some(reason.clone());
        WriteFailure::Failed(reason)
    }

    /// Gives up the closed segments whose records are all at or below `through`. They are
    /// deleted by the cleaner thread: unlinking a 64 MiB file takes tens of milliseconds on
    /// ext4, and a persist frees many at once, which held every acknowledgement behind it
    /// (measured with `twinlake bench ingest`: p99 publish-to-acknowledged 202 ms with
    /// persists running). A segment a crash left undeleted is replayed and skipped at the next
    /// start, as its records are persisted.
    fn truncate(&mut self, through: RecordId) -> Result<usize, WalError> {
        let mut removed = Vec::new();
        // Closed segments are in id order, so the removable ones are a prefix.
        while let Some(oldest) = self.closed.first() {
            if oldest.last.is_some_and(|last| last > through) {
                break;
            }
            removed.push(self.closed.remove(0).path);
        }
        let count = removed.len();
        if count > 0 {
            let handed_on = match &self.deletions {
                Some(deletions) => deletions.send(removed).map_err(|failed| failed.0),
                None => Err(removed),
            };
            if let Err(removed) = handed_on {
                delete_segments(&self.config.dir, &removed)?;
            }
        }
        self.publish_sizes();
        Ok(count)
    }

    fn publish_sizes(&self) {
        let active = self.active.as_ref().map(|a| a.info.bytes);
        let bytes = self.closed.iter().map(|s| s.bytes).sum::<u64>() + active.unwrap_or(0);
        self.stats.bytes.store(bytes, Ordering::Relaxed);
        let segments = self.closed.len() + usize::from(active.is_some());
        self.stats
            .segments
            .store(segments as u64, Ordering::Relaxed);
        self.stats
            .closed_segments
            .store(self.closed.len() as u64, Ordering::Relaxed);
    }
}

fn sync(active: &ActiveSegment, config: &WalConfig, stats: &WalStats) -> Result<(), WalError> {
    if config.sync == SyncMode::Never {
        return Ok(());
    }
    let started = Instant::now();
    active.sync()?;
    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
    if let Some(observe) = &config.fsync_observer {
        observe(started.elapsed());
    }
    Ok(())
}

/// The thread that deletes truncated segments, and the queue to it; none when it cannot start.
fn start_cleaner(dir: &Path) -> (Option<JoinHandle<()>>, Option<Sender<Vec<PathBuf>>>) {
    let (deletions, queue) = std::sync::mpsc::channel::<Vec<PathBuf>>();
    let dir = dir.to_owned();
    let started = std::thread::Builder::new()
        .name("twinlake-wal-cleaner".to_owned())
        .spawn(move || {
            for segments in queue {
                if let Err(error) = delete_segments(&dir, &segments) {
                    tracing::warn!(%error, "deleting persisted WAL segments failed; they are read again, and skipped, at the next start");
                }
            }
        });
    match started {
        Ok(thread) => (Some(thread), Some(deletions)),
        Err(error) => {
            tracing::warn!(%error, "no WAL cleaner thread: segments are deleted by the writer");
            (None, None)
        }
    }
}

fn delete_segments(dir: &Path, segments: &[PathBuf]) -> Result<(), WalError> {
    for path in segments {
        std::fs::remove_file(path).map_err(|e| WalError::io(path, e))?;
    }
    segment::sync_dir(dir)
}
