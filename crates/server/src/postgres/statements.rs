//! What a PostgreSQL client may run, and how its queries run: the read-only gate (queries,
//! EXPLAIN, PostgreSQL's own SET and SHOW, transactions, cursors; everything else refused with
//! the SQLSTATE PostgreSQL would give), and queries answered by the query engine under its
//! limits, their rows streamed and stopped by a cancel request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as PlannedStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::HookClient;
use futures::{Stream, StreamExt, stream};
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use twinlake_query::{Query, QueryEngine, QueryError, ResultStream};

use crate::postgres::catalog::setting;

/// Where datafusion-postgres keeps a client's `SET statement_timeout`.
const STATEMENT_TIMEOUT: &str = "statement_timeout_ms";

/// PostgreSQL settings datafusion-postgres keeps per connection (and sends back as
/// ParameterStatus); any other `SET` of a PostgreSQL setting is accepted and changes nothing.
const KEPT_SETTINGS: [&str; 7] = [
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
];

/// An error with its SQLSTATE, as the client sees it.
pub(crate) fn sql_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

/// A query engine error with the SQLSTATE that says what went wrong.
pub(crate) fn query_error(error: QueryError) -> PgWireError {
    let code = match &error {
        QueryError::Invalid(message)
            if message.contains("not found") && message.contains("able") =>
        {
            "42P01"
        }
        QueryError::Invalid(message) if message.contains("No field named") => "42703",
        QueryError::Invalid(message) if read_only_refusal(message) => "25006",
        QueryError::Invalid(_) => "42601",
        QueryError::LimitExceeded(message) if message.contains("ran longer") => "57014",
        QueryError::LimitExceeded(_) => "54000",
        QueryError::Failed(_) => "XX000",
    };
    sql_error(code, error.to_string())
}

/// The query engine's own read-only check (behind the gate) refused the plan.
fn read_only_refusal(message: &str) -> bool {
    [
        "DDL not supported",
        "DML not supported",
        "Statement not supported",
    ]
    .iter()
    .any(|refusal| message.contains(refusal))
}

/// What the gate decides for a statement.
enum Verdict {
    /// Passes on, to the hooks and the query engine.
    Allowed,
    /// Answered here with a command tag and no effect.
    Ignored(&'static str),
    /// `SHOW` of a setting Twinlake answers itself.
    Show(String, &'static str),
    Refused(PgWireError),
}

fn verdict(statement: &Statement) -> Verdict {
    match statement {
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Verdict::Allowed,
        Statement::Set(set) => set_verdict(set),
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|part| part.value.to_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            match setting(&name) {
                Some(value) => Verdict::Show(name, value),
                None => Verdict::Allowed,
            }
        }
        Statement::Copy { .. } => Verdict::Refused(sql_error(
            "0A000",
            "COPY is not supported by Twinlake: run the SELECT (psql: \\o file) or use the \
             HTTP API's CSV and Parquet formats"
                .to_owned(),
        )),
        other => refused(other),
    }
}

fn set_verdict(set: &Set) -> Verdict {
    match set {
        Set::SingleAssignment { variable, .. } => {
            let name = variable.to_string().to_lowercase();
            if name.contains('.') {
                // `SET datafusion.…` would change how the server runs every query.
                return Verdict::Refused(sql_error(
                    "42501",
                    format!("permission denied to set parameter \"{name}\""),
                ));
            }
            if KEPT_SETTINGS.contains(&name.as_str()) {
                Verdict::Allowed
            } else {
                Verdict::Ignored("SET")
            }
        }
        Set::SetTimeZone { .. } => Verdict::Allowed,
        _ => Verdict::Ignored("SET"),
    }
}

/// A statement that would change something, or that Twinlake does not do.
fn refused(statement: &Statement) -> Verdict {
    let text = statement.to_string();
    let mut words = text.split_whitespace().map(str::to_uppercase);
    let first = words.next().unwrap_or_default();
    let command = match first.as_str() {
        "CREATE" | "DROP" | "ALTER" => format!("{first} {}", words.next().unwrap_or_default()),
        _ => first.clone(),
    };
    let writes = [
        "INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE", "GRANT",
        "REVOKE", "COMMENT", "VACUUM", "ANALYZE", "REINDEX", "CLUSTER", "REFRESH",
    ];
    let error = if writes.contains(&first.as_str()) {
        sql_error(
            "25006",
            format!(
                "cannot execute {command} in a read-only transaction: Twinlake's SQL is read-only"
            ),
        )
    } else {
        sql_error(
            "0A000",
            format!("{command} is not supported by Twinlake's PostgreSQL port"),
        )
    };
    Verdict::Refused(error)
}

/// The first hook: only what a read-only analysis client needs gets past it.
#[derive(Debug)]
pub(crate) struct ReadOnlyGate;

impl ReadOnlyGate {
    fn answer(statement: &Statement) -> Option<PgWireResult<Response>> {
        match verdict(statement) {
            Verdict::Allowed => None,
            Verdict::Ignored(tag) => Some(Ok(Response::Execution(Tag::new(tag)))),
            Verdict::Show(name, value) => Some(show(&name, value)),
            Verdict::Refused(error) => Some(Err(error)),
        }
    }
}

fn show(name: &str, value: &str) -> PgWireResult<Response> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_owned(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    let rows = stream::once(async move { Ok(row) });
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

/// A plan with no rows and `columns` text columns, for statements answered without a query.
pub(crate) fn placeholder_plan(columns: &[&str]) -> PgWireResult<LogicalPlan> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|name| Field::new(*name, DataType::Utf8, true))
        .collect();
    let schema =
        DFSchema::try_from(Schema::new(fields)).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(schema),
    }))
}

#[async_trait]
impl QueryHook for ReadOnlyGate {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::answer(statement)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match verdict(statement) {
            Verdict::Allowed => None,
            Verdict::Ignored(_) => Some(placeholder_plan(&[])),
            Verdict::Show(name, _) => Some(placeholder_plan(&[&name])),
            Verdict::Refused(error) => Some(Err(error)),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _session: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Self::answer(statement)
    }
}

/// The last hook: queries of the simple protocol, answered by the query engine.
#[derive(Debug)]
pub(crate) struct EngineQueries {
    pub(crate) engine: Arc<QueryEngine>,
}

#[async_trait]
impl QueryHook for EngineQueries {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if !matches!(statement, Statement::Query(_) | Statement::Explain { .. }) {
            return Some(Err(sql_error(
                "0A000",
                format!("{statement} is not supported by Twinlake's PostgreSQL port"),
            )));
        }
        let planned = PlannedStatement::Statement(Box::new(statement.clone()));
        let plan = match session.state().statement_to_plan(planned).await {
            Ok(plan) => plan,
            Err(error) => return Some(Err(query_error(error.into()))),
        };
        Some(answer(
            &self.engine,
            session,
            plan,
            &Format::UnifiedText,
            client,
        ))
    }

    async fn handle_extended_parse_query(
        &self,
        _statement: &Statement,
        _session: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        None
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _session: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

/// The response to a planned query: its columns now, its rows as the engine computes them,
/// once the client reads them (a simple query's statements run one after the other, each
/// holding its turn among concurrent queries only while it streams).
pub(crate) fn answer(
    engine: &Arc<QueryEngine>,
    session: &SessionContext,
    plan: LogicalPlan,
    format: &Format,
    client: &(impl ClientInfo + ?Sized),
) -> PgWireResult<Response> {
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields = arrow_schema_to_pg_fields(plan.schema().as_arrow(), format, Some(options))?;
    let timeout = client
        .metadata()
        .get(STATEMENT_TIMEOUT)
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let start = Start {
        engine: Arc::clone(engine),
        session: session.clone(),
        plan,
        timeout,
    };
    let fields = Arc::new(fields);
    let rows = rows(start, Arc::clone(&fields));
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

/// A query not started yet.
struct Start {
    engine: Arc<QueryEngine>,
    session: SessionContext,
    plan: LogicalPlan,
    timeout: Option<Duration>,
}

enum Rows {
    Unstarted(Box<Start>),
    Streaming(ResultStream),
    Done,
}

/// Dropping the stream drops the query's results, which stops its scan.
fn rows(
    start: Start,
    fields: Arc<Vec<FieldInfo>>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send {
    stream::unfold(Rows::Unstarted(Box::new(start)), move |state| {
        let fields = Arc::clone(&fields);
        async move {
            let (batch, state) = next_batch(state).await?;
            let rows: Vec<PgWireResult<DataRow>> = match batch {
                Ok(batch) => encode_recordbatch(fields, batch).collect(),
                Err(error) => vec![Err(error)],
            };
            Some((stream::iter(rows), state))
        }
    })
    .flatten()
}

async fn next_batch(state: Rows) -> Option<(PgWireResult<RecordBatch>, Rows)> {
    let mut results = match state {
        Rows::Done => return None,
        Rows::Streaming(results) => results,
        Rows::Unstarted(start) => {
            let query = Query::Plan(start.plan);
            let started = start.engine.stream_in(&start.session, query, start.timeout);
            match started.await {
                Ok(results) => results,
                Err(error) => return Some((Err(query_error(error)), Rows::Done)),
            }
        }
    };
    match results.next().await? {
        Ok(batch) => Some((Ok(batch), Rows::Streaming(results))),
        Err(error) => Some((Err(query_error(error)), Rows::Done)),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn code_of(sql: &str) -> Option<String> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        match verdict(&statements[0]) {
            Verdict::Refused(PgWireError::UserError(info)) => Some(info.code),
            Verdict::Refused(other) => panic!("{other}"),
            _ => None,
        }
    }

    #[test]
    fn only_reading_gets_through() {
        assert_eq!(code_of("SELECT 1"), None);
        assert_eq!(code_of("EXPLAIN SELECT 1"), None);
        assert_eq!(code_of("BEGIN"), None);
        assert_eq!(code_of("SET extra_float_digits = 3"), None);
        assert_eq!(code_of("SET client_min_messages = warning"), None);
        assert_eq!(code_of("SHOW server_version_num"), None);
        assert_eq!(code_of("DECLARE c CURSOR FOR SELECT 1"), None);
        assert_eq!(code_of("FETCH 10 FROM c"), None);
        assert_eq!(code_of("CREATE TABLE t (a int)").as_deref(), Some("25006"));
        assert_eq!(
            code_of("INSERT INTO alarms VALUES (1)").as_deref(),
            Some("25006")
        );
        assert_eq!(code_of("DROP TABLE measurements").as_deref(), Some("25006"));
        assert_eq!(
            code_of("COPY (SELECT 1) TO '/tmp/x'").as_deref(),
            Some("0A000")
        );
        assert_eq!(
            code_of("SET datafusion.execution.batch_size = 1").as_deref(),
            Some("42501")
        );
    }
}
