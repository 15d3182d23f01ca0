//! The stand-in's data, in memory, behind one lock: databases, tables with their columns and rows,
//! users. Timestamps and ids follow Appwrite's formats.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ApiError;
use super::legacy::{self, Api};

/// Fault injection: fractions of requests answered with an error, and a delay for every request.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub rate_limited: f64,
    pub server_error: f64,
    pub unavailable: f64,
    pub delay_ms: u64,
}

impl Faults {
    /// No fault and no delay.
    pub fn is_none(&self) -> bool {
        self.rate_limited <= 0.0
            && self.server_error <= 0.0
            && self.unavailable <= 0.0
            && self.delay_ms == 0
    }
}

#[derive(Debug, Clone)]
struct Column {
    key: String,
    kind: String,
    body: Value,
    created: Instant,
    created_at: String,
}

#[derive(Debug, Clone)]
struct Index {
    key: String,
    kind: String,
    columns: Vec<String>,
    orders: Vec<String>,
    lengths: Vec<i64>,
    created: Instant,
    created_at: String,
    /// Why the index could not be built (a `unique` index over rows that repeat a key): its
    /// status is then `failed`, as Appwrite's is, and it enforces nothing.
    failed: Option<String>,
}

#[derive(Debug, Clone)]
struct Table {
    id: String,
    name: String,
    created_at: String,
    columns: Vec<Column>,
    indexes: Vec<Index>,
    rows: BTreeMap<String, Value>,
    sequence: u64,
    /// Table-level permission strings and `rowSecurity`, as created or last updated.
    permissions: Vec<String>,
    row_security: bool,
    /// The keys its unique indexes hold (index key → row key → row), built on the first write
    /// that needs it and kept by `put_row` (a write checks its row against a map, as MariaDB
    /// does against its index, not against every row); dropped by every other change of the
    /// rows, the columns or the indexes.
    unique: Option<HashMap<String, HashMap<Vec<String>, String>>>,
}

#[derive(Debug, Clone)]
struct Database {
    id: String,
    name: String,
    created_at: String,
    tables: BTreeMap<String, Table>,
}

#[derive(Debug, Default)]
struct Data {
    buckets: BTreeMap<String, super::storage::Bucket>,
    databases: BTreeMap<String, Database>,
    users: BTreeMap<String, Value>,
    faults: Faults,
    /// Faults of the row writes of one table, by table id.
    table_faults: BTreeMap<String, Faults>,
    /// Faults of the writes of one row (or user), by its id.
    row_faults: BTreeMap<String, RowFault>,
    /// The most chunked uploads ever in progress at once (some chunks in, not all), over every
    /// bucket: what shows a client uploading files side by side.
    files_in_progress_max: u64,
    /// TablesDB transactions by id: their model and their staged operations.
    transactions: BTreeMap<String, (Value, Vec<Value>)>,
}

/// A fault of the writes of one row id (in any table) or one user id: every request writing it
/// is answered `status` (500 or 503), `times` times, or always when `times` is `None`; the other
/// rows of a bulk request that carries it are not written either (bulk writes are all or nothing).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFault {
    pub status: u16,
    #[serde(default)]
    pub times: Option<u64>,
}

/// The parameters of a list route: its `queries[]`, its `search` term (empty: none) and `total`
/// (the spec: "When set to false, the total count returned will be 0 and will not be
/// calculated").
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub queries: Vec<Value>,
    pub search: String,
    pub total: bool,
}

impl From<&[Value]> for ListQuery {
    fn from(queries: &[Value]) -> ListQuery {
        ListQuery {
            queries: queries.to_vec(),
            search: String::new(),
            total: true,
        }
    }
}

impl From<&Vec<Value>> for ListQuery {
    fn from(queries: &Vec<Value>) -> ListQuery {
        ListQuery::from(queries.as_slice())
    }
}

impl<const N: usize> From<&[Value; N]> for ListQuery {
    fn from(queries: &[Value; N]) -> ListQuery {
        ListQuery::from(queries.as_slice())
    }
}

/// The stand-in server's state and settings.
#[derive(Debug)]
pub struct StandIn {
    pub project: String,
    pub key: String,
    /// How long a new column (or index) stays `processing`.
    pub column_delay: Duration,
    /// Columns and indexes made before this instant are available whatever `column_delay`
    /// says (see [`StandIn::settle`]).
    settled: Mutex<Option<Instant>>,
    pub limit_per_minute: u64,
    pub retry_after_secs: u64,
    pub max_bulk_rows: usize,
    /// Keys of columns that end `failed` instead of `available` (to test the writer's errors).
    pub failing_columns: Vec<String>,
    requests: AtomicU64,
    writes: AtomicU64,
    /// See [`StandIn::set_upload_barrier`] (0: off).
    upload_barrier: AtomicU64,
    /// When each request arrived (for rate measurements in tests), the first million.
    arrivals: Mutex<Vec<std::time::Instant>>,
    data: Mutex<Data>,
}

/// Appwrite's id rule: `unique()` or up to 36 of `[A-Za-z0-9._-]`, not starting with `.`, `_`, `-`.
pub fn check_id(id: &str) -> Result<String, ApiError> {
    if id == "unique()" {
        return Ok(format!("{:x}", fastrand::u64(..)));
    }
    if id_ok(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::new(
            400,
            "general_argument_invalid",
            "Invalid `id` param: Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start with a special char",
        ))
    }
}

/// The id rule of Appwrite 1.8's spec (every `*Id` parameter): "Valid chars are a-z, A-Z, 0-9,
/// period, hyphen, and underscore. Can't start with a special char. Max length is 36 chars."
pub fn id_ok(id: &str) -> bool {
    let Some(first) = id.chars().next() else {
        return false;
    };
    id.len() <= 36
        && first.is_ascii_alphanumeric()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f+00:00")
        .to_string()
}

const COLUMN_KINDS: &[&str] = &[
    "string", "integer", "float", "boolean", "datetime", "email", "url", "ip", "enum", "point",
];

impl StandIn {
    /// Makes every column and index made so far available at once: a test that asserts what a
    /// `processing` column refuses sets a long `column_delay` and then settles, instead of
    /// sleeping past a short one (a loaded machine let the short one pass before the assertion).
    pub fn settle(&self) {
        *self.settled.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Whether a column or index made at `created` is available.
    fn ready(&self, created: Instant) -> bool {
        created.elapsed() >= self.column_delay
            || self
                .settled
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| created <= t)
    }

    pub fn new(project: &str, key: &str) -> StandIn {
        StandIn {
            project: project.to_string(),
            key: key.to_string(),
            column_delay: Duration::from_millis(200),
            settled: Mutex::new(None),
            limit_per_minute: 60_000,
            retry_after_secs: 1,
            max_bulk_rows: 100,
            failing_columns: Vec::new(),
            requests: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            upload_barrier: AtomicU64::new(0),
            arrivals: Mutex::new(Vec::new()),
            data: Mutex::new(Data::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, f: Faults) {
        self.lock().faults = f;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults
    }

    /// Sets the faults of the row writes of `table` (all zero: none).
    pub fn set_table_faults(&self, table: &str, f: Faults) {
        let mut data = self.lock();
        if f.is_none() {
            data.table_faults.remove(table);
        } else {
            data.table_faults.insert(table.to_string(), f);
        }
    }

    /// Sets (or with `None` removes) the fault of the writes of row or user `id`.
    pub fn set_row_fault(&self, id: &str, fault: Option<RowFault>) {
        let mut data = self.lock();
        match fault {
            Some(f) => data.row_faults.insert(id.to_string(), f),
            None => data.row_faults.remove(id),
        };
    }

    /// The error for a write of the rows or users `ids` when a fault of one of them is due (each
    /// faulted id present counts one of its `times`).
    pub(super) fn row_fault_hit<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        let mut data = self.lock();
        if data.row_faults.is_empty() {
            return Ok(());
        }
        let mut hit = None;
        for id in ids {
            let Some(f) = data.row_faults.get_mut(id) else {
                continue;
            };
            match &mut f.times {
                Some(0) => continue,
                Some(n) => *n -= 1,
                None => {}
            }
            hit = Some(f.status);
        }
        match hit {
            None => Ok(()),
            Some(500) => Err(ApiError::new(500, "general_server_error", "Server Error")),
            Some(status) => Err(ApiError::new(
                status,
                "general_service_disabled",
                "Service unavailable",
            )),
        }
    }

    /// The faults of the row writes of `table`, if any.
    pub fn table_faults(&self, table: &str) -> Option<Faults> {
        self.lock().table_faults.get(table).copied()
    }

    pub(super) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a request as it arrives (any route, any answer).
    pub(super) fn arrived(&self, method: &axum::http::Method) {
        if method != axum::http::Method::GET && method != axum::http::Method::HEAD {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let mut a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        if a.len() < 1_000_000 {
            a.push(std::time::Instant::now());
        }
    }

    /// Requests other than GET received (faulted and refused ones included).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Arrival times of the requests received so far.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The index keys of a table.
    pub fn table_indexes(&self, db: &str, table: &str) -> Vec<String> {
        self.with_table(db, table, |t| {
            Ok(t.indexes.iter().map(|i| i.key.clone()).collect())
        })
        .unwrap_or_default()
    }

    /// Requests received so far and their rate between the first and the last (for measuring a
    /// client's rate limit from the server's side).
    pub fn stats(&self) -> Value {
        let a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        let span = match (a.first(), a.last()) {
            (Some(f), Some(l)) => l.duration_since(*f).as_secs_f64(),
            _ => 0.0,
        };
        let rate = if span > 0.0 {
            (a.len() - 1) as f64 / span
        } else {
            0.0
        };
        let table_faults = self.lock().table_faults.clone();
        json!({
            "requests": a.len(),
            "writes": self.writes(),
            "span_seconds": span,
            "requests_per_second": rate,
            "faults": self.faults(),
            "table_faults": table_faults,
            "files_in_progress_max": self.files_in_progress_max(),
        })
    }

    /// Forgets the requests counted so far.
    pub fn reset_stats(&self) {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.writes.store(0, Ordering::Relaxed);
    }

    /// Every user, as the API shows them.
    pub fn users(&self) -> Vec<Value> {
        self.lock().users.values().cloned().collect()
    }

    /// Every row of a table, as the API shows them.
    pub fn rows(&self, db: &str, table: &str) -> Vec<Value> {
        self.with_table(db, table, |t| Ok(t.rows.values().cloned().collect()))
            .unwrap_or_default()
    }

    /// Authenticated requests served (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn database_json(d: &Database) -> Value {
        json!({ "$id": d.id, "name": d.name, "$createdAt": d.created_at, "$updatedAt": d.created_at, "enabled": true, "type": "tablesdb" })
    }

    pub fn create_database(&self, id: &str, name: &str) -> Result<Value, ApiError> {
        let mut data = self.lock();
        if data.databases.contains_key(id) {
            return Err(ApiError::new(
                409,
                "database_already_exists",
                "Database already exists",
            ));
        }
        let d = Database {
            id: id.into(),
            name: name.into(),
            created_at: now(),
            tables: BTreeMap::new(),
        };
        let out = Self::database_json(&d);
        data.databases.insert(id.into(), d);
        Ok(out)
    }

    /// `GET /tablesdb`: a page of the databases (`limit`, `offset`, `cursorAfter`).
    pub fn list_databases(&self, list: impl Into<ListQuery>) -> Result<Value, ApiError> {
        let data = self.lock();
        let items: Vec<Value> = data.databases.values().map(Self::database_json).collect();
        let (page, total) = page_of(items, &list.into(), &DATABASES)?;
        Ok(json!({ "total": total, "databases": page }))
    }

    /// `GET /tablesdb/{db}/tables`: a page of the database's tables.
    pub fn list_tables(&self, db: &str, list: impl Into<ListQuery>) -> Result<Value, ApiError> {
        self.list_tables_in(db, list, Api::TablesDb)
    }

    /// A page of the database's tables, or (`Api::Legacy`) collections.
    pub fn list_tables_in(
        &self,
        db: &str,
        list: impl Into<ListQuery>,
        api: Api,
    ) -> Result<Value, ApiError> {
        let data = self.lock();
        let d = data
            .databases
            .get(db)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?;
        let as_api = api.pick(
            std::convert::identity as fn(Value) -> Value,
            legacy::collection,
        );
        let items: Vec<Value> = d
            .tables
            .values()
            .map(|t| as_api(self.table_json(db, t)))
            .collect();
        let (page, total) = page_of(items, &list.into(), api.pick(&TABLES, &COLLECTIONS))?;
        Ok(list_json(total, api.pick("tables", "collections"), page))
    }

    pub fn get_database(&self, id: &str) -> Result<Value, ApiError> {
        let data = self.lock();
        data.databases
            .get(id)
            .map(Self::database_json)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))
    }

    fn column_json(&self, c: &Column) -> Value {
        let mut v = c.body.clone();
        let available = self.ready(c.created);
        v["key"] = json!(c.key);
        // As Appwrite answers: floats are `double`; formats mark the string kinds and datetimes.
        v["type"] = json!(match c.kind.as_str() {
            "email" | "url" | "ip" | "enum" => "string",
            "float" => "double",
            k => k,
        });
        if matches!(
            c.kind.as_str(),
            "email" | "url" | "ip" | "enum" | "datetime"
        ) {
            v["format"] = json!(c.kind);
        }
        let failed = available && self.failing_columns.contains(&c.key);
        v["status"] = json!(if failed {
            "failed"
        } else if available {
            "available"
        } else {
            "processing"
        });
        v["error"] = json!(if failed {
            "the column could not be created (injected failure)"
        } else {
            ""
        });
        v["$createdAt"] = json!(c.created_at);
        v["$updatedAt"] = json!(c.created_at);
        if v.get("required").is_none() {
            v["required"] = json!(false);
        }
        // Appwrite answers `array` on every column (the list's filters name it).
        if v.get("array").is_none() {
            v["array"] = json!(false);
        }
        if let Some(obj) = v.as_object_mut() {
            obj.remove("encrypt");
        }
        v
    }

    fn table_json(&self, db: &str, t: &Table) -> Value {
        json!({
            "$id": t.id, "$createdAt": t.created_at, "$updatedAt": t.created_at,
            "$permissions": t.permissions,
            "databaseId": db, "name": t.name, "enabled": true, "rowSecurity": t.row_security,
            "columns": t.columns.iter().map(|c| self.column_json(c)).collect::<Vec<_>>(),
            "indexes": t.indexes.iter().map(|i| self.index_json(i)).collect::<Vec<_>>(),
        })
    }

    fn index_json(&self, i: &Index) -> Value {
        let available = self.ready(i.created);
        json!({
            "$id": i.key, "$createdAt": i.created_at, "$updatedAt": i.created_at, "key": i.key,
            "type": i.kind,
            "status": if i.failed.is_some() { "failed" } else if available { "available" } else { "processing" },
            "error": i.failed.clone().unwrap_or_default(), "columns": i.columns, "lengths": i.lengths, "orders": i.orders,
        })
    }

    /// Creates an index (202, `processing` for a while, then `available`). Its columns must
    /// exist and be available.
    pub fn create_index(&self, db: &str, table: &str, body: &Value) -> Result<Value, ApiError> {
        let key = body
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "general_argument_invalid",
                    "Param \"key\" is not optional.",
                )
            })?
            .to_string();
        let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
        if !["key", "fulltext", "unique", "spatial"].contains(&kind) {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                "Invalid `type` param: Value must be one of (key, fulltext, unique, spatial)",
            ));
        }
        let strings = |k: &str| -> Vec<String> {
            body.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let columns = strings("columns");
        if columns.is_empty() {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                "Param \"columns\" is not optional.",
            ));
        }
        let index = self.with_table(db, table, |t| {
            if t.indexes.iter().any(|i| i.key == key) {
                return Err(ApiError::new(
                    409,
                    "index_already_exists",
                    "Index with the requested key already exists.",
                ));
            }
            for c in &columns {
                match t.columns.iter().find(|x| &x.key == c) {
                    None => {
                        return Err(ApiError::new(
                            400,
                            "column_unknown",
                            format!(
                                "Unknown column: {c}. Verify the column name or create the column."
                            ),
                        ));
                    }
                    Some(x) if !self.ready(x.created) => {
                        return Err(ApiError::new(
                            400,
                            "column_not_available",
                            "The requested column is not yet available. Please try again later.",
                        ));
                    }
                    Some(_) => {}
                }
            }
            let i = Index {
                key: key.clone(),
                kind: kind.to_string(),
                columns: columns.clone(),
                orders: strings("orders"),
                lengths: body
                    .get("lengths")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default(),
                created: Instant::now(),
                created_at: now(),
                failed: None,
            };
            let mut i = i;
            if i.kind == "unique" {
                // MariaDB refuses to build a unique index over rows that repeat a key.
                let mut seen = std::collections::HashSet::new();
                if t.rows
                    .values()
                    .filter_map(|r| unique_key(&i.columns, r))
                    .any(|k| !seen.insert(k))
                {
                    i.failed = Some(format!(
                        "Duplicate entry for unique index '{}': existing rows repeat a key",
                        i.key
                    ));
                }
            }
            let out = self.index_json(&i);
            t.indexes.push(i);
            t.unique = None;
            Ok(out)
        })?;
        Ok(index)
    }

    pub fn get_index(&self, db: &str, table: &str, key: &str) -> Result<Value, ApiError> {
        self.read_table(db, table, |t| {
            t.indexes
                .iter()
                .find(|i| i.key == key)
                .map(|i| self.index_json(i))
                .ok_or_else(|| ApiError::new(404, "index_not_found", "Index not found"))
        })
    }

    pub fn list_indexes(
        &self,
        db: &str,
        table: &str,
        list: impl Into<ListQuery>,
    ) -> Result<Value, ApiError> {
        self.list_indexes_in(db, table, list, Api::TablesDb)
    }

    /// A page of a table's indexes (`columnIndex`, or through `Api::Legacy` `index`).
    pub fn list_indexes_in(
        &self,
        db: &str,
        table: &str,
        list: impl Into<ListQuery>,
        api: Api,
    ) -> Result<Value, ApiError> {
        let list = list.into();
        let as_api = api.pick(std::convert::identity as fn(Value) -> Value, legacy::index);
        self.read_table(db, table, |t| {
            let items: Vec<Value> = t
                .indexes
                .iter()
                .map(|i| as_api(self.index_json(i)))
                .collect();
            let (page, total) = page_of(items, &list, api.pick(&INDEXES, &LEGACY_INDEXES))?;
            Ok(json!({ "total": total, "indexes": page }))
        })
    }

    /// Reads table `table` of `db` (404 `table_not_found` when either is missing).
    fn read_table<T>(
        &self,
        db: &str,
        table: &str,
        f: impl FnOnce(&Table) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let data = self.lock();
        let t = data
            .databases
            .get(db)
            .and_then(|d| d.tables.get(table))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "table_not_found",
                    "Table with the requested ID could not be found.",
                )
            })?;
        f(t)
    }

    fn with_table<T>(
        &self,
        db: &str,
        table: &str,
        f: impl FnOnce(&mut Table) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut data = self.lock();
        let d = data
            .databases
            .get_mut(db)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?;
        let t = d.tables.get_mut(table).ok_or_else(|| {
            ApiError::new(
                404,
                "table_not_found",
                "Table with the requested ID could not be found.",
            )
        })?;
        f(t)
    }

    pub fn create_table(&self, db: &str, id: &str, name: &str) -> Result<Value, ApiError> {
        let mut data = self.lock();
        let d = data
            .databases
            .get_mut(db)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?;
        if d.tables.contains_key(id) {
            return Err(ApiError::new(
                409,
                "table_already_exists",
                "A table with the requested ID already exists.",
            ));
        }
        let t = Table {
            id: id.into(),
            name: name.into(),
            created_at: now(),
            columns: Vec::new(),
            indexes: Vec::new(),
            rows: BTreeMap::new(),
            sequence: 0,
            permissions: Vec::new(),
            row_security: false,
            unique: None,
        };
        let out = self.table_json(db, &t);
        d.tables.insert(id.into(), t);
        Ok(out)
    }

    /// Sets a table's name, permissions and `rowSecurity` (`PUT …/tables/{tableId}`, and the
    /// optional fields of the create request): `permissions` absent keeps the current ones (as the
    /// spec says); `rowSecurity` absent is `false`, Appwrite's default for the parameter. A
    /// permission string that is not `action("role")` is refused (400).
    pub fn update_table(&self, db: &str, table: &str, body: &Value) -> Result<Value, ApiError> {
        let permissions = match body.get("permissions") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for p in items {
                    match p.as_str().filter(|p| permission_ok(p)) {
                        Some(p) => out.push(p.to_string()),
                        None => {
                            return Err(ApiError::new(
                                400,
                                "general_argument_invalid",
                                format!(
                                    "Invalid `permissions` param: Permission \"{p}\" is not allowed. Must be one of: read, create, update, delete, write with a role."
                                ),
                            ));
                        }
                    }
                }
                Some(out)
            }
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "general_argument_invalid",
                    "Invalid `permissions` param: Value must a valid array",
                ));
            }
        };
        let row_security = body
            .get("rowSecurity")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let name = body.get("name").and_then(Value::as_str).map(str::to_string);
        let mut data = self.lock();
        let t = data
            .databases
            .get_mut(db)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?
            .tables
            .get_mut(table)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "table_not_found",
                    "Table with the requested ID could not be found.",
                )
            })?;
        if let Some(n) = name {
            t.name = n;
        }
        if let Some(p) = permissions {
            t.permissions = p;
        }
        t.row_security = row_security;
        let t = &*t;
        Ok(self.table_json(db, t))
    }

    pub fn get_table(&self, db: &str, table: &str) -> Result<Value, ApiError> {
        let data = self.lock();
        let t = data
            .databases
            .get(db)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?
            .tables
            .get(table)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "table_not_found",
                    "Table with the requested ID could not be found.",
                )
            })?;
        Ok(self.table_json(db, t))
    }

    pub fn create_column(
        &self,
        db: &str,
        table: &str,
        kind: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        if !COLUMN_KINDS.contains(&kind) {
            return Err(ApiError::new(
                404,
                "general_route_not_found",
                "The requested route was not found.",
            ));
        }
        let key = body
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "general_argument_invalid",
                    "Param \"key\" is not optional.",
                )
            })?
            .to_string();
        // A column key follows the id rule (Appwrite's `Key` validator).
        if !id_ok(&key) {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                "Invalid `key` param: Parameter must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start with a special char",
            ));
        }
        if kind == "string" && body.get("size").and_then(Value::as_u64).is_none() {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                "Param \"size\" is not optional.",
            ));
        }
        if kind == "enum" && body.get("elements").and_then(Value::as_array).is_none() {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                "Param \"elements\" is not optional.",
            ));
        }
        self.with_table(db, table, |t| {
            // Keys are compared ignoring case (the database layer's column names are).
            if t.columns.iter().any(|c| c.key.eq_ignore_ascii_case(&key)) {
                return Err(ApiError::new(
                    409,
                    "column_already_exists",
                    "Column with the requested key already exists.",
                ));
            }
            let c = Column {
                key: key.clone(),
                kind: kind.to_string(),
                body: body.clone(),
                created: Instant::now(),
                created_at: now(),
            };
            t.columns.push(c);
            Ok(())
        })?;
        self.get_column(db, table, &key)
    }

    pub fn get_column(&self, db: &str, table: &str, key: &str) -> Result<Value, ApiError> {
        self.read_table(db, table, |t| {
            t.columns
                .iter()
                .find(|c| c.key == key)
                .map(|c| self.column_json(c))
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "column_not_found",
                        "Column with the requested ID could not be found.",
                    )
                })
        })
    }

    pub fn list_columns(
        &self,
        db: &str,
        table: &str,
        list: impl Into<ListQuery>,
    ) -> Result<Value, ApiError> {
        self.list_columns_in(db, table, list, Api::TablesDb)
    }

    /// A page of a table's columns, or (`Api::Legacy`) attributes: the models are alike.
    pub fn list_columns_in(
        &self,
        db: &str,
        table: &str,
        list: impl Into<ListQuery>,
        api: Api,
    ) -> Result<Value, ApiError> {
        let list = list.into();
        self.read_table(db, table, |t| {
            let cols: Vec<Value> = t.columns.iter().map(|c| self.column_json(c)).collect();
            let (page, total) = page_of(cols, &list, &COLUMNS)?;
            Ok(list_json(total, api.pick("columns", "attributes"), page))
        })
    }

    /// Checks row data against the table's columns (existence, availability, type, size).
    fn check_data(&self, t: &Table, data: &Value) -> Result<(), ApiError> {
        let obj = data.as_object().ok_or_else(|| {
            ApiError::new(
                400,
                "row_invalid_structure",
                "Invalid data: expected an object",
            )
        })?;
        let invalid = |m: String| {
            ApiError::new(
                400,
                "row_invalid_structure",
                format!("Invalid document structure: {m}"),
            )
        };
        for (k, v) in obj {
            if k.starts_with('$') {
                continue;
            }
            let c = t
                .columns
                .iter()
                .find(|c| &c.key == k)
                .ok_or_else(|| invalid(format!("Unknown attribute: \"{k}\"")))?;
            if !self.ready(c.created) {
                return Err(invalid(format!("Attribute \"{k}\" is not available yet")));
            }
            let array = c
                .body
                .get("array")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let items: Vec<&Value> = match (array, v) {
                (_, Value::Null) => continue,
                (true, Value::Array(a)) => a.iter().collect(),
                (true, _) => return Err(invalid(format!("Attribute \"{k}\" must be an array"))),
                (false, v) => vec![v],
            };
            for item in items {
                let fits = match c.kind.as_str() {
                    "string" | "email" | "url" | "ip" | "datetime" => match item.as_str() {
                        Some(s) if c.kind == "string" => {
                            let size = c
                                .body
                                .get("size")
                                .and_then(Value::as_u64)
                                .unwrap_or(u64::MAX);
                            (s.chars().count() as u64) <= size
                        }
                        Some(s) if c.kind == "email" => s.contains('@'),
                        Some(_) => true,
                        None => false,
                    },
                    "enum" => item.as_str().is_some_and(|s| {
                        c.body["elements"]
                            .as_array()
                            .is_some_and(|e| e.iter().any(|x| x == s))
                    }),
                    // Appwrite checks a number against the column's `min` / `max` (its range).
                    "integer" => (item.is_i64() || item.is_u64()) && in_range(&c.body, item),
                    "float" => item.is_number() && in_range(&c.body, item),
                    "boolean" => item.is_boolean(),
                    // `[longitude, latitude]`, each within its range.
                    "point" => match item.as_array().map(Vec::as_slice) {
                        Some([lon, lat]) => {
                            lon.as_f64().zip(lat.as_f64()).is_some_and(|(lon, lat)| {
                                (-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)
                            })
                        }
                        _ => false,
                    },
                    _ => true,
                };
                if !fits {
                    return Err(invalid(format!(
                        "Attribute \"{k}\" has invalid type or size"
                    )));
                }
            }
        }
        for c in &t.columns {
            if c.body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                && obj.get(&c.key).is_none_or(Value::is_null)
            {
                return Err(invalid(format!("Missing required attribute \"{}\"", c.key)));
            }
        }
        Ok(())
    }

    fn row_json(
        db: &str,
        table: &str,
        id: &str,
        seq: u64,
        created: &str,
        updated: &str,
        data: &Value,
    ) -> Value {
        let mut v = data.clone();
        if !v.is_object() {
            v = json!({});
        }
        v["$id"] = json!(id);
        v["$sequence"] = json!(seq);
        v["$tableId"] = json!(table);
        v["$databaseId"] = json!(db);
        v["$createdAt"] = json!(created);
        v["$updatedAt"] = json!(updated);
        v["$permissions"] = json!([]);
        v
    }

    fn put_row(
        t: &mut Table,
        db: &str,
        id: &str,
        data: &Value,
        upsert: bool,
    ) -> Result<Value, ApiError> {
        let stamp = now();
        let (seq, created) = match t.rows.get(&uid(id)) {
            Some(existing) if upsert => (
                existing["$sequence"].as_u64().unwrap_or(0),
                existing["$createdAt"]
                    .as_str()
                    .unwrap_or(&stamp)
                    .to_string(),
            ),
            Some(_) => {
                return Err(ApiError::new(
                    409,
                    "row_already_exists",
                    "Row with the requested ID already exists.",
                ));
            }
            None => {
                t.sequence += 1;
                (t.sequence, stamp.clone())
            }
        };
        // An API key may set the row's timestamps (ISO 8601 text in `data`; Appwrite's
        // "timestamp overrides", for migrations); otherwise the server sets them.
        let given = |k: &str| {
            data.get(k)
                .and_then(Value::as_str)
                .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
                .map(str::to_string)
        };
        if let Some(e) = unique_conflict(t, id, data) {
            return Err(e);
        }
        // The row's keys move from its older values to these.
        if let Some(maps) = t.unique.as_mut() {
            let me = uid(id);
            for i in &t.indexes {
                let Some(map) = maps.get_mut(&i.key) else {
                    continue;
                };
                if let Some(old) = t.rows.get(&me).and_then(|r| unique_key(&i.columns, r))
                    && map.get(&old) == Some(&me)
                {
                    map.remove(&old);
                }
                if let Some(new) = unique_key(&i.columns, data) {
                    map.insert(new, me.clone());
                }
            }
        }
        let created = given("$createdAt").unwrap_or(created);
        let updated = given("$updatedAt").unwrap_or(stamp);
        // The row's permissions: those given (`$permissions` of a bulk row, the `permissions`
        // param of one), else an existing row's, else none.
        let permissions = data
            .get("$permissions")
            .filter(|p| p.is_array())
            .or_else(|| t.rows.get(&uid(id)).and_then(|r| r.get("$permissions")))
            .cloned()
            .unwrap_or(json!([]));
        let mut clean = data.clone();
        if let Some(o) = clean.as_object_mut() {
            o.retain(|k, _| !k.starts_with('$'));
        }
        let mut row = Self::row_json(db, &t.id, id, seq, &created, &updated, &clean);
        row["$permissions"] = permissions;
        t.rows.insert(uid(id), row.clone());
        Ok(row)
    }

    /// One row: created (409 when it exists) or, with `upsert`, created or replaced.
    pub fn write_row(
        &self,
        db: &str,
        table: &str,
        id: &str,
        data: &Value,
        upsert: bool,
    ) -> Result<Value, ApiError> {
        self.row_fault_hit([id])?;
        self.with_table(db, table, |t| {
            self.check_data(t, data)?;
            Self::put_row(t, db, id, data, upsert)
        })
    }

    /// `PATCH …/rows/{id}`: sets the columns in `data` of an existing row, keeping the others;
    /// 404 `row_not_found` when there is no such row (an update never creates one).
    pub fn update_row(
        &self,
        db: &str,
        table: &str,
        id: &str,
        data: &Value,
    ) -> Result<Value, ApiError> {
        self.row_fault_hit([id])?;
        self.with_table(db, table, |t| {
            let Some(existing) = t.rows.get(&uid(id)) else {
                return Err(ApiError::new(
                    404,
                    "row_not_found",
                    "Row with the requested ID could not be found.",
                ));
            };
            let mut merged = existing.clone();
            if let Some(o) = merged.as_object_mut() {
                o.retain(|k, _| !k.starts_with('$'));
                for (k, v) in data.as_object().into_iter().flatten() {
                    if !k.starts_with('$') || k == "$permissions" {
                        o.insert(k.clone(), v.clone());
                    }
                }
            }
            self.check_data(t, &merged)?;
            Self::put_row(t, db, id, &merged, true)
        })
    }

    /// Bulk create (`upsert` false) or upsert: at most `max_bulk_rows`, all or nothing.
    pub fn write_rows(
        &self,
        db: &str,
        table: &str,
        rows: &Value,
        upsert: bool,
    ) -> Result<Value, ApiError> {
        let rows = rows.as_array().ok_or_else(|| {
            ApiError::new(
                400,
                "general_argument_invalid",
                "Param \"rows\" must be an array",
            )
        })?;
        if rows.is_empty() || rows.len() > self.max_bulk_rows {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                format!(
                    "Invalid `rows` param: Value must be a valid array no longer than {} items",
                    self.max_bulk_rows
                ),
            ));
        }
        self.row_fault_hit(rows.iter().filter_map(|r| r["$id"].as_str()))?;
        self.with_table(db, table, |t| {
            let mut ids = Vec::with_capacity(rows.len());
            let mut seen = std::collections::HashSet::new();
            for r in rows {
                let id = match r.get("$id").and_then(Value::as_str) {
                    Some(id) => check_id(id)?,
                    None => check_id("unique()")?,
                };
                self.check_data(t, r)?;
                if !upsert && (t.rows.contains_key(&uid(&id)) || !seen.insert(uid(&id))) {
                    return Err(ApiError::new(
                        409,
                        "row_already_exists",
                        "Row with the requested ID already exists.",
                    ));
                }
                ids.push(id);
            }
            // All or nothing: a row a unique index refuses leaves the batch unwritten — the
            // rows it replaced (or their absence) are put back, as a transaction rolls back.
            let sequence = t.sequence;
            let mut replaced: Vec<(String, Option<Value>)> = Vec::with_capacity(rows.len());
            let mut out = Vec::with_capacity(rows.len());
            for (id, r) in ids.iter().zip(rows) {
                let key = uid(id);
                let old = t.rows.get(&key).cloned();
                match Self::put_row(t, db, id, r, upsert) {
                    Ok(row) => {
                        replaced.push((key, old));
                        out.push(row);
                    }
                    Err(e) => {
                        for (key, old) in replaced.into_iter().rev() {
                            match old {
                                Some(v) => t.rows.insert(key, v),
                                None => t.rows.remove(&key),
                            };
                        }
                        t.sequence = sequence;
                        t.unique = None;
                        return Err(e);
                    }
                }
            }
            Ok(json!({ "total": out.len(), "rows": out }))
        })
    }

    pub fn get_row(&self, db: &str, table: &str, id: &str) -> Result<Value, ApiError> {
        self.with_table(db, table, |t| {
            t.rows.get(&uid(id)).cloned().ok_or_else(|| {
                ApiError::new(
                    404,
                    "row_not_found",
                    "Row with the requested ID could not be found.",
                )
            })
        })
    }

    pub fn delete_row(&self, db: &str, table: &str, id: &str) -> Result<(), ApiError> {
        self.with_table(db, table, |t| {
            t.unique = None;
            t.rows.remove(&uid(id)).map(|_| ()).ok_or_else(|| {
                ApiError::new(
                    404,
                    "row_not_found",
                    "Row with the requested ID could not be found.",
                )
            })
        })
    }

    /// Bulk delete: every row matching `queries` (no page limit unless one is given); answers the
    /// deleted rows.
    pub fn delete_rows(&self, db: &str, table: &str, queries: &[Value]) -> Result<Value, ApiError> {
        let mut q = vec![json!({ "method": "limit", "values": [u32::MAX] })];
        q.extend_from_slice(queries);
        self.with_table(db, table, |t| {
            let (rows, _) = filter(&t.rows, &q, false)?;
            t.unique = None;
            for r in &rows {
                if let Some(id) = r["$id"].as_str() {
                    t.rows.remove(&uid(id));
                }
            }
            Ok(json!({ "total": rows.len(), "rows": rows }))
        })
    }

    /// Lists rows: `equal`, `limit` (default 25), `cursorAfter`, `orderAsc` / `orderDesc` (any column);
    /// `total` counts matches, capped at 5000 as Appwrite does.
    pub fn list_rows(
        &self,
        db: &str,
        table: &str,
        list: impl Into<ListQuery>,
    ) -> Result<Value, ApiError> {
        self.list_rows_in(db, table, list, Api::TablesDb)
    }

    /// A page of a table's rows, or (`Api::Legacy`) documents.
    pub fn list_rows_in(
        &self,
        db: &str,
        table: &str,
        list: impl Into<ListQuery>,
        api: Api,
    ) -> Result<Value, ApiError> {
        let list = list.into();
        let as_api = api.pick(
            std::convert::identity as fn(Value) -> Value,
            legacy::document,
        );
        self.with_table(db, table, |t| {
            let (rows, total) = filter(&t.rows, &list.queries, list.total)?;
            let rows = rows.into_iter().map(as_api).collect();
            Ok(list_json(total, api.pick("rows", "documents"), rows))
        })
    }

    pub fn create_user(
        &self,
        id: &str,
        email: &str,
        hash: &str,
        algo: &str,
        name: &str,
        options: serde_json::Map<String, Value>,
    ) -> Result<Value, ApiError> {
        self.row_fault_hit([id])?;
        // Appwrite keeps an email with its ASCII letters in lower case (`strtolower`).
        let email = email.to_ascii_lowercase();
        let email = email.as_str();
        let mut data = self.lock();
        if data.users.contains_key(&uid(id)) || data.users.values().any(|u| u["email"] == email) {
            return Err(ApiError::new(
                409,
                "user_already_exists",
                "A user with the same id, email, or phone already exists in this project.",
            ));
        }
        let stamp = now();
        let user = json!({
            "$id": id, "$createdAt": stamp, "$updatedAt": stamp, "name": name, "password": hash,
            "hash": algo, "hashOptions": hash_options(algo, options), "registration": stamp, "status": true,
            "labels": [], "passwordUpdate": stamp, "email": email, "phone": "", "emailVerification": false,
            "phoneVerification": false, "mfa": false, "prefs": {}, "targets": [], "accessedAt": "",
        });
        data.users.insert(uid(id), user.clone());
        Ok(user)
    }

    pub fn delete_user(&self, id: &str) -> Result<(), ApiError> {
        self.lock()
            .users
            .remove(&uid(id))
            .map(|_| ())
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "user_not_found",
                    "User with the requested ID could not be found.",
                )
            })
    }

    /// Sets a user's phone; another user holding the number is a 409.
    pub fn update_phone(&self, id: &str, number: &str) -> Result<Value, ApiError> {
        {
            let data = self.lock();
            if data
                .users
                .values()
                .any(|u| u["phone"] == number && u["$id"] != id)
            {
                return Err(ApiError::new(
                    409,
                    "user_phone_already_exists",
                    "A user with the same phone number already exists in the current project.",
                ));
            }
        }
        self.update_user(id, |u| u["phone"] = json!(number))
    }

    pub fn delete_table(&self, db: &str, table: &str) -> Result<(), ApiError> {
        let mut data = self.lock();
        let d = data
            .databases
            .get_mut(db)
            .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?;
        d.tables.remove(table).map(|_| ()).ok_or_else(|| {
            ApiError::new(
                404,
                "table_not_found",
                "Table with the requested ID could not be found.",
            )
        })
    }

    pub fn get_user(&self, id: &str) -> Result<Value, ApiError> {
        self.lock().users.get(&uid(id)).cloned().ok_or_else(|| {
            ApiError::new(
                404,
                "user_not_found",
                "User with the requested ID could not be found.",
            )
        })
    }

    pub fn update_user(&self, id: &str, f: impl FnOnce(&mut Value)) -> Result<Value, ApiError> {
        let mut data = self.lock();
        let u = data.users.get_mut(&uid(id)).ok_or_else(|| {
            ApiError::new(
                404,
                "user_not_found",
                "User with the requested ID could not be found.",
            )
        })?;
        f(u);
        u["$updatedAt"] = json!(now());
        Ok(u.clone())
    }

    pub fn list_users(&self, list: impl Into<ListQuery>) -> Value {
        let list = list.into();
        let data = self.lock();
        // The spec's search over users: id, email, phone and name.
        let found: BTreeMap<String, Value>;
        let users = if list.search.trim().is_empty() {
            &data.users
        } else {
            found = data
                .users
                .iter()
                .filter(|(_, u)| searched(&list.search, u, &["$id", "email", "phone", "name"]))
                .map(|(k, u)| (k.clone(), u.clone()))
                .collect();
            &found
        };
        let (users, total) = filter(users, &list.queries, list.total).unwrap_or_default();
        json!({ "total": total, "users": users })
    }

    pub fn create_bucket(&self, id: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
        let mut data = self.lock();
        if data.buckets.contains_key(id) {
            return Err(ApiError::new(
                409,
                "storage_bucket_already_exists",
                "A storage bucket with the requested ID already exists.",
            ));
        }
        let stamp = now();
        let j = json!({
            "$id": id, "$createdAt": stamp, "$updatedAt": stamp, "$permissions": body.get("permissions").cloned().unwrap_or(json!([])),
            "fileSecurity": body.get("fileSecurity").and_then(Value::as_bool).unwrap_or(false),
            "name": name, "enabled": body.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            "maximumFileSize": body.get("maximumFileSize").and_then(Value::as_u64).unwrap_or(30_000_000),
            "allowedFileExtensions": body.get("allowedFileExtensions").cloned().unwrap_or(json!([])),
            "compression": body.get("compression").and_then(Value::as_str).unwrap_or("none"),
            "encryption": body.get("encryption").and_then(Value::as_bool).unwrap_or(true),
            "antivirus": body.get("antivirus").and_then(Value::as_bool).unwrap_or(true),
            "transformations": false,
        });
        data.buckets.insert(
            id.into(),
            super::storage::Bucket {
                json: j.clone(),
                files: BTreeMap::new(),
            },
        );
        Ok(j)
    }

    pub fn get_bucket(&self, id: &str) -> Result<Value, ApiError> {
        self.lock()
            .buckets
            .get(id)
            .map(|b| b.json.clone())
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "storage_bucket_not_found",
                    "Storage bucket with the requested ID could not be found.",
                )
            })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        bucket: &str,
        file: &str,
        name: &str,
        mime: &str,
        content: Vec<u8>,
        range: Option<(u64, u64, u64)>,
        permissions: &[String],
    ) -> Result<(u16, Value), ApiError> {
        let permissions = super::storage::file_permissions(permissions)?;
        let mut data = self.lock();
        let b = data.buckets.get_mut(bucket).ok_or_else(|| {
            ApiError::new(
                404,
                "storage_bucket_not_found",
                "Storage bucket with the requested ID could not be found.",
            )
        })?;
        let answer = super::storage::upload(
            bucket,
            b,
            file,
            name,
            mime,
            content,
            range,
            permissions,
            now(),
        );
        let in_progress = data
            .buckets
            .values()
            .flat_map(|b| b.files.values())
            .filter(|f| f.content.is_none())
            .count() as u64;
        data.files_in_progress_max = data.files_in_progress_max.max(in_progress);
        answer
    }

    /// The most chunked uploads that were in progress at once (some of their chunks in, not
    /// all) since the stand-in started or [`StandIn::reset_files_in_progress`].
    pub fn files_in_progress_max(&self) -> u64 {
        self.lock().files_in_progress_max
    }

    /// Holds the answer to a chunk that leaves its file in progress until `n` chunked uploads
    /// have been in progress at once (or 10 s passed): a client that uploads files side by side
    /// gets there, one that uploads them one at a time cannot (0: answer at once).
    pub fn set_upload_barrier(&self, n: u64) {
        self.upload_barrier.store(n, Ordering::Relaxed);
    }

    /// The barrier [`StandIn::set_upload_barrier`] set.
    pub fn upload_barrier(&self) -> u64 {
        self.upload_barrier.load(Ordering::Relaxed)
    }

    /// Forgets the uploads counted by [`StandIn::files_in_progress_max`].
    pub fn reset_files_in_progress(&self) {
        self.lock().files_in_progress_max = 0;
    }

    pub fn get_file(&self, bucket: &str, file: &str) -> Result<Value, ApiError> {
        let data = self.lock();
        data.buckets
            .get(bucket)
            .and_then(|b| b.files.get(file))
            .map(|f| f.json(bucket, file))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "storage_file_not_found",
                    "The requested file could not be found.",
                )
            })
    }

    /// `GET /storage/buckets/{bucket}/files`: the files as the spec lists them (`files`, `total`).
    pub fn list_files(&self, bucket: &str, list: impl Into<ListQuery>) -> Result<Value, ApiError> {
        let list = list.into();
        let data = self.lock();
        let b = data.buckets.get(bucket).ok_or_else(|| {
            ApiError::new(
                404,
                "storage_bucket_not_found",
                "Storage bucket with the requested ID could not be found.",
            )
        })?;
        let files: BTreeMap<String, Value> = b
            .files
            .iter()
            .map(|(id, f)| (id.clone(), f.json(bucket, id)))
            .collect();
        let (files, total) = filter(&files, &list.queries, list.total).unwrap_or_default();
        Ok(json!({ "total": total, "files": files }))
    }

    /// `PUT /storage/buckets/{bucket}/files/{file} {name, permissions}`: a file's name and
    /// permissions (each left as it is when not given).
    pub fn update_file(&self, bucket: &str, file: &str, body: &Value) -> Result<Value, ApiError> {
        let permissions = match body.get("permissions") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => {
                let given: Vec<String> = a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        ApiError::new(
                            400,
                            "general_argument_invalid",
                            "Invalid `permissions` param: Value must a valid array of strings.",
                        )
                    })?;
                Some(super::storage::file_permissions(&given)?)
            }
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "general_argument_invalid",
                    "Invalid `permissions` param: Value must a valid array of strings.",
                ));
            }
        };
        let mut data = self.lock();
        let f = data
            .buckets
            .get_mut(bucket)
            .and_then(|b| b.files.get_mut(file))
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "storage_file_not_found",
                    "The requested file could not be found.",
                )
            })?;
        if let Some(name) = body.get("name").and_then(Value::as_str) {
            f.name = name.to_string();
        }
        if let Some(p) = permissions {
            f.permissions = p;
        }
        Ok(f.json(bucket, file))
    }

    /// `DELETE /storage/buckets/{bucket}/files/{file}` (a partial upload too).
    pub fn delete_file(&self, bucket: &str, file: &str) -> Result<(), ApiError> {
        let mut data = self.lock();
        data.buckets
            .get_mut(bucket)
            .and_then(|b| b.files.remove(file))
            .map(|_| ())
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "storage_file_not_found",
                    "The requested file could not be found.",
                )
            })
    }

    /// The bucket's file ids (for tests).
    pub fn file_ids(&self, bucket: &str) -> Vec<String> {
        self.lock()
            .buckets
            .get(bucket)
            .map(|b| b.files.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn file_content(&self, bucket: &str, file: &str) -> Result<Vec<u8>, ApiError> {
        let data = self.lock();
        data.buckets
            .get(bucket)
            .and_then(|b| b.files.get(file))
            .and_then(|f| f.content.clone())
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "storage_file_not_found",
                    "The requested file could not be found.",
                )
            })
    }

    /// `DELETE …/columns/{key}`: removes a column and its values from every row; the indexes
    /// lose it (an index left without columns goes).
    pub fn delete_column(&self, db: &str, table: &str, key: &str) -> Result<(), ApiError> {
        self.with_table(db, table, |t| {
            let Some(at) = t.columns.iter().position(|c| c.key == key) else {
                return Err(ApiError::new(
                    404,
                    "column_not_found",
                    "Column with the requested ID could not be found.",
                ));
            };
            t.columns.remove(at);
            t.unique = None;
            for row in t.rows.values_mut() {
                if let Some(o) = row.as_object_mut() {
                    o.remove(key);
                }
            }
            for i in &mut t.indexes {
                if let Some(p) = i.columns.iter().position(|c| c == key) {
                    i.columns.remove(p);
                    if p < i.orders.len() {
                        i.orders.remove(p);
                    }
                    if p < i.lengths.len() {
                        i.lengths.remove(p);
                    }
                }
            }
            t.indexes.retain(|i| !i.columns.is_empty());
            Ok(())
        })
    }

    /// `PATCH …/columns/{type}/{key}`: updates a column of that type (`required` and `default`
    /// are required parameters; `size`, `elements`, `min`, `max` optional), renaming it when
    /// `newKey` is given (in every row and index too).
    pub fn update_column(
        &self,
        db: &str,
        table: &str,
        kind: &str,
        key: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        if !COLUMN_KINDS.contains(&kind) {
            return Err(ApiError::new(
                404,
                "general_route_not_found",
                "The requested route was not found.",
            ));
        }
        for p in ["required", "default"] {
            if body.get(p).is_none() {
                return Err(ApiError::new(
                    400,
                    "general_argument_invalid",
                    format!("Param \"{p}\" is not optional."),
                ));
            }
        }
        let required = body["required"].as_bool().ok_or_else(|| {
            ApiError::new(
                400,
                "general_argument_invalid",
                "Invalid `required` param: Value must be a valid boolean",
            )
        })?;
        if required && !body["default"].is_null() {
            return Err(ApiError::new(
                400,
                "column_default_unsupported",
                "Cannot set default value for required column",
            ));
        }
        let new_key = match body.get("newKey") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(check_id(k)?),
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "general_argument_invalid",
                    "Invalid `newKey` param: Value must be a valid string",
                ));
            }
        };
        let final_key = self.with_table(db, table, |t| {
            let Some(at) = t.columns.iter().position(|c| c.key == key) else {
                return Err(ApiError::new(
                    404,
                    "column_not_found",
                    "Column with the requested ID could not be found.",
                ));
            };
            if t.columns[at].kind != kind {
                return Err(ApiError::new(
                    400,
                    "column_type_invalid",
                    format!("Column {key} is not of type {kind}"),
                ));
            }
            if let Some(k) = &new_key
                && k != key
                && t.columns.iter().any(|c| &c.key == k)
            {
                return Err(ApiError::new(
                    409,
                    "column_already_exists",
                    "Column with the requested key already exists.",
                ));
            }
            let c = &mut t.columns[at];
            c.body["required"] = json!(required);
            c.body["default"] = body["default"].clone();
            for p in ["size", "elements", "min", "max"] {
                if let Some(v) = body.get(p).filter(|v| !v.is_null()) {
                    c.body[p] = v.clone();
                }
            }
            let Some(new_key) = new_key.filter(|k| k != key) else {
                return Ok(key.to_string());
            };
            c.key = new_key.clone();
            c.body["key"] = json!(new_key);
            t.unique = None;
            for row in t.rows.values_mut() {
                if let Some(o) = row.as_object_mut()
                    && let Some(v) = o.remove(key)
                {
                    o.insert(new_key.clone(), v);
                }
            }
            for i in &mut t.indexes {
                for c in &mut i.columns {
                    if c == key {
                        *c = new_key.clone();
                    }
                }
            }
            Ok(new_key)
        })?;
        self.get_column(db, table, &final_key)
    }

    /// `DELETE …/indexes/{key}`.
    pub fn delete_index(&self, db: &str, table: &str, key: &str) -> Result<(), ApiError> {
        self.with_table(db, table, |t| {
            let before = t.indexes.len();
            t.indexes.retain(|i| i.key != key);
            t.unique = None;
            if t.indexes.len() == before {
                return Err(ApiError::new(404, "index_not_found", "Index not found"));
            }
            Ok(())
        })
    }

    /// `POST /tablesdb/transactions {ttl}`: a pending transaction (201).
    pub fn create_transaction(&self, ttl: u64) -> Result<Value, ApiError> {
        if !(60..=3600).contains(&ttl) {
            return Err(ApiError::new(
                400,
                "general_argument_invalid",
                "Invalid `ttl` param: Value must be a valid range between 60 and 3,600",
            ));
        }
        let id = format!("{:x}", fastrand::u64(..));
        let stamp = now();
        let expires = (chrono::Utc::now() + chrono::Duration::seconds(ttl as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        let t = json!({
            "$id": id, "$createdAt": stamp, "$updatedAt": stamp, "status": "pending",
            "operations": 0, "expiresAt": expires,
        });
        self.lock().transactions.insert(id, (t.clone(), Vec::new()));
        Ok(t)
    }

    fn transaction_not_found() -> ApiError {
        ApiError::new(
            404,
            "transaction_not_found",
            "Transaction with the requested ID could not be found.",
        )
    }

    pub fn get_transaction(&self, id: &str) -> Result<Value, ApiError> {
        self.lock()
            .transactions
            .get(id)
            .map(|(t, _)| t.clone())
            .ok_or_else(Self::transaction_not_found)
    }

    /// Every transaction's model, in id order.
    pub fn transactions(&self) -> Vec<Value> {
        self.lock()
            .transactions
            .values()
            .map(|(t, _)| t.clone())
            .collect()
    }

    pub fn delete_transaction(&self, id: &str) -> Result<(), ApiError> {
        self.lock()
            .transactions
            .remove(id)
            .map(|_| ())
            .ok_or_else(Self::transaction_not_found)
    }

    /// `POST /tablesdb/transactions/{id}/operations {operations}`: stages row operations
    /// (`action` create, update, upsert or delete, with `databaseId`, `tableId`, `rowId`,
    /// `data`) in a pending transaction.
    pub fn stage_operations(&self, id: &str, operations: &[Value]) -> Result<Value, ApiError> {
        for op in operations {
            let action = op["action"].as_str().unwrap_or("");
            let named = ["databaseId", "tableId", "rowId"]
                .iter()
                .all(|k| op[*k].as_str().is_some_and(|v| !v.is_empty()));
            if !["create", "update", "upsert", "delete"].contains(&action) || !named {
                return Err(ApiError::new(
                    400,
                    "general_argument_invalid",
                    "Invalid `operations` param: each needs an action (create, update, upsert, delete), databaseId, tableId and rowId",
                ));
            }
        }
        let mut data = self.lock();
        let (t, staged) = data
            .transactions
            .get_mut(id)
            .ok_or_else(Self::transaction_not_found)?;
        if t["status"] != "pending" {
            return Err(ApiError::new(
                400,
                "transaction_not_ready",
                "The transaction is not pending.",
            ));
        }
        staged.extend(operations.iter().cloned());
        t["operations"] = json!(staged.len());
        t["$updatedAt"] = json!(now());
        Ok(t.clone())
    }

    /// `PATCH /tablesdb/transactions/{id} {commit | rollback}`: a commit applies every staged
    /// operation or, when one fails, none (the transaction is then `failed` and the error
    /// answered); a rollback drops them.
    pub fn finish_transaction(&self, id: &str, commit: bool) -> Result<Value, ApiError> {
        // A fault on one of its rows fails the commit (checked before the data is locked).
        if commit {
            let staged = self
                .lock()
                .transactions
                .get(id)
                .map(|(_, ops)| ops.clone())
                .unwrap_or_default();
            let ids = staged.iter().filter_map(|op| op["rowId"].as_str());
            if let Err(e) = self.row_fault_hit(ids) {
                if let Some((t, _)) = self.lock().transactions.get_mut(id) {
                    t["status"] = json!("failed");
                }
                return Err(e);
            }
        }
        let mut data = self.lock();
        let Some((t, staged)) = data.transactions.get(id).cloned() else {
            return Err(Self::transaction_not_found());
        };
        if t["status"] != "pending" {
            return Err(ApiError::new(
                400,
                "transaction_not_ready",
                "The transaction is not pending.",
            ));
        }
        let status = if commit {
            let before = data.databases.clone();
            match self.apply_staged(&mut data, &staged) {
                Ok(()) => "committed",
                Err(e) => {
                    data.databases = before;
                    if let Some((t, _)) = data.transactions.get_mut(id) {
                        t["status"] = json!("failed");
                    }
                    return Err(e);
                }
            }
        } else {
            "rolled_back"
        };
        let (t, _) = data
            .transactions
            .get_mut(id)
            .ok_or_else(Self::transaction_not_found)?;
        t["status"] = json!(status);
        t["$updatedAt"] = json!(now());
        Ok(t.clone())
    }

    fn apply_staged(&self, data: &mut Data, staged: &[Value]) -> Result<(), ApiError> {
        for op in staged {
            let (db, table, row) = (
                op["databaseId"].as_str().unwrap_or(""),
                op["tableId"].as_str().unwrap_or(""),
                op["rowId"].as_str().unwrap_or(""),
            );
            let t = data
                .databases
                .get_mut(db)
                .ok_or_else(|| ApiError::new(404, "database_not_found", "Database not found"))?
                .tables
                .get_mut(table)
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "table_not_found",
                        "Table with the requested ID could not be found.",
                    )
                })?;
            t.unique = None;
            let given = op.get("data").cloned().unwrap_or(json!({}));
            match op["action"].as_str().unwrap_or("") {
                "delete" => {
                    t.rows.remove(&uid(row)).ok_or_else(|| {
                        ApiError::new(
                            404,
                            "row_not_found",
                            "Row with the requested ID could not be found.",
                        )
                    })?;
                }
                "update" => {
                    let Some(existing) = t.rows.get(&uid(row)) else {
                        return Err(ApiError::new(
                            404,
                            "row_not_found",
                            "Row with the requested ID could not be found.",
                        ));
                    };
                    let mut merged = existing.clone();
                    if let Some(o) = merged.as_object_mut() {
                        o.retain(|k, _| !k.starts_with('$'));
                        for (k, v) in given.as_object().into_iter().flatten() {
                            if !k.starts_with('$') {
                                o.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    self.check_data(t, &merged)?;
                    Self::put_row(t, db, row, &merged, true)?;
                }
                action => {
                    self.check_data(t, &given)?;
                    Self::put_row(t, db, row, &given, action == "upsert")?;
                }
            }
        }
        Ok(())
    }

    /// How many rows a table holds (for tests).
    pub fn row_count(&self, db: &str, table: &str) -> usize {
        self.with_table(db, table, |t| Ok(t.rows.len()))
            .unwrap_or(0)
    }
}

/// The `hashOptions` of a user imported with `algo` and the request's `password*` options.
fn hash_options(algo: &str, options: serde_json::Map<String, Value>) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("type".into(), json!(algo));
    for (k, v) in options {
        // passwordSalt → salt, passwordCpu → costCpu … as Appwrite names them.
        let name = match k.as_str() {
            "passwordSalt" => "salt",
            "passwordSaltSeparator" => "saltSeparator",
            "passwordSignerKey" => "signerKey",
            "passwordCpu" => "costCpu",
            "passwordMemory" => "costMemory",
            "passwordParallel" => "costParallel",
            "passwordLength" => "length",
            "passwordVersion" => "version",
            other => other,
        };
        o.insert(name.into(), v);
    }
    Value::Object(o)
}

/// A plausible email address: one `@`, text on both sides, a dot in the domain.
/// Whether `p` is a permission string as Appwrite takes them: `action("role")`, the action one of
/// read, create, update, delete, write, and a role any, guests, users (`users/verified`), or
/// `user:`, `team:`, `member:`, `label:` with an id.
pub fn permission_ok(p: &str) -> bool {
    let Some((action, rest)) = p.split_once("(\"") else {
        return false;
    };
    let Some(role) = rest.strip_suffix("\")") else {
        return false;
    };
    if !["read", "create", "update", "delete", "write"].contains(&action) {
        return false;
    }
    let (kind, id) = role.split_once(':').unwrap_or((role, ""));
    let (kind, _dimension) = kind.split_once('/').unwrap_or((kind, ""));
    match kind {
        "any" | "guests" => id.is_empty(),
        "users" => id.is_empty(),
        "user" | "team" | "member" | "label" => {
            let (id, _) = id.split_once('/').unwrap_or((id, ""));
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }
        _ => false,
    }
}

/// Whether number `v` lies within the column's `min` and `max` (either may be absent).
fn in_range(column: &Value, v: &Value) -> bool {
    // Integers compare exactly (an f64 rounds values past 2^53).
    let cmp = |bound: &Value| -> Option<std::cmp::Ordering> {
        match (v.as_i64(), bound.as_i64()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => v.as_f64()?.partial_cmp(&bound.as_f64()?),
        }
    };
    let below = column
        .get("min")
        .filter(|b| b.is_number())
        .is_some_and(|b| cmp(b) == Some(std::cmp::Ordering::Less));
    let above = column
        .get("max")
        .filter(|b| b.is_number())
        .is_some_and(|b| cmp(b) == Some(std::cmp::Ordering::Greater));
    !below && !above
}

pub fn email_ok(email: &str) -> bool {
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// A row's key in a unique index over `columns`, as MariaDB compares it: none when a column is
/// null or missing (a unique index holds any number of NULLs), strings as its case- and
/// accent-insensitive PAD SPACE collations do (`Ä` = `a`, `a ` = `a`; their finer points —
/// ligatures, contractions — are not modelled), numbers by value.
fn unique_key(columns: &[String], row: &Value) -> Option<Vec<String>> {
    columns
        .iter()
        .map(|c| match row.get(c) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(format!("s:{}", collated(s))),
            Some(Value::Number(n)) => Some(match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => format!("n:{i}"),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    format!("n:{}", f as i64)
                }
                _ => format!("n:{n}"),
            }),
            Some(other) => Some(other.to_string()),
        })
        .collect()
}

/// Text as a case- and accent-insensitive PAD SPACE collation compares it: trailing spaces
/// dropped, letters without their accents (canonical decomposition, combining marks dropped),
/// in lower case.
fn collated(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    s.trim_end_matches(' ')
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The 409 Appwrite 1.8 answers when a row repeats another row's key in a unique index: the
/// same type and message as an id taken (the server does not say which index).
fn unique_conflict(t: &mut Table, id: &str, data: &Value) -> Option<ApiError> {
    let me = uid(id);
    if t.unique.is_none() {
        t.unique = Some(
            t.indexes
                .iter()
                .filter(|i| i.kind == "unique" && i.failed.is_none())
                .map(|i| {
                    let keys = t
                        .rows
                        .iter()
                        .filter_map(|(row, r)| Some((unique_key(&i.columns, r)?, row.clone())))
                        .collect();
                    (i.key.clone(), keys)
                })
                .collect(),
        );
    }
    let maps = t.unique.as_ref()?;
    for i in t
        .indexes
        .iter()
        .filter(|i| i.kind == "unique" && i.failed.is_none())
    {
        let Some(key) = unique_key(&i.columns, data) else {
            continue;
        };
        if maps
            .get(&i.key)
            .and_then(|m| m.get(&key))
            .is_some_and(|holder| holder != &me)
        {
            return Some(ApiError::new(
                409,
                "row_already_exists",
                "Row with the requested ID already exists. Try again with a different ID or use ID.unique() to generate a unique ID.",
            ));
        }
    }
    None
}

/// The key a row or user is stored under: Appwrite's `_uid` column compares ids without case
/// (MariaDB's `utf8mb4_general_ci`; a case-insensitive collation on MongoDB too), so `Abc` and
/// `abc` are one row there — and here.
pub fn uid(id: &str) -> String {
    id.to_ascii_lowercase()
}

/// A page of `items` (keyed by id) for `queries`, and the matching total (capped at 5000, as
/// Appwrite counts; 0 without `count`). The order is `orderAsc` / `orderDesc` on any attributes (`$id` breaking
/// ties), else by id. `cursorAfter` pages on from the item it names, `cursorBefore` back: the
/// `limit` matches right before it (`offset` skips those nearest it), in the list's order, as
/// Appwrite does (it reverses the order, pages after the cursor, and reverses the page). The
/// cursor must exist, not match. In `$id` order a cursor starts right at its id: a page costs its
/// own size plus the capped count, not the table's size; other orders sort the matches.
fn filter(
    items: &BTreeMap<String, Value>,
    queries: &[Value],
    count: bool,
) -> Result<(Vec<Value>, usize), ApiError> {
    use std::ops::Bound::{self, Excluded, Unbounded};
    let mut limit = 25usize;
    let mut offset = 0usize;
    // (id, before: cursorBefore rather than cursorAfter)
    let mut cursor: Option<(String, bool)> = None;
    let mut equals: Vec<(String, Vec<Value>)> = Vec::new();
    // (attribute, method, values) of the filters other than `equal`
    let mut filters: Vec<(String, String, Vec<Value>)> = Vec::new();
    // (attribute, descending)
    let mut orders: Vec<(String, bool)> = Vec::new();
    for q in queries {
        let method = q["method"].as_str().unwrap_or("");
        let values = q["values"].as_array().cloned().unwrap_or_default();
        match method {
            "limit" => limit = values.first().and_then(Value::as_u64).unwrap_or(25) as usize,
            "cursorAfter" | "cursorBefore" => {
                cursor = values
                    .first()
                    .and_then(Value::as_str)
                    .map(|id| (uid(id), method == "cursorBefore"));
            }
            "equal" => equals.push((q["attribute"].as_str().unwrap_or("").to_string(), values)),
            // The other filters the spec lists, on a row's column (a missing one is null).
            "notEqual" | "lessThan" | "lessThanEqual" | "greaterThan" | "greaterThanEqual"
            | "between" | "isNull" | "isNotNull" | "startsWith" | "endsWith" | "contains" => {
                let Some(attribute) = q["attribute"].as_str().filter(|a| !a.is_empty()) else {
                    return Err(ApiError::new(
                        400,
                        "general_query_invalid",
                        format!("Invalid query: {method} needs an attribute"),
                    ));
                };
                filters.push((attribute.to_string(), method.to_string(), values));
            }
            "orderAsc" | "orderDesc" => {
                let Some(attribute) = q["attribute"].as_str().filter(|a| !a.is_empty()) else {
                    return Err(ApiError::new(
                        400,
                        "general_query_invalid",
                        format!("Invalid query: {method} needs an attribute"),
                    ));
                };
                orders.push((attribute.to_string(), method == "orderDesc"));
            }
            "offset" => offset = values.first().and_then(Value::as_u64).unwrap_or(0) as usize,
            "select" => {}
            other => {
                return Err(ApiError::new(
                    400,
                    "general_query_invalid",
                    format!("Invalid query method: {other}"),
                ));
            }
        }
    }
    // Each `equal` as a set of the values' texts: a delete of the children of a batch of parents
    // (hundreds of values) over a large table was rows × values comparisons per request.
    // (attribute, the string values, the other values)
    type Wanted<'q> = (&'q str, std::collections::HashSet<&'q str>, Vec<&'q Value>);
    let equals: Vec<Wanted<'_>> = equals
        .iter()
        .map(|(a, vals)| {
            let (texts, others): (Vec<&Value>, Vec<&Value>) =
                vals.iter().partition(|v| v.is_string());
            (
                a.as_str(),
                texts.into_iter().filter_map(Value::as_str).collect(),
                others,
            )
        })
        .collect();
    let matches = |v: &Value| {
        equals.iter().all(|(a, texts, others)| match &v[*a] {
            Value::String(s) => texts.contains(s.as_str()),
            x => others.contains(&x),
        }) && filters
            .iter()
            .all(|(a, method, values)| passes(method, &v[a.as_str()], values))
    };
    let total = if count {
        items.values().filter(|v| matches(v)).take(5000).count()
    } else {
        0
    };
    let cursor = match &cursor {
        Some((id, before)) => match items.get(id) {
            Some(item) => Some((id.as_str(), item, *before)),
            None => {
                return Err(ApiError::new(
                    400,
                    "general_cursor_not_found",
                    "Cursor not found",
                ));
            }
        },
        None => None,
    };
    let by_id = orders.iter().all(|(a, desc)| a == "$id" && !desc);
    if !by_id {
        let mut all: Vec<&Value> = items.values().filter(|v| matches(v)).collect();
        let order = |a: &Value, b: &Value| {
            orders
                .iter()
                .map(|(attr, desc)| {
                    let o = json_cmp(&a[attr.as_str()], &b[attr.as_str()]);
                    if *desc { o.reverse() } else { o }
                })
                .find(|o| o.is_ne())
                .unwrap_or_else(|| json_cmp(&a["$id"], &b["$id"]))
        };
        all.sort_by(|a, b| order(a, b));
        // Where the cursor falls among the matches (it need not be one of them).
        let (range, back) = match cursor {
            Some((_, c, false)) => (
                all.partition_point(|v| order(v, c).is_le())..all.len(),
                false,
            ),
            Some((_, c, true)) => (0..all.partition_point(|v| order(v, c).is_lt()), true),
            None => (0..all.len(), false),
        };
        let page = page_from(all[range].iter().copied(), back, offset, limit);
        return Ok((page, total));
    }
    let (range, back): ((Bound<&str>, Bound<&str>), bool) = match cursor {
        Some((id, _, false)) => ((Excluded(id), Unbounded), false),
        Some((id, _, true)) => ((Unbounded, Excluded(id)), true),
        None => ((Unbounded, Unbounded), false),
    };
    let matching = items
        .range::<str, _>(range)
        .map(|(_, v)| v)
        .filter(|v| matches(v));
    let page = page_from(matching, back, offset, limit);
    Ok((page, total))
}

/// A list's answer: `{"total": total, field: items}`.
fn list_json(total: usize, field: &str, items: Vec<Value>) -> Value {
    let mut out = json!({ "total": total });
    out[field] = Value::Array(items);
    out
}

/// How a list other than rows is queried.
struct Listing {
    /// The field a cursor names: `$id`, or `key` for columns and indexes.
    key: &'static str,
    /// The fields `search` looks into (none: the route has no `search`, it is ignored).
    search: &'static [&'static str],
    /// The attributes its queries may filter and order on — the spec's "You may filter on the
    /// following …" of the route, besides `$id`, `$createdAt` and `$updatedAt` — each with the
    /// field of the item holding it.
    attributes: &'static [(&'static str, &'static str)],
}

/// Appwrite searches databases and tables by their `search` attribute, "{id} {name}".
const DATABASES: Listing = Listing {
    key: "$id",
    search: &["$id", "name"],
    attributes: &[("name", "name")],
};
const TABLES: Listing = Listing {
    key: "$id",
    search: &["$id", "name"],
    attributes: &[
        ("name", "name"),
        ("enabled", "enabled"),
        ("rowSecurity", "rowSecurity"),
    ],
};
/// The Databases API's collections: `documentSecurity` for `rowSecurity`.
const COLLECTIONS: Listing = Listing {
    key: "$id",
    search: &["$id", "name"],
    attributes: &[
        ("name", "name"),
        ("enabled", "enabled"),
        ("documentSecurity", "documentSecurity"),
    ],
};
const COLUMNS: Listing = Listing {
    key: "key",
    search: &[],
    attributes: &[
        ("key", "key"),
        ("type", "type"),
        ("size", "size"),
        ("required", "required"),
        ("array", "array"),
        ("status", "status"),
        ("error", "error"),
    ],
};
/// The spec names an index's columns `attributes` in the TablesDB list's filters too.
const INDEXES: Listing = Listing {
    key: "key",
    search: &[],
    attributes: &[
        ("key", "key"),
        ("type", "type"),
        ("status", "status"),
        ("attributes", "columns"),
        ("error", "error"),
    ],
};
/// The Databases API's indexes: their columns are `attributes`.
const LEGACY_INDEXES: Listing = Listing {
    key: "key",
    search: &[],
    attributes: &[
        ("key", "key"),
        ("type", "type"),
        ("status", "status"),
        ("attributes", "attributes"),
        ("error", "error"),
    ],
};

/// Whether search term `term` finds `item`, whose searchable text is its `fields`, as Appwrite's
/// full-text search does (MariaDB `MATCH … AGAINST` in boolean mode over the item's `search`
/// attribute): the term's words (letters, digits, `_`; everything else separates them, Appwrite's
/// reserved `@+-*()<>~"` included) are compared with the text's words without case, one word
/// found is enough, and the last word is a prefix (Appwrite appends `*` to the term). A term in
/// double quotes is a phrase: its words in a row. A blank term finds everything; a term of no word
/// finds nothing.
pub fn searched(term: &str, item: &Value, fields: &[&str]) -> bool {
    fn words(s: &str) -> Vec<String> {
        s.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
    let term = term.trim();
    if term.is_empty() {
        return true;
    }
    let text: Vec<&str> = fields.iter().filter_map(|f| item[*f].as_str()).collect();
    let have = words(&text.join(" "));
    let wanted = words(term);
    let Some((last, others)) = wanted.split_last() else {
        return false;
    };
    if term.len() >= 2 && term.starts_with('"') && term.ends_with('"') {
        return have.windows(wanted.len()).any(|w| w == wanted.as_slice());
    }
    others.iter().any(|w| have.contains(w)) || have.iter().any(|h| h.starts_with(last.as_str()))
}

/// A page of a list other than rows (databases, tables, columns, indexes), in its stored order
/// or its `orderAsc` / `orderDesc` (on its attributes; without one, the stored order), of the
/// items `search` finds (routes with one) and its filters keep (`equal`, `notEqual`, `lessThan`,
/// `lessThanEqual`, `greaterThan`, `greaterThanEqual`, `between`, `isNull`, `isNotNull`,
/// `startsWith`, `endsWith` on its attributes: another attribute is refused as Appwrite does);
/// `limit` (default 25), `offset`, `cursorAfter` / `cursorBefore` (an item's `key`: `$id`, or a
/// column's `key`; the cursor must exist, not match), and the total of the items kept (0 when
/// `list.total` is false). Other query methods are refused.
fn page_of(
    items: Vec<Value>,
    list: &ListQuery,
    how: &Listing,
) -> Result<(Vec<Value>, usize), ApiError> {
    let invalid = |m: String| ApiError::new(400, "general_query_invalid", m);
    // The field of a query's attribute (`None`: no attribute).
    let field = |q: &Value| -> Result<Option<&'static str>, ApiError> {
        let name = q["attribute"].as_str().unwrap_or("");
        if name.is_empty() {
            return Ok(None);
        }
        [
            ("$id", "$id"),
            ("$createdAt", "$createdAt"),
            ("$updatedAt", "$updatedAt"),
        ]
        .iter()
        .chain(how.attributes)
        .find(|(a, _)| *a == name)
        .map(|(_, f)| Some(*f))
        .ok_or_else(|| {
            invalid(format!(
                "Invalid query: Attribute not found in schema: {name}"
            ))
        })
    };
    let mut limit = 25usize;
    let mut offset = 0usize;
    // (the cursor's key, before: cursorBefore rather than cursorAfter)
    let mut cursor: Option<(Value, bool)> = None;
    // (method, field, values)
    let mut filters: Vec<(&str, &str, Vec<Value>)> = Vec::new();
    // (field, descending); no field: the stored order
    let mut orders: Vec<(Option<&str>, bool)> = Vec::new();
    for q in &list.queries {
        let method = q["method"].as_str().unwrap_or("");
        let values = q["values"].as_array().cloned().unwrap_or_default();
        let first = values.first().cloned();
        match method {
            "limit" => limit = first.and_then(|v| v.as_u64()).unwrap_or(25) as usize,
            "offset" => offset = first.and_then(|v| v.as_u64()).unwrap_or(0) as usize,
            "cursorAfter" | "cursorBefore" => {
                cursor = Some((first.unwrap_or(Value::Null), method == "cursorBefore"));
            }
            "orderAsc" | "orderDesc" => orders.push((field(q)?, method == "orderDesc")),
            "equal" | "notEqual" | "lessThan" | "lessThanEqual" | "greaterThan"
            | "greaterThanEqual" | "between" | "isNull" | "isNotNull" | "startsWith"
            | "endsWith" => {
                let Some(f) = field(q)? else {
                    return Err(invalid(format!(
                        "Invalid query: {method} needs an attribute"
                    )));
                };
                filters.push((method, f, values));
            }
            other => return Err(invalid(format!("Invalid query method: {other}"))),
        }
    }
    let kept = |item: &Value| {
        (how.search.is_empty() || searched(&list.search, item, how.search))
            && filters
                .iter()
                .all(|(method, f, values)| passes(method, &item[*f], values))
    };
    // Items with their stored place, which breaks ties.
    let order = |a: &(usize, &Value), b: &(usize, &Value)| {
        orders
            .iter()
            .map(|(f, desc)| {
                let o = match f {
                    Some(f) => json_cmp(&a.1[*f], &b.1[*f]),
                    None => a.0.cmp(&b.0),
                };
                if *desc { o.reverse() } else { o }
            })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.0.cmp(&b.0))
    };
    let cursor = match cursor {
        Some((id, back)) => {
            let at = items.iter().position(|i| i[how.key] == id).ok_or_else(|| {
                ApiError::new(400, "general_cursor_not_found", "Cursor not found")
            })?;
            Some(((at, &items[at]), back))
        }
        None => None,
    };
    let mut found: Vec<(usize, &Value)> =
        items.iter().enumerate().filter(|(_, i)| kept(i)).collect();
    let total = if list.total { found.len() } else { 0 };
    found.sort_by(|a, b| order(a, b));
    // Where the cursor falls among the items kept (it need not be one of them).
    let (range, back) = match cursor {
        Some((c, false)) => (
            found.partition_point(|v| order(v, &c).is_le())..found.len(),
            false,
        ),
        Some((c, true)) => (0..found.partition_point(|v| order(v, &c).is_lt()), true),
        None => (0..found.len(), false),
    };
    let page = page_from(found[range].iter().map(|(_, v)| *v), back, offset, limit);
    Ok((page, total))
}

/// Whether a value passes a filter (`method` with `values`); an array passes when one of its
/// items does (`notEqual`: when none equals).
fn passes(method: &str, value: &Value, values: &[Value]) -> bool {
    let each: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    let any = |f: &dyn Fn(&Value) -> bool| each.iter().any(|v| f(v));
    let cmp = |want: fn(std::cmp::Ordering) -> bool| {
        values
            .first()
            .is_some_and(|x| any(&|v| !v.is_null() && want(json_cmp(v, x))))
    };
    let text = |f: fn(&str, &str) -> bool| {
        values
            .first()
            .and_then(Value::as_str)
            .is_some_and(|x| any(&|v| v.as_str().is_some_and(|s| f(s, x))))
    };
    match method {
        "isNull" => value.is_null(),
        "isNotNull" => !value.is_null(),
        "equal" => any(&|v| values.contains(v)),
        "notEqual" => !any(&|v| values.contains(v)),
        "lessThan" => cmp(std::cmp::Ordering::is_lt),
        "lessThanEqual" => cmp(std::cmp::Ordering::is_le),
        "greaterThan" => cmp(std::cmp::Ordering::is_gt),
        "greaterThanEqual" => cmp(std::cmp::Ordering::is_ge),
        "between" => match values {
            [low, high] => {
                any(&|v| !v.is_null() && json_cmp(v, low).is_ge() && json_cmp(v, high).is_le())
            }
            _ => false,
        },
        "startsWith" => text(|s, x| s.starts_with(x)),
        // An array holding one of the values, or a string holding one of them.
        "contains" => match value {
            Value::String(s) => values
                .iter()
                .any(|x| x.as_str().is_some_and(|x| s.contains(x))),
            _ => any(&|v| values.contains(v)),
        },
        "endsWith" => text(|s, x| s.ends_with(x)),
        _ => false,
    }
}

/// A page of `sorted` (ascending in the list's order): from the front, or back from the end.
fn page_from<'v>(
    sorted: impl DoubleEndedIterator<Item = &'v Value>,
    back: bool,
    offset: usize,
    limit: usize,
) -> Vec<Value> {
    if back {
        let mut page: Vec<Value> = sorted.rev().skip(offset).take(limit).cloned().collect();
        page.reverse();
        page
    } else {
        sorted.skip(offset).take(limit).cloned().collect()
    }
}

/// An order on column values: null, then booleans, numbers, strings (by bytes), then the rest.
fn json_cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            _ => 4,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rule_follows_the_spec() {
        for ok in ["a", "A9", "p-1", "row_2", "x.y", "0abc", &"a".repeat(36)] {
            assert!(id_ok(ok), "{ok} is an id");
        }
        for bad in [
            "",
            ".a",
            "-a",
            "_a",
            "a b",
            "a/b",
            "é",
            "a$",
            &"a".repeat(37),
        ] {
            assert!(!id_ok(bad), "{bad:?} is not an id");
        }
    }

    #[test]
    fn search_matches_words_of_the_id_or_name_as_appwrite_does() {
        let t = json!({ "$id": "cutover_lock", "name": "Odds and-ends" });
        let f = &["$id", "name"];
        for found in [
            "",
            "  ",
            "odds",
            "ODDS",
            "cutover_lock",
            "cut",
            "and",
            "end",
            "zzz odds",
            "-ends",
            "\"odds and\"",
            "od*",
            "cutover",
            "odds zzz",
        ] {
            assert!(searched(found, &t, f), "{found:?} finds it");
        }
        for missed in ["zzz", "lock", "dds", "\"and odds\"", "***"] {
            assert!(!searched(missed, &t, f), "{missed:?} does not find it");
        }
    }

    #[test]
    fn column_keys_follow_the_id_rule_and_are_unique_ignoring_case() {
        let s = StandIn::new("p", "k");
        s.create_database("db", "db").unwrap();
        s.create_table("db", "t", "t").unwrap();
        let col = |key: &str| json!({ "key": key, "size": 10, "required": false });
        s.create_column("db", "t", "string", &col("name")).unwrap();
        let long = "c".repeat(37);
        for bad in ["with space", "ünï", "_under", "-x", long.as_str()] {
            let e = s.create_column("db", "t", "string", &col(bad)).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{bad}");
        }
        let e = s
            .create_column("db", "t", "string", &col("Name"))
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 409);
    }

    #[test]
    fn unique_makes_a_valid_id() {
        let id = check_id("unique()").unwrap();
        assert!(id_ok(&id), "{id}");
        assert!(check_id(".bad").is_err());
    }
}
