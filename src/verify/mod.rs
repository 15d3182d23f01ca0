//! Post-run verification: re-derive every expected document from the source with the same
//! mapping, and compare it with the target by `_id` (a hash of the raw BSON, which is canonical
//! for documents cutover wrote). Lists missing, unexpected and different documents, with the first
//! differing field paths; checks references point to existing documents.
//!
//! Memory does not grow with the table: when the target's `_id` order is the source key order
//! (single int, text or uuid key as `_id`) both sides stream merge-style; otherwise (uuid5 or
//! composite ids) both sides' (id, hash) pairs go through an external sort
//! ([`crate::pipeline::spill`]) and are merged by id. Counts are exact, but only the first
//! [`KEPT`] problems of each kind are held (and put in the JSON); every one of them is written to
//! the problems file ([`ProblemLog`], JSON lines next to the verify JSON).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bson::{Bson, Document, RawDocumentBuf, doc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::mapping::plan::Plan;
use crate::pipeline::expected::{ExpectedRow, ExpectedRows, Readers};
use crate::pipeline::run::RunError;
use crate::pipeline::spill::Spill;
use crate::sink::mongodb::{MongoError, MongoTarget};
use crate::source::postgres;
use crate::source::{SourceSession, Value};
use crate::transform::row::{MapContext, map_row};

pub mod appwrite;
pub mod files;
pub mod oracle;
pub mod write_rejects;
/// Target `_id` order (lives with the targets; `--sync-deletes` uses it too).
pub use crate::sink::order;
pub(crate) use crate::sink::order::{id_bytes, id_from_bytes};

/// How many problems of each kind the text output shows.
pub const SHOWN: usize = 20;
/// How many problems of each kind are held and put in the JSON (the problems file has them all).
pub const KEPT: usize = 1000;
/// How many differing documents get a field-by-field diff.
pub const DIFFED: usize = KEPT;

/// Every problem verify finds, one JSON object a line (`entity`, `kind`: `missing` with the
/// source `key`, `unexpected` with the target `id`, `different` with both). Created on the first
/// problem.
pub struct ProblemLog {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    lines: u64,
}

impl ProblemLog {
    pub fn new(path: PathBuf) -> ProblemLog {
        ProblemLog {
            path,
            out: None,
            lines: 0,
        }
    }

    /// The file's path, once a problem was written to it.
    pub fn written(&self) -> Option<&Path> {
        (self.lines > 0).then_some(self.path.as_path())
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> RunError + use<> {
        let path = self.path.clone();
        move |cause| RunError::Io { path, cause }
    }

    pub fn write(&mut self, line: serde_json::Value) -> Result<(), RunError> {
        self.write_text(&crate::redact::scrub_secrets(&line.to_string()))
    }

    fn write_text(&mut self, text: &str) -> Result<(), RunError> {
        if self.out.is_none() {
            let f = File::create(&self.path).map_err(self.io())?;
            self.out = Some(BufWriter::new(f));
        }
        let err = self.io();
        let out = self.out.as_mut().expect("opened above");
        out.write_all(text.as_bytes())
            .and_then(|_| out.write_all(b"\n"))
            .map_err(err)?;
        self.lines += 1;
        Ok(())
    }

    /// Appends the problems of `other` (written beside this one) and removes its file.
    pub fn append(&mut self, mut other: ProblemLog) -> Result<(), RunError> {
        other.finish()?;
        if other.lines == 0 {
            return Ok(());
        }
        let text = std::fs::read_to_string(&other.path).map_err(other.io())?;
        for line in text.lines() {
            self.write_text(line)?;
        }
        std::fs::remove_file(&other.path).map_err(other.io())
    }

    pub fn finish(&mut self) -> Result<(), RunError> {
        let err = self.io();
        match self.out.as_mut() {
            Some(out) => out.flush().map_err(err),
            None => Ok(()),
        }
    }
}

/// One kind of problem: the exact count and the first [`KEPT`].
#[derive(Debug, Clone)]
pub struct Kept<T> {
    pub count: u64,
    pub first: Vec<T>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            count: 0,
            first: Vec::new(),
        }
    }
}

impl<T> Kept<T> {
    pub fn push(&mut self, item: T) {
        self.count += 1;
        if self.first.len() < KEPT {
            self.first.push(item);
        }
    }
}

/// The problems of one entity as they are found: kept (bounded) and logged (all).
pub struct Problems<'a, D> {
    entity: &'a str,
    log: &'a mut ProblemLog,
    pub missing: Kept<String>,
    pub unexpected: Kept<String>,
    pub different: Kept<D>,
    /// Rows the target refused when they were written: not missing when they are absent.
    excused: Option<&'a write_rejects::WriteRejects>,
    /// Source keys of the rows absent from the target because it refused them (write rejects).
    pub refused: Kept<String>,
    /// Refused rows whose source maps to another document now: their absence is not excused.
    unexcused: HashSet<String>,
}

impl<'a, D> Problems<'a, D> {
    pub fn new(entity: &'a str, log: &'a mut ProblemLog) -> Problems<'a, D> {
        Problems {
            entity,
            log,
            missing: Kept::default(),
            unexpected: Kept::default(),
            different: Kept::default(),
            excused: None,
            refused: Kept::default(),
            unexcused: HashSet::new(),
        }
    }

    /// Excuses exactly the rows of `rejects` when they are missing (they count as refused).
    pub fn excusing(mut self, rejects: &'a write_rejects::WriteRejects) -> Problems<'a, D> {
        self.excused = Some(rejects);
        self
    }

    /// A row of `key` is not in the target: refused there when written (excused), else missing.
    /// The refusal of `key` no longer holds (its source changed since): missing if absent.
    pub fn unexcuse(&mut self, key: &str) {
        self.unexcused.insert(key.to_string());
    }

    pub fn missing(&mut self, key: String) -> Result<(), RunError> {
        if self.excused.is_some_and(|r| r.contains(&key)) && !self.unexcused.contains(&key) {
            self.refused.push(key);
            return Ok(());
        }
        self.log
            .write(serde_json::json!({ "entity": self.entity, "kind": "missing", "key": key }))?;
        self.missing.push(key);
        Ok(())
    }

    pub fn unexpected(&mut self, id: String) -> Result<(), RunError> {
        self.log
            .write(serde_json::json!({ "entity": self.entity, "kind": "unexpected", "id": id }))?;
        self.unexpected.push(id);
        Ok(())
    }

    pub fn different(&mut self, key: &str, id: &str, item: D) -> Result<(), RunError> {
        self.log.write(
            serde_json::json!({ "entity": self.entity, "kind": "different", "key": key, "id": id }),
        )?;
        self.different.push(item);
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Different {
    pub key: String,
    pub id: String,
    /// Dotted paths whose values differ (first ones), when computed.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokenReference {
    pub path: String,
    pub references: String,
    /// Distinct values that point nowhere.
    pub dangling: u64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddedCount {
    pub path: String,
    /// Child rows of the written parents.
    pub source_children: u64,
    pub target_elements: u64,
    /// Child rows of the source that belong to no parent row (not in `source_children`): no
    /// document holds them, and the run listed each (rule `orphan_child`). Not a failure.
    pub orphan_children: u64,
    /// The child source and the parent's, as the mapping names them.
    pub child_source: String,
    pub parent_source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntityVerification {
    pub entity: String,
    pub collection: String,
    /// `full` or `sample of N`.
    pub mode: String,
    pub source_rows: u64,
    /// Rows the mapping rejects (transform or validation).
    pub rejected_by_mapping: u64,
    /// Expected rows absent from the target because it refused them when the run wrote them
    /// (write rejects in the run's rejects file): excused, not missing.
    pub rejected_by_target: u64,
    /// The first [`KEPT`] source keys of those rows.
    pub rejected_by_target_keys: Vec<String>,
    pub expected: u64,
    pub target: u64,
    /// Appwrite users of the project that cutover did not import into this destination and no
    /// source row expects (signed up in the application, created by hand): not counted in
    /// `target`, not unexpected.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_imported: u64,
    /// Appwrite users cutover blocked (not deleted: an account cannot be put back) because their
    /// rows are rejected now: kept on purpose, not counted in `target`, not unexpected.
    #[serde(skip_serializing_if = "is_zero")]
    pub blocked_kept: u64,
    /// Of the rows refused when written, those whose file an earlier run uploaded is kept (an
    /// Appwrite Storage bucket cannot be backed up): in the target, not compared.
    #[serde(skip_serializing_if = "is_zero")]
    pub kept_earlier: u64,
    pub compared: u64,
    /// How many documents are missing; `missing` holds the first [`KEPT`] source keys.
    pub missing_count: u64,
    pub missing: Vec<String>,
    pub unexpected_count: u64,
    pub unexpected: Vec<String>,
    pub different_count: u64,
    pub different: Vec<Different>,
    pub broken_references: Vec<BrokenReference>,
    /// References the run wrote with a warning (rule `reference_rejected`, the field without an
    /// `exists` rule at error severity): they name rows of the referenced entity that are in the
    /// source but not in the target (rejected or skipped when it ran). Listed, not failures —
    /// the run recorded each in its warnings file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warned_references: Vec<BrokenReference>,
    /// Embedded arrays: child rows of the written parents vs array elements in the target.
    pub embedded: Vec<EmbeddedCount>,
    /// What the mapping declares of the destination itself that the target holds otherwise:
    /// an index it builds gone (adv39 F11), the table's permissions or row security (F13).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// In a full comparison the target holds exactly as many documents as expected — whatever
    /// the per-document comparison says (documents sharing an `_id` would hide one another).
    pub counts_agree: bool,
    pub ok: bool,
    /// Values the independent comparison found other than PostgreSQL's own (set by
    /// [`oracle::Independent::apply`]; in the JSON report under `independent`).
    #[serde(skip)]
    pub independent_mismatches: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl EntityVerification {
    /// Every problem found in the entity, for its summary line: documents missing, unexpected or
    /// different, broken references, counts that disagree (the target's, an embedded array's in
    /// a full comparison) and values the independent comparison found other than PostgreSQL's.
    /// The line said "0 problem(s)" of an entity failing on independent mismatches alone (found
    /// by the thirteenth tester, T4 and T8). Never 0 for an entity that fails.
    pub fn problem_count(&self) -> u64 {
        let embedded = self
            .embedded
            .iter()
            .filter(|e| e.source_children != e.target_elements)
            .count() as u64;
        let n = self.missing_count
            + self.unexpected_count
            + self.different_count
            + self.broken_references.len() as u64
            + u64::from(!self.counts_agree)
            + embedded
            + self.settings.len() as u64
            + self.independent_mismatches;
        n.max(u64::from(!self.ok))
    }
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// The `_id` of a raw document (Null when it has none).
fn raw_id(d: &RawDocumentBuf) -> Bson {
    d.get("_id")
        .ok()
        .flatten()
        .and_then(|v| Bson::try_from(v.to_raw_bson()).ok())
        .unwrap_or(Bson::Null)
}

fn show_id(id: &Bson) -> String {
    match id {
        Bson::Binary(b) if b.bytes.len() == 16 => uuid::Uuid::from_slice(&b.bytes)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| id.to_string()),
        // Quoted when it would read as another type's `_id` (adv32 F8: the string "6" beside
        // the integer 6 printed alike).
        Bson::String(s) if reads_as_other_type(s) => {
            serde_json::Value::from(s.as_str()).to_string()
        }
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether an `_id` string prints like a number, a boolean, null, or a document or array.
fn reads_as_other_type(s: &str) -> bool {
    s.is_empty()
        || s.parse::<f64>().is_ok()
        || matches!(s, "true" | "false" | "null")
        || s.starts_with(['{', '[', '"'])
}

/// Paths (dotted) where two documents differ, depth first, at most `limit`.
/// Whether two values are the same BSON, as the hash compares them: NaN is NaN, −0 is not 0, and
/// a document's field order counts (`==` says otherwise on each).
fn same_value(a: &Bson, b: &Bson) -> bool {
    // As text: JSON maps compare without regard to order.
    let a = a.clone().into_canonical_extjson().to_string();
    let b = b.clone().into_canonical_extjson().to_string();
    a == b
}

pub fn diff_paths(
    expected: &Document,
    actual: &Document,
    prefix: &str,
    out: &mut Vec<String>,
    limit: usize,
) {
    let found_before = out.len();
    for (k, ev) in expected {
        if out.len() >= limit {
            return;
        }
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (ev, actual.get(k)) {
            (_, None) => out.push(path),
            (Bson::Document(e), Some(b @ Bson::Document(a))) => {
                let before = out.len();
                diff_paths(e, a, &path, out, limit);
                // Same fields, other order: the document itself differs.
                if out.len() == before && !same_value(ev, b) {
                    out.push(path);
                }
            }
            (e, Some(a)) if !same_value(e, a) => out.push(path),
            _ => {}
        }
    }
    for k in actual.keys() {
        if out.len() >= limit {
            return;
        }
        if !expected.contains_key(k) {
            out.push(if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            });
        }
    }
    // Same fields and values, other order at the top (a sub-document's is named by its path).
    if prefix.is_empty()
        && out.len() == found_before
        && out.len() < limit
        && !expected.keys().eq(actual.keys())
    {
        out.push("(field order)".to_string());
    }
}

fn merr(op: String) -> impl FnOnce(mongodb::error::Error) -> RunError {
    move |cause| RunError::Target(MongoError::Command { op, cause })
}

/// The next target document's `_id` and hash.
async fn next_target(
    cursor: &mut mongodb::Cursor<RawDocumentBuf>,
    collection: &str,
) -> Result<Option<(Bson, u64)>, RunError> {
    let Some(d) = cursor
        .try_next()
        .await
        .map_err(merr(format!("read {collection}")))?
    else {
        return Ok(None);
    };
    let id = raw_id(&d);
    Ok(Some((id, hash_bytes(d.as_bytes()))))
}

/// The target's documents as (`_id`, hash), read ahead by a task of their own: the target's
/// round trips and BSON decoding overlap the source side's reading and mapping.
struct TargetHashes {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<(Bson, u64)>, RunError>>,
    batch: std::vec::IntoIter<(Bson, u64)>,
    _reader: crate::pipeline::run::Spawned<()>,
}

impl TargetHashes {
    /// Documents handed over at once, and batches read ahead.
    const BATCH: usize = 1024;
    const AHEAD: usize = 4;

    fn spawn(mut cursor: mongodb::Cursor<RawDocumentBuf>, collection: String) -> TargetHashes {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::AHEAD);
        let reader = crate::pipeline::run::Spawned::spawn(async move {
            let mut batch = Vec::with_capacity(Self::BATCH);
            loop {
                match next_target(&mut cursor, &collection).await {
                    Ok(Some(item)) => {
                        batch.push(item);
                        if batch.len() < Self::BATCH {
                            continue;
                        }
                    }
                    Ok(None) => {
                        if !batch.is_empty() {
                            let _ = tx.send(Ok(batch)).await;
                        }
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                let full = std::mem::replace(&mut batch, Vec::with_capacity(Self::BATCH));
                if tx.send(Ok(full)).await.is_err() {
                    return;
                }
            }
        });
        TargetHashes {
            rx,
            batch: Vec::new().into_iter(),
            _reader: reader,
        }
    }

    async fn next(&mut self) -> Result<Option<(Bson, u64)>, RunError> {
        loop {
            if let Some(item) = self.batch.next() {
                return Ok(Some(item));
            }
            match self.rx.recv().await {
                Some(batch) => self.batch = batch?.into_iter(),
                None => return Ok(None),
            }
        }
    }
}

/// Sampled ids looked up in the target at once.
const SAMPLE_CHUNK: usize = 500;

pub(crate) fn spill_err(cause: std::io::Error) -> RunError {
    RunError::Io {
        path: PathBuf::from("a temporary file (sorting ids for verify)"),
        cause,
    }
}

/// Reads the target documents of `ids` into `actual` as (id bytes, hash); empties `ids`.
async fn read_sampled(
    coll: &mongodb::Collection<RawDocumentBuf>,
    collection: &str,
    ids: &mut Vec<Bson>,
    actual: &mut Spill,
) -> Result<(), RunError> {
    if ids.is_empty() {
        return Ok(());
    }
    let filter = doc! { "_id": { "$in": std::mem::take(ids) } };
    let mut cursor = coll
        .find(filter)
        .await
        .map_err(merr(format!("read {collection}")))?;
    while let Some((id, hash)) = next_target(&mut cursor, collection).await? {
        actual
            .push(id_bytes(&id), hash.to_le_bytes().to_vec())
            .map_err(spill_err)?;
    }
    Ok(())
}

/// Verifies one entity. `sample`: compare only every k-th source row so that about `n` are checked.
/// Takes the children of an absent parent the target refused (`refused`: their counts by key) out
/// of the expected totals: they are rightly absent with it.
fn uncount_children(key: &str, refused: &HashMap<String, Vec<u64>>, totals: &mut [u64]) {
    if let Some(counts) = refused.get(key) {
        for (t, c) in totals.iter_mut().zip(counts) {
            *t = t.saturating_sub(*c);
        }
    }
}

/// What a target's documents are compared with, the same for either target: the mapping's
/// context, the sample (`Some(n)`: about n rows spread over the source) and the rows the
/// server refused when the runs wrote them (excused when absent).
#[derive(Clone, Copy)]
pub struct Expecting<'a> {
    pub ctx: &'a MapContext,
    pub sample: Option<u64>,
    pub refused: &'a write_rejects::WriteRejects,
}

/// Compares one entity of the source with `target`, whichever kind it is (the only place verify
/// asks which).
pub async fn verify_entity_in(
    target: &crate::sink::target::Target,
    plan: &Plan,
    session: &mut SourceSession,
    expecting: &Expecting<'_>,
    refs: &appwrite::References<'_>,
    log: &mut ProblemLog,
) -> Result<EntityVerification, RunError> {
    use crate::sink::target::Target;
    match target {
        Target::Mongo(m) => verify_entity(plan, session, m, expecting, refs.collections, log).await,
        Target::Appwrite(a) => {
            appwrite::verify_entity(plan, session, a, expecting, refs, log).await
        }
    }
}

/// The rows of `refused` (write rejects of the runs that wrote the collection) are excused when
/// they are absent.
pub async fn verify_entity(
    plan: &Plan,
    session: &mut SourceSession,
    target: &MongoTarget,
    expecting: &Expecting<'_>,
    ref_collections: &HashMap<String, String>,
    log: &mut ProblemLog,
) -> Result<EntityVerification, RunError> {
    let Expecting {
        ctx,
        sample,
        refused,
    } = *expecting;
    let coll = target
        .database()
        .collection::<RawDocumentBuf>(&plan.collection);
    let target_count = target.count(&plan.collection).await?;
    let source_rows = session.count(&plan.relation).await?;
    let step = match sample {
        Some(n) if n > 0 && n < source_rows => source_rows.div_ceil(n),
        _ => 1,
    };
    let mode = sample_mode(step);
    // Where the sample starts, drawn each time: a verify run again looks at other rows (adv43
    // F7: a fixed stride skipped the same changed row every time).
    let offset = if step > 1 { fastrand::u64(0..step) } else { 0 };

    // Merge-style when the target's _id order is the key order: both sides stream. Otherwise
    // both sides' (id bytes, hash) go through an external sort and are merged by id.
    let ordered = step == 1 && order::ids_follow_key_order(plan);
    let mut found: Problems<'_, (Bson, String)> =
        Problems::new(&plan.entity, log).excusing(refused);
    let mut compared = 0u64;
    let mut target_cursor = if ordered {
        Some(TargetHashes::spawn(
            coll.find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .map_err(merr(format!("read {}", plan.collection)))?,
            plan.collection.clone(),
        ))
    } else {
        None
    };
    let mut pending_target: Option<(Bson, u64)> = None;

    // Unordered ids: (id bytes → hash, key) of the expected side; (id bytes → hash) of the target.
    let mut expected = Spill::new();
    let mut actual = Spill::new();
    // Sampled ids whose target documents are not read yet (at most `SAMPLE_CHUNK`).
    let mut sampled_ids: Vec<Bson> = Vec::new();
    let mut rejected_by_mapping = 0u64;
    let mut expected_count = 0u64;
    let mut child_totals: Vec<u64> = vec![0; plan.embeds.len()];
    let mut orphan_totals: Vec<u64> = vec![0; plan.embeds.len()];
    let mut refused_children: HashMap<String, Vec<u64>> = HashMap::new();
    {
        let mut readers = Readers::open(session, plan).await?;
        let limit = Some(crate::sink::mongodb::MAX_DOCUMENT_BYTES);
        let mut rows = ExpectedRows::new(&mut readers, plan, limit);
        let mut n = 0u64;
        while let Some(item) = rows.next(ctx).await? {
            if let ExpectedRow::Orphan(o) = &item {
                orphan_totals[o.embed] += 1;
                continue;
            }
            let this = n;
            n += 1;
            match item {
                ExpectedRow::Orphan(_) => {}
                ExpectedRow::Rejected { .. } => rejected_by_mapping += 1,
                ExpectedRow::Document {
                    mapped,
                    child_counts,
                    ..
                } => {
                    for (total, kids) in child_totals.iter_mut().zip(&child_counts) {
                        *total += *kids as u64;
                    }
                    // A parent the run refused has no children in the target when it is absent:
                    // they are taken back out of the totals then.
                    let doc = mapped.doc.expect("a document row has its document");
                    let mut excused = false;
                    if refused.contains(&mapped.key) {
                        if refused.stale_for(&mapped.key, doc.as_bytes())
                            || (refused.rule(&mapped.key)
                                == Some(crate::sink::target::RULE_DUPLICATE_KEY)
                                && !unique_clash_holds(&coll, plan, &doc).await?)
                        {
                            // Refused as another document (the source changed since), or for a
                            // key no other document holds any more (adv44 F3: a delta run never
                            // wrote it again, and verify kept excusing it).
                            found.unexcuse(&mapped.key);
                        } else {
                            excused = true;
                            refused_children.insert(
                                mapped.key.clone(),
                                child_counts.iter().map(|&c| c as u64).collect(),
                            );
                        }
                    }
                    expected_count += 1;
                    // A row the target refused is looked at whatever the sample: the whole
                    // count is compared, less the refused rows found absent (adv43 F6).
                    if !(this + offset).is_multiple_of(step) && !excused {
                        continue;
                    }
                    let id = raw_id(&doc);
                    let hash = hash_bytes(doc.as_bytes());
                    if let Some(cursor) = target_cursor.as_mut() {
                        let mut matched = false;
                        loop {
                            if pending_target.is_none() {
                                pending_target = cursor.next().await?;
                            }
                            let Some((tid, thash)) = pending_target.as_ref() else {
                                break;
                            };
                            match order::bson_cmp(tid, &id) {
                                std::cmp::Ordering::Less => {
                                    found.unexpected(show_id(tid))?;
                                    pending_target = None;
                                }
                                std::cmp::Ordering::Equal => {
                                    compared += 1;
                                    if *thash != hash {
                                        found.different(
                                            &mapped.key,
                                            &show_id(&id),
                                            (id.clone(), mapped.key.clone()),
                                        )?;
                                    }
                                    pending_target = None;
                                    matched = true;
                                    break;
                                }
                                std::cmp::Ordering::Greater => break,
                            }
                        }
                        if !matched {
                            uncount_children(&mapped.key, &refused_children, &mut child_totals);
                            found.missing(mapped.key)?;
                        }
                        continue;
                    }
                    let mut payload = hash.to_le_bytes().to_vec();
                    payload.extend_from_slice(mapped.key.as_bytes());
                    expected.push(id_bytes(&id), payload).map_err(spill_err)?;
                    if step > 1 {
                        sampled_ids.push(id);
                        if sampled_ids.len() >= SAMPLE_CHUNK {
                            read_sampled(&coll, &plan.collection, &mut sampled_ids, &mut actual)
                                .await?;
                        }
                    }
                }
            }
        }
    }

    // Target side.
    if let Some(cursor) = target_cursor.as_mut() {
        // Whatever the target holds past the last source key is unexpected.
        if let Some((tid, _)) = pending_target.take() {
            found.unexpected(show_id(&tid))?;
        }
        while let Some((tid, _)) = cursor.next().await? {
            found.unexpected(show_id(&tid))?;
        }
    } else {
        // Every target document (full) or the sampled ones.
        if step == 1 {
            let mut cursor = TargetHashes::spawn(
                coll.find(doc! {})
                    .await
                    .map_err(merr(format!("read {}", plan.collection)))?,
                plan.collection.clone(),
            );
            while let Some((id, hash)) = cursor.next().await? {
                actual
                    .push(id_bytes(&id), hash.to_le_bytes().to_vec())
                    .map_err(spill_err)?;
            }
        } else {
            read_sampled(&coll, &plan.collection, &mut sampled_ids, &mut actual).await?;
        }
        let mut expected = expected.sorted().map_err(spill_err)?;
        let mut actual = actual.sorted().map_err(spill_err)?;
        let hash_of = |p: &[u8]| u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let mut e = expected.next_record().map_err(spill_err)?;
        let mut a = actual.next_record().map_err(spill_err)?;
        loop {
            let order = match (&e, &a) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((ek, _)), Some((ak, _))) => ek.cmp(ak),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (_, payload) = e.take().expect("an expected record");
                    let key = String::from_utf8_lossy(&payload[8..]).into_owned();
                    uncount_children(&key, &refused_children, &mut child_totals);
                    found.missing(key)?;
                    e = expected.next_record().map_err(spill_err)?;
                }
                std::cmp::Ordering::Greater => {
                    let (idb, _) = a.take().expect("a target record");
                    let id = id_from_bytes(&idb).unwrap_or(Bson::Null);
                    found.unexpected(show_id(&id))?;
                    a = actual.next_record().map_err(spill_err)?;
                }
                std::cmp::Ordering::Equal => {
                    let (idb, payload) = e.take().expect("an expected record");
                    let (_, target) = a.take().expect("a target record");
                    compared += 1;
                    if hash_of(&payload) != hash_of(&target) {
                        let id = id_from_bytes(&idb).unwrap_or(Bson::Null);
                        let key = String::from_utf8_lossy(&payload[8..]).into_owned();
                        found.different(&key, &show_id(&id), (id.clone(), key.clone()))?;
                    }
                    e = expected.next_record().map_err(spill_err)?;
                    a = actual.next_record().map_err(spill_err)?;
                }
            }
        }
    }
    let Problems {
        mut missing,
        mut unexpected,
        different: different_ids,
        refused: mut refused_rows,
        ..
    } = found;
    missing.first.sort();
    unexpected.first.sort();
    refused_rows.first.sort();

    // Field-level differences for the first differing documents: map their rows again.
    let mut different: Vec<Different> = different_ids
        .first
        .iter()
        .map(|(id, key)| Different {
            key: key.clone(),
            id: show_id(id),
            fields: Vec::new(),
        })
        .collect();
    different.sort_by(|a, b| a.key.cmp(&b.key));
    if !different.is_empty() {
        let wanted: HashMap<String, usize> = different
            .iter()
            .take(DIFFED)
            .enumerate()
            .map(|(i, d)| (d.key.clone(), i))
            .collect();
        let mut conn = session.reader().await?;
        let mut rows = postgres::stream(&mut conn, &plan.read);
        let no_children: Vec<Vec<Vec<Value>>> = plan.embeds.iter().map(|_| Vec::new()).collect();
        let mut found: Vec<(usize, Document)> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let Ok(row) = row else { continue };
            let key: Vec<&Value> = plan.key.iter().map(|&i| &row[i]).collect();
            let key_text = crate::source::value::key_text(&key);
            if let Some(&i) = wanted.get(&key_text) {
                // Children are not re-read here: embedded arrays are compared by the hash only.
                let mapped = map_row(plan, &row, &no_children, ctx);
                if let Some(doc) = mapped.doc.and_then(|d| d.to_document().ok()) {
                    found.push((i, doc));
                }
            }
        }
        drop(rows);
        for (i, mut exp) in found {
            let id = exp.get("_id").cloned().unwrap_or(Bson::Null);
            let actual = target
                .database()
                .collection::<Document>(&plan.collection)
                .find_one(doc! { "_id": id })
                .await
                .map_err(merr(format!("read {}", plan.collection)))?;
            if let Some(mut actual) = actual {
                for e in &plan.embeds {
                    exp.remove(&e.path_text);
                    actual.remove(&e.path_text);
                }
                let mut fields = Vec::new();
                diff_paths(&exp, &actual, "", &mut fields, 20);
                if fields.is_empty() && !plan.embeds.is_empty() {
                    fields = plan.embeds.iter().map(|e| e.path_text.clone()).collect();
                }
                different[i].fields = fields;
            }
        }
    }

    // References: every value of a reference field names an existing document (or one the run
    // warned of: a row rejected or skipped when its entity ran).
    let mut broken_references = Vec::new();
    let mut warned_references = Vec::new();
    for f in &plan.fields {
        let Some(rule) = &f.reference else { continue };
        let ref_coll = ref_collections
            .get(&rule.entity)
            .cloned()
            .unwrap_or_else(|| rule.entity.clone());
        let pipeline = vec![
            doc! { "$match": { f.path_text.clone(): { "$ne": null, "$exists": true } } },
            doc! { "$group": { "_id": format!("${}", f.path_text) } },
            doc! { "$lookup": { "from": &ref_coll, "localField": "_id", "foreignField": "_id", "as": "m" } },
            doc! { "$match": { "m": { "$size": 0 } } },
            doc! { "$project": { "_id": 1 } },
        ];
        let dangling: Vec<Bson> = target
            .database()
            .collection::<Document>(&plan.collection)
            .aggregate(pipeline)
            .await
            .map_err(merr(format!("check references of {}", plan.collection)))?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(merr(format!("check references of {}", plan.collection)))?
            .into_iter()
            .filter_map(|mut d| d.remove("_id"))
            .collect();
        let (warned, broken) = split_dangling(
            dangling,
            ctx.absent_ids.get(&rule.entity).map(|a| a.as_ref()),
        );
        for (values, list) in [
            (broken, &mut broken_references),
            (warned, &mut warned_references),
        ] {
            if let Some(r) = dangling_reference(&f.path_text, &ref_coll, &values) {
                list.push(r);
            }
        }
    }

    // Embedded arrays: as many elements in the target as child rows of the written parents.
    let mut embedded = Vec::new();
    for ((e, &source_children), &orphan_children) in
        plan.embeds.iter().zip(&child_totals).zip(&orphan_totals)
    {
        let pipeline = vec![doc! { "$group": {
            "_id": null,
            "n": { "$sum": { "$size": { "$ifNull": [format!("${}", e.path_text), []] } } },
        }}];
        let out: Vec<Document> = target
            .database()
            .collection::<Document>(&plan.collection)
            .aggregate(pipeline)
            .await
            .map_err(merr(format!("count embedded {}", e.path_text)))?
            .try_collect()
            .await
            .map_err(merr(format!("count embedded {}", e.path_text)))?;
        let target_elements = out
            .first()
            .and_then(|d| match d.get("n") {
                Some(Bson::Int32(n)) => Some(*n as u64),
                Some(Bson::Int64(n)) => Some(*n as u64),
                _ => None,
            })
            .unwrap_or(0);
        embedded.push(EmbeddedCount {
            path: e.path_text.clone(),
            source_children,
            target_elements,
            orphan_children,
            child_source: e.source_name.clone(),
            parent_source: plan.source_name.clone(),
        });
    }
    // Both counts are whole even when the documents compared are a sample: a document more
    // or fewer fails a sample too (adv39 F1: `counts_agree: true` with 88 expected, 87 there).
    let embedded_ok = embedded
        .iter()
        .all(|e| e.source_children == e.target_elements);
    // The rows the target refused are expected yet rightly absent.
    let counts_agree = expected_count.saturating_sub(refused_rows.count) == target_count;
    let ok = embedded_ok
        && counts_agree
        && missing.count == 0
        && unexpected.count == 0
        && different_ids.count == 0
        && broken_references.is_empty();
    Ok(EntityVerification {
        entity: plan.entity.clone(),
        collection: plan.collection.clone(),
        mode,
        source_rows,
        rejected_by_mapping,
        rejected_by_target: refused_rows.count,
        rejected_by_target_keys: refused_rows.first,
        expected: expected_count,
        target: target_count,
        not_imported: 0,
        blocked_kept: 0,
        kept_earlier: 0,
        compared,
        missing_count: missing.count,
        missing: missing.first,
        unexpected_count: unexpected.count,
        unexpected: unexpected.first,
        different_count: different_ids.count,
        different,
        broken_references,
        warned_references,
        embedded,
        settings: Vec::new(),
        counts_agree,
        ok,
        independent_mismatches: 0,
    })
}

/// The ids (by [`crate::mapping::plan::id_text`]) of `plan`'s source rows that its run leaves out
/// of the target whatever the target holds now: the rows its mapping rejects, and the rows the
/// target refused when they were written (`refused`, by source key). A referenced row absent from
/// the target for another reason (its document deleted since) is not among them: references
/// to it are broken, not excused.
/// `then`: only the rows whose source key is among these (the rows left out as of an earlier
/// run, see [`write_rejects::rejected_as_of`]).
pub async fn left_out_ids(
    plan: &Plan,
    session: &mut SourceSession,
    ctx: &MapContext,
    refused: &write_rejects::WriteRejects,
    max_document_bytes: Option<usize>,
    then: Option<&HashSet<String>>,
) -> Result<HashSet<String>, RunError> {
    let mut readers = Readers::open(session, plan).await?;
    let mut rows = ExpectedRows::new(&mut readers, plan, max_document_bytes);
    let mut out = HashSet::new();
    while let Some(item) = rows.next(ctx).await? {
        let (values, key) = match &item {
            ExpectedRow::Rejected {
                row, decoded, key, ..
            } => (row.as_ref().unwrap_or(decoded), key),
            ExpectedRow::Document { row, mapped, .. } if refused.contains(&mapped.key) => {
                (row, &mapped.key)
            }
            _ => continue,
        };
        if then.is_some_and(|t| !t.contains(key)) {
            continue;
        }
        let key: Option<Vec<&Value>> = plan.key.iter().map(|&i| values.get(i)).collect();
        if let Some(id) = key.and_then(|k| plan.id.id_for(&k).ok()) {
            out.insert(crate::mapping::plan::id_text(&id));
        }
    }
    Ok(out)
}

/// What the runs of each referenced entity left out of the target (see [`left_out_ids`]),
/// following the references that left rows out: a row rejected because it names a row left out
/// (`exists`, rule `reference_rejected`) is left out too — down a chain of an entity's
/// references to itself, and across entities (an employee rejected, then the desks naming it).
/// Each entity's rows are judged as its run judged them: by what the entities it references
/// left out. Memoised by entity and run.
pub struct LeftOut<'a> {
    pub pipeline: &'a crate::pipeline::Pipeline,
    pub ledger: &'a crate::ledger::Ledger,
    pub rejects_dir: &'a Path,
    pub max_document_bytes: Option<usize>,
    /// The entities that completed a run (the others are not judged, as the run does not).
    pub ran: &'a HashSet<String>,
    /// The mapping context without any reference judged.
    pub plain: MapContext,
    memo: HashMap<(String, Option<i64>), HashSet<String>>,
    /// Entities being computed (a cycle of references is judged without the one it returns to).
    visiting: HashSet<String>,
}

impl<'a> LeftOut<'a> {
    pub fn new(
        pipeline: &'a crate::pipeline::Pipeline,
        ledger: &'a crate::ledger::Ledger,
        rejects_dir: &'a Path,
        max_document_bytes: Option<usize>,
        ran: &'a HashSet<String>,
        plain: MapContext,
    ) -> Self {
        Self {
            pipeline,
            ledger,
            rejects_dir,
            max_document_bytes,
            ran,
            plain,
            memo: HashMap::new(),
            visiting: HashSet::new(),
        }
    }

    /// The ids of `entity`'s rows its run left out; `as_of`: only those left out as of that run
    /// too (see [`write_rejects::rejected_as_of`]).
    pub fn of<'s>(
        &'s mut self,
        session: &'s mut SourceSession,
        entity: &'s str,
        as_of: Option<i64>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<HashSet<String>, RunError>> + 's>> {
        Box::pin(async move {
            let cached = (entity.to_string(), as_of);
            if let Some(ids) = self.memo.get(&cached) {
                return Ok(ids.clone());
            }
            let then = match as_of {
                Some(run) => Some(
                    write_rejects::rejected_as_of(self.ledger, self.rejects_dir, entity, run)
                        .await?,
                ),
                None => None,
            };
            let step = crate::pipeline::Step {
                stage: String::new(),
                entity: entity.to_string(),
            };
            let plans = crate::pipeline::run::compile_plans(
                self.pipeline,
                std::slice::from_ref(&step),
                session,
            )
            .await?;
            let refused = write_rejects::load(self.ledger, self.rejects_dir, entity).await?;
            let mut ctx = self.plain.clone();
            for (e, keys) in
                crate::pipeline::run::load_known_keys(self.pipeline, &plans, session).await?
            {
                ctx.known_keys.entry(e).or_insert(keys);
            }
            self.visiting.insert(entity.to_string());
            let mut own = false;
            for plan in &plans {
                for r in crate::pipeline::run::referenced_entities(plan) {
                    if r == entity {
                        own = true;
                    } else if self.ran.contains(&r) && !self.visiting.contains(&r) {
                        let ids = self.of(session, &r, None).await?;
                        ctx.absent_ids.insert(r, std::sync::Arc::new(ids));
                    }
                }
            }
            self.visiting.remove(entity);
            let cascades = own && plans.iter().any(crate::pipeline::run::cascades_into_itself);
            let max_bytes = self.max_document_bytes;
            let (mut ids, ctx) = crate::pipeline::run::settle_left_out(
                entity,
                cascades,
                ctx,
                async |ctx: &MapContext| {
                    let mut ids = HashSet::new();
                    for plan in &plans {
                        ids.extend(
                            left_out_ids(plan, session, ctx, &refused, max_bytes, None).await?,
                        );
                    }
                    Ok(ids)
                },
            )
            .await?;
            if let Some(then) = &then {
                // The rows left out both then and now: one more pass, keys filtered.
                let mut now = HashSet::new();
                for plan in &plans {
                    now.extend(
                        left_out_ids(
                            plan,
                            session,
                            &ctx,
                            &refused,
                            self.max_document_bytes,
                            Some(then),
                        )
                        .await?,
                    );
                }
                ids = now;
            }
            self.memo.insert(cached, ids.clone());
            Ok(ids)
        })
    }
}

/// Whether another document of the target holds the key of a unique index of `plan` that `doc`
/// has: why mongod refused it, still so. A unique index over a path `doc` lacks holds nothing.
async fn unique_clash_holds(
    coll: &mongodb::Collection<RawDocumentBuf>,
    plan: &Plan,
    doc: &RawDocumentBuf,
) -> Result<bool, RunError> {
    let Ok(d) = doc.to_document() else {
        return Ok(true);
    };
    let value_at = |path: &str| {
        let mut parts = path.split('.');
        let mut v = d.get(parts.next()?)?;
        for p in parts {
            v = v.as_document()?.get(p)?;
        }
        Some(v.clone())
    };
    let coll = coll.clone_with_type::<Document>();
    let mut checked = false;
    for ix in plan.indexes.iter().filter(|i| i.unique) {
        // Keys compared under a collation or within a partial filter: an equality query cannot
        // tell, so the refusal is taken to hold.
        if ix.collation.is_some() || ix.partial.is_some() || ix.kind.is_some() {
            return Ok(true);
        }
        let mut filter = doc! { "_id": { "$ne": d.get("_id").cloned().unwrap_or(Bson::Null) } };
        let mut whole = true;
        for (path, _) in ix.key_pairs() {
            match value_at(&path) {
                // An array keys each element (a multikey index): equality with the whole array
                // cannot tell which element clashed, so the refusal is taken to hold.
                Some(Bson::Array(_)) => return Ok(true),
                Some(v) => {
                    filter.insert(path, v);
                }
                None => whole = false,
            }
        }
        if !whole {
            continue;
        }
        checked = true;
        if coll
            .find_one(filter)
            .await
            .map_err(merr(format!("read {}", plan.collection)))?
            .is_some()
        {
            return Ok(true);
        }
    }
    // No index of the mapping's said why (the collection's own, say): taken to hold.
    Ok(!checked)
}

/// Splits reference values that name no document into those naming a row the target does not
/// hold because its entity's run rejected or skipped it (`absent`, by [`crate::mapping::plan::id_text`]:
/// the run wrote them with a `reference_rejected` warning) and the others.
pub(crate) fn split_dangling(
    values: Vec<Bson>,
    absent: Option<&std::collections::HashSet<String>>,
) -> (Vec<Bson>, Vec<Bson>) {
    values
        .into_iter()
        .partition(|v| absent.is_some_and(|a| a.contains(&crate::mapping::plan::id_text(v))))
}

/// The dangling `values` of the reference field at `path` into `references` (None when there
/// are none).
pub(crate) fn dangling_reference(
    path: &str,
    references: &str,
    values: &[Bson],
) -> Option<BrokenReference> {
    (!values.is_empty()).then(|| BrokenReference {
        path: path.to_string(),
        references: references.to_string(),
        dangling: values.len() as u64,
        examples: values.iter().take(5).map(show_id).collect(),
    })
}

/// What a verification of every `step`th source row is called: `full`, or `sample of every
/// 62nd row` (adv36 F3: "62th").
pub(crate) fn sample_mode(step: u64) -> String {
    if step == 1 {
        return "full".to_string();
    }
    let suffix = match (step % 10, step % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("sample of every {step}{suffix} row")
}

/// What `plan`'s mapping declares of its destination that the target holds otherwise (see
/// [`EntityVerification::settings`]): on MongoDB each index it builds (its own and its
/// references'), by keys and uniqueness; on Appwrite the table's permissions and row security
/// where the mapping gives them. Nothing for a destination not there (its counts say so).
pub async fn settings_differ(
    target: &crate::sink::target::Target,
    plan: &Plan,
) -> Result<Vec<String>, RunError> {
    use crate::sink::target::Target;
    let mut out = Vec::new();
    match target {
        Target::Mongo(m) => {
            let coll = m.database().collection::<Document>(&plan.collection);
            let models: Vec<mongodb::IndexModel> = match coll.list_indexes().await {
                Ok(c) => c
                    .try_collect()
                    .await
                    .map_err(merr(format!("list the indexes of {}", plan.collection)))?,
                Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 26) =>
                {
                    return Ok(out);
                }
                Err(e) => return Err(merr(format!("list the indexes of {}", plan.collection))(e)),
            };
            for ix in plan.indexes.iter().chain(&plan.reference_indexes) {
                let mut keys = Document::new();
                for (path, dir) in ix.key_pairs() {
                    match ix.kind {
                        Some(kind) => keys.insert(path, kind.as_str()),
                        None => keys.insert(path, dir),
                    };
                }
                let unique = |m: &mongodb::IndexModel| {
                    m.options.as_ref().and_then(|o| o.unique).unwrap_or(false)
                };
                let there = models.iter().any(|m| {
                    let same_keys = match ix.kind {
                        // A text index's key document is MongoDB's own (`_fts`, `_ftsx`).
                        Some(crate::mapping::spec::IndexKind::Text) => m.keys.contains_key("_fts"),
                        _ => m.keys == keys,
                    };
                    same_keys && unique(m) == ix.unique
                });
                if !there {
                    out.push(format!(
                        "index {}{} missing (the mapping builds it: `cutover migrate --rerun {}` builds it again)",
                        bson::Bson::Document(keys).into_relaxed_extjson(),
                        if ix.unique { " unique" } else { "" },
                        plan.entity
                    ));
                }
            }
        }
        Target::Appwrite(a) => {
            use crate::sink::appwrite::schema;
            if plan.appwrite_users.is_some() {
                return Ok(out);
            }
            if plan.file.is_some() {
                // A file stage's row table: the access the mapping gives it.
                let spec = schema::TableSpec {
                    id: plan.collection.clone(),
                    columns: Vec::new(),
                    indexes: Vec::new(),
                    access: schema::TableAccess::of(plan),
                };
                return appwrite_table_differs(a, &spec, "").await;
            }
            // The table and its child tables as the run makes them: access (a child table has
            // its parent's), columns with their constraints, indexes (adv43 F1–F3).
            out.extend(appwrite_table_differs(a, &schema::table_spec(plan), "").await?);
            for child in schema::child_tables(plan) {
                let within = format!("child table {} (of {}): ", child.table.id, child.key);
                out.extend(appwrite_table_differs(a, &child.table, &within).await?);
            }
        }
    }
    Ok(out)
}

/// What of the Appwrite table `spec` (as [`crate::sink::appwrite::schema::apply`] makes it)
/// the target holds otherwise, each said with `within` before it: the permissions and row
/// security the mapping gives, each column's type and constraints (`required`, size, enum
/// elements, bounds, no default), each index (type, columns, orders), and a unique index the
/// mapping does not make (it refuses rows the source may hold). Nothing for a table that is not
/// there (its rows are missing, said by the comparison).
async fn appwrite_table_differs(
    a: &crate::sink::target::AppwriteTarget,
    spec: &crate::sink::appwrite::schema::TableSpec,
    within: &str,
) -> Result<Vec<String>, RunError> {
    use crate::sink::appwrite::schema::{self, ColumnChange};
    let sink = |e| RunError::Sink(crate::sink::target::SinkError::Appwrite(e));
    let mut out = Vec::new();
    let path = format!("/tablesdb/{}/tables/{}", a.database, spec.id);
    let table = match a.client.call(reqwest::Method::GET, &path, None).await {
        Ok(t) => t,
        Err(e) if e.is_missing() => return Ok(out),
        Err(e) => return Err(sink(e)),
    };
    if let Some(want) = &spec.access.permissions {
        let have: std::collections::BTreeSet<&str> = table["$permissions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .collect();
        let want_set: std::collections::BTreeSet<&str> = want.iter().map(String::as_str).collect();
        if have != want_set {
            out.push(format!(
                "{within}table permissions (the mapping gives {}, the table holds {})",
                serde_json::json!(want),
                table["$permissions"]
            ));
        }
    }
    if let Some(want) = spec.access.row_security
        && table["rowSecurity"].as_bool() != Some(want)
    {
        out.push(format!(
            "{within}row security (the mapping gives {want}, the table holds {})",
            table["rowSecurity"]
        ));
    }
    if !spec.columns.is_empty() {
        let columns = a
            .client
            .columns(&a.database, &spec.id)
            .await
            .map_err(sink)?;
        for c in &spec.columns {
            let Some(have) = columns.iter().find(|e| e["key"].as_str() == Some(&c.key)) else {
                out.push(format!("{within}column `{}` missing", c.key));
                continue;
            };
            match schema::column_change(have, c) {
                None => {}
                Some(ColumnChange::Update { what, .. }) => out.push(format!(
                    "{within}column `{}` is not as the mapping makes it: {what} (`cutover migrate --rerun` sets it again)",
                    c.key
                )),
                Some(ColumnChange::Kept(why)) => {
                    out.push(format!("{within}column `{}`: {why}", c.key));
                }
            }
        }
    }
    for i in &spec.indexes {
        let made = format!("{} over {}", i.kind, i.columns.join(", "));
        match a
            .client
            .index(&a.database, &spec.id, &i.key)
            .await
            .map_err(sink)?
        {
            None => out.push(format!(
                "{within}index `{}` ({made}) missing (the mapping makes it: `cutover migrate --rerun` makes it again)",
                i.key
            )),
            Some(have) if have["status"] == "failed" => {
                out.push(format!("{within}index `{}` ({made}) failed to build", i.key));
            }
            Some(have) if !schema::same_index(&have, i) => out.push(format!(
                "{within}index `{}` is a {} index over {}, the mapping makes a {made} index",
                i.key,
                have["type"].as_str().unwrap_or("?"),
                have["columns"]
            )),
            Some(_) => {}
        }
    }
    let listed = a
        .client
        .call(reqwest::Method::GET, &format!("{path}/indexes"), None)
        .await
        .map_err(sink)?;
    for ix in listed["indexes"].as_array().into_iter().flatten() {
        let key = ix["key"].as_str().unwrap_or_default();
        if ix["type"] == "unique" && !spec.indexes.iter().any(|i| i.key == key) {
            out.push(format!(
                "{within}a unique index `{key}` over {} the mapping does not make (it refuses rows the source may hold)",
                ix["columns"]
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_modes_name_their_step_as_an_ordinal() {
        let named: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 62, 103, 111, 1000]
            .into_iter()
            .map(sample_mode)
            .collect();
        assert_eq!(
            named,
            [
                "full",
                "sample of every 2nd row",
                "sample of every 3rd row",
                "sample of every 4th row",
                "sample of every 11th row",
                "sample of every 12th row",
                "sample of every 13th row",
                "sample of every 21st row",
                "sample of every 62nd row",
                "sample of every 103rd row",
                "sample of every 111th row",
                "sample of every 1000th row",
            ]
        );
    }
    use super::*;

    /// An entity whose only fault is values the independent comparison found other than
    /// PostgreSQL's: its line said "0 problem(s)" (found by the thirteenth tester, T4 and T8).
    /// Those values count; and an entity that fails never counts 0.
    #[test]
    fn independent_mismatches_count_as_the_entitys_problems() {
        let mut v = EntityVerification {
            entity: "t".into(),
            collection: "t".into(),
            mode: "full".into(),
            source_rows: 3,
            rejected_by_mapping: 0,
            rejected_by_target: 0,
            rejected_by_target_keys: Vec::new(),
            expected: 3,
            target: 3,
            not_imported: 0,
            blocked_kept: 0,
            kept_earlier: 0,
            compared: 3,
            missing_count: 0,
            missing: Vec::new(),
            unexpected_count: 0,
            unexpected: Vec::new(),
            different_count: 0,
            different: Vec::new(),
            broken_references: Vec::new(),
            warned_references: Vec::new(),
            embedded: Vec::new(),
            settings: Vec::new(),
            counts_agree: true,
            ok: true,
            independent_mismatches: 0,
        };
        assert_eq!(v.problem_count(), 0);
        let independent = oracle::Independent {
            compared_fields: Vec::new(),
            not_compared: Vec::new(),
            documents: 3,
            rows_without_id: 0,
            mismatch_count: 2,
            mismatches: Vec::new(),
            broken_embedded_references: Vec::new(),
            warned_embedded_references: Vec::new(),
        };
        independent.apply(&mut v);
        assert!(!v.ok);
        assert_eq!(v.problem_count(), 2);
        // An embedded array's count that disagrees in a full comparison is one problem too.
        let mut w = v.clone();
        w.independent_mismatches = 0;
        w.embedded.push(EmbeddedCount {
            path: "c".into(),
            source_children: 4,
            target_elements: 3,
            orphan_children: 0,
            child_source: "c".into(),
            parent_source: "t".into(),
        });
        assert_eq!(w.problem_count(), 1);
        w.embedded.clear();
        assert_eq!(w.problem_count(), 1, "a failing entity never counts 0");
    }

    /// The fields a differing document is named by: −0 against 0, field order inside a
    /// sub-document; and a NaN that is still NaN is no difference. (They read `?` or named an
    /// unchanged NaN field.)
    #[test]
    fn differing_paths_see_negative_zero_order_and_nan() {
        let mut out = Vec::new();
        diff_paths(
            &doc! { "d": -0.0, "r": f64::NAN, "s": { "a": 1, "b": 2 } },
            &doc! { "d": 0.0, "r": f64::NAN, "s": { "b": 2, "a": 1 } },
            "",
            &mut out,
            20,
        );
        assert_eq!(out, ["d", "s"]);
        // Only the top-level order differs.
        let mut out = Vec::new();
        diff_paths(
            &doc! { "a": 1, "email": "x", "b": 2 },
            &doc! { "a": 1, "b": 2, "email": "x" },
            "",
            &mut out,
            20,
        );
        assert_eq!(out, ["(field order)"]);
    }

    #[test]
    fn diff_names_changed_missing_and_extra_paths() {
        let e = doc! { "a": 1, "b": { "c": 2, "d": 3 }, "x": 1 };
        let a = doc! { "a": 1, "b": { "c": 5, "d": 3 }, "y": 2 };
        let mut out = Vec::new();
        diff_paths(&e, &a, "", &mut out, 10);
        assert_eq!(out, ["b.c", "x", "y"]);
    }

    #[test]
    fn ids_of_other_types_print_apart() {
        assert_eq!(show_id(&Bson::Int32(6)), "6");
        assert_eq!(show_id(&Bson::String("6".into())), "\"6\"");
        assert_eq!(show_id(&Bson::String("true".into())), "\"true\"");
        assert_eq!(show_id(&Bson::String("".into())), "\"\"");
        assert_eq!(show_id(&Bson::String("a-6".into())), "a-6");
        assert_ne!(show_id(&Bson::Int64(7)), show_id(&Bson::String("7".into())));
    }
}
