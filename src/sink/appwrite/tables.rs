//! Row-level calls beyond bulk writes: single rows (the ledger's records), listing a table by
//! cursor (verification, backups), deleting, and copying a table (backups and restores).

use serde_json::{Value, json};

use super::{AppwriteClient, AppwriteError};

/// Rows per page when listing a table.
pub const PAGE: usize = 1000;

/// `queries[]=…` parameters as a query string.
pub fn query_string(queries: &[Value]) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a valid base");
    {
        let mut pairs = url.query_pairs_mut();
        for q in queries {
            pairs.append_pair("queries[]", &q.to_string());
        }
    }
    url.query().unwrap_or_default().to_string()
}

/// A listing read page by page by cursor (`limit` + `cursorAfter` on `$id`): rows of a table
/// (`/tablesdb/{db}/tables/{t}/rows`, items under `rows`) or users (`/users`, under `users`).
/// Memory holds one page, whatever the listing's size.
pub struct Pages<'c> {
    client: &'c AppwriteClient,
    path: String,
    key: &'static str,
    after: Option<String>,
    done: bool,
    by_id: bool,
}

impl<'c> Pages<'c> {
    pub fn rows(client: &'c AppwriteClient, db: &str, table: &str) -> Pages<'c> {
        Pages::new(
            client,
            format!("/tablesdb/{db}/tables/{table}/rows"),
            "rows",
        )
    }

    pub fn users(client: &'c AppwriteClient) -> Pages<'c> {
        Pages::new(client, "/users".into(), "users")
    }

    /// The project's databases (`/tablesdb`, under `databases`).
    pub fn databases(client: &'c AppwriteClient) -> Pages<'c> {
        Pages::new(client, "/tablesdb".into(), "databases")
    }

    fn new(client: &'c AppwriteClient, path: String, key: &'static str) -> Pages<'c> {
        Pages {
            client,
            path,
            key,
            after: None,
            done: false,
            by_id: false,
        }
    }

    /// Pages in ascending `$id` order (`orderAsc` on `$id`): a defined order for the cursor to walk.
    /// Rows only (Appwrite does not order users by `$id`).
    pub fn by_id(mut self) -> Pages<'c> {
        self.by_id = true;
        self
    }

    /// The next page (`None` after the last).
    pub async fn next(&mut self) -> Result<Option<Vec<Value>>, AppwriteError> {
        if self.done {
            return Ok(None);
        }
        let mut q = vec![json!({ "method": "limit", "values": [PAGE] })];
        if self.by_id {
            q.push(json!({ "method": "orderAsc", "attribute": "$id", "values": [] }));
        }
        if let Some(a) = &self.after {
            q.push(json!({ "method": "cursorAfter", "values": [a] }));
        }
        let v = self
            .client
            .call(
                reqwest::Method::GET,
                &format!("{}?{}", self.path, query_string(&q)),
                None,
            )
            .await?;
        let items = v[self.key].as_array().cloned().unwrap_or_default();
        self.after = items
            .last()
            .and_then(|r| r["$id"].as_str())
            .map(str::to_string);
        self.done = items.len() < PAGE || self.after.is_none();
        Ok((!items.is_empty()).then_some(items))
    }

    /// Calls `f` on every item; returns how many there were.
    pub async fn each(mut self, mut f: impl FnMut(&Value)) -> Result<u64, AppwriteError> {
        let mut n = 0;
        while let Some(page) = self.next().await? {
            n += page.len() as u64;
            page.iter().for_each(&mut f);
        }
        Ok(n)
    }
}

impl AppwriteClient {
    /// Whether table `table` exists in database `db`.
    pub async fn table_exists(&self, db: &str, table: &str) -> Result<bool, AppwriteError> {
        match self
            .call(
                reqwest::Method::GET,
                &format!("/tablesdb/{db}/tables/{table}"),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The first `limit` rows of a table, in the server's order.
    async fn first_rows(
        &self,
        db: &str,
        table: &str,
        limit: usize,
    ) -> Result<Vec<Value>, AppwriteError> {
        let q = [json!({ "method": "limit", "values": [limit] })];
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/tablesdb/{db}/tables/{table}/rows?{}", query_string(&q)),
                None,
            )
            .await?;
        Ok(v["rows"].as_array().cloned().unwrap_or_default())
    }

    /// Every row of a table (`None` when the table does not exist). For small tables (the
    /// ledger's); big ones are read page by page with [`Pages`].
    pub async fn all_rows(
        &self,
        db: &str,
        table: &str,
    ) -> Result<Option<Vec<Value>>, AppwriteError> {
        let mut out = Vec::new();
        match Pages::rows(self, db, table)
            .each(|r| out.push(r.clone()))
            .await
        {
            Ok(_) => Ok(Some(out)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a row; `false` when a row with this id exists (nothing written).
    pub async fn create_row(
        &self,
        db: &str,
        table: &str,
        id: &str,
        data: &Value,
    ) -> Result<bool, AppwriteError> {
        match self
            .call(
                reqwest::Method::POST,
                &format!("/tablesdb/{db}/tables/{table}/rows"),
                Some(&json!({ "rowId": id, "data": data })),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces a row.
    pub async fn put_row(
        &self,
        db: &str,
        table: &str,
        id: &str,
        data: &Value,
    ) -> Result<(), AppwriteError> {
        self.call(
            reqwest::Method::PUT,
            &format!("/tablesdb/{db}/tables/{table}/rows/{id}"),
            Some(&json!({ "data": data })),
        )
        .await
        .map(|_| ())
    }

    /// Updates the columns in `data` of an existing row (`PATCH`, which unlike `PUT` never creates
    /// one); `false` when the row does not exist (404), nothing written.
    pub async fn update_row(
        &self,
        db: &str,
        table: &str,
        id: &str,
        data: &Value,
    ) -> Result<bool, AppwriteError> {
        match self
            .call(
                reqwest::Method::PATCH,
                &format!("/tablesdb/{db}/tables/{table}/rows/{id}"),
                Some(&json!({ "data": data })),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One row, `None` when it does not exist.
    pub async fn get_row(
        &self,
        db: &str,
        table: &str,
        id: &str,
    ) -> Result<Option<Value>, AppwriteError> {
        match self
            .call(
                reqwest::Method::GET,
                &format!("/tablesdb/{db}/tables/{table}/rows/{id}"),
                None,
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a row; `false` when there was none.
    pub async fn delete_row(&self, db: &str, table: &str, id: &str) -> Result<bool, AppwriteError> {
        match self
            .call(
                reqwest::Method::DELETE,
                &format!("/tablesdb/{db}/tables/{table}/rows/{id}"),
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_missing() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the rows matching `queries` in one request (Appwrite's bulk delete); returns how
    /// many.
    pub async fn delete_rows_where(
        &self,
        db: &str,
        table: &str,
        queries: &[Value],
    ) -> Result<u64, AppwriteError> {
        let q: Vec<String> = queries.iter().map(Value::to_string).collect();
        let v = self
            .call(
                reqwest::Method::DELETE,
                &format!("/tablesdb/{db}/tables/{table}/rows"),
                Some(&json!({ "queries": q })),
            )
            .await?;
        Ok(v["total"].as_u64().unwrap_or(0))
    }

    /// Deletes the rows of child table `table` whose `parentId` is one of `parents` (100 ids per
    /// request).
    pub async fn delete_children(
        &self,
        db: &str,
        table: &str,
        parents: &[String],
    ) -> Result<(), AppwriteError> {
        for chunk in parents.chunks(100) {
            let q =
                json!({ "method": "equal", "attribute": super::schema::PARENT, "values": chunk });
            self.delete_rows_where(db, table, &[q]).await?;
        }
        Ok(())
    }

    /// Those of the row ids `ids` that table `table` holds (none when the table is missing): a
    /// hundred ids a request (`equal` on `$id`), not a request a row.
    pub async fn present_rows(
        &self,
        db: &str,
        table: &str,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, AppwriteError> {
        let mut out = std::collections::HashSet::new();
        for chunk in ids.chunks(100) {
            let q = [
                json!({ "method": "equal", "attribute": "$id", "values": chunk }),
                json!({ "method": "select", "values": ["$id"] }),
                json!({ "method": "limit", "values": [chunk.len()] }),
            ];
            let v = match self
                .call(
                    reqwest::Method::GET,
                    &format!("/tablesdb/{db}/tables/{table}/rows?{}", query_string(&q)),
                    None,
                )
                .await
            {
                Ok(v) => v,
                Err(e) if e.is_missing() => return Ok(out),
                Err(e) => return Err(e),
            };
            for r in v["rows"].as_array().into_iter().flatten() {
                if let Some(id) = r["$id"].as_str() {
                    out.insert(id.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Whether a table holds no row (a missing table is empty).
    pub async fn table_is_empty(&self, db: &str, table: &str) -> Result<bool, AppwriteError> {
        match self.first_rows(db, table, 1).await {
            Ok(rows) => Ok(rows.is_empty()),
            Err(e) if e.is_missing() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Deletes every row of a table, page by page; returns how many.
    pub async fn empty_table(&self, db: &str, table: &str) -> Result<u64, AppwriteError> {
        let mut n = 0;
        loop {
            // Always the first page: what it held is deleted before the next request.
            let page = match self.first_rows(db, table, PAGE).await {
                Ok(p) => p,
                Err(e) if e.is_missing() => return Ok(n),
                Err(e) => return Err(e),
            };
            if page.is_empty() {
                return Ok(n);
            }
            for r in &page {
                if let Some(id) = r["$id"].as_str()
                    && self.delete_row(db, table, id).await?
                {
                    n += 1;
                }
            }
        }
    }

    /// The user columns of a table, as the server describes them: every one, page by page (a
    /// list answers 25 by default; a backup of a wider table lacked the others).
    pub async fn columns(&self, db: &str, table: &str) -> Result<Vec<Value>, AppwriteError> {
        const COLUMN_PAGE: usize = 100;
        let mut out = Vec::new();
        loop {
            let q = [
                json!({ "method": "limit", "values": [COLUMN_PAGE] }),
                json!({ "method": "offset", "values": [out.len()] }),
            ];
            let v = self
                .call(
                    reqwest::Method::GET,
                    &format!("/tablesdb/{db}/tables/{table}/columns?{}", query_string(&q)),
                    None,
                )
                .await?;
            let page = v["columns"].as_array().cloned().unwrap_or_default();
            let n = page.len();
            out.extend(page);
            if n < COLUMN_PAGE {
                return Ok(out);
            }
        }
    }

    /// Copies every row of `from` into `to` (created with the same columns when missing; rows of
    /// `to` with the same ids are replaced). Returns how many rows were copied.
    pub async fn copy_table(&self, db: &str, from: &str, to: &str) -> Result<u64, AppwriteError> {
        self.ensure_table(db, to, to).await?;
        let columns = self.columns(db, from).await?;
        for c in &columns {
            // Creation routes are named by kind.
            let (Some(kind), Some(key)) = (super::schema::route_of(c), c["key"].as_str()) else {
                continue;
            };
            let mut body = serde_json::Map::new();
            for field in ["key", "size", "required", "array", "elements", "min", "max"] {
                if let Some(v) = c.get(field).filter(|v| !v.is_null()) {
                    body.insert(field.into(), v.clone());
                }
            }
            self.ensure_column(db, to, kind, &Value::Object(body))
                .await?;
            self.wait_column(db, to, key, std::time::Duration::from_secs(120))
                .await?;
        }
        let mut copied = 0u64;
        let mut pages = Pages::rows(self, db, from);
        while let Some(page) = pages.next().await? {
            let rows: Vec<Value> = page.iter().map(data_of).collect();
            let failures =
                super::rows::upsert_rows(self, db, to, &rows, super::rows::MAX_BULK_ROWS).await?;
            if let Some(f) = failures.first() {
                return Err(f.error.clone());
            }
            copied += rows.len() as u64;
        }
        Ok(copied)
    }
}

/// A listed row as data to write again: its `$id` and its columns, without the other system
/// fields (`$sequence`, `$createdAt`, `$permissions`, …).
pub fn data_of(row: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(obj) = row.as_object() {
        for (k, v) in obj {
            if k == "$id" || !k.starts_with('$') {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}
