//! A measurement's `type` and `series` take a handful of values over millions of rows, and
//! the lake's files keep them as Parquet dictionaries. Read as `Utf8View`, every row of them
//! became a 16-byte view and every filter compared one per row: a fifth of the CPU of a
//! full-history query filtering by series. Read as Arrow dictionaries, the reader hands over
//! the pages' keys, and a comparison with text is made once per distinct value and mapped
//! through the keys.
//!
//! Queries still see `Utf8View`: a projected column is cast from the dictionary by the scan's
//! adapter. Only comparisons of such a column with text, and `IN` lists of text, are moved
//! onto the dictionary ([`compare_on_dictionary`]).
//!
//! A file is read so only when its footer is already in the metadata cache: the schema
//! given to the reader must be the file's own, column for column, and that is known only
//! from the footer. A file read for the first time is read as before.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, DictionaryArray, Int32Array, RecordBatch,
};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::logical_expr::ColumnarValue;
use datafusion::logical_expr::Operator;
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, InListExpr, Literal};
use object_store::path::Path;
use twinlake_model::Table;

/// The columns of `table` read as dictionaries.
fn dictionary_columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Measurements => &["type", "series"],
        _ => &[],
    }
}

/// The Arrow type those columns are read as.
fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The schema to read the file at `path` (of `size` bytes) with, when some of its columns
/// are read as dictionaries and its footer is in `cache`.
pub(crate) fn cached_file_read_schema(
    table: Table,
    cache: &FileMetadataCache,
    path: &str,
    size: u64,
) -> Option<SchemaRef> {
    let columns = dictionary_columns(table);
    if columns.is_empty() {
        return None;
    }
    let entry = cache.get(&Path::from(path))?;
    if entry.meta.size != size {
        return None;
    }
    let metadata = entry
        .file_metadata
        .as_any()
        .downcast_ref::<CachedParquetMetaData>()?;
    file_read_schema(columns, metadata.parquet_metadata())
}

/// The file's own Arrow schema (as the reader derives it from the footer) with `columns`
/// that hold text as dictionaries; `None` when none does.
fn file_read_schema(columns: &[&str], metadata: &ParquetMetaData) -> Option<SchemaRef> {
    let file = metadata.file_metadata();
    let schema = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata()).ok()?;
    let mut changed = false;
    let fields: Vec<Arc<Field>> = schema
        .fields()
        .iter()
        .map(|field| {
            let text = field.data_type() == &DataType::Utf8;
            if !text || !columns.contains(&field.name().as_str()) {
                return Arc::clone(field);
            }
            changed = true;
            Arc::new(field.as_ref().clone().with_data_type(dictionary_type()))
        })
        .collect();
    changed.then(|| Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
}

/// `predicate` with each comparison of a dictionary column (cast to `Utf8View` by the
/// adapter) with text, and each `IN` list of text, made on the dictionary itself.
pub(crate) fn compare_on_dictionary(
    predicate: Arc<dyn PhysicalExpr>,
    file_schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    predicate
        .transform_up(|node| {
            if let Some(binary) = node.downcast_ref::<BinaryExpr>() {
                return Ok(comparison_on_dictionary(binary, file_schema)?
                    .map_or(Transformed::no(node), Transformed::yes));
            }
            if let Some(in_list) = node.downcast_ref::<InListExpr>() {
                return Ok(in_list_on_dictionary(in_list, file_schema)?
                    .map_or(Transformed::no(node), Transformed::yes));
            }
            Ok(Transformed::no(node))
        })
        .data()
}

fn comparison_on_dictionary(
    binary: &BinaryExpr,
    file_schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    use Operator::*;
    let op = *binary.op();
    let comparison = matches!(
        op,
        Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom
    );
    if !comparison {
        return Ok(None);
    }
    let (left, right) = (binary.left(), binary.right());
    let (column, text, column_left) = match (
        dictionary_column(left, file_schema)?,
        dictionary_column(right, file_schema)?,
    ) {
        (Some(column), None) => (column, right, true),
        (None, Some(column)) => (column, left, false),
        _ => return Ok(None),
    };
    let Some(value) = text_value(text) else {
        return Ok(None);
    };
    if let (Eq | NotEq, Some(value)) = (op, &value) {
        let texts = Arc::from([value.clone()]);
        return Ok(Some(Arc::new(TextInDictionary::new(
            column,
            texts,
            op == NotEq,
        ))));
    }
    let text: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Utf8(value)));
    Ok(Some(Arc::new(match column_left {
        true => BinaryExpr::new(column, op, text),
        false => BinaryExpr::new(text, op, column),
    })))
}

fn in_list_on_dictionary(
    in_list: &InListExpr,
    file_schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(column) = dictionary_column(in_list.expr(), file_schema)? else {
        return Ok(None);
    };
    // A null in the list makes a miss null rather than false: left to DataFusion's list.
    let texts = in_list.list().iter().map(|item| text_value(item).flatten());
    let Some(texts) = texts.collect::<Option<Arc<[String]>>>() else {
        return Ok(None);
    };
    let in_dictionary = TextInDictionary::new(column, texts, in_list.negated());
    Ok(Some(Arc::new(in_dictionary)))
}

/// The column under `expr` when `expr` is the adapter's cast of a dictionary of text to
/// `Utf8View`.
fn dictionary_column(
    expr: &Arc<dyn PhysicalExpr>,
    file_schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let Some(cast) = expr.downcast_ref::<CastExpr>() else {
        return Ok(None);
    };
    if cast.cast_type() != &DataType::Utf8View || !cast.expr().is::<Column>() {
        return Ok(None);
    }
    let read = cast.expr().data_type(file_schema)?;
    Ok((read == dictionary_type()).then(|| Arc::clone(cast.expr())))
}

/// The text of `expr` (`None` for a null) when it is a literal of text.
fn text_value(expr: &Arc<dyn PhysicalExpr>) -> Option<Option<String>> {
    match expr.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8View(value) | ScalarValue::Utf8(value) | ScalarValue::LargeUtf8(value) => {
            Some(value.clone())
        }
        _ => None,
    }
}

/// Whether a column read as a dictionary of text holds one of `texts` (`=` and `IN`), or
/// none of them (`<>` and `NOT IN`); null where the column is. The dictionary's values are
/// compared once per batch, the rows by their keys: one integer comparison per row when
/// one value matches, as `series = 'gps.speed'` does, which arrow's kernel runs on vectors.
/// (arrow's comparison of a dictionary looks a bit up per row, a tenth of a query's CPU
/// over a hundred million rows.)
#[derive(Debug)]
pub(crate) struct TextInDictionary {
    column: Arc<dyn PhysicalExpr>,
    texts: Arc<[String]>,
    negated: bool,
}

impl TextInDictionary {
    fn new(column: Arc<dyn PhysicalExpr>, texts: Arc<[String]>, negated: bool) -> Self {
        Self {
            column,
            texts,
            negated,
        }
    }

    fn holds(&self, dictionary: &DictionaryArray<Int32Type>) -> Result<BooleanArray> {
        let Some(values) = dictionary.values().as_string_opt::<i32>() else {
            return exec_err!("text in dictionary: values of {}", dictionary.data_type());
        };
        let hit: Vec<bool> = values
            .iter()
            .map(|value| value.is_some_and(|value| self.texts.iter().any(|text| text == value)))
            .collect();
        let mut hit_keys = hit.iter().enumerate().filter(|(_, hit)| **hit);
        let keys = dictionary.keys().values();
        let found = match (hit_keys.next(), hit_keys.next()) {
            (None, _) => BooleanBuffer::new_unset(keys.len()),
            (Some((key, _)), None) => {
                let Ok(key) = i32::try_from(key) else {
                    return exec_err!("text in dictionary: a key beyond i32");
                };
                let keys = Int32Array::new(keys.clone(), None);
                eq(&keys, &Int32Array::new_scalar(key))?.values().clone()
            }
            _ => BooleanBuffer::collect_bool(keys.len(), |row| {
                let key = usize::try_from(keys[row]).ok();
                key.and_then(|key| hit.get(key)).copied().unwrap_or(false)
            }),
        };
        let found = match self.negated {
            true => !&found,
            false => found,
        };
        Ok(BooleanArray::new(found, dictionary.logical_nulls()))
    }
}

impl PartialEq for TextInDictionary {
    fn eq(&self, other: &Self) -> bool {
        self.column.as_ref() == other.column.as_ref()
            && self.texts == other.texts
            && self.negated == other.negated
    }
}

impl Eq for TextInDictionary {}

impl Hash for TextInDictionary {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.column.as_ref().hash(state);
        self.texts.hash(state);
        self.negated.hash(state);
    }
}

impl PhysicalExpr for TextInDictionary {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.column.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let ColumnarValue::Array(array) = self.column.evaluate(batch)? else {
            return exec_err!("text in dictionary: a column read as a value");
        };
        let Some(dictionary) = array.as_dictionary_opt::<Int32Type>() else {
            return exec_err!("text in dictionary: read {}", array.data_type());
        };
        Ok(ColumnarValue::Array(Arc::new(self.holds(dictionary)?)))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.column]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [column] = &children[..] else {
            return exec_err!("text in dictionary takes one input");
        };
        let texts = Arc::clone(&self.texts);
        Ok(Arc::new(Self::new(Arc::clone(column), texts, self.negated)))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.column.fmt_sql(f)?;
        self.fmt_list(f)
    }
}

impl TextInDictionary {
    fn fmt_list(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = if self.negated { " NOT" } else { "" };
        let texts: Vec<String> = self.texts.iter().map(|text| format!("'{text}'")).collect();
        write!(f, "{not} IN ({})", texts.join(", "))
    }
}

impl fmt::Display for TextInDictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.column)?;
        self.fmt_list(f)?;
        write!(f, " by dictionary key")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::TimeUnit;
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::SessionContext;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;
    use twinlake_store::{CommittedFiles, LiveTables, PersistedFile};

    use crate::lake_table::{LAKE_STORE_URL, LakeTableProvider};
    use crate::parquet_cache::ParquetCache;

    const SERIES: [(&str, &str); 4] = [
        ("telemetry", "gps.speed"),
        ("telemetry", "load"),
        ("environment", "temperature"),
        ("", "memory.percent-used"),
    ];
    const ROWS: usize = 5000;
    pub(crate) const FILE_PATH: &str = "measurements/date=1970-01-01/part-0.parquet";

    /// What the values of [`measurements_file`] are.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub(crate) enum FileValues {
        /// Each row's number, in one uncompressed row group.
        RowNumbers,
        /// Readings of 200 values in quarters (sums exact in any order), in random order, zstd-compressed, in row groups of
        /// 1,000: chunks the Parquet cache keeps decompressed.
        Readings,
    }

    /// Measurements as the store writes them: Arrow's Parquet writer (text in dictionary
    /// pages), times in microseconds, small pages so a file has many.
    fn measurements_file(values: FileValues) -> Result<Vec<u8>> {
        let fields: Vec<Field> = Table::Measurements
            .schema()
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::Timestamp(_, zone) => field
                    .as_ref()
                    .clone()
                    .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, zone.clone())),
                _ => field.as_ref().clone(),
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let nth = |row: usize| SERIES[row % SERIES.len()];
        let text = |values: Vec<&str>| Arc::new(StringArray::from(values));
        let columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..ROWS).map(|row| row as i64))
                    .with_timezone("UTC"),
            ),
            text(vec!["truck042"; ROWS]),
            text(vec!["truck042"; ROWS]),
            text((0..ROWS).map(|row| nth(row).0).collect()),
            text((0..ROWS).map(|row| nth(row).1).collect()),
            Arc::new(Float64Array::from_iter_values((0..ROWS).map(
                |row| match values {
                    FileValues::RowNumbers => row as f64,
                    FileValues::Readings => {
                        (row.wrapping_mul(2_654_435_761) >> 7) as f64 % 200.0 / 4.0
                    }
                },
            ))),
            Arc::new(StringArray::from(vec![None::<&str>; ROWS])),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        let mut properties = datafusion::parquet::file::properties::WriterProperties::builder()
            .set_data_page_row_count_limit(500)
            .set_write_batch_size(500);
        if values == FileValues::Readings {
            properties = properties
                .set_compression(datafusion::parquet::basic::Compression::ZSTD(
                    Default::default(),
                ))
                .set_max_row_group_row_count(Some(1_000));
        }
        let properties = properties.build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(properties))?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(bytes)
    }

    /// A session whose `measurements` is the one file [`measurements_file`] writes, at
    /// [`FILE_PATH`] of an in-memory store.
    pub(crate) async fn lake_context() -> Result<SessionContext> {
        Ok(lake_context_with(None, FileValues::RowNumbers).await?.0)
    }

    /// [`lake_context`] with its files kept in `parquet_cache`, and its store.
    pub(crate) async fn lake_context_with(
        parquet_cache: Option<Arc<ParquetCache>>,
        values: FileValues,
    ) -> Result<(SessionContext, Arc<InMemory>)> {
        let bytes = measurements_file(values)?;
        let path = FILE_PATH;
        let size = bytes.len() as u64;
        let store = Arc::new(InMemory::new());
        store.put(&Path::from(path), bytes.into()).await?;
        let live = Arc::new(LiveTables::new());
        let file = PersistedFile {
            path: path.to_owned(),
            date: "1970-01-01".to_owned(),
            size,
            rows: ROWS as u64,
            min_time: i64::MIN,
            max_time: i64::MAX,
            entities: None,
            compacted: false,
        };
        let committed = CommittedFiles {
            version: 0,
            files: vec![file],
        };
        live.set_files(Table::Measurements, committed)?;
        let context = SessionContext::new();
        let url = url::Url::parse(LAKE_STORE_URL).expect("the lake's URL");
        context
            .runtime_env()
            .register_object_store(&url, Arc::clone(&store) as _);
        let mut provider = LakeTableProvider::new(Table::Measurements, live, None);
        if let Some(cache) = parquet_cache {
            provider = provider.with_parquet_cache(cache);
        }
        context.register_table("measurements", Arc::new(provider))?;
        Ok((context, store))
    }

    /// The Arrow type each scanned file is read with for `column`, as the scan was planned.
    fn read_types(plan: &Arc<dyn ExecutionPlan>, column: &str) -> Vec<Option<DataType>> {
        let mut types = Vec::new();
        let scan = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>());
        if let Some(scan) = scan {
            for file in scan.file_groups.iter().flat_map(|group| group.iter()) {
                let read = file.arrow_schema.as_ref().map(|schema| {
                    let field = schema.field_with_name(column).expect("the column");
                    field.data_type().clone()
                });
                types.push(read);
            }
        }
        for child in plan.children() {
            types.extend(read_types(child, column));
        }
        types
    }

    /// Filters on `type` and `series` over a real lake file: the first scan reads its footer
    /// (text as views), the next reads `type` and `series` as dictionaries with the
    /// comparisons made on them. Both give the answer computed from the rows written.
    #[tokio::test]
    async fn a_file_whose_footer_is_cached_is_read_with_type_and_series_as_dictionaries()
    -> Result<()> {
        let context = lake_context().await?;
        let queries = [
            ("type = 'telemetry' AND series = 'load'", vec!["load"]),
            (
                "series IN ('gps.speed', 'temperature')",
                vec!["gps.speed", "temperature"],
            ),
            (
                "series <> 'load' AND type <> 'environment'",
                vec!["gps.speed", "memory.percent-used"],
            ),
            (
                "type = '' AND series NOT IN ('load')",
                vec!["memory.percent-used"],
            ),
            (
                "series > 'load'",
                vec!["memory.percent-used", "temperature"],
            ),
        ];
        for (index, (filter, series)) in queries.into_iter().enumerate() {
            let sql = format!(
                "SELECT series, count(*), sum(value) FROM measurements WHERE {filter} \
                 GROUP BY series ORDER BY series"
            );
            let plan = context.sql(&sql).await?.create_physical_plan().await?;
            let dictionary = Some(dictionary_type());
            let want_read = match index {
                0 => vec![None],
                _ => vec![dictionary.clone()],
            };
            assert_eq!(read_types(&plan, "series"), want_read, "{sql}");
            assert_eq!(read_types(&plan, "type"), want_read, "{sql}");
            let batches = collect(plan, context.task_ctx()).await?;
            let got = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
            let mut want = vec![];
            for name in series {
                let rows = (0..ROWS).filter(|row| SERIES[row % SERIES.len()].1 == name);
                let (count, sum) = rows.fold((0, 0.0), |(n, s), row| (n + 1, s + row as f64));
                want.push(format!("| {name} | {count} | {sum:.1} |"));
            }
            let got: Vec<String> = got
                .to_string()
                .lines()
                .filter(|line| line.starts_with("| ") && !line.contains("count("))
                .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            assert_eq!(got, want, "{sql}");
        }
        Ok(())
    }
}
