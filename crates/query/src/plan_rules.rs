//! The physical plan rules of Twinlake's sessions: DataFusion's, with Twinlake's own where
//! the plan's shape allows them. It owns their order, not what each rule does.

use std::sync::Arc;

use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;

use crate::runtime::CooperativeJoins;
use crate::validity_aggregate::ValidityAggregates;
use crate::validity_join::ValidityJoins;

pub(crate) type PhysicalRules = Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>;

/// DataFusion's logical rules but the two that move "cheap" expressions down towards the
/// scan: they count `json_get_str(attributes, 'version')` as one (datafusion-functions-json
/// says so), and parsed every event's JSON below the filter that keeps one in twenty (18).
/// Twinlake's tables have no struct columns, whose field access the rules are for.
pub(crate) fn logical_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    const TOWARDS_THE_SCAN: [&str; 2] = ["extract_leaf_expressions", "push_down_leaf_projections"];
    Optimizer::new()
        .rules
        .into_iter()
        .filter(|rule| !TOWARDS_THE_SCAN.contains(&rule.name()))
        .collect()
}

/// DataFusion's rules; after its `EnsureCooperative` (the plan's shape is final there) the
/// validity joins, then every join made cooperative; after the late filter pushdown (the
/// validity joins hold their dynamic filters by then) the aggregates by version.
pub(crate) fn physical_rules() -> PhysicalRules {
    let mut rules = PhysicalOptimizer::new().rules;
    let place = position_after(&rules, "EnsureCooperative");
    rules.insert(place, Arc::new(CooperativeJoins));
    rules.insert(place, Arc::new(ValidityJoins));
    let place = position_after(&rules, "FilterPushdown(Post)");
    rules.insert(place, Arc::new(ValidityAggregates));
    rules
}

/// The place after the rule named `name`, or the end.
fn position_after(rules: &PhysicalRules, name: &str) -> usize {
    rules
        .iter()
        .rposition(|rule| rule.name() == name)
        .map_or(rules.len(), |at| at + 1)
}

#[cfg(test)]
mod tests {
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;

    use std::sync::Arc;

    use datafusion::optimizer::OptimizerRule;

    use super::physical_rules;
    use crate::validity_join::tests::{answer, session_with};

    /// Aggregates over the validity join, as DataFusion answers them and as Twinlake's rules
    /// do, with batches that end part way through a run of a version (7, 1); the readings
    /// have versions that overlap, gaps, null times and keys, and parents shared by versions.
    async fn compare(sql: &str, by_version: bool) {
        let plain = session_with(PhysicalOptimizer::new().rules, 8192, 150).await;
        let (expected, _) = answer(&plain, sql).await;
        for batch_size in [8192, 7, 1] {
            let twinlake = session_with(physical_rules(), batch_size, 150).await;
            let (got, plan) = answer(&twinlake, sql).await;
            assert!(plan.contains("ValidityJoinExec"), "{sql}\n{plan}");
            assert_eq!(
                plan.contains("ValidityAggregateExec"),
                by_version,
                "{sql}\n{plan}"
            );
            assert_eq!(got, expected, "{sql}, batch size {batch_size}");
        }
    }

    const JOIN: &str = "FROM readings r JOIN versions v ON v.entity = r.entity \
        AND r.time >= v.valid_from AND (v.valid_to IS NULL OR r.time < v.valid_to)";

    #[tokio::test]
    async fn aggregates_grouped_by_the_versions_columns_give_the_hash_aggregates_answer() {
        let queries = [
            format!(
                "SELECT v.parent, count(*), avg(r.value), sum(r.value), min(r.time), \
                 max(r.value), count(r.time) {JOIN} GROUP BY v.parent ORDER BY 1"
            ),
            format!(
                "SELECT v.parent, v.version, count(*), \
                 sum(r.value) FILTER (WHERE r.series = 's1'), stddev(r.value) \
                 {JOIN} GROUP BY v.version, v.parent ORDER BY 2"
            ),
            format!(
                "SELECT upper(v.parent) || '-' || v.version AS p, max(r.time) {JOIN} \
                 GROUP BY upper(v.parent) || '-' || v.version ORDER BY 1"
            ),
        ];
        for sql in &queries {
            compare(sql, true).await;
        }
        let twinlake = session_with(physical_rules(), 8192, 150).await;
        let (printed, _) = answer(&twinlake, &queries[0]).await;
        // Parents a, b and c; c's version has no start and matches nothing.
        assert!(
            printed.contains("| a ") && printed.contains("| b "),
            "{printed}"
        );
        assert!(!printed.contains("| c "), "{printed}");
    }

    #[tokio::test]
    async fn counts_sums_and_averages_are_fed_a_state_per_run() {
        let by_run = [
            format!(
                "SELECT v.parent, count(*), avg(r.value), sum(r.value) AS s, count(r.time), \
                 avg(CASE WHEN r.value > 3500 THEN r.value END) AS high, \
                 sum(CAST(r.value * 2 AS BIGINT)) AS whole, \
                 sum(CASE WHEN r.value < 10 THEN r.value END) AS low \
                 {JOIN} GROUP BY v.parent ORDER BY 1"
            ),
            format!("SELECT v.version, count(*) {JOIN} GROUP BY v.version ORDER BY 1"),
        ];
        for sql in &by_run {
            compare(sql, true).await;
            let twinlake = session_with(physical_rules(), 8192, 150).await;
            let (_, plan) = answer(&twinlake, sql).await;
            assert!(plan.contains("by version, states per run"), "{sql}\n{plan}");
        }
        // A maximum has no run form: every aggregate of the node goes row by row.
        let sql = format!("SELECT v.parent, count(*), max(r.value) {JOIN} GROUP BY 1 ORDER BY 1");
        let twinlake = session_with(physical_rules(), 8192, 150).await;
        let (_, plan) = answer(&twinlake, &sql).await;
        assert!(
            plan.contains("ValidityAggregateExec: partial, by version, gby"),
            "{plan}"
        );
    }

    #[tokio::test]
    async fn aggregates_that_read_more_than_the_versions_columns_stay_datafusions() {
        let queries = [
            // Grouped by a column of the readings as well.
            format!("SELECT r.entity, v.parent, count(*) {JOIN} GROUP BY 1, 2 ORDER BY 1, 2"),
            // An aggregate of a version's column.
            format!("SELECT v.parent, sum(v.version) {JOIN} GROUP BY v.parent ORDER BY 1"),
            // Distinct values.
            format!("SELECT v.parent, count(DISTINCT r.value) {JOIN} GROUP BY v.parent ORDER BY 1"),
            // No grouping.
            format!("SELECT count(*), avg(r.value) {JOIN}"),
        ];
        for sql in &queries {
            compare(sql, false).await;
        }
    }

    #[tokio::test]
    async fn the_scan_gets_the_keys_only_when_the_versions_can_be_few() {
        let sql = format!("SELECT v.parent, r.time, r.value {JOIN} ORDER BY 1, 2, 3");
        let plain = session_with(PhysicalOptimizer::new().rules, 8192, 150).await;
        let (expected, _) = answer(&plain, &sql).await;
        // 13 versions: listed when 150 may be, no filter at all when only 2 may.
        let listed = session_with(physical_rules(), 8192, 150).await;
        let (got, plan) = answer(&listed, &sql).await;
        assert!(plan.contains("predicate=DynamicFilter"), "{plan}");
        assert_eq!(got, expected);
        let unlisted = session_with(physical_rules(), 8192, 2).await;
        let (got, plan) = answer(&unlisted, &sql).await;
        assert!(plan.contains("ValidityJoinExec"), "{plan}");
        assert!(!plan.contains("DynamicFilter"), "{plan}");
        assert_eq!(got, expected);
    }

    /// The plan of `sql` over events with a JSON column, by a session with `rules`.
    async fn json_plan(rules: Vec<Arc<dyn OptimizerRule + Send + Sync>>, sql: &str) -> String {
        use datafusion::arrow::array::{RecordBatch, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::datasource::MemTable;
        use datafusion::execution::session_state::SessionStateBuilder;
        use datafusion::prelude::SessionContext;

        let schema = Arc::new(Schema::new(vec![
            Field::new("type", DataType::Utf8, false),
            Field::new("attributes", DataType::Utf8, false),
        ]));
        let events = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["firmware_updated", "door_opened"])),
                Arc::new(StringArray::from(vec![r#"{"version":"1.2"}"#, "{}"])),
            ],
        )
        .unwrap();
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules)
            .build();
        let mut context = SessionContext::new_with_state(state);
        datafusion_functions_json::register_all(&mut context).unwrap();
        let table = MemTable::try_new(schema, vec![vec![events]]).unwrap();
        context.register_table("events", Arc::new(table)).unwrap();
        let (printed, plan) = answer(&context, sql).await;
        assert!(printed.contains("1.2"), "{printed}");
        plan
    }

    #[tokio::test]
    async fn json_is_parsed_after_the_filter_not_before() {
        let sql = "SELECT json_get_str(attributes, 'version') AS version FROM events \
                   WHERE type = 'firmware_updated'";
        let datafusions = json_plan(datafusion::optimizer::Optimizer::new().rules, sql).await;
        assert!(
            datafusions.contains("__datafusion_extracted"),
            "{datafusions}"
        );
        let plan = json_plan(super::logical_rules(), sql).await;
        assert!(!plan.contains("__datafusion_extracted"), "{plan}");
        let filter = plan.find("FilterExec").unwrap();
        let json = plan.find("json_get_str").unwrap();
        assert!(json < filter, "parsed above the filter:\n{plan}");
    }
}
