//! The DataFusion session and the policy and limits every query runs under.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use twinlake_model::{EntityHistory, Table};
use twinlake_store::LiveTables;

use crate::file_cache::FileCache;
use crate::hierarchy::{
    HierarchyCache, HierarchyFunction, HierarchyScalar, HierarchyTable, HierarchyTableFunction,
    HierarchyUdf, Relation,
};
use crate::join_sizes::statistics_registry;
use crate::lake_table::{LAKE_STORE_URL, LakeTableProvider};
use crate::latest::LatestTable;
use crate::parquet_cache::ParquetCache;
use crate::plan_rules::{logical_rules, physical_rules};
use crate::runtime::{QueryRuntime, Running};
use crate::twin_at::{TwinAtUdf, TwinValues};
use crate::views::{TWIN_HISTORY_NAME, TwinHistoryTable, VIEWS};

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
    for function in [
        HierarchyScalar::EntityPath,
        HierarchyScalar::EntityParent,
        HierarchyScalar::InSubtree,
    ] {
        let udf = HierarchyUdf::new(function, Arc::clone(hierarchy));
        context.register_udf(ScalarUDF::new_from_impl(udf));
    }
    Ok(())
}

/// What a client asks: SQL text, or a statement already planned in the session it runs in
/// (PostgreSQL's extended protocol plans at Parse and runs at Execute). A plan is checked for
/// the read-only policy like SQL is.
#[derive(Debug)]
pub enum Query {
    Sql(String),
    Plan(LogicalPlan),
}

/// What a single query may use.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Wall time before the query is cancelled.
    pub timeout: Duration,
    /// Memory for sorts, joins and aggregations; beyond it the query fails (no spilling yet).
    pub memory_bytes: usize,
    /// A result that returns more rows, or more Arrow data in all, is stopped with an error
    /// as it passes the limit: the size of an answer a client can ask for.
    pub max_result_rows: usize,
    pub max_result_bytes: usize,
    /// Queries running at once; more wait for a turn (within their timeout).
    pub max_concurrent: usize,
    /// Memory all queries share for the small tables' files kept decoded (alarms, events,
    /// health, twin and entity changes); 0 reads them from Parquet every time.
    pub file_cache_bytes: usize,
    /// Memory all queries share for lake files kept whole as Parquet (in practice
    /// `measurements`); 0 reads every range from the object store.
    pub parquet_cache_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            memory_bytes: 1024 * 1024 * 1024,
            max_result_rows: 5_000_000,
            max_result_bytes: 256 * 1024 * 1024,
            max_concurrent: 8,
            file_cache_bytes: 128 * 1024 * 1024,
            parquet_cache_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A query's result: its schema (also when there are no rows) and its batches.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// A running query's result, batch by batch, under the query's limits.
pub struct ResultStream {
    pub schema: SchemaRef,
    /// Batches as the query runtime computes them.
    batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    /// The query on the query runtime, cancelled when the stream is dropped.
    _query: Running<()>,
    deadline: tokio::time::Instant,
    limits: QueryLimits,
    rows: usize,
    bytes: usize,
    /// The query's turn among the concurrent ones, until the stream is dropped.
    _turn: OwnedSemaphorePermit,
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl ResultStream {
    /// The next batch; an error once the query is past its timeout or its result past the row
    /// or byte limit (counted over everything streamed so far). None after the last batch.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        let next = tokio::time::timeout_at(self.deadline, self.batches.recv()).await;
        let Ok(next) = next else {
            return Some(Err(timed_out(self.limits.timeout)));
        };
        let batch = match next? {
            Ok(batch) => batch,
            Err(error) => return Some(Err(error)),
        };
        self.rows += batch.num_rows();
        self.bytes += batch.get_array_memory_size();
        if self.rows > self.limits.max_result_rows || self.bytes > self.limits.max_result_bytes {
            return Some(Err(QueryError::LimitExceeded(format!(
                "the result is larger than its limit of {} rows or {} bytes (settings: query max \
                 result rows and bytes): aggregate, filter or add a LIMIT",
                self.limits.max_result_rows, self.limits.max_result_bytes
            ))));
        }
        Some(Ok(batch))
    }
}

fn timed_out(timeout: Duration) -> QueryError {
    QueryError::LimitExceeded(format!(
        "the query ran longer than its limit of {timeout:?} (setting: query timeout)"
    ))
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
    runtime: QueryRuntime,
    limits: QueryLimits,
    turns: Arc<Semaphore>,
    live: Arc<LiveTables>,
    hierarchy: Arc<HierarchyCache>,
    tables: SessionTables,
}

/// What every session of the engine is made of.
struct SessionTables {
    runtime: Arc<RuntimeEnv>,
    live: Arc<LiveTables>,
    hierarchy: Arc<HierarchyCache>,
    twin_history: Arc<TwinHistoryTable>,
    lake_store: Arc<dyn object_store::ObjectStore>,
    file_cache: Arc<FileCache>,
    parquet_cache: Arc<ParquetCache>,
}

/// What an export's session reads with: its own memory (spilling to disk beyond it) and the
/// twin fragments `twin_at` answers for.
#[derive(Debug, Clone)]
pub struct ExportSessionSettings {
    /// Memory for the export's sorts; beyond it they spill to `spill_dir`.
    pub memory_bytes: usize,
    pub spill_dir: std::path::PathBuf,
    /// The twin fragments `twin_at(entity, fragment, time)` knows.
    pub twin_fragments: Vec<String>,
}

impl SessionTables {
    /// A session with every Twinlake table, table function and view.
    async fn session(&self, information_schema: bool) -> Result<SessionContext, QueryError> {
        self.session_in(Arc::clone(&self.runtime), information_schema, false)
            .await
    }

    /// A session over `runtime`; `pinned`: each table read as of one snapshot, taken now,
    /// by every query of the session.
    async fn session_in(
        &self,
        runtime: Arc<RuntimeEnv>,
        information_schema: bool,
        pinned: bool,
    ) -> Result<SessionContext, QueryError> {
        let mut config = SessionConfig::new().with_information_schema(information_schema);
        let parquet = &mut config.options_mut().execution.parquet;
        // Filters evaluated while decoding ("late materialisation"): the columns of rows a
        // filter rejects are never decoded. In the order written, not DataFusion's reordering
        // by column size, which put a join's dynamic filter on `gateway` (small: files are
        // sorted by entity) before `series`, decoding and hashing every row's gateway for a
        // join of the whole fleet. Measured on the medium set: docs/benchmarks.md.
        parquet.pushdown_filters = true;
        parquet.reorder_filters = false;
        // A join's keys pushed into the scan (a depot's trucks, a truck's siblings) prune row
        // groups by their statistics only when the list is at most this long (default 20).
        parquet.max_in_list_size = 200;
        // Twinlake writes no bloom filters, yet looking for them cost every opened file ~0.15 ms
        // (14-device-against-siblings: 4 of its 18 ms of opening files).
        parquet.bloom_filter_on_read = false;
        // Join sizes estimated (`join_sizes`), so that joins hold their smaller side.
        config.options_mut().optimizer.use_statistics_registry = true;
        // A hash join pushes its keys into the scan as a list (which prunes pages) when they
        // are few (at most 150) and their arrays small; a handful of trucks taken from the
        // twin share its strings' buffers, which DataFusion counts whole (128 KB for 8
        // names), so the size alone made it test a hash table instead.
        config
            .options_mut()
            .optimizer
            .hash_join_inlist_pushdown_max_size = 16 * 1024 * 1024;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_statistics_registry(statistics_registry())
            .with_default_features()
            .with_optimizer_rules(logical_rules())
            .with_physical_optimizer_rules(physical_rules());
        let mut context = SessionContext::new_with_state(state.build());
        // json_get_float(value, 'kg'), `value->>'version'`, … over the JSON text columns.
        datafusion_functions_json::register_all(&mut context)?;
        for table in Table::ALL {
            let mut provider = LakeTableProvider::new(
                table,
                Arc::clone(&self.live),
                Some(Arc::clone(&self.hierarchy)),
            )
            .with_file_cache(Arc::clone(&self.file_cache));
            // An export reads every file of its range once: kept, they would evict the files
            // the interactive queries read again and again.
            if pinned {
                provider = provider.pinned();
            } else {
                provider = provider.with_parquet_cache(Arc::clone(&self.parquet_cache));
            }
            context.register_table(table.name(), Arc::new(provider))?;
        }
        register_hierarchy(&context, &self.hierarchy)?;
        let latest = LatestTable::new(Arc::clone(&self.live));
        context.register_table("latest", Arc::new(latest))?;
        for (name, select) in VIEWS {
            if name == TWIN_HISTORY_NAME && !pinned {
                context.register_table(name, Arc::clone(&self.twin_history) as _)?;
                continue;
            }
            context
                .sql(&format!("CREATE VIEW {name} AS {select}"))
                .await
                .map_err(|e| QueryError::Failed(format!("view {name}: {e}")))?;
        }
        Ok(context)
    }
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
        register_lake_store(&runtime, Arc::clone(&lake_store))?;
        let changes = Arc::new(LakeTableProvider::new(
            Table::EntityChanges,
            Arc::clone(&live),
            None,
        ));
        let hierarchy = Arc::new(HierarchyCache::new(Arc::clone(&live), changes));
        let twin_history = TwinHistoryTable::new(Arc::clone(&live), Arc::clone(&runtime)).await?;
        let tables = SessionTables {
            runtime,
            live: Arc::clone(&live),
            hierarchy: Arc::clone(&hierarchy),
            twin_history: Arc::new(twin_history),
            lake_store,
            file_cache: Arc::new(FileCache::new(limits.file_cache_bytes)),
            parquet_cache: Arc::new(ParquetCache::new(limits.parquet_cache_bytes)),
        };
        Ok(Self {
            context: tables.session(true).await?,
            runtime: QueryRuntime::new()
                .map_err(|e| QueryError::Failed(format!("starting the query threads: {e}")))?,
            turns: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            limits,
            live,
            hierarchy,
            tables,
        })
    }

    /// The engine's metrics (its decoded-file and Parquet caches) into `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.tables.file_cache.register_metrics(registry);
        self.tables.parquet_cache.register_metrics(registry);
    }

    /// A session of its own over the same tables, memory pool and limits, for a protocol that
    /// adds its own catalog and functions (PostgreSQL's pg_catalog): what it registers stays
    /// out of every other session. `information_schema`: DataFusion's, or none when the
    /// protocol brings its own.
    pub async fn new_session(
        &self,
        information_schema: bool,
    ) -> Result<SessionContext, QueryError> {
        self.tables.session(information_schema).await
    }

    /// A session for one export: every table pinned to its snapshot of now (however long the
    /// export runs, a persist or compaction meanwhile neither hides rows from it nor shows
    /// them twice), memory of its own that spills to disk, and `twin_at` over the history of
    /// the fragments asked for, read now.
    pub async fn export_session(
        &self,
        settings: &ExportSessionSettings,
    ) -> Result<SessionContext, QueryError> {
        let spill = DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![
            settings.spill_dir.clone(),
        ]));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(settings.memory_bytes, 1.0)
            .with_disk_manager_builder(spill)
            .build_arc()?;
        register_lake_store(&runtime, Arc::clone(&self.tables.lake_store))?;
        let session = self.tables.session_in(runtime, false, true).await?;
        let twin = if settings.twin_fragments.is_empty() {
            TwinValues::default()
        } else {
            let fragments: Vec<String> = settings
                .twin_fragments
                .iter()
                .map(|f| format!("'{}'", f.replace('\'', "''")))
                .collect();
            let history = self
                .run_in(
                    &session,
                    &format!(
                        "SELECT entity, fragment, value, valid_from, valid_to FROM twin_history \
                         WHERE fragment IN ({})",
                        fragments.join(", ")
                    ),
                )
                .await?;
            TwinValues::from_history(&history.batches)?
        };
        let twin_at = TwinAtUdf::new(Arc::new(twin), Arc::clone(&self.hierarchy));
        session.register_udf(ScalarUDF::new_from_impl(twin_at));
        Ok(session)
    }

    /// Plans `sql` in `session` under the read-only policy without running it: a query
    /// refused or wrong fails here, before anything depends on it.
    pub async fn check(
        &self,
        session: &SessionContext,
        sql: &str,
    ) -> Result<SchemaRef, QueryError> {
        let frame = self
            .planner(session)
            .plan(Query::Sql(sql.to_owned()))
            .await?;
        Ok(Arc::new(frame.schema().as_arrow().clone()))
    }

    /// Streams a query of an export's session: like [`Self::stream_in`], but an export's
    /// result is as large as what it selects, so only `timeout` bounds it.
    pub async fn stream_export(
        &self,
        session: &SessionContext,
        sql: &str,
        timeout: Duration,
    ) -> Result<ResultStream, QueryError> {
        let limits = QueryLimits {
            timeout,
            max_result_rows: usize::MAX,
            max_result_bytes: usize::MAX,
            ..self.limits.clone()
        };
        self.stream_with(session, Query::Sql(sql.to_owned()), limits)
            .await
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
                "SELECT arrow_cast(gateway, 'Utf8') AS gateway, \
                        arrow_cast(entity, 'Utf8') AS entity, arrow_cast(type, 'Utf8') AS type, \
                        arrow_cast(series, 'Utf8') AS series, max(time) AS time, \
                        last_value(value ORDER BY time) AS value \
                 FROM measurements GROUP BY gateway, entity, type, series",
            )
            .await?;
        let mut series = 0;
        for batch in &newest.batches {
            self.live.latest().update(batch);
            series += batch.num_rows();
        }
        Ok(series)
    }

    /// Runs a query under every limit and collects its result (which the row and byte limits
    /// keep small): for answers that are used whole, such as benchmarks and tests.
    pub async fn execute(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        let mut results = self.stream(sql).await?;
        let mut batches = Vec::new();
        while let Some(batch) = results.next().await {
            batches.push(batch?);
        }
        Ok(QueryOutput {
            schema: Arc::clone(&results.schema),
            batches,
        })
    }

    /// Starts a query and gives its result batch by batch: nothing is collected, so an answer
    /// can go to a client as it is computed. The query's turn among concurrent queries, its
    /// timeout and its row and byte limits hold until the last batch (or the stream is dropped).
    pub async fn stream(&self, sql: &str) -> Result<ResultStream, QueryError> {
        self.stream_in(&self.context, Query::Sql(sql.to_owned()), None)
            .await
    }

    /// [`Self::stream`] in a session of [`Self::new_session`], for SQL or a plan made in it,
    /// with a client's own timeout when it is shorter than the server's.
    pub async fn stream_in(
        &self,
        session: &SessionContext,
        query: Query,
        timeout: Option<Duration>,
    ) -> Result<ResultStream, QueryError> {
        let mut limits = self.limits.clone();
        limits.timeout = timeout.map_or(limits.timeout, |t| t.min(limits.timeout));
        self.stream_with(session, query, limits).await
    }

    async fn stream_with(
        &self,
        session: &SessionContext,
        query: Query,
        limits: QueryLimits,
    ) -> Result<ResultStream, QueryError> {
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let (batches_out, batches) = mpsc::channel(2);
        let (started_out, started) = oneshot::channel();
        let planner = self.planner(session);
        let begun = tokio::time::timeout_at(deadline, async {
            let turn = Arc::clone(&self.turns)
                .acquire_owned()
                .await
                .map_err(|_| QueryError::Failed("the query engine is shutting down".to_owned()))?;
            let query = self.runtime.spawn(async move {
                let Some(mut stream) = planner.start(query, started_out).await else {
                    return;
                };
                while let Some(batch) = stream.next().await {
                    if batches_out
                        .send(batch.map_err(QueryError::from))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let schema = started.await.map_err(|_| {
                QueryError::Failed("the query stopped before it started".to_owned())
            })??;
            Ok::<_, QueryError>((turn, schema, query))
        })
        .await;
        let (turn, schema, query) = begun.map_err(|_| timed_out(limits.timeout))??;
        Ok(ResultStream {
            schema,
            batches,
            _query: query,
            deadline,
            limits,
            rows: 0,
            bytes: 0,
            _turn: turn,
        })
    }

    fn planner(&self, session: &SessionContext) -> Planner {
        Planner {
            context: session.clone(),
            hierarchy: Arc::clone(&self.hierarchy),
        }
    }

    /// Runs a query of Twinlake's own (not a client's), without the result limits, on the
    /// query threads.
    async fn run(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        self.run_in(&self.context, sql).await
    }

    async fn run_in(&self, session: &SessionContext, sql: &str) -> Result<QueryOutput, QueryError> {
        let (planner, query) = (self.planner(session), Query::Sql(sql.to_owned()));
        self.runtime
            .spawn(async move {
                let frame = planner.plan(query).await?;
                let schema = Arc::new(frame.schema().as_arrow().clone());
                let batches = frame.collect().await?;
                Ok(QueryOutput { schema, batches })
            })
            .await
            .map_err(|e| QueryError::Failed(format!("a query task failed: {e}")))?
    }
}

/// Lets DataFusion read the lake's files through `store`.
fn register_lake_store(
    runtime: &RuntimeEnv,
    store: Arc<dyn object_store::ObjectStore>,
) -> Result<(), QueryError> {
    let lake_url = url::Url::parse(LAKE_STORE_URL)
        .map_err(|e| QueryError::Failed(format!("lake URL: {e}")))?;
    runtime.register_object_store(&lake_url, store);
    Ok(())
}

/// What plans a query, owned, so that it can move to the query runtime.
#[derive(Clone)]
struct Planner {
    context: SessionContext,
    hierarchy: Arc<HierarchyCache>,
}

impl Planner {
    async fn plan(&self, query: Query) -> Result<DataFrame, QueryError> {
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
        match query {
            Query::Sql(sql) => Ok(self.context.sql_with_options(&sql, read_only).await?),
            Query::Plan(plan) => {
                // Executing a DDL plan would apply it: check before.
                read_only.verify_plan(&plan)?;
                Ok(self.context.execute_logical_plan(plan).await?)
            }
        }
    }

    /// Plans and starts a query, telling `started` its schema or why it failed.
    async fn start(
        &self,
        query: Query,
        started: oneshot::Sender<Result<SchemaRef, QueryError>>,
    ) -> Option<SendableRecordBatchStream> {
        let begun = async {
            let frame = self.plan(query).await?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            Ok::<_, QueryError>((schema, frame.execute_stream().await?))
        };
        match begun.await {
            Ok((schema, stream)) => started.send(Ok(schema)).is_ok().then_some(stream),
            Err(error) => {
                let _ = started.send(Err(error));
                None
            }
        }
    }
}
