//! Who may ask: with a query password file, every request but `/health` names one of its users
//! by HTTP basic authentication (curl `-u`, Prometheus `basic_auth`, any HTTP library).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use twinlake_auth::PasswordFile;

/// Passes the request on when its credentials are those of a user of `users`, or when there is
/// no password file; answers 401 otherwise.
pub(crate) async fn require_user(
    State(users): State<Option<Arc<PasswordFile>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(users) = users else {
        return next.run(request).await;
    };
    let Some((user, password)) = basic_credentials(request.headers()) else {
        return unauthorized(
            "authentication required: HTTP basic authentication with a user of the query password file",
        );
    };
    if users.verify(&user, &password).await.is_none() {
        tracing::warn!(%user, path = %request.uri().path(), "HTTP request refused: wrong user or password");
        return unauthorized("wrong user or password");
    }
    next.run(request).await
}

/// The user and password of an `Authorization: Basic …` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn unauthorized(message: &str) -> Response {
    let body = axum::Json(serde_json::json!({ "error": message }));
    let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"twinlake\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::basic_credentials;

    #[test]
    fn basic_credentials_are_read_and_anything_else_is_not() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            basic_credentials(&headers)
        };
        // "ana:s3:cret": a password may hold a colon, a user name may not.
        assert_eq!(
            with("Basic YW5hOnMzOmNyZXQ="),
            Some(("ana".to_owned(), "s3:cret".to_owned()))
        );
        assert_eq!(
            with("basic YW5hOnMzOmNyZXQ=").map(|c| c.0),
            Some("ana".to_owned())
        );
        assert_eq!(with("Bearer YW5hOnMzOmNyZXQ="), None);
        assert_eq!(with("Basic not base64!"), None);
        assert_eq!(basic_credentials(&HeaderMap::new()), None);
    }
}
