//! Lake files kept whole in memory, as the object store returned them, within a budget: what
//! InfluxDB 3's Parquet cache does for its newest files. Each range a scan reads is then a
//! slice of memory shared with every other query, not a read from the store (on a local
//! disk, a copy out of the page cache into a zeroed buffer: a tenth of a full scan's CPU;
//! on S3, a request). Lake files never change under their name, so a kept file stays right
//! until it is evicted. A file is kept as [`KeptFile`] makes it: the chunks compression
//! hardly shrinks, decompressed once at load instead of at every scan.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::OnceCell;

use crate::budget_lru::BudgetLru;
use crate::kept_file::{DECOMPRESS_ABOVE_SHARE, KeptFile};

/// A file, read once by whichever query asks first while the others wait for it.
type Slot = Arc<OnceCell<Arc<KeptFile>>>;

#[derive(Debug)]
pub(crate) struct ParquetCache {
    files: BudgetLru<Slot>,
    /// Scans of a table too large for the cache (see [`Self::holds_table`]).
    tables_past_budget: Counter,
}

impl ParquetCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            files: BudgetLru::new(budget_bytes),
            tables_past_budget: Counter::default(),
        }
    }

    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        let what = "lake files' Parquet bytes";
        self.files.metrics.register(registry, "parquet_cache", what);
        registry.register(
            "twinlake_query_parquet_cache_tables_past_budget",
            "Scans of a table whose files outgrow the Parquet cache, read by ranges from the store",
            self.tables_past_budget.clone(),
        );
    }

    /// Whether a table whose files add up to `table_file_bytes` (as stored) is read through
    /// the cache: all of it must fit as kept, its chunks decompressed taking up to a third
    /// more. A larger one is read by ranges, counted and logged: an operator sees the budget
    /// is too small for the history queried.
    pub(crate) fn holds_table(&self, table: &str, table_file_bytes: u64) -> bool {
        let budget = self.files.budget_bytes() as f64;
        if table_file_bytes as f64 <= budget * DECOMPRESS_ABOVE_SHARE {
            return true;
        }
        self.tables_past_budget.inc();
        tracing::debug!(
            table,
            table_file_bytes,
            budget = self.files.budget_bytes(),
            "a table's files outgrow the Parquet cache: read by ranges from the store"
        );
        false
    }

    /// Whether a file of `size` bytes is kept whole: at most an eighth of the budget, so that
    /// one query's large files do not evict everything the others read. A larger file is
    /// read from the store range by range, as a scan reads it without the cache.
    pub(crate) fn keeps(&self, size: u64) -> bool {
        let keeps = usize::try_from(size).is_ok_and(|size| size <= self.files.budget_bytes() / 8);
        if !keeps {
            self.files.metrics.too_large.inc();
        }
        keeps
    }

    /// The whole file at `path`, of `size` bytes, from memory or read from `store` now and
    /// kept. None when it is not kept (see [`Self::keeps`]).
    pub(crate) async fn file(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        size: u64,
    ) -> object_store::Result<Option<Arc<KeptFile>>> {
        let bytes = usize::try_from(size).unwrap_or(usize::MAX);
        let Some(slot) = self
            .files
            .get_or_insert(path.as_ref(), bytes, Slot::default)
        else {
            return Ok(None);
        };
        if let Some(bytes) = slot.get() {
            self.files.metrics.hits.inc();
            return Ok(Some(bytes.clone()));
        }
        let read = slot.get_or_try_init(|| load(store, path)).await;
        match read {
            Ok(kept) => {
                self.files.metrics.loads.inc();
                // Weighed as kept: decompressed chunks and the footer take more than the
                // store's bytes.
                self.files
                    .reweigh_if(path.as_ref(), kept.memory_size(), |entry| {
                        Arc::ptr_eq(entry, &slot)
                    });
                Ok(Some(Arc::clone(kept)))
            }
            Err(error) => {
                // Not kept empty: the next query tries the store again.
                self.files
                    .remove_if(path.as_ref(), |kept| Arc::ptr_eq(kept, &slot));
                Err(error)
            }
        }
    }
}

#[cfg(test)]
impl ParquetCache {
    /// The file at `path`, if it is kept and loaded.
    pub(crate) fn file_if_kept(&self, path: &str) -> Option<Arc<KeptFile>> {
        self.files.get(path)?.get().cloned()
    }
}

/// The file from `store`, decompressed where worth it off the runtime's workers.
async fn load(store: &Arc<dyn ObjectStore>, path: &Path) -> object_store::Result<Arc<KeptFile>> {
    let bytes = store.get(path).await?.bytes().await?;
    let kept = tokio::task::spawn_blocking(move || KeptFile::new(bytes))
        .await
        .map_err(|error| generic_error(path, error))?
        .map_err(|error| generic_error(path, error))?;
    Ok(Arc::new(kept))
}

fn generic_error(
    path: &Path,
    error: impl std::error::Error + Send + Sync + 'static,
) -> object_store::Error {
    object_store::Error::Generic {
        store: "parquet cache",
        source: format!("{path}: {error}").into(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use object_store::memory::InMemory;

    use super::*;
    use crate::kept_file::tests::lake_like_file;

    async fn store_with(files: &[(&str, &Bytes)]) -> Arc<dyn ObjectStore> {
        let store = Arc::new(InMemory::new());
        for (path, bytes) in files {
            let bytes = Bytes::clone(bytes);
            store.put(&Path::from(*path), bytes.into()).await.unwrap();
        }
        store
    }

    #[tokio::test]
    async fn a_file_is_read_once_and_then_served_from_memory() -> object_store::Result<()> {
        let file = lake_like_file(5_000, true);
        let size = file.len() as u64;
        let store = store_with(&[("a", &file)]).await;
        let cache = ParquetCache::new(8 * 2 * file.len());
        let first = cache.file(&store, &Path::from("a"), size).await?.unwrap();
        assert!(first.rewritten, "its values kept decompressed");
        store.delete(&Path::from("a")).await?;
        let again = cache.file(&store, &Path::from("a"), size).await?.unwrap();
        assert!(
            Arc::ptr_eq(&again, &first),
            "the store no longer has it: served from memory"
        );
        assert_eq!(cache.files.metrics.loads.get(), 1);
        assert_eq!(cache.files.metrics.hits.get(), 1);
        assert_eq!(
            cache.files.metrics.bytes.get(),
            first.memory_size() as i64,
            "weighed as kept, not as stored"
        );
        assert!(first.memory_size() > file.len());
        Ok(())
    }

    #[tokio::test]
    async fn a_file_the_store_cannot_give_is_not_kept() -> object_store::Result<()> {
        let file = lake_like_file(5_000, true);
        let size = file.len() as u64;
        let store = store_with(&[]).await;
        let cache = ParquetCache::new(8 * 2 * file.len());
        assert!(cache.file(&store, &Path::from("a"), size).await.is_err());
        assert_eq!(
            cache.files.metrics.bytes.get(),
            0,
            "no empty slot left behind"
        );
        let store = store_with(&[("a", &file)]).await;
        assert!(cache.file(&store, &Path::from("a"), size).await?.is_some());
        assert_eq!(
            cache.files.metrics.loads.get(),
            1,
            "read, now that the store has it"
        );
        Ok(())
    }

    #[tokio::test]
    async fn only_files_of_at_most_an_eighth_and_tables_within_the_budget_are_kept() {
        let cache = ParquetCache::new(800);
        assert!(cache.keeps(100));
        assert!(!cache.keeps(101));
        assert_eq!(cache.files.metrics.too_large.get(), 1);
        let none = ParquetCache::new(0);
        assert!(!none.keeps(1), "a budget of 0 keeps nothing");
        assert!(cache.holds_table("measurements", 600));
        assert!(
            !cache.holds_table("measurements", 601),
            "a table that would not fit decompressed is read by ranges"
        );
        assert_eq!(cache.tables_past_budget.get(), 1, "and counted");
    }
}
