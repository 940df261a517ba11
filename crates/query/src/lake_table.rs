//! A table provider over one Twinlake table: its committed Parquet files and its rows in
//! memory, read from one snapshot, so a persist or compaction committing meanwhile neither
//! hides rows nor shows them twice.

use std::sync::{Arc, OnceLock};

use futures::{StreamExt, TryStreamExt};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column as PhysicalColumn};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::union::UnionExec;
use twinlake_model::{ColumnType, Table};
use twinlake_store::{EntityIds, LiveTables, PersistedFile, TableSnapshot};

use crate::file_cache::{self, FileCache};
use crate::hierarchy::{Hierarchy, HierarchyCache, IN_SUBTREE, text_of};
use crate::lake_adapter::LakeExprAdapterFactory;
use crate::lake_dictionary::cached_file_read_schema;
use crate::lake_reader::LakeFileReaderFactory;
use crate::parquet_cache::ParquetCache;

/// The URL under which the lake's object store is registered with DataFusion.
pub(crate) const LAKE_STORE_URL: &str = "twinlake://lake";

#[derive(Debug)]
pub(crate) struct LakeTableProvider {
    table: Table,
    live: Arc<LiveTables>,
    /// Resolves `in_subtree(entity, root)` filters to entities for pruning.
    hierarchy: Option<Arc<HierarchyCache>>,
    /// Read by every scan instead of the table as it is at the scan.
    pinned: Option<TableSnapshot>,
    /// Where a small table's files are read from, decoded once.
    file_cache: Option<Arc<FileCache>>,
    /// Where the files a Parquet scan reads are kept whole.
    parquet_cache: Option<Arc<ParquetCache>>,
}

impl LakeTableProvider {
    pub(crate) fn new(
        table: Table,
        live: Arc<LiveTables>,
        hierarchy: Option<Arc<HierarchyCache>>,
    ) -> Self {
        Self {
            table,
            live,
            hierarchy,
            pinned: None,
            file_cache: None,
            parquet_cache: None,
        }
    }

    /// The table's files read through `cache` while the table is small enough for it.
    pub(crate) fn with_file_cache(self, cache: Arc<FileCache>) -> Self {
        Self {
            file_cache: file_cache::is_cached(self.table).then_some(cache),
            ..self
        }
    }

    /// The files a Parquet scan reads kept whole in `cache`.
    pub(crate) fn with_parquet_cache(self, cache: Arc<ParquetCache>) -> Self {
        Self {
            parquet_cache: Some(cache),
            ..self
        }
    }

    /// The same table as it is now, for every scan to come.
    pub(crate) fn pinned(self) -> Self {
        let snapshot = self.live.snapshot(self.table);
        Self {
            pinned: Some(snapshot),
            ..self
        }
    }
}

#[async_trait::async_trait]
impl TableProvider for LakeTableProvider {
    fn schema(&self) -> SchemaRef {
        query_schema(self.table)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters prune files but are applied again above the scan.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = match &self.pinned {
            Some(pinned) => pinned.clone(),
            None => self.live.snapshot(self.table),
        };
        let partitions = state.config().target_partitions().max(1);
        let hierarchy = self.hierarchy.as_ref().map(|cache| cache.latest());
        let pruning = FilePruning::from_filters(
            self.table,
            filters,
            &self.live.entity_ids(),
            hierarchy.as_deref(),
        );
        let mut files: Vec<&PersistedFile> = snapshot
            .files
            .iter()
            .filter(|file| pruning.may_match(file))
            .collect();
        let mut inputs = Vec::new();
        // What the table's files add up to decides which cache may read them.
        let table_file_bytes: u64 = snapshot.files.iter().map(|file| file.size).sum();
        if let Some(cache) = self.file_cache_for(table_file_bytes) {
            let (decoded, unread) = read_through_cache(state, cache, &self.schema(), files).await?;
            files = unread;
            if !decoded.is_empty() {
                let batches = spread(decoded, partitions);
                let memory =
                    MemorySourceConfig::try_new(&batches, self.schema(), projection.cloned())?
                        .with_limit(limit);
                inputs.push(DataSourceExec::from_data_source(memory) as Arc<dyn ExecutionPlan>);
            }
        }
        if !files.is_empty() {
            let predicate = self.subtree_predicate(state, filters, hierarchy.as_deref())?;
            let kept_whole = self.parquet_cache_for(table_file_bytes);
            let source = self.parquet_source(state, predicate, kept_whole)?;
            let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
            let scan = self.parquet_scan(
                &files,
                footers.as_ref(),
                source,
                projection,
                limit,
                partitions,
            );
            inputs.push(scan?);
        }
        if !snapshot.batches.is_empty() || inputs.is_empty() {
            let batches = spread(snapshot.batches, partitions);
            inputs.push(self.memory_scan(&batches, projection, limit)?);
        }
        UnionExec::try_new(inputs)
    }
}

impl LakeTableProvider {
    fn file_cache_for(&self, table_file_bytes: u64) -> Option<&Arc<FileCache>> {
        let cache = self.file_cache.as_ref()?;
        (table_file_bytes <= cache.max_table_file_bytes()).then_some(cache)
    }

    /// The Parquet cache, while all the table's files fit in it. A table larger than the
    /// cache (a fleet's years on S3) is read range by range as before: kept whole, a query
    /// touching a few pages of many files would download each of them entire and evict the
    /// files the other queries read.
    fn parquet_cache_for(&self, table_file_bytes: u64) -> Option<Arc<ParquetCache>> {
        let cache = self.parquet_cache.as_ref()?;
        let holds = cache.holds_table(self.table.name(), table_file_bytes);
        holds.then(|| Arc::clone(cache))
    }

    /// What the Parquet reader cannot learn from the filters by itself: a subtree predicate as
    /// its entities (the range they span, and the list when it is short), which row-group and
    /// page statistics prune by (files are sorted by entity and time). The filters themselves
    /// reach the reader from the plan's filter above this scan; given here too, they were
    /// evaluated twice per row.
    fn subtree_predicate(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        hierarchy: Option<&Hierarchy>,
    ) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let mut conjuncts = Vec::new();
        for filter in filters {
            for conjunct in split_conjunction(filter) {
                if let Some(members) = subtree_members(self.table, conjunct, hierarchy) {
                    conjuncts.extend(members_predicate(self.table, &members));
                }
            }
        }
        let Some(predicate) = conjunction(conjuncts) else {
            return Ok(None);
        };
        let schema = DFSchema::try_from(self.schema().as_ref().clone())?;
        Ok(Some(state.create_physical_expr(predicate, &schema)?))
    }

    /// Rows in memory, kept in the table's storage schema (`Utf8`), read in the query schema:
    /// each projected text column cast to `Utf8View` batch by batch as the scan goes, so a
    /// query holds no second copy of everything in memory.
    fn memory_scan(
        &self,
        batches: &[Vec<RecordBatch>],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let storage = self.table.schema();
        let memory =
            MemorySourceConfig::try_new(batches, Arc::clone(&storage), projection.cloned())?
                .with_limit(limit);
        let query = self.schema();
        let columns: Vec<usize> = match projection {
            Some(columns) => columns.clone(),
            None => (0..query.fields().len()).collect(),
        };
        let exprs = columns.iter().enumerate().map(|(index, &column)| {
            let field = query.field(column);
            let read: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new(field.name(), index));
            let expr = match storage.field(column).data_type() == field.data_type() {
                true => read,
                false => Arc::new(CastExpr::new(read, field.data_type().clone(), None)),
            };
            ProjectionExpr::new(expr, field.name().clone())
        });
        Ok(Arc::new(ProjectionExec::try_new(
            exprs,
            DataSourceExec::from_data_source(memory),
        )?))
    }

    /// The session's Parquet options, with readers that keep each file's footer and page
    /// index in the runtime's metadata cache (bounded by its limit) and its bytes in the
    /// Parquet cache: lake files never change under their name, and reading and decoding
    /// them again was a fixed cost of every query.
    fn parquet_source(
        &self,
        state: &dyn Session,
        predicate: Option<Arc<dyn PhysicalExpr>>,
        kept_whole: Option<Arc<ParquetCache>>,
    ) -> Result<Arc<ParquetSource>> {
        let runtime = state.runtime_env();
        let store = runtime.object_store(ObjectStoreUrl::parse(LAKE_STORE_URL)?)?;
        let cache = runtime.cache_manager.get_file_metadata_cache();
        let mut source = ParquetSource::new(self.schema())
            .with_table_parquet_options(state.default_table_options().parquet)
            .with_parquet_file_reader_factory(Arc::new(LakeFileReaderFactory::new(
                store, cache, kept_whole,
            )))
            .with_enable_page_index(true);
        if let Some(predicate) = predicate {
            source = source.with_predicate(predicate);
        }
        Ok(Arc::new(source))
    }

    /// The files as the scan reads them: with the schema to read each by when some of its
    /// columns are read as dictionaries (see `lake_dictionary`), known from `footers`.
    fn partitioned_files(
        &self,
        files: &[&PersistedFile],
        footers: &FileMetadataCache,
    ) -> Vec<PartitionedFile> {
        files
            .iter()
            .map(|file| {
                let partitioned = PartitionedFile::new(file.path.clone(), file.size);
                match cached_file_read_schema(self.table, footers, &file.path, file.size) {
                    Some(schema) => partitioned.with_arrow_schema(schema),
                    None => partitioned,
                }
            })
            .collect()
    }

    fn parquet_scan(
        &self,
        files: &[&PersistedFile],
        footers: &FileMetadataCache,
        source: Arc<ParquetSource>,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
        partitions: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let read = self.partitioned_files(files, footers);
        let mut groups = vec![Vec::new(); partitions.min(read.len())];
        for (index, file) in read.into_iter().enumerate() {
            let count = groups.len();
            groups[index % count].push(file);
        }
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::parse(LAKE_STORE_URL)?, source)
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_statistics(files_statistics(&self.schema(), files))
            .with_expr_adapter(Some(Arc::new(LakeExprAdapterFactory)))
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// Files read at once into the file cache.
const FILE_CACHE_READS: usize = 8;

/// The files' rows from `cache` (decoded now if they are not yet), and the files it cannot
/// hold, left to the Parquet scan.
async fn read_through_cache<'a>(
    state: &dyn Session,
    cache: &FileCache,
    schema: &SchemaRef,
    files: Vec<&'a PersistedFile>,
) -> Result<(Vec<RecordBatch>, Vec<&'a PersistedFile>)> {
    let store = state
        .runtime_env()
        .object_store(ObjectStoreUrl::parse(LAKE_STORE_URL)?)?;
    // A few reads at a time: a year of a small table is hundreds of files, each a GET on S3.
    let paths: Vec<String> = files.iter().map(|file| file.path.clone()).collect();
    let store = &store;
    let decoded: Vec<_> = futures::stream::iter(paths)
        .map(|path| async move { cache.read(store, &path, schema).await })
        .buffered(FILE_CACHE_READS)
        .try_collect()
        .await?;
    let mut batches = Vec::new();
    let mut unread = Vec::new();
    for (file, decoded) in files.into_iter().zip(decoded) {
        match decoded {
            Some(decoded) => batches.extend(decoded.iter().cloned()),
            None => unread.push(file),
        }
    }
    Ok((batches, unread))
}

/// Rows and bytes of the files, known from the Delta log without opening them: with them the
/// planner builds a join's hash table from its small side (a depot's trucks) rather than from
/// all measurements, and pushes that side's keys into the scan. Inexact, because a file
/// another tool added has no row count in its tags (read as 0): an exact count would let the
/// planner answer `count(*)` from it.
fn files_statistics(schema: &Schema, files: &[&PersistedFile]) -> Statistics {
    let rows: u64 = files.iter().map(|file| file.rows).sum();
    let bytes: u64 = files.iter().map(|file| file.size).sum();
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Statistics::new_unknown(schema)
        .with_num_rows(Precision::Inexact(count(rows)))
        .with_total_byte_size(Precision::Inexact(count(bytes)))
}

/// The table's schema as queries see it: names and kinds (`gateway`, `entity`, `type`,
/// `series`, …) as `Utf8View`, which the Parquet reader fills from a dictionary page with no
/// copy of the text, and which DataFusion compares, hashes and groups by their inline
/// prefix. Profiles put most of a full-history query's time in materialising these strings
/// as `Utf8`. JSON columns stay `Utf8` for the JSON functions.
fn query_schema(table: Table) -> SchemaRef {
    static SCHEMAS: OnceLock<Vec<SchemaRef>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        Table::ALL
            .iter()
            .map(|table| {
                let fields: Vec<Field> = table
                    .columns()
                    .iter()
                    .zip(table.schema().fields())
                    .map(|(column, field)| match column.column_type {
                        ColumnType::Text => {
                            field.as_ref().clone().with_data_type(DataType::Utf8View)
                        }
                        _ => field.as_ref().clone(),
                    })
                    .collect();
                Arc::new(Schema::new(fields))
            })
            .collect()
    });
    Arc::clone(&schemas[table as usize])
}

/// Deals batches round-robin into `count` partitions so that every core scans.
fn spread(batches: Vec<RecordBatch>, count: usize) -> Vec<Vec<RecordBatch>> {
    let count = count.max(1);
    let mut partitions = vec![Vec::new(); count];
    for (index, batch) in batches.into_iter().enumerate() {
        partitions[index % count].push(batch);
    }
    partitions
}

/// What the filters say about the files that can hold matching rows: a time range and a set of
/// entity ids, checked against each file's range and roaring bitmap before any file is opened.
#[derive(Debug, Default)]
pub(crate) struct FilePruning {
    /// Inclusive bounds on the time column, in ns.
    min_time: Option<i64>,
    max_time: Option<i64>,
    /// The ids of the entities the rows must belong to; None when not restricted.
    entities: Option<roaring::RoaringBitmap>,
}

impl FilePruning {
    pub(crate) fn from_filters(
        table: Table,
        filters: &[Expr],
        ids: &EntityIds,
        hierarchy: Option<&Hierarchy>,
    ) -> Self {
        let mut pruning = Self::default();
        let known = Known { ids, hierarchy };
        for filter in filters {
            pruning.add(table, filter, &known);
        }
        pruning
    }

    fn add(&mut self, table: Table, filter: &Expr, known: &Known) {
        if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = filter
            && *op == Operator::And
        {
            self.add(table, left, known);
            self.add(table, right, known);
            return;
        }
        if let Some(wanted) = entity_set(table, filter, known) {
            self.entities = Some(match self.entities.take() {
                Some(current) => current & wanted,
                None => wanted,
            });
            return;
        }
        if let Some((column, op, value)) = comparison(filter)
            && column == table.time_column()
        {
            self.add_time_bound(op, value);
        }
    }

    fn add_time_bound(&mut self, op: Operator, value: &ScalarValue) {
        let Some(ns) = timestamp_nanos(value) else {
            return;
        };
        let (low, high) = match op {
            Operator::Eq => (Some(ns), Some(ns)),
            Operator::Gt => (ns.checked_add(1), None),
            Operator::GtEq => (Some(ns), None),
            Operator::Lt => (None, ns.checked_sub(1)),
            Operator::LtEq => (None, Some(ns)),
            _ => (None, None),
        };
        if let Some(low) = low {
            self.min_time = Some(self.min_time.map_or(low, |m| m.max(low)));
        }
        if let Some(high) = high {
            self.max_time = Some(self.max_time.map_or(high, |m| m.min(high)));
        }
    }

    pub(crate) fn may_match(&self, file: &PersistedFile) -> bool {
        if self.min_time.is_some_and(|min| file.max_time < min)
            || self.max_time.is_some_and(|max| file.min_time > max)
        {
            return false;
        }
        match (&self.entities, &file.entities) {
            (Some(wanted), Some(held)) => !wanted.is_disjoint(held),
            _ => true,
        }
    }
}

/// `column op literal` (either way round), seeing through casts of the column (string
/// literals are often `Utf8View`, which makes the planner cast the `Utf8` column).
fn comparison(expr: &Expr) -> Option<(&str, Operator, &ScalarValue)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    match (
        column_name(left),
        right.as_ref(),
        column_name(right),
        left.as_ref(),
    ) {
        (Some(column), Expr::Literal(value, _), _, _) => Some((column, *op, value)),
        (_, _, Some(column), Expr::Literal(value, _)) => Some((column, op.swap()?, value)),
        _ => None,
    }
}

fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(column) => Some(column.name.as_str()),
        Expr::Cast(cast) => column_name(&cast.expr),
        Expr::TryCast(cast) => column_name(&cast.expr),
        _ => None,
    }
}

/// Parquet's statistics pruning rewrites IN lists only up to this length.
const SHORT_LIST: usize = 20;

/// The entities `in_subtree(entity, root[, time])` allows (for the three-argument form: every
/// entity ever below the root), when `expr` is such a call on `table`'s entity column.
fn subtree_members(
    table: Table,
    expr: &Expr,
    hierarchy: Option<&Hierarchy>,
) -> Option<Vec<String>> {
    let Expr::ScalarFunction(call) = expr else {
        return None;
    };
    if call.name() != IN_SUBTREE {
        return None;
    }
    let [entity, Expr::Literal(root, _), rest @ ..] = call.args.as_slice() else {
        return None;
    };
    if column_name(entity)? != table.entity_column()? {
        return None;
    }
    let root = text_of(root)?;
    let subtree = hierarchy?.subtree(root);
    let mut members: Vec<String> = subtree
        .members(!rest.is_empty())
        .map(str::to_owned)
        .collect();
    members.push(root.to_owned());
    members.sort();
    Some(members)
}

/// `entity BETWEEN first AND last` of the sorted `members`, and `entity IN (…)` when short.
fn members_predicate(table: Table, members: &[String]) -> Vec<Expr> {
    let (Some(column), Some(first), Some(last)) =
        (table.entity_column(), members.first(), members.last())
    else {
        return Vec::new();
    };
    let entity = || datafusion::prelude::col(column);
    let mut predicates = vec![
        entity().gt_eq(datafusion::prelude::lit(first.as_str())),
        entity().lt_eq(datafusion::prelude::lit(last.as_str())),
    ];
    if members.len() <= SHORT_LIST {
        let list = members
            .iter()
            .map(|m| datafusion::prelude::lit(m.as_str()))
            .collect();
        predicates.push(entity().in_list(list, false));
    }
    predicates
}

/// What resolves entity predicates to ids.
struct Known<'a> {
    ids: &'a EntityIds,
    hierarchy: Option<&'a Hierarchy>,
}

/// The ids of the entities a predicate allows, when it is `entity = '…'`, `entity IN (…)`,
/// `in_subtree(entity, '…'[, time])` or an OR of such; None when it says nothing about
/// entities (or more than can be checked).
fn entity_set(table: Table, expr: &Expr, known: &Known) -> Option<roaring::RoaringBitmap> {
    let entity_column = table.entity_column()?;
    let ids = known.ids;
    let mut wanted = roaring::RoaringBitmap::new();
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::Or => {
            wanted = entity_set(table, left, known)? | entity_set(table, right, known)?;
        }
        Expr::ScalarFunction(_) => {
            let members = subtree_members(table, expr, known.hierarchy)?;
            wanted.extend(members.iter().filter_map(|entity| ids.id(entity)));
        }
        _ => {
            // An entity without an id is in no committed file.
            wanted.extend(
                text_literals(entity_column, expr)?
                    .into_iter()
                    .filter_map(|entity| ids.id(entity)),
            );
        }
    }
    Some(wanted)
}

/// The entities `column = '…'` or `column IN ('…', …)` allows (seeing through casts of the
/// column); None for any other predicate.
pub(crate) fn text_literals<'a>(column: &str, expr: &'a Expr) -> Option<Vec<&'a str>> {
    if let Expr::InList(list) = expr {
        if list.negated || column_name(&list.expr)? != column {
            return None;
        }
        return list
            .list
            .iter()
            .map(|item| match item {
                Expr::Literal(value, _) => text_of(value),
                _ => None,
            })
            .collect();
    }
    let (name, op, value) = comparison(expr)?;
    if name != column || op != Operator::Eq {
        return None;
    }
    Some(vec![text_of(value)?])
}

fn timestamp_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::prelude::{col, lit};

    use super::*;

    fn file(entities: &[u32], min_time: i64, max_time: i64) -> PersistedFile {
        PersistedFile {
            path: "measurements/date=2026-11-21/part.parquet".to_owned(),
            date: "2026-11-21".to_owned(),
            size: 1,
            rows: 1,
            min_time,
            max_time,
            entities: Some(Arc::new(entities.iter().copied().collect())),
            compacted: true,
        }
    }

    fn ids() -> EntityIds {
        [("device/a//", 0), ("device/b//", 1), ("device/c//", 2)]
            .into_iter()
            .map(|(e, id)| (e.to_owned(), id))
            .collect()
    }

    fn pruning(filters: &[Expr]) -> FilePruning {
        FilePruning::from_filters(Table::Measurements, filters, &ids(), None)
    }

    #[test]
    fn entity_predicates_become_bitmaps() {
        let (a, bc) = (file(&[0], 0, 10), file(&[1, 2], 0, 10));
        let only_a = pruning(&[col("entity").eq(lit("device/a//"))]);
        assert!(only_a.may_match(&a) && !only_a.may_match(&bc));
        let listed = pruning(&[col("entity").in_list(vec![lit("device/c//")], false)]);
        assert!(!listed.may_match(&a) && listed.may_match(&bc));
        let either = pruning(&[col("entity")
            .eq(lit("device/a//"))
            .or(col("entity").eq(lit("device/b//")))]);
        assert!(either.may_match(&a) && either.may_match(&bc));
        // An entity no file holds rules out every file; other predicates rule out none.
        let unknown = pruning(&[col("entity").eq(lit("device/zz//"))]);
        assert!(!unknown.may_match(&a) && !unknown.may_match(&bc));
        let other = pruning(&[
            col("series").eq(lit("x")),
            col("entity").not_eq(lit("device/a//")),
        ]);
        assert!(other.may_match(&a) && other.may_match(&bc));
    }

    #[test]
    fn a_subtree_predicate_becomes_the_bitmap_of_its_entities() {
        use datafusion::logical_expr::ScalarUDF;
        use twinlake_model::{ChangeKind, EntityChangeRow, EntityFacts, EntityHistory, EntityKind};

        use crate::hierarchy::{HierarchyScalar, HierarchyUdf};

        let registered = |time, entity: &str, kind, parent: Option<&str>| EntityChangeRow {
            time,
            entity: entity.to_owned(),
            change: ChangeKind::Registered,
            facts: Some(EntityFacts {
                gateway: "main".to_owned(),
                topic_id: entity.to_owned(),
                kind,
                parent: parent.map(str::to_owned),
                external_id: None,
                name: None,
                entity_type: None,
                attributes: None,
            }),
        };
        let child = |time, entity: &str, parent| {
            registered(time, entity, EntityKind::ChildDevice, Some(parent))
        };
        // b is below a until it moves to the main device at 50; c is never below a.
        let hierarchy = Hierarchy::new(EntityHistory::from_changes([
            registered(0, "device/main//", EntityKind::Device, None),
            child(1, "device/a//", "device/main//"),
            child(2, "device/b//", "device/a//"),
            child(3, "device/c//", "device/main//"),
            child(50, "device/b//", "device/main//"),
        ]));
        let live = Arc::new(LiveTables::new());
        let changes = LakeTableProvider::new(Table::EntityChanges, Arc::clone(&live), None);
        let cache = Arc::new(HierarchyCache::new(live, Arc::new(changes)));
        let in_subtree =
            ScalarUDF::new_from_impl(HierarchyUdf::new(HierarchyScalar::InSubtree, cache));
        let prune = |args: Vec<Expr>| {
            FilePruning::from_filters(
                Table::Measurements,
                &[in_subtree.call(args)],
                &ids(),
                Some(&hierarchy),
            )
        };
        let (a, b, c) = (file(&[0], 0, 10), file(&[1], 0, 10), file(&[2], 0, 10));
        let now = prune(vec![col("entity"), lit("device/a//")]);
        assert!(now.may_match(&a) && !now.may_match(&b) && !now.may_match(&c));
        let as_of = prune(vec![col("entity"), lit("device/a//"), col("time")]);
        assert!(as_of.may_match(&a) && as_of.may_match(&b) && !as_of.may_match(&c));
    }

    #[test]
    fn row_counts_guide_the_planner_but_never_answer_a_count() {
        // A file added by another tool carries no row count (read as 0).
        let (ours, foreign) = (
            file(&[0], 0, 10),
            PersistedFile {
                rows: 0,
                ..file(&[1], 0, 10)
            },
        );
        let statistics = super::files_statistics(&Table::Measurements.schema(), &[&ours, &foreign]);
        assert_eq!(statistics.num_rows, Precision::Inexact(1));
        assert_eq!(statistics.total_byte_size, Precision::Inexact(2));
    }

    #[test]
    fn time_predicates_skip_files_outside_the_range() {
        let early = file(&[0], 0, 99);
        let late = file(&[0], 100, 199);
        let ts = |ns| {
            lit(ScalarValue::TimestampNanosecond(
                Some(ns),
                Some("UTC".into()),
            ))
        };
        let after = pruning(&[col("time").gt_eq(ts(100))]);
        assert!(!after.may_match(&early) && after.may_match(&late));
        let before = pruning(&[col("time").lt(ts(100))]);
        assert!(before.may_match(&early) && !before.may_match(&late));
        let between = pruning(&[col("time").gt(ts(99)).and(col("time").lt_eq(ts(150)))]);
        assert!(!between.may_match(&early) && between.may_match(&late));
    }
}
