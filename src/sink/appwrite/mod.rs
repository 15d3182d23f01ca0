//! The Appwrite writer (TablesDB API, 1.8+) through reqwest: schema set-up (database, tables,
//! columns, waiting until columns are available), bulk upserts of at most 100 rows with the
//! all-or-nothing batch split by halving to isolate bad rows, retry of 408/429/5xx and transport
//! errors with back-off (honouring `Retry-After` and `X-RateLimit-Reset`), and a client-side rate
//! limit (governor). Counters: requests, retries, throttled waits. `cutover migrate --target
//! appwrite` reaches it through [`crate::sink::target::Target`].

pub mod error;
pub mod rows;
pub mod schema;
pub mod storage;
pub mod tables;
pub mod unique;
pub mod users;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};

pub use self::error::{AppwriteError, ClientKind};
use super::retry::{RetryPolicy, retry};

/// Appwrite's id rule: at most 36 of `[A-Za-z0-9._-]`, not starting with a special character.
pub fn id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 36
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.starts_with(['.', '_', '-'])
}

/// An error with its causes, `a: b: c` (reqwest's own text leaves out why a request failed).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// Requests, retries and throttled waits of one client.
#[derive(Debug, Default)]
pub struct ClientCounters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
}

/// Where and how to reach Appwrite.
#[derive(Clone)]
pub struct AppwriteClient {
    http: reqwest::Client,
    endpoint: String,
    project: String,
    key: String,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    pub policy: RetryPolicy,
    pub counters: Arc<ClientCounters>,
}

impl AppwriteClient {
    /// The API endpoint (with `/v1`), as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn project(&self) -> &str {
        &self.project
    }
}

impl std::fmt::Debug for AppwriteClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppwriteClient")
            .field("endpoint", &self.endpoint)
            .field("project", &self.project)
            .field("key", &"***")
            .finish()
    }
}

/// Installs rustls' ring provider once (reqwest is built without a default provider).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl AppwriteClient {
    /// `rate`: at most this many requests per second (with `burst`), none when `None`.
    pub fn new(
        endpoint: &str,
        project: &str,
        key: &str,
        rate: Option<(u32, u32)>,
    ) -> Result<AppwriteClient, AppwriteError> {
        install_crypto_provider();
        crate::redact::register_secret(key);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| AppwriteError::client(ClientKind::Setup, e.to_string()))?;
        let limiter = rate.and_then(|(per_sec, burst)| {
            let per_sec = NonZeroU32::new(per_sec)?;
            let burst = NonZeroU32::new(burst.max(1))?;
            Some(Arc::new(RateLimiter::direct(
                Quota::per_second(per_sec).allow_burst(burst),
            )))
        });
        Ok(AppwriteClient {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            project: project.to_string(),
            key: key.to_string(),
            limiter,
            policy: RetryPolicy::default(),
            counters: Arc::new(ClientCounters::default()),
        })
    }

    /// The API key header, marked sensitive so that no debug dump of a request shows it.
    fn key_header(&self) -> reqwest::header::HeaderValue {
        let mut v = reqwest::header::HeaderValue::from_str(&self.key)
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    async fn once(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AppwriteError> {
        self.once_with(method, path, |req| match body {
            Some(b) => req.json(b),
            None => req,
        })
        .await
    }

    /// One request whose body (and extra headers) `build` adds.
    async fn once_with(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Value, AppwriteError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let req = self
            .http
            .request(method, format!("{}{}", self.endpoint, path))
            .header("X-Appwrite-Project", &self.project)
            .header("X-Appwrite-Key", self.key_header());
        let req = build(req);
        let resp = req.send().await.map_err(|e| AppwriteError::Transport {
            message: crate::redact::redact_text(&with_causes(&e)),
        })?;
        let status = resp.status().as_u16();
        let wait = wait_hint(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status < 400 {
            return Ok(value);
        }
        if status == 429 {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
        }
        Err(AppwriteError::Http {
            status,
            kind: value["type"].as_str().unwrap_or("unknown").to_string(),
            message: value["message"].as_str().unwrap_or("").to_string(),
            wait: if status == 429 || status == 503 {
                wait
            } else {
                None
            },
        })
    }

    /// The server's version, as its error bodies carry it (asks for a database that does not
    /// exist); an authentication failure is an error.
    pub async fn server_version(&self) -> Result<String, AppwriteError> {
        let resp = self
            .http
            .get(format!(
                "{}/tablesdb/cutover-probe-no-such-database",
                self.endpoint
            ))
            .header("X-Appwrite-Project", &self.project)
            .header("X-Appwrite-Key", self.key_header())
            .send()
            .await
            .map_err(|e| AppwriteError::Transport {
                message: crate::redact::redact_text(&e.to_string()),
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 401 || status == 403 {
            return Err(AppwriteError::http(
                status,
                body["type"].as_str().unwrap_or("unknown"),
                body["message"].as_str().unwrap_or(""),
            ));
        }
        Ok(body["version"].as_str().unwrap_or("?").to_string())
    }

    /// One API call with retries.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AppwriteError> {
        retry(
            self.policy,
            tokio::time::sleep,
            |attempt, err: &AppwriteError| {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                // Said from the second retry on (adv38 F4: a stalled server gave minutes of
                // silence); a first retry (a throttled request) stays in the debug log.
                if attempt >= 1 {
                    tracing::warn!(attempt, error = %err, "retrying an Appwrite request");
                } else {
                    tracing::debug!(attempt, error = %err, "retrying an Appwrite request");
                }
            },
            |_| self.once(method.clone(), path, body),
        )
        .await
    }

    /// One API call with retries whose body `build` adds (built again for each attempt: a
    /// multipart upload's form cannot be sent twice).
    pub async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Value, AppwriteError> {
        retry(
            self.policy,
            tokio::time::sleep,
            |attempt, err: &AppwriteError| {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                // Said from the second retry on (adv38 F4: a stalled server gave minutes of
                // silence); a first retry (a throttled request) stays in the debug log.
                if attempt >= 1 {
                    tracing::warn!(attempt, error = %err, "retrying an Appwrite request");
                } else {
                    tracing::debug!(attempt, error = %err, "retrying an Appwrite request");
                }
            },
            |_| self.once_with(method.clone(), path, &build),
        )
        .await
    }

    /// Streams the body of a GET (a file's bytes) into `each`, a network chunk at a time.
    pub async fn download(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), AppwriteError> {
        if let Some(l) = &self.limiter {
            l.until_ready().await;
        }
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let transport = |e: reqwest::Error| AppwriteError::Transport {
            message: crate::redact::redact_text(&with_causes(&e)),
        };
        let mut resp = self
            .http
            .get(format!("{}{}", self.endpoint, path))
            .header("X-Appwrite-Project", &self.project)
            .header("X-Appwrite-Key", self.key_header())
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(AppwriteError::http(
                status,
                value["type"].as_str().unwrap_or("unknown"),
                value["message"].as_str().unwrap_or(""),
            ));
        }
        while let Some(bytes) = resp.chunk().await.map_err(transport)? {
            each(&bytes);
        }
        Ok(())
    }

    /// Creates the database unless it exists.
    pub async fn ensure_database(&self, id: &str, name: &str) -> Result<(), AppwriteError> {
        ignore_exists(
            self.call(
                reqwest::Method::POST,
                "/tablesdb",
                Some(&json!({ "databaseId": id, "name": name })),
            )
            .await,
        )
    }

    /// Creates the table unless it exists.
    pub async fn ensure_table(&self, db: &str, id: &str, name: &str) -> Result<(), AppwriteError> {
        ignore_exists(
            self.call(
                reqwest::Method::POST,
                &format!("/tablesdb/{db}/tables"),
                Some(&json!({ "tableId": id, "name": name })),
            )
            .await,
        )
    }

    /// Creates the table with these permissions and `rowSecurity` unless it exists; an existing
    /// table whose permissions (as a set) or `rowSecurity` differ from those given is updated
    /// (`PUT`, its name kept). `None` leaves that setting as the table has it.
    pub async fn ensure_table_access(
        &self,
        db: &str,
        id: &str,
        permissions: Option<&[String]>,
        row_security: Option<bool>,
    ) -> Result<(), AppwriteError> {
        let mut body = json!({ "tableId": id, "name": id });
        if let Some(p) = permissions {
            body["permissions"] = json!(p);
        }
        if let Some(r) = row_security {
            body["rowSecurity"] = json!(r);
        }
        let path = format!("/tablesdb/{db}/tables");
        match self.call(reqwest::Method::POST, &path, Some(&body)).await {
            Ok(_) => return Ok(()),
            Err(e) if e.status() == Some(409) => {}
            Err(e) => return Err(e),
        }
        let table = self
            .call(reqwest::Method::GET, &format!("{path}/{id}"), None)
            .await?;
        let have: std::collections::BTreeSet<&str> = table["$permissions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let have_rows = table["rowSecurity"].as_bool().unwrap_or(false);
        let same_permissions = permissions.is_none_or(|p| {
            p.iter()
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>()
                == have
        });
        let same_rows = row_security.is_none_or(|r| r == have_rows);
        if same_permissions && same_rows {
            return Ok(());
        }
        let name = table["name"].as_str().unwrap_or(id);
        let mut update = json!({
            "name": name,
            "rowSecurity": row_security.unwrap_or(have_rows),
            "enabled": table["enabled"].as_bool().unwrap_or(true),
        });
        if let Some(p) = permissions {
            update["permissions"] = json!(p);
        }
        self.call(reqwest::Method::PUT, &format!("{path}/{id}"), Some(&update))
            .await
            .map(|_| ())
    }

    /// Creates a column (`kind`: string, integer, float, boolean, datetime, …) unless it exists.
    pub async fn ensure_column(
        &self,
        db: &str,
        table: &str,
        kind: &str,
        body: &Value,
    ) -> Result<(), AppwriteError> {
        ignore_exists(
            self.call(
                reqwest::Method::POST,
                &format!("/tablesdb/{db}/tables/{table}/columns/{kind}"),
                Some(body),
            )
            .await,
        )
    }

    /// Updates column `key` of kind `kind` (`PATCH …/columns/{kind}/{key}`: `required` and
    /// `default`, and the kind's own `size`, `elements`, `min`, `max`).
    pub async fn update_column(
        &self,
        db: &str,
        table: &str,
        kind: &str,
        key: &str,
        body: &Value,
    ) -> Result<(), AppwriteError> {
        self.call(
            reqwest::Method::PATCH,
            &format!("/tablesdb/{db}/tables/{table}/columns/{kind}/{key}"),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// Waits until column `key` is `available`; an error names the column when it ends `failed`
    /// or `stuck`, or when `timeout` passes.
    pub async fn wait_column(
        &self,
        db: &str,
        table: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<(), AppwriteError> {
        self.wait_available(
            &format!("/tablesdb/{db}/tables/{table}/columns/{key}"),
            &format!("column {table}.{key}"),
            "column",
            timeout,
        )
        .await
    }

    /// Creates an index unless one with its key exists.
    pub async fn ensure_index(
        &self,
        db: &str,
        table: &str,
        body: &Value,
    ) -> Result<(), AppwriteError> {
        ignore_exists(
            self.call(
                reqwest::Method::POST,
                &format!("/tablesdb/{db}/tables/{table}/indexes"),
                Some(body),
            )
            .await,
        )
    }

    /// Index `key` of a table as the server describes it (`None`: there is none).
    pub async fn index(
        &self,
        db: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<Value>, AppwriteError> {
        match self
            .call(
                reqwest::Method::GET,
                &format!("/tablesdb/{db}/tables/{table}/indexes/{key}"),
                None,
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes index `key` and waits until it is gone (Appwrite deletes indexes in the
    /// background), at most `timeout`.
    pub async fn delete_index(
        &self,
        db: &str,
        table: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<(), AppwriteError> {
        let path = format!("/tablesdb/{db}/tables/{table}/indexes/{key}");
        match self.call(reqwest::Method::DELETE, &path, None).await {
            Ok(_) => {}
            Err(e) if e.is_missing() => return Ok(()),
            Err(e) => return Err(e),
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.index(db, table, key).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(AppwriteError::client(
                    ClientKind::Timeout { what: "index" },
                    format!("index {table}.{key} was not deleted after {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until index `key` is `available` (errors as for columns).
    pub async fn wait_index(
        &self,
        db: &str,
        table: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<(), AppwriteError> {
        self.wait_available(
            &format!("/tablesdb/{db}/tables/{table}/indexes/{key}"),
            &format!("index {table}.{key}"),
            "index",
            timeout,
        )
        .await
    }

    async fn wait_available(
        &self,
        path: &str,
        what: &str,
        kind: &'static str,
        timeout: Duration,
    ) -> Result<(), AppwriteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.call(reqwest::Method::GET, path, None).await?;
            let state = match c["status"].as_str() {
                Some("available") => return Ok(()),
                Some("failed") => "failed",
                Some("stuck") => "stuck",
                _ => "",
            };
            if !state.is_empty() {
                return Err(AppwriteError::client(
                    ClientKind::NotAvailable { what: kind, state },
                    format!("{what} is {state}: {}", c["error"].as_str().unwrap_or("")),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AppwriteError::client(
                    ClientKind::Timeout { what: kind },
                    format!("{what} was not available after {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn ignore_exists(r: Result<Value, AppwriteError>) -> Result<(), AppwriteError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(409) && e.kind().ends_with("_already_exists") => Ok(()),
        Err(e) => Err(e),
    }
}

/// `Retry-After` (seconds) or the time until `X-RateLimit-Reset` (epoch seconds).
fn wait_hint(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let num = |k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if let Some(secs) = num("retry-after") {
        return Some(Duration::from_secs(secs.max(0) as u64));
    }
    if num("x-ratelimit-remaining") == Some(0)
        && let Some(reset) = num("x-ratelimit-reset")
    {
        let now = chrono::Utc::now().timestamp();
        return Some(Duration::from_secs((reset - now).clamp(0, 3600) as u64));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id_ok("6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162"));
        assert!(id_ok("42"));
        assert!(!id_ok("_hidden"));
        assert!(!id_ok("a b"));
        assert!(!id_ok(&"x".repeat(37)));
    }
}
