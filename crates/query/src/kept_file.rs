//! A lake file as the Parquet cache keeps it: its bytes and footer, with the column chunks
//! that compression hardly shrinks stored decompressed.
//!
//! Sensor readings are the case: zstd shrinks the dictionary keys of `value` by an eighth at
//! most, yet decompressing them was 40 % of a full scan's CPU, on every scan. Kept in memory,
//! such a chunk costs a little more memory decompressed and nothing per scan; chunks that
//! compress well (times, names) stay compressed. The pages themselves are unchanged (same
//! encodings, rows, statistics and column index); only their codec, sizes and offsets differ.
//!
//! Every other chunk keeps its offset in the store's file, and the decompressed ones are
//! placed past its end: DataFusion splits a file between partitions by byte ranges of the
//! store's file and gives each row group to the range holding its first chunk, so those
//! offsets must not move. The kept file is therefore a set of byte runs at offsets of that
//! layout (the store's chunks that are still read, then the decompressed ones), not one
//! buffer; the footer describing it is built in memory and never written.
//!
//! This file knows Parquet and nothing of the store or the cache around it.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::parquet::basic::{Compression, PageType};
use datafusion::parquet::column::page::{CompressedPage, Page, PageWriter};
use datafusion::parquet::errors::{ParquetError, Result};
use datafusion::parquet::file::metadata::{
    ColumnChunkMetaData, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData,
};
use datafusion::parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use datafusion::parquet::file::serialized_reader::SerializedPageReader;
use datafusion::parquet::file::writer::{SerializedPageWriter, TrackedWrite};

/// A chunk that compression leaves above this share of its size is kept decompressed: it
/// costs at most a third more memory, and saves a decompression per scan.
pub(crate) const DECOMPRESS_ABOVE_SHARE: f64 = 0.75;

#[derive(Debug)]
pub(crate) struct KeptFile {
    /// Byte runs by their offset in the file's layout, in order, not overlapping.
    runs: Vec<Run>,
    /// The footer of that layout, with the page index where the file has one.
    pub(crate) metadata: Arc<ParquetMetaData>,
    /// Whether chunks were decompressed: `metadata` is then not the store's footer, and only
    /// a reader that was given it may read these bytes.
    pub(crate) rewritten: bool,
}

#[derive(Debug)]
struct Run {
    offset: u64,
    bytes: Bytes,
}

impl KeptFile {
    /// The store's `file`, its poorly compressed chunks decompressed.
    pub(crate) fn new(file: Bytes) -> Result<Self> {
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Optional)
            .parse_and_finish(&file)?;
        let worth = metadata
            .row_groups()
            .iter()
            .any(|row_group| decompressed_columns(row_group).next().is_some());
        if !worth {
            return Ok(Self::as_stored(file, metadata));
        }
        match with_chunks_decompressed(&file, &metadata) {
            Ok(kept) => Ok(kept),
            Err(error) => {
                // Kept as stored: the file reads as it always did, only no faster.
                tracing::warn!(%error, "a lake file's chunks could not be decompressed");
                Ok(Self::as_stored(file, metadata))
            }
        }
    }

    fn as_stored(file: Bytes, metadata: ParquetMetaData) -> Self {
        Self {
            runs: vec![Run {
                offset: 0,
                bytes: file,
            }],
            metadata: Arc::new(metadata),
            rewritten: false,
        }
    }

    /// What keeping it takes: its bytes and its decoded footer.
    pub(crate) fn memory_size(&self) -> usize {
        let bytes: usize = self.runs.iter().map(|run| run.bytes.len()).sum();
        bytes + self.metadata.memory_size()
    }

    /// The bytes at `range`, which must lie in one run: a reader asks for a chunk or pages
    /// of one, never across chunks.
    pub(crate) fn slice(&self, range: &Range<u64>) -> Option<Bytes> {
        let after = self.runs.partition_point(|run| run.offset <= range.start);
        let run = self.runs.get(after.checked_sub(1)?)?;
        let start = usize::try_from(range.start - run.offset).ok()?;
        let end = usize::try_from(range.end.checked_sub(run.offset)?).ok()?;
        (start <= end && end <= run.bytes.len()).then(|| run.bytes.slice(start..end))
    }
}

/// The columns of `row_group` worth keeping decompressed. Never the first: DataFusion places
/// a row group in a byte range by its first chunk's offset, which must stay the store's.
fn decompressed_columns(row_group: &RowGroupMetaData) -> impl Iterator<Item = usize> + '_ {
    row_group
        .columns()
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, chunk)| worth_decompressing(chunk))
        .map(|(column, _)| column)
}

fn worth_decompressing(chunk: &ColumnChunkMetaData) -> bool {
    chunk.compression() != Compression::UNCOMPRESSED
        && chunk.compressed_size() as f64
            > DECOMPRESS_ABOVE_SHARE * chunk.uncompressed_size() as f64
}

/// The file's layout with chunks worth it decompressed past the end of the store's file, and
/// only the store's chunks still read kept from it.
fn with_chunks_decompressed(file: &Bytes, metadata: &ParquetMetaData) -> Result<KeptFile> {
    let file_end = file.len() as u64;
    let mut kept_ranges: Vec<Range<u64>> = Vec::new();
    let mut appended = Vec::new();
    let mut row_groups = Vec::with_capacity(metadata.num_row_groups());
    let mut offset_index = metadata.offset_index().cloned();
    for (group, row_group) in metadata.row_groups().iter().enumerate() {
        let decompressed: Vec<usize> = decompressed_columns(row_group).collect();
        let mut columns = row_group.columns().to_vec();
        for (column, chunk) in row_group.columns().iter().enumerate() {
            if !decompressed.contains(&column) {
                let (start, length) = chunk.byte_range();
                kept_ranges.push(start..start + length);
                continue;
            }
            let pages = offset_index
                .as_mut()
                .and_then(|index| index.get_mut(group)?.get_mut(column));
            columns[column] = decompressed_chunk(file, row_group, chunk, &mut appended, pages)?;
        }
        let row_group = row_group
            .clone()
            .into_builder()
            .set_column_metadata(columns)
            .build()?;
        row_groups.push(row_group);
    }
    let mut runs = runs_of(file, kept_ranges)?;
    runs.push(Run {
        offset: file_end,
        bytes: Bytes::from(appended),
    });
    let metadata = metadata
        .clone()
        .into_builder()
        .set_row_groups(row_groups)
        .set_offset_index(offset_index)
        .build();
    Ok(KeptFile {
        runs,
        metadata: Arc::new(metadata),
        rewritten: true,
    })
}

/// `ranges` of `file`, adjacent ones merged, each copied out so that the chunks no longer
/// read do not stay in memory behind a slice.
fn runs_of(file: &Bytes, mut ranges: Vec<Range<u64>>) -> Result<Vec<Run>> {
    ranges.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
        .into_iter()
        .map(|range| {
            let start = usize::try_from(range.start).ok();
            let end = usize::try_from(range.end).ok();
            let bytes = match start.zip(end) {
                Some((start, end)) if start <= end && end <= file.len() => {
                    Bytes::copy_from_slice(&file[start..end])
                }
                _ => return Err(ParquetError::EOF(format!("chunk {range:?} past the file"))),
            };
            Ok(Run {
                offset: range.start,
                bytes,
            })
        })
        .collect()
}

/// The chunk's pages decompressed, appended to `appended` (the bytes placed right after the
/// store's file), and the chunk's metadata there; `pages`, its offset index, relocated to
/// match.
fn decompressed_chunk(
    file: &Bytes,
    row_group: &RowGroupMetaData,
    chunk: &ColumnChunkMetaData,
    appended: &mut Vec<u8>,
    pages: Option<&mut OffsetIndexMetaData>,
) -> Result<ColumnChunkMetaData> {
    let at = file.len() + appended.len();
    let rows = usize::try_from(row_group.num_rows()).unwrap_or_default();
    let reader = SerializedPageReader::new(Arc::new(file.clone()), chunk, rows, None)?;
    let mut sink = TrackedWrite::new(appended);
    let mut writer = SerializedPageWriter::new(&mut sink);
    let at = i64::try_from(at).map_err(|e| ParquetError::External(e.into()))?;
    let mut dictionary_offset = None;
    let mut locations = Vec::new();
    for page in reader {
        let page = uncompressed(page?);
        let page_type = page.page_type();
        let size = page.buffer().len();
        let written = writer.write_page(CompressedPage::new(page, size))?;
        let offset =
            at + i64::try_from(written.offset).map_err(|e| ParquetError::External(e.into()))?;
        if page_type == PageType::DICTIONARY_PAGE {
            dictionary_offset = Some(offset);
            continue;
        }
        locations.push((offset, written.compressed_size));
    }
    writer.close()?;
    let length =
        i64::try_from(sink.bytes_written()).map_err(|e| ParquetError::External(e.into()))?;
    let first_data_page = locations.first().map(|(offset, _)| *offset);
    let metadata = chunk
        .clone()
        .into_builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_total_compressed_size(length)
        .set_total_uncompressed_size(length)
        .set_dictionary_page_offset(dictionary_offset)
        .set_data_page_offset(first_data_page.unwrap_or(at))
        .build()?;
    if let Some(pages) = pages {
        relocate(pages, &locations)?;
    }
    Ok(metadata)
}

/// A page as read, marked as stored uncompressed (a V2 page says so in its header).
fn uncompressed(mut page: Page) -> Page {
    if let Page::DataPageV2 { is_compressed, .. } = &mut page {
        *is_compressed = false;
    }
    page
}

/// The offset index of a chunk's data pages moved to their new `(offset, size)`: the pages
/// and their first rows are the same.
fn relocate(index: &mut OffsetIndexMetaData, locations: &[(i64, usize)]) -> Result<()> {
    if index.page_locations.len() != locations.len() {
        return Err(ParquetError::General(format!(
            "the offset index lists {} pages, the chunk has {}",
            index.page_locations.len(),
            locations.len()
        )));
    }
    for (page, &(offset, size)) in index.page_locations.iter_mut().zip(locations) {
        *page = PageLocation {
            offset,
            compressed_page_size: i32::try_from(size)
                .map_err(|e| ParquetError::External(e.into()))?,
            first_row_index: page.first_row_index,
        };
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Buf;
    use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::arrow::arrow_reader::{
        ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
        RowSelector,
    };
    use datafusion::parquet::basic::ZstdLevel;
    use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use datafusion::parquet::file::reader::{ChunkReader, Length};

    use super::*;

    /// A file as the lake writes them (zstd, dictionaries, page statistics), of `rows` rows
    /// in row groups of 3,000 and pages of 500: `series` names (written plain) that compress
    /// well, `value` readings of 200 rounded values in random order, whose dictionary keys
    /// compress poorly. With `value: false`, the names alone.
    pub(crate) fn lake_like_file(rows: usize, value: bool) -> Bytes {
        let mut fields = vec![Field::new("series", DataType::Utf8, false)];
        let series = StringArray::from_iter_values(
            (0..rows).map(|row| format!("te/device/truck{:04}///m/temperature", row / 700)),
        );
        let mut columns: Vec<ArrayRef> = vec![Arc::new(series)];
        if value {
            let mut seed = 12_345_u64;
            let mut next = move || {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                seed >> 33
            };
            let value: Float64Array = (0..rows)
                .map(|row| (row % 97 != 0).then(|| (next() % 200) as f64 / 10.0))
                .collect();
            fields.push(Field::new("value", DataType::Float64, true));
            columns.push(Arc::new(value));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch =
            RecordBatch::try_new(schema.clone(), columns).expect("columns match the schema");
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("a level")))
            .set_dictionary_enabled(true)
            .set_column_dictionary_enabled("series".into(), false)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(3_000))
            .set_data_page_row_count_limit(500)
            .set_write_batch_size(500)
            .build();
        let mut written = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut written, schema, Some(properties))
            .expect("a writer over memory");
        writer.write(&batch).expect("written to memory");
        writer.close().expect("closed");
        Bytes::from(written)
    }

    /// The kept file as the Parquet reader's input.
    struct KeptReader(Arc<KeptFile>);

    impl Length for KeptReader {
        fn len(&self) -> u64 {
            self.0
                .runs
                .last()
                .map_or(0, |run| run.offset + run.bytes.len() as u64)
        }
    }

    impl ChunkReader for KeptReader {
        type T = bytes::buf::Reader<Bytes>;

        fn get_read(&self, start: u64) -> Result<Self::T> {
            let run = self
                .0
                .runs
                .iter()
                .find(|run| (run.offset..run.offset + run.bytes.len() as u64).contains(&start))
                .ok_or_else(|| ParquetError::EOF(format!("{start} in no run")))?;
            let end = run.offset + run.bytes.len() as u64;
            Ok(self.get_bytes(start, (end - start) as usize)?.reader())
        }

        fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
            let range = start..start + length as u64;
            self.0
                .slice(&range)
                .ok_or_else(|| ParquetError::EOF(format!("{range:?} in no run")))
        }
    }

    /// The rows of a file read through `reader` by `metadata`, the rows of `selection` only
    /// (pages skipped through the offset index) when given.
    fn read<R: ChunkReader + 'static>(
        reader: R,
        metadata: Arc<ParquetMetaData>,
        selection: Option<RowSelection>,
    ) -> Vec<RecordBatch> {
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let metadata = ArrowReaderMetadata::try_new(metadata, options).expect("a footer");
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(reader, metadata);
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        builder
            .build()
            .expect("a reader")
            .collect::<std::result::Result<_, _>>()
            .expect("rows")
    }

    fn read_stored(file: &Bytes, selection: Option<RowSelection>) -> Vec<RecordBatch> {
        let metadata = ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Required)
            .parse_and_finish(file)
            .expect("a footer");
        read(file.clone(), Arc::new(metadata), selection)
    }

    fn read_kept(file: &Arc<KeptFile>, selection: Option<RowSelection>) -> Vec<RecordBatch> {
        read(
            KeptReader(Arc::clone(file)),
            Arc::clone(&file.metadata),
            selection,
        )
    }

    fn codecs(metadata: &ParquetMetaData, column: usize) -> Vec<Compression> {
        metadata
            .row_groups()
            .iter()
            .map(|row_group| row_group.column(column).compression())
            .collect()
    }

    fn first_chunk_offsets(metadata: &ParquetMetaData) -> Vec<u64> {
        let first = |row_group: &RowGroupMetaData| row_group.column(0).byte_range().0;
        metadata.row_groups().iter().map(first).collect()
    }

    #[test]
    fn poorly_compressed_chunks_are_kept_decompressed_and_read_the_same() -> Result<()> {
        let stored = lake_like_file(12_000, true);
        let footer = ParquetMetaDataReader::new().parse_and_finish(&stored)?;
        let kept = Arc::new(KeptFile::new(stored.clone())?);
        assert!(kept.rewritten);
        let metadata = &kept.metadata;
        assert_eq!(metadata.num_row_groups(), 4);
        assert!(
            codecs(metadata, 1)
                .iter()
                .all(|c| *c == Compression::UNCOMPRESSED),
            "value: {:?}",
            codecs(metadata, 1)
        );
        assert!(
            codecs(metadata, 0)
                .iter()
                .all(|c| matches!(c, Compression::ZSTD(_))),
            "series, which compresses well, stays compressed"
        );
        assert_eq!(
            first_chunk_offsets(metadata),
            first_chunk_offsets(&footer),
            "row groups start where they did: byte-range splits place them the same"
        );
        let (start, length) = footer.row_group(2).column(1).byte_range();
        assert_eq!(
            kept.slice(&(start..start + length)),
            None,
            "the compressed chunk is no longer kept"
        );
        assert!(kept.memory_size() > stored.len(), "decompressed: larger");
        assert_eq!(read_kept(&kept, None), read_stored(&stored, None));
        // Rows skipped page by page through the offset index: the relocated pages.
        let selection = RowSelection::from(vec![
            RowSelector::skip(1_200),
            RowSelector::select(700),
            RowSelector::skip(4_100),
            RowSelector::select(2_000),
        ]);
        assert_eq!(
            read_kept(&kept, Some(selection.clone())),
            read_stored(&stored, Some(selection))
        );
        let index = metadata.offset_index().expect("the offset index is kept");
        assert!(index[1][1].page_locations().len() >= 6, "pages of 500 rows");
        assert!(metadata.column_index().is_some());
        Ok(())
    }

    #[test]
    fn a_file_that_compresses_well_is_kept_as_stored() -> Result<()> {
        let stored = lake_like_file(10_000, false);
        let kept = KeptFile::new(stored.clone())?;
        assert!(!kept.rewritten);
        let whole = 0..stored.len() as u64;
        assert_eq!(
            kept.slice(&whole),
            Some(stored),
            "the very bytes of the store"
        );
        Ok(())
    }

    #[test]
    fn a_range_outside_the_kept_runs_is_none_not_a_panic() -> Result<()> {
        let stored = lake_like_file(12_000, true);
        let kept = KeptFile::new(stored.clone())?;
        let appended = kept.runs.last().expect("decompressed chunks").offset;
        assert_eq!(
            appended,
            stored.len() as u64,
            "placed past the store's file"
        );
        let end = appended + kept.runs.last().map_or(0, |run| run.bytes.len() as u64);
        assert_eq!(kept.slice(&(end..end)).map(|b| b.len()), Some(0));
        for range in [
            end - 1..end + 1,
            end..end + 1,
            Range { start: 4, end: 2 },
            0..end,
            u64::MAX - 1..u64::MAX,
        ] {
            assert_eq!(kept.slice(&range), None, "{range:?}");
        }
        Ok(())
    }

    #[test]
    fn what_is_not_parquet_is_an_error() {
        assert!(KeptFile::new(Bytes::from_static(b"PAR1 not a file PAR1")).is_err());
    }
}
