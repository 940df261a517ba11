//! The twin state, health and alarm views: SQL over the tables, registered with every session
//! so that users and the `queries/` examples share one definition. `twin_history` is kept as
//! a table, computed again only when `twin_changes` changes (see [`TwinHistoryTable`]).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use twinlake_model::Table;
use twinlake_store::LiveTables;

use crate::lake_table::LakeTableProvider;
use crate::table_derived::TableDerived;

/// `(name, SELECT …)` of each view, in the order they must be created; `twin_history` first
/// for sessions that read pinned snapshots, where it stays a view over their `twin_changes`.
pub(crate) const VIEWS: [(&str, &str); 6] = [
    (TWIN_HISTORY_NAME, TWIN_HISTORY),
    ("twin", TWIN),
    ("gateway_twin_history", GATEWAY_TWIN_HISTORY),
    ("gateways", GATEWAYS),
    ("health_current", HEALTH_CURRENT),
    ("alarms_active", ALARMS_ACTIVE),
];

pub(crate) const TWIN_HISTORY_NAME: &str = "twin_history";

/// One row per value a twin fragment had: a fragment set again to the same value is not a
/// new version, a deletion ends the last one. As for entities, a fragment's first value is
/// valid from the beginning of time, because twin messages carry no time of their own.
const TWIN_HISTORY: &str = "
WITH ordered AS (
    SELECT gateway, entity, fragment, value, time,
           LAG(value) OVER (PARTITION BY entity, fragment ORDER BY time) AS previous,
           ROW_NUMBER() OVER (PARTITION BY entity, fragment ORDER BY time) AS n
    FROM twin_changes
), changed AS (
    SELECT gateway, entity, fragment, value, time, n,
           LEAD(time) OVER (PARTITION BY entity, fragment ORDER BY time) AS valid_to
    FROM ordered
    WHERE n = 1 OR value IS DISTINCT FROM previous
)
SELECT gateway, entity, fragment, value,
       CASE WHEN n = 1 THEN arrow_cast(0, 'Timestamp(Nanosecond, Some(\"UTC\"))') ELSE time END AS valid_from,
       valid_to,
       time AS updated_at
FROM changed
WHERE value IS NOT NULL";

/// The value every twin fragment has now.
const TWIN: &str = "
SELECT gateway, entity, fragment, value, updated_at
FROM twin_history
WHERE valid_to IS NULL";

/// The twin history of the gateways' main devices, where a fleet keeps what groups gateways
/// (depot, customer, region): joined on `gateway` and the reading's time, it tells which group a
/// gateway was in when a row was written.
const GATEWAY_TWIN_HISTORY: &str = "
SELECT gateway, fragment, value, valid_from, valid_to, updated_at
FROM twin_history
WHERE entity = gateway";

/// Every gateway heard of: its main device, registered at its first message.
const GATEWAYS: &str = "
SELECT gateway, name, registered_at AS first_seen
FROM entities
WHERE entity = gateway";

/// The newest health status of every entity that reports one.
const HEALTH_CURRENT: &str = "
SELECT gateway, entity, status, pid, time, attributes
FROM (
    SELECT gateway, entity, status, pid, time, attributes,
           ROW_NUMBER() OVER (PARTITION BY entity ORDER BY time DESC) AS newest
    FROM health
)
WHERE newest = 1 AND status IS NOT NULL";

/// Alarms raised and not cleared since, one row per (entity, type), counted as Cumulocity
/// counts them: a raise while the alarm is active is a repeat (count + 1) that updates it.
const ALARMS_ACTIVE: &str = "
WITH last_clear AS (
    SELECT entity, type, max(time) AS cleared_at
    FROM alarms
    WHERE status = 'cleared'
    GROUP BY entity, type
), open_raises AS (
    SELECT a.gateway, a.entity, a.type, a.severity, a.text, a.attributes, a.time
    FROM alarms a
    LEFT JOIN last_clear c ON a.entity = c.entity AND a.type = c.type
    WHERE a.status = 'raised' AND (c.cleared_at IS NULL OR a.time > c.cleared_at)
), ranked AS (
    SELECT gateway, entity, type, severity, text, attributes, time,
           ROW_NUMBER() OVER (PARTITION BY entity, type ORDER BY time DESC) AS newest,
           MIN(time) OVER (PARTITION BY entity, type) AS first_raised,
           COUNT(*) OVER (PARTITION BY entity, type) AS count
    FROM open_raises
)
SELECT gateway, entity, type, severity, text, first_raised, time AS last_updated, count, attributes
FROM ranked
WHERE newest = 1";

/// `twin_history` as a table: the view's windows over all of `twin_changes`, run once per
/// change of that table rather than planned and run inside every query that reads the twin
/// (`twin`, `gateway_twin_history`, the depot of a reading). Planning the view alone took
/// 5 ms of a 24 ms query (16-depot-inventory); its rows are few (one per value a fragment
/// had), so they are kept in memory.
pub(crate) struct TwinHistoryTable {
    /// A session holding only `twin_changes`, on the engine's runtime and memory.
    context: SessionContext,
    schema: SchemaRef,
    rows: TableDerived<Vec<RecordBatch>>,
}

impl std::fmt::Debug for TwinHistoryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinHistoryTable").finish_non_exhaustive()
    }
}

impl TwinHistoryTable {
    pub(crate) async fn new(live: Arc<LiveTables>, runtime: Arc<RuntimeEnv>) -> Result<Self> {
        let context = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        let twin_changes = LakeTableProvider::new(Table::TwinChanges, Arc::clone(&live), None);
        context.register_table(Table::TwinChanges.name(), Arc::new(twin_changes))?;
        let schema = Arc::new(context.sql(TWIN_HISTORY).await?.schema().as_arrow().clone());
        Ok(Self {
            context,
            schema,
            rows: TableDerived::new(Table::TwinChanges, live, Vec::new()),
        })
    }

    /// The rows as `twin_changes` holds them now: computed once however many queries ask
    /// at the same time.
    async fn rows(&self) -> Result<Arc<Vec<RecordBatch>>> {
        if let Some(rows) = self.rows.current() {
            return Ok(rows);
        }
        let _one_at_a_time = self.rows.computing().await;
        if let Some(rows) = self.rows.current() {
            return Ok(rows);
        }
        let changes = self.rows.changes();
        let rows = Arc::new(self.context.sql(TWIN_HISTORY).await?.collect().await?);
        self.rows.publish(changes, Arc::clone(&rows));
        Ok(rows)
    }
}

#[async_trait::async_trait]
impl TableProvider for TwinHistoryTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = self.rows().await?;
        let source =
            MemorySourceConfig::try_new(&[rows.to_vec()], self.schema(), projection.cloned())?
                .with_limit(limit);
        Ok(DataSourceExec::from_data_source(source))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::AsArray;
    use datafusion::execution::runtime_env::RuntimeEnv;
    use datafusion::prelude::SessionContext;
    use twinlake_model::{FleetTopics, Parsed, Table, TableBuilders, Timestamp};
    use twinlake_store::LiveTables;
    use twinlake_wal::RecordId;

    use super::TwinHistoryTable;

    /// `twin_changes` row of `te/device/main///twin/depot` set to `depot` at `second`.
    fn depot(depot: &str, second: i64) -> datafusion::arrow::array::RecordBatch {
        let at = Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + second * 1_000_000_000);
        let payload = format!("\"{depot}\"");
        let Parsed::Data(message) = twinlake_model::parse_message(
            &FleetTopics::default(),
            b"te/device/main///twin/depot",
            payload.as_bytes(),
            at,
        ) else {
            panic!("a valid twin message");
        };
        let mut builders = TableBuilders::new();
        builders.append(&message);
        let (table, batch) = builders.finish().unwrap().remove(0);
        assert_eq!(table, Table::TwinChanges);
        batch
    }

    async fn values(context: &SessionContext) -> Vec<(String, bool)> {
        let batches = context
            .sql("SELECT value, valid_to IS NULL FROM twin_history ORDER BY valid_from")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for batch in batches {
            let (values, current) = (batch.column(0).as_string::<i32>(), batch.column(1));
            for row in 0..batch.num_rows() {
                rows.push((
                    values.value(row).to_owned(),
                    current.as_boolean().value(row),
                ));
            }
        }
        rows
    }

    #[tokio::test]
    async fn the_history_is_computed_again_only_when_twin_changes_changes() {
        let live = Arc::new(LiveTables::new());
        live.append(Table::TwinChanges, depot("north", 0), RecordId(1))
            .unwrap();
        let table = Arc::new(
            TwinHistoryTable::new(Arc::clone(&live), Arc::new(RuntimeEnv::default()))
                .await
                .unwrap(),
        );
        let context = SessionContext::new();
        context
            .register_table("twin_history", Arc::clone(&table) as _)
            .unwrap();

        assert_eq!(values(&context).await, [("\"north\"".to_owned(), true)]);
        let first = table.rows().await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &table.rows().await.unwrap()),
            "computed again"
        );

        live.append(Table::TwinChanges, depot("south", 60), RecordId(2))
            .unwrap();
        assert_eq!(
            values(&context).await,
            [
                ("\"north\"".to_owned(), false),
                ("\"south\"".to_owned(), true)
            ]
        );
    }
}
