//! The first stage of an aggregate grouped by what a validity join found: `SELECT h.parent,
//! count(*), avg(m.value) FROM measurements m JOIN entity_history h ON … GROUP BY h.parent`,
//! the full-history as-of question.
//!
//! DataFusion would build each joined row's `parent` string and hash it to find its group. The
//! join already knows each row's version, and a version has one `parent`, so
//! [`ValidityAggregateExec`] takes the version as the group: the join's runs of rows of one
//! version feed DataFusion's own accumulators with the version's group index (a partial state
//! per run where the aggregates have one, `run_states`; else row by row), and the grouped
//! columns are taken once per version when the partial states are emitted. The final
//! aggregate above merges the versions that share a value, as it merges partitions.
//!
//! It must not change an answer: it replaces only a partial aggregate directly above a
//! [`ValidityJoinExec`], grouped by the versions' columns alone, whose aggregates read only
//! the rows' side and have no order or `DISTINCT`, and emits the same schema.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinSide, Result, Statistics};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ChildStats, InputOrderMode, StatisticsArgs};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, PhysicalExpr,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;

use crate::run_states::RunState;
use crate::validity_join::{Matches, ValidityJoinExec};

/// The plan rule putting a [`ValidityAggregateExec`] where a partial aggregate has its shape.
/// It runs after the late filter pushdown, so the validity join below already holds its
/// dynamic filter.
#[derive(Debug, Default)]
pub(crate) struct ValidityAggregates;

impl PhysicalOptimizerRule for ValidityAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(
            |node| match ValidityAggregateExec::try_new(Arc::clone(&node)) {
                Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            },
        )
        .map(|done| done.data)
    }

    fn name(&self) -> &str {
        "ValidityAggregates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What the aggregate reads, in terms of the join's two sides.
#[derive(Debug)]
struct Grouping {
    /// The versions' columns the grouping reads; the group expressions refer to them by
    /// position in this list.
    build_columns: Vec<usize>,
    groups: Vec<Arc<dyn PhysicalExpr>>,
    /// The probe side's columns the aggregates read; their arguments and filters refer to
    /// them by position in this list.
    probe_columns: Vec<usize>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Each aggregate's run form, when all have one and none is filtered.
    run_states: Option<Vec<RunState>>,
}

impl Grouping {
    /// The grouping of `aggregate` over `join`, if this operator can run it.
    fn of(aggregate: &AggregateExec, join: &ValidityJoinExec) -> Option<Self> {
        let group_by = aggregate.group_expr();
        if *aggregate.mode() != AggregateMode::Partial
            || group_by.has_grouping_set()
            || group_by.expr().is_empty()
            || aggregate.limit_options().is_some()
            || !aggregate.dynamic_expressions_produced().is_empty()
            || *aggregate.input_order_mode() != InputOrderMode::Linear
        {
            return None;
        }
        let sides = join.output_columns();
        let mut build_columns = Vec::new();
        let groups = group_by
            .expr()
            .iter()
            .map(|(expr, _)| on_side(expr, sides, JoinSide::Left, &mut build_columns))
            .collect::<Option<Vec<_>>>()?;
        let mut probe_columns = Vec::new();
        let mut on_probe = |expr: &Arc<dyn PhysicalExpr>| {
            on_side(expr, sides, JoinSide::Right, &mut probe_columns)
        };
        let mut arguments = Vec::new();
        for function in aggregate.aggr_expr() {
            if function.is_distinct()
                || !function.order_bys().is_empty()
                || !function.groups_accumulator_supported()
            {
                return None;
            }
            let args = function.expressions();
            arguments.push(args.iter().map(&mut on_probe).collect::<Option<Vec<_>>>()?);
        }
        let filters = aggregate
            .filter_expr()
            .iter()
            .map(|filter| match filter {
                Some(filter) => on_probe(filter).map(Some),
                None => Some(None),
            })
            .collect::<Option<Vec<_>>>()?;
        let run_states = match filters.iter().all(Option::is_none) {
            true => aggregate
                .aggr_expr()
                .iter()
                .map(|function| RunState::of(function))
                .collect(),
            false => None,
        };
        Some(Self {
            build_columns,
            groups,
            probe_columns,
            aggregates: aggregate.aggr_expr().to_vec(),
            arguments,
            filters,
            run_states,
        })
    }
}

/// `expr` over the join's output rewritten over the columns of one `side` listed in
/// `columns` (added to as needed); `None` if it reads the other side.
fn on_side(
    expr: &Arc<dyn PhysicalExpr>,
    sides: &[(JoinSide, usize)],
    side: JoinSide,
    columns: &mut Vec<usize>,
) -> Option<Arc<dyn PhysicalExpr>> {
    let mut reads_other_side = false;
    let rewritten = Arc::clone(expr)
        .transform_up(|node| {
            let Some(column) = node.downcast_ref::<Column>() else {
                return Ok(Transformed::no(node));
            };
            let index = match sides.get(column.index()) {
                Some(&(column_side, index)) if column_side == side => index,
                _ => {
                    reads_other_side = true;
                    return Ok(Transformed::no(node));
                }
            };
            let position = match columns.iter().position(|&c| c == index) {
                Some(position) => position,
                None => {
                    columns.push(index);
                    columns.len() - 1
                }
            };
            let column = Column::new(column.name(), position);
            Ok(Transformed::yes(Arc::new(column) as Arc<dyn PhysicalExpr>))
        })
        .ok()?
        .data;
    (!reads_other_side).then_some(rewritten)
}

/// The validity join `input` is, or runs cooperatively (`CooperativeJoins`).
fn validity_join(input: &Arc<dyn ExecutionPlan>) -> Option<&ValidityJoinExec> {
    let input = match input.downcast_ref::<CooperativeExec>() {
        Some(cooperative) => cooperative.input(),
        None => input,
    };
    input.downcast_ref::<ValidityJoinExec>()
}

/// A partial aggregate grouped by the version each row of a validity join matched.
#[derive(Debug)]
pub(crate) struct ValidityAggregateExec {
    /// The partial [`AggregateExec`] replaced: its properties, schema and child (the
    /// [`ValidityJoinExec`]) stay this node's.
    aggregate: Arc<dyn ExecutionPlan>,
    grouping: Arc<Grouping>,
    metrics: ExecutionPlanMetricsSet,
}

impl ValidityAggregateExec {
    fn try_new(aggregate: Arc<dyn ExecutionPlan>) -> Option<Self> {
        let exec = aggregate.downcast_ref::<AggregateExec>()?;
        let join = validity_join(exec.input())?;
        let grouping = Grouping::of(exec, join)?;
        Some(Self {
            aggregate,
            grouping: Arc::new(grouping),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// This node over the aggregate's new form, or that aggregate itself when its input is no
    /// longer a validity join of the shape.
    fn with_aggregate(aggregate: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        match Self::try_new(Arc::clone(&aggregate)) {
            Some(exec) => Arc::new(exec),
            None => aggregate,
        }
    }
}

impl DisplayAs for ValidityAggregateExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<&str> = self
            .grouping
            .aggregates
            .iter()
            .map(|aggregate| aggregate.name())
            .collect();
        let runs = match self.grouping.run_states {
            Some(_) => ", states per run",
            None => "",
        };
        write!(
            f,
            "ValidityAggregateExec: partial, by version{runs}, gby=[{}], aggr=[{}]",
            self.grouping
                .groups
                .iter()
                .map(|group| group.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            names.join(", ")
        )
    }
}

impl ExecutionPlan for ValidityAggregateExec {
    fn name(&self) -> &str {
        "ValidityAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.aggregate.properties()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.aggregate.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.aggregate.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.aggregate.apply_expressions(f)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let aggregate = Arc::clone(&self.aggregate).replace_children(children, options)?;
        Ok(Self::with_aggregate(aggregate))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        #[expect(deprecated, reason = "the trait still requires it")]
        let aggregate = Arc::clone(&self.aggregate).with_new_children(children)?;
        Ok(Self::with_aggregate(aggregate))
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.aggregate.child_stats_requests(partition)
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.aggregate.statistics_from_inputs(input_stats, args)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let [input] = self.aggregate.children()[..] else {
            return datafusion::common::internal_err!("validity aggregate without its join");
        };
        let Some(join) = validity_join(input) else {
            return datafusion::common::internal_err!("validity aggregate over {}", input.name());
        };
        let matches = join.execute_matches(partition, Arc::clone(&context))?;
        let reservation = MemoryConsumer::new(format!("ValidityAggregate[{partition}]"))
            .register(context.memory_pool());
        let groups = VersionGroups::new(&self.grouping, reservation)?;
        let schema = self.schema();
        let batch_size = context.session_config().batch_size();
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let output_schema = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let groups = aggregate_all(matches, groups, &metrics).await?;
            let timer = metrics.elapsed_compute().timer();
            let batches = groups.emit(&output_schema, batch_size)?;
            timer.done();
            for batch in &batches {
                metrics.record_output(batch.num_rows());
            }
            Ok::<_, datafusion::error::DataFusionError>(batches)
        })
        .flat_map(|batches| {
            let items: Vec<Result<RecordBatch>> = match batches {
                Ok(batches) => batches.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

async fn aggregate_all(
    mut matches: futures::stream::BoxStream<'static, Result<Matches>>,
    mut groups: VersionGroups,
    metrics: &BaselineMetrics,
) -> Result<VersionGroups> {
    while let Some(found) = matches.next().await {
        let found = found?;
        // Rows matched from one probe batch arrive without a wait; the budget lets a
        // cancelled query stop between them, as the join's own output would.
        tokio::task::coop::consume_budget().await;
        let _timer = metrics.elapsed_compute().timer();
        groups.update(&found)?;
    }
    Ok(groups)
}

/// One partition's accumulators, a group for each version met.
struct VersionGroups {
    grouping: Arc<Grouping>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// Each version's group, `u32::MAX` until a row matches it.
    group_of_version: Vec<u32>,
    /// Each group's version: the row of the versions' batch its grouped columns come from.
    version_of_group: Vec<u32>,
    /// The versions, once the first rows arrive.
    versions: Option<RecordBatch>,
    /// The group of each segment of the matches at hand, then of each row.
    segment_groups: Vec<usize>,
    group_indices: Vec<usize>,
    reservation: MemoryReservation,
}

impl VersionGroups {
    fn new(grouping: &Arc<Grouping>, reservation: MemoryReservation) -> Result<Self> {
        let accumulators = grouping
            .aggregates
            .iter()
            .map(|aggregate| aggregate.create_groups_accumulator())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            grouping: Arc::clone(grouping),
            accumulators,
            group_of_version: Vec::new(),
            version_of_group: Vec::new(),
            versions: None,
            segment_groups: Vec::new(),
            group_indices: Vec::new(),
            reservation,
        })
    }

    /// Feeds the matched rows to the accumulators: a partial state per run of one version
    /// when the aggregates have a run form, else each row with its version's group.
    fn update(&mut self, matches: &Matches) -> Result<()> {
        if self.versions.is_none() {
            let versions = &matches.versions.batch;
            self.group_of_version = vec![u32::MAX; versions.num_rows()];
            self.versions = Some(versions.clone());
        }
        self.segment_groups.clear();
        for segment in &matches.segments {
            let version = segment.build_row as usize;
            let Some(group) = self.group_of_version.get_mut(version) else {
                return datafusion::common::internal_err!(
                    "validity aggregate: no version {version}"
                );
            };
            if *group == u32::MAX {
                *group = self.version_of_group.len() as u32;
                self.version_of_group.push(segment.build_row);
            }
            self.segment_groups.push(*group as usize);
        }
        if !self.update_by_runs(matches)? {
            self.update_by_rows(matches)?;
        }
        let size: usize = self.accumulators.iter().map(|a| a.size()).sum();
        self.reservation.try_resize(
            size + self.group_of_version.len() * 8
                + (self.group_indices.capacity() + self.segment_groups.capacity()) * 8,
        )
    }

    /// Feeds one partial state per segment; `false`, with nothing fed, when an aggregate
    /// has no run form or its argument is not of the type the form reads.
    fn update_by_runs(&mut self, matches: &Matches) -> Result<bool> {
        let Some(run_states) = &self.grouping.run_states else {
            return Ok(false);
        };
        let rows = columns_at(&matches.batch, &self.grouping.probe_columns, None)?;
        let runs: Vec<Range<usize>> = matches
            .segments
            .iter()
            .map(|segment| segment.start as usize..segment.end as usize)
            .collect();
        let mut states = Vec::with_capacity(run_states.len());
        for (run_state, arguments) in run_states.iter().zip(&self.grouping.arguments) {
            let [argument] = &arguments[..] else {
                return Ok(false);
            };
            match run_state.states(&argument.evaluate(&rows)?, &runs)? {
                Some(state) => states.push(state),
                None => return Ok(false),
            }
        }
        let groups = self.version_of_group.len();
        for (accumulator, state) in self.accumulators.iter_mut().zip(&states) {
            accumulator.merge_batch(state, &self.segment_groups, groups)?;
        }
        Ok(true)
    }

    /// Feeds each matched row with its version's group.
    fn update_by_rows(&mut self, matches: &Matches) -> Result<()> {
        self.group_indices.clear();
        for (segment, &group) in matches.segments.iter().zip(&self.segment_groups) {
            let length = (segment.end - segment.start) as usize;
            self.group_indices
                .extend(std::iter::repeat_n(group, length));
        }
        let probe_rows = matches.probe_rows();
        let rows = columns_at(
            &matches.batch,
            &self.grouping.probe_columns,
            probe_rows.as_ref(),
        )?;
        let groups = self.version_of_group.len();
        for ((accumulator, arguments), filter) in self
            .accumulators
            .iter_mut()
            .zip(&self.grouping.arguments)
            .zip(&self.grouping.filters)
        {
            let values = arguments
                .iter()
                .map(|argument| argument.evaluate(&rows)?.into_array(rows.num_rows()))
                .collect::<Result<Vec<ArrayRef>>>()?;
            let filter = match filter {
                Some(filter) => Some(filter.evaluate(&rows)?.into_array(rows.num_rows())?),
                None => None,
            };
            let filter = filter
                .as_ref()
                .map(|f| datafusion::arrow::array::AsArray::as_boolean(f.as_ref()));
            accumulator.update_batch(&values, &self.group_indices, filter, groups)?;
        }
        Ok(())
    }

    /// The partial states, one row per version met: its grouped columns, then each
    /// aggregate's state; in batches of at most `batch_size` rows.
    fn emit(mut self, schema: &SchemaRef, batch_size: usize) -> Result<Vec<RecordBatch>> {
        let Some(versions) = self.versions.take() else {
            return Ok(Vec::new());
        };
        if self.version_of_group.is_empty() {
            return Ok(Vec::new());
        }
        let rows = UInt32Array::from(std::mem::take(&mut self.version_of_group));
        let read = columns_at(&versions, &self.grouping.build_columns, Some(&rows))?;
        let mut columns = self
            .grouping
            .groups
            .iter()
            .map(|group| group.evaluate(&read)?.into_array(read.num_rows()))
            .collect::<Result<Vec<ArrayRef>>>()?;
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        let batch = RecordBatch::try_new(Arc::clone(schema), columns)?;
        Ok((0..batch.num_rows())
            .step_by(batch_size.max(1))
            .map(|start| batch.slice(start, batch_size.min(batch.num_rows() - start)))
            .collect())
    }
}

/// `columns` of `batch` at `rows` in their order (all rows when `None`).
fn columns_at(
    batch: &RecordBatch,
    columns: &[usize],
    rows: Option<&UInt32Array>,
) -> Result<RecordBatch> {
    let projected = batch.project(columns)?;
    let Some(rows) = rows else {
        return Ok(projected);
    };
    let taken = projected
        .columns()
        .iter()
        .map(|column| take(column, rows, None))
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        projected.schema(),
        taken,
        &RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}
