//! Readers of lake files: each file's footer and page index kept in the runtime's metadata
//! cache, its bytes in the [`ParquetCache`].
//!
//! DataFusion's Parquet opener asks for the footer alone and loads the page index on its own
//! when a predicate can prune pages, and that second load goes to the object store, not the
//! cache: a query with a filter on `measurements` read and decoded the page index of every
//! file it opened, every time. Lake files never change under their name, so the first read
//! of a file here fetches footer and page index together and caches both; the opener finds
//! the index present and loads nothing.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStore;
use object_store::path::Path;

use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;

use crate::kept_file::KeptFile;
use crate::parquet_cache::ParquetCache;

/// Creates [`LakeFileReader`]s over DataFusion's cached readers.
#[derive(Debug)]
pub(crate) struct LakeFileReaderFactory {
    cached: CachedParquetFileReaderFactory,
    store: Arc<dyn ObjectStore>,
    /// None: every range read from the store.
    bytes: Option<Arc<ParquetCache>>,
}

impl LakeFileReaderFactory {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        footers: Arc<FileMetadataCache>,
        bytes: Option<Arc<ParquetCache>>,
    ) -> Self {
        Self {
            cached: CachedParquetFileReaderFactory::new(Arc::clone(&store), footers),
            store,
            bytes,
        }
    }
}

impl ParquetFileReaderFactory for LakeFileReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let size = file.object_meta.size;
        let whole = self
            .bytes
            .as_ref()
            .filter(|cache| cache.keeps(size))
            .map(|cache| WholeFile {
                cache: Arc::clone(cache),
                store: Arc::clone(&self.store),
                path: file.object_meta.location.clone(),
                size,
                kept: None,
            });
        let cached =
            self.cached
                .create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(LakeFileReader { cached, whole }))
    }
}

/// A cached reader whose metadata always comes with the page index, where the file has one,
/// and whose footer and ranges come from the [`ParquetCache`] when it keeps the file.
struct LakeFileReader {
    cached: Box<dyn AsyncFileReader + Send>,
    whole: Option<WholeFile>,
}

struct WholeFile {
    cache: Arc<ParquetCache>,
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
    /// The kept file this reader reads, once decided (None: not kept, or not usable here):
    /// footer and ranges then come from the same file, and later reads do not ask the cache.
    kept: Option<Option<Arc<KeptFile>>>,
}

impl WholeFile {
    /// The kept file this reader reads; a rewritten one only when `rewritten_allowed`, that
    /// is, when its footer is the one the scan reads by (see `get_metadata`).
    async fn kept(&mut self, rewritten_allowed: bool) -> ParquetResult<Option<Arc<KeptFile>>> {
        if let Some(kept) = &self.kept {
            return Ok(kept.clone());
        }
        let read = self.cache.file(&self.store, &self.path, self.size).await;
        let kept = read
            .map_err(|e| ParquetError::External(Box::new(e)))?
            .filter(|kept| rewritten_allowed || !kept.rewritten);
        self.kept = Some(kept.clone());
        Ok(kept)
    }

    /// The file's bytes at `ranges`, or None when the cache does not keep it.
    async fn slices(&mut self, ranges: &[Range<u64>]) -> ParquetResult<Option<Vec<Bytes>>> {
        // Undecided here means the footer came from elsewhere: only the store's bytes fit it.
        let Some(kept) = self.kept(false).await? else {
            return Ok(None);
        };
        // Served from memory, a scan would never wait: each partition's task would run
        // until its files were done, and both of a query's partitions ran on one worker
        // thread while the other idled (14-device-against-siblings: 120 ms at one core's
        // CPU, against 78 ms reading from the disk). Yielding once per read lets the
        // runtime spread them.
        tokio::task::yield_now().await;
        ranges
            .iter()
            .map(|range| slice(&kept, range, &self.path))
            .collect::<ParquetResult<Vec<_>>>()
            .map(Some)
    }
}

/// `range` of the kept file, or an error when a footer points past its bytes.
fn slice(file: &KeptFile, range: &Range<u64>, path: &Path) -> ParquetResult<Bytes> {
    file.slice(range).ok_or_else(|| {
        ParquetError::EOF(format!(
            "{path}: bytes {range:?} asked of a kept file that does not hold them"
        ))
    })
}

impl AsyncFileReader for LakeFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        async move {
            let mut ranges = self.get_byte_ranges(vec![range]).await?;
            ranges
                .pop()
                .ok_or_else(|| ParquetError::General("a range read gave nothing".to_owned()))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            if let Some(whole) = self.whole.as_mut()
                && let Some(slices) = whole.slices(&ranges).await?
            {
                return Ok(slices);
            }
            self.cached.get_byte_ranges(ranges).await
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let with_index = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move {
            // Asked even when the file is kept: the footer cache is where planning learns
            // a file's read schema (`lake_dictionary`).
            let stored = self.cached.get_metadata(Some(&with_index)).await?;
            if let Some(whole) = self.whole.as_mut()
                && let Some(kept) = whole.kept(true).await?
                && kept.rewritten
            {
                return Ok(Arc::clone(&kept.metadata));
            }
            Ok(stored)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
    use datafusion::error::Result;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;
    use object_store::path::Path;

    use std::sync::Arc;

    use object_store::ObjectStoreExt;

    use crate::lake_dictionary::tests::{FILE_PATH, FileValues, lake_context, lake_context_with};
    use crate::parquet_cache::ParquetCache;

    /// Whether the runtime's metadata cache holds the lake file with its page index.
    fn cached_with_page_index(context: &SessionContext) -> Option<bool> {
        let cache = context
            .runtime_env()
            .cache_manager
            .get_file_metadata_cache();
        let entry = cache.get(&Path::from(FILE_PATH))?;
        let metadata = entry
            .file_metadata
            .as_any()
            .downcast_ref::<CachedParquetMetaData>()?
            .parquet_metadata()
            .clone();
        Some(metadata.column_index().is_some() && metadata.offset_index().is_some())
    }

    /// A filter that prunes pages needs the page index: read once, it stays in the cache,
    /// so the next query opens the file without reading it again.
    #[tokio::test]
    async fn a_file_is_cached_with_its_page_index_at_its_first_read() -> Result<()> {
        let context = lake_context().await?;
        assert_eq!(cached_with_page_index(&context), None);
        let sql = "SELECT count(*) FROM measurements WHERE series = 'load'";
        for _ in 0..2 {
            let plan = context.sql(sql).await?.create_physical_plan().await?;
            let batches = collect(plan, context.task_ctx()).await?;
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
            assert_eq!(cached_with_page_index(&context), Some(true));
        }
        Ok(())
    }

    async fn count(context: &SessionContext, sql: &str) -> Result<String> {
        let plan = context.sql(sql).await?.create_physical_plan().await?;
        let batches = collect(plan, context.task_ctx()).await?;
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    /// With a Parquet cache, a file is read from the store once: gone from the store, it is
    /// still read, by later queries too, and the answers stay those of the store's file.
    #[tokio::test]
    async fn a_kept_file_is_read_from_memory_by_every_later_scan() -> Result<()> {
        let (plain, _) = lake_context_with(None, FileValues::RowNumbers).await?;
        let cache = Arc::new(ParquetCache::new(64 * 1024 * 1024));
        let (context, store) = lake_context_with(Some(cache), FileValues::RowNumbers).await?;
        let queries = [
            "SELECT count(*), sum(value) FROM measurements",
            "SELECT series, count(*) FROM measurements WHERE series = 'load' GROUP BY series",
            "SELECT max(time) FROM measurements WHERE value > 4000",
        ];
        let want = count(&plain, queries[0]).await?;
        assert_eq!(count(&context, queries[0]).await?, want);
        let path = object_store::path::Path::from(FILE_PATH);
        store.delete(&path).await?;
        assert!(
            store.get(&path).await.is_err(),
            "the store no longer has it"
        );
        assert_eq!(count(&context, queries[0]).await?, want);
        for sql in &queries[1..] {
            let answer = count(&context, sql).await?;
            assert!(answer.lines().count() == 5, "{sql}: one row\n{answer}");
        }
        Ok(())
    }

    /// A file kept with its values decompressed is larger than the store's: a scan that
    /// splits it between partitions by the store's byte ranges places row groups by their
    /// first chunk's offset, which the kept file keeps, so each row is read once either way,
    /// from memory (the store's file deleted after the first query).
    #[tokio::test]
    async fn a_file_split_by_byte_ranges_is_read_whole_once_however_it_is_kept() -> Result<()> {
        let sql = "SELECT count(*), sum(value), min(time), max(time) FROM measurements";
        let (plain, _) = lake_context_with(None, FileValues::Readings).await?;
        let want = count(&plain, sql).await?;
        assert!(want.contains("| 5000 "), "{want}");
        for split in [true, false] {
            let cache = Arc::new(ParquetCache::new(64 * 1024 * 1024));
            let (context, store) =
                lake_context_with(Some(Arc::clone(&cache)), FileValues::Readings).await?;
            context
                .sql("SET datafusion.execution.target_partitions = 2")
                .await?;
            let smallest = if split { 0 } else { u64::MAX };
            context
                .sql(&format!(
                    "SET datafusion.optimizer.repartition_file_min_size = {smallest}"
                ))
                .await?;
            let plan = context.sql(sql).await?.create_physical_plan().await?;
            let shown = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string();
            assert_eq!(shown.contains("part-0.parquet:0.."), split, "{shown}");
            assert_eq!(count(&context, sql).await?, want, "split: {split}");
            store.delete(&Path::from(FILE_PATH)).await?;
            assert_eq!(
                count(&context, sql).await?,
                want,
                "split: {split}, from memory"
            );
            let kept = cache.file_if_kept(FILE_PATH).expect("kept");
            assert!(kept.rewritten, "its values decompressed");
        }
        Ok(())
    }
}
