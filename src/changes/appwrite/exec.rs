//! Runs Appwrite operations and their inverses through the TablesDB API. What an inverse needs
//! is kept where the ledger lives: definitions (a column, an index, a table) in the operation's
//! outcome, recorded in the change's ledger record before the operation writes; row values (of a
//! removed column, a dropped table, rewritten rows) in the change's backup table, one ledger row
//! per table row, written before the row is changed.

use std::time::Duration;

use bson::{Bson, Document, doc};
use serde_json::{Map, Value, json};

use super::op::AwOp;
use crate::changes::ops::{OpOutcome, Preview};
use crate::ledger::Store;
use crate::sink::appwrite::tables::{PAGE, query_string};
use crate::sink::appwrite::{AppwriteClient, AppwriteError};

/// How long a column or index may stay `processing`.
const WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AwError {
    #[error("Appwrite: {0}")]
    Api(#[from] AppwriteError),
    #[error("ledger: {0}")]
    Store(#[from] crate::ledger::StoreError),
    #[error("{0}")]
    Refused(String),
    /// An inverse refused by its own checks before it wrote anything (values written since in
    /// a column it would remove, rows in a table it would delete, an old key taken since).
    #[error("{0}")]
    RefusedBeforeWriting(String),
}

impl AwError {
    /// Whether it was refused before it wrote anything ([`AwError::RefusedBeforeWriting`]).
    pub fn wrote_nothing(&self) -> bool {
        matches!(self, AwError::RefusedBeforeWriting(_))
    }
}

/// What a change in a transaction would stage, gathered before anything is written: the
/// operations and the backup entries (operation index, row id, entry) their inverses need, kept
/// while they fit in `max`; `count` counts them all.
#[derive(Debug, Default)]
pub struct Staging {
    pub max: usize,
    pub count: usize,
    pub operations: Vec<Value>,
    pub backups: Vec<(usize, String, Document)>,
}

impl Staging {
    pub fn new(max: usize) -> Staging {
        Staging {
            max,
            ..Staging::default()
        }
    }

    fn push(&mut self, operation: Value, backup: Option<(usize, String, Document)>) {
        self.count += 1;
        if self.count > self.max {
            // Over the limit: the change is refused; only the count goes on (memory stays
            // bounded by the limit).
            self.operations = Vec::new();
            self.backups = Vec::new();
            return;
        }
        self.operations.push(operation);
        self.backups.extend(backup);
    }

    /// Whether more operations were gathered than one transaction may hold.
    pub fn over(&self) -> bool {
        self.count > self.max
    }
}

/// Where Appwrite operations run: the database, and the change's backup table in the ledger.
pub struct AwExec<'a> {
    pub client: &'a AppwriteClient,
    pub db: &'a str,
    pub store: &'a Store,
    pub backup: &'a str,
    /// The lock of the command, checked before each operation and each page of rows: a change
    /// whose lock was taken away (released by force) stops writing at once.
    pub fence: Option<&'a crate::ledger::lock::Fence>,
}

fn to_bson(v: &Value) -> Bson {
    Bson::try_from(v.clone()).unwrap_or(Bson::Null)
}

fn to_json(b: &Bson) -> Value {
    b.clone().into_relaxed_extjson()
}

/// A row's column values (its `$` attributes left out).
fn data_of(row: &Value) -> Map<String, Value> {
    row.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `row` holds `values` (a missing column reads as null).
fn holds(row: &Value, values: &Map<String, Value>) -> bool {
    values
        .iter()
        .all(|(k, v)| same_stored(row.get(k).unwrap_or(&Value::Null), v))
}

/// Whether `text` is a datetime column's value as Appwrite gives it back
/// (`2024-01-01T00:00:00.000+00:00`): a text column's value is compared as text.
fn appwrite_datetime(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 29
        && text.ends_with("+00:00")
        && b[10] == b'T'
        && b[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

/// Whether `stored` (a value as Appwrite gives it back) is `written` (as a change file or a
/// backup wrote it): Appwrite keeps a column's own form — a float column gives `2` back as
/// `2.0`, a datetime `2024-01-01T00:00:00Z` as `2024-01-01T00:00:00.000+00:00` — so numbers
/// compare by value and datetimes by instant; arrays element by element; all else exactly.
fn same_stored(stored: &Value, written: &Value) -> bool {
    match (stored, written) {
        (Value::Number(a), Value::Number(b)) => {
            a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
        }
        (Value::String(a), Value::String(b)) => {
            a == b
                || appwrite_datetime(a)
                    && matches!(
                    (
                        chrono::DateTime::parse_from_rfc3339(a),
                        chrono::DateTime::parse_from_rfc3339(b)
                    ),
                    (Ok(x), Ok(y)) if x == y
                    )
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_stored(x, y))
        }
        (a, b) => a == b,
    }
}

/// The `columns/{type}` route segment and the creation body of a column as the API lists it.
pub fn column_request(def: &Value) -> (String, Value) {
    let kind = match (def["type"].as_str(), def["format"].as_str()) {
        (_, Some(f @ ("email" | "url" | "ip" | "enum"))) => f.to_string(),
        (Some("double"), _) => "float".into(),
        (Some(t), _) => t.to_string(),
        (None, _) => "string".into(),
    };
    let mut body = json!({
        "key": def["key"],
        "required": def["required"].as_bool().unwrap_or(false),
        "array": def["array"].as_bool().unwrap_or(false),
    });
    for k in ["size", "elements", "min", "max"] {
        if let Some(v) = def.get(k).filter(|v| !v.is_null()) {
            body[k] = v.clone();
        }
    }
    if let Some(d) = def.get("default").filter(|v| !v.is_null()) {
        body["default"] = d.clone();
    }
    (kind, body)
}

/// The creation body of an index as the API lists it.
fn index_request(def: &Value) -> Value {
    let mut body = json!({
        "key": def["key"],
        "type": def["type"],
        "columns": def["columns"],
        "orders": def["orders"],
    });
    // The indexed length of each column, when the index has them (a recreated index keeps them).
    if def["lengths"].as_array().is_some_and(|l| !l.is_empty()) {
        body["lengths"] = def["lengths"].clone();
    }
    body
}

fn ok_missing(r: Result<Value, AppwriteError>) -> Result<bool, AppwriteError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.is_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

impl AwExec<'_> {
    /// Refuses to go on once the command's lock is no longer its own (read at most every
    /// second; at once when it was seen lost).
    async fn alive(&self) -> Result<(), AwError> {
        if let Some(f) = self.fence {
            f.check_if_stale(Duration::from_secs(1))
                .await
                .map_err(|e| AwError::Refused(format!("{}; it stopped writing", e.reason())))?;
        }
        Ok(())
    }

    fn path(&self, rest: &str) -> String {
        format!("/tablesdb/{}/tables{rest}", self.db)
    }

    async fn get(&self, rest: &str) -> Result<Option<Value>, AppwriteError> {
        match self
            .client
            .call(reqwest::Method::GET, &self.path(rest), None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `table` exists.
    pub async fn table_exists(&self, table: &str) -> Result<bool, AwError> {
        Ok(self.table(table).await?.is_some())
    }

    async fn table(&self, table: &str) -> Result<Option<Value>, AppwriteError> {
        self.get(&format!("/{table}")).await
    }

    async fn column(&self, table: &str, key: &str) -> Result<Option<Value>, AppwriteError> {
        self.get(&format!("/{table}/columns/{key}")).await
    }

    async fn index(&self, table: &str, key: &str) -> Result<Option<Value>, AppwriteError> {
        self.get(&format!("/{table}/indexes/{key}")).await
    }

    async fn need_table(&self, table: &str) -> Result<Value, AwError> {
        self.table(table)
            .await?
            .ok_or_else(|| AwError::Refused(format!("table {table} does not exist")))
    }

    async fn create_column(&self, table: &str, kind: &str, body: &Value) -> Result<(), AwError> {
        self.client
            .call(
                reqwest::Method::POST,
                &self.path(&format!("/{table}/columns/{kind}")),
                Some(body),
            )
            .await?;
        let key = body["key"].as_str().unwrap_or_default();
        self.client.wait_column(self.db, table, key, WAIT).await?;
        Ok(())
    }

    /// Deletes a column and waits until it is gone; `false` when there was none.
    async fn delete_column(&self, table: &str, key: &str) -> Result<bool, AwError> {
        let path = self.path(&format!("/{table}/columns/{key}"));
        if !ok_missing(self.client.call(reqwest::Method::DELETE, &path, None).await)? {
            return Ok(false);
        }
        self.wait_gone(&format!("/{table}/columns/{key}"), "column")
            .await?;
        Ok(true)
    }

    async fn wait_gone(&self, rest: &str, what: &str) -> Result<(), AwError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.get(rest).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(AwError::Refused(format!(
                    "{what} {rest} was still there {WAIT:?} after it was deleted"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn create_index(&self, table: &str, body: &Value) -> Result<(), AwError> {
        self.client
            .call(
                reqwest::Method::POST,
                &self.path(&format!("/{table}/indexes")),
                Some(body),
            )
            .await?;
        let key = body["key"].as_str().unwrap_or_default();
        self.client.wait_index(self.db, table, key, WAIT).await?;
        Ok(())
    }

    async fn delete_index(&self, table: &str, key: &str) -> Result<bool, AwError> {
        let rest = format!("/{table}/indexes/{key}");
        if !ok_missing(
            self.client
                .call(reqwest::Method::DELETE, &self.path(&rest), None)
                .await,
        )? {
            return Ok(false);
        }
        self.wait_gone(&rest, "index").await?;
        Ok(true)
    }

    /// Renames column `from` of `table` (whose definition is `def`) to `to`.
    async fn rename_column(
        &self,
        table: &str,
        def: &Value,
        from: &str,
        to: &str,
    ) -> Result<(), AwError> {
        let (kind, create) = column_request(def);
        let mut body = json!({
            "required": create["required"],
            "default": create.get("default").cloned().unwrap_or(Value::Null),
            "newKey": to,
        });
        for k in ["size", "elements", "min", "max"] {
            if let Some(v) = create.get(k) {
                body[k] = v.clone();
            }
        }
        self.client
            .call(
                reqwest::Method::PATCH,
                &self.path(&format!("/{table}/columns/{kind}/{from}")),
                Some(&body),
            )
            .await?;
        self.client.wait_column(self.db, table, to, WAIT).await?;
        Ok(())
    }

    /// Creates a table with columns and indexes as listed (a dropped one's, or a file's).
    async fn create_table(
        &self,
        table: &str,
        name: &str,
        columns: &[(String, Value)],
        indexes: &[Value],
    ) -> Result<(), AwError> {
        self.create_table_as(table, name, &Map::new()).await?;
        for (kind, body) in columns {
            self.create_column(table, kind, body).await?;
        }
        for i in indexes {
            self.create_index(table, i).await?;
        }
        Ok(())
    }

    /// Creates an empty table with `settings` (its `permissions`, `rowSecurity`, `enabled`, as
    /// a dropped table had them).
    async fn create_table_as(
        &self,
        table: &str,
        name: &str,
        settings: &Map<String, Value>,
    ) -> Result<(), AwError> {
        let mut body = json!({ "tableId": table, "name": name });
        for (k, v) in settings {
            if !v.is_null() {
                body[k] = v.clone();
            }
        }
        self.client
            .call(reqwest::Method::POST, &self.path(""), Some(&body))
            .await?;
        Ok(())
    }

    /// Creates a row with its permissions (as backed up); `false` when a row with this id
    /// exists (nothing written).
    async fn create_row_as(
        &self,
        table: &str,
        id: &str,
        data: &Value,
        permissions: Option<&Value>,
    ) -> Result<bool, AwError> {
        let mut body = json!({ "rowId": id, "data": data });
        if let Some(p) = permissions.filter(|p| p.is_array()) {
            body["permissions"] = p.clone();
        }
        match self
            .client
            .call(
                reqwest::Method::POST,
                &self.path(&format!("/{table}/rows")),
                Some(&body),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// One page of the rows of `table` matching `queries`, after row `after`, in `$id` order.
    async fn page(
        &self,
        table: &str,
        queries: &[Value],
        after: Option<&str>,
    ) -> Result<Vec<Value>, AppwriteError> {
        let mut q = queries.to_vec();
        q.push(json!({ "method": "limit", "values": [PAGE] }));
        q.push(json!({ "method": "orderAsc", "attribute": "$id", "values": [] }));
        if let Some(a) = after {
            q.push(json!({ "method": "cursorAfter", "values": [a] }));
        }
        let v = self
            .client
            .call(
                reqwest::Method::GET,
                &self.path(&format!("/{table}/rows?{}", query_string(&q))),
                None,
            )
            .await?;
        Ok(v["rows"].as_array().cloned().unwrap_or_default())
    }

    /// Calls `f` on each row of `table` matching `queries`, a page at a time.
    async fn each_row<F, Fut>(
        &self,
        table: &str,
        queries: &[Value],
        mut f: F,
    ) -> Result<(), AwError>
    where
        F: FnMut(Value) -> Fut,
        Fut: std::future::Future<Output = Result<(), AwError>>,
    {
        let mut after: Option<String> = None;
        loop {
            self.alive().await?;
            let page = self.page(table, queries, after.as_deref()).await?;
            let n = page.len();
            after = page
                .last()
                .and_then(|r| r["$id"].as_str())
                .map(str::to_string);
            for row in page {
                f(row).await?;
            }
            if n < PAGE || after.is_none() {
                return Ok(());
            }
        }
    }

    fn entry_id(index: usize, row: &str) -> String {
        format!("{index}:{row}")
    }

    async fn back_up(&self, index: usize, row: &str, d: Document) -> Result<(), AwError> {
        let mut d = d;
        d.insert("op", index as i64);
        d.insert("row", row);
        self.store
            .put(self.backup, &Self::entry_id(index, row), &d)
            .await?;
        Ok(())
    }

    /// The next page of operation `index`'s backup entries after `after` (the backup table's
    /// last row id read; `None` to start), or `None` past the end: a dropped table's rows are
    /// never all held at once.
    async fn backed_up_page(
        &self,
        index: usize,
        after: &mut Option<String>,
        done: &mut bool,
    ) -> Result<Option<Vec<Document>>, AwError> {
        if self.backup.is_empty() || *done {
            return Ok(None);
        }
        self.alive().await?;
        let page = match self.page(self.backup, &[], after.as_deref()).await {
            Ok(p) => p,
            // No backup table: the operation backed nothing up.
            Err(e) if e.is_missing() && after.is_none() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let n = page.len();
        *after = page
            .last()
            .and_then(|r| r["$id"].as_str())
            .map(str::to_string);
        *done = n < PAGE || after.is_none();
        let mut mine = Vec::new();
        for row in &page {
            let d = Store::decode(row)?;
            if d.get_i64("op").ok() == Some(index as i64) {
                mine.push(d);
            }
        }
        Ok(Some(mine))
    }

    /// Removes the change's backup table.
    pub async fn drop_backup(&self) -> Result<(), AwError> {
        if self.backup.is_empty() {
            return Ok(());
        }
        let rest = format!("/{}", self.backup);
        ok_missing(
            self.client
                .call(reqwest::Method::DELETE, &self.path(&rest), None)
                .await,
        )?;
        Ok(())
    }

    /// The checks an operation makes before it writes, and what its inverse needs of the
    /// definitions it changes (into `out.before`, recorded before it writes).
    pub async fn prepare(&self, op: &AwOp, out: &mut OpOutcome) -> Result<(), AwError> {
        match op {
            AwOp::AddColumn { table, body, .. } => {
                self.need_table(table).await?;
                let key = body["key"].as_str().unwrap_or_default();
                if self.column(table, key).await?.is_some() {
                    return Err(AwError::Refused(format!(
                        "column {table}.{key} exists already"
                    )));
                }
            }
            AwOp::RemoveColumn { table, column } => {
                let t = self.need_table(table).await?;
                let Some(def) = self.column(table, column).await? else {
                    return Err(AwError::Refused(format!(
                        "column {table}.{column} does not exist"
                    )));
                };
                if let Some(i) = t["indexes"].as_array().into_iter().flatten().find(|i| {
                    i["columns"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c == column))
                }) {
                    return Err(AwError::Refused(format!(
                        "index {} of {table} uses column {column}: drop it first (`drop_index`, before this operation)",
                        i["key"].as_str().unwrap_or("?")
                    )));
                }
                out.before = Some(doc! { "column": to_bson(&def) });
            }
            AwOp::RenameColumn { table, from, to } => {
                self.need_table(table).await?;
                let Some(def) = self.column(table, from).await? else {
                    return Err(AwError::Refused(format!(
                        "column {table}.{from} does not exist"
                    )));
                };
                if self.column(table, to).await?.is_some() {
                    return Err(AwError::Refused(format!(
                        "column {table}.{to} exists already"
                    )));
                }
                out.before = Some(doc! { "column": to_bson(&def) });
            }
            AwOp::CreateIndex { table, body } => {
                self.need_table(table).await?;
                let key = body["key"].as_str().unwrap_or_default();
                if self.index(table, key).await?.is_some() {
                    return Err(AwError::Refused(format!(
                        "index {table}.{key} exists already"
                    )));
                }
            }
            AwOp::DropIndex { table, key } => {
                self.need_table(table).await?;
                let Some(def) = self.index(table, key).await? else {
                    return Err(AwError::Refused(format!(
                        "index {table}.{key} does not exist"
                    )));
                };
                out.before = Some(doc! { "index": to_bson(&index_request(&def)) });
            }
            AwOp::CreateTable { table, .. } => {
                if self.table(table).await?.is_some() {
                    return Err(AwError::Refused(format!("table {table} exists already")));
                }
            }
            AwOp::DropTable { table } => {
                let t = self.need_table(table).await?;
                let columns: Vec<Bson> = t["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(to_bson)
                    .collect();
                let indexes: Vec<Bson> = t["indexes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| to_bson(&index_request(i)))
                    .collect();
                out.before = Some(doc! {
                    "name": t["name"].as_str().unwrap_or(table),
                    "columns": columns,
                    "indexes": indexes,
                    // Who may read and write it: a table restored without them is open to no
                    // one (or, without row security, its rows' own permissions go unread).
                    "permissions": to_bson(&t["$permissions"]),
                    "rowSecurity": to_bson(&t["rowSecurity"]),
                    "enabled": to_bson(&t["enabled"]),
                });
            }
            AwOp::Insert { table, rows } => {
                self.need_table(table).await?;
                for r in rows {
                    let id = r["$id"].as_str().unwrap_or_default();
                    if self.client.get_row(self.db, table, id).await?.is_some() {
                        return Err(AwError::Refused(format!(
                            "row {id} exists already in {table}"
                        )));
                    }
                }
            }
            AwOp::Set { table, .. }
            | AwOp::Unset { table, .. }
            | AwOp::UpdateReferences { table, .. } => {
                self.need_table(table).await?;
            }
        }
        Ok(())
    }

    /// The values a row operation writes into `row` (`None`: the row is left as it is).
    fn rewrite(op: &AwOp, row: &Value) -> Option<Map<String, Value>> {
        let new: Map<String, Value> = match op {
            AwOp::Set { values, .. } => values.clone(),
            AwOp::Unset { columns, .. } => {
                columns.iter().map(|c| (c.clone(), Value::Null)).collect()
            }
            AwOp::UpdateReferences {
                column, from, to, ..
            } => {
                let v = match row.get(column) {
                    Some(Value::Array(a)) => Value::Array(
                        a.iter()
                            .map(|x| if x == from { to.clone() } else { x.clone() })
                            .collect(),
                    ),
                    Some(v) if v == from => to.clone(),
                    _ => return None,
                };
                [(column.clone(), v)].into_iter().collect()
            }
            _ => return None,
        };
        (!holds(row, &new)).then_some(new)
    }

    /// The rows a row operation works on: its queries, or the rows holding the value to
    /// replace (`contains` for an array column, `equal` for one value).
    async fn queries_of(&self, op: &AwOp) -> Result<Vec<Value>, AwError> {
        Ok(match op {
            AwOp::Set { queries, .. } | AwOp::Unset { queries, .. } => queries.clone(),
            AwOp::UpdateReferences {
                table,
                column,
                from,
                ..
            } => {
                let Some(def) = self.column(table, column).await? else {
                    return Err(AwError::Refused(format!(
                        "column {table}.{column} does not exist"
                    )));
                };
                let method = if def["array"].as_bool().unwrap_or(false) {
                    "contains"
                } else {
                    "equal"
                };
                vec![json!({ "method": method, "attribute": column, "values": [from] })]
            }
            _ => Vec::new(),
        })
    }

    /// Runs an operation (its checks passed, its outcome recorded).
    pub async fn run(&self, op: &AwOp, index: usize, out: &mut OpOutcome) -> Result<(), AwError> {
        self.alive().await?;
        match op {
            AwOp::AddColumn { table, kind, body } => {
                out.created_collection = true;
                self.create_column(table, kind, body).await?;
            }
            AwOp::RemoveColumn { table, column } => {
                let not_null = [json!({ "method": "isNotNull", "attribute": column })];
                let mut n = 0u64;
                self.each_row(table, &not_null, |row| {
                    n += 1;
                    let id = row["$id"].as_str().unwrap_or_default().to_string();
                    let v = to_bson(row.get(column).unwrap_or(&Value::Null));
                    async move { self.back_up(index, &id, doc! { "value": v }).await }
                })
                .await?;
                out.backed_up = n;
                out.matched = n;
                self.delete_column(table, column).await?;
            }
            AwOp::RenameColumn { table, from, to } => {
                let def = out
                    .before
                    .as_ref()
                    .and_then(|b| b.get("column"))
                    .map(to_json)
                    .unwrap_or(Value::Null);
                self.rename_column(table, &def, from, to).await?;
            }
            AwOp::CreateIndex { table, body } => {
                self.create_index(table, body).await?;
            }
            AwOp::DropIndex { table, key } => {
                self.delete_index(table, key).await?;
            }
            AwOp::CreateTable {
                table,
                name,
                columns,
                indexes,
            } => {
                out.created_collection = true;
                self.create_table(table, name, columns, indexes).await?;
            }
            AwOp::DropTable { table } => {
                let mut n = 0u64;
                self.each_row(table, &[], |row| {
                    n += 1;
                    let id = row["$id"].as_str().unwrap_or_default().to_string();
                    let data = to_bson(&Value::Object(data_of(&row)));
                    let permissions = to_bson(&row["$permissions"]);
                    // Its system timestamps too: the down writes them back (an API key may
                    // set them), so the rows are not new to an application ordering by them.
                    let stamps = doc! {
                        "createdAt": to_bson(&row["$createdAt"]),
                        "updatedAt": to_bson(&row["$updatedAt"]),
                    };
                    async move {
                        self.back_up(
                            index,
                            &id,
                            doc! { "data": data, "permissions": permissions, "stamps": stamps },
                        )
                        .await
                    }
                })
                .await?;
                out.backed_up = n;
                out.deleted = n;
                let rest = format!("/{table}");
                self.client
                    .call(reqwest::Method::DELETE, &self.path(&rest), None)
                    .await?;
                self.wait_gone(&rest, "table").await?;
            }
            AwOp::Insert { table, rows } => {
                for r in rows {
                    let id = r["$id"].as_str().unwrap_or_default();
                    let data = Value::Object(data_of(r));
                    if !self.client.create_row(self.db, table, id, &data).await? {
                        return Err(AwError::Refused(format!(
                            "row {id} exists already in {table} (written meanwhile)"
                        )));
                    }
                    out.inserted += 1;
                }
            }
            AwOp::Set { table, .. }
            | AwOp::Unset { table, .. }
            | AwOp::UpdateReferences { table, .. } => {
                let queries = self.queries_of(op).await?;
                let (mut matched, mut modified) = (0u64, 0u64);
                let mut after: Option<String> = None;
                loop {
                    self.alive().await?;
                    let page = self.page(table, &queries, after.as_deref()).await?;
                    let n = page.len();
                    after = page
                        .last()
                        .and_then(|r| r["$id"].as_str())
                        .map(str::to_string);
                    for row in &page {
                        matched += 1;
                        let Some(new) = Self::rewrite(op, row) else {
                            continue;
                        };
                        self.alive().await?;
                        let id = row["$id"].as_str().unwrap_or_default();
                        let old: Map<String, Value> = new
                            .keys()
                            .map(|k| (k.clone(), row.get(k).cloned().unwrap_or(Value::Null)))
                            .collect();
                        self.back_up(
                            index,
                            id,
                            doc! {
                                "old": to_bson(&Value::Object(old)),
                                "new": to_bson(&Value::Object(new.clone())),
                            },
                        )
                        .await?;
                        out.backed_up += 1;
                        self.client
                            .update_row(self.db, table, id, &Value::Object(new))
                            .await?;
                        modified += 1;
                        out.modified = modified;
                    }
                    if n < PAGE || after.is_none() {
                        break;
                    }
                }
                out.matched = matched;
                out.modified = modified;
            }
        }
        Ok(())
    }

    /// Starts a TablesDB transaction; returns its id.
    pub async fn begin(&self) -> Result<String, AwError> {
        let t = self
            .client
            .call(
                reqwest::Method::POST,
                "/tablesdb/transactions",
                Some(&json!({ "ttl": 900 })),
            )
            .await?;
        t["$id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| AwError::Refused("the new transaction has no $id".into()))
    }

    /// Commits (`true`) or rolls back a transaction.
    pub async fn finish(&self, transaction: &str, commit: bool) -> Result<(), AwError> {
        let body = if commit {
            json!({ "commit": true })
        } else {
            json!({ "rollback": true })
        };
        self.client
            .call(
                reqwest::Method::PATCH,
                &format!("/tablesdb/transactions/{transaction}"),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Commits a transaction. An error whose answer was lost (the server may have committed)
    /// is checked against the transaction's status: committed is a success; one still pending
    /// is rolled back.
    pub async fn commit(&self, transaction: &str) -> Result<(), AwError> {
        let Err(e) = self.finish(transaction, true).await else {
            return Ok(());
        };
        match self.transaction_status(transaction).await {
            Ok(Some(s)) if s == "committed" => Ok(()),
            Ok(Some(s)) if s == "pending" => {
                let _ = self.finish(transaction, false).await;
                Err(e)
            }
            _ => Err(e),
        }
    }

    /// A transaction's status (pending, committing, committed, rolled_back, failed); `None` when
    /// the server has none by that id (expired and gone).
    pub async fn transaction_status(&self, transaction: &str) -> Result<Option<String>, AwError> {
        match self
            .client
            .call(
                reqwest::Method::GET,
                &format!("/tablesdb/transactions/{transaction}"),
                None,
            )
            .await
        {
            Ok(t) => Ok(t["status"].as_str().map(str::to_string)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads what a row operation would stage in a transaction (reads only: nothing is written)
    /// into `staging`: each staged operation and the backup entry its inverse needs, while they
    /// fit in `staging.max`; past it, only counts them.
    pub async fn gather(
        &self,
        op: &AwOp,
        index: usize,
        out: &mut OpOutcome,
        staging: &mut Staging,
    ) -> Result<(), AwError> {
        let staged = |table: &str, action: &str, row: &str, data: Value| {
            json!({
                "action": action, "databaseId": self.db, "tableId": table, "rowId": row,
                "data": data,
            })
        };
        match op {
            AwOp::Insert { table, rows } => {
                for r in rows {
                    let id = r["$id"].as_str().unwrap_or_default();
                    out.inserted += 1;
                    staging.push(staged(table, "create", id, Value::Object(data_of(r))), None);
                }
            }
            AwOp::Set { table, .. }
            | AwOp::Unset { table, .. }
            | AwOp::UpdateReferences { table, .. } => {
                let queries = self.queries_of(op).await?;
                let mut after: Option<String> = None;
                loop {
                    self.alive().await?;
                    let page = self.page(table, &queries, after.as_deref()).await?;
                    let n = page.len();
                    after = page
                        .last()
                        .and_then(|r| r["$id"].as_str())
                        .map(str::to_string);
                    for row in &page {
                        out.matched += 1;
                        let Some(new) = Self::rewrite(op, row) else {
                            continue;
                        };
                        let id = row["$id"].as_str().unwrap_or_default();
                        let old: Map<String, Value> = new
                            .keys()
                            .map(|k| (k.clone(), row.get(k).cloned().unwrap_or(Value::Null)))
                            .collect();
                        out.backed_up += 1;
                        out.modified += 1;
                        let entry = doc! {
                            "old": to_bson(&Value::Object(old)),
                            "new": to_bson(&Value::Object(new.clone())),
                        };
                        staging.push(
                            staged(table, "update", id, Value::Object(new)),
                            Some((index, id.to_string(), entry)),
                        );
                    }
                    if n < PAGE || after.is_none() {
                        break;
                    }
                }
            }
            other => {
                return Err(AwError::Refused(format!(
                    "`{}` changes the schema: it cannot run in a transaction",
                    other.kind()
                )));
            }
        }
        Ok(())
    }

    /// Reads what undoing a row operation would stage in a transaction (reads only) into
    /// `staging`, counting into `done` what it would put back: each row the change inserted and
    /// that still holds what it inserted is deleted, each row it rewrote and that still holds
    /// what it wrote gets its old values back; rows changed since are left alone (counted).
    pub async fn gather_undo(
        &self,
        op: &AwOp,
        index: usize,
        staging: &mut Staging,
        done: &mut OpOutcome,
    ) -> Result<(), AwError> {
        self.alive().await?;
        let staged = |table: &str, action: &str, row: &str, data: Value| {
            json!({
                "action": action, "databaseId": self.db, "tableId": table, "rowId": row,
                "data": data,
            })
        };
        match op {
            AwOp::Insert { table, rows } => {
                for r in rows {
                    let id = r["$id"].as_str().unwrap_or_default();
                    match self.client.get_row(self.db, table, id).await? {
                        Some(row) if holds(&row, &data_of(r)) => {
                            done.deleted += 1;
                            staging.push(staged(table, "delete", id, json!({})), None);
                        }
                        Some(_) => done.skipped += 1,
                        None => {}
                    }
                }
            }
            AwOp::Set { table, .. }
            | AwOp::Unset { table, .. }
            | AwOp::UpdateReferences { table, .. } => {
                let (mut after, mut end) = (None, false);
                while let Some(page) = self.backed_up_page(index, &mut after, &mut end).await? {
                    for e in page {
                        let id = e.get_str("row").unwrap_or_default();
                        let map = |k: &str| match to_json(e.get(k).unwrap_or(&Bson::Null)) {
                            Value::Object(o) => o,
                            _ => Map::new(),
                        };
                        let (old, new) = (map("old"), map("new"));
                        match self.client.get_row(self.db, table, id).await? {
                            Some(row) if holds(&row, &new) => {
                                done.modified += 1;
                                staging.push(staged(table, "update", id, Value::Object(old)), None);
                            }
                            Some(row) if holds(&row, &old) => {}
                            _ => done.skipped += 1,
                        }
                    }
                }
            }
            other => {
                return Err(AwError::Refused(format!(
                    "`{}` changes the schema: it cannot be undone in a transaction",
                    other.kind()
                )));
            }
        }
        Ok(())
    }

    /// Writes what `staging` gathered: the backup entries first (what undoing needs), then the
    /// operations into `transaction`, at most 100 per request (nothing is written to the tables
    /// before the commit).
    pub async fn stage(&self, transaction: &str, staging: Staging) -> Result<(), AwError> {
        for (index, row, entry) in staging.backups {
            self.alive().await?;
            self.back_up(index, &row, entry).await?;
        }
        for chunk in staging.operations.chunks(100) {
            self.alive().await?;
            self.client
                .call(
                    reqwest::Method::POST,
                    &format!("/tablesdb/transactions/{transaction}/operations"),
                    Some(&json!({ "operations": chunk })),
                )
                .await?;
        }
        Ok(())
    }

    /// Undoes an operation from its outcome; tolerant of what it did not do (an operation cut
    /// short, or undone already). Returns the counts of what it put back.
    pub async fn undo(
        &self,
        op: &AwOp,
        index: usize,
        out: &OpOutcome,
    ) -> Result<OpOutcome, AwError> {
        self.alive().await?;
        let mut done = OpOutcome::default();
        let before = |k: &str| {
            out.before
                .as_ref()
                .and_then(|b| b.get(k))
                .map(to_json)
                .unwrap_or(Value::Null)
        };
        match op {
            AwOp::AddColumn { table, body, .. } => {
                let key = body["key"].as_str().unwrap_or_default();
                // Values written into the column since it was added (other than its default)
                // would go with it: refused, nothing deleted.
                if self.column(table, key).await?.is_some() {
                    let mut q = vec![json!({ "method": "isNotNull", "attribute": key })];
                    if let Some(d) = body.get("default").filter(|d| !d.is_null()) {
                        q.push(json!({ "method": "notEqual", "attribute": key, "values": [d] }));
                    }
                    let written = self.page(table, &q, None).await?;
                    if let Some(first) = written.first() {
                        return Err(AwError::RefusedBeforeWriting(format!(
                            "column {table}.{key} holds values written since the change added it ({}{} row(s), e.g. row {}): removing it would delete them; clear or copy them first, then run down again",
                            written.len(),
                            if written.len() >= PAGE { "+" } else { "" },
                            first["$id"].as_str().unwrap_or("?")
                        )));
                    }
                }
                self.delete_column(table, key).await?;
            }
            AwOp::RemoveColumn { table, column } => {
                if self.column(table, column).await?.is_none() {
                    let (kind, body) = column_request(&before("column"));
                    self.create_column(table, &kind, &body).await?;
                }
                let (mut after, mut end) = (None, false);
                while let Some(page) = self.backed_up_page(index, &mut after, &mut end).await? {
                    for e in page {
                        self.alive().await?;
                        let id = e.get_str("row").unwrap_or_default();
                        let v = to_json(e.get("value").unwrap_or(&Bson::Null));
                        match self.client.get_row(self.db, table, id).await? {
                            Some(row) if row.get(column).is_none_or(Value::is_null) => {
                                self.client
                                    .update_row(self.db, table, id, &json!({ column: v }))
                                    .await?;
                                done.modified += 1;
                            }
                            Some(row) if row.get(column).is_some_and(|s| same_stored(s, &v)) => {}
                            _ => done.skipped += 1,
                        }
                    }
                }
            }
            AwOp::RenameColumn { table, from, to } => {
                match (
                    self.column(table, from).await?,
                    self.column(table, to).await?,
                ) {
                    (None, Some(def)) => self.rename_column(table, &def, to, from).await?,
                    // Renamed back already (a down cut short and run again).
                    (Some(_), None) => {}
                    (Some(_), Some(_)) => {
                        return Err(AwError::RefusedBeforeWriting(format!(
                            "column {table}.{from} exists again (made since) beside {to}: renaming {to} back would clash with it; rename or remove one, then run down again"
                        )));
                    }
                    (None, None) => {
                        return Err(AwError::RefusedBeforeWriting(format!(
                            "column {table}.{to} is gone (removed since): there is nothing to rename back to {from}"
                        )));
                    }
                }
            }
            AwOp::CreateIndex { table, body } => {
                self.delete_index(table, body["key"].as_str().unwrap_or_default())
                    .await?;
            }
            AwOp::DropIndex { table, key } => {
                if self.table(table).await?.is_some() {
                    match self.index(table, key).await? {
                        None => self.create_index(table, &before("index")).await?,
                        // Another index of that key made since: not the one this change dropped.
                        Some(now) if index_request(&now) != index_request(&before("index")) => {
                            return Err(AwError::RefusedBeforeWriting(format!(
                                "an index {table}.{key} exists again with another definition (made since): the dropped one cannot be put back under its key; drop or rename that index, then run down again"
                            )));
                        }
                        Some(_) => {}
                    }
                }
            }
            AwOp::CreateTable { table, .. } => {
                if self.table(table).await?.is_some() {
                    if !self.client.table_is_empty(self.db, table).await? {
                        return Err(AwError::RefusedBeforeWriting(format!(
                            "table {table}, created by the change, holds rows written since: it is left as it is (delete them, or drop the table, then run down again)"
                        )));
                    }
                    let rest = format!("/{table}");
                    ok_missing(
                        self.client
                            .call(reqwest::Method::DELETE, &self.path(&rest), None)
                            .await,
                    )?;
                    self.wait_gone(&rest, "table").await?;
                }
            }
            AwOp::DropTable { table } => {
                // Each step only adds what is missing: an undo cut short (or an up that stopped
                // before the table went) is finished by running it again.
                if self.table(table).await?.is_none() {
                    let name = before("name");
                    let settings: Map<String, Value> = ["permissions", "rowSecurity", "enabled"]
                        .into_iter()
                        .map(|k| (k.to_string(), before(k)))
                        .collect();
                    self.create_table_as(table, name.as_str().unwrap_or(table), &settings)
                        .await?;
                }
                for def in before("columns").as_array().into_iter().flatten() {
                    let (kind, body) = column_request(def);
                    let key = body["key"].as_str().unwrap_or_default();
                    if self.column(table, key).await?.is_none() {
                        self.create_column(table, &kind, &body).await?;
                    }
                }
                let (mut after, mut end) = (None, false);
                while let Some(page) = self.backed_up_page(index, &mut after, &mut end).await? {
                    for e in page {
                        self.alive().await?;
                        let id = e.get_str("row").unwrap_or_default();
                        let mut data = to_json(e.get("data").unwrap_or(&Bson::Null));
                        // The row's own `$createdAt` / `$updatedAt` (backups made before they
                        // were kept have none: the server sets new ones).
                        if let (Some(stamps), Some(o)) =
                            (e.get_document("stamps").ok(), data.as_object_mut())
                        {
                            for (from, to) in
                                [("createdAt", "$createdAt"), ("updatedAt", "$updatedAt")]
                            {
                                if let Ok(at) = stamps.get_str(from) {
                                    o.insert(to.into(), Value::String(at.into()));
                                }
                            }
                        }
                        let permissions = e.get("permissions").map(to_json);
                        if self
                            .create_row_as(table, id, &data, permissions.as_ref())
                            .await?
                        {
                            done.inserted += 1;
                        }
                    }
                }
                for i in before("indexes").as_array().into_iter().flatten() {
                    let key = i["key"].as_str().unwrap_or_default();
                    if self.index(table, key).await?.is_none() {
                        self.create_index(table, i).await?;
                    }
                }
            }
            AwOp::Insert { table, rows } => {
                for r in rows {
                    let id = r["$id"].as_str().unwrap_or_default();
                    match self.client.get_row(self.db, table, id).await? {
                        Some(row) if holds(&row, &data_of(r)) => {
                            self.client.delete_row(self.db, table, id).await?;
                            done.deleted += 1;
                        }
                        Some(_) => done.skipped += 1,
                        None => {}
                    }
                }
            }
            AwOp::Set { table, .. }
            | AwOp::Unset { table, .. }
            | AwOp::UpdateReferences { table, .. } => {
                let (mut after, mut end) = (None, false);
                while let Some(page) = self.backed_up_page(index, &mut after, &mut end).await? {
                    for e in page {
                        self.alive().await?;
                        let id = e.get_str("row").unwrap_or_default();
                        let map = |k: &str| match to_json(e.get(k).unwrap_or(&Bson::Null)) {
                            Value::Object(o) => o,
                            _ => Map::new(),
                        };
                        let (old, new) = (map("old"), map("new"));
                        match self.client.get_row(self.db, table, id).await? {
                            Some(row) if holds(&row, &new) => {
                                self.client
                                    .update_row(self.db, table, id, &Value::Object(old))
                                    .await?;
                                done.modified += 1;
                            }
                            Some(row) if holds(&row, &old) => {}
                            _ => done.skipped += 1,
                        }
                    }
                }
            }
        }
        Ok(done)
    }

    /// What an operation would do now (`--dry-run`): reads only.
    pub async fn preview(&self, op: &AwOp) -> Result<Preview, AwError> {
        let table = op.table();
        let exists = self.table(table).await?.is_some();
        let p = |matching: u64, note: String| Preview {
            op: op.kind().into(),
            collection: Some(table.to_string()),
            matching,
            would_fail: note.contains("would fail"),
            note,
            writes: None,
            reads: None,
        };
        if !exists && !matches!(op, AwOp::CreateTable { .. }) {
            return Ok(p(0, format!("table {table} does not exist: it would fail")));
        }
        let count = |queries: Vec<Value>| async move {
            let mut n = 0u64;
            self.each_row(table, &queries, |_| {
                n += 1;
                async { Ok(()) }
            })
            .await
            .map(|_| n)
        };
        Ok(match op {
            AwOp::AddColumn { body, .. } => {
                let key = body["key"].as_str().unwrap_or_default();
                if self.column(table, key).await?.is_some() {
                    p(0, format!("column {key} exists already: it would fail"))
                } else {
                    p(
                        0,
                        format!("column {key} does not exist: it would be created"),
                    )
                }
            }
            AwOp::RemoveColumn { column, .. } => {
                if self.column(table, column).await?.is_none() {
                    p(0, format!("column {column} does not exist: it would fail"))
                } else {
                    let n =
                        count(vec![json!({ "method": "isNotNull", "attribute": column })]).await?;
                    p(
                        n,
                        format!(
                            "column {column} exists; {n} rows hold a value there (backed up, then removed)"
                        ),
                    )
                }
            }
            AwOp::RenameColumn { from, to, .. } => {
                let (f, t) = (
                    self.column(table, from).await?.is_some(),
                    self.column(table, to).await?.is_some(),
                );
                p(
                    0,
                    format!(
                        "column {from} {}, column {to} {}",
                        if f { "exists" } else { "does not exist" },
                        if t {
                            "exists (it would fail)"
                        } else {
                            "does not exist"
                        }
                    ),
                )
            }
            AwOp::CreateIndex { body, .. } => {
                let key = body["key"].as_str().unwrap_or_default();
                let there = self.index(table, key).await?.is_some();
                p(
                    0,
                    format!(
                        "index {key} {}",
                        if there {
                            "exists already: it would fail"
                        } else {
                            "does not exist: it would be created"
                        }
                    ),
                )
            }
            AwOp::DropIndex { key, .. } => {
                let there = self.index(table, key).await?.is_some();
                p(
                    0,
                    format!(
                        "index {key} {}",
                        if there {
                            "exists: it would be dropped (its definition kept)"
                        } else {
                            "does not exist: it would fail"
                        }
                    ),
                )
            }
            AwOp::CreateTable { .. } => {
                if exists {
                    p(0, format!("table {table} exists already: it would fail"))
                } else {
                    p(
                        0,
                        format!("table {table} does not exist: it would be created"),
                    )
                }
            }
            AwOp::DropTable { .. } => {
                let n = count(Vec::new()).await?;
                p(
                    n,
                    format!("{n} rows would be backed up, then the table dropped"),
                )
            }
            AwOp::Insert { rows, .. } => {
                let mut taken = 0u64;
                for r in rows {
                    let id = r["$id"].as_str().unwrap_or_default();
                    if self.client.get_row(self.db, table, id).await?.is_some() {
                        taken += 1;
                    }
                }
                p(
                    rows.len() as u64,
                    if taken > 0 {
                        format!(
                            "{} rows; {taken} of their ids exist already: it would fail",
                            rows.len()
                        )
                    } else {
                        format!("{} rows would be inserted", rows.len())
                    },
                )
            }
            AwOp::Set { .. } | AwOp::Unset { .. } | AwOp::UpdateReferences { .. } => {
                let (mut matched, mut changing) = (0u64, 0u64);
                let queries = self.queries_of(op).await?;
                self.each_row(table, &queries, |row| {
                    matched += 1;
                    changing += u64::from(Self::rewrite(op, &row).is_some());
                    async { Ok(()) }
                })
                .await?;
                p(
                    matched,
                    format!("{matched} rows match; {changing} would change (backed up first)"),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside tester F5: inverses compared rows with the change file's literal values, so
    /// against a real Appwrite (which gives a float column's `2` back as `2.0` and a datetime in
    /// its own form) no `set` or `insert` was ever put back.
    #[test]
    fn stored_values_compare_in_the_columns_own_form() {
        assert!(same_stored(&json!(2.0), &json!(2)));
        assert!(same_stored(&json!([1.0, 2.5]), &json!([1, 2.5])));
        assert!(!same_stored(&json!(2.5), &json!(2)));
        assert!(same_stored(
            &json!("2024-01-01T00:00:00.000+00:00"),
            &json!("2024-01-01T00:00:00Z")
        ));
        assert!(same_stored(
            &json!("2024-01-01T01:30:00.000+00:00"),
            &json!("2024-01-01T02:30:00+01:00")
        ));
        assert!(!same_stored(
            &json!("2024-01-01T00:00:00.001+00:00"),
            &json!("2024-01-01T00:00:00Z")
        ));
        // A text column's value is text: another spelling of the same instant is another value.
        assert!(!same_stored(
            &json!("2024-01-01T00:00:00+00:00"),
            &json!("2024-01-01T00:00:00Z")
        ));
        assert!(!same_stored(&json!("2"), &json!(2)));
        let row = json!({"score": 2.0, "at": "2024-01-01T00:00:00.000+00:00", "s": "x"});
        let mut wrote = Map::new();
        wrote.insert("score".into(), json!(2));
        wrote.insert("at".into(), json!("2024-01-01T00:00:00Z"));
        assert!(holds(&row, &wrote));
        wrote.insert("s".into(), json!("y"));
        assert!(!holds(&row, &wrote));
    }
}
