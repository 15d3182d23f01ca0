//! The run ledger, kept in the target database: runs (`<prefix>runs`), the steps of each run — one
//! per entity — with their checkpoints (`<prefix>steps`), the lock (`<prefix>lock`) and backups
//! (`<prefix>backups`). Everything a resume, a rollback, `status` and `history` need.

pub mod lock;
pub mod retention;
pub mod store;

use std::collections::BTreeMap;

use bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};

pub use store::{Store, StoreError};

use crate::config::TargetKind;
pub use crate::monitor::report::TakenBackup;
use crate::monitor::report::{EntityReport, RunReport};
use crate::sink::target::Destination;

#[derive(Debug, thiserror::Error)]
#[error("ledger {op} failed: {cause}")]
pub struct LedgerError {
    op: String,
    cause: StoreError,
}

fn lerr<E: Into<StoreError>>(op: &str) -> impl FnOnce(E) -> LedgerError + '_ {
    move |cause| LedgerError {
        op: op.to_string(),
        cause: cause.into(),
    }
}

impl crate::sink::retry::Retryable for LedgerError {
    fn is_retryable(&self) -> bool {
        Store::is_transient(&self.cause)
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
    crate::sink::mongodb::host_name()
}

/// Status of a step.
pub const RUNNING: &str = "running";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";
pub const ROLLED_BACK: &str = "rolled-back";
/// A step being rolled back: recorded before its destination is touched, so a rollback cut short
/// (kill -9) shows, is not taken for applied, and is finished by `cutover rollback`.
pub const ROLLING_BACK: &str = "rolling-back";
/// A run or step whose process died or lost the lock before it ended (resumable from its
/// checkpoint).
pub const INTERRUPTED: &str = "interrupted";

/// Whether a step with this status stopped before its end (its checkpoint can be resumed).
pub fn unfinished(status: &str) -> bool {
    status == RUNNING || status == FAILED || status == INTERRUPTED
}

/// Whether `next` (the step after `prev` of the same entity) took over `prev`'s record of the
/// destination before the stage (a resumed or restarted step does): undoing `next` undoes `prev`.
fn inherits(next: &StepRecord, prev: &StepRecord) -> bool {
    next.destination == prev.destination
        && next.was_empty == prev.was_empty
        && next.backup == prev.backup
}

/// The steps whose writes are undone (`steps` oldest first): those rolled back, and the unfinished
/// steps a rolled-back step continued (its restore put the destination back before them too).
pub fn undone(steps: &[StepRecord]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut next: BTreeMap<&str, &StepRecord> = BTreeMap::new();
    for s in steps.iter().rev() {
        let gone = s.status == ROLLED_BACK
            || (unfinished(&s.status)
                && next
                    .get(s.entity.as_str())
                    .is_some_and(|n| out.contains(&n.id) && inherits(n, s)));
        if gone {
            out.insert(s.id.clone());
        }
        next.insert(&s.entity, s);
    }
    out
}

/// The step each entity's data is in (`steps` oldest first): its latest step not undone — after a
/// rollback of a re-run, or a re-run restored on failure, the run before it — or, when every step
/// is undone, its latest (rolled back).
pub fn current_steps(steps: &[StepRecord]) -> BTreeMap<String, StepRecord> {
    let undone = undone(steps);
    let mut out: BTreeMap<String, StepRecord> = BTreeMap::new();
    for s in steps {
        let keep = out
            .get(&s.entity)
            .is_some_and(|c| !undone.contains(&c.id) && undone.contains(&s.id));
        if !keep {
            out.insert(s.entity.clone(), s.clone());
        }
    }
    out
}

/// What a step did itself, as (read, written, rejected, skipped): a completed one its counts, an
/// unfinished one its checkpoint (rows past it are read again by the run that resumes it), both
/// without the rows of the step it resumed.
pub fn own_counts(s: &StepRecord, steps: &[StepRecord]) -> (i64, i64, i64, i64) {
    let (base_rows, base_rejected) =
        resumed_part(s, steps).map_or((0, 0), |p| (p.rows, p.rejected));
    let (read, rejected, skipped) = if s.status == COMPLETED {
        (s.read, s.rejected, s.skipped)
    } else if unfinished(&s.status) {
        (s.checkpoint_rows, s.checkpoint_rejected, 0)
    } else {
        (0, 0, 0)
    };
    let read = (read - base_rows).max(0);
    let rejected = (rejected - base_rejected).max(0);
    let skipped = skipped.max(0);
    (read, (read - rejected - skipped).max(0), rejected, skipped)
}

/// The part of its entity a step resumed: the rows the interrupted step it continues had
/// covered by its checkpoint, and how many of them were rejected.
pub fn resumed_part(s: &StepRecord, steps: &[StepRecord]) -> Option<ResumedPart> {
    let from = s.resumed_from.as_deref()?;
    let p = steps
        .iter()
        .find(|p| p.run_id == from && p.entity == s.entity)?;
    Some(ResumedPart {
        entity: s.entity.clone(),
        from_run: from.to_string(),
        rows: p.checkpoint_rows,
        rejected: p.checkpoint_rejected,
    })
}

/// What a run did itself, summed over its steps as [`own_counts`] counts each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnCounts {
    pub read: i64,
    pub written: i64,
    pub rejected: i64,
    pub skipped: i64,
}

/// What run `run_id` did itself (its completed steps, its unfinished ones up to their
/// checkpoints, without the parts they resumed), and when its last checkpoint was saved.
pub fn run_own_counts(run_id: &str, steps: &[StepRecord]) -> (OwnCounts, Option<String>) {
    let mut c = OwnCounts::default();
    let mut last: Option<String> = None;
    for s in steps.iter().filter(|s| s.run_id == run_id) {
        let (r, w, j, k) = own_counts(s, steps);
        c.read += r;
        c.written += w;
        c.rejected += j;
        c.skipped += k;
        // RFC 3339 with fixed-width milliseconds: the texts sort as the instants do.
        for t in [&s.checkpoint_at, &s.finished_at].into_iter().flatten() {
            if last.as_ref().is_none_or(|l| t > l) {
                last = Some(t.clone());
            }
        }
    }
    (c, last)
}

/// Milliseconds from `from` to `to` (RFC 3339 texts), when both parse.
pub fn millis_between(from: Option<&str>, to: Option<&str>) -> Option<i64> {
    let at = |t: Option<&str>| chrono::DateTime::parse_from_rfc3339(t?).ok();
    Some((at(to)? - at(from)?).num_milliseconds().max(0))
}

/// One step (an entity within a run) as the ledger holds it.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub id: String,
    pub run_id: String,
    pub run_number: i64,
    pub entity: String,
    /// Where the step wrote.
    pub destination: Destination,
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
    /// Rows neither written nor rejected (batches that failed).
    pub skipped: i64,
    pub retried: i64,
    pub error: Option<String>,
    /// The collection held no document when the step began (rollback empties it).
    pub was_empty: bool,
    /// Backup taken before the step wrote into a non-empty collection.
    pub backup: Option<String>,
    /// Whether rolling back this step alone puts its destination back as it found it (it was
    /// empty, or a backup was taken); a Storage step that found files may still be undone with
    /// the entity's earlier steps (see `rollback`). Steps recorded before this was computed say
    /// `true`.
    pub reversible: bool,
    /// Key values (as text) below which everything is written, and how many source rows that is.
    pub checkpoint_key: Option<Vec<String>>,
    /// When the last checkpoint was saved (RFC 3339): how far a killed step got, in time.
    pub checkpoint_at: Option<String>,
    pub checkpoint_rows: i64,
    /// Of those rows, how many were rejected and how many written with warnings (this step's
    /// and the steps it continues), and how many of this step's own batches the checkpoint
    /// covers (the rejects file's `batch` column says which lines it covers).
    pub checkpoint_rejected: i64,
    pub checkpoint_warned: i64,
    /// Older documents removed below the checkpoint (this step's and those it continues).
    pub checkpoint_removed: i64,
    pub checkpoint_batches: i64,
    pub total: i64,
    pub resumed_from: Option<String>,
    /// The source snapshot's time (RFC 3339, microseconds): a delta run copies rows changed since.
    pub snapshot_at: Option<String>,
    /// The oldest transaction id running at that snapshot, when the role could not see when
    /// the transactions open then began: a delta from it also reads the rows they wrote.
    pub snapshot_xid: Option<i64>,
    /// A delta step: rows changed since this instant (and written by transactions from
    /// `since_xid` on).
    pub since: Option<String>,
    pub since_xid: Option<i64>,
    /// A delta step: the rejects files of the step it continues (their rows are read again).
    pub since_rejects: Option<String>,
    /// The step deletes documents whose source rows are gone when it ends.
    pub sync_deletes: bool,
    /// Documents it deleted so (recorded at its end).
    pub deleted: i64,
    /// What the step it resumed had removed (older documents of rejected rows) and deleted
    /// (`--sync-deletes`) in all, when it began: with its removal notes, what a run that
    /// resumes it inherits.
    pub inherited_removed: i64,
    pub inherited_deleted: i64,
    /// Where the step's rejects and warnings files are (absolute): a resume started from
    /// another directory finds the lines its checkpoint covers there.
    pub rejects_dir: Option<String>,
    /// The run whose report accounts for this step when its own run was interrupted before
    /// it ended.
    pub reported_by: Option<String>,
    pub host: String,
    pub pid: i64,
    pub version: String,
}

/// A ledger time as RFC 3339 with milliseconds always written: fixed width, so the texts sort as
/// the instants do (`…:06.3Z` would sort after `…:06.325Z`).
fn date_text(d: &Document, k: &str) -> Option<String> {
    d.get_datetime(k).ok().map(|t| {
        t.to_chrono()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    })
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

/// A destination as a ledger record holds it: typed, or as the text ledgers wrote before
/// (`collection`: the collection, `table+child+…` or `@users`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Recorded {
    Typed(Destination),
    Legacy(String),
}

/// The destination a step or backup record names; `kind` says how to read a legacy one.
fn destination(d: &Document, kind: TargetKind) -> Destination {
    let recorded = d
        .get("destination")
        .or_else(|| d.get("collection"))
        .and_then(|v| bson::from_bson::<Recorded>(v.clone()).ok());
    match recorded {
        Some(Recorded::Typed(t)) => t,
        Some(Recorded::Legacy(text)) => Destination::from_legacy(&text, kind),
        None => Destination::from_legacy("", kind),
    }
}

/// A destination as ledger records hold it.
fn destination_bson(d: &Destination) -> Result<Bson, StoreError> {
    bson::to_bson(d).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl StepRecord {
    /// A step of `entity` in `run` with `status`, into the collection named like the entity, and
    /// nothing else recorded: what unit tests start from.
    #[cfg(test)]
    pub(crate) fn for_test(run: &str, entity: &str, status: &str) -> StepRecord {
        StepRecord {
            id: format!("{run}:{entity}"),
            run_id: run.into(),
            run_number: 0,
            entity: entity.into(),
            destination: Destination::Collection {
                name: entity.into(),
            },
            mapping: String::new(),
            checksum: String::new(),
            status: status.into(),
            started_at: None,
            finished_at: None,
            rolled_back_at: None,
            duration_ms: 0,
            read: 0,
            written: 0,
            rejected: 0,
            warnings: 0,
            skipped: 0,
            retried: 0,
            error: None,
            was_empty: true,
            backup: None,
            reversible: true,
            checkpoint_key: None,
            checkpoint_at: None,
            checkpoint_rows: 0,
            checkpoint_rejected: 0,
            checkpoint_warned: 0,
            checkpoint_removed: 0,
            checkpoint_batches: 0,
            total: 0,
            resumed_from: None,
            snapshot_at: None,
            snapshot_xid: None,
            since: None,
            since_xid: None,
            since_rejects: None,
            sync_deletes: false,
            deleted: 0,
            inherited_removed: 0,
            inherited_deleted: 0,
            rejects_dir: None,
            reported_by: None,
            host: String::new(),
            pid: 0,
            version: String::new(),
        }
    }

    pub(crate) fn from_doc(d: &Document, kind: TargetKind) -> StepRecord {
        StepRecord {
            id: text(d, "_id"),
            run_id: text(d, "run_id"),
            run_number: int(d, "run_number"),
            entity: text(d, "entity"),
            destination: destination(d, kind),
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
            skipped: int(d, "skipped"),
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
            checkpoint_at: date_text(d, "checkpoint_at"),
            checkpoint_rows: int(d, "checkpoint_rows"),
            checkpoint_rejected: int(d, "checkpoint_rejected"),
            checkpoint_warned: int(d, "checkpoint_warned"),
            checkpoint_removed: int(d, "checkpoint_removed"),
            checkpoint_batches: int(d, "checkpoint_batches"),
            total: int(d, "total"),
            resumed_from: d.get_str("resumed_from").ok().map(str::to_string),
            snapshot_at: d.get_str("snapshot_at").ok().map(str::to_string),
            since: d.get_str("since").ok().map(str::to_string),
            snapshot_xid: d.get_i64("snapshot_xid").ok(),
            since_xid: d.get_i64("since_xid").ok(),
            since_rejects: d.get_str("since_rejects").ok().map(str::to_string),
            sync_deletes: d.get_bool("sync_deletes").unwrap_or(false),
            deleted: d.get_i64("deleted").unwrap_or(0),
            inherited_removed: int(d, "inherited_removed"),
            inherited_deleted: int(d, "inherited_deleted"),
            rejects_dir: d.get_str("rejects_dir").ok().map(str::to_string),
            reported_by: d.get_str("reported_by").ok().map(str::to_string),
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
    pub skipped: i64,
    /// Entities the run planned but never started (filled by `history`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_started: Vec<String>,
    /// The steps this run resumed from an interrupted run's checkpoint: the rows before it are
    /// that run's (counted in its totals, not in these), while this run's report counts the
    /// whole entity — one set of numbers each, said so.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resumed: Vec<ResumedPart>,
    pub host: String,
    /// What the run was asked to do with its entities: a run interrupted before it ended is
    /// finished so by the next plain `migrate` (older ledgers: none of it).
    pub intent: RunIntent,
}

impl RunRecord {
    /// Run `run_id` (number `run_number`) of pipeline `p` over `entities`, with `status` and
    /// nothing else recorded: what unit tests start from.
    #[cfg(test)]
    pub(crate) fn for_test(
        run_id: &str,
        run_number: i64,
        entities: &[&str],
        status: &str,
    ) -> RunRecord {
        RunRecord {
            run_id: run_id.into(),
            run_number,
            pipeline: "p".into(),
            entities: entities.iter().map(|e| e.to_string()).collect(),
            status: status.into(),
            started_at: None,
            finished_at: None,
            duration_ms: 0,
            read: 0,
            written: 0,
            rejected: 0,
            skipped: 0,
            not_started: Vec::new(),
            resumed: Vec::new(),
            host: String::new(),
            intent: Default::default(),
        }
    }

    /// A run the ledger still calls running, as its steps say now: its counts so far (what it
    /// read itself, as the ledger records once it ends); when its process is gone (`dead`: it
    /// holds no live lock), interrupted, with its duration up to its last checkpoint — else up
    /// to `now`. `history`, `status` and the API show it so (adv30 T3). Other runs unchanged.
    pub fn as_of_steps(
        &mut self,
        steps: &[StepRecord],
        now: chrono::DateTime<chrono::Utc>,
        dead: bool,
    ) {
        if self.status != RUNNING {
            return;
        }
        let (own, last) = run_own_counts(&self.run_id, steps);
        (self.read, self.written, self.rejected, self.skipped) =
            (own.read, own.written, own.rejected, own.skipped);
        let until = if dead {
            self.status = INTERRUPTED.to_string();
            last
        } else {
            Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        self.duration_ms =
            millis_between(self.started_at.as_deref(), until.as_deref()).unwrap_or(0);
    }
}

/// A step a run resumed: the part before the checkpoint, read by run `from_run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResumedPart {
    pub entity: String,
    pub from_run: String,
    /// Rows before the checkpoint, and how many of them were rejected.
    pub rows: i64,
    pub rejected: i64,
}

/// The flags that say what a run does with an entity that completed before: run it again
/// (`--rerun`), copy what changed since (`--since-last`), and delete what the source lost
/// (`--sync-deletes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunIntent {
    pub rerun: bool,
    pub since_last: bool,
    pub sync_deletes: bool,
}

impl RunIntent {
    /// Neither a re-run nor a delta: a plain `migrate`.
    pub fn is_plain(&self) -> bool {
        !self.rerun && !self.since_last && !self.sync_deletes
    }

    fn to_doc(self) -> Document {
        doc! { "rerun": self.rerun, "since_last": self.since_last, "sync_deletes": self.sync_deletes }
    }

    fn of(d: &Document) -> RunIntent {
        let flag = |k: &str| {
            d.get_document("intent")
                .ok()
                .and_then(|i| i.get_bool(k).ok())
                .unwrap_or(false)
        };
        RunIntent {
            rerun: flag("rerun"),
            since_last: flag("since_last"),
            sync_deletes: flag("sync_deletes"),
        }
    }
}

/// What a checkpoint covers: source rows, of which rejected and written with warnings (since the
/// entity's first part), and the step's own batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Covered {
    pub rows: u64,
    pub rejected: u64,
    pub warned: u64,
    pub batches: u64,
    /// Older documents of rows rejected now, removed (see `stale_removed`).
    pub removed: u64,
}

impl Covered {
    /// The covered rows written: the rest were rejected (nothing covered is skipped or failed).
    pub fn written(&self) -> u64 {
        self.rows.saturating_sub(self.rejected)
    }

    fn fields(&self) -> Document {
        // The step's running counts too: a killed run's record says how far it came.
        doc! {
            "checkpoint_rows": self.rows as i64,
            "checkpoint_rejected": self.rejected as i64,
            "checkpoint_warned": self.warned as i64,
            "checkpoint_batches": self.batches as i64,
            "checkpoint_removed": self.removed as i64,
            "read": self.rows as i64,
            "written": self.written() as i64,
            "rejected": self.rejected as i64,
            "warnings": self.warned as i64,
        }
    }
}

/// Why a step removes target records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The older documents of rows rejected now (`stale_removed`; Appwrite users: blocked).
    Stale,
    /// Records whose source rows are gone (`--sync-deletes`).
    SyncDeletes,
}

impl Removal {
    fn name(self) -> &'static str {
        match self {
            Removal::Stale => "stale",
            Removal::SyncDeletes => "sync_deletes",
        }
    }

    fn from_name(s: &str) -> Removal {
        if s == "sync_deletes" {
            Removal::SyncDeletes
        } else {
            Removal::Stale
        }
    }
}

/// A removal a step noted before it removed (see [`Ledger::note_removal`]).
#[derive(Debug, Clone)]
pub struct NotedRemoval {
    pub id: String,
    pub kind: Removal,
    /// The records it was about to remove (all there then).
    pub ids: Vec<Bson>,
    /// How many went, once it was done; `None` when the run was cut short before it said so.
    pub removed: Option<u64>,
}

/// What a new step records when it begins.
#[derive(Debug, Clone)]
pub struct StepStart<'a> {
    pub run_id: &'a str,
    pub run_number: i64,
    pub entity: &'a str,
    pub destination: &'a Destination,
    pub mapping: &'a str,
    pub checksum: &'a str,
    pub was_empty: bool,
    pub backup: Option<&'a str>,
    pub total: u64,
    pub resumed_from: Option<&'a str>,
    pub checkpoint: Option<(&'a [String], Covered)>,
    pub snapshot_at: &'a str,
    /// See `StepRecord::snapshot_xid`.
    pub snapshot_xid: Option<i64>,
    /// Rows changed since this time only (a delta run), and written by transactions from
    /// `since_xid` on.
    pub since: Option<&'a str>,
    pub since_xid: Option<i64>,
    pub since_rejects: Option<&'a str>,
    /// The step ends by deleting the documents whose source rows are gone (`--sync-deletes`):
    /// a resume of it does too.
    pub sync_deletes: bool,
    /// The directory of this run's rejects files.
    pub rejects_dir: Option<&'a str>,
    /// What the step it resumes removed and deleted in all (see `StepRecord::inherited_removed`).
    pub inherited: (u64, u64),
}

#[derive(Clone, Debug)]
pub struct Ledger {
    store: Store,
    prefix: String,
}

fn millis(d: &Document, k: &str) -> i64 {
    d.get_datetime(k).map(|t| t.timestamp_millis()).unwrap_or(0)
}

impl Ledger {
    pub fn new(store: Store, prefix: &str) -> Ledger {
        Ledger {
            store,
            prefix: prefix.to_string(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix of the ledger's tables in an Appwrite database (not configurable).
    pub const APPWRITE_PREFIX: &'static str = "cutover_";

    fn runs(&self) -> String {
        format!("{}runs", self.prefix)
    }

    fn steps(&self) -> String {
        format!("{}steps", self.prefix)
    }

    pub(crate) fn lock_table(&self) -> String {
        format!("{}lock", self.prefix)
    }

    fn removals(&self) -> String {
        format!("{}removals", self.prefix)
    }

    /// Notes, before a step removes target records, which ones it is about to remove (`ids`,
    /// all there now) and why (`kind`); returns the note's id for [`Ledger::removal_done`]. A
    /// killed run leaves the note behind: the run that resumes its step counts those of the
    /// ids that are gone by then ([`Ledger::removals_of`]) — nothing else could tell, since
    /// they are gone.
    pub async fn note_removal(
        &self,
        run_id: &str,
        entity: &str,
        kind: Removal,
        ids: &[Bson],
    ) -> Result<String, LedgerError> {
        let id = format!("{run_id}:{entity}:{:016x}", fastrand::u64(..));
        let note = doc! {
            "run_id": run_id,
            "entity": entity,
            "kind": kind.name(),
            "ids": ids.to_vec(),
        };
        self.put("note a removal", &self.removals(), &id, &note)
            .await?;
        Ok(id)
    }

    /// The removal noted as `note` is done: `removed` of its records were there and went.
    pub async fn removal_done(&self, note: &str, removed: u64) -> Result<(), LedgerError> {
        self.set(
            "record a removal",
            &self.removals(),
            note,
            doc! { "removed": removed as i64 },
        )
        .await
    }

    /// The removals a step (`run_id`, `entity`) noted: those done with their counts, those
    /// cut short with their ids.
    pub async fn removals_of(
        &self,
        run_id: &str,
        entity: &str,
    ) -> Result<Vec<NotedRemoval>, LedgerError> {
        let all = self
            .store
            .all(&self.removals())
            .await
            .map_err(lerr("read removals"))?;
        Ok(all
            .iter()
            .filter(|d| d.get_str("run_id") == Ok(run_id) && d.get_str("entity") == Ok(entity))
            .map(|d| NotedRemoval {
                id: text(d, "_id"),
                kind: Removal::from_name(d.get_str("kind").unwrap_or_default()),
                ids: d.get_array("ids").cloned().unwrap_or_default(),
                removed: d.get_i64("removed").ok().map(|n| n.max(0) as u64),
            })
            .collect())
    }

    /// Forgets the removal notes of a step whose counts are recorded elsewhere now (it ended,
    /// or a step resuming it recorded what it inherits).
    pub async fn forget_removals(&self, run_id: &str, entity: &str) -> Result<(), LedgerError> {
        for n in self.removals_of(run_id, entity).await? {
            retried(|_| async {
                self.store
                    .delete(&self.removals(), &n.id, None)
                    .await
                    .map_err(lerr("forget a removal"))
            })
            .await?;
        }
        Ok(())
    }

    fn backups(&self) -> String {
        format!("{}backups", self.prefix)
    }

    async fn put(&self, op: &str, table: &str, id: &str, d: &Document) -> Result<(), LedgerError> {
        retried(|_| async { self.store.put(table, id, d).await.map_err(lerr(op)) }).await
    }

    async fn set(
        &self,
        op: &str,
        table: &str,
        id: &str,
        fields: Document,
    ) -> Result<(), LedgerError> {
        retried(|_| async {
            self.store
                .set(table, id, fields.clone(), None)
                .await
                .map_err(lerr(op))
        })
        .await?;
        Ok(())
    }

    async fn all_runs(&self) -> Result<Vec<Document>, LedgerError> {
        self.store
            .all(&self.runs())
            .await
            .map_err(lerr("read runs"))
    }

    /// The next run number (1 for the first run).
    pub async fn next_run_number(&self) -> Result<i64, LedgerError> {
        let runs = self.all_runs().await?;
        Ok(runs.iter().map(|d| int(d, "run_number")).max().unwrap_or(0) + 1)
    }

    pub async fn start_run(
        &self,
        run_id: &str,
        run_number: i64,
        pipeline: &str,
        entities: &[String],
        intent: RunIntent,
    ) -> Result<(), LedgerError> {
        let run = doc! {
            "_id": run_id,
            "run_number": run_number,
            "pipeline": pipeline,
            "entities": entities,
            "intent": intent.to_doc(),
            "status": RUNNING,
            "started_at": bson::DateTime::now(),
            "host": host(),
            "pid": i64::from(std::process::id()),
            "version": env!("CARGO_PKG_VERSION"),
        };
        self.put("start run", &self.runs(), run_id, &run).await
    }

    pub async fn start_step(&self, s: &StepStart<'_>) -> Result<(), LedgerError> {
        let id = format!("{}:{}", s.run_id, s.entity);
        let mut step = doc! {
            "_id": &id,
            "run_id": s.run_id,
            "run_number": s.run_number,
            "entity": s.entity,
            "destination": destination_bson(s.destination).map_err(lerr("start step"))?,
            "mapping": s.mapping,
            "checksum": s.checksum,
            "status": RUNNING,
            "started_at": bson::DateTime::now(),
            "was_empty": s.was_empty,
            // Whether rolling back this step alone puts its destination back: it found the
            // destination empty, or took a backup of it first.
            "reversible": s.was_empty || s.backup.is_some(),
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
        if let Some(x) = s.snapshot_xid {
            step.insert("snapshot_xid", x);
        }
        if let Some(since) = s.since {
            step.insert("since", since);
        }
        if let Some(x) = s.since_xid {
            step.insert("since_xid", x);
        }
        if let Some(dir) = s.since_rejects {
            step.insert("since_rejects", dir);
        }
        if s.sync_deletes {
            step.insert("sync_deletes", true);
        }
        if let Some(dir) = s.rejects_dir {
            step.insert("rejects_dir", dir);
        }
        if let Some((key, covered)) = s.checkpoint {
            step.insert("checkpoint_key", key.to_vec());
            step.extend(covered.fields());
        }
        if s.inherited != (0, 0) {
            step.insert("inherited_removed", s.inherited.0 as i64);
            step.insert("inherited_deleted", s.inherited.1 as i64);
        }
        self.put("start step", &self.steps(), &id, &step).await
    }

    /// Records that everything up to `key` is durably written or rejected, and what that is.
    pub async fn checkpoint(
        &self,
        run_id: &str,
        entity: &str,
        key: &[String],
        covered: Covered,
    ) -> Result<(), LedgerError> {
        let id = format!("{run_id}:{entity}");
        let mut set =
            doc! { "checkpoint_key": key.to_vec(), "checkpoint_at": bson::DateTime::now() };
        set.extend(covered.fields());
        self.set("checkpoint", &self.steps(), &id, set).await
    }

    /// Records how many source rows the step's entity has (counted once its snapshot is
    /// open): what its progress and time left are measured against while it runs.
    pub async fn record_total(
        &self,
        run_id: &str,
        entity: &str,
        total: u64,
    ) -> Result<(), LedgerError> {
        let id = format!("{run_id}:{entity}");
        let set = doc! { "total": total as i64 };
        self.set("record total", &self.steps(), &id, set).await
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
            // The whole step is covered now: the older documents it removed (or users it
            // blocked) in all, for a run that reports the step from the ledger.
            "checkpoint_removed": (e.stale_removed + e.stale_blocked) as i64,
            "deleted": e.deleted as i64,
        };
        if let Some(err) = &e.error {
            set.insert("error", crate::redact::redact_text(err));
        }
        self.set("finish step", &self.steps(), &id, set).await?;
        // Its counts are whole now.
        self.forget_removals(run_id, &e.name).await
    }

    pub async fn finish_run(&self, report: &RunReport) -> Result<(), LedgerError> {
        let own = report.own_totals();
        // What it did itself, as its steps say (each is recorded before the run): a step that
        // stopped before its end (SIGTERM, a lost lock, a failure) counts up to its checkpoint,
        // as a killed run's does — the rows past it are read again by the run that resumes it
        // (adv28 R6: both counted them).
        let steps = self.all_steps().await?;
        let (mut read, mut written, mut rejected, mut skipped) = (
            own.read as i64,
            own.written as i64,
            own.rejected as i64,
            own.skipped as i64,
        );
        for s in steps
            .iter()
            .filter(|s| s.run_id == report.run_id && unfinished(&s.status))
        {
            let Some(e) = report
                .entities
                .iter()
                .find(|e| e.name == s.entity && e.completed_by.is_none())
            else {
                continue;
            };
            // The report's own part of the entity, replaced by the checkpoint's.
            let rows = e.resumed_after_rows;
            let base_rejected = e.resumed_after_rejected.min(rows);
            let r_read = e.read.saturating_sub(rows) as i64;
            let r_rejected = e.rejected.saturating_sub(base_rejected) as i64;
            let r_written = e.written.saturating_sub(rows - base_rejected) as i64;
            let (c_read, c_written, c_rejected, c_skipped) = own_counts(s, &steps);
            read += c_read - r_read;
            written += c_written - r_written;
            rejected += c_rejected - r_rejected;
            skipped += c_skipped - e.skipped as i64;
        }
        let mine = OwnCounts {
            read: read.max(0),
            written: written.max(0),
            rejected: rejected.max(0),
            skipped: skipped.max(0),
        };
        let resumed: Vec<Document> = report
            .entities
            .iter()
            .filter(|e| e.completed_by.is_none())
            .filter_map(|e| {
                let from = e.resumed_from.as_ref()?;
                Some(doc! {
                    "entity": &e.name,
                    "from_run": from,
                    "rows": e.resumed_after_rows as i64,
                    "rejected": e.resumed_after_rejected.min(e.resumed_after_rows) as i64,
                })
            })
            .collect();
        let set = doc! {
            "resumed": resumed,
            "status": &report.status,
            "finished_at": bson::DateTime::now(),
            "written": mine.written,
            "rejected": mine.rejected,
            "read": mine.read,
            "skipped": mine.skipped,
            // The run's wall time: what a maintenance window is sized by (adv32 F5: the sum of
            // its stages left out backups and index builds).
            "duration_ms": report.wall_ms().unwrap_or(own.duration_ms) as i64,
        };
        self.set("finish run", &self.runs(), &report.run_id, set)
            .await
    }

    /// Marks every run and step still `running` but `run_id`'s as interrupted. Called by the
    /// holder of the lock: no other run can be alive, so those runs died (kill -9, a lost host)
    /// or lost the lock. Returns the run ids marked.
    pub async fn interrupt_stale_runs(&self, run_id: &str) -> Result<Vec<String>, LedgerError> {
        let why =
            format!("interrupted: the process ended without finishing; found by run {run_id}");
        let mut marked = Vec::new();
        let steps = self.all_steps().await?;
        for d in self.all_runs().await? {
            let id = text(&d, "_id");
            if id != run_id && text(&d, "status") == RUNNING {
                // What the run itself did: its completed steps, and its unfinished ones up to
                // their checkpoints — each without the part it resumed (counted by the run
                // that did it), so that history counts every row once; and how long it ran
                // until its last checkpoint.
                let (own, last) = run_own_counts(&id, &steps);
                let mut set = doc! {
                    "status": INTERRUPTED, "error": &why, "interrupted_at": bson::DateTime::now(),
                    "read": own.read, "written": own.written, "rejected": own.rejected, "skipped": own.skipped,
                };
                let started = date_text(&d, "started_at");
                if let Some(ms) = millis_between(started.as_deref(), last.as_deref()) {
                    set.insert("duration_ms", ms);
                }
                self.set("mark run interrupted", &self.runs(), &id, set)
                    .await?;
                marked.push(id);
            }
        }
        for s in steps {
            if s.run_id != run_id && s.status == RUNNING {
                self.set(
                    "mark step interrupted",
                    &self.steps(),
                    &s.id,
                    doc! { "status": INTERRUPTED, "error": &why },
                )
                .await?;
            }
        }
        Ok(marked)
    }

    /// Records that `run_id`'s report accounts for a step of an interrupted run.
    pub async fn mark_reported(&self, step_id: &str, run_id: &str) -> Result<(), LedgerError> {
        self.set(
            "mark step reported",
            &self.steps(),
            step_id,
            doc! { "reported_by": run_id },
        )
        .await
    }

    /// Marks a step as being rolled back, before its destination is touched.
    pub async fn mark_rolling_back(&self, step_id: &str) -> Result<(), LedgerError> {
        self.set(
            "mark rolling back",
            &self.steps(),
            step_id,
            doc! { "status": ROLLING_BACK, "rolling_back_at": bson::DateTime::now() },
        )
        .await
    }

    /// Marks a step rolled back.
    pub async fn mark_rolled_back(&self, step_id: &str) -> Result<(), LedgerError> {
        self.set(
            "mark rolled back",
            &self.steps(),
            step_id,
            doc! { "status": ROLLED_BACK, "rolled_back_at": bson::DateTime::now() },
        )
        .await
    }

    /// Marks a step's checksum as accepted (after `--accept-changed`).
    pub async fn accept_checksum(&self, step_id: &str, checksum: &str) -> Result<(), LedgerError> {
        self.set(
            "accept checksum",
            &self.steps(),
            step_id,
            doc! { "checksum": checksum, "accepted_change_at": bson::DateTime::now() },
        )
        .await
    }

    /// Every step, oldest first.
    pub async fn all_steps(&self) -> Result<Vec<StepRecord>, LedgerError> {
        let mut docs = self
            .store
            .all(&self.steps())
            .await
            .map_err(lerr("read steps"))?;
        docs.sort_by(|a, b| {
            (millis(a, "started_at"), text(a, "_id"))
                .cmp(&(millis(b, "started_at"), text(b, "_id")))
        });
        let kind = self.store.kind();
        Ok(docs.iter().map(|d| StepRecord::from_doc(d, kind)).collect())
    }

    /// Appwrite users belong to the whole project, not to this ledger's database: the other
    /// databases of the project whose ledgers hold a users step still in effect (applied, or cut
    /// short), with the entity. Read only: a database without a ledger is passed over. Empty on
    /// MongoDB.
    pub async fn users_in_effect_elsewhere(&self) -> Result<Vec<(String, String)>, LedgerError> {
        let Store::Appwrite { client, db, .. } = &self.store else {
            return Ok(Vec::new());
        };
        let mut others = Vec::new();
        let mut pages = crate::sink::appwrite::tables::Pages::databases(client);
        while let Some(page) = pages
            .next()
            .await
            .map_err(lerr("list the project's databases"))?
        {
            others.extend(
                page.iter()
                    .filter_map(|d| d["$id"].as_str())
                    .filter(|id| id != db)
                    .map(str::to_string),
            );
        }
        let mut found = Vec::new();
        for other in others {
            // Reading creates nothing: a database without the steps table has no steps.
            let steps = Ledger::new(Store::appwrite(client.clone(), &other), &self.prefix)
                .all_steps()
                .await?;
            for s in current_steps(&steps).into_values() {
                if s.destination == Destination::Users
                    && s.status != ROLLED_BACK
                    && s.status != ROLLING_BACK
                {
                    found.push((other.clone(), s.entity));
                }
            }
        }
        Ok(found)
    }

    /// The step each entity's data is in (see [`current_steps`]).
    pub async fn current_steps(&self) -> Result<BTreeMap<String, StepRecord>, LedgerError> {
        Ok(current_steps(&self.all_steps().await?))
    }

    /// Entities whose current step completed.
    pub async fn completed_entities(
        &self,
    ) -> Result<std::collections::BTreeSet<String>, LedgerError> {
        Ok(self
            .current_steps()
            .await?
            .into_iter()
            .filter(|(_, s)| s.status == COMPLETED)
            .map(|(e, _)| e)
            .collect())
    }

    /// The last completed run's throughput of `entity` (rows/s), for dry-run estimates.
    pub async fn last_rate(&self, entity: &str) -> Result<Option<f64>, LedgerError> {
        let docs = self
            .store
            .all(&self.steps())
            .await
            .map_err(lerr("read steps"))?;
        let last = docs
            .iter()
            .filter(|d| d.get_str("entity") == Ok(entity) && d.get_str("status") == Ok(COMPLETED))
            .max_by_key(|d| millis(d, "finished_at"));
        Ok(last.and_then(|d| {
            let read = int(d, "read") as f64;
            let ms = int(d, "duration_ms") as f64;
            (ms > 0.0 && read > 0.0).then(|| read * 1000.0 / ms)
        }))
    }

    /// Runs, newest first.
    pub async fn runs_newest_first(
        &self,
        limit: i64,
        status: Option<&str>,
    ) -> Result<Vec<RunRecord>, LedgerError> {
        let mut docs: Vec<Document> = self
            .all_runs()
            .await?
            .into_iter()
            .filter(|d| status.is_none_or(|s| d.get_str("status") == Ok(s)))
            .collect();
        docs.sort_by_key(|d| std::cmp::Reverse(int(d, "run_number")));
        docs.truncate(limit.max(0) as usize);
        Ok(docs
            .iter()
            .map(|d| RunRecord {
                run_id: text(d, "_id"),
                run_number: int(d, "run_number"),
                pipeline: text(d, "pipeline"),
                entities: d
                    .get_array("entities")
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                status: text(d, "status"),
                started_at: date_text(d, "started_at"),
                finished_at: date_text(d, "finished_at"),
                duration_ms: int(d, "duration_ms"),
                read: int(d, "read"),
                written: int(d, "written"),
                rejected: int(d, "rejected"),
                skipped: int(d, "skipped"),
                not_started: Vec::new(),
                resumed: d
                    .get_array("resumed")
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_document())
                            .map(|r| ResumedPart {
                                entity: text(r, "entity"),
                                from_run: text(r, "from_run"),
                                rows: int(r, "rows"),
                                rejected: int(r, "rejected"),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                host: text(d, "host"),
                intent: RunIntent::of(d),
            })
            .collect())
    }

    /// Copies `destination` (in the target) into a backup and records it; returns its name, size
    /// and how long it took (the copy and its record). The record comes first, `in-progress`, and
    /// is completed after the copy: a copy cut short (kill -9) is listed as incomplete, never
    /// restored, and dropped by `backup drop` and `backup prune`.
    pub async fn backup(
        &self,
        destination: &Destination,
        run_id: &str,
        entity: &str,
    ) -> Result<TakenBackup, LedgerError> {
        let started = std::time::Instant::now();
        let copy = self.store.backup_of(destination, run_id);
        let name = copy.to_string();
        let record = doc! {
            "destination": destination_bson(destination).map_err(lerr("record backup"))?,
            "copy": destination_bson(&copy).map_err(lerr("record backup"))?,
            "run_id": run_id,
            "entity": entity,
            "status": BACKUP_IN_PROGRESS,
            "documents": 0_i64,
            "created_at": bson::DateTime::now(),
        };
        self.put("record backup", &self.backups(), &name, &record)
            .await?;
        let docs = self
            .store
            .copy_data(destination, &copy)
            .await
            .map_err(lerr("backup"))?;
        self.set(
            "complete backup",
            &self.backups(),
            &name,
            doc! {
                "status": BACKUP_COMPLETE,
                "documents": docs as i64,
                "completed_at": bson::DateTime::now(),
            },
        )
        .await?;
        Ok(TakenBackup {
            name,
            documents: docs,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Recorded backups, newest first.
    pub async fn list_backups(&self) -> Result<Vec<BackupRecord>, LedgerError> {
        let mut docs = self
            .store
            .all(&self.backups())
            .await
            .map_err(lerr("read backups"))?;
        docs.sort_by_key(|d| std::cmp::Reverse(millis(d, "created_at")));
        let kind = self.store.kind();
        Ok(docs
            .iter()
            .map(|d| BackupRecord {
                name: text(d, "_id"),
                destination: destination(d, kind),
                // Records before typed destinations name the copy only by the backup's name.
                copy: d
                    .get("copy")
                    .and_then(|v| bson::from_bson(v.clone()).ok())
                    .unwrap_or_else(|| Destination::from_legacy(&text(d, "_id"), kind)),
                run_id: text(d, "run_id"),
                entity: text(d, "entity"),
                documents: int(d, "documents"),
                created_at: date_text(d, "created_at"),
                // Records before backups were recorded ahead of their copy are complete.
                complete: d.get_str("status").unwrap_or(BACKUP_COMPLETE) == BACKUP_COMPLETE,
            })
            .collect())
    }

    pub async fn find_backup(&self, name: &str) -> Result<Option<BackupRecord>, LedgerError> {
        Ok(self
            .list_backups()
            .await?
            .into_iter()
            .find(|b| b.name == name))
    }

    /// Replaces the contents of the backup's destination with the backup (indexes are kept);
    /// refuses an incomplete backup (its copy was cut short).
    pub async fn restore_backup(&self, b: &BackupRecord) -> Result<(), LedgerError> {
        if !b.complete {
            return Err(LedgerError {
                op: "restore backup".into(),
                cause: StoreError::Corrupt(format!(
                    "{} is incomplete (its copy was cut short) and cannot be restored",
                    b.name
                )),
            });
        }
        self.store
            .copy_data(&b.copy, &b.destination)
            .await
            .map_err(lerr("restore backup"))?;
        Ok(())
    }

    pub async fn drop_backup(&self, b: &BackupRecord) -> Result<(), LedgerError> {
        self.store
            .drop_data(&b.copy)
            .await
            .map_err(lerr("drop backup"))?;
        self.store
            .delete(&self.backups(), &b.name, None)
            .await
            .map_err(lerr("drop backup"))?;
        Ok(())
    }

    /// Removes every document of `destination` (rollback of a stage that found it empty); of
    /// users, those imported as `entity`'s.
    pub async fn empty_destination(
        &self,
        destination: &Destination,
        entity: &str,
    ) -> Result<u64, LedgerError> {
        self.store
            .empty_data(destination, entity)
            .await
            .map_err(lerr("empty collection"))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRecord {
    pub name: String,
    /// What it is a backup of.
    pub destination: Destination,
    /// Where the backup's data is (what its name reads as).
    pub copy: Destination,
    pub run_id: String,
    pub entity: String,
    pub documents: i64,
    pub created_at: Option<String>,
    /// Its copy finished (false: being taken, or its run died before the copy was done).
    pub complete: bool,
}

/// Status of a backup record: recorded before its copy begins, completed after.
pub const BACKUP_IN_PROGRESS: &str = "in-progress";
pub const BACKUP_COMPLETE: &str = "complete";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_read_typed_or_as_the_text_older_ledgers_wrote() {
        let tables = Destination::Tables {
            names: vec!["t".into(), "t__c".into()],
        };
        let typed = doc! { "destination": destination_bson(&tables).unwrap() };
        assert_eq!(
            typed.get_document("destination").unwrap().get_str("kind"),
            Ok("tables")
        );
        assert_eq!(destination(&typed, TargetKind::Appwrite), tables);
        let old = doc! { "collection": "t+t__c" };
        assert_eq!(destination(&old, TargetKind::Appwrite), tables);
        let old_users = doc! { "collection": "@users" };
        assert_eq!(
            destination(&old_users, TargetKind::Appwrite),
            Destination::Users
        );
        let users = doc! { "destination": destination_bson(&Destination::Users).unwrap() };
        assert_eq!(
            destination(&users, TargetKind::Appwrite),
            Destination::Users
        );
        let old_mongo = doc! { "collection": "patients" };
        assert_eq!(
            destination(&old_mongo, TargetKind::Mongodb),
            Destination::Collection {
                name: "patients".into()
            }
        );
    }
}
