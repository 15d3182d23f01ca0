//! The changes' records in the target's ledger: one per version in `<prefix>changes`, written
//! through the ledger's [`Store`](crate::ledger::Store) like runs and steps are. A record keeps
//! what `down` needs: the file's text as applied and what each operation did.

use bson::{Bson, Document, doc};
use serde::Serialize;

use super::ops::OpOutcome;
use crate::ledger::{Ledger, StoreError};

pub const APPLIED: &str = "applied";
pub const FAILED: &str = crate::ledger::FAILED;
pub const ROLLED_BACK: &str = crate::ledger::ROLLED_BACK;
pub const RUNNING: &str = crate::ledger::RUNNING;
/// A history line of a change whose process stopped before it ended (it died, or it lost the
/// lock and said so in the line's error).
pub const INTERRUPTED: &str = "interrupted";
/// A change that failed without a transaction and whose undoing failed too: its backup is kept.
pub const RESTORE_FAILED: &str = "restore-failed";
/// A change being reversed, recorded before `down` writes anything: one left so by a process that
/// died (or by a `down` that failed half way) is finished by the next `changes down`.
pub const REVERSING: &str = "reversing";
/// The marker a change's transaction writes into its backup collection as it commits.
pub const COMMITTED: &str = "committed";
/// The marker the transaction of a change's `down` writes as it commits.
pub const REVERSED: &str = "reversed";

/// One applied (or attempted) change as the ledger holds it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRecord {
    pub version: u64,
    pub name: String,
    pub file: String,
    pub checksum: String,
    pub status: String,
    pub batch: i64,
    pub transaction: bool,
    pub reversible: bool,
    pub applied_at: Option<String>,
    pub rolled_back_at: Option<String>,
    pub duration_ms: i64,
    pub matched: i64,
    pub modified: i64,
    pub inserted: i64,
    pub deleted: i64,
    pub error: Option<String>,
    /// The collection holding the documents the change rewrote, as they were before.
    pub backup: Option<String>,
    pub host: String,
    /// The process that applied it (on `host`).
    #[serde(skip)]
    pub pid: i64,
    /// The process reversing it (status `reversing`): its host and process id.
    #[serde(skip)]
    pub down_process: Option<(String, i64)>,
    /// The lock run id of the `changes` command that applied it.
    pub run_id: String,
    /// The lock run id of the `changes down` reversing it (status `reversing`).
    pub down_run_id: Option<String>,
    /// Why the last `down` failed.
    pub down_error: Option<String>,
    #[serde(skip)]
    pub source: String,
    /// The seed files the change's inserts read when it was applied (name → text).
    #[serde(skip)]
    pub seeds: std::collections::BTreeMap<String, String>,
    /// What each operation did, or, while the change is applied (status `running`), what each
    /// operation that started writing will need undone: recorded before it writes.
    #[serde(skip)]
    pub ops: Vec<OpOutcome>,
    /// The session of the change's transaction (`{id: UUID}`), recorded before it starts.
    #[serde(skip)]
    pub session: Option<Document>,
    /// The session of the transaction of its `down`.
    #[serde(skip)]
    pub down_session: Option<Document>,
    /// While reversing: what each operation of the file's own [[down]] that started did (as
    /// `ops`), and how many steps of the `down` are done.
    #[serde(skip)]
    pub down_ops: Vec<OpOutcome>,
    #[serde(skip)]
    pub down_done: usize,
    /// The `down` undoes an `up` that stopped half way (with the inverses of the operations
    /// that started, not the file's [[down]]).
    #[serde(skip)]
    pub down_partial_up: bool,
    #[serde(skip)]
    pub applied_millis: i64,
}

fn int(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        _ => 0,
    }
}

fn date_text(d: &Document, k: &str) -> Option<String> {
    d.get_datetime(k).ok().map(|t| {
        t.to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    })
}

fn outcomes(d: &Document, k: &str) -> Vec<OpOutcome> {
    d.get_array(k)
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(OpOutcome::from_doc)
                .collect()
        })
        .unwrap_or_default()
}

fn outcome_docs(ops: &[OpOutcome]) -> Vec<Bson> {
    ops.iter().map(|o| Bson::Document(o.to_doc())).collect()
}

impl ChangeRecord {
    fn from_doc(d: &Document) -> ChangeRecord {
        let text = |k: &str| d.get_str(k).unwrap_or_default().to_string();
        ChangeRecord {
            version: text("_id").parse().unwrap_or(0),
            name: text("name"),
            file: text("file"),
            checksum: text("checksum"),
            status: text("status"),
            batch: int(d, "batch"),
            transaction: d.get_bool("transaction").unwrap_or(false),
            reversible: d.get_bool("reversible").unwrap_or(false),
            applied_at: date_text(d, "applied_at"),
            rolled_back_at: date_text(d, "rolled_back_at"),
            duration_ms: int(d, "duration_ms"),
            matched: int(d, "matched"),
            modified: int(d, "modified"),
            inserted: int(d, "inserted"),
            deleted: int(d, "deleted"),
            error: d.get_str("error").ok().map(str::to_string),
            backup: d.get_str("backup").ok().map(str::to_string),
            host: text("host"),
            pid: int(d, "pid"),
            down_process: d
                .get_str("down_host")
                .ok()
                .map(|h| (h.to_string(), int(d, "down_pid"))),
            run_id: text("run_id"),
            down_run_id: d.get_str("down_run_id").ok().map(str::to_string),
            down_error: d.get_str("down_error").ok().map(str::to_string),
            source: text("source"),
            seeds: d
                .get_document("seeds")
                .map(|s| {
                    s.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            ops: outcomes(d, "ops"),
            session: d.get_document("session").ok().cloned(),
            down_session: d.get_document("down_session").ok().cloned(),
            down_ops: outcomes(d, "down_ops"),
            down_done: int(d, "down_done").max(0) as usize,
            down_partial_up: d.get_bool("down_partial_up").unwrap_or(false),
            applied_millis: d
                .get_datetime("applied_at")
                .map(|t| t.timestamp_millis())
                .unwrap_or(0),
        }
    }
}

/// One line of the changes' history: an `up` or a `down` of one change, as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub at: Option<String>,
    /// `up` or `down`
    pub action: String,
    pub version: u64,
    pub name: String,
    /// applied, failed, restore-failed (up); rolled-back, failed (down); running while it runs,
    /// interrupted when its process died
    pub status: String,
    pub batch: Option<i64>,
    pub duration_ms: i64,
    pub matched: i64,
    pub modified: i64,
    pub inserted: i64,
    pub deleted: i64,
    pub error: Option<String>,
    /// What a `down` finishing an interrupted one found and did.
    pub note: Option<String>,
    pub run_id: String,
    #[serde(skip)]
    pub at_millis: i64,
}

impl HistoryEntry {
    /// A line with no counts yet.
    pub fn new(action: &str, version: u64, name: &str, status: &str, run_id: &str) -> Self {
        HistoryEntry {
            at: None,
            action: action.to_string(),
            version,
            name: name.to_string(),
            status: status.to_string(),
            batch: None,
            duration_ms: 0,
            matched: 0,
            modified: 0,
            inserted: 0,
            deleted: 0,
            error: None,
            note: None,
            run_id: run_id.to_string(),
            // When the attempt began: a line written again as it ends keeps its place in the
            // history (adv27 N8: a paused holder's late line came above the down that undid
            // it).
            at_millis: bson::DateTime::now().timestamp_millis(),
        }
    }

    fn to_doc(&self) -> Document {
        let mut d = doc! {
            "at": bson::DateTime::from_millis(self.at_millis),
            "action": &self.action,
            "version": self.version.to_string(),
            "name": &self.name,
            "status": &self.status,
            "duration_ms": self.duration_ms,
            "matched": self.matched,
            "modified": self.modified,
            "inserted": self.inserted,
            "deleted": self.deleted,
            "run_id": &self.run_id,
        };
        if let Some(b) = self.batch {
            d.insert("batch", b);
        }
        if let Some(e) = &self.error {
            d.insert("error", crate::redact::redact_text(e));
        }
        if let Some(n) = &self.note {
            d.insert("note", n);
        }
        d
    }

    fn from_doc(d: &Document) -> HistoryEntry {
        let text = |k: &str| d.get_str(k).unwrap_or_default().to_string();
        HistoryEntry {
            at: date_text(d, "at"),
            action: text("action"),
            version: text("version").parse().unwrap_or(0),
            name: text("name"),
            status: text("status"),
            batch: d.get("batch").map(|_| int(d, "batch")),
            duration_ms: int(d, "duration_ms"),
            matched: int(d, "matched"),
            modified: int(d, "modified"),
            inserted: int(d, "inserted"),
            deleted: int(d, "deleted"),
            error: d.get_str("error").ok().map(str::to_string),
            note: d.get_str("note").ok().map(str::to_string),
            run_id: text("run_id"),
            at_millis: d
                .get_datetime("at")
                .map(|t| t.timestamp_millis())
                .unwrap_or(0),
        }
    }
}

/// What a finished attempt records.
pub struct Finished<'a> {
    pub status: &'a str,
    pub duration_ms: u64,
    pub ops: &'a [OpOutcome],
    pub error: Option<String>,
}

/// The changes' part of the target's ledger.
pub struct Records<'a> {
    pub ledger: &'a Ledger,
}

impl Records<'_> {
    /// Records how a change a dead process left in a transaction ended, whatever the target:
    /// committed — applied, with `ops`; not committed — failed, nothing written. Returns the
    /// status and the note that says so.
    pub async fn settle(
        &self,
        r: &ChangeRecord,
        committed: bool,
        ops: &[OpOutcome],
    ) -> Result<(&'static str, String), StoreError> {
        let (status, note) = if committed {
            (
                APPLIED,
                format!(
                    "the up of run {} stopped after its transaction committed: recorded applied",
                    r.run_id
                ),
            )
        } else {
            (
                FAILED,
                format!(
                    "the up of run {} stopped before its transaction committed: nothing was written",
                    r.run_id
                ),
            )
        };
        self.finish(
            r.version,
            &Finished {
                status,
                duration_ms: 0,
                ops: if committed { ops } else { &[] },
                error: (!committed).then(|| note.clone()),
            },
        )
        .await?;
        Ok((status, note))
    }

    pub fn table(&self) -> String {
        format!("{}changes", self.ledger.prefix())
    }

    fn log_table(&self) -> String {
        format!("{}changes_log", self.ledger.prefix())
    }

    /// Appends one line to the history (never rewritten).
    pub async fn log(&self, e: &HistoryEntry) -> Result<(), StoreError> {
        let id = format!("{}:{}:{}", e.run_id, e.version, e.action);
        self.ledger
            .store()
            .put(&self.log_table(), &id, &e.to_doc())
            .await
    }

    /// The history, newest first.
    pub async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut out: Vec<HistoryEntry> = self
            .ledger
            .store()
            .all(&self.log_table())
            .await?
            .iter()
            .map(HistoryEntry::from_doc)
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse((e.at_millis, e.version)));
        Ok(out)
    }

    /// The backup collection of one application of a change.
    pub fn backup_name(&self, version: u64, run_id: &str) -> String {
        format!(
            "{}change_{version}_backup_{}",
            self.ledger.prefix(),
            run_id.replace(['.', ':'], "_")
        )
    }

    /// Every record, oldest application first.
    pub async fn all(&self) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut out: Vec<ChangeRecord> = self
            .ledger
            .store()
            .all(&self.table())
            .await?
            .iter()
            .map(ChangeRecord::from_doc)
            .collect();
        out.sort_by_key(|r| (r.applied_millis, r.version));
        Ok(out)
    }

    /// The next batch number (1 for the first `changes up`).
    pub async fn next_batch(&self) -> Result<i64, StoreError> {
        Ok(self.all().await?.iter().map(|r| r.batch).max().unwrap_or(0) + 1)
    }

    /// Records that `change` starts, replacing an earlier failed or rolled-back attempt.
    pub async fn start(
        &self,
        change: &super::file::Change,
        batch: i64,
        backup: &str,
        run_id: &str,
    ) -> Result<(), StoreError> {
        let id = change.version.to_string();
        let d = doc! {
            "name": &change.name,
            "file": change.file_name(),
            "checksum": &change.checksum,
            "status": RUNNING,
            "batch": batch,
            "transaction": change.transaction,
            "reversible": change.reversible(),
            "applied_at": bson::DateTime::now(),
            "backup": backup,
            "run_id": run_id,
            "source": &change.source,
            "seeds": change
                .seeds
                .iter()
                .map(|(k, v)| (k.clone(), Bson::String(v.clone())))
                .collect::<Document>(),
            "host": crate::ledger::host(),
            "pid": i64::from(std::process::id()),
            "version": env!("CARGO_PKG_VERSION"),
        };
        self.ledger.store().put(&self.table(), &id, &d).await
    }

    pub async fn finish(&self, version: u64, f: &Finished<'_>) -> Result<(), StoreError> {
        let sum = |g: fn(&OpOutcome) -> u64| f.ops.iter().map(g).sum::<u64>() as i64;
        let mut set = doc! {
            "status": f.status,
            "finished_at": bson::DateTime::now(),
            "duration_ms": f.duration_ms as i64,
            "matched": sum(|o| o.matched),
            "modified": sum(|o| o.modified),
            "inserted": sum(|o| o.inserted),
            "deleted": sum(|o| o.deleted),
            "ops": outcome_docs(f.ops),
        };
        if let Some(e) = &f.error {
            set.insert("error", crate::redact::redact_text(e));
        }
        self.ledger
            .store()
            .set(&self.table(), &version.to_string(), set, None)
            .await?;
        Ok(())
    }

    /// Sets fields of a change's record.
    pub async fn update(&self, version: u64, fields: Document) -> Result<(), StoreError> {
        self.ledger
            .store()
            .set(&self.table(), &version.to_string(), fields, None)
            .await?;
        Ok(())
    }

    /// Records what the operations that started writing will need undone (before the next
    /// one writes).
    pub async fn progress(&self, version: u64, ops: &[OpOutcome]) -> Result<(), StoreError> {
        self.update(version, doc! { "ops": outcome_docs(ops) })
            .await
    }

    /// Records that `down` starts reversing the change (`fresh`; `partial_up`: an `up` that
    /// stopped half way), or takes up where an earlier `down` stopped.
    pub async fn start_down(
        &self,
        version: u64,
        run_id: &str,
        fresh: bool,
        partial_up: bool,
    ) -> Result<(), StoreError> {
        let mut set = doc! {
            "status": REVERSING,
            "down_run_id": run_id,
            "down_started_at": bson::DateTime::now(),
            "down_error": Bson::Null,
            "down_host": crate::ledger::host(),
            "down_pid": i64::from(std::process::id()),
        };
        if fresh {
            set.insert("down_ops", Vec::<Bson>::new());
            set.insert("down_done", 0_i64);
            set.insert("down_partial_up", partial_up);
        }
        self.update(version, set).await
    }

    /// Records how far `down` got: the file's own down operations that started (what each
    /// needs undone), and the steps done.
    pub async fn down_progress(
        &self,
        version: u64,
        down_ops: &[OpOutcome],
        done: usize,
    ) -> Result<(), StoreError> {
        self.update(
            version,
            doc! { "down_ops": outcome_docs(down_ops), "down_done": done as i64 },
        )
        .await
    }

    pub async fn mark_rolled_back(&self, version: u64, duration_ms: u64) -> Result<(), StoreError> {
        self.ledger
            .store()
            .set(
                &self.table(),
                &version.to_string(),
                doc! {
                    "status": ROLLED_BACK,
                    "rolled_back_at": bson::DateTime::now(),
                    "rollback_ms": duration_ms as i64,
                },
                None,
            )
            .await?;
        Ok(())
    }

    /// Records why a `down` failed, and the change's status after it: `applied` when nothing
    /// was reversed (its transaction rolled back), `reversing` when part of it was.
    pub async fn note_down_error(
        &self,
        version: u64,
        error: &str,
        status: &str,
    ) -> Result<(), StoreError> {
        self.update(
            version,
            doc! {
                "status": status,
                "down_error": crate::redact::redact_text(error),
                "down_failed_at": bson::DateTime::now(),
            },
        )
        .await
    }
}
