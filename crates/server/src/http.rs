//! The HTTP API (axum).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use twinlake_query::{QueryEngine, QueryError};

use crate::format::ResultFormat;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub engine: Arc<QueryEngine>,
    pub metrics: Arc<Registry>,
}

/// The fields of a query request, as URL parameters (GET) or a JSON body (POST).
#[derive(Debug, Deserialize)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/query", get(query_get).post(query_post))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes; requests in progress finish first.
pub async fn serve_http(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn query_get(
    State(state): State<HttpState>,
    Query(request): Query<QueryRequest>,
) -> Response {
    answer(state, request).await
}

async fn query_post(
    State(state): State<HttpState>,
    body: Result<axum::Json<QueryRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(axum::Json(request)) => answer(state, request).await,
        Err(rejection) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "the body must be JSON like {{\"sql\": \"SELECT 1\", \"format\": \"json\"}}: {rejection}"
            ),
        ),
    }
}

async fn answer(state: HttpState, request: QueryRequest) -> Response {
    let format = match request.format.as_deref() {
        None => ResultFormat::default(),
        Some(name) => match ResultFormat::parse(name) {
            Some(format) => format,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown format {name:?}: use json, ndjson, csv, arrow or parquet"),
                );
            }
        },
    };
    let began = tokio::time::Instant::now();
    let output = match state.engine.execute(&request.sql).await {
        Ok(output) => output,
        Err(QueryError::Invalid(message)) => return error(StatusCode::BAD_REQUEST, message),
        Err(QueryError::LimitExceeded(message)) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, message);
        }
        Err(QueryError::Failed(message)) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, message);
        }
    };
    // The timeout covers the whole answer: encoding gets what the query left of it.
    let timeout = state.engine.limits().timeout;
    let encoding =
        tokio::task::spawn_blocking(move || format.encode(&output.schema, &output.batches));
    let Ok(encoded) = tokio::time::timeout_at(began + timeout, encoding).await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "encoding the result took longer than the query's limit of {timeout:?} (setting: query timeout)"
            ),
        );
    };
    match encoded {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the result: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the result: {e}"),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    if status.is_server_error() {
        tracing::error!(%status, %message, "query failed");
    }
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn health() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        ),
    }
}
