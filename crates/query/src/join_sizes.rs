//! How many rows a join is expected to give, for DataFusion's choice of which side of the
//! next join to hold in memory.
//!
//! DataFusion estimates an equi-join from the distinct counts of its keys, which Twinlake's
//! tables do not have; without them its own estimate is the Cartesian product (so a join of
//! 500 twins with one truck's depot looks larger than the readings, and is repartitioned
//! instead of held), and with no estimate at all the join above keeps a join's output as its
//! side in memory (millions of readings against a twin of 500 rows). Twinlake's joins are
//! readings or events joined to what describes them (a twin, a hierarchy, a version), each
//! row finding about one partner, so the larger side's rows are the estimate.

use std::sync::Arc;

use datafusion::common::stats::Precision;
use datafusion::common::{JoinType, Result};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::operator_statistics::{
    ExtendedStatistics, StatisticsProvider, StatisticsRegistry, StatisticsResult,
};
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};

/// DataFusion's statistics providers with [`LookupJoinSizes`] first.
pub(crate) fn statistics_registry() -> StatisticsRegistry {
    let mut registry = StatisticsRegistry::default_with_builtin_providers();
    registry.register(Arc::new(LookupJoinSizes));
    registry
}

/// An inner equi-join without distinct counts gives as many rows as its larger side.
#[derive(Debug, Default)]
pub(crate) struct LookupJoinSizes;

impl StatisticsProvider for LookupJoinSizes {
    fn compute_statistics(
        &self,
        plan: &dyn ExecutionPlan,
        child_stats: &[ExtendedStatistics],
    ) -> Result<StatisticsResult> {
        let inner_equi_join = plan
            .downcast_ref::<HashJoinExec>()
            .map(|join| *join.join_type() == JoinType::Inner && !join.on().is_empty())
            .or_else(|| {
                plan.downcast_ref::<SortMergeJoinExec>()
                    .map(|join| join.join_type() == JoinType::Inner && !join.on().is_empty())
            })
            .unwrap_or(false);
        let [left, right] = child_stats else {
            return Ok(StatisticsResult::Delegate);
        };
        let rows = (
            left.base().num_rows.get_value(),
            right.base().num_rows.get_value(),
        );
        let (true, (Some(&left_rows), Some(&right_rows))) = (inner_equi_join, rows) else {
            return Ok(StatisticsResult::Delegate);
        };
        let mut statistics =
            Arc::unwrap_or_clone(StatisticsContext::new().compute(plan, &StatisticsArgs::new())?);
        statistics.num_rows = Precision::Inexact(left_rows.max(right_rows));
        statistics.total_byte_size = Precision::Absent;
        Ok(StatisticsResult::Computed(ExtendedStatistics::new(
            statistics,
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::stats::Precision;
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::joins::HashJoinExec;
    use datafusion::physical_plan::operator_statistics::StatisticsRegistry;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::statistics_registry;

    fn table(rows: usize, keys: usize) -> MemTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("k{}", i % keys)),
                )),
                Arc::new(Int64Array::from_iter_values(0..rows as i64)),
            ],
        )
        .unwrap();
        MemTable::try_new(schema, vec![vec![batch]]).unwrap()
    }

    #[tokio::test]
    async fn a_join_of_readings_to_what_describes_them_is_as_large_as_the_readings() {
        let context =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        for (name, rows, keys) in [("readings", 200_000, 50), ("versions", 100, 50)] {
            context
                .register_table(name, Arc::new(table(rows, keys)))
                .unwrap();
        }
        let sql = "SELECT r.v FROM readings r JOIN versions v ON v.key = r.key";
        let plan = context
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut join = None;
        plan.apply(|node| {
            if node.is::<HashJoinExec>() {
                join = Some(Arc::clone(node));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        let join = join.expect("a hash join");
        let ours = statistics_registry().compute(join.as_ref()).unwrap();
        assert_eq!(ours.base().num_rows, Precision::Inexact(200_000));
        // DataFusion's own: the Cartesian product without distinct counts of the keys.
        let theirs = StatisticsRegistry::default_with_builtin_providers()
            .compute(join.as_ref())
            .unwrap();
        assert_eq!(theirs.base().num_rows, Precision::Inexact(20_000_000));
    }
}
