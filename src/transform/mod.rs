//! Pure, synchronous transforms: source values → BSON values, with exact conversions.
//! Nothing here does I/O; a failure is an [`Issue`] that rejects the row (or warns, as the mapping
//! says).

pub mod decimal;
pub mod encode;
pub mod json;
pub mod phone;
pub mod row;

use bson::{Bson, spec::BinarySubtype};
use chrono::{DateTime, FixedOffset, NaiveTime, TimeZone, Utc};

use crate::mapping::spec::{CastType, Lossy, Severity, SubMillis, UuidFormat};
use crate::source::Value;
use json::Json;

/// Where in the pipeline an issue arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Transform,
    Validate,
    Write,
    /// Merging child rows into their parents' documents (a child row whose parent is not in
    /// the source: [`RULE_ORPHAN_CHILD`]).
    Embed,
    /// Checking and uploading a file stage's file (missing, checksum, path).
    File,
}

/// The rule of a child row of an embed whose parent row is not in the source (a foreign key no
/// parent has, or NULL): embedded nowhere. A line of the entity's rejects file, counted apart
/// from the rejected parent rows.
pub const RULE_ORPHAN_CHILD: &str = "orphan_child";

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Transform => "transform",
            Stage::Validate => "validate",
            Stage::Write => "write",
            Stage::Embed => "embed",
            Stage::File => "file",
        }
    }
}

/// A problem with one row: an error rejects it, a warning is written and counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub stage: Stage,
    pub severity: Severity,
    pub rule: String,
    /// The target path (or column) concerned, if any.
    pub path: String,
    pub message: String,
    pub value: String,
}

impl Issue {
    pub fn error(stage: Stage, rule: &str, path: &str, message: String, value: String) -> Issue {
        Issue {
            stage,
            severity: Severity::Error,
            rule: rule.to_string(),
            path: path.to_string(),
            message,
            value,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A compiled transform step.
#[derive(Debug, Clone)]
pub enum Step {
    Trim,
    Lower,
    Upper,
    Split(String),
    Map {
        pairs: Vec<(String, Value)>,
        fallback: Option<Value>,
        /// The values are a `char(n)`'s, blank-padded: keys match as PostgreSQL compares
        /// them, trailing blanks not counted (`'a'::char(5) = 'a'`).
        blank_padded: bool,
    },
    /// E.164; national numbers are read as numbers of `region`.
    Phone {
        region: phonenumber::country::Id,
    },
    Json,
    /// An array without its NULL elements.
    DropNulls,
}

/// Applies one step to a value. NULL passes through every step.
pub fn apply(step: &Step, value: Value) -> Result<Value, String> {
    if value.is_null() {
        return Ok(value);
    }
    match step {
        Step::Trim => Ok(map_text(value, &|s| s.trim().to_string())),
        Step::Lower => Ok(map_text(value, &|s| s.to_lowercase())),
        Step::Upper => Ok(map_text(value, &|s| s.to_uppercase())),
        Step::Split(sep) => match value {
            Value::Text(s) => Ok(Value::Array(
                s.split(sep.as_str())
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::Text(p.to_string()))
                    .collect(),
            )),
            other => Err(format!("split needs text, got {}", other.type_name())),
        },
        Step::Map {
            pairs,
            fallback,
            blank_padded,
        } => Ok(map_value(value, pairs, fallback.as_ref(), *blank_padded)),
        Step::Phone { region } => match value {
            Value::Text(s) => phone::to_e164(&s, *region).map(Value::Text),
            other => Err(format!("phone needs text, got {}", other.type_name())),
        },
        Step::Json => match value {
            Value::Text(s) | Value::Json(s) => Ok(Value::Json(s)),
            other => Err(format!("json needs text, got {}", other.type_name())),
        },
        Step::DropNulls => match value {
            Value::Array(items) => Ok(Value::Array(
                items.into_iter().filter(|v| !v.is_null()).collect(),
            )),
            other => Ok(other),
        },
    }
}

/// `map` of one value: an array element by element (a NULL element stays NULL, the fallback
/// replaces each unlisted element), any other value by its PostgreSQL text (`t`/`f` for a
/// boolean, `2020-01-01 00:00:00+00` for a timestamptz, a numeric with its own scale).
/// Whether `s` is an integer's text as PostgreSQL's integer input takes it: white space around,
/// an optional sign, decimal digits (`_` between digits, as PostgreSQL 16 allows).
fn pg_integer_text(s: &str) -> bool {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    !t.is_empty()
        && t.starts_with(|c: char| c.is_ascii_digit())
        && t.ends_with(|c: char| c.is_ascii_digit())
        && t.chars().all(|c| c.is_ascii_digit() || c == '_')
        && !t.contains("__")
}

/// `s` without the `_` PostgreSQL 16 allows between an integer's digits.
fn without_underscores(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('_') {
        std::borrow::Cow::Owned(s.replace('_', ""))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn map_value(
    value: Value,
    pairs: &[(String, Value)],
    fallback: Option<&Value>,
    blank_padded: bool,
) -> Value {
    match value {
        Value::Null => Value::Null,
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| map_value(v, pairs, fallback, blank_padded))
                .collect(),
        ),
        value => {
            let key = match &value {
                Value::Text(s) => std::borrow::Cow::Borrowed(s.as_str()),
                other => std::borrow::Cow::Owned(other.pg_text()),
            };
            fn unpadded(t: &str, padded: bool) -> &str {
                if padded { t.trim_end_matches(' ') } else { t }
            }
            let key = unpadded(&key, blank_padded);
            match pairs.iter().find(|(k, _)| unpadded(k, blank_padded) == key) {
                Some((_, v)) => v.clone(),
                None => fallback.cloned().unwrap_or(value),
            }
        }
    }
}

fn map_text(value: Value, f: &dyn Fn(&str) -> String) -> Value {
    match value {
        Value::Text(s) => Value::Text(f(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| map_text(v, f)).collect()),
        other => other,
    }
}

/// How a value becomes BSON.
#[derive(Debug, Clone)]
pub struct Output {
    pub cast: Option<CastType>,
    pub uuid: UuidFormat,
    pub sub_millis: SubMillis,
    /// Offset for `timestamp without time zone`; `None` means the mapping did not say (an error).
    pub timezone: Option<FixedOffset>,
    pub lossy: Lossy,
    /// What a JSON object with a key given twice does to the row (`json_duplicate_key`).
    pub duplicate_keys: Severity,
    /// The levels of nesting a JSON value may take here: what MongoDB's document limit leaves
    /// below the field's own place in the document (at most [`json::MAX_DEPTH`]).
    pub json_levels: usize,
}

/// The BSON value of a field plus what the conversion had to say.
#[derive(Debug, Default)]
pub struct Converted {
    pub value: Option<Bson>,
    /// The exact text of a timestamp truncated under `keep_string`.
    pub exact: Option<String>,
    pub warnings: Vec<(String, String)>,
}

/// Converts a transformed value to BSON under `out`. Errors are `(rule, message)`.
pub fn to_bson(value: &Value, out: &Output) -> Result<Converted, (String, String)> {
    let mut conv = Converted::default();
    conv.value = Some(convert(value, out, &mut conv)?);
    Ok(conv)
}

/// [`to_bson`] for the row mapper, once a field: the value is returned and what the conversion
/// had to say (`exact`, `warnings`) goes into `notes`, whose `value` is left alone. (A
/// `Converted` returned by value is moved by a `memcpy` call on its way out and again into the
/// caller's `match`: two a field, ~3% of a run's client CPU under `perf`.)
pub fn convert(
    value: &Value,
    out: &Output,
    notes: &mut Converted,
) -> Result<Bson, (String, String)> {
    match out.cast {
        Some(cast) => cast_to(value, cast, out, notes),
        None => natural(value, out, notes),
    }
}

fn err<T>(rule: &str, message: String) -> Result<T, (String, String)> {
    Err((rule.to_string(), message))
}

fn uuid_bson(u: &uuid::Uuid, fmt: UuidFormat) -> Bson {
    match fmt {
        UuidFormat::Binary => Bson::Binary(bson::Binary {
            subtype: BinarySubtype::Uuid,
            bytes: u.as_bytes().to_vec(),
        }),
        UuidFormat::String => Bson::String(u.hyphenated().to_string()),
    }
}

/// Public so id and reference encoding share the uuid rule.
pub fn uuid_to_bson(u: &uuid::Uuid, fmt: UuidFormat) -> Bson {
    uuid_bson(u, fmt)
}

fn instant(t: DateTime<Utc>, out: &Output, conv: &mut Converted) -> Result<Bson, (String, String)> {
    let sub_ms = t.timestamp_subsec_nanos() % 1_000_000;
    if sub_ms != 0 {
        let exact = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        match out.sub_millis {
            SubMillis::Reject => {
                return err(
                    "timestamp_precision",
                    format!(
                        "{exact} has sub-millisecond digits, which a date of the target (milliseconds, in MongoDB and Appwrite alike) cannot hold"
                    ),
                );
            }
            SubMillis::Truncate => conv.warnings.push((
                "timestamp_truncated".into(),
                format!("{exact} truncated to milliseconds"),
            )),
            SubMillis::KeepString => conv.exact = Some(exact),
        }
    } else if out.sub_millis == SubMillis::KeepString {
        conv.exact = Some(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    Ok(Bson::DateTime(bson::DateTime::from_millis(
        t.timestamp_millis(),
    )))
}

fn naive_instant(
    t: &chrono::NaiveDateTime,
    out: &Output,
    conv: &mut Converted,
) -> Result<Bson, (String, String)> {
    let Some(tz) = out.timezone else {
        return err(
            "timezone",
            "timestamp without time zone needs `timezone` in the mapping".into(),
        );
    };
    match tz.from_local_datetime(t).single() {
        Some(dt) => instant(dt.with_timezone(&Utc), out, conv),
        None => err("timezone", format!("{t} does not exist in {tz}")),
    }
}

fn date_bson(d: &chrono::NaiveDate) -> Bson {
    let dt = d.and_time(NaiveTime::MIN).and_utc();
    Bson::DateTime(bson::DateTime::from_millis(dt.timestamp_millis()))
}

fn decimal_bson(text: &str) -> Result<Bson, (String, String)> {
    decimal::to_decimal128_bytes(text)
        .map(|b| Bson::Decimal128(bson::Decimal128::from_bytes(b)))
        .map_err(|m| ("decimal_precision".to_string(), m))
}

/// `numeric` text as Decimal128; a value whose scale does not all fit is written with a warning
/// (`decimal_scale`), never silently with less.
fn numeric_bson(text: &str, conv: &mut Converted) -> Result<Bson, (String, String)> {
    let (bytes, note) =
        decimal::encode_decimal128(text).map_err(|m| ("decimal_precision".to_string(), m))?;
    if let Some(message) = note {
        conv.warnings.push(("decimal_scale".into(), message));
    }
    Ok(Bson::Decimal128(bson::Decimal128::from_bytes(bytes)))
}

/// The conversion each source type gets when the mapping names no type.
fn natural(value: &Value, out: &Output, conv: &mut Converted) -> Result<Bson, (String, String)> {
    Ok(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Int32(i) => Bson::Int32(*i),
        Value::Int64(i) => Bson::Int64(*i),
        // Widening a float4 is exact.
        Value::Real(r) => Bson::Double(f64::from(*r)),
        Value::Double(d) => Bson::Double(*d),
        Value::Numeric(s) => numeric_bson(s, conv)?,
        Value::Text(s) => Bson::String(s.clone()),
        Value::Uuid(u) => uuid_bson(u, out.uuid),
        Value::Date(d) => date_bson(d),
        Value::Timestamp(t) => naive_instant(t, out, conv)?,
        Value::TimestampTz(t) => instant(*t, out, conv)?,
        Value::Json(s) => json_bson(s, out, conv)?,
        Value::Bytes(b) => Bson::Binary(bson::Binary {
            subtype: BinarySubtype::Generic,
            bytes: b.clone(),
        }),
        Value::Array(items) => {
            // The array is a level of the document: a JSON element has one fewer (the
            // eighteenth tester's F4: a jsonb[] at a deep path passed and mongod refused it).
            let inner;
            let out = if items
                .iter()
                .any(|v| matches!(v, Value::Json(_) | Value::Array(_)))
            {
                inner = Output {
                    json_levels: out.json_levels.saturating_sub(1),
                    ..out.clone()
                };
                &inner
            } else {
                out
            };
            let mut arr = Vec::with_capacity(items.len());
            for v in items {
                arr.push(natural(v, out, conv)?);
            }
            Bson::Array(arr)
        }
    })
}

/// A `json` / `jsonb` value as BSON: objects stay documents, arrays arrays, and every number keeps
/// its exact value (see [`json_number`]).
fn json_bson(text: &str, out: &Output, conv: &mut Converted) -> Result<Bson, (String, String)> {
    use std::fmt::Write;
    let parsed = match json::parse_within(text, out.json_levels) {
        Ok(p) => p,
        // Valid JSON no document can hold: its own rule, not "invalid".
        Err(e) if e.message == json::TOO_DEEP => {
            let why = if out.json_levels >= json::MAX_DEPTH {
                format!("cutover reads JSON {} levels deep at most", json::MAX_DEPTH)
            } else {
                format!(
                    "a MongoDB document holds {} levels, and this field sits {} deep in it",
                    json::DOCUMENT_LEVELS,
                    json::DOCUMENT_LEVELS - out.json_levels
                )
            };
            return err(
                "json_too_deep",
                format!(
                    "the JSON value is nested more than {} levels ({e}): {why}",
                    out.json_levels
                ),
            );
        }
        Err(e) => return err("json", format!("invalid JSON: {e}")),
    };
    if let Some(key) = parsed.duplicate {
        let message = format!("JSON object key `{key}` is given twice (the last value is kept)");
        match out.duplicate_keys {
            Severity::Error => return err("json_duplicate_key", message),
            Severity::Warning => conv.warnings.push(("json_duplicate_key".into(), message)),
        }
    }
    let before = conv.warnings.len();
    let bson = json_to_bson(parsed.value, &mut String::new(), out, conv)?;
    // One warning per value (rows are counted by their issues), naming the first number.
    let more = conv.warnings.len().saturating_sub(before + 1);
    if more > 0 {
        conv.warnings.truncate(before + 1);
        let _ = write!(
            conv.warnings[before].1,
            "; {more} more number(s) of the value likewise"
        );
    }
    Ok(bson)
}

/// One JSON value at `path` (`a.b[2]`; empty at the top) as BSON.
fn json_to_bson(
    j: Json,
    path: &mut String,
    out: &Output,
    conv: &mut Converted,
) -> Result<Bson, (String, String)> {
    use std::fmt::Write;
    let base = path.len();
    Ok(match j {
        Json::Null => Bson::Null,
        Json::Bool(b) => Bson::Boolean(b),
        Json::Number(n) => json_number(&n, path, out, conv)?,
        Json::String(s) => Bson::String(s),
        Json::Array(items) => {
            let mut arr = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let _ = write!(path, "[{i}]");
                arr.push(json_to_bson(item, path, out, conv)?);
                path.truncate(base);
            }
            Bson::Array(arr)
        }
        Json::Object(members) => {
            let mut d = bson::Document::new();
            for (k, v) in members {
                if base > 0 {
                    path.push('.');
                }
                path.push_str(&k);
                let value = json_to_bson(v, path, out, conv)?;
                path.truncate(base);
                d.insert(k, value);
            }
            Bson::Document(d)
        }
    })
}

/// A JSON number as the BSON value that holds it exactly: written as an integer and within 64
/// bits → int32 when it fits, else int64; else a double when the double is the number (its
/// shortest text has the same decimal value: `0.1`, `1.0`, `1e2`, `5e-324`); else a Decimal128
/// when that holds it (34 significant digits, exponent range; trailing zeros past 34 digits are
/// not kept — a JSON number is a value, it has no scale). A number nothing holds exactly (`1e7000`,
/// 38 significant digits) rejects the row under `lossy = "reject"` (`json_number_precision`);
/// under `warn` the nearest double is written with a warning, when there is one.
fn json_number(
    text: &str,
    path: &str,
    out: &Output,
    conv: &mut Converted,
) -> Result<Bson, (String, String)> {
    if !text.contains(['.', 'e', 'E'])
        && let Ok(i) = text.parse::<i64>()
    {
        return Ok(i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32));
    }
    if let Ok(f) = decimal::to_f64_exact(text) {
        return Ok(Bson::Double(f));
    }
    if let Ok((bytes, _)) = decimal::encode_decimal128(text) {
        return Ok(Bson::Decimal128(bson::Decimal128::from_bytes(bytes)));
    }
    let what = match decimal::parse(text) {
        Some(decimal::Parsed::Finite(d)) if d.normalized().digits.len() > 34 => format!(
            "{} significant digits, Decimal128 holds 34",
            d.normalized().digits.len()
        ),
        _ => "its exponent is beyond Decimal128's range".to_string(),
    };
    let at = if path.is_empty() {
        String::new()
    } else {
        format!(" at `{path}`")
    };
    let number = decimal::shown(text);
    let nearest = text.parse::<f64>().ok().filter(|f| f.is_finite());
    match (out.lossy, nearest) {
        (Lossy::Warn, Some(f)) => {
            conv.warnings.push((
                "json_number_precision".into(),
                format!(
                    "JSON number {number}{at} is not exact in any BSON number type ({what}): written as the nearest double {f:e}"
                ),
            ));
            Ok(Bson::Double(f))
        }
        (Lossy::Warn, None) => err(
            "json_number_precision",
            format!(
                "JSON number {number}{at} is not exact in any BSON number type ({what}) and has no nearest double"
            ),
        ),
        (Lossy::Reject, _) => err(
            "json_number_precision",
            format!("JSON number {number}{at} is not exact in any BSON number type ({what})"),
        ),
    }
}

fn lossy(out: &Output, conv: &mut Converted, message: String) -> Result<(), (String, String)> {
    match out.lossy {
        Lossy::Reject => err("lossy_conversion", message),
        Lossy::Warn => {
            conv.warnings.push(("lossy_conversion".into(), message));
            Ok(())
        }
    }
}

/// Decimal text of a float's shortest digits: integral values spelled out when they fit 34
/// digits (`10`, not `1E+1`), others with an exponent.
fn float_decimal((negative, digits, exp): (bool, String, i32)) -> String {
    let sign = if negative { "-" } else { "" };
    if exp >= 0 && digits.len() + exp as usize <= 34 {
        format!("{sign}{digits}{}", "0".repeat(exp as usize))
    } else {
        format!("{sign}{digits}e{exp}")
    }
}

fn cast_to(
    value: &Value,
    cast: CastType,
    out: &Output,
    conv: &mut Converted,
) -> Result<Bson, (String, String)> {
    // A point is made of two numbers: their array is the point, not two values to cast.
    if cast == CastType::Point {
        return point(value);
    }
    if let Value::Array(items) = value {
        let mut arr = Vec::with_capacity(items.len());
        for v in items {
            arr.push(cast_to(v, cast, out, conv)?);
        }
        return Ok(Bson::Array(arr));
    }
    if value.is_null() {
        return Ok(Bson::Null);
    }
    let cannot = |what: &str| -> Result<Bson, (String, String)> {
        err(
            "cast",
            format!("cannot convert {} `{value}` to {what}", value.type_name()),
        )
    };
    match cast {
        CastType::Base64 | CastType::Hex => match value {
            Value::Bytes(b) if cast == CastType::Base64 => Ok(Bson::String(
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b),
            )),
            Value::Bytes(b) => Ok(Bson::String(b.iter().map(|x| format!("{x:02x}")).collect())),
            _ => cannot(if cast == CastType::Base64 {
                "base64 (it encodes bytes)"
            } else {
                "hex (it encodes bytes)"
            }),
        },
        CastType::String => Ok(Bson::String(match value {
            Value::Text(s) | Value::Numeric(s) | Value::Json(s) => s.clone(),
            Value::Uuid(u) => u.hyphenated().to_string(),
            Value::TimestampTz(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            // The mapping refuses this (`type = "base64"` or `"hex"`); never a placeholder text.
            Value::Bytes(_) => return cannot("string (bytes have no text: base64 or hex)"),
            other => other.to_string(),
        })),
        CastType::Int | CastType::Long => {
            let wide: i64 = match value {
                Value::Int32(i) => i64::from(*i),
                Value::Int64(i) => *i,
                // Text is read as PostgreSQL reads an integer: blanks around, a sign, digits —
                // not `1e3` or `3.0`, which `'1e3'::int` refuses (adv41 F5).
                Value::Text(s) if !pg_integer_text(s) => {
                    return err(
                        "cast",
                        format!(
                            "`{s}` is not an integer as PostgreSQL reads one (a sign and digits)"
                        ),
                    );
                }
                Value::Numeric(s) | Value::Text(s) => {
                    match decimal::parse(&without_underscores(s.trim())) {
                        Some(decimal::Parsed::Finite(d)) => {
                            let n = d.normalized();
                            if n.exponent < 0 {
                                return err("cast", format!("`{s}` is not a whole number"));
                            }
                            // 19 digits is the widest i64; the zeros of a larger exponent are never
                            // written out.
                            if n.digits != "0"
                                && (n.digits.len() as i64).saturating_add(n.exponent) > 19
                            {
                                return err("cast", format!("`{s}` does not fit a 64-bit integer"));
                            }
                            let text = format!(
                                "{}{}{}",
                                if n.negative { "-" } else { "" },
                                n.digits,
                                "0".repeat(n.exponent as usize)
                            );
                            match text.parse::<i64>() {
                                Ok(v) => v,
                                Err(_) => {
                                    return err(
                                        "cast",
                                        format!("`{s}` does not fit a 64-bit integer"),
                                    );
                                }
                            }
                        }
                        _ => return cannot("an integer"),
                    }
                }
                Value::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => *d as i64,
                Value::Real(r) if r.fract() == 0.0 && r.abs() < 9.2e18 => *r as i64,
                Value::Bool(b) => i64::from(*b),
                _ => return cannot("an integer"),
            };
            if cast == CastType::Int {
                match i32::try_from(wide) {
                    Ok(v) => Ok(Bson::Int32(v)),
                    Err(_) => err("cast", format!("`{wide}` does not fit a 32-bit integer")),
                }
            } else {
                Ok(Bson::Int64(wide))
            }
        }
        CastType::Double => match value {
            Value::Double(d) => Ok(Bson::Double(*d)),
            Value::Real(r) => Ok(Bson::Double(f64::from(*r))),
            Value::Int32(i) => Ok(Bson::Double(f64::from(*i))),
            Value::Int64(i) => {
                if i.unsigned_abs() > (1u64 << 53) {
                    lossy(
                        out,
                        conv,
                        format!("{i} is not exactly representable as a double"),
                    )?;
                }
                Ok(Bson::Double(*i as f64))
            }
            Value::Numeric(s) | Value::Text(s) => match decimal::to_f64_exact(s) {
                Ok(f) => Ok(Bson::Double(f)),
                Err(m) => {
                    // Beyond a double's range there is no nearest double to warn about: an
                    // infinity is no approximation of a finite number.
                    match s.trim().parse::<f64>() {
                        Ok(f) if f.is_finite() => {
                            lossy(out, conv, m)?;
                            Ok(Bson::Double(f))
                        }
                        Ok(_) => err("cast", m),
                        Err(_) => cannot("a double"),
                    }
                }
            },
            _ => cannot("a double"),
        },
        CastType::Decimal => match value {
            Value::Numeric(s) | Value::Text(s) => numeric_bson(s, conv),
            Value::Int32(i) => decimal_bson(&i.to_string()),
            Value::Int64(i) => decimal_bson(&i.to_string()),
            // From the shortest digits that read back as the value at its own width, as
            // PostgreSQL prints them (real 21.35 is 21.35, not 21.350000381469727; the double
            // nearest 1e23 is 9.999999999999999e+22), and integral values without exponent noise
            // (10, not 1E+1).
            Value::Double(d) if d.is_finite() => decimal_bson(&float_decimal(
                crate::source::float::shortest_digits_f64(*d),
            )),
            Value::Real(r) if r.is_finite() => decimal_bson(&float_decimal(
                crate::source::float::shortest_digits_f32(*r),
            )),
            Value::Double(d) => decimal_bson(&d.to_string()),
            Value::Real(r) => decimal_bson(&r.to_string()),
            _ => cannot("a decimal"),
        },
        CastType::Bool => match value {
            Value::Bool(b) => Ok(Bson::Boolean(*b)),
            Value::Int32(i) if *i == 0 || *i == 1 => Ok(Bson::Boolean(*i == 1)),
            Value::Int64(i) if *i == 0 || *i == 1 => Ok(Bson::Boolean(*i == 1)),
            Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "y" | "1" => Ok(Bson::Boolean(true)),
                "false" | "f" | "no" | "n" | "0" => Ok(Bson::Boolean(false)),
                _ => cannot("a boolean"),
            },
            _ => cannot("a boolean"),
        },
        CastType::Date => match value {
            Value::Date(d) => Ok(date_bson(d)),
            Value::TimestampTz(t) => instant(*t, out, conv),
            Value::Timestamp(t) => naive_instant(t, out, conv),
            Value::Text(s) => {
                if let Ok(d) = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
                    Ok(date_bson(&d))
                } else if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
                    instant(t.with_timezone(&Utc), out, conv)
                } else {
                    cannot("a date")
                }
            }
            _ => cannot("a date"),
        },
        CastType::Point => point(value),
        CastType::Uuid => match value {
            Value::Uuid(u) => Ok(uuid_bson(u, out.uuid)),
            Value::Text(s) => match uuid::Uuid::parse_str(s.trim()) {
                Ok(u) => Ok(uuid_bson(&u, out.uuid)),
                Err(_) => cannot("a uuid"),
            },
            _ => cannot("a uuid"),
        },
    }
}

/// The rule of a point whose longitude or latitude is out of range or not a number.
pub const POINT_RANGE: &str = "point_range";

/// A GeoJSON point `{ type: "Point", coordinates: [lon, lat] }` from PostgreSQL's `point` text
/// `(x,y)` (x the longitude) or from two numbers (`[lon, lat]`); an array of points (`point[]`)
/// element by element. NULL (or both numbers NULL) is no point. A longitude outside
/// [-180, 180], a latitude outside [-90, 90], NaN or an infinity rejects the row (`point_range`).
pub fn point(value: &Value) -> Result<Bson, (String, String)> {
    fn number(v: &Value) -> Option<f64> {
        match v {
            Value::Int32(i) => Some(f64::from(*i)),
            Value::Int64(i) => Some(*i as f64),
            Value::Real(r) => Some(f64::from(*r)),
            Value::Double(d) => Some(*d),
            Value::Numeric(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
    let (lon, lat) = match value {
        Value::Null => return Ok(Bson::Null),
        Value::Array(items)
            if items.len() == 2 && items.iter().all(|i| i.is_null() || number(i).is_some()) =>
        {
            match (number(&items[0]), number(&items[1])) {
                (Some(lon), Some(lat)) => (lon, lat),
                (None, None) => return Ok(Bson::Null),
                _ => {
                    return err(
                        POINT_RANGE,
                        format!(
                            "`{value}` is not a point: a longitude and a latitude are both needed"
                        ),
                    );
                }
            }
        }
        Value::Array(items) => {
            let mut arr = Vec::with_capacity(items.len());
            for v in items {
                arr.push(point(v)?);
            }
            return Ok(Bson::Array(arr));
        }
        Value::Text(s) => {
            let parsed = s
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','))
                .and_then(|(x, y)| {
                    Some((x.trim().parse::<f64>().ok()?, y.trim().parse::<f64>().ok()?))
                });
            match parsed {
                Some(p) => p,
                None => {
                    return err(
                        "cast",
                        format!(
                            "cannot convert text `{s}` to a point: expected `(longitude,latitude)`"
                        ),
                    );
                }
            }
        }
        other => {
            return err(
                "cast",
                format!("cannot convert {} `{other}` to a point", other.type_name()),
            );
        }
    };
    if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
        return err(
            POINT_RANGE,
            format!("longitude {lon} is not within [-180, 180]"),
        );
    }
    if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
        return err(
            POINT_RANGE,
            format!("latitude {lat} is not within [-90, 90]"),
        );
    }
    Ok(Bson::Document(bson::doc! {
        "type": "Point",
        "coordinates": [lon, lat],
    }))
}

/// Parses `UTC`, `Z` or `+hh:mm` / `-hh:mm`.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    FixedOffset::east_opt(sign * secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_nulls_keeps_the_other_elements_in_order() {
        let a = Value::Array(vec![
            Value::Int32(1),
            Value::Null,
            Value::Int32(3),
            Value::Null,
        ]);
        assert_eq!(
            apply(&Step::DropNulls, a).unwrap(),
            Value::Array(vec![Value::Int32(1), Value::Int32(3)])
        );
        assert_eq!(apply(&Step::DropNulls, Value::Null).unwrap(), Value::Null);
        assert_eq!(
            apply(&Step::DropNulls, Value::Int32(2)).unwrap(),
            Value::Int32(2)
        );
    }

    fn out() -> Output {
        Output {
            cast: None,
            uuid: UuidFormat::Binary,
            sub_millis: SubMillis::Reject,
            timezone: None,
            lossy: Lossy::Reject,
            duplicate_keys: Severity::Error,
            json_levels: json::MAX_DEPTH,
        }
    }

    #[test]
    fn points_take_their_ranges_edges_included_and_refuse_the_rest() {
        let text = |t: &str| point(&Value::Text(t.into()));
        let coords = |b: Bson| match b {
            Bson::Document(d) => d.get_array("coordinates").unwrap().clone(),
            other => panic!("{other}"),
        };
        assert_eq!(
            coords(text("(180,-90)").unwrap()),
            vec![Bson::Double(180.0), Bson::Double(-90.0)]
        );
        assert_eq!(
            coords(text(" ( -180 , 90 ) ").unwrap()),
            vec![Bson::Double(-180.0), Bson::Double(90.0)]
        );
        for bad in [
            "(180.0000001,0)",
            "(0,-90.0000001)",
            "(NaN,0)",
            "(0,Infinity)",
            "(-Infinity,0)",
        ] {
            assert_eq!(text(bad).unwrap_err().0, POINT_RANGE, "{bad}");
        }
        for garbage in ["1,2", "(1;2)", "(a,b)", "", "(1,2"] {
            assert_eq!(text(garbage).unwrap_err().0, "cast", "{garbage}");
        }
        let pair = |a: Value, b: Value| point(&Value::Array(vec![a, b]));
        assert_eq!(
            coords(pair(Value::Int32(3), Value::Double(-0.0)).unwrap()),
            vec![Bson::Double(3.0), Bson::Double(-0.0)]
        );
        assert_eq!(pair(Value::Null, Value::Null).unwrap(), Bson::Null);
        assert_eq!(
            pair(Value::Null, Value::Int32(1)).unwrap_err().0,
            POINT_RANGE
        );
        assert_eq!(
            pair(Value::Double(f64::NAN), Value::Int32(1))
                .unwrap_err()
                .0,
            POINT_RANGE
        );
        assert_eq!(point(&Value::Null).unwrap(), Bson::Null);
        assert_eq!(point(&Value::Bool(true)).unwrap_err().0, "cast");
    }

    /// Valid JSON nested deeper than a document may be was rejected as "invalid JSON".
    #[test]
    fn json_nested_too_deep_has_its_own_rule() {
        let mut o = out();
        o.cast = None;
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = to_bson(&Value::Json(deep), &o).unwrap_err();
        assert_eq!(e.0, "json_too_deep", "{e:?}");
        assert!(e.1.contains("128 levels"), "{e:?}");
    }

    #[test]
    fn a_json_key_given_twice_rejects_or_warns() {
        let v = Value::Json(r#"{"a":1,"a":2}"#.into());
        let (rule, message) = to_bson(&v, &out()).unwrap_err();
        assert_eq!(rule, "json_duplicate_key");
        assert!(message.contains("`a`"), "{message}");
        let mut o = out();
        o.duplicate_keys = Severity::Warning;
        let c = to_bson(&v, &o).unwrap();
        assert_eq!(c.value, Some(Bson::Document(bson::doc! { "a": 2 })));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].0, "json_duplicate_key");
        // A cast to string keeps the text as it is.
        o.cast = Some(CastType::String);
        o.duplicate_keys = Severity::Error;
        assert_eq!(
            to_bson(&v, &o).unwrap().value,
            Some(Bson::String(r#"{"a":1,"a":2}"#.into()))
        );
    }

    #[test]
    fn bytes_become_base64_or_hex_text_exactly() {
        let v = Value::Bytes(vec![0, 1, 0xfe, 0xff, b'a']);
        let mut o = out();
        o.cast = Some(CastType::Base64);
        assert_eq!(
            to_bson(&v, &o).unwrap().value,
            Some(Bson::String("AAH+/2E=".into()))
        );
        o.cast = Some(CastType::Hex);
        assert_eq!(
            to_bson(&v, &o).unwrap().value,
            Some(Bson::String("0001feff61".into()))
        );
        // Only bytes have an encoding.
        assert!(to_bson(&Value::Text("x".into()), &o).is_err());
    }

    #[test]
    fn split_trims_and_drops_empties() {
        let v = apply(
            &Step::Split(",".into()),
            Value::Text(" latex ,, penicillin , ".into()),
        )
        .unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Text("latex".into()),
                Value::Text("penicillin".into())
            ])
        );
        assert_eq!(
            apply(&Step::Split(",".into()), Value::Text(String::new())).unwrap(),
            Value::Array(vec![])
        );
        assert_eq!(
            apply(&Step::Split(",".into()), Value::Null).unwrap(),
            Value::Null
        );
    }

    #[test]
    fn microseconds_are_never_lost_silently() {
        let t = DateTime::parse_from_rfc3339("2021-01-02T00:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = Value::TimestampTz(t);
        let (rule, _) = to_bson(&v, &out()).unwrap_err();
        assert_eq!(rule, "timestamp_precision");

        let mut o = out();
        o.sub_millis = SubMillis::Truncate;
        let c = to_bson(&v, &o).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(
            c.value,
            Some(Bson::DateTime(bson::DateTime::from_millis(
                t.timestamp_millis()
            )))
        );

        o.sub_millis = SubMillis::KeepString;
        let c = to_bson(&v, &o).unwrap();
        assert_eq!(c.exact.as_deref(), Some("2021-01-02T00:00:00.123456Z"));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn millisecond_timestamps_convert_exactly() {
        let t = DateTime::parse_from_rfc3339("2021-01-02T03:04:05.678+02:00")
            .unwrap()
            .with_timezone(&Utc);
        let c = to_bson(&Value::TimestampTz(t), &out()).unwrap();
        assert_eq!(
            c.value,
            Some(Bson::DateTime(bson::DateTime::from_millis(
                1_609_549_445_678
            )))
        );
    }

    #[test]
    fn naive_timestamp_needs_a_timezone() {
        let t = chrono::NaiveDate::from_ymd_opt(2020, 1, 1)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        assert_eq!(
            to_bson(&Value::Timestamp(t), &out()).unwrap_err().0,
            "timezone"
        );
        let mut o = out();
        o.timezone = parse_offset("+01:00");
        let c = to_bson(&Value::Timestamp(t), &o).unwrap();
        assert_eq!(
            c.value,
            Some(Bson::DateTime(bson::DateTime::from_millis(
                1_577_876_400_000
            )))
        );
    }

    #[test]
    fn numeric_defaults_to_exact_decimal128() {
        let c = to_bson(&Value::Numeric("6.300123".into()), &out()).unwrap();
        assert!(matches!(c.value, Some(Bson::Decimal128(_))));
    }

    #[test]
    fn floats_become_decimals_from_their_own_shortest_text() {
        let mut o = out();
        o.cast = Some(CastType::Decimal);
        let dec = |v: Value| match to_bson(&v, &o).unwrap().value {
            Some(Bson::Decimal128(d)) => d.to_string(),
            other => panic!("{other:?}"),
        };
        // real prints as PostgreSQL prints it, not as the widened double.
        assert_eq!(dec(Value::Real(21.35)), "21.35");
        assert_eq!(dec(Value::Real(0.1)), "0.1");
        assert_eq!(dec(Value::Real(10.0)), "10");
        assert_eq!(dec(Value::Real(-3.0e-7)), "-3E-7");
        assert_eq!(dec(Value::Double(10.0)), "10");
        assert_eq!(dec(Value::Double(21.35)), "21.35");
        assert_eq!(dec(Value::Double(0.1 + 0.2)), "0.30000000000000004");
        // The default keeps a real exactly, widened to a double.
        assert_eq!(
            to_bson(&Value::Real(21.35), &out()).unwrap().value,
            Some(Bson::Double(f64::from(21.35f32)))
        );
    }

    #[test]
    fn numeric_to_double_rejects_or_warns_when_inexact() {
        let mut o = out();
        o.cast = Some(CastType::Double);
        assert_eq!(
            to_bson(&Value::Numeric("6.300123".into()), &o)
                .unwrap()
                .value,
            Some(Bson::Double(6.300123))
        );
        let long = Value::Numeric("0.123456789012345678901".into());
        assert_eq!(to_bson(&long, &o).unwrap_err().0, "lossy_conversion");
        o.lossy = Lossy::Warn;
        assert_eq!(to_bson(&long, &o).unwrap().warnings.len(), 1);
        // Beyond a double's range even `lossy = "warn"` rejects: no infinity is written for a
        // finite number.
        for big in ["1e400", "-1e400", "1e9223372036854775807"] {
            let v = Value::Numeric(big.into());
            assert_eq!(to_bson(&v, &o).unwrap_err().0, "cast", "{big}");
        }
        // Below its range the nearest double (zero) is written, with the warning.
        let tiny = to_bson(&Value::Numeric("1e-400".into()), &o).unwrap();
        assert_eq!(
            (tiny.value, tiny.warnings.len()),
            (Some(Bson::Double(0.0)), 1)
        );
    }

    #[test]
    fn int_casts_check_range_and_wholeness() {
        let mut o = out();
        o.cast = Some(CastType::Int);
        assert_eq!(
            to_bson(&Value::Text("42".into()), &o).unwrap().value,
            Some(Bson::Int32(42))
        );
        assert_eq!(
            to_bson(&Value::Numeric("3.50".into()), &o).unwrap_err().0,
            "cast"
        );
        assert_eq!(to_bson(&Value::Int64(1 << 40), &o).unwrap_err().0, "cast");
        o.cast = Some(CastType::Long);
        assert_eq!(
            to_bson(&Value::Numeric("12.000".into()), &o).unwrap().value,
            Some(Bson::Int64(12))
        );
    }

    #[test]
    fn uuid_formats() {
        let u = uuid::Uuid::parse_str("6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162").unwrap();
        let mut o = out();
        assert!(matches!(
            to_bson(&Value::Uuid(u), &o).unwrap().value,
            Some(Bson::Binary(bson::Binary {
                subtype: BinarySubtype::Uuid,
                ..
            }))
        ));
        o.uuid = UuidFormat::String;
        assert_eq!(
            to_bson(&Value::Uuid(u), &o).unwrap().value,
            Some(Bson::String("6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162".into()))
        );
    }

    #[test]
    fn json_keeps_structure_and_integers() {
        let c = to_bson(
            &Value::Json("{\"a\":[1,2.5,{\"b\":null}],\"n\":5000000000}".into()),
            &out(),
        )
        .unwrap();
        let d = c.value.unwrap();
        let d = d.as_document().unwrap();
        assert_eq!(d.get_i64("n").unwrap(), 5_000_000_000);
        assert_eq!(d.get_array("a").unwrap()[0], Bson::Int32(1));
    }

    fn json_number_bson(text: &str, o: &Output) -> Result<Converted, (String, String)> {
        to_bson(&Value::Json(format!("{{\"a\":[0,{text}]}}")), o).map(|mut c| {
            let doc = c.value.take().unwrap();
            c.value = Some(doc.as_document().unwrap().get_array("a").unwrap()[1].clone());
            c
        })
    }

    fn decimal(text: &str) -> Bson {
        Bson::Decimal128(bson::Decimal128::from_bytes(
            decimal::to_decimal128_bytes(text).unwrap(),
        ))
    }

    #[test]
    fn json_numbers_are_integers_exact_doubles_or_decimal128_never_rounded() {
        let cases = [
            ("42", Bson::Int32(42)),
            ("-2147483649", Bson::Int64(-2_147_483_649)),
            ("-0", Bson::Int32(0)),
            ("9223372036854775807", Bson::Int64(i64::MAX)),
            ("9223372036854775808", decimal("9223372036854775808")),
            ("18446744073709551617", decimal("18446744073709551617")),
            ("-9223372036854775809", decimal("-9223372036854775809")),
            ("9007199254740993.0", decimal("9007199254740993.0")),
            ("0.1", Bson::Double(0.1)),
            ("1.0", Bson::Double(1.0)),
            ("1e2", Bson::Double(100.0)),
            ("100000000000000000000", Bson::Double(1e20)),
            // A subnormal double holds fewer digits than its text shows: the exact decimal.
            ("5e-324", decimal("5E-324")),
            ("1.7976931348623157e308", Bson::Double(f64::MAX)),
            ("1e400", decimal("1E+400")),
            ("1e-400", decimal("1E-400")),
            (
                "3.141592653589793238462643383279",
                decimal("3.141592653589793238462643383279"),
            ),
            // Shortest texts of doubles that serde_json (without exact float parsing) reads one
            // ulp off.
            ("6.086303267103942e139", Bson::Double(6.086303267103942e139)),
            ("4.29003784304291e-213", Bson::Double(4.29003784304291e-213)),
            (
                "1.6761219944747622e300",
                Bson::Double(1.6761219944747622e300),
            ),
            // 17 digits that no double has as its shortest text.
            (
                "2.2250738585072011e-308",
                decimal("2.2250738585072011e-308"),
            ),
            ("2.2250738585072014e-308", Bson::Double(f64::MIN_POSITIVE)),
            // Past 34 digits, trailing zeros go; the value stays.
            (
                "1234567890123456789012345678901234000000",
                decimal("1.234567890123456789012345678901234E+39"),
            ),
        ];
        for (text, expected) in cases {
            let c = json_number_bson(text, &out()).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(c.value, Some(expected), "{text}");
            assert!(c.warnings.is_empty(), "{text}");
        }
        let neg_zero = json_number_bson("-0.0", &out()).unwrap().value.unwrap();
        assert!(neg_zero.as_f64().unwrap().is_sign_negative());
        // A number alone is converted the same way.
        assert_eq!(
            to_bson(&Value::Json("18446744073709551617".into()), &out())
                .unwrap()
                .value,
            Some(decimal("18446744073709551617"))
        );
    }

    #[test]
    fn json_numbers_nothing_holds_exactly_reject_or_warn_with_their_path() {
        let long = "0.12345678901234567890123456789012345678";
        let (rule, message) = json_number_bson(long, &out()).unwrap_err();
        assert_eq!(rule, "json_number_precision");
        assert!(
            message.contains("`a[1]`") && message.contains(long) && message.contains("38"),
            "{message}"
        );
        let (rule, message) = json_number_bson("1e7000", &out()).unwrap_err();
        assert_eq!(rule, "json_number_precision");
        assert!(message.contains("exponent"), "{message}");
        let huge = format!("1{}", "0".repeat(7000));
        let (_, message) = json_number_bson(&huge, &out()).unwrap_err();
        assert!(message.contains("7001 characters"), "{message}");

        let mut o = out();
        o.lossy = Lossy::Warn;
        let c = json_number_bson(long, &o).unwrap();
        assert_eq!(c.value, Some(Bson::Double(long.parse().unwrap())));
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].0, "json_number_precision");
        assert!(
            c.warnings[0].1.contains("nearest double"),
            "{:?}",
            c.warnings
        );
        let c = json_number_bson("-1e-7000", &o).unwrap();
        assert_eq!(c.value, Some(Bson::Double(-0.0)));
        assert_eq!(c.warnings.len(), 1);
        // One warning per value, however many numbers it has.
        let c = to_bson(&Value::Json(format!("[{long}, {{\"b\": [1e-7000]}}]")), &o).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].1.contains("`[0]`"), "{:?}", c.warnings);
        assert!(c.warnings[0].1.contains("1 more"), "{:?}", c.warnings);
        // No double is near 1e7000: rejected whatever `lossy` says.
        assert_eq!(
            json_number_bson("1e7000", &o).unwrap_err().0,
            "json_number_precision"
        );
    }

    #[test]
    fn invalid_json_rejects_with_the_json_rule() {
        let (rule, message) = to_bson(&Value::Json("{\"a\": 01}".into()), &out()).unwrap_err();
        assert_eq!(rule, "json");
        assert!(message.starts_with("invalid JSON: "), "{message}");
    }

    #[test]
    fn map_replaces_known_values() {
        let step = Step::Map {
            pairs: vec![("M".into(), Value::Text("male".into()))],
            fallback: None,
            blank_padded: false,
        };
        assert_eq!(
            apply(&step, Value::Text("M".into())).unwrap(),
            Value::Text("male".into())
        );
        assert_eq!(
            apply(&step, Value::Text("X".into())).unwrap(),
            Value::Text("X".into())
        );
    }

    /// adv41 F5: text becomes an integer as PostgreSQL's `'…'::int8` reads it; the oracle is
    /// what PostgreSQL 16 accepts (`' 42 '`, `'+7'`, `'1_000'`) and refuses (`'1e3'`, `'3.0'`).
    #[test]
    fn text_to_int_takes_what_postgresql_takes() {
        let mut o = out();
        o.cast = Some(CastType::Long);
        for (text, want) in [
            (" 42 ", 42),
            ("+7", 7),
            ("-0", 0),
            ("1_000", 1000),
            ("\t5\n", 5),
        ] {
            assert_eq!(
                to_bson(&Value::Text(text.into()), &o).unwrap().value,
                Some(Bson::Int64(want)),
                "{text:?}"
            );
        }
        for text in [
            "1e3", "3.0", "", " ", "1__0", "_1", "1_", "0x10", "4 2", "--1",
        ] {
            let (rule, _) = to_bson(&Value::Text(text.into()), &o).unwrap_err();
            assert_eq!(rule, "cast", "{text:?}");
        }
        // A numeric is a number already: a whole one is cast, whatever its scale.
        assert_eq!(
            to_bson(&Value::Numeric("3.0".into()), &o).unwrap().value,
            Some(Bson::Int64(3))
        );
    }

    /// adv41 F2: a char(n)'s value is blank-padded; its map keys match as PostgreSQL compares
    /// (`'a'::char(5) = 'a'`), and an unmatched value is kept as it was, padding and all.
    #[test]
    fn map_on_a_blank_padded_value_ignores_trailing_blanks() {
        let t = |s: &str| Value::Text(s.into());
        let step = |blank_padded| Step::Map {
            pairs: vec![("a".into(), t("A")), ("b  ".into(), t("B"))],
            fallback: None,
            blank_padded,
        };
        assert_eq!(apply(&step(true), t("a    ")).unwrap(), t("A"));
        assert_eq!(apply(&step(true), t("b    ")).unwrap(), t("B"));
        assert_eq!(apply(&step(true), t(" a   ")).unwrap(), t(" a   "));
        assert_eq!(apply(&step(true), t("c    ")).unwrap(), t("c    "));
        assert_eq!(apply(&step(false), t("a    ")).unwrap(), t("a    "));
    }

    /// `map` on an array (an array column, or after `split`) left `["M","F"]` as it was, and a
    /// `"*"` fallback replaced the whole array by one scalar.
    #[test]
    fn map_applies_to_each_array_element() {
        let t = |s: &str| Value::Text(s.into());
        let step = Step::Map {
            pairs: vec![("M".into(), t("male")), ("F".into(), t("female"))],
            fallback: None,
            blank_padded: false,
        };
        assert_eq!(
            apply(
                &step,
                Value::Array(vec![t("M"), t("F"), t("X"), Value::Null])
            )
            .unwrap(),
            Value::Array(vec![t("male"), t("female"), t("X"), Value::Null])
        );
        let step = Step::Map {
            pairs: vec![("M".into(), t("male"))],
            fallback: Some(t("unknown")),
            blank_padded: false,
        };
        assert_eq!(
            apply(&step, Value::Array(vec![t("M"), t("F")])).unwrap(),
            Value::Array(vec![t("male"), t("unknown")])
        );
        assert_eq!(
            apply(&step, Value::Array(vec![])).unwrap(),
            Value::Array(vec![])
        );
    }

    /// `map` matched a boolean as `true`/`false`, a timestamptz as RFC 3339, a BC date as
    /// `-0043-03-15`: the keys are PostgreSQL's text of the value.
    #[test]
    fn map_matches_the_postgres_text_of_non_text_values() {
        let step = |k: &str| Step::Map {
            pairs: vec![(k.into(), Value::Text("hit".into()))],
            fallback: None,
            blank_padded: false,
        };
        let hit = |k: &str, v: Value| apply(&step(k), v).unwrap() == Value::Text("hit".into());
        assert!(hit("t", Value::Bool(true)));
        assert!(hit("f", Value::Bool(false)));
        assert!(!hit("true", Value::Bool(true)));
        let at = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        assert!(hit("2020-01-01 00:00:00+00", Value::TimestampTz(at)));
        let bc = chrono::NaiveDate::from_ymd_opt(-43, 3, 15).unwrap();
        assert!(hit("0044-03-15 BC", Value::Date(bc)));
        assert!(hit("1.50", Value::Numeric("1.50".into())));
        assert!(!hit("1.5", Value::Numeric("1.50".into())));
        assert!(hit("7", Value::Int32(7)));
    }
}
