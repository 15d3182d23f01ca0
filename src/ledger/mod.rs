//! The run ledger, kept in the target: one document per run (`<prefix>runs`) and one per stage of a
//! run (`<prefix>steps`). `migrate` uses it to know which entities are already migrated (stage
//! dependencies) and writes what it did.

use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use mongodb::Database;

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

pub struct Ledger {
    db: Database,
    prefix: String,
}

/// Facts about this process written with every run.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

impl Ledger {
    pub fn new(db: Database, prefix: &str) -> Ledger {
        Ledger {
            db,
            prefix: prefix.to_string(),
        }
    }

    fn runs(&self) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{}runs", self.prefix))
    }

    fn steps(&self) -> mongodb::Collection<Document> {
        self.db.collection(&format!("{}steps", self.prefix))
    }

    /// Names of the ledger's collections (never migrated into, never verified).
    pub fn is_ledger_collection(&self, name: &str) -> bool {
        name.starts_with(&self.prefix)
    }

    pub async fn start_run(
        &self,
        run_id: &str,
        pipeline: &str,
        entities: &[String],
    ) -> Result<(), LedgerError> {
        let run = doc! {
            "_id": run_id,
            "pipeline": pipeline,
            "entities": entities,
            "status": "running",
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

    pub async fn start_step(
        &self,
        run_id: &str,
        entity: &str,
        mapping: &str,
        checksum: &str,
    ) -> Result<(), LedgerError> {
        let id = format!("{run_id}:{entity}");
        let step = doc! {
            "_id": &id,
            "run_id": run_id,
            "entity": entity,
            "mapping": mapping,
            "checksum": checksum,
            "status": "running",
            "started_at": bson::DateTime::now(),
            "host": host(),
            "pid": i64::from(std::process::id()),
            "version": env!("CARGO_PKG_VERSION"),
        };
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

    /// Entities whose latest step completed.
    pub async fn completed_entities(
        &self,
    ) -> Result<std::collections::BTreeSet<String>, LedgerError> {
        let mut cursor = self
            .steps()
            .find(doc! {})
            .sort(doc! { "started_at": 1 })
            .await
            .map_err(lerr("read steps"))?;
        let mut latest: std::collections::BTreeMap<String, String> = Default::default();
        while let Some(d) = cursor.try_next().await.map_err(lerr("read steps"))? {
            if let (Ok(entity), Ok(status)) = (d.get_str("entity"), d.get_str("status")) {
                latest.insert(entity.to_string(), status.to_string());
            }
        }
        Ok(latest
            .into_iter()
            .filter(|(_, s)| s == "completed")
            .map(|(e, _)| e)
            .collect())
    }

    /// The last completed run's throughput of `entity` (rows/s), for dry-run estimates.
    pub async fn last_rate(&self, entity: &str) -> Result<Option<f64>, LedgerError> {
        let d = self
            .steps()
            .find_one(doc! { "entity": entity, "status": "completed" })
            .sort(doc! { "finished_at": -1 })
            .await
            .map_err(lerr("read steps"))?;
        Ok(d.and_then(|d| {
            let read = match d.get("read") {
                Some(Bson::Int64(n)) => *n as f64,
                _ => return None,
            };
            let ms = match d.get("duration_ms") {
                Some(Bson::Int64(n)) => *n as f64,
                _ => return None,
            };
            (ms > 0.0 && read > 0.0).then(|| read * 1000.0 / ms)
        }))
    }
}
