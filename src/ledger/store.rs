//! Where the ledger's records live: MongoDB collections, or Appwrite tables. The ledger speaks in
//! BSON documents keyed by `_id`; this module maps a few record operations onto each target.
//!
//! In Appwrite each ledger table has one text column, `doc`, holding the record as extended JSON
//! (dates and 64-bit integers survive the round trip), and row ids derived from `_id` by
//! [`crate::sink::appwrite::rows::row_id`]. Ledger tables are small (a record per run, step and
//! backup), so reads list them whole and sort in the client.

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Database;
use serde_json::{Value, json};

use crate::config::TargetKind;
use crate::sink::appwrite::rows::row_id;
use crate::sink::appwrite::{AppwriteClient, AppwriteError};
use crate::sink::target::{Destination, Target};

/// What failed underneath a ledger operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", crate::sink::mongodb::error_text(.0))]
    Mongo(mongodb::error::Error),
    #[error(transparent)]
    Appwrite(#[from] AppwriteError),
    #[error("a ledger record is not readable: {0}")]
    Corrupt(String),
}

impl From<mongodb::error::Error> for StoreError {
    fn from(e: mongodb::error::Error) -> StoreError {
        StoreError::Mongo(e)
    }
}

/// The size of the Appwrite text column holding a record.
const DOC_SIZE: u64 = 1_000_000;

#[derive(Clone, Debug)]
pub enum Store {
    Mongo(Database),
    Appwrite {
        client: AppwriteClient,
        db: String,
        /// Tables known to exist with their column (set up once per process).
        ready: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    },
}

impl Store {
    /// Where the ledger of `target` lives: beside the data.
    pub fn of(target: &Target) -> Store {
        match target {
            Target::Mongo(m) => Store::Mongo(m.ledger_database().clone()),
            Target::Appwrite(a) => Store::appwrite(a.client.clone(), &a.database),
        }
    }

    pub fn appwrite(client: AppwriteClient, db: &str) -> Store {
        Store::Appwrite {
            client,
            db: db.to_string(),
            ready: Default::default(),
        }
    }

    fn coll(db: &Database, table: &str) -> mongodb::Collection<Document> {
        db.collection(table)
    }

    /// Creates the Appwrite table of `table` with its `doc` column (idempotent).
    async fn ensure(&self, table: &str) -> Result<(), AppwriteError> {
        let Store::Appwrite { client, db, ready } = self else {
            return Ok(());
        };
        if ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(table)
        {
            return Ok(());
        }
        client.ensure_database(db, db).await?;
        client.ensure_table(db, table, table).await?;
        client
            .ensure_column(
                db,
                table,
                "string",
                &json!({ "key": "doc", "size": DOC_SIZE, "required": true }),
            )
            .await?;
        client
            .wait_column(db, table, "doc", std::time::Duration::from_secs(120))
            .await?;
        ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table.to_string());
        Ok(())
    }

    fn encode(d: &Document) -> Value {
        json!({ "doc": Bson::Document(d.clone()).into_canonical_extjson().to_string() })
    }

    /// A record from the Appwrite row it is stored in (for a caller paging a table itself).
    pub fn decode(row: &Value) -> Result<Document, StoreError> {
        let text = row["doc"].as_str().unwrap_or("{}");
        let v: Value =
            serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        match Bson::try_from(v).map_err(|e| StoreError::Corrupt(e.to_string()))? {
            Bson::Document(d) => Ok(d),
            other => Err(StoreError::Corrupt(format!("not a document: {other}"))),
        }
    }

    fn id_text(id: &str) -> String {
        row_id(&Bson::String(id.to_string()))
    }

    /// Every record of `table` (none when the table does not exist yet).
    pub async fn all(&self, table: &str) -> Result<Vec<Document>, StoreError> {
        match self {
            Store::Mongo(db) => Ok(Self::coll(db, table)
                .find(doc! {})
                .await?
                .try_collect()
                .await?),
            Store::Appwrite { client, db, .. } => {
                let rows = client.all_rows(db, table).await?.unwrap_or_default();
                rows.iter().map(Self::decode).collect()
            }
        }
    }

    /// One record by `_id`.
    pub async fn get(&self, table: &str, id: &str) -> Result<Option<Document>, StoreError> {
        match self {
            Store::Mongo(db) => Ok(Self::coll(db, table).find_one(doc! { "_id": id }).await?),
            Store::Appwrite { client, db, .. } => {
                match client.get_row(db, table, &Self::id_text(id)).await {
                    Ok(Some(r)) => Ok(Some(Self::decode(&r)?)),
                    Ok(None) => Ok(None),
                    Err(e) if e.is_missing() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Writes a record whole (created or replaced); `d` carries its `_id`.
    pub async fn put(&self, table: &str, id: &str, d: &Document) -> Result<(), StoreError> {
        let mut d = d.clone();
        d.insert("_id", id);
        match self {
            Store::Mongo(db) => {
                Self::coll(db, table)
                    .replace_one(doc! { "_id": id }, d)
                    .upsert(true)
                    .await?;
                Ok(())
            }
            Store::Appwrite { client, db, .. } => {
                self.ensure(table).await?;
                Ok(client
                    .put_row(db, table, &Self::id_text(id), &Self::encode(&d))
                    .await?)
            }
        }
    }

    /// Creates a record unless one with this `_id` exists; `false` when it did (nothing written).
    pub async fn create(&self, table: &str, id: &str, d: &Document) -> Result<bool, StoreError> {
        let mut d = d.clone();
        d.insert("_id", id);
        match self {
            // An upsert that only inserts: atomic on `_id`, and (like every ledger write) an
            // `update` command, so data-write fault points never hit the ledger.
            Store::Mongo(db) => {
                let r = Self::coll(db, table)
                    .update_one(doc! { "_id": id }, doc! { "$setOnInsert": d })
                    .upsert(true)
                    .await;
                match r {
                    Ok(r) => Ok(r.upserted_id.is_some()),
                    Err(e) if is_duplicate_key(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Store::Appwrite { client, db, .. } => {
                self.ensure(table).await?;
                Ok(client
                    .create_row(db, table, &Self::id_text(id), &Self::encode(&d))
                    .await?)
            }
        }
    }

    /// Sets fields of the record `id` when it exists and `guard` (a field and its value) holds;
    /// returns whether it was updated. Atomic in MongoDB. In Appwrite a read, then an update
    /// (`PATCH`) that fails when the row is gone, so a record deleted meanwhile (a lock released
    /// by force) is never brought back; a write of someone else between the read and the update
    /// is overwritten, though (Appwrite has no conditional write): the lock verifies its
    /// takeovers for that (see `ledger::lock`), other records have the lock to keep writers apart.
    pub async fn set(
        &self,
        table: &str,
        id: &str,
        fields: Document,
        guard: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Mongo(db) => {
                let mut filter = doc! { "_id": id };
                if let Some((k, v)) = guard {
                    filter.insert(k, v);
                }
                let r = Self::coll(db, table)
                    .update_one(filter, doc! { "$set": fields })
                    .await?;
                Ok(r.matched_count > 0)
            }
            Store::Appwrite { client, db, .. } => {
                let Some(mut d) = self.get(table, id).await? else {
                    return Ok(false);
                };
                if let Some((k, v)) = guard
                    && d.get_str(k).ok() != Some(v)
                {
                    return Ok(false);
                }
                for (k, v) in fields {
                    d.insert(k, v);
                }
                d.insert("_id", id);
                Ok(client
                    .update_row(db, table, &Self::id_text(id), &Self::encode(&d))
                    .await?)
            }
        }
    }

    /// Deletes the record `id` (only while `guard` holds); returns whether one was deleted.
    pub async fn delete(
        &self,
        table: &str,
        id: &str,
        guard: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Mongo(db) => {
                let mut filter = doc! { "_id": id };
                if let Some((k, v)) = guard {
                    filter.insert(k, v);
                }
                Ok(Self::coll(db, table)
                    .delete_one(filter)
                    .await?
                    .deleted_count
                    > 0)
            }
            Store::Appwrite { client, db, .. } => {
                if let Some((k, v)) = guard {
                    match self.get(table, id).await? {
                        Some(d) if d.get_str(k).ok() == Some(v) => {}
                        _ => return Ok(false),
                    }
                }
                Ok(client.delete_row(db, table, &Self::id_text(id)).await?)
            }
        }
    }

    /// Which kind of target holds this ledger.
    pub fn kind(&self) -> TargetKind {
        match self {
            Store::Mongo(_) => TargetKind::Mongodb,
            Store::Appwrite { .. } => TargetKind::Appwrite,
        }
    }

    /// The collection a MongoDB destination names; another is not of this ledger.
    fn collection(to: &Destination) -> Result<&str, StoreError> {
        match to {
            Destination::Collection { name } => Ok(name),
            other => Err(StoreError::Corrupt(format!(
                "{other} is not a MongoDB collection"
            ))),
        }
    }

    /// The collections of a MongoDB destination: the collection, or a GridFS bucket's files
    /// collection and its chunks (the files first: their count is the destination's).
    fn collections(to: &Destination) -> Result<Vec<String>, StoreError> {
        match to {
            Destination::Bucket { name, documents } => Ok([
                crate::sink::gridfs::files_collection(name),
                crate::sink::gridfs::chunks_collection(name),
            ]
            .into_iter()
            .chain(documents.clone())
            .collect()),
            other => Ok(vec![Self::collection(other)?.to_string()]),
        }
    }

    /// The tables an Appwrite destination names (the stage's own first); users have none.
    fn tables(to: &Destination) -> Result<&[String], StoreError> {
        match to {
            Destination::Tables { names } => Ok(names),
            Destination::Storage { tables, .. } => Ok(tables),
            Destination::Collection { name } => Ok(std::slice::from_ref(name)),
            Destination::Users => Err(StoreError::Corrupt(
                "Appwrite users cannot be copied (their hashes cannot be read back): no backup"
                    .into(),
            )),
            Destination::Bucket { .. } => Err(StoreError::Corrupt(format!(
                "{to} is not an Appwrite table"
            ))),
        }
    }

    /// Copies a destination's data into `to` (replacing what `to` held); returns how many
    /// documents it holds.
    pub async fn copy_data(&self, from: &Destination, to: &Destination) -> Result<u64, StoreError> {
        match self {
            Store::Mongo(db) => {
                let (froms, tos) = (Self::collections(from)?, Self::collections(to)?);
                if froms.len() != tos.len() {
                    return Err(StoreError::Corrupt(format!("cannot copy {from} into {to}")));
                }
                let mut first = None;
                for (from, to) in froms.iter().zip(&tos) {
                    // A restore puts back what was there: a validator the application added or
                    // tightened since does not get a say (it would refuse the whole copy, for ever).
                    Self::coll(db, from)
                        .aggregate(vec![doc! { "$match": {} }, doc! { "$out": to }])
                        .bypass_document_validation(true)
                        .await?
                        .try_collect::<Vec<_>>()
                        .await?;
                    let n = Self::coll(db, to).estimated_document_count().await?;
                    first.get_or_insert(n);
                }
                Ok(first.unwrap_or(0))
            }
            // A stage with child tables is copied table by table.
            Store::Appwrite { client, db, .. } => {
                let (froms, tos) = (Self::tables(from)?, Self::tables(to)?);
                if froms.len() != tos.len() {
                    return Err(StoreError::Corrupt(format!("cannot copy {from} into {to}")));
                }
                let mut first = None;
                for (f, t) in froms.iter().zip(tos) {
                    if client.table_exists(db, t).await? {
                        client.empty_table(db, t).await?;
                    }
                    let n = client.copy_table(db, f, t).await?;
                    first.get_or_insert(n);
                }
                Ok(first.unwrap_or(0))
            }
        }
    }

    /// Removes a destination with its data.
    pub async fn drop_data(&self, what: &Destination) -> Result<(), StoreError> {
        match self {
            Store::Mongo(db) => {
                for c in Self::collections(what)? {
                    Self::coll(db, &c).drop().await?;
                }
                Ok(())
            }
            Store::Appwrite { client, db, .. } => {
                for part in Self::tables(what)? {
                    match client
                        .call(
                            reqwest::Method::DELETE,
                            &format!("/tablesdb/{db}/tables/{part}"),
                            None,
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.is_missing() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
        }
    }

    /// Deletes every document of a destination (of users, those imported as `entity`'s);
    /// returns how many.
    pub async fn empty_data(&self, what: &Destination, entity: &str) -> Result<u64, StoreError> {
        match self {
            Store::Mongo(db) => {
                let mut first = None;
                for c in Self::collections(what)? {
                    let n = Self::coll(db, &c).delete_many(doc! {}).await?.deleted_count;
                    first.get_or_insert(n);
                }
                Ok(first.unwrap_or(0))
            }
            Store::Appwrite { client, .. } if *what == Destination::Users => {
                Ok(delete_imported_users(client, entity).await?)
            }
            Store::Appwrite { client, db, .. } => {
                // A Storage bucket's files go first: a rollback cut short then finds rows
                // without files (emptied on the next try), never files nothing names.
                if let Destination::Storage { bucket, .. } = what {
                    use crate::sink::appwrite::storage;
                    for id in storage::file_ids(client, bucket).await? {
                        storage::delete_file(client, bucket, &id).await?;
                    }
                }
                let mut first = None;
                for part in Self::tables(what)? {
                    let n = client.empty_table(db, part).await?;
                    first.get_or_insert(n);
                }
                Ok(first.unwrap_or(0))
            }
        }
    }

    /// Where run `run_id` keeps its backup of `of`, under names valid for the target (the
    /// backup's name is how it reads). Users stay users: they cannot be copied.
    pub fn backup_of(&self, of: &Destination, run_id: &str) -> Destination {
        let backup = |part: &str| match self {
            Store::Mongo(db) => {
                let tail = format!("__backup__{}", run_id.replace(['.', ':'], "_"));
                // A namespace (`db.collection`, and a bucket's `.chunks`) holds at most 255
                // bytes: a long name is cut, with a hash of the whole kept (the ledger records
                // the name the copy has).
                let room =
                    255usize.saturating_sub(db.name().len() + 1 + ".chunks".len() + tail.len());
                if part.len() <= room {
                    format!("{part}{tail}")
                } else {
                    let h = row_id(&Bson::String(part.to_string()));
                    let mut cut = room.saturating_sub(9);
                    while !part.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    format!("{}_{}{tail}", &part[..cut], &h[h.len() - 8..])
                }
            }
            // Table ids hold at most 36 characters.
            Store::Appwrite { .. } => {
                let h = row_id(&Bson::String(format!("{part}\u{0}{run_id}")));
                format!("bk_{}", &h[h.len() - 20..])
            }
        };
        match of {
            Destination::Collection { name } => Destination::Collection { name: backup(name) },
            Destination::Tables { names } => Destination::Tables {
                names: names.iter().map(|n| backup(n)).collect(),
            },
            Destination::Users => Destination::Users,
            Destination::Bucket { name, documents } => Destination::Bucket {
                name: backup(name),
                documents: documents.as_deref().map(backup),
            },
            // Not backed up (see `Destination::can_back_up`): named as itself.
            Destination::Storage { .. } => of.clone(),
        }
    }

    /// Whether transient failures of this error may be retried.
    pub fn is_transient(e: &StoreError) -> bool {
        match e {
            StoreError::Mongo(m) => crate::sink::mongodb::is_transient(m),
            // The Appwrite client retries by itself.
            StoreError::Appwrite(_) | StoreError::Corrupt(_) => false,
        }
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}

/// Deletes the Appwrite users cutover imported as `entity`'s (rollback of a users step that found
/// none): the project's own users, and another entity's, stay.
async fn delete_imported_users(
    client: &AppwriteClient,
    entity: &str,
) -> Result<u64, AppwriteError> {
    // Listed first, deleted after: the pages' cursor does not walk a list that shrinks under it.
    let mut imported = Vec::new();
    let mut pages = crate::sink::appwrite::tables::Pages::users(client);
    while let Some(page) = pages.next().await? {
        imported.extend(
            page.iter()
                .filter(|u| crate::sink::appwrite::users::imported_into(u, entity))
                .filter_map(|u| u["$id"].as_str().map(str::to_string)),
        );
    }
    let mut n = 0;
    for id in imported {
        match client
            .call(reqwest::Method::DELETE, &format!("/users/{id}"), None)
            .await
        {
            Ok(_) => n += 1,
            Err(e) if e.is_missing() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
