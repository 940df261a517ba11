//! The web console: a page and its scripts, built into the binary and served on the HTTP port
//! behind the API's authentication. It reads everything through the API itself (`/api/v1/query`,
//! `/metrics`), so it can show nothing a user could not ask for with curl.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::http::HttpState;

/// The examples of `queries/`, as (file name, SQL), gathered by build.rs.
mod examples {
    include!(concat!(env!("OUT_DIR"), "/examples.rs"));
}

/// Scripts and styles from this server only: no inline script runs, so a device's name or a
/// query's result shown as text can never become one.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/",
            get(|| {
                asset(
                    include_str!("../console/index.html"),
                    "text/html; charset=utf-8",
                )
            }),
        )
        .route(
            "/console/app.js",
            get(|| {
                asset(
                    include_str!("../console/app.js"),
                    "text/javascript; charset=utf-8",
                )
            }),
        )
        .route(
            "/console/chart.js",
            get(|| {
                asset(
                    include_str!("../console/chart.js"),
                    "text/javascript; charset=utf-8",
                )
            }),
        )
        .route(
            "/console/app.css",
            get(|| {
                asset(
                    include_str!("../console/app.css"),
                    "text/css; charset=utf-8",
                )
            }),
        )
        .route("/console/examples.json", get(examples_json))
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The assets change with the binary only; a page reload after an upgrade must see them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn examples_json() -> Response {
    let examples: Vec<serde_json::Value> = examples::EXAMPLES
        .iter()
        .map(|(name, sql)| serde_json::json!({ "name": name, "sql": sql }))
        .collect();
    axum::Json(examples).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_example_of_queries_is_built_in() {
        let names: Vec<&str> = super::examples::EXAMPLES
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(names.len(), 20, "{names:?}");
        assert!(
            names.windows(2).all(|pair| pair[0] < pair[1]),
            "sorted: {names:?}"
        );
        assert!(
            super::examples::EXAMPLES
                .iter()
                .all(|(_, sql)| sql.contains("SELECT"))
        );
    }
}
