//! The deprecated Databases API that Appwrite 1.8's spec still lists (`/databases/…`: collections,
//! attributes, indexes, documents), read over the same state as TablesDB: a table is a collection,
//! a column an attribute, a row a document. Its models are the TablesDB ones under the names the
//! spec gives them (`collection`, `attributeList`, `index`, `document`, …).

use serde_json::Value;

use super::ApiError;

/// The API a list or item is read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    TablesDb,
    /// The deprecated Databases API.
    Legacy,
}

impl Api {
    /// `tablesdb` through TablesDB, `legacy` through the Databases API.
    pub fn pick<T>(self, tablesdb: T, legacy: T) -> T {
        match self {
            Api::TablesDb => tablesdb,
            Api::Legacy => legacy,
        }
    }
}

/// Moves field `from` of an object to `to` (keeping its place among the others is not needed:
/// JSON objects are unordered).
fn rename(v: &mut Value, from: &str, to: &str) {
    if let Some(o) = v.as_object_mut()
        && let Some(x) = o.remove(from)
    {
        o.insert(to.to_string(), x);
    }
}

/// A table as the spec's `collection`: `documentSecurity`, `attributes`, indexes as `index`.
pub fn collection(mut table: Value) -> Value {
    rename(&mut table, "rowSecurity", "documentSecurity");
    rename(&mut table, "columns", "attributes");
    if let Some(indexes) = table.get_mut("indexes").and_then(Value::as_array_mut) {
        for i in indexes.iter_mut() {
            *i = index(i.take());
        }
    }
    table
}

/// A column index as the spec's `index`: its columns are `attributes`.
pub fn index(mut i: Value) -> Value {
    rename(&mut i, "columns", "attributes");
    i
}

/// A row as the spec's `document`: `$collectionId` for `$tableId`.
pub fn document(mut row: Value) -> Value {
    rename(&mut row, "$tableId", "$collectionId");
    row
}

/// A TablesDB error as the Databases API gives it (`collection_not_found`, `document_not_found`,
/// `attribute_not_found`; the others are shared).
pub fn error(e: ApiError) -> ApiError {
    let (kind, message) = match e.kind {
        "table_not_found" => (
            "collection_not_found",
            "Collection with the requested ID could not be found.",
        ),
        "row_not_found" => (
            "document_not_found",
            "Document with the requested ID could not be found.",
        ),
        "column_not_found" => (
            "attribute_not_found",
            "Attribute with the requested ID could not be found.",
        ),
        _ => return e,
    };
    ApiError::new(e.status.as_u16(), kind, message)
}
