//! Readers of lake files that keep each file's page index in the runtime's metadata cache
//! beside its footer.
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

use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;

/// Creates [`LakeFileReader`]s over DataFusion's cached readers.
#[derive(Debug)]
pub(crate) struct LakeFileReaderFactory {
    cached: CachedParquetFileReaderFactory,
}

impl LakeFileReaderFactory {
    pub(crate) fn new(
        store: Arc<dyn object_store::ObjectStore>,
        cache: Arc<FileMetadataCache>,
    ) -> Self {
        Self {
            cached: CachedParquetFileReaderFactory::new(store, cache),
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
        let cached =
            self.cached
                .create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(LakeFileReader { cached }))
    }
}

/// A cached reader whose metadata always comes with the page index, where the file has one.
struct LakeFileReader {
    cached: Box<dyn AsyncFileReader + Send>,
}

impl AsyncFileReader for LakeFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.cached.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.cached.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        let with_index = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.cached.get_metadata(Some(&with_index)).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
    use datafusion::error::Result;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;
    use object_store::path::Path;

    use crate::lake_dictionary::tests::{FILE_PATH, lake_context};

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
}
