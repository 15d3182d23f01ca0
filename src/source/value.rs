//! Source values: what one PostgreSQL column of one row holds, decoded exactly (numerics as their
//! decimal text, timestamps with microseconds, uuids as uuids).

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    /// `real` (float4), kept at its own width: its text is the shortest that reads back as this
    /// f32 (what PostgreSQL prints), not the widened double's.
    Real(f32),
    Double(f64),
    /// `numeric` as PostgreSQL prints it (exact).
    Numeric(String),
    Text(String),
    Uuid(Uuid),
    Date(NaiveDate),
    /// `timestamp without time zone`.
    Timestamp(NaiveDateTime),
    /// `timestamp with time zone`, as an instant.
    TimestampTz(DateTime<Utc>),
    /// `json` / `jsonb` text.
    Json(String),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Short type name for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int32(_) => "int",
            Value::Int64(_) => "long",
            Value::Real(_) => "real",
            Value::Double(_) => "double",
            Value::Numeric(_) => "numeric",
            Value::Text(_) => "text",
            Value::Uuid(_) => "uuid",
            Value::Date(_) => "date",
            Value::Timestamp(_) => "timestamp",
            Value::TimestampTz(_) => "timestamptz",
            Value::Json(_) => "json",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
        }
    }

    /// Orders two key values the way PostgreSQL orders them in a key-ordered scan (text keys are
    /// read with `COLLATE "C"`, i.e. byte order). Values of different kinds compare by kind.
    pub fn key_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Int32(a), Value::Int32(b)) => a.cmp(b),
            (Value::Int64(a), Value::Int64(b)) => a.cmp(b),
            (Value::Int32(a), Value::Int64(b)) => i64::from(*a).cmp(b),
            (Value::Int64(a), Value::Int32(b)) => a.cmp(&i64::from(*b)),
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Uuid(a), Value::Uuid(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Timestamp(a), Value::Timestamp(b)) => a.cmp(b),
            (Value::TimestampTz(a), Value::TimestampTz(b)) => a.cmp(b),
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            (a, b) => a.to_string().cmp(&b.to_string()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int32(i) => write!(f, "{i}"),
            Value::Int64(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Numeric(s) | Value::Text(s) | Value::Json(s) => f.write_str(s),
            Value::Uuid(u) => write!(f, "{u}"),
            Value::Date(d) => write!(f, "{d}"),
            Value::Timestamp(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.f")),
            Value::TimestampTz(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            ),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// The display form of a (possibly composite) key, as written in rejects files and the ledger.
pub fn key_text(values: &[&Value]) -> String {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(&v.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_keys_order_like_postgres() {
        let a = Value::Uuid(Uuid::parse_str("00000000-0000-0000-0000-0000000000ff").unwrap());
        let b = Value::Uuid(Uuid::parse_str("10000000-0000-0000-0000-000000000000").unwrap());
        assert_eq!(a.key_cmp(&b), Ordering::Less);
    }

    #[test]
    fn text_keys_order_bytewise() {
        let a = Value::Text("Zebra".into());
        let b = Value::Text("apple".into());
        assert_eq!(a.key_cmp(&b), Ordering::Less);
    }

    #[test]
    fn composite_key_text() {
        let a = Value::Int32(3);
        let b = Value::Text("x".into());
        assert_eq!(key_text(&[&a, &b]), "3|x");
    }
}
