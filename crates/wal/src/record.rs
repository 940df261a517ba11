//! The record format: `[len: u32 LE][crc32c(body): u32 LE][body]`, where the body is the zstd
//! frame of `[id: u64 LE][tables: u32 LE]` followed, per table, by
//! `[name len: u16 LE][name][ipc len: u32 LE][Arrow IPC stream of one batch]`.

use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

use crate::TableBatches;

/// The position of a record in the log; ids grow by one per record, across segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

pub(crate) const FRAME_HEADER: usize = 8;

/// Encodes a record, framed and ready to append to a segment.
pub(crate) fn encode(
    id: RecordId,
    tables: &[(String, RecordBatch)],
    zstd_level: i32,
) -> Result<Vec<u8>, ArrowError> {
    let mut body = Vec::with_capacity(1024);
    body.extend_from_slice(&id.0.to_le_bytes());
    body.extend_from_slice(&(tables.len() as u32).to_le_bytes());
    for (name, batch) in tables {
        let name_len = u16::try_from(name.len()).map_err(|_| {
            ArrowError::InvalidArgumentError(format!("table name too long: {name}"))
        })?;
        body.extend_from_slice(&name_len.to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        let length_at = body.len();
        body.extend_from_slice(&[0; 4]);
        {
            let mut writer = StreamWriter::try_new(&mut body, &batch.schema())?;
            writer.write(batch)?;
            writer.finish()?;
        }
        let ipc_len = u32::try_from(body.len() - length_at - 4)
            .map_err(|_| ArrowError::InvalidArgumentError("batch over 4 GiB".to_owned()))?;
        body[length_at..length_at + 4].copy_from_slice(&ipc_len.to_le_bytes());
    }
    let compressed = zstd::bulk::compress(&body, zstd_level)
        .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
    let len = u32::try_from(compressed.len())
        .map_err(|_| ArrowError::InvalidArgumentError("record over 4 GiB".to_owned()))?;
    let mut framed = Vec::with_capacity(FRAME_HEADER + compressed.len());
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&crc32c::crc32c(&compressed).to_le_bytes());
    framed.extend_from_slice(&compressed);
    Ok(framed)
}

/// Why the bytes at some offset are not a whole, intact record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Fewer bytes than the frame says: the write was cut off.
    Short,
    Checksum,
    /// The checksum matched but the content does not decode: written by something else.
    Undecodable(String),
}

/// One record read from `bytes` at its start; `Ok` gives the record and its framed length.
pub(crate) fn decode(bytes: &[u8]) -> Result<((RecordId, TableBatches), usize), Damage> {
    let Some(header) = bytes.get(..FRAME_HEADER) else {
        return Err(Damage::Short);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let Some(compressed) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Err(Damage::Short);
    };
    if crc32c::crc32c(compressed) != crc {
        return Err(Damage::Checksum);
    }
    let body = zstd::decode_all(compressed).map_err(|e| Damage::Undecodable(e.to_string()))?;
    let record = decode_body(&body).map_err(Damage::Undecodable)?;
    Ok((record, FRAME_HEADER + len))
}

fn decode_body(body: &[u8]) -> Result<(RecordId, TableBatches), String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = body.get(at..at + n).ok_or("record body ends early")?;
        at += n;
        Ok(slice)
    };
    let id = RecordId(u64::from_le_bytes(take(8)?.try_into().map_err(|_| "id")?));
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "count")?);
    let mut tables = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "name length")?);
        let name = std::str::from_utf8(take(name_len as usize)?)
            .map_err(|e| e.to_string())?
            .to_owned();
        let ipc_len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "ipc length")?);
        let reader = StreamReader::try_new(Cursor::new(take(ipc_len as usize)?), None)
            .map_err(|e| e.to_string())?;
        for batch in reader {
            tables.push((name.clone(), batch.map_err(|e| e.to_string())?));
        }
    }
    Ok((id, tables))
}
