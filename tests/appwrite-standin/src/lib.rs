//! A local stand-in for the Appwrite server API (TablesDB and Users), for tests and benchmarks:
//! Appwrite cannot run here. It is test infrastructure held to the official spec: the tests check
//! every success response against the OpenAPI 3 schemas of Appwrite 1.8
//! (`shared/appwrite/open-api3-1.8.x-server.json`).
//!
//! Behaviour that matters to a writer is reproduced: project and key headers (404 / 401), the error
//! body `{message, code, type, version}` with Appwrite's type names, columns created
//! asynchronously (202, `processing` → `available` after a delay), `row_invalid_structure` for rows
//! using unknown or unavailable columns, single rows created, upserted (`PUT`) or updated
//! (`PATCH`, 404 when the row is gone), bulk create and upsert with at most 100 rows,
//! all-or-nothing, 409 on duplicates, every list route of the spec (databases, tables, columns,
//! indexes, rows, transactions — always none) with `queries[]` JSON (`limit`, `offset`,
//! `cursorAfter`, `cursorBefore`, orders, and the filters on the attributes the spec names for
//! each list), `search` and `total` (false: 0; for rows capped at 5000), the reads of the
//! deprecated Databases API (`/databases/…`: collections, attributes, indexes, documents) over
//! the same state, Appwrite's 404 `general_route_not_found` for any other route, numbers kept
//! exactly as sent (serde_json parses with `float_roundtrip`), users created with an existing bcrypt hash, labels and prefs,
//! rate-limit headers — and fault injection (a fraction of requests answered 429 with
//! `Retry-After`, 500 or 503, or slowed), for every request or for the row writes of one table,
//! and a 500 or 503 for the writes of one row or user id, a number of times or always.

pub mod legacy;
pub mod state;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

pub use legacy::Api;
pub use state::{Faults, ListQuery, RowFault, StandIn};

/// Appwrite's version string in error bodies.
pub const VERSION: &str = "1.8.0";

/// An Appwrite-shaped error.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "message": self.message,
            "code": self.status.as_u16(),
            "type": self.kind,
            "version": VERSION,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

type Shared = Arc<StandIn>;
type ApiResult = Result<Response, ApiError>;

fn ok(status: u16, body: Value) -> ApiResult {
    Ok((
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(body),
    )
        .into_response())
}

/// The API's middleware (every `/v1` route, before its extractors and handler): checks the
/// project and key headers, counts the request, applies the fault injection.
async fn auth(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match guard(&s, req.headers()).await {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Checks the project and key headers, counts the request, applies the fault injection.
async fn guard(s: &StandIn, headers: &HeaderMap) -> Result<(), ApiError> {
    let project = headers
        .get("x-appwrite-project")
        .and_then(|v| v.to_str().ok());
    if project != Some(s.project.as_str()) {
        return Err(ApiError::new(
            404,
            "project_not_found",
            "Project with the requested ID could not be found.",
        ));
    }
    let key = headers.get("x-appwrite-key").and_then(|v| v.to_str().ok());
    if key != Some(s.key.as_str()) {
        return Err(ApiError::new(
            401,
            "general_unauthorized_scope",
            "The current user or API key does not have the required scopes to access the requested resource.",
        ));
    }
    s.count_request();
    match inject(&s.faults()).await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Applies one set of faults to a request: waits `delay_ms`, then answers with an error for the
/// configured fractions of requests (`None`: serve it).
async fn inject(faults: &Faults) -> Option<ApiError> {
    if faults.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
    }
    let roll = fastrand::f64();
    if roll < faults.rate_limited {
        return Some(ApiError::new(
            429,
            "general_rate_limit_exceeded",
            "Rate limit for the current endpoint has been exceeded. Please try again after some time.",
        ));
    }
    if roll < faults.rate_limited + faults.server_error {
        return Some(ApiError::new(500, "general_server_error", "Server Error"));
    }
    if roll < faults.rate_limited + faults.server_error + faults.unavailable {
        return Some(ApiError::new(
            503,
            "general_service_disabled",
            "Service unavailable",
        ));
    }
    None
}

/// The table of a row write (`POST`/`PUT`/`PATCH`/`DELETE` under `/v1/tablesdb/{db}/tables/{t}/rows`),
/// the requests a table's faults apply to.
fn row_write_table<'p>(method: &axum::http::Method, path: &'p str) -> Option<&'p str> {
    if method == axum::http::Method::GET {
        return None;
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "tablesdb", _, "tables", table, "rows", ..] => Some(table),
        _ => None,
    }
}

/// Rate-limit headers on every answer; `Retry-After` on 429.
async fn headers_layer(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !req.uri().path().starts_with("/_standin") {
        s.arrived(req.method());
    }
    // Faults of one table hit its row writes only: its set-up and reads still succeed.
    if let Some(table) = row_write_table(req.method(), req.uri().path())
        && let Some(faults) = s.table_faults(table)
        && let Some(e) = inject(&faults).await
    {
        s.count_request();
        return e.into_response();
    }
    let newer_format = req
        .headers()
        .get("x-appwrite-response-format")
        .and_then(|v| v.to_str().ok())
        .is_some_and(format_after_1_8);
    let mut resp = next.run(req).await;
    if newer_format {
        resp = sequence_as_string(resp).await;
    }
    let h = resp.headers_mut();
    let reset = chrono::Utc::now().timestamp() + 60;
    h.insert("x-ratelimit-limit", HeaderValue::from(s.limit_per_minute));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(s.limit_per_minute.saturating_sub(1)),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(s.retry_after_secs));
    }
    resp
}

/// Whether a `X-Appwrite-Response-Format` version is newer than the 1.8 format of the spec.
fn format_after_1_8(v: &str) -> bool {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) > (1, 8)
}

/// Newer response formats (what the current SDKs request) carry `$sequence` as a string; the 1.8
/// format of the spec, an integer. Appwrite shapes answers by this header; so does the stand-in.
async fn sequence_as_string(resp: Response) -> Response {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if let Some(seq) = o.get_mut("$sequence")
                    && seq.is_number()
                {
                    *seq = Value::String(seq.to_string());
                }
                o.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    walk(&mut value);
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(value.to_string()))
}

/// The router: mount it, or use [`serve`].
pub fn router(s: Shared) -> Router {
    // The stand-in's own control routes (not Appwrite's): no key.
    let control = Router::new()
        .route("/_standin/stats", get(stats).delete(reset_stats))
        .route("/_standin/faults", put(put_faults))
        .route("/_standin/faults/tables/{table}", put(put_table_faults))
        .route(
            "/_standin/faults/rows/{row}",
            put(put_row_fault).delete(delete_row_fault),
        );
    let api = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tablesdb", post(create_database).get(list_databases))
        // Static before `{db}`: `transactions` is the spec's route, not a database id.
        .route(
            "/v1/tablesdb/transactions",
            get(list_transactions).post(create_transaction),
        )
        .route(
            "/v1/tablesdb/transactions/{transaction}",
            get(get_transaction)
                .patch(finish_transaction)
                .delete(delete_transaction),
        )
        .route(
            "/v1/tablesdb/transactions/{transaction}/operations",
            post(stage_operations),
        )
        .route("/v1/tablesdb/{db}", get(get_database))
        .route(
            "/v1/tablesdb/{db}/tables",
            post(create_table).get(list_tables),
        )
        .route(
            "/v1/tablesdb/{db}/tables/{table}",
            get(get_table).put(update_table).delete(delete_table),
        )
        // POST .../columns/{type} creates; GET .../columns/{key} reads (one segment, two meanings).
        .route(
            "/v1/tablesdb/{db}/tables/{table}/columns/{kind_or_key}",
            post(create_column).get(get_column).delete(delete_column),
        )
        // PATCH .../columns/{type}/{key} updates a column (renames it with `newKey`).
        .route(
            "/v1/tablesdb/{db}/tables/{table}/columns/{kind}/{key}",
            axum::routing::patch(update_column),
        )
        .route(
            "/v1/tablesdb/{db}/tables/{table}/columns",
            get(list_columns),
        )
        .route(
            "/v1/tablesdb/{db}/tables/{table}/indexes",
            post(create_index).get(list_indexes),
        )
        .route(
            "/v1/tablesdb/{db}/tables/{table}/indexes/{key}",
            get(get_index).delete(delete_index),
        )
        .route(
            "/v1/tablesdb/{db}/tables/{table}/rows",
            post(create_rows)
                .put(upsert_rows)
                .get(list_rows)
                .delete(delete_rows),
        )
        .route(
            "/v1/tablesdb/{db}/tables/{table}/rows/{row}",
            get(get_row)
                .put(upsert_row)
                .patch(update_row)
                .delete(delete_row),
        )
        // The deprecated Databases API the spec still lists: its reads, over the same state.
        .route("/v1/databases", get(list_databases))
        .route("/v1/databases/transactions", get(list_transactions))
        .route(
            "/v1/databases/transactions/{transaction}",
            get(transaction_not_found)
                .patch(transaction_not_found)
                .delete(transaction_not_found),
        )
        .route(
            "/v1/databases/transactions/{transaction}/operations",
            post(transaction_not_found),
        )
        .route("/v1/databases/{db}", get(get_database))
        .route("/v1/databases/{db}/collections", get(list_collections))
        .route(
            "/v1/databases/{db}/collections/{collection}",
            get(get_collection),
        )
        .route(
            "/v1/databases/{db}/collections/{collection}/attributes",
            get(list_attributes),
        )
        .route(
            "/v1/databases/{db}/collections/{collection}/attributes/{key}",
            get(get_attribute),
        )
        .route(
            "/v1/databases/{db}/collections/{collection}/indexes",
            get(list_legacy_indexes),
        )
        .route(
            "/v1/databases/{db}/collections/{collection}/indexes/{key}",
            get(get_legacy_index),
        )
        .route(
            "/v1/databases/{db}/collections/{collection}/documents",
            get(list_documents),
        )
        .route(
            "/v1/databases/{db}/collections/{collection}/documents/{document}",
            get(get_document),
        )
        .route("/v1/storage/buckets", post(create_bucket))
        .route("/v1/storage/buckets/{bucket}", get(get_bucket))
        .route(
            "/v1/storage/buckets/{bucket}/files",
            post(upload_file).get(list_files),
        )
        .route(
            "/v1/storage/buckets/{bucket}/files/{file}",
            get(get_file).put(update_file).delete(delete_file),
        )
        .route(
            "/v1/storage/buckets/{bucket}/files/{file}/download",
            get(download_file),
        )
        .route("/v1/users", get(list_users))
        .route(
            "/v1/users/{user}",
            get(get_user).post(create_hashed_user).delete(delete_user),
        )
        .route(
            "/v1/users/{user}/name",
            axum::routing::patch(update_user_name),
        )
        .route(
            "/v1/users/{user}/phone",
            axum::routing::patch(update_user_phone),
        )
        .route(
            "/v1/users/{user}/verification",
            axum::routing::patch(update_user_verification),
        )
        .route(
            "/v1/users/{user}/status",
            axum::routing::patch(update_user_status),
        )
        .route("/v1/users/{user}/labels", put(update_labels))
        .route("/v1/users/{user}/prefs", axum::routing::patch(update_prefs))
        // Matched API routes only: an unknown route is Appwrite's 404 below.
        .route_layer(axum::middleware::from_fn_with_state(s.clone(), auth));
    control
        .merge(api)
        // Appwrite matches method and path together: a path it does not serve, or a method it does
        // not serve on a path, is 404 `general_route_not_found` with its error body, never an
        // empty answer (axum's defaults: 404 and 405 with no body).
        .fallback(route_not_found)
        .method_not_allowed_fallback(route_not_found)
        // Chunks are 5 MiB; whole uploads may be larger.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            s.clone(),
            headers_layer,
        ))
        .with_state(s)
}

/// A route the stand-in does not serve: Appwrite's 404 `general_route_not_found`.
async fn route_not_found() -> ApiError {
    ApiError::new(
        404,
        "general_route_not_found",
        "The requested route was not found. Please refer to the API docs and try again.",
    )
}

/// Serves on `addr` (port 0 picks one); returns the bound address and the server task.
pub async fn serve(
    s: Shared,
    addr: &str,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(s);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((local, task))
}

fn body_obj(body: &Value) -> Result<&serde_json::Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::new(
            400,
            "general_argument_invalid",
            "Invalid body: expected a JSON object",
        )
    })
}

fn str_field<'a>(body: &'a Value, k: &str) -> Result<&'a str, ApiError> {
    body.get(k).and_then(Value::as_str).ok_or_else(|| {
        ApiError::new(
            400,
            "general_argument_invalid",
            format!("Param \"{k}\" is not optional."),
        )
    })
}

async fn create_database(
    State(s): State<Shared>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    body_obj(&body)?;
    let id = state::check_id(str_field(&body, "databaseId")?)?;
    let name = str_field(&body, "name")?;
    ok(201, s.create_database(&id, name)?)
}

async fn list_databases(State(s): State<Shared>, RawQuery(raw): RawQuery) -> ApiResult {
    ok(200, s.list_databases(list_query(raw)?)?)
}

async fn list_tables(
    State(s): State<Shared>,
    Path(db): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    ok(200, s.list_tables(&db, list_query(raw)?)?)
}

/// `GET /tablesdb/transactions`: the transactions (`transactionList`); its queries are parsed.
async fn list_transactions(State(s): State<Shared>, RawQuery(raw): RawQuery) -> ApiResult {
    queries(raw)?;
    let all = s.transactions();
    ok(200, json!({ "total": all.len(), "transactions": all }))
}

/// `POST /tablesdb/transactions {ttl}` (ttl 60 to 3600 s, 300 by default).
async fn create_transaction(State(s): State<Shared>, body: Option<axum::Json<Value>>) -> ApiResult {
    let ttl = body
        .as_ref()
        .and_then(|b| b.get("ttl"))
        .and_then(Value::as_u64)
        .unwrap_or(300);
    ok(201, s.create_transaction(ttl)?)
}

async fn get_transaction(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    ok(200, s.get_transaction(&id)?)
}

/// `PATCH /tablesdb/transactions/{id} {commit: true}` or `{rollback: true}`.
async fn finish_transaction(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Option<axum::Json<Value>>,
) -> ApiResult {
    // An unknown transaction is 404 whatever the body.
    s.get_transaction(&id)?;
    let body = body.map(|b| b.0).unwrap_or(json!({}));
    let commit = body.get("commit").and_then(Value::as_bool).unwrap_or(false);
    let rollback = body
        .get("rollback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if commit == rollback {
        return Err(ApiError::new(
            400,
            "general_argument_invalid",
            "Either commit or rollback must be true.",
        ));
    }
    ok(200, s.finish_transaction(&id, commit)?)
}

async fn delete_transaction(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult {
    s.delete_transaction(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /tablesdb/transactions/{id}/operations {operations: […]}` (201, the transaction).
async fn stage_operations(
    State(s): State<Shared>,
    Path(id): Path<String>,
    body: Option<axum::Json<Value>>,
) -> ApiResult {
    s.get_transaction(&id)?;
    let body = body.map(|b| b.0).unwrap_or(json!({}));
    let ops = body
        .get("operations")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::new(
                400,
                "general_argument_invalid",
                "Param \"operations\" is not optional.",
            )
        })?;
    ok(201, s.stage_operations(&id, ops)?)
}

/// A transaction by id (get, commit or roll back, delete, stage operations): none exists here.
async fn transaction_not_found() -> ApiError {
    ApiError::new(
        404,
        "transaction_not_found",
        "Transaction with the requested ID could not be found.",
    )
}

/// `GET /databases/{db}/collections` (deprecated Databases API): the tables as `collectionList`.
async fn list_collections(
    State(s): State<Shared>,
    Path(db): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let list = list_query(raw)?;
    ok(
        200,
        s.list_tables_in(&db, list, Api::Legacy)
            .map_err(legacy::error)?,
    )
}

/// `GET /databases/{db}/collections/{collection}`: a table as `collection`.
async fn get_collection(
    State(s): State<Shared>,
    Path((db, collection)): Path<(String, String)>,
) -> ApiResult {
    let table = s.get_table(&db, &collection).map_err(legacy::error)?;
    ok(200, legacy::collection(table))
}

/// `GET …/collections/{collection}/attributes`: the columns as `attributeList`.
async fn list_attributes(
    State(s): State<Shared>,
    Path((db, collection)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let list = list_query(raw)?;
    let answer = s.list_columns_in(&db, &collection, list, Api::Legacy);
    ok(200, answer.map_err(legacy::error)?)
}

/// `GET …/collections/{collection}/attributes/{key}`: a column (attributes and columns are alike).
async fn get_attribute(
    State(s): State<Shared>,
    Path((db, collection, key)): Path<(String, String, String)>,
) -> ApiResult {
    ok(
        200,
        s.get_column(&db, &collection, &key)
            .map_err(legacy::error)?,
    )
}

/// `GET …/collections/{collection}/indexes`: the indexes as `indexList`.
async fn list_legacy_indexes(
    State(s): State<Shared>,
    Path((db, collection)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let list = list_query(raw)?;
    let answer = s.list_indexes_in(&db, &collection, list, Api::Legacy);
    ok(200, answer.map_err(legacy::error)?)
}

/// `GET …/collections/{collection}/indexes/{key}`: an index as `index`.
async fn get_legacy_index(
    State(s): State<Shared>,
    Path((db, collection, key)): Path<(String, String, String)>,
) -> ApiResult {
    let index = s.get_index(&db, &collection, &key).map_err(legacy::error)?;
    ok(200, legacy::index(index))
}

/// `GET …/collections/{collection}/documents`: the rows as `documentList`.
async fn list_documents(
    State(s): State<Shared>,
    Path((db, collection)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let list = list_query(raw)?;
    let answer = s.list_rows_in(&db, &collection, list, Api::Legacy);
    ok(200, answer.map_err(legacy::error)?)
}

/// `GET …/collections/{collection}/documents/{document}`: a row as `document`.
async fn get_document(
    State(s): State<Shared>,
    Path((db, collection, document)): Path<(String, String, String)>,
) -> ApiResult {
    let row = s
        .get_row(&db, &collection, &document)
        .map_err(legacy::error)?;
    ok(200, legacy::document(row))
}

/// `GET /_standin/stats` (not Appwrite's; no key): requests received, writes, and their rate.
async fn stats(State(s): State<Shared>) -> Response {
    axum::Json(s.stats()).into_response()
}

/// `DELETE /_standin/stats`: start counting afresh.
async fn reset_stats(State(s): State<Shared>) -> Response {
    s.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

/// `PUT /_standin/faults {rate_limited, server_error, unavailable, delay_ms}`: change the fault
/// injection of a running stand-in.
async fn put_faults(State(s): State<Shared>, axum::Json(f): axum::Json<state::Faults>) -> Response {
    s.set_faults(f);
    axum::Json(s.stats()).into_response()
}

/// `PUT /_standin/faults/tables/{table} {rate_limited, server_error, unavailable, delay_ms}`: faults
/// for the row writes of one table only (in any database), on top of the global ones; all zero
/// turns them off.
async fn put_table_faults(
    State(s): State<Shared>,
    Path(table): Path<String>,
    axum::Json(f): axum::Json<state::Faults>,
) -> Response {
    s.set_table_faults(&table, f);
    axum::Json(s.stats()).into_response()
}

/// `PUT /_standin/faults/rows/{row} {status, times}`: answer the writes of row (or user) `{row}`
/// with `status` (500 or 503) `times` times (always without `times`).
async fn put_row_fault(
    State(s): State<Shared>,
    Path(row): Path<String>,
    axum::Json(f): axum::Json<state::RowFault>,
) -> Response {
    s.set_row_fault(&row, Some(f));
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /_standin/faults/rows/{row}`: the row's writes succeed again.
async fn delete_row_fault(State(s): State<Shared>, Path(row): Path<String>) -> Response {
    s.set_row_fault(&row, None);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /health`: the HTTP service's health.
async fn health() -> ApiResult {
    ok(200, json!({ "name": "http", "ping": 0, "status": "pass" }))
}

async fn get_database(State(s): State<Shared>, Path(db): Path<String>) -> ApiResult {
    ok(200, s.get_database(&db)?)
}

/// A request's `permissions` param: refused (400) when one is not a permission string.
fn permissions_param(body: &Value) -> Result<Option<Value>, ApiError> {
    if let Some(bad) = body
        .get("permissions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| !p.as_str().is_some_and(state::permission_ok))
    {
        return Err(ApiError::new(
            400,
            "general_argument_invalid",
            format!("Invalid `permissions` param: Permission {bad} is not allowed"),
        ));
    }
    Ok(body.get("permissions").filter(|p| p.is_array()).cloned())
}

async fn create_table(
    State(s): State<Shared>,
    Path(db): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let id = state::check_id(str_field(&body, "tableId")?)?;
    let name = str_field(&body, "name")?;
    // Bad permissions refuse the request before anything is made.
    permissions_param(&body)?;
    let created = s.create_table(&db, &id, name)?;
    if body.get("permissions").is_some() || body.get("rowSecurity").is_some() {
        return ok(201, s.update_table(&db, &id, &body)?);
    }
    ok(201, created)
}

async fn update_table(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    str_field(&body, "name")?;
    ok(200, s.update_table(&db, &table, &body)?)
}

async fn get_table(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
) -> ApiResult {
    ok(200, s.get_table(&db, &table)?)
}

async fn create_column(
    State(s): State<Shared>,
    Path((db, table, kind)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    ok(202, s.create_column(&db, &table, &kind, &body)?)
}

async fn get_column(
    State(s): State<Shared>,
    Path((db, table, key)): Path<(String, String, String)>,
) -> ApiResult {
    ok(200, s.get_column(&db, &table, &key)?)
}

/// `DELETE …/columns/{key}` (204).
async fn delete_column(
    State(s): State<Shared>,
    Path((db, table, key)): Path<(String, String, String)>,
) -> ApiResult {
    s.delete_column(&db, &table, &key)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH …/columns/{type}/{key}` (200, the column).
async fn update_column(
    State(s): State<Shared>,
    Path((db, table, kind, key)): Path<(String, String, String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    body_obj(&body)?;
    ok(200, s.update_column(&db, &table, &kind, &key, &body)?)
}

/// `DELETE …/indexes/{key}` (204).
async fn delete_index(
    State(s): State<Shared>,
    Path((db, table, key)): Path<(String, String, String)>,
) -> ApiResult {
    s.delete_index(&db, &table, &key)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_index(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    ok(202, s.create_index(&db, &table, &body)?)
}

async fn get_index(
    State(s): State<Shared>,
    Path((db, table, key)): Path<(String, String, String)>,
) -> ApiResult {
    ok(200, s.get_index(&db, &table, &key)?)
}

async fn list_indexes(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    ok(200, s.list_indexes(&db, &table, list_query(raw)?)?)
}

async fn list_columns(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    ok(200, s.list_columns(&db, &table, list_query(raw)?)?)
}

async fn create_rows(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    match body.get("rows") {
        Some(rows) => ok(201, s.write_rows(&db, &table, rows, false)?),
        None => {
            let id = state::check_id(str_field(&body, "rowId")?)?;
            let data = with_permissions(&body)?;
            ok(201, s.write_row(&db, &table, &id, &data, false)?)
        }
    }
}

async fn upsert_rows(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let rows = body.get("rows").ok_or_else(|| {
        ApiError::new(
            400,
            "general_argument_invalid",
            "Param \"rows\" is not optional.",
        )
    })?;
    ok(201, s.write_rows(&db, &table, rows, true)?)
}

async fn upsert_row(
    State(s): State<Shared>,
    Path((db, table, row)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let id = state::check_id(&row)?;
    let data = with_permissions(&body)?;
    ok(200, s.write_row(&db, &table, &id, &data, true)?)
}

/// A single-row request's `data`, with its `permissions` param as the row's `$permissions` (as
/// a bulk request's rows carry them).
fn with_permissions(body: &Value) -> Result<Value, ApiError> {
    let mut data = body.get("data").cloned().unwrap_or(json!({}));
    if let Some(p) = permissions_param(body)?
        && let Some(o) = data.as_object_mut()
    {
        o.insert("$permissions".into(), p);
    }
    Ok(data)
}

/// `PATCH …/rows/{row} {data}`: updates an existing row (404 when it does not exist).
async fn update_row(
    State(s): State<Shared>,
    Path((db, table, row)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let data = with_permissions(&body)?;
    ok(200, s.update_row(&db, &table, &row, &data)?)
}

async fn get_row(
    State(s): State<Shared>,
    Path((db, table, row)): Path<(String, String, String)>,
) -> ApiResult {
    ok(200, s.get_row(&db, &table, &row)?)
}

async fn delete_row(
    State(s): State<Shared>,
    Path((db, table, row)): Path<(String, String, String)>,
) -> ApiResult {
    s.delete_row(&db, &table, &row)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE …/rows {queries: ["<json>", …]}`: bulk delete.
async fn delete_rows(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    body: Option<axum::Json<Value>>,
) -> ApiResult {
    let mut q = Vec::new();
    if let Some(axum::Json(b)) = body
        && let Some(list) = b.get("queries").and_then(Value::as_array)
    {
        for item in list {
            let text = item.as_str().ok_or_else(|| {
                ApiError::new(
                    400,
                    "general_query_invalid",
                    "Invalid query: expected a string",
                )
            })?;
            q.push(serde_json::from_str(text).map_err(|e| {
                ApiError::new(400, "general_query_invalid", format!("Invalid query: {e}"))
            })?);
        }
    }
    ok(200, s.delete_rows(&db, &table, &q)?)
}

/// `queries[]=<json>` parameters, in order.
fn queries(raw: Option<String>) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in url_pairs(raw.as_deref().unwrap_or("")) {
        if k == "queries[]" || k == "queries" {
            out.push(serde_json::from_str(&v).map_err(|_| {
                ApiError::new(400, "general_query_invalid", format!("Invalid query: {v}"))
            })?);
        }
    }
    Ok(out)
}

/// A list route's parameters: `queries[]`, `search` (at most 256 characters: the routes without
/// one ignore it) and `total` (a boolean, true by default).
fn list_query(raw: Option<String>) -> Result<state::ListQuery, ApiError> {
    let mut list = state::ListQuery::from(&queries(raw.clone())?);
    for (k, v) in url_pairs(raw.as_deref().unwrap_or("")) {
        match k.as_str() {
            "total" => {
                list.total = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::new(
                            400,
                            "general_argument_invalid",
                            "Invalid `total` param: Value must be a valid boolean",
                        ));
                    }
                }
            }
            "search" => {
                if v.chars().count() > 256 {
                    return Err(ApiError::new(
                        400,
                        "general_argument_invalid",
                        "Invalid `search` param: Value must be a valid string and no longer than 256 chars",
                    ));
                }
                list.search = v;
            }
            _ => {}
        }
    }
    Ok(list)
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn list_rows(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    ok(200, s.list_rows(&db, &table, list_query(raw)?)?)
}

/// `POST /users/{algorithm}`: a user with an existing password hash (`{algorithm}` shares its
/// route segment with `GET /users/{userId}`).
async fn create_hashed_user(
    State(s): State<Shared>,
    Path(algorithm): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    const ALGORITHMS: &[&str] = &[
        "bcrypt",
        "argon2",
        "md5",
        "sha",
        "phpass",
        "scrypt",
        "scrypt-modified",
    ];
    if !ALGORITHMS.contains(&algorithm.as_str()) {
        return Err(ApiError::new(
            404,
            "general_route_not_found",
            "The requested route was not found.",
        ));
    }
    let id = state::check_id(str_field(&body, "userId")?)?;
    let email = str_field(&body, "email")?;
    if !state::email_ok(email) {
        return Err(ApiError::new(
            400,
            "general_argument_invalid",
            "Invalid `email` param: Value must be a valid email address",
        ));
    }
    let password = str_field(&body, "password")?;
    let name = body.get("name").and_then(Value::as_str).unwrap_or("");
    let mut options = serde_json::Map::new();
    if let Some(o) = body.as_object() {
        for (k, v) in o {
            if k.starts_with("password") && k != "password" {
                options.insert(k.clone(), v.clone());
            }
        }
    }
    ok(
        201,
        s.create_user(&id, email, password, &algorithm, name, options)?,
    )
}

async fn delete_user(State(s): State<Shared>, Path(user): Path<String>) -> ApiResult {
    s.delete_user(&user)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn update_user_name(
    State(s): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let name = str_field(&body, "name")?.to_string();
    ok(200, s.update_user(&user, |u| u["name"] = json!(name))?)
}

async fn update_user_phone(
    State(s): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let number = str_field(&body, "number")?.to_string();
    let digits = number.strip_prefix('+').unwrap_or("");
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(
            400,
            "general_argument_invalid",
            "Invalid `number` param: Phone number must start with a '+' can have a maximum of fifteen digits.",
        ));
    }
    ok(200, s.update_phone(&user, &number)?)
}

async fn update_user_verification(
    State(s): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let v = bool_field(&body, "emailVerification")?;
    ok(
        200,
        s.update_user(&user, |u| u["emailVerification"] = json!(v))?,
    )
}

async fn update_user_status(
    State(s): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let v = bool_field(&body, "status")?;
    ok(200, s.update_user(&user, |u| u["status"] = json!(v))?)
}

fn bool_field(body: &Value, k: &str) -> Result<bool, ApiError> {
    body.get(k).and_then(Value::as_bool).ok_or_else(|| {
        ApiError::new(
            400,
            "general_argument_invalid",
            format!("Param \"{k}\" is not optional."),
        )
    })
}

async fn delete_table(
    State(s): State<Shared>,
    Path((db, table)): Path<(String, String)>,
) -> ApiResult {
    s.delete_table(&db, &table)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_user(State(s): State<Shared>, Path(user): Path<String>) -> ApiResult {
    ok(200, s.get_user(&user)?)
}

async fn list_users(
    State(s): State<Shared>,
    Query(_q): Query<Vec<(String, String)>>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    ok(200, s.list_users(list_query(raw)?))
}

async fn update_labels(
    State(s): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let labels: Vec<String> = body
        .get("labels")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::new(
                400,
                "general_argument_invalid",
                "Param \"labels\" is not optional.",
            )
        })?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if labels
        .iter()
        .any(|l| l.is_empty() || l.len() > 36 || !l.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(ApiError::new(
            400,
            "general_argument_invalid",
            "Invalid `labels` param: Value must a valid array and Value must be a valid string and at least 1 chars and no longer than 36 chars and only contain alphanumeric chars",
        ));
    }
    ok(200, s.update_user(&user, |u| u["labels"] = json!(labels))?)
}

async fn update_prefs(
    State(s): State<Shared>,
    Path(user): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    let prefs = body.get("prefs").cloned().unwrap_or(json!({}));
    s.update_user(&user, |u| u["prefs"] = prefs.clone())?;
    ok(200, prefs)
}

async fn create_bucket(State(s): State<Shared>, axum::Json(body): axum::Json<Value>) -> ApiResult {
    let id = state::check_id(str_field(&body, "bucketId")?)?;
    let name = str_field(&body, "name")?;
    ok(201, s.create_bucket(&id, name, &body)?)
}

async fn get_bucket(State(s): State<Shared>, Path(bucket): Path<String>) -> ApiResult {
    ok(200, s.get_bucket(&bucket)?)
}

async fn upload_file(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    mut form: axum::extract::Multipart,
) -> ApiResult {
    let mut file_id = headers
        .get("x-appwrite-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut name = String::from("file");
    let mut mime = String::from("application/octet-stream");
    let mut data: Option<Vec<u8>> = None;
    let mut permissions: Vec<String> = Vec::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::new(400, "general_argument_invalid", e.body_text()))?
    {
        match field.name().unwrap_or("") {
            "fileId" => {
                let v = field.text().await.unwrap_or_default();
                if file_id.is_none() {
                    file_id = Some(v);
                }
            }
            "permissions[]" | "permissions" => {
                permissions.push(field.text().await.unwrap_or_default());
            }
            "file" => {
                name = field.file_name().unwrap_or("file").to_string();
                mime = field
                    .content_type()
                    .unwrap_or("application/octet-stream")
                    .to_string();
                data = Some(
                    field
                        .bytes()
                        .await
                        .map_err(|e| ApiError::new(400, "general_argument_invalid", e.body_text()))?
                        .to_vec(),
                );
            }
            _ => {}
        }
    }
    let file_id = state::check_id(&file_id.ok_or_else(|| {
        ApiError::new(
            400,
            "general_argument_invalid",
            "Param \"fileId\" is not optional.",
        )
    })?)?;
    let data = data.ok_or_else(|| {
        ApiError::new(
            400,
            "storage_file_empty",
            "Empty file passed to the endpoint.",
        )
    })?;
    let range = match headers.get("content-range").and_then(|v| v.to_str().ok()) {
        Some(r) => Some(storage::parse_content_range(r)?),
        None => None,
    };
    let (status, file) = s.upload(&bucket, &file_id, &name, &mime, data, range, &permissions)?;
    let barrier = s.upload_barrier();
    if barrier > 0 && file["chunksUploaded"].as_u64() < file["chunksTotal"].as_u64() {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while s.files_in_progress_max() < barrier && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    ok(status, file)
}

async fn get_file(
    State(s): State<Shared>,
    Path((bucket, file)): Path<(String, String)>,
) -> ApiResult {
    ok(200, s.get_file(&bucket, &file)?)
}

async fn update_file(
    State(s): State<Shared>,
    Path((bucket, file)): Path<(String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> ApiResult {
    ok(200, s.update_file(&bucket, &file, &body)?)
}

async fn list_files(
    State(s): State<Shared>,
    Path(bucket): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    ok(200, s.list_files(&bucket, list_query(raw)?)?)
}

async fn delete_file(
    State(s): State<Shared>,
    Path((bucket, file)): Path<(String, String)>,
) -> ApiResult {
    s.delete_file(&bucket, &file)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn download_file(
    State(s): State<Shared>,
    Path((bucket, file)): Path<(String, String)>,
) -> ApiResult {
    let bytes = s.file_content(&bucket, &file)?;
    Ok((StatusCode::OK, bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "unit-key";

    /// A stand-in serving on a free port, with no column delay.
    async fn start() -> (std::net::SocketAddr, Arc<StandIn>) {
        let mut s = StandIn::new("cutover", KEY);
        s.column_delay = Duration::ZERO;
        let s = Arc::new(s);
        let (addr, _) = serve(s.clone(), "127.0.0.1:0").await.unwrap();
        (addr, s)
    }

    /// `method path` with the project and key headers (HTTP/1.1 over a plain socket, so the
    /// stand-in's tests need no client library): the status and the body (`Null` when empty).
    async fn call(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, Value) {
        let request = format!(
            "{method} /v1{path} HTTP/1.1\r\nHost: {addr}\r\nX-Appwrite-Project: cutover\r\n\
             X-Appwrite-Key: {KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let text = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
        };
        (status, body)
    }

    /// `queries[]=…` parameters, percent-encoded.
    fn q(queries: &[Value]) -> String {
        let enc = |text: &str| -> String {
            text.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        queries
            .iter()
            .map(|v| format!("queries%5B%5D={}", enc(&v.to_string())))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Asserts an Appwrite error body of `status` and `kind`.
    fn assert_error(answer: &(u16, Value), status: u16, kind: &str) {
        assert_eq!(answer.0, status, "{answer:?}");
        assert_eq!(answer.1["code"], status, "{answer:?}");
        assert_eq!(answer.1["type"], kind, "{answer:?}");
        assert!(answer.1["message"].is_string(), "{answer:?}");
        assert_eq!(answer.1["version"], VERSION, "{answer:?}");
    }

    /// Databases `main` (named Main) and `other` (Archive); in `main`, tables `people` (People),
    /// `places` (Places) and `things` (Odds and ends); `people` has columns `name`, `age`, `email`,
    /// indexes `by_name` and `by_age`, and rows `r1` … `r5`; a user `u1`.
    fn fixture(s: &StandIn) {
        s.create_database("main", "Main").unwrap();
        s.create_database("other", "Archive").unwrap();
        for (id, name) in [
            ("people", "People"),
            ("places", "Places"),
            ("things", "Odds and ends"),
        ] {
            s.create_table("main", id, name).unwrap();
        }
        for (kind, body) in [
            (
                "string",
                json!({ "key": "name", "size": 40, "required": true }),
            ),
            ("integer", json!({ "key": "age", "required": false })),
            (
                "email",
                json!({ "key": "email", "required": false, "array": true }),
            ),
        ] {
            s.create_column("main", "people", kind, &body).unwrap();
        }
        for (key, column) in [("by_name", "name"), ("by_age", "age")] {
            let body = json!({ "key": key, "type": "key", "columns": [column] });
            s.create_index("main", "people", &body).unwrap();
        }
        let rows: Vec<Value> = (1..=5)
            .map(|i| json!({ "$id": format!("r{i}"), "name": format!("n{i}"), "age": 20 + i }))
            .collect();
        s.write_rows("main", "people", &json!(rows), false).unwrap();
        s.create_user(
            "u1",
            "u1@example.com",
            "$2y$10$abcdefghijklmnopqrstuv",
            "bcrypt",
            "Ann",
            serde_json::Map::new(),
        )
        .unwrap();
    }

    /// The list routes that take `total`, with the field of their items and how many the fixture
    /// gives each.
    const TOTALLED: &[(&str, &str, usize)] = &[
        ("/tablesdb", "databases", 2),
        ("/tablesdb/main/tables", "tables", 3),
        ("/tablesdb/main/tables/people/columns", "columns", 3),
        ("/tablesdb/main/tables/people/indexes", "indexes", 2),
        ("/tablesdb/main/tables/people/rows", "rows", 5),
        ("/users", "users", 1),
    ];

    #[tokio::test(flavor = "multi_thread")]
    async fn total_false_answers_a_total_of_0_on_every_list() {
        let (addr, s) = start().await;
        fixture(&s);
        for &(path, field, n) in TOTALLED {
            let (status, all) = call(addr, "GET", path).await;
            assert_eq!(status, 200, "{path}: {all}");
            assert_eq!(all["total"], n, "{path}: {all}");
            assert_eq!(all[field].as_array().unwrap().len(), n, "{path}");
            let (_, counted) = call(addr, "GET", &format!("{path}?total=true")).await;
            assert_eq!(counted["total"], n, "{path}: {counted}");
            // The spec: "When set to false, the total count returned will be 0" — the items stay.
            let (status, uncounted) = call(addr, "GET", &format!("{path}?total=false")).await;
            assert_eq!(status, 200, "{path}: {uncounted}");
            assert_eq!(uncounted["total"], 0, "{path}: {uncounted}");
            assert_eq!(uncounted[field], all[field], "{path}");
            let page = format!(
                "{path}?{}&total=false",
                q(&[json!({"method": "limit", "values": [1]})])
            );
            let (_, one) = call(addr, "GET", &page).await;
            assert_eq!(
                (one["total"].clone(), one[field].as_array().unwrap().len()),
                (json!(0), 1)
            );
            let answer = call(addr, "GET", &format!("{path}?total=maybe")).await;
            assert_error(&answer, 400, "general_argument_invalid");
        }
    }

    /// The `$id`s of a list's items.
    fn ids(list: &Value, field: &str) -> Vec<String> {
        list[field]
            .as_array()
            .unwrap_or_else(|| panic!("no {field}: {list}"))
            .iter()
            .map(|i| i["$id"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn search_finds_databases_tables_and_users_by_id_or_name() {
        let (addr, s) = start().await;
        fixture(&s);
        for (path, field, term, found) in [
            ("/tablesdb", "databases", "zzz", vec![]),
            ("/tablesdb", "databases", "arch", vec!["other"]),
            ("/tablesdb", "databases", "main", vec!["main"]),
            ("/tablesdb", "databases", "", vec!["main", "other"]),
            ("/tablesdb/main/tables", "tables", "zzz", vec![]),
            ("/tablesdb/main/tables", "tables", "pla", vec!["places"]),
            ("/tablesdb/main/tables", "tables", "ends", vec!["things"]),
            (
                "/tablesdb/main/tables",
                "tables",
                "people%20zzz",
                vec!["people"],
            ),
            ("/users", "users", "zzz", vec![]),
            ("/users", "users", "ann", vec!["u1"]),
        ] {
            let (status, list) = call(addr, "GET", &format!("{path}?search={term}")).await;
            assert_eq!(status, 200, "{path} {term}: {list}");
            assert_eq!(ids(&list, field), found, "{path} {term}");
            assert_eq!(list["total"], found.len(), "{path} {term}");
        }
        let long = "a".repeat(257);
        let answer = call(addr, "GET", &format!("/tablesdb?search={long}")).await;
        assert_error(&answer, 400, "general_argument_invalid");
    }

    /// A query: `method` on `attribute` (empty: none) with `values`.
    fn query(method: &str, attribute: &str, values: Value) -> Value {
        if attribute.is_empty() {
            json!({ "method": method, "values": values })
        } else {
            json!({ "method": method, "attribute": attribute, "values": values })
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cursor_before_pages_back_through_rows_in_their_order() {
        let (addr, s) = start().await;
        fixture(&s);
        let rows = "/tablesdb/main/tables/people/rows";
        let limit = |n: u64| query("limit", "", json!([n]));
        let before = |id: &str| query("cursorBefore", "", json!([id]));
        let after = |id: &str| query("cursorAfter", "", json!([id]));
        for (queries, want) in [
            (vec![limit(2), before("r4")], vec!["r2", "r3"]),
            (vec![before("r4")], vec!["r1", "r2", "r3"]),
            (
                vec![limit(2), before("r4"), query("offset", "", json!([1]))],
                vec!["r1", "r2"],
            ),
            (vec![before("r1")], vec![]),
            (
                vec![limit(2), query("orderDesc", "age", json!([])), before("r2")],
                vec!["r4", "r3"],
            ),
            (
                vec![query("orderDesc", "age", json!([])), before("r5")],
                vec![],
            ),
            // The cursor need not match the filter: the page starts where it would be.
            (
                vec![
                    query("equal", "age", json!([21, 25])),
                    query("orderDesc", "age", json!([])),
                    after("r3"),
                ],
                vec!["r1"],
            ),
            (
                vec![
                    query("equal", "age", json!([21, 25])),
                    query("orderDesc", "age", json!([])),
                    before("r3"),
                ],
                vec!["r5"],
            ),
            (
                vec![query("equal", "age", json!([21, 25])), before("r3")],
                vec!["r1"],
            ),
        ] {
            let (status, list) = call(addr, "GET", &format!("{rows}?{}", q(&queries))).await;
            assert_eq!(status, 200, "{queries:?}: {list}");
            assert_eq!(ids(&list, "rows"), want, "{queries:?}");
        }
        let answer = call(addr, "GET", &format!("{rows}?{}", q(&[before("nope")]))).await;
        assert_error(&answer, 400, "general_cursor_not_found");
    }

    /// The `key`s of a list's items (columns, indexes).
    fn keys(list: &Value, field: &str) -> Vec<String> {
        list[field]
            .as_array()
            .unwrap_or_else(|| panic!("no {field}: {list}"))
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lists_filter_order_and_page_back_on_the_attributes_the_spec_names() {
        let (addr, s) = start().await;
        fixture(&s);
        let (dbs, tables) = ("/tablesdb", "/tablesdb/main/tables");
        let (columns, indexes) = (
            "/tablesdb/main/tables/people/columns",
            "/tablesdb/main/tables/people/indexes",
        );
        for (path, field, queries, want) in [
            (
                tables,
                "tables",
                vec![query("equal", "name", json!(["People"]))],
                vec!["people"],
            ),
            (
                tables,
                "tables",
                vec![query("equal", "enabled", json!([true]))],
                vec!["people", "places", "things"],
            ),
            (
                tables,
                "tables",
                vec![query("equal", "rowSecurity", json!([true]))],
                vec![],
            ),
            (
                tables,
                "tables",
                vec![query("notEqual", "$id", json!(["places"]))],
                vec!["people", "things"],
            ),
            (
                tables,
                "tables",
                vec![query("startsWith", "name", json!(["P"]))],
                vec!["people", "places"],
            ),
            (
                tables,
                "tables",
                vec![query("orderDesc", "name", json!([]))],
                vec!["places", "people", "things"],
            ),
            (
                tables,
                "tables",
                vec![query("cursorBefore", "", json!(["things"]))],
                vec!["people", "places"],
            ),
            (
                tables,
                "tables",
                vec![
                    query("limit", "", json!([1])),
                    query("cursorBefore", "", json!(["things"])),
                ],
                vec!["places"],
            ),
            (
                tables,
                "tables",
                vec![
                    query("orderDesc", "name", json!([])),
                    query("cursorBefore", "", json!(["things"])),
                ],
                vec!["places", "people"],
            ),
            (
                tables,
                "tables",
                vec![query("orderDesc", "", json!([]))],
                vec!["things", "places", "people"],
            ),
            (
                dbs,
                "databases",
                vec![query("equal", "name", json!(["Archive"]))],
                vec!["other"],
            ),
            (
                dbs,
                "databases",
                vec![query("cursorBefore", "", json!(["other"]))],
                vec!["main"],
            ),
        ] {
            let (status, list) = call(addr, "GET", &format!("{path}?{}", q(&queries))).await;
            assert_eq!(status, 200, "{path} {queries:?}: {list}");
            assert_eq!(ids(&list, field), want, "{path} {queries:?}");
        }
        for (path, field, queries, want) in [
            (
                columns,
                "columns",
                vec![query("equal", "type", json!(["integer"]))],
                vec!["age"],
            ),
            (
                columns,
                "columns",
                vec![query("equal", "array", json!([true]))],
                vec!["email"],
            ),
            (
                columns,
                "columns",
                vec![query("equal", "array", json!([false]))],
                vec!["name", "age"],
            ),
            (
                columns,
                "columns",
                vec![query("equal", "required", json!([true]))],
                vec!["name"],
            ),
            (
                columns,
                "columns",
                vec![query("greaterThan", "size", json!([10]))],
                vec!["name"],
            ),
            (
                columns,
                "columns",
                vec![query("equal", "status", json!(["available"]))],
                vec!["name", "age", "email"],
            ),
            (
                columns,
                "columns",
                vec![
                    query("limit", "", json!([1])),
                    query("cursorBefore", "", json!(["email"])),
                ],
                vec!["age"],
            ),
            (
                columns,
                "columns",
                vec![query("orderAsc", "key", json!([]))],
                vec!["age", "email", "name"],
            ),
            (
                indexes,
                "indexes",
                vec![query("equal", "attributes", json!(["age"]))],
                vec!["by_age"],
            ),
            (
                indexes,
                "indexes",
                vec![query("equal", "key", json!(["by_name"]))],
                vec!["by_name"],
            ),
            (
                indexes,
                "indexes",
                vec![query("cursorBefore", "", json!(["by_age"]))],
                vec!["by_name"],
            ),
        ] {
            let (status, list) = call(addr, "GET", &format!("{path}?{}", q(&queries))).await;
            assert_eq!(status, 200, "{path} {queries:?}: {list}");
            assert_eq!(keys(&list, field), want, "{path} {queries:?}");
        }
        // Filters count in the total; cursors and limits do not.
        let path = format!(
            "{tables}?{}",
            q(&[
                query("equal", "name", json!(["People", "Places"])),
                query("limit", "", json!([1]))
            ])
        );
        let (_, list) = call(addr, "GET", &path).await;
        assert_eq!(
            (ids(&list, "tables"), list["total"].clone()),
            (vec!["people".to_string()], json!(2))
        );
        // Search and a cursor the search does not find: the page starts where it would be.
        let path = format!(
            "/tablesdb/main/tables?search=p&{}",
            q(&[query("cursorAfter", "", json!(["people"]))])
        );
        let (_, list) = call(addr, "GET", &path).await;
        assert_eq!(ids(&list, "tables"), ["places"]);
        // Attributes the spec does not name for the list are refused, as Appwrite does.
        for (path, queries) in [
            (dbs, vec![query("equal", "enabled", json!([true]))]),
            (
                tables,
                vec![query("equal", "documentSecurity", json!([true]))],
            ),
            (tables, vec![query("orderAsc", "columns", json!([]))]),
            (indexes, vec![query("equal", "columns", json!(["age"]))]),
            (columns, vec![query("contains", "key", json!(["a"]))]),
        ] {
            let answer = call(addr, "GET", &format!("{path}?{}", q(&queries))).await;
            assert_error(&answer, 400, "general_query_invalid");
        }
        let before = q(&[query("cursorBefore", "", json!(["nope"]))]);
        let answer = call(addr, "GET", &format!("{tables}?{before}")).await;
        assert_error(&answer, 400, "general_cursor_not_found");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_deprecated_databases_api_reads_the_same_state_under_its_own_names() {
        let (addr, s) = start().await;
        fixture(&s);
        let get = |path: String| async move {
            let (status, body) = call(addr, "GET", &path).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        };
        let dbs = get("/databases".into()).await;
        assert_eq!(ids(&dbs, "databases"), ["main", "other"]);
        assert_eq!(get("/databases/main".into()).await["name"], "Main");
        let base = "/databases/main/collections";
        let collections = get(base.into()).await;
        assert_eq!(collections["total"], 3);
        assert_eq!(
            ids(&collections, "collections"),
            ["people", "places", "things"]
        );
        let people = &collections["collections"][0];
        for (field, present) in [
            ("documentSecurity", true),
            ("attributes", true),
            ("rowSecurity", false),
            ("columns", false),
        ] {
            assert_eq!(people.get(field).is_some(), present, "{field}: {people}");
        }
        assert_eq!(people["indexes"][0]["attributes"], json!(["name"]));
        assert!(people["indexes"][0].get("columns").is_none());
        assert_eq!(&get(format!("{base}/people")).await, people);
        let attributes = get(format!("{base}/people/attributes")).await;
        assert_eq!(keys(&attributes, "attributes"), ["name", "age", "email"]);
        assert_eq!(
            get(format!("{base}/people/attributes/age")).await["type"],
            "integer"
        );
        let indexes = get(format!("{base}/people/indexes")).await;
        assert_eq!(keys(&indexes, "indexes"), ["by_name", "by_age"]);
        assert_eq!(indexes["indexes"][1]["attributes"], json!(["age"]));
        assert_eq!(
            get(format!("{base}/people/indexes/by_age")).await,
            indexes["indexes"][1]
        );
        let documents = get(format!("{base}/people/documents")).await;
        assert_eq!(ids(&documents, "documents"), ["r1", "r2", "r3", "r4", "r5"]);
        let r2 = get(format!("{base}/people/documents/r2")).await;
        assert_eq!(
            (&r2["$collectionId"], &r2["$databaseId"]),
            (&json!("people"), &json!("main"))
        );
        assert!(r2.get("$tableId").is_none(), "{r2}");
        assert_eq!(r2, documents["documents"][1]);
        // The same queries as TablesDB, under the Databases API's attribute names.
        for (path, field, queries, want) in [
            (
                base.to_string(),
                "collections",
                vec![query("equal", "documentSecurity", json!([false]))],
                vec!["people", "places", "things"],
            ),
            (
                base.to_string(),
                "collections",
                vec![
                    query("limit", "", json!([1])),
                    query("cursorBefore", "", json!(["things"])),
                ],
                vec!["places"],
            ),
            (
                format!("{base}/people/documents"),
                "documents",
                vec![
                    query("limit", "", json!([2])),
                    query("cursorBefore", "", json!(["r3"])),
                ],
                vec!["r1", "r2"],
            ),
            (
                format!("{base}/people/documents"),
                "documents",
                vec![
                    query("orderDesc", "age", json!([])),
                    query("offset", "", json!([3])),
                ],
                vec!["r2", "r1"],
            ),
        ] {
            let list = get(format!("{path}?{}", q(&queries))).await;
            assert_eq!(ids(&list, field), want, "{path} {queries:?}");
        }
        let index_query = q(&[query("equal", "attributes", json!(["age"]))]);
        let by_age = get(format!("{base}/people/indexes?{index_query}")).await;
        assert_eq!(keys(&by_age, "indexes"), ["by_age"]);
        assert_eq!(
            ids(&get(format!("{base}?search=ends")).await, "collections"),
            ["things"]
        );
        assert_eq!(
            ids(&get("/databases?search=zzz".into()).await, "databases"),
            Vec::<String>::new()
        );
        for path in [
            "/databases".to_string(),
            base.to_string(),
            format!("{base}/people/attributes"),
            format!("{base}/people/indexes"),
            format!("{base}/people/documents"),
        ] {
            let list = get(format!("{path}?total=false")).await;
            assert_eq!(list["total"], 0, "{path}: {list}");
        }
        assert_eq!(
            get("/databases/transactions".into()).await,
            json!({ "total": 0, "transactions": [] })
        );
        // Its errors under its own names.
        for (path, status, kind) in [
            ("/databases/nope".to_string(), 404, "database_not_found"),
            (
                "/databases/nope/collections".to_string(),
                404,
                "database_not_found",
            ),
            (format!("{base}/nope"), 404, "collection_not_found"),
            (
                format!("{base}/nope/documents"),
                404,
                "collection_not_found",
            ),
            (
                format!("{base}/people/documents/nope"),
                404,
                "document_not_found",
            ),
            (
                format!("{base}/people/attributes/nope"),
                404,
                "attribute_not_found",
            ),
            (
                format!("{base}/people/indexes/nope"),
                404,
                "index_not_found",
            ),
            (
                format!(
                    "{base}?{}",
                    q(&[query("equal", "rowSecurity", json!([true]))])
                ),
                400,
                "general_query_invalid",
            ),
        ] {
            let answer = call(addr, "GET", &path).await;
            assert_error(&answer, status, kind);
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn transactions_are_listed_not_taken_for_a_database() {
        let (addr, s) = start().await;
        // Even with a database whose id is `transactions`: the spec's static route wins.
        s.create_database("transactions", "T").unwrap();
        let (status, body) = call(addr, "GET", "/tablesdb/transactions").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({ "total": 0, "transactions": [] }));
        let limited = format!(
            "/tablesdb/transactions?{}",
            q(&[json!({"method": "limit", "values": [5]})])
        );
        assert_eq!(call(addr, "GET", &limited).await.0, 200);
        for method in ["GET", "PATCH", "DELETE"] {
            let answer = call(addr, method, "/tablesdb/transactions/tx1").await;
            assert_error(&answer, 404, "transaction_not_found");
        }
        let answer = call(addr, "POST", "/tablesdb/transactions/tx1/operations").await;
        assert_error(&answer, 404, "transaction_not_found");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unknown_route_or_method_is_appwrites_404_json() {
        let (addr, _) = start().await;
        for (method, path) in [
            ("GET", "/nothing/here"),
            ("GET", "/tablesdb/db/tables/t/unknown"),
            ("PATCH", "/tablesdb"),
            ("DELETE", "/tablesdb/db/tables/t/columns"),
        ] {
            let answer = call(addr, method, path).await;
            assert_error(&answer, 404, "general_route_not_found");
        }
    }
}
