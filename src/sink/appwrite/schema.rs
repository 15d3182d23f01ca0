//! Appwrite tables derived from compiled mappings: one column per top-level key of the documents.
//! Appwrite columns hold no objects, so nested documents and arrays of documents are stored as
//! JSON text (the default choice, documented in mappings/README.md); references hold the
//! referenced row id (text).

use serde_json::{Value, json};

use super::rows::{column_value, row_id};
use super::{AppwriteClient, AppwriteError};
use crate::mapping::plan::{FieldPlan, Input, LayoutNode, Plan};
use crate::mapping::spec::{CastType, EmbedElement};
use crate::source::{ColKind, Value as SourceValue};
use crate::transform::Step;

/// Size of a text column when the mapping gives no `max_length`.
pub const DEFAULT_TEXT_SIZE: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Text(u64),
    /// JSON text of a nested document or array of documents.
    Json,
    Integer,
    Float,
    Boolean,
    Datetime,
    /// A geographic point (`[lon, lat]`), from a GeoJSON point.
    Point,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub key: String,
    pub kind: Kind,
    pub array: bool,
    /// Holds references: written as the referenced row's id (whatever the key's type).
    pub reference: bool,
    /// A JSON text column: the paths inside its value (through documents and arrays) that hold
    /// references, written as the referenced rows' ids too.
    pub json_refs: Vec<Vec<String>>,
    /// The field's rules of severity error the server can hold (see [`constraints`]).
    pub constraints: Constraints,
    /// A JSON column's characters, when the mapping sets them (`size`; default
    /// [`DEFAULT_TEXT_SIZE`]). A text column's are in its [`Kind::Text`].
    pub size: Option<u64>,
}

/// Column constraints from a field's rules of severity error — Appwrite's counterpart of the
/// MongoDB validator: `required`, `enum` elements from a `one_of` of strings, `min` / `max` of an
/// integer or float column (the string `size` from `max_length` is the column's [`Kind::Text`]).
/// A warning rule sets none: the rows it warns about are written, so the server must take them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    pub required: bool,
    /// An `enum` column of these elements instead of a string column.
    pub elements: Option<Vec<String>>,
    pub min: Option<Value>,
    pub max: Option<Value>,
}

/// Appwrite's limits on an enum column's elements.
const ENUM_MAX_ELEMENTS: usize = 100;
const ENUM_MAX_ELEMENT_LENGTH: usize = 255;

/// The constraints of a top-level column holding field `f` (of kind `kind`). Arrays get none
/// (a rule reads an array as a whole where Appwrite checks each element), nor do references
/// (written as row ids) and JSON text columns.
pub fn constraints(f: &FieldPlan, kind: &Kind, array: bool) -> Constraints {
    use crate::mapping::spec::{RuleName, Severity};
    let mut out = Constraints::default();
    let Some(r) = &f.rules else { return out };
    if array || f.reference.is_some() || *kind == Kind::Json {
        return out;
    }
    let error = |rule: RuleName| r.severity_of(rule) == Severity::Error;
    out.required =
        (r.required && error(RuleName::Required)) || (r.not_null && error(RuleName::NotNull));
    if let (Kind::Text(_), Some(allowed)) = (kind, &r.one_of)
        && error(RuleName::OneOf)
    {
        let strings: Vec<String> = allowed
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let fits = strings.len() == allowed.len()
            && !strings.is_empty()
            && strings.len() <= ENUM_MAX_ELEMENTS
            && strings
                .iter()
                .all(|s| !s.is_empty() && s.chars().count() <= ENUM_MAX_ELEMENT_LENGTH);
        if fits {
            let mut elements: Vec<String> = Vec::new();
            for s in strings {
                if !elements.contains(&s) {
                    elements.push(s);
                }
            }
            out.elements = Some(elements);
        }
    }
    // Integer bounds round inward (a value passes the rule exactly when it passes them); a bound
    // beyond 64 bits bounds nothing an integer column can hold.
    let int_bound = |b: f64, up: bool| {
        let b = if up { b.ceil() } else { b.floor() };
        (b.is_finite() && b > i64::MIN as f64 && b < i64::MAX as f64).then(|| json!(b as i64))
    };
    match kind {
        Kind::Integer => {
            out.min = r
                .min
                .filter(|_| error(RuleName::Min))
                .and_then(|b| int_bound(b, true));
            out.max = r
                .max
                .filter(|_| error(RuleName::Max))
                .and_then(|b| int_bound(b, false));
        }
        Kind::Float => {
            let finite = |b: f64| b.is_finite().then(|| json!(b));
            out.min = r.min.filter(|_| error(RuleName::Min)).and_then(finite);
            out.max = r.max.filter(|_| error(RuleName::Max)).and_then(finite);
        }
        _ => {}
    }
    out
}

impl ColumnSpec {
    /// The route segment and body of the create-column request.
    pub fn request(&self) -> (&'static str, Value) {
        let c = &self.constraints;
        let mut body = json!({ "key": self.key, "required": c.required, "array": self.array });
        if let Some(elements) = &c.elements {
            body["elements"] = json!(elements);
            return ("enum", body);
        }
        for (name, bound) in [("min", &c.min), ("max", &c.max)] {
            if let Some(b) = bound {
                body[name] = b.clone();
            }
        }
        let kind = match self.kind {
            Kind::Text(size) => {
                body["size"] = json!(size);
                "string"
            }
            Kind::Json => {
                body["size"] = json!(self.size.unwrap_or(DEFAULT_TEXT_SIZE));
                "string"
            }
            Kind::Integer => "integer",
            Kind::Float => "float",
            Kind::Boolean => "boolean",
            Kind::Datetime => "datetime",
            Kind::Point => {
                // The point route takes no `array` (Appwrite has no array of points).
                if let Some(o) = body.as_object_mut() {
                    o.remove("array");
                }
                "point"
            }
        };
        (kind, body)
    }
}

/// An index of a table: a `key` index on each reference column, so that lookups by the
/// referenced row id (and verification's reference checks) do not scan; and the mapping's
/// `[[index]]` tables over top-level columns (`key` or `unique`, with their orders).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub key: String,
    pub columns: Vec<String>,
    /// `key` or `unique`.
    pub kind: &'static str,
    /// `ASC` / `DESC` per column (empty: Appwrite's default).
    pub orders: Vec<String>,
}

/// An Appwrite id from free text: `[A-Za-z0-9._-]`, at most 36, not starting with `_`, `.`, `-`.
fn appwrite_key(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches(['_', '.', '-']);
    let s = if s.is_empty() { "ix" } else { s };
    s.chars().take(36).collect()
}

/// The mapping's `[[index]]` tables Appwrite can hold: those over top-level columns of the
/// table (a nested path is inside a JSON text column). Appwrite indexes every row: a `partial`
/// key index is made over all rows (it only speeds up more queries), a partial unique one is
/// not made (made whole, it would refuse rows the mapping allows). `ttl_seconds` and
/// `collation` have no Appwrite counterpart: the index is made without them (Appwrite's own
/// collation compares text).
fn mapping_indexes(plan: &Plan, columns: &[ColumnSpec]) -> Vec<IndexSpec> {
    let mut out = Vec::new();
    for ix in &plan.indexes {
        if ix.unique && ix.partial.is_some() {
            tracing::warn!(entity = %plan.entity, keys = ?ix.keys, "a partial unique index has no Appwrite counterpart: not created");
            continue;
        }
        let pairs = ix.key_pairs();
        if !pairs
            .iter()
            .all(|(p, _)| columns.iter().any(|c| &c.key == p))
        {
            tracing::warn!(entity = %plan.entity, keys = ?ix.keys, "an index over a nested path has no Appwrite counterpart: not created");
            continue;
        }
        let key = appwrite_key(ix.name.as_deref().unwrap_or(&format!(
            "ix_{}",
            pairs
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join("_")
        )));
        let (kind, orders) = match ix.kind {
            // Appwrite's full-text and spatial indexes take no orders.
            Some(crate::mapping::spec::IndexKind::Text) => ("fulltext", Vec::new()),
            Some(crate::mapping::spec::IndexKind::Sphere2d) => ("spatial", Vec::new()),
            None => (
                if ix.unique { "unique" } else { "key" },
                pairs
                    .iter()
                    .map(|(_, d)| if *d < 0 { "DESC" } else { "ASC" }.to_string())
                    .collect(),
            ),
        };
        out.push(IndexSpec {
            key,
            columns: pairs.iter().map(|(p, _)| p.clone()).collect(),
            kind,
            orders,
        });
    }
    out
}

#[derive(Debug, Clone)]
pub struct TableSpec {
    pub id: String,
    pub columns: Vec<ColumnSpec>,
    pub indexes: Vec<IndexSpec>,
    /// The table's permissions and `rowSecurity` when the mapping sets them (a child table has
    /// its parent's): sent on create, and set again when the table's differ.
    pub access: TableAccess,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableAccess {
    pub permissions: Option<Vec<String>>,
    pub row_security: Option<bool>,
}

impl TableAccess {
    /// The access the mapping gives a plan's table.
    pub fn of(plan: &Plan) -> TableAccess {
        TableAccess {
            permissions: plan.appwrite_permissions.clone(),
            row_security: plan.appwrite_row_security,
        }
    }
}

/// A text column sized by the field's `max_length` when that rule rejects longer values (a
/// warning-only rule lets them through, so the column keeps the default size).
fn text(f: &FieldPlan) -> Kind {
    Kind::Text(
        f.column_size
            .or_else(|| {
                f.rules
                    .as_ref()
                    .filter(|r| {
                        r.severity_of(crate::mapping::spec::RuleName::MaxLength)
                            == crate::mapping::spec::Severity::Error
                    })
                    .and_then(|r| r.max_length)
            })
            .unwrap_or(DEFAULT_TEXT_SIZE),
    )
}

/// The characters of a field's column when it is JSON text (`size`).
fn json_size(kind: &Kind, f: Option<&FieldPlan>) -> Option<u64> {
    (*kind == Kind::Json).then(|| f?.column_size).flatten()
}

fn source_kind(kind: ColKind) -> (Kind, bool) {
    match kind {
        ColKind::Bool => (Kind::Boolean, false),
        ColKind::Int16 | ColKind::Int32 | ColKind::Int64 => (Kind::Integer, false),
        ColKind::Float32 | ColKind::Float64 => (Kind::Float, false),
        ColKind::Numeric => (Kind::Text(64), false),
        ColKind::Uuid => (Kind::Text(36), false),
        ColKind::Date | ColKind::Timestamp | ColKind::TimestampTz => (Kind::Datetime, false),
        ColKind::Json => (Kind::Json, false),
        ColKind::Array(elem) => (source_kind(elem.scalar()).0, true),
        ColKind::Text | ColKind::OtherAsText | ColKind::Bytes => {
            (Kind::Text(DEFAULT_TEXT_SIZE), false)
        }
    }
}

fn const_kind(v: &SourceValue) -> (Kind, bool) {
    match v {
        SourceValue::Bool(_) => (Kind::Boolean, false),
        SourceValue::Int32(_) | SourceValue::Int64(_) => (Kind::Integer, false),
        SourceValue::Real(_) | SourceValue::Double(_) => (Kind::Float, false),
        SourceValue::Array(items) => (
            items
                .first()
                .map(|i| const_kind(i).0)
                .unwrap_or(Kind::Text(DEFAULT_TEXT_SIZE)),
            true,
        ),
        SourceValue::Json(_) => (Kind::Json, false),
        _ => (Kind::Text(DEFAULT_TEXT_SIZE), false),
    }
}

/// The column kind of one field.
pub fn field_kind(plan_read: &crate::source::ReadSpec, f: &FieldPlan) -> (Kind, bool) {
    if f.reference.is_some() {
        return (Kind::Text(36), false);
    }
    let mut array = false;
    let mut kind = match &f.input {
        Input::Column(i) => source_kind(plan_read.columns[*i].kind),
        Input::Const(v) => const_kind(v),
        Input::Columns(idx) => match &f.combine {
            Some(crate::mapping::plan::Combine::Array) => {
                (source_kind(plan_read.columns[idx[0]].kind).0, true)
            }
            _ => (text(f), false),
        },
    };
    for step in &f.steps {
        match step {
            Step::Split(_) => {
                kind = (text(f), true);
            }
            Step::Json => kind = (Kind::Json, false),
            Step::DropNulls => {}
            Step::Phone { .. } => kind = (Kind::Text(16), kind.1),
            Step::Map { .. } | Step::Trim | Step::Lower | Step::Upper => {
                if !matches!(kind.0, Kind::Text(_)) && matches!(step, Step::Map { .. }) {
                    kind = (text(f), kind.1);
                }
            }
        }
    }
    if let Some(cast) = f.output.cast {
        kind.0 = match cast {
            CastType::String | CastType::Base64 | CastType::Hex => text(f),
            CastType::Int | CastType::Long => Kind::Integer,
            CastType::Double => Kind::Float,
            CastType::Decimal => Kind::Text(64),
            CastType::Bool => Kind::Boolean,
            CastType::Date => Kind::Datetime,
            CastType::Uuid => Kind::Text(36),
            CastType::Point => Kind::Point,
        };
    }
    // Appwrite has no array of points (its point route takes no `array`): the GeoJSON points of
    // a `point[]` are kept as JSON text, not sent to a scalar point column that refuses them.
    if kind.0 == Kind::Point
        && let Input::Column(i) = &f.input
        && matches!(plan_read.columns[*i].kind, crate::source::ColKind::Array(_))
    {
        return (Kind::Json, false);
    }
    // A text column is as long as the mapping allows (`max_length`), else the default.
    if kind.0 == Kind::Text(DEFAULT_TEXT_SIZE) {
        kind.0 = text(f);
    }
    array |= kind.1;
    // On an array, `max_length` bounds the number of elements (as validation reads it), not each
    // element's size: `['hello','world']` passed `max_length = 2` and the server refused it.
    if array && kind.0 == text(f) {
        // `size` is each element's characters (adv29 S3: ignored on a `text[]`).
        kind.0 = Kind::Text(f.column_size.unwrap_or(DEFAULT_TEXT_SIZE));
    }
    (kind.0, array)
}

/// The table of a plan: one column per top-level key, in document order.
pub fn table_spec(plan: &Plan) -> TableSpec {
    let l = &plan.layout;
    let mut columns = Vec::new();
    for (key, node) in &l.root {
        let (kind, array) = match node {
            LayoutNode::Doc(_) => (Kind::Json, false),
            LayoutNode::Slot(i) if *i < plan.fields.len() => {
                field_kind(&plan.read, &plan.fields[*i])
            }
            LayoutNode::Slot(i) => match l.embed_slot.iter().position(|s| s == i) {
                // Stored in its own child table.
                Some(e) if plan.embeds[e].appwrite_table => continue,
                Some(e) => match plan.embeds[e].element {
                    EmbedElement::Value => {
                        let (k, _) = field_kind(&plan.embeds[e].read, &plan.embeds[e].fields[0]);
                        (k, true)
                    }
                    EmbedElement::Document => (Kind::Json, false),
                },
                None => (Kind::Text(64), false), // exact copies of timestamps
            },
        };
        let reference = match node {
            LayoutNode::Slot(i) => match plan.fields.get(*i) {
                Some(f) => f.reference.is_some(),
                // An embedded array of values: each element a reference.
                None => l.embed_slot.iter().position(|s| s == i).is_some_and(|e| {
                    let e = &plan.embeds[e];
                    e.element == EmbedElement::Value
                        && e.fields.first().is_some_and(|f| f.reference.is_some())
                }),
            },
            LayoutNode::Doc(_) => false,
        };
        let json_refs = if kind == Kind::Json {
            json_reference_paths(plan, key)
        } else {
            Vec::new()
        };
        let constraints = match node {
            LayoutNode::Slot(i) if *i < plan.fields.len() => {
                constraints(&plan.fields[*i], &kind, array)
            }
            _ => Constraints::default(),
        };
        let size = match node {
            LayoutNode::Slot(i) if *i < plan.fields.len() => json_size(&kind, plan.fields.get(*i)),
            // An embedded array kept as JSON text: the embed's `size` (adv29 S1).
            LayoutNode::Slot(i) => l
                .embed_slot
                .iter()
                .position(|s| s == i)
                .and_then(|e| plan.embeds[e].column_size)
                .filter(|_| kind == Kind::Json),
            LayoutNode::Doc(_) => None,
        };
        columns.push(ColumnSpec {
            key: key.clone(),
            kind,
            array,
            reference,
            json_refs,
            constraints,
            size,
        });
    }
    // The reference indexes the mapping asks for (`index_references`, a field's `index`) that
    // are plain reference columns of this table (one inside JSON text has no column to index).
    let mut indexes: Vec<IndexSpec> = plan
        .reference_indexes
        .iter()
        .filter_map(|ix| {
            let path = ix.keys.first()?;
            columns
                .iter()
                .any(|c| &c.key == path && c.reference && !c.array)
                .then(|| reference_index(path))
        })
        .collect();
    for mut ix in mapping_indexes(plan, &columns) {
        let same = |i: &IndexSpec| i.columns == ix.columns && i.kind == ix.kind;
        if indexes.iter().any(|i| i.key == ix.key && same(i)) {
            // The reference's own index (or the very same index twice).
            continue;
        }
        // Two indexes whose names become one Appwrite key (`by code`, `by_code`): the second
        // would be taken for the first and never made — it gets a key of its own.
        let base = ix.key.clone();
        let mut n = 2;
        while indexes.iter().any(|i| i.key == ix.key) {
            let suffix = format!("_{n}");
            let head: String = base.chars().take(36 - suffix.len()).collect();
            ix.key = format!("{head}{suffix}");
            n += 1;
        }
        indexes.push(ix);
    }
    TableSpec {
        id: plan.collection.clone(),
        columns,
        indexes,
        access: TableAccess::of(plan),
    }
}

/// The `key` index of reference column `column`: `ref_<column>`, or, past Appwrite's 36
/// characters, the column's first 23 and 8 hex digits of its hash — two long columns sharing
/// their first characters got one index name, and the second no index (the eighteenth
/// tester's F8).
fn reference_index(column: &str) -> IndexSpec {
    let plain = format!("ref_{column}");
    let key = if plain.chars().count() <= 36 {
        plain
    } else {
        let hash = row_id(&bson::Bson::String(format!("ref\u{0}{column}")));
        let head: String = column.chars().take(23).collect();
        format!("ref_{head}_{}", &hash[1..9])
    };
    IndexSpec {
        key,
        columns: vec![column.to_string()],
        kind: "key",
        orders: Vec::new(),
    }
}

/// The paths, inside the JSON value of top-level key `key`, that hold references: fields of a
/// nested document (`key.x.y`), fields of an embed stored as JSON (`key` its array, or below),
/// and an embedded array of reference values.
fn json_reference_paths(plan: &Plan, key: &str) -> Vec<Vec<String>> {
    json_references(plan)
        .into_iter()
        .filter(|(k, _, _)| k == key)
        .map(|(_, path, _)| path)
        .collect()
}

/// Every reference stored inside a JSON text column of the plan's table: (the column, the path
/// inside its value, the entity referenced).
pub fn json_references(plan: &Plan) -> Vec<(String, Vec<String>, String)> {
    let mut out: Vec<(String, Vec<String>, String)> = plan
        .fields
        .iter()
        .filter(|f| f.path.len() > 1)
        .filter_map(|f| {
            let r = f.reference.as_ref()?;
            Some((f.path[0].clone(), f.path[1..].to_vec(), r.entity.clone()))
        })
        .collect();
    for e in plan.embeds.iter().filter(|e| !e.appwrite_table) {
        // An embedded array of values at the top level is an array column, not JSON text.
        if e.path.len() == 1 && e.element == EmbedElement::Value {
            continue;
        }
        for f in &e.fields {
            let Some(r) = &f.reference else { continue };
            let mut p = e.path[1..].to_vec();
            if e.element == EmbedElement::Document {
                p.extend(f.path.iter().cloned());
            }
            out.push((e.path[0].clone(), p, r.entity.clone()));
        }
    }
    out
}

/// Rewrites the references at `path` inside `v` (through documents and, element by element,
/// arrays) as the referenced rows' ids; an empty path is `v` itself.
fn reference_ids(v: &mut bson::Bson, path: &[String]) {
    match (v, path.split_first()) {
        (bson::Bson::Array(items), _) => {
            for i in items {
                reference_ids(i, path);
            }
        }
        (bson::Bson::Document(d), Some((first, rest))) => {
            if let Some(x) = d.get_mut(first) {
                reference_ids(x, rest);
            }
        }
        (bson::Bson::Null, None) => {}
        (v @ bson::Bson::Document(_), None) => *v = bson::Bson::String(row_id(v)),
        (v, None) => *v = bson::Bson::String(row_id(v)),
        _ => {}
    }
}

/// The column of a child row holding its parent's row id, and the one holding its position in
/// the array.
pub const PARENT: &str = "parentId";
pub const POSITION: &str = "position";

/// A child table: the elements of one embedded array, a row each.
#[derive(Debug, Clone)]
pub struct ChildTable {
    /// Index of the embed in the plan.
    pub embed: usize,
    /// The array's key in the document.
    pub key: String,
    pub table: TableSpec,
}

/// The id of the child table of `path` in `collection`: `<collection>_<path>` when that is a valid
/// id, else `c` + 35 hex digits of its SHA-256.
pub fn child_table_id(collection: &str, path: &str) -> String {
    let id = format!("{collection}_{path}");
    if crate::sink::appwrite::id_ok(&id) {
        return id;
    }
    let h = row_id(&bson::Bson::String(format!("{collection}\u{0}{path}")));
    format!("c{}", &h[1..])
}

/// The child tables of a plan (embeds stored as tables).
pub fn child_tables(plan: &Plan) -> Vec<ChildTable> {
    plan.embeds
        .iter()
        .enumerate()
        .filter(|(_, e)| e.appwrite_table)
        .map(|(i, e)| {
            let mut columns = vec![
                ColumnSpec {
                    key: PARENT.into(),
                    kind: Kind::Text(36),
                    array: false,
                    reference: false,
                    json_refs: Vec::new(),
                    constraints: Constraints::default(),
                    size: None,
                },
                ColumnSpec {
                    key: POSITION.into(),
                    kind: Kind::Integer,
                    array: false,
                    reference: false,
                    json_refs: Vec::new(),
                    constraints: Constraints::default(),
                    size: None,
                },
            ];
            for (key, node) in &e.layout.root {
                let (kind, array) = match node {
                    LayoutNode::Doc(_) => (Kind::Json, false),
                    LayoutNode::Slot(s) if *s < e.fields.len() => {
                        field_kind(&e.read, &e.fields[*s])
                    }
                    LayoutNode::Slot(_) => (Kind::Text(64), false),
                };
                let reference = matches!(node, LayoutNode::Slot(s) if e.fields.get(*s).is_some_and(|f| f.reference.is_some()));
                // A nested document of the element: its references, relative to it.
                let json_refs = e
                    .fields
                    .iter()
                    .filter(|f| f.reference.is_some() && f.path.len() > 1 && &f.path[0] == key)
                    .map(|f| f.path[1..].to_vec())
                    .collect();
                let constraints = match node {
                    LayoutNode::Slot(s) if *s < e.fields.len() => {
                        constraints(&e.fields[*s], &kind, array)
                    }
                    _ => Constraints::default(),
                };
                let size = match node {
                    LayoutNode::Slot(s) => json_size(&kind, e.fields.get(*s)),
                    LayoutNode::Doc(_) => None,
                };
                columns.push(ColumnSpec {
                    key: key.clone(),
                    kind,
                    array,
                    reference,
                    json_refs,
                    constraints,
                    size,
                });
            }
            // The parent's id, and the elements' reference columns the mapping indexes
            // (`<array>.<field>` among its reference indexes).
            let mut indexes = vec![reference_index(PARENT)];
            for c in columns.iter().filter(|c| c.reference && !c.array) {
                let path = format!("{}.{}", e.path_text, c.key);
                if plan.reference_indexes.iter().any(|ix| ix.keys == [path.clone()]) {
                    indexes.push(reference_index(&c.key));
                }
            }
            ChildTable {
                embed: i,
                key: e.path_text.clone(),
                table: TableSpec {
                    id: child_table_id(&plan.collection, &e.path_text),
                    columns,
                    indexes,
                    access: TableAccess::of(plan),
                },
            }
        })
        .collect()
}

/// The rows of a document's child tables: for each child table, (its rows, in position order).
pub fn child_rows(
    doc: &bson::Document,
    parent_id: &str,
    children: &[ChildTable],
) -> Vec<Vec<Value>> {
    children
        .iter()
        .map(|c| match doc.get(&c.key) {
            Some(bson::Bson::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(pos, item)| {
                    let mut d = match item {
                        bson::Bson::Document(d) => d.clone(),
                        other => bson::doc! { "value": other.clone() },
                    };
                    d.insert("_id", format!("{parent_id}\u{0}{pos}"));
                    d.insert(PARENT, parent_id);
                    d.insert(POSITION, pos as i64);
                    to_row(&d, &c.table)
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The route segment (`string`, `enum`, `float`, …) of a column as the server describes it:
/// the model says `double` for floats and marks the string kinds by `format`.
pub fn route_of(column: &Value) -> Option<&str> {
    match (column["type"].as_str()?, column["format"].as_str()) {
        ("double", _) => Some("float"),
        ("string", Some(f @ ("email" | "url" | "ip" | "enum"))) => Some(f),
        (k, _) => Some(k),
    }
}

/// An existing column that no longer agrees with what the mapping makes of it.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnChange {
    /// Updated in place (`PATCH …/columns/{kind}/{key}` with `body`); `what` says what changes.
    Update {
        kind: &'static str,
        body: Value,
        what: String,
    },
    /// A difference Appwrite cannot update in place (the column's type, or whether it is an
    /// array): the column is left as it is, said why.
    Kept(String),
}

/// Integer columns hold 64 bits: their widest bounds (what a column made without `min` / `max`
/// answers), sent to take a bound away.
const INT_BOUNDS: (i64, i64) = (i64::MIN, i64::MAX);

/// A bound of a column as the server lists it: `None` when it is absent or the type's extreme
/// (which bounds nothing).
fn listed_bound(column: &Value, name: &str, route: &str) -> Option<f64> {
    let v = column.get(name)?;
    match route {
        "integer" => {
            let b = v.as_i64()?;
            (b != INT_BOUNDS.0 && b != INT_BOUNDS.1).then_some(b as f64)
        }
        _ => {
            let b = v.as_f64()?;
            (b.is_finite() && b.abs() < f64::MAX).then_some(b)
        }
    }
}

fn bound_text(b: Option<f64>) -> String {
    b.map_or_else(|| "none".to_string(), |b| b.to_string())
}

/// What to do about `existing` (a column as the server lists it) so that it holds what `spec`
/// says: `None` when it agrees. Compared: `required`, the string's `size`, the enum's elements,
/// integer and float `min` / `max`, and `default` (cutover sets none: a default would fill in a
/// NULL the source holds).
pub fn column_change(existing: &Value, spec: &ColumnSpec) -> Option<ColumnChange> {
    let (kind, wanted) = spec.request();
    let have = route_of(existing).unwrap_or_default();
    let have_array = existing["array"].as_bool().unwrap_or(false);
    if have != kind || (kind != "point" && have_array != spec.array) {
        let shape = |k: &str, a: bool| format!("{k}{}", if a { " array" } else { "" });
        return Some(ColumnChange::Kept(format!(
            "its type is {} and the mapping now makes it {}: Appwrite changes no column's type in place (delete the column to have the next run make it again)",
            shape(have, have_array),
            shape(kind, spec.array)
        )));
    }
    let mut what = Vec::new();
    let mut body = json!({ "required": spec.constraints.required, "default": null });
    let have_required = existing["required"].as_bool().unwrap_or(false);
    if have_required != spec.constraints.required {
        what.push(
            if spec.constraints.required {
                "optional → required"
            } else {
                "required → optional"
            }
            .to_string(),
        );
    }
    if let Some(d) = existing.get("default").filter(|d| !d.is_null()) {
        what.push(format!("default {d} → none"));
    }
    match kind {
        "string" => {
            body["size"] = wanted["size"].clone();
            if existing["size"].as_u64() != wanted["size"].as_u64() {
                what.push(format!("size {} → {}", existing["size"], wanted["size"]));
            }
        }
        "enum" => {
            body["elements"] = wanted["elements"].clone();
            let set = |v: &Value| -> std::collections::BTreeSet<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            };
            if set(&existing["elements"]) != set(&wanted["elements"]) {
                what.push(format!(
                    "elements {} → {}",
                    existing["elements"], wanted["elements"]
                ));
            }
        }
        "integer" | "float" => {
            for (name, wide) in [
                (
                    "min",
                    if kind == "integer" {
                        json!(INT_BOUNDS.0)
                    } else {
                        json!(-f64::MAX)
                    },
                ),
                (
                    "max",
                    if kind == "integer" {
                        json!(INT_BOUNDS.1)
                    } else {
                        json!(f64::MAX)
                    },
                ),
            ] {
                let have = listed_bound(existing, name, kind);
                let want = wanted.get(name).and_then(Value::as_f64);
                match want {
                    Some(_) => body[name] = wanted[name].clone(),
                    // No bound now: the widest one takes the old away.
                    None if have.is_some() => body[name] = wide,
                    None => {}
                }
                if have != want {
                    what.push(format!(
                        "{name} {} → {}",
                        bound_text(have),
                        bound_text(want)
                    ));
                }
            }
        }
        _ => {}
    }
    if what.is_empty() {
        return None;
    }
    Some(ColumnChange::Update {
        kind,
        body,
        what: what.join(", "),
    })
}

/// What [`apply`] would change in the existing columns of `spec`'s table, read without writing
/// (a dry run says it): a sentence each, as `apply` words them but conditional. Nothing when the
/// database or the table does not exist yet (made whole, with the mapping's rules).
pub async fn planned(
    client: &AppwriteClient,
    db: &str,
    spec: &TableSpec,
) -> Result<Vec<String>, AppwriteError> {
    let existing = match client.columns(db, &spec.id).await {
        Ok(c) => c,
        Err(e) if e.is_missing() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut changes = Vec::new();
    for c in &spec.columns {
        let Some(have) = existing.iter().find(|e| e["key"].as_str() == Some(&c.key)) else {
            continue;
        };
        match column_change(have, c) {
            None => {}
            Some(ColumnChange::Update { what, .. }) => changes.push(format!(
                "Appwrite column {}.{} would be updated before the load to the mapping's rules: {what}",
                spec.id, c.key
            )),
            Some(ColumnChange::Kept(why)) => changes.push(format!(
                "Appwrite column {}.{} would be left as it is: {why}",
                spec.id, c.key
            )),
        }
    }
    Ok(changes)
}

/// Creates the database, the table, its columns and indexes unless they exist, waiting until each
/// is available (an error names the column or index that failed or timed out). An existing
/// column whose constraints differ from what the mapping now says is updated before the load
/// (a rule relaxed since the column was made must not leave the server refusing the rows it
/// lets through). Returns what it changed, or found it could not, a sentence each.
pub async fn apply(
    client: &AppwriteClient,
    db: &str,
    spec: &TableSpec,
    timeout: std::time::Duration,
) -> Result<Vec<String>, AppwriteError> {
    client.ensure_database(db, db).await?;
    let a = &spec.access;
    if a.permissions.is_none() && a.row_security.is_none() {
        client.ensure_table(db, &spec.id, &spec.id).await?;
    } else {
        client
            .ensure_table_access(db, &spec.id, a.permissions.as_deref(), a.row_security)
            .await?;
    }
    let existing = client.columns(db, &spec.id).await?;
    let mut changes = Vec::new();
    for c in &spec.columns {
        let Some(have) = existing.iter().find(|e| e["key"].as_str() == Some(&c.key)) else {
            let (kind, body) = c.request();
            client.ensure_column(db, &spec.id, kind, &body).await?;
            continue;
        };
        match column_change(have, c) {
            None => {}
            Some(ColumnChange::Update { kind, body, what }) => {
                // A column still being made cannot be updated yet.
                client.wait_column(db, &spec.id, &c.key, timeout).await?;
                client
                    .update_column(db, &spec.id, kind, &c.key, &body)
                    .await?;
                tracing::info!(table = %spec.id, column = %c.key, change = %what, "column updated to the mapping's rules");
                changes.push(format!(
                    "Appwrite column {}.{} updated before the load to the mapping's rules: {what}",
                    spec.id, c.key
                ));
            }
            Some(ColumnChange::Kept(why)) => {
                tracing::warn!(table = %spec.id, column = %c.key, "{why}");
                changes.push(format!(
                    "Appwrite column {}.{} left as it is: {why}",
                    spec.id, c.key
                ));
            }
        }
    }
    for c in &spec.columns {
        client.wait_column(db, &spec.id, &c.key, timeout).await?;
    }
    for i in &spec.indexes {
        let mut body = json!({ "key": i.key, "type": i.kind, "columns": i.columns });
        if !i.orders.is_empty() {
            body["orders"] = json!(i.orders);
        }
        // An index of this key made otherwise (`unique` added or taken away since, other
        // columns) or left `failed` is made again: Appwrite cannot change an index.
        if let Some(have) = client.index(db, &spec.id, &i.key).await? {
            let failed = have["status"] == "failed";
            if !failed && same_index(&have, i) {
                continue;
            }
            client.delete_index(db, &spec.id, &i.key, timeout).await?;
            let was = if failed {
                "it had failed to build".to_string()
            } else {
                format!(
                    "it was a {} index over {}",
                    have["type"].as_str().unwrap_or("?"),
                    have["columns"]
                )
            };
            tracing::info!(table = %spec.id, index = %i.key, "{was}: made again");
            changes.push(format!(
                "Appwrite index {}.{} made again before the load as the mapping says ({} over {}): {was}",
                spec.id,
                i.key,
                i.kind,
                i.columns.join(", ")
            ));
        }
        client.ensure_index(db, &spec.id, &body).await?;
    }
    for i in &spec.indexes {
        match client.wait_index(db, &spec.id, &i.key, timeout).await {
            Ok(()) => {}
            // A unique index over rows already in the table that repeat a key: taken away
            // again (a failed index would stop every later run), and the run stops before
            // writing, saying how to go on.
            Err(e) if i.kind == "unique" && e.kind() == "index_failed" => {
                let _ = client.delete_index(db, &spec.id, &i.key, timeout).await;
                return Err(AppwriteError::client(
                    super::ClientKind::NotAvailable {
                        what: "index",
                        state: "failed",
                    },
                    format!(
                        "the unique index {}.{} over {} cannot be made: rows already in the table repeat a key ({}); nothing was written. Remove the repeats from the table (or `unique` from the mapping's index) and run again",
                        spec.id,
                        i.key,
                        i.columns.join(", "),
                        e.message()
                    ),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(changes)
}

/// Whether the server's index `have` is `want`: its type and columns (and orders, when the
/// mapping gives them).
pub fn same_index(have: &Value, want: &IndexSpec) -> bool {
    let columns: Vec<&str> = have["columns"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    have["type"].as_str() == Some(want.kind)
        && columns == want.columns.iter().map(String::as_str).collect::<Vec<_>>()
        && (want.orders.is_empty()
            || have["orders"].as_array().is_none_or(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .eq(want.orders.iter().map(String::as_str))
            }))
}

/// A document as a row of `spec`: JSON columns get JSON text, text columns text (references as the
/// referenced row id), other values as `column_value` gives them.
pub fn to_row(doc: &bson::Document, spec: &TableSpec) -> Value {
    let mut row = serde_json::Map::new();
    if let Some(id) = doc.get("_id") {
        row.insert("$id".into(), json!(row_id(id)));
    }
    for c in &spec.columns {
        let Some(v) = doc.get(&c.key) else { continue };
        let value = match (&c.kind, v) {
            (_, bson::Bson::Null) => Value::Null,
            // The referenced row's id, encoded as that row's `$id` was.
            (_, bson::Bson::Array(items)) if c.reference => Value::Array(
                items
                    .iter()
                    .map(|i| match i {
                        bson::Bson::Null => Value::Null,
                        i => json!(row_id(i)),
                    })
                    .collect(),
            ),
            (_, v) if c.reference => json!(row_id(v)),
            // An array of JSON values (jsonb[]): an array column of JSON texts.
            (Kind::Json, bson::Bson::Array(items)) if c.array => Value::Array(
                items
                    .iter()
                    .map(|i| match i {
                        bson::Bson::Null => Value::Null,
                        i => json!(i.clone().into_relaxed_extjson().to_string()),
                    })
                    .collect(),
            ),
            (Kind::Json, v) if !c.json_refs.is_empty() => {
                let mut v = v.clone();
                for path in &c.json_refs {
                    reference_ids(&mut v, path);
                }
                json!(v.into_relaxed_extjson().to_string())
            }
            (Kind::Json, v) => json!(v.clone().into_relaxed_extjson().to_string()),
            // A GeoJSON point as the point column's `[lon, lat]`.
            (Kind::Point, bson::Bson::Document(d)) => match d.get_array("coordinates") {
                Ok(c) => Value::Array(c.iter().map(column_value).collect()),
                Err(_) => Value::Null,
            },
            (Kind::Text(_), bson::Bson::Array(items)) => {
                Value::Array(items.iter().map(text_value).collect())
            }
            (Kind::Text(_), v) => text_value(v),
            (_, v) => column_value(v),
        };
        row.insert(c.key.clone(), value);
    }
    Value::Object(row)
}

fn text_value(v: &bson::Bson) -> Value {
    match column_value(v) {
        Value::String(s) => Value::String(s),
        Value::Null => Value::Null,
        other => match v {
            bson::Bson::Int32(_) | bson::Bson::Int64(_) => Value::String(row_id(v)),
            _ => Value::String(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_reference_columns_get_distinct_valid_index_names() {
        let a = reference_index("facilityIdentifierOfTheRecordingSiteA").key;
        let b = reference_index("facilityIdentifierOfTheRecordingSiteB").key;
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert!(crate::sink::appwrite::id_ok(k), "{k}");
        }
        assert_eq!(reference_index("facilityId").key, "ref_facilityId");
    }

    use super::*;

    fn spec(kind: Kind, constraints: Constraints) -> ColumnSpec {
        ColumnSpec {
            key: "c".into(),
            kind,
            array: false,
            reference: false,
            json_refs: Vec::new(),
            constraints,
            size: None,
        }
    }

    /// A column made without bounds lists the type's extremes on a real server (absent on the
    /// stand-in): both agree with a mapping without bounds; a bound taken away is sent as the
    /// widest one.
    #[test]
    fn bounds_at_the_types_extremes_bound_nothing() {
        let none = spec(Kind::Integer, Constraints::default());
        let listed = json!({ "key": "c", "type": "integer", "required": false, "array": false,
                              "min": i64::MIN, "max": i64::MAX, "default": null });
        assert_eq!(column_change(&listed, &none), None);
        let bare = json!({ "key": "c", "type": "integer", "required": false });
        assert_eq!(column_change(&bare, &none), None);
        let float = json!({ "key": "c", "type": "double", "required": false,
                             "min": -f64::MAX, "max": f64::MAX });
        assert_eq!(
            column_change(&float, &spec(Kind::Float, Constraints::default())),
            None
        );
        let bounded = json!({ "key": "c", "type": "integer", "required": true, "min": 1 });
        let Some(ColumnChange::Update { kind, body, what }) = column_change(&bounded, &none) else {
            panic!("an update")
        };
        assert_eq!(kind, "integer");
        assert_eq!(what, "required → optional, min 1 → none");
        assert_eq!(body["min"], json!(i64::MIN));
        assert_eq!(body["required"], false);
        assert!(
            body["default"].is_null() && body.get("max").is_none(),
            "{body}"
        );
    }

    /// A default cutover never sets is taken away (it would fill in a NULL the source holds);
    /// a type Appwrite cannot change in place is said, not updated.
    #[test]
    fn defaults_go_and_types_are_said() {
        let text = spec(Kind::Text(10), Constraints::default());
        let listed = json!({ "key": "c", "type": "string", "size": 10, "required": false,
                              "default": "x" });
        let Some(ColumnChange::Update { what, body, .. }) = column_change(&listed, &text) else {
            panic!("an update")
        };
        assert_eq!(what, "default \"x\" → none");
        assert_eq!(body["size"], 10);
        let int = json!({ "key": "c", "type": "integer", "required": false });
        assert!(matches!(
            column_change(&int, &text),
            Some(ColumnChange::Kept(why)) if why.starts_with("its type is integer and the mapping now makes it string")
        ));
        let array = json!({ "key": "c", "type": "string", "size": 10, "array": true });
        assert!(matches!(
            column_change(&array, &text),
            Some(ColumnChange::Kept(_))
        ));
    }
}
