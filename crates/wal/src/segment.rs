//! Segment files: `<first record id, 20 digits>.wal`, a 16-byte header (magic, first id), then
//! records back to back. Replay reads them in order and cuts off a torn tail.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::record::{Damage, RecordId, decode};
use crate::{TableBatches, WalError};

const MAGIC: &[u8; 8] = b"TWLKWAL1";
pub(crate) const SEGMENT_HEADER: u64 = 16;

pub(crate) fn segment_path(dir: &Path, first: RecordId) -> PathBuf {
    dir.join(format!("{:020}.wal", first.0))
}

/// A closed segment and the records it holds, for truncation.
#[derive(Debug, Clone)]
pub(crate) struct SegmentInfo {
    pub(crate) path: PathBuf,
    /// The last record id in the segment; `None` when it holds none.
    pub(crate) last: Option<RecordId>,
    pub(crate) bytes: u64,
}

/// What replay found: the records, in order, and how much was recovered or cut.
#[derive(Debug, Default)]
pub struct Replay {
    pub records: Vec<(RecordId, TableBatches)>,
    pub stats: ReplayStats,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: usize,
    pub records: usize,
    /// Bytes of intact records read.
    pub bytes: u64,
    /// Bytes cut from the end of the log: a record whose write never completed.
    pub torn_bytes: u64,
    /// Segments after a damaged record, set aside as `*.wal.orphaned` rather than replayed.
    pub orphaned_segments: usize,
}

const ORPHANED_SUFFIX: &str = ".wal.orphaned";

/// The files of `dir` whose name is `<first record id>` followed by `suffix`, in id order.
fn list_segments_named(dir: &Path, suffix: &str) -> Result<Vec<(RecordId, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| WalError::io(dir, e))?.path();
        let first = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(suffix))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((RecordId(first), path));
        }
    }
    segments.sort();
    Ok(segments)
}

fn list_segments(dir: &Path) -> Result<Vec<(RecordId, PathBuf)>, WalError> {
    list_segments_named(dir, ".wal")
}

/// The first id after every record of the segments set aside as orphaned (0 when there are
/// none). Their records were never replayed, but some may have been persisted before the
/// damage: the lake's markers can name their ids, so new records must not reuse them.
pub(crate) fn after_orphaned(dir: &Path) -> Result<u64, WalError> {
    let mut after = 0;
    for (first, path) in list_segments_named(dir, ORPHANED_SUFFIX)? {
        after = after.max(first.0);
        let bytes = std::fs::read(&path).map_err(|e| WalError::io(&path, e))?;
        let mut offset = SEGMENT_HEADER as usize;
        while let Some(rest) = bytes.get(offset..).filter(|rest| !rest.is_empty()) {
            let Ok(((id, _), framed)) = decode(rest) else {
                break;
            };
            after = after.max(id.0 + 1);
            offset += framed;
        }
    }
    Ok(after)
}

/// Reads every segment of `dir` in order. A damaged record ends the log: the segment is cut
/// back to the last intact record, and any later segment is renamed aside (it cannot follow a
/// hole), with an error logged.
pub(crate) fn replay(dir: &Path) -> Result<(Replay, Vec<SegmentInfo>), WalError> {
    let mut replay = Replay::default();
    let mut infos = Vec::new();
    let segments = list_segments(dir)?;
    let mut damaged_at = None;
    for (index, (_, path)) in segments.iter().enumerate() {
        if damaged_at.is_some() {
            set_aside(path)?;
            replay.stats.orphaned_segments += 1;
            continue;
        }
        let bytes = std::fs::read(path).map_err(|e| WalError::io(path, e))?;
        replay.stats.segments += 1;
        if bytes.len() < SEGMENT_HEADER as usize || &bytes[..8] != MAGIC {
            // A header that never got written whole: the crash came while creating the file.
            tracing::warn!(path = %path.display(), bytes = bytes.len(), "WAL segment without a whole header: removed");
            replay.stats.torn_bytes += bytes.len() as u64;
            std::fs::remove_file(path).map_err(|e| WalError::io(path, e))?;
            damaged_at = Some(index);
            continue;
        }
        let mut offset = SEGMENT_HEADER as usize;
        let mut last = None;
        while offset < bytes.len() {
            match decode(&bytes[offset..]) {
                Ok(((id, tables), framed)) => {
                    offset += framed;
                    last = Some(id);
                    replay.stats.records += 1;
                    replay.stats.bytes += framed as u64;
                    replay.records.push((id, tables));
                }
                Err(damage) => {
                    let cut = (bytes.len() - offset) as u64;
                    if let Damage::Undecodable(why) = &damage {
                        tracing::error!(path = %path.display(), offset, %why, "WAL record has a valid checksum but does not decode");
                    }
                    tracing::warn!(path = %path.display(), offset, cut_bytes = cut, ?damage, "torn WAL tail cut off");
                    truncate(path, offset as u64)?;
                    replay.stats.torn_bytes += cut;
                    damaged_at = Some(index);
                    break;
                }
            }
        }
        infos.push(SegmentInfo {
            path: path.clone(),
            last,
            bytes: offset as u64,
        });
    }
    if replay.stats.orphaned_segments > 0 {
        tracing::error!(
            orphaned = replay.stats.orphaned_segments,
            "WAL segments after a damaged record were set aside as *.wal.orphaned and not replayed"
        );
    }
    Ok((replay, infos))
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    file.set_len(len).map_err(|e| WalError::io(path, e))?;
    file.sync_all().map_err(|e| WalError::io(path, e))
}

fn set_aside(path: &Path) -> Result<(), WalError> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(&ORPHANED_SUFFIX[".wal".len()..]);
    std::fs::rename(path, &aside).map_err(|e| WalError::io(path, e))
}

/// Makes a directory entry (a created or deleted file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}

/// The segment records are appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    file: File,
    pub(crate) info: SegmentInfo,
}

impl ActiveSegment {
    pub(crate) fn create(dir: &Path, first: RecordId) -> Result<Self, WalError> {
        let path = segment_path(dir, first);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| WalError::io(&path, e))?;
        let mut header = [0u8; SEGMENT_HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&first.0.to_le_bytes());
        let written = file
            .write_all(&header)
            .and_then(|()| file.sync_all())
            .map_err(|e| WalError::io(&path, e))
            .and_then(|()| sync_dir(dir));
        if let Err(error) = written {
            // A file without its whole header would only be cut at the next replay; without it,
            // the next attempt (a full disk is waited out) can create the segment again.
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        Ok(Self {
            file,
            info: SegmentInfo {
                path,
                last: None,
                bytes: SEGMENT_HEADER,
            },
        })
    }

    pub(crate) fn append(&mut self, framed: &[u8], id: RecordId) -> Result<(), WalError> {
        self.file
            .write_all(framed)
            .map_err(|e| WalError::io(&self.info.path, e))?;
        self.info.bytes += framed.len() as u64;
        self.info.last = Some(id);
        Ok(())
    }

    /// Cuts the segment back to what `before` describes (its state after the last whole
    /// record), after a write that did not complete.
    pub(crate) fn cut_back(&mut self, before: SegmentInfo) -> Result<(), WalError> {
        self.file
            .set_len(before.bytes)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| WalError::io(&self.info.path, e))?;
        self.info = before;
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<(), WalError> {
        self.file
            .sync_data()
            .map_err(|e| WalError::io(&self.info.path, e))
    }
}
