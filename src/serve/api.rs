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
        match axum::Json::<T>::from_request(req, state).await {
            Ok(j) => Ok(Json(j.0)),
            Err(e) => Err(ApiError::bad_request(json_message(&e))),
        }
    }
}

fn json_message(e: &JsonRejection) -> String {
    e.body_text()
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

/// Lets a request through when it carries `Authorization: Bearer <token>` (or the server runs
/// without a token); otherwise 401. The header is never logged.
pub async fn require_token(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme's name is case-insensitive (RFC 9110).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(g) if same_token(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized("the bearer token is not this server's"),
        None => unauthorized("this route needs a bearer token in the Authorization header"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
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
