//! The independent comparison of `verify` (MongoDB here; Appwrite in [`appwrite`]): for every field written as its column is
//! (no transform; the natural conversion or a cast this module can check), verify asks PostgreSQL
//! for its own rendering of the column with its own query (`::text`, `to_jsonb`, epoch
//! microseconds, hex of the bytes) and compares it with the target's value using
//! [`compare`], which shares no code with `transform/` or the source decoders. So a conversion
//! loss that migrate and the re-derivation of [`super::verify_entity`] would both make is seen.
//!
//! Memory stays bounded: source rows stream in key order; target documents stream in `_id` order
//! when that is the key order ([`super::order`]), else they are looked up by `_id` in batches.
//! Documents that are missing or unexpected are left to the main comparison. Only the first
//! [`super::KEPT`] mismatches are held; every one goes to the problems file.

pub mod appwrite;
mod calendar;
pub mod compare;
mod embedded;
pub mod json;
pub(crate) mod shown;

use std::collections::HashMap;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{AssertSqlSafe, Executor, Row};

use super::{BrokenReference, EntityVerification, Kept, ProblemLog, show_id};
use crate::mapping::plan::{FieldPlan, Input, Plan};
use crate::mapping::spec::{CastType, SubMillis};
use crate::pipeline::run::RunError;
use crate::sink::mongodb::{MongoError, MongoTarget};
use crate::source::postgres::{qualifier, quote_ident};
use crate::source::{ColKind, SourceError, SourceSession, Value};
use compare::Check;
use shown::Shown;

/// A field compared independently, and how.
#[derive(Debug, Clone, Serialize)]
pub struct ComparedField {
    pub path: String,
    pub column: String,
    pub check: String,
}

/// A field not compared independently, and why (`transform: phone`, `constant value`, …).
#[derive(Debug, Clone, Serialize)]
pub struct NotCompared {
    pub path: String,
    pub why: String,
}

/// A target value that is not PostgreSQL's value under the mapping's documented rule.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub key: String,
    pub id: String,
    pub field: String,
    /// PostgreSQL's text of the value as an SQL literal (`'NULL'` is the text, `NULL` the SQL
    /// NULL; an array as `to_jsonb` renders it, `'[…]'::jsonb`).
    pub source: String,
    /// The target's value as canonical Extended JSON (`(absent)` when the field is missing).
    pub target: String,
    pub problem: String,
}

/// The independent comparison of one entity.
#[derive(Debug, Clone, Serialize)]
pub struct Independent {
    pub compared_fields: Vec<ComparedField>,
    pub not_compared: Vec<NotCompared>,
    /// Documents whose fields were compared.
    pub documents: u64,
    /// Source rows whose key gave no `_id` here (left to the main comparison).
    pub rows_without_id: u64,
    pub mismatch_count: u64,
    pub mismatches: Vec<Mismatch>,
    /// References inside embedded documents that point nowhere.
    pub broken_embedded_references: Vec<BrokenReference>,
    /// References inside embedded documents the run wrote with a `reference_rejected` warning
    /// (see [`EntityVerification::warned_references`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warned_embedded_references: Vec<BrokenReference>,
}

impl Independent {
    pub fn ok(&self) -> bool {
        self.mismatch_count == 0 && self.broken_embedded_references.is_empty()
    }

    /// Folds the result into the entity's verification: its `ok`, its broken references and its
    /// count of problems.
    pub fn apply(&self, v: &mut EntityVerification) {
        v.broken_references
            .extend(self.broken_embedded_references.iter().cloned());
        v.warned_references
            .extend(self.warned_embedded_references.iter().cloned());
        v.independent_mismatches += self.mismatch_count;
        v.ok = v.ok && self.ok();
    }

    /// The text report's lines (indented like the rest of `verify`'s output).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let names = |v: Vec<&str>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        out.push(format!(
            "    compared independently with PostgreSQL's own values ({} documents): {}",
            self.documents,
            names(
                self.compared_fields
                    .iter()
                    .map(|f| f.path.as_str())
                    .collect()
            )
        ));
        if !self.not_compared.is_empty() {
            let why: Vec<String> = self
                .not_compared
                .iter()
                .map(|n| format!("{} ({})", n.path, n.why))
                .collect();
            out.push(format!(
                "    not compared independently: {}",
                why.join(", ")
            ));
        }
        for m in self.mismatches.iter().take(super::SHOWN) {
            out.push(format!(
                "    value differs: {} field {}: source {} target {} — {}",
                m.key, m.field, m.source, m.target, m.problem
            ));
        }
        let shown = self.mismatches.len().min(super::SHOWN) as u64;
        if self.mismatch_count > shown {
            out.push(format!(
                "    … and {} more differing values",
                self.mismatch_count - shown
            ));
        }
        out
    }
}

/// One field to compare: where it is in the document and how PostgreSQL renders its column.
struct FieldCheck {
    path: Vec<String>,
    path_text: String,
    column: String,
    /// The SELECT expression of PostgreSQL's rendering (text).
    sql: String,
    check: Check,
    keep_nulls: bool,
    /// What the mapping writes for a date or timestamp of ±infinity.
    infinity: crate::source::postgres::Infinity,
    /// How a mismatch shows the source's value.
    shown: Shown,
}

impl FieldCheck {
    /// The source's value (the oracle's rendering `text`) as verify shows it.
    fn shown_source(&self, text: Option<&str>) -> String {
        self.shown.literal(text)
    }
}

/// What the target holds for PostgreSQL's `text` of a date or timestamp under `c` when that text
/// is `infinity` or `-infinity` and the mapping writes such values: the text itself
/// (`infinity = "string"`), or nothing, as for NULL (`"null"`). `None`: not such a value.
fn infinite(c: &FieldCheck, text: Option<&str>) -> Option<Option<Bson>> {
    use crate::source::postgres::Infinity;
    let t = text.filter(|t| *t == "infinity" || *t == "-infinity")?;
    match c.infinity {
        Infinity::String => Some(Some(Bson::String(t.to_string()))),
        Infinity::Null => Some(None),
        Infinity::Reject => None,
    }
}

/// Whether a type name is an array type (`INT4[]`, `_int4`), and of which element type.
fn element_type(pg_type: &str) -> Option<String> {
    if let Some(e) = pg_type.strip_suffix("[]") {
        return Some(e.to_ascii_uppercase());
    }
    pg_type.strip_prefix('_').map(|e| e.to_ascii_uppercase())
}

/// The check of a non-array column of type `pg_type` under `cast`, or why there is none.
fn scalar_check(pg_type: &str, f: &FieldPlan) -> Result<Check, String> {
    use CastType as C;
    let out = &f.output;
    let kind = ColKind::from_pg_type(pg_type);
    let offset_s = match kind {
        ColKind::Timestamp => match out.timezone {
            Some(tz) => i64::from(tz.local_minus_utc()),
            None => return Err("timestamp without a zone".into()),
        },
        _ => 0,
    };
    let check = match (kind, out.cast) {
        (ColKind::Int16 | ColKind::Int32, None | Some(C::Int)) => Check::Int { long: false },
        (ColKind::Int64, Some(C::Int)) => Check::Int { long: false },
        (ColKind::Int16 | ColKind::Int32 | ColKind::Int64, Some(C::Long))
        | (ColKind::Int64, None) => Check::Int { long: true },
        (ColKind::Int16 | ColKind::Int32 | ColKind::Int64, Some(C::Double)) => Check::NearestDouble,
        (ColKind::Int16 | ColKind::Int32 | ColKind::Int64, Some(C::Decimal)) => Check::IntDecimal,
        (ColKind::Float32, None | Some(C::Double)) => Check::Float4,
        (ColKind::Float64, None | Some(C::Double)) => Check::Float8,
        (ColKind::Float32 | ColKind::Float64, Some(C::Decimal)) => Check::FloatDecimal,
        (ColKind::Numeric, None | Some(C::Decimal)) => Check::Numeric,
        (ColKind::Numeric, Some(C::Double)) => Check::NearestDouble,
        (ColKind::Numeric, Some(C::Int)) => Check::Int { long: false },
        (ColKind::Numeric, Some(C::Long)) => Check::Int { long: true },
        (ColKind::Bool, None | Some(C::Bool)) => Check::Bool,
        (
            ColKind::Text
            | ColKind::Numeric
            | ColKind::Int16
            | ColKind::Int32
            | ColKind::Int64
            | ColKind::Uuid
            | ColKind::Json,
            Some(C::String),
        )
        | (ColKind::Text, None) => Check::Text,
        (ColKind::Uuid, None | Some(C::Uuid)) => Check::Uuid(out.uuid),
        (ColKind::Bytes, None) => Check::Bytes,
        (ColKind::Bytes, Some(C::Base64)) => Check::Base64,
        (ColKind::Bytes, Some(C::Hex)) => Check::Hex,
        (ColKind::Date, None | Some(C::Date)) => Check::Date,
        (ColKind::TimestampTz | ColKind::Timestamp, None | Some(C::Date)) => Check::Instant {
            sub_millis: out.sub_millis,
            offset_s,
        },
        (ColKind::Json, None) => Check::Json { lossy: out.lossy },
        (ColKind::OtherAsText, Some(C::Point)) if pg_type == "POINT" => Check::Point,
        (ColKind::OtherAsText, None | Some(C::String)) if element_type(pg_type).is_none() => {
            Check::Text
        }
        (_, Some(c)) => return Err(format!("type = {c:?} from {pg_type}").to_lowercase()),
        (_, None) => return Err(format!("no check for {pg_type}").to_lowercase()),
    };
    Ok(check)
}

/// The check of a column, and the SQL of PostgreSQL's rendering of `col` for it.
fn column_check(pg_type: &str, col: &str, f: &FieldPlan) -> Result<(Check, String), String> {
    if let Some(elem) = element_type(pg_type) {
        let inner = scalar_check(&elem, f).map_err(|why| format!("array: {why}"))?;
        // Elements kept as their text: compared where `to_jsonb` gives each as the string
        // PostgreSQL shows (a composite or an hstore becomes a JSON object there, not its text).
        let shown_as_text = matches!(
            elem.as_str(),
            "INET"
                | "CIDR"
                | "MACADDR"
                | "MACADDR8"
                | "INTERVAL"
                | "MONEY"
                | "TIME"
                | "TIMETZ"
                | "BIT"
                | "VARBIT"
                | "INT4RANGE"
                | "INT8RANGE"
                | "NUMRANGE"
                | "DATERANGE"
                | "TSRANGE"
                | "TSTZRANGE"
        );
        if matches!(inner, Check::Text)
            && ColKind::from_pg_type(&elem) != ColKind::Text
            && !shown_as_text
        {
            return Err(format!("array of {}", elem.to_lowercase()));
        }
        // to_jsonb turns each float into a numeric, which has no −0: floats are read from the
        // array's own text (their shortest exact digits), as JSON (NaN and infinities quoted).
        // `json` elements as their own text: `to_jsonb` would fail on some valid ones
        // (`\u0000`, numbers beyond numeric's range) and abort the whole comparison.
        let sql = if matches!(elem.as_str(), "FLOAT4" | "FLOAT8") {
            format!(
                "replace(regexp_replace(translate({col}::text, '{{}}', '[]'), '(-?Infinity|NaN)', '\"\\1\"', 'g'), 'NULL', 'null')"
            )
        } else if elem == "JSON" {
            format!("array_to_json({col})::text")
        } else {
            format!("to_jsonb({col})::text")
        };
        return Ok((Check::Array(Box::new(inner)), sql));
    }
    let check = scalar_check(pg_type, f)?;
    let sql = match &check {
        Check::Text
            if pg_type == "TEXT"
                || pg_type == "VARCHAR"
                || pg_type == "CHAR"
                || pg_type == "BPCHAR" =>
        {
            col.to_string()
        }
        Check::Bytes | Check::Base64 | Check::Hex => format!("encode({col}, 'hex')"),
        // x and y as float8 text (shortest exact digits), not the point's own `(x,y)`.
        Check::Point => format!("({col})[0]::text || ' ' || ({col})[1]::text"),
        Check::Instant { .. } | Check::InstantText { .. } => format!(
            "CASE WHEN isfinite({col}) THEN extract(epoch FROM {col})::text ELSE {col}::text END"
        ),
        Check::Date => format!(
            "CASE WHEN isfinite({col}) THEN ({col} - date '1970-01-01')::text ELSE {col}::text END"
        ),
        // A `json` column as its own text (read by the oracle's JSON reader): `to_jsonb` fails
        // on some valid values (`\u0000`, numbers beyond numeric's range).
        Check::Json { .. } if pg_type == "JSON" => format!("{col}::text"),
        Check::Json { .. } => format!("to_jsonb({col})::text"),
        // inet as PostgreSQL shows it (a host without its /32).
        Check::Text if pg_type == "INET" => format!("abbrev({col})"),
        _ => format!("{col}::text"),
    };
    Ok((check, sql))
}

/// Why a field cannot be compared with its column's own value, if it cannot.
fn not_independent(f: &FieldPlan) -> Option<String> {
    if !f.steps.is_empty() {
        let names: Vec<String> = f
            .steps
            .iter()
            .map(|s| {
                let d = format!("{s:?}");
                d.split([' ', '{', '(']).next().unwrap_or("").to_lowercase()
            })
            .collect();
        return Some(format!("transform: {}", names.join(", ")));
    }
    if let Some(c) = &f.combine {
        let d = format!("{c:?}");
        return Some(format!(
            "columns combined: {}",
            d.split([' ', '(']).next().unwrap_or("").to_lowercase()
        ));
    }
    match &f.input {
        Input::Const(_) => return Some("constant value".into()),
        Input::Columns(_) => return Some("several columns".into()),
        Input::Column(_) => {}
    }
    if f.default.is_some() {
        return Some("default value".into());
    }
    None
}

/// Why reference field `f` (read from `column`) is not its column's value, if it is not: a
/// reference is the referenced document's `_id`, which is the column's own value only when that
/// mapping keeps its key as the id, of a type whose id is its natural value (integers, text,
/// uuids in this field's form; a numeric or date key's id is its text).
fn reference_not_natural(f: &FieldPlan, column: &crate::source::SourceColumn) -> Option<String> {
    let rule = f.reference.as_ref()?;
    let natural = rule.strategy == crate::mapping::spec::IdStrategy::Key
        && match column.kind {
            ColKind::Int16 | ColKind::Int32 | ColKind::Int64 | ColKind::Text => true,
            ColKind::Uuid => rule.uuid == f.output.uuid,
            _ => false,
        };
    (!natural).then(|| format!("reference: the `_id` of {}", rule.entity))
}

/// The fields of `plan` compared independently (with their SQL) and those that are not.
fn plan_fields(plan: &Plan) -> (Vec<FieldCheck>, Vec<NotCompared>) {
    let (checks, mut skipped) = field_checks(&plan.relation, &plan.read, &plan.fields);
    for e in &plan.embeds {
        for f in &e.fields {
            skipped.push(NotCompared {
                path: format!("{}.{}", e.path_text, f.path_text),
                why: "embedded (compared by the re-derivation only)".into(),
            });
        }
    }
    (checks, skipped)
}

/// The fields of `fields` (read by `read` from `relation`) compared independently, with their
/// SQL, and those that are not.
fn field_checks(
    relation: &str,
    read: &crate::source::ReadSpec,
    fields: &[FieldPlan],
) -> (Vec<FieldCheck>, Vec<NotCompared>) {
    let qual = qualifier(relation);
    let mut checks = Vec::new();
    let mut skipped = Vec::new();
    for f in fields {
        if let Some(why) = not_independent(f) {
            skipped.push(NotCompared {
                path: f.path_text.clone(),
                why,
            });
            continue;
        }
        let Input::Column(i) = f.input else {
            unreachable!("checked above")
        };
        let column = &read.columns[i];
        if let Some(why) = reference_not_natural(f, column) {
            skipped.push(NotCompared {
                path: f.path_text.clone(),
                why,
            });
            continue;
        }
        if column.expr.is_some() {
            skipped.push(NotCompared {
                path: f.path_text.clone(),
                why: "computed column".into(),
            });
            continue;
        }
        let col = format!("{qual}.{}", quote_ident(&column.name));
        match column_check(&column.pg_type, &col, f) {
            Ok((check, sql)) => {
                if let (Check::Instant { offset_s, .. }, Some(exact)) = (&check, &f.exact_path)
                    && f.output.sub_millis == SubMillis::KeepString
                {
                    checks.push(FieldCheck {
                        path: exact.clone(),
                        path_text: exact.join("."),
                        column: column.name.clone(),
                        sql: sql.clone(),
                        check: Check::InstantText {
                            offset_s: *offset_s,
                        },
                        keep_nulls: f.nulls == crate::mapping::spec::NullPolicy::Keep,
                        infinity: column.infinity,
                        shown: Shown::of(&check, &column.pg_type),
                    });
                }
                checks.push(FieldCheck {
                    path: f.path.clone(),
                    path_text: f.path_text.clone(),
                    column: column.name.clone(),
                    sql,
                    shown: Shown::of(&check, &column.pg_type),
                    check,
                    keep_nulls: f.nulls == crate::mapping::spec::NullPolicy::Keep,
                    infinity: column.infinity,
                });
            }
            Err(why) => skipped.push(NotCompared {
                path: f.path_text.clone(),
                why,
            }),
        }
    }
    (checks, skipped)
}

/// The settings, for this transaction only, that PostgreSQL's renderings read by the oracle
/// depend on, whatever the database, the role or the connection set: `to_jsonb` writes a
/// `bytea[]`'s elements as `bytea_output` says (`escape` rendered `\x00ff` as `\000\377`: verify failed a
/// correct target, found by the thirteenth tester, T4); floats as `extra_float_digits`
/// says (1: the shortest round-trip text); `timestamptz` elements with the offset of `TimeZone`
/// (UTC: `+00:00`, never a local-mean-time offset in seconds). `DateStyle` is pinned too,
/// although `to_jsonb` and the epoch renderings do not follow it. `IntervalStyle` (and
/// `lc_monetary`) stay as the session has them: interval and money values are compared as the
/// text the run wrote, which is PostgreSQL's text under the session's settings (documented).
pub(super) async fn pin_renderings(conn: &mut sqlx::PgConnection) -> Result<(), RunError> {
    for set in [
        "SET LOCAL extra_float_digits = 1",
        "SET LOCAL bytea_output = 'hex'",
        "SET LOCAL TimeZone = 'UTC'",
        "SET LOCAL DateStyle = 'ISO, MDY'",
    ] {
        conn.execute(set)
            .await
            .map_err(qerr(format!("pin the oracle's renderings ({set})")))?;
    }
    // A SQL_ASCII database holds any bytes: converted to UTF-8 for the client, a value that is
    // not UTF-8 makes the server end the whole read. Its bytes come as they are instead, and a
    // row holding such a value (which the run rejected: rule `encoding`) is not compared.
    let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
        .fetch_one(&mut *conn)
        .await
        .map_err(qerr("read the server's encoding".into()))?;
    if encoding == "SQL_ASCII" {
        conn.execute("SET LOCAL client_encoding = 'SQL_ASCII'")
            .await
            .map_err(qerr("read a SQL_ASCII database's bytes as they are".into()))?;
    }
    Ok(())
}

/// The SQL rendering a key column is read with, to rebuild its value (and the row's `_id`).
fn key_sql(kind: ColKind, pg_type: &str, col: &str) -> String {
    match kind {
        // char(n) as read, with its blanks: a cast to text drops them, so a key shorter than n
        // named no document (the row was silently not compared).
        ColKind::Text if pg_type == "CHAR" || pg_type == "BPCHAR" => format!("concat({col})"),
        ColKind::Text if pg_type != "NAME" => col.to_string(),
        ColKind::Date => {
            format!("CASE WHEN isfinite({col}) THEN ({col} - date '1970-01-01')::text END")
        }
        ColKind::Timestamp | ColKind::TimestampTz => {
            format!("CASE WHEN isfinite({col}) THEN extract(epoch FROM {col})::text END")
        }
        _ => format!("{col}::text"),
    }
}

/// A key value from its rendering by [`key_sql`].
fn key_value(kind: ColKind, text: &str) -> Option<Value> {
    let instant = |t: &str| {
        let d = compare::Dec::parse(t)?;
        let scale = 10i128.checked_pow(u32::try_from((d.exp + 6).max(0)).ok()?)?;
        let micros: i128 = d.coef.parse::<i128>().ok()?.checked_mul(scale)?;
        let micros = if d.neg { -micros } else { micros };
        chrono::DateTime::from_timestamp_micros(i64::try_from(micros).ok()?)
    };
    Some(match kind {
        ColKind::Int16 | ColKind::Int32 => Value::Int32(text.parse().ok()?),
        ColKind::Int64 => Value::Int64(text.parse().ok()?),
        ColKind::Numeric => Value::Numeric(text.to_string()),
        ColKind::Text => Value::Text(text.to_string()),
        ColKind::Uuid => Value::Uuid(uuid::Uuid::parse_str(text).ok()?),
        ColKind::Date => {
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            Value::Date(epoch.checked_add_signed(chrono::Duration::days(text.parse().ok()?))?)
        }
        ColKind::Timestamp => Value::Timestamp(instant(text)?.naive_utc()),
        ColKind::TimestampTz => Value::TimestampTz(instant(text)?),
        _ => return None,
    })
}

/// The value at a dotted path of a document (`None`: absent).
fn at_path<'d>(d: &'d Document, path: &[String]) -> Option<&'d Bson> {
    let (last, parents) = path.split_last()?;
    let mut cur = d;
    for p in parents {
        match cur.get(p) {
            Some(Bson::Document(inner)) => cur = inner,
            _ => return None,
        }
    }
    cur.get(last)
}

/// A target document as stored, decoded from its raw BSON: never through serde, whose `Bson`
/// visitor reads an embedded object with a `$numberDecimal` (`$oid`, `$date`…) key as that type
/// and would fail a document that holds such a JSON object exactly.
pub(super) fn stored(raw: &bson::RawDocumentBuf, collection: &str) -> Result<Document, RunError> {
    raw.to_document().map_err(|e| {
        RunError::Target(MongoError::Reply(format!(
            "a document of {collection} does not decode: {e}"
        )))
    })
}

fn merr(op: String) -> impl FnOnce(mongodb::error::Error) -> RunError {
    move |cause| RunError::Target(MongoError::Command { op, cause })
}

fn qerr(context: String) -> impl FnOnce(sqlx::Error) -> RunError {
    move |cause| RunError::Source(SourceError::Query { context, cause })
}

/// Source rows whose documents are looked up at once when ids do not follow key order.
const LOOKUP_CHUNK: usize = 500;

/// A source row waiting for its document: key text, `_id`, renderings (one per check).
type Pending = (String, Bson, Vec<Option<String>>);

struct Comparer<'a> {
    entity: &'a str,
    checks: &'a [FieldCheck],
    log: &'a mut ProblemLog,
    mismatches: Kept<Mismatch>,
    documents: u64,
}

impl Comparer<'_> {
    fn document(&mut self, row: &Pending, doc: &Document) -> Result<(), RunError> {
        self.documents += 1;
        let (key, id, texts) = row;
        for (c, text) in self.checks.iter().zip(texts) {
            self.field(key, id, c, text, at_path(doc, &c.path), None)?;
        }
        Ok(())
    }

    /// Compares one field's target value (`None`: absent) with PostgreSQL's `text` (`None`:
    /// NULL); `element`: its position in an embedded array.
    fn field(
        &mut self,
        key: &str,
        id: &Bson,
        c: &FieldCheck,
        text: &Option<String>,
        target: Option<&Bson>,
        element: Option<usize>,
    ) -> Result<(), RunError> {
        let written = infinite(c, text.as_deref());
        let null = None;
        // The source as it is, for the report: an infinity written as null is no NULL (adv41 F6).
        let source = text;
        let text = match &written {
            Some(None) => &null,
            _ => text,
        };
        let problem = match (text, target) {
            (Some(_), _) if matches!(written, Some(Some(_))) => {
                let expected = written.as_ref().and_then(|w| w.as_ref());
                (target != expected).then(|| {
                    format!(
                        "the mapping writes this infinity as the text {}",
                        expected.map_or_else(String::new, compare::show)
                    )
                })
            }
            (None, None) if !c.keep_nulls => None,
            (None, Some(Bson::Null)) if c.keep_nulls => None,
            (None, _) if matches!(written, Some(None)) => Some(if c.keep_nulls {
                "an infinity the mapping writes as null (infinity = \"null\"), NULLs kept as null"
                    .to_string()
            } else {
                "an infinity the mapping writes as NULL (infinity = \"null\"), a field then left out"
                    .to_string()
            }),
            (None, _) => Some(if c.keep_nulls {
                "NULL in the source: the mapping keeps NULLs as null".to_string()
            } else {
                "NULL in the source: the mapping leaves such a field out".to_string()
            }),
            (Some(_), None) => Some("the field is missing".to_string()),
            (Some(t), Some(b)) => compare::value(&c.check, t, b).err(),
        };
        let Some(problem) = problem else {
            return Ok(());
        };
        let problem = match element {
            Some(i) => format!("element {i}: {problem}"),
            None => problem,
        };
        let m = Mismatch {
            key: key.to_string(),
            id: show_id(id),
            field: c.path_text.clone(),
            source: c.shown_source(source.as_deref()),
            target: target.map_or_else(|| "(absent)".into(), compare::show),
            problem,
        };
        self.log.write(serde_json::json!({
            "entity": self.entity, "kind": "value", "key": m.key, "id": m.id,
            "field": m.field, "source": m.source, "target": m.target, "problem": m.problem,
        }))?;
        self.mismatches.push(m);
        Ok(())
    }
}

/// Looks the documents of `pending` up by `_id` and compares them; empties `pending`.
async fn lookup(
    coll: &mongodb::Collection<bson::RawDocumentBuf>,
    collection: &str,
    pending: &mut Vec<Pending>,
    cmp: &mut Comparer<'_>,
) -> Result<(), RunError> {
    if pending.is_empty() {
        return Ok(());
    }
    let ids: Vec<Bson> = pending.iter().map(|(_, id, _)| id.clone()).collect();
    let mut found: HashMap<Vec<u8>, Document> = HashMap::with_capacity(ids.len());
    let mut cursor = coll
        .find(doc! { "_id": { "$in": ids } })
        .await
        .map_err(merr(format!("read {collection}")))?;
    while let Some(d) = cursor
        .try_next()
        .await
        .map_err(merr(format!("read {collection}")))?
    {
        let d = stored(&d, collection)?;
        let id = d.get("_id").cloned().unwrap_or(Bson::Null);
        found.insert(super::id_bytes(&id), d);
    }
    for row in pending.drain(..) {
        if let Some(d) = found.get(&super::id_bytes(&row.1)) {
            cmp.document(&row, d)?;
        }
    }
    Ok(())
}

/// The key columns of `plan` (kind, qualified name) and the query reading, in key order, the key
/// renderings ([`key_sql`]) then PostgreSQL's rendering of each of `checks`.
fn source_query(plan: &Plan, checks: &[FieldCheck]) -> (Vec<(ColKind, String)>, String) {
    let qual = qualifier(&plan.relation);
    let keys: Vec<(ColKind, String)> = plan
        .key
        .iter()
        .map(|&i| {
            let c = &plan.read.columns[i];
            (c.kind, format!("{qual}.{}", quote_ident(&c.name)))
        })
        .collect();
    let mut select: Vec<String> = plan
        .key
        .iter()
        .zip(&keys)
        .map(|(&i, (kind, col))| key_sql(*kind, &plan.read.columns[i].pg_type, col))
        .collect();
    select.extend(checks.iter().map(|c| c.sql.clone()));
    let order: Vec<String> = plan
        .key
        .iter()
        .zip(&keys)
        .map(|(&i, (_, col))| crate::source::postgres::order_expr(&plan.read.columns[i], col))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        select.join(", "),
        plan.relation,
        order.join(", ")
    );
    (keys, sql)
}

/// The rows of a key-ordered read whose `_id` no other row shares: a key given twice (a query
/// source, a table without a unique key) wrote one of its rows — which one the read's order of
/// equal keys decides — and the run rejected the others (`duplicate_key`), so none of them can
/// be compared with the document. Holds one row until the next shows it unique.
pub(super) struct Unique<T> {
    held: Option<(Bson, T)>,
    repeated: bool,
}

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Unique {
            held: None,
            repeated: false,
        }
    }
}

impl<T> Unique<T> {
    /// Takes the next row; returns the one before it when no other row has its `_id`.
    pub(super) fn push(&mut self, id: Bson, item: T) -> Option<T> {
        if self.held.as_ref().is_some_and(|(held, _)| *held == id) {
            self.repeated = true;
            return None;
        }
        let repeated = std::mem::replace(&mut self.repeated, false);
        self.held
            .replace((id, item))
            .filter(|_| !repeated)
            .map(|(_, item)| item)
    }

    /// The last row, when unique (then `None` from here on).
    pub(super) fn finish(&mut self) -> Option<T> {
        let repeated = std::mem::replace(&mut self.repeated, false);
        self.held.take().filter(|_| !repeated).map(|(_, item)| item)
    }
}

/// Column `i` of `row` as text; `None` when its bytes are not UTF-8 (only a SQL_ASCII database
/// sends such bytes: see [`pin_renderings`]).
#[allow(clippy::option_option)]
pub(super) fn utf8_text(
    row: &sqlx::postgres::PgRow,
    i: usize,
    context: &str,
) -> Result<Option<Option<String>>, RunError> {
    // Unchecked: the column is text (its binary format is its bytes), not bytea.
    let bytes: Option<&[u8]> = row
        .try_get_unchecked(i)
        .map_err(qerr(context.to_string()))?;
    Ok(match bytes {
        None => Some(None),
        Some(b) => std::str::from_utf8(b).ok().map(|t| Some(t.to_string())),
    })
}

/// A row of [`source_query`]: its key text, its `_id` and the renderings of the `checks` checks
/// (`None`: its key gives no `_id` here).
fn source_row(
    row: &sqlx::postgres::PgRow,
    keys: &[(ColKind, String)],
    plan: &Plan,
    checks: usize,
    context: &str,
) -> Result<Option<Pending>, RunError> {
    let width = keys.len();
    let mut key_values = Vec::with_capacity(width);
    for (i, (kind, _)) in keys.iter().enumerate() {
        // Bytes that are no UTF-8 (a SQL_ASCII database, see `pin_renderings`): a row the run
        // rejected, not compared.
        let Some(text) = utf8_text(row, i, context)? else {
            return Ok(None);
        };
        key_values.push(text.as_deref().and_then(|t| key_value(*kind, t)));
    }
    let Some(key_values) = key_values.into_iter().collect::<Option<Vec<Value>>>() else {
        return Ok(None);
    };
    let key_refs: Vec<&Value> = key_values.iter().collect();
    let Ok(id) = plan.id.id_for(&key_refs) else {
        return Ok(None);
    };
    let mut texts = Vec::with_capacity(checks);
    for i in 0..checks {
        let Some(text) = utf8_text(row, width + i, context)? else {
            return Ok(None);
        };
        texts.push(text);
    }
    Ok(Some((crate::source::value::key_text(&key_refs), id, texts)))
}

/// What the references of embedded documents are checked against: the collection of each
/// entity, and the ids of each referenced entity's rows the target does not hold (rejected or
/// skipped when it ran: a reference to one was written with a `reference_rejected` warning).
pub struct EmbeddedRefs<'a> {
    pub collections: &'a HashMap<String, String>,
    pub absent: &'a HashMap<String, std::sync::Arc<std::collections::HashSet<String>>>,
}

/// The independent comparison of one entity with `target`, whichever kind it is.
pub async fn independent_in(
    target: &crate::sink::target::Target,
    plan: &Plan,
    session: &mut SourceSession,
    sample: Option<u64>,
    refs: &EmbeddedRefs<'_>,
    log: &mut ProblemLog,
) -> Result<Independent, RunError> {
    use crate::sink::target::Target;
    match target {
        Target::Mongo(m) => verify_entity(plan, session, m, sample, refs, log).await,
        Target::Appwrite(a) => appwrite::verify_entity(plan, session, a, sample, log).await,
    }
}

/// Compares the independently checkable fields of `plan` in the target with PostgreSQL's own
/// values, and the references inside its embedded documents. `sample`: as [`super::verify_entity`].
pub async fn verify_entity(
    plan: &Plan,
    session: &mut SourceSession,
    target: &MongoTarget,
    sample: Option<u64>,
    refs: &EmbeddedRefs<'_>,
    log: &mut ProblemLog,
) -> Result<Independent, RunError> {
    let (checks, mut not_compared) = field_checks(&plan.relation, &plan.read, &plan.fields);
    let (embed_checks, embed_skipped) = embedded::embed_fields(plan);
    not_compared.extend(embed_skipped);
    let compared_fields = checks
        .iter()
        .chain(embed_checks.iter().flat_map(|e| e.checks()))
        .map(|c| ComparedField {
            path: c.path_text.clone(),
            column: c.column.clone(),
            check: c.check.describe(),
        })
        .collect();
    let source_rows = session.count(&plan.relation).await?;
    let step = match sample {
        Some(n) if n > 0 && n < source_rows => source_rows.div_ceil(n),
        _ => 1,
    };
    // A start drawn each time, as the comparison's own sample (adv43 F7).
    let offset = if step > 1 { fastrand::u64(0..step) } else { 0 };
    let coll = target
        .database()
        .collection::<bson::RawDocumentBuf>(&plan.collection);
    let mut cmp = Comparer {
        entity: &plan.entity,
        checks: &checks,
        log,
        mismatches: Kept::default(),
        documents: 0,
    };
    let mut rows_without_id = 0u64;
    if !checks.is_empty() {
        let (keys, sql) = source_query(plan, &checks);
        let mut conn = session.reader().await?;
        pin_renderings(&mut conn).await?;
        let ordered = step == 1 && super::order::ids_follow_key_order(plan);
        let mut target_cursor = if ordered {
            Some(
                coll.find(doc! {})
                    .sort(doc! { "_id": 1 })
                    .await
                    .map_err(merr(format!("read {}", plan.collection)))?,
            )
        } else {
            None
        };
        let mut pending_doc: Option<Document> = None;
        let mut pending: Vec<Pending> = Vec::new();
        let context = format!("read {} for the independent comparison", plan.relation);
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch(&mut conn);
        let mut n = 0u64;
        let mut unique = Unique::default();
        loop {
            let item = match rows.try_next().await.map_err(qerr(context.clone()))? {
                Some(row) => {
                    let Some(item) = source_row(&row, &keys, plan, checks.len(), &context)? else {
                        rows_without_id += 1;
                        continue;
                    };
                    let id = item.1.clone();
                    match unique.push(id, item) {
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
            let Some(cursor) = target_cursor.as_mut() else {
                pending.push(item);
                if pending.len() >= LOOKUP_CHUNK {
                    lookup(&coll, &plan.collection, &mut pending, &mut cmp).await?;
                }
                continue;
            };
            // Merge: skip target documents before this id (the main comparison names them).
            loop {
                if pending_doc.is_none() {
                    pending_doc = cursor
                        .try_next()
                        .await
                        .map_err(merr(format!("read {}", plan.collection)))?
                        .map(|raw| stored(&raw, &plan.collection))
                        .transpose()?;
                }
                let Some(d) = pending_doc.as_ref() else { break };
                let tid = d.get("_id").cloned().unwrap_or(Bson::Null);
                match super::order::bson_cmp(&tid, &item.1) {
                    std::cmp::Ordering::Less => pending_doc = None,
                    std::cmp::Ordering::Equal => {
                        cmp.document(&item, d)?;
                        pending_doc = None;
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
        }
        drop(rows);
        lookup(&coll, &plan.collection, &mut pending, &mut cmp).await?;
    }
    // Inside embedded arrays: each child row's columns against its element.
    embedded::compare(plan, session, &coll, step, &embed_checks, &mut cmp).await?;
    let (broken_embedded_references, warned_embedded_references) =
        embedded_references(plan, target, refs).await?;
    let Comparer {
        mismatches,
        documents,
        ..
    } = cmp;
    Ok(Independent {
        compared_fields,
        not_compared,
        documents,
        rows_without_id,
        mismatch_count: mismatches.count,
        mismatches: mismatches.first,
        broken_embedded_references,
        warned_embedded_references,
    })
}

/// References inside embedded arrays: every value names an existing document of the entity
/// referenced, as top-level references are checked.
async fn embedded_references(
    plan: &Plan,
    target: &MongoTarget,
    refs: &EmbeddedRefs<'_>,
) -> Result<(Vec<BrokenReference>, Vec<BrokenReference>), RunError> {
    let ref_collections = refs.collections;
    let (mut out, mut warned_out) = (Vec::new(), Vec::new());
    for e in &plan.embeds {
        for f in &e.fields {
            let Some(rule) = &f.reference else { continue };
            let ref_coll = ref_collections
                .get(&rule.entity)
                .cloned()
                .unwrap_or_else(|| rule.entity.clone());
            let path = match e.element {
                crate::mapping::spec::EmbedElement::Value => e.path_text.clone(),
                crate::mapping::spec::EmbedElement::Document => {
                    format!("{}.{}", e.path_text, f.path_text)
                }
            };
            let op = format!("check references of {}.{}", plan.collection, path);
            let pipeline = vec![
                doc! { "$unwind": format!("${}", e.path_text) },
                doc! { "$match": { path.clone(): { "$ne": null, "$exists": true } } },
                doc! { "$group": { "_id": format!("${path}") } },
                doc! { "$lookup": { "from": &ref_coll, "localField": "_id", "foreignField": "_id", "as": "m" } },
                doc! { "$match": { "m": { "$size": 0 } } },
                doc! { "$project": { "_id": 1 } },
            ];
            let dangling: Vec<Bson> = target
                .database()
                .collection::<Document>(&plan.collection)
                .aggregate(pipeline)
                .await
                .map_err(merr(op.clone()))?
                .try_collect::<Vec<Document>>()
                .await
                .map_err(merr(op))?
                .into_iter()
                .filter_map(|mut d| d.remove("_id"))
                .collect();
            let (warned, broken) =
                super::split_dangling(dangling, refs.absent.get(&rule.entity).map(|a| a.as_ref()));
            for (values, list) in [(broken, &mut out), (warned, &mut warned_out)] {
                if let Some(r) = super::dangling_reference(&path, &ref_coll, &values) {
                    list.push(r);
                }
            }
        }
    }
    Ok((out, warned_out))
}
