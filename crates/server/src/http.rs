//! The HTTP API (axum).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use twinlake_query::{QueryEngine, QueryError, ResultStream};

use twinlake_auth::PasswordFile;

use crate::access::require_user;
use crate::export::{ExportError, ExportRequest, Exports};
use crate::format::{ResultEncoder, ResultFormat};
use crate::tls::{TlsAcceptor, TlsListener};

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub engine: Arc<QueryEngine>,
    pub metrics: Arc<Registry>,
    /// The users who may query; None lets anyone in (allowed on loopback, or explicitly).
    pub users: Option<Arc<PasswordFile>>,
    pub exports: Arc<Exports>,
}

/// The fields of a query request, as URL parameters (GET) or a JSON body (POST).
#[derive(Debug, Deserialize)]
struct QueryRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

pub fn router(state: HttpState) -> Router {
    let users = state.users.clone();
    Router::new()
        .route("/api/v1/query", get(query_get).post(query_post))
        .route("/api/v1/export", get(export_list).post(export_start))
        .route(
            "/api/v1/export/{id}",
            get(export_status).delete(export_cancel),
        )
        .route("/metrics", get(metrics))
        .merge(crate::console::routes())
        .route_layer(axum::middleware::from_fn_with_state(users, require_user))
        .route("/health", get(health))
        .with_state(state)
}

/// Serves the API on `listener`, over TLS when `tls` is given, until `shutdown` completes;
/// requests in progress finish first.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            let listener = TlsListener::new(listener, acceptor)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
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

/// An answer's first bytes are gathered before its status is sent: a result that ends (or
/// fails) within them gets a complete response or a JSON error; a longer one streams, and an
/// error after its first bytes can only cut the response short.
const ANSWER_HEAD_BYTES: usize = 1024 * 1024;

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
    let mut results = match state.engine.stream(&request.sql).await {
        Ok(results) => results,
        Err(failure) => return query_error(failure),
    };
    let (encoder, mut head) = match ResultEncoder::start(format, &results.schema) {
        Ok(started) => started,
        Err(e) => return encoding_failure(e).into_response(),
    };
    let mut encoder = Some(encoder);
    while head.len() < ANSWER_HEAD_BYTES {
        match next_chunk(&mut results, &mut encoder).await {
            Ok(Some(bytes)) => head.extend_from_slice(&bytes),
            Ok(None) => {
                return ([(header::CONTENT_TYPE, format.content_type())], head).into_response();
            }
            Err(failure) => return failure.into_response(),
        }
    }
    let rest = futures::stream::unfold(
        (results, encoder),
        |(mut results, mut encoder)| async move {
            match next_chunk(&mut results, &mut encoder).await {
                Ok(Some(bytes)) => Some((Ok(Bytes::from(bytes)), (results, encoder))),
                Ok(None) => None,
                Err(failure) => {
                    tracing::error!(error = %failure.message, "query failed after its answer began: the answer is cut short");
                    Some((Err(failure), (results, None)))
                }
            }
        },
    );
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) }).chain(rest);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from_stream(body),
    )
        .into_response()
}

/// A query that failed, with the status that says whose fault it was.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct AnswerError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for AnswerError {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

/// The encoded bytes of the next batch, or of the answer's end (after which the encoder is
/// gone and this gives None).
async fn next_chunk(
    results: &mut ResultStream,
    encoder: &mut Option<ResultEncoder>,
) -> Result<Option<Vec<u8>>, AnswerError> {
    let Some(mut taken) = encoder.take() else {
        return Ok(None);
    };
    let batch = match results.next().await {
        Some(Ok(batch)) => Some(batch),
        Some(Err(failure)) => return Err(answer_error(failure)),
        None => None,
    };
    let encoded = tokio::task::spawn_blocking(move || match batch {
        Some(batch) => taken.batch(&batch).map(|bytes| (Some(taken), bytes)),
        None => taken.finish().map(|bytes| (None, bytes)),
    })
    .await;
    match encoded {
        Ok(Ok((still, bytes))) => {
            let last = still.is_none();
            *encoder = still;
            // Once finished the end bytes are the last chunk; an empty batch gives no bytes
            // but the answer goes on.
            if last && bytes.is_empty() {
                return Ok(None);
            }
            Ok(Some(bytes))
        }
        Ok(Err(e)) => Err(encoding_failure(e)),
        Err(e) => Err(encoding_failure(e)),
    }
}

fn encoding_failure(e: impl std::fmt::Display) -> AnswerError {
    AnswerError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("encoding the result: {e}"),
    }
}

fn answer_error(failure: QueryError) -> AnswerError {
    let status = match &failure {
        QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
        QueryError::LimitExceeded(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    AnswerError {
        status,
        message: failure.to_string(),
    }
}

fn query_error(failure: QueryError) -> Response {
    answer_error(failure).into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    if status.is_server_error() {
        tracing::error!(%status, %message, "query failed");
    }
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn export_start(
    State(state): State<HttpState>,
    body: Result<axum::Json<ExportRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(axum::Json(request)) => request,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON like {{\"tables\": [\"measurements\"], \"from\": \"-1d\", \"out\": \"/exports/x\"}}: {rejection}"
                ),
            );
        }
    };
    match state.exports.start(request).await {
        Ok(status) => (StatusCode::ACCEPTED, axum::Json(status)).into_response(),
        Err(failure) => {
            let status = match &failure {
                ExportError::Invalid(_) => StatusCode::BAD_REQUEST,
                ExportError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                ExportError::Destination(_) => StatusCode::BAD_GATEWAY,
                ExportError::Cancelled | ExportError::Failed(_) => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            error(status, failure.to_string())
        }
    }
}

async fn export_list(State(state): State<HttpState>) -> Response {
    axum::Json(state.exports.list()).into_response()
}

async fn export_status(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.exports.status(&id) {
        Some(status) => axum::Json(status).into_response(),
        None => no_export(&id),
    }
}

async fn export_cancel(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.exports.cancel(&id) {
        Some(status) => (StatusCode::ACCEPTED, axum::Json(status)).into_response(),
        None => no_export(&id),
    }
}

fn no_export(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no export {id:?} on this server (GET /api/v1/export lists them)"),
    )
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
