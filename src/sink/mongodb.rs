//! The MongoDB writer: unordered bulk `insert` into empty collections (the fast path) and unordered
//! replace-with-upsert by `_id` otherwise (idempotent re-runs and resumes). Documents arrive as raw
//! BSON; one bad document rejects only itself.

use bson::{Bson, Document, RawArrayBuf, RawBson, RawDocumentBuf, doc};
use mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR};
use mongodb::{Client, Database};

use super::retry::Retryable;

/// MongoDB refuses documents over 16 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("cannot connect to MongoDB {uri}: {}", error_text(cause))]
    Connect {
        uri: String,
        cause: mongodb::error::Error,
    },
    #[error("MongoDB {op} failed: {}", error_text(cause))]
    Command {
        op: String,
        cause: mongodb::error::Error,
    },
    #[error("MongoDB write concern not satisfied: {0}")]
    WriteConcern(String),
    #[error("unexpected MongoDB reply: {0}")]
    Reply(String),
    /// The destination exists in a form that cannot hold the documents (see `MongoTarget::unfit`).
    #[error("{0}")]
    Unfit(String),
}

/// A driver error as one readable line: the server's code name and message, or the driver's
/// own message; never the driver's `Display`, which appends labels and the raw server reply as
/// BSON hex. Credentials are redacted.
pub fn error_text(err: &mongodb::error::Error) -> String {
    use mongodb::error::WriteFailure;
    let write = |code: i32, name: Option<&str>, message: &str| match name {
        Some(n) if !n.is_empty() => format!("{message} ({n}, code {code})"),
        _ => format!("{message} (code {code})"),
    };
    let text = match err.kind.as_ref() {
        ErrorKind::Command(c) => write(c.code, Some(&c.code_name), &c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            write(w.code, w.code_name.as_deref(), &w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => format!(
            "write concern not satisfied: {}",
            write(w.code, Some(&w.code_name), &w.message)
        ),
        ErrorKind::InsertMany(e) => {
            let n = e.write_errors.as_ref().map(Vec::len).unwrap_or(0);
            match (
                e.write_errors.as_ref().and_then(|w| w.first()),
                &e.write_concern_error,
            ) {
                (Some(w), _) => format!(
                    "{n} documents refused, the first: {}",
                    write(w.code, w.code_name.as_deref(), &w.message)
                ),
                (None, Some(w)) => format!(
                    "write concern not satisfied: {}",
                    write(w.code, Some(&w.code_name), &w.message)
                ),
                (None, None) => "insert failed".to_string(),
            }
        }
        ErrorKind::BulkWrite(e) => {
            match e
                .write_errors
                .iter()
                .min_by_key(|(i, _)| **i)
                .map(|(_, w)| w)
            {
                Some(w) => format!(
                    "{} documents refused, the first: {}",
                    e.write_errors.len(),
                    write(w.code, w.code_name.as_deref(), &w.message)
                ),
                None => match e.write_concern_errors.first() {
                    Some(w) => format!(
                        "write concern not satisfied: {}",
                        write(w.code, Some(&w.code_name), &w.message)
                    ),
                    None => "bulk write failed".to_string(),
                },
            }
        }
        ErrorKind::Io(e) => format!("I/O error: {e}"),
        // The other kinds carry a plain message in their own `Display`.
        kind => kind.to_string(),
    };
    crate::redact::redact_text(&text)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn driver_errors_print_without_labels_or_raw_replies() {
        let e = mongodb::error::Error::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        let text = error_text(&e);
        assert_eq!(text, "I/O error: connection reset by peer");
        let err = MongoError::Command {
            op: "insert".into(),
            cause: e,
        };
        let shown = err.to_string();
        assert!(
            !shown.contains("labels") && !shown.contains("server response"),
            "{shown}"
        );
    }
}

/// Server error codes worth another try (not primary, shutting down, network, time limits).
const RETRYABLE_CODES: &[i32] = &[
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 50, 64, 112, 117, 133, 134,
];

/// Whether a driver error is worth another try (network, not primary, time limits…).
pub fn is_transient(err: &mongodb::error::Error) -> bool {
    if err.contains_label(RETRYABLE_WRITE_ERROR) || err.contains_label("TransientTransactionError")
    {
        return true;
    }
    match err.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(c) => RETRYABLE_CODES.contains(&c.code),
        _ => false,
    }
}

/// A destination collection as it exists (see [`MongoTarget::destination`]).
#[derive(Debug, Clone, Default)]
pub struct DestinationShape {
    /// Why it cannot hold the documents as they are: a view (it takes no write), a capped
    /// collection (it drops documents), a non-binary collation (`_id`s differing by case or
    /// accents are one key there). `None` when it does not exist or can hold them.
    pub unfit: Option<String>,
    /// It has a validator (documents it refuses are rejected row by row, stage write).
    pub validator: bool,
}

impl Retryable for MongoError {
    fn is_retryable(&self) -> bool {
        match self {
            MongoError::Connect { .. } => true,
            MongoError::WriteConcern(_) => true,
            MongoError::Reply(_) | MongoError::Unfit(_) => false,
            MongoError::Command { cause, .. } => is_transient(cause),
        }
    }
}

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Plain inserts (the collection was empty when the stage began).
    Insert,
    /// Replace-with-upsert by `_id`.
    Upsert,
}

/// One document the server refused.
#[derive(Debug, Clone)]
pub struct DocError {
    pub index: usize,
    pub code: i32,
    pub code_name: String,
    pub message: String,
    /// The server may take the document on another try (not primary, shutting down, a write
    /// conflict…): it is written again, not rejected.
    pub transient: bool,
}

#[derive(Debug, Default)]
pub struct BatchResult {
    pub written: u64,
    pub errors: Vec<DocError>,
    /// A file stage: the bytes of the files uploaded, and the files found complete already
    /// (written, not uploaded again).
    pub files: FileCounts,
}

/// What a file stage's batch moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileCounts {
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    pub unchanged: u64,
}

/// Every client this process opened, so that [`shutdown_all`] can close them cleanly before the
/// runtime stops (a client dropped during runtime shutdown would try to end its sessions on a
/// closed pool).
static CLIENTS: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(Vec::new());

/// Ends the sessions and closes the connections of every client opened by this process.
pub async fn shutdown_all() {
    let clients: Vec<Client> =
        std::mem::take(&mut *CLIENTS.lock().unwrap_or_else(|p| p.into_inner()));
    for c in clients {
        c.shutdown().await;
    }
}

/// The `_id`s of a collection, as [`MongoTarget::ids`] reads them.
pub struct Ids {
    cursor: mongodb::Cursor<Document>,
    collection: String,
}

impl Ids {
    /// The next `_id` (documents without one are passed over).
    pub async fn next(&mut self) -> Result<Option<Bson>, MongoError> {
        use futures::TryStreamExt;
        loop {
            let found = self
                .cursor
                .try_next()
                .await
                .map_err(|cause| MongoError::Command {
                    op: format!("find on {}", self.collection),
                    cause,
                })?;
            match found {
                None => return Ok(None),
                Some(d) => {
                    if let Some(id) = d.get("_id") {
                        return Ok(Some(id.clone()));
                    }
                }
            }
        }
    }
}

#[derive(Clone)]
pub struct MongoTarget {
    client: Client,
    db: Database,
    /// The same database through a client of its own: checkpoints, heartbeats and lock checks
    /// never wait for a connection held by the batches in flight, however many there are.
    ledger_db: Database,
    /// Where the URI points (`host:port,…`), without credentials or options.
    hosts: String,
    /// The GridFS buckets of this run's file stages, by name (see [`MongoTarget::register_bucket`]).
    buckets: std::sync::Arc<
        std::sync::RwLock<std::collections::HashMap<String, super::gridfs::BucketSpec>>,
    >,
}

/// Connections of the ledger's own client (checkpoint, heartbeat, a lock check at once).
const LEDGER_POOL: u32 = 4;

async fn open_client(uri: &str, pool: Option<u32>) -> Result<Client, MongoError> {
    let connect_err = |cause| MongoError::Connect {
        uri: crate::redact::redact_url(uri),
        cause,
    };
    let mut options = mongodb::options::ClientOptions::parse(uri)
        .await
        .map_err(connect_err)?;
    if let Some(n) = pool {
        options.max_pool_size = Some(n);
    }
    let client = Client::with_options(options).map_err(connect_err)?;
    CLIENTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(client.clone());
    Ok(client)
}

impl MongoTarget {
    pub async fn connect(uri: &str, database: &str) -> Result<MongoTarget, MongoError> {
        let client = open_client(uri, None).await?;
        let db = client.database(database);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|cause| MongoError::Connect {
                uri: crate::redact::redact_url(uri),
                cause,
            })?;
        let ledger_db = open_client(uri, Some(LEDGER_POOL))
            .await?
            .database(database);
        let hosts = crate::redact::endpoint_of(uri);
        let hosts = hosts.split('/').next().unwrap_or_default().to_string();
        Ok(MongoTarget {
            client,
            db,
            ledger_db,
            hosts,
            buckets: Default::default(),
        })
    }

    /// Notes that `spec.name` is a GridFS bucket a file stage writes: the collection names of
    /// the stage (emptiness, removals, the ledger's destination) then mean the bucket.
    pub fn register_bucket(&self, spec: super::gridfs::BucketSpec) {
        self.buckets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.name.clone(), spec);
    }

    /// The registered bucket named `name`.
    pub fn bucket(&self, name: &str) -> Option<super::gridfs::BucketSpec> {
        self.buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The servers the target's URI names (`host:port,…`), without credentials or options.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Removes the validator of `collection` before a load whose mapping sets one: a validator an
    /// earlier mapping set (stricter rules since relaxed) must not refuse this run's documents;
    /// the mapping's own is set again after the load. A missing collection has none.
    pub async fn clear_validator(&self, collection: &str) -> Result<(), MongoError> {
        match self
            .db
            .run_command(doc! {
                "collMod": collection,
                "validator": {},
                "validationLevel": "off",
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 26) => {
                Ok(())
            }
            Err(cause) => Err(MongoError::Command {
                op: format!("collMod (clear the validator) on {collection}"),
                cause,
            }),
        }
    }

    /// Builds a mapping's indexes on `collection` (after its load: cheaper than keeping them
    /// up during it) and sets its validator. Idempotent: an index that exists with the same keys
    /// and options is left as it is. Returns each index's name and build time in milliseconds.
    pub async fn finish_collection(
        &self,
        collection: &str,
        indexes: &[crate::mapping::spec::IndexSpec],
        validator: Option<&(crate::mapping::spec::ValidatorLevel, Document)>,
    ) -> Result<Vec<(String, u64)>, MongoError> {
        use mongodb::IndexModel;
        use mongodb::options::{Collation, IndexOptions};
        let coll = self.db.collection::<Document>(collection);
        let mut built = Vec::new();
        for ix in indexes {
            let mut keys = Document::new();
            for (path, dir) in ix.key_pairs() {
                match ix.kind {
                    Some(kind) => keys.insert(path, kind.as_str()),
                    None => keys.insert(path, dir),
                };
            }
            let mut opts = IndexOptions::default();
            opts.name = ix.name.clone();
            opts.unique = ix.unique.then_some(true);
            opts.expire_after = ix.ttl_seconds.map(std::time::Duration::from_secs);
            opts.partial_filter_expression = ix.partial.as_ref().map(|t| {
                match crate::mapping::plan::toml_to_bson(&toml::Value::Table(t.clone())) {
                    bson::Bson::Document(d) => d,
                    _ => Document::new(),
                }
            });
            opts.collation = ix
                .collation
                .as_ref()
                .map(|locale| Collation::builder().locale(locale.clone()).build());
            let model = IndexModel::builder().keys(keys).options(opts).build();
            let started = std::time::Instant::now();
            let created = coll
                .create_index(model)
                .await
                .map_err(|cause| MongoError::Command {
                    op: format!("createIndexes on {collection}"),
                    cause,
                })?;
            built.push((created.index_name, started.elapsed().as_millis() as u64));
        }
        if let Some((level, schema)) = validator {
            let level = match level {
                crate::mapping::spec::ValidatorLevel::Moderate => "moderate",
                _ => "strict",
            };
            let set = self
                .db
                .run_command(doc! {
                    "collMod": collection,
                    "validator": { "$jsonSchema": schema.clone() },
                    "validationLevel": level,
                    "validationAction": "error",
                })
                .await;
            // No collection yet (nothing written: an empty source, every row rejected): it is
            // created with its validator, so that what the application writes later is checked.
            let not_found = matches!(&set, Err(e) if matches!(
                *e.kind,
                mongodb::error::ErrorKind::Command(ref c) if c.code == 26
            ));
            let set = if not_found {
                self.db
                    .run_command(doc! {
                        "create": collection,
                        "validator": { "$jsonSchema": schema.clone() },
                        "validationLevel": level,
                        "validationAction": "error",
                    })
                    .await
            } else {
                set
            };
            set.map_err(|cause| MongoError::Command {
                op: format!("collMod (validator) on {collection}"),
                cause,
            })?;
        }
        Ok(built)
    }

    /// The database through the ledger's own connections.
    pub fn ledger_database(&self) -> &Database {
        &self.ledger_db
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What `collection`, as it exists, means for the run's documents (one `listCollections`).
    pub async fn destination(&self, collection: &str) -> Result<DestinationShape, MongoError> {
        use futures::TryStreamExt;
        let err = |cause| MongoError::Command {
            op: format!("listCollections {collection}"),
            cause,
        };
        let mut specs = self
            .db
            .list_collections()
            .filter(doc! { "name": collection })
            .await
            .map_err(err)?;
        let Some(spec) = specs.try_next().await.map_err(err)? else {
            return Ok(DestinationShape::default());
        };
        let unfit = if matches!(spec.collection_type, mongodb::results::CollectionType::View) {
            Some(format!(
                "`{collection}` is a view in the target: it takes no write (drop it or map the entity to another collection)"
            ))
        } else if spec.options.capped == Some(true) {
            Some(format!(
                "`{collection}` is a capped collection in the target: it drops its oldest documents to stay within its size, so written documents would silently go (drop it or map the entity to another collection)"
            ))
        } else {
            spec.options
                .collation
                .as_ref()
                .filter(|c| c.locale != "simple")
                .map(|c| format!(
                    "`{collection}` has the collation `{}` (strength {:?}): keys differing only by case or accents are one _id there, so distinct source rows would be refused as duplicates (recreate it without a collation, or map the entity to another collection)",
                    c.locale, c.strength
                ))
        };
        Ok(DestinationShape {
            unfit,
            validator: spec.options.validator.is_some(),
        })
    }

    /// Whether `collection` holds no document.
    pub async fn is_empty(&self, collection: &str) -> Result<bool, MongoError> {
        let found = self
            .db
            .collection::<Document>(collection)
            .find_one(doc! {})
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|cause| MongoError::Command {
                op: format!("find on {collection}"),
                cause,
            })?;
        Ok(found.is_none())
    }

    pub async fn count(&self, collection: &str) -> Result<u64, MongoError> {
        self.db
            .collection::<Document>(collection)
            .count_documents(doc! {})
            .await
            .map_err(|cause| MongoError::Command {
                op: format!("count on {collection}"),
                cause,
            })
    }

    /// The `_id` of every document of `collection`, in `_id` order when `sorted`.
    pub async fn ids(&self, collection: &str, sorted: bool) -> Result<Ids, MongoError> {
        let coll = self.db.collection::<Document>(collection);
        let find = coll.find(doc! {}).projection(doc! { "_id": 1 });
        let find = if sorted {
            find.sort(doc! { "_id": 1 })
        } else {
            find
        };
        let cursor = find.await.map_err(|cause| MongoError::Command {
            op: format!("find on {collection}"),
            cause,
        })?;
        Ok(Ids {
            cursor,
            collection: collection.to_string(),
        })
    }

    /// Deletes the documents `ids` of `collection`; returns how many there were.
    pub async fn delete_ids(&self, collection: &str, ids: Vec<Bson>) -> Result<u64, MongoError> {
        let r = self
            .db
            .collection::<Document>(collection)
            .delete_many(doc! { "_id": { "$in": ids } })
            .await
            .map_err(|cause| MongoError::Command {
                op: format!("delete from {collection}"),
                cause,
            })?;
        Ok(r.deleted_count)
    }

    /// Those of `ids` that `collection` holds a document of.
    pub async fn present_ids(
        &self,
        collection: &str,
        ids: &[Bson],
    ) -> Result<Vec<Bson>, MongoError> {
        let op = || format!("find ids in {collection}");
        let mut found = self
            .db
            .collection::<Document>(collection)
            .find(doc! { "_id": { "$in": ids.to_vec() } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|cause| MongoError::Command { op: op(), cause })?;
        let mut out = Vec::new();
        while found
            .advance()
            .await
            .map_err(|cause| MongoError::Command { op: op(), cause })?
        {
            if let Ok(Some(id)) = found.current().get("_id")
                && let Ok(id) = Bson::try_from(id.to_raw_bson())
            {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Writes `docs` (each with an `_id`) into `collection`, unordered.
    pub async fn write(
        &self,
        collection: &str,
        docs: &[RawDocumentBuf],
        mode: WriteMode,
    ) -> Result<BatchResult, MongoError> {
        let mut cmd = RawDocumentBuf::new();
        let mut arr = RawArrayBuf::new();
        match mode {
            WriteMode::Insert => {
                cmd.append("insert", collection);
                for d in docs {
                    arr.push(d.clone());
                }
                cmd.append("documents", arr);
            }
            WriteMode::Upsert => {
                cmd.append("update", collection);
                for d in docs {
                    let id = d
                        .get("_id")
                        .ok()
                        .flatten()
                        .ok_or_else(|| MongoError::Reply("document without _id".into()))?;
                    let mut q = RawDocumentBuf::new();
                    q.append("_id", id.to_raw_bson());
                    let mut u = RawDocumentBuf::new();
                    u.append("q", q);
                    u.append("u", d.clone());
                    u.append("upsert", true);
                    arr.push(u);
                }
                cmd.append("updates", arr);
            }
        }
        cmd.append("ordered", false);
        let op = match mode {
            WriteMode::Insert => "insert",
            WriteMode::Upsert => "update",
        };
        let reply = self
            .db
            .run_raw_command(cmd)
            .await
            .map_err(|cause| MongoError::Command {
                op: format!("{op} into {collection}"),
                cause,
            })?;
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(MongoError::WriteConcern(
                wce.get_str("errmsg").unwrap_or("unknown").to_string(),
            ));
        }
        let mut errors = Vec::new();
        if let Ok(list) = reply.get_array("writeErrors") {
            for e in list {
                let Some(e) = e.as_document() else { continue };
                let code = as_i64(e.get("code")).unwrap_or(0) as i32;
                errors.push(DocError {
                    index: as_i64(e.get("index")).unwrap_or(-1) as usize,
                    code,
                    code_name: e.get_str("codeName").unwrap_or("WriteError").to_string(),
                    message: e.get_str("errmsg").unwrap_or("").to_string(),
                    transient: RETRYABLE_CODES.contains(&code),
                });
            }
        }
        Ok(BatchResult {
            written: (docs.len() - errors.len().min(docs.len())) as u64,
            errors,
            ..Default::default()
        })
    }
}

fn as_i64(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) => Some(*d as i64),
        _ => None,
    }
}

/// The `_id` of a raw document, owned.
pub fn raw_id(d: &RawDocumentBuf) -> Option<RawBson> {
    d.get("_id").ok().flatten().map(|v| v.to_raw_bson())
}
