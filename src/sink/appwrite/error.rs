//! What can go wrong talking to Appwrite, by where it went wrong: no answer (transport), an error
//! answer (HTTP status, Appwrite's type and message), or found on this side before or instead of
//! an answer (bad input, a column that failed or never became available). The kind decides
//! whether a retry can help ([`Retryable`]), not a status number standing in for all three.

use std::time::Duration;

use crate::sink::retry::Retryable;

/// An Appwrite request that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppwriteError {
    /// No answer: the connection was refused, reset or timed out. Worth retrying.
    #[error("Appwrite transport: {message}")]
    Transport { message: String },
    /// An error answer. 408, 429 and 5xx are worth retrying; other 4xx are not.
    #[error("Appwrite {status} {kind}: {message}")]
    Http {
        status: u16,
        /// Appwrite's error `type`, e.g. `row_invalid_structure`.
        kind: String,
        message: String,
        /// How long the server asked us to wait (429, 503).
        wait: Option<Duration>,
    },
    /// Found by cutover itself; no request would answer it differently. Never retried.
    #[error("Appwrite {}{}: {message}", status_text(.kind.code()), .kind.name())]
    Client { kind: ClientKind, message: String },
}

/// Why cutover itself gave up on an Appwrite request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// The HTTP client could not be built.
    Setup,
    /// Input Appwrite would refuse with a 400 (its `type` given), refused before sending so
    /// that nothing is half-written: the document is rejected as if Appwrite had refused it.
    Refused(&'static str),
    /// Input cutover cannot send at all (its `type` given), e.g. a hash algorithm Appwrite does
    /// not import.
    Unsupported(&'static str),
    /// A column or index (`what`) that ended `failed` or `stuck` (`state`).
    NotAvailable {
        what: &'static str,
        state: &'static str,
    },
    /// A column or index (`what`) that was not available in time.
    Timeout { what: &'static str },
    /// A table written before it was set up.
    NotPrepared,
}

impl ClientKind {
    /// The error's type, named as Appwrite names its own (`column_failed`, `index_timeout`).
    pub fn name(&self) -> String {
        match self {
            ClientKind::Setup => "client".into(),
            ClientKind::Refused(kind) | ClientKind::Unsupported(kind) => (*kind).into(),
            ClientKind::NotAvailable { what, state } => format!("{what}_{state}"),
            ClientKind::Timeout { what } => format!("{what}_timeout"),
            ClientKind::NotPrepared => "not_prepared".into(),
        }
    }

    /// The status Appwrite would have answered (400 for a refusal), 0 when there is none.
    fn code(&self) -> u16 {
        match self {
            ClientKind::Refused(_) => 400,
            _ => 0,
        }
    }
}

/// `429 ` for an HTTP status, nothing when there is none (0).
fn status_text(status: u16) -> String {
    if status == 0 {
        String::new()
    } else {
        format!("{status} ")
    }
}

impl AppwriteError {
    /// An error answer of the server.
    pub fn http(status: u16, kind: impl Into<String>, message: impl Into<String>) -> Self {
        AppwriteError::Http {
            status,
            kind: kind.into(),
            message: message.into(),
            wait: None,
        }
    }

    /// An error found by cutover itself.
    pub fn client(kind: ClientKind, message: impl Into<String>) -> Self {
        AppwriteError::Client {
            kind,
            message: message.into(),
        }
    }

    /// The HTTP status of an error answer; `None` for transport and client-side errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            AppwriteError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The code a reject names: the HTTP status, the status Appwrite would answer to a
    /// client-side refusal (400), 0 otherwise.
    pub fn code(&self) -> u16 {
        match self {
            AppwriteError::Transport { .. } => 0,
            AppwriteError::Http { status, .. } => *status,
            AppwriteError::Client { kind, .. } => kind.code(),
        }
    }

    /// The error's type: Appwrite's (`row_invalid_structure`), `transport`, or cutover's own
    /// (`column_failed`).
    pub fn kind(&self) -> String {
        match self {
            AppwriteError::Transport { .. } => "transport".into(),
            AppwriteError::Http { kind, .. } => kind.clone(),
            AppwriteError::Client { kind, .. } => kind.name(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            AppwriteError::Transport { message }
            | AppwriteError::Http { message, .. }
            | AppwriteError::Client { message, .. } => message,
        }
    }

    /// The message, to add context to it (which child table a row belongs to).
    pub fn message_mut(&mut self) -> &mut String {
        match self {
            AppwriteError::Transport { message }
            | AppwriteError::Http { message, .. }
            | AppwriteError::Client { message, .. } => message,
        }
    }

    /// The content of the request was refused — by the server (400, 409) or, before sending,
    /// by cutover — so the document it carried is rejected.
    pub fn is_refusal(&self) -> bool {
        matches!(self.status(), Some(400 | 409))
            || matches!(
                self,
                AppwriteError::Client {
                    kind: ClientKind::Refused(_),
                    ..
                }
            )
    }

    /// A 404 that says a resource (database, table, row, user, file…) does not exist — the
    /// answer that means "nothing there yet". A 404 of another kind (`project_not_found`, a
    /// route the server does not have: an endpoint without `/v1`) is a configuration error.
    pub fn is_missing(&self) -> bool {
        match self {
            AppwriteError::Http {
                status: 404, kind, ..
            } => {
                kind.ends_with("_not_found")
                    && kind != "project_not_found"
                    && !kind.starts_with("general_")
            }
            _ => false,
        }
    }
}

impl Retryable for AppwriteError {
    fn is_retryable(&self) -> bool {
        match self {
            AppwriteError::Transport { .. } => true,
            AppwriteError::Http { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            AppwriteError::Client { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            AppwriteError::Http { wait, .. } => *wait,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_retried() {
        let e = AppwriteError::Transport {
            message: "connection refused".into(),
        };
        assert!(e.is_retryable());
        assert_eq!(e.status(), None);
        assert_eq!(e.to_string(), "Appwrite transport: connection refused");
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_retried() {
        for status in [408, 429, 500, 502, 503, 504] {
            let e = AppwriteError::http(status, "general_unknown", "x");
            assert!(e.is_retryable(), "{status}");
            assert!(!e.is_refusal(), "{status}");
        }
    }

    #[test]
    fn other_client_errors_are_not_retried() {
        for status in [400, 401, 403, 404, 409, 413] {
            assert!(
                !AppwriteError::http(status, "x", "y").is_retryable(),
                "{status}"
            );
        }
        let e = AppwriteError::http(400, "row_invalid_structure", "bad");
        assert_eq!(e.to_string(), "Appwrite 400 row_invalid_structure: bad");
        assert!(e.is_refusal());
    }

    #[test]
    fn client_side_errors_are_not_retried() {
        let kinds = [
            ClientKind::Setup,
            ClientKind::Refused("user_prefs_too_large"),
            ClientKind::Unsupported("unsupported_algorithm"),
            ClientKind::NotAvailable {
                what: "column",
                state: "failed",
            },
            ClientKind::NotAvailable {
                what: "index",
                state: "stuck",
            },
            ClientKind::Timeout { what: "column" },
            ClientKind::NotPrepared,
        ];
        for kind in kinds {
            let e = AppwriteError::client(kind.clone(), "m");
            assert!(!e.is_retryable(), "{kind:?}");
            assert_eq!(e.status(), None, "{kind:?}");
            assert_eq!(e.retry_after(), None, "{kind:?}");
        }
    }

    #[test]
    fn client_side_errors_keep_their_names() {
        let failed = AppwriteError::client(
            ClientKind::NotAvailable {
                what: "column",
                state: "failed",
            },
            "column t.c is failed: x",
        );
        assert_eq!(failed.kind(), "column_failed");
        assert_eq!(
            failed.to_string(),
            "Appwrite column_failed: column t.c is failed: x"
        );
        let late = AppwriteError::client(ClientKind::Timeout { what: "index" }, "m");
        assert_eq!(late.kind(), "index_timeout");
        // A refusal found before sending reads as Appwrite's own would, and rejects the row.
        let big = AppwriteError::client(ClientKind::Refused("user_prefs_too_large"), "m");
        assert_eq!(big.to_string(), "Appwrite 400 user_prefs_too_large: m");
        assert_eq!(big.code(), 400);
        assert!(big.is_refusal());
        assert!(!AppwriteError::client(ClientKind::Setup, "m").is_refusal());
    }

    #[test]
    fn only_a_resource_404_means_missing() {
        assert!(AppwriteError::http(404, "row_not_found", "").is_missing());
        assert!(!AppwriteError::http(404, "project_not_found", "").is_missing());
        assert!(!AppwriteError::http(404, "general_route_not_found", "").is_missing());
        assert!(!AppwriteError::http(409, "row_not_found", "").is_missing());
    }
}
