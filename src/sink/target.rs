//! The target a run writes to: MongoDB or Appwrite, behind one face for the run loop — set up a
//! stage's destination, say whether it is empty, write a batch and report per-document failures;
//! and for `--sync-deletes`, list a destination's record ids and delete records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bson::{Bson, Document, RawDocumentBuf};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::appwrite::schema::{self, TableSpec};
use super::appwrite::tables::Pages;
use super::appwrite::users::{self, ImportUser};
use super::appwrite::{AppwriteClient, AppwriteError, ClientKind, rows};
use super::mongodb::{BatchResult, DocError, MongoError, MongoTarget, WriteMode};
use super::retry::Retryable;
use crate::config::TargetKind;
use crate::mapping::plan::Plan;
use crate::mapping::spec::AppwriteUsersSpec;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Mongo(#[from] MongoError),
    #[error(transparent)]
    Appwrite(#[from] AppwriteError),
}

impl Retryable for SinkError {
    fn is_retryable(&self) -> bool {
        match self {
            SinkError::Mongo(e) => e.is_retryable(),
            // The Appwrite client has already retried what was worth retrying.
            SinkError::Appwrite(_) => false,
        }
    }
}

/// How ledgers before typed destinations named Appwrite's users (Auth), which no table holds;
/// still how a [`Destination::Users`] reads.
pub const USERS: &str = "@users";

/// Where a stage writes, as the ledger records it with each step and each backup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Destination {
    /// A MongoDB collection.
    Collection { name: String },
    /// An Appwrite table, then its child tables: backed up, restored and emptied together.
    Tables { names: Vec<String> },
    /// Appwrite's users (Auth): no table holds them, no backup can copy them.
    Users,
    /// A MongoDB GridFS bucket: `<name>.files` and `<name>.chunks` (and the collection of its
    /// files' documents, when the mapping has one), backed up, restored and emptied together.
    Bucket {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        documents: Option<String>,
    },
    /// An Appwrite Storage bucket and the table of its files' rows: emptied together; no
    /// backup can copy a bucket's files (a rollback restores only what found it empty).
    Storage { bucket: String, tables: Vec<String> },
}

impl Destination {
    /// What this destination and `other` both write: the collections or tables of both, a
    /// Storage bucket of both (empty: none). Appwrite's users are one place that every users
    /// entity of a project writes (one pipeline may have several): not counted.
    pub fn shared_with(&self, other: &Destination) -> Vec<String> {
        let theirs = other.parts();
        let mut out: Vec<String> = self
            .parts()
            .into_iter()
            .filter(|p| theirs.contains(p))
            .collect();
        if let (Destination::Storage { bucket: a, .. }, Destination::Storage { bucket: b, .. }) =
            (self, other)
            && a == b
        {
            out.push(format!("bucket {a}"));
        }
        out
    }

    /// Whether the ledger can back it up (users and Storage buckets it cannot).
    pub fn can_back_up(&self) -> bool {
        !matches!(self, Destination::Users | Destination::Storage { .. })
    }

    /// The collections or tables it is made of, as a change names them (a GridFS bucket's
    /// `<name>.files` and `<name>.chunks` and its documents' collection; a Storage bucket's
    /// tables; none for users).
    pub fn parts(&self) -> Vec<String> {
        match self {
            Destination::Collection { name } => vec![name.clone()],
            Destination::Tables { names } => names.clone(),
            Destination::Users => Vec::new(),
            Destination::Bucket { name, documents } => {
                let mut out = vec![format!("{name}.files"), format!("{name}.chunks")];
                out.extend(documents.iter().cloned());
                out
            }
            Destination::Storage { tables, .. } => tables.clone(),
        }
    }
}

impl Destination {
    /// A destination as ledgers recorded it before it was typed: the collection's name
    /// (MongoDB), `table+child+…` or `@users` (Appwrite).
    pub fn from_legacy(text: &str, kind: TargetKind) -> Destination {
        match kind {
            TargetKind::Mongodb => Destination::Collection {
                name: text.to_string(),
            },
            TargetKind::Appwrite if text == USERS => Destination::Users,
            TargetKind::Appwrite => Destination::Tables {
                names: text.split('+').map(str::to_string).collect(),
            },
        }
    }
}

/// As messages name it: the collection, `table+child+…`, or `@users`.
impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Collection { name } => f.pad(name),
            Destination::Tables { names } => f.pad(&names.join("+")),
            Destination::Users => f.pad(USERS),
            Destination::Bucket {
                name,
                documents: None,
            } => f.pad(&format!("{name} (GridFS)")),
            Destination::Bucket {
                name,
                documents: Some(d),
            } => f.pad(&format!("{name} (GridFS) + {d}")),
            Destination::Storage { bucket, tables } => f.pad(&format!(
                "{bucket} (Appwrite Storage) with {}",
                tables.join("+")
            )),
        }
    }
}

/// How long a column may take to become available.
pub const COLUMN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The ids of an Appwrite collection's records, as [`AppwriteTarget::ids`] reads them.
pub struct RecordIds<'c> {
    pages: Pages<'c>,
    /// Users: only those imported into this destination.
    users_of: Option<String>,
}

impl RecordIds<'_> {
    /// The ids of the next page (`None` after the last).
    pub async fn next_page(&mut self) -> Result<Option<Vec<String>>, AppwriteError> {
        Ok(self.next_records().await?.map(|page| {
            page.into_iter()
                .filter_map(|r| r["$id"].as_str().map(str::to_string))
                .collect()
        }))
    }

    /// The records of the next page as the server gives them (`None` after the last).
    pub async fn next_records(&mut self) -> Result<Option<Vec<serde_json::Value>>, AppwriteError> {
        let users_of = self.users_of.as_deref();
        Ok(self.pages.next().await?.map(|page| {
            page.into_iter()
                .filter(|r| users_of.is_none_or(|c| super::appwrite::users::imported_into(r, c)))
                .collect()
        }))
    }
}

/// What an Appwrite collection name stands for: a table with its child tables, or users.
#[derive(Debug, Clone)]
enum Layout {
    Table(TableSpec, Vec<schema::ChildTable>),
    /// Users, imported under the entity's name (their [`IMPORTED_MARK`]).
    ///
    /// [`IMPORTED_MARK`]: super::appwrite::users::IMPORTED_MARK
    Users(AppwriteUsersSpec, String),
}

#[derive(Clone, Debug)]
pub struct AppwriteTarget {
    pub client: AppwriteClient,
    pub database: String,
    /// Rows per bulk request (≤ 100).
    pub bulk_rows: usize,
    /// Users imported at once (each takes several requests).
    pub user_concurrency: usize,
    /// The most operations one TablesDB transaction may stage (the server's plan limit; the
    /// config's `max_transaction_operations`): a change in a transaction that needs more is
    /// refused before it writes.
    pub max_transaction_operations: usize,
    layouts: Arc<Mutex<HashMap<String, Layout>>>,
    /// File stages' buckets (Appwrite Storage), by the stage's collection.
    buckets: Arc<Mutex<HashMap<String, StorageSpec>>>,
    /// What each file stage's bucket lets through (its settings as the server holds them, or
    /// the mapping's for a bucket the run creates), read once per step, by collection.
    bucket_limits: Arc<Mutex<HashMap<String, super::appwrite::storage::BucketLimits>>>,
    /// A dry run's unique-index keys held so far, by collection: the rows the server would
    /// refuse are rejected as the run would (see [`Target::refusal`]).
    rehearsed_keys: Arc<Mutex<HashMap<String, Vec<super::appwrite::unique::AppwriteUnique>>>>,
}

/// Where a file stage's files go in Appwrite Storage and where they come from.
#[derive(Debug, Clone)]
pub struct StorageSpec {
    pub bucket: String,
    /// Each file's permission templates (`[file.appwrite] file_permissions`).
    pub file_permissions: Option<Vec<crate::mapping::permission::Template>>,
    pub options: super::appwrite::storage::BucketOptions,
    pub algorithm: crate::mapping::spec::ChecksumAlgorithm,
    pub root: std::path::PathBuf,
}

impl AppwriteTarget {
    pub fn new(client: AppwriteClient, database: &str, bulk_rows: usize) -> AppwriteTarget {
        AppwriteTarget {
            client,
            database: database.to_string(),
            bulk_rows: bulk_rows.clamp(1, rows::MAX_BULK_ROWS),
            user_concurrency: 4,
            max_transaction_operations: crate::config::DEFAULT_MAX_TRANSACTION_OPERATIONS,
            layouts: Default::default(),
            rehearsed_keys: Default::default(),
            buckets: Default::default(),
            bucket_limits: Default::default(),
        }
    }

    /// Registers a file stage's Storage bucket (a mapping's `[file]`), its files under `root`.
    pub fn register_storage(&self, f: &crate::mapping::spec::FileSpec, root: &std::path::Path) {
        let o = &f.appwrite;
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                f.bucket.clone(),
                StorageSpec {
                    bucket: f.bucket.clone(),
                    // Checked when the mapping loaded.
                    file_permissions: o.file_permissions.as_ref().map(|list| {
                        list.iter()
                            .filter_map(|t| crate::mapping::permission::Template::parse(t).ok())
                            .collect()
                    }),
                    options: super::appwrite::storage::BucketOptions {
                        permissions: o.permissions.clone(),
                        file_security: o.file_security,
                        maximum_file_size: o.maximum_file_size,
                        allowed_file_extensions: o.allowed_file_extensions.clone(),
                        compression: o.compression.clone(),
                        encryption: o.encryption,
                        antivirus: o.antivirus,
                    },
                    algorithm: f.checksum,
                    root: root.to_path_buf(),
                },
            );
    }

    /// What the bucket of file stage `collection` lets through, as the server will judge each
    /// upload: the existing bucket's settings (the run leaves a bucket as it is), else the
    /// mapping's for the bucket the run creates. Read from the server once per step (see
    /// [`describe`](Self::describe)); `None` when `collection` is no file stage's.
    pub async fn bucket_limits(
        &self,
        collection: &str,
    ) -> Result<Option<super::appwrite::storage::BucketLimits>, AppwriteError> {
        use super::appwrite::storage::{self, BucketLimits};
        let Some(spec) = self.storage(collection) else {
            return Ok(None);
        };
        if let Some(l) = self
            .bucket_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
        {
            return Ok(Some(l.clone()));
        }
        let limits = match storage::bucket(&self.client, &spec.bucket).await? {
            Some(record) => BucketLimits::of_bucket(&spec.bucket, &record, &spec.options),
            None => BucketLimits::of_options(&spec.bucket, &spec.options),
        };
        self.bucket_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(collection.to_string(), limits.clone());
        Ok(Some(limits))
    }

    /// Why the run will refuse the file a row of file stage `collection` names, as (rule,
    /// message), checked as [`write_files`](Self::write_files) checks it before sending a
    /// byte: the file on disk against what the row records, then the bucket's limits (what
    /// Storage would refuse, `file_upload`). A dry run and `check` reject by it.
    pub async fn file_refusal(
        &self,
        collection: &str,
        file: &super::gridfs::FileRef,
    ) -> Result<Option<(&'static str, String)>, AppwriteError> {
        let Some(spec) = self.storage(collection) else {
            return Ok(None);
        };
        let found = match super::gridfs::inspect(&spec.root, file, spec.algorithm).await {
            Ok((_, found)) => found,
            Err(refused) => return Ok(Some(refused)),
        };
        Ok(self
            .limits_refusal(collection, file, found.len)
            .await?
            .map(|why| (super::gridfs::RULE_UPLOAD, why)))
    }

    /// Why Storage would refuse the upload of a row's file of `len` bytes into the bucket of
    /// `collection` (its name's extension, its size), as the message of a `file_upload` reject.
    async fn limits_refusal(
        &self,
        collection: &str,
        file: &super::gridfs::FileRef,
        len: u64,
    ) -> Result<Option<String>, AppwriteError> {
        let Some(limits) = self.bucket_limits(collection).await? else {
            return Ok(None);
        };
        let rel = file.path.as_deref().unwrap_or_default();
        Ok(limits
            .refusal(&super::gridfs::file_name(file), len)
            .map(|why| format!("{rel}: {why}")))
    }

    /// The Storage bucket of a file stage writing `collection`, once registered.
    pub fn storage(&self, collection: &str) -> Option<StorageSpec> {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
            .cloned()
    }

    /// Uploads the file of each document (`files[i]` is `docs[i]`'s) into the bucket, under the
    /// row id of the document's `_id`, and writes the document as that row of `collection`'s
    /// table. Rows whose file is missing, differs from what they record or escapes the root are
    /// refused with their rule (as into GridFS); a file complete already (same length and md5)
    /// is not sent again; anything else under its id (a partial upload, an older version) is
    /// deleted first. A row the table refuses takes its file away again.
    pub async fn write_files(
        &self,
        collection: &str,
        spec: &StorageSpec,
        docs: &[RawDocumentBuf],
        files: &[super::gridfs::FileRef],
    ) -> Result<BatchResult, SinkError> {
        use super::appwrite::storage;
        use super::gridfs::{RULE_MISSING, RULE_UPLOAD};
        let refused = |index: usize, rule: &str, message: String| super::mongodb::DocError {
            index,
            code: 0,
            code_name: rule.to_string(),
            message,
            transient: false,
        };
        let mut result = BatchResult::default();
        // Rows to write (their index in `docs`) once their file is there.
        let mut ready: Vec<(usize, String, bool, u64)> = Vec::new();
        for (index, (raw, file)) in docs.iter().zip(files).enumerate() {
            let doc = raw.to_document().map_err(|e| {
                SinkError::Appwrite(AppwriteError::client(
                    ClientKind::Setup,
                    format!("a document to write is not BSON: {e}"),
                ))
            })?;
            let id = rows::row_id(doc.get("_id").unwrap_or(&Bson::Null));
            let permissions =
                match self.file_permissions(collection, spec.file_permissions.as_deref(), &doc) {
                    Ok(p) => p,
                    Err(why) => {
                        result
                            .errors
                            .push(refused(index, storage::RULE_PERMISSION, why));
                        continue;
                    }
                };
            let (path, found) =
                match super::gridfs::inspect_with_md5(&spec.root, file, spec.algorithm).await {
                    Ok(checked) => checked,
                    Err((rule, message)) => {
                        result.errors.push(refused(index, rule, message));
                        continue;
                    }
                };
            let md5 = found.md5.clone().unwrap_or_default();
            let rel = file.path.as_deref().unwrap_or_default();
            let name = super::gridfs::file_name(file);
            // What Storage would refuse (the bucket's extensions and size) is refused here,
            // before a byte is sent — as the dry run and `check` refuse it.
            if let Some(why) = self.limits_refusal(collection, file, found.len).await? {
                result.errors.push(refused(index, RULE_UPLOAD, why));
                continue;
            }
            let existing = storage::file(&self.client, &spec.bucket, &id).await?;
            if let Some(e) = &existing
                && storage::complete(e, found.len, &md5)
            {
                // The same bytes: only permissions the mapping now gives otherwise are set, and
                // the name when the row names it otherwise now.
                if let Some(p) = &permissions
                    && !storage::same_permissions(e, p)
                {
                    storage::update_permissions(&self.client, &spec.bucket, &id, p).await?;
                }
                if e["name"].as_str() != Some(name.as_str()) {
                    storage::rename(&self.client, &spec.bucket, &id, &name).await?;
                }
                ready.push((index, id, false, 0));
                continue;
            }
            if existing.is_some() {
                storage::delete_file(&self.client, &spec.bucket, &id).await?;
            }
            let record = match storage::upload(
                &self.client,
                &spec.bucket,
                &id,
                &name,
                file.mime.as_deref(),
                permissions.as_deref(),
                &path,
                found.len,
            )
            .await
            {
                Ok(r) => r,
                Err(storage::UploadError::Disk(why)) => {
                    let _ = storage::delete_file(&self.client, &spec.bucket, &id).await;
                    result
                        .errors
                        .push(refused(index, RULE_MISSING, format!("{rel}: {why}")));
                    continue;
                }
                Err(storage::UploadError::Changed(why)) => {
                    let _ = storage::delete_file(&self.client, &spec.bucket, &id).await;
                    result.errors.push(refused(
                        index,
                        RULE_UPLOAD,
                        format!(
                            "{rel}: the file changed while it was uploaded: {why}; removed again"
                        ),
                    ));
                    continue;
                }
                Err(storage::UploadError::Server(e)) if e.is_refusal() => {
                    let _ = storage::delete_file(&self.client, &spec.bucket, &id).await;
                    result.errors.push(refused(
                        index,
                        RULE_UPLOAD,
                        format!("{rel}: Appwrite Storage refused the file: {e}"),
                    ));
                    continue;
                }
                Err(storage::UploadError::Server(e)) => return Err(e.into()),
            };
            // The server's record must be the bytes checked: their length and md5.
            if !storage::complete(&record, found.len, &md5) {
                storage::delete_file(&self.client, &spec.bucket, &id).await?;
                result.errors.push(refused(
                    index,
                    RULE_UPLOAD,
                    format!(
                        "{rel}: Appwrite Storage records {} bytes with md5 {} (what it received), where the file held {} bytes with md5 {md5} when checked before the upload: it changed on disk while uploaded, or the upload was damaged; removed again",
                        record["sizeOriginal"], record["signature"], found.len
                    ),
                ));
                continue;
            }
            ready.push((index, id, true, found.len));
        }
        if ready.is_empty() {
            return Ok(result);
        }
        let rows_docs: Vec<RawDocumentBuf> = ready.iter().map(|(i, ..)| docs[*i].clone()).collect();
        let written = self
            .write(collection, &rows_docs, WriteMode::Upsert)
            .await?;
        let mut row_refused: HashMap<usize, super::mongodb::DocError> = written
            .errors
            .into_iter()
            .map(|mut e| {
                let at = e.index;
                e.index = ready[at].0;
                (at, e)
            })
            .collect();
        for (at, (_, id, uploaded, bytes)) in ready.into_iter().enumerate() {
            if let Some(e) = row_refused.remove(&at) {
                // Its row refused: its file goes too (nothing would name it).
                storage::delete_file(&self.client, &spec.bucket, &id).await?;
                result.errors.push(e);
                continue;
            }
            result.written += 1;
            if uploaded {
                result.files.uploaded += 1;
                result.files.uploaded_bytes += bytes;
            } else {
                result.files.unchanged += 1;
            }
        }
        Ok(result)
    }

    /// The permissions of the file of `doc` (a document of `collection`, a file stage's) from
    /// `templates`, each placeholder the value its row holds in that field (a reference: the
    /// referenced record's id, as the row holds it); `None` without templates; why not (a value
    /// null or missing, or one no role can hold).
    pub fn file_permissions(
        &self,
        collection: &str,
        templates: Option<&[crate::mapping::permission::Template]>,
        doc: &Document,
    ) -> Result<Option<Vec<String>>, String> {
        let Some(templates) = templates else {
            return Ok(None);
        };
        let row = self.row_for(collection, doc).unwrap_or(Value::Null);
        let lookup = |path: &str| match row.get(path) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        templates
            .iter()
            .map(|t| t.fill(lookup))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn layout(&self, collection: &str) -> Option<Layout> {
        self.layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
            .cloned()
    }

    /// Creates the database and the table of `plan` with its columns (idempotent), or notes that
    /// its documents are users. Returns what it changed in columns that existed (see
    /// [`schema::apply`]).
    pub async fn prepare(&self, plan: &Plan) -> Result<Vec<String>, AppwriteError> {
        let mut changes = Vec::new();
        let dest = match &plan.appwrite_users {
            Some(u) => Layout::Users(u.clone(), plan.entity.clone()),
            None => {
                let spec = schema::table_spec(plan);
                changes.extend(
                    schema::apply(&self.client, &self.database, &spec, COLUMN_TIMEOUT).await?,
                );
                let children = schema::child_tables(plan);
                for c in &children {
                    changes.extend(
                        schema::apply(&self.client, &self.database, &c.table, COLUMN_TIMEOUT)
                            .await?,
                    );
                }
                if let Some(storage) = self.storage(&plan.collection) {
                    use super::appwrite::storage::{BucketLimits, ensure_bucket};
                    let (record, created) = ensure_bucket(
                        &self.client,
                        &storage.bucket,
                        &self.database,
                        &storage.options,
                    )
                    .await?;
                    // The bucket as the server holds it (created now, or as it was).
                    let limits = BucketLimits::of_record(
                        &storage.bucket,
                        &record,
                        &storage.options,
                        created,
                    );
                    self.bucket_limits
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(plan.collection.clone(), limits);
                }
                Layout::Table(spec, children)
            }
        };
        self.layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plan.collection.clone(), dest);
        Ok(changes)
    }

    /// What [`prepare`](Self::prepare) would change in the existing columns of `plan`'s tables,
    /// read without writing (dry runs).
    pub async fn planned_changes(&self, plan: &Plan) -> Result<Vec<String>, AppwriteError> {
        if plan.appwrite_users.is_some() {
            return Ok(Vec::new());
        }
        // A file stage's bucket: what it lets through (read once for the rehearsal's rows).
        self.bucket_limits(&plan.collection).await?;
        let mut changes =
            schema::planned(&self.client, &self.database, &schema::table_spec(plan)).await?;
        for c in schema::child_tables(plan) {
            changes.extend(schema::planned(&self.client, &self.database, &c.table).await?);
        }
        Ok(changes)
    }

    /// The columns of `collection`'s table its unique indexes are made of (none for users, or
    /// a collection not described).
    pub fn unique_columns(&self, collection: &str) -> Vec<String> {
        let Some(Layout::Table(spec, _)) = self.layout(collection) else {
            return Vec::new();
        };
        let mut columns: Vec<String> = super::appwrite::unique::AppwriteUnique::of(&spec)
            .iter()
            .flat_map(|u| u.columns().to_vec())
            .collect();
        columns.sort();
        columns.dedup();
        columns
    }

    /// Before a dry run rehearses the rows of `collection`: `row` (as the server gives it) is a
    /// row of its table that the run leaves as it is, `said` as its holder; it keeps its unique
    /// keys whatever row comes. Needs the plan described.
    pub fn hold_kept(&self, collection: &str, said: &str, row: &serde_json::Value) {
        let Some(Layout::Table(spec, _)) = self.layout(collection) else {
            return;
        };
        let mut held = self
            .rehearsed_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let uniques = held
            .entry(collection.to_string())
            .or_insert_with(|| super::appwrite::unique::AppwriteUnique::of(&spec));
        for u in uniques.iter_mut() {
            u.keep(said, row);
        }
    }

    /// Remembers how `plan` maps without touching the server (dry runs, verification); a
    /// rehearsal of its collection starts with no unique key held.
    pub fn describe(&self, plan: &Plan) {
        self.rehearsed_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&plan.collection);
        // The bucket's settings are read again for this step (they may have changed).
        self.bucket_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&plan.collection);
        let dest = match &plan.appwrite_users {
            Some(u) => Layout::Users(u.clone(), plan.entity.clone()),
            None => Layout::Table(schema::table_spec(plan), schema::child_tables(plan)),
        };
        self.layouts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(plan.collection.clone(), dest);
    }

    /// The row a document becomes in `collection`'s table.
    pub fn row_for(&self, collection: &str, doc: &Document) -> Option<Value> {
        match self.layout(collection)? {
            Layout::Table(spec, _) => Some(schema::to_row(doc, &spec)),
            Layout::Users(..) => None,
        }
    }

    /// The user a document becomes, when `collection` holds users.
    pub fn user_for(&self, collection: &str, doc: &Document) -> Option<ImportUser> {
        match self.layout(collection)? {
            Layout::Users(spec, entity) => Some(user_of(doc, &spec, &entity)),
            Layout::Table(..) => None,
        }
    }

    /// The tables a stage writes: its own, then its child tables (the ledger backs them up and
    /// rolls them back together, as one [`Destination::Tables`]).
    pub fn tables_of(&self, collection: &str) -> Vec<String> {
        match self.layout(collection) {
            Some(Layout::Table(_, children)) => std::iter::once(collection.to_string())
                .chain(children.into_iter().map(|c| c.table.id))
                .collect(),
            _ => vec![collection.to_string()],
        }
    }

    pub fn is_users(&self, collection: &str) -> bool {
        matches!(self.layout(collection), Some(Layout::Users(..)))
    }

    /// Where one record of `collection` is: a row of its table, or a user.
    fn record_path(&self, collection: &str) -> String {
        if self.is_users(collection) {
            "/users".to_string()
        } else {
            format!("/tablesdb/{}/tables/{collection}/rows", self.database)
        }
    }

    /// The ids of the records `collection` holds (its rows, or the users cutover imported into
    /// it), a page at a time.
    pub fn ids(&self, collection: &str) -> RecordIds<'_> {
        if let Some(Layout::Users(_, entity)) = self.layout(collection) {
            RecordIds {
                pages: Pages::users(&self.client),
                users_of: Some(entity),
            }
        } else {
            RecordIds {
                pages: Pages::rows(&self.client, &self.database, collection),
                users_of: None,
            }
        }
    }

    /// [`AppwriteTarget::delete_records`], and for a file stage the rows' files first (a row's
    /// file goes with it: adv25 F9, `--sync-deletes` left the files of rows gone).
    pub async fn delete_rows_and_files(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<u64, AppwriteError> {
        if let Some(spec) = self.storage(collection) {
            for id in ids {
                super::appwrite::storage::delete_file(&self.client, &spec.bucket, id).await?;
            }
        }
        self.delete_records(collection, ids).await
    }

    /// Deletes the records `ids` of `collection` (rows, their child-table rows first, or
    /// users); a record already gone is no error. Returns how many were there.
    pub async fn delete_records(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<u64, AppwriteError> {
        let children = if self.is_users(collection) {
            Vec::new()
        } else {
            self.tables_of(collection)
        };
        for child in children.iter().skip(1) {
            self.client
                .delete_children(&self.database, child, ids)
                .await?;
        }
        let path = self.record_path(collection);
        let mut n = 0;
        for id in ids {
            match self
                .client
                .call(reqwest::Method::DELETE, &format!("{path}/{id}"), None)
                .await
            {
                Ok(_) => n += 1,
                Err(e) if e.is_missing() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Those of the records `ids` (row ids, or user ids) that are there: rows that exist,
    /// users that exist and are not blocked (what `remove_documents` would remove).
    pub async fn present_records(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<String>, AppwriteError> {
        self.records_there(collection, ids, false).await
    }

    /// Those of the records `ids` a reference can point at: rows that exist, users that exist
    /// and that cutover did not block for a row rejected or removed since (a user the mapping
    /// imported blocked — `status` — is one).
    pub async fn referable_records(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<String>, AppwriteError> {
        self.records_there(collection, ids, true).await
    }

    async fn records_there(
        &self,
        collection: &str,
        ids: &[String],
        referable: bool,
    ) -> Result<Vec<String>, AppwriteError> {
        if !self.is_users(collection) {
            let there = self
                .client
                .present_rows(&self.database, collection, ids)
                .await?;
            return Ok(ids.iter().filter(|i| there.contains(*i)).cloned().collect());
        }
        let mut out = Vec::new();
        for id in ids {
            let found = match self
                .client
                .call(reqwest::Method::GET, &format!("/users/{id}"), None)
                .await
            {
                Ok(user) if referable => {
                    user["prefs"][super::appwrite::users::BLOCKED_MARK].is_null()
                }
                Ok(user) => user["status"] != false,
                Err(e) if e.is_missing() => false,
                Err(e) => return Err(e),
            };
            if found {
                out.push(id.clone());
            }
        }
        Ok(out)
    }

    async fn is_empty(&self, collection: &str) -> Result<bool, AppwriteError> {
        // Users: none but those cutover imported for other entities. A user without the mark
        // (the project's own, or imported by an older version) makes it not empty: a rollback
        // must not take for cutover's what it cannot tell apart (found by this session's
        // review, B).
        if let Some(Layout::Users(_, entity)) = self.layout(collection) {
            let mut pages = Pages::users(&self.client);
            while let Some(page) = pages.next().await? {
                let others = |u: &Value| {
                    u["prefs"][super::appwrite::users::IMPORTED_MARK]
                        .as_str()
                        .is_some_and(|e| e != entity)
                };
                if !page.iter().all(others) {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        self.client.table_is_empty(&self.database, collection).await
    }

    async fn write(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        mode: WriteMode,
    ) -> Result<BatchResult, AppwriteError> {
        let decoded: Vec<Result<Document, String>> = docs
            .iter()
            .map(|d| d.to_document().map_err(|e| e.to_string()))
            .collect();
        let mut errors = Vec::new();
        let mut ok_index = Vec::new();
        let mut ok_docs = Vec::new();
        let layout = self.layout(collection);
        let (table, children) = match &layout {
            Some(Layout::Table(spec, children)) => (Some(spec), children.as_slice()),
            _ => (None, &[][..]),
        };
        for (i, d) in decoded.into_iter().enumerate() {
            let d = match d {
                Ok(d) => d,
                Err(message) => {
                    errors.push(DocError {
                        index: i,
                        code: 0,
                        code_name: "document_unreadable".into(),
                        message,
                        transient: false,
                    });
                    continue;
                }
            };
            let users = matches!(layout, Some(Layout::Users(..)));
            match refusal(&d, table, children).or_else(|| users.then(|| users_refusal(&d))?) {
                Some((rule, message)) => errors.push(DocError {
                    index: i,
                    code: 0,
                    code_name: rule.into(),
                    message,
                    transient: false,
                }),
                None => {
                    ok_index.push(i);
                    ok_docs.push(d);
                }
            }
        }
        let failed = match layout {
            Some(Layout::Table(spec, children)) => {
                self.write_rows(collection, &spec, &children, &ok_docs, mode)
                    .await?
            }
            Some(Layout::Users(spec, entity)) => self.write_users(&entity, &spec, &ok_docs).await?,
            None => {
                return Err(AppwriteError::client(
                    ClientKind::NotPrepared,
                    format!("the table {collection} was not set up before writing"),
                ));
            }
        };
        for (i, e) in failed {
            errors.push(doc_error(ok_index[i], &e));
        }
        errors.sort_by_key(|e| e.index);
        Ok(BatchResult {
            written: (docs.len() - errors.len()) as u64,
            errors,
            ..Default::default()
        })
    }
}

impl AppwriteTarget {
    /// Writes documents as rows of `spec` (children first, into their child tables: a parent is
    /// written only when all its children are). Returns the documents refused or failed, by
    /// index (a document whose child row failed is failed).
    async fn write_rows(
        &self,
        table: &str,
        spec: &TableSpec,
        children: &[schema::ChildTable],
        docs: &[Document],
        mode: WriteMode,
    ) -> Result<Vec<(usize, AppwriteError)>, AppwriteError> {
        let ids: Vec<String> = docs
            .iter()
            .map(|d| rows::row_id(d.get("_id").unwrap_or(&Bson::Null)))
            .collect();
        let mut failed = std::collections::BTreeMap::new();
        for c in children {
            if mode == WriteMode::Upsert {
                // Elements a parent no longer has must not survive a re-run.
                self.client
                    .delete_children(&self.database, &c.table.id, &ids)
                    .await?;
            }
            let mut owner = Vec::new();
            let mut child_rows = Vec::new();
            for (pi, d) in docs.iter().enumerate() {
                for r in schema::child_rows(d, &ids[pi], std::slice::from_ref(c))
                    .into_iter()
                    .flatten()
                {
                    owner.push(pi);
                    child_rows.push(r);
                }
            }
            let failures = rows::upsert_rows(
                &self.client,
                &self.database,
                &c.table.id,
                &child_rows,
                self.bulk_rows,
            )
            .await?;
            for f in failures {
                let mut e = f.error;
                let message = e.message_mut();
                *message = format!("child table {} ({}): {message}", c.table.id, c.key);
                failed.entry(owner[f.index]).or_insert(e);
            }
        }
        let (parent_index, parent_rows): (Vec<usize>, Vec<Value>) = docs
            .iter()
            .enumerate()
            .filter(|(pi, _)| !failed.contains_key(pi))
            .map(|(pi, d)| (pi, schema::to_row(d, spec)))
            .unzip();
        let failures = rows::upsert_rows(
            &self.client,
            &self.database,
            table,
            &parent_rows,
            self.bulk_rows,
        )
        .await?;
        for f in failures {
            failed.insert(parent_index[f.index], unique_refusal(spec, f.error));
        }
        if !failed.is_empty() {
            // The children of a refused parent go too.
            let gone: Vec<String> = failed.keys().map(|&i| ids[i].clone()).collect();
            for c in children {
                self.client
                    .delete_children(&self.database, &c.table.id, &gone)
                    .await?;
            }
        }
        Ok(failed.into_iter().collect())
    }

    /// Imports documents as users, a few at a time. Returns the users refused, by index.
    async fn write_users(
        &self,
        entity: &str,
        spec: &AppwriteUsersSpec,
        docs: &[Document],
    ) -> Result<Vec<(usize, AppwriteError)>, AppwriteError> {
        let users: Vec<(usize, ImportUser)> = docs
            .iter()
            .map(|d| user_of(d, spec, entity))
            .enumerate()
            .collect();
        let results: Vec<(usize, Result<(), AppwriteError>)> = futures::stream::iter(users)
            .map(|(i, u)| {
                let client = self.client.clone();
                async move { (i, upsert_user(&client, &u).await) }
            })
            .buffer_unordered(self.user_concurrency.max(1))
            .collect()
            .await;
        // Users refused because another user of the batch held their email or phone at that
        // moment (two users swapping emails, imported at once) are tried again, one at a time in
        // the batch's order, as a one-by-one import would have met them.
        let (mut results, conflicts): (Vec<_>, Vec<_>) = results
            .into_iter()
            .partition(|(_, r)| !matches!(r, Err(e) if e.status() == Some(409)));
        let mut conflicts = conflicts;
        conflicts.sort_by_key(|(i, _)| *i);
        for (i, _) in conflicts {
            let u = user_of(&docs[i], spec, entity);
            results.push((i, upsert_user(&self.client, &u).await));
        }
        let mut failed = Vec::new();
        for (i, r) in results {
            match r {
                Ok(()) => {}
                Err(e) if e.is_refusal() => failed.push((i, e)),
                // A user the server still fails after the client's retries (a 5xx on this one
                // user): failed alone (not rejected), the others of the batch stay written.
                Err(e) if e.status().is_some() && e.is_retryable() => failed.push((i, e)),
                Err(e) => return Err(e),
            }
        }
        Ok(failed)
    }
}

/// Why a document cannot be written to Appwrite as it is: a NaN or infinite number in a column
/// (JSON has none; nested ones are kept as extended-JSON text), a date without ISO 8601 text, or
/// an array column's NULL element (a JSON `null` in a `jsonb[]` too) or nested array (`table`
/// says which columns hold JSON text, whose values may be anything). The rows of its child
/// tables (`children`) are held to the same rules, a refused child row refusing its parent.
/// Why Appwrite would refuse `d` as a row of `table` (with `children`), as (rule, message) —
/// refused before anything is sent, under the rule `check` names: Appwrite's JSON has no NaN
/// or infinity (never let them become null), and text longer than its column would be refused by
/// the server as a bare `row_invalid_structure`.
pub(crate) fn refusal(
    d: &Document,
    table: Option<&TableSpec>,
    children: &[schema::ChildTable],
) -> Option<(&'static str, String)> {
    match unrepresentable(d, table, children) {
        Some(message) => Some(("appwrite_unrepresentable", message)),
        None => table.and_then(|t| {
            let long = too_long(d, t, children);
            let (path, size) = long.iter().next()?;
            Some((
                "appwrite_string_size",
                format!("{path} is longer than the Appwrite column's {size} characters"),
            ))
        }),
    }
}

/// Why Appwrite would not give back a user's document as it is: its prefs are relaxed extended
/// JSON, so an object keyed like an extended JSON type (`{"$numberDecimal": "1"}` from a jsonb
/// value) would read back as that type, not as the object (the eleventh tester's 11; a table's
/// JSON column refuses the same).
pub fn users_refusal(d: &Document) -> Option<(&'static str, String)> {
    d.iter().find(|(_, v)| extjson_lookalike(v)).map(|(k, _)| {
        (
            "appwrite_unrepresentable",
            format!(
                "{k} holds an object keyed like an extended JSON type (`$numberDecimal`, `$date`…): the user's prefs would read it back as that type, not as the object"
            ),
        )
    })
}

pub fn unrepresentable(
    doc: &Document,
    table: Option<&TableSpec>,
    children: &[schema::ChildTable],
) -> Option<String> {
    let child_keys: Vec<&str> = children.iter().map(|c| c.key.as_str()).collect();
    if let Some(message) = unrepresentable_columns(doc, table, &child_keys) {
        return Some(message);
    }
    for c in children {
        let Some(Bson::Array(items)) = doc.get(&c.key) else {
            continue;
        };
        for (pos, item) in items.iter().enumerate() {
            // An element becomes a row as `schema::child_rows` makes it.
            let element = match item {
                Bson::Document(d) => d.clone(),
                other => bson::doc! { "value": other.clone() },
            };
            if let Some(message) = unrepresentable_columns(&element, Some(&c.table), &[]) {
                return Some(format!(
                    "{}[{pos}].{message} (child table {})",
                    c.key, c.table.id
                ));
            }
        }
    }
    None
}

/// [`unrepresentable`] for the columns of one row (`skip`: keys stored in child tables).
fn unrepresentable_columns(
    doc: &Document,
    table: Option<&TableSpec>,
    skip: &[&str],
) -> Option<String> {
    let json_column = |k: &str| {
        table.and_then(|t| {
            t.columns
                .iter()
                .find(|c| c.key == k && c.kind == schema::Kind::Json)
        })
    };
    let bad = |v: &Bson| match v {
        Bson::Double(d) => !d.is_finite(),
        // Outside years 0–9999 a date has no ISO 8601 text for a datetime column.
        Bson::DateTime(d) => d.try_to_rfc3339_string().is_err(),
        _ => false,
    };
    doc.iter().find_map(|(k, v)| {
        if skip.contains(&k.as_str()) {
            return None;
        }
        if let Some(c) = json_column(k) {
            // JSON text holds any value, but an array column of JSON texts no NULL element: a
            // JSON `null` and a NULL element both arrive as null, and neither has a text there.
            return match v {
                Bson::Array(items) if c.array && items.iter().any(|i| matches!(i, Bson::Null)) => {
                    Some(format!(
                        "{k} is an array holding a null (JSON null or NULL), which an Appwrite array column cannot store"
                    ))
                }
                v if extjson_lookalike(v) => Some(format!(
                    "{k} holds an object keyed like an extended JSON type (`$numberDecimal`, `$date`…): its JSON text would read back as that type, not as the object"
                )),
                _ => None,
            };
        }
        // A value of another type than its column's (a mapping's `default = "none"` on an
        // integer column, a `map` to booleans of a date): the server refuses the row.
        if let Some(c) = table.and_then(|t| t.columns.iter().find(|c| c.key == *k))
            && !c.reference
        {
            let misfit = match v {
                Bson::Array(items) if c.array => items.iter().find(|i| !fits(&c.kind, i)),
                Bson::Array(_) => Some(v),
                v if !fits(&c.kind, v) => Some(v),
                _ => None,
            };
            if let Some(m) = misfit {
                return Some(format!(
                    "{k} holds {}, which its Appwrite {} column cannot store",
                    value_text(m),
                    c.request().0
                ));
            }
        }
        let hit = match v {
            // An array column holds values of its type: no NULL, no nested array (an array of
            // documents is JSON text, as embedded documents are).
            Bson::Array(items) if items.iter().any(|i| matches!(i, Bson::Null)) => {
                return Some(format!(
                    "{k} is an array holding NULL, which an Appwrite array column cannot store"
                ));
            }
            Bson::Array(items) if items.iter().any(|i| matches!(i, Bson::Array(_))) => {
                return Some(format!(
                    "{k} is a multi-dimensional array, which an Appwrite column cannot store"
                ));
            }
            Bson::Array(items) => items.iter().any(bad),
            v => bad(v),
        };
        hit.then(|| format!("{k} holds {}, which an Appwrite column cannot store", value_text(v)))
    })
}

/// A value as a message shows it: a date as ISO 8601 (adv24 F5: the driver's debug form
/// `DateTime("+10000-01-01 0:29:59.999 +00:00:00")`), a long value cut.
fn value_text(v: &Bson) -> String {
    let text = match v {
        // Years before 1 and after 9999 as ISO 8601 writes them (`-0043-03-15`, `+10000-01-01`).
        Bson::DateTime(d) => chrono::DateTime::from_timestamp_millis(d.timestamp_millis())
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_else(|| {
                format!(
                    "a date {} ms from 1970-01-01T00:00:00Z",
                    d.timestamp_millis()
                )
            }),
        other => other.to_string(),
    };
    crate::redact::clip_lines(&text, 200)
}

/// Whether a column of `kind` stores `v` as itself (a text column stores any scalar's text).
fn fits(kind: &schema::Kind, v: &Bson) -> bool {
    use schema::Kind;
    match (kind, v) {
        (_, Bson::Null) => true,
        (Kind::Integer, Bson::Int32(_) | Bson::Int64(_)) => true,
        (Kind::Float, Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_)) => true,
        (Kind::Boolean, Bson::Boolean(_)) => true,
        (Kind::Datetime, Bson::DateTime(_)) => true,
        (Kind::Text(_), v) => !matches!(v, Bson::Document(_) | Bson::Array(_)),
        (Kind::Json, _) => true,
        // A GeoJSON point (as `transform::point` makes it).
        (Kind::Point, Bson::Document(d)) => d.get_str("type") == Ok("Point"),
        _ => false,
    }
}

/// Whether `v` holds an object that extended JSON reads back as another type (`{"$numberDecimal":
/// "1"}` from a `jsonb` value): as JSON text in Appwrite it would not be the object it is.
fn extjson_lookalike(v: &Bson) -> bool {
    match v {
        Bson::Document(d) => {
            // The legacy regular expression (`{"$regex": "a", "$options": "i"}`), which the
            // bson crate does not read but MongoDB's drivers do (found by the thirteenth
            // tester, T7: pymongo read the stored text back as a Regex).
            if matches!(d.get("$regex"), Some(Bson::String(_))) {
                return true;
            }
            // A DBRef (`{"$ref": "c", "$id": …}`), which the drivers read back as one (the
            // eighteenth tester's F7; the bson crate keeps it a document).
            if matches!(d.get("$ref"), Some(Bson::String(_))) && d.contains_key("$id") {
                return true;
            }
            if d.keys().any(|k| k.starts_with('$')) {
                let back = Bson::try_from(Bson::Document(d.clone()).into_relaxed_extjson());
                if !matches!(back, Ok(Bson::Document(_))) {
                    return true;
                }
            }
            d.values().any(extjson_lookalike)
        }
        Bson::Array(items) => items.iter().any(extjson_lookalike),
        _ => false,
    }
}

/// The text columns of a document's row and of its child tables' rows longer than their column
/// holds, as (path, size): a child table's column as `<array>.<column>`. Appwrite refuses such a
/// row (and a refused child row fails its parent).
pub fn too_long(
    doc: &Document,
    table: &TableSpec,
    children: &[schema::ChildTable],
) -> std::collections::BTreeMap<String, u64> {
    let mut long = std::collections::BTreeMap::new();
    long_columns(&schema::to_row(doc, table), table, "", &mut long);
    if children.is_empty() {
        return long;
    }
    let parent_id = rows::row_id(doc.get("_id").unwrap_or(&Bson::Null));
    for (child, rows) in children
        .iter()
        .zip(schema::child_rows(doc, &parent_id, children))
    {
        for row in &rows {
            long_columns(row, &child.table, &format!("{}.", child.key), &mut long);
        }
    }
    long
}

/// The text columns of an Appwrite row longer than the column holds, as (`prefix` + key, size).
fn long_columns(
    row: &Value,
    spec: &TableSpec,
    prefix: &str,
    out: &mut std::collections::BTreeMap<String, u64>,
) {
    for c in &spec.columns {
        let size = match c.kind {
            schema::Kind::Text(n) => n,
            schema::Kind::Json => c.size.unwrap_or(schema::DEFAULT_TEXT_SIZE),
            _ => continue,
        };
        let too_long = |v: &Value| v.as_str().map(|s| s.chars().count() as u64).unwrap_or(0) > size;
        let long = match &row[&c.key] {
            Value::Array(items) => items.iter().any(too_long),
            v => too_long(v),
        };
        if long {
            out.insert(format!("{prefix}{}", c.key), size);
        }
    }
}

/// A document the server did not take: refused (400, 409: rejected), or failed by a transient
/// error that outlasted the retries (5xx, 429, 408: failed, written again by a resume).
/// The rule of a row the server refused because a unique index of `spec` holds its key in
/// another row: Appwrite 1.8 answers such a write with the type and message of an id taken
/// (`row_already_exists`, "Row with the requested ID already exists…"), which cannot be what an
/// upsert meets; newer servers say `row_unique_constraint_violation`.
pub const RULE_UNIQUE_INDEX: &str = "unique_index";
/// The rule of a document mongod refuses for a key a unique index holds in another (its code
/// name, as the run's rejects name it).
pub const RULE_DUPLICATE_KEY: &str = "DuplicateKey";

fn unique_refusal(spec: &TableSpec, e: AppwriteError) -> AppwriteError {
    if e.status() != Some(409) {
        return e;
    }
    let indexes: Vec<String> = spec
        .indexes
        .iter()
        .filter(|i| i.kind == "unique")
        .map(|i| format!("`{}` ({})", i.key, i.columns.join(", ")))
        .collect();
    AppwriteError::http(
        409,
        RULE_UNIQUE_INDEX,
        format!(
            "a unique index of table {} ({}) holds this row's key in another row; Appwrite says: {}",
            spec.id,
            if indexes.is_empty() {
                "none made by this mapping".to_string()
            } else {
                indexes.join(", ")
            },
            e.message()
        ),
    )
}

fn doc_error(index: usize, e: &AppwriteError) -> DocError {
    DocError {
        index,
        code: i32::from(e.code()),
        code_name: e.kind(),
        message: e.message().to_string(),
        transient: e.is_retryable(),
    }
}

/// Appwrite labels: letters and digits only, at most 36 characters.
pub fn label_of(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(36)
        .collect()
}

fn text_of(doc: &Document, field: Option<&String>) -> Option<String> {
    match doc.get(field?)? {
        Bson::String(s) => Some(s.clone()),
        Bson::Null => None,
        other => Some(rows::column_value(other).to_string()),
    }
}

/// The user a document becomes under `spec`.
/// Its prefs carry [`IMPORTED_MARK`](super::appwrite::users::IMPORTED_MARK) = `entity`.
pub fn user_of(doc: &Document, spec: &AppwriteUsersSpec, entity: &str) -> ImportUser {
    let used: Vec<&String> = [
        Some(&spec.email),
        Some(&spec.password_hash),
        spec.name.as_ref(),
        spec.phone.as_ref(),
        spec.email_verified.as_ref(),
        spec.status.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut prefs = serde_json::Map::new();
    for (k, v) in doc {
        if k != "_id" && !used.contains(&k) {
            prefs.insert(k.clone(), v.clone().into_relaxed_extjson());
        }
    }
    prefs.insert(
        super::appwrite::users::IMPORTED_MARK.to_string(),
        Value::String(entity.to_string()),
    );
    let labels = match spec.labels.as_ref().and_then(|f| doc.get(f)) {
        Some(Bson::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str())
            .map(label_of)
            .filter(|l| !l.is_empty())
            .collect(),
        Some(Bson::String(s)) => vec![label_of(s)],
        _ => Vec::new(),
    };
    let options: serde_json::Map<String, Value> = spec
        .hash_options
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect();
    ImportUser {
        id: rows::row_id(doc.get("_id").unwrap_or(&Bson::Null)),
        // As Appwrite keeps it (its ASCII letters in lower case): compared so on a re-run, a
        // mixed-case email no longer reads as changed — which re-created the user each time
        // (this session's review, H).
        email: text_of(doc, Some(&spec.email))
            .unwrap_or_default()
            .to_ascii_lowercase(),
        name: text_of(doc, spec.name.as_ref()).unwrap_or_default(),
        hash: text_of(doc, Some(&spec.password_hash)).unwrap_or_default(),
        algorithm: spec.algorithm.clone(),
        options: Value::Object(options),
        labels,
        prefs: Value::Object(prefs),
        phone: text_of(doc, spec.phone.as_ref()),
        email_verified: spec
            .email_verified
            .as_ref()
            .and_then(|f| doc.get_bool(f).ok()),
        enabled: spec.status.as_ref().map(|f| {
            doc.get_str(f)
                .map(|s| spec.active.iter().any(|a| a == s))
                .unwrap_or(false)
        }),
    }
}

/// Creates or brings up to date one user (a re-run converges on the same state).
/// The most prefs Appwrite keeps for a user (bytes of JSON).
pub const MAX_PREFS_BYTES: usize = 65_535;

async fn upsert_user(client: &AppwriteClient, u: &ImportUser) -> Result<(), AppwriteError> {
    // Refused before the user is created, so that a reject leaves nothing half-written.
    let prefs = u.prefs.to_string().len();
    if prefs > MAX_PREFS_BYTES {
        return Err(AppwriteError::client(
            ClientKind::Refused("user_prefs_too_large"),
            format!(
                "the prefs are {prefs} bytes of JSON; Appwrite keeps at most {MAX_PREFS_BYTES}"
            ),
        ));
    }
    users::import_user(client, u).await.map(|_| ())
}

/// Documents of an entity whose key Appwrite may hash into the row id, kept nowhere else.
#[derive(Debug, Clone)]
pub struct KeyLost {
    message: String,
}

impl KeyLost {
    pub const RULE: &'static str = "appwrite_id";

    /// The warning for `doc`, when its row id is its key's hash.
    pub fn warning(&self, doc: &bson::RawDocumentBuf) -> Option<&str> {
        let id: Bson = doc
            .get("_id")
            .ok()
            .flatten()?
            .to_raw_bson()
            .try_into()
            .ok()?;
        rows::id_is_hashed(&id).then_some(self.message.as_str())
    }
}

/// The run's target.
#[derive(Clone)]
pub enum Target {
    Mongo(MongoTarget),
    Appwrite(AppwriteTarget),
}

impl Target {
    /// The target as reports name it: kind and database (Appwrite: endpoint and project too),
    /// never a credential.
    pub fn display_name(&self) -> String {
        match self {
            Target::Mongo(m) => format!("mongodb {}", m.database().name()),
            Target::Appwrite(a) => format!(
                "appwrite {} (project {}, database {})",
                crate::redact::redact_url(a.client.endpoint()),
                a.client.project(),
                a.database
            ),
        }
    }

    /// Where the target is — servers (or endpoint and project) and database — so that a
    /// verification of one server is never taken for another's with the same database name.
    pub fn location(&self) -> String {
        match self {
            Target::Mongo(m) => format!("mongodb {}/{}", m.hosts(), m.database().name()),
            Target::Appwrite(_) => self.display_name(),
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Mongo(_) => TargetKind::Mongodb,
            Target::Appwrite(_) => TargetKind::Appwrite,
        }
    }

    /// The largest document the target takes (MongoDB's 16 MiB); `None` when it sets no such
    /// limit of its own (Appwrite refuses what does not fit a column, row by row).
    pub fn max_document_bytes(&self) -> Option<usize> {
        match self {
            Target::Mongo(_) => Some(super::mongodb::MAX_DOCUMENT_BYTES),
            Target::Appwrite(_) => None,
        }
    }

    /// Sets up the destination of a stage before its first row. Returns what it changed in an
    /// existing destination to match the mapping (Appwrite columns), a sentence each.
    pub async fn prepare(&self, plan: &Plan) -> Result<Vec<String>, SinkError> {
        match self {
            Target::Mongo(_) if plan.file.is_some() => Ok(Vec::new()),
            Target::Mongo(m) => match m.destination(&plan.collection).await?.unfit {
                Some(why) => Err(MongoError::Unfit(why).into()),
                None => {
                    m.note_unique_indexes(&plan.collection, &plan.indexes)
                        .await?;
                    Ok(Vec::new())
                }
            },
            Target::Appwrite(a) => Ok(a.prepare(plan).await?),
        }
    }

    /// Why the target would refuse `doc` for `collection` before writing it, as (rule, message):
    /// what a dry run rejects as the real run would (Appwrite's column types, sizes and unique
    /// indexes; the unique indexes a MongoDB collection has already). Needs the plan described
    /// or prepared (MongoDB: `planned_changes`).
    pub fn refusal(
        &self,
        collection: &str,
        doc: &bson::RawDocumentBuf,
    ) -> Option<(&'static str, String)> {
        let a = match self {
            Target::Appwrite(a) => a,
            Target::Mongo(m) => {
                // A unique index the collection has already (a re-run): the row repeating a
                // key a row written before it (in key order) holds is refused by mongod.
                let d = doc.to_document().ok()?;
                let holder = d.get("_id").map(super::mongo_unique::shown_id)?;
                let (index, first, key) = m.rehearse_unique(collection, &holder, &d)?;
                return Some((
                    RULE_DUPLICATE_KEY,
                    format!(
                        "MongoDB's unique index `{index}` of {collection} would refuse the document: {first} holds its key [{key}]{}",
                        if first.is_row() {
                            " (written first, in key order)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        };
        if let Some(r) = self.row_refusal(collection, doc) {
            return Some(r);
        }
        let layout = a.layout(collection);
        let table = match &layout {
            Some(Layout::Table(spec, _)) => Some(spec),
            _ => None,
        };
        let d = doc.to_document().ok()?;
        // A unique index: the row repeating a key a row written before it holds is refused by
        // the server (in key order, the first keeps it). Rows are rehearsed in that order.
        let spec = table?;
        let mut held = a.rehearsed_keys.lock().unwrap_or_else(|p| p.into_inner());
        let uniques = held
            .entry(collection.to_string())
            .or_insert_with(|| super::appwrite::unique::AppwriteUnique::of(spec));
        if uniques.is_empty() {
            return None;
        }
        let row = schema::to_row(&d, spec);
        let holder = d.get("_id").map(rows::row_id).unwrap_or_default();
        match uniques
            .iter()
            .find_map(|u| u.repeats(&row).map(|r| (u.name.clone(), r)))
        {
            Some((index, (first, shown))) => Some((
                RULE_UNIQUE_INDEX,
                format!(
                    "Appwrite's unique index `{index}` of table {} would refuse the row: {first} holds its key [{shown}]",
                    spec.id
                ),
            )),
            None => {
                for u in uniques.iter_mut() {
                    u.hold(&holder, &row);
                }
                None
            }
        }
    }

    /// Appwrite: why the server would refuse `doc` whatever the other rows (a value its column
    /// cannot hold, a file permission the row cannot fill, a user it cannot create) — what the
    /// writer refuses before sending. A run rejects such rows as it reads them, as its dry run
    /// does, so that their warnings are not recorded for rows never written (adv32 F2). `None`
    /// for MongoDB.
    pub fn row_refusal(
        &self,
        collection: &str,
        doc: &bson::RawDocumentBuf,
    ) -> Option<(&'static str, String)> {
        let Target::Appwrite(a) = self else {
            return None;
        };
        let layout = a.layout(collection);
        let (table, children) = match &layout {
            Some(Layout::Table(spec, children)) => (Some(spec), children.as_slice()),
            _ => (None, &[][..]),
        };
        let d = doc.to_document().ok()?;
        // A file stage's file permissions the row cannot fill.
        if let Some(storage) = a.storage(collection)
            && let Err(why) =
                a.file_permissions(collection, storage.file_permissions.as_deref(), &d)
        {
            return Some((super::appwrite::storage::RULE_PERMISSION, why));
        }
        let users = matches!(layout, Some(Layout::Users(..)));
        refusal(&d, table, children).or_else(|| users.then(|| users_refusal(&d))?)
    }

    /// Why this target cannot have `collection` as the destination of `entity` at all (Appwrite:
    /// a table id outside its id rule), naming the mapping and what to change.
    pub fn unfit_name(&self, entity: &str, collection: &str, users: bool) -> Option<String> {
        let Target::Appwrite(a) = self else {
            return None;
        };
        if !crate::sink::appwrite::id_ok(&a.database) {
            return Some(format!(
                "`{}` cannot be an Appwrite database id (at most 36 of a-z, A-Z, 0-9, `.`, `-`, `_`, not starting with `.`, `-` or `_`): name another with --database, APPWRITE_DATABASE or [target.appwrite] database",
                a.database
            ));
        }
        if users || crate::sink::appwrite::id_ok(collection) {
            return None;
        }
        Some(format!(
            "{entity}: `{collection}` cannot be an Appwrite table id (at most 36 of a-z, A-Z, 0-9, `.`, `-`, `_`, not starting with `.`, `-` or `_`); set `collection` in its mapping to a name that fits"
        ))
    }

    /// Appwrite: why the columns `plan` makes cannot be created — a key Appwrite's key rule
    /// refuses (at most 36 of a-z, A-Z, 0-9, `.`, `-`, `_`, not starting with `.`, `-` or `_`;
    /// a MongoDB field name may be anything), or two keys of one table equal but for case (its
    /// database layer compares column names so). `None` for MongoDB, users and file stages.
    pub fn unfit_columns(&self, plan: &crate::mapping::plan::Plan) -> Option<String> {
        use crate::sink::appwrite::schema;
        let Target::Appwrite(_) = self else {
            return None;
        };
        if plan.appwrite_users.is_some() || plan.file.is_some() {
            return None;
        }
        let main = schema::table_spec(plan);
        let children = schema::child_tables(plan);
        let mut problems = Vec::new();
        for table in std::iter::once(&main).chain(children.iter().map(|c| &c.table)) {
            let mut seen: HashMap<String, &str> = HashMap::new();
            for c in &table.columns {
                if !crate::sink::appwrite::id_ok(&c.key) {
                    problems.push(format!("`{}` (table {})", c.key, table.id));
                } else if let Some(other) = seen.insert(c.key.to_lowercase(), &c.key) {
                    problems.push(format!(
                        "`{}` and `{other}` (table {}: equal but for case)",
                        c.key, table.id
                    ));
                }
            }
        }
        (!problems.is_empty()).then(|| {
            format!(
                "{}: Appwrite cannot create the column(s) {}: a column key is at most 36 of a-z, A-Z, 0-9, `.`, `-`, `_`, not starting with `.`, `-` or `_`, and unique ignoring case; give the field another `path`",
                plan.entity,
                problems.join(", ")
            )
        })
    }

    /// Whether documents written into `plan`'s destination may keep their key's value nowhere:
    /// Appwrite hashes a key its row ids cannot hold (a capital, a character outside its id
    /// rule, several key columns), and a key not mapped as a field is then lost. Decided once per
    /// entity; [`KeyLost::warning`] says it for each document it applies to.
    pub fn key_lost(&self, plan: &Plan) -> Option<KeyLost> {
        let Target::Appwrite(_) = self else {
            return None;
        };
        if plan.appwrite_users.is_some() || plan.key_in_fields() {
            return None;
        }
        let columns: Vec<&str> = plan
            .key
            .iter()
            .map(|&k| plan.read.columns[k].name.as_str())
            .collect();
        Some(KeyLost {
            message: format!(
                "the key does not fit an Appwrite row id (a capital, a character outside [a-z0-9._-], or several columns): the row id is its hash and no column holds {}; map the key column(s) as fields to keep the value",
                columns.join(", ")
            ),
        })
    }

    /// Notes a plan's destination without writing (dry runs).
    pub fn describe(&self, plan: &Plan) {
        if let Target::Appwrite(a) = self {
            a.describe(plan);
        }
    }

    /// What [`prepare`](Self::prepare) would change in an existing destination, read without
    /// writing (dry runs): Appwrite columns whose rules the mapping changed.
    pub async fn planned_changes(&self, plan: &Plan) -> Result<Vec<String>, SinkError> {
        match self {
            Target::Mongo(m) => {
                // The unique indexes a re-run meets (the rehearsal refuses as mongod would).
                if plan.file.is_none() {
                    m.note_unique_indexes(&plan.collection, &plan.indexes)
                        .await?;
                }
                Ok(Vec::new())
            }
            Target::Appwrite(a) => Ok(a.planned_changes(plan).await?),
        }
    }

    /// Gets the target ready for a file stage (a mapping's `[file]`), its files under `root`:
    /// a GridFS bucket (MongoDB) or a Storage bucket with its rows' table (Appwrite).
    /// `recheck`: GridFS files recorded complete are read back and hashed before they are
    /// taken as they are (Appwrite Storage's record is its own md5 of the bytes it holds).
    pub fn register_files(
        &self,
        f: &crate::mapping::spec::FileSpec,
        root: &std::path::Path,
        recheck: bool,
    ) -> Result<(), SinkError> {
        match self {
            Target::Mongo(m) => {
                m.register_bucket(super::gridfs::BucketSpec {
                    name: f.bucket.clone(),
                    documents: f.document_collection.clone(),
                    chunk_size: f.chunk_size,
                    algorithm: f.checksum,
                    root: root.to_path_buf(),
                    recheck,
                });
                Ok(())
            }
            Target::Appwrite(a) => {
                a.register_storage(f, root);
                Ok(())
            }
        }
    }

    /// Whether `collection` is a file stage's bucket (GridFS, or Appwrite Storage).
    /// Whether the rows of `collection` must be written one batch at a time, in key order: an
    /// Appwrite table with a unique index refuses the rows that repeat a key written before
    /// them, so which rows it keeps (and, with several unique indexes, how many) depends on the
    /// order they arrive in — key order is the one `check` and a dry run predict.
    pub fn writes_in_key_order(&self, collection: &str) -> bool {
        match self {
            // Only once the collection has the unique indexes (a re-run): a first load builds
            // them after it.
            Target::Mongo(m) => !m.uniques(collection).is_empty(),
            Target::Appwrite(a) => matches!(
                a.layout(collection),
                Some(Layout::Table(spec, _)) if spec.indexes.iter().any(|i| i.kind == "unique")
            ),
        }
    }

    /// The keys each of `docs` holds in the unique indexes of `collection` as the server
    /// compares them, each as one text, where cutover can tell them beforehand (an Appwrite
    /// table's; the mapping's unique indexes a MongoDB collection has already — a re-run's).
    pub fn unique_keys<'d>(
        &self,
        collection: &str,
        docs: impl IntoIterator<Item = &'d RawDocumentBuf>,
    ) -> Vec<Vec<String>> {
        let none = |docs: Vec<&RawDocumentBuf>| vec![Vec::new(); docs.len()];
        let docs: Vec<&RawDocumentBuf> = docs.into_iter().collect();
        let a = match self {
            Target::Appwrite(a) => a,
            Target::Mongo(m) => {
                let uniques = m.uniques(collection);
                if uniques.is_empty() {
                    return none(docs);
                }
                return docs
                    .into_iter()
                    .map(|doc| match doc.to_document() {
                        Ok(d) => super::mongodb::MongoTarget::unique_keys(&uniques, &d),
                        Err(_) => Vec::new(),
                    })
                    .collect();
            }
        };
        let Some(Layout::Table(spec, _)) = a.layout(collection) else {
            return none(docs);
        };
        let uniques = super::appwrite::unique::AppwriteUnique::of(&spec);
        if uniques.is_empty() {
            return none(docs);
        }
        docs.into_iter()
            .map(|doc| match doc.to_document() {
                Ok(d) => {
                    let row = schema::to_row(&d, &spec);
                    uniques.iter().filter_map(|u| u.key_text(&row)).collect()
                }
                Err(_) => Vec::new(),
            })
            .collect()
    }

    /// Whether the server refused a document of `collection` because a unique index other than
    /// the id holds its key in another document — which, on a re-run, may be another row's
    /// older version that this run replaces later (two rows swapping codes): such a document is
    /// worth another try once the stage has written the others. MongoDB: E11000 on an index
    /// other than `_id_`; Appwrite: a table's unique index (not users, whose 409s are their
    /// email or phone, nor Storage).
    pub fn key_held_elsewhere(&self, collection: &str, e: &DocError) -> bool {
        if e.transient {
            return false;
        }
        match self {
            Target::Mongo(m) => {
                m.bucket(collection).is_none()
                    && e.code == 11000
                    && !e.message.contains("index: _id_ ")
            }
            Target::Appwrite(a) => {
                matches!(a.layout(collection), Some(Layout::Table(..)))
                    && e.code_name == RULE_UNIQUE_INDEX
            }
        }
    }

    pub fn is_bucket(&self, collection: &str) -> bool {
        match self {
            Target::Mongo(m) => m.bucket(collection).is_some(),
            Target::Appwrite(a) => a.storage(collection).is_some(),
        }
    }

    /// Why the run will refuse the file a row of `collection` (a file stage's bucket) names, as
    /// (rule, message): what a dry run rejects as the real run would (Appwrite: the bucket's
    /// limits too, read from the server).
    pub async fn file_refusal(
        &self,
        collection: &str,
        file: &super::gridfs::FileRef,
    ) -> Result<Option<(&'static str, String)>, SinkError> {
        match self {
            Target::Mongo(m) => {
                let Some(spec) = m.bucket(collection) else {
                    return Ok(None);
                };
                Ok(super::gridfs::inspect(&spec.root, file, spec.algorithm)
                    .await
                    .err())
            }
            Target::Appwrite(a) => Ok(a.file_refusal(collection, file).await?),
        }
    }

    /// Writes the files of a file stage's batch (`files[i]` belongs to `docs[i]`).
    pub async fn write_files(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        files: &[super::gridfs::FileRef],
    ) -> Result<BatchResult, SinkError> {
        match self {
            Target::Mongo(m) => {
                let Some(spec) = m.bucket(collection) else {
                    return Err(MongoError::Reply(format!(
                        "`{collection}` is not a bucket of this run"
                    ))
                    .into());
                };
                Ok(super::gridfs::write_files(m.database(), &spec, docs, files).await?)
            }
            Target::Appwrite(a) => {
                let Some(spec) = a.storage(collection) else {
                    return Err(AppwriteError::client(
                        ClientKind::Setup,
                        format!("`{collection}` is not a bucket of this run"),
                    )
                    .into());
                };
                a.write_files(collection, &spec, docs, files).await
            }
        }
    }

    pub async fn is_empty(&self, collection: &str) -> Result<bool, SinkError> {
        match self {
            Target::Mongo(m) if let Some(spec) = m.bucket(collection) => {
                let documents_empty = match &spec.documents {
                    Some(c) => m.is_empty(c).await?,
                    None => true,
                };
                Ok(m.is_empty(&super::gridfs::files_collection(collection))
                    .await?
                    && m.is_empty(&super::gridfs::chunks_collection(collection))
                        .await?
                    && documents_empty)
            }
            Target::Mongo(m) => Ok(m.is_empty(collection).await?),
            Target::Appwrite(a) => match a.storage(collection) {
                Some(spec) => Ok(a.is_empty(collection).await?
                    && super::appwrite::storage::file_ids(&a.client, &spec.bucket)
                        .await?
                        .is_empty()),
                None => Ok(a.is_empty(collection).await?),
            },
        }
    }

    /// Writes a batch. Appwrite upserts always (rows by id, users by id).
    pub async fn write(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        mode: WriteMode,
    ) -> Result<BatchResult, SinkError> {
        match self {
            Target::Mongo(m) => Ok(m.write(collection, docs, mode).await?),
            Target::Appwrite(a) => Ok(a.write(collection, docs, mode).await?),
        }
    }

    /// Those of `ids` that `remove_documents` would remove now: documents (rows) there, users
    /// there and not blocked.
    pub async fn present(&self, collection: &str, ids: &[Bson]) -> Result<Vec<Bson>, SinkError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Target::Mongo(m) if m.bucket(collection).is_some() => Ok(m
                .present_ids(&super::gridfs::files_collection(collection), ids)
                .await?),
            Target::Mongo(m) => Ok(m.present_ids(collection, ids).await?),
            Target::Appwrite(a) => {
                let rows: Vec<String> = ids.iter().map(super::appwrite::rows::row_id).collect();
                let there = a.present_records(collection, &rows).await?;
                Ok(ids
                    .iter()
                    .zip(&rows)
                    .filter(|(_, r)| there.contains(*r))
                    .map(|(id, _)| id.clone())
                    .collect())
            }
        }
    }

    /// Those of `ids` a reference can point at: documents (rows) there, users there and not
    /// blocked by cutover (see [`AppwriteTarget::referable_records`]).
    pub async fn referable(&self, collection: &str, ids: &[Bson]) -> Result<Vec<Bson>, SinkError> {
        match self {
            Target::Appwrite(a) if !ids.is_empty() => {
                let rows: Vec<String> = ids.iter().map(super::appwrite::rows::row_id).collect();
                let there = a.referable_records(collection, &rows).await?;
                Ok(ids
                    .iter()
                    .zip(&rows)
                    .filter(|(_, r)| there.contains(*r))
                    .map(|(id, _)| id.clone())
                    .collect())
            }
            _ => self.present(collection, ids).await,
        }
    }

    /// Removes the documents `ids` of `collection` (with their child-table rows); Appwrite users
    /// are blocked instead. Returns how many were there.
    pub async fn remove_documents(&self, collection: &str, ids: &[Bson]) -> Result<u64, SinkError> {
        if ids.is_empty() {
            return Ok(0);
        }
        match self {
            Target::Mongo(m) if let Some(spec) = m.bucket(collection) => {
                Ok(super::gridfs::delete_files_of(m.database(), &spec, ids).await?)
            }
            Target::Mongo(m) => Ok(m.delete_ids(collection, ids.to_vec()).await?),
            // A user whose row is rejected now (e.g. disabled in the source) must not stay able
            // to sign in as before; blocked, not deleted: an account cannot be put back.
            Target::Appwrite(a) if a.is_users(collection) => {
                let mut n = 0;
                for id in ids {
                    let id = super::appwrite::rows::row_id(id);
                    // Counted once: a retried batch finds the user blocked already.
                    let user = match a
                        .client
                        .call(reqwest::Method::GET, &format!("/users/{id}"), None)
                        .await
                    {
                        Ok(user) => user,
                        Err(e) if e.is_missing() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    if user["status"] == false {
                        continue;
                    }
                    // Marked, so that the run that writes the user again (its row fixed)
                    // unblocks it — and only what cutover blocked (see `import_user`).
                    let mut prefs = user["prefs"].clone();
                    if !prefs.is_object() {
                        prefs = serde_json::json!({});
                    }
                    prefs[super::appwrite::users::BLOCKED_MARK] = serde_json::Value::Bool(true);
                    a.client
                        .call(
                            reqwest::Method::PATCH,
                            &format!("/users/{id}/prefs"),
                            Some(&serde_json::json!({ "prefs": prefs })),
                        )
                        .await?;
                    a.client
                        .call(
                            reqwest::Method::PATCH,
                            &format!("/users/{id}/status"),
                            Some(&serde_json::json!({ "status": false })),
                        )
                        .await?;
                    n += 1;
                }
                Ok(n)
            }
            Target::Appwrite(a) => {
                let rows: Vec<String> = ids.iter().map(super::appwrite::rows::row_id).collect();
                Ok(a.delete_rows_and_files(collection, &rows).await?)
            }
        }
    }

    /// What the ledger records as a stage's destination: the collection, the table with its
    /// child tables, or Appwrite's users.
    pub fn destination(&self, collection: &str) -> Destination {
        match self {
            Target::Appwrite(a) if a.is_users(collection) => Destination::Users,
            Target::Appwrite(a) if a.storage(collection).is_some() => Destination::Storage {
                bucket: a.storage(collection).map(|s| s.bucket).unwrap_or_default(),
                tables: a.tables_of(collection),
            },
            Target::Appwrite(a) => Destination::Tables {
                names: a.tables_of(collection),
            },
            Target::Mongo(m) if let Some(spec) = m.bucket(collection) => Destination::Bucket {
                name: collection.to_string(),
                documents: spec.documents,
            },
            Target::Mongo(_) => Destination::Collection {
                name: collection.to_string(),
            },
        }
    }

    /// Requests, retries and throttled waits so far (Appwrite only).
    pub fn client_counters(&self) -> Option<(u64, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            Target::Mongo(_) => None,
            Target::Appwrite(a) => {
                let c = &a.client.counters;
                Some((
                    c.requests.load(Relaxed),
                    c.retries.load(Relaxed),
                    c.throttled.load(Relaxed),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unrepresentable_doc(doc: &Document) -> Option<String> {
        unrepresentable(doc, None, &[])
    }

    #[test]
    fn values_appwrite_cannot_hold_are_named() {
        assert!(unrepresentable_doc(&bson::doc! { "a": 1.5, "b": [1.0, 2.0] }).is_none());
        let nan = unrepresentable_doc(&bson::doc! { "score": f64::NAN }).unwrap();
        assert!(nan.starts_with("score "), "{nan}");
        assert!(unrepresentable_doc(&bson::doc! { "xs": [1.0, f64::INFINITY] }).is_some());
        let far = bson::DateTime::from_millis(300_000_000_000_000); // year ~11476
        assert!(unrepresentable_doc(&bson::doc! { "at": far }).is_some());
        // Nested values are JSON text (extended JSON keeps them exactly).
        assert!(unrepresentable_doc(&bson::doc! { "n": { "x": f64::NAN } }).is_none());
        let null = unrepresentable_doc(&bson::doc! { "xs": [1, Bson::Null] }).unwrap();
        assert!(null.contains("holding NULL"), "{null}");
        let deep = unrepresentable_doc(&bson::doc! { "m": [[1, 2], [3, 4]] }).unwrap();
        assert!(deep.contains("multi-dimensional"), "{deep}");
        assert!(unrepresentable_doc(&bson::doc! { "lines": [{ "a": 1 }, { "a": 2 }] }).is_none());
    }

    #[test]
    fn a_date_in_a_message_is_iso_8601_whatever_its_year() {
        // adv24 F5: the driver's debug form showed.
        let d = |ms: i64| value_text(&Bson::DateTime(bson::DateTime::from_millis(ms)));
        assert_eq!(d(0), "1970-01-01T00:00:00Z");
        assert_eq!(d(253_402_302_599_999), "+10000-01-01T00:29:59.999Z");
        assert_eq!(d(-63_517_824_000_000), "-0043-03-15T00:00:00Z");
    }

    /// Issue #11: a JSON object keyed `$numberDecimal` (a `jsonb` value) would be read back from
    /// Appwrite's JSON text as a decimal: rejected; other `$` keys are plain objects there.
    #[test]
    fn json_objects_that_extended_json_reads_as_another_type_are_named() {
        let table = TableSpec {
            id: "t".into(),
            columns: vec![schema::ColumnSpec {
                key: "j".into(),
                kind: schema::Kind::Json,
                array: false,
                reference: false,
                json_refs: Vec::new(),
                constraints: schema::Constraints::default(),
                size: None,
            }],
            indexes: Vec::new(),
            access: Default::default(),
        };
        let named = |j: Bson| unrepresentable(&bson::doc! { "j": j }, Some(&table), &[]);
        let m = named(Bson::Document(bson::doc! { "$numberDecimal": "1" })).unwrap();
        assert!(m.starts_with("j holds an object keyed like"), "{m}");
        assert!(
            named(Bson::Array(vec![Bson::Document(
                bson::doc! { "x": { "$date": "2024-01-01T00:00:00Z" } }
            )]))
            .is_some()
        );
        assert!(named(Bson::Document(bson::doc! { "$x": 1, "a.b": { "$y": [1] } })).is_none());
        for legacy in [
            bson::doc! { "$regex": "a", "$options": "i" },
            bson::doc! { "$regex": "^x" },
        ] {
            let m = named(Bson::Document(bson::doc! { "v": legacy.clone() }));
            assert!(m.is_some(), "{legacy}");
        }
        // A `$regex` that is no pattern text is an object to every reader.
        assert!(named(Bson::Document(bson::doc! { "$regex": 1 })).is_none());
        assert!(
            named(Bson::Document(
                bson::doc! { "n": f64::NAN, "big": 1i64 << 40 }
            ))
            .is_none()
        );
    }

    #[test]
    fn destinations_read_as_the_ledger_named_them_before() {
        let tables = Destination::from_legacy("visits+visits__lines", TargetKind::Appwrite);
        assert_eq!(
            tables,
            Destination::Tables {
                names: vec!["visits".into(), "visits__lines".into()]
            }
        );
        assert_eq!(tables.to_string(), "visits+visits__lines");
        let users = Destination::from_legacy(USERS, TargetKind::Appwrite);
        assert_eq!(users, Destination::Users);
        assert_eq!(users.to_string(), "@users");
        // A MongoDB collection's name is the whole text, whatever it holds.
        let odd = Destination::from_legacy("a+b", TargetKind::Mongodb);
        assert_eq!(odd, Destination::Collection { name: "a+b".into() });
        assert_eq!(format!("{odd:<5}|"), "a+b  |");
    }

    #[test]
    fn labels_keep_letters_and_digits() {
        assert_eq!(label_of("data_clerk"), "dataclerk");
        assert_eq!(label_of(&"x".repeat(40)).len(), 36);
    }
}
