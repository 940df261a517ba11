//! Cursors (`DECLARE … CURSOR FOR`, `FETCH`, `CLOSE`), for clients that read a large result a
//! piece at a time (psycopg2's named cursors, BI tools): the query runs in the query engine
//! like any other, under its limits, and each FETCH takes the next rows of its stream.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as PlannedStatement;
use datafusion::sql::sqlparser::ast::{
    CloseCursor, Declare, DeclareType, FetchDirection, Ident, Statement, Value,
};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use pgwire::api::ClientInfo;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{Response, Tag};
use pgwire::api::stmt::StoredStatement;
use pgwire::api::store::PortalStore;
use pgwire::error::PgWireResult;
use twinlake_query::QueryEngine;

use crate::postgres::statements::{answer, placeholder_plan, query_error, sql_error};

/// The hook for the three cursor statements.
#[derive(Debug)]
pub(crate) struct Cursors {
    pub(crate) engine: Arc<QueryEngine>,
}

impl Cursors {
    async fn handle(
        &self,
        statement: &Statement,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match statement {
            Statement::Declare { stmts } => Some(self.declare(stmts, session, client).await),
            Statement::Fetch {
                name, direction, ..
            } => Some(fetch(client, name, direction).await),
            Statement::Close { cursor } => Some(Ok(close(client, cursor))),
            _ => None,
        }
    }

    async fn declare(
        &self,
        declarations: &[Declare],
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> PgWireResult<Response> {
        for declaration in declarations {
            let (Some(DeclareType::Cursor), Some(name), Some(query)) = (
                &declaration.declare_type,
                declaration.names.first(),
                &declaration.for_query,
            ) else {
                return Err(sql_error(
                    "42601",
                    "DECLARE takes a cursor name and CURSOR FOR a query".to_owned(),
                ));
            };
            let planned = PlannedStatement::Statement(Box::new(Statement::Query(query.clone())));
            let plan = session
                .state()
                .statement_to_plan(planned)
                .await
                .map_err(|e| query_error(e.into()))?;
            let Response::Query(rows) =
                answer(&self.engine, session, plan, &Format::UnifiedText, &*client)?
            else {
                return Err(sql_error("XX000", "a query gave no rows".to_owned()));
            };
            let statement =
                StoredStatement::new(name.value.clone(), (query.to_string(), None), vec![]);
            let portal = Portal::new_cursor(name.value.clone(), Arc::new(statement));
            // Nothing runs until the first FETCH.
            portal.start(rows).await;
            client.portal_store().put_portal(Arc::new(portal));
        }
        Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
    }
}

async fn fetch(
    client: &dyn HookClient,
    name: &Ident,
    direction: &FetchDirection,
) -> PgWireResult<Response> {
    let count = |value: &Value| match value {
        Value::Number(n, _) => n.parse::<usize>().ok(),
        _ => None,
    };
    // 0: every row left.
    let rows = match direction {
        FetchDirection::Next | FetchDirection::Forward { limit: None } => Some(1),
        FetchDirection::Forward { limit: Some(n) } | FetchDirection::Count { limit: n } => count(n),
        FetchDirection::ForwardAll | FetchDirection::All => Some(0),
        _ => None,
    };
    let Some(rows) = rows else {
        return Err(sql_error(
            "55000",
            "cursors can only fetch forward (NEXT, FORWARD n, ALL)".to_owned(),
        ));
    };
    let missing = || sql_error("34000", format!("cursor \"{}\" does not exist", name.value));
    let entry = client
        .portal_store()
        .get_portal(&name.value)
        .ok_or_else(missing)?;
    let portal = entry.value().map(Arc::clone).ok_or_else(missing)?;
    let mut fetched = portal.fetch(rows).await?.response;
    fetched.command_tag = "FETCH".to_owned();
    Ok(Response::Query(fetched))
}

fn close(client: &dyn HookClient, cursor: &CloseCursor) -> Response {
    match cursor {
        CloseCursor::All => client.portal_store().clear_portals(),
        CloseCursor::Specific { name } => client.portal_store().rm_portal(&name.value),
    }
    Response::Execution(Tag::new("CLOSE CURSOR"))
}

#[async_trait]
impl QueryHook for Cursors {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.handle(statement, session, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match statement {
            Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
                Some(placeholder_plan(&[]))
            }
            _ => None,
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        session: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.handle(statement, session, client).await
    }
}
