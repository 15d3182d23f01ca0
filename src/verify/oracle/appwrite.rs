//! The independent comparison of `verify --target appwrite`: the fields written as their columns
//! are (those [`super::plan_fields`] finds for MongoDB), compared in the Appwrite rows with
//! PostgreSQL's own rendering of the column (the same query as for MongoDB).
//!
//! An Appwrite row holds JSON values: this module reads each one back into the value the check of
//! [`compare`] is about, as Appwrite stores that type — integers and floats as JSON numbers
//! (floats bit for bit), decimals as their exact text (digits and scale, turned into the
//! Decimal128 bits here), instants as ISO 8601 text in milliseconds, bytes and nested documents as
//! extended JSON text (read by [`json`], numbers kept as text), arrays element by element — and
//! lets [`compare::value`] decide. Nothing here comes from `transform/` or
//! `sink::appwrite::schema::to_row`; only the row id of a key is the sink's (it names the row).
//!
//! Memory stays bounded: both sides go through an external sort by row id
//! ([`crate::pipeline::spill`]) and are merged; rows on one side only are left to the main
//! comparison.

use base64::Engine;
use bson::{Bson, Document};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::AssertSqlSafe;

use super::compare::{self, Check, D128, Dec};
use super::embedded::Families;
use super::json::{self, J};
use super::{ComparedField, FieldCheck, Independent, Mismatch, NotCompared, at_path, qerr};
use crate::mapping::plan::{Input, Plan};
use crate::mapping::spec::{SubMillis, UuidFormat};
use crate::pipeline::run::RunError;
use crate::pipeline::spill::Spill;
use crate::sink::appwrite::rows::row_id;
use crate::sink::appwrite::tables::Pages;
use crate::sink::target::AppwriteTarget;
use crate::source::SourceSession;
use crate::verify::{Kept, ProblemLog, spill_err};

/// The Decimal128 with the digits and exponent of `d` (`None` beyond its range).
fn decimal128(d: &D128) -> Option<Bson> {
    let bits: u128 = match d {
        D128::NaN => 0b11111u128 << 122,
        D128::Infinity { neg } => (u128::from(*neg) << 127) | (0b11110u128 << 122),
        D128::Finite(d) => {
            let coef: u128 = d.coef.parse().ok()?;
            if coef >= 10u128.pow(34) || !(-6176..=6111).contains(&d.exp) {
                return None;
            }
            (u128::from(d.neg) << 127) | (((d.exp + 6176) as u128) << 113) | coef
        }
    };
    Some(Bson::Decimal128(bson::Decimal128::from_bytes(
        bits.to_le_bytes(),
    )))
}

/// A numeric column's text as Appwrite holds it: PostgreSQL's text of the value (`1.50`,
/// `NaN`, `Infinity`), never with an exponent.
fn decimal_text(s: &str) -> Result<Bson, String> {
    // PostgreSQL prints a number without an exponent: a column holding `1E-7` for its
    // `0.0000001` is the same value in another text (adv32 F1).
    if s.contains(['E', 'e']) && !matches!(s, "NaN" | "Infinity" | "-Infinity") {
        return Err(format!(
            "`{s}` is written with an exponent; PostgreSQL's text of the value has none"
        ));
    }
    decimal_value(s)
}

/// A Decimal128 of extended JSON (`{"$numberDecimal": "1E-400"}`): its own text, exponent and
/// all — the digits and exponent are the value (adv35 F1: a JSON number beyond a double, or a
/// child's numeric kept at 34 digits, was refused for its exponent).
fn decimal_value(s: &str) -> Result<Bson, String> {
    let d = match s {
        "NaN" => D128::NaN,
        "Infinity" => D128::Infinity { neg: false },
        "-Infinity" => D128::Infinity { neg: true },
        t => D128::Finite(Dec::parse(t).ok_or_else(|| format!("`{t}` is no decimal"))?),
    };
    decimal128(&d).ok_or_else(|| format!("`{s}` is beyond a Decimal128"))
}

/// ISO 8601 text (Appwrite's datetime) as a BSON date: milliseconds, as Appwrite stores them.
fn instant_text(s: &str) -> Result<Bson, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| format!("`{s}` is no ISO 8601 instant"))?;
    if t.timestamp_subsec_micros() % 1000 != 0 {
        return Err(format!(
            "`{s}` is finer than the millisecond Appwrite keeps"
        ));
    }
    Ok(Bson::DateTime(bson::DateTime::from_millis(
        t.timestamp_millis(),
    )))
}

fn member<'j>(members: &'j [(String, J)], key: &str) -> Option<&'j J> {
    members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// A value of extended JSON (relaxed or canonical, as cutover writes documents, bytes and the
/// elements of nested arrays into text columns) as BSON; numbers from their text.
fn extjson(j: &J) -> Result<Bson, String> {
    Ok(match j {
        J::Null => Bson::Null,
        J::Bool(b) => Bson::Boolean(*b),
        J::String(s) => Bson::String(s.clone()),
        J::Number(t) if !t.contains(['.', 'e', 'E']) => match t.parse::<i64>() {
            Ok(n) => i32::try_from(n).map_or(Bson::Int64(n), Bson::Int32),
            Err(_) => Bson::Double(t.parse().map_err(|_| format!("`{t}` is no number"))?),
        },
        J::Number(t) => Bson::Double(t.parse().map_err(|_| format!("`{t}` is no number"))?),
        J::Array(items) => Bson::Array(items.iter().map(extjson).collect::<Result<_, _>>()?),
        J::Object(members) => {
            let text = |k: &str| match member(members, k) {
                Some(J::String(s)) if members.len() == 1 => Some(s.as_str()),
                _ => None,
            };
            if let Some(s) = text("$numberDecimal") {
                return decimal_value(s);
            }
            if let Some(s) = text("$numberLong") {
                return s
                    .parse()
                    .map(Bson::Int64)
                    .map_err(|_| format!("`{s}` is no int64"));
            }
            if let Some(s) = text("$numberInt") {
                return s
                    .parse()
                    .map(Bson::Int32)
                    .map_err(|_| format!("`{s}` is no int32"));
            }
            if let Some(s) = text("$numberDouble") {
                let f = match s {
                    "NaN" => f64::NAN,
                    "Infinity" => f64::INFINITY,
                    "-Infinity" => f64::NEG_INFINITY,
                    t => t.parse().map_err(|_| format!("`{t}` is no double"))?,
                };
                return Ok(Bson::Double(f));
            }
            if members.len() == 1 {
                match member(members, "$date") {
                    Some(J::String(s)) => return instant_text(s),
                    Some(J::Object(inner)) => {
                        if let Some(J::String(ms)) = member(inner, "$numberLong") {
                            let ms = ms.parse().map_err(|_| format!("`{ms}` is no date"))?;
                            return Ok(Bson::DateTime(bson::DateTime::from_millis(ms)));
                        }
                    }
                    _ => {}
                }
                if let Some(J::Object(inner)) = member(members, "$binary")
                    && let (Some(J::String(b64)), Some(J::String(sub))) =
                        (member(inner, "base64"), member(inner, "subType"))
                {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|_| "bad base64 in $binary".to_string())?;
                    let sub =
                        u8::from_str_radix(sub, 16).map_err(|_| format!("bad subType `{sub}`"))?;
                    return Ok(Bson::Binary(bson::Binary {
                        subtype: sub.into(),
                        bytes,
                    }));
                }
            }
            let mut d = Document::new();
            for (k, v) in members {
                d.insert(k.clone(), extjson(v)?);
            }
            Bson::Document(d)
        }
    })
}

/// Extended JSON text (a text column holding a document, bytes or a nested array) as BSON.
fn extjson_text(s: &str) -> Result<Bson, String> {
    extjson(&json::parse(s).map_err(|e| format!("the target's JSON text: {e}"))?)
}

/// An integer as the width the check wants when it holds the value (Appwrite has one integer).
fn width(check: &Check, b: Bson) -> Bson {
    match (check, b) {
        (Check::Int { long: true }, Bson::Int32(n)) => Bson::Int64(i64::from(n)),
        (Check::Int { long: false }, Bson::Int64(n)) => {
            i32::try_from(n).map_or(Bson::Int64(n), Bson::Int32)
        }
        (_, b) => b,
    }
}

/// An Appwrite column value read back into the value `check` is about, as Appwrite stores the
/// type: see the module docs.
pub fn column(check: &Check, v: &Value) -> Result<Bson, String> {
    let text = || {
        v.as_str()
            .ok_or_else(|| format!("expected text, found {v}"))
    };
    if v.is_null() {
        return Ok(Bson::Null);
    }
    Ok(match check {
        Check::Int { .. } => {
            let n = v
                .as_i64()
                .ok_or_else(|| format!("expected an integer, found {v}"))?;
            width(check, Bson::Int64(n))
        }
        Check::NearestDouble | Check::Float4 | Check::Float8 => match v {
            Value::Number(n) => Bson::Double(n.as_f64().ok_or("no double")?),
            _ => return Err(format!("expected a number, found {v}")),
        },
        Check::IntDecimal | Check::FloatDecimal | Check::Numeric => decimal_text(text()?)?,
        Check::Bool => match v {
            Value::Bool(b) => Bson::Boolean(*b),
            _ => return Err(format!("expected a boolean, found {v}")),
        },
        Check::Text | Check::Base64 | Check::Hex | Check::InstantText { .. } | Check::Uuid(_) => {
            Bson::String(text()?.to_string())
        }
        Check::Bytes => extjson_text(text()?)?,
        // The text `null` is no null column (the run writes a JSON `null` as one): a
        // difference, whatever the source holds (adv43 F5).
        Check::Json { .. } => match extjson_text(text()?)? {
            Bson::Null => {
                return Err(
                    "the column holds the JSON text `null`, not the null column the run writes"
                        .into(),
                );
            }
            b => b,
        },
        Check::Instant { .. } | Check::Date => instant_text(text()?)?,
        // A point column's `[lon, lat]`, as the GeoJSON point the check reads.
        Check::Point => match v.as_array().map(Vec::as_slice) {
            Some([Value::Number(lon), Value::Number(lat)]) => Bson::Document(bson::doc! {
                "type": "Point",
                "coordinates": [lon.as_f64().ok_or("no double")?, lat.as_f64().ok_or("no double")?],
            }),
            _ => return Err(format!("expected a point [lon, lat], found {v}")),
        },
        Check::Array(elem) => match v {
            Value::Array(items) => Bson::Array(
                items
                    .iter()
                    .map(|i| match i {
                        Value::Array(_) => column(check, i),
                        i => column(elem, i),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            // Arrays of arrays are extended JSON text.
            Value::String(s) => extjson_text(s)?,
            _ => return Err(format!("expected an array, found {v}")),
        },
    })
}

/// The check as Appwrite holds the type: a uuid is its text whatever the MongoDB format.
fn for_appwrite(check: Check) -> Check {
    match check {
        Check::Uuid(_) => Check::Uuid(UuidFormat::String),
        Check::Array(e) => Check::Array(Box::new(for_appwrite(*e))),
        c => c,
    }
}

/// How a check reads for an Appwrite table, for the report.
pub fn describe(check: &Check) -> String {
    match check {
        Check::Int { .. } => "integer → integer".into(),
        Check::NearestDouble => "exact number → nearest double (float)".into(),
        Check::IntDecimal => "integer → decimal text".into(),
        Check::Float4 => "real text → float, bit-exact".into(),
        Check::Float8 => "double text → float, bit-exact".into(),
        Check::FloatDecimal => "float text → decimal text, same value".into(),
        Check::Numeric => "numeric text → decimal text, digits and scale".into(),
        Check::Bool => "boolean".into(),
        Check::Text => "text, byte for byte".into(),
        Check::Uuid(_) => "uuid → text".into(),
        Check::Bytes => "bytes → extended JSON binary text".into(),
        Check::Base64 => "bytes → base64".into(),
        Check::Hex => "bytes → hex".into(),
        Check::Instant { sub_millis, .. } => format!(
            "instant in µs → datetime in ms (sub-millisecond: {})",
            match sub_millis {
                SubMillis::Reject => "rejected",
                SubMillis::Truncate => "truncated",
                SubMillis::KeepString => "truncated, exact text kept",
            }
        ),
        Check::InstantText { .. } => "instant in µs → RFC 3339 text".into(),
        Check::Date => "date → datetime at midnight UTC".into(),
        Check::Json { .. } => "JSON text, numbers as exact decimals".into(),
        Check::Array(e) => format!("array, element by element ({})", describe(e)),
        Check::Point => "point x y → point [lon, lat], bit-exact".into(),
    }
}

/// Whether the Appwrite value `v` of a field is PostgreSQL's `text` (`None`: NULL) under `c`.
fn field_problem(c: &FieldCheck, text: Option<&str>, row: &Value) -> Option<String> {
    let (top, rest) = c.path.split_first()?;
    let stored = row.get(top).unwrap_or(&Value::Null);
    let target = if rest.is_empty() {
        column(&c.check, stored)
    } else {
        // Inside a document column (extended JSON text).
        match stored {
            Value::Null => Ok(Bson::Null),
            Value::String(s) => extjson_text(s).map(|b| match b {
                Bson::Document(d) => at_path(&d, rest)
                    .cloned()
                    .map_or(Bson::Null, |b| width(&c.check, b)),
                _ => Bson::Null,
            }),
            other => Err(format!("expected document text, found {other}")),
        }
    };
    match super::infinite(c, text) {
        // Written as its text: a string column (or a string inside a document).
        Some(Some(expected)) => {
            let found = if rest.is_empty() {
                Ok(match stored {
                    Value::String(s) => Bson::String(s.clone()),
                    Value::Null => Bson::Null,
                    other => Bson::String(other.to_string()),
                })
            } else {
                target
            };
            match found {
                Ok(b) if b == expected => None,
                Ok(b) => Some(format!(
                    "the mapping writes this infinity as the text {}, found {}",
                    compare::show(&expected),
                    compare::show(&b)
                )),
                Err(e) => Some(e),
            }
        }
        // Written as null: said as the infinity it is, not as a NULL of the source (adv41 F6).
        Some(None) => judge(&c.check, None, target.or(Ok(Bson::Null))).map(|_| {
            "an infinity the mapping writes as null (infinity = \"null\"), found a value".into()
        }),
        None => judge(&c.check, text, target),
    }
}

/// Whether `target` (read back from the row) is PostgreSQL's `text` under `c`.
fn judge(check: &Check, text: Option<&str>, target: Result<Bson, String>) -> Option<String> {
    let target = match target {
        Ok(t) => t,
        Err(e) => return Some(e),
    };
    // A row lists every column: a NULL (or a field left out) reads as null either way.
    match (text, &target) {
        (None, Bson::Null) => None,
        (None, _) => Some("NULL in the source".into()),
        // JSON `null` is a null column in Appwrite; the JSON check says whether it is that.
        (Some(t), Bson::Null) if matches!(*check, Check::Json { .. }) => {
            compare::value(check, t, &Bson::Null).err()
        }
        (Some(_), Bson::Null) => Some("the field is missing (null)".into()),
        (Some(t), b) => compare::value(check, t, b).err(),
    }
}

/// Independent checks of `plan` for its Appwrite table, and the fields not compared.
fn appwrite_fields(plan: &Plan) -> (Vec<FieldCheck>, Vec<NotCompared>) {
    let (checks, mut skipped) = super::plan_fields(plan);
    if plan.appwrite_users.is_some() {
        skipped.extend(checks.into_iter().map(|c| NotCompared {
            path: c.path_text,
            why: "an Appwrite user attribute".into(),
        }));
        return (Vec::new(), skipped);
    }
    let mut kept = Vec::new();
    for mut c in checks {
        let reference = plan.fields.iter().any(|f| {
            f.path_text == c.path_text
                && f.reference.is_some()
                && matches!(f.input, Input::Column(_))
        });
        if reference {
            skipped.push(NotCompared {
                path: c.path_text,
                why: "reference: stored as the referenced row's id".into(),
            });
            continue;
        }
        // A top-level column holds the type as Appwrite does; inside a document column the text
        // is the BSON value's extended JSON (a uuid there is binary, as on MongoDB).
        if c.path.len() == 1 {
            c.check = for_appwrite(c.check);
        }
        kept.push(c);
    }
    (kept, skipped)
}

/// The independent checks of the embeds stored as child tables (`appwrite = "table"`): per
/// embed, its checks (paths inside the element, named `<array>.<field>`). `skipped` loses the
/// fields compared here and gains those of child tables that cannot be.
fn child_table_fields(
    plan: &Plan,
    skipped: &mut Vec<NotCompared>,
) -> Vec<(usize, Vec<FieldCheck>)> {
    embed_fields_of(plan, skipped, true)
}

/// The independent checks of the embeds stored as a JSON text column of the parent (the
/// default): paths inside the element, whose values are extended JSON as on MongoDB.
fn json_embed_fields(plan: &Plan, skipped: &mut Vec<NotCompared>) -> Vec<(usize, Vec<FieldCheck>)> {
    embed_fields_of(plan, skipped, false)
}

fn embed_fields_of(
    plan: &Plan,
    skipped: &mut Vec<NotCompared>,
    tables: bool,
) -> Vec<(usize, Vec<FieldCheck>)> {
    if plan.appwrite_users.is_some() {
        return Vec::new();
    }
    let (embeds, not) = super::embedded::embed_fields(plan);
    // A JSON-text embed is compared when its array is a top-level column.
    let chosen = |e: &crate::mapping::plan::EmbedPlan| {
        if tables {
            e.appwrite_table
        } else {
            !e.appwrite_table && !e.path_text.contains('.')
        }
    };
    let in_table = |path: &str| {
        plan.embeds
            .iter()
            .any(|e| chosen(e) && path.starts_with(&format!("{}.", e.path_text)))
    };
    let mut out = Vec::new();
    for ec in embeds {
        let e = &plan.embeds[ec.embed()];
        if !chosen(e) {
            continue;
        }
        let embed = ec.embed();
        let mut kept = Vec::new();
        for mut c in ec.into_checks() {
            let inner = &c.path_text[e.path_text.len() + 1..];
            let reference = e.fields.iter().any(|f| {
                f.path_text == inner && f.reference.is_some() && matches!(f.input, Input::Column(_))
            });
            skipped.retain(|n| n.path != c.path_text);
            if reference {
                skipped.push(NotCompared {
                    path: c.path_text,
                    why: "reference: stored as the referenced row's id".into(),
                });
                continue;
            }
            // A child table's column holds the type as Appwrite does; inside JSON text the value
            // is BSON's extended JSON.
            if tables && c.path.len() == 1 {
                c.check = for_appwrite(c.check);
            }
            kept.push(c);
        }
        if !kept.is_empty() {
            out.push((embed, kept));
        }
    }
    for n in not.into_iter().filter(|n| in_table(&n.path)) {
        skipped.retain(|s| s.path != n.path);
        skipped.push(n);
    }
    out
}

/// Where a comparison puts what it finds: the mismatches kept for the report, and the log.
struct Found<'a> {
    mismatches: &'a mut Kept<Mismatch>,
    log: &'a mut ProblemLog,
}

/// An expected record of the comparison: the source key, the element's position in its
/// parent's array (child tables), PostgreSQL's renderings.
type Rendered = (String, Option<u64>, Vec<Option<String>>);

/// Merges the expected records (by row key) with the target's (the row's compared columns),
/// comparing each field; returns how many rows were compared.
fn merge_compare(
    plan: &Plan,
    checks: &[FieldCheck],
    expected: Spill,
    actual: Spill,
    id_of: &dyn Fn(&[u8]) -> String,
    found: &mut Found<'_>,
) -> Result<u64, RunError> {
    let (mismatches, log) = (&mut *found.mismatches, &mut *found.log);
    let mut documents = 0u64;
    let mut expected = expected.sorted().map_err(spill_err)?;
    let mut actual = actual.sorted().map_err(spill_err)?;
    let mut e = expected.next_record().map_err(spill_err)?;
    let mut a = actual.next_record().map_err(spill_err)?;
    while let (Some((ek, ep)), Some((ak, ap))) = (&e, &a) {
        match ek.cmp(ak) {
            std::cmp::Ordering::Less => e = expected.next_record().map_err(spill_err)?,
            std::cmp::Ordering::Greater => a = actual.next_record().map_err(spill_err)?,
            std::cmp::Ordering::Equal => {
                documents += 1;
                let (key, position, texts): Rendered =
                    serde_json::from_slice(ep).map_err(|e| spill_err(e.into()))?;
                let row: Value = serde_json::from_slice(ap).map_err(|e| spill_err(e.into()))?;
                let id = id_of(ek);
                for (c, text) in checks.iter().zip(&texts) {
                    let Some(problem) = field_problem(c, text.as_deref(), &row) else {
                        continue;
                    };
                    let problem = match position {
                        Some(p) => format!("element {p}: {problem}"),
                        None => problem,
                    };
                    let m = Mismatch {
                        key: key.clone(),
                        id: id.clone(),
                        field: c.path_text.clone(),
                        source: c.shown_source(text.as_deref()),
                        target: row.get(&c.path[0]).unwrap_or(&Value::Null).to_string(),
                        problem,
                    };
                    log.write(serde_json::json!({
                        "entity": plan.entity, "kind": "value", "key": m.key, "id": m.id,
                        "field": m.field, "source": m.source, "target": m.target,
                        "problem": m.problem,
                    }))?;
                    mismatches.push(m);
                }
                e = expected.next_record().map_err(spill_err)?;
                a = actual.next_record().map_err(spill_err)?;
            }
        }
    }
    Ok(documents)
}

/// The key of a child-table row: its parent's row id, a zero byte, its position (big-endian).
fn child_key(parent: &str, position: u64) -> Vec<u8> {
    let mut k = parent.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

fn child_key_text(k: &[u8]) -> String {
    match k.len().checked_sub(9) {
        Some(at) => {
            let pos = u64::from_be_bytes(k[at + 1..].try_into().expect("8 bytes"));
            format!("{}[{pos}]", String::from_utf8_lossy(&k[..at]))
        }
        None => String::from_utf8_lossy(k).into_owned(),
    }
}

/// Compares the fields of one child table with the child rows' own renderings; `step`: every
/// `step`-th parent. Returns the child rows compared.
async fn compare_child_table(
    plan: &Plan,
    embed: usize,
    checks: &[FieldCheck],
    session: &mut SourceSession,
    target: &AppwriteTarget,
    step: u64,
    found: &mut Found<'_>,
) -> Result<u64, RunError> {
    let (mismatches, log) = (&mut *found.mismatches, &mut *found.log);
    let e = &plan.embeds[embed];
    let Some(table) = crate::sink::appwrite::schema::child_tables(plan)
        .into_iter()
        .find(|c| c.embed == embed)
        .map(|c| c.table.id)
    else {
        return Ok(0);
    };
    let mut expected = Spill::new();
    {
        let mut reader = Families::new(plan, embed, checks.len(), step);
        let context = reader.context().to_string();
        let mut conn = session.reader().await?;
        super::pin_renderings(&mut conn).await?;
        let sql = super::embedded::child_query(e, checks);
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut conn);
        // The row id of the parent being read.
        let mut parent_id = String::new();
        while let Some(row) = rows.try_next().await.map_err(qerr(context.clone()))? {
            let Some(child) = reader.child(&row)? else {
                continue;
            };
            if child.pos == 0 {
                parent_id = row_id(&child.parent.1);
            }
            let payload: Rendered = (child.parent.0.clone(), Some(child.pos), child.texts);
            expected
                .push(
                    child_key(&parent_id, child.pos),
                    serde_json::to_vec(&payload).expect("strings serialize"),
                )
                .map_err(spill_err)?;
        }
    }
    let tops: Vec<&str> = checks.iter().map(|c| c.path[0].as_str()).collect();
    let mut actual = Spill::new();
    let mut pages = Pages::rows(&target.client, &target.database, &table).by_id();
    loop {
        let page = match pages.next().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) if e.is_missing() => break,
            Err(e) => return Err(RunError::Sink(e.into())),
        };
        for r in &page {
            let (Some(parent), Some(pos)) = (
                r[crate::sink::appwrite::schema::PARENT].as_str(),
                r[crate::sink::appwrite::schema::POSITION].as_u64(),
            ) else {
                continue; // not a child row: left to the main comparison
            };
            let mut kept = serde_json::Map::new();
            for t in &tops {
                kept.insert((*t).to_string(), r.get(*t).cloned().unwrap_or(Value::Null));
            }
            actual
                .push(
                    child_key(parent, pos),
                    serde_json::to_vec(&kept).expect("JSON serializes"),
                )
                .map_err(spill_err)?;
        }
    }
    merge_compare(
        plan,
        checks,
        expected,
        actual,
        &child_key_text,
        &mut Found { mismatches, log },
    )
}

/// Compares the fields inside one embed stored as JSON text in the parent's column with the
/// child rows' own renderings, parent by parent (merged by row id on disk); `step`: every
/// `step`-th parent.
async fn compare_json_embed(
    plan: &Plan,
    embed: usize,
    checks: &[FieldCheck],
    session: &mut SourceSession,
    target: &AppwriteTarget,
    step: u64,
    found: &mut Found<'_>,
) -> Result<(), RunError> {
    let (mismatches, log) = (&mut *found.mismatches, &mut *found.log);
    let e = &plan.embeds[embed];
    // Source side: (parent row id → key text, each child's renderings in order).
    type Children = (String, Vec<Vec<Option<String>>>);
    let mut expected = Spill::new();
    {
        let mut reader = Families::new(plan, embed, checks.len(), step);
        let context = reader.context().to_string();
        let mut conn = session.reader().await?;
        super::pin_renderings(&mut conn).await?;
        let sql = super::embedded::child_query(e, checks);
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut conn);
        let mut gathered: Option<(String, Children)> = None;
        let flush = |g: &mut Option<(String, Children)>, spill: &mut Spill| {
            if let Some((id, children)) = g.take() {
                spill.push(
                    id.into_bytes(),
                    serde_json::to_vec(&children).expect("strings serialize"),
                )?;
            }
            Ok::<(), std::io::Error>(())
        };
        while let Some(row) = rows.try_next().await.map_err(qerr(context.clone()))? {
            let Some(child) = reader.child(&row)? else {
                continue;
            };
            if child.pos == 0 {
                flush(&mut gathered, &mut expected).map_err(spill_err)?;
                let (key, id) = child.parent;
                gathered = Some((row_id(id), (key.clone(), Vec::new())));
            }
            let (_, (_, children)) = gathered.as_mut().expect("set at its first child");
            children.push(child.texts);
        }
        flush(&mut gathered, &mut expected).map_err(spill_err)?;
    }
    // Target side: (row id → the column's text).
    let mut actual = Spill::new();
    let mut pages = Pages::rows(&target.client, &target.database, &plan.collection).by_id();
    loop {
        let page = match pages.next().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) if e.is_missing() => break,
            Err(e) => return Err(RunError::Sink(e.into())),
        };
        for r in &page {
            let id = r["$id"].as_str().unwrap_or_default();
            let text = r.get(&e.path_text).cloned().unwrap_or(Value::Null);
            actual
                .push(
                    id.as_bytes().to_vec(),
                    serde_json::to_vec(&text).expect("JSON serializes"),
                )
                .map_err(spill_err)?;
        }
    }
    let mut expected = expected.sorted().map_err(spill_err)?;
    let mut actual = actual.sorted().map_err(spill_err)?;
    let mut ex = expected.next_record().map_err(spill_err)?;
    let mut ac = actual.next_record().map_err(spill_err)?;
    while let (Some((ek, ep)), Some((ak, ap))) = (&ex, &ac) {
        match ek.cmp(ak) {
            std::cmp::Ordering::Less => ex = expected.next_record().map_err(spill_err)?,
            std::cmp::Ordering::Greater => ac = actual.next_record().map_err(spill_err)?,
            std::cmp::Ordering::Equal => {
                let (key, children): Children =
                    serde_json::from_slice(ep).map_err(|e| spill_err(e.into()))?;
                let stored: Value = serde_json::from_slice(ap).map_err(|e| spill_err(e.into()))?;
                // An array of documents is JSON text (extended JSON, as on MongoDB); an array of
                // values an array column of the value's type.
                let elements: Result<Vec<Result<Bson, String>>, String> = match &stored {
                    Value::String(s) => match extjson_text(s) {
                        Ok(Bson::Array(items)) => Ok(items.into_iter().map(Ok).collect()),
                        Ok(other) => Err(format!("expected an array, found {other}")),
                        Err(e) => Err(e),
                    },
                    Value::Array(_) => Ok(Vec::new()),
                    other => Err(format!("expected JSON text, found {other}")),
                };
                let id = String::from_utf8_lossy(ek).into_owned();
                for (pos, texts) in children.iter().enumerate() {
                    for (c, text) in checks.iter().zip(texts) {
                        let (check, target) = match (&stored, &elements) {
                            (Value::Array(items), _) if c.path.is_empty() => {
                                let Some(item) = items.get(pos) else { break };
                                let check = for_appwrite(c.check.clone());
                                let t = column(&check, item);
                                (check, t)
                            }
                            (_, Ok(items)) => {
                                let Some(el) = items.get(pos) else { break };
                                let t = el.clone().map(|el| {
                                    let v = if c.path.is_empty() {
                                        Some(&el)
                                    } else if let Bson::Document(d) = &el {
                                        at_path(d, &c.path)
                                    } else {
                                        None
                                    };
                                    v.cloned().map_or(Bson::Null, |b| width(&c.check, b))
                                });
                                (c.check.clone(), t)
                            }
                            (_, Err(e)) => (c.check.clone(), Err(e.clone())),
                        };
                        let shown = match &target {
                            Ok(b) => b.clone().into_canonical_extjson().to_string(),
                            Err(_) => stored.to_string(),
                        };
                        let Some(problem) = judge(&check, text.as_deref(), target) else {
                            continue;
                        };
                        let m = Mismatch {
                            key: key.clone(),
                            id: format!("{id}[{pos}]"),
                            field: c.path_text.clone(),
                            source: c.shown_source(text.as_deref()),
                            target: shown,
                            problem: format!("element {pos}: {problem}"),
                        };
                        log.write(serde_json::json!({
                            "entity": plan.entity, "kind": "value", "key": m.key, "id": m.id,
                            "field": m.field, "source": m.source, "target": m.target,
                            "problem": m.problem,
                        }))?;
                        mismatches.push(m);
                    }
                }
                ex = expected.next_record().map_err(spill_err)?;
                ac = actual.next_record().map_err(spill_err)?;
            }
        }
    }
    Ok(())
}

/// Compares the independently checkable fields of `plan` in its Appwrite table with
/// PostgreSQL's own values. `sample`: as [`crate::verify::appwrite::verify_entity`].
pub async fn verify_entity(
    plan: &Plan,
    session: &mut SourceSession,
    target: &AppwriteTarget,
    sample: Option<u64>,
    log: &mut ProblemLog,
) -> Result<Independent, RunError> {
    let (checks, mut not_compared) = appwrite_fields(plan);
    let children = child_table_fields(plan, &mut not_compared);
    let json_embeds = json_embed_fields(plan, &mut not_compared);
    let compared_fields = checks
        .iter()
        .chain(children.iter().flat_map(|(_, c)| c))
        .chain(json_embeds.iter().flat_map(|(_, c)| c))
        .map(|c| ComparedField {
            path: c.path_text.clone(),
            column: c.column.clone(),
            check: if c.path.len() == 1 {
                describe(&c.check)
            } else {
                format!("{} (inside JSON text)", c.check.describe())
            },
        })
        .collect();
    let mut rows_without_id = 0u64;
    let mut mismatches: Kept<Mismatch> = Kept::default();
    let mut documents = 0u64;
    let source_rows = if checks.is_empty() && children.is_empty() && json_embeds.is_empty() {
        0
    } else {
        session.count(&plan.relation).await?
    };
    let step = match sample {
        Some(n) if n > 0 && n < source_rows => source_rows.div_ceil(n),
        _ => 1,
    };
    // A start drawn each time, as the comparison's own sample (adv43 F7).
    let offset = if step > 1 { fastrand::u64(0..step) } else { 0 };
    if !checks.is_empty() {
        // Source side: (row id → [key, renderings…]) of the sampled rows.
        let (keys, sql) = super::source_query(plan, &checks);
        let mut expected = Spill::new();
        {
            let mut conn = session.reader().await?;
            super::pin_renderings(&mut conn).await?;
            let context = format!("read {} for the independent comparison", plan.relation);
            let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut conn);
            let mut n = 0u64;
            let mut unique = super::Unique::default();
            loop {
                let (key, id, texts) = match rows.try_next().await.map_err(qerr(context.clone()))? {
                    Some(row) => {
                        let Some(item) =
                            super::source_row(&row, &keys, plan, checks.len(), &context)?
                        else {
                            rows_without_id += 1;
                            continue;
                        };
                        match unique.push(item.1.clone(), item) {
                            Some(ready) => ready,
                            None => continue,
                        }
                    }
                    None => match unique.finish() {
                        Some(ready) => ready,
                        None => break,
                    },
                };
                let this = n;
                n += 1;
                if !(this + offset).is_multiple_of(step) {
                    continue;
                }
                let payload: Rendered = (key, None, texts);
                let payload = serde_json::to_vec(&payload).expect("strings serialize");
                expected
                    .push(row_id(&id).into_bytes(), payload)
                    .map_err(spill_err)?;
            }
        }
        // Target side: (row id → the row's compared columns).
        let tops: Vec<&str> = checks.iter().map(|c| c.path[0].as_str()).collect();
        let mut actual = Spill::new();
        let mut pages = Pages::rows(&target.client, &target.database, &plan.collection).by_id();
        loop {
            let page = match pages.next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) if e.is_missing() => break,
                Err(e) => return Err(RunError::Sink(e.into())),
            };
            for r in &page {
                let mut kept = serde_json::Map::new();
                for t in &tops {
                    kept.insert((*t).to_string(), r.get(*t).cloned().unwrap_or(Value::Null));
                }
                let id = r["$id"].as_str().unwrap_or_default();
                actual
                    .push(
                        id.as_bytes().to_vec(),
                        serde_json::to_vec(&kept).expect("JSON serializes"),
                    )
                    .map_err(spill_err)?;
            }
        }
        // The merge by row id.
        let id_of = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        documents += merge_compare(
            plan,
            &checks,
            expected,
            actual,
            &id_of,
            &mut Found {
                mismatches: &mut mismatches,
                log,
            },
        )?;
    }
    for (embed, embed_checks) in &json_embeds {
        compare_json_embed(
            plan,
            *embed,
            embed_checks,
            session,
            target,
            step,
            &mut Found {
                mismatches: &mut mismatches,
                log,
            },
        )
        .await?;
    }
    for (embed, child_checks) in &children {
        compare_child_table(
            plan,
            *embed,
            child_checks,
            session,
            target,
            step,
            &mut Found {
                mismatches: &mut mismatches,
                log,
            },
        )
        .await?;
    }
    Ok(Independent {
        compared_fields,
        not_compared,
        documents,
        rows_without_id,
        mismatch_count: mismatches.count,
        mismatches: mismatches.first,
        broken_embedded_references: Vec::new(),
        warned_embedded_references: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::spec::Lossy;
    use serde_json::json;

    fn ok(check: &Check, text: &str, v: Value) -> bool {
        column(check, &v)
            .and_then(|b| compare::value(check, text, &b))
            .is_ok()
    }

    #[test]
    fn decimals_keep_digits_and_scale() {
        assert!(ok(&Check::Numeric, "1.50", json!("1.50")));
        assert!(!ok(&Check::Numeric, "1.50", json!("1.5")));
        assert!(!ok(&Check::Numeric, "1.50", json!("1.51")));
        assert!(ok(&Check::Numeric, "10000000000", json!("10000000000")));
        // The same digits and scale with an exponent are not PostgreSQL's text (adv32 F1).
        assert!(!ok(
            &Check::Numeric,
            "10000000000",
            json!("1.0000000000E+10")
        ));
        assert!(!ok(&Check::Numeric, "10000000000", json!("1E+10")));
        assert!(!ok(
            &Check::Numeric,
            "0.000000100000000",
            json!("1.00000000E-7")
        ));
        assert!(ok(
            &Check::Numeric,
            "0.000000100000000",
            json!("0.000000100000000")
        ));
        assert!(ok(&Check::Numeric, "NaN", json!("NaN")));
        assert!(ok(&Check::FloatDecimal, "0.5", json!("0.50")));
        assert!(!ok(&Check::Numeric, "1.50", json!(1.5)));
    }

    #[test]
    fn floats_are_bit_exact_and_integers_exact() {
        assert!(ok(&Check::Float8, "0.1", json!(0.1)));
        let next = f64::from_bits(0.1f64.to_bits() + 1);
        assert!(!ok(&Check::Float8, "0.1", json!(next)));
        assert!(ok(&Check::Float4, "21.35", json!(f64::from(21.35f32))));
        assert!(ok(&Check::Int { long: true }, "7", json!(7)));
        assert!(ok(&Check::Int { long: false }, "7", json!(7)));
        assert!(!ok(&Check::Int { long: false }, "7", json!(8)));
    }

    #[test]
    fn instants_are_milliseconds() {
        let c = Check::Instant {
            sub_millis: SubMillis::Truncate,
            offset_s: 0,
        };
        assert!(ok(
            &c,
            "1704067200.123456",
            json!("2024-01-01T00:00:00.123+00:00")
        ));
        assert!(!ok(
            &c,
            "1704067200.123456",
            json!("2024-01-01T00:00:00.124+00:00")
        ));
        assert!(!ok(
            &c,
            "1704067200.123",
            json!("2024-01-01T00:00:00.123456+00:00")
        ));
        assert!(ok(
            &Check::Date,
            "19723",
            json!("2024-01-01T00:00:00.000+00:00")
        ));
    }

    #[test]
    fn bytes_json_and_arrays() {
        let bin = json!(r#"{"$binary":{"base64":"AP8=","subType":"00"}}"#);
        assert!(ok(&Check::Bytes, "00ff", bin.clone()));
        assert!(!ok(&Check::Bytes, "00fe", bin));
        let j = Check::Json {
            lossy: Lossy::Reject,
        };
        let text = json!(r#"{"a":1,"b":{"$numberDecimal":"12345678901234567890"},"c":0.1}"#);
        assert!(ok(
            &j,
            r#"{"a": 1, "b": 12345678901234567890, "c": 0.1}"#,
            text.clone()
        ));
        assert!(!ok(
            &j,
            r#"{"a": 2, "b": 12345678901234567890, "c": 0.1}"#,
            text
        ));
        let a = Check::Array(Box::new(Check::Numeric));
        assert!(ok(&a, "[1.50, null]", json!(["1.50", null])));
        assert!(!ok(&a, "[1.50, null]", json!(["1.5", null])));
        let u = Check::Array(Box::new(Check::Uuid(UuidFormat::String)));
        let id = "6c2f1a0e-5b7d-4c1e-9f3a-8d2b7e6c5a41";
        assert!(ok(&u, &format!("[\"{id}\"]"), json!([id])));
    }
}
