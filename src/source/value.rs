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
            (Value::Real(a), Value::Real(b)) => float_cmp(f64::from(*a), f64::from(*b)),
            (Value::Double(a), Value::Double(b)) => float_cmp(*a, *b),
            (Value::Numeric(a), Value::Numeric(b)) => numeric_cmp(a, b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            (a, b) => a.to_string().cmp(&b.to_string()),
        }
    }
}

/// PostgreSQL's float order: `-0` equals `0`, NaN after every number (also `Infinity`).
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Orders two numerics as PostgreSQL prints them (`-12.50`, `1E+40` never: numeric text has no
/// exponent; `NaN`, `Infinity`, `-Infinity`) by value: NaN after everything.
fn numeric_cmp(a: &str, b: &str) -> Ordering {
    fn rank(s: &str) -> i8 {
        match s {
            "-Infinity" => -1,
            "Infinity" => 1,
            "NaN" => 2,
            _ => 0,
        }
    }
    match (rank(a), rank(b)) {
        (0, 0) => {}
        (x, y) => return x.cmp(&y),
    }
    let parts = |s: &str| {
        let (neg, digits) = match s.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0');
        let frac = frac.trim_end_matches('0');
        let zero = int.is_empty() && frac.is_empty();
        (neg && !zero, int.to_string(), frac.to_string())
    };
    let (an, ai, af) = parts(a);
    let (bn, bi, bf) = parts(b);
    let magnitude = ai
        .len()
        .cmp(&bi.len())
        .then_with(|| ai.cmp(&bi))
        .then_with(|| af.cmp(&bf));
    match (an, bn) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int32(i) => write!(f, "{i}"),
            Value::Int64(i) => write!(f, "{i}"),
            // As PostgreSQL prints them (`1e+23` is `9.999999999999999e+22`, infinities are
            // `Infinity`), never Rust's expansion (`100000000000000000000000`, `inf`).
            Value::Real(r) => f.write_str(&super::float::pg_text_f32(*r)),
            Value::Double(d) => f.write_str(&super::float::pg_text_f64(*d)),
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

/// A date in PostgreSQL's input form: `2024-03-15`, `0045-03-15 BC` (chrono counts 1 BC as year 0
/// and prints it `-0001`… which PostgreSQL refuses), years past 9999 without chrono's `+`.
fn pg_date(d: NaiveDate) -> (String, bool) {
    use chrono::Datelike;
    let bc = d.year() <= 0;
    let year = if bc { 1 - d.year() } else { d.year() };
    (format!("{year:04}-{:02}-{:02}", d.month(), d.day()), bc)
}

fn pg_timestamp(t: NaiveDateTime, zone: &str) -> String {
    let (date, bc) = pg_date(t.date());
    let time = t.time().format("%H:%M:%S%.6f");
    format!("{date} {time}{zone}{}", if bc { " BC" } else { "" })
}

fn pg_float(x: f64, text: String) -> String {
    if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        text // shortest round-trip text of its own width; `NaN` reads back too
    }
}

impl Value {
    /// The value as PostgreSQL prints it (`::text`, DateStyle ISO, TimeZone UTC): `t`/`f`,
    /// `2020-01-01 00:00:00+00`, `0044-03-15 BC`, a numeric with its own scale, bytea as `\x…`.
    /// What a `map` key is matched against. An array is its elements' texts in cutover's
    /// brackets (`map` goes element by element and never asks).
    pub fn pg_text(&self) -> String {
        fn fraction(nanos: u32) -> String {
            let micros = nanos / 1000;
            if micros == 0 {
                return String::new();
            }
            format!(".{micros:06}").trim_end_matches('0').to_string()
        }
        fn stamp(t: NaiveDateTime, zone: &str) -> String {
            let (date, bc) = pg_date(t.date());
            format!(
                "{date} {}{}{zone}{}",
                t.time().format("%H:%M:%S"),
                fraction(t.and_utc().timestamp_subsec_nanos()),
                if bc { " BC" } else { "" }
            )
        }
        match self {
            Value::Bool(b) => if *b { "t" } else { "f" }.to_string(),
            Value::Timestamp(t) => stamp(*t, ""),
            Value::TimestampTz(t) => stamp(t.naive_utc(), "+00"),
            Value::Date(_) | Value::Bytes(_) => self.key_literal().unwrap_or_default(),
            // Floats print as PostgreSQL does (`1e+23`, `Infinity`), the rest as they read.
            other => other.to_string(),
        }
    }

    /// The value as PostgreSQL's input reads it back as the same value, to be bound as
    /// `CAST($n AS type)`: what a checkpoint stores of a key. `None` for NULL (no key position
    /// can be named by it) and for arrays.
    pub fn key_literal(&self) -> Option<String> {
        Some(match self {
            Value::Null | Value::Array(_) => return None,
            Value::Date(d) => {
                let (date, bc) = pg_date(*d);
                if bc { format!("{date} BC") } else { date }
            }
            Value::Timestamp(t) => pg_timestamp(*t, ""),
            Value::TimestampTz(t) => pg_timestamp(t.naive_utc(), "+00"),
            Value::Bytes(b) => {
                let mut s = String::with_capacity(2 + 2 * b.len());
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s
            }
            Value::Real(r) => pg_float(f64::from(*r), r.to_string()),
            Value::Double(d) => pg_float(*d, d.to_string()),
            other => other.to_string(),
        })
    }
}

/// The key as checkpoints store it ([`Value::key_literal`] of each part), or `None` when a part
/// is NULL: such a row names no position a resume could start after.
pub fn key_literals(values: &[&Value]) -> Option<Vec<String>> {
    values.iter().map(|v| v.key_literal()).collect()
}

/// The display form of a (possibly composite) key, as written in rejects files and the ledger:
/// the parts joined by `|`. In a composite key a `|` or `\` inside a part is escaped with `\`,
/// so that two different keys never read alike (`x|y` + `z` is `x\|y|z`, `x` + `y|z` is
/// `x|y\|z`), and a NULL part is `\N` (the text `NULL` is `NULL`: adv41 F3); a single-part
/// key is its value's text.
pub fn key_text(values: &[&Value]) -> String {
    if let [one] = values {
        return one.to_string();
    }
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        if matches!(v, Value::Null) {
            out.push_str("\\N");
            continue;
        }
        for c in v.to_string().chars() {
            if c == '|' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// The parts of a key as [`key_text`] wrote it (`parts` of them): a composite key split at each
/// `|` that is not escaped, the escapes undone. `None` when the text has another number of parts
/// or a NULL part (`\N`: no value names it).
pub fn key_parts(text: &str, parts: usize) -> Option<Vec<String>> {
    if parts == 1 {
        return Some(vec![text.to_string()]);
    }
    let mut out = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'N' => return None,
                c => out.last_mut()?.push(c),
            },
            '|' => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    (out.len() == parts).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `key_text` joins, `key_parts` splits back.
    #[test]
    fn key_parts_undo_key_text() {
        let t = |s: &str| Value::Text(s.into());
        for parts in [["x|y", "z"], ["x", "y|z"], ["a\\", "|"], ["", ""]] {
            let (a, b) = (t(parts[0]), t(parts[1]));
            assert_eq!(key_parts(&key_text(&[&a, &b]), 2).unwrap(), parts);
        }
        assert_eq!(key_parts("a|b", 3), None);
        let null = key_text(&[&Value::Null, &t("zz")]);
        assert_eq!(null, "\\N|zz");
        assert_ne!(null, key_text(&[&t("NULL"), &t("zz")]));
        assert_eq!(key_parts(&null, 2), None);
        assert_eq!(key_parts("a|b", 1).unwrap(), ["a|b"]);
    }

    /// `x|y` + `z` and `x` + `y|z` were both written `x|y|z`: verify excused a missing
    /// document because another key's reject read the same.
    #[test]
    fn composite_keys_read_unambiguously() {
        let t = |s: &str| Value::Text(s.into());
        let (a, b, c, d) = (t("x|y"), t("z"), t("x"), t("y|z"));
        assert_eq!(key_text(&[&a, &b]), "x\\|y|z");
        assert_eq!(key_text(&[&c, &d]), "x|y\\|z");
        let (e, f) = (t("x\\"), t("|z"));
        assert_eq!(key_text(&[&e, &f]), "x\\\\|\\|z");
        assert_eq!(key_text(&[&a]), "x|y", "a single key is its text");
        assert_eq!(key_text(&[&Value::Int32(1), &t("eu")]), "1|eu");
    }

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
    fn numbers_order_by_value_like_postgres() {
        let n = |s: &str| Value::Numeric(s.into());
        let ordered = [
            "-Infinity",
            "-100",
            "-9.5",
            "-9.25",
            "-0.001",
            "0",
            "0.000",
            "0.1",
            "0.25",
            "2",
            "10",
            "10.5",
            "100",
            "Infinity",
            "NaN",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                let want = match (*a, *b) {
                    ("0", "0.000") | ("0.000", "0") => Ordering::Equal,
                    _ => i.cmp(&j),
                };
                assert_eq!(n(a).key_cmp(&n(b)), want, "{a} vs {b}");
            }
        }
        let d = Value::Double;
        assert_eq!(d(f64::NAN).key_cmp(&d(f64::INFINITY)), Ordering::Greater);
        assert_eq!(d(-0.0).key_cmp(&d(0.0)), Ordering::Equal);
        assert_eq!(d(-1.0).key_cmp(&d(0.5)), Ordering::Less);
        let b = |x: &[u8]| Value::Bytes(x.to_vec());
        assert_eq!(b(&[0x00, 0xff]).key_cmp(&b(&[0x01])), Ordering::Less);
        assert_eq!(b(&[]).key_cmp(&b(&[0x00])), Ordering::Less);
    }

    #[test]
    fn checkpoint_literals_are_postgres_input() {
        let date = NaiveDate::from_ymd_opt(-44, 3, 15).unwrap(); // 45 BC
        assert_eq!(Value::Date(date).key_literal().unwrap(), "0045-03-15 BC");
        let big = NaiveDate::from_ymd_opt(10000, 1, 1).unwrap();
        assert_eq!(Value::Date(big).key_literal().unwrap(), "10000-01-01");
        let t = date.and_hms_micro_opt(1, 2, 3, 4).unwrap();
        assert_eq!(
            Value::Timestamp(t).key_literal().unwrap(),
            "0045-03-15 01:02:03.000004 BC"
        );
        assert_eq!(
            Value::TimestampTz(t.and_utc()).key_literal().unwrap(),
            "0045-03-15 01:02:03.000004+00 BC"
        );
        assert_eq!(
            Value::Bytes(vec![0, 0x5c]).key_literal().unwrap(),
            "\\x005c"
        );
        assert_eq!(
            Value::Real(f32::INFINITY).key_literal().unwrap(),
            "Infinity"
        );
        assert_eq!(Value::Real(0.1).key_literal().unwrap(), "0.1");
        assert_eq!(key_literals(&[&Value::Int32(1), &Value::Null]), None);
    }

    #[test]
    fn composite_key_text() {
        let a = Value::Int32(3);
        let b = Value::Text("x".into());
        assert_eq!(key_text(&[&a, &b]), "3|x");
    }
}
