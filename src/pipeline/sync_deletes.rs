//! `--sync-deletes`: after a stage's copy, remove target records whose source row is gone (or, in
//! a dry run, count them).
//!
//! Memory does not grow with the table: records are deleted as they are found, [`CHUNK`] at a
//! time, and the two sides are compared as two sorted streams. When MongoDB's `_id` order is the
//! source key order both stream as they are; otherwise (uuid5 or composite ids, Appwrite row ids)
//! both sides' ids go through an external sort ([`super::spill`]: a bounded buffer, sorted runs in
//! temporary files) and are compared by their encoded bytes, which is exact.

use std::path::PathBuf;

use futures::TryStreamExt;

use super::error::RunError;
use super::removal::Remover;
use super::spill::{Absent, Sorted, Spill};
use crate::ledger::Removal;
use crate::mapping::plan::Plan;
use crate::sink::mongodb::MongoTarget;
use crate::sink::target::{AppwriteTarget, SinkError, Target};
use crate::source::postgres;
use crate::source::{SourceSession, Value};

/// Ids deleted per request (and held at most before deleting).
pub const CHUNK: usize = 1000;

fn spill_err(cause: std::io::Error) -> RunError {
    RunError::Io {
        path: PathBuf::from(
            "a temporary file (sorting ids for --sync-deletes, or the records a rehearsal keeps)",
        ),
        cause,
    }
}

/// Removes the target records of `plan` whose source row is gone; returns how many (were) gone.
/// Each chunk is noted in the ledger before it goes (`remover`; none in a dry run), so that a
/// run resuming after a kill counts what this one deleted.
pub(super) async fn sync_deletes(
    plan: &Plan,
    session: &mut SourceSession,
    target: &Target,
    dry_run: bool,
    remover: &Remover,
) -> Result<u64, RunError> {
    match target {
        Target::Mongo(m) => sync_deletes_mongo(plan, session, target, m, dry_run, remover).await,
        Target::Appwrite(a) => {
            sync_deletes_appwrite(plan, session, target, a, dry_run, remover).await
        }
    }
}

/// Notes `ids` (as the target lists them), deletes them with `delete`, records how many went.
async fn noted_delete<F, Fut>(
    remover: &Remover,
    ids: Vec<bson::Bson>,
    delete: F,
) -> Result<(), RunError>
where
    F: FnOnce(Vec<bson::Bson>) -> Fut,
    Fut: std::future::Future<Output = Result<u64, RunError>>,
{
    let noted = match &remover.ledger {
        Some(ledger) => Some(
            remover
                .note_listed(ledger, Removal::SyncDeletes, ids.clone())
                .await?,
        ),
        None => None,
    };
    let n = delete(ids).await?;
    if let Some(noted) = noted {
        remover.done(noted, n).await?;
    }
    Ok(())
}

/// Deletes gathered ids `CHUNK` at a time; counts them all.
struct Deleter<'a> {
    target: &'a MongoTarget,
    remover: &'a Remover,
    collection: &'a str,
    /// A file stage's GridFS bucket (`collection` is its name): files go with their chunks.
    bucket: bool,
    dry_run: bool,
    pending: Vec<bson::Bson>,
    gone: u64,
}

impl Deleter<'_> {
    async fn add(&mut self, id: bson::Bson) -> Result<(), RunError> {
        self.gone += 1;
        if self.dry_run {
            return Ok(());
        }
        self.pending.push(id);
        if self.pending.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), RunError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.pending);
        let (target, collection, bucket) = (self.target, self.collection, self.bucket);
        noted_delete(self.remover, ids, |ids| async move {
            if bucket && let Some(spec) = target.bucket(collection) {
                return Ok(
                    crate::sink::gridfs::delete_files_of(target.database(), &spec, &ids).await?,
                );
            }
            if bucket {
                return Ok(
                    crate::sink::gridfs::delete_files(target.database(), collection, &ids).await?,
                );
            }
            Ok(target.delete_ids(collection, ids).await?)
        })
        .await
    }
}

async fn sync_deletes_mongo(
    plan: &Plan,
    session: &SourceSession,
    target: &Target,
    m: &MongoTarget,
    dry_run: bool,
    remover: &Remover,
) -> Result<u64, RunError> {
    let mut del = Deleter {
        target: m,
        remover,
        collection: &plan.collection,
        bucket: plan.file.is_some(),
        dry_run,
        pending: Vec::new(),
        gone: 0,
    };
    absent_records(
        plan,
        session,
        target,
        &keys_only(plan),
        &[],
        async |id, _| del.add(id).await,
    )
    .await?;
    // Uploads cut short (chunks without a files document) of rows gone from the source: no
    // run uploads them again (adv45 F9: they stayed for good).
    if let Some(f) = &plan.file {
        let partial = crate::sink::gridfs::partial_uploads(m.database(), &f.bucket)
            .await
            .map_err(|e| RunError::Sink(SinkError::Mongo(e)))?;
        if !partial.is_empty() {
            use crate::sink::order::{id_bytes, id_from_bytes};
            let source = source_ids(plan, session, target, &keys_only(plan)).await?;
            let mut candidates = Spill::new();
            for id in &partial {
                candidates
                    .push(id_bytes(id), Vec::new())
                    .map_err(spill_err)?;
            }
            let mut gone = absent(candidates, source)?;
            while let Some((idb, _)) = gone.next_record().map_err(spill_err)? {
                if let Some(id) = id_from_bytes(&idb) {
                    del.add(id).await?;
                }
            }
        }
    }
    del.flush().await?;
    if del.gone > 0 && !dry_run {
        tracing::warn!(entity = %plan.entity, documents = del.gone, "deleted target documents whose source rows are gone");
    }
    Ok(del.gone)
}

/// The records of `plan`'s destination that no row of `present` names, each passed to `found`
/// with the top-level `fields` asked of it: its id as the target names it (MongoDB's `_id`; an
/// Appwrite row id, as a string) and those fields encoded — a BSON document (MongoDB), a JSON
/// object (Appwrite); nothing when none are asked. A file stage's records are its bucket's files
/// (MongoDB). `present`: a read of the key columns alone, in key order — the whole source
/// ([`keys_only`]) for `--sync-deletes`; the rows a pass reads for a rehearsal (see
/// [`super::kept`]).
///
/// Memory does not grow with the table: when MongoDB's `_id` order is the source key order both
/// sides stream as they are; otherwise both go through an external sort ([`super::spill`]) and
/// are compared by their encoded ids.
pub(crate) async fn absent_records(
    plan: &Plan,
    session: &SourceSession,
    target: &Target,
    present: &postgres::ReadSpec,
    fields: &[String],
    mut found: impl AsyncFnMut(bson::Bson, Vec<u8>) -> Result<(), RunError>,
) -> Result<(), RunError> {
    use crate::sink::order::{bson_cmp, id_bytes, id_from_bytes, ids_follow_key_order};
    let m = match target {
        Target::Mongo(m) => m,
        Target::Appwrite(a) => {
            let source = source_ids(plan, session, target, present).await?;
            let aerr = |e| RunError::Sink(SinkError::Appwrite(e));
            let mut targets = Spill::new();
            let mut records = a.ids(&plan.collection);
            while let Some(page) = records.next_records().await.map_err(aerr)? {
                for r in page {
                    let Some(id) = r["$id"].as_str() else {
                        continue;
                    };
                    let payload = if fields.is_empty() {
                        Vec::new()
                    } else {
                        let picked: serde_json::Map<String, serde_json::Value> = fields
                            .iter()
                            .map(|f| (f.clone(), r.get(f).cloned().unwrap_or_default()))
                            .collect();
                        serde_json::to_vec(&picked).unwrap_or_default()
                    };
                    targets
                        .push(id.as_bytes().to_vec(), payload)
                        .map_err(spill_err)?;
                }
            }
            let mut gone = absent(targets, source)?;
            while let Some((id, payload)) = gone.next_record().map_err(spill_err)? {
                found(
                    bson::Bson::String(String::from_utf8_lossy(&id).into_owned()),
                    payload,
                )
                .await?;
            }
            return Ok(());
        }
    };
    let encode = |d: &bson::Document| {
        if fields.is_empty() {
            Vec::new()
        } else {
            bson::to_vec(d).unwrap_or_default()
        }
    };
    // A bucket's files are the documents of its files collection.
    let ids_of = match &plan.file {
        Some(f) => crate::sink::gridfs::files_collection(&f.bucket),
        None => plan.collection.clone(),
    };
    if ids_follow_key_order(plan) {
        let mut conn = session.reader().await?;
        let mut rows = postgres::stream(&mut conn, present);
        let mut ids = m.records(&ids_of, true, fields).await?;
        let mut source_id: Option<bson::Bson> = None;
        let mut source_done = false;
        while let Some((tid, doc)) = ids.next_record().await? {
            loop {
                if source_id.is_none() && !source_done {
                    match rows.try_next().await? {
                        Some(Ok(row)) => source_id = plan.id.id_for(&[&row[0]]).ok(),
                        Some(Err(_)) => continue,
                        None => source_done = true,
                    }
                }
                match source_id.as_ref().map(|s| bson_cmp(s, &tid)) {
                    Some(std::cmp::Ordering::Less) => source_id = None,
                    Some(std::cmp::Ordering::Equal) => {
                        source_id = None;
                        break;
                    }
                    Some(std::cmp::Ordering::Greater) | None => {
                        // Ids already passed by the cursor: deleting them does not move it.
                        found(tid, encode(&doc)).await?;
                        break;
                    }
                }
            }
        }
    } else {
        let source = source_ids(plan, session, target, present).await?;
        let mut targets = Spill::new();
        let mut ids = m.records(&ids_of, false, fields).await?;
        while let Some((id, doc)) = ids.next_record().await? {
            targets
                .push(id_bytes(&id), encode(&doc))
                .map_err(spill_err)?;
        }
        drop(ids);
        let mut gone = absent(targets, source)?;
        while let Some((idb, payload)) = gone.next_record().map_err(spill_err)? {
            if let Some(id) = id_from_bytes(&idb) {
                found(id, payload).await?;
            }
        }
    }
    Ok(())
}

/// A record's id as [`absent_records`] and [`source_ids`] compare it: MongoDB's `_id` as its
/// encoded BSON, an Appwrite row id as its text.
pub(crate) fn record_key(target: &Target, id: &bson::Bson) -> Vec<u8> {
    match (target, id) {
        (Target::Appwrite(_), bson::Bson::String(s)) => s.as_bytes().to_vec(),
        _ => crate::sink::order::id_bytes(id),
    }
}

/// The ids the rows of `spec` (a read of the key columns alone) get in `target`, sorted
/// externally ([`record_key`]'s encoding).
pub(crate) async fn source_ids(
    plan: &Plan,
    session: &SourceSession,
    target: &Target,
    spec: &postgres::ReadSpec,
) -> Result<Sorted, RunError> {
    use crate::sink::appwrite::rows::row_id;
    let appwrite = matches!(target, Target::Appwrite(_));
    let mut source = Spill::new();
    let mut conn = session.reader().await?;
    let mut rows = postgres::stream(&mut conn, spec);
    while let Some(row) = rows.try_next().await? {
        let Ok(row) = row else { continue };
        let key: Vec<&Value> = row.iter().collect();
        if let Ok(id) = plan.id.id_for(&key) {
            let bytes = if appwrite {
                row_id(&id).into_bytes()
            } else {
                crate::sink::order::id_bytes(&id)
            };
            source.push(bytes, Vec::new()).map_err(spill_err)?;
        }
    }
    source.sorted().map_err(spill_err)
}

fn absent(candidates: Spill, present: Sorted) -> Result<Absent, RunError> {
    let candidates: Sorted = candidates.sorted().map_err(spill_err)?;
    Ok(Absent::new(candidates, present))
}

/// A read of the key columns alone, in key order, over the whole source.
pub(crate) fn keys_only(plan: &Plan) -> postgres::ReadSpec {
    let mut spec = keys_of(plan, &plan.read);
    spec.after = None;
    spec.filter = None;
    spec.also_keys.clear();
    spec
}

/// `read` (one of `plan`'s source) reading the key columns alone, in key order: the same rows.
pub(crate) fn keys_of(plan: &Plan, read: &postgres::ReadSpec) -> postgres::ReadSpec {
    let key_count = plan.key.len();
    let mut spec = read.clone();
    spec.columns.truncate(key_count);
    spec.order = (0..key_count).collect();
    spec
}

/// `--sync-deletes` into Appwrite: the source's row ids and the table's (or the users') ids are
/// sorted externally, and the records without a source row go, child-table rows first.
async fn sync_deletes_appwrite(
    plan: &Plan,
    session: &SourceSession,
    target: &Target,
    a: &AppwriteTarget,
    dry_run: bool,
    remover: &Remover,
) -> Result<u64, RunError> {
    // Users are the project's, the ledger one database's: a rehearsal's source lacks
    // production's rows, so its sync would delete production's accounts (found by this
    // session's review, K). Refused as a rollback of them is.
    if a.is_users(&plan.collection)
        && let Some(ledger) = &remover.ledger
    {
        let elsewhere = ledger.users_in_effect_elsewhere().await?;
        if !elsewhere.is_empty() {
            let named: Vec<String> = elsewhere
                .iter()
                .map(|(db, e)| format!("{e} in database {db}"))
                .collect();
            return Err(RunError::Refused(format!(
                "{}: --sync-deletes would delete users of the Appwrite project that another database's ledger records as migrated there ({}): users are the project's, shared by its databases; run it where those users belong",
                plan.entity,
                named.join(", ")
            )));
        }
    }
    let mut n = 0u64;
    let mut chunk: Vec<String> = Vec::with_capacity(CHUNK);
    absent_records(
        plan,
        session,
        target,
        &keys_only(plan),
        &[],
        async |id, _| -> Result<(), RunError> {
            n += 1;
            if dry_run {
                return Ok(());
            }
            chunk.push(id.as_str().unwrap_or_default().to_string());
            if chunk.len() >= CHUNK {
                delete_rows(remover, a, &plan.collection, std::mem::take(&mut chunk)).await?;
            }
            Ok(())
        },
    )
    .await?;
    delete_rows(remover, a, &plan.collection, chunk).await?;
    if !a.is_users(&plan.collection) {
        n += orphan_children(plan, a, dry_run, remover).await?;
    }
    if n > 0 && !dry_run {
        tracing::warn!(entity = %plan.entity, records = n, "deleted Appwrite records whose source rows are gone");
    }
    Ok(n)
}

/// The rows of `plan`'s child tables whose parent row is not in its table (added by hand, or
/// left by a parent deleted outside cutover) go too: the source has no element for them, and
/// `verify` names them unexpected (adv35 F6: they survived the sync). A parent this pass
/// deletes takes its elements with it (so a rehearsal, whose parents stay, does not count
/// them twice). Both sides are sorted externally: memory does not grow with the tables.
/// Returns how many child rows (were) gone.
async fn orphan_children(
    plan: &Plan,
    a: &AppwriteTarget,
    dry_run: bool,
    remover: &Remover,
) -> Result<u64, RunError> {
    use crate::sink::appwrite::schema::PARENT;
    let aerr = |e| RunError::Sink(SinkError::Appwrite(e));
    let tables = a.tables_of(&plan.collection);
    if tables.len() < 2 {
        return Ok(0);
    }
    // Every child table's rows in one sorted run, by parent id (the value: the table's index,
    // two bytes, then the row's id), merged once with the parent table's ids — listed after
    // this stage's deletes, once whatever the number of child tables.
    let mut rows = Spill::new();
    for (t, table) in tables.iter().enumerate().skip(1) {
        let tag = u16::try_from(t).unwrap_or(u16::MAX).to_be_bytes();
        let mut records = a.ids(table);
        while let Some(page) = records.next_records().await.map_err(aerr)? {
            for r in page {
                let (Some(id), parent) = (r["$id"].as_str(), r[PARENT].as_str()) else {
                    continue;
                };
                let parent = parent.unwrap_or_default().as_bytes().to_vec();
                let mut value = tag.to_vec();
                value.extend_from_slice(id.as_bytes());
                rows.push(parent, value).map_err(spill_err)?;
            }
        }
    }
    let mut rows = rows.sorted().map_err(spill_err)?;
    let mut parents = Spill::new();
    let mut records = a.ids(&plan.collection);
    while let Some(page) = records.next_page().await.map_err(aerr)? {
        for id in page {
            parents
                .push(id.into_bytes(), Vec::new())
                .map_err(spill_err)?;
        }
    }
    let mut parents = parents.sorted().map_err(spill_err)?;
    let mut n = 0u64;
    let mut chunks: Vec<Vec<String>> = vec![Vec::new(); tables.len()];
    while let Some((parent, value)) = rows.next_record().map_err(spill_err)? {
        if parents.holds(&parent).map_err(spill_err)? {
            continue;
        }
        n += 1;
        if dry_run || value.len() < 2 {
            continue;
        }
        let t = usize::from(u16::from_be_bytes([value[0], value[1]]));
        let Some(chunk) = chunks.get_mut(t) else {
            continue;
        };
        chunk.push(String::from_utf8_lossy(&value[2..]).into_owned());
        if chunk.len() >= CHUNK {
            delete_rows(remover, a, &tables[t], std::mem::take(chunk)).await?;
        }
    }
    for (table, chunk) in tables.iter().zip(chunks) {
        delete_rows(remover, a, table, chunk).await?;
    }
    if n > 0 && !dry_run {
        tracing::warn!(entity = %plan.entity, rows = n, "deleted child-table rows whose parent row is gone");
    }
    Ok(n)
}

/// Deletes Appwrite records by their ids, noted first (see [`noted_delete`]).
async fn delete_rows(
    remover: &Remover,
    target: &AppwriteTarget,
    collection: &str,
    rows: Vec<String>,
) -> Result<(), RunError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids = rows.into_iter().map(bson::Bson::String).collect();
    noted_delete(remover, ids, |ids| async move {
        let rows: Vec<String> = ids
            .iter()
            .filter_map(|b| b.as_str().map(str::to_string))
            .collect();
        target
            .delete_rows_and_files(collection, &rows)
            .await
            .map_err(|e| RunError::Sink(SinkError::Appwrite(e)))
    })
    .await
}
