//! The handlers of one PostgreSQL connection: sign-in, simple and extended queries (through
//! datafusion-postgres, with Twinlake's hooks), cancel.

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::{DfSessionService, Parser};
use futures::channel::oneshot;
use futures::{Sink, StreamExt, stream};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, SendableRowStream};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionHandle, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use twinlake_query::QueryEngine;

use crate::postgres::login::{Gatekeeper, Login};
use crate::postgres::statements::{answer, query_error};

/// What every connection of the port shares.
pub(crate) struct Port {
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) session: Arc<SessionContext>,
    pub(crate) service: Arc<DfSessionService>,
    pub(crate) gatekeeper: Arc<Gatekeeper>,
    pub(crate) cancel: Arc<DefaultCancelHandler>,
}

impl Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("gatekeeper", &self.gatekeeper)
            .finish_non_exhaustive()
    }
}

/// The handler set of one connection.
pub(crate) struct Connection {
    queries: Arc<Queries>,
    login: Arc<Login>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Connection {
    pub(crate) fn new(port: &Port) -> Self {
        let queries = Queries {
            engine: Arc::clone(&port.engine),
            session: Arc::clone(&port.session),
            parser: Arc::new(SearchPathParser {
                inner: port.service.query_parser(),
            }),
            service: Arc::clone(&port.service),
        };
        Self {
            queries: Arc::new(queries),
            login: Arc::new(Login::new(Arc::clone(&port.gatekeeper))),
            cancel: Arc::clone(&port.cancel),
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.login)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// Queries of one connection: datafusion-postgres parses them and runs the hooks; SELECTs of
/// the extended protocol run here, as only here is the result format the client asked for
/// known.
pub(crate) struct Queries {
    engine: Arc<QueryEngine>,
    session: Arc<SessionContext>,
    service: Arc<DfSessionService>,
    parser: Arc<SearchPathParser>,
}

impl Debug for Queries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queries").finish_non_exhaustive()
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let query = with_search_path(query);
        let responses = SimpleQueryHandler::do_query(self.service.as_ref(), client, &query).await?;
        let handle = connection_handle(client);
        Ok(responses
            .into_iter()
            .map(|response| cancellable(response, handle.clone()))
            .collect())
    }
}

type ParsedStatement = <DfSessionService as ExtendedQueryHandler>::Statement;

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = ParsedStatement;
    type QueryParser = SearchPathParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, Some((statement, plan))) = &portal.statement.statement else {
            return ExtendedQueryHandler::do_query(self.service.as_ref(), client, portal, max_rows)
                .await;
        };
        if !matches!(statement, Statement::Query(_) | Statement::Explain { .. }) {
            return ExtendedQueryHandler::do_query(self.service.as_ref(), client, portal, max_rows)
                .await;
        }
        let types = plan
            .get_parameter_types()
            .map_err(|e| query_error(e.into()))?;
        let mut ordered: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .map(|(id, data_type)| {
                let position = id.trim_start_matches('$').parse().unwrap_or(usize::MAX);
                (position, data_type)
            })
            .collect();
        ordered.sort_by_key(|(position, _)| *position);
        let types: Vec<Option<&DataType>> = ordered.iter().map(|(_, t)| t.as_ref()).collect();
        let parameters = deserialize_parameters(portal, &types)?;
        let plan = plan
            .clone()
            .replace_params_with_values(&parameters)
            .map_err(|e| query_error(e.into()))?;
        let response = answer(
            &self.engine,
            &self.session,
            plan,
            &portal.result_column_format,
            client,
        )?;
        Ok(cancellable(response, connection_handle(client)))
    }
}

fn connection_handle(client: &impl ClientInfo) -> Option<Arc<ConnectionHandle>> {
    let handle = client.session_extensions().get::<Arc<ConnectionHandle>>()?;
    Some(Arc::clone(handle.as_ref()))
}

/// pgwire listens for a cancel request only until a handler has made its response; the rows
/// are read after. So each answer listens for itself while its rows are read, and a cancel
/// ends them: the query's results are dropped, which stops its scan.
fn cancellable(response: Response, handle: Option<Arc<ConnectionHandle>>) -> Response {
    let (query, handle) = match (response, handle) {
        (Response::Query(query), Some(handle)) => (query, handle),
        (other, _) => return other,
    };
    let rows = stream::unfold(Listening::Fresh(query.data_rows, handle), next_row);
    let mut cancellable = QueryResponse::new(query.row_schema, rows);
    cancellable.command_tag = query.command_tag;
    Response::Query(cancellable)
}

enum Listening {
    Fresh(SendableRowStream, Arc<ConnectionHandle>),
    /// The cancel signal is None once it can no longer fire (another query took it over).
    Reading(SendableRowStream, Option<oneshot::Receiver<()>>),
    Done,
}

async fn next_row(state: Listening) -> Option<(PgWireResult<DataRow>, Listening)> {
    let (mut rows, mut cancelled) = match state {
        Listening::Done => return None,
        Listening::Reading(rows, cancelled) => (rows, cancelled),
        Listening::Fresh(rows, handle) => (rows, Some(handle.start_query().await)),
    };
    let next = match cancelled.as_mut() {
        Some(signal) => tokio::select! {
            biased;
            fired = signal => match fired {
                Ok(()) => return Some((Err(PgWireError::QueryCanceled), Listening::Done)),
                Err(_) => {
                    cancelled = None;
                    rows.next().await
                }
            },
            next = rows.next() => next,
        },
        None => rows.next().await,
    };
    Some((next?, Listening::Reading(rows, cancelled)))
}

/// datafusion-postgres's parser, after [`with_search_path`].
pub(crate) struct SearchPathParser {
    inner: Arc<Parser>,
}

#[async_trait]
impl QueryParser for SearchPathParser {
    type Statement = ParsedStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.inner
            .parse_sql(client, &with_search_path(sql), types)
            .await
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(statement, format)
    }
}

/// The subquery Grafana's table and column builder uses for "the schemas on the search path".
/// DataFusion cannot run it (a scalar function in FROM); datafusion-postgres swaps it for `''`,
/// which makes every table show as `public.name`. Twinlake's search path is `public`, so it
/// becomes `'public'` here, before that, and tables show by their bare names.
const GRAFANA_SEARCH_PATH: &str = r#"SELECT
    CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
  FROM
    generate_series(
      array_lower(string_to_array(current_setting('search_path'),','),1),
      array_upper(string_to_array(current_setting('search_path'),','),1)
    ) as i,
    string_to_array(current_setting('search_path'),',') s"#;

fn tokens(sql: &str) -> Option<Vec<Token>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    Some(
        tokens
            .into_iter()
            .filter(|token| !matches!(token, Token::Whitespace(_)))
            .collect(),
    )
}

fn with_search_path(sql: &str) -> Cow<'_, str> {
    if !sql.contains("current_setting('search_path')") {
        return Cow::Borrowed(sql);
    }
    static PATTERN: LazyLock<Vec<Token>> =
        LazyLock::new(|| tokens(GRAFANA_SEARCH_PATH).unwrap_or_default());
    let pattern: &[Token] = &PATTERN;
    let Some(input) = tokens(sql).filter(|_| !pattern.is_empty()) else {
        return Cow::Borrowed(sql);
    };
    let mut output: Vec<String> = Vec::with_capacity(input.len());
    let mut at = 0;
    let mut replaced = false;
    while at < input.len() {
        if input[at..].starts_with(pattern) {
            output.push("'public'".to_owned());
            at += pattern.len();
            replaced = true;
        } else {
            output.push(input[at].to_string());
            at += 1;
        }
    }
    if replaced {
        Cow::Owned(output.join(" "))
    } else {
        Cow::Borrowed(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::with_search_path;

    #[test]
    fn grafanas_search_path_subquery_becomes_public() {
        let sql = r#"SELECT CASE WHEN quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              ) THEN quote_ident(table_name) END AS "table" FROM information_schema.tables"#;
        let rewritten = with_search_path(sql);
        assert!(rewritten.contains("IN ( 'public' )"), "{rewritten}");
        assert!(!rewritten.contains("generate_series"), "{rewritten}");
        assert_eq!(with_search_path("SELECT 1"), "SELECT 1");
    }
}
