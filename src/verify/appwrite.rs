//! Verification of an Appwrite target: the same questions as for MongoDB — missing, unexpected
//! and different records by id, references, embedded array sizes — asked of rows (or users).
//!
//! Both sides are reduced to a canonical form before hashing: the table's columns in order, each
//! value normalised by the column's type (datetimes as instants, numbers as numbers, JSON text
//! parsed), so the server's formatting (`+00:00` vs `Z`, `1.0` vs `1`) is not a difference.
//! The expected side is held as (row id → hash, key), and the child tables' sums and referenced
//! values by row id: these still grow with the number of keys (not with row sizes); the target
//! streams past them page by page. The problem lists are bounded as for MongoDB ([`super::KEPT`]
//! held, every one in the problems file).

use std::collections::{HashMap, HashSet};

use bson::Document;
use futures::TryStreamExt;
use serde_json::{Value, json};

use super::{
    BrokenReference, DIFFED, Different, EmbeddedCount, EntityVerification, ProblemLog, Problems,
    hash_bytes,
};
use crate::mapping::plan::Plan;
use crate::pipeline::run::{ChildCursor, RunError};
use crate::sink::appwrite::AppwriteError;
use crate::sink::appwrite::schema::{self, Kind, TableSpec};
use crate::sink::appwrite::tables::Pages;
use crate::sink::target::{AppwriteTarget, user_of};
use crate::source::{SourceSession, postgres};
use crate::transform::row::{MapContext, map_row};

fn aerr(e: AppwriteError) -> RunError {
    RunError::Sink(e.into())
}

/// A column value in canonical form.
fn normal(kind: &Kind, array: bool, v: &Value) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    if array {
        return match v {
            Value::Array(items) => {
                Value::Array(items.iter().map(|i| normal(kind, false, i)).collect())
            }
            other => other.clone(),
        };
    }
    match (kind, v) {
        (Kind::Datetime, Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| json!(t.timestamp_micros()))
            .unwrap_or_else(|_| v.clone()),
        (Kind::Float, Value::Number(n)) => json!(n.as_f64()),
        (Kind::Integer, Value::Number(n)) => json!(n.as_i64()),
        (Kind::Json, Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        _ => v.clone(),
    }
}

/// A row as `[column values…]` in the table's column order.
fn canonical_row(spec: &TableSpec, row: &Value) -> Value {
    Value::Array(
        spec.columns
            .iter()
            .map(|c| normal(&c.kind, c.array, row.get(&c.key).unwrap_or(&Value::Null)))
            .collect(),
    )
}

/// The user fields cutover sets, in canonical form.
fn canonical_user(u: &Value) -> Value {
    json!({
        "email": u["email"], "name": u["name"], "password": u["password"], "hash": u["hash"],
        "labels": u["labels"], "prefs": u["prefs"], "phone": u["phone"],
        "emailVerification": u["emailVerification"], "status": u["status"],
    })
}

fn expected_user(user: &crate::sink::appwrite::users::ImportUser) -> Value {
    json!({
        "email": user.email, "name": user.name, "password": user.hash, "hash": user.algorithm,
        "labels": user.labels, "prefs": user.prefs, "phone": user.phone.clone().unwrap_or_default(),
        "emailVerification": user.email_verified.unwrap_or(false),
        "status": user.enabled.unwrap_or(true),
    })
}

/// The rows of one parent in a child table, folded into one hash.
fn child_sum(table: &TableSpec, rows: &[Value]) -> u64 {
    rows.iter().fold(0u64, |acc, r| {
        acc.wrapping_add(hash_value(&canonical_row(table, r)))
    })
}

fn hash_value(v: &Value) -> u64 {
    hash_bytes(v.to_string().as_bytes())
}

/// Paths where two canonical values differ (first `limit`).
fn diff_json(names: &[String], e: &Value, a: &Value, out: &mut Vec<String>) {
    match (e, a) {
        (Value::Array(es), Value::Array(as_)) if !names.is_empty() => {
            for (i, name) in names.iter().enumerate() {
                if es.get(i) != as_.get(i) {
                    out.push(name.clone());
                }
            }
        }
        (Value::Object(eo), Value::Object(ao)) => {
            for (k, v) in eo {
                if ao.get(k) != Some(v) {
                    out.push(k.clone());
                }
            }
        }
        _ => out.push(String::new()),
    }
}

/// Streams the source rows of `plan` mapped as `migrate` maps them (children embedded), calling
/// `f` with each row's position, key and document (`None` when the mapping rejects it) and its
/// child counts.
async fn each_expected(
    plan: &Plan,
    session: &mut SourceSession,
    ctx: &MapContext,
    mut f: impl FnMut(u64, String, Option<Document>, &[usize]),
) -> Result<(), RunError> {
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
        let this = n;
        n += 1;
        let row = match row {
            Ok(row) => row,
            Err(err) => {
                // Its children are its own (not the next row's orphans) when its key decoded.
                if err.key(plan.key.len()).is_some() {
                    for (i, c) in cursors.iter_mut().enumerate() {
                        c.take_for(&err.decoded, plan, i).await?;
                    }
                }
                f(this, err.key_text(plan.key.len()), None, &[]);
                continue;
            }
        };
        let mut children = Vec::with_capacity(cursors.len());
        for (i, c) in cursors.iter_mut().enumerate() {
            children.push(c.take_for(&row, plan, i).await?);
        }
        let counts: Vec<usize> = children.iter().map(Vec::len).collect();
        let mapped = map_row(plan, &row, &children, ctx);
        let doc = mapped.doc.and_then(|d| d.to_document().ok());
        f(this, mapped.key, doc, &counts);
    }
    Ok(())
}

/// What one expected record is compared by.
enum Shape {
    Table(TableSpec),
    Users(crate::mapping::spec::AppwriteUsersSpec),
}

impl Shape {
    fn expected(&self, doc: &Document) -> (String, Value) {
        match self {
            Shape::Table(spec) => {
                let row = schema::to_row(doc, spec);
                let id = row["$id"].as_str().unwrap_or_default().to_string();
                (id, canonical_row(spec, &row))
            }
            Shape::Users(spec) => {
                let u = user_of(doc, spec);
                (u.id.clone(), expected_user(&u))
            }
        }
    }

    fn actual(&self, record: &Value) -> Value {
        match self {
            Shape::Table(spec) => canonical_row(spec, record),
            Shape::Users(_) => canonical_user(record),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Shape::Table(spec) => spec.columns.iter().map(|c| c.key.clone()).collect(),
            Shape::Users(_) => Vec::new(),
        }
    }
}

/// Where references point: each entity's table, and which entities are users.
pub struct References<'a> {
    pub collections: &'a HashMap<String, String>,
    pub user_entities: &'a HashSet<String>,
}

/// Verifies one entity written to Appwrite.
pub async fn verify_entity(
    plan: &Plan,
    session: &mut SourceSession,
    target: &AppwriteTarget,
    ctx: &MapContext,
    sample: Option<u64>,
    refs: &References<'_>,
    log: &mut ProblemLog,
) -> Result<EntityVerification, RunError> {
    let (ref_collections, user_entities) = (refs.collections, refs.user_entities);
    let client = &target.client;
    let db = &target.database;
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
    let shape = match &plan.appwrite_users {
        Some(u) => Shape::Users(u.clone()),
        None => Shape::Table(schema::table_spec(plan)),
    };
    let children = match &shape {
        Shape::Table(_) => schema::child_tables(plan),
        Shape::Users(_) => Vec::new(),
    };

    // (parent hash, per child table the sum of its rows' hashes, key)
    let mut expected: HashMap<String, (u64, Vec<u64>, String)> = HashMap::new();
    let mut all_ids: HashSet<String> = HashSet::new();
    let mut rejected_by_mapping = 0u64;
    let mut expected_count = 0u64;
    let mut child_totals = vec![0u64; plan.embeds.len()];
    each_expected(plan, session, ctx, |n, key, doc, counts| {
        let Some(doc) = doc else {
            rejected_by_mapping += 1;
            return;
        };
        expected_count += 1;
        for (t, c) in child_totals.iter_mut().zip(counts) {
            *t += *c as u64;
        }
        let (id, value) = shape.expected(&doc);
        if n.is_multiple_of(step) {
            let sums = schema::child_rows(&doc, &id, &children)
                .iter()
                .zip(&children)
                .map(|(rows, c)| child_sum(&c.table, rows))
                .collect();
            expected.insert(id.clone(), (hash_value(&value), sums, key));
        }
        all_ids.insert(id);
    })
    .await?;

    // Child tables: each parent's rows folded into one hash (order lives in `position`).
    let mut found: Problems<'_, (String, String, Value, Vec<String>)> =
        Problems::new(&plan.entity, log);
    let mut child_actual: Vec<HashMap<String, u64>> = Vec::new();
    let mut child_counts: Vec<u64> = Vec::new();
    for c in &children {
        let mut sums: HashMap<String, u64> = HashMap::new();
        let mut count = 0u64;
        let mut pages = Pages::rows(client, db, &c.table.id);
        loop {
            let page = match pages.next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) if e.is_missing() => break,
                Err(e) => return Err(aerr(e)),
            };
            for r in &page {
                let parent = r[schema::PARENT].as_str().unwrap_or_default();
                if all_ids.contains(parent) {
                    count += 1;
                    let h = hash_value(&canonical_row(&c.table, r));
                    let e = sums.entry(parent.to_string()).or_default();
                    *e = e.wrapping_add(h);
                } else {
                    found.unexpected(format!(
                        "{}:{}",
                        c.table.id,
                        r["$id"].as_str().unwrap_or_default()
                    ))?;
                }
            }
        }
        child_actual.push(sums);
        child_counts.push(count);
    }

    // Target side: every record, page by page.
    let mut seen: HashSet<String> = HashSet::new();
    let mut compared = 0u64;
    let mut embedded_elements = vec![0u64; plan.embeds.len()];
    let ref_fields: Vec<(String, String)> = plan
        .fields
        .iter()
        .filter_map(|f| {
            let r = f.reference.as_ref()?;
            (f.path.len() == 1).then(|| (f.path_text.clone(), r.entity.clone()))
        })
        .collect();
    let mut ref_values: Vec<HashSet<String>> = vec![HashSet::new(); ref_fields.len()];
    let names = shape.names();
    let users_shape = matches!(shape, Shape::Users(_));
    let mut pages = match &shape {
        Shape::Users(_) => Pages::users(client),
        Shape::Table(_) => Pages::rows(client, db, &plan.collection),
    };
    let mut target_count = 0u64;
    loop {
        let page = match pages.next().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(e) if e.is_missing() => break,
            Err(e) => return Err(aerr(e)),
        };
        target_count += page.len() as u64;
        for r in &page {
            let id = r["$id"].as_str().unwrap_or_default().to_string();
            for (e, count) in plan.embeds.iter().zip(embedded_elements.iter_mut()) {
                let holder = if users_shape { &r["prefs"] } else { r };
                *count += match holder.get(&e.path_text) {
                    Some(Value::Array(a)) => a.len() as u64,
                    Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                        .ok()
                        .and_then(|v| v.as_array().map(|a| a.len() as u64))
                        .unwrap_or(0),
                    _ => 0,
                };
            }
            for ((field, _), values) in ref_fields.iter().zip(ref_values.iter_mut()) {
                if let Some(v) = r.get(field).and_then(Value::as_str) {
                    values.insert(v.to_string());
                }
            }
            match expected.get(&id) {
                Some((h, sums, key)) => {
                    compared += 1;
                    let actual = shape.actual(r);
                    let child_fields: Vec<String> = children
                        .iter()
                        .zip(sums)
                        .zip(&child_actual)
                        .filter(|((_, want), got)| got.get(&id).copied().unwrap_or(0) != **want)
                        .map(|((c, _), _)| c.key.clone())
                        .collect();
                    if *h != hash_value(&actual) || !child_fields.is_empty() {
                        let keep =
                            *h != hash_value(&actual) && found.different.first.len() < DIFFED;
                        let item = (
                            id.clone(),
                            key.clone(),
                            if keep { actual } else { Value::Null },
                            child_fields,
                        );
                        found.different(key, &id, item)?;
                    }
                    seen.insert(id);
                }
                None if !all_ids.contains(&id) => found.unexpected(id)?,
                None => {} // not in the sample
            }
        }
    }
    let mut gone: Vec<&(u64, Vec<u64>, String)> = expected
        .iter()
        .filter(|(id, _)| !seen.contains(*id))
        .map(|(_, v)| v)
        .collect();
    gone.sort_by(|a, b| a.2.cmp(&b.2));
    for (_, _, key) in gone {
        found.missing(key.clone())?;
    }
    let Problems {
        mut missing,
        mut unexpected,
        different: different_ids,
        ..
    } = found;
    missing.first.sort();
    unexpected.first.sort();

    // Field names of the differences: map the differing rows again.
    let mut different: Vec<Different> = Vec::new();
    let different_count = different_ids.count;
    let different_ids = different_ids.first;
    if !different_ids.is_empty() {
        let wanted: HashMap<&str, usize> = different_ids
            .iter()
            .enumerate()
            .map(|(i, (_, key, _, _))| (key.as_str(), i))
            .collect();
        let mut fields: Vec<Vec<String>> = different_ids
            .iter()
            .map(|(_, _, _, child)| child.clone())
            .collect();
        each_expected(plan, session, ctx, |_, key, doc, _| {
            if let (Some(&i), Some(doc)) = (wanted.get(key.as_str()), doc) {
                let (_, e) = shape.expected(&doc);
                let actual = &different_ids[i].2;
                if !actual.is_null() {
                    diff_json(&names, &e, actual, &mut fields[i]);
                }
            }
        })
        .await?;
        different = different_ids
            .iter()
            .zip(fields)
            .map(|((id, key, _, _), fields)| Different {
                key: key.clone(),
                id: id.clone(),
                fields,
            })
            .collect();
        different.sort_by(|a, b| a.key.cmp(&b.key));
    }

    // References: every referenced row id exists in the referenced table.
    let mut broken_references = Vec::new();
    for ((field, entity), values) in ref_fields.iter().zip(&ref_values) {
        let table = ref_collections
            .get(entity)
            .cloned()
            .unwrap_or_else(|| entity.clone());
        let mut present = HashSet::new();
        let users = user_entities.contains(entity);
        let pages = if users {
            Pages::users(client)
        } else {
            Pages::rows(client, db, &table)
        };
        match pages
            .each(|r| {
                if let Some(id) = r["$id"].as_str()
                    && values.contains(id)
                {
                    present.insert(id.to_string());
                }
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_missing() => {}
            Err(e) => return Err(aerr(e)),
        }
        let mut dangling: Vec<String> = values.difference(&present).cloned().collect();
        if !dangling.is_empty() {
            dangling.sort();
            broken_references.push(BrokenReference {
                path: field.clone(),
                references: table,
                dangling: dangling.len() as u64,
                examples: dangling.into_iter().take(5).collect(),
            });
        }
    }

    for (c, n) in children.iter().zip(&child_counts) {
        embedded_elements[c.embed] = *n;
    }
    let embedded: Vec<EmbeddedCount> = plan
        .embeds
        .iter()
        .zip(child_totals.iter().zip(&embedded_elements))
        .map(|(e, (&source_children, &target_elements))| EmbeddedCount {
            path: e.path_text.clone(),
            source_children,
            target_elements,
        })
        .collect();
    let embedded_ok = embedded
        .iter()
        .all(|e| e.source_children == e.target_elements);
    let counts_agree = step > 1 || expected_count == target_count;
    let ok = embedded_ok
        && counts_agree
        && missing.count == 0
        && unexpected.count == 0
        && different_count == 0
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
        missing_count: missing.count,
        missing: missing.first,
        unexpected_count: unexpected.count,
        unexpected: unexpected.first,
        different_count,
        different,
        broken_references,
        embedded,
        counts_agree,
        ok,
    })
}
