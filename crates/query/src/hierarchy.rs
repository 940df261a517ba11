//! The twin hierarchy in SQL: `entities`, `entity_history`, `entity_ancestors`,
//! `entity_ancestors_history`, the table functions `entities_at`, `entity_ancestors_at`,
//! `descendants` and `ancestors`, and the scalar functions `entity_path`, `entity_parent` (now or
//! as of a time) and `in_subtree`.
//!
//! All of them read one [`Hierarchy`], folded from `entity_changes` and rebuilt only when that
//! table changes, so a full-history join pays for the fold once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder,
    TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::physical_plan::{ExecutionPlan, collect};
use twinlake_model::{
    Ancestry, ChangeKind, ColumnType, EntityChangeRow, EntityFacts, EntityHistory, EntityKind,
    EntityVersion, Table, UTC, intersect, path_of, valid_at,
};
use twinlake_store::LiveTables;

use crate::table_derived::TableDerived;

/// The hierarchy as `entity_changes` says now, with the indexes the functions use.
#[derive(Debug)]
pub(crate) struct Hierarchy {
    history: EntityHistory,
    ancestry: Vec<Ancestry>,
    /// Entity → the indexes of its versions in `history`, oldest first.
    versions_of: HashMap<String, Vec<usize>>,
    /// Per root: every entity that was ever below it, with the stretches it was.
    subtrees: Mutex<HashMap<String, Arc<Subtree>>>,
}

/// How many subtrees one hierarchy keeps built: far more than the depots and trucks a
/// dashboard asks about at once.
const MEMOISED_SUBTREES: usize = 1024;

/// `[from, to)` in ns; `to` is `None` while it lasts.
pub(crate) type Span = (i64, Option<i64>);

/// The entities below one root through time.
#[derive(Debug, Default)]
pub(crate) struct Subtree {
    /// Descendant → the stretches of time it was below the root.
    spans: HashMap<String, Vec<Span>>,
}

impl Subtree {
    /// The stretches of time `entity` was below the root.
    fn spans_of(&self, entity: &str) -> &[Span] {
        self.spans.get(entity).map_or(&[], Vec::as_slice)
    }

    /// The entities below the root now (`ever`: at any time).
    pub(crate) fn members(&self, ever: bool) -> impl Iterator<Item = &str> {
        self.spans
            .iter()
            .filter(move |(_, spans)| ever || spans.iter().any(|(_, to)| to.is_none()))
            .map(|(entity, _)| entity.as_str())
    }
}

impl Hierarchy {
    pub(crate) fn new(history: EntityHistory) -> Self {
        Self {
            ancestry: history.ancestry(),
            versions_of: history.version_indexes(),
            history,
            subtrees: Mutex::default(),
        }
    }

    pub(crate) fn history(&self) -> &EntityHistory {
        &self.history
    }

    /// The version of `entity` at `time`.
    fn version_at(&self, entity: &str, time: i64) -> Option<&EntityVersion> {
        let versions = self.history.versions();
        self.versions_of
            .get(entity)?
            .iter()
            .map(|&index| &versions[index])
            .find(|version| valid_at(version.valid_from, version.valid_to, Some(time)))
    }

    /// `entity` and its ancestors at `time`, nearest first, with the stretch around `time`
    /// over which every one of those versions holds (so over which the chain holds). None when
    /// the entity had no version then.
    pub(crate) fn chain_at(&self, entity: &str, time: i64) -> Option<(Vec<&EntityVersion>, Span)> {
        let mut chain = Vec::new();
        let mut span: Span = (i64::MIN, None);
        let mut next = Some(entity);
        while let Some(id) = next {
            let version = self.version_at(id, time)?;
            span = intersect(span, (version.valid_from, version.valid_to))?;
            chain.push(version);
            // A cycle cannot be registered, but a bound keeps a corrupt table from looping.
            if chain.len() > self.versions_of.len() {
                return None;
            }
            next = version.facts.parent.as_deref();
        }
        Some((chain, span))
    }

    /// The path (`entity_path`) or the parent of `entity` at `time` (now when None), with the
    /// stretch of time the answer holds for.
    fn relative_at(&self, entity: &str, time: Option<i64>, what: Relative) -> Option<AsOf> {
        let Some(time) = time else {
            let value = match what {
                Relative::Path => self.history.path(entity),
                Relative::Parent => self.history.current_parent(entity),
            };
            return Some(AsOf {
                value,
                span: (i64::MIN, None),
            });
        };
        let (chain, span) = self.chain_at(entity, time)?;
        let value = match what {
            Relative::Path => Some(path_of(&chain)),
            Relative::Parent => chain.first().and_then(|v| v.facts.parent.clone()),
        };
        Some(AsOf { value, span })
    }

    /// The entities ever below `root`, memoised per hierarchy.
    pub(crate) fn subtree(&self, root: &str) -> Arc<Subtree> {
        if let Ok(cached) = self.subtrees.lock()
            && let Some(subtree) = cached.get(root)
        {
            return Arc::clone(subtree);
        }
        let mut subtree = Subtree::default();
        for row in self.ancestry.iter().filter(|a| a.ancestor == root) {
            subtree
                .spans
                .entry(row.descendant.clone())
                .or_default()
                .push((row.valid_from, row.valid_to));
        }
        let subtree = Arc::new(subtree);
        // A root per row (`in_subtree(entity, entity)`) must not grow the memo without bound:
        // past its size, subtrees are built for the query and not kept.
        if let Ok(mut cached) = self.subtrees.lock()
            && cached.len() < MEMOISED_SUBTREES
        {
            cached.insert(root.to_owned(), Arc::clone(&subtree));
        }
        subtree
    }
}

/// Folds `entity_changes` into a [`Hierarchy`] when the table has changed since the last fold.
#[derive(Debug)]
pub(crate) struct HierarchyCache {
    changes: Arc<dyn TableProvider>,
    /// The last fold and the `entity_changes` state it was built from. A fold holds its
    /// turn to its end, even when the query that started it timed out meanwhile: the next
    /// query waits for that fold instead of starting another.
    fold: Arc<TableDerived<Hierarchy>>,
}

impl HierarchyCache {
    pub(crate) fn new(live: Arc<LiveTables>, changes: Arc<dyn TableProvider>) -> Self {
        let empty = Hierarchy::new(EntityHistory::new());
        Self {
            changes,
            fold: Arc::new(TableDerived::new(Table::EntityChanges, live, empty)),
        }
    }

    /// The hierarchy of the last [`HierarchyCache::load`]: what the scalar functions see, as
    /// they cannot wait for a fold.
    pub(crate) fn latest(&self) -> Arc<Hierarchy> {
        self.fold
            .latest()
            .unwrap_or_else(|| Arc::new(Hierarchy::new(EntityHistory::new())))
    }

    /// The hierarchy as `entity_changes` holds it now.
    pub(crate) async fn load(&self, state: &dyn Session) -> Result<Arc<Hierarchy>> {
        if let Some(current) = self.fold.current() {
            return Ok(current);
        }
        let one_fold_at_a_time = self.fold.computing().await;
        if let Some(current) = self.fold.current() {
            return Ok(current);
        }
        let changes = self.fold.changes();
        let plan = self.changes.scan(state, None, &[], None).await?;
        let batches = collect(plan, state.task_ctx()).await?;
        let rows = change_rows(&batches)?;
        // The closure grows with entities × depth: fold off the async runtime. The fold keeps
        // the turn and publishes its result itself, so a query that stops waiting for it
        // (timeout) neither wastes it nor lets a second fold start beside it.
        let fold = Arc::clone(&self.fold);
        tokio::task::spawn_blocking(move || {
            let hierarchy = Arc::new(Hierarchy::new(EntityHistory::from_changes(rows)));
            fold.publish(changes, Arc::clone(&hierarchy));
            drop(one_fold_at_a_time);
            hierarchy
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// The rows of `entity_changes` in time order (arrival order among equal times).
fn change_rows(batches: &[RecordBatch]) -> Result<Vec<EntityChangeRow>> {
    let mut rows = Vec::new();
    for batch in batches {
        let text = |name: &str| -> Result<StringArray> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| DataFusionError::Internal(format!("entity_changes.{name}")))?;
            Ok(cast(column, &DataType::Utf8)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .unwrap_or_else(|| StringArray::new_null(batch.num_rows())))
        };
        let time = time_column(batch)?;
        let (gateway, topic_id) = (text("gateway")?, text("topic_id")?);
        let (entity, change, kind, parent) = (
            text("entity")?,
            text("change")?,
            text("kind")?,
            text("parent")?,
        );
        let (external_id, name, entity_type, attributes) = (
            text("external_id")?,
            text("name")?,
            text("type")?,
            text("attributes")?,
        );
        let value = |column: &StringArray, row: usize| {
            column.is_valid(row).then(|| column.value(row).to_owned())
        };
        for row in 0..batch.num_rows() {
            let Some(change) = ChangeKind::parse(change.value(row)) else {
                continue;
            };
            let facts = kind
                .is_valid(row)
                .then(|| EntityKind::parse(kind.value(row)))
                .flatten()
                .map(|kind| EntityFacts {
                    gateway: gateway.value(row).to_owned(),
                    topic_id: topic_id.value(row).to_owned(),
                    kind,
                    parent: value(&parent, row),
                    external_id: value(&external_id, row),
                    name: value(&name, row),
                    entity_type: value(&entity_type, row),
                    attributes: value(&attributes, row),
                });
            rows.push(EntityChangeRow {
                time: time.value(row),
                entity: entity.value(row).to_owned(),
                change,
                facts,
            });
        }
    }
    // Stable: rows of equal time keep the order they were read in (arrival, for rows in memory).
    rows.sort_by_key(|row| row.time);
    Ok(rows)
}

fn time_column(batch: &RecordBatch) -> Result<TimestampNanosecondArray> {
    batch
        .column_by_name("time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("entity_changes.time is not ns".into()))
}

/// One of the hierarchy's relations, as a table.
#[derive(Debug, Clone)]
pub(crate) enum Relation {
    /// `entities`, or `entities_at(t)`.
    Entities { at: Option<i64> },
    /// `entity_history`.
    EntityHistory,
    /// `entity_ancestors`, or `entity_ancestors_at(t)`.
    Ancestors { at: Option<i64> },
    /// `entity_ancestors_history`.
    AncestorsHistory,
    /// `descendants(root[, t])`: (entity, depth) below `root`.
    DescendantsOf { root: String, at: Option<i64> },
    /// `ancestors(entity[, t])`: (entity, depth) above `entity`.
    AncestorsOf { entity: String, at: Option<i64> },
}

pub(crate) fn time_type() -> DataType {
    ColumnType::Time.data_type()
}

fn entity_fields() -> Vec<Field> {
    vec![
        Field::new("gateway", DataType::Utf8, false),
        Field::new("entity", DataType::Utf8, false),
        Field::new("topic_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("parent", DataType::Utf8, true),
        Field::new("external_id", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, true),
        Field::new("registered_at", time_type(), true),
        Field::new("updated_at", time_type(), true),
    ]
}

fn validity_fields() -> [Field; 2] {
    [
        Field::new("valid_from", time_type(), false),
        Field::new("valid_to", time_type(), true),
    ]
}

fn ancestry_fields() -> Vec<Field> {
    vec![
        Field::new("gateway", DataType::Utf8, false),
        Field::new("ancestor", DataType::Utf8, false),
        Field::new("descendant", DataType::Utf8, false),
        Field::new("depth", DataType::UInt32, false),
    ]
}

impl Relation {
    fn schema(&self) -> SchemaRef {
        let fields = match self {
            Self::Entities { .. } => entity_fields(),
            Self::EntityHistory => [entity_fields(), validity_fields().to_vec()].concat(),
            Self::Ancestors { .. } => ancestry_fields(),
            Self::AncestorsHistory => [ancestry_fields(), validity_fields().to_vec()].concat(),
            Self::DescendantsOf { .. } | Self::AncestorsOf { .. } => vec![
                Field::new("entity", DataType::Utf8, false),
                Field::new("depth", DataType::UInt32, false),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    fn batch(&self, hierarchy: &Hierarchy) -> Result<RecordBatch> {
        let history = hierarchy.history();
        let columns = match self {
            Self::Entities { at } => {
                let versions: Vec<_> = history
                    .versions()
                    .iter()
                    .filter(|v| valid_at(v.valid_from, v.valid_to, *at))
                    .collect();
                entity_columns(&versions, false)
            }
            Self::EntityHistory => {
                let versions: Vec<_> = history.versions().iter().collect();
                entity_columns(&versions, true)
            }
            Self::Ancestors { at } => {
                let rows: Vec<_> = hierarchy
                    .ancestry
                    .iter()
                    .filter(|a| valid_at(a.valid_from, a.valid_to, *at))
                    .collect();
                ancestry_columns(&rows, false)
            }
            Self::AncestorsHistory => {
                let rows: Vec<_> = hierarchy.ancestry.iter().collect();
                ancestry_columns(&rows, true)
            }
            Self::DescendantsOf { root, at } => {
                let rows = hierarchy
                    .ancestry
                    .iter()
                    .filter(|a| a.ancestor == *root && valid_at(a.valid_from, a.valid_to, *at))
                    .map(|a| (a.descendant.as_str(), a.depth));
                entity_depth_columns(rows)
            }
            Self::AncestorsOf { entity, at } => {
                let rows = hierarchy
                    .ancestry
                    .iter()
                    .filter(|a| a.descendant == *entity && valid_at(a.valid_from, a.valid_to, *at))
                    .map(|a| (a.ancestor.as_str(), a.depth));
                entity_depth_columns(rows)
            }
        };
        Ok(RecordBatch::try_new(self.schema(), columns)?)
    }
}

fn text_column<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

fn time_array(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        values
            .collect::<TimestampNanosecondArray>()
            .with_timezone(UTC),
    )
}

fn entity_columns(versions: &[&EntityVersion], validity: bool) -> Vec<ArrayRef> {
    let mut columns = vec![
        text_column(versions.iter().map(|v| Some(v.facts.gateway.as_str()))),
        text_column(versions.iter().map(|v| Some(v.entity.as_str()))),
        text_column(versions.iter().map(|v| Some(v.facts.topic_id.as_str()))),
        text_column(versions.iter().map(|v| Some(v.facts.kind.as_str()))),
        text_column(versions.iter().map(|v| v.facts.parent.as_deref())),
        text_column(versions.iter().map(|v| v.facts.external_id.as_deref())),
        text_column(versions.iter().map(|v| v.facts.name.as_deref())),
        text_column(versions.iter().map(|v| v.facts.entity_type.as_deref())),
        text_column(versions.iter().map(|v| v.facts.attributes.as_deref())),
        time_array(versions.iter().map(|v| v.registered_at)),
        time_array(versions.iter().map(|v| v.updated_at)),
    ];
    if validity {
        columns.push(time_array(versions.iter().map(|v| Some(v.valid_from))));
        columns.push(time_array(versions.iter().map(|v| v.valid_to)));
    }
    columns
}

fn ancestry_columns(rows: &[&Ancestry], validity: bool) -> Vec<ArrayRef> {
    let mut columns: Vec<ArrayRef> = vec![
        text_column(rows.iter().map(|a| Some(a.gateway.as_str()))),
        text_column(rows.iter().map(|a| Some(a.ancestor.as_str()))),
        text_column(rows.iter().map(|a| Some(a.descendant.as_str()))),
        Arc::new(rows.iter().map(|a| a.depth).collect::<UInt32Array>()),
    ];
    if validity {
        columns.push(time_array(rows.iter().map(|a| Some(a.valid_from))));
        columns.push(time_array(rows.iter().map(|a| a.valid_to)));
    }
    columns
}

fn entity_depth_columns<'a>(rows: impl Iterator<Item = (&'a str, u32)>) -> Vec<ArrayRef> {
    let (entities, depths): (Vec<&str>, Vec<u32>) = rows.unzip();
    vec![
        Arc::new(StringArray::from(entities)),
        Arc::new(UInt32Array::from(depths)),
    ]
}

/// A hierarchy relation as a table: computed from the current fold when scanned.
#[derive(Debug)]
pub(crate) struct HierarchyTable {
    relation: Relation,
    cache: Arc<HierarchyCache>,
}

impl HierarchyTable {
    pub(crate) fn new(relation: Relation, cache: Arc<HierarchyCache>) -> Self {
        Self { relation, cache }
    }
}

#[async_trait::async_trait]
impl TableProvider for HierarchyTable {
    fn schema(&self) -> SchemaRef {
        self.relation.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let hierarchy = self.cache.load(state).await?;
        let batch = self.relation.batch(&hierarchy)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}

/// Which table function: its arguments decide the relation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HierarchyFunction {
    EntitiesAt,
    EntityAncestorsAt,
    Descendants,
    Ancestors,
}

impl HierarchyFunction {
    pub(crate) const ALL: [Self; 4] = [
        Self::EntitiesAt,
        Self::EntityAncestorsAt,
        Self::Descendants,
        Self::Ancestors,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::EntitiesAt => "entities_at",
            Self::EntityAncestorsAt => "entity_ancestors_at",
            Self::Descendants => "descendants",
            Self::Ancestors => "ancestors",
        }
    }
}

/// A table function of the hierarchy, e.g. `descendants('device/plant1//', TIMESTAMP '…')`.
#[derive(Debug)]
pub(crate) struct HierarchyTableFunction {
    function: HierarchyFunction,
    cache: Arc<HierarchyCache>,
}

impl HierarchyTableFunction {
    pub(crate) fn new(function: HierarchyFunction, cache: Arc<HierarchyCache>) -> Self {
        Self { function, cache }
    }
}

impl TableFunctionImpl for HierarchyTableFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let name = self.function.name();
        let exprs = args.exprs();
        let relation = match (self.function, exprs) {
            (HierarchyFunction::EntitiesAt, [at]) => Relation::Entities {
                at: Some(timestamp_argument(name, at)?),
            },
            (HierarchyFunction::EntityAncestorsAt, [at]) => Relation::Ancestors {
                at: Some(timestamp_argument(name, at)?),
            },
            (HierarchyFunction::Descendants, [root, rest @ ..]) if rest.len() <= 1 => {
                Relation::DescendantsOf {
                    root: entity_argument(name, root)?,
                    at: rest
                        .first()
                        .map(|at| timestamp_argument(name, at))
                        .transpose()?,
                }
            }
            (HierarchyFunction::Ancestors, [entity, rest @ ..]) if rest.len() <= 1 => {
                Relation::AncestorsOf {
                    entity: entity_argument(name, entity)?,
                    at: rest
                        .first()
                        .map(|at| timestamp_argument(name, at))
                        .transpose()?,
                }
            }
            (HierarchyFunction::EntitiesAt | HierarchyFunction::EntityAncestorsAt, _) => {
                return plan_err!("{name}(time) takes one timestamp");
            }
            _ => return plan_err!("{name}(entity [, time]) takes an entity and a timestamp"),
        };
        Ok(Arc::new(HierarchyTable::new(
            relation,
            Arc::clone(&self.cache),
        )))
    }
}

fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value),
        _ => None,
    }
}

fn entity_argument(function: &str, expr: &Expr) -> Result<String> {
    match literal(expr).and_then(text_of) {
        Some(text) => Ok(text.to_owned()),
        None => plan_err!("{function}: the entity must be a text literal such as 'device/main//'"),
    }
}

pub(crate) fn text_of(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s),
        _ => None,
    }
}

fn timestamp_argument(function: &str, expr: &Expr) -> Result<i64> {
    let nanos = literal(expr).and_then(|value| {
        value
            .cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None))
            .ok()
    });
    match nanos {
        Some(ScalarValue::TimestampNanosecond(Some(ns), _)) => Ok(ns),
        _ => plan_err!(
            "{function}: the time must be a timestamp, e.g. TIMESTAMP '2026-11-20T08:00:00Z'"
        ),
    }
}

/// What an as-of lookup answers for one entity, and the stretch of time `[from, to)` around
/// the asked time over which the same answer holds: rows sorted by entity and time (as scans
/// give them) look up once per stretch, not once per row.
#[derive(Debug)]
pub(crate) struct AsOf {
    pub(crate) value: Option<String>,
    pub(crate) span: Span,
}

/// What `relative_at` answers.
#[derive(Debug, Clone, Copy)]
enum Relative {
    Path,
    Parent,
}

/// One text per row from `look_up(entity, time)`, asked again only when the entity changes or
/// the time leaves the stretch the last answer holds for. An entity without an answer at that
/// time gives NULL.
pub(crate) fn look_up_per_stretch(
    entities: &StringArray,
    times: Option<&TimestampNanosecondArray>,
    mut look_up: impl FnMut(&str, Option<i64>) -> Option<AsOf>,
) -> StringArray {
    let mut values = StringBuilder::with_capacity(entities.len(), entities.len() * 16);
    let mut last: Option<(&str, AsOf)> = None;
    for row in 0..entities.len() {
        let time = times.map(|t| (!t.is_null(row)).then(|| t.value(row)));
        if entities.is_null(row) || time == Some(None) {
            values.append_null();
            continue;
        }
        let (entity, time) = (entities.value(row), time.flatten());
        let holds = last.as_ref().is_some_and(|(e, answer)| {
            *e == entity && time.is_none_or(|t| valid_at(answer.span.0, answer.span.1, Some(t)))
        });
        if !holds {
            last = look_up(entity, time).map(|answer| (entity, answer));
        }
        match &last {
            Some((e, answer)) if *e == entity => values.append_option(answer.value.as_deref()),
            _ => values.append_null(),
        }
    }
    values.finish()
}

/// The scalar functions over the hierarchy of the running query.
#[derive(Debug)]
pub(crate) enum HierarchyScalar {
    /// `entity_path(entity [, time])`: `main/depot01/truck0001`, now or at `time`.
    EntityPath,
    /// `entity_parent(entity [, time])`: the parent's entity name, now or at `time`.
    EntityParent,
    /// `in_subtree(entity, root [, time])`: whether `entity` is `root` or below it (at `time`).
    InSubtree,
}

#[derive(Debug)]
pub(crate) struct HierarchyUdf {
    function: HierarchyScalar,
    signature: Signature,
    cache: Arc<HierarchyCache>,
}

impl PartialEq for HierarchyUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && Arc::ptr_eq(&self.cache, &other.cache)
    }
}

impl Eq for HierarchyUdf {}

impl Hash for HierarchyUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

/// The name of the subtree predicate, which file pruning recognises.
pub(crate) const IN_SUBTREE: &str = "in_subtree";

impl HierarchyUdf {
    pub(crate) fn new(function: HierarchyScalar, cache: Arc<HierarchyCache>) -> Self {
        let signature = match function {
            HierarchyScalar::EntityPath | HierarchyScalar::EntityParent => Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, time_type()]),
                ],
                Volatility::Stable,
            ),
            HierarchyScalar::InSubtree => Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8, time_type()]),
                ],
                Volatility::Stable,
            ),
        };
        Self {
            function,
            signature,
            cache,
        }
    }
}

impl ScalarUDFImpl for HierarchyUdf {
    fn name(&self) -> &str {
        match self.function {
            HierarchyScalar::EntityPath => "entity_path",
            HierarchyScalar::EntityParent => "entity_parent",
            HierarchyScalar::InSubtree => IN_SUBTREE,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.function {
            HierarchyScalar::EntityPath | HierarchyScalar::EntityParent => DataType::Utf8,
            HierarchyScalar::InSubtree => DataType::Boolean,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let hierarchy = self.cache.latest();
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let entities = string_array(&arrays[0])?;
        match self.function {
            HierarchyScalar::EntityPath | HierarchyScalar::EntityParent => {
                let what = match self.function {
                    HierarchyScalar::EntityParent => Relative::Parent,
                    _ => Relative::Path,
                };
                let times = arrays.get(1).map(time_array_of).transpose()?;
                let values = look_up_per_stretch(&entities, times.as_ref(), |entity, time| {
                    hierarchy.relative_at(entity, time, what)
                });
                Ok(ColumnarValue::Array(Arc::new(values)))
            }
            HierarchyScalar::InSubtree => {
                let ColumnarValue::Scalar(root) = &args.args[1] else {
                    return exec_err!("in_subtree: the root must be a text literal");
                };
                let Some(root) = text_of(root) else {
                    return exec_err!("in_subtree: the root must be a text literal");
                };
                let subtree = hierarchy.subtree(root);
                let times = arrays.get(2).map(time_array_of).transpose()?;
                // Rows come sorted by entity from the files: look each run up once.
                let mut run: Option<(&str, bool, &[Span])> = None;
                let matches: BooleanArray = (0..rows)
                    .map(|row| {
                        if entities.is_null(row) {
                            return None;
                        }
                        let entity = entities.value(row);
                        let (is_root, spans) = match run {
                            Some((last, is_root, spans)) if last == entity => (is_root, spans),
                            _ => {
                                let looked_up = (entity == root, subtree.spans_of(entity));
                                run = Some((entity, looked_up.0, looked_up.1));
                                looked_up
                            }
                        };
                        let time = match &times {
                            Some(times) if times.is_null(row) => return None,
                            Some(times) => Some(times.value(row)),
                            None => None,
                        };
                        Some(is_root || spans.iter().any(|&(from, to)| valid_at(from, to, time)))
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(matches)))
            }
        }
    }
}

pub(crate) fn time_array_of(array: &ArrayRef) -> Result<TimestampNanosecondArray> {
    array
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .cloned()
        .ok_or_else(|| DataFusionError::Execution("expected a time in nanoseconds".into()))
}

pub(crate) fn string_array(array: &ArrayRef) -> Result<StringArray> {
    cast(array, &DataType::Utf8)?
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| DataFusionError::Execution("expected text".into()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use datafusion::prelude::SessionContext;
    use twinlake_model::{
        EntityHistory, EntityTopicId, FleetTopics, Parsed, Table, TableBuilders, Timestamp,
        main_device_registration,
    };
    use twinlake_store::LiveTables;
    use twinlake_wal::RecordId;

    use super::{Hierarchy, HierarchyCache, MEMOISED_SUBTREES};
    use crate::lake_table::LakeTableProvider;

    /// `entity_changes` rows of a gateway's main device and `count` child devices under it.
    fn registrations(count: usize) -> datafusion::arrow::array::RecordBatch {
        let mut builders = TableBuilders::new();
        let topics = FleetTopics::default();
        let at = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
        let (gateway, main) = (topics.default_gateway(), EntityTopicId::main_device());
        builders.append_entity_change(gateway, &main, &main_device_registration(gateway, at));
        for n in 0..count {
            let topic = format!("te/device/child{n}//");
            let Parsed::Data(message) = twinlake_model::parse_message(
                &topics,
                topic.as_bytes(),
                br#"{"@type":"child-device"}"#,
                at,
            ) else {
                panic!("a valid registration");
            };
            builders.append(&message);
        }
        let (table, batch) = builders.finish().unwrap().remove(0);
        assert_eq!(table, Table::EntityChanges);
        batch
    }

    #[test]
    fn a_fold_outliving_its_query_is_published_not_done_again() {
        // One thread for blocking work, kept busy: a fold can start only when the test says.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let live = Arc::new(LiveTables::new());
            live.append(Table::EntityChanges, registrations(100), RecordId(1))
                .unwrap();
            let changes = LakeTableProvider::new(Table::EntityChanges, Arc::clone(&live), None);
            let cache = HierarchyCache::new(live, Arc::new(changes));
            let state = SessionContext::new().state();
            let (release, busy) = std::sync::mpsc::channel::<()>();
            let blocker = tokio::task::spawn_blocking(move || busy.recv());

            let first = tokio::time::timeout(Duration::from_millis(300), cache.load(&state)).await;
            assert!(first.is_err(), "the fold had no thread to run on");
            release.send(()).unwrap();
            blocker.await.unwrap().unwrap();

            // The query stopped waiting, but its fold runs and publishes what it built.
            let deadline = Instant::now() + Duration::from_secs(10);
            // The children and the main device they name as parent.
            while cache.latest().history().known() < 101 {
                assert!(
                    Instant::now() < deadline,
                    "the fold's result was thrown away"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let published = cache.latest();
            let next = cache.load(&state).await.unwrap();
            assert!(Arc::ptr_eq(&published, &next), "a second fold ran");
        });
    }

    #[test]
    fn subtrees_asked_for_by_every_row_do_not_grow_the_memo_without_bound() {
        let hierarchy = Hierarchy::new(EntityHistory::new());
        for n in 0..3 * MEMOISED_SUBTREES {
            // A root that is no entity still answers (with nothing below it).
            assert_eq!(
                hierarchy
                    .subtree(&format!("device/r{n}//"))
                    .members(true)
                    .count(),
                0
            );
        }
        let memoised = hierarchy
            .subtrees
            .lock()
            .map(|m| m.len())
            .unwrap_or(usize::MAX);
        assert_eq!(memoised, MEMOISED_SUBTREES);
    }
}
