//! The join of rows to what was valid at their time: `x.key = v.key AND x.time >= v.valid_from
//! AND (v.valid_to IS NULL OR x.time < v.valid_to)`, the shape of every "as of the reading"
//! question (the hierarchy, a gateway's depot, a device's firmware, each at the time); and of
//! rows to the bands of time around something, `x.time BETWEEN w.start AND w.end` (the events
//! around each alarm of the same entity).
//!
//! DataFusion plans it as a hash join with the bounds as a join filter: every probe row's
//! key hashed, its candidate build rows gathered, the filter's columns copied into a batch and
//! evaluated, then the output taken; an entity with a hundred alarms tests each of its events
//! against all hundred. The build side is small (an entity has a handful of versions) and the
//! probe side large and sorted by key, so [`ValidityJoinExec`] looks a key up once per run of
//! equal keys and finds the versions holding at a time by binary search on their starts. It
//! also decides its own dynamic filter: the keys pushed into the scan only when there are few
//! enough of them to prune, never a lookup that rejects nothing.
//!
//! It must not change an answer: it replaces only a collect-left inner hash join whose one
//! equality is on text and whose filter is exactly a lower and an upper bound on one probe
//! time by two build columns, and produces the same columns, rows and partitioning.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, LargeStringArray, RecordBatch, RecordBatchOptions,
    StringArray, StringViewArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinSide, JoinType, NullEquality, Result, Statistics};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, DynamicFilterPhysicalExpr, InListExpr, IsNullExpr, lit,
};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter_pushdown::{
    ChildFilterDescription, ChildPushdownResult, FilterDescription, FilterPushdownPhase,
    FilterPushdownPropagation,
};
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ChildStats, StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, PhysicalExpr,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::OnceCell;

/// The plan rule putting a [`ValidityJoinExec`] where a hash join has its shape.
#[derive(Debug, Default)]
pub(crate) struct ValidityJoins;

impl PhysicalOptimizerRule for ValidityJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match ValidityJoinExec::try_new(Arc::clone(&node)) {
            Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
            None => Ok(Transformed::no(node)),
        })
        .map(|done| done.data)
    }

    fn name(&self) -> &str {
        "ValidityJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Where the join finds its parts: the build side holds the versions, the probe side the rows.
#[derive(Debug, Clone)]
struct Shape {
    build_key: Arc<dyn PhysicalExpr>,
    probe_key: Arc<dyn PhysicalExpr>,
    /// Column of the probe side's time.
    probe_time: usize,
    /// The build side's columns bounding the time, and how.
    from: Bound,
    to: Bound,
    /// Each output column: from which side, which column.
    output: Vec<(JoinSide, usize)>,
}

impl Shape {
    /// The shape of `join`, if it is the validity join this operator replaces.
    fn of(join: &HashJoinExec) -> Option<Self> {
        if *join.join_type() != JoinType::Inner
            || *join.partition_mode() != PartitionMode::CollectLeft
            || join.null_equality() != NullEquality::NullEqualsNothing
            || join.null_aware
            || join.fetch().is_some()
        {
            return None;
        }
        let [(build_key, probe_key)] = join.on() else {
            return None;
        };
        let (build_schema, probe_schema) = (join.left().schema(), join.right().schema());
        if !is_text(&build_key.data_type(&build_schema).ok()?)
            || !is_text(&probe_key.data_type(&probe_schema).ok()?)
        {
            return None;
        }
        let filter = join.filter()?;
        let side_of = FilterColumns(filter);
        let (mut from, mut to) = (None, None);
        let mut time = None;
        let conjuncts = split_conjunction(filter.expression());
        if conjuncts.len() != 2 {
            return None;
        }
        for conjunct in conjuncts {
            let (t, bound) = time_bound(conjunct, &side_of)?;
            if *time.get_or_insert(t) != t {
                return None;
            }
            if bound.lower { &mut from } else { &mut to }.replace(bound);
        }
        let (time, from, to) = (time?, from?, to?);
        let time_type = probe_schema.field(time).data_type();
        let is_time = matches!(time_type, DataType::Timestamp(_, _) | DataType::Int64);
        if !is_time
            || build_schema.field(from.column).data_type() != time_type
            || build_schema.field(to.column).data_type() != time_type
        {
            return None;
        }
        let left_columns = build_schema.fields().len();
        let full: Vec<(JoinSide, usize)> = (0..left_columns)
            .map(|i| (JoinSide::Left, i))
            .chain((0..probe_schema.fields().len()).map(|i| (JoinSide::Right, i)))
            .collect();
        let output = match &join.projection {
            Some(projection) => projection
                .iter()
                .map(|&i| full.get(i).copied())
                .collect::<Option<Vec<_>>>()?,
            None => full,
        };
        Some(Self {
            build_key: Arc::clone(build_key),
            probe_key: Arc::clone(probe_key),
            probe_time: time,
            from,
            to,
            output,
        })
    }
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The columns a join filter names, each on its side of the join.
struct FilterColumns<'a>(&'a JoinFilter);

impl FilterColumns<'_> {
    /// The side and column of `expr`, when it is a plain column.
    fn side_of(&self, expr: &Arc<dyn PhysicalExpr>) -> Option<(JoinSide, usize)> {
        let column = expr.downcast_ref::<Column>()?;
        let index = self.0.column_indices().get(column.index())?;
        Some((index.side, index.index))
    }
}

/// A build column bounding the probe side's time from below or above.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    column: usize,
    lower: bool,
    /// The time may equal the bound.
    inclusive: bool,
    /// A null bound holds every time (`to IS NULL OR t < to`); otherwise none, as in SQL.
    open_when_null: bool,
}

/// One bound on a probe time `t` by a build column `b`: `t >= b` or `t > b` (either way
/// round) below; `t < b` or `t <= b` above, alone or as `b IS NULL OR …` (either order).
/// Gives `t`'s column and the bound.
fn time_bound(expr: &Arc<dyn PhysicalExpr>, columns: &FilterColumns) -> Option<(usize, Bound)> {
    let binary = expr.downcast_ref::<BinaryExpr>()?;
    if let Some(found) = comparison(binary, columns) {
        return Some(found);
    }
    if *binary.op() != Operator::Or {
        return None;
    }
    let (is_null, less) = match binary.left().downcast_ref::<IsNullExpr>() {
        Some(is_null) => (is_null, binary.right()),
        None => (binary.right().downcast_ref::<IsNullExpr>()?, binary.left()),
    };
    let (t, bound) = comparison(less.downcast_ref::<BinaryExpr>()?, columns)?;
    match columns.side_of(is_null.arg())? {
        (JoinSide::Left, null_checked) if null_checked == bound.column && !bound.lower => Some((
            t,
            Bound {
                open_when_null: true,
                ..bound
            },
        )),
        _ => None,
    }
}

/// `t op b` or `b op t`, with `t` a probe column and `b` a build column, as a bound on `t`.
fn comparison(binary: &BinaryExpr, columns: &FilterColumns) -> Option<(usize, Bound)> {
    let (left, right) = (
        columns.side_of(binary.left())?,
        columns.side_of(binary.right())?,
    );
    // Written as `t op b`: with `b op t`, the operator turns round.
    let (t, b, op) = match (left, right) {
        ((JoinSide::Right, t), (JoinSide::Left, b)) => (t, b, *binary.op()),
        ((JoinSide::Left, b), (JoinSide::Right, t)) => (t, b, binary.op().swap()?),
        _ => return None,
    };
    let (lower, inclusive) = match op {
        Operator::GtEq => (true, true),
        Operator::Gt => (true, false),
        Operator::LtEq => (false, true),
        Operator::Lt => (false, false),
        _ => return None,
    };
    Some((
        t,
        Bound {
            column: b,
            lower,
            inclusive,
            open_when_null: false,
        },
    ))
}

/// The validity join: a [`HashJoinExec`]'s plan properties, schema and children, run by
/// looking up each run of equal keys once and picking versions by time.
#[derive(Debug)]
pub(crate) struct ValidityJoinExec {
    /// The [`HashJoinExec`] replaced: its properties, children and statistics stay this
    /// node's.
    join: Arc<dyn ExecutionPlan>,
    shape: Arc<Shape>,
    /// The versions, read once for all partitions.
    versions: Arc<OnceCell<Arc<Versions>>>,
    dynamic_filter: Option<Arc<DynamicFilterPhysicalExpr>>,
    metrics: ExecutionPlanMetricsSet,
}

impl ValidityJoinExec {
    fn try_new(join: Arc<dyn ExecutionPlan>) -> Option<Self> {
        let shape = Shape::of(join.downcast_ref::<HashJoinExec>()?)?;
        Some(Self {
            join,
            shape: Arc::new(shape),
            versions: Arc::new(OnceCell::new()),
            dynamic_filter: None,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Whether the versions are known to be more than a filter would list (`publish_filter`
    /// leaves it `true` then). A filter that stays `true` still makes the scan decode the key
    /// column ahead of the others and keep it in a cache to be read again: a twentieth of the
    /// CPU of a join over a fleet's whole history.
    fn too_many_versions_to_push(&self, config: &ConfigOptions) -> Result<bool> {
        let Some(build) = self.join.children().first().copied() else {
            return Ok(false);
        };
        let max = config
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values;
        let statistics =
            StatisticsContext::new().compute(build.as_ref(), &StatisticsArgs::new())?;
        Ok(matches!(
            statistics.num_rows,
            Precision::Exact(rows) if rows > max
        ))
    }

    /// This join with `dynamic_filter`, its versions not read and its metrics empty.
    fn unexecuted(&self, dynamic_filter: Option<Arc<DynamicFilterPhysicalExpr>>) -> Self {
        Self {
            join: Arc::clone(&self.join),
            shape: Arc::clone(&self.shape),
            versions: Arc::new(OnceCell::new()),
            dynamic_filter,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn with_join(&self, join: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        match Self::try_new(Arc::clone(&join)) {
            Some(exec) => Ok(Arc::new(Self {
                dynamic_filter: self.dynamic_filter.clone(),
                ..exec
            })),
            None => Ok(join),
        }
    }
}

impl ValidityJoinExec {
    /// Where each output column comes from: the build side (a version's column) or the
    /// probe side (a row's).
    pub(crate) fn output_columns(&self) -> &[(JoinSide, usize)] {
        &self.shape.output
    }

    /// The partition's probe rows matched to their versions, batch by batch, the versions
    /// read first (once for all partitions); the join's metrics count the rows matched.
    pub(crate) fn execute_matches(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<BoxStream<'static, Result<Matches>>> {
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let [build_plan, probe_plan] = self.join.children()[..] else {
            return datafusion::common::internal_err!("validity join without two inputs");
        };
        let probe = probe_plan.execute(partition, Arc::clone(&context))?;
        let build_plan = Arc::clone(build_plan);
        let versions = Arc::clone(&self.versions);
        let shape = Arc::clone(&self.shape);
        let dynamic_filter = self.dynamic_filter.clone();
        let probe_schema = probe_plan.schema();
        let batch_size = context.session_config().batch_size();
        let max_versions_pushed = context
            .session_config()
            .options()
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values;
        let state = ProbeState {
            probe,
            shape: Arc::clone(&shape),
            versions: None,
            pending: None,
            batch_size,
            metrics,
        };
        let stream = futures::stream::once(async move {
            let versions = versions
                .get_or_try_init(|| async {
                    let versions = Versions::read(build_plan, &shape, context).await?;
                    if let Some(filter) = dynamic_filter {
                        versions.publish_filter(
                            &filter,
                            &shape,
                            &probe_schema,
                            max_versions_pushed,
                        )?;
                    }
                    Ok::<_, datafusion::error::DataFusionError>(Arc::new(versions))
                })
                .await?;
            Ok(ProbeState {
                versions: Some(Arc::clone(versions)),
                ..state
            })
        })
        .map(|state: Result<ProbeState>| match state {
            Ok(state) => futures::stream::unfold(state, ProbeState::next).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten();
        Ok(stream.boxed())
    }
}

impl DisplayAs for ValidityJoinExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let shape = &self.shape;
        write!(
            f,
            "ValidityJoinExec: on=[({}, {})], probe time @{} within build {}@{}..@{}{}{}",
            shape.build_key,
            shape.probe_key,
            shape.probe_time,
            if shape.from.inclusive { "[" } else { "(" },
            shape.from.column,
            shape.to.column,
            if shape.to.inclusive { "]" } else { ")" },
            if shape.to.open_when_null {
                ", open when null"
            } else {
                ""
            }
        )?;
        if let Some(filter) = &self.dynamic_filter {
            write!(f, ", dynamic filter={filter}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ValidityJoinExec {
    fn name(&self) -> &str {
        "ValidityJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.join.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.join.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        // Rows leave in the probe side's order, each row's versions together.
        vec![false, true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.join.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = Arc::clone(&self.join).replace_children(children, options)?;
        self.with_join(join)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        #[expect(deprecated, reason = "the trait still requires it")]
        let join = Arc::clone(&self.join).with_new_children(children)?;
        self.with_join(join)
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.unexecuted(self.dynamic_filter.clone())))
    }

    fn dynamic_expressions_produced(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.dynamic_filter
            .iter()
            .map(|filter| Arc::clone(filter) as Arc<dyn PhysicalExpr>)
            .collect()
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.join.child_stats_requests(partition)
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.join.statistics_from_inputs(input_stats, args)
    }

    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        let build = ChildFilterDescription::all_unsupported(&parent_filters);
        let mut probe = ChildFilterDescription::all_unsupported(&parent_filters);
        if phase == FilterPushdownPhase::Post
            && self.dynamic_filter.is_none()
            && config.optimizer.enable_join_dynamic_filter_pushdown
            && !self.too_many_versions_to_push(config)?
        {
            probe = probe.with_self_filter(Arc::new(DynamicFilterPhysicalExpr::new(
                vec![Arc::clone(&self.shape.probe_key)],
                lit(true),
            )));
        }
        Ok(FilterDescription::new().with_child(build).with_child(probe))
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let pushed = child_pushdown_result
            .self_filters
            .get(1)
            .and_then(|filters| filters.first())
            .map(|filter| Arc::clone(&filter.predicate));
        let result = FilterPushdownPropagation::all_unsupported(child_pushdown_result);
        let Some(Ok(filter)) = pushed.map(|p| Arc::downcast::<DynamicFilterPhysicalExpr>(p)) else {
            return Ok(result);
        };
        Ok(result.with_updated_node(Arc::new(self.unexecuted(Some(filter)))))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let shape = Arc::clone(&self.shape);
        let batches = self.execute_matches(partition, context)?;
        // Putting the rows together counts in the join's time (the metrics sum by name).
        let elapsed = BaselineMetrics::new(&self.metrics, partition)
            .elapsed_compute()
            .clone();
        let output_schema = Arc::clone(&schema);
        let stream = batches.map(move |matches| {
            let _timer = elapsed.timer();
            output(&output_schema, &shape, &matches?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Text keys of one array, whichever of Arrow's string layouts it has.
enum Keys<'a> {
    Utf8(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> Keys<'a> {
    fn of(array: &'a ArrayRef) -> Result<Self> {
        match array.data_type() {
            DataType::Utf8 => Ok(Self::Utf8(array.as_string::<i32>())),
            DataType::LargeUtf8 => Ok(Self::Large(array.as_string::<i64>())),
            DataType::Utf8View => Ok(Self::View(array.as_string_view())),
            other => datafusion::common::internal_err!("validity join on a {other} key"),
        }
    }

    /// The end of the run of rows from `row` with `row`'s key (or, null, each alone). Rows
    /// decoded from one dictionary entry share their view, which spares comparing bytes.
    fn run_end(&self, row: usize, rows: usize) -> usize {
        let Some(key) = self.get(row) else {
            return row + 1;
        };
        let mut end = row + 1;
        if let Self::View(a) = self
            && a.null_count() == 0
        {
            let views = &a.views()[..rows];
            let view = views[row];
            while end < rows && views[end] == view {
                end += 1;
            }
        }
        while end < rows && self.get(end) == Some(key) {
            end += 1;
        }
        end
    }

    /// The key of `row`, `None` when null.
    fn get(&self, row: usize) -> Option<&'a [u8]> {
        match self {
            Self::Utf8(a) => a.is_valid(row).then(|| a.value(row).as_bytes()),
            Self::Large(a) => a.is_valid(row).then(|| a.value(row).as_bytes()),
            Self::View(a) => a.is_valid(row).then(|| a.value(row).as_bytes()),
        }
    }
}

/// The longest `IN` list DataFusion prunes Parquet pages by (`MAX_IN_LIST_SIZE` of
/// `datafusion-pruning`, which its page index pruning does not let settings change).
const PAGE_PRUNING_LIST: usize = 20;

/// Every version of the build side, by key, each key's in order of its start.
#[derive(Debug)]
pub(crate) struct Versions {
    pub(crate) batch: RecordBatch,
    /// The first and the last time each version holds at, both included (a version that
    /// holds at no time is in no key's list).
    first: Vec<i64>,
    last: Vec<i64>,
    by_key: HashMap<Box<[u8]>, KeyVersions>,
    _reservation: MemoryReservation,
}

#[derive(Debug)]
struct KeyVersions {
    rows: Vec<u32>,
    /// No two versions overlap, so at most one holds at any time.
    disjoint: bool,
    /// The longest a version holds: those holding at a time start this much before it at
    /// the earliest.
    longest: i64,
}

impl Versions {
    async fn read(
        plan: Arc<dyn ExecutionPlan>,
        shape: &Shape,
        context: Arc<TaskContext>,
    ) -> Result<Self> {
        let schema = plan.schema();
        let reservation =
            MemoryConsumer::new("ValidityJoin[versions]").register(context.memory_pool());
        let mut stream = plan.execute(0, context)?;
        let mut batches = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            batches.push(batch);
        }
        let batch = concat_batches(&schema, &batches)?;
        drop(batches);
        let rows = batch.num_rows();
        let keys = shape.build_key.evaluate(&batch)?.into_array(rows)?;
        let first = bound_times(batch.column(shape.from.column), shape.from)?;
        let last = bound_times(batch.column(shape.to.column), shape.to)?;
        let keys_of = Keys::of(&keys)?;
        let mut by_key: HashMap<Box<[u8]>, KeyVersions> = HashMap::new();
        for row in 0..rows {
            // A version without a key, or holding at no time (no start, a band without
            // an end), matches nothing, as in SQL.
            let Some(key) = keys_of.get(row) else {
                continue;
            };
            let (Some(from), Some(to)) = (first[row], last[row]) else {
                continue;
            };
            if from > to {
                continue;
            }
            let Ok(row) = u32::try_from(row) else {
                return datafusion::common::resources_err!(
                    "validity join: more than 2^32 versions"
                );
            };
            let versions = by_key.entry(key.into()).or_insert_with(|| KeyVersions {
                rows: Vec::new(),
                disjoint: true,
                longest: 0,
            });
            versions.rows.push(row);
            versions.longest = versions.longest.max(to.saturating_sub(from));
        }
        let first: Vec<i64> = first.into_iter().map(|v| v.unwrap_or(i64::MAX)).collect();
        let last: Vec<i64> = last.into_iter().map(|v| v.unwrap_or(i64::MIN)).collect();
        for versions in by_key.values_mut() {
            versions.rows.sort_by_key(|&row| first[row as usize]);
            versions.disjoint = versions
                .rows
                .windows(2)
                .all(|pair| last[pair[0] as usize] < first[pair[1] as usize]);
        }
        reservation.try_grow(by_key.len() * 64 + rows * 24)?;
        Ok(Self {
            batch,
            first,
            last,
            by_key,
            _reservation: reservation,
        })
    }

    /// Narrows the probe side's scan to the keys there are versions for, when the
    /// versions are few (a depot's trucks); for more (a fleet's twin) the list is tested on
    /// every row and against every page's statistics and rejects little: with 100 trucks'
    /// 312 versions it made 07 a third slower. The filter then stays `true`.
    fn publish_filter(
        &self,
        filter: &DynamicFilterPhysicalExpr,
        shape: &Shape,
        probe_schema: &SchemaRef,
        max_versions: usize,
    ) -> Result<()> {
        if self.batch.num_rows() > max_versions {
            filter.mark_complete();
            return Ok(());
        }
        let mut keys: Vec<String> = self
            .by_key
            .keys()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .collect();
        keys.sort_unstable();
        let probe_key_type = shape.probe_key.data_type(probe_schema)?;
        // Only the keys: a bound on the time as well (the earliest version's start) made
        // the scan read the time column's page index and test every row's time, and the
        // versions of a fleet's twin start with the lake. In lists of at most
        // `PAGE_PRUNING_LIST`, joined by OR: DataFusion prunes pages by a list only that
        // long, whatever `max_in_list_size` says (row groups it prunes by the setting).
        let mut predicate: Option<Arc<dyn PhysicalExpr>> = None;
        for chunk in keys.chunks(PAGE_PRUNING_LIST) {
            let chunk = cast(&StringArray::from_iter_values(chunk), &probe_key_type)?;
            let list = Arc::new(InListExpr::try_new_from_array(
                Arc::clone(&shape.probe_key),
                chunk,
                false,
                probe_schema,
            )?) as Arc<dyn PhysicalExpr>;
            predicate = Some(match predicate {
                Some(lists) => Arc::new(BinaryExpr::new(lists, Operator::Or, list)),
                None => list,
            });
        }
        let predicate = predicate.unwrap_or_else(|| lit(false));
        filter.update(predicate)?;
        filter.mark_complete();
        Ok(())
    }

    /// The first and the last time build row `row` holds at.
    fn validity(&self, row: u32) -> (i64, i64) {
        (self.first[row as usize], self.last[row as usize])
    }

    /// Calls `found` with each version of `versions` that holds at `time`, in order of
    /// their starts.
    fn at(&self, versions: &KeyVersions, time: i64, mut found: impl FnMut(u32)) {
        let started = versions
            .rows
            .partition_point(|&row| self.first[row as usize] <= time);
        if versions.disjoint {
            if let Some(&row) = started.checked_sub(1).and_then(|i| versions.rows.get(i))
                && time <= self.last[row as usize]
            {
                found(row);
            }
            return;
        }
        let earliest = time.saturating_sub(versions.longest);
        let candidates =
            versions.rows[..started].partition_point(|&row| self.first[row as usize] < earliest);
        for &row in &versions.rows[candidates..started] {
            if time <= self.last[row as usize] {
                found(row);
            }
        }
    }
}

/// The times a bound column allows, as the first or last time included: `None` where it
/// allows none (a null bound that is not open, a bound beyond the range of times), the
/// extreme time where a null bound is open.
fn bound_times(column: &ArrayRef, bound: Bound) -> Result<Vec<Option<i64>>> {
    let times = as_i64(column)?;
    let open = if bound.lower { i64::MIN } else { i64::MAX };
    Ok(times
        .iter()
        .map(|time| match (time, bound.inclusive, bound.lower) {
            (None, _, _) => bound.open_when_null.then_some(open),
            (Some(time), true, _) => Some(time),
            (Some(time), false, true) => time.checked_add(1),
            (Some(time), false, false) => time.checked_sub(1),
        })
        .collect())
}

fn as_i64(array: &ArrayRef) -> Result<Int64Array> {
    Ok(cast(array, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// A probe batch part way through: the join stops once a batch's worth of rows is found.
struct Pending {
    batch: RecordBatch,
    keys: ArrayRef,
    times: Int64Array,
    next_row: usize,
}

/// One partition's probe side and where it is.
struct ProbeState {
    probe: SendableRecordBatchStream,
    shape: Arc<Shape>,
    versions: Option<Arc<Versions>>,
    pending: Option<Pending>,
    batch_size: usize,
    metrics: BaselineMetrics,
}

impl ProbeState {
    async fn next(mut self) -> Option<(Result<Matches>, Self)> {
        loop {
            if self.pending.is_none() {
                let batch = match self.probe.next().await? {
                    Ok(batch) => batch,
                    Err(e) => return Some((Err(e), self)),
                };
                match self.start(batch) {
                    Ok(pending) => self.pending = Some(pending),
                    Err(e) => return Some((Err(e), self)),
                }
            }
            match self.match_pending() {
                Ok(Some(matches)) => return Some((Ok(matches), self)),
                Ok(None) => {}
                Err(e) => return Some((Err(e), self)),
            }
        }
    }

    fn start(&self, batch: RecordBatch) -> Result<Pending> {
        let rows = batch.num_rows();
        let keys = self.shape.probe_key.evaluate(&batch)?.into_array(rows)?;
        let times = as_i64(batch.column(self.shape.probe_time))?;
        Ok(Pending {
            batch,
            keys,
            times,
            next_row: 0,
        })
    }

    /// The next rows matched in the pending batch, `None` once it has no more.
    fn match_pending(&mut self) -> Result<Option<Matches>> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(None);
        };
        let Some(versions) = self.versions.as_ref() else {
            return datafusion::common::internal_err!("validity join probed before its build");
        };
        let timer = self.metrics.elapsed_compute().timer();
        let rows = pending.batch.num_rows();
        let first_row = pending.next_row;
        let (segments, next_row) =
            match_segments(versions, pending, first_row, rows, self.batch_size)?;
        pending.next_row = next_row;
        let batch = pending.batch.clone();
        if next_row == rows {
            self.pending = None;
        }
        timer.done();
        if segments.is_empty() {
            return Ok(None);
        }
        let matches = Matches {
            versions: Arc::clone(versions),
            batch,
            segments,
        };
        self.metrics.record_output(matches.row_count());
        Ok(Some(matches))
    }
}

/// Rows of one probe batch matched to versions, before their columns are put together.
pub(crate) struct Matches {
    pub(crate) versions: Arc<Versions>,
    /// The probe batch; the segments' rows index into it.
    pub(crate) batch: RecordBatch,
    pub(crate) segments: Vec<Segment>,
}

impl Matches {
    pub(crate) fn row_count(&self) -> usize {
        self.segments
            .iter()
            .map(|s| (s.end - s.start) as usize)
            .sum()
    }

    /// Whether the segments are the probe batch's rows, each once and in order.
    pub(crate) fn covers_batch(&self) -> bool {
        self.row_count() == self.batch.num_rows()
            && self.segments.first().is_none_or(|s| s.start == 0)
            && self
                .segments
                .windows(2)
                .all(|pair| pair[0].end == pair[1].start)
    }

    /// The matched probe rows in order, `None` when they are the batch as it is.
    pub(crate) fn probe_rows(&self) -> Option<UInt32Array> {
        (!self.covers_batch()).then(|| {
            UInt32Array::from_iter_values(self.segments.iter().flat_map(|s| s.start..s.end))
        })
    }
}

/// Probe rows `start..end` joined to build row `build_row`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Segment {
    pub(crate) build_row: u32,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

/// The matches of the pending batch's rows from `row` on, as runs of consecutive probe rows
/// joined to one version, until about `limit` rows are found; and the row to go on from.
/// Rows come sorted by key: each run of one key is looked up once, and the version that held
/// at a row's time usually holds for the rows after it.
fn match_segments(
    versions: &Versions,
    pending: &Pending,
    mut row: usize,
    rows: usize,
    limit: usize,
) -> Result<(Vec<Segment>, usize)> {
    let keys = Keys::of(&pending.keys)?;
    let times = &pending.times;
    let time_nulls = times.null_count() > 0;
    let mut segments: Vec<Segment> = Vec::new();
    let mut found_rows = 0;
    while row < rows && found_rows < limit {
        let run_end = keys.run_end(row, rows);
        let Some(found) = keys.get(row).and_then(|key| versions.by_key.get(key)) else {
            row = run_end;
            continue;
        };
        while row < run_end && found_rows < limit {
            if time_nulls && times.is_null(row) {
                row += 1;
                continue;
            }
            let time = times.value(row);
            let before = segments.len();
            versions.at(found, time, |build_row| {
                segments.push(Segment {
                    build_row,
                    start: row as u32,
                    end: row as u32 + 1,
                });
            });
            row += 1;
            if !found.disjoint || segments.len() == before {
                found_rows += segments.len() - before;
                continue;
            }
            // The one version found holds on for as long as the times stay within it.
            let last = segments.len() - 1;
            let (first, last_time) = versions.validity(segments[last].build_row);
            let stop = run_end.min(row + (limit - found_rows - 1));
            if time_nulls {
                while row < stop && !times.is_null(row) && {
                    let time = times.value(row);
                    first <= time && time <= last_time
                } {
                    row += 1;
                }
            } else {
                row = first_outside(times.values(), row, stop, first, last_time);
            }
            segments[last].end = row as u32;
            found_rows += (segments[last].end - segments[last].start) as usize;
        }
    }
    Ok((segments, row))
}

/// The first row from `row` on (`stop` at most) whose time is outside `first..=last`.
/// Runs of one version are long (a reading per second for hours), so blocks of times are
/// tested whole first, without an early exit, which the compiler turns into vector compares.
fn first_outside(times: &[i64], mut row: usize, stop: usize, first: i64, last: i64) -> usize {
    const BLOCK: usize = 64;
    let within = |time: i64| (first <= time) & (time <= last);
    while row + BLOCK <= stop
        && times[row..row + BLOCK]
            .iter()
            .fold(true, |all, &time| all & within(time))
    {
        row += BLOCK;
    }
    while row < stop && within(times[row]) {
        row += 1;
    }
    row
}

/// The joined rows: build columns taken at the segments' versions, probe columns at their
/// rows (or the probe batch as it is, when the segments cover it in order).
fn output(schema: &SchemaRef, shape: &Shape, matches: &Matches) -> Result<RecordBatch> {
    let row_count = matches.row_count();
    let mut build_rows = Vec::with_capacity(row_count);
    for segment in &matches.segments {
        let length = (segment.end - segment.start) as usize;
        build_rows.extend(std::iter::repeat_n(segment.build_row, length));
    }
    let build_rows = UInt32Array::from(build_rows);
    let probe_rows = matches.probe_rows();
    let columns = shape
        .output
        .iter()
        .map(|&(side, column)| match (side, &probe_rows) {
            (JoinSide::Left, _) => Ok(take(
                matches.versions.batch.column(column),
                &build_rows,
                None,
            )?),
            (_, Some(rows)) => Ok(take(matches.batch.column(column), rows, None)?),
            (_, None) => Ok(Arc::clone(matches.batch.column(column))),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(row_count)),
    )?)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        ArrayRef, Float64Array, RecordBatch, StringArray, StringViewArray,
    };
    use datafusion::arrow::array::{TimestampNanosecondArray, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_optimizer::PhysicalOptimizerRule;
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

    use super::ValidityJoins;

    fn time_type() -> DataType {
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
    }

    const MINUTE: i64 = 60_000_000_000;

    /// Readings of `devices` devices, one a minute for `minutes`, sorted by device and time
    /// as in the lake's files, with some null times and devices; and versions of each device's
    /// parent: a first one, a move after a third of the time, a gap, an overlap on device 2,
    /// none for device 3, and versions without a start or for keys with no readings.
    fn tables(devices: usize, minutes: i64) -> (RecordBatch, RecordBatch) {
        let reading_schema = Arc::new(Schema::new(vec![
            Field::new("time", time_type(), true),
            Field::new("entity", DataType::Utf8View, true),
            Field::new("value", DataType::Float64, false),
        ]));
        let (mut times, mut entities, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for device in 0..devices {
            for minute in 0..minutes {
                let null_time = device == 1 && minute % 97 == 5;
                times.push((!null_time).then_some(minute * MINUTE));
                let null_entity = device == 4 && minute % 89 == 7;
                entities.push((!null_entity).then(|| format!("truck0001:device:sensor{device}")));
                values.push((device * 1000) as f64 + minute as f64);
            }
        }
        let readings = RecordBatch::try_new(
            reading_schema,
            vec![
                Arc::new(TimestampNanosecondArray::from(times).with_timezone("UTC")),
                Arc::new(StringViewArray::from_iter(entities)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap();
        let version_schema = Arc::new(Schema::new(vec![
            Field::new("entity", DataType::Utf8, true),
            Field::new("parent", DataType::Utf8, true),
            Field::new("valid_from", time_type(), true),
            Field::new("valid_to", time_type(), true),
            Field::new("version", DataType::UInt64, false),
        ]));
        let third = minutes / 3 * MINUTE;
        // entity, parent, valid_from, valid_to
        type Version = (Option<String>, &'static str, Option<i64>, Option<i64>);
        let mut rows: Vec<Version> = Vec::new();
        for device in 0..devices {
            let entity = Some(format!("truck0001:device:sensor{device}"));
            match device {
                3 => {}
                2 => {
                    rows.push((entity.clone(), "a", Some(0), Some(2 * third)));
                    rows.push((entity, "b", Some(third), None));
                }
                _ => {
                    rows.push((entity.clone(), "b", Some(third + MINUTE), None));
                    rows.push((entity, "a", Some(0), Some(third)));
                }
            }
        }
        rows.push((Some("truck0001:device:sensor0".into()), "c", None, None));
        rows.push((Some("elsewhere".into()), "a", Some(0), None));
        rows.push((None, "a", Some(0), None));
        let versions = RecordBatch::try_new(
            version_schema,
            vec![
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0.clone()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    TimestampNanosecondArray::from_iter(rows.iter().map(|r| r.2))
                        .with_timezone("UTC"),
                ),
                Arc::new(
                    TimestampNanosecondArray::from_iter(rows.iter().map(|r| r.3))
                        .with_timezone("UTC"),
                ),
                Arc::new(UInt64Array::from_iter_values(0..rows.len() as u64)),
            ],
        )
        .unwrap();
        (readings, versions)
    }

    /// A session over the readings as Parquet files (a column before `time`, so the scan's
    /// columns are not the join's), filters evaluated while decoding as Twinlake's are, and
    /// join keys pushed into the scan when there are at most `max_versions_pushed` versions.
    async fn session(
        validity_joins: bool,
        batch_size: usize,
        max_versions_pushed: usize,
    ) -> SessionContext {
        let mut rules = PhysicalOptimizer::new().rules;
        if validity_joins {
            let place = rules
                .iter()
                .position(|rule| rule.name() == "EnsureCooperative")
                .map_or(rules.len(), |at| at + 1);
            rules.insert(place, Arc::new(ValidityJoins));
        }
        session_with(rules, batch_size, max_versions_pushed).await
    }

    /// [`session`] planned by `rules`. Tables `readings` (device, series, time, value) and
    /// `versions` (device, parent, valid_from, valid_to, version) of [`tables`].
    pub(crate) async fn session_with(
        rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
        batch_size: usize,
        max_versions_pushed: usize,
    ) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(batch_size);
        config.options_mut().execution.parquet.pushdown_filters = true;
        config
            .options_mut()
            .optimizer
            .hash_join_inlist_pushdown_max_distinct_values = max_versions_pushed;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let context = SessionContext::new_with_state(state);
        let (readings, versions) = tables(6, 1000);
        let dir = std::env::temp_dir().join(format!(
            "twinlake-validity-join-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let series = Arc::new(StringArray::from_iter_values(
            (0..readings.num_rows()).map(|i| format!("s{}", i % 3)),
        ));
        let mut fields = vec![Field::new("series", DataType::Utf8, false)];
        fields.extend(
            readings
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        let mut columns: Vec<ArrayRef> = vec![series];
        columns.extend(readings.columns().iter().cloned());
        let readings = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        // Three files of small row groups, each a run of devices, as the lake's are sorted.
        let per_file = readings.num_rows().div_ceil(3);
        for (file, start) in (0..readings.num_rows()).step_by(per_file).enumerate() {
            let part = readings.slice(start, per_file.min(readings.num_rows() - start));
            let out = std::fs::File::create(dir.join(format!("{file}.parquet"))).unwrap();
            let properties = WriterProperties::builder()
                .set_max_row_group_row_count(Some(500))
                .build();
            let mut writer = ArrowWriter::try_new(out, part.schema(), Some(properties)).unwrap();
            writer.write(&part).unwrap();
            writer.close().unwrap();
        }
        context
            .register_parquet(
                "readings",
                dir.to_string_lossy().as_ref(),
                ParquetReadOptions::default(),
            )
            .await
            .unwrap();
        let versions = MemTable::try_new(versions.schema(), vec![vec![versions]]).unwrap();
        context
            .register_table("versions", Arc::new(versions))
            .unwrap();
        context
    }

    static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// The answer to `sql`, printed, and its physical plan.
    pub(crate) async fn answer(context: &SessionContext, sql: &str) -> (String, String) {
        let frame = context.sql(sql).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        let plan = displayable(plan.as_ref()).indent(false).to_string();
        let batches = frame.collect().await.unwrap();
        (pretty_format_batches(&batches).unwrap().to_string(), plan)
    }

    const AS_OF: &str = "SELECT r.entity, r.time, r.value, v.parent, v.version \
        FROM readings r JOIN versions v ON v.entity = r.entity \
        AND r.time >= v.valid_from AND (v.valid_to IS NULL OR r.time < v.valid_to) \
        ORDER BY r.entity, r.time, v.version";

    #[tokio::test]
    async fn joins_each_reading_to_the_versions_valid_at_its_time_as_the_hash_join_does() {
        let (expected, hash_plan) = answer(&session(false, 8192, 150).await, AS_OF).await;
        assert!(hash_plan.contains("HashJoinExec"), "{hash_plan}");
        // Small batches make the join stop part way through probe batches; with keys pushed
        // for at most 2 versions, the scan gets no key filter (there are 13).
        for (batch_size, max_versions_pushed) in [(8192, 150), (100, 150), (7, 2), (1, 150)] {
            let context = session(true, batch_size, max_versions_pushed).await;
            let (got, plan) = answer(&context, AS_OF).await;
            assert!(plan.contains("ValidityJoinExec"), "{plan}");
            assert!(!plan.contains("HashJoinExec"), "{plan}");
            assert_eq!(got, expected, "batch size {batch_size}");
        }
        // Overlapping versions give a reading both; a gap none; a device without versions none.
        assert!(expected.lines().count() > 5000, "{expected}");
    }

    #[tokio::test]
    async fn the_same_answer_for_the_other_spellings_of_validity_bands_and_aggregates_above() {
        let spellings = [
            "SELECT v.parent, count(*), sum(r.value) FROM readings r JOIN versions v \
             ON r.entity = v.entity AND v.valid_from <= r.time \
             AND (r.time < v.valid_to OR v.valid_to IS NULL) GROUP BY v.parent ORDER BY 1",
            "SELECT count(*) FROM readings r JOIN versions v ON r.entity = v.entity \
             AND (v.valid_to IS NULL OR v.valid_to > r.time) AND r.time >= v.valid_from",
            "SELECT r.value FROM readings r JOIN versions v ON r.entity = v.entity \
             AND r.time >= v.valid_from AND (v.valid_to IS NULL OR r.time < v.valid_to) \
             WHERE v.parent = 'a' AND r.value > 10 ORDER BY 1",
            // The end included.
            "SELECT v.parent, count(*), sum(r.value) FROM readings r JOIN versions v \
             ON r.entity = v.entity AND r.time >= v.valid_from \
             AND (v.valid_to IS NULL OR r.time <= v.valid_to) GROUP BY v.parent ORDER BY 1",
            // Bands: a null end holds at no time; ends left out and included.
            "SELECT v.version, count(*), sum(r.value) FROM readings r JOIN versions v \
             ON r.entity = v.entity AND r.time BETWEEN v.valid_from AND v.valid_to \
             GROUP BY v.version ORDER BY 1",
            "SELECT v.version, count(*), sum(r.value) FROM readings r JOIN versions v \
             ON r.entity = v.entity AND r.time > v.valid_from AND v.valid_to > r.time \
             GROUP BY v.version ORDER BY 1",
            // Windows around each start, wide enough to overlap (as query 15's around
            // alarms): every reading within a window, once per window.
            "WITH windows AS (SELECT entity, version, \
                 valid_from - INTERVAL '5 minutes' AS window_start, \
                 valid_from + INTERVAL '400 minutes' AS window_end FROM versions) \
             SELECT w.version, r.time, r.value FROM windows w JOIN readings r \
             ON r.entity = w.entity AND r.time BETWEEN w.window_start AND w.window_end \
             ORDER BY 1, 2",
        ];
        for sql in spellings {
            let (expected, _) = answer(&session(false, 8192, 150).await, sql).await;
            let (got, plan) = answer(&session(true, 8192, 150).await, sql).await;
            assert!(plan.contains("ValidityJoinExec"), "{sql}\n{plan}");
            assert_eq!(got, expected, "{sql}");
        }
    }

    #[tokio::test]
    async fn other_joins_stay_hash_joins() {
        let others = [
            // Only a start: not the validity.
            "SELECT count(*) FROM readings r JOIN versions v ON r.entity = v.entity \
             AND r.time >= v.valid_from",
            // Two starts.
            "SELECT count(*) FROM readings r JOIN versions v ON r.entity = v.entity \
             AND r.time >= v.valid_from AND r.time > v.valid_to",
            // Few readings and many versions: the readings are the side held in memory.
            "SELECT r.value FROM readings r JOIN versions v ON r.entity = v.entity \
             AND r.time >= v.valid_from AND (v.valid_to IS NULL OR r.time < v.valid_to) \
             WHERE r.value > 5990 ORDER BY 1",
            // An outer join keeps unmatched readings.
            "SELECT count(*) FROM readings r LEFT JOIN versions v ON r.entity = v.entity \
             AND r.time >= v.valid_from AND (v.valid_to IS NULL OR r.time < v.valid_to)",
        ];
        for sql in others {
            let (expected, _) = answer(&session(false, 8192, 150).await, sql).await;
            let (got, plan) = answer(&session(true, 8192, 150).await, sql).await;
            assert!(!plan.contains("ValidityJoinExec"), "{sql}\n{plan}");
            assert_eq!(got, expected, "{sql}");
        }
    }
}
