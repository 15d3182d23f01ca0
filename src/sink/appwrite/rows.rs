//! Documents → Appwrite rows, deterministic row ids, and bulk upserts that isolate bad rows.

use bson::{Bson, Document};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AppwriteClient, AppwriteError};

/// The most rows one bulk request may carry on self-hosted Appwrite.
pub const MAX_BULK_ROWS: usize = 100;

/// A deterministic row id for an `_id`: the id itself when it already fits Appwrite's rule (a
/// uuid, an integer, a short plain string), else `h` + 35 hex digits of the SHA-256 (140 bits)
/// of its canonical extended JSON — an unambiguous text (strings escaped, every value tagged
/// with its type), so two different keys never share a row id.
pub fn row_id(id: &Bson) -> String {
    let plain = match id {
        Bson::String(s) => Some(s.clone()),
        Bson::Int32(i) => Some(i.to_string()),
        Bson::Int64(i) => Some(i.to_string()),
        Bson::Binary(b) if b.bytes.len() == 16 => {
            uuid::Uuid::from_slice(&b.bytes).ok().map(|u| u.to_string())
        }
        _ => None,
    };
    if let Some(p) = plain
        && kept_as_is(&p)
    {
        return p;
    }
    let digest = Sha256::digest(id.clone().into_canonical_extjson().to_string().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("h{}", &hex[..35])
}

/// Whether a key's text is its own row id: it fits Appwrite's id rule, has no capital letter
/// (Appwrite compares ids without case — `Abc` and `abc` would be one row, the second replacing
/// the first), and does not have the hashed form (`h` + 35 hex digits), so that no plain id is
/// ever another key's hash. Other keys are hashed (lowercase).
pub fn kept_as_is(key: &str) -> bool {
    crate::sink::appwrite::id_ok(key)
        && !key.bytes().any(|b| b.is_ascii_uppercase())
        && !looks_hashed(key)
}

/// Whether the row id of `id` is its hash (the key itself is then not in the row id).
pub fn id_is_hashed(id: &Bson) -> bool {
    looks_hashed(&row_id(id))
}

/// Whether `id` has the form of a hashed row id: `h` and 35 lowercase hex digits.
fn looks_hashed(id: &str) -> bool {
    id.len() == 36
        && id.starts_with('h')
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A BSON value as an Appwrite column value: nested documents and arrays of documents become JSON
/// text (Appwrite columns hold no objects), dates ISO 8601, decimals their exact text, uuids text.
pub fn column_value(v: &Bson) -> Value {
    match v {
        Bson::Null => Value::Null,
        Bson::Boolean(b) => json!(b),
        Bson::Int32(i) => json!(i),
        Bson::Int64(i) => json!(i),
        Bson::Double(d) => json!(d),
        Bson::String(s) => json!(s),
        // Without an exponent, as PostgreSQL prints it (Decimal128 prints `1E-7`).
        Bson::Decimal128(d) => json!(crate::transform::decimal::plain(&d.to_string())),
        Bson::DateTime(d) => json!(d.try_to_rfc3339_string().unwrap_or_default()),
        // A uuid (subtype 4, or the legacy 3) is its text; other binary (bytea: a 16-byte MD5
        // digest too) stays binary, as extended JSON below.
        Bson::Binary(b)
            if b.bytes.len() == 16
                && matches!(
                    b.subtype,
                    bson::spec::BinarySubtype::Uuid | bson::spec::BinarySubtype::UuidOld
                ) =>
        {
            json!(
                uuid::Uuid::from_slice(&b.bytes)
                    .map(|u| u.to_string())
                    .unwrap_or_default()
            )
        }
        Bson::Array(items)
            if items
                .iter()
                .all(|i| !matches!(i, Bson::Document(_) | Bson::Array(_))) =>
        {
            Value::Array(items.iter().map(column_value).collect())
        }
        other => json!(other.clone().into_relaxed_extjson().to_string()),
    }
}

/// A document as a row for bulk writes: `$id` plus one column per top-level field.
pub fn to_row(doc: &Document) -> Value {
    let mut row = serde_json::Map::new();
    for (k, v) in doc {
        if k == "_id" {
            row.insert("$id".into(), json!(row_id(v)));
        } else {
            row.insert(k.clone(), column_value(v));
        }
    }
    Value::Object(row)
}

/// A row the server refused, with its message and type.
#[derive(Debug, Clone)]
pub struct RowFailure {
    pub index: usize,
    pub error: AppwriteError,
}

/// How many times one [`upsert_rows`] call splits a batch the server failed transiently: enough
/// to single out a few rows the server keeps failing in a batch of 100 (about 7 splits each),
/// few enough that an outage of the whole server costs a bounded number of extra requests.
pub const MAX_TRANSIENT_SPLITS: usize = 32;

/// Upserts `rows` in requests of at most `batch` (≤ 100). A batch refused for a row-level reason
/// (a 400, or a 409: a unique index) is split in halves until the bad rows are alone; they are returned, the rest written.
/// Transport and server errors are retried by the client. A batch the server still fails with a
/// transient error (408, 5xx) after those retries is split and re-sent the same way (each
/// half with its own retries), so that a row the server keeps failing does not fail the rows
/// around it: a lone row that still fails is returned with its transient error (the caller counts
/// it failed, not rejected). After [`MAX_TRANSIENT_SPLITS`] such splits, what still fails is
/// returned whole. A transport failure (the server cannot be reached), a 429 (throttling is not a
/// row's fault, and more requests would not help) or any other error returns.
pub async fn upsert_rows(
    client: &AppwriteClient,
    db: &str,
    table: &str,
    rows: &[Value],
    batch: usize,
) -> Result<Vec<RowFailure>, AppwriteError> {
    use crate::sink::retry::Retryable;
    let batch = batch.clamp(1, MAX_BULK_ROWS);
    let mut failures = Vec::new();
    let mut splits = 0;
    let mut stack: Vec<(usize, &[Value])> = rows
        .chunks(batch)
        .enumerate()
        .map(|(i, c)| (i * batch, c))
        .rev()
        .collect();
    let path = format!("/tablesdb/{db}/tables/{table}/rows");
    while let Some((offset, chunk)) = stack.pop() {
        let e = match client
            .call(reqwest::Method::PUT, &path, Some(&json!({ "rows": chunk })))
            .await
        {
            Ok(_) => continue,
            Err(e) => e,
        };
        // A 409 to an upsert is not an id taken (an upsert replaces the row of its id): a row
        // repeats another row's key in a unique index. Like a 400, it is the rows' own fault.
        let refused = matches!(e.status(), Some(400 | 409));
        let transient = e.status().is_some_and(|s| s != 429) && e.is_retryable();
        if !refused && !transient {
            return Err(e);
        }
        if chunk.len() > 1 && (refused || splits < MAX_TRANSIENT_SPLITS) {
            if transient {
                splits += 1;
                tracing::debug!(table, rows = chunk.len(), error = %e, "a batch failed after its retries; re-sending it in halves");
            }
            let mid = chunk.len() / 2;
            stack.push((offset + mid, &chunk[mid..]));
            stack.push((offset, &chunk[..mid]));
            continue;
        }
        for index in offset..offset + chunk.len() {
            failures.push(RowFailure {
                index,
                error: e.clone(),
            });
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_are_deterministic_and_fit_the_rule() {
        let u = uuid::Uuid::parse_str("6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162").unwrap();
        let b = Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: u.as_bytes().to_vec(),
        });
        assert_eq!(row_id(&b), u.to_string());
        assert_eq!(row_id(&Bson::Int32(42)), "42");
        let long = Bson::String("a key that is much too long for appwrite ids!".into());
        let id = row_id(&long);
        assert_eq!(id.len(), 36);
        assert!(crate::sink::appwrite::id_ok(&id));
        assert_eq!(id, row_id(&long));
        let composite = Bson::Document(bson::doc! { "a": 1, "b": "x" });
        assert_ne!(
            row_id(&composite),
            row_id(&Bson::Document(bson::doc! { "a": 1, "b": "y" }))
        );
    }

    /// A key that breaks the id rule is hashed; a plain key spelling that very hash was used as
    /// it is: both rows had one id and the second replaced the first.
    #[test]
    fn a_plain_key_never_spells_another_keys_hash() {
        let hashed = row_id(&Bson::String("_a".into()));
        assert!(looks_hashed(&hashed), "{hashed}");
        let plain = row_id(&Bson::String(hashed.clone()));
        assert_ne!(plain, hashed);
        assert!(crate::sink::appwrite::id_ok(&plain));
        assert_eq!(row_id(&Bson::String("h123".into())), "h123");
    }

    /// Appwrite compares ids without case: keys differing only by case get ids that differ
    /// without case too (a key with a capital is hashed, lowercase).
    #[test]
    fn keys_differing_by_case_have_ids_differing_without_case() {
        let lower = row_id(&Bson::String("abc".into()));
        let upper = row_id(&Bson::String("Abc".into()));
        assert_eq!(lower, "abc");
        assert_ne!(lower.to_ascii_lowercase(), upper.to_ascii_lowercase());
        assert_eq!(upper, upper.to_ascii_lowercase());
        let u = uuid::Uuid::parse_str("6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162").unwrap();
        assert_eq!(row_id(&Bson::String(u.to_string())), u.to_string());
    }

    /// Two composite keys whose parts hold the quotes and separators of the other's rendering
    /// (`{ "a": "p\", \"b\": \"q", "b": "r" }` printed without escaping equals `{ "a": "p", "b":
    /// "q\", \"b\": \"r" }`) had one row id: the second row replaced the first.
    #[test]
    fn composite_keys_that_print_alike_have_different_row_ids() {
        let one = Bson::Document(bson::doc! { "a": "p\", \"b\": \"q", "b": "r" });
        let two = Bson::Document(bson::doc! { "a": "p", "b": "q\", \"b\": \"r" });
        assert_eq!(one.to_string(), two.to_string(), "the old ambiguity");
        assert_ne!(row_id(&one), row_id(&two));
        // Types count too: the string "1" and the integer 1 inside a key differ.
        assert_ne!(
            row_id(&Bson::Document(
                bson::doc! { "a": "1", "b": "a long enough key part" }
            )),
            row_id(&Bson::Document(
                bson::doc! { "a": 1, "b": "a long enough key part" }
            ))
        );
    }

    #[test]
    fn nested_values_become_json_text() {
        let row =
            to_row(&bson::doc! { "_id": 7, "a": { "b": 1 }, "tags": ["x", "y"], "n": Bson::Null });
        assert_eq!(row["$id"], "7");
        assert_eq!(row["a"], "{\"b\":1}");
        assert_eq!(row["tags"], json!(["x", "y"]));
        assert!(row["n"].is_null());
    }
}
