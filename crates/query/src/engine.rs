//! The DataFusion session and the policy and limits every query runs under.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use twinlake_model::{EntityHistory, Table};
use twinlake_store::LiveTables;

use crate::hierarchy::{
    HierarchyCache, HierarchyFunction, HierarchyScalar, HierarchyTable, HierarchyTableFunction,
    HierarchyUdf, Relation,
};
use crate::lake_table::{LAKE_STORE_URL, LakeTableProvider};
use crate::latest::LatestTable;
use crate::views::VIEWS;

/// The hierarchy's tables, table functions and scalar functions.
fn register_hierarchy(
    context: &SessionContext,
    hierarchy: &Arc<HierarchyCache>,
) -> Result<(), DataFusionError> {
    let tables = [
        ("entities", Relation::Entities { at: None }),
        ("entity_history", Relation::EntityHistory),
        ("entity_ancestors", Relation::Ancestors { at: None }),
        ("entity_ancestors_history", Relation::AncestorsHistory),
    ];
    for (name, relation) in tables {
        let table = HierarchyTable::new(relation, Arc::clone(hierarchy));
        context.register_table(name, Arc::new(table))?;
    }
    for function in HierarchyFunction::ALL {
        let implementation = HierarchyTableFunction::new(function, Arc::clone(hierarchy));
        context.register_udtf(function.name(), Arc::new(implementation));
    }
    for function in [HierarchyScalar::EntityPath, HierarchyScalar::InSubtree] {
        let udf = HierarchyUdf::new(function, Arc::clone(hierarchy));
        context.register_udf(ScalarUDF::new_from_impl(udf));
    }
    Ok(())
}

/// What a single query may use.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Wall time before the query is cancelled.
    pub timeout: Duration,
    /// Memory for sorts, joins and aggregations; beyond it the query fails (no spilling yet).
    pub memory_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            memory_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A query's result: its schema (also when there are no rows) and its batches.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Why a query gave no result; the variants map to what the client did wrong or not.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is wrong or not allowed: the client's to fix.
    #[error("{0}")]
    Invalid(String),
    /// The query hit one of its limits.
    #[error("{0}")]
    LimitExceeded(String),
    /// Twinlake failed to answer a valid query.
    #[error("{0}")]
    Failed(String),
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> Self {
        let message = error.to_string();
        match error.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => Self::Invalid(message),
            DataFusionError::ResourcesExhausted(_) => Self::LimitExceeded(message),
            _ => Self::Failed(message),
        }
    }
}

/// Answers SQL over every Twinlake table. Read-only: DDL, DML and `SET`-like statements are
/// refused, so no client can change what is stored or how the server behaves.
pub struct QueryEngine {
    context: SessionContext,
    limits: QueryLimits,
    live: Arc<LiveTables>,
    hierarchy: Arc<HierarchyCache>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("session", &self.context.session_id())
            .field("limits", &self.limits)
            .finish()
    }
}

impl QueryEngine {
    /// An engine over `live`, reading committed files through `lake_store` (the object store
    /// at the lake's root).
    pub async fn new(
        live: Arc<LiveTables>,
        lake_store: Arc<dyn object_store::ObjectStore>,
        limits: QueryLimits,
    ) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .build_arc()?;
        // DataFusion's default of no filter pushdown into the Parquet decoder: measured with
        // `twinlake bench lake`, pushdown made a one-depot query after compaction slower
        // (12.2 ms against 9.4 ms), as row-group and page-index pruning already skip the rest.
        let config = SessionConfig::new().with_information_schema(true);
        let lake_url = url::Url::parse(LAKE_STORE_URL)
            .map_err(|e| QueryError::Failed(format!("lake URL: {e}")))?;
        runtime.register_object_store(&lake_url, lake_store);
        let mut context = SessionContext::new_with_config_rt(config, runtime);
        // json_get_float(value, 'kg'), `value->>'version'`, … over the JSON text columns.
        datafusion_functions_json::register_all(&mut context)?;
        let changes = Arc::new(LakeTableProvider::new(
            Table::EntityChanges,
            Arc::clone(&live),
            None,
        ));
        let hierarchy = Arc::new(HierarchyCache::new(Arc::clone(&live), changes));
        for table in Table::ALL {
            let provider =
                LakeTableProvider::new(table, Arc::clone(&live), Some(Arc::clone(&hierarchy)));
            context.register_table(table.name(), Arc::new(provider))?;
        }
        register_hierarchy(&context, &hierarchy)?;
        context.register_table("latest", Arc::new(LatestTable::new(Arc::clone(&live))))?;
        for (name, select) in VIEWS {
            context
                .sql(&format!("CREATE VIEW {name} AS {select}"))
                .await
                .map_err(|e| QueryError::Failed(format!("view {name}: {e}")))?;
        }
        Ok(Self {
            context,
            limits,
            live,
            hierarchy,
        })
    }

    /// The hierarchy as `entity_changes` holds it now: what ingest starts from to know which
    /// entities are registered.
    pub async fn entity_history(&self) -> Result<EntityHistory, QueryError> {
        let state = self.context.state();
        Ok(self.hierarchy.load(&state).await?.history().clone())
    }

    /// Fills the `latest` cache from the persisted history (ingest keeps it current from
    /// then on; a newer value already there wins). Reads every measurement once, so it runs
    /// in the background at start. Returns how many series it read.
    pub async fn load_latest_from_history(&self) -> Result<usize, QueryError> {
        let newest = self
            .run(
                "SELECT arrow_cast(entity, 'Utf8') AS entity, arrow_cast(type, 'Utf8') AS type, \
                        arrow_cast(series, 'Utf8') AS series, max(time) AS time, \
                        last_value(value ORDER BY time) AS value \
                 FROM measurements GROUP BY entity, type, series",
            )
            .await?;
        let mut series = 0;
        for batch in &newest.batches {
            self.live.latest().update(batch);
            series += batch.num_rows();
        }
        Ok(series)
    }

    pub async fn execute(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        let timeout = self.limits.timeout;
        tokio::time::timeout(timeout, self.run(sql))
            .await
            .map_err(|_| {
                QueryError::LimitExceeded(format!(
                    "the query ran longer than its limit of {timeout:?} (setting: query timeout)"
                ))
            })?
    }

    async fn run(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        // Scalar functions cannot wait for a fold of the hierarchy: bring it up to date first.
        // A query that does not need it must not fail with it (entity_changes unreadable in a
        // store outage): the hierarchy views fail on their own, the functions use the last fold.
        if let Err(error) = self.hierarchy.load(&self.context.state()).await {
            tracing::warn!(%error, "the hierarchy could not be refreshed; hierarchy functions use the last one read");
        }
        let frame = self.context.sql_with_options(sql, read_only).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        Ok(QueryOutput { schema, batches })
    }
}
