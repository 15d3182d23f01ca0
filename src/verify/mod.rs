//! Post-run verification: re-derive every expected document from the source with the same
//! mapping, and compare it with the target by `_id` (a hash of the raw BSON, which is canonical
//! for documents cutover wrote). Lists missing, unexpected and different documents, with the first
//! differing field paths; checks references point to existing documents.
//!
//! Memory: when the target's `_id` order is the source key order (single int, text or uuid key as
//! `_id`) both sides stream merge-style in bounded memory; otherwise (uuid5 or composite ids) the
//! expected side is held as (id bytes → hash, key) — bounded by the number of keys, not by
//! document sizes — and the target streams past it.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use bson::{Bson, Document, RawDocumentBuf, doc};
use futures::TryStreamExt;
use serde::Serialize;

use crate::mapping::plan::Plan;
use crate::pipeline::run::{ChildCursor, RunError};
use crate::sink::mongodb::{MongoError, MongoTarget};
use crate::source::postgres;
use crate::source::{SourceSession, Value};
use crate::transform::row::{MapContext, map_row};

/// How many problems of each kind the text output shows (the JSON has them all).
pub mod appwrite;
pub mod order;

pub const SHOWN: usize = 20;
/// How many differing documents get a field-by-field diff.
pub const DIFFED: usize = 1000;

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
    pub source_children: u64,
    pub target_elements: u64,
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
    pub expected: u64,
    pub target: u64,
    pub compared: u64,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub different: Vec<Different>,
    pub broken_references: Vec<BrokenReference>,
    /// Embedded arrays: child rows of the written parents vs array elements in the target.
    pub embedded: Vec<EmbeddedCount>,
    pub ok: bool,
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// An `_id` as its encoded BSON bytes: a hashable, exact identity (shared with `--sync-deletes`).
pub(crate) fn id_bytes(id: &Bson) -> Vec<u8> {
    let mut buf = Vec::with_capacity(24);
    let _ = crate::transform::encode::element(&mut buf, "", id);
    buf
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
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Paths (dotted) where two documents differ, depth first, at most `limit`.
pub fn diff_paths(
    expected: &Document,
    actual: &Document,
    prefix: &str,
    out: &mut Vec<String>,
    limit: usize,
) {
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
            (Bson::Document(e), Some(Bson::Document(a))) => diff_paths(e, a, &path, out, limit),
            (e, Some(a)) if e != a => out.push(path),
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
}

fn merr(op: String) -> impl FnOnce(mongodb::error::Error) -> RunError {
    move |source| RunError::Target(MongoError::Command { op, source })
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

/// Verifies one entity. `sample`: compare only every k-th source row so that about `n` are checked.
pub async fn verify_entity(
    plan: &Plan,
    session: &mut SourceSession,
    target: &MongoTarget,
    ctx: &MapContext,
    sample: Option<u64>,
    ref_collections: &HashMap<String, String>,
) -> Result<EntityVerification, RunError> {
    let coll = target
        .database()
        .collection::<RawDocumentBuf>(&plan.collection);
    let target_count = target.count(&plan.collection).await?;
    let source_rows = session.count(&plan.relation).await?;
    let step = match sample {
        Some(n) if n > 0 && n < source_rows => source_rows.div_ceil(n),
        _ => 1,
    };
    let mode = if step == 1 {
        "full".to_string()
    } else {
        format!("sample of every {step}th row")
    };

    // Merge-style when the target's _id order is the key order: both sides stream, memory stays
    // bounded. Otherwise the expected side is held as (id bytes → hash, key).
    let ordered = step == 1 && order::ids_follow_key_order(plan);
    let mut missing = Vec::new();
    let mut unexpected = Vec::new();
    let mut different_ids: Vec<(Bson, String)> = Vec::new();
    let mut compared = 0u64;
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
    let mut pending_target: Option<(Bson, u64)> = None;

    // Expected side: map every source row as `migrate` would.
    let mut expected: HashMap<Vec<u8>, (u64, String)> = HashMap::new();
    let mut sampled_ids: Vec<Bson> = Vec::new();
    let mut rejected_by_mapping = 0u64;
    let mut expected_count = 0u64;
    let mut child_totals: Vec<u64> = vec![0; plan.embeds.len()];
    {
        let mut conn = session.reader().await?;
        let mut child_conns = Vec::new();
        for _ in &plan.embeds {
            child_conns.push(session.reader().await?);
        }
        let mut rows = postgres::stream(&mut conn, &plan.read);
        let mut cursors: Vec<ChildCursor<'_>> = plan
            .embeds
            .iter()
            .zip(child_conns.iter_mut())
            .map(|(e, c)| ChildCursor::new(postgres::stream(c, &e.read)))
            .collect();
        let mut n = 0u64;
        while let Some(row) = rows.try_next().await? {
            let row = match row {
                Ok(row) => row,
                Err(err) => {
                    // Its children are its own (not the next row's orphans) when its key decoded.
                    if err.key(plan.key.len()).is_some() {
                        for (i, c) in cursors.iter_mut().enumerate() {
                            c.take_for(&err.decoded, plan, i).await?;
                        }
                    }
                    n += 1;
                    rejected_by_mapping += 1;
                    continue;
                }
            };
            let mut children = Vec::with_capacity(cursors.len());
            for (i, c) in cursors.iter_mut().enumerate() {
                children.push(c.take_for(&row, plan, i).await?);
            }
            let this = n;
            n += 1;
            let mapped = map_row(plan, &row, &children, ctx);
            if mapped.doc.is_some() {
                for (total, kids) in child_totals.iter_mut().zip(&children) {
                    *total += kids.len() as u64;
                }
            }
            match mapped.doc {
                None => rejected_by_mapping += 1,
                Some(doc) => {
                    expected_count += 1;
                    if !this.is_multiple_of(step) {
                        continue;
                    }
                    let id = raw_id(&doc);
                    if let Some(cursor) = target_cursor.as_mut() {
                        let hash = hash_bytes(doc.as_bytes());
                        let mut matched = false;
                        loop {
                            if pending_target.is_none() {
                                pending_target = next_target(cursor, &plan.collection).await?;
                            }
                            let Some((tid, thash)) = pending_target.as_ref() else {
                                break;
                            };
                            match order::bson_cmp(tid, &id) {
                                std::cmp::Ordering::Less => {
                                    unexpected.push(show_id(tid));
                                    pending_target = None;
                                }
                                std::cmp::Ordering::Equal => {
                                    compared += 1;
                                    if *thash != hash {
                                        different_ids.push((id.clone(), mapped.key.clone()));
                                    }
                                    pending_target = None;
                                    matched = true;
                                    break;
                                }
                                std::cmp::Ordering::Greater => break,
                            }
                        }
                        if !matched {
                            missing.push(mapped.key);
                        }
                        continue;
                    }
                    expected.insert(id_bytes(&id), (hash_bytes(doc.as_bytes()), mapped.key));
                    if step > 1 {
                        sampled_ids.push(id);
                    }
                }
            }
        }
    }

    // Target side.
    if let Some(cursor) = target_cursor.as_mut() {
        // Whatever the target holds past the last source key is unexpected.
        if let Some((tid, _)) = pending_target.take() {
            unexpected.push(show_id(&tid));
        }
        while let Some((tid, _)) = next_target(cursor, &plan.collection).await? {
            unexpected.push(show_id(&tid));
        }
    } else {
        // Unordered ids: every target document (full) or the sampled ids, 500 at a time.
        let mut seen: HashSet<Vec<u8>> = HashSet::with_capacity(expected.len());
        let mut compare = |d: &RawDocumentBuf, unexpected: &mut Vec<String>| {
            let id = raw_id(d);
            let idb = id_bytes(&id);
            match expected.get(&idb) {
                None => unexpected.push(show_id(&id)),
                Some((h, key)) => {
                    compared += 1;
                    if *h != hash_bytes(d.as_bytes()) {
                        different_ids.push((id.clone(), key.clone()));
                    }
                    seen.insert(idb);
                }
            }
        };
        let filters: Vec<Document> = if step == 1 {
            vec![doc! {}]
        } else {
            sampled_ids
                .chunks(500)
                .map(|chunk| doc! { "_id": { "$in": chunk.to_vec() } })
                .collect()
        };
        for filter in filters {
            let mut cursor = coll
                .find(filter)
                .await
                .map_err(merr(format!("read {}", plan.collection)))?;
            while let Some(d) = cursor
                .try_next()
                .await
                .map_err(merr(format!("read {}", plan.collection)))?
            {
                compare(&d, &mut unexpected);
            }
        }
        for (idb, (_, key)) in &expected {
            if !seen.contains(idb) {
                missing.push(key.clone());
            }
        }
    }
    missing.sort();
    unexpected.sort();

    // Field-level differences for the first differing documents: map their rows again.
    let mut different: Vec<Different> = different_ids
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

    // References: every value of a reference field names an existing document.
    let mut broken_references = Vec::new();
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
        let dangling: Vec<Document> = target
            .database()
            .collection::<Document>(&plan.collection)
            .aggregate(pipeline)
            .await
            .map_err(merr(format!("check references of {}", plan.collection)))?
            .try_collect()
            .await
            .map_err(merr(format!("check references of {}", plan.collection)))?;
        if !dangling.is_empty() {
            broken_references.push(BrokenReference {
                path: f.path_text.clone(),
                references: ref_coll.clone(),
                dangling: dangling.len() as u64,
                examples: dangling
                    .iter()
                    .take(5)
                    .map(|d| d.get("_id").map(show_id).unwrap_or_default())
                    .collect(),
            });
        }
    }

    // Embedded arrays: as many elements in the target as child rows of the written parents.
    let mut embedded = Vec::new();
    for (e, &source_children) in plan.embeds.iter().zip(&child_totals) {
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
        });
    }
    let sampled = step > 1;
    let embedded_ok = sampled
        || embedded
            .iter()
            .all(|e| e.source_children == e.target_elements);
    let ok = embedded_ok
        && missing.is_empty()
        && unexpected.is_empty()
        && different.is_empty()
        && broken_references.is_empty();
    Ok(EntityVerification {
        entity: plan.entity.clone(),
        collection: plan.collection.clone(),
        mode,
        source_rows,
        rejected_by_mapping,
        expected: expected_count,
        target: target_count,
        compared,
        missing,
        unexpected,
        different,
        broken_references,
        embedded,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_changed_missing_and_extra_paths() {
        let e = doc! { "a": 1, "b": { "c": 2, "d": 3 }, "x": 1 };
        let a = doc! { "a": 1, "b": { "c": 5, "d": 3 }, "y": 2 };
        let mut out = Vec::new();
        diff_paths(&e, &a, "", &mut out, 10);
        assert_eq!(out, ["b.c", "x", "y"]);
    }
}
