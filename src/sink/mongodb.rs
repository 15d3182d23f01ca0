//! The MongoDB writer: unordered bulk `insert` into empty collections (the fast path) and unordered
//! replace-with-upsert by `_id` otherwise (idempotent re-runs and resumes). Documents arrive as raw
//! BSON; one bad document rejects only itself.

use bson::{Bson, Document, RawBson, RawDocumentBuf, doc};
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
        Ok(self.next_record().await?.map(|(id, _)| id))
    }

    /// The next `_id` with the fields asked for (see [`MongoTarget::records`]).
    pub async fn next_record(&mut self) -> Result<Option<(Bson, Document)>, MongoError> {
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
                    if let Some(id) = d.get("_id").cloned() {
                        return Ok(Some((id, d)));
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
    /// The mappings' unique indexes each collection has already (a re-run), by collection (see
    /// [`MongoTarget::note_unique_indexes`]).
    uniques: std::sync::Arc<
        std::sync::RwLock<std::collections::HashMap<String, Vec<super::mongo_unique::MongoUnique>>>,
    >,
    /// The mappings' unique indexes each collection lacks, which the run builds after its
    /// load (a dry run rehearses that build: see [`MongoTarget::rehearsed_build_failure`]).
    to_build: std::sync::Arc<
        std::sync::RwLock<std::collections::HashMap<String, Vec<super::mongo_unique::MongoUnique>>>,
    >,
    /// A dry run's keys repeated in an index it would build, by collection: how many documents
    /// repeat one, and the first (index, the document, who held the key first, the key).
    build_repeats:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, BuildRepeats>>>,
    /// A dry run's keys taken so far, by collection: index name and key → who holds it.
    rehearsed: std::sync::Arc<
        std::sync::Mutex<
            std::collections::HashMap<
                String,
                std::collections::HashMap<String, super::mongo_unique::Holder>,
            >,
        >,
    >,
}

/// How many documents a dry run found repeating a key of an index the run builds after its load,
/// and the first: (index, the document, who held the key first, the key).
type BuildRepeats = (u64, (String, String, super::mongo_unique::Holder, String));

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
    // Named after this process (unless the URI names it: `appName`), so that the next holder of
    // the lock can find (and stop) the operations a process that died or lost the lock left
    // running on the server; the lock records the name.
    let name = options
        .app_name
        .get_or_insert_with(|| app_name(&host_name(), i64::from(std::process::id())))
        .clone();
    let _ = APP_NAME.set(name);
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
            uniques: Default::default(),
            to_build: Default::default(),
            build_repeats: Default::default(),
            rehearsed: Default::default(),
        })
    }

    /// The unique indexes of `indexes` (a mapping's) that `collection` has already — built at
    /// the end of an earlier run — and whose keys cutover can form (no partial filter beyond
    /// equalities, `$exists` and `$type`). Noted for the collection: a re-run writes it one batch
    /// at a time in key order, and a row taking a key a row set aside will hold waits too, so
    /// that the first row in key order keeps a key two rows now share (as `check` and a dry run
    /// say).
    pub async fn note_unique_indexes(
        &self,
        collection: &str,
        indexes: &[crate::mapping::spec::IndexSpec],
    ) -> Result<Vec<super::mongo_unique::MongoUnique>, MongoError> {
        let wanted = super::mongo_unique::MongoUnique::of(indexes);
        let (found, missing): (Vec<_>, Vec<_>) = if wanted.is_empty() {
            Default::default()
        } else {
            let there = self.unique_patterns(collection).await?;
            wanted
                .into_iter()
                .filter(|u| u.unchecked.is_none())
                .partition(|u| there.iter().any(|p| same_pattern(p, &u.pattern)))
        };
        {
            let mut later = self.to_build.write().unwrap_or_else(|p| p.into_inner());
            if missing.is_empty() {
                later.remove(collection);
            } else {
                later.insert(collection.to_string(), missing);
            }
        }
        let mut noted = self.uniques.write().unwrap_or_else(|p| p.into_inner());
        if found.is_empty() {
            noted.remove(collection);
        } else {
            noted.insert(collection.to_string(), found.clone());
        }
        Ok(found)
    }

    /// The key patterns of `collection`'s unique indexes (none when it does not exist).
    async fn unique_patterns(&self, collection: &str) -> Result<Vec<Document>, MongoError> {
        use futures::TryStreamExt;
        let err = |cause| MongoError::Command {
            op: format!("listIndexes on {collection}"),
            cause,
        };
        let listed = self
            .db
            .collection::<Document>(collection)
            .list_indexes()
            .await;
        let cursor = match listed {
            Ok(c) => c,
            // NamespaceNotFound: no collection, no index.
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 26) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(err(e)),
        };
        let models: Vec<mongodb::IndexModel> = cursor.try_collect().await.map_err(err)?;
        Ok(models
            .into_iter()
            .filter(|m| m.options.as_ref().and_then(|o| o.unique) == Some(true))
            .map(|m| m.keys)
            .collect())
    }

    /// The unique indexes noted for `collection` (see [`MongoTarget::note_unique_indexes`]).
    pub fn uniques(&self, collection: &str) -> Vec<super::mongo_unique::MongoUnique> {
        self.uniques
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
            .cloned()
            .unwrap_or_default()
    }

    /// The keys `doc` holds in the unique indexes noted for `collection`, each as one text
    /// naming its index.
    pub fn unique_keys(
        uniques: &[super::mongo_unique::MongoUnique],
        doc: &Document,
    ) -> Vec<String> {
        uniques
            .iter()
            .flat_map(|u| {
                u.keys(doc)
                    .into_iter()
                    .map(move |k| format!("{}\u{0}{k}", u.name))
            })
            .collect()
    }

    /// A dry run's rehearsal of `doc` (id `holder`) against the unique indexes `collection` has
    /// already: the index and the holder of the key it repeats — a row written in key order
    /// before it, or a document the run leaves as it is (see [`MongoTarget::hold_kept`]) —
    /// mongod would refuse it (`DuplicateKey`); else its keys are taken.
    pub fn rehearse_unique(
        &self,
        collection: &str,
        holder: &str,
        doc: &Document,
    ) -> Option<(String, super::mongo_unique::Holder, String)> {
        let uniques = self.uniques(collection);
        let later = self
            .to_build
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(collection)
            .cloned()
            .unwrap_or_default();
        if uniques.is_empty() && later.is_empty() {
            return None;
        }
        let mut all = self.rehearsed.lock().unwrap_or_else(|p| p.into_inner());
        let taken = all.entry(collection.to_string()).or_default();
        for u in &uniques {
            for k in u.keys(doc) {
                if let Some(first) = taken.get(&format!("{}\u{0}{k}", u.name)) {
                    return Some((u.name.clone(), first.clone(), k));
                }
            }
        }
        // An index built after the load takes every document; one repeating a key makes the
        // build fail at the end (adv35 F7: the dry run said `completed`).
        for u in &later {
            let repeat = u
                .keys(doc)
                .into_iter()
                .find_map(|k| Some((taken.get(&format!("{}\u{0}{k}", u.name))?.clone(), k)));
            if let Some((first, k)) = repeat {
                let mut repeats = self.build_repeats.lock().unwrap_or_else(|p| p.into_inner());
                let (n, _) = repeats
                    .entry(collection.to_string())
                    .or_insert_with(|| (0, (u.name.clone(), holder.to_string(), first, k)));
                *n += 1;
            }
        }
        for k in Self::unique_keys(&uniques, doc)
            .into_iter()
            .chain(Self::unique_keys(&later, doc))
        {
            taken
                .entry(k)
                .or_insert_with(|| super::mongo_unique::Holder::Row(holder.to_string()));
        }
        None
    }

    /// After a dry run rehearsed the rows of `collection`: why a unique index the run builds
    /// after its load would fail over the documents rehearsed, as `check` says it.
    pub fn rehearsed_build_failure(&self, collection: &str) -> Option<String> {
        let repeats = self.build_repeats.lock().unwrap_or_else(|p| p.into_inner());
        let (n, (index, holder, first, key)) = repeats.get(collection)?;
        Some(format!(
            "unique index `{index}` cannot be built over this data: {n} document(s) repeat a key another holds (e.g. document {holder} repeats {first}'s [{key}]); the run would write every document and then fail at the index build. Fix the rows, the transforms that make keys equal, or the index (a `partial` filter, not `unique`)"
        ))
    }

    /// Before a dry run rehearses the rows of `collection`: `doc` (the fields
    /// [`MongoTarget::unique_fields`] names) is a document there that the run leaves as it is,
    /// `said` as its holder; it keeps its keys whatever row comes.
    pub fn hold_kept(&self, collection: &str, said: &str, doc: &Document) {
        let uniques = self.uniques(collection);
        if uniques.is_empty() {
            return;
        }
        let mut all = self.rehearsed.lock().unwrap_or_else(|p| p.into_inner());
        let taken = all.entry(collection.to_string()).or_default();
        for k in Self::unique_keys(&uniques, doc) {
            taken
                .entry(k)
                .or_insert_with(|| super::mongo_unique::Holder::Kept(said.to_string()));
        }
    }

    /// The top-level fields the unique indexes noted for `collection` form their keys from.
    pub fn unique_fields(&self, collection: &str) -> Vec<String> {
        let mut fields: Vec<String> = self
            .uniques(collection)
            .iter()
            .flat_map(|u| u.fields())
            .collect();
        fields.sort();
        fields.dedup();
        fields
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
        self.records(collection, sorted, &[]).await
    }

    /// As [`MongoTarget::ids`], each with the top-level `fields` its document has
    /// ([`Ids::next_record`]).
    pub async fn records(
        &self,
        collection: &str,
        sorted: bool,
        fields: &[String],
    ) -> Result<Ids, MongoError> {
        let coll = self.db.collection::<Document>(collection);
        let mut projection = doc! { "_id": 1 };
        for f in fields.iter().filter(|f| f.as_str() != "_id") {
            projection.insert(f.clone(), 1);
        }
        let find = coll.find(doc! {}).projection(projection);
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
        let cmd = write_command(collection, docs, mode)?;
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
                    // The server's reply names no code for write errors: the usual ones
                    // are named as the server's own code list does.
                    code_name: e
                        .get_str("codeName")
                        .unwrap_or(match code {
                            11000 => super::target::RULE_DUPLICATE_KEY,
                            121 => "DocumentValidationFailure",
                            _ => "WriteError",
                        })
                        .to_string(),
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

/// The unordered `insert` (or replace-with-upsert `update`) command of `docs`, written front to
/// back into one buffer sized up front: each document is copied once, from the batch into the
/// bytes handed to the driver (no clone, no intermediate array, no growing buffer). The bytes are
/// those the `bson` builders give for `{insert, documents: [...], ordered: false}` and
/// `{update, updates: [{q: {_id}, u, upsert: true}, ...], ordered: false}`, so the server's limits
/// (16 MiB a command, 48 MB a message) apply to them as before. Called once per attempt: the
/// batch stays with the caller, which can send it again.
fn write_command(
    collection: &str,
    docs: &[RawDocumentBuf],
    mode: WriteMode,
) -> Result<RawDocumentBuf, MongoError> {
    // Upserts: each statement's filter `{_id: …}`, built first so that the buffer's size is known.
    let filters = match mode {
        WriteMode::Insert => Vec::new(),
        WriteMode::Upsert => docs
            .iter()
            .map(|d| {
                let id = d
                    .get("_id")
                    .ok()
                    .flatten()
                    .ok_or_else(|| MongoError::Reply("document without _id".into()))?;
                let mut q = RawDocumentBuf::new();
                q.append_ref("_id", id);
                Ok(q)
            })
            .collect::<Result<Vec<_>, MongoError>>()?,
    };
    let (verb, list) = match mode {
        WriteMode::Insert => ("insert", "documents"),
        WriteMode::Upsert => ("update", "updates"),
    };
    // One array element: type, index as a C string, value.
    let item = |i: usize, value: usize| 1 + decimal_len(i) + 1 + value;
    let statement = |q: &RawDocumentBuf, d: &RawDocumentBuf| {
        4 + (1 + 2 + q.as_bytes().len()) + (1 + 2 + d.as_bytes().len()) + (1 + 7 + 1) + 1
    };
    let items: usize = match mode {
        WriteMode::Insert => docs
            .iter()
            .enumerate()
            .map(|(i, d)| item(i, d.as_bytes().len()))
            .sum(),
        WriteMode::Upsert => docs
            .iter()
            .zip(&filters)
            .enumerate()
            .map(|(i, (d, q))| item(i, statement(q, d)))
            .sum(),
    };
    let size = 4
        + (1 + verb.len() + 1 + 4 + collection.len() + 1)
        + (1 + list.len() + 1 + 4 + items + 1)
        + (1 + "ordered".len() + 1 + 1)
        + 1;
    if i32::try_from(size).is_err() {
        return Err(MongoError::Reply(format!(
            "a write command of {size} bytes is over BSON's limit"
        )));
    }
    let mut w = BsonWriter::with_capacity(size);
    let top = w.open();
    w.string(verb, collection);
    w.key(BSON_ARRAY, list);
    let array = w.open();
    for (i, d) in docs.iter().enumerate() {
        w.index(BSON_DOCUMENT, i);
        match mode {
            WriteMode::Insert => w.raw(d.as_bytes()),
            WriteMode::Upsert => {
                let s = w.open();
                w.document("q", &filters[i]);
                w.document("u", d);
                w.boolean("upsert", true);
                w.close(s);
            }
        }
    }
    w.close(array);
    w.boolean("ordered", false);
    w.close(top);
    debug_assert_eq!(w.bytes.len(), size);
    RawDocumentBuf::from_bytes(w.bytes)
        .map_err(|e| MongoError::Reply(format!("the write command is not BSON: {e}")))
}

const BSON_STRING: u8 = 0x02;
const BSON_DOCUMENT: u8 = 0x03;
const BSON_ARRAY: u8 = 0x04;
const BSON_BOOLEAN: u8 = 0x08;

/// Digits of `i` in decimal.
fn decimal_len(mut i: usize) -> usize {
    let mut n = 1;
    while i >= 10 {
        i /= 10;
        n += 1;
    }
    n
}

/// A BSON document written front to back into a buffer of known size (see [`write_command`]);
/// the keys are the command's own (no NUL inside), the lengths fit an `i32` (checked there).
struct BsonWriter {
    bytes: Vec<u8>,
}

impl BsonWriter {
    fn with_capacity(size: usize) -> Self {
        BsonWriter {
            bytes: Vec::with_capacity(size),
        }
    }

    /// Starts a document (the command, or an element's value); [`BsonWriter::close`] writes its
    /// length once its elements are written.
    fn open(&mut self) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        at
    }

    fn close(&mut self, at: usize) {
        self.bytes.push(0);
        let len = (self.bytes.len() - at) as i32;
        self.bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn key(&mut self, kind: u8, key: &str) {
        self.bytes.push(kind);
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(0);
    }

    /// An array element's key: its index.
    fn index(&mut self, kind: u8, i: usize) {
        self.bytes.push(kind);
        let start = self.bytes.len();
        let mut rest = i;
        loop {
            self.bytes.push(b'0' + (rest % 10) as u8);
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.bytes[start..].reverse();
        self.bytes.push(0);
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(BSON_STRING, key);
        self.bytes
            .extend_from_slice(&((value.len() + 1) as i32).to_le_bytes());
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.push(0);
    }

    fn document(&mut self, key: &str, doc: &RawDocumentBuf) {
        self.key(BSON_DOCUMENT, key);
        self.bytes.extend_from_slice(doc.as_bytes());
    }

    fn boolean(&mut self, key: &str, value: bool) {
        self.key(BSON_BOOLEAN, key);
        self.bytes.push(u8::from(value));
    }
}

#[cfg(test)]
mod command_tests {
    use super::*;
    use bson::{RawArrayBuf, rawdoc};

    /// The command as the `bson` builders make it (what the writer sent before it wrote the
    /// bytes itself): the reference the one-copy command must equal byte for byte.
    fn built_by_bson(collection: &str, docs: &[RawDocumentBuf], mode: WriteMode) -> RawDocumentBuf {
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
                    let id = d.get("_id").unwrap().unwrap();
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
        cmd
    }

    /// Documents with every kind of `_id` a mapping writes (text, integers, a uuid, a compound
    /// key) and nested content, enough of them for array indexes of one to three digits.
    fn batch(n: usize) -> Vec<RawDocumentBuf> {
        (0..n)
            .map(|i| {
                let mut d = match i % 4 {
                    0 => rawdoc! { "_id": format!("key-{i}") },
                    1 => rawdoc! { "_id": i as i64 },
                    2 => rawdoc! { "_id": bson::Binary {
                        subtype: bson::spec::BinarySubtype::Uuid,
                        bytes: vec![i as u8; 16],
                    } },
                    _ => rawdoc! { "_id": { "clinic": "north", "n": i as i32 } },
                };
                d.append("name", "x".repeat(i % 7));
                d.append(
                    "guardians",
                    rawdoc! { "0": { "name": "g", "phone": "+441234" } },
                );
                d.append("active", i % 2 == 0);
                d
            })
            .collect()
    }

    #[test]
    fn the_one_copy_command_equals_the_one_the_bson_builders_make() {
        for n in [0, 1, 9, 10, 11, 101, 250] {
            let docs = batch(n);
            for mode in [WriteMode::Insert, WriteMode::Upsert] {
                let ours = write_command("patients", &docs, mode).unwrap();
                let reference = built_by_bson("patients", &docs, mode);
                let (a, b) = (ours.as_bytes(), reference.as_bytes());
                let first_difference = a.iter().zip(b).position(|(x, y)| x != y);
                assert!(
                    a == b,
                    "{n} documents, {mode:?}: {} bytes against {}, first difference at {first_difference:?}",
                    a.len(),
                    b.len()
                );
                // It reads back as BSON: one element per document.
                let list = match mode {
                    WriteMode::Insert => "documents",
                    WriteMode::Upsert => "updates",
                };
                assert_eq!(ours.get_array(list).unwrap().into_iter().count(), n);
            }
        }
    }

    #[test]
    fn an_upsert_of_a_document_without_id_is_refused_before_anything_is_sent() {
        let mut docs = batch(3);
        docs.push(rawdoc! { "name": "no id" });
        let err = write_command("patients", &docs, WriteMode::Upsert).unwrap_err();
        assert!(err.to_string().contains("document without _id"), "{err}");
        // Inserts let the server give it one, as before.
        assert!(write_command("patients", &docs, WriteMode::Insert).is_ok());
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

/// Whether two index key patterns name the same fields in the same order and directions (the
/// numbers' types aside: `1` and `NumberLong(1)`).
fn same_pattern(a: &Document, b: &Document) -> bool {
    let dir = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i).signum()),
        Bson::Int64(i) => Some(i.signum()),
        Bson::Double(d) => Some(if *d < 0.0 { -1 } else { 1 }),
        _ => None,
    };
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && dir(va).is_some() && dir(va) == dir(vb))
}

/// The client name of cutover's process `pid` on `host` (MongoDB's `appName`, which `$currentOp`
/// shows with each operation).
/// The name this process's MongoDB clients give their operations (see [`app_name`]).
static APP_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The `appName` of this process's MongoDB clients: the URI's, else [`app_name`] of this host
/// and process.
pub fn process_app_name() -> String {
    APP_NAME
        .get()
        .cloned()
        .unwrap_or_else(|| app_name(&host_name(), i64::from(std::process::id())))
}

/// (A host name is at most 64 bytes: the name stays within the 128 appName holds.)
pub fn app_name(host: &str, pid: i64) -> String {
    format!("cutover {host} {pid}")
}

/// This machine's name, as the ledger records hosts.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

impl MongoTarget {
    /// Stops the operations the cutover process `pid` on `host` still runs on this database's
    /// server (killOp) and waits until they are gone (at most `wait`): a process killed while
    /// mongod ran its update goes on writing server-side, and what the next holder of the lock
    /// undoes it would then overwrite (adv22 F3). Returns how many were stopped.
    pub async fn stop_operations_of(
        db: &Database,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<u64, MongoError> {
        use futures::TryStreamExt;
        let admin = db.client().database("admin");
        let err = |cause| MongoError::Command {
            op: "$currentOp".into(),
            cause,
        };
        let deadline = std::time::Instant::now() + wait;
        let mut stopped = std::collections::BTreeSet::new();
        // Every user's operations need the `inprog` privilege; without it, this user's own
        // (the process that held the lock ran as the same user, as a rule).
        let mut all_users = true;
        loop {
            let listed = admin
                .aggregate(vec![
                    doc! { "$currentOp": { "allUsers": all_users, "idleConnections": false } },
                    // Its operations on this database (not this very `$currentOp`, when the
                    // holder is this process: a server releasing its own run's lock).
                    doc! { "$match": {
                        "appName": name,
                        "active": true,
                        "ns": { "$regex": format!("^{}\\.", regex_escape(db.name())) },
                        "command.pipeline.0.$currentOp": { "$exists": false },
                    } },
                    doc! { "$project": { "opid": 1 } },
                ])
                .await;
            let listed = match listed {
                Ok(cursor) => cursor.try_collect::<Vec<Document>>().await,
                Err(e) => Err(e),
            };
            let ops = match listed {
                Ok(ops) => ops,
                Err(e) if all_users && unauthorized(&e) => {
                    all_users = false;
                    continue;
                }
                Err(e) if unauthorized(&e) => {
                    tracing::warn!(error = %error_text(&e), "cannot list the server's operations (no privilege): what the lock's last holder may still run there is not stopped");
                    return Ok(0);
                }
                Err(e) => return Err(err(e)),
            };
            if ops.is_empty() {
                return Ok(stopped.len() as u64);
            }
            if std::time::Instant::now() > deadline {
                return Err(MongoError::Unfit(format!(
                    "{} operation(s) of the process that held the lock ({name}) still run on the server after {}s: wait for them to end (db.currentOp()), then try again",
                    ops.len(),
                    wait.as_secs()
                )));
            }
            for op in &ops {
                if let Some(opid) = op.get("opid") {
                    let _ = admin
                        .run_command(doc! { "killOp": 1, "op": opid.clone() })
                        .await;
                    stopped.insert(opid.to_string());
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `text` as a regular expression matching only itself.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether mongod refused a command for want of a privilege (Unauthorized).
fn unauthorized(e: &mongodb::error::Error) -> bool {
    matches!(*e.kind, ErrorKind::Command(ref c) if c.code == 13)
}
