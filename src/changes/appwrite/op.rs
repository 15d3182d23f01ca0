//! The Appwrite operations of a change file (pure: no connection). An operation naming a
//! `table` (rather than a `collection`) is an Appwrite one; [`crate::changes::file`] hands it
//! here. Values are JSON as the TablesDB API takes them; queries are Appwrite queries written as
//! TOML tables (`{ method = "equal", attribute = "status", values = ["active"] }`).

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Column types a change may add (the TablesDB `columns/{type}` routes it can undo exactly).
pub const COLUMN_TYPES: &[&str] = &[
    "string", "integer", "float", "boolean", "datetime", "email", "url", "ip", "enum",
];

/// One Appwrite operation, compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum AwOp {
    /// Creates a column (`body`: the request body of `POST …/columns/{kind}`, `key` included).
    AddColumn {
        table: String,
        kind: String,
        body: Value,
    },
    /// Deletes a column, keeping its definition and every row's value for the inverse.
    RemoveColumn { table: String, column: String },
    /// Renames a column (`newKey`).
    RenameColumn {
        table: String,
        from: String,
        to: String,
    },
    /// Creates an index (`body`: `key`, `type`, `columns`, `orders`).
    CreateIndex { table: String, body: Value },
    /// Deletes an index, keeping its definition for the inverse.
    DropIndex { table: String, key: String },
    /// Creates a table with its columns and indexes.
    CreateTable {
        table: String,
        name: String,
        columns: Vec<(String, Value)>,
        indexes: Vec<Value>,
    },
    /// Deletes a table, keeping its columns, indexes and rows for the inverse.
    DropTable { table: String },
    /// Creates rows, each with its `$id`.
    Insert { table: String, rows: Vec<Value> },
    /// Sets columns to values in the rows matching `queries`.
    Set {
        table: String,
        queries: Vec<Value>,
        values: Map<String, Value>,
    },
    /// Sets columns to null in the rows matching `queries`.
    Unset {
        table: String,
        queries: Vec<Value>,
        columns: Vec<String>,
    },
    /// Replaces the value `from` by `to` in `column` (a value, or an element of an array column).
    UpdateReferences {
        table: String,
        column: String,
        from: Value,
        to: Value,
    },
}

impl AwOp {
    /// The operation's name as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            AwOp::AddColumn { .. } => "add_column",
            AwOp::RemoveColumn { .. } => "remove_column",
            AwOp::RenameColumn { .. } => "rename_column",
            AwOp::CreateIndex { .. } => "create_index",
            AwOp::DropIndex { .. } => "drop_index",
            AwOp::CreateTable { .. } => "create_table",
            AwOp::DropTable { .. } => "drop_table",
            AwOp::Insert { .. } => "insert",
            AwOp::Set { .. } => "set",
            AwOp::Unset { .. } => "unset",
            AwOp::UpdateReferences { .. } => "update_references",
        }
    }

    /// The table it works on.
    pub fn table(&self) -> &str {
        match self {
            AwOp::AddColumn { table, .. }
            | AwOp::RemoveColumn { table, .. }
            | AwOp::RenameColumn { table, .. }
            | AwOp::CreateIndex { table, .. }
            | AwOp::DropIndex { table, .. }
            | AwOp::CreateTable { table, .. }
            | AwOp::DropTable { table }
            | AwOp::Insert { table, .. }
            | AwOp::Set { table, .. }
            | AwOp::Unset { table, .. }
            | AwOp::UpdateReferences { table, .. } => table,
        }
    }

    /// Whether it writes rows only (a TablesDB transaction could hold it); schema operations
    /// cannot.
    pub fn row_operation(&self) -> bool {
        matches!(
            self,
            AwOp::Insert { .. }
                | AwOp::Set { .. }
                | AwOp::Unset { .. }
                | AwOp::UpdateReferences { .. }
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    key: String,
    #[serde(rename = "type")]
    kind: String,
    size: Option<u64>,
    #[serde(default)]
    required: bool,
    default: Option<Value>,
    #[serde(default)]
    array: bool,
    elements: Option<Vec<String>>,
    min: Option<Value>,
    max: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIndex {
    key: String,
    #[serde(rename = "type", default = "key_type")]
    kind: String,
    columns: Vec<String>,
    #[serde(default)]
    orders: Vec<String>,
}

fn key_type() -> String {
    "key".into()
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum RawAwOp {
    AddColumn {
        table: String,
        column: String,
        #[serde(rename = "type")]
        kind: String,
        size: Option<u64>,
        #[serde(default)]
        required: bool,
        default: Option<Value>,
        #[serde(default)]
        array: bool,
        elements: Option<Vec<String>>,
        min: Option<Value>,
        max: Option<Value>,
    },
    RemoveColumn {
        table: String,
        column: String,
    },
    RenameColumn {
        table: String,
        from: String,
        to: String,
    },
    CreateIndex {
        table: String,
        key: String,
        #[serde(rename = "type", default = "key_type")]
        kind: String,
        columns: Vec<String>,
        #[serde(default)]
        orders: Vec<String>,
    },
    DropIndex {
        table: String,
        key: String,
    },
    CreateTable {
        table: String,
        name: Option<String>,
        #[serde(default)]
        columns: Vec<RawColumn>,
        #[serde(default)]
        indexes: Vec<RawIndex>,
    },
    DropTable {
        table: String,
    },
    Insert {
        table: String,
        rows: Vec<Value>,
    },
    Set {
        table: String,
        #[serde(default)]
        queries: Vec<Value>,
        values: Map<String, Value>,
    },
    Unset {
        table: String,
        #[serde(default)]
        queries: Vec<Value>,
        columns: Vec<String>,
    },
    UpdateReferences {
        table: String,
        column: String,
        from: Value,
        to: Value,
    },
}

/// An Appwrite id (table, column, index, row): `[A-Za-z0-9._-]`, at most 36 characters, not
/// starting with `_`, `.` or `-`.
fn check_id(id: &str, what: &str) -> Result<(), String> {
    if crate::sink::appwrite::id_ok(id) {
        Ok(())
    } else {
        Err(format!(
            "{what} `{id}` is not a valid Appwrite id (letters, digits, `.`, `_`, `-`; at most 36 characters; not starting with `_`, `.` or `-`)"
        ))
    }
}

/// A column key a row operation writes: an id, not a `$` system attribute.
fn check_column(key: &str) -> Result<(), String> {
    if key.starts_with('$') {
        return Err(format!(
            "column `{key}` is a system attribute: it cannot be written"
        ));
    }
    check_id(key, "column")
}

/// The request body of a column.
fn column_body(c: RawColumn) -> Result<(String, Value), String> {
    check_id(&c.key, "column")?;
    if !COLUMN_TYPES.contains(&c.kind.as_str()) {
        return Err(format!(
            "column `{}`: type `{}` is not one of {}",
            c.key,
            c.kind,
            COLUMN_TYPES.join(", ")
        ));
    }
    if c.required && c.default.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(format!(
            "column `{}`: a required column cannot have a default (Appwrite refuses it)",
            c.key
        ));
    }
    let mut body = json!({ "key": c.key, "required": c.required, "array": c.array });
    match c.kind.as_str() {
        "string" => {
            let Some(size) = c.size.filter(|s| *s > 0) else {
                return Err(format!("column `{}`: a string column needs a size", c.key));
            };
            body["size"] = json!(size);
        }
        "enum" => {
            let Some(elements) = c.elements.filter(|e| !e.is_empty()) else {
                return Err(format!("column `{}`: an enum column needs elements", c.key));
            };
            body["elements"] = json!(elements);
        }
        _ => {}
    }
    if c.kind != "string" && c.size.is_some() {
        return Err(format!(
            "column `{}`: only a string column has a size",
            c.key
        ));
    }
    for (k, v) in [("min", &c.min), ("max", &c.max)] {
        if let Some(v) = v {
            if !matches!(c.kind.as_str(), "integer" | "float") {
                return Err(format!("column `{}`: `{k}` is for numbers only", c.key));
            }
            if !v.is_number() {
                return Err(format!("column `{}`: `{k}` must be a number", c.key));
            }
            body[k] = v.clone();
        }
    }
    if let (Some(lo), Some(hi)) = (
        c.min.as_ref().and_then(Value::as_f64),
        c.max.as_ref().and_then(Value::as_f64),
    ) && lo > hi
    {
        return Err(format!(
            "column `{}`: min {lo} is greater than max {hi} (Appwrite refuses it)",
            c.key
        ));
    }
    if let Some(d) = c.default.filter(|d| !d.is_null()) {
        default_fits(&c.key, &c.kind, &body, &d)?;
        body["default"] = d;
    }
    Ok((c.kind, body))
}

/// Whether a column's default is one Appwrite takes (it answers 400 otherwise, so a change
/// would pass its dry run and fail against the server): not on an array column, of the
/// column's type, within its size, elements and bounds.
fn default_fits(key: &str, kind: &str, body: &Value, d: &Value) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!(
            "column `{key}`: the default {d} {why} (Appwrite refuses it)"
        ))
    };
    if body["array"] == true {
        return refuse("is on an array column, which takes no default".into());
    }
    let typed = match kind {
        "integer" => d.is_i64() || d.is_u64(),
        "float" => d.is_number(),
        "boolean" => d.is_boolean(),
        _ => d.is_string(),
    };
    if !typed {
        return refuse(format!("is not of the column's type ({kind})"));
    }
    let text = d.as_str().unwrap_or_default();
    match kind {
        "string" if text.chars().count() as u64 > body["size"].as_u64().unwrap_or(u64::MAX) => {
            return refuse(format!("is longer than the size {}", body["size"]));
        }
        "enum"
            if !body["elements"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x == d)) =>
        {
            return refuse(format!("is not one of the elements {}", body["elements"]));
        }
        "email" if !text.contains('@') => return refuse("is not an e-mail address".into()),
        "url" if reqwest::Url::parse(text).is_err() => return refuse("is not a URL".into()),
        "ip" if text.parse::<std::net::IpAddr>().is_err() => {
            return refuse("is not an IP address".into());
        }
        "datetime" if chrono::DateTime::parse_from_rfc3339(text).is_err() => {
            return refuse("is not an ISO 8601 date and time".into());
        }
        _ => {}
    }
    if let Some(n) = d.as_f64() {
        if let Some(lo) = body["min"].as_f64()
            && n < lo
        {
            return refuse(format!("is below min {lo}"));
        }
        if let Some(hi) = body["max"].as_f64()
            && n > hi
        {
            return refuse(format!("is above max {hi}"));
        }
    }
    Ok(())
}

fn index_body(i: RawIndex) -> Result<Value, String> {
    check_id(&i.key, "index")?;
    if !["key", "unique", "fulltext"].contains(&i.kind.as_str()) {
        return Err(format!(
            "index `{}`: type `{}` is not one of key, unique, fulltext",
            i.key, i.kind
        ));
    }
    if i.columns.is_empty() {
        return Err(format!("index `{}` names no columns", i.key));
    }
    for c in &i.columns {
        check_id(c, "column")?;
    }
    if !i.orders.is_empty() && i.orders.len() != i.columns.len() {
        return Err(format!(
            "index `{}`: give one order (ASC or DESC) per column, or none",
            i.key
        ));
    }
    if let Some(o) = i.orders.iter().find(|o| *o != "ASC" && *o != "DESC") {
        return Err(format!("index `{}`: order `{o}` is not ASC or DESC", i.key));
    }
    Ok(json!({ "key": i.key, "type": i.kind, "columns": i.columns, "orders": i.orders }))
}

/// Queries as given: each a table with a `method`; paging ones are cutover's.
fn check_queries(queries: &[Value]) -> Result<(), String> {
    for q in queries {
        let Some(m) = q.get("method").and_then(Value::as_str) else {
            return Err(format!(
                "query {q} has no `method` (e.g. {{ method = \"equal\", attribute = \"status\", values = [\"active\"] }})"
            ));
        };
        if [
            "limit",
            "offset",
            "cursorAfter",
            "cursorBefore",
            "orderAsc",
            "orderDesc",
            "select",
        ]
        .contains(&m)
        {
            return Err(format!(
                "query method `{m}` is not a filter: cutover pages through the matching rows itself"
            ));
        }
    }
    Ok(())
}

/// Whether a raw operation (a table of the file) is an Appwrite one: it names a `table`.
pub fn is_appwrite(raw: &Value) -> bool {
    raw.get("table").is_some()
}

/// Compiles one Appwrite operation as the file wrote it.
pub fn compile(raw: &Value) -> Result<AwOp, String> {
    let raw: RawAwOp = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    Ok(match raw {
        RawAwOp::AddColumn {
            table,
            column,
            kind,
            size,
            required,
            default,
            array,
            elements,
            min,
            max,
        } => {
            check_id(&table, "table")?;
            let (kind, body) = column_body(RawColumn {
                key: column,
                kind,
                size,
                required,
                default,
                array,
                elements,
                min,
                max,
            })?;
            AwOp::AddColumn { table, kind, body }
        }
        RawAwOp::RemoveColumn { table, column } => {
            check_id(&table, "table")?;
            check_column(&column)?;
            AwOp::RemoveColumn { table, column }
        }
        RawAwOp::RenameColumn { table, from, to } => {
            check_id(&table, "table")?;
            check_column(&from)?;
            check_column(&to)?;
            if from == to {
                return Err(format!("from and to are both `{from}`"));
            }
            AwOp::RenameColumn { table, from, to }
        }
        RawAwOp::CreateIndex {
            table,
            key,
            kind,
            columns,
            orders,
        } => {
            check_id(&table, "table")?;
            let body = index_body(RawIndex {
                key,
                kind,
                columns,
                orders,
            })?;
            AwOp::CreateIndex { table, body }
        }
        RawAwOp::DropIndex { table, key } => {
            check_id(&table, "table")?;
            check_id(&key, "index")?;
            AwOp::DropIndex { table, key }
        }
        RawAwOp::CreateTable {
            table,
            name,
            columns,
            indexes,
        } => {
            check_id(&table, "table")?;
            let columns = columns
                .into_iter()
                .map(column_body)
                .collect::<Result<Vec<_>, _>>()?;
            let indexes = indexes
                .into_iter()
                .map(index_body)
                .collect::<Result<Vec<_>, _>>()?;
            AwOp::CreateTable {
                name: name.unwrap_or_else(|| table.clone()),
                table,
                columns,
                indexes,
            }
        }
        RawAwOp::DropTable { table } => {
            check_id(&table, "table")?;
            AwOp::DropTable { table }
        }
        RawAwOp::Insert { table, rows } => {
            check_id(&table, "table")?;
            if rows.is_empty() {
                return Err("rows is empty".into());
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, r) in rows.iter().enumerate() {
                let Some(obj) = r.as_object() else {
                    return Err(format!("row {} is not a table", i + 1));
                };
                let Some(id) = obj.get("$id").and_then(Value::as_str) else {
                    return Err(format!(
                        "row {} has no `$id`: each inserted row needs one (its inverse deletes exactly those rows)",
                        i + 1
                    ));
                };
                check_id(id, "row id")?;
                if !seen.insert(id.to_string()) {
                    return Err(format!("row id `{id}` is given twice"));
                }
                for k in obj.keys().filter(|k| *k != "$id") {
                    check_column(k)?;
                }
            }
            AwOp::Insert { table, rows }
        }
        RawAwOp::Set {
            table,
            queries,
            values,
        } => {
            check_id(&table, "table")?;
            check_queries(&queries)?;
            if values.is_empty() {
                return Err("values is empty".into());
            }
            for k in values.keys() {
                check_column(k)?;
            }
            AwOp::Set {
                table,
                queries,
                values,
            }
        }
        RawAwOp::Unset {
            table,
            queries,
            columns,
        } => {
            check_id(&table, "table")?;
            check_queries(&queries)?;
            if columns.is_empty() {
                return Err("columns is empty".into());
            }
            for k in &columns {
                check_column(k)?;
            }
            AwOp::Unset {
                table,
                queries,
                columns,
            }
        }
        RawAwOp::UpdateReferences {
            table,
            column,
            from,
            to,
        } => {
            check_id(&table, "table")?;
            check_column(&column)?;
            if from == to {
                return Err("from and to are the same value".into());
            }
            if from.is_null() || from.is_array() || from.is_object() {
                return Err("from must be a single value (a string, number or boolean)".into());
            }
            AwOp::UpdateReferences {
                table,
                column,
                from,
                to,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_compiles_and_mistakes_are_named() {
        let ok = [
            json!({"op": "add_column", "table": "patients", "column": "tier", "type": "string", "size": 16, "default": "basic"}),
            json!({"op": "remove_column", "table": "patients", "column": "tier"}),
            json!({"op": "rename_column", "table": "patients", "from": "a", "to": "b"}),
            json!({"op": "create_index", "table": "patients", "key": "by_a", "columns": ["a"]}),
            json!({"op": "drop_index", "table": "patients", "key": "by_a"}),
            json!({"op": "create_table", "table": "t", "columns": [{"key": "a", "type": "integer"}]}),
            json!({"op": "drop_table", "table": "t"}),
            json!({"op": "insert", "table": "t", "rows": [{"$id": "r1", "a": 1}]}),
            json!({"op": "set", "table": "t", "queries": [{"method": "equal", "attribute": "a", "values": [1]}], "values": {"a": 2}}),
            json!({"op": "unset", "table": "t", "columns": ["a"]}),
            json!({"op": "update_references", "table": "t", "column": "a", "from": 1, "to": 2}),
        ];
        for v in &ok {
            assert!(is_appwrite(v));
            let op = compile(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(op.kind(), v["op"].as_str().unwrap());
        }
        let bad = [
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "string"}),
                "needs a size",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "integer", "required": true, "default": 1}),
                "cannot have a default",
            ),
            // Outside tester F1: definitions Appwrite answers 400 to, refused at load.
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "integer", "default": "abc"}),
                "is not of the column's type (integer)",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "enum", "elements": ["a", "b"], "default": "z"}),
                "not one of the elements",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "string", "size": 2, "default": "toolong"}),
                "longer than the size",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "integer", "min": 0, "max": 10, "default": 50}),
                "above max",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "float", "min": 10, "max": 1}),
                "greater than max",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "string", "size": 4, "array": true, "default": "x"}),
                "array column",
            ),
            (
                json!({"op": "add_column", "table": "t", "column": "a", "type": "email", "default": "notanemail"}),
                "not an e-mail",
            ),
            (
                json!({"op": "insert", "table": "t", "rows": [{"a": 1}]}),
                "has no `$id`",
            ),
            (
                json!({"op": "set", "table": "t", "queries": [{"method": "limit", "values": [1]}], "values": {"a": 1}}),
                "not a filter",
            ),
            (
                json!({"op": "set", "table": "t", "values": {"$id": 1}}),
                "system attribute",
            ),
            (
                json!({"op": "drop_table", "table": "_bad"}),
                "not a valid Appwrite id",
            ),
            (
                json!({"op": "drop_table", "table": "t", "collection": "x"}),
                "unknown field",
            ),
        ];
        for (v, want) in &bad {
            let e = compile(v).expect_err(&v.to_string());
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
