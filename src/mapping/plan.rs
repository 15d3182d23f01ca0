//! A mapping compiled against the live source's column types: column indexes resolved, transforms
//! chosen, rules compiled — done once, before the first row.

use bson::Bson;
use uuid::Uuid;

use super::spec::{
    CastType, EmbedElement, FieldSpec, IdStrategy, Lossy, NullPolicy, Severity, SubMillis,
    TransformSpec, UuidFormat,
};
use super::{Mapping, MappingError, MappingSet};
use crate::source::Value;
use crate::source::postgres::{ReadSpec, SourceColumn, relation_sql};
use crate::transform::{Output, Step, uuid_to_bson};
use crate::validate::{RowRule, Rules};

/// cutover's default namespace for UUIDv5 ids.
pub const DEFAULT_NAMESPACE: Uuid = Uuid::from_u128(0x6c2f_1a0e_5b7d_4c1e_9f3a_8d2b_7e6c_5a41);

/// How an entity's key becomes its `_id` (and how references to it are encoded).
#[derive(Debug, Clone)]
pub struct IdRule {
    pub entity: String,
    pub strategy: IdStrategy,
    pub uuid: UuidFormat,
    pub namespace: Uuid,
    pub key_names: Vec<String>,
}

impl IdRule {
    pub fn of(m: &Mapping) -> IdRule {
        IdRule {
            entity: m.spec.name.clone(),
            strategy: m.spec.id.strategy,
            uuid: m.spec.id.uuid,
            namespace: m
                .spec
                .id
                .namespace
                .as_deref()
                .and_then(|n| Uuid::parse_str(n).ok())
                .unwrap_or(DEFAULT_NAMESPACE),
            key_names: m.spec.source.key.clone(),
        }
    }

    /// The `_id` of the row whose key values are `key`.
    pub fn id_for(&self, key: &[&Value]) -> Result<Bson, String> {
        if key.iter().any(|v| v.is_null()) {
            return Err("the key is NULL".into());
        }
        match self.strategy {
            IdStrategy::Uuid5 => Ok(uuid_to_bson(
                &Uuid::new_v5(&self.namespace, uuid5_name(&self.entity, key).as_bytes()),
                self.uuid,
            )),
            IdStrategy::Key if key.len() == 1 => self.scalar(key[0]),
            IdStrategy::Key => {
                let mut d = bson::Document::new();
                for (name, v) in self.key_names.iter().zip(key) {
                    d.insert(name.clone(), self.scalar(v)?);
                }
                Ok(Bson::Document(d))
            }
        }
    }

    fn scalar(&self, v: &Value) -> Result<Bson, String> {
        Ok(match v {
            Value::Uuid(u) => uuid_to_bson(u, self.uuid),
            Value::Int32(i) => Bson::Int32(*i),
            Value::Int64(i) => Bson::Int64(*i),
            Value::Text(s) => Bson::String(s.clone()),
            Value::Numeric(s) => Bson::String(numeric_key(s)),
            Value::Date(_) | Value::TimestampTz(_) | Value::Timestamp(_) | Value::Bool(_) => {
                Bson::String(v.to_string())
            }
            other => return Err(format!("a {} key cannot be an _id", other.type_name())),
        })
    }
}

/// An `_id` as one text (canonical extended JSON: the type is part of it), to hold and look up
/// sets of ids.
pub fn id_text(id: &Bson) -> String {
    // Integers of any width are one `_id` to MongoDB (and one row id to Appwrite): an int4
    // column referencing a bigint key finds it.
    match id {
        Bson::Int32(i) => Bson::Int64(i64::from(*i)),
        other => other.clone(),
    }
    .into_canonical_extjson()
    .to_string()
}

/// A numeric key as one text for every scale PostgreSQL holds equal (`1.0`, `1.00` and `1` are
/// one key to it, so a `numeric(10,2)` foreign key finds the `numeric` key it references):
/// trailing fractional zeros dropped, `-0` as `0`.
fn numeric_key(text: &str) -> String {
    let t = text.trim();
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.')
    } else {
        t
    };
    match t {
        "-0" | "" => "0".to_string(),
        other => other.to_string(),
    }
}

/// The name a `uuid5` id hashes: the entity, then each key value after a unit separator. The
/// values of a composite key are length-prefixed (`<bytes>:<text>`) so that no two keys give one
/// name (joined, ("a|b", "c") and ("a", "b|c") would); a single value is unambiguous as it is,
/// and keeps the id it always had.
fn uuid5_name(entity: &str, key: &[&Value]) -> String {
    let mut name = entity.to_string();
    for v in key {
        let text = match v {
            Value::Numeric(s) => numeric_key(s),
            other => other.to_string(),
        };
        name.push('\u{1f}');
        if key.len() > 1 {
            name.push_str(&format!("{}:", text.len()));
        }
        name.push_str(&text);
    }
    name
}

/// Where a field's value comes from.
#[derive(Debug, Clone)]
pub enum Input {
    Column(usize),
    Columns(Vec<usize>),
    Const(Value),
}

/// How several columns are combined.
#[derive(Debug, Clone)]
pub enum Combine {
    Concat(String),
    Array,
}

#[derive(Debug, Clone)]
pub struct FieldPlan {
    pub path: Vec<String>,
    pub path_text: String,
    pub input: Input,
    pub combine: Option<Combine>,
    pub steps: Vec<Step>,
    pub output: Output,
    pub default: Option<Value>,
    pub nulls: NullPolicy,
    pub reference: Option<IdRule>,
    /// Entity whose source keys must contain this value.
    pub exists_in: Option<String>,
    /// Where the read carries PostgreSQL's own answer to that `exists` (a computed boolean
    /// column), when it can give one; else the check looks the value up in the keys loaded.
    pub exists_at: Option<usize>,
    pub rules: Option<Rules>,
    pub exact_path: Option<Vec<String>>,
    /// Appwrite: the characters of its text or JSON column (`size`).
    pub column_size: Option<u64>,
    /// `infinity = "null"`: the reader hands a ±infinity of its column(s) over as the text
    /// `infinity` / `-infinity`, which the field writes as NULL with a warning (`infinity_null`):
    /// which infinity it was is lost, and the count says how often.
    pub infinity_null: bool,
}

#[derive(Debug, Clone)]
pub struct EmbedPlan {
    pub path: Vec<String>,
    pub path_text: String,
    pub read: ReadSpec,
    /// The child source as the mapping names it: its table, or `the query of embed <path>`.
    pub source_name: String,
    /// The child read starts with this many foreign-key columns (the parent key's width).
    pub fk_len: usize,
    /// The foreign key and the `order_by` columns: what names one child row (the read's
    /// leading columns).
    pub child_key_len: usize,
    pub element: EmbedElement,
    /// Index of the top-level field after which the array goes (`None`: at the end).
    pub after: Option<usize>,
    pub fields: Vec<FieldPlan>,
    /// Shape of each child document.
    pub layout: Layout,
    /// Appwrite: the elements go to a child table instead of a JSON column.
    pub appwrite_table: bool,
    /// Appwrite: the characters of that JSON column (`size`).
    pub column_size: Option<u64>,
}

/// Everything needed to turn rows of one entity into documents.
#[derive(Debug, Clone)]
pub struct Plan {
    pub entity: String,
    pub collection: String,
    pub mapping_path: std::path::PathBuf,
    pub checksum: String,
    pub relation: String,
    /// The source as the mapping names it: its table, or `the query of <entity>`.
    pub source_name: String,
    pub read: ReadSpec,
    /// The change-tracking column (delta runs).
    pub updated_at: Option<String>,
    /// Its type: a date, a timestamp or a timestamptz.
    pub updated_at_kind: Option<crate::source::ColKind>,
    /// The source's rows carry the `xmin` of the transaction that wrote them (a table, not a
    /// view or a query): a delta can also read the rows of transactions from an id on (set
    /// where plans are compiled against the source).
    pub row_versions: bool,
    pub key: Vec<usize>,
    pub id: IdRule,
    pub fields: Vec<FieldPlan>,
    pub embeds: Vec<EmbedPlan>,
    pub row_rules: Vec<RowRule>,
    /// Where each value goes in the document.
    pub layout: Layout,
    /// Appwrite: write the documents as users (Auth), not rows.
    pub appwrite_users: Option<crate::mapping::spec::AppwriteUsersSpec>,
    /// Appwrite: the table's permissions and `rowSecurity`, when the mapping sets them.
    pub appwrite_permissions: Option<Vec<String>>,
    pub appwrite_row_security: Option<bool>,
    /// The entity writes files (`[file]`): where each row's file is, and what it records.
    pub file: Option<FilePlan>,
    /// MongoDB indexes built after the load.
    pub indexes: Vec<crate::mapping::spec::IndexSpec>,
    /// The reference indexes (one path each, non-unique) built after the load with `indexes`
    /// (see [`crate::mapping::reference_index_paths`]); Appwrite makes `key` indexes of those
    /// that are columns.
    pub reference_indexes: Vec<crate::mapping::spec::IndexSpec>,
    /// MongoDB: the validator set after the load (level, `$jsonSchema`), unless off.
    pub validator: Option<(crate::mapping::spec::ValidatorLevel, bson::Document)>,
}

/// A `[file]` table compiled: the columns (indexes into `read.columns`) holding the file's
/// path and what the row records of it.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub path: usize,
    pub name: Option<usize>,
    pub size: Option<usize>,
    pub checksum: Option<usize>,
    pub algorithm: crate::mapping::spec::ChecksumAlgorithm,
    pub mime: Option<usize>,
    pub bucket: String,
    pub chunk_size: u32,
    /// MongoDB: the collection of each file's document (`[file] document_collection`).
    pub documents: Option<String>,
    /// Appwrite: each file's permission templates (`None`: the file gets none of its own).
    pub permissions: Option<Vec<crate::mapping::permission::Template>>,
    /// Of those columns, the blank-padded ones (`char(n)`): their values are taken as
    /// PostgreSQL's text of them, without the padding (adv45 F4: a `char(40)` path named no file).
    pub padded: Vec<usize>,
}

impl Plan {
    /// Whether every key column is also written as a top-level field of the document: its
    /// value is then kept whatever becomes of the id (Appwrite hashes keys its row ids cannot
    /// hold).
    pub fn key_in_fields(&self) -> bool {
        self.key.iter().all(|k| {
            self.fields
                .iter()
                .any(|f| f.path.len() == 1 && matches!(f.input, Input::Column(c) if c == *k))
        })
    }
}

/// A node of the document layout: a value slot or a nested document.
#[derive(Debug, Clone, PartialEq)]
pub enum LayoutNode {
    Slot(usize),
    Doc(Vec<(String, LayoutNode)>),
}

/// The shape of the documents of a plan, decided once: `root` lists keys in document order; slots
/// `0..fields` are the fields' values, then one slot per `keep_string` exact copy, then one per
/// embed. Nested documents appear where their first value appears.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    pub root: Vec<(String, LayoutNode)>,
    pub slots: usize,
    /// Slot of each field's exact copy (`keep_string`).
    pub exact_slot: Vec<Option<usize>>,
    /// Slot of each embed's array.
    pub embed_slot: Vec<usize>,
    /// The dotted path of each slot.
    pub slot_paths: Vec<String>,
}

impl Layout {
    fn place(root: &mut Vec<(String, LayoutNode)>, path: &[String], slot: usize) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut cur = root;
        for p in parents {
            let pos = match cur
                .iter()
                .position(|(k, n)| k == p && matches!(n, LayoutNode::Doc(_)))
            {
                Some(pos) => pos,
                None => {
                    cur.push((p.clone(), LayoutNode::Doc(Vec::new())));
                    cur.len() - 1
                }
            };
            cur = match &mut cur[pos].1 {
                LayoutNode::Doc(children) => children,
                LayoutNode::Slot(_) => unreachable!("matched a Doc above"),
            };
        }
        cur.push((last.clone(), LayoutNode::Slot(slot)));
    }

    /// Builds the layout of fields (with their exact paths) and embeds (placed after the field they
    /// name, else at the end), in that insertion order.
    pub fn build(fields: &[FieldPlan], embeds: &[EmbedPlan]) -> Layout {
        let mut l = Layout {
            slots: fields.len(),
            exact_slot: vec![None; fields.len()],
            embed_slot: vec![0; embeds.len()],
            slot_paths: fields.iter().map(|f| f.path_text.clone()).collect(),
            ..Default::default()
        };
        let place_embeds = |l: &mut Layout, after: Option<usize>| {
            for (j, e) in embeds.iter().enumerate() {
                if e.after == after {
                    l.embed_slot[j] = l.slots;
                    l.slot_paths.push(e.path_text.clone());
                    Layout::place(&mut l.root, &e.path, l.slots);
                    l.slots += 1;
                }
            }
        };
        for (i, f) in fields.iter().enumerate() {
            Layout::place(&mut l.root, &f.path, i);
            if let Some(p) = &f.exact_path {
                l.exact_slot[i] = Some(l.slots);
                l.slot_paths.push(p.join("."));
                Layout::place(&mut l.root, p, l.slots);
                l.slots += 1;
            }
            place_embeds(&mut l, Some(i));
        }
        place_embeds(&mut l, None);
        l
    }

    /// Slots at `path` or below it.
    pub fn slots_under(&self, path: &str) -> Vec<usize> {
        let prefix = format!("{path}.");
        self.slot_paths
            .iter()
            .enumerate()
            .filter(|(_, p)| *p == path || p.starts_with(&prefix))
            .map(|(i, _)| i)
            .collect()
    }
}

/// A (relation, columns) pair the compiler needs described.
pub fn relations_of(m: &Mapping) -> Vec<String> {
    let mut out = vec![relation_sql(
        m.spec.source.table.as_deref(),
        m.spec.source.query.as_deref(),
    )];
    for e in &m.spec.embeds {
        out.push(relation_sql(e.table.as_deref(), e.query.as_deref()));
    }
    out
}

fn toml_to_value(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => i32::try_from(*i)
            .map(Value::Int32)
            .unwrap_or(Value::Int64(*i)),
        toml::Value::Float(f) => Value::Double(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Text(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_value).collect()),
        toml::Value::Table(t) => Value::Json(toml_table_json(t)),
    }
}

fn toml_table_json(t: &toml::Table) -> String {
    serde_json::to_string(t).unwrap_or_else(|_| "{}".into())
}

/// A TOML constant as BSON (for `one_of`).
pub fn toml_to_bson(v: &toml::Value) -> Bson {
    match v {
        toml::Value::String(s) => Bson::String(s.clone()),
        toml::Value::Integer(i) => i32::try_from(*i)
            .map(Bson::Int32)
            .unwrap_or(Bson::Int64(*i)),
        toml::Value::Float(f) => Bson::Double(*f),
        toml::Value::Boolean(b) => Bson::Boolean(*b),
        toml::Value::Datetime(d) => Bson::String(d.to_string()),
        toml::Value::Array(a) => Bson::Array(a.iter().map(toml_to_bson).collect()),
        toml::Value::Table(t) => {
            let mut d = bson::Document::new();
            for (k, v) in t {
                d.insert(k.clone(), toml_to_bson(v));
            }
            Bson::Document(d)
        }
    }
}

fn split_path(p: &str) -> Vec<String> {
    p.split('.').map(str::to_string).collect()
}

fn columns_used(fields: &[FieldSpec]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in fields {
        for c in f.column.iter().chain(f.columns.iter().flatten()) {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    out
}

/// The `infinity` choices of fields reading a column as it is go to the reader, which decodes
/// the column.
fn infinity_policies(
    m: &Mapping,
    read: &mut ReadSpec,
    fields: &[FieldSpec],
    what: &str,
) -> Result<(), MappingError> {
    // A column decodes one way: every field reading it must say the same of ±infinity.
    use crate::source::postgres::Infinity;
    let mut seen: std::collections::BTreeMap<&str, (&str, Infinity)> = Default::default();
    let read_by = fields.iter().flat_map(|f| {
        f.column
            .iter()
            .chain(f.columns.iter().flatten())
            .map(move |c| (f, c))
    });
    for (f, column) in read_by {
        let policy = f.infinity.unwrap_or(Infinity::Reject);
        if let Some((other, was)) = seen.insert(column, (&f.path, policy))
            && was != policy
        {
            return Err(MappingError::Invalid {
                path: m.path.clone(),
                key: format!("{what}field ({}).infinity", f.path),
                message: format!(
                    "fields `{other}` and `{}` read column `{column}` with different `infinity` ({was:?} and {policy:?}, reject when not given): a column decodes one way; give them the same",
                    f.path
                ),
            });
        }
        if let Some(i) = read.index_of(column) {
            use crate::source::ColKind::{Date, Timestamp, TimestampTz};
            let c = &read.columns[i];
            if f.infinity.is_some() && !matches!(c.kind, Date | Timestamp | TimestampTz) {
                return Err(MappingError::Invalid {
                    path: m.path.clone(),
                    key: format!("{what}field ({}).infinity", f.path),
                    message: format!(
                        "column `{column}` is {}: `infinity` says what a date or timestamp column's ±infinity becomes (an array's infinite elements are rejected)",
                        c.pg_type
                    ),
                });
            }
            read.columns[i].infinity = policy;
        }
    }
    Ok(())
}

/// `above`: the levels of the document above the fields' paths (0 at the top; an embed's path,
/// its array and, for documents, its element's) — with the path, what MongoDB's nesting limit
/// leaves a JSON value of the field; `value_element`: the field is an embed's element itself.
fn compile_fields(
    m: &Mapping,
    set: &MappingSet,
    fields: &[FieldSpec],
    read: &ReadSpec,
    what: &str,
    (above, value_element): (usize, bool),
) -> Result<Vec<FieldPlan>, MappingError> {
    let invalid = |key: String, message: String| MappingError::Invalid {
        path: m.path.clone(),
        key,
        message,
    };
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let key = format!("{what}field ({})", f.path);
        let col = |name: &str| {
            read.index_of(name)
                .ok_or_else(|| invalid(key.clone(), format!("no column `{name}` in the source")))
        };
        let input = match (&f.column, &f.columns, &f.value) {
            (Some(c), _, _) => Input::Column(col(c)?),
            (_, Some(cs), _) => {
                Input::Columns(cs.iter().map(|c| col(c)).collect::<Result<_, _>>()?)
            }
            (_, _, Some(v)) => Input::Const(toml_to_value(v)),
            _ => unreachable!("checked when parsed"),
        };
        // A timestamp without time zone is ambiguous: say so before the run, not on every row.
        if let Input::Column(i) = &input
            && read.columns[*i].kind == crate::source::ColKind::Timestamp
            && f.timezone.is_none()
            && f.cast != Some(CastType::String)
        {
            return Err(invalid(
                key.clone(),
                format!(
                    "column `{}` is a timestamp without time zone: set `timezone` (UTC or an offset such as +01:00) or `type = \"string\"`",
                    read.columns[*i].name
                ),
            ));
        }
        // Bytes have no text of their own: the mapping says which encoding.
        if let Input::Column(i) = &input
            && matches!(
                read.columns[*i].kind,
                crate::source::ColKind::Bytes
                    | crate::source::ColKind::Array(crate::source::postgres::Elem::Bytes)
            )
            && f.cast == Some(CastType::String)
        {
            return Err(invalid(
                key.clone(),
                format!(
                    "column `{}` is bytea: `type = \"string\"` has no exact text for bytes; use `type = \"base64\"` or `type = \"hex\"` (or no type: BSON binary)",
                    read.columns[*i].name
                ),
            ));
        }
        let mut steps = Vec::new();
        let mut combine = None;
        for t in &f.transform {
            match t {
                TransformSpec::Trim => steps.push(Step::Trim),
                TransformSpec::Lower => steps.push(Step::Lower),
                TransformSpec::Upper => steps.push(Step::Upper),
                TransformSpec::Split(sep) if sep.is_empty() => {
                    return Err(invalid(
                        key.clone(),
                        "`split` needs a separator: an empty one would cut the text into single characters (dropping spaces and breaking accented letters apart)".to_string(),
                    ));
                }
                TransformSpec::Split(sep) => steps.push(Step::Split(sep.clone())),
                TransformSpec::Json => steps.push(Step::Json),
                TransformSpec::DropNulls => steps.push(Step::DropNulls),
                TransformSpec::Map(pairs) => {
                    // Keys match PostgreSQL's text of the value: a boolean's is `t` or `f`, so
                    // `true = …` (cutover's text before) would never match, silently.
                    if let Input::Column(i) = &input
                        && matches!(
                            read.columns[*i].kind,
                            crate::source::ColKind::Bool
                                | crate::source::ColKind::Array(
                                    crate::source::postgres::Elem::Bool
                                )
                        )
                        && let Some(k) = pairs
                            .keys()
                            .find(|k| !matches!(k.as_str(), "t" | "f" | "*"))
                    {
                        return Err(invalid(
                            key.clone(),
                            format!(
                                "map: column `{}` is boolean, whose PostgreSQL text is `t` or `f`: the key `{k}` never matches (write t = … and f = …)",
                                read.columns[*i].name
                            ),
                        ));
                    }
                    let fallback = pairs.get("*").map(toml_to_value);
                    // A char(n)'s values straight from the column are blank-padded (adv41 F2:
                    // the key `a` never met `a    `, every row took the `*` value).
                    let blank_padded = steps.is_empty()
                        && matches!(&input, Input::Column(i) if {
                            let t = read.columns[*i].pg_type.trim_end_matches("[]");
                            matches!(t, "CHAR" | "BPCHAR")
                        });
                    steps.push(Step::Map {
                        pairs: pairs
                            .iter()
                            .filter(|(k, _)| k.as_str() != "*")
                            .map(|(k, v)| (k.clone(), toml_to_value(v)))
                            .collect(),
                        fallback,
                        blank_padded,
                    })
                }
                TransformSpec::Phone(p) => steps.push(Step::Phone {
                    region: crate::transform::phone::default_region(&p.default_country)
                        .map_err(|e| invalid(key.clone(), format!("phone: {e}")))?,
                }),
                TransformSpec::Concat(c) => {
                    // Joined as text: bytes have none of their own, and an array's would be
                    // cutover's, not PostgreSQL's (`{"x,y"}` and `{x,y}` would join alike).
                    if let Input::Columns(idx) = &input
                        && let Some(c) = idx.iter().map(|&i| &read.columns[i]).find(|c| {
                            matches!(
                                c.kind,
                                crate::source::ColKind::Bytes | crate::source::ColKind::Array(_)
                            )
                        })
                    {
                        return Err(invalid(
                            key.clone(),
                            format!(
                                "column `{}` is {}: `concat` joins text and has no exact text for it; map it to its own field{}",
                                c.name,
                                if c.kind == crate::source::ColKind::Bytes {
                                    "bytea"
                                } else {
                                    "an array"
                                },
                                if c.kind == crate::source::ColKind::Bytes {
                                    " (`type = \"base64\"` or `\"hex\"`)"
                                } else {
                                    ""
                                }
                            ),
                        ));
                    }
                    combine = Some(Combine::Concat(c.sep.clone()))
                }
                TransformSpec::Array => combine = Some(Combine::Array),
            }
        }
        if let Some(n) = f.size
            && !(1..=crate::mapping::spec::MAX_COLUMN_SIZE).contains(&n)
        {
            return Err(invalid(
                format!("{key}.size"),
                format!(
                    "{n} characters: an Appwrite column holds 1 to {} characters",
                    crate::mapping::spec::MAX_COLUMN_SIZE
                ),
            ));
        }
        // `size` sizes a text or JSON column: on a number, a date or a boolean it would do
        // nothing, silently (adv29 S3).
        if f.size.is_some() {
            use crate::source::ColKind as K;
            let text_cast = f
                .cast
                .map(|c| matches!(c, CastType::String | CastType::Base64 | CastType::Hex));
            let texty_steps = steps.iter().any(|s| {
                matches!(
                    s,
                    Step::Split(_) | Step::Json | Step::Map { .. } | Step::Phone { .. }
                )
            });
            let text_input = match &input {
                Input::Column(i) => {
                    let kind = match read.columns[*i].kind {
                        K::Array(e) => e.scalar(),
                        k => k,
                    };
                    matches!(
                        kind,
                        K::Text | K::Json | K::OtherAsText | K::Numeric | K::Uuid
                    )
                }
                Input::Const(v) => matches!(v, Value::Text(_) | Value::Json(_)),
                Input::Columns(_) => matches!(combine, Some(Combine::Concat(_))),
            };
            if !text_cast.unwrap_or(text_input || texty_steps) {
                return Err(invalid(
                    format!("{key}.size"),
                    "`size` sets the characters of an Appwrite text or JSON column, and this field is written as another type: remove it (or write the field as text, `type = \"string\"`)".to_string(),
                ));
            }
        }
        // An array field (an array column, or text after `split`) holds arrays: a scalar default
        // would make one row's value a scalar (an Appwrite array column refuses it).
        let array_field = steps.iter().any(|s| matches!(s, Step::Split(_)))
            || matches!(&input, Input::Column(i)
                if matches!(read.columns[*i].kind, crate::source::ColKind::Array(_)));
        if array_field
            && combine.is_none()
            && let Some(d) = &f.default
            && !matches!(d, toml::Value::Array(_))
        {
            return Err(invalid(
                format!("{key}.default"),
                format!(
                    "the field is an array ({}): its default replaces a NULL array, so give an array (`default = []`, `default = [{d}]`)",
                    match &input {
                        Input::Column(i) if !steps.iter().any(|s| matches!(s, Step::Split(_))) =>
                            format!(
                                "column `{}` is {}",
                                read.columns[*i].name, read.columns[*i].pg_type
                            ),
                        _ => "after `split`".to_string(),
                    }
                ),
            ));
        }
        // `keep_string` keeps one exact text per field: an array's elements would share it (the
        // last one's), the others' microseconds lost without a trace.
        if f.sub_millis == Some(SubMillis::KeepString)
            && let Input::Column(i) = &input
            && matches!(read.columns[*i].kind, crate::source::ColKind::Array(_))
        {
            return Err(invalid(
                format!("{key}.sub_millis"),
                format!(
                    "column `{}` is {}: `keep_string` keeps one exact text per field, not one per element; use `reject` (a row with sub-millisecond digits is rejected) or `truncate` (warned), or read the column as text (a `query` source selecting `col::text[]`)",
                    read.columns[*i].name, read.columns[*i].pg_type
                ),
            ));
        }
        let reference = match &f.reference {
            Some(r) => Some(IdRule::of(set.get(r)?)),
            None => None,
        };
        // A rule that cannot apply to what the field writes would never fire, silently: refused
        // where what it writes is known now; judged on each row's value where it is not (JSON,
        // a `map` to values of several kinds, a uuid, a point).
        let written = written_shape(&input, combine.as_ref(), &steps, f.cast, read);
        if let (Some(r), Some((families, array, what))) = (&f.validate, &written)
            && let Some(rule) = families
                .iter()
                .map(|&family| inapplicable_rule(r, family, *array))
                .reduce(|a, b| if a.is_some() && b.is_some() { a } else { None })
                .flatten()
        {
            let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
            return Err(invalid(
                format!("{key}.validate"),
                format!(
                    "`{rule}` cannot apply to this field: {what} and the field is written as {}{} — {}; remove the rule, or write the field as the type it is for (`type = …`)",
                    if *array { "an array of " } else { "" },
                    names.join(" and "),
                    family_rules_text(rule),
                ),
            ));
        }
        // The default is written for a NULL: a rule must be able to judge it too (the
        // eighteenth tester's F10: `default = "none"` under `min` was written unjudged).
        if let (Some(r), Some(d)) = (&f.validate, f.default.as_ref().map(toml_to_value))
            && let Some((family, array)) = value_family(&d)
            && let Some(rule) = inapplicable_rule(r, family, array)
        {
            return Err(invalid(
                format!("{key}.validate"),
                format!(
                    "`{rule}` cannot apply to the field's default `{d}` ({}{}) — {}; every NULL would be written as it, unjudged: give a default the rule can judge, or remove the rule",
                    if array { "an array of " } else { "" },
                    family.name(),
                    family_rules_text(rule),
                ),
            ));
        }
        let rules = f.validate.as_ref().map(|r| Rules {
            required: r.required,
            not_null: r.not_null,
            email: r.email,
            url: r.url,
            min_length: r.min_length,
            max_length: r.max_length,
            min: r.min,
            max: r.max,
            regex: r.regex.as_ref().and_then(|re| regex::Regex::new(re).ok()),
            one_of: r
                .one_of
                .as_ref()
                .map(|v| v.iter().map(toml_to_bson).collect()),
            not_in_future: r.not_in_future,
            severity: r.severity,
            severities: r.severities.clone(),
            judge_kinds: written.is_none(),
        });
        let exists_in = match &f.validate {
            Some(r) if r.exists => f.reference.clone(),
            _ => None,
        };
        out.push(FieldPlan {
            path: split_path(&f.path),
            path_text: f.path.clone(),
            input,
            combine,
            steps,
            output: Output {
                cast: f.cast,
                uuid: f.uuid.unwrap_or(m.spec.options.uuid),
                sub_millis: f.sub_millis.unwrap_or(SubMillis::Reject),
                timezone: f
                    .timezone
                    .as_deref()
                    .and_then(crate::transform::parse_offset),
                lossy: f.lossy.unwrap_or(Lossy::Reject),
                duplicate_keys: f.validate.as_ref().map_or(Severity::Error, |r| r.severity),
                json_levels: crate::transform::json::DOCUMENT_LEVELS
                    .saturating_sub(
                        above
                            + if value_element {
                                0
                            } else {
                                split_path(&f.path).len()
                            },
                    )
                    .min(crate::transform::json::MAX_DEPTH),
            },
            default: f.default.as_ref().map(toml_to_value),
            nulls: f.nulls.unwrap_or(m.spec.options.nulls),
            reference,
            exists_in,
            exists_at: None,
            rules,
            exact_path: f.exact_path.as_deref().map(split_path),
            column_size: f.size,
            infinity_null: f.infinity == Some(crate::source::postgres::Infinity::Null),
        });
    }
    Ok(out)
}

/// Why a key or foreign-key column with a non-deterministic collation is refused.
fn loose_collation(column: &str, collation: &str) -> String {
    format!(
        "column `{column}` has the non-deterministic collation `{collation}`: values it holds equal \
         (`ABC` and `abc`) differ byte for byte, so rows cannot be keyed or children matched to \
         their parent exactly; read it with a deterministic collation (a `query` source selecting \
         `{column} COLLATE \"C\"`, or lower({column}) if that is what equal means)"
    )
}

/// Compiles mapping `m` given the described columns of its source (`columns[0]`) and of each
/// embed's source (`columns[1..]`, in embed order).
pub fn compile(
    set: &MappingSet,
    m: &Mapping,
    columns: &[Vec<SourceColumn>],
) -> Result<Plan, MappingError> {
    let invalid = |key: &str, message: String| MappingError::Invalid {
        path: m.path.clone(),
        key: key.to_string(),
        message,
    };
    let relations = relations_of(m);
    let src = &m.spec.source;
    let mut wanted = columns_used(&m.spec.fields);
    if let Some(f) = &m.spec.file {
        for c in file_columns(f).into_iter().map(|(_, c)| c) {
            if !wanted.contains(c) {
                wanted.push(c.clone());
            }
        }
    }
    let read = ReadSpec::new(&relations[0], &columns[0], &wanted, &src.key)
        .map_err(|e| invalid("source", e.to_string()))?;
    let file = match &m.spec.file {
        Some(f) => Some(file_plan(f, &read).map_err(|(key, message)| invalid(&key, message))?),
        None => None,
    };
    for (name, c) in src.key.iter().zip(read.columns.iter()) {
        use crate::source::ColKind::*;
        if !matches!(
            c.kind,
            Int16 | Int32 | Int64 | Numeric | Text | Uuid | Date | Timestamp | TimestampTz
        ) {
            return Err(invalid(
                "source.key",
                format!(
                    "key column `{name}` has type {}, which cannot order a key scan",
                    c.pg_type
                ),
            ));
        }
        if let Some(collation) = &c.nondeterministic_collation {
            return Err(invalid("source.key", loose_collation(name, collation)));
        }
    }
    let updated_at_kind = match &src.updated_at {
        Some(column) => Some(check_updated_at(m, &relations[0], &columns[0], column)?),
        None => None,
    };
    let fields = compile_fields(m, set, &m.spec.fields, &read, "", (0, false))?;
    let mut read = read;
    infinity_policies(m, &mut read, &m.spec.fields, "")?;
    let mut embeds = Vec::new();
    for (i, e) in m.spec.embeds.iter().enumerate() {
        let key = format!("embed[{i}] ({})", e.path);
        let fk = e.foreign_key.names();
        if fk.len() != src.key.len() {
            return Err(invalid(
                &format!("{key}.foreign_key"),
                format!(
                    "names {} column(s) ({}); the parent key has {} ({}): name one child column per parent key column, in key order",
                    fk.len(),
                    fk.join(", "),
                    src.key.len(),
                    src.key.join(", ")
                ),
            ));
        }
        let mut order = fk.clone();
        order.extend(e.order_by.iter().cloned());
        let child_read = ReadSpec::new(
            &relations[i + 1],
            &columns[i + 1],
            &columns_used(&e.fields),
            &order,
        )
        .map_err(|err| invalid(&key, err.to_string()))?;
        for (j, name) in fk.iter().enumerate() {
            let (child, parent) = (&child_read.columns[j], &read.columns[j]);
            if let Some(collation) = &child.nondeterministic_collation {
                return Err(invalid(
                    &format!("{key}.foreign_key"),
                    loose_collation(name, collation),
                ));
            }
            // char(n) values come blank-padded to their own width: only the same type compares
            // equal byte for byte.
            let padded = child.is_padded() || parent.is_padded();
            if child.kind != parent.kind || (padded && child.pg_type != parent.pg_type) {
                return Err(invalid(
                    &key,
                    format!(
                        "foreign key `{name}` is {}, the parent key `{}` is {}",
                        child.pg_type, parent.name, parent.pg_type
                    ),
                ));
            }
        }
        let mut child_read = child_read;
        if !e.order_by.is_empty() {
            // `order_by` may tie (or be NULL) for several children of a parent: the rest of the
            // read columns break the tie, so the element order is the same in every read (run,
            // check, verify) — children tied on all of them are equal elements.
            let tie_break: Vec<usize> = (0..child_read.columns.len())
                .filter(|i| !child_read.order.contains(i) && child_read.columns[*i].expr.is_none())
                .collect();
            child_read.order.extend(tie_break);
        }
        // The embed's path, its array, and (documents) the element: the top document is one.
        let value_element = e.element == EmbedElement::Value;
        let above = split_path(&e.path).len() + 1 + usize::from(!value_element);
        let fields = compile_fields(
            m,
            set,
            &e.fields,
            &child_read,
            &format!("{key}."),
            (above - usize::from(!value_element), value_element),
        )?;
        infinity_policies(m, &mut child_read, &e.fields, &format!("{key}."))?;
        let appwrite_table = e.appwrite == crate::mapping::spec::EmbedStore::Table;
        if appwrite_table && (e.element != EmbedElement::Document || e.path.contains('.')) {
            return Err(invalid(
                &format!("{key}.appwrite"),
                "a child table holds a top-level array of documents (element = \"document\", a path without dots)".into(),
            ));
        }
        let layout = Layout::build(&fields, &[]);
        if appwrite_table
            && layout
                .root
                .iter()
                .any(|(k, _)| k == "parentId" || k == "position")
        {
            return Err(invalid(
                &format!("{key}.appwrite"),
                "a child table has its own `parentId` and `position` columns: rename those fields"
                    .into(),
            ));
        }
        if let Some(n) = e.size
            && !(1..=crate::mapping::spec::MAX_COLUMN_SIZE).contains(&n)
        {
            return Err(invalid(
                &format!("{key}.size"),
                format!(
                    "{n} characters: an Appwrite column holds 1 to {} characters",
                    crate::mapping::spec::MAX_COLUMN_SIZE
                ),
            ));
        }
        if e.size.is_some() && appwrite_table {
            return Err(invalid(
                &format!("{key}.size"),
                "the elements go to a child table (appwrite = \"table\"): `size` sizes the JSON column of the default store; size the child's text fields with their own `size`".into(),
            ));
        }
        embeds.push(EmbedPlan {
            column_size: e.size,
            appwrite_table,
            path: split_path(&e.path),
            path_text: e.path.clone(),
            source_name: e
                .table
                .clone()
                .unwrap_or_else(|| format!("the query of embed {}", e.path)),
            fk_len: fk.len(),
            child_key_len: {
                // The read's leading columns: the ordering columns, each once.
                let mut named: Vec<&String> = Vec::new();
                for c in fk.iter().chain(&e.order_by) {
                    if !named.contains(&c) {
                        named.push(c);
                    }
                }
                named.len()
            },
            read: child_read,
            element: e.element,
            after: e
                .after
                .as_ref()
                .and_then(|a| m.spec.fields.iter().position(|f| &f.path == a)),
            layout,
            fields,
        });
    }
    let layout = Layout::build(&fields, &embeds);
    let mut row_rules = Vec::new();
    for (i, r) in m.spec.rules.iter().enumerate() {
        let mut slots = Vec::new();
        for p in &r.any_of {
            let under = layout.slots_under(p);
            if under.is_empty() {
                return Err(invalid(
                    &format!("rule[{i}] ({})", r.name),
                    format!("`{p}` is not a path this mapping writes"),
                ));
            }
            slots.extend(under);
        }
        row_rules.push(RowRule {
            name: r.name.clone(),
            slots,
            severity: r.severity,
            message: r
                .message
                .clone()
                .unwrap_or_else(|| format!("none of {} has a value", r.any_of.join(", "))),
        });
    }
    Ok(Plan {
        entity: m.spec.name.clone(),
        collection: m.collection().to_string(),
        mapping_path: m.path.clone(),
        checksum: m.checksum.clone(),
        relation: relations[0].clone(),
        source_name: src
            .table
            .clone()
            .unwrap_or_else(|| format!("the query of {}", m.spec.name)),
        read,
        updated_at: m.spec.source.updated_at.clone(),
        updated_at_kind,
        row_versions: false,
        key: (0..src.key.len()).collect(),
        id: IdRule::of(m),
        fields,
        embeds,
        row_rules,
        appwrite_users: users_spec(m, &layout)?,
        appwrite_permissions: m.spec.appwrite.permissions.clone(),
        appwrite_row_security: m.spec.appwrite.row_security,
        layout,
        file,
        indexes: m.spec.indexes.clone(),
        reference_indexes: crate::mapping::reference_index_paths(&m.spec)
            .into_iter()
            .map(|p| crate::mapping::spec::IndexSpec {
                keys: vec![p],
                unique: false,
                name: None,
                partial: None,
                ttl_seconds: None,
                collation: None,
                kind: None,
            })
            .collect(),
        validator: (m.spec.validator != crate::mapping::spec::ValidatorLevel::Off)
            .then(|| (m.spec.validator, crate::mapping::json_schema(&m.spec))),
    })
}

/// The columns a `[file]` table names, with their keys.
fn file_columns(f: &crate::mapping::spec::FileSpec) -> Vec<(&'static str, &String)> {
    let mut out = vec![("file.path_column", &f.path_column)];
    for (key, c) in [
        ("file.name_column", &f.name_column),
        ("file.size_column", &f.size_column),
        ("file.checksum_column", &f.checksum_column),
        ("file.mime_column", &f.mime_column),
    ] {
        if let Some(c) = c {
            out.push((key, c));
        }
    }
    out
}

/// Resolves a `[file]` table's columns in the read, checking their types: the path, name,
/// checksum and mime type are text, the size an integer.
fn file_plan(
    f: &crate::mapping::spec::FileSpec,
    read: &ReadSpec,
) -> Result<FilePlan, (String, String)> {
    use crate::source::ColKind::{Int16, Int32, Int64, Text};
    let find = |key: &str, name: &str, integer: bool| {
        let i = read
            .columns
            .iter()
            .position(|c| c.name == name && c.expr.is_none())
            .ok_or_else(|| (key.to_string(), format!("no column `{name}` in the source")))?;
        let kind = read.columns[i].kind;
        let fits = if integer {
            matches!(kind, Int16 | Int32 | Int64)
        } else {
            kind == Text
        };
        if !fits {
            return Err((
                key.to_string(),
                format!(
                    "column `{name}` has type {}; it must be {}",
                    read.columns[i].pg_type,
                    if integer { "an integer" } else { "text" }
                ),
            ));
        }
        Ok(i)
    };
    let opt = |key: &str, name: &Option<String>, integer: bool| {
        name.as_deref().map(|n| find(key, n, integer)).transpose()
    };
    Ok(FilePlan {
        path: find("file.path_column", &f.path_column, false)?,
        name: opt("file.name_column", &f.name_column, false)?,
        size: opt("file.size_column", &f.size_column, true)?,
        checksum: opt("file.checksum_column", &f.checksum_column, false)?,
        algorithm: f.checksum,
        mime: opt("file.mime_column", &f.mime_column, false)?,
        bucket: f.bucket.clone(),
        chunk_size: f.chunk_size,
        documents: f.document_collection.clone(),
        padded: read
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_padded())
            .map(|(i, _)| i)
            .collect(),
        permissions: f
            .appwrite
            .file_permissions
            .as_ref()
            .map(|list| {
                list.iter()
                    .map(|t| crate::mapping::permission::Template::parse(t))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|why| ("file.appwrite.file_permissions".to_string(), why))?,
    })
}

/// `source.updated_at` must be a date or timestamp column of the source: a delta run filters on
/// `updated_at >= <snapshot time>` (a timestamptz), found otherwise only in the maintenance window.
fn check_updated_at(
    m: &Mapping,
    relation: &str,
    available: &[SourceColumn],
    column: &str,
) -> Result<crate::source::ColKind, MappingError> {
    use crate::source::ColKind::{Date, Timestamp, TimestampTz};
    let invalid = |message: String| MappingError::Invalid {
        path: m.path.clone(),
        key: "source.updated_at".into(),
        message,
    };
    let candidates = || {
        let names: Vec<&str> = available
            .iter()
            .filter(|c| matches!(c.kind, Date | Timestamp | TimestampTz))
            .map(|c| c.name.as_str())
            .collect();
        if names.is_empty() {
            "it has no date or timestamp column".to_string()
        } else {
            format!("its date and timestamp columns: {}", names.join(", "))
        }
    };
    let Some(c) = available.iter().find(|c| c.name == column) else {
        return Err(invalid(format!(
            "no column `{column}` in {relation} ({})",
            candidates()
        )));
    };
    if !matches!(c.kind, Date | Timestamp | TimestampTz) {
        return Err(invalid(format!(
            "column `{column}` has type {}: a delta run compares it with a point in time, so it must be a date, timestamp or timestamptz ({})",
            c.pg_type,
            candidates()
        )));
    }
    Ok(c.kind)
}

/// The `[appwrite.users]` section, its fields checked against the document's top-level keys.
fn users_spec(
    m: &Mapping,
    layout: &Layout,
) -> Result<Option<crate::mapping::spec::AppwriteUsersSpec>, MappingError> {
    let Some(u) = &m.spec.appwrite.users else {
        return Ok(None);
    };
    let named = [
        Some(&u.email),
        Some(&u.password_hash),
        u.name.as_ref(),
        u.phone.as_ref(),
        u.email_verified.as_ref(),
        u.status.as_ref(),
        u.labels.as_ref(),
    ];
    for f in named.into_iter().flatten() {
        if !layout.root.iter().any(|(k, _)| k == f) {
            return Err(MappingError::Invalid {
                path: m.path.clone(),
                key: "appwrite.users".into(),
                message: format!(
                    "[appwrite.users] names `{f}`, which is not a top-level field of the document"
                ),
            });
        }
    }
    if !crate::mapping::spec::APPWRITE_HASH_ALGORITHMS.contains(&u.algorithm.as_str()) {
        return Err(MappingError::Invalid {
            path: m.path.clone(),
            key: "appwrite.users.algorithm".into(),
            message: format!(
                "[appwrite.users] algorithm `{}`: Appwrite imports {}",
                u.algorithm,
                crate::mapping::spec::APPWRITE_HASH_ALGORITHMS.join(", ")
            ),
        });
    }
    Ok(Some(u.clone()))
}

impl Plan {
    /// Whether any field's rules are errors (used to describe the plan).
    pub fn has_error_rules(&self) -> bool {
        self.fields.iter().any(|f| {
            f.rules.as_ref().is_some_and(|r| {
                r.severity == Severity::Error
                    || r.severities.values().any(|s| *s == Severity::Error)
            })
        })
    }

    /// Types the mapping casts to, for `plan` output.
    pub fn casts(&self) -> Vec<(String, CastType)> {
        self.fields
            .iter()
            .filter_map(|f| f.output.cast.map(|c| (f.path_text.clone(), c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(path: &str, exact: Option<&str>) -> FieldPlan {
        FieldPlan {
            path: split_path(path),
            path_text: path.into(),
            input: Input::Const(Value::Null),
            combine: None,
            steps: vec![],
            output: Output {
                cast: None,
                uuid: UuidFormat::Binary,
                sub_millis: SubMillis::Reject,
                timezone: None,
                lossy: Lossy::Reject,
                duplicate_keys: Severity::Error,
                json_levels: crate::transform::json::MAX_DEPTH,
            },
            default: None,
            nulls: NullPolicy::Omit,
            reference: None,
            exists_in: None,
            exists_at: None,
            rules: None,
            exact_path: exact.map(split_path),
            column_size: None,
            infinity_null: false,
        }
    }

    fn column(name: &str, pg_type: &str) -> SourceColumn {
        SourceColumn {
            name: name.into(),
            pg_type: pg_type.into(),
            kind: crate::source::ColKind::from_pg_type(pg_type),
            expr: None,
            nullable: false,
            infinity: crate::source::postgres::Infinity::Reject,
            nondeterministic_collation: None,
            raw_bytes: false,
        }
    }

    /// Bytes and arrays have no exact text: `type = "string"` on bytea or bytea[] and `concat`
    /// over either are mapping errors (they wrote the placeholder `<4 bytes>` or `[x,y]`).
    #[test]
    fn text_of_bytes_or_arrays_is_refused() {
        let compile_field = |field: &str| {
            let text = format!(
                "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"f\"\n{field}"
            );
            let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), &text)?;
            let set = MappingSet::from_mappings(vec![m.clone()])?;
            compile(
                &set,
                &m,
                &[vec![
                    column("id", "INT4"),
                    column("name", "TEXT"),
                    column("b", "BYTEA"),
                    column("bs", "BYTEA[]"),
                    column("tags", "TEXT[]"),
                ]],
            )
        };
        for (field, says) in [
            ("column = \"b\"\ntype = \"string\"\n", "`b` is bytea"),
            ("column = \"bs\"\ntype = \"string\"\n", "`bs` is bytea"),
            (
                "columns = [\"name\", \"b\"]\ntransform = [{ concat = { sep = \"-\" } }]\n",
                "`b` is bytea: `concat`",
            ),
            (
                "columns = [\"name\", \"tags\"]\ntransform = [{ concat = { sep = \"-\" } }]\n",
                "`tags` is an array: `concat`",
            ),
        ] {
            let err = compile_field(field).unwrap_err().to_string();
            assert!(err.contains(says), "{field}: {err}");
        }
        for ok in [
            "column = \"b\"\ntype = \"base64\"\n",
            "column = \"bs\"\n",
            "columns = [\"name\", \"id\"]\ntransform = [{ concat = { sep = \"-\" } }]\n",
            "columns = [\"name\", \"b\"]\ntransform = [\"array\"]\n",
        ] {
            assert!(compile_field(ok).is_ok(), "{ok}");
        }
    }

    /// A scalar `default` on an array column (or after `split`) wrote a scalar where every
    /// other row has an array (Appwrite refused the row; check did not say).
    #[test]
    fn scalar_default_on_an_array_field_is_refused() {
        let compile_field = |field: &str| {
            let text = format!(
                "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"f\"\n{field}"
            );
            let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), &text)?;
            let set = MappingSet::from_mappings(vec![m.clone()])?;
            compile(
                &set,
                &m,
                &[vec![
                    column("id", "INT4"),
                    column("name", "TEXT"),
                    column("tags", "TEXT[]"),
                ]],
            )
        };
        for bad in [
            "column = \"tags\"\ndefault = \"x\"\n",
            "column = \"tags\"\ntransform = [\"upper\"]\ndefault = 0\n",
            "column = \"name\"\ntransform = [{ split = \",\" }]\ndefault = \"x\"\n",
        ] {
            let err = compile_field(bad).unwrap_err().to_string();
            assert!(
                err.contains("`field (f).default`") && err.contains("give an array"),
                "{bad}: {err}"
            );
        }
        for ok in [
            "column = \"tags\"\ndefault = []\n",
            "column = \"tags\"\ndefault = [\"x\"]\n",
            "column = \"name\"\ndefault = \"x\"\n",
        ] {
            assert!(compile_field(ok).is_ok(), "{ok}");
        }
    }

    /// `map` keys are matched against PostgreSQL's text: a boolean key other than `t`/`f`
    /// (`true`, cutover's own text before) would never match, so it is refused.
    #[test]
    fn map_keys_of_a_boolean_column_are_t_or_f() {
        let compile_field = |field: &str| {
            let text = format!(
                "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"f\"\n{field}"
            );
            let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), &text)?;
            let set = MappingSet::from_mappings(vec![m.clone()])?;
            compile(
                &set,
                &m,
                &[vec![
                    column("id", "INT4"),
                    column("b", "BOOL"),
                    column("bs", "BOOL[]"),
                ]],
            )
        };
        for bad in [
            "column = \"b\"\ntransform = [{ map = { true = \"yes\" } }]\n",
            "column = \"bs\"\ntransform = [{ map = { t = \"yes\", false = \"no\" } }]\n",
        ] {
            let err = compile_field(bad).unwrap_err().to_string();
            assert!(err.contains("is boolean"), "{bad}: {err}");
        }
        assert!(
            compile_field(
                "column = \"b\"\ntransform = [{ map = { t = \"yes\", \"*\" = \"no\" } }]\n"
            )
            .is_ok()
        );
    }

    /// An embed's `order_by` with ties gave children in whatever order the server chose: the
    /// other read columns break the tie (and nothing is added without `order_by`).
    #[test]
    fn embed_order_by_is_tie_broken_by_the_other_columns() {
        let compile_embed = |order_by: &str| {
            let text = format!(
                "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"n\"\ncolumn = \"id\"\n\
                 [[embed]]\npath = \"kids\"\ntable = \"kids\"\nforeign_key = \"pid\"\n{order_by}\
                 [[embed.field]]\npath = \"val\"\ncolumn = \"val\"\n\
                 [[embed.field]]\npath = \"rank\"\ncolumn = \"rank\"\n"
            );
            let m =
                crate::mapping::parse(std::path::Path::new("mappings/things.toml"), &text).unwrap();
            let set = MappingSet::from_mappings(vec![m.clone()]).unwrap();
            compile(
                &set,
                &m,
                &[
                    vec![column("id", "INT4")],
                    vec![
                        column("cid", "INT4"),
                        column("pid", "INT4"),
                        column("rank", "INT4"),
                        column("val", "TEXT"),
                    ],
                ],
            )
            .unwrap()
        };
        let p = compile_embed("order_by = [\"rank\"]\n");
        let r = &p.embeds[0].read;
        let names: Vec<&str> = r
            .order
            .iter()
            .map(|&i| r.columns[i].name.as_str())
            .collect();
        assert_eq!(names, ["pid", "rank", "val"]);
        let p = compile_embed("");
        assert_eq!(
            p.embeds[0].read.order.len(),
            1,
            "no order_by: no defined order"
        );
    }

    /// Two fields of one date column with different `infinity` policies: the last one's was
    /// applied to both (an infinity meant to be rejected was written as text).
    #[test]
    fn fields_of_one_column_must_agree_on_infinity() {
        let compile_text = |second: &str| {
            let text = format!(
                "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"a\"\ncolumn = \"changed\"\n\
                 [[field]]\npath = \"b\"\ncolumn = \"changed\"\n{second}"
            );
            let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), &text)?;
            let set = MappingSet::from_mappings(vec![m.clone()])?;
            compile(
                &set,
                &m,
                &[vec![column("id", "INT4"), column("changed", "TIMESTAMPTZ")]],
            )
        };
        let err = compile_text("infinity = \"string\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fields `a` and `b` read column `changed` with different `infinity`"),
            "{err}"
        );
        assert!(compile_text("").is_ok());
        // `infinity` on a column that is no date or timestamp (an array of dates) is refused.
        let text = "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"ds\"\ncolumn = \"days\"\ninfinity = \"string\"\n";
        let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), text).unwrap();
        let set = MappingSet::from_mappings(vec![m.clone()]).unwrap();
        let err = compile(
            &set,
            &m,
            &[vec![column("id", "INT4"), column("days", "DATE[]")]],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is DATE[]"), "{err}");
        // A field of several columns reads each of them too.
        let text = "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"a\"\ncolumn = \"changed\"\ninfinity = \"string\"\n\
             [[field]]\npath = \"arr\"\ncolumns = [\"changed\", \"changed\"]\ntransform = [\"array\"]\n";
        let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), text).unwrap();
        let set = MappingSet::from_mappings(vec![m.clone()]).unwrap();
        let err = compile(
            &set,
            &m,
            &[vec![column("id", "INT4"), column("changed", "TIMESTAMPTZ")]],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("read column `changed` with different `infinity`"),
            "{err}"
        );
    }

    fn compile_with_updated_at(updated_at: &str) -> Result<Plan, MappingError> {
        let text = format!(
            "version = 1\nname = \"things\"\n[source]\ntable = \"things\"\nkey = [\"id\"]\nupdated_at = \"{updated_at}\"\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n"
        );
        let m = crate::mapping::parse(std::path::Path::new("mappings/things.toml"), &text)?;
        let set = MappingSet::from_mappings(vec![m.clone()])?;
        let columns = vec![
            column("id", "INT4"),
            column("name", "TEXT"),
            column("changed", "TIMESTAMPTZ"),
            column("changed_local", "TIMESTAMP"),
            column("changed_on", "DATE"),
            column("revision", "INT8"),
        ];
        compile(&set, &m, &[columns])
    }

    #[test]
    fn updated_at_must_be_a_date_or_timestamp_column_of_the_source() {
        for ok in ["changed", "changed_local", "changed_on"] {
            let plan = compile_with_updated_at(ok).unwrap();
            assert_eq!(plan.updated_at.as_deref(), Some(ok));
        }
        let err = compile_with_updated_at("modified_at")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("mappings/things.toml: `source.updated_at`: no column `modified_at`"),
            "{err}"
        );
        assert!(err.contains("changed, changed_local, changed_on"), "{err}");
        let err = compile_with_updated_at("revision").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "mappings/things.toml: `source.updated_at`: column `revision` has type INT8"
            ),
            "{err}"
        );
    }

    fn uuid5_rule() -> IdRule {
        IdRule {
            entity: "plots".into(),
            strategy: IdStrategy::Uuid5,
            uuid: UuidFormat::String,
            namespace: DEFAULT_NAMESPACE,
            key_names: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn uuid5_ids_of_different_composite_keys_differ() {
        let rule = uuid5_rule();
        let text = |s: &str| Value::Text(s.into());
        let pairs = [
            (("a|b", "c"), ("a", "b|c")),
            (("a\u{1f}b", "c"), ("a", "b\u{1f}c")),
            (("a\u{1f}1:b", "c"), ("a", "1:b\u{1f}1:c")),
            (("", "ab"), ("ab", "")),
            (("1:a", "b"), ("1", "a\u{1f}1:b")),
        ];
        for ((a1, a2), (b1, b2)) in pairs {
            let (a1, a2, b1, b2) = (text(a1), text(a2), text(b1), text(b2));
            let a = rule.id_for(&[&a1, &a2]).unwrap();
            let b = rule.id_for(&[&b1, &b2]).unwrap();
            assert_ne!(a, b, "({a1:?}, {a2:?}) and ({b1:?}, {b2:?})");
            assert_eq!(a, rule.id_for(&[&a1, &a2]).unwrap(), "deterministic");
        }
    }

    #[test]
    fn uuid5_ids_of_single_keys_are_unchanged() {
        // The name hashed for a one-column key is what it always was: entity, separator, value.
        let rule = uuid5_rule();
        let id = rule.id_for(&[&Value::Int32(42)]).unwrap();
        let expected = Uuid::new_v5(&DEFAULT_NAMESPACE, "plots\u{1f}42".as_bytes());
        assert_eq!(id, Bson::String(expected.hyphenated().to_string()));
        assert_eq!(
            uuid5_name("plots", &[&Value::Int32(4), &Value::Text("ab".into())]),
            "plots\u{1f}1:4\u{1f}2:ab"
        );
    }

    /// A `numeric(10,2)` foreign key `1.00` referenced the `numeric` key `1.0` as `"1.00"`, an
    /// `_id` no document has: numerics PostgreSQL holds equal are one id.
    #[test]
    fn numeric_keys_equal_in_postgresql_are_one_id() {
        let key = IdRule {
            strategy: IdStrategy::Key,
            ..uuid5_rule()
        };
        let n = |s: &str| Value::Numeric(s.into());
        for rule in [key, uuid5_rule()] {
            let one = rule.id_for(&[&n("1.0")]).unwrap();
            assert_eq!(one, rule.id_for(&[&n("1.00")]).unwrap());
            assert_eq!(one, rule.id_for(&[&n("1")]).unwrap());
            assert_ne!(one, rule.id_for(&[&n("10")]).unwrap());
            assert_ne!(one, rule.id_for(&[&n("1.01")]).unwrap());
            assert_eq!(
                rule.id_for(&[&n("-0.00")]).unwrap(),
                rule.id_for(&[&n("0")]).unwrap()
            );
            assert_eq!(
                rule.id_for(&[&n("100")]).unwrap(),
                rule.id_for(&[&n("100.000")]).unwrap()
            );
        }
    }

    #[test]
    fn layout_nests_in_first_appearance_order() {
        let fields = vec![
            field("a.x", None),
            field("b", Some("bExact")),
            field("a.y", None),
        ];
        let l = Layout::build(&fields, &[]);
        use LayoutNode::*;
        assert_eq!(
            l.root,
            vec![
                (
                    "a".into(),
                    Doc(vec![("x".into(), Slot(0)), ("y".into(), Slot(2))])
                ),
                ("b".into(), Slot(1)),
                ("bExact".into(), Slot(3)),
            ]
        );
        assert_eq!(l.slots, 4);
        assert_eq!(l.slots_under("a"), vec![0, 2]);
        assert_eq!(l.slots_under("b"), vec![1]);
    }
}

/// What a field written as it is (no transform, no combined columns) holds, for its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Number,
    Text,
    Date,
    Bool,
    /// Binary data, a uuid.
    Other,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Number => "a number",
            Family::Text => "text",
            Family::Date => "a date",
            Family::Bool => "a boolean",
            Family::Other => "binary data",
        }
    }
}

/// The family a column of `kind` written with `cast` has, and whether it is an array; `None`
/// where it cannot be told here (JSON, a point, a uuid's format).
fn written_family(kind: crate::source::ColKind, cast: Option<CastType>) -> Option<(Family, bool)> {
    use crate::source::ColKind as K;
    use crate::source::postgres::Elem as E;
    let (scalar, array) = match kind {
        K::Array(e) => (
            match e {
                E::Bool => K::Bool,
                E::Int16 | E::Int32 | E::Int64 | E::Float32 | E::Float64 | E::Numeric => K::Numeric,
                E::Text | E::Other => K::Text,
                E::Date | E::Timestamp | E::TimestampTz => K::Date,
                E::Bytes => K::Bytes,
                E::Uuid | E::Json => return None,
            },
            true,
        ),
        k => (k, false),
    };
    let family = match cast {
        Some(CastType::String | CastType::Base64 | CastType::Hex) => Family::Text,
        Some(CastType::Int | CastType::Long | CastType::Double | CastType::Decimal) => {
            Family::Number
        }
        Some(CastType::Bool) => Family::Bool,
        Some(CastType::Date) => Family::Date,
        Some(CastType::Uuid | CastType::Point) => return None,
        None => match scalar {
            K::Bool => Family::Bool,
            K::Int16 | K::Int32 | K::Int64 | K::Float32 | K::Float64 | K::Numeric => Family::Number,
            K::Text | K::OtherAsText => Family::Text,
            K::Date | K::Timestamp | K::TimestampTz => Family::Date,
            K::Bytes => Family::Other,
            K::Uuid | K::Json | K::Array(_) => return None,
        },
    };
    Some((family, array))
}

/// What a field writes, for its rules: the families of its values (several for an array of
/// columns of different kinds), whether it is an array, and where it comes from (for messages);
/// `None` where it cannot be told before the rows are read.
fn written_shape(
    input: &Input,
    combine: Option<&Combine>,
    steps: &[Step],
    cast: Option<CastType>,
    read: &ReadSpec,
) -> Option<(Vec<Family>, bool, String)> {
    use crate::source::ColKind as K;
    let with_cast = |family: Family| match cast {
        None => Some(family),
        Some(c) => written_family(K::Text, Some(c)).map(|(f, _)| f),
    };
    let (mut families, mut array, mut what) = match (input, combine) {
        (Input::Column(i), _) => {
            let c = &read.columns[*i];
            // A cast says the family whatever the column's (a uuid or JSON written as text).
            let (family, array) = match written_family(c.kind, None) {
                Some(shape) => shape,
                None if cast.is_some() && steps.is_empty() => {
                    (Family::Other, matches!(c.kind, K::Array(_)))
                }
                None => return None,
            };
            (
                vec![family],
                array,
                format!("column `{}` is {}", c.name, c.pg_type),
            )
        }
        (Input::Const(v), _) => {
            let (family, array) = value_family(v)?;
            (
                vec![family],
                array,
                format!("the constant `{v}` is {}", v.type_name()),
            )
        }
        (Input::Columns(idx), Some(Combine::Concat(_))) => (
            vec![Family::Text],
            false,
            format!("columns {} are joined as text", column_list(idx, read)),
        ),
        (Input::Columns(idx), Some(Combine::Array)) => {
            let mut families = Vec::new();
            for &i in idx {
                let (family, array) = written_family(read.columns[i].kind, None)?;
                if array {
                    return None;
                }
                if !families.contains(&family) {
                    families.push(family);
                }
            }
            (
                families,
                true,
                format!("columns {} are written as an array", column_list(idx, read)),
            )
        }
        (Input::Columns(_), None) => return None,
    };
    for step in steps {
        match step {
            Step::Trim | Step::Lower | Step::Upper | Step::DropNulls => {}
            Step::Split(_) => {
                (families, array) = (vec![Family::Text], true);
                what.push_str(", split into an array of text");
            }
            Step::Phone { .. } => {
                families = vec![Family::Text];
                what.push_str(", as a phone number");
            }
            Step::Map { .. } | Step::Json => return None,
        }
    }
    if cast.is_some() {
        families = families
            .into_iter()
            .map(with_cast)
            .collect::<Option<Vec<_>>>()?;
        families.dedup();
    }
    Some((families, array, what))
}

/// The family of a constant, and whether it is an array (of one family).
fn value_family(v: &Value) -> Option<(Family, bool)> {
    Some(match v {
        Value::Bool(_) => (Family::Bool, false),
        Value::Int32(_)
        | Value::Int64(_)
        | Value::Real(_)
        | Value::Double(_)
        | Value::Numeric(_) => (Family::Number, false),
        Value::Text(_) => (Family::Text, false),
        Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_) => (Family::Date, false),
        Value::Bytes(_) => (Family::Other, false),
        Value::Array(items) => {
            let mut families = items.iter().map(value_family);
            let Some(Some((first, false))) = families.next() else {
                return None;
            };
            if !families.all(|f| f == Some((first, false))) {
                return None;
            }
            (first, true)
        }
        Value::Null | Value::Uuid(_) | Value::Json(_) => return None,
    })
}

fn column_list(idx: &[usize], read: &ReadSpec) -> String {
    idx.iter()
        .map(|&i| format!("`{}`", read.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first rule of `r` that no value of `family` (an array of them when `array`) can fail.
fn inapplicable_rule(
    r: &super::spec::RulesSpec,
    family: Family,
    array: bool,
) -> Option<&'static str> {
    if (r.min.is_some() || r.max.is_some()) && family != Family::Number {
        return Some(if r.min.is_some() { "min" } else { "max" });
    }
    if (r.min_length.is_some() || r.max_length.is_some()) && !array && family != Family::Text {
        return Some(if r.min_length.is_some() {
            "min_length"
        } else {
            "max_length"
        });
    }
    if r.not_in_future && family != Family::Date {
        return Some("not_in_future");
    }
    let text_rule = if r.email != crate::mapping::spec::EmailRule::Off {
        Some("email")
    } else if r.url {
        Some("url")
    } else if r.regex.is_some() {
        Some("regex")
    } else {
        None
    };
    // On an array, each element (an address list in a text[] column, or after `split`).
    if let Some(rule) = text_rule
        && family != Family::Text
    {
        return Some(rule);
    }
    None
}

fn family_rules_text(rule: &str) -> &'static str {
    match rule {
        "min" | "max" => "it applies to numbers (and each number of an array)",
        "min_length" | "max_length" => "it applies to text (characters) and arrays (elements)",
        "not_in_future" => "it applies to dates (and each date of an array)",
        _ => "it applies to text (and each text of an array)",
    }
}
