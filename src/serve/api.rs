//! What every route shares: JSON errors `{error, message}` with their status, the bearer-token
//! check (constant time, the token never logged nor echoed), request logs, and query and body
//! parsing that answers 400 instead of axum's plain-text rejections.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::State;
use crate::changes::ChangesError;
use crate::ledger::lock::LockError;

/// An error answer: its status, a short machine-readable `error` and a sentence for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn locked(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "locked", message)
    }

    pub fn refused(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Driver errors may carry a URL: the message is redacted like every printed text.
        let message = crate::redact::redact_text(&self.message);
        if self.status.is_server_error() {
            tracing::error!(error = self.error, %message, "request failed");
        }
        let body = serde_json::json!({ "error": self.error, "message": message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ChangesError> for ApiError {
    fn from(e: ChangesError) -> ApiError {
        match &e {
            ChangesError::Lock(l) if matches!(**l, LockError::Held(_)) => {
                ApiError::locked(e.to_string())
            }
            ChangesError::Refused(_) => ApiError::refused(e.to_string()),
            ChangesError::NotFound(_) => ApiError::not_found(e.to_string()),
            ChangesError::File(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_change_file",
                e.to_string(),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::ledger::LedgerError> for ApiError {
    fn from(e: crate::ledger::LedgerError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        let not_found = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        });
        let text = format!("{e:#}");
        if not_found {
            ApiError::not_found(text)
        } else {
            ApiError::internal(text)
        }
    }
}

/// Path parameters, a bad one (bytes that are not UTF-8) answered 400 as JSON.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(p) => Ok(Path(p.0)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query parameters, a bad one answered 400 as JSON.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(Query(q.0)),
            Err(e) => Err(ApiError::bad_request(query_message(&e))),
        }
    }
}

fn query_message(e: &QueryRejection) -> String {
    e.body_text()
}

/// A JSON body, a bad one answered 400 as JSON.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            // Every body is an object of named settings: anything else is said so, not as
            // serde's view of an internal struct ("invalid length 2, expected struct
            // StartBody with 4 elements": adv22 F10).
            Ok(j) if !j.0.is_object() => Err(ApiError::bad_request(format!(
                "the body must be a JSON object of named settings, got {}",
                json_kind(&j.0)
            ))),
            Ok(j) => T::deserialize(j.0)
                .map(Json)
                .map_err(|e| ApiError::bad_request(format!("bad body: {e}"))),
            // A body over the limit is 413, as axum says; every other bad body 400.
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                json_message(&e),
            )),
            Err(e) => Err(ApiError::bad_request(json_message(&e))),
        }
    }
}

fn json_message(e: &JsonRejection) -> String {
    e.body_text()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Whether `given` is the token, in a time that does not depend on where they differ (both are
/// hashed first, so their lengths do not show either).
pub fn same_token(given: &[u8], token: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(token);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lets a request through when it carries the token (or the server runs without one);
/// otherwise 401. Two ways to carry it: `Authorization: Bearer <token>` (API clients) or HTTP
/// Basic with the token as the password and any user name (a browser opening the status page:
/// it asks once and sends it with the page's own requests and the report links). The header is
/// never logged.
pub async fn require_token(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    // The status page, and any route a browser navigates to (a report link: it asks for HTML),
    // is challenged for Basic so the browser asks (and sends what it holds for the page); API
    // clients are challenged for a bearer token.
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let browser = !req.uri().path().starts_with("/api") || wants_html;
    match given_token(req.headers().get(header::AUTHORIZATION)) {
        Some(g) if same_token(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized("the token is not this server's", browser),
        None => unauthorized(
            "this route needs the API token in the Authorization header, with the Bearer scheme (or HTTP Basic with the token as the password)",
            browser,
        ),
    }
}

/// Refuses (403) what another site makes a browser send: a request that changes something
/// (any method but GET, HEAD and OPTIONS) whose `Sec-Fetch-Site` says it comes from another
/// site, or whose `Origin` is not this server's own (`Host`) — a form on any page the operator
/// visits could otherwise post `/api/migrations/down` with the Basic credentials the browser
/// keeps for the status page. Requests without either header (curl, scripts, API clients) are
/// let through. Without a token (`--no-auth`, loopback only), the `Host` must be a loopback name
/// too: a page whose own name resolves to 127.0.0.1 (DNS rebinding) reaches nothing.
pub async fn same_origin_only(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if state.token.is_none() && !host.is_empty() && !loopback_host(&host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "foreign_host",
            "this server runs without a token and answers only loopback names (localhost, 127.0.0.1, [::1])",
        )
        .into_response();
    }
    let safe = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        let foreign = match (site, origin) {
            (Some(s), _) if s != "same-origin" && s != "none" => true,
            (Some(_), _) => false,
            (None, Some(o)) => o
                .split_once("://")
                .map(|(_, authority)| authority.trim_end_matches('/'))
                .is_none_or(|authority| !authority.eq_ignore_ascii_case(&host)),
            (None, None) => false,
        };
        if foreign {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "a request from another site may not change anything here (its Origin is not this server's)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Whether `host` (a `Host` header: name and optional port) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The token an `Authorization` header carries: a bearer token, or the password of HTTP Basic
/// credentials. The scheme's name is case-insensitive (RFC 9110).
fn given_token(value: Option<&header::HeaderValue>) -> Option<String> {
    let (scheme, rest) = value?.to_str().ok()?.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        // RFC 7617: user-id ":" password; the user name is not used.
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

fn unauthorized(message: &str, browser: bool) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(if browser {
            "Basic realm=\"cutover\", charset=\"UTF-8\""
        } else {
            "Bearer realm=\"cutover\""
        }),
    );
    r
}

/// One structured log line per request: method, path (no query, no headers), status, time.
pub async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(same_token(b"s3cret-token", b"s3cret-token"));
        assert!(!same_token(b"s3cret-tokem", b"s3cret-token"));
        assert!(!same_token(b"s3cret-token-and-more", b"s3cret-token"));
        assert!(!same_token(b"", b"s3cret-token"));
    }

    #[test]
    fn the_token_comes_as_a_bearer_or_as_the_basic_password() {
        let v = |s: &str| header::HeaderValue::from_str(s).unwrap();
        assert_eq!(given_token(Some(&v("Bearer t0k"))).as_deref(), Some("t0k"));
        for (host, ok) in [
            ("localhost:8088", true),
            ("LOCALHOST", true),
            ("127.0.0.1:1", true),
            ("127.1.2.3", true),
            ("[::1]:8088", true),
            ("evil.example:8088", false),
            ("localhost.evil.example", false),
            ("10.0.0.1:8088", false),
            ("[::2]:80", false),
        ] {
            assert_eq!(loopback_host(host), ok, "{host}");
        }
        assert_eq!(
            given_token(Some(&v("bearer  t0k "))).as_deref(),
            Some("t0k")
        );
        // base64("anyone:t0k:with:colons")
        assert_eq!(
            given_token(Some(&v("Basic YW55b25lOnQwazp3aXRoOmNvbG9ucw=="))).as_deref(),
            Some("t0k:with:colons")
        );
        assert_eq!(given_token(Some(&v("Basic !!notbase64"))), None);
        // base64("no-colon")
        assert_eq!(given_token(Some(&v("Basic bm8tY29sb24="))), None);
        assert_eq!(given_token(Some(&v("Digest x"))), None);
        assert_eq!(given_token(None), None);
    }

    #[test]
    fn an_error_answers_its_status_and_a_json_body() {
        let r = ApiError::locked("held by run x").into_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let r = ApiError::bad_request("steps must be a number").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }
}
