//! Runs operations against a MongoDB database, inside a transaction's session or not, and their
//! inverses. Every operation that rewrites documents first copies the documents it will touch,
//! whole, into the change's backup collection (`{_id: {op, id}, doc}`), then updates exactly the
//! documents it copied; its inverse puts those documents back where the fields it changed still
//! hold what it wrote (documents changed there since are left alone, and counted). Memory stays
//! bounded: documents move in batches of [`BATCH`].

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::options::UpdateModifications;
use mongodb::{ClientSession, Database};

use super::file::{Op, Sanitize, UpdateSpec};

/// Documents per backup / update batch.
pub const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{}", crate::sink::mongodb::error_text(.0))]
    Mongo(mongodb::error::Error),
    #[error("{0}")]
    Refused(String),
    /// An inverse refused by its own checks before it wrote anything (a collection it would
    /// drop holds documents written since, an index name taken since): nothing of it was done.
    #[error("{0}")]
    RefusedBeforeWriting(String),
}

impl OpError {
    /// Whether it was refused before it wrote anything ([`OpError::RefusedBeforeWriting`]).
    pub fn wrote_nothing(&self) -> bool {
        matches!(self, OpError::RefusedBeforeWriting(_))
    }
}

/// Why an Appwrite operation does not run on MongoDB.
pub fn appwrite_only(a: &super::file::AwOp) -> OpError {
    OpError::Refused(format!(
        "`{}` on table {} is an Appwrite operation: run it with `--target appwrite`",
        a.kind(),
        a.table()
    ))
}

impl From<mongodb::error::Error> for OpError {
    fn from(e: mongodb::error::Error) -> OpError {
        OpError::Mongo(e)
    }
}

/// What one operation did (kept in the ledger: its inverse needs it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpOutcome {
    pub matched: u64,
    pub modified: u64,
    pub inserted: u64,
    pub deleted: u64,
    /// Documents copied into the backup before they were rewritten.
    pub backed_up: u64,
    /// The operation created its collection (its inverse drops it again once empty).
    pub created_collection: bool,
    /// The index a `drop_index` dropped, as `listIndexes` gave it.
    pub dropped_index: Option<Document>,
    /// What the inverse puts back of a collection's definition: its options and indexes
    /// (`drop_collection`), its validator, level and action (`set_validator`).
    pub before: Option<Document>,
    /// Documents an inverse left alone because they changed since.
    pub skipped: u64,
}

impl OpOutcome {
    pub fn to_doc(&self) -> Document {
        let mut d = doc! {
            "matched": self.matched as i64,
            "modified": self.modified as i64,
            "inserted": self.inserted as i64,
            "deleted": self.deleted as i64,
            "backed_up": self.backed_up as i64,
            "created_collection": self.created_collection,
        };
        if let Some(i) = &self.dropped_index {
            d.insert("dropped_index", i.clone());
        }
        if let Some(b) = &self.before {
            d.insert("before", b.clone());
        }
        d
    }

    pub fn from_doc(d: &Document) -> OpOutcome {
        let n = |k: &str| match d.get(k) {
            Some(Bson::Int64(n)) => *n as u64,
            Some(Bson::Int32(n)) => *n as u64,
            _ => 0,
        };
        OpOutcome {
            matched: n("matched"),
            modified: n("modified"),
            inserted: n("inserted"),
            deleted: n("deleted"),
            backed_up: n("backed_up"),
            created_collection: d.get_bool("created_collection").unwrap_or(false),
            dropped_index: d.get_document("dropped_index").ok().cloned(),
            before: d.get_document("before").ok().cloned(),
            skipped: 0,
        }
    }
}

/// What an operation would do, for `--dry-run`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Preview {
    pub op: String,
    pub collection: Option<String>,
    /// Documents the operation would touch.
    pub matching: u64,
    pub note: String,
    /// The operation would fail against the data as it is now.
    pub would_fail: bool,
    /// The fields whose values the operation writes (`None`: any, or whole documents), and
    /// those its judgement reads (`None`: any): a judgement stands when no earlier operation
    /// of the change writes what it reads (adv37 F3: a unique index over duplicate keys was
    /// "would apply" after a `set` of another field).
    #[serde(skip)]
    pub writes: Option<Vec<String>>,
    #[serde(skip)]
    pub reads: Option<Vec<String>>,
}

impl Preview {
    /// Whether `earlier` (an operation before this one on its collection) may change what this
    /// one's judgement read.
    fn affected_by(&self, earlier: &Preview) -> bool {
        let (Some(writes), Some(reads)) = (&earlier.writes, &self.reads) else {
            return true;
        };
        let overlaps = |a: &str, b: &str| {
            a == b || a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}."))
        };
        writes.iter().any(|w| reads.iter().any(|r| overlaps(w, r)))
    }

    /// What `op` writes and what its judgement reads (see [`Preview::writes`]).
    fn scope(mut self, op: &Op) -> Preview {
        self.writes = match op {
            Op::CreateIndex(_) | Op::DropIndex { .. } => Some(Vec::new()),
            Op::AddField { .. }
            | Op::RemoveField { .. }
            | Op::RenameField { .. }
            | Op::Set { .. }
            | Op::Unset { .. }
            | Op::CopyField { .. } => Some(touched(op).into_iter().map(str::to_string).collect()),
            _ => None,
        };
        self.reads = match op {
            Op::CreateIndex(spec) if spec.partial_filter.is_none() => {
                Some(spec.keys.keys().cloned().collect())
            }
            _ => None,
        };
        self
    }
}

/// The status a dry run gives a change from its operations' previews: `would fail` (and why)
/// when one would fail on a collection no earlier operation of the change works on (each is
/// previewed against the data as it is now, not after the operations before it), else
/// `would apply` (adv22 F11: a predicted failure was reported "would apply").
pub fn preview_status(preview: &mut [Preview]) -> (&'static str, Option<String>) {
    let mut first = None;
    for i in 0..preview.len() {
        let (before, rest) = preview.split_at_mut(i);
        let p = &mut rest[0];
        let same = |e: &&Preview| e.collection.is_some() && e.collection == p.collection;
        // A second create of one collection fails whatever came between.
        let recreated = p.op == "create_collection"
            && before
                .iter()
                .filter(same)
                .any(|e| e.op == "create_collection");
        let earlier = before.iter().filter(same).any(|e| p.affected_by(e));
        if p.would_fail && earlier && !recreated {
            // Judged against the data as it is now, before the operations ahead of it.
            p.would_fail = false;
            p.note.push_str(" (as the data is now: an earlier operation of the change works on it first, not judged)");
        } else if recreated && !p.would_fail {
            p.would_fail = true;
            p.note = format!(
                "{} is created by an earlier operation of the change: the change would fail",
                p.collection.as_deref().unwrap_or("-")
            );
        }
        if p.would_fail && first.is_none() {
            first = Some(i);
        }
    }
    if let Some(i) = first {
        let p = &preview[i];
        return (
            "would fail",
            Some(format!(
                "operation {} ({} {}): {}",
                i + 1,
                p.op,
                p.collection.as_deref().unwrap_or("-"),
                p.note
            )),
        );
    }
    ("would apply", None)
}

/// Runs `$action` with the session when there is one.
macro_rules! with_session {
    ($sess:expr, $action:expr) => {
        match $sess.as_mut() {
            Some(s) => $action.session(&mut **s).await,
            None => $action.await,
        }
    };
}

/// Every document `$action` (a find or an aggregate) yields, read with the session when there
/// is one.
macro_rules! collect_all {
    ($sess:expr, $action:expr) => {
        match $sess.as_mut() {
            Some(s) => {
                let mut cur = $action.session(&mut **s).await?;
                let mut out: Vec<Document> = Vec::new();
                while let Some(d) = cur.next(s).await.transpose()? {
                    out.push(d);
                }
                out
            }
            None => $action.await?.try_collect::<Vec<Document>>().await?,
        }
    };
}

/// The database a change writes, and its backup collection.
pub struct Exec<'a> {
    pub db: &'a Database,
    pub backup: &'a str,
    /// Where the operation says how far it is (a spinner, a server's status).
    pub activity: Option<&'a crate::monitor::Activity>,
    /// The lock this work runs under: checked between batches, so that a process that lost it
    /// (released by an operator, or expired) stops writing.
    pub fence: Option<&'a crate::ledger::lock::Fence>,
}

fn and(a: &Document, b: Document) -> Document {
    if a.is_empty() {
        b
    } else {
        doc! { "$and": [a.clone(), b] }
    }
}

fn exists(field: &str, yes: bool) -> Document {
    doc! { field: { "$exists": yes } }
}

/// The documents a rewriting operation touches, and the update it applies to them.
fn rewrite_of(op: &Op) -> Option<(&str, Document, UpdateModifications)> {
    let (collection, filter, update) = match op {
        Op::CopyField {
            collection,
            from,
            to,
            filter,
        } => {
            let touched = and(
                filter,
                doc! { "$and": [exists(from, true), exists(to, false)] },
            );
            let set = doc! { "$set": { to: format!("${from}") } };
            return Some((
                collection,
                touched,
                UpdateModifications::Pipeline(vec![set]),
            ));
        }
        Op::Transform {
            collection,
            filter,
            pipeline,
        } => {
            return Some((
                collection,
                filter.clone(),
                UpdateModifications::Pipeline(pipeline.clone()),
            ));
        }
        Op::UpdateReferences {
            collection,
            field,
            from,
            to,
        } => {
            let lit = |v: &Bson| doc! { "$literal": v.clone() };
            let here = format!("${field}");
            let replaced = doc! {
                "$cond": [
                    { "$isArray": &here },
                    { "$map": { "input": &here, "in": {
                        "$cond": [{ "$eq": ["$$this", lit(from)] }, lit(to), "$$this"]
                    } } },
                    lit(to),
                ]
            };
            return Some((
                collection,
                doc! { field: from.clone() },
                UpdateModifications::Pipeline(vec![doc! { "$set": { field: replaced } }]),
            ));
        }
        other => update_of(other)?,
    };
    Some((collection, filter, UpdateModifications::Document(update)))
}

/// The operations whose update is an update document.
fn update_of(op: &Op) -> Option<(&str, Document, Document)> {
    Some(match op {
        Op::AddField {
            collection,
            field,
            default,
            filter,
        } => (
            collection,
            and(filter, exists(field, false)),
            doc! { "$set": { field: default.clone() } },
        ),
        Op::RemoveField {
            collection,
            field,
            filter,
        } => (
            collection,
            and(filter, exists(field, true)),
            doc! { "$unset": { field: "" } },
        ),
        Op::RenameField {
            collection,
            from,
            to,
            filter,
        } => (
            collection,
            and(filter, exists(from, true)),
            doc! { "$rename": { from: to } },
        ),
        Op::Set {
            collection,
            filter,
            fields,
        } => (collection, filter.clone(), doc! { "$set": fields.clone() }),
        Op::Unset {
            collection,
            filter,
            fields,
        } => {
            let any: Vec<Bson> = fields.iter().map(|f| exists(f, true).into()).collect();
            let mut unset = Document::new();
            for f in fields {
                unset.insert(f, "");
            }
            (
                collection,
                and(filter, doc! { "$or": any }),
                doc! { "$unset": unset },
            )
        }
        _ => return None,
    })
}

/// The value at a dotted path of a document.
fn get_path<'d>(d: &'d Document, path: &str) -> Option<&'d Bson> {
    let mut cur = d;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        let v = cur.get(p)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        cur = v.as_document()?;
    }
    None
}

/// Cleans the strings at a dotted path of `d` in place (through arrays: every element, and every
/// string of an array at the end of the path); whether anything changed.
fn sanitize_path(d: &mut Document, path: &str, clean: &Sanitize) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    d.get_mut(head)
        .is_some_and(|v| sanitize_value(v, rest, clean))
}

fn sanitize_value(v: &mut Bson, rest: Option<&str>, clean: &Sanitize) -> bool {
    match (v, rest) {
        (Bson::String(s), None) => match clean.apply(s) {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        },
        (Bson::Document(d), Some(r)) => sanitize_path(d, r, clean),
        (Bson::Array(items), rest) => {
            let mut changed = false;
            for item in items {
                changed |= sanitize_value(item, rest, clean);
            }
            changed
        }
        _ => false,
    }
}

/// Documents whose image and restored form together exceed this are matched by `_id` alone
/// when put back (checked byte for byte just before).
const STILL_LIMIT: usize = 12 * 1024 * 1024;

/// The paths a field operation writes (what its inverse puts back).
fn touched(op: &Op) -> Vec<&str> {
    match op {
        Op::AddField { field, .. } | Op::RemoveField { field, .. } => vec![field],
        Op::RenameField { from, to, .. } => vec![from, to],
        Op::Set { fields, .. } => fields.keys().map(String::as_str).collect(),
        Op::Unset { fields, .. } => fields.iter().map(String::as_str).collect(),
        Op::CopyField { to, .. } => vec![to],
        _ => Vec::new(),
    }
}

/// Whether the fields a field operation wrote still hold exactly what it wrote into `original`
/// (same type, same value: an array holding it, or 1.0 for 1, is a change).
fn still_written(op: &Op, original: &Document, current: &Document) -> bool {
    let same = |a: Option<&Bson>, b: Option<&Bson>| match (a, b) {
        (Some(a), Some(b)) => same_value(a, b),
        (None, None) => true,
        _ => false,
    };
    match op {
        Op::AddField { field, default, .. } => same(get_path(current, field), Some(default)),
        Op::RemoveField { field, .. } => get_path(current, field).is_none(),
        Op::RenameField { from, to, .. } => {
            get_path(current, from).is_none()
                && same(get_path(current, to), get_path(original, from))
        }
        Op::Set { fields, .. } => fields
            .iter()
            .all(|(k, v)| same(get_path(current, k), Some(v))),
        Op::Unset { fields, .. } => fields.iter().all(|f| get_path(current, f).is_none()),
        Op::CopyField { from, to, .. } => {
            get_path(original, from).is_some()
                && same(get_path(current, to), get_path(original, from))
        }
        _ => false,
    }
}

/// Whether two values are the same BSON, byte for byte: their types, field order, and a NaN's
/// bits included (`==` on doubles holds a NaN unequal to itself, the adv22 F1: a document
/// holding one was never put back).
pub(crate) fn same_value(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => same_doc(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (a, b) => a == b,
    }
}

/// [`same_value`] of two documents: the same fields in the same order, each the same value.
pub(crate) fn same_doc(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
}

/// Whether a dotted path passes through a value that is not a document (an array) in `d`.
fn crosses_non_document(d: &Document, path: &str) -> bool {
    match path.split_once('.') {
        None => false,
        Some((head, rest)) => match d.get(head) {
            None => false,
            Some(Bson::Document(inner)) => crosses_non_document(inner, rest),
            Some(_) => true,
        },
    }
}

/// Sets a dotted path (creating documents on the way).
fn set_path(d: &mut Document, path: &str, v: Bson) {
    match path.split_once('.') {
        None => {
            d.insert(path, v);
        }
        Some((head, rest)) => {
            if !matches!(d.get(head), Some(Bson::Document(_))) {
                d.insert(head, Document::new());
            }
            if let Some(Bson::Document(inner)) = d.get_mut(head) {
                set_path(inner, rest, v);
            }
        }
    }
}

/// Removes a dotted path; a document left empty on the way goes too where `original` has none
/// there.
fn remove_path(d: &mut Document, path: &str, original: &Document) {
    match path.split_once('.') {
        None => {
            d.remove(path);
        }
        Some((head, rest)) => {
            let empty = match d.get_mut(head) {
                Some(Bson::Document(inner)) => {
                    let orig_inner = original.get_document(head).ok();
                    remove_path(inner, rest, orig_inner.unwrap_or(&Document::new()));
                    inner.is_empty() && orig_inner.is_none()
                }
                _ => false,
            };
            if empty {
                d.remove(head);
            }
        }
    }
}

/// The same fields with the same values, in any order (documents inside compared the same way).
fn same_content(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, v)| match (v, b.get(k)) {
            (Bson::Document(x), Some(Bson::Document(y))) => same_content(x, y),
            (x, Some(y)) => same_value(x, y),
            (_, None) => false,
        })
}

/// Operations whose inverse puts a document back only where it is still exactly the image the
/// operation left (what they write depends on each document).
/// Now, in milliseconds since the epoch.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn image_guarded(op: &Op) -> bool {
    matches!(
        op,
        Op::Transform { .. }
            | Op::BulkUpdate { .. }
            | Op::UpdateReferences { .. }
            | Op::SanitizeStrings { .. }
    )
}

fn modifications(u: &UpdateSpec) -> UpdateModifications {
    match u {
        UpdateSpec::Document(d) => UpdateModifications::Document(d.clone()),
        UpdateSpec::Pipeline(p) => UpdateModifications::Pipeline(p.clone()),
    }
}

/// The documents `restore_all` and `remove_duplicates` take out of a collection: its backup
/// holds them whole, and the inverse inserts each where its `_id` is free.
fn deletes_documents(op: &Op) -> Option<&str> {
    match op {
        Op::RemoveDuplicates { collection, .. } => Some(collection),
        _ => None,
    }
}

/// An `_id` as a map key: its canonical extended JSON.
fn id_key(id: &Bson) -> String {
    id.clone().into_canonical_extjson().to_string()
}

/// The condition that a document is still exactly `image` (field order included; the image is
/// a literal, never read as an expression).
/// The `u` of an update statement that puts `image` in place of a document: the document
/// itself, or — when a field name of it starts with `$`, which a replacement document may not
/// hold (MongoDB stores such documents since 5.0) — a pipeline replacing the root with it as a
/// literal (adv40 F1: the down of such documents failed, the change stuck `down-failed`).
fn replacement(image: Document) -> Bson {
    fn dollar(d: &Document) -> bool {
        d.iter().any(|(k, v)| {
            k.starts_with('$')
                || match v {
                    Bson::Document(inner) => dollar(inner),
                    Bson::Array(items) => items
                        .iter()
                        .any(|i| matches!(i, Bson::Document(inner) if dollar(inner))),
                    _ => false,
                }
        })
    }
    if dollar(&image) {
        Bson::Array(vec![Bson::Document(
            doc! { "$replaceWith": { "$literal": image } },
        )])
    } else {
        Bson::Document(image)
    }
}

fn still(image: &Document) -> Document {
    doc! { "$expr": { "$eq": ["$$ROOT", { "$literal": image.clone() }] } }
}

/// Statements of one write command each: at most [`STATEMENTS`] and about [`COMMAND_BYTES`]
/// (a command holds 16 MiB; a statement bigger than that alone is sent alone, and refused).
fn by_size(statements: Vec<Document>) -> Vec<Vec<Document>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for s in statements {
        let n = bson::to_vec(&s).map(|v| v.len()).unwrap_or(0);
        if !chunk.is_empty() && (chunk.len() >= STATEMENTS || bytes + n > COMMAND_BYTES) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += n;
        chunk.push(s);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// Statements per `update` / `delete` command of an inverse.
const STATEMENTS: usize = 1000;
/// About how many bytes of statements one command carries.
const COMMAND_BYTES: usize = 8 * 1024 * 1024;

fn count(reply: &Document, key: &str) -> u64 {
    match reply.get(key) {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        _ => 0,
    }
}

/// The first write error of a write command's reply (run as a command, its errors are in the
/// reply, not an `Err`).
fn write_errors(reply: &Document) -> Result<(), OpError> {
    if let Ok(errors) = reply.get_array("writeErrors")
        && let Some(e) = errors.first().and_then(Bson::as_document)
    {
        return Err(OpError::Refused(format!(
            "{} of the statements failed, the first: {}",
            errors.len(),
            e.get_str("errmsg").unwrap_or("?")
        )));
    }
    if let Ok(e) = reply.get_document("writeConcernError") {
        return Err(OpError::Refused(format!(
            "write concern: {}",
            e.get_str("errmsg").unwrap_or("?")
        )));
    }
    Ok(())
}

impl Exec<'_> {
    fn tick_backed_up(&self, n: usize) {
        if let Some(a) = self.activity {
            a.backed_up(n as u64);
        }
    }

    /// Says which operation is under way (`up` or `down`).
    /// Refuses to go on once the lock is lost.
    async fn fenced(&self) -> Result<(), OpError> {
        match self.fence {
            Some(f) => f
                .check()
                .await
                .map_err(|e| OpError::Refused(format!("{e}: stopped writing"))),
            None => Ok(()),
        }
    }

    fn begin(&self, side: &str, op: &Op, index: usize) {
        if let Some(a) = self.activity {
            let on = op.collections().map(|c| c.join(" → ")).unwrap_or_default();
            a.begin(format!("{side} operation {} {} {on}", index + 1, op.kind()));
        }
    }

    fn coll(&self, name: &str) -> mongodb::Collection<Document> {
        self.db.collection(name)
    }

    /// Whether a collection exists (not inside a transaction: `listCollections` is not allowed
    /// there).
    pub async fn collection_exists(&self, name: &str) -> Result<bool, OpError> {
        Ok(self
            .db
            .list_collection_names()
            .filter(doc! { "name": name })
            .await?
            .iter()
            .any(|n| n == name))
    }

    async fn index_of(&self, collection: &str, name: &str) -> Result<Option<Document>, OpError> {
        if !self.collection_exists(collection).await? {
            return Ok(None);
        }
        let reply = self
            .db
            .run_command(doc! { "listIndexes": collection })
            .await?;
        let first = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .cloned()
            .unwrap_or_default();
        Ok(first
            .into_iter()
            .filter_map(|b| b.as_document().cloned())
            .find(|d| d.get_str("name") == Ok(name)))
    }

    /// Copies the documents matching `filter` into the backup as op `op`'s; returns how many.
    /// The next page of the documents operation `op` backed up whole, after `after` (moved past
    /// them); `None` after the last.
    async fn next_originals(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: usize,
        after: &mut Option<Bson>,
    ) -> Result<Option<Vec<Document>>, OpError> {
        let batch = self.backed_up(sess, op, after.clone()).await?;
        let Some(last) = batch.last() else {
            return Ok(None);
        };
        *after = last.get("_id").cloned();
        Ok(Some(
            batch
                .iter()
                .filter_map(|b| b.get_document("doc").ok().cloned())
                .collect(),
        ))
    }

    /// Inserts the documents operation `op` backed up whole (deleted by it) where their `_id`
    /// is free, counting them in `done` (those whose `_id` is taken since are skipped).
    async fn insert_backed_up(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: usize,
        collection: &str,
        done: &mut OpOutcome,
    ) -> Result<(), OpError> {
        let mut after = None;
        while let Some(originals) = self.next_originals(sess, op, &mut after).await? {
            done.matched += originals.len() as u64;
            // One there as it was backed up (put back by an earlier attempt; or expired by a
            // TTL index the monitor has not reached yet: adv40 F4) has nothing to undo — not a
            // document changed since.
            let ids: Vec<Bson> = originals
                .iter()
                .filter_map(|d| d.get("_id").cloned())
                .collect();
            let present = self.by_id(sess, collection, &ids).await?;
            let missing: Vec<Document> = originals
                .into_iter()
                .filter(|d| {
                    let key = d.get("_id").map(id_key).unwrap_or_default();
                    match present.get(&key) {
                        Some(now) if same_doc(now, d) => false,
                        Some(_) => {
                            done.skipped += 1;
                            false
                        }
                        None => true,
                    }
                })
                .collect();
            let n = missing.len() as u64;
            let inserted = self.insert_where_free(sess, collection, missing).await?;
            done.inserted += inserted;
            done.skipped += n - inserted;
        }
        Ok(())
    }

    async fn back_up(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        filter: Document,
        op: usize,
    ) -> Result<u64, OpError> {
        let backup = self.coll(self.backup);
        let wrap = |d: Document| {
            let id = d.get("_id").cloned().unwrap_or(Bson::Null);
            doc! { "_id": { "op": op as i64, "id": id }, "doc": d }
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut n = 0u64;
        match sess.as_mut() {
            Some(s) => {
                let mut cur = self.coll(collection).find(filter).session(&mut **s).await?;
                while let Some(d) = cur.next(s).await.transpose()? {
                    batch.push(wrap(d));
                    if batch.len() >= BATCH {
                        n += batch.len() as u64;
                        self.tick_backed_up(batch.len());
                        backup
                            .insert_many(std::mem::take(&mut batch))
                            .session(&mut **s)
                            .await?;
                    }
                }
            }
            None => {
                let mut cur = self.coll(collection).find(filter).await?;
                while let Some(d) = cur.try_next().await? {
                    batch.push(wrap(d));
                    if batch.len() >= BATCH {
                        n += batch.len() as u64;
                        self.tick_backed_up(batch.len());
                        backup.insert_many(std::mem::take(&mut batch)).await?;
                    }
                }
            }
        }
        if !batch.is_empty() {
            n += batch.len() as u64;
            self.tick_backed_up(batch.len());
            with_session!(sess, backup.insert_many(batch))?;
        }
        Ok(n)
    }

    /// The backed-up documents of op `op`, a batch at a time (`skip` past those already read).
    async fn backed_up(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: usize,
        after: Option<Bson>,
    ) -> Result<Vec<Document>, OpError> {
        let mut filter = doc! { "_id.op": op as i64 };
        if let Some(a) = after {
            filter.insert("_id", doc! { "$gt": a });
        }
        let backup = self.coll(self.backup);
        let find = backup
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(BATCH as i64);
        if let Some(f) = self.fence {
            f.check_if_stale(std::time::Duration::from_secs(2))
                .await
                .map_err(|e| OpError::Refused(format!("{e}: stopped writing")))?;
        }
        let batch: Vec<Document> = collect_all!(sess, find);
        if let Some(a) = self.activity {
            a.done(batch.len() as u64);
        }
        Ok(batch)
    }

    /// Keeps, in the backup beside the documents of op `op` among `ids`, what each is now (its
    /// image, `{_id: {img: op, id}, image}`): the inverse of a transform puts the original back
    /// only where the document is still that.
    async fn record_images(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        op: usize,
        ids: Vec<Bson>,
    ) -> Result<(), OpError> {
        let coll = self.coll(collection);
        let find = coll.find(doc! { "_id": { "$in": ids } });
        let now: Vec<Document> = collect_all!(sess, find);
        if now.is_empty() {
            return Ok(());
        }
        let images: Vec<Document> = now
            .into_iter()
            .map(|d| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                doc! { "_id": { "img": op as i64, "id": id }, "image": d }
            })
            .collect();
        with_session!(sess, self.coll(self.backup).insert_many(images))?;
        Ok(())
    }

    /// The images [`Self::record_images`] kept of op `op`'s documents `ids`, by their `_id`'s
    /// canonical extended JSON.
    async fn images_of(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: usize,
        ids: Vec<Bson>,
    ) -> Result<std::collections::HashMap<String, Document>, OpError> {
        let keys: Vec<Bson> = ids
            .into_iter()
            .map(|id| Bson::Document(doc! { "img": op as i64, "id": id }))
            .collect();
        let backup = self.coll(self.backup);
        let find = backup.find(doc! { "_id": { "$in": keys } });
        let found: Vec<Document> = collect_all!(sess, find);
        Ok(found
            .into_iter()
            .filter_map(|d| {
                let id = d.get_document("_id").ok()?.get("id")?.clone();
                let image = d.get_document("image").ok()?.clone();
                Some((id_key(&id), image))
            })
            .collect())
    }

    /// Why `op` cannot work on a dotted path through an array (of documents) that documents it
    /// would touch hold, if it cannot: `copy_field` (its inverse could not tell what it wrote:
    /// adv27 N4) and the field operations — `$unset` and `$rename` go through no array (adv37
    /// F1: `remove_field` of `guardians.phone` was "applied" and removed nothing), `$set` fails
    /// on one. The walk ends at a part naming a position or an operator (`0`, `$[]`: refused
    /// when the file is read, or the server's).
    async fn array_refusal(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: &Op,
    ) -> Result<Option<String>, OpError> {
        let paths: Vec<&str> = match op {
            Op::CopyField { from, to, .. } | Op::RenameField { from, to, .. } => vec![from, to],
            Op::AddField { field, .. } | Op::RemoveField { field, .. } => vec![field],
            Op::Set { fields, .. } => fields.keys().map(String::as_str).collect(),
            Op::Unset { fields, .. } => fields.iter().map(String::as_str).collect(),
            _ => return Ok(None),
        };
        let Some((collection, filter, _)) = rewrite_of(op) else {
            return Ok(None);
        };
        for path in paths {
            let parts: Vec<&str> = path.split('.').collect();
            for end in 1..parts.len() {
                let next = parts[end];
                if next.starts_with('$') || next.bytes().all(|b| b.is_ascii_digit()) {
                    break;
                }
                let prefix = parts[..end].join(".");
                let through = and(&filter, doc! { &prefix: { "$type": "array" } });
                let n = with_session!(sess, self.coll(collection).count_documents(through))?;
                if n > 0 {
                    let why = if matches!(op, Op::CopyField { .. }) {
                        "its inverse could not tell what it wrote"
                    } else {
                        "MongoDB's update goes through no array"
                    };
                    return Ok(Some(format!(
                        "{} cannot go through the array `{prefix}` ({n} documents hold one there at `{path}`): {why}; use a transform with $map for arrays of documents",
                        op.kind()
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Checks an operation before it writes anything and keeps in `out` what its inverse needs
    /// (the index it drops, the collection options or validator it replaces, whether it creates
    /// its collection). Reads only: a refusal here leaves nothing to undo. Its caller records
    /// `out` in the ledger before [`Self::run`] writes, so the inverse is known even when the
    /// process dies half way through.
    pub async fn prepare(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: &Op,
        out: &mut OpOutcome,
    ) -> Result<(), OpError> {
        if let Op::Appwrite(a) = op {
            return Err(appwrite_only(a));
        }
        // A dotted path through an array of documents: the update pipeline would set the
        // whole path in every element (three elements become three copies of one array).
        if let Op::UpdateReferences {
            collection,
            field,
            from,
            ..
        } = op
        {
            let mut prefix = String::new();
            for part in field.split('.').take(field.split('.').count() - 1) {
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(part);
                let filter = doc! { field: from.clone(), &prefix: { "$type": "array" } };
                let n = with_session!(sess, self.coll(collection).count_documents(filter))?;
                if n > 0 {
                    return Err(OpError::Refused(format!(
                        "update_references cannot follow `{field}` through the array `{prefix}` ({n} documents hold one there): use a transform with $map for arrays of documents"
                    )));
                }
            }
        }
        if let Some(why) = self.array_refusal(sess, op).await? {
            return Err(OpError::Refused(why));
        }
        match op {
            Op::RenameField {
                collection,
                from,
                to,
                ..
            } => {
                let Some((_, filter, _)) = rewrite_of(op) else {
                    return Ok(());
                };
                let clash = and(&filter, exists(to, true));
                let n = with_session!(sess, self.coll(collection).count_documents(clash))?;
                if n > 0 {
                    return Err(OpError::Refused(format!(
                        "{n} documents of {collection} have both `{from}` and `{to}`: renaming would overwrite `{to}`"
                    )));
                }
            }
            Op::Insert {
                collection,
                documents,
            } => {
                let ids: Vec<Bson> = documents
                    .iter()
                    .filter_map(|d| d.get("_id"))
                    .cloned()
                    .collect();
                let there = with_session!(
                    sess,
                    self.coll(collection)
                        .count_documents(doc! { "_id": { "$in": ids } })
                )?;
                if there > 0 {
                    return Err(OpError::Refused(format!(
                        "{there} of the documents to insert are in {collection} already (same _id)"
                    )));
                }
            }
            Op::CreateIndex(spec) => {
                if self.index_of(&spec.collection, &spec.name).await?.is_some() {
                    return Err(OpError::Refused(format!(
                        "{} has an index named {} already",
                        spec.collection, spec.name
                    )));
                }
                out.created_collection = !self.collection_exists(&spec.collection).await?;
            }
            Op::DropIndex { collection, name } => {
                let Some(index) = self.index_of(collection, name).await? else {
                    return Err(OpError::Refused(format!(
                        "{collection} has no index named {name}"
                    )));
                };
                out.dropped_index = Some(index);
            }
            Op::CreateCollection { collection, .. } => {
                if self.collection_exists(collection).await? {
                    return Err(OpError::Refused(format!("{collection} exists already")));
                }
                out.created_collection = true;
            }
            Op::DropCollection { collection } => {
                let Some(options) = self.collection_options(collection).await? else {
                    return Err(OpError::Refused(format!("{collection} does not exist")));
                };
                let indexes: Vec<Bson> = self
                    .indexes_of(collection)
                    .await?
                    .into_iter()
                    .filter(|i| i.get_str("name") != Ok("_id_"))
                    .map(Bson::Document)
                    .collect();
                out.before = Some(doc! { "options": options, "indexes": indexes });
            }
            Op::SetValidator { collection, .. } => {
                let Some(options) = self.collection_options(collection).await? else {
                    return Err(OpError::Refused(format!("{collection} does not exist")));
                };
                let mut before = Document::new();
                for k in ["validator", "validationLevel", "validationAction"] {
                    if let Some(v) = options.get(k) {
                        before.insert(k, v.clone());
                    }
                }
                out.before = Some(before);
            }
            Op::CopyCollection { to, .. } => {
                if self.collection_exists(to).await? {
                    return Err(OpError::Refused(format!("{to} exists already")));
                }
                out.created_collection = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs an up operation (number `index` of its change), [`Self::prepare`]d into `out`.
    pub async fn run(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: &Op,
        index: usize,
        out: &mut OpOutcome,
    ) -> Result<(), OpError> {
        self.begin("up", op, index);
        self.fenced().await?;
        if let Some((collection, filter, update)) = rewrite_of(op) {
            out.backed_up = self
                .back_up(sess, collection, filter.clone(), index)
                .await?;
            let mut after = None;
            loop {
                let batch = self.backed_up(sess, index, after.clone()).await?;
                let Some(last) = batch.last() else { break };
                after = last.get("_id").cloned();
                let ids: Vec<Bson> = batch
                    .iter()
                    .filter_map(|b| b.get_document("_id").ok()?.get("id").cloned())
                    .collect();
                let these = and(&filter, doc! { "_id": { "$in": ids.clone() } });
                let r = with_session!(
                    sess,
                    self.coll(collection).update_many(these, update.clone())
                )?;
                out.matched += r.matched_count;
                out.modified += r.modified_count;
                if image_guarded(op) {
                    self.record_images(sess, collection, index, ids).await?;
                }
            }
            return Ok(());
        }
        if let Op::BulkUpdate {
            collection,
            updates,
        } = op
        {
            let any: Vec<Bson> = updates.iter().map(|(f, _)| f.clone().into()).collect();
            out.backed_up = self
                .back_up(sess, collection, doc! { "$or": any }, index)
                .await?;
            let mut after = None;
            loop {
                let batch = self.backed_up(sess, index, after.clone()).await?;
                let Some(last) = batch.last() else { break };
                after = last.get("_id").cloned();
                let ids: Vec<Bson> = batch
                    .iter()
                    .filter_map(|b| b.get_document("_id").ok()?.get("id").cloned())
                    .collect();
                for (filter, update) in updates {
                    let these = and(filter, doc! { "_id": { "$in": ids.clone() } });
                    let r = with_session!(
                        sess,
                        self.coll(collection)
                            .update_many(these, modifications(update))
                    )?;
                    out.matched += r.matched_count;
                    out.modified += r.modified_count;
                }
                self.record_images(sess, collection, index, ids).await?;
            }
            return Ok(());
        }
        if let Op::SanitizeStrings {
            collection,
            filter,
            fields,
            clean,
        } = op
        {
            let strings: Vec<Bson> = fields
                .iter()
                .map(|f| doc! { f: { "$type": "string" } }.into())
                .collect();
            let touched = and(filter, doc! { "$or": strings });
            out.backed_up = self.back_up(sess, collection, touched, index).await?;
            let mut after = None;
            loop {
                let batch = self.backed_up(sess, index, after.clone()).await?;
                let Some(last) = batch.last() else { break };
                after = last.get("_id").cloned();
                let mut ids = Vec::with_capacity(batch.len());
                let mut statements = Vec::new();
                for b in &batch {
                    let (Some(id), Ok(original)) = (
                        b.get_document("_id").ok().and_then(|k| k.get("id")),
                        b.get_document("doc"),
                    ) else {
                        continue;
                    };
                    ids.push(id.clone());
                    let mut cleaned = original.clone();
                    let mut changed = false;
                    for f in fields {
                        changed |= sanitize_path(&mut cleaned, f, clean);
                    }
                    if changed {
                        // Only where the document is still what was backed up (a document too
                        // big to repeat in the filter: by `_id`, under the lock).
                        let size = bson::to_vec(original).map(|v| v.len()).unwrap_or(0);
                        let mut q = if 2 * size < STILL_LIMIT {
                            still(original)
                        } else {
                            Document::new()
                        };
                        q.insert("_id", id.clone());
                        statements.push(doc! { "q": q, "u": replacement(cleaned) });
                    }
                }
                out.matched += ids.len() as u64;
                let (_, modified) = self.update_each(sess, collection, statements).await?;
                out.modified += modified;
                self.record_images(sess, collection, index, ids).await?;
            }
            return Ok(());
        }
        if let Op::RemoveDuplicates {
            collection,
            fields,
            keep_last,
            sort,
        } = op
        {
            let dups = Duplicates {
                collection,
                fields,
                keep_last: *keep_last,
                sort,
            };
            return self.remove_duplicates(sess, dups, index, out).await;
        }
        if let Op::Archive {
            collection,
            to,
            filter,
        } = op
        {
            out.backed_up = self
                .back_up(sess, collection, filter.clone(), index)
                .await?;
            let mut after = None;
            loop {
                let batch = self.backed_up(sess, index, after.clone()).await?;
                let Some(last) = batch.last() else { break };
                after = last.get("_id").cloned();
                let docs: Vec<Document> = batch
                    .iter()
                    .filter_map(|b| b.get_document("doc").ok().cloned())
                    .collect();
                let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
                let there = with_session!(
                    sess,
                    self.coll(to)
                        .count_documents(doc! { "_id": { "$in": ids.clone() } })
                )?;
                if there > 0 {
                    return Err(OpError::Refused(format!(
                        "{there} of the documents to archive are in {to} already (same _id)"
                    )));
                }
                let r = with_session!(sess, self.coll(to).insert_many(docs))?;
                out.inserted += r.inserted_ids.len() as u64;
                let gone = and(filter, doc! { "_id": { "$in": ids } });
                let r = with_session!(sess, self.coll(collection).delete_many(gone))?;
                out.matched += r.deleted_count;
                out.deleted += r.deleted_count;
            }
            return Ok(());
        }
        match op {
            Op::Insert {
                collection,
                documents,
            } => {
                let r = with_session!(sess, self.coll(collection).insert_many(documents.clone()))?;
                out.inserted = r.inserted_ids.len() as u64;
            }
            Op::CreateIndex(spec) => {
                // The documents a TTL index makes expired at once: backed up (`down` inserts
                // them again) and counted deleted — the monitor deletes them.
                if let Some(expired) = spec.expired_filter(now_ms()) {
                    out.backed_up = self.back_up(sess, &spec.collection, expired, index).await?;
                    out.deleted = out.backed_up;
                }
                self.db
                    .run_command(
                        doc! { "createIndexes": &spec.collection, "indexes": [spec.to_index_doc()] },
                    )
                    .await?;
            }
            Op::DropIndex { collection, name } => {
                self.db
                    .run_command(doc! { "dropIndexes": collection, "index": name })
                    .await?;
            }
            Op::Command { command, .. } => {
                self.db.run_command(command.clone()).await?;
            }
            Op::CreateCollection {
                collection,
                options,
            } => {
                let mut cmd = doc! { "create": collection };
                cmd.extend(options.clone());
                self.db.run_command(cmd).await?;
            }
            Op::DropCollection { collection } => {
                out.backed_up = self.back_up(sess, collection, doc! {}, index).await?;
                out.deleted = out.backed_up;
                self.coll(collection).drop().await?;
            }
            Op::SetValidator {
                collection,
                validator,
                level,
                action,
            } => {
                let mut cmd = doc! { "collMod": collection, "validator": validator.clone() };
                if let Some(l) = level {
                    cmd.insert("validationLevel", l);
                }
                if let Some(a) = action {
                    cmd.insert("validationAction", a);
                }
                self.db.run_command(cmd).await?;
            }
            Op::CopyCollection { from, to, pipeline } => {
                let mut stages = pipeline.clone();
                stages.push(doc! { "$out": to });
                self.coll(from)
                    .aggregate(stages)
                    .allow_disk_use(true)
                    .await?
                    .try_collect::<Vec<Document>>()
                    .await?;
                out.inserted = self.coll(to).count_documents(doc! {}).await?;
            }
            Op::Appwrite(a) => return Err(appwrite_only(a)),
            _ => unreachable!("rewrites are handled above"),
        }
        Ok(())
    }

    /// A collection's options as `listCollections` gives them; `None` when it does not exist.
    async fn collection_options(&self, name: &str) -> Result<Option<Document>, OpError> {
        let reply = self
            .db
            .run_command(doc! { "listCollections": 1, "filter": { "name": name } })
            .await?;
        let first = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .cloned()
            .unwrap_or_default();
        Ok(first
            .into_iter()
            .filter_map(|b| b.as_document().cloned())
            .find(|d| d.get_str("name") == Ok(name))
            .map(|d| d.get_document("options").cloned().unwrap_or_default()))
    }

    async fn indexes_of(&self, collection: &str) -> Result<Vec<Document>, OpError> {
        let reply = self
            .db
            .run_command(doc! { "listIndexes": collection })
            .await?;
        Ok(reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| b.as_document().cloned())
            .collect())
    }

    /// Deletes all but one of each group of documents sharing `fields` (documents missing one
    /// of them are no duplicates), after backing up those it deletes.
    async fn remove_duplicates(
        &self,
        sess: &mut Option<&mut ClientSession>,
        dups: Duplicates<'_>,
        index: usize,
        out: &mut OpOutcome,
    ) -> Result<(), OpError> {
        let Duplicates {
            collection,
            fields,
            keep_last,
            sort,
        } = dups;
        let mut group = Document::new();
        let mut present = Document::new();
        for (i, f) in fields.iter().enumerate() {
            group.insert(format!("k{i}"), format!("${f}"));
            present.insert(f, doc! { "$exists": true });
        }
        let pipeline = vec![
            doc! { "$match": present },
            doc! { "$sort": sort.clone() },
            doc! { "$group": { "_id": group, "ids": { "$push": "$_id" }, "n": { "$sum": 1 } } },
            doc! { "$match": { "n": { "$gt": 1 } } },
        ];
        let mut doomed: Vec<Bson> = Vec::new();
        let groups: Vec<Document> = {
            let coll = self.coll(collection);
            let agg = coll.aggregate(pipeline).allow_disk_use(true);
            collect_all!(sess, agg)
        };
        for g in groups {
            out.matched += g.get_i32("n").map(i64::from).unwrap_or(0) as u64;
            let mut ids = g.get_array("ids").cloned().unwrap_or_default();
            if keep_last {
                ids.pop();
            } else if !ids.is_empty() {
                ids.remove(0);
            }
            doomed.extend(ids);
        }
        for chunk in doomed.chunks(BATCH) {
            let these = doc! { "_id": { "$in": chunk.to_vec() } };
            out.backed_up += self.back_up(sess, collection, these.clone(), index).await?;
            let r = with_session!(sess, self.coll(collection).delete_many(these))?;
            out.deleted += r.deleted_count;
        }
        Ok(())
    }

    /// Undoes up operation `index` as `out` recorded it. Collections the operation created are
    /// returned in `drop_if_empty` (dropped after a transaction commits). With `partial`, the
    /// operation may have stopped half way (its process died, or it failed) or been undone in
    /// part already: what it did not do, or what is back already, is skipped (a collection it
    /// dropped and that exists again is filled up with the documents missing from it, rather
    /// than refused). Documents go back a batch per round trip.
    pub async fn undo(
        &self,
        sess: &mut Option<&mut ClientSession>,
        op: &Op,
        index: usize,
        out: &OpOutcome,
        partial: bool,
        drop_if_empty: &mut Vec<String>,
    ) -> Result<OpOutcome, OpError> {
        self.begin("down", op, index);
        let mut done = OpOutcome::default();
        let rewritten = match op {
            Op::BulkUpdate { collection, .. } | Op::SanitizeStrings { collection, .. } => {
                Some(collection.as_str())
            }
            other => rewrite_of(other).map(|(c, _, _)| c),
        };
        if let Some(collection) = rewritten {
            let mut after = None;
            // Statements a unique index refused (E11000), tried again at the end.
            let mut deferred: Vec<Document> = Vec::new();
            loop {
                let batch = self.backed_up(sess, index, after.clone()).await?;
                let Some(last) = batch.last() else { break };
                after = last.get("_id").cloned();
                let images = if image_guarded(op) {
                    let ids: Vec<Bson> = batch
                        .iter()
                        .filter_map(|b| b.get_document("_id").ok()?.get("id").cloned())
                        .collect();
                    self.images_of(sess, index, ids).await?
                } else {
                    Default::default()
                };
                let ids: Vec<Bson> = batch
                    .iter()
                    .filter_map(|b| b.get_document("_id").ok()?.get("id").cloned())
                    .collect();
                // What each document is now, compared here byte for byte (a query's equality
                // takes 1 for 1.0 and an array for one of its elements).
                let coll = self.coll(collection);
                let find = coll.find(doc! { "_id": { "$in": ids } });
                let now: std::collections::HashMap<String, Document> = collect_all!(sess, find)
                    .into_iter()
                    .filter_map(|d| Some((id_key(d.get("_id")?), d)))
                    .collect();
                let mut statements = Vec::with_capacity(batch.len());
                let mut skipped = 0u64;
                for b in &batch {
                    let (Some(id), Ok(original)) = (
                        b.get_document("_id")
                            .ok()
                            .and_then(|k| k.get("id"))
                            .cloned(),
                        b.get_document("doc"),
                    ) else {
                        continue;
                    };
                    done.matched += 1;
                    let Some(current) = now.get(&id_key(&id)) else {
                        // Deleted since: left so, and counted.
                        skipped += 1;
                        continue;
                    };
                    if same_doc(current, original) {
                        continue; // never rewritten, or put back by an earlier attempt
                    }
                    let restored = if image_guarded(op) {
                        match images.get(&id_key(&id)) {
                            Some(image) if !same_doc(image, current) => {
                                skipped += 1;
                                continue;
                            }
                            // As the operation left it; or the change stopped between rewriting
                            // this batch and keeping its images (and is undone now, under the
                            // lock): the original goes back whether or not it was rewritten.
                            _ => original.clone(),
                        }
                    } else {
                        if !still_written(op, original, current) {
                            skipped += 1;
                            continue;
                        }
                        // Only the fields the operation changed go back: what the application
                        // changed in the others since stays.
                        let mut restored = current.clone();
                        for path in touched(op) {
                            match get_path(original, path) {
                                Some(v) => set_path(&mut restored, path, v.clone()),
                                None => remove_path(&mut restored, path, original),
                            }
                        }
                        // A path through something that is no document (an array): the
                        // document as it was, whole.
                        let through_arrays = touched(op).iter().any(|p| {
                            crosses_non_document(original, p) || crosses_non_document(current, p)
                        });
                        if through_arrays || same_content(&restored, original) {
                            original.clone()
                        } else {
                            restored
                        }
                    };
                    // Only where it is still what was read (the application may write
                    // meanwhile); a document too big to repeat in the filter is matched by
                    // `_id` (the statement would pass the 16 MiB a command holds).
                    let mut q = if bson::to_vec(current).map(|v| v.len()).unwrap_or(0)
                        + bson::to_vec(&restored).map(|v| v.len()).unwrap_or(0)
                        < STILL_LIMIT
                    {
                        still(current)
                    } else {
                        Document::new()
                    };
                    q.insert("_id", id.clone());
                    statements.push(doc! { "q": q, "u": replacement(restored) });
                }
                let n = statements.len() as u64;
                let (matched, modified, waiting) = self
                    .update_each_deferring(sess, collection, statements)
                    .await?;
                done.modified += modified;
                // Changed between the read and the write: left so too (those waiting for a
                // unique value to be freed are counted when they go back).
                let waits = waiting.len() as u64;
                skipped += (n - waits).saturating_sub(matched);
                done.skipped += skipped;
                deferred.extend(waiting);
            }
            // Put back what a unique index refused because a document restored later held the
            // value then (values passed down a chain): again, as long as each round puts some back.
            while !deferred.is_empty() {
                let before = deferred.len();
                let statements = std::mem::take(&mut deferred);
                let first = statements.first().cloned();
                let (matched, modified, waiting) = self
                    .update_each_deferring(sess, collection, statements)
                    .await?;
                done.modified += modified;
                done.skipped += ((before - waiting.len()) as u64).saturating_sub(matched);
                if waiting.len() == before {
                    let id = first
                        .as_ref()
                        .and_then(|d| d.get_document("q").ok()?.get("_id").cloned())
                        .map(|id| id_key(&id))
                        .unwrap_or_default();
                    return Err(OpError::Refused(format!(
                        "{before} document(s) cannot go back: a unique index refuses the value each had, which another document holds now (E11000; the first: _id {id})"
                    )));
                }
                deferred = waiting;
            }
            return Ok(done);
        }
        if let Some(collection) = deletes_documents(op) {
            self.insert_backed_up(sess, index, collection, &mut done)
                .await?;
            return Ok(done);
        }
        if let Op::Archive { collection, to, .. } = op {
            // Each archived document goes back where it is not (a document re-created at its
            // place since is left alone) and leaves the archive where it is still as moved.
            let mut after = None;
            while let Some(originals) = self.next_originals(sess, index, &mut after).await? {
                done.matched += originals.len() as u64;
                let ids: Vec<Bson> = originals
                    .iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                let in_source = self.by_id(sess, collection, &ids).await?;
                // Its place in the source taken since: it stays in the archive (counted); taken
                // by itself (put back by an earlier attempt): nothing to do.
                let mut candidates = Vec::new();
                // In the source as it was (put back by an earlier attempt, or never deleted:
                // the up killed between copying a batch and deleting it) — a copy still in the
                // archive as moved goes (adv40 F2: 500 documents were left in both).
                let mut in_place = Vec::new();
                for original in originals {
                    let key = original.get("_id").map(id_key).unwrap_or_default();
                    match in_source.get(&key) {
                        Some(now) if same_doc(now, &original) => in_place.push(original),
                        Some(_) => done.skipped += 1,
                        None => candidates.push(original),
                    }
                }
                let deletes: Vec<Document> = candidates
                    .iter()
                    .chain(&in_place)
                    .map(|original| {
                        let mut moved = still(original);
                        moved.insert("_id", original.get("_id").cloned().unwrap_or(Bson::Null));
                        doc! { "q": moved, "limit": 1 }
                    })
                    .collect();
                done.deleted += self.delete_each(sess, to, deletes).await?;
                // Still in the archive: changed there since (left there, counted). Gone from
                // both (moved out by an attempt killed before putting it back): goes back.
                let ids: Vec<Bson> = candidates
                    .iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                let still_archived = self.by_id(sess, to, &ids).await?;
                let back: Vec<Document> = candidates
                    .into_iter()
                    .filter(|d| {
                        let kept = still_archived
                            .contains_key(&d.get("_id").map(id_key).unwrap_or_default());
                        if kept {
                            done.skipped += 1;
                        }
                        !kept
                    })
                    .collect();
                done.inserted += self.insert_where_free(sess, collection, back).await?;
            }
            if out.created_collection {
                drop_if_empty.push(to.clone());
            }
            return Ok(done);
        }
        match op {
            Op::Insert {
                collection,
                documents,
            } => {
                // Each inserted document goes where it is still exactly as inserted; one the
                // application edited since stays (counted).
                let ids: Vec<Bson> = documents
                    .iter()
                    .filter_map(|d| d.get("_id"))
                    .cloned()
                    .collect();
                let now = self.by_id(sess, collection, &ids).await?;
                let mut deletes = Vec::new();
                for d in documents {
                    let key = d.get("_id").map(id_key).unwrap_or_default();
                    match now.get(&key) {
                        None => {}
                        Some(current) if same_doc(current, d) => {
                            let mut q = still(d);
                            q.insert("_id", d.get("_id").cloned().unwrap_or(Bson::Null));
                            deletes.push(doc! { "q": q, "limit": 1 });
                        }
                        Some(_) => done.skipped += 1,
                    }
                }
                let n = deletes.len() as u64;
                done.deleted = self.delete_each(sess, collection, deletes).await?;
                done.skipped += n - done.deleted.min(n);
                if out.created_collection {
                    drop_if_empty.push(collection.clone());
                }
            }
            Op::CreateIndex(spec) => {
                if self.index_of(&spec.collection, &spec.name).await?.is_some() {
                    self.db
                        .run_command(doc! { "dropIndexes": &spec.collection, "index": &spec.name })
                        .await?;
                }
                // A TTL index's documents expired when it was made, once it is gone.
                if spec.expire_after_seconds.is_some() {
                    self.insert_backed_up(sess, index, &spec.collection, &mut done)
                        .await?;
                }
                if out.created_collection {
                    drop_if_empty.push(spec.collection.clone());
                }
            }
            Op::DropIndex { collection, name } => {
                let Some(mut index) = out.dropped_index.clone() else {
                    return Err(OpError::RefusedBeforeWriting(format!(
                        "the ledger has no record of the index {name} of {collection} this change dropped"
                    )));
                };
                index.remove("v");
                index.remove("ns");
                match self.index_of(collection, name).await? {
                    // Never dropped, or created again by an earlier attempt.
                    Some(_) if partial => return Ok(done),
                    Some(mut now) => {
                        now.remove("v");
                        now.remove("ns");
                        if now == index {
                            return Ok(done);
                        }
                        // Another index of that name made since: not the one this change dropped.
                        return Err(OpError::RefusedBeforeWriting(format!(
                            "an index {name} of {collection} exists again with another definition (made since): the dropped one cannot be put back under its name; drop or rename that index, then run down again"
                        )));
                    }
                    None => {}
                }
                let collation = self
                    .collection_options(collection)
                    .await?
                    .and_then(|o| o.get_document("collation").ok().cloned());
                simple_where_listed(&mut index, collation.as_ref());
                self.db
                    .run_command(doc! { "createIndexes": collection, "indexes": [index] })
                    .await?;
            }
            Op::Command { down, .. } => match down {
                Some(d) => {
                    self.db.run_command(d.clone()).await?;
                }
                None => {
                    return Err(OpError::Refused(
                        "a command without `down` has no inverse".into(),
                    ));
                }
            },
            Op::CreateCollection { collection, .. } => {
                if partial && !self.collection_exists(collection).await? {
                    return Ok(done);
                }
                let n = self.coll(collection).count_documents(doc! {}).await?;
                if n > 0 {
                    return Err(OpError::RefusedBeforeWriting(format!(
                        "{collection} holds {n} documents written since it was created: move them or drop it yourself"
                    )));
                }
                self.coll(collection).drop().await?;
            }
            Op::CopyCollection { to, .. } => {
                if partial && !self.collection_exists(to).await? {
                    return Ok(done);
                }
                let n = self.coll(to).count_documents(doc! {}).await?;
                // Cut short, the copy may have written `to` without recording how many: `to` did
                // not exist before it (checked under the lock), so it is the copy's.
                if n != out.inserted && !partial {
                    return Err(OpError::RefusedBeforeWriting(format!(
                        "{to} holds {n} documents, the copy wrote {}: it changed since; drop it yourself",
                        out.inserted
                    )));
                }
                self.coll(to).drop().await?;
                done.deleted = n;
            }
            Op::DropCollection { collection } => {
                let Some(before) = out.before.clone() else {
                    return Err(OpError::RefusedBeforeWriting(format!(
                        "the ledger has no record of {collection}'s options and indexes"
                    )));
                };
                // Cut short, the drop may not have happened (it comes after the backup), or an
                // earlier attempt at undoing it created the collection again: it is kept and
                // filled up with what is missing from it.
                let there = self.collection_exists(collection).await?;
                if there && !partial {
                    if self.coll(collection).count_documents(doc! {}).await? > 0 {
                        return Err(OpError::RefusedBeforeWriting(format!(
                            "{collection} was created again since and holds documents"
                        )));
                    }
                    self.coll(collection).drop().await?;
                }
                if !there || !partial {
                    let mut cmd = doc! { "create": collection };
                    cmd.extend(before.get_document("options").cloned().unwrap_or_default());
                    self.db.run_command(cmd).await?;
                }
                let collation = before
                    .get_document("options")
                    .ok()
                    .and_then(|o| o.get_document("collation").ok())
                    .cloned();
                let indexes: Vec<Bson> = before
                    .get_array("indexes")
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| {
                        let mut i = i.as_document()?.clone();
                        i.remove("v");
                        i.remove("ns");
                        simple_where_listed(&mut i, collation.as_ref());
                        Some(Bson::Document(i))
                    })
                    .collect();
                if !indexes.is_empty() {
                    self.db
                        .run_command(doc! { "createIndexes": collection, "indexes": indexes })
                        .await?;
                }
                let mut after = None;
                while let Some(docs) = self.next_originals(sess, index, &mut after).await? {
                    done.inserted += self.insert_where_free(sess, collection, docs).await?;
                }
            }
            Op::SetValidator { collection, .. } => {
                let before = out.before.clone().unwrap_or_default();
                let validator = before
                    .get_document("validator")
                    .cloned()
                    .unwrap_or_default();
                let level = before.get_str("validationLevel").unwrap_or("strict");
                let action = before.get_str("validationAction").unwrap_or("error");
                self.db
                    .run_command(doc! {
                        "collMod": collection, "validator": validator,
                        "validationLevel": level, "validationAction": action,
                    })
                    .await?;
            }
            Op::Appwrite(a) => return Err(appwrite_only(a)),
            _ => unreachable!("rewrites are handled above"),
        }
        Ok(done)
    }

    /// Drops the collections an undone operation created, when they are empty again.
    pub async fn drop_created(&self, names: &[String]) -> Result<(), OpError> {
        for name in names {
            let c = self.coll(name);
            if c.count_documents(doc! {}).await? == 0 {
                c.drop().await?;
            }
        }
        Ok(())
    }

    /// Runs `update` statements (`{q, u}`, one document each) a few thousand at a time, unordered;
    /// returns how many documents they matched and modified.
    async fn update_each(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        statements: Vec<Document>,
    ) -> Result<(u64, u64), OpError> {
        let (mut matched, mut modified) = (0, 0);
        for chunk in by_size(statements) {
            let cmd = doc! { "update": collection, "updates": chunk, "ordered": false };
            let reply = with_session!(sess, self.db.run_command(cmd))?;
            write_errors(&reply)?;
            matched += count(&reply, "n");
            modified += count(&reply, "nModified");
        }
        Ok((matched, modified))
    }

    /// Like [`Exec::update_each`], but outside a transaction a statement refused by a unique
    /// index (E11000) is returned to be tried again, rather than failing the whole: the value
    /// it puts back may be held by a document that gets its own back later. In a transaction
    /// (where a write error aborts it) it fails as `update_each` does.
    async fn update_each_deferring(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        statements: Vec<Document>,
    ) -> Result<(u64, u64, Vec<Document>), OpError> {
        if sess.is_some() {
            let (m, n) = self.update_each(sess, collection, statements).await?;
            return Ok((m, n, Vec::new()));
        }
        let (mut matched, mut modified) = (0, 0);
        let mut waiting = Vec::new();
        for chunk in by_size(statements) {
            let cmd = doc! { "update": collection, "updates": chunk.clone(), "ordered": false };
            let mut reply = with_session!(sess, self.db.run_command(cmd))?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                let mut others = Vec::new();
                for e in errors.iter().filter_map(Bson::as_document) {
                    let code = match e.get("code") {
                        Some(Bson::Int32(c)) => i64::from(*c),
                        Some(Bson::Int64(c)) => *c,
                        _ => 0,
                    };
                    let at = match e.get("index") {
                        Some(Bson::Int32(i)) => Some(*i as usize),
                        Some(Bson::Int64(i)) => Some(*i as usize),
                        _ => None,
                    };
                    match (code, at.and_then(|i| chunk.get(i))) {
                        (11000, Some(statement)) => waiting.push(statement.clone()),
                        _ => others.push(Bson::Document(e.clone())),
                    }
                }
                reply.insert("writeErrors", others);
                if reply.get_array("writeErrors").is_ok_and(|a| a.is_empty()) {
                    reply.remove("writeErrors");
                }
            }
            write_errors(&reply)?;
            matched += count(&reply, "n");
            modified += count(&reply, "nModified");
        }
        Ok((matched, modified, waiting))
    }

    /// Runs `delete` statements (`{q, limit}`) a few thousand at a time, unordered; returns how
    /// many documents they deleted.
    async fn delete_each(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        statements: Vec<Document>,
    ) -> Result<u64, OpError> {
        let mut deleted = 0;
        for chunk in by_size(statements) {
            let cmd = doc! { "delete": collection, "deletes": chunk, "ordered": false };
            let reply = with_session!(sess, self.db.run_command(cmd))?;
            write_errors(&reply)?;
            deleted += count(&reply, "n");
        }
        Ok(deleted)
    }

    /// The documents of `collection` among `ids`, by their `_id`'s canonical extended JSON.
    async fn by_id(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        ids: &[Bson],
    ) -> Result<std::collections::HashMap<String, Document>, OpError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let coll = self.coll(collection);
        let find = coll.find(doc! { "_id": { "$in": ids.to_vec() } });
        Ok(collect_all!(sess, find)
            .into_iter()
            .filter_map(|d| Some((id_key(d.get("_id")?), d)))
            .collect())
    }

    /// Inserts the documents whose `_id` is free in `collection`; returns how many.
    async fn insert_where_free(
        &self,
        sess: &mut Option<&mut ClientSession>,
        collection: &str,
        docs: Vec<Document>,
    ) -> Result<u64, OpError> {
        if docs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        let coll = self.coll(collection);
        let find = coll
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 });
        let there: std::collections::HashSet<String> = collect_all!(sess, find)
            .iter()
            .filter_map(|d| d.get("_id").map(id_key))
            .collect();
        let free: Vec<Document> = docs
            .into_iter()
            .filter(|d| !d.get("_id").is_some_and(|id| there.contains(&id_key(id))))
            .collect();
        if free.is_empty() {
            return Ok(0);
        }
        let r = with_session!(sess, coll.insert_many(free))?;
        Ok(r.inserted_ids.len() as u64)
    }

    /// Keeps a marker document in the backup collection, in the session's transaction: it
    /// exists once that transaction committed, and says so to whoever finds the change
    /// interrupted.
    pub async fn put_marker(
        &self,
        sess: &mut Option<&mut ClientSession>,
        name: &str,
        mut body: Document,
    ) -> Result<(), OpError> {
        body.insert("_id", name);
        with_session!(sess, self.coll(self.backup).insert_one(body))?;
        Ok(())
    }

    /// The marker [`Self::put_marker`] kept, if its transaction committed.
    pub async fn marker(&self, name: &str) -> Result<Option<Document>, OpError> {
        if self.backup.is_empty() {
            return Ok(None);
        }
        Ok(self
            .coll(self.backup)
            .find_one(doc! { "_id": name })
            .await?)
    }

    /// Forgets what op `index` backed up (its documents are back): it is run again from the
    /// start.
    pub async fn forget(&self, index: usize) -> Result<(), OpError> {
        self.coll(self.backup)
            .delete_many(doc! { "$or": [{ "_id.op": index as i64 }, { "_id.img": index as i64 }] })
            .await?;
        Ok(())
    }

    /// Drops the backup collection (its documents are back, or were never needed).
    pub async fn drop_backup(&self) -> Result<(), OpError> {
        if !self.backup.is_empty() {
            self.coll(self.backup).drop().await?;
        }
        Ok(())
    }

    /// What an operation would do; reads only.
    pub async fn preview(&self, op: &Op) -> Result<Preview, OpError> {
        Ok(self.judge(op).await?.scope(op))
    }

    /// [`Self::preview`] without what the operation writes and reads.
    async fn judge(&self, op: &Op) -> Result<Preview, OpError> {
        let preview = |collection: Option<&str>, matching: u64, note: String| Preview {
            op: op.kind().to_string(),
            collection: collection.map(str::to_string),
            matching,
            would_fail: note.contains("would fail"),
            note,
            writes: None,
            reads: None,
        };
        if let Some(why) = self.array_refusal(&mut None, op).await? {
            let collection = rewrite_of(op).map(|(c, _, _)| c);
            return Ok(preview(
                collection,
                0,
                format!("{why}: the change would fail"),
            ));
        }
        if let Some((collection, filter, _)) = rewrite_of(op) {
            // A rename onto a field some documents have already is refused by the run.
            if let Op::RenameField { from, to, .. } = op {
                let clash = and(&filter, exists(to, true));
                let both = self.coll(collection).count_documents(clash).await?;
                if both > 0 {
                    return Ok(preview(
                        Some(collection),
                        both,
                        format!(
                            "{both} documents have both `{from}` and `{to}`: the change would fail"
                        ),
                    ));
                }
            }
            let n = self.coll(collection).count_documents(filter).await?;
            return Ok(preview(
                Some(collection),
                n,
                format!("{n} documents would be backed up and rewritten"),
            ));
        }
        Ok(match op {
            Op::BulkUpdate {
                collection,
                updates,
            } => {
                let any: Vec<Bson> = updates.iter().map(|(f, _)| f.clone().into()).collect();
                let n = self
                    .coll(collection)
                    .count_documents(doc! { "$or": any })
                    .await?;
                preview(
                    Some(collection),
                    n,
                    format!(
                        "{n} documents would be backed up and rewritten by {} updates",
                        updates.len()
                    ),
                )
            }
            Op::RemoveDuplicates {
                collection, fields, ..
            } => {
                // The same groups the operation finds: each group of n deletes n - 1.
                let mut group = Document::new();
                let mut present = Document::new();
                for (i, f) in fields.iter().enumerate() {
                    group.insert(format!("k{i}"), format!("${f}"));
                    present.insert(f, doc! { "$exists": true });
                }
                let pipeline = vec![
                    doc! { "$match": present },
                    doc! { "$group": { "_id": group, "n": { "$sum": 1 } } },
                    doc! { "$match": { "n": { "$gt": 1 } } },
                    doc! { "$group": { "_id": null, "groups": { "$sum": 1 }, "docs": { "$sum": "$n" } } },
                ];
                let totals: Vec<Document> = self
                    .coll(collection)
                    .aggregate(pipeline)
                    .allow_disk_use(true)
                    .await?
                    .try_collect()
                    .await?;
                let number = |k: &str| count_in(totals.first(), k);
                let (groups, docs) = (number("groups"), number("docs"));
                preview(
                    Some(collection),
                    docs,
                    format!(
                        "{} duplicates in {groups} groups would be backed up and deleted",
                        docs - groups
                    ),
                )
            }
            Op::CreateCollection { collection, .. } => {
                let there = self.collection_exists(collection).await?;
                let note = if there {
                    format!("{collection} exists already: the change would fail")
                } else {
                    format!("{collection} would be created")
                };
                preview(Some(collection), 0, note)
            }
            Op::DropCollection { collection } => {
                let n = self.coll(collection).count_documents(doc! {}).await?;
                preview(
                    Some(collection),
                    n,
                    format!("{n} documents would be backed up and the collection dropped"),
                )
            }
            Op::SetValidator { collection, .. } => preview(
                Some(collection),
                0,
                format!("the validator of {collection} would be replaced (the old one kept)"),
            ),
            Op::CopyCollection { from, to, .. } => {
                let there = self.collection_exists(to).await?;
                let note = if there {
                    format!("{to} exists already: the change would fail")
                } else {
                    format!("{from} would be copied into {to}")
                };
                preview(Some(to), 0, note)
            }
            Op::Archive {
                collection,
                to,
                filter,
            } => {
                let n = self
                    .coll(collection)
                    .count_documents(filter.clone())
                    .await?;
                // The run refuses when one of them is in `to` already (adv30 T5: the dry run
                // said "would apply").
                let pipeline = vec![
                    doc! { "$match": filter.clone() },
                    doc! { "$project": { "_id": 1 } },
                    doc! { "$lookup": { "from": to, "localField": "_id", "foreignField": "_id", "as": "there" } },
                    doc! { "$match": { "there.0": { "$exists": true } } },
                    doc! { "$count": "n" },
                ];
                let counted: Vec<Document> = self
                    .coll(collection)
                    .aggregate(pipeline)
                    .await?
                    .try_collect()
                    .await?;
                let there = count_in(counted.first(), "n");
                let note = if there > 0 {
                    format!(
                        "{there} of the documents to archive are in {to} already (same _id): the change would fail"
                    )
                } else {
                    format!("{n} documents would be backed up and moved to {to}")
                };
                preview(Some(collection), n, note)
            }
            Op::Insert {
                collection,
                documents,
            } => {
                let ids: Vec<Bson> = documents
                    .iter()
                    .filter_map(|d| d.get("_id"))
                    .cloned()
                    .collect();
                let there = self
                    .coll(collection)
                    .count_documents(doc! { "_id": { "$in": ids } })
                    .await?;
                let note = if there > 0 {
                    format!("{there} of them are there already: the change would fail")
                } else {
                    format!("{} documents would be inserted", documents.len())
                };
                preview(Some(collection), documents.len() as u64, note)
            }
            Op::CreateIndex(spec) => {
                let there = self.index_of(&spec.collection, &spec.name).await?.is_some();
                // A unique index over documents repeating a key is refused by mongod (the
                // collation's equalities aside: a group by the plain values).
                let repeated = if spec.unique && !there {
                    let mut key = Document::new();
                    for (i, (field, _)) in spec.keys.iter().enumerate() {
                        key.insert(format!("k{i}"), format!("${field}"));
                    }
                    let mut pipeline = Vec::new();
                    if let Some(f) = &spec.partial_filter {
                        pipeline.push(doc! { "$match": f.clone() });
                    }
                    pipeline.extend([
                        doc! { "$group": { "_id": key, "n": { "$sum": 1 } } },
                        doc! { "$match": { "n": { "$gt": 1 } } },
                        doc! { "$limit": 1 },
                    ]);
                    let mut cursor = self.coll(&spec.collection).aggregate(pipeline).await?;
                    futures::TryStreamExt::try_next(&mut cursor)
                        .await?
                        .is_some()
                } else {
                    false
                };
                let note = if there {
                    format!("index {} exists already: the change would fail", spec.name)
                } else if repeated {
                    format!(
                        "unique index {}: documents of {} repeat a key: the change would fail",
                        spec.name, spec.collection
                    )
                } else {
                    format!("index {} would be created", spec.name)
                };
                let expired = match spec.expired_filter(now_ms()) {
                    Some(f) if !there => self.coll(&spec.collection).count_documents(f).await?,
                    _ => 0,
                };
                let note = if expired > 0 {
                    format!(
                        "{note}; {expired} documents are expired for it already: MongoDB's TTL monitor deletes them within a minute (backed up first: down inserts them again)"
                    )
                } else {
                    note
                };
                preview(Some(&spec.collection), expired, note)
            }
            Op::DropIndex { collection, name } => {
                let there = self.index_of(collection, name).await?.is_some();
                let note = if there {
                    format!("index {name} would be dropped")
                } else {
                    format!("index {name} does not exist: the change would fail")
                };
                preview(Some(collection), 0, note)
            }
            Op::Command { command, .. } => preview(
                None,
                0,
                format!(
                    "command {} would run",
                    command.keys().next().map(String::as_str).unwrap_or("?")
                ),
            ),
            Op::SanitizeStrings {
                collection,
                filter,
                fields,
                clean,
            } => {
                let strings: Vec<Bson> = fields
                    .iter()
                    .map(|f| doc! { f: { "$type": "string" } }.into())
                    .collect();
                let mut cur = self
                    .coll(collection)
                    .find(and(filter, doc! { "$or": strings }))
                    .await?;
                let (mut seen, mut changing) = (0u64, 0u64);
                while let Some(mut d) = cur.try_next().await? {
                    seen += 1;
                    let mut changed = false;
                    for f in fields {
                        changed |= sanitize_path(&mut d, f, clean);
                    }
                    changing += u64::from(changed);
                }
                preview(
                    Some(collection),
                    seen,
                    format!(
                        "{seen} documents with strings there would be backed up, {changing} of them cleaned"
                    ),
                )
            }
            Op::Appwrite(a) => return Err(appwrite_only(a)),
            _ => unreachable!("rewrites are handled above"),
        })
    }
}

/// What `remove_duplicates` removes: the documents of `collection` sharing `fields`, all but the
/// first (or, `keep_last`, the last) of each group by `sort`.
struct Duplicates<'a> {
    collection: &'a str,
    fields: &'a [String],
    keep_last: bool,
    sort: &'a Document,
}

/// A count an aggregation's `$group` / `$count` gave (an int or a long), 0 when none.
fn count_in(d: Option<&Document>, key: &str) -> u64 {
    match d.and_then(|d| d.get(key)) {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        _ => 0,
    }
}

/// An index as `listIndexes` gave it, made again as it was: on a collection with a default
/// collation, an index listed without one has the simple collation — given so, since an index
/// created without one takes the collection's (adv28 R8: a unique index came back
/// case-insensitive, and a text index, which takes no other, failed the `down`).
fn simple_where_listed(index: &mut Document, collection_collation: Option<&Document>) {
    let simple = |c: &Document| c.get_str("locale") == Ok("simple");
    if collection_collation.is_some_and(|c| !simple(c)) && !index.contains_key("collation") {
        index.insert("collation", doc! { "locale": "simple" });
    }
}

#[cfg(test)]
mod tests {

    fn judged(op: &str, writes: Option<&[&str]>, reads: Option<&[&str]>, fails: bool) -> Preview {
        Preview {
            op: op.into(),
            collection: Some("orders".into()),
            matching: 0,
            note: if fails {
                "the change would fail".into()
            } else {
                "ok".into()
            },
            would_fail: fails,
            writes: writes.map(|w| w.iter().map(|s| s.to_string()).collect()),
            reads: reads.map(|r| r.iter().map(|s| s.to_string()).collect()),
        }
    }

    /// adv37 F3: a predicted failure stands when the operations before it on its collection
    /// write none of the fields it was judged on.
    #[test]
    fn a_judgement_stands_unless_an_earlier_operation_writes_what_it_read() {
        let index = || judged("create_index", Some(&[]), Some(&["sku"]), true);
        let status = |earlier: Preview| {
            let mut p = vec![earlier, index()];
            preview_status(&mut p).0
        };
        assert_eq!(
            status(judged("set", Some(&["touched"]), None, false)),
            "would fail"
        );
        assert_eq!(
            status(judged("set", Some(&["sku"]), None, false)),
            "would apply"
        );
        assert_eq!(
            status(judged("set", Some(&["sku.code"]), None, false)),
            "would apply"
        );
        assert_eq!(
            status(judged("transform", None, None, false)),
            "would apply"
        );
        let mut unscoped = vec![
            judged("set", Some(&["touched"]), None, false),
            judged("create_index", Some(&[]), None, true),
        ];
        assert_eq!(preview_status(&mut unscoped).0, "would apply");
    }
    use super::*;

    #[test]
    fn get_path_follows_dotted_paths() {
        let d = doc! { "a": { "b": { "c": 3 } }, "x": 1 };
        assert_eq!(get_path(&d, "a.b.c"), Some(&Bson::Int32(3)));
        assert_eq!(get_path(&d, "x.y"), None);
        assert_eq!(get_path(&d, "a.z"), None);
    }

    #[test]
    fn a_field_is_undone_only_where_it_still_holds_exactly_what_was_written() {
        let set = Op::Set {
            collection: "c".into(),
            filter: Document::new(),
            fields: doc! { "flag": "on", "n": 1 },
        };
        let original = doc! { "_id": 1, "name": "a" };
        let written = doc! { "_id": 1, "name": "a", "flag": "on", "n": 1 };
        assert!(still_written(&set, &original, &written));
        // An array holding the value, or the same number as another type, is a change.
        let array = doc! { "_id": 1, "name": "a", "flag": ["on", "app"], "n": 1 };
        assert!(!still_written(&set, &original, &array));
        let double = doc! { "_id": 1, "name": "a", "flag": "on", "n": 1.0 };
        assert!(!still_written(&set, &original, &double));
        let rename = Op::RenameField {
            collection: "c".into(),
            from: "a".into(),
            to: "b".into(),
            filter: Document::new(),
        };
        let original = doc! { "_id": 1, "a": "v" };
        assert!(still_written(
            &rename,
            &original,
            &doc! { "_id": 1, "b": "v" }
        ));
        assert!(!still_written(
            &rename,
            &original,
            &doc! { "_id": 1, "b": "w" }
        ));
    }

    #[test]
    fn putting_a_field_back_keeps_the_rest_and_leaves_no_empty_parent() {
        let original = doc! { "_id": 1, "x": 1 };
        let mut d = doc! { "_id": 1, "x": 2, "profile": { "lang": "en" } };
        remove_path(&mut d, "profile.lang", &original);
        assert_eq!(d, doc! { "_id": 1, "x": 2 });
        let original = doc! { "_id": 1, "profile": {} };
        let mut d = doc! { "_id": 1, "profile": { "lang": "en" } };
        remove_path(&mut d, "profile.lang", &original);
        assert_eq!(d, doc! { "_id": 1, "profile": {} });
        let mut d = doc! { "_id": 1 };
        set_path(&mut d, "a.b", Bson::Int32(3));
        assert_eq!(d, doc! { "_id": 1, "a": { "b": 3 } });
        assert!(same_content(
            &doc! { "a": 1, "b": { "c": 1, "d": 2 } },
            &doc! { "b": { "d": 2, "c": 1 }, "a": 1 }
        ));
        assert!(!same_content(&doc! { "a": 1 }, &doc! { "a": 1.0 }));
    }
}
