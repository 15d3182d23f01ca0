//! The run ledger, kept in the target database: runs (`<prefix>runs`), the steps of each run — one
//! per entity — with their checkpoints (`<prefix>steps`), the lock (`<prefix>lock`) and backups
//! (`<prefix>backups`). Everything a resume, a rollback, `status` and `history` need.

pub mod lock;

use std::collections::BTreeMap;

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Database;
use serde::Serialize;

use crate::monitor::report::{EntityReport, RunReport};

#[derive(Debug, thiserror::Error)]
#[error("ledger {op} failed: {source}")]
pub struct LedgerError {
    op: String,
    source: mongodb::error::Error,
}

fn lerr(op: &str) -> impl FnOnce(mongodb::error::Error) -> LedgerError + '_ {
    move |source| LedgerError {
        op: op.to_string(),
        source,
    }
}

impl crate::sink::retry::Retryable for LedgerError {
    fn is_retryable(&self) -> bool {
        crate::sink::mongodb::is_transient(&self.source)
    }
}

/// Runs one ledger operation with the same retry policy as data writes.
async fn retried<T, F, Fut>(op: F) -> Result<T, LedgerError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    crate::sink::retry::retry(
        crate::sink::retry::RetryPolicy::default(),
        tokio::time::sleep,
        |attempt, err: &LedgerError| tracing::warn!(attempt, error = %err, "retrying a ledger write"),
        op,
    )
    .await
}

/// This machine's name, recorded with runs, steps and the lock.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Status of a step.
pub const RUNNING: &str = "running";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
pub const ROLLED_BACK: &str = "rolled-back";

/// One step (an entity within a run) as the ledger holds it.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub id: String,
    pub run_id: String,
    pub run_number: i64,
    pub entity: String,
    pub collection: String,
    pub mapping: String,
    pub checksum: String,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub rolled_back_at: Option<String>,
    pub duration_ms: i64,
    pub read: i64,
    pub written: i64,
    pub rejected: i64,
    pub warnings: i64,
    pub retried: i64,
    pub error: Option<String>,
    /// The collection held no document when the step began (rollback empties it).
    pub was_empty: bool,
    /// Backup taken before the step wrote into a non-empty collection.
    pub backup: Option<String>,
    pub reversible: bool,
    /// Key values (as text) below which everything is written, and how many source rows that is.
    pub checkpoint_key: Option<Vec<String>>,
    pub checkpoint_rows: i64,
    pub total: i64,
    pub resumed_from: Option<String>,
    /// The source snapshot's time (RFC 3339, microseconds): a delta run copies rows changed since.
    pub snapshot_at: Option<String>,
    /// A delta step: rows changed since this instant.
    pub since: Option<String>,
    pub host: String,
    pub pid: i64,
    pub version: String,
}

fn date_text(d: &Document, k: &str) -> Option<String> {
    d.get_datetime(k)
        .ok()
        .and_then(|t| t.try_to_rfc3339_string().ok())
}

fn int(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

fn text(d: &Document, k: &str) -> String {
    d.get_str(k).unwrap_or_default().to_string()
}

impl StepRecord {
    fn from_doc(d: &Document) -> StepRecord {
        StepRecord {
            id: text(d, "_id"),
            run_id: text(d, "run_id"),
            run_number: int(d, "run_number"),
            entity: text(d, "entity"),
            collection: text(d, "collection"),
            mapping: text(d, "mapping"),
            checksum: text(d, "checksum"),
            status: text(d, "status"),
            started_at: date_text(d, "started_at"),
            finished_at: date_text(d, "finished_at"),
            rolled_back_at: date_text(d, "rolled_back_at"),
            duration_ms: int(d, "duration_ms"),
            read: int(d, "read"),
            written: int(d, "written"),
            rejected: int(d, "rejected"),
            warnings: int(d, "warnings"),
            retried: int(d, "retried"),
            error: d.get_str("error").ok().map(str::to_string),
            was_empty: d.get_bool("was_empty").unwrap_or(false),
            backup: d.get_str("backup").ok().map(str::to_string),
            reversible: d.get_bool("reversible").unwrap_or(true),
            checkpoint_key: d.get_array("checkpoint_key").ok().map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or_default().to_string())
                    .collect()
            }),
            checkpoint_rows: int(d, "checkpoint_rows"),
            total: int(d, "total"),
            resumed_from: d.get_str("resumed_from").ok().map(str::to_string),
            snapshot_at: d.get_str("snapshot_at").ok().map(str::to_string),
            since: d.get_str("since").ok().map(str::to_string),
            host: text(d, "host"),
            pid: int(d, "pid"),
            version: text(d, "version"),
        }
    }
}

/// One run as the ledger holds it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub run_number: i64,
    pub pipeline: String,
    pub entities: Vec<String>,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: i64,
    pub read: i64,
    pub written: i64,
    pub rejected: i64,
    pub host: String,
}

/// What a new step records when it begins.
#[derive(Debug, Clone)]
pub struct StepStart<'a> {
    pub run_id: &'a str,
    pub run_number: i64,
    pub entity: &'a str,
    pub collection: &'a str,
    pub mapping: &'a str,
    pub checksum: &'a str,
    pub was_empty: bool,
    pub backup: Option<&'a str>,
    pub total: u64,
    pub resumed_from: Option<&'a str>,
    pub checkpoint: Option<(&'a [String], i64)>,
    pub snapshot_at: &'a str,
    /// Rows changed since this time only (a delta run).
    pub since: Option<&'a str>,
}

#[derive(Clone)]
pub struct Ledger {
    db: Database,
    prefix: String,
}

impl Ledger {
    pub fn new(db: Database, prefix: &str) -> Ledger {
        Ledger {
            db,
            prefix: prefix.to_string(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn runs(&self) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{}runs", self.prefix))
    }

    fn steps(&self) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{}steps", self.prefix))
    }

    pub(crate) fn lock_collection(&self) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{}lock", self.prefix))
    }

    fn backups(&self) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{}backups", self.prefix))
    }

    /// The next run number (1 for the first run).
    pub async fn next_run_number(&self) -> Result<i64, LedgerError> {
        let last = self
            .runs()
            .find_one(doc! {})
            .sort(doc! { "run_number": -1 })
            .await
            .map_err(lerr("read runs"))?;
        Ok(last.map(|d| int(&d, "run_number")).unwrap_or(0) + 1)
    }

    pub async fn start_run(
        &self,
        run_id: &str,
        run_number: i64,
        pipeline: &str,
        entities: &[String],
    ) -> Result<(), LedgerError> {
        let run = doc! {
            "_id": run_id,
            "run_number": run_number,
            "pipeline": pipeline,
            "entities": entities,
            "status": RUNNING,
            "started_at": bson::DateTime::now(),
            "host": host(),
            "pid": i64::from(std::process::id()),
            "version": env!("CARGO_PKG_VERSION"),
        };
        retried(|_| async {
            self.runs()
                .replace_one(doc! { "_id": run_id }, run.clone())
                .upsert(true)
                .await
                .map_err(lerr("start run"))
        })
        .await?;
        Ok(())
    }

    pub async fn start_step(&self, s: &StepStart<'_>) -> Result<(), LedgerError> {
        let id = format!("{}:{}", s.run_id, s.entity);
        let mut step = doc! {
            "_id": &id,
            "run_id": s.run_id,
            "run_number": s.run_number,
            "entity": s.entity,
            "collection": s.collection,
            "mapping": s.mapping,
            "checksum": s.checksum,
            "status": RUNNING,
            "started_at": bson::DateTime::now(),
            "was_empty": s.was_empty,
            "reversible": true,
            "total": s.total as i64,
            "host": host(),
            "pid": i64::from(std::process::id()),
            "version": env!("CARGO_PKG_VERSION"),
        };
        if let Some(b) = s.backup {
            step.insert("backup", b);
        }
        if let Some(r) = s.resumed_from {
            step.insert("resumed_from", r);
        }
        step.insert("snapshot_at", s.snapshot_at);
        if let Some(since) = s.since {
            step.insert("since", since);
        }
        if let Some((key, rows)) = s.checkpoint {
            step.insert("checkpoint_key", key.to_vec());
            step.insert("checkpoint_rows", rows);
        }
        retried(|_| async {
            self.steps()
                .replace_one(doc! { "_id": &id }, step.clone())
                .upsert(true)
                .await
                .map_err(lerr("start step"))
        })
        .await?;
        Ok(())
    }

    /// Records that everything up to `key` (and `rows` source rows) is durably written.
    pub async fn checkpoint(
        &self,
        run_id: &str,
        entity: &str,
        key: &[String],
        rows: i64,
    ) -> Result<(), LedgerError> {
        let id = format!("{run_id}:{entity}");
        retried(|_| async {
            self.steps()
                .update_one(
                    doc! { "_id": &id },
                    doc! { "$set": { "checkpoint_key": key.to_vec(), "checkpoint_rows": rows, "checkpoint_at": bson::DateTime::now() } },
                )
                .await
                .map_err(lerr("checkpoint"))
        })
        .await?;
        Ok(())
    }

    pub async fn finish_step(&self, run_id: &str, e: &EntityReport) -> Result<(), LedgerError> {
        let id = format!("{run_id}:{}", e.name);
        let mut set = doc! {
            "status": &e.status,
            "finished_at": bson::DateTime::now(),
            "duration_ms": e.duration_ms as i64,
            "read": e.read as i64,
            "written": e.written as i64,
            "rejected": e.rejected as i64,
            "warnings": e.warnings as i64,
            "skipped": e.skipped as i64,
            "retried": e.retried as i64,
        };
        if let Some(err) = &e.error {
            set.insert("error", err.clone());
        }
        retried(|_| async {
            self.steps()
                .update_one(doc! { "_id": &id }, doc! { "$set": set.clone() })
                .await
                .map_err(lerr("finish step"))
        })
        .await?;
        Ok(())
    }

    pub async fn finish_run(&self, report: &RunReport) -> Result<(), LedgerError> {
        let set = doc! {
            "status": &report.status,
            "finished_at": bson::DateTime::now(),
            "written": report.totals.written as i64,
            "rejected": report.totals.rejected as i64,
            "read": report.totals.read as i64,
            "duration_ms": report.totals.duration_ms as i64,
        };
        retried(|_| async {
            self.runs()
                .update_one(doc! { "_id": &report.run_id }, doc! { "$set": set.clone() })
                .await
                .map_err(lerr("finish run"))
        })
        .await?;
        Ok(())
    }

    /// Marks a step rolled back.
    pub async fn mark_rolled_back(&self, step_id: &str) -> Result<(), LedgerError> {
        retried(|_| async {
            self.steps()
                .update_one(
                    doc! { "_id": step_id },
                    doc! { "$set": { "status": ROLLED_BACK, "rolled_back_at": bson::DateTime::now() } },
                )
                .await
                .map_err(lerr("mark rolled back"))
        })
        .await?;
        Ok(())
    }

    /// Marks a step's checksum as accepted (after `--accept-changed`).
    pub async fn accept_checksum(&self, step_id: &str, checksum: &str) -> Result<(), LedgerError> {
        self.steps()
            .update_one(
                doc! { "_id": step_id },
                doc! { "$set": { "checksum": checksum, "accepted_change_at": bson::DateTime::now() } },
            )
            .await
            .map_err(lerr("accept checksum"))?;
        Ok(())
    }

    /// Every step, oldest first.
    pub async fn all_steps(&self) -> Result<Vec<StepRecord>, LedgerError> {
        let mut cursor = self
            .steps()
            .find(doc! {})
            .sort(doc! { "started_at": 1, "_id": 1 })
            .await
            .map_err(lerr("read steps"))?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(lerr("read steps"))? {
            out.push(StepRecord::from_doc(&d));
        }
        Ok(out)
    }

    /// The latest step of each entity.
    pub async fn latest_steps(&self) -> Result<BTreeMap<String, StepRecord>, LedgerError> {
        let mut latest = BTreeMap::new();
        for s in self.all_steps().await? {
            latest.insert(s.entity.clone(), s);
        }
        Ok(latest)
    }

    /// Entities whose latest step completed.
    pub async fn completed_entities(
        &self,
    ) -> Result<std::collections::BTreeSet<String>, LedgerError> {
        Ok(self
            .latest_steps()
            .await?
            .into_iter()
            .filter(|(_, s)| s.status == COMPLETED)
            .map(|(e, _)| e)
            .collect())
    }

    /// The last completed run's throughput of `entity` (rows/s), for dry-run estimates.
    pub async fn last_rate(&self, entity: &str) -> Result<Option<f64>, LedgerError> {
        let d = self
            .steps()
            .find_one(doc! { "entity": entity, "status": COMPLETED })
            .sort(doc! { "finished_at": -1 })
            .await
            .map_err(lerr("read steps"))?;
        Ok(d.and_then(|d| {
            let read = int(&d, "read") as f64;
            let ms = int(&d, "duration_ms") as f64;
            (ms > 0.0 && read > 0.0).then(|| read * 1000.0 / ms)
        }))
    }

    /// Runs, newest first.
    pub async fn runs_newest_first(
        &self,
        limit: i64,
        status: Option<&str>,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let filter = match status {
            Some(s) => doc! { "status": s },
            None => doc! {},
        };
        let mut cursor = self
            .runs()
            .find(filter)
            .sort(doc! { "run_number": -1 })
            .limit(limit)
            .await
            .map_err(lerr("read runs"))?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(lerr("read runs"))? {
            out.push(RunRecord {
                run_id: text(&d, "_id"),
                run_number: int(&d, "run_number"),
                pipeline: text(&d, "pipeline"),
                entities: d
                    .get_array("entities")
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                status: text(&d, "status"),
                started_at: date_text(&d, "started_at"),
                finished_at: date_text(&d, "finished_at"),
                duration_ms: int(&d, "duration_ms"),
                read: int(&d, "read"),
                written: int(&d, "written"),
                rejected: int(&d, "rejected"),
                host: text(&d, "host"),
            });
        }
        Ok(out)
    }

    /// Copies `collection` server-side into `<collection>__backup__<run_id>` and records it.
    pub async fn backup(
        &self,
        collection: &str,
        run_id: &str,
        entity: &str,
    ) -> Result<String, LedgerError> {
        let name = format!("{collection}__backup__{}", run_id.replace(['.', ':'], "_"));
        self.db
            .collection::<Document>(collection)
            .aggregate(vec![doc! { "$match": {} }, doc! { "$out": &name }])
            .await
            .map_err(lerr("backup"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(lerr("backup"))?;
        let docs = self
            .db
            .collection::<Document>(&name)
            .estimated_document_count()
            .await
            .map_err(lerr("backup"))?;
        self.backups()
            .replace_one(
                doc! { "_id": &name },
                doc! {
                    "_id": &name,
                    "collection": collection,
                    "run_id": run_id,
                    "entity": entity,
                    "documents": docs as i64,
                    "created_at": bson::DateTime::now(),
                },
            )
            .upsert(true)
            .await
            .map_err(lerr("record backup"))?;
        Ok(name)
    }

    /// Recorded backups, newest first: (name, collection, run, documents, created).
    pub async fn list_backups(&self) -> Result<Vec<BackupRecord>, LedgerError> {
        let mut cursor = self
            .backups()
            .find(doc! {})
            .sort(doc! { "created_at": -1 })
            .await
            .map_err(lerr("read backups"))?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(lerr("read backups"))? {
            out.push(BackupRecord {
                name: text(&d, "_id"),
                collection: text(&d, "collection"),
                run_id: text(&d, "run_id"),
                entity: text(&d, "entity"),
                documents: int(&d, "documents"),
                created_at: date_text(&d, "created_at"),
            });
        }
        Ok(out)
    }

    pub async fn find_backup(&self, name: &str) -> Result<Option<BackupRecord>, LedgerError> {
        Ok(self
            .list_backups()
            .await?
            .into_iter()
            .find(|b| b.name == name))
    }

    /// Replaces the contents of the backup's collection with the backup (indexes are kept).
    pub async fn restore_backup(&self, b: &BackupRecord) -> Result<(), LedgerError> {
        self.db
            .collection::<Document>(&b.name)
            .aggregate(vec![doc! { "$match": {} }, doc! { "$out": &b.collection }])
            .await
            .map_err(lerr("restore backup"))?
            .try_collect::<Vec<_>>()
            .await
            .map_err(lerr("restore backup"))?;
        Ok(())
    }

    pub async fn drop_backup(&self, b: &BackupRecord) -> Result<(), LedgerError> {
        self.db
            .collection::<Document>(&b.name)
            .drop()
            .await
            .map_err(lerr("drop backup"))?;
        self.backups()
            .delete_one(doc! { "_id": &b.name })
            .await
            .map_err(lerr("drop backup"))?;
        Ok(())
    }

    /// Removes every document of `collection` (rollback of a stage that found it empty).
    pub async fn empty_collection(&self, collection: &str) -> Result<u64, LedgerError> {
        let r = self
            .db
            .collection::<Document>(collection)
            .delete_many(doc! {})
            .await
            .map_err(lerr("empty collection"))?;
        Ok(r.deleted_count)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRecord {
    pub name: String,
    pub collection: String,
    pub run_id: String,
    pub entity: String,
    pub documents: i64,
    pub created_at: Option<String>,
}
