//! Change files: one TOML file per change, `<version>_<slug>.toml`, parsed and checked here
//! (pure: no connection). A loaded [`Change`] carries its operations compiled to BSON, its
//! checksum (sha256 of the file's bytes) and its text, which the ledger keeps so that `down`
//! undoes what was applied even when the file has changed or gone since.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bson::{Bson, Document, doc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use super::appwrite::op::AwOp;

/// What is wrong with a change file or the set of them.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "version {version} is used by two change files: {} and {}; give one of them a new version",
        first.display(),
        second.display()
    )]
    Duplicate {
        version: u64,
        first: PathBuf,
        second: PathBuf,
    },
}

/// One operation of a change, compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Sets `field` to `default` in the documents matching `filter` where it is missing.
    AddField {
        collection: String,
        field: String,
        default: Bson,
        filter: Document,
    },
    /// Removes `field` from the documents matching `filter` that have it.
    RemoveField {
        collection: String,
        field: String,
        filter: Document,
    },
    /// Renames `from` to `to` in the documents matching `filter` that have `from`.
    RenameField {
        collection: String,
        from: String,
        to: String,
        filter: Document,
    },
    /// Sets fields (dotted paths) to values in the documents matching `filter`.
    Set {
        collection: String,
        filter: Document,
        fields: Document,
    },
    /// Removes fields from the documents matching `filter`.
    Unset {
        collection: String,
        filter: Document,
        fields: Vec<String>,
    },
    CreateIndex(IndexSpec),
    DropIndex {
        collection: String,
        name: String,
    },
    /// Copies `from` into `to` in the documents matching `filter` that have `from` and lack `to`.
    CopyField {
        collection: String,
        from: String,
        to: String,
        filter: Document,
    },
    /// Rewrites the documents matching `filter` with an update pipeline (`$set`, `$unset`,
    /// `$replaceWith`… stages in extended JSON), e.g. a phone number's format.
    Transform {
        collection: String,
        filter: Document,
        pipeline: Vec<Document>,
    },
    /// Moves the documents matching `filter` into collection `to` (e.g. sessions that expired).
    Archive {
        collection: String,
        to: String,
        filter: Document,
    },
    /// Several updates (each a filter and an update document or pipeline), applied in order.
    BulkUpdate {
        collection: String,
        updates: Vec<(Document, UpdateSpec)>,
    },
    /// Deletes all but one document of each group sharing the values of `fields`: the first (or
    /// last) by `sort`.
    RemoveDuplicates {
        collection: String,
        fields: Vec<String>,
        keep_last: bool,
        sort: Document,
    },
    /// Replaces the value `from` by `to` in `field` (a value or an array of them).
    UpdateReferences {
        collection: String,
        field: String,
        from: Bson,
        to: Bson,
    },
    /// Creates a collection, optionally with a `$jsonSchema` (or any) validator.
    CreateCollection {
        collection: String,
        options: Document,
    },
    /// Drops a collection, keeping its documents, indexes and options for the inverse.
    DropCollection {
        collection: String,
    },
    /// Sets a collection's validator (and level / action), keeping the old ones for the inverse.
    SetValidator {
        collection: String,
        validator: Document,
        level: Option<String>,
        action: Option<String>,
    },
    /// Writes the result of an aggregation pipeline over `from` into a new collection `to`.
    CopyCollection {
        from: String,
        to: String,
        pipeline: Vec<Document>,
    },
    /// Inserts documents, each with its `_id`.
    Insert {
        collection: String,
        documents: Vec<Document>,
    },
    /// Cleans the string values at `fields` (dotted paths; through arrays, every element) in
    /// the documents matching `filter`: trims, lower-cases, and/or Unicode-normalises them.
    SanitizeStrings {
        collection: String,
        filter: Document,
        fields: Vec<String>,
        clean: Sanitize,
    },
    /// Any database command, with the command that undoes it.
    Command {
        command: Document,
        down: Option<Document>,
    },
    /// An operation on an Appwrite table (it names a `table`): runs on an Appwrite target only.
    Appwrite(AwOp),
}

/// What `sanitize_strings` does to each string, in this order: normalise, trim, lower-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sanitize {
    /// Leading and trailing white space (Unicode `White_Space`) removed.
    pub trim: bool,
    /// Lower-cased (Unicode's full mapping, e.g. `Ä` → `ä`).
    pub lower: bool,
    /// Unicode normalisation form.
    pub normalize: Option<NormalForm>,
}

/// A Unicode normalisation form (UAX #15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NormalForm {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
}

impl Sanitize {
    /// The cleaned string, or `None` when it is already clean.
    pub fn apply(&self, s: &str) -> Option<String> {
        use unicode_normalization::UnicodeNormalization;
        let normal: std::borrow::Cow<str> = match self.normalize {
            None => s.into(),
            Some(NormalForm::Nfc) => s.nfc().collect::<String>().into(),
            Some(NormalForm::Nfd) => s.nfd().collect::<String>().into(),
            Some(NormalForm::Nfkc) => s.nfkc().collect::<String>().into(),
            Some(NormalForm::Nfkd) => s.nfkd().collect::<String>().into(),
        };
        let trimmed = if self.trim { normal.trim() } else { &normal };
        let out = if self.lower {
            trimmed.to_lowercase()
        } else {
            trimmed.to_string()
        };
        (out != s).then_some(out)
    }
}

/// An update: an update document (`{ "$set" = … }`) or an update pipeline (a list of stages).
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateSpec {
    Document(Document),
    Pipeline(Vec<Document>),
}

/// An index to create: keys in order, a name (MongoDB's default name when none is given) and
/// options.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub collection: String,
    pub keys: Document,
    pub name: String,
    pub unique: bool,
    pub partial_filter: Option<Document>,
    pub expire_after_seconds: Option<i64>,
    /// The index's collation (`{ locale = "en", strength = 2 }`: case-insensitive matching).
    pub collation: Option<Document>,
}

impl IndexSpec {
    /// The `createIndexes` entry for this index.
    pub fn to_index_doc(&self) -> Document {
        let mut d = doc! { "key": self.keys.clone(), "name": &self.name };
        if self.unique {
            d.insert("unique", true);
        }
        if let Some(p) = &self.partial_filter {
            d.insert("partialFilterExpression", p.clone());
        }
        if let Some(s) = self.expire_after_seconds {
            d.insert("expireAfterSeconds", s);
        }
        if let Some(c) = &self.collation {
            d.insert("collation", c.clone());
        }
        d
    }

    /// A TTL index's documents expired at `now_ms` (plus [`TTL_MARGIN_MS`]): those whose key
    /// field is a date (or an array holding one) before `now - expireAfterSeconds`, within the
    /// partial filter. MongoDB's TTL monitor deletes them within a minute of the index being
    /// made (adv37 F5: `up` said "deleted 0" and `down` could not bring them back). `None` for
    /// an index without `expire_after_seconds`.
    pub fn expired_filter(&self, now_ms: i64) -> Option<Document> {
        let seconds = self.expire_after_seconds?;
        let field = self.keys.keys().next()?;
        let cutoff = bson::DateTime::from_millis(
            now_ms
                .saturating_add(TTL_MARGIN_MS)
                .saturating_sub(seconds.saturating_mul(1000)),
        );
        let expired = doc! { field: { "$lt": cutoff } };
        Some(match &self.partial_filter {
            Some(p) => doc! { "$and": [expired, p.clone()] },
            None => expired,
        })
    }
}

/// How far ahead of the change's start a TTL index's expiry is judged: documents expiring while
/// the change runs (and until the monitor's first pass) are backed up too.
pub const TTL_MARGIN_MS: i64 = 60_000;

impl Op {
    /// The operation's name as written in the file (`op = "…"`).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::AddField { .. } => "add_field",
            Op::RemoveField { .. } => "remove_field",
            Op::RenameField { .. } => "rename_field",
            Op::Set { .. } => "set",
            Op::Unset { .. } => "unset",
            Op::CreateIndex(_) => "create_index",
            Op::DropIndex { .. } => "drop_index",
            Op::Insert { .. } => "insert",
            Op::CopyField { .. } => "copy_field",
            Op::Transform { .. } => "transform",
            Op::Archive { .. } => "archive",
            Op::BulkUpdate { .. } => "bulk_update",
            Op::RemoveDuplicates { .. } => "remove_duplicates",
            Op::UpdateReferences { .. } => "update_references",
            Op::CreateCollection { .. } => "create_collection",
            Op::DropCollection { .. } => "drop_collection",
            Op::SetValidator { .. } => "set_validator",
            Op::CopyCollection { .. } => "copy_collection",
            Op::SanitizeStrings { .. } => "sanitize_strings",
            Op::Command { .. } => "command",
            Op::Appwrite(a) => a.kind(),
        }
    }

    /// Every collection the operation writes (an archive writes two).
    pub fn collections(&self) -> Option<Vec<&str>> {
        match self {
            Op::Archive { collection, to, .. } => Some(vec![collection, to]),
            Op::CopyCollection { from, to, .. } => Some(vec![from, to]),
            other => other.collection().map(|c| vec![c]),
        }
    }

    /// The other collections a `copy_collection`'s pipeline reads (`$lookup`, `$graphLookup`,
    /// `$unionWith`, in nested pipelines and `$facet` too): a change may not read the ledger
    /// through them either (adv37 F11).
    pub fn collections_read(&self) -> Vec<String> {
        fn walk(stages: &[Bson], out: &mut Vec<String>) {
            for stage in stages.iter().filter_map(Bson::as_document) {
                for (name, body) in stage {
                    match (name.as_str(), body) {
                        ("$unionWith", Bson::String(c)) => out.push(c.clone()),
                        ("$lookup" | "$graphLookup" | "$unionWith", Bson::Document(d)) => {
                            for key in ["from", "coll"] {
                                if let Ok(c) = d.get_str(key) {
                                    out.push(c.to_string());
                                }
                            }
                            if let Ok(p) = d.get_array("pipeline") {
                                walk(p, out);
                            }
                        }
                        ("$facet", Bson::Document(d)) => {
                            for p in d.values().filter_map(Bson::as_array) {
                                walk(p, out);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut out = Vec::new();
        if let Op::CopyCollection { pipeline, .. } = self {
            let stages: Vec<Bson> = pipeline.iter().cloned().map(Bson::Document).collect();
            walk(&stages, &mut out);
        }
        out
    }

    /// The collection the operation finds nothing in unless it exists: an update of a
    /// collection the target does not hold matches nothing and would be recorded as applied.
    pub fn needs_collection(&self) -> Option<&str> {
        match self {
            Op::AddField { collection, .. }
            | Op::RemoveField { collection, .. }
            | Op::RenameField { collection, .. }
            | Op::Set { collection, .. }
            | Op::Unset { collection, .. }
            | Op::DropIndex { collection, .. }
            | Op::CopyField { collection, .. }
            | Op::Transform { collection, .. }
            | Op::Archive { collection, .. }
            | Op::BulkUpdate { collection, .. }
            | Op::RemoveDuplicates { collection, .. }
            | Op::UpdateReferences { collection, .. }
            | Op::SetValidator { collection, .. }
            | Op::SanitizeStrings { collection, .. } => Some(collection),
            Op::CopyCollection { from, .. } => Some(from),
            // Dropping what is not there leaves the target as the change wants it.
            Op::DropCollection { .. }
            | Op::CreateIndex(_)
            | Op::CreateCollection { .. }
            | Op::Insert { .. }
            | Op::Command { .. }
            | Op::Appwrite(_) => None,
        }
    }

    /// The collections the operation may create (a command: the one its first value names).
    pub fn may_create(&self) -> Vec<&str> {
        match self {
            Op::CreateCollection { collection, .. } | Op::Insert { collection, .. } => {
                vec![collection]
            }
            Op::CreateIndex(s) => vec![&s.collection],
            Op::CopyCollection { to, .. } | Op::Archive { to, .. } => vec![to],
            Op::Command { command, .. } => command
                .iter()
                .next()
                .and_then(|(_, v)| v.as_str())
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The collection the operation works on (none for a command).
    pub fn collection(&self) -> Option<&str> {
        match self {
            Op::AddField { collection, .. }
            | Op::RemoveField { collection, .. }
            | Op::RenameField { collection, .. }
            | Op::Set { collection, .. }
            | Op::Unset { collection, .. }
            | Op::DropIndex { collection, .. }
            | Op::CopyField { collection, .. }
            | Op::Transform { collection, .. }
            | Op::Archive { collection, .. }
            | Op::BulkUpdate { collection, .. }
            | Op::RemoveDuplicates { collection, .. }
            | Op::UpdateReferences { collection, .. }
            | Op::CreateCollection { collection, .. }
            | Op::DropCollection { collection }
            | Op::SetValidator { collection, .. }
            | Op::SanitizeStrings { collection, .. }
            | Op::Insert { collection, .. } => Some(collection),
            Op::CopyCollection { to, .. } => Some(to),
            Op::CreateIndex(s) => Some(&s.collection),
            Op::Command { .. } => None,
            Op::Appwrite(a) => Some(a.table()),
        }
    }

    /// Whether the operation has an exact inverse (a command only with its `down`).
    pub fn has_inverse(&self) -> bool {
        !matches!(self, Op::Command { down: None, .. })
    }

    /// Whether the operation may run inside a multi-document transaction.
    pub fn transactional(&self) -> bool {
        if let Op::Appwrite(a) = self {
            return a.row_operation();
        }
        !matches!(
            self,
            Op::CreateIndex(_)
                | Op::DropIndex { .. }
                | Op::Command { .. }
                | Op::CreateCollection { .. }
                | Op::DropCollection { .. }
                | Op::SetValidator { .. }
                | Op::CopyCollection { .. }
        )
    }

    /// Whether the operation rewrites existing documents (it takes a backup of them first).
    pub fn rewrites_documents(&self) -> bool {
        matches!(
            self,
            Op::AddField { .. }
                | Op::RemoveField { .. }
                | Op::RenameField { .. }
                | Op::Set { .. }
                | Op::Unset { .. }
                | Op::CopyField { .. }
                | Op::Transform { .. }
                | Op::BulkUpdate { .. }
                | Op::UpdateReferences { .. }
                | Op::SanitizeStrings { .. }
        )
    }
}

/// A loaded change file.
#[derive(Debug, Clone)]
pub struct Change {
    pub version: u64,
    pub name: String,
    pub description: String,
    pub author: String,
    pub transaction: bool,
    pub up: Vec<Op>,
    /// The file's own `[[down]]`, if it has one.
    pub down: Option<Vec<Op>>,
    pub path: PathBuf,
    /// sha256 of the file's bytes, hex.
    pub checksum: String,
    /// The file's text.
    pub source: String,
    /// The seed files its `insert`s read (name → text), recorded with the change.
    pub seeds: BTreeMap<String, String>,
    /// Why the change cannot be applied as it is (a seed file it names is gone): `status` still
    /// lists it (an applied change whose seed is gone is `modified`: adv37 F6, status failed
    /// for the whole directory), and `up` refuses it.
    pub unreadable: Option<String>,
}

impl Change {
    /// Whether `down` can undo the change: its own `[[down]]`, or every up operation has an
    /// inverse.
    pub fn reversible(&self) -> bool {
        self.down.is_some() || self.up.iter().all(Op::has_inverse)
    }

    /// The first up operation without an inverse (why a change without `[[down]]` is
    /// non-reversible).
    pub fn irreversible_op(&self) -> Option<(usize, &Op)> {
        if self.down.is_some() {
            return None;
        }
        self.up
            .iter()
            .enumerate()
            .find(|(_, op)| !op.has_inverse())
            .map(|(i, op)| (i + 1, op))
    }

    /// The file name as shown in messages.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChange {
    version: RawVersion,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    author: String,
    #[serde(default)]
    transaction: bool,
    #[serde(default)]
    up: Vec<Ordered>,
    down: Option<Vec<Ordered>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawVersion {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum RawOp {
    AddField {
        collection: String,
        field: String,
        default: serde_json::Value,
        filter: Option<serde_json::Value>,
    },
    RemoveField {
        collection: String,
        field: String,
        filter: Option<serde_json::Value>,
    },
    RenameField {
        collection: String,
        from: String,
        to: String,
        filter: Option<serde_json::Value>,
    },
    Set {
        collection: String,
        filter: serde_json::Value,
        fields: serde_json::Value,
    },
    Unset {
        collection: String,
        filter: serde_json::Value,
        fields: Vec<String>,
    },
    CreateIndex {
        collection: String,
        keys: Vec<String>,
        name: Option<String>,
        #[serde(default)]
        unique: bool,
        partial_filter: Option<serde_json::Value>,
        expire_after_seconds: Option<i64>,
        collation: Option<serde_json::Value>,
    },
    DropIndex {
        collection: String,
        name: String,
    },
    Insert {
        collection: String,
        #[serde(default)]
        documents: Vec<serde_json::Value>,
        /// A file of documents in extended JSON (an array, or one per line in `.jsonl` /
        /// `.ndjson`), relative to the change file's directory.
        file: Option<String>,
    },
    CopyField {
        collection: String,
        from: String,
        to: String,
        filter: Option<serde_json::Value>,
    },
    Transform {
        collection: String,
        filter: Option<serde_json::Value>,
        pipeline: Vec<serde_json::Value>,
    },
    Archive {
        collection: String,
        to: String,
        filter: serde_json::Value,
    },
    BulkUpdate {
        collection: String,
        updates: Vec<serde_json::Value>,
    },
    RemoveDuplicates {
        collection: String,
        fields: Vec<String>,
        #[serde(default)]
        keep: Keep,
        sort: Option<serde_json::Value>,
    },
    UpdateReferences {
        collection: String,
        field: String,
        from: serde_json::Value,
        to: serde_json::Value,
    },
    CreateCollection {
        collection: String,
        validator: Option<serde_json::Value>,
        validation_level: Option<String>,
        validation_action: Option<String>,
    },
    DropCollection {
        collection: String,
    },
    SetValidator {
        collection: String,
        validator: serde_json::Value,
        validation_level: Option<String>,
        validation_action: Option<String>,
    },
    CopyCollection {
        from: String,
        to: String,
        #[serde(default)]
        pipeline: Vec<serde_json::Value>,
    },
    SanitizeStrings {
        collection: String,
        fields: Vec<String>,
        filter: Option<serde_json::Value>,
        #[serde(default)]
        trim: bool,
        #[serde(default)]
        lower: bool,
        normalize: Option<NormalForm>,
    },
    Command {
        command: serde_json::Value,
        down: Option<serde_json::Value>,
    },
}

/// Which document of a group of duplicates `remove_duplicates` keeps.
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Keep {
    #[default]
    First,
    Last,
}

/// An update as written: a table (an update document) or an array (a pipeline).
fn update_spec(v: &serde_json::Value, what: &str) -> Result<UpdateSpec, String> {
    match v {
        serde_json::Value::Array(stages) => {
            if stages.is_empty() {
                return Err(format!("{what} is an empty pipeline"));
            }
            Ok(UpdateSpec::Pipeline(
                stages
                    .iter()
                    .enumerate()
                    .map(|(i, st)| update_stage(st, &format!("{what}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ))
        }
        other => {
            let d = to_doc(other, what)?;
            if d.is_empty() || !d.keys().all(|k| k.starts_with('$')) {
                return Err(format!(
                    "{what} must be an update document of operators ({{ \"$set\" = … }}) or a pipeline"
                ));
            }
            Ok(UpdateSpec::Document(d))
        }
    }
}

/// One stage of an update pipeline: only those an update may use.
fn update_stage(v: &serde_json::Value, what: &str) -> Result<Document, String> {
    let d = to_doc(v, what)?;
    match d.keys().next().map(String::as_str) {
        Some("$set" | "$addFields" | "$unset" | "$project" | "$replaceWith" | "$replaceRoot")
            if d.len() == 1 =>
        {
            Ok(d)
        }
        _ => Err(format!(
            "{what} must be one stage an update may use ($set, $addFields, $unset, $project, $replaceWith, $replaceRoot)"
        )),
    }
}

fn validation_level(v: &Option<String>) -> Result<Option<String>, String> {
    match v.as_deref() {
        None => Ok(None),
        Some(l @ ("off" | "strict" | "moderate")) => Ok(Some(l.to_string())),
        Some(other) => Err(format!(
            "validation_level `{other}` is not off, strict or moderate"
        )),
    }
}

fn validation_action(v: &Option<String>) -> Result<Option<String>, String> {
    match v.as_deref() {
        None => Ok(None),
        Some(a @ ("error" | "warn")) => Ok(Some(a.to_string())),
        Some(other) => Err(format!("validation_action `{other}` is not error or warn")),
    }
}

/// A TOML value with its tables in the file's order. The TOML deserializer hands a table's keys
/// over sorted; each key's position in the file puts them back in order (a document's fields, a
/// command's name first). Operations are read as such values first, then as [`RawOp`] from
/// them (an internally tagged enum buffers its input, which would lose the positions).
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered(pub serde_json::Value);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        d.deserialize_any(OrderedVisitor).map(Ordered)
    }
}

struct OrderedVisitor;

impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Ordered(v)) = a.next_element()? {
            out.push(v);
        }
        Ok(serde_json::Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<(usize, String, serde_json::Value)> = Vec::new();
        while let Some(Key(at, k)) = m.next_key()? {
            let Ordered(v) = m.next_value()?;
            entries.push((at, k, v));
        }
        entries.sort_by_key(|(at, _, _)| *at);
        Ok(serde_json::Value::Object(
            entries.into_iter().map(|(_, k, v)| (k, v)).collect(),
        ))
    }
}

/// A table key with its position in the file (`usize::MAX` where the deserializer has none: the
/// inner key of a TOML date). It asks for the position as `toml::Spanned` does: these are the
/// names `serde_spanned` uses (a unit test fails if they change).
struct Key(usize, String);

const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_FIELDS: [&str; 3] = [
    "$__serde_spanned_private_start",
    "$__serde_spanned_private_end",
    "$__serde_spanned_private_value",
];

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_struct(SPANNED, &SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> serde::de::Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a table key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Key, E> {
        Ok(Key(usize::MAX, v.to_string()))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Key, A::Error> {
        let (mut start, mut value) = (usize::MAX, None);
        while let Some(field) = m.next_key::<String>()? {
            if field == SPANNED_FIELDS[0] {
                start = m.next_value()?;
            } else if field == SPANNED_FIELDS[2] {
                value = Some(m.next_value::<String>()?);
            } else {
                m.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        value
            .map(|v| Key(start, v))
            .ok_or_else(|| serde::de::Error::missing_field("key"))
    }
}

/// A value read from TOML as extended JSON, then as BSON: `{ "$oid" = "…" }`,
/// `{ "$date" = "…" }`, `{ "$numberLong" = "…" }` and the rest of extended JSON work; a TOML date
/// with an offset becomes a BSON date.
pub fn json_to_bson(v: &serde_json::Value) -> Result<Bson, String> {
    Bson::try_from(toml_dates(v.clone())).map_err(|e| format!("not valid extended JSON: {e}"))
}

/// The TOML deserializer hands dates over as `{"$__toml_private_datetime": "…"}`.
fn toml_dates(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(o) => {
            if o.len() == 1
                && let Some(J::String(d)) = o.get("$__toml_private_datetime")
            {
                return serde_json::json!({ "$date": d });
            }
            J::Object(o.into_iter().map(|(k, v)| (k, toml_dates(v))).collect())
        }
        J::Array(a) => J::Array(a.into_iter().map(toml_dates).collect()),
        other => other,
    }
}

fn to_doc(v: &serde_json::Value, what: &str) -> Result<Document, String> {
    match json_to_bson(v).map_err(|e| format!("{what}: {e}"))? {
        Bson::Document(d) => Ok(d),
        other => Err(format!("{what} must be a table, not {other}")),
    }
}

fn opt_doc(v: &Option<serde_json::Value>, what: &str) -> Result<Document, String> {
    v.as_ref()
        .map(|v| to_doc(v, what))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A field path an operation may write: not empty, no empty segment, no `$`, not `_id`.
fn check_path(path: &str, what: &str) -> Result<(), String> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(format!("{what} `{path}` is not a field path"));
    }
    if path.starts_with('$') || path.contains(".$") {
        return Err(format!(
            "{what} `{path}`: a part starting with `$` (an operator such as `$[]`) is no field path"
        ));
    }
    if path == "_id" || path.starts_with("_id.") {
        return Err(format!("{what} `{path}`: `_id` cannot be changed"));
    }
    // `tags.1` is an array's element to an update and no path at all to an aggregation (a
    // copy read `[]`), and its inverse cannot tell which it was (adv22 F6, F7: never undone).
    if let Some(seg) = path
        .split('.')
        .skip(1)
        .find(|s| s.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{what} `{path}`: `{seg}` may be an array position (MongoDB reads it as an element of an array and as a key `{seg}` of an object alike, and the operation's inverse cannot tell which it met), so this operation could not be undone exactly; use a `transform` (its inverse puts whole documents back)"
        ));
    }
    Ok(())
}

/// What a command writes besides the collection it names first: the collections of its
/// aggregation stages' `$out` and `$merge` and of a mapReduce's `out`, and the databases one of
/// them names (`db`).
#[derive(Debug, Default)]
pub struct CommandOutputs {
    pub collections: Vec<String>,
    pub databases: Vec<String>,
}

/// Commands that act on the whole database or the server — the ledger's collections and other
/// databases included, past what the change names (adv28 R1, R2: `dropDatabase` dropped the
/// ledger, `applyOps` wrote anything anywhere). A change may not run them.
pub fn database_wide(command: &Document) -> Option<&str> {
    const WIDE: &[&str] = &[
        "dropDatabase",
        "applyOps",
        "doTxn",
        "bulkWrite",
        "dropAllUsersFromDatabase",
        "dropAllRolesFromDatabase",
        "copydb",
        "clone",
        "cloneCollection",
        "eval",
        "$eval",
        "shutdown",
        "fsync",
        "fsyncUnlock",
        "setParameter",
        "setFeatureCompatibilityVersion",
        "killAllSessions",
        "killAllSessionsByPattern",
        "killSessions",
        "killOp",
        "dropConnections",
        "replSetReconfig",
        "replSetStepDown",
        "logRotate",
        "setDefaultRWConcern",
        // The profiler and users and roles are the database's (adv30 T6).
        "profile",
        "createUser",
        "updateUser",
        "dropUser",
        "grantRolesToUser",
        "revokeRolesFromUser",
        "createRole",
        "updateRole",
        "dropRole",
        "grantPrivilegesToRole",
        "revokePrivilegesFromRole",
        "grantRolesToRole",
        "revokeRolesFromRole",
        "enableSharding",
        "shardCollection",
        "movePrimary",
    ];
    let (name, _) = command.iter().next()?;
    WIDE.iter()
        .find(|w| w.eq_ignore_ascii_case(name))
        .map(|_| name.as_str())
}

/// Commands that only read the collection they name first (an aggregation writes only through
/// `$out` / `$merge`, found apart): naming a ledger collection so is no write (adv27 N2).
pub fn reads_only_its_collection(command: &Document) -> bool {
    let Some((name, _)) = command.iter().next() else {
        return false;
    };
    let read_only = [
        "aggregate",
        "count",
        "distinct",
        "find",
        "listIndexes",
        "collStats",
        "dataSize",
        "explain",
    ];
    read_only.contains(&name.as_str())
        // validate repairs with `repair` / `fix`.
        || (name == "validate" && !command.contains_key("repair") && !command.contains_key("fix"))
}

pub fn command_outputs(command: &Document) -> CommandOutputs {
    fn target(v: &Bson, coll_key: &str, out: &mut CommandOutputs) {
        match v {
            Bson::String(s) => out.collections.push(s.clone()),
            Bson::Document(d) => {
                if let Ok(db) = d.get_str("db") {
                    out.databases.push(db.to_string());
                }
                for key in [coll_key, "replace", "merge", "reduce"] {
                    match d.get(key) {
                        Some(Bson::String(s)) => out.collections.push(s.clone()),
                        Some(inner @ Bson::Document(_)) => target(inner, "coll", out),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    fn walk(v: &Bson, out: &mut CommandOutputs) {
        match v {
            Bson::Document(d) => {
                for (k, v) in d {
                    match k.as_str() {
                        "$out" => target(v, "coll", out),
                        "$merge" => target(v, "into", out),
                        "out" => target(v, "coll", out),
                        // cloneCollectionAsCapped's copy (adv27 N3).
                        "toCollection" => target(v, "coll", out),
                        _ => walk(v, out),
                    }
                }
            }
            Bson::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = CommandOutputs::default();
    walk(&Bson::Document(command.clone()), &mut out);
    // renameCollection names namespaces: `db.collection`.
    if command.contains_key("renameCollection")
        && let Ok(to) = command.get_str("to")
        && let Some((db, coll)) = to.split_once('.')
    {
        out.databases.push(db.to_string());
        out.collections.push(coll.to_string());
    }
    // …and takes its collection away from the database it names.
    if let Ok(from) = command.get_str("renameCollection")
        && let Some((db, _)) = from.split_once('.')
    {
        out.databases.push(db.to_string());
    }
    out
}

/// Two field paths an operation moves a value between (`verb` it): each a path, neither
/// containing the other.
fn apart(from: &str, to: &str, verb: &str) -> Result<(), String> {
    check_path(from, "from")?;
    check_path(to, "to")?;
    if from == to || to.starts_with(&format!("{from}.")) || from.starts_with(&format!("{to}.")) {
        return Err(format!(
            "cannot {verb} `{from}` to `{to}`: one contains the other"
        ));
    }
    Ok(())
}

fn check_collection(c: &str) -> Result<(), String> {
    if c.is_empty() || c.contains('$') || c.starts_with("system.") {
        return Err(format!("`{c}` is not a collection a change may write"));
    }
    Ok(())
}

/// MongoDB's default index name: `field_1_other_-1`.
pub fn default_index_name(keys: &Document) -> String {
    keys.iter()
        .map(|(k, v)| match v {
            Bson::Int32(n) => format!("{k}_{n}"),
            Bson::Int64(n) => format!("{k}_{n}"),
            Bson::String(s) => format!("{k}_{s}"),
            other => format!("{k}_{other}"),
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// Where an `insert`'s `file` is read from: the disk beside the change file, or the seed texts a
/// ledger record kept (so `down` and `status` never depend on the file still being there).
enum Seeds<'a> {
    Disk(&'a Path),
    Recorded(&'a BTreeMap<String, String>),
    /// The disk, a missing file read as a stand-in and noted (see [`Change::unreadable`]).
    Lenient(&'a Path, std::cell::RefCell<Vec<String>>),
}

impl Seeds<'_> {
    fn read(&self, name: &str) -> Result<String, String> {
        match self {
            Seeds::Disk(dir) => {
                let rel = Path::new(name);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!(
                        "file `{name}` must be a path inside the changes directory (no `..`, not absolute)"
                    ));
                }
                let path = dir.join(rel);
                // A symbolic link on the way may lead out of the directory: where the file
                // really is must be inside it too (adv22 F9), as for the files stage.
                let real = path
                    .canonicalize()
                    .map_err(|e| format!("file {}: {e}", path.display()))?;
                let root = dir
                    .canonicalize()
                    .map_err(|e| format!("changes directory {}: {e}", dir.display()))?;
                if !real.starts_with(&root) {
                    return Err(format!(
                        "file `{name}` leads out of the changes directory (through a symbolic link, to {}): a change reads only files inside it",
                        real.display()
                    ));
                }
                if !real.is_file() {
                    // A named pipe would block the read for ever.
                    return Err(format!("file {}: not a regular file", path.display()));
                }
                let bytes =
                    std::fs::read(&path).map_err(|e| format!("file {}: {e}", path.display()))?;
                String::from_utf8(bytes)
                    .map_err(|e| format!("file {}: not UTF-8 ({e})", path.display()))
            }
            Seeds::Recorded(texts) => texts
                .get(name)
                .cloned()
                .ok_or_else(|| format!("file {name} is not in the ledger's record of the change")),
            Seeds::Lenient(dir, missing) => {
                let rel = Path::new(name);
                let inside = !rel.is_absolute()
                    && rel
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)));
                if inside
                    && std::fs::symlink_metadata(dir.join(rel))
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
                {
                    missing.borrow_mut().push(name.to_string());
                    // A stand-in document (the change is never applied from it: `up` refuses it).
                    return Ok("{\"_id\": \"(missing seed file)\"}".to_string());
                }
                Seeds::Disk(dir).read(name)
            }
        }
    }
}

/// The documents of a seed file's text (extended JSON: an array of documents, one document, or
/// one per line when the name ends in `.jsonl` / `.ndjson`).
fn seed_documents(name: &str, text: &str) -> Result<Vec<serde_json::Value>, String> {
    // A key given twice would keep only its last value, silently: refused, naming it.
    let no_duplicate = |part: &str, at: &str| -> Result<(), String> {
        if let Ok(parsed) = crate::transform::json::parse(part)
            && let Some(path) = parsed.duplicate
        {
            return Err(format!(
                "file {name}{at}: the key at `{}` is given twice in one object (JSON keeps only the last; write it once)",
                if path.is_empty() { "$" } else { path.as_str() }
            ));
        }
        Ok(())
    };
    if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                no_duplicate(l, &format!(" line {}", i + 1))?;
                serde_json::from_str(l).map_err(|e| format!("file {name} line {}: {e}", i + 1))
            })
            .collect()
    } else {
        no_duplicate(text, "")?;
        match serde_json::from_str(text).map_err(|e| format!("file {name}: {e}"))? {
            serde_json::Value::Array(a) => Ok(a),
            one => Ok(vec![one]),
        }
    }
}

fn compile_op(
    raw: &RawOp,
    seeds: &Seeds,
    read: &mut BTreeMap<String, String>,
) -> Result<Op, String> {
    Ok(match raw {
        RawOp::AddField {
            collection,
            field,
            default,
            filter,
        } => {
            check_collection(collection)?;
            check_path(field, "field")?;
            Op::AddField {
                collection: collection.clone(),
                field: field.clone(),
                default: json_to_bson(default).map_err(|e| format!("default: {e}"))?,
                filter: opt_doc(filter, "filter")?,
            }
        }
        RawOp::RemoveField {
            collection,
            field,
            filter,
        } => {
            check_collection(collection)?;
            check_path(field, "field")?;
            Op::RemoveField {
                collection: collection.clone(),
                field: field.clone(),
                filter: opt_doc(filter, "filter")?,
            }
        }
        RawOp::RenameField {
            collection,
            from,
            to,
            filter,
        } => {
            check_collection(collection)?;
            apart(from, to, "rename")?;
            Op::RenameField {
                collection: collection.clone(),
                from: from.clone(),
                to: to.clone(),
                filter: opt_doc(filter, "filter")?,
            }
        }
        RawOp::Set {
            collection,
            filter,
            fields,
        } => {
            check_collection(collection)?;
            let fields = to_doc(fields, "fields")?;
            if fields.is_empty() {
                return Err("fields is empty".into());
            }
            for k in fields.keys() {
                check_path(k, "field")?;
            }
            Op::Set {
                collection: collection.clone(),
                filter: to_doc(filter, "filter")?,
                fields,
            }
        }
        RawOp::Unset {
            collection,
            filter,
            fields,
        } => {
            check_collection(collection)?;
            if fields.is_empty() {
                return Err("fields is empty".into());
            }
            for k in fields {
                check_path(k, "field")?;
            }
            Op::Unset {
                collection: collection.clone(),
                filter: to_doc(filter, "filter")?,
                fields: fields.clone(),
            }
        }
        RawOp::CreateIndex {
            collection,
            keys,
            name,
            unique,
            partial_filter,
            expire_after_seconds,
            collation,
        } => {
            check_collection(collection)?;
            if keys.is_empty() {
                return Err("keys is empty".into());
            }
            let mut key_doc = Document::new();
            for k in keys {
                let (field, order) = match k.strip_prefix('-') {
                    Some(f) => (f, -1),
                    None => (k.as_str(), 1),
                };
                if field.is_empty() || field.starts_with('$') {
                    return Err(format!("key `{k}` is not a field path"));
                }
                key_doc.insert(field, order);
            }
            if let Some(s) = expire_after_seconds
                && *s < 0
            {
                return Err("expire_after_seconds must not be negative".into());
            }
            let name = name.clone().unwrap_or_else(|| default_index_name(&key_doc));
            Op::CreateIndex(IndexSpec {
                collection: collection.clone(),
                keys: key_doc,
                name,
                unique: *unique,
                partial_filter: partial_filter
                    .as_ref()
                    .map(|p| to_doc(p, "partial_filter"))
                    .transpose()?,
                expire_after_seconds: *expire_after_seconds,
                collation: match collation {
                    Some(c) => {
                        let c = to_doc(c, "collation")?;
                        if c.get_str("locale").is_err() {
                            return Err(
                                "collation needs a locale (e.g. { locale = \"en\", strength = 2 })"
                                    .into(),
                            );
                        }
                        Some(c)
                    }
                    None => None,
                },
            })
        }
        RawOp::DropIndex { collection, name } => {
            check_collection(collection)?;
            if name == "_id_" {
                return Err("the `_id_` index cannot be dropped".into());
            }
            Op::DropIndex {
                collection: collection.clone(),
                name: name.clone(),
            }
        }
        RawOp::Insert {
            collection,
            documents,
            file,
        } => {
            check_collection(collection)?;
            let from_file;
            let documents = match file {
                Some(_) if !documents.is_empty() => {
                    return Err("give documents or file, not both".into());
                }
                Some(name) => {
                    let text = seeds.read(name)?;
                    from_file = seed_documents(name, &text)?;
                    read.insert(name.clone(), text);
                    &from_file
                }
                None => documents,
            };
            if documents.is_empty() {
                return Err(match file {
                    Some(name) => format!("file {name} holds no documents"),
                    None => "documents is empty".into(),
                });
            }
            let mut docs = Vec::new();
            let mut ids = Vec::new();
            for (i, d) in documents.iter().enumerate() {
                let d = to_doc(d, &format!("document {}", i + 1))?;
                let Some(id) = d.get("_id") else {
                    return Err(format!(
                        "document {} has no `_id` (down deletes the inserted documents by _id)",
                        i + 1
                    ));
                };
                if ids.contains(id) {
                    return Err(format!("document {}: _id {id} appears twice", i + 1));
                }
                ids.push(id.clone());
                docs.push(d);
            }
            Op::Insert {
                collection: collection.clone(),
                documents: docs,
            }
        }
        RawOp::CopyField {
            collection,
            from,
            to,
            filter,
        } => {
            check_collection(collection)?;
            apart(from, to, "copy")?;
            Op::CopyField {
                collection: collection.clone(),
                from: from.clone(),
                to: to.clone(),
                filter: opt_doc(filter, "filter")?,
            }
        }
        RawOp::Transform {
            collection,
            filter,
            pipeline,
        } => {
            check_collection(collection)?;
            if pipeline.is_empty() {
                return Err("pipeline is empty".into());
            }
            let stages = pipeline
                .iter()
                .enumerate()
                .map(|(i, st)| update_stage(st, &format!("pipeline[{i}]")))
                .collect::<Result<Vec<_>, String>>()?;
            Op::Transform {
                collection: collection.clone(),
                filter: opt_doc(filter, "filter")?,
                pipeline: stages,
            }
        }
        RawOp::Archive {
            collection,
            to,
            filter,
        } => {
            check_collection(collection)?;
            check_collection(to)?;
            if collection == to {
                return Err(format!("cannot archive `{collection}` into itself"));
            }
            let filter = to_doc(filter, "filter")?;
            if filter.is_empty() {
                return Err(
                    "filter is empty: an archive names the documents it moves (e.g. { expiresAt = { \"$lt\" = { \"$date\" = \"…\" } } })".into(),
                );
            }
            Op::Archive {
                collection: collection.clone(),
                to: to.clone(),
                filter,
            }
        }
        RawOp::BulkUpdate {
            collection,
            updates,
        } => {
            check_collection(collection)?;
            if updates.is_empty() {
                return Err("updates is empty".into());
            }
            let mut out = Vec::new();
            for (i, u) in updates.iter().enumerate() {
                let what = format!("updates[{i}]");
                let serde_json::Value::Object(o) = u else {
                    return Err(format!("{what} must be a table with filter and update"));
                };
                if let Some(k) = o.keys().find(|k| *k != "filter" && *k != "update") {
                    return Err(format!("{what}: unknown key `{k}` (filter, update)"));
                }
                let filter = to_doc(
                    o.get("filter")
                        .ok_or_else(|| format!("{what}: filter is missing"))?,
                    &format!("{what}.filter"),
                )?;
                let update = update_spec(
                    o.get("update")
                        .ok_or_else(|| format!("{what}: update is missing"))?,
                    &format!("{what}.update"),
                )?;
                out.push((filter, update));
            }
            Op::BulkUpdate {
                collection: collection.clone(),
                updates: out,
            }
        }
        RawOp::RemoveDuplicates {
            collection,
            fields,
            keep,
            sort,
        } => {
            check_collection(collection)?;
            if fields.is_empty() {
                return Err("fields is empty".into());
            }
            for f in fields {
                check_path(f, "field")?;
            }
            let mut sort = opt_doc(sort, "sort")?;
            if !sort.contains_key("_id") {
                // A total order: the first of equal sort keys is the smallest _id.
                sort.insert("_id", 1);
            }
            Op::RemoveDuplicates {
                collection: collection.clone(),
                fields: fields.clone(),
                keep_last: *keep == Keep::Last,
                sort,
            }
        }
        RawOp::UpdateReferences {
            collection,
            field,
            from,
            to,
        } => {
            check_collection(collection)?;
            check_path(field, "field")?;
            let from = json_to_bson(from).map_err(|e| format!("from: {e}"))?;
            let to = json_to_bson(to).map_err(|e| format!("to: {e}"))?;
            if from == to {
                return Err("from and to are the same value".into());
            }
            Op::UpdateReferences {
                collection: collection.clone(),
                field: field.clone(),
                from,
                to,
            }
        }
        RawOp::CreateCollection {
            collection,
            validator,
            validation_level: level,
            validation_action: action,
        } => {
            check_collection(collection)?;
            let mut options = Document::new();
            if let Some(v) = validator {
                options.insert("validator", to_doc(v, "validator")?);
            }
            if let Some(l) = validation_level(level)? {
                options.insert("validationLevel", l);
            }
            if let Some(a) = validation_action(action)? {
                options.insert("validationAction", a);
            }
            Op::CreateCollection {
                collection: collection.clone(),
                options,
            }
        }
        RawOp::DropCollection { collection } => {
            check_collection(collection)?;
            Op::DropCollection {
                collection: collection.clone(),
            }
        }
        RawOp::SetValidator {
            collection,
            validator,
            validation_level: level,
            validation_action: action,
        } => {
            check_collection(collection)?;
            Op::SetValidator {
                collection: collection.clone(),
                validator: to_doc(validator, "validator")?,
                level: validation_level(level)?,
                action: validation_action(action)?,
            }
        }
        RawOp::CopyCollection { from, to, pipeline } => {
            check_collection(from)?;
            check_collection(to)?;
            if from == to {
                return Err(format!("cannot copy `{from}` into itself"));
            }
            let stages = pipeline
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    let d = to_doc(st, &format!("pipeline[{i}]"))?;
                    if d.keys().any(|k| k == "$out" || k == "$merge") {
                        return Err(format!(
                            "pipeline[{i}]: the copy writes `to` itself; leave $out and $merge out"
                        ));
                    }
                    Ok(d)
                })
                .collect::<Result<Vec<_>, String>>()?;
            Op::CopyCollection {
                from: from.clone(),
                to: to.clone(),
                pipeline: stages,
            }
        }
        RawOp::SanitizeStrings {
            collection,
            fields,
            filter,
            trim,
            lower,
            normalize,
        } => {
            check_collection(collection)?;
            if fields.is_empty() {
                return Err("fields is empty".into());
            }
            for f in fields {
                check_path(f, "field")?;
            }
            if !trim && !lower && normalize.is_none() {
                return Err(
                    "nothing to do: set trim = true, lower = true and/or normalize = \"NFC\" (NFD, NFKC, NFKD)"
                        .into(),
                );
            }
            Op::SanitizeStrings {
                collection: collection.clone(),
                filter: opt_doc(filter, "filter")?,
                fields: fields.clone(),
                clean: Sanitize {
                    trim: *trim,
                    lower: *lower,
                    normalize: *normalize,
                },
            }
        }
        RawOp::Command { command, down } => {
            let command = to_doc(command, "command")?;
            let down = down.as_ref().map(|d| to_doc(d, "down")).transpose()?;
            if command.is_empty() || down.as_ref().is_some_and(Document::is_empty) {
                return Err(
                    "command is empty: name the database command, e.g. { collMod = \"patients\", validationLevel = \"moderate\" }"
                        .into(),
                );
            }
            Op::Command { command, down }
        }
    })
}

/// The version a file name starts with (`0003_seed.toml` → 3).
fn version_of_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (v, rest) = name.split_once('_')?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || !rest.ends_with(".toml") {
        return None;
    }
    v.parse().ok()
}

/// How much text (the change's and its seed files') one change may hold: its ledger record, a
/// single BSON document of at most 16 MiB, holds it beside what each operation did.
const MAX_RECORDED_TEXT: usize = 12 * 1024 * 1024;

/// Parses one change from its text; `path` is where it was read (its name carries the version).
/// The path of the first float of `v` that is NaN or infinite, if any.
fn non_finite(v: &toml::Value, at: &str) -> Option<String> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(if at.is_empty() {
            "value".into()
        } else {
            at.to_string()
        }),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| non_finite(x, &join(&i.to_string()))),
        toml::Value::Table(t) => t.iter().find_map(|(k, x)| non_finite(x, &join(k))),
        _ => None,
    }
}

pub fn parse(path: &Path, source: &str) -> Result<Change, FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let strict = parse_with(path, source, &Seeds::Disk(dir));
    if strict.is_ok() {
        return strict;
    }
    // A seed file gone (after the change was applied, say): the change is listed all the same,
    // unreadable; any other fault is the file's.
    let lenient = Seeds::Lenient(dir, Default::default());
    match parse_with(path, source, &lenient) {
        Ok(mut c) => {
            let Seeds::Lenient(_, missing) = lenient else {
                return strict;
            };
            let missing = missing.into_inner();
            if missing.is_empty() {
                return strict;
            }
            c.unreadable = Some(format!(
                "its seed file {} is not in the changes directory",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            c.seeds.retain(|name, _| !missing.contains(name));
            c.checksum = checksum(format!("{}\0unreadable", c.checksum).as_bytes());
            Ok(c)
        }
        Err(_) => strict,
    }
}

/// A change as a ledger record holds it: its text and the seed files it read when applied.
pub fn parse_recorded(
    file: &str,
    source: &str,
    seeds: &BTreeMap<String, String>,
) -> Result<Change, FileError> {
    parse_with(Path::new(file), source, &Seeds::Recorded(seeds))
}

fn parse_with(path: &Path, source: &str, seeds: &Seeds) -> Result<Change, FileError> {
    let invalid = |message: String| FileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    // TOML's `nan` and `inf` have no JSON value: read into the operations' JSON they would
    // become null, written and matched as null (adv27 N1). Refused, pointing to extended JSON.
    if let Ok(value) = toml::from_str::<toml::Value>(source)
        && let Some(at) = non_finite(&value, "")
    {
        return Err(invalid(format!(
            "`{at}` is TOML's nan or inf, which a change cannot carry as it is (it would become null): write it as extended JSON, {{ \"$numberDouble\" = \"NaN\" }} (or \"Infinity\", \"-Infinity\")"
        )));
    }
    let raw: RawChange = toml::from_str(source).map_err(|e| invalid(e.to_string()))?;
    let version = match &raw.version {
        RawVersion::Number(n) if *n >= 0 => *n as u64,
        RawVersion::Text(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t
            .parse()
            .map_err(|_| invalid(format!("version `{t}` is too large")))?,
        _ => {
            return Err(invalid(
                "version must be a number (e.g. 20261201103000 or 3)".into(),
            ));
        }
    };
    match version_of_name(path) {
        Some(v) if v == version => {}
        Some(v) => {
            return Err(invalid(format!(
                "the file name says version {v}, the file says {version}"
            )));
        }
        None => {
            return Err(invalid(
                "the file name must be <version>_<slug>.toml, e.g. 20261201103000_add-avatar.toml"
                    .into(),
            ));
        }
    }
    if raw.name.trim().is_empty() {
        return Err(invalid("name is empty".into()));
    }
    let mut read = BTreeMap::new();
    let mut compile_all = |ops: &[Ordered], side: &str| -> Result<Vec<Op>, FileError> {
        ops.iter()
            .enumerate()
            .map(|(i, v)| {
                if super::appwrite::op::is_appwrite(&v.0) {
                    return super::appwrite::op::compile(&v.0)
                        .map(Op::Appwrite)
                        .map_err(|m| invalid(format!("{side} operation {}: {m}", i + 1)));
                }
                serde_json::from_value::<RawOp>(v.0.clone())
                    .map_err(|e| with_culprit(&v.0, &e.to_string()))
                    .and_then(|raw| compile_op(&raw, seeds, &mut read))
                    .map_err(|m| invalid(format!("{side} operation {}: {m}", i + 1)))
            })
            .collect()
    };
    let up = compile_all(&raw.up, "up")?;
    let down = raw
        .down
        .as_deref()
        .map(|ops| compile_all(ops, "down"))
        .transpose()?;
    if raw.transaction {
        let sides = [("up", Some(&up)), ("down", down.as_ref())];
        for (side, ops) in sides {
            for (i, op) in ops.into_iter().flatten().enumerate() {
                if !op.transactional() {
                    return Err(invalid(format!(
                        "{side} operation {} (`{}`) cannot run in a transaction: set `transaction = false` or move it into a change of its own",
                        i + 1,
                        op.kind()
                    )));
                }
            }
        }
    }
    // The change's record in the ledger holds its text and its seeds' (one document: 16 MiB).
    let recorded = source.len() + read.values().map(String::len).sum::<usize>();
    if recorded > MAX_RECORDED_TEXT {
        return Err(invalid(format!(
            "the change and its seed files hold {:.1} MiB of text; the ledger records a change's text with it, at most {} MiB: split the seed into several changes (each with a seed file of its own)",
            recorded as f64 / (1024.0 * 1024.0),
            MAX_RECORDED_TEXT / (1024 * 1024)
        )));
    }
    Ok(Change {
        version,
        name: raw.name,
        description: raw.description,
        author: raw.author,
        transaction: raw.transaction,
        up,
        down,
        path: path.to_path_buf(),
        // A change with seed files: its text and then theirs, in name order (a change without
        // keeps the checksum it had).
        checksum: {
            let mut bytes = source.as_bytes().to_vec();
            for text in read.values() {
                bytes.extend_from_slice(text.as_bytes());
            }
            checksum(&bytes)
        },
        source: source.to_string(),
        seeds: read,
        unreadable: None,
    })
}

/// `message` (why an operation's table does not deserialize) with the key it is about, when serde
/// does not say (an internally tagged enum loses the path): the key whose removal changes the
/// error is the one whose value is wrong — `keys`: invalid type: map, expected a sequence.
fn with_culprit(op: &serde_json::Value, message: &str) -> String {
    let Some(fields) = op.as_object() else {
        return message.to_string();
    };
    if !message.starts_with("invalid") {
        return message.to_string(); // unknown or missing fields are named already
    }
    for key in fields.keys().filter(|k| *k != "op") {
        let mut without = fields.clone();
        without.remove(key);
        let other = serde_json::from_value::<RawOp>(serde_json::Value::Object(without))
            .err()
            .map(|e| e.to_string());
        if other.as_deref() != Some(message) {
            return format!("`{key}`: {message}");
        }
    }
    message.to_string()
}

/// sha256 of a file's bytes, hex.
pub fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every change file of `dir`, which must exist: a directory that is not there (a wrong
/// `--dir`, a volume not mounted) is an error, not "no changes" (`up` would apply nothing and
/// say all is well).
pub fn load_existing_dir(dir: &Path) -> Result<Vec<Change>, FileError> {
    if !dir.is_dir() {
        return Err(FileError::Invalid {
            path: dir.to_path_buf(),
            message: "no such directory of change files: give it with --dir (or `changes_dir` in the pipeline file); `cutover changes new NAME` creates it with a first change".into(),
        });
    }
    load_dir(dir)
}

/// Every change file of `dir` (`*.toml`), in version order; none when the directory does not
/// exist.
pub fn load_dir(dir: &Path) -> Result<Vec<Change>, FileError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(cause) => {
            return Err(FileError::Read {
                path: dir.to_path_buf(),
                cause,
            });
        }
    };
    let mut paths = Vec::new();
    for e in entries {
        let e = e.map_err(|cause| FileError::Read {
            path: dir.to_path_buf(),
            cause,
        })?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    let mut by_version: BTreeMap<u64, Change> = BTreeMap::new();
    for p in paths {
        let source = std::fs::read_to_string(&p).map_err(|cause| FileError::Read {
            path: p.clone(),
            cause,
        })?;
        let c = parse(&p, &source)?;
        if let Some(first) = by_version.get(&c.version) {
            return Err(FileError::Duplicate {
                version: c.version,
                first: first.path.clone(),
                second: p,
            });
        }
        by_version.insert(c.version, c);
    }
    Ok(by_version.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("changes/{name}"))
    }

    #[test]
    fn parses_operations_in_order_with_extended_json() {
        let c = parse(
            &p("0002_seed.toml"),
            r#"
version = 2
name = "seed"
[[up]]
op = "insert"
collection = "templates"
documents = [{ _id = "t1", z = 1, a = { "$date" = "2026-01-01T00:00:00Z" }, m = 2026-01-02T00:00:00Z, n = { y = [{ q = 1, b = 2 }], c = 3 } }]
[[up]]
op = "create_index"
collection = "patients"
keys = ["lastName", "-createdAt"]
"#,
        )
        .unwrap();
        assert_eq!(c.version, 2);
        let Op::Insert { documents, .. } = &c.up[0] else {
            panic!("{:?}", c.up[0])
        };
        let keys: Vec<&str> = documents[0].keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "z", "a", "m", "n"], "key order is kept");
        assert!(matches!(documents[0].get("a"), Some(Bson::DateTime(_))));
        assert!(matches!(documents[0].get("m"), Some(Bson::DateTime(_))));
        assert_eq!(
            documents[0].get("n"),
            Some(&Bson::Document(doc! { "y": [{ "q": 1, "b": 2 }], "c": 3 })),
            "nested tables keep their order too"
        );
        let Op::CreateIndex(spec) = &c.up[1] else {
            panic!()
        };
        assert_eq!(spec.name, "lastName_1_createdAt_-1");
        assert!(c.reversible());
    }

    #[test]
    fn a_wrongly_typed_key_is_named() {
        // MongoDB's own index syntax where the file wants a list.
        let e = parse(
            &p("4_x.toml"),
            "version = 4\nname = \"x\"\n[[up]]\nop = \"create_index\"\ncollection = \"a\"\nkeys = { customerId = 1, placedAt = -1 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("up operation 1: `keys`: invalid type: map"),
            "{e}"
        );
    }

    #[test]
    fn refuses_non_transactional_operations_in_a_transaction_naming_them() {
        let e = parse(
            &p("3_x.toml"),
            "version = 3\nname = \"x\"\ntransaction = true\n[[up]]\nop = \"set\"\ncollection = \"a\"\nfilter = {}\nfields = { b = 1 }\n[[up]]\nop = \"create_index\"\ncollection = \"a\"\nkeys = [\"b\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("up operation 2 (`create_index`) cannot run in a transaction"),
            "{e}"
        );
    }

    #[test]
    fn a_command_without_down_makes_the_change_non_reversible() {
        let c = parse(
            &p("4_x.toml"),
            "version = 4\nname = \"x\"\n[[up]]\nop = \"command\"\ncommand = { collMod = \"a\" }\n",
        )
        .unwrap();
        assert!(!c.reversible());
        assert_eq!(c.irreversible_op().map(|(i, _)| i), Some(1));
        let with_down = format!(
            "{}[[down]]\nop = \"command\"\ncommand = {{ collMod = \"a\" }}\n",
            c.source
        )
        .replace("version = 4", "version = 4");
        assert!(parse(&p("4_x.toml"), &with_down).unwrap().reversible());
    }

    #[test]
    fn the_version_must_match_the_file_name_and_unknown_keys_are_refused() {
        let e = parse(&p("5_x.toml"), "version = 6\nname = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("file name says version 5"), "{e}");
        let e = parse(
            &p("5_x.toml"),
            "version = 5\nname = \"x\"\nauthr = \"me\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("authr"), "{e}");
        let e = parse(
            &p("5_x.toml"),
            "version = 5\nname = \"x\"\n[[up]]\nop = \"remove_field\"\ncollection = \"a\"\nfield = \"_id\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`_id` cannot be changed"), "{e}");
    }

    #[test]
    fn duplicate_versions_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("7_a.toml"), "version = 7\nname = \"a\"\n").unwrap();
        std::fs::write(dir.path().join("007_b.toml"), "version = 7\nname = \"b\"\n").unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("007_b.toml") && e.contains("7_a.toml"), "{e}");
    }

    /// The reference in pipelines/changes/README.md: every block parses, every operation is in it.
    #[test]
    fn the_readme_blocks_parse_and_show_every_operation() {
        let readme = include_str!("../../pipelines/changes/README.md");
        let mut kinds = std::collections::BTreeSet::new();
        let mut appwrite = std::collections::BTreeSet::new();
        let mut blocks = 0;
        for block in readme.split("```toml\n").skip(1) {
            let text = block.split("```").next().unwrap();
            let version = text
                .lines()
                .find_map(|l| l.strip_prefix("version = "))
                .expect("a version");
            let c = parse(&p(&format!("{version}_readme.toml")), text)
                .unwrap_or_else(|e| panic!("{e}"));
            kinds.extend(
                c.up.iter()
                    .filter(|op| !matches!(op, Op::Appwrite(_)))
                    .map(Op::kind),
            );
            appwrite.extend(c.up.iter().filter_map(|op| match op {
                Op::Appwrite(a) => Some(a.kind()),
                _ => None,
            }));
            blocks += 1;
        }
        assert_eq!(blocks, 3);
        assert_eq!(
            appwrite,
            [
                "add_column",
                "remove_column",
                "rename_column",
                "create_index",
                "drop_index",
                "create_table",
                "drop_table",
                "insert",
                "set",
                "unset",
                "update_references",
            ]
            .into_iter()
            .collect()
        );
        let all = [
            "add_field",
            "remove_field",
            "rename_field",
            "copy_field",
            "set",
            "unset",
            "transform",
            "archive",
            "bulk_update",
            "update_references",
            "remove_duplicates",
            "create_collection",
            "set_validator",
            "copy_collection",
            "drop_collection",
            "insert",
            "create_index",
            "drop_index",
            "sanitize_strings",
            "command",
        ];
        assert_eq!(kinds, all.into_iter().collect());
    }

    #[test]
    fn inserted_documents_need_an_id() {
        let e = parse(
            &p("8_x.toml"),
            "version = 8\nname = \"x\"\n[[up]]\nop = \"insert\"\ncollection = \"a\"\ndocuments = [{ b = 1 }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("has no `_id`"), "{e}");
    }
}
