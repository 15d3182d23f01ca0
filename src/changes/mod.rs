//! Versioned changes to the target after the cutover (MongoDB): numbered change files with up
//! and down operations ([`file`]), run against the target ([`ops`]) under the lock `migrate`
//! uses, and recorded in the target's ledger ([`record`]) with their checksum, batch, counts
//! and status.
//!
//! This module sits on top of [`crate::ledger`] and [`crate::sink::mongodb`]; nothing below the
//! command line imports it. It never prints: the commands turn its reports into output.
//!
//! An application can apply its pending changes at start-up, as `cutover changes up` does:
//!
//! ```no_run
//! # async fn start() -> Result<(), Box<dyn std::error::Error>> {
//! use cutover::changes::{self, ChangeTarget, UpOptions};
//! use cutover::ledger::{Ledger, Store};
//!
//! let client = mongodb::Client::with_uri_str("mongodb://localhost/?replicaSet=rs0").await?;
//! let db = client.database("registry");
//! let ledger = Ledger::new(Store::Mongo(db.clone()), "cutover_");
//! let files = changes::file::load_dir("pipelines/changes".as_ref())?;
//! let target = ChangeTarget { db: &db, ledger: &ledger, activity: None };
//! let report = changes::up(&target, &files, &UpOptions::default()).await?;
//! assert!(!report.failed(), "{:?}", report.changes);
//! # Ok(())
//! # }
//! ```

pub mod appwrite;
pub mod file;
pub mod ops;
pub mod record;
pub mod template;

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use bson::doc;
use mongodb::{ClientSession, Database};
use serde::Serialize;

pub use file::{Change, FileError, Op};
pub use ops::{OpError, OpOutcome, Preview};
pub use record::{ChangeRecord, HistoryEntry};

use crate::ledger::lock::{DEFAULT_TTL, LockError};
use crate::ledger::{Ledger, StoreError};
use ops::Exec;
use record::{
    APPLIED, COMMITTED, FAILED, Finished, INTERRUPTED, RESTORE_FAILED, REVERSED, REVERSING,
    ROLLED_BACK, RUNNING, Records,
};

#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("ledger: {0}")]
    Store(StoreError),
    #[error(transparent)]
    Lock(Box<LockError>),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("{0}")]
    Refused(String),
    /// What was asked for is not there (a version never applied).
    #[error("{0}")]
    NotFound(String),
    #[error("MongoDB: {0}")]
    Mongo(OpError),
}

impl From<StoreError> for ChangesError {
    fn from(e: StoreError) -> ChangesError {
        ChangesError::Store(e)
    }
}

impl From<OpError> for ChangesError {
    fn from(e: OpError) -> ChangesError {
        ChangesError::Mongo(e)
    }
}

impl From<LockError> for ChangesError {
    fn from(e: LockError) -> ChangesError {
        ChangesError::Lock(Box::new(e))
    }
}

/// Where changes run: the target's database and its ledger.
pub struct ChangeTarget<'a> {
    pub db: &'a Database,
    pub ledger: &'a Ledger,
    /// Where long operations say how far they are (`None`: nowhere).
    pub activity: Option<&'a crate::monitor::Activity>,
}

/// Where changes run, whichever the target: a MongoDB database or an Appwrite database, each
/// with its ledger. The commands and the server go through this, so both targets get every
/// change route and command.
pub enum OnTarget<'a> {
    Mongo(ChangeTarget<'a>),
    Appwrite(appwrite::AppwriteTarget<'a>),
}

impl<'a> OnTarget<'a> {
    pub fn new(
        target: &'a crate::sink::target::Target,
        ledger: &'a Ledger,
        activity: Option<&'a crate::monitor::Activity>,
    ) -> OnTarget<'a> {
        match target {
            crate::sink::target::Target::Mongo(m) => OnTarget::Mongo(ChangeTarget {
                db: m.database(),
                ledger,
                activity,
            }),
            crate::sink::target::Target::Appwrite(a) => {
                OnTarget::Appwrite(appwrite::AppwriteTarget {
                    client: &a.client,
                    db: &a.database,
                    ledger,
                    max_transaction_operations: a.max_transaction_operations,
                })
            }
        }
    }

    pub fn ledger(&self) -> &Ledger {
        match self {
            OnTarget::Mongo(t) => t.ledger,
            OnTarget::Appwrite(t) => t.ledger,
        }
    }

    /// `changes up` on this target ([`up`], [`appwrite::up`]).
    pub async fn up(&self, files: &[Change], opts: &UpOptions) -> Result<UpReport, ChangesError> {
        match self {
            OnTarget::Mongo(t) => up(t, files, opts).await,
            OnTarget::Appwrite(t) => appwrite::up(t, files, opts).await,
        }
    }

    /// `changes down` on this target ([`down_with`], [`appwrite::down_with`]).
    pub async fn down_with(
        &self,
        which: DownTarget,
        continue_on_error: bool,
    ) -> Result<DownReport, ChangesError> {
        match self {
            OnTarget::Mongo(t) => down_with(t, which, continue_on_error).await,
            OnTarget::Appwrite(t) => appwrite::down_with(t, which, continue_on_error).await,
        }
    }

    /// What `down` would reverse, from the ledger alone ([`down_preview`]).
    pub async fn down_preview(&self, which: DownTarget) -> Result<Vec<ChangeRecord>, ChangesError> {
        down_preview_in(self.ledger(), which).await
    }
}

/// The ledger of a target, for what reads only the ledger (status, history, ordering).
struct LedgerOnly<'a> {
    ledger: &'a Ledger,
}

/// One change's state, from its file and its ledger record.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeStatus {
    pub version: u64,
    pub name: String,
    pub file: Option<String>,
    /// applied, modified (applied, its file changed since), pending, out-of-order (pending, older
    /// than the newest applied), failed, rolled-back, running, interrupted (its process died
    /// while applying it), reversing, down-interrupted (its process died while reversing it),
    /// down-failed (reversing it failed half way), missing (applied, its file gone)
    pub state: String,
    /// What to run next, for the states that need it (interrupted, down-interrupted,
    /// down-failed).
    pub hint: Option<String>,
    pub reversible: bool,
    /// The operation that makes the change non-reversible.
    pub irreversible_because: Option<String>,
    pub transaction: bool,
    pub operations: usize,
    pub batch: Option<i64>,
    pub applied_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub matched: i64,
    pub modified: i64,
    pub inserted: i64,
    pub deleted: i64,
    pub error: Option<String>,
}

impl ChangeStatus {
    /// Whether `up` would apply it.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.state.as_str(),
            "pending" | "out-of-order" | "failed" | "rolled-back"
        )
    }
}

/// Every change file with its ledger record, in version order (records whose file is gone
/// too).
pub async fn status(
    t: &ChangeTarget<'_>,
    files: &[Change],
) -> Result<Vec<ChangeStatus>, ChangesError> {
    status_in(t.ledger, files).await
}

/// [`status`] from the ledger alone (whatever the target).
pub async fn status_in(
    ledger: &Ledger,
    files: &[Change],
) -> Result<Vec<ChangeStatus>, ChangesError> {
    let t = &LedgerOnly { ledger };
    let records: BTreeMap<u64, ChangeRecord> = Records { ledger: t.ledger }
        .all()
        .await?
        .into_iter()
        .map(|r| (r.version, r))
        .collect();
    let live_lock = t.ledger.lock_holder().await?.filter(|h| !h.expired);
    // Why a change left `running` stopped, when its process said so (it lost the lock): its
    // history line, by the run and version.
    let stopped_because: BTreeMap<(String, u64), String> =
        if records.values().any(|r| r.status == RUNNING) {
            Records { ledger: t.ledger }
                .history()
                .await?
                .into_iter()
                .filter(|e| e.action == "up" && e.status == INTERRUPTED)
                .filter_map(|e| Some(((e.run_id, e.version), e.error?)))
                .collect()
        } else {
            BTreeMap::new()
        };
    let why = |r: &ChangeRecord| stopped_because.get(&(r.run_id.clone(), r.version)).cloned();
    let newest_applied = records
        .values()
        .filter(|r| [APPLIED, RUNNING, REVERSING].contains(&r.status.as_str()))
        .map(|r| r.version)
        .max();
    let live = |run_id: Option<&str>| {
        live_lock
            .as_ref()
            .zip(run_id)
            .is_some_and(|(h, id)| h.run_id == id)
    };
    let mut out = Vec::new();
    for c in files {
        let r = records.get(&c.version);
        let older = newest_applied.is_some_and(|n| c.version < n);
        let state = match r.map(|r| r.status.as_str()) {
            Some(APPLIED) if r.is_some_and(|r| r.checksum == c.checksum) => "applied",
            Some(APPLIED) => "modified",
            Some(RUNNING) if live(r.map(|r| r.run_id.as_str())) => "running",
            Some(RUNNING) => "interrupted",
            Some(REVERSING) if live(r.and_then(|r| r.down_run_id.as_deref())) => "reversing",
            Some(REVERSING) if r.is_some_and(|r| r.down_error.is_some()) => "down-failed",
            Some(REVERSING) => "down-interrupted",
            // A change that failed is tried again by `up` even when changes after it were
            // applied since (`up --continue-on-error` went past it): the operator has seen it fail.
            None | Some(ROLLED_BACK) if older => "out-of-order",
            None => "pending",
            Some(s) => s,
        };
        let mut s = from_change(c, state);
        if let Some(r) = r {
            fill_from_record(&mut s, r);
        }
        out.push(s);
    }
    for s in &mut out {
        if let Some(r) = records.get(&s.version) {
            s.hint = hint(&s.state, r, why(r).as_deref());
            if s.state == "down-failed" {
                s.error = r.down_error.clone();
            }
        }
        // What to do about a file edited since, or added behind an applied change (adv37 F8:
        // no line said it), and why a change cannot be applied as it is.
        let unreadable = files
            .iter()
            .find(|c| c.version == s.version)
            .and_then(|c| c.unreadable.clone());
        s.hint = match (s.state.as_str(), unreadable) {
            ("modified", Some(why)) => Some(format!(
                "{why} (the ledger keeps the text it was applied with: `cutover changes down` reverses it): put the file back to have it `applied` again"
            )),
            (_, Some(why)) => Some(format!(
                "{why}: `cutover changes up` refuses it until the file is back"
            )),
            ("modified", None) => Some(
                "its file differs from the text it was applied with: put the file back as it was applied (`cutover changes down` reverses what was applied, from the ledger's copy), or write the new edit as a new change with `cutover changes new`".into(),
            ),
            ("out-of-order", None) => Some(
                "a change with a higher version is applied already: `cutover changes up --allow-out-of-order` applies it, or give it a version after the newest applied".into(),
            ),
            (_, None) => s.hint.take(),
        };
    }
    for r in records.values() {
        if files.iter().all(|c| c.version != r.version) && r.status != ROLLED_BACK {
            let state = match r.status.as_str() {
                APPLIED => "missing",
                RUNNING if !live(Some(&r.run_id)) => "interrupted",
                REVERSING if !live(r.down_run_id.as_deref()) => "down-interrupted",
                s => s,
            };
            let mut s = ChangeStatus {
                version: r.version,
                name: r.name.clone(),
                file: None,
                state: state.to_string(),
                hint: hint(state, r, why(r).as_deref()),
                reversible: r.reversible,
                irreversible_because: None,
                transaction: r.transaction,
                operations: r.ops.len(),
                batch: None,
                applied_at: None,
                duration_ms: None,
                matched: 0,
                modified: 0,
                inserted: 0,
                deleted: 0,
                error: None,
            };
            fill_from_record(&mut s, r);
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.version);
    Ok(out)
}

/// What to run for a change its process left half done; `stopped` is why, when its process said
/// so (it lost the lock), otherwise it died.
fn hint(state: &str, r: &ChangeRecord, stopped: Option<&str>) -> Option<String> {
    let operations = file::parse_recorded(&r.file, &r.source, &r.seeds)
        .map(|c| c.up.len())
        .unwrap_or(0);
    let how = match stopped {
        Some(why) => format!("its process stopped while applying it ({why})"),
        None => {
            "its process died while applying it, or lost the lock (released by force)".to_string()
        }
    };
    match state {
        "interrupted" if r.transaction => Some(format!(
            "{how} in a transaction: the next `cutover changes up` (or `down`) finds whether the transaction committed and records it so"
        )),
        "interrupted" => Some(format!(
            "{how} ({} of {operations} operations had started writing): `cutover changes down` undoes what it wrote (from its backup {}), then `cutover changes up` applies it again",
            r.ops.len(),
            r.backup.as_deref().unwrap_or("-")
        )),
        "down-interrupted" => Some(
            "its process died while reversing it: `cutover changes down` finishes reversing it (then `cutover changes up` applies it again)".into(),
        ),
        "down-failed" => Some(
            "reversing it failed part way: fix the cause, then `cutover changes down` finishes reversing it".into(),
        ),
        "restore-failed" => Some(format!(
            "it failed and undoing it failed too: fix the cause, then `cutover changes down` finishes undoing it (from its backup {})",
            r.backup.as_deref().unwrap_or("-")
        )),
        _ => None,
    }
}

fn from_change(c: &Change, state: &str) -> ChangeStatus {
    ChangeStatus {
        version: c.version,
        name: c.name.clone(),
        file: Some(c.file_name()),
        state: state.to_string(),
        hint: None,
        reversible: c.reversible(),
        irreversible_because: c.irreversible_op().map(|(i, op)| {
            format!(
                "up operation {i} (`{}`) has no inverse and the change no [[down]]",
                op.kind()
            )
        }),
        transaction: c.transaction,
        operations: c.up.len(),
        batch: None,
        applied_at: None,
        duration_ms: None,
        matched: 0,
        modified: 0,
        inserted: 0,
        deleted: 0,
        error: None,
    }
}

fn fill_from_record(s: &mut ChangeStatus, r: &ChangeRecord) {
    s.batch = Some(r.batch);
    s.applied_at = r.applied_at.clone();
    s.duration_ms = Some(r.duration_ms);
    s.matched = r.matched;
    s.modified = r.modified;
    s.inserted = r.inserted;
    s.deleted = r.deleted;
    s.error = r.error.clone();
}

/// `changes history`: every up and down, newest first, `skip`ped and `limit`ed, only those
/// with `status` when given.
pub async fn history(
    t: &ChangeTarget<'_>,
    limit: usize,
    skip: usize,
    status: Option<&str>,
) -> Result<Vec<HistoryEntry>, ChangesError> {
    history_in(t.ledger, limit, skip, status).await
}

/// [`history`] from the ledger alone (whatever the target).
pub async fn history_in(
    ledger: &Ledger,
    limit: usize,
    skip: usize,
    status: Option<&str>,
) -> Result<Vec<HistoryEntry>, ChangesError> {
    let t = &LedgerOnly { ledger };
    const STATUSES: &[&str] = &[
        APPLIED,
        FAILED,
        RESTORE_FAILED,
        ROLLED_BACK,
        RUNNING,
        "interrupted",
    ];
    if let Some(s) = status
        && !STATUSES.contains(&s)
    {
        return Err(ChangesError::Refused(format!(
            "no history entry has the status `{s}`: use one of {}",
            STATUSES.join(", ")
        )));
    }
    let live = t.ledger.lock_holder().await?.filter(|h| !h.expired);
    let records = Records { ledger: t.ledger };
    let by_version: BTreeMap<u64, ChangeRecord> = records
        .all()
        .await?
        .into_iter()
        .map(|r| (r.version, r))
        .collect();
    Ok(records
        .history()
        .await?
        .into_iter()
        .map(|mut e| {
            if e.status == INTERRUPTED {
                // Stopped by a lost lock: what its finished operations did is in its record.
                let r = by_version.get(&e.version);
                counts_so_far(&mut e, r);
            }
            if e.status != RUNNING || live.as_ref().is_some_and(|h| h.run_id == e.run_id) {
                return e;
            }
            // Written as it started, its process died before it wrote how it ended: the
            // record says whether it ended (the process died between the two writes).
            let r = by_version.get(&e.version);
            e.status = match (e.action.as_str(), r) {
                // How the up ended, when its record says so; a record rolled back since (a
                // `down` finishing the interrupted change) says nothing of the up (adv27 N8).
                ("up", Some(r))
                    if r.run_id == e.run_id
                        && [APPLIED, FAILED, RESTORE_FAILED].contains(&r.status.as_str()) =>
                {
                    r.status.clone()
                }
                ("down", Some(r))
                    if r.down_run_id.as_deref() == Some(&e.run_id) && r.status == ROLLED_BACK =>
                {
                    ROLLED_BACK.into()
                }
                _ => INTERRUPTED.into(),
            };
            if e.status == INTERRUPTED {
                counts_so_far(&mut e, r);
            }
            e
        })
        .filter(|e| status.is_none_or(|s| e.status == s))
        .skip(skip)
        .take(limit)
        .collect())
}

/// An up that never wrote how it ended (its process died, or lost the lock) says what its
/// operations had done by then, as its record keeps them (each operation's counts are saved
/// before the next one starts; adv27 N8: the line showed 0 for a change that had rewritten
/// every document).
fn counts_so_far(e: &mut HistoryEntry, record: Option<&ChangeRecord>) {
    let Some(r) = record.filter(|r| e.action == "up" && r.run_id == e.run_id) else {
        return;
    };
    if [e.matched, e.modified, e.inserted, e.deleted] != [0; 4] {
        return;
    }
    let sum = |g: fn(&OpOutcome) -> u64| r.ops.iter().map(g).sum::<u64>() as i64;
    e.matched = sum(|o| o.matched);
    e.modified = sum(|o| o.modified);
    e.inserted = sum(|o| o.inserted);
    e.deleted = sum(|o| o.deleted);
    if e.note.is_none() && !r.ops.is_empty() {
        e.note = Some(format!(
            "counts of the {} operation(s) it had started, as far as they are known",
            r.ops.len()
        ));
    }
}

/// Options of `changes up`.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Apply pending changes up to this version (included).
    pub to: Option<u64>,
    /// Report what each operation would do; write nothing.
    pub dry_run: bool,
    /// Apply pending changes older than the newest applied one.
    pub allow_out_of_order: bool,
    /// Go on with the next change after a failed one (itself undone) instead of stopping.
    pub continue_on_error: bool,
}

/// One change `up` applied (or would apply).
#[derive(Debug, Clone, Serialize)]
pub struct AppliedChange {
    pub version: u64,
    pub name: String,
    pub status: String,
    pub duration_ms: u64,
    pub matched: u64,
    pub modified: u64,
    pub inserted: u64,
    pub deleted: u64,
    pub error: Option<String>,
    /// `--dry-run`: what each operation would do.
    pub preview: Vec<Preview>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub batch: Option<i64>,
    pub dry_run: bool,
    pub changes: Vec<AppliedChange>,
    /// Changes left half done in a transaction by a process that died, recorded as found
    /// before the batch.
    pub recovered: Vec<Recovered>,
    /// Pending changes not begun because the process is stopping (a server's SIGTERM): they
    /// stay pending for the next `up`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_pending: Vec<u64>,
}

/// A change a dead process left half done, and what the command that found it did.
#[derive(Debug, Clone, Serialize)]
pub struct Recovered {
    pub version: u64,
    pub name: String,
    /// The state it is recorded in now.
    pub status: String,
    pub note: String,
}

impl UpReport {
    pub fn failed(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.status == FAILED || c.status == RESTORE_FAILED || c.status == "would fail")
    }
}

/// A change recorded on collections that a restore from an earlier backup would put back.
#[derive(Debug, Clone)]
pub struct ChangeOnCollections {
    pub version: u64,
    pub file: String,
    pub status: String,
    /// The restored collections it wrote.
    pub collections: Vec<String>,
    /// Applied (`true`) or reversed (`false`) since.
    pub applied: bool,
    /// It runs a command: which collections it wrote is not known (`collections` are all).
    pub uncertain: bool,
}

/// The changes applied — or reversed — at or after `since_millis` that wrote any of
/// `collections` (applied, half applied or half reversed, or rolled back since), oldest first:
/// restoring those collections from a backup taken before would undo what they did (or bring
/// back what their reversal took away) while the ledger says otherwise.
pub async fn changes_since(
    ledger: &Ledger,
    collections: &std::collections::BTreeSet<String>,
    since_millis: i64,
) -> Result<Vec<ChangeOnCollections>, ChangesError> {
    let mut out = Vec::new();
    for r in (Records { ledger }).all().await? {
        let reversed_since = r.status == ROLLED_BACK
            && r.applied_millis < since_millis
            && r.rolled_back_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.timestamp_millis() >= since_millis);
        let applied_since =
            r.applied_millis >= since_millis && r.status != ROLLED_BACK && r.status != FAILED;
        if !(applied_since || reversed_since) {
            continue;
        }
        let c = file::parse_recorded(&r.file, &r.source, &r.seeds)?;
        let theirs = touched(&c);
        let both: Vec<String> = match &theirs {
            Some(t) => t.intersection(collections).cloned().collect(),
            None => collections.iter().cloned().collect(),
        };
        if !both.is_empty() {
            out.push(ChangeOnCollections {
                version: r.version,
                file: r.file,
                status: r.status,
                collections: both,
                applied: applied_since,
                uncertain: theirs.is_none(),
            });
        }
    }
    Ok(out)
}

/// Refuses changes that write a collection whose last migrate step did not settle: one being
/// rolled back (a cut-short rollback whose end will restore over the change), or one a run
/// stopped writing half way (its resume would mix with the change).
async fn refuse_unsettled_collections(
    t: &ChangeTarget<'_>,
    pending: &[&Change],
) -> Result<(), ChangesError> {
    refuse_unsettled_in(t.ledger, pending, Some(t.db.name())).await
}

/// Refuses (dry run too) a change with an operation on a collection the target does not hold
/// and no operation before it creates: it would match nothing and be recorded as applied — a
/// typo (`custmers`) or an unedited template (adv42 F2).
async fn refuse_missing_collections(
    t: &ChangeTarget<'_>,
    pending: &[&Change],
) -> Result<(), ChangesError> {
    let mut present: HashSet<String> =
        t.db.list_collection_names()
            .await
            .map_err(|e| ChangesError::Mongo(e.into()))?
            .into_iter()
            .collect();
    for c in pending {
        for (i, op) in c.up.iter().enumerate() {
            if let Some(name) = op.needs_collection()
                && !present.contains(name)
            {
                return Err(ChangesError::Refused(format!(
                    "change {} ({}), operation {} ({}): the target's database `{}` has no collection `{name}` — a typo, or one not written yet (create it first with `create_collection`, or apply the change after the run that writes it); nothing was changed",
                    c.version,
                    c.file_name(),
                    i + 1,
                    op.kind(),
                    t.db.name(),
                )));
            }
            present.extend(op.may_create().into_iter().map(str::to_string));
            if let file::Op::DropCollection { collection } = op {
                present.remove(collection);
            }
        }
    }
    Ok(())
}

/// [`refuse_unsettled_collections`] from the ledger alone (whatever the target); `database` is
/// the MongoDB database the changes are applied to (a command may name it).
async fn refuse_unsettled_in(
    ledger: &Ledger,
    pending: &[&Change],
    database: Option<&str>,
) -> Result<(), ChangesError> {
    let t = &LedgerOnly { ledger };
    // The ledger's own collections (runs, steps, the lock, changes, backups) are never a
    // change's: dropping or rewriting them loses how to undo what was applied.
    let prefix = t.ledger.prefix().to_lowercase();
    for c in pending {
        let ops: Vec<&file::Op> = c.up.iter().chain(c.down.iter().flatten()).collect();
        // A command names its collection with its first value (`{ drop = "x" }`), and an
        // aggregation's `$out` / `$merge` (a mapReduce's `out`) the one it writes (adv22 F5).
        let mut commanded: Vec<String> = Vec::new();
        let mut foreign = None;
        for op in &ops {
            let file::Op::Command { command, down } = op else {
                continue;
            };
            for d in [Some(command), down.as_ref()].into_iter().flatten() {
                if let Some(name) = file::database_wide(d) {
                    return Err(ChangesError::Refused(format!(
                        "change {} ({}) runs `{name}`, which acts on the whole database or the server (cutover's ledger, which records how to undo what was applied, and other databases included): a change may not run it; name the collections it works on with their own commands",
                        c.version,
                        c.file_name()
                    )));
                }
                if let Some(first) = d.iter().next().and_then(|(_, v)| v.as_str())
                    && !file::reads_only_its_collection(d)
                {
                    commanded.push(first.to_string());
                }
                let outputs = file::command_outputs(d);
                // Naming its own database is as naming none (adv27 N2).
                if let Some(db) = outputs
                    .databases
                    .iter()
                    .find(|db| Some(db.as_str()) != database)
                    && foreign.is_none()
                {
                    foreign = Some(ChangesError::Refused(format!(
                        "change {} ({}) runs a command writing into the database `{db}`: a change writes only the database it is applied to{} (drop `db` from its `$out` / `$merge`, or name that database)",
                        c.version,
                        c.file_name(),
                        database.map(|d| format!(", `{d}`")).unwrap_or_default()
                    )));
                }
                commanded.extend(outputs.collections);
            }
        }
        let named = ops
            .iter()
            .filter_map(|op| op.collections())
            .flatten()
            .map(str::to_string);
        let read = ops.iter().flat_map(|op| op.collections_read());
        for name in named.chain(read).chain(commanded) {
            let lower = name.to_lowercase();
            if (!prefix.is_empty() && lower.starts_with(&prefix)) || lower.contains("__backup__") {
                return Err(ChangesError::Refused(format!(
                    "change {} ({}) names `{name}`, a collection of cutover's ledger or a backup: a change may neither read nor write them (they record how to undo what was applied, and who holds the lock)",
                    c.version,
                    c.file_name()
                )));
            }
        }
        if let Some(e) = foreign {
            return Err(e);
        }
    }
    let steps = t
        .ledger
        .all_steps()
        .await
        .map_err(|e| ChangesError::Refused(e.to_string()))?;
    let undone = crate::ledger::undone(&steps);
    let mut last: BTreeMap<&str, &crate::ledger::StepRecord> = BTreeMap::new();
    for s in steps.iter().filter(|s| !undone.contains(&s.id)) {
        last.insert(&s.entity, s);
    }
    let mut refusals = Vec::new();
    for s in last.values() {
        let why = if s.status == crate::ledger::ROLLING_BACK {
            "is being rolled back (a rollback was cut short); finish it with `cutover rollback` first"
        } else if crate::ledger::unfinished(&s.status) {
            "was left half written by a run that stopped; finish it with `cutover migrate` (or roll it back) first"
        } else {
            continue;
        };
        // A MongoDB collection, or an Appwrite stage's tables (its own and its child tables).
        let names: Vec<&String> = match &s.destination {
            crate::sink::target::Destination::Collection { name } => vec![name],
            crate::sink::target::Destination::Tables { names } => names.iter().collect(),
            crate::sink::target::Destination::Storage { tables, .. } => tables.iter().collect(),
            _ => continue,
        };
        for c in pending {
            let Some(name) = names.iter().find(|n| match touched(c) {
                Some(cols) => cols.contains(n.as_str()),
                None => true,
            }) else {
                continue;
            };
            refusals.push(format!(
                "change {} ({}) writes {name}, which {why} (entity {}, run {})",
                c.version,
                c.path.display(),
                s.entity,
                s.run_id
            ));
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(ChangesError::Refused(refusals.join("\n")))
    }
}

/// Refuses, naming them, the operations of `pending` written for the other kind of target: an
/// Appwrite operation (one naming a `table`) on MongoDB, or a MongoDB one on Appwrite.
fn refuse_other_target(pending: &[&Change], appwrite: bool) -> Result<(), ChangesError> {
    let mut refusals = Vec::new();
    for c in pending {
        let sides = [("up", Some(&c.up)), ("down", c.down.as_ref())];
        for (side, ops) in sides {
            for (i, op) in ops.into_iter().flatten().enumerate() {
                let theirs = matches!(op, Op::Appwrite(_));
                if theirs == appwrite {
                    continue;
                }
                let (on, target, other, article) = if appwrite {
                    ("collection", "Appwrite", "MongoDB", "a")
                } else {
                    ("table", "MongoDB", "Appwrite", "an")
                };
                refusals.push(format!(
                    "change {} ({}): {side} operation {} (`{}` on {on} {}) is {article} {other} operation and the target is {target}: run it with `--target {}`, or write it with the {target} operations (pipelines/changes/README.md)",
                    c.version,
                    c.file_name(),
                    i + 1,
                    op.kind(),
                    op.collection().unwrap_or("-"),
                    other.to_lowercase()
                ));
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(ChangesError::Refused(refusals.join("\n")))
    }
}

/// A lock run id for one `changes` invocation.
fn new_run_id() -> String {
    format!(
        "changes-{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        fastrand::u16(..)
    )
}

/// The pending changes `up` would apply, or why it refuses.
fn select_pending<'c>(
    states: &[ChangeStatus],
    files: &'c [Change],
    opts: &UpOptions,
) -> Result<Vec<&'c Change>, ChangesError> {
    let mut refusals = Vec::new();
    for s in states {
        // A change that cannot be read as it is (its seed file gone) is not applied from it.
        let unreadable = files
            .iter()
            .find(|c| c.version == s.version)
            .and_then(|c| c.unreadable.as_deref());
        if let Some(why) = unreadable
            && matches!(s.state.as_str(), "pending" | "out-of-order")
            && opts.to.is_none_or(|t| s.version <= t)
        {
            refusals.push(format!(
                "change {} ({}) cannot be applied: {why}",
                s.version,
                s.file.as_deref().unwrap_or("?")
            ));
            continue;
        }
        match s.state.as_str() {
            "modified" => refusals.push(format!(
                "change {} ({}) was modified since it was applied (its checksum differs): put the file back as it was applied, or write the new edit as a new change with `cutover changes new`",
                s.version,
                s.file.as_deref().unwrap_or("?")
            )),
            "interrupted" | "down-interrupted" | "down-failed" => refusals.push(format!(
                "change {} ({}) is {}: {}",
                s.version,
                s.file.as_deref().unwrap_or("?"),
                s.state,
                s.hint.as_deref().unwrap_or("")
            )),
            "reversing" => refusals.push(format!(
                "change {} is being reversed by another cutover right now",
                s.version
            )),
            "restore-failed" => refusals.push(format!(
                "change {} ({}) failed and undoing it failed too: fix the cause (`cutover changes status --json` shows the error), then `cutover changes down` finishes undoing it from its backup",
                s.version,
                s.file.as_deref().unwrap_or("?")
            )),
            "running" => refusals.push(format!(
                "change {} is being applied by another cutover right now",
                s.version
            )),
            "out-of-order" if !opts.allow_out_of_order && opts.to.is_none_or(|t| s.version <= t) => {
                let newest = states
                    .iter()
                    .filter(|n| matches!(n.state.as_str(), "applied" | "modified" | "missing"))
                    .map(|n| n.version)
                    .max()
                    .unwrap_or(0);
                if s.applied_at.is_some() {
                    // Applied once, then reversed alone (`down VERSION`): the same change again.
                    refusals.push(format!(
                        "change {} ({}) was reversed alone while change {newest}, applied after it, stays applied: applying it again now is out of order — apply it anyway with `cutover changes up --allow-out-of-order`, or reverse the changes after it first (`cutover changes down --to {}`)",
                        s.version,
                        s.file.as_deref().unwrap_or("?"),
                        s.version
                    ));
                } else {
                    refusals.push(format!(
                        "change {} ({}) is older than change {newest}, applied already (out of order): give it a version after {newest} (rename the file and its `version`), or apply it anyway with `cutover changes up --allow-out-of-order`",
                        s.version,
                        s.file.as_deref().unwrap_or("?")
                    ));
                }
            }
            _ => {}
        }
    }
    if !refusals.is_empty() {
        return Err(ChangesError::Refused(refusals.join("\n")));
    }
    Ok(states
        .iter()
        .filter(|s| s.is_pending() && opts.to.is_none_or(|t| s.version <= t))
        .filter_map(|s| files.iter().find(|c| c.version == s.version))
        .collect())
}

/// `changes up`: applies pending changes in version order under the target's lock, one batch
/// number for the invocation; a failed change is undone (its transaction aborted, or its backup
/// restored) and stops the batch unless `continue_on_error`. With `dry_run`, only reads.
pub async fn up(
    t: &ChangeTarget<'_>,
    files: &[Change],
    opts: &UpOptions,
) -> Result<UpReport, ChangesError> {
    if opts.dry_run {
        let states = status(t, files).await?;
        let pending = select_pending(&states, files, opts)?;
        refuse_other_target(&pending, false)?;
        refuse_unsettled_collections(t, &pending).await?;
        refuse_missing_collections(t, &pending).await?;
        return preview_all(t, &pending).await;
    }
    // The state is read under the lock: another `changes up` may have applied changes until
    // the moment it gave the lock back.
    let run_id = new_run_id();
    let lock = t
        .ledger
        .acquire_lock(&run_id, "changes up", DEFAULT_TTL)
        .await?;
    let result = async {
        let recovered = settle_transactions(t, &run_id).await?;
        sweep_backups(t).await?;
        let states = status(t, files).await?;
        let pending = select_pending(&states, files, opts)?;
        refuse_other_target(&pending, false)?;
        refuse_unsettled_collections(t, &pending).await?;
        refuse_missing_collections(t, &pending).await?;
        if pending.is_empty() {
            return Ok(UpReport {
                batch: None,
                dry_run: false,
                changes: Vec::new(),
                recovered,
                left_pending: Vec::new(),
            });
        }
        let mut report =
            apply_all(t, &pending, &run_id, &lock.fence(), opts.continue_on_error).await?;
        report.recovered = recovered;
        Ok(report)
    }
    .await;
    lock.release()
        .await
        .map_err(|e| ChangesError::Refused(e.to_string()))?;
    result
}

async fn preview_all(t: &ChangeTarget<'_>, pending: &[&Change]) -> Result<UpReport, ChangesError> {
    let exec = Exec {
        db: t.db,
        backup: "",
        activity: t.activity,
        fence: None,
    };
    let mut changes = Vec::new();
    for c in pending {
        let mut preview = Vec::new();
        for op in &c.up {
            preview.push(exec.preview(op).await?);
        }
        let (status, error) = ops::preview_status(&mut preview);
        changes.push(AppliedChange {
            version: c.version,
            name: c.name.clone(),
            status: status.into(),
            duration_ms: 0,
            matched: 0,
            modified: 0,
            inserted: 0,
            deleted: 0,
            error,
            preview,
        });
    }
    Ok(UpReport {
        batch: None,
        dry_run: true,
        changes,
        recovered: Vec::new(),
        left_pending: Vec::new(),
    })
}

async fn apply_all(
    t: &ChangeTarget<'_>,
    pending: &[&Change],
    run_id: &str,
    fence: &crate::ledger::lock::Fence,
    continue_on_error: bool,
) -> Result<UpReport, ChangesError> {
    let records = Records { ledger: t.ledger };
    let (batch, changes, left_pending) = apply_batch(
        t.ledger,
        pending,
        run_id,
        fence,
        continue_on_error,
        |c| records.backup_name(c.version, run_id),
        |c, backup| {
            let records = Records { ledger: t.ledger };
            async move {
                let exec = Exec {
                    db: t.db,
                    backup: &backup,
                    activity: t.activity,
                    fence: Some(fence),
                };
                apply_one(&exec, &records, c).await
            }
        },
    )
    .await?;
    Ok(UpReport {
        batch: Some(batch),
        dry_run: false,
        changes,
        recovered: Vec::new(),
        left_pending,
    })
}

/// What applying one change gave: its outcomes, or what was left recorded (outcomes only when
/// undoing it failed too) and why it failed.
pub(crate) type Applied = Result<Vec<OpOutcome>, (Vec<OpOutcome>, String)>;

/// Applies `pending` as one batch, whatever the target: `apply` runs one change with the name of
/// its backup (`backup_of`). Around each: a stop asked for (a server's SIGTERM) leaves the rest
/// pending; the history line and the record are written first (a process killed meanwhile leaves
/// the change `running`, i.e. interrupted); a lost lock leaves the record for whoever holds the
/// lock now; the outcome is recorded and logged. A failure stops the batch unless
/// `continue_on_error`; a failure whose undoing failed too stops it always. Returns the batch
/// number and each change's outcome.
pub(crate) async fn apply_batch<'a, F, Fut>(
    ledger: &Ledger,
    pending: &[&'a Change],
    run_id: &str,
    fence: &crate::ledger::lock::Fence,
    continue_on_error: bool,
    backup_of: impl Fn(&Change) -> String,
    mut apply: F,
) -> Result<(i64, Vec<AppliedChange>, Vec<u64>), ChangesError>
where
    F: FnMut(&'a Change, String) -> Fut,
    Fut: std::future::Future<Output = Applied>,
{
    let records = Records { ledger };
    let batch = records.next_batch().await?;
    let mut changes = Vec::new();
    let mut left = Vec::new();
    for (i, &c) in pending.iter().enumerate() {
        if crate::ledger::lock::changes_stop_requested() {
            // The process is stopping (a server's SIGTERM): the change under way finished; the
            // others stay pending for the next `up`.
            tracing::warn!(
                version = c.version,
                "stopping: the changes from this one on stay pending"
            );
            left = pending[i..].iter().map(|c| c.version).collect();
            break;
        }
        fence
            .check()
            .await
            .map_err(|e| ChangesError::Refused(e.to_string()))?;
        let backup = backup_of(c);
        // The history line first: a process killed between the two writes leaves a change
        // recorded `running` (interrupted) only with its line (`history` says interrupted).
        let mut line = HistoryEntry::new("up", c.version, &c.name, RUNNING, run_id);
        line.batch = Some(batch);
        records.log(&line).await?;
        records.start(c, batch, &backup, run_id).await?;
        let started = Instant::now();
        let result = apply(c, backup).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        // Lost the lock meanwhile (an operator released it, or it expired): the record is left
        // as it is (`running`: status says interrupted) for whoever holds the lock now.
        if let Err(e) = fence.check().await {
            // Its own history line (keyed by this run) says so — the record is the new holder's
            // to finish, so it is left as it is.
            line.status = INTERRUPTED.to_string();
            line.duration_ms = duration_ms as i64;
            line.error = Some(e.reason());
            if let Err(log) = records.log(&line).await {
                tracing::warn!(version = c.version, error = %log, "could not note in the history why the change stopped");
            }
            return Err(ChangesError::Refused(format!(
                "change {} ({}): {}; it stopped writing and is left interrupted: `cutover changes status` says what was done, `cutover changes down` (once the lock is free) undoes it",
                c.version,
                c.file_name(),
                e.reason()
            )));
        }
        // A failure leaves outcomes only when undoing it failed too.
        let (status, outcomes, error) = match result {
            Ok(o) => (APPLIED, o, None),
            Err((o, e)) if o.is_empty() => (FAILED, o, Some(e)),
            Err((o, e)) => (RESTORE_FAILED, o, Some(e)),
        };
        records
            .finish(
                c.version,
                &Finished {
                    status,
                    duration_ms,
                    ops: &outcomes,
                    error: error.clone(),
                },
            )
            .await?;
        let sum = |g: fn(&OpOutcome) -> u64| outcomes.iter().map(g).sum::<u64>();
        line.status = status.to_string();
        line.duration_ms = duration_ms as i64;
        line.matched = sum(|o| o.matched) as i64;
        line.modified = sum(|o| o.modified) as i64;
        line.inserted = sum(|o| o.inserted) as i64;
        line.deleted = sum(|o| o.deleted) as i64;
        line.error = error.clone();
        records.log(&line).await?;
        changes.push(AppliedChange {
            version: c.version,
            name: c.name.clone(),
            status: status.to_string(),
            duration_ms,
            matched: sum(|o| o.matched),
            modified: sum(|o| o.modified),
            inserted: sum(|o| o.inserted),
            deleted: sum(|o| o.deleted),
            error,
            preview: Vec::new(),
        });
        if status == RESTORE_FAILED || (status == FAILED && !continue_on_error) {
            break;
        }
    }
    Ok((batch, changes, left))
}

/// For each insert (and archive): whether the collection it inserts into is missing before the
/// change (its inverse drops it again once empty). Read before a transaction starts
/// (`listCollections` cannot run in one).
async fn inserts_creating(exec: &Exec<'_>, ops: &[Op]) -> Result<Vec<bool>, OpError> {
    let mut known: BTreeMap<String, bool> = BTreeMap::new();
    let mut out = Vec::new();
    for op in ops {
        let (Op::Insert { collection, .. } | Op::Archive { to: collection, .. }) = op else {
            out.push(false);
            continue;
        };
        let existed = match known.get(collection) {
            Some(e) => *e,
            None => exec.collection_exists(collection).await?,
        };
        known.insert(collection.clone(), true);
        out.push(!existed);
    }
    Ok(out)
}

/// A failure inside a transaction, with what to do when the server gave up on the transaction
/// itself (too many documents, too long): MongoDB says "Please retry", which fails the same way.
fn in_transaction(message: String) -> String {
    let limits = [
        "WriteConflict",
        "TransactionTooLarge",
        "TransactionExceededLifetimeLimitSeconds",
        "ExceededTimeLimit",
        "NoSuchTransaction",
    ];
    if limits.iter().any(|l| message.contains(l)) {
        format!(
            "{message} — the transaction hit the server's size or time limit (transactionLifetimeLimitSeconds, 60 s by default; writes held in one transaction): retrying fails the same way; set `transaction = false` (the change is then undone from its backup on failure) or split it into smaller changes"
        )
    } else {
        message
    }
}

fn op_error(i: usize, op: &Op, e: impl std::fmt::Display) -> String {
    match op.collection() {
        Some(c) => format!(
            "up operation {} (`{}` on {c}) failed: {e}",
            i + 1,
            op.kind()
        ),
        None => format!("up operation {} (`{}`) failed: {e}", i + 1, op.kind()),
    }
}

/// Applies one change; on failure returns what was left recorded and why.
///
/// In a transaction, a marker committed with it ([`COMMITTED`], holding what each operation did)
/// tells whoever finds the change interrupted whether it committed. Without one, what undoing
/// each operation needs is recorded in the ledger before the operation writes (after its checks,
/// [`Exec::prepare`]), so a process that dies at any point leaves `down` what it needs to undo
/// the operations that started.
async fn apply_one(
    exec: &Exec<'_>,
    records: &Records<'_>,
    c: &Change,
) -> Result<Vec<OpOutcome>, (Vec<OpOutcome>, String)> {
    let creating = inserts_creating(exec, &c.up)
        .await
        .map_err(|e| (Vec::new(), e.to_string()))?;
    let fresh = |i: usize| OpOutcome {
        created_collection: creating[i],
        ..Default::default()
    };
    if c.transaction {
        let mut session = exec
            .db
            .client()
            .start_session()
            .await
            .map_err(|e| (Vec::new(), format!("cannot start a session: {e}")))?;
        records
            .update(c.version, doc! { "session": session.id().clone() })
            .await
            .map_err(|e| (Vec::new(), format!("ledger: {e}")))?;
        session
            .start_transaction()
            .await
            .map_err(|e| (Vec::new(), format!("cannot start a transaction: {e}")))?;
        let mut outcomes = Vec::new();
        let mut failure = None;
        {
            let mut sess: Option<&mut ClientSession> = Some(&mut session);
            for (i, op) in c.up.iter().enumerate() {
                let mut out = fresh(i);
                let mut result = exec.prepare(&mut sess, op, &mut out).await;
                if result.is_ok() {
                    result = exec.run(&mut sess, op, i, &mut out).await;
                }
                if let Err(e) = result {
                    failure = Some(in_transaction(op_error(i, op, e)));
                    break;
                }
                outcomes.push(out);
            }
            if failure.is_none() {
                let ops: Vec<bson::Bson> = outcomes.iter().map(|o| o.to_doc().into()).collect();
                if let Err(e) = exec
                    .put_marker(&mut sess, COMMITTED, doc! { "ops": ops })
                    .await
                {
                    failure = Some(format!("keeping the commit marker: {e}"));
                }
            }
        }
        let failure = match failure {
            None => match session.commit_transaction().await {
                Ok(()) => return Ok(outcomes),
                Err(e) => {
                    in_transaction(format!("the transaction did not commit: {}", ops_text(&e)))
                }
            },
            Some(f) => {
                let _ = session.abort_transaction().await;
                f
            }
        };
        let _ = exec.drop_backup().await;
        return Err((
            Vec::new(),
            format!("{failure}; the transaction was rolled back: nothing was written"),
        ));
    }
    let mut outcomes: Vec<OpOutcome> = Vec::new();
    let mut none: Option<&mut ClientSession> = None;
    for (i, op) in c.up.iter().enumerate() {
        let mut out = fresh(i);
        let mut result = exec.prepare(&mut none, op, &mut out).await;
        if result.is_ok() {
            outcomes.push(out);
            result = match records.progress(c.version, &outcomes).await {
                Ok(()) => {
                    let out = outcomes.last_mut().expect("pushed above");
                    exec.run(&mut none, op, i, out).await
                }
                Err(e) => {
                    outcomes.pop();
                    Err(OpError::Refused(format!("ledger: {e}")))
                }
            };
        }
        if let Err(e) = result {
            let why = op_error(i, op, e);
            // A `command` is one command of the server's: failed, it changed nothing, and it has
            // nothing to undo — its `down` would fail the same way, leave the change
            // `restore-failed` and fail every `down` after (the outside tester's adv20 F3).
            if matches!(op, file::Op::Command { .. }) && outcomes.len() == i + 1 {
                outcomes.pop();
            }
            // Undo what ran, the failed operation's part included (one refused by its checks
            // wrote nothing), newest first.
            // An operation that cannot be undone does not keep the earlier ones from being undone
            // (each puts back only what is still as it wrote it); the first error is kept.
            let mut created = Vec::new();
            let mut restore_error = None;
            for j in (0..outcomes.len()).rev() {
                if let Err(e) = exec
                    .undo(&mut none, &c.up[j], j, &outcomes[j], true, &mut created)
                    .await
                {
                    restore_error.get_or_insert(format!("undoing up operation {}: {e}", j + 1));
                }
            }
            return Err(match restore_error {
                None => {
                    let _ = exec.drop_created(&created).await;
                    let _ = exec.drop_backup().await;
                    (
                        Vec::new(),
                        format!(
                            "{why}; the operations before it were undone and the documents restored from the backup"
                        ),
                    )
                }
                Some(r) => (
                    outcomes,
                    format!(
                        "{why}; restoring failed too ({r}): the documents as they were are in {}",
                        exec.backup
                    ),
                ),
            });
        }
    }
    Ok(outcomes)
}

fn ops_text(e: &mongodb::error::Error) -> String {
    crate::sink::mongodb::error_text(e)
}

/// Which applied changes `down` reverses.
#[derive(Debug, Clone, Copy)]
pub enum DownTarget {
    /// The last N applied, newest first.
    Steps(usize),
    /// Every applied change after this version.
    To(u64),
    /// This one applied change, when no change applied after it works on the same collections.
    Version(u64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Reversed {
    pub version: u64,
    pub name: String,
    pub duration_ms: u64,
    /// Documents put back from the backup (rewritten as they were).
    pub restored: u64,
    /// Documents inserted again (removed by the change: deleted duplicates, archived or
    /// dropped documents).
    pub inserted: u64,
    pub deleted: u64,
    /// Documents left alone because they changed since the change was applied.
    pub skipped: u64,
    /// Set when this `down` finished a change that a dead process (or a failed `down`) left
    /// half done: what it found.
    pub note: Option<String>,
}

/// A change `down --continue-on-error` did not reverse, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotReversed {
    pub version: u64,
    pub name: String,
    pub error: String,
}

/// What `down` did: the changes reversed (in the order reversed), and, when told to go on past
/// a failure, those whose reversal failed and those left applied because a failed one, applied
/// after them, works on the same collections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub reversed: Vec<Reversed>,
    pub failed: Vec<NotReversed>,
    pub blocked: Vec<NotReversed>,
}

/// `changes down`: reverses applied changes, the last applied first, each from the text the
/// ledger recorded when it was applied (so a file edited since does not change what is undone).
/// Stops at the first failure.
pub async fn down(t: &ChangeTarget<'_>, which: DownTarget) -> Result<Vec<Reversed>, ChangesError> {
    Ok(down_with(t, which, false).await?.reversed)
}

/// `down`, and with `continue_on_error` a failed reversal does not stop it: the older changes
/// chosen are still reversed unless they work on a collection of a change that failed (which
/// stays as the failure left it: recorded `down-failed`, or still applied when its transaction
/// was rolled back; the next `down` finishes it first).
pub async fn down_with(
    t: &ChangeTarget<'_>,
    which: DownTarget,
    continue_on_error: bool,
) -> Result<DownReport, ChangesError> {
    let run_id = new_run_id();
    let lock = t
        .ledger
        .acquire_lock(&run_id, "changes down", DEFAULT_TTL)
        .await?;
    let result = down_locked(t, which, &lock.fence(), &run_id, continue_on_error).await;
    lock.release()
        .await
        .map_err(|e| ChangesError::Refused(e.to_string()))?;
    result
}

/// What `down` would reverse now, newest first, with the same choice and refusals (a
/// non-reversible change, one that cannot be reversed alone); writes nothing and takes no lock
/// (the dry run of `cutover serve`'s `POST /api/migrations/down`).
pub async fn down_preview(
    t: &ChangeTarget<'_>,
    which: DownTarget,
) -> Result<Vec<ChangeRecord>, ChangesError> {
    down_preview_in(t.ledger, which).await
}

/// [`down_preview`] from the ledger alone (whatever the target).
pub async fn down_preview_in(
    ledger: &Ledger,
    which: DownTarget,
) -> Result<Vec<ChangeRecord>, ChangesError> {
    let all = Records { ledger }.all().await?;
    // As `down` does: a change left half done is finished first, and alone.
    let mut unfinished: Vec<ChangeRecord> = all
        .iter()
        .filter(|r| [RUNNING, REVERSING, RESTORE_FAILED].contains(&r.status.as_str()))
        .cloned()
        .collect();
    if !unfinished.is_empty() {
        unfinished.reverse();
        if let DownTarget::Version(v) = which
            && unfinished.iter().all(|r| r.version != v)
        {
            return Err(unfinished_first(&unfinished));
        }
        return Ok(unfinished);
    }
    Ok(chosen_for_down(all, which)?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// The refusal of `down VERSION` while other changes are left half done.
fn unfinished_first(unfinished: &[impl std::borrow::Borrow<ChangeRecord>]) -> ChangesError {
    let names: Vec<String> = unfinished
        .iter()
        .map(|r| {
            let r = r.borrow();
            format!("{} ({})", r.version, r.file)
        })
        .collect();
    ChangesError::Refused(format!(
        "change {} was left half done (its process died, or undoing or reversing it failed): run `cutover changes down` to finish it first; nothing was reversed",
        names.join(", ")
    ))
}

/// Which applied records `down` reverses, each with its change parsed from the text applied;
/// refuses (before anything is reversed) when one is non-reversible.
fn chosen_for_down(
    records: Vec<ChangeRecord>,
    which: DownTarget,
) -> Result<Vec<(ChangeRecord, Change)>, ChangesError> {
    // The newest record of each version says what became of it.
    let last_state = |v: u64| {
        records
            .iter()
            .rev()
            .find(|r| r.version == v)
            .map(|r| r.status.clone())
    };
    let asked_state = match which {
        DownTarget::Version(v) => Some((v, last_state(v))),
        _ => None,
    };
    let mut applied: Vec<ChangeRecord> = records
        .into_iter()
        .filter(|r| r.status == APPLIED)
        .collect();
    applied.reverse();
    let chosen: Vec<ChangeRecord> = match which {
        DownTarget::Steps(n) => applied.into_iter().take(n).collect(),
        DownTarget::To(v) => {
            // Out of order (`--allow-out-of-order`), a change kept (version ≤ v) may have been
            // applied after one reversed: reversing that one would put back an image the kept
            // change wrote over (adv40 F5: every change rolled back, the data still changed).
            // Refused when they work on the same collections, as `down VERSION` is.
            let mut blocking = Vec::new();
            for (at, this) in applied.iter().enumerate().filter(|(_, r)| r.version > v) {
                let theirs = touched(&file::parse_recorded(
                    &this.file,
                    &this.source,
                    &this.seeds,
                )?);
                for later in applied[..at].iter().filter(|r| r.version <= v) {
                    let c = file::parse_recorded(&later.file, &later.source, &later.seeds)?;
                    let both = overlap(&theirs, &touched(&c));
                    if !both.is_empty() {
                        blocking.push(format!(
                            "{} (applied after {}, out of order; {})",
                            later.version,
                            this.version,
                            both.join(", ")
                        ));
                    }
                }
            }
            if !blocking.is_empty() {
                return Err(ChangesError::Refused(format!(
                    "down --to {v} would reverse changes that changes it keeps applied were applied after, on the same collections — {}; nothing was reversed. Reverse those too (`cutover changes down --to` a version below them, or `--steps`, which follows the order they were applied in)",
                    blocking.join("; ")
                )));
            }
            applied.into_iter().filter(|r| r.version > v).collect()
        }
        DownTarget::Version(v) => {
            let Some(at) = applied.iter().position(|r| r.version == v) else {
                return Err(match asked_state {
                    Some((_, Some(state))) => ChangesError::Refused(format!(
                        "change {v} is {state}, not applied: nothing to reverse"
                    )),
                    _ => ChangesError::NotFound(format!(
                        "change {v} was never applied to this target: nothing to reverse"
                    )),
                });
            };
            let this = &applied[at];
            let theirs = touched(&file::parse_recorded(
                &this.file,
                &this.source,
                &this.seeds,
            )?);
            let mut blocking = Vec::new();
            // `applied` is newest first: those before `at` were applied after it.
            for later in &applied[..at] {
                let c = file::parse_recorded(&later.file, &later.source, &later.seeds)?;
                let both = overlap(&theirs, &touched(&c));
                if !both.is_empty() {
                    blocking.push(format!(
                        "{} ({}: {})",
                        later.version,
                        later.file,
                        both.join(", ")
                    ));
                }
            }
            if !blocking.is_empty() {
                return Err(ChangesError::Refused(format!(
                    "change {v} cannot be reversed alone: changes applied after it work on the same collections — {}; reverse those first",
                    blocking.join("; ")
                )));
            }
            vec![applied.swap_remove(at)]
        }
    };
    let mut out = Vec::new();
    for r in chosen {
        let c = file::parse_recorded(&r.file, &r.source, &r.seeds)?;
        if let Some((i, op)) = c.irreversible_op() {
            return Err(ChangesError::Refused(format!(
                "change {} ({}) is non-reversible: up operation {i} (`{}`) has no inverse and the change had no [[down]] when it was applied; nothing was reversed. Reverse only the changes applied after it (`cutover changes down --to {}`), then undo this one by hand, or write a new change that does",
                r.version,
                r.file,
                op.kind(),
                r.version
            )));
        }
        if c.down.is_none() && r.ops.len() != c.up.len() {
            return Err(ChangesError::Refused(format!(
                "the ledger record of change {} holds {} operation results for {} operations: it cannot be reversed safely",
                r.version,
                r.ops.len(),
                c.up.len()
            )));
        }
        out.push((r, c));
    }
    Ok(out)
}

/// The collections a change's operations work on; `None` for a command (it may touch anything).
fn touched(c: &Change) -> Option<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for op in c.up.iter().chain(c.down.iter().flatten()) {
        out.extend(op.collections()?.into_iter().map(str::to_string));
    }
    Some(out)
}

/// What two changes' collections share (`*` when either runs a command).
fn overlap(
    a: &Option<std::collections::BTreeSet<String>>,
    b: &Option<std::collections::BTreeSet<String>>,
) -> Vec<String> {
    match (a, b) {
        (Some(a), Some(b)) => a.intersection(b).cloned().collect(),
        (None, _) => {
            vec![
                "the change to reverse runs a command itself, which may touch any collection"
                    .to_string(),
            ]
        }
        (_, None) => vec!["a command, which may touch any collection".to_string()],
    }
}

async fn down_locked(
    t: &ChangeTarget<'_>,
    which: DownTarget,
    fence: &crate::ledger::lock::Fence,
    run_id: &str,
    continue_on_error: bool,
) -> Result<DownReport, ChangesError> {
    let records = Records { ledger: t.ledger };
    sweep_backups(t).await?;
    let all = records.all().await?;
    // Under the lock, a change still `running` or `reversing` was left so by a process that
    // died (or, reversing, by a `down` that failed): it is finished first, and alone.
    let mut unfinished: Vec<&ChangeRecord> = all
        .iter()
        .filter(|r| r.status == RUNNING || r.status == REVERSING || r.status == RESTORE_FAILED)
        .collect();
    if !unfinished.is_empty() {
        unfinished.reverse();
        if let DownTarget::Version(v) = which
            && unfinished.iter().all(|r| r.version != v)
        {
            return Err(unfinished_first(&unfinished));
        }
        let mut done = Vec::new();
        for r in unfinished {
            fence
                .check()
                .await
                .map_err(|e| ChangesError::Refused(e.to_string()))?;
            done.push(recover(t, &records, r, run_id).await?);
        }
        return Ok(DownReport {
            reversed: done,
            ..DownReport::default()
        });
    }
    let chosen = chosen_for_down(all, which)?;
    // A rollback cut short would restore over the reversal (or a stopped run mix with it).
    let changes: Vec<&Change> = chosen.iter().map(|(_, c)| c).collect();
    refuse_unsettled_collections(t, &changes).await?;
    let mut report = DownReport::default();
    // The collections of each change whose reversal failed, newest first.
    let mut failed: Vec<(u64, Option<std::collections::BTreeSet<String>>)> = Vec::new();
    for (r, c) in &chosen {
        fence
            .check()
            .await
            .map_err(|e| ChangesError::Refused(e.to_string()))?;
        let mine = touched(c);
        if let Some((v, both)) = failed.iter().find_map(|(v, theirs)| {
            let both = overlap(&mine, theirs);
            (!both.is_empty()).then_some((*v, both))
        }) {
            report.blocked.push(NotReversed {
                version: r.version,
                name: r.name.clone(),
                error: format!(
                    "left applied: change {v}, applied after it, failed to reverse and works on the same collections ({})",
                    both.join(", ")
                ),
            });
            continue;
        }
        match reverse_logged(
            t,
            &records,
            (r, c, &r.ops),
            DownRun::new(How::Applied, run_id, None),
        )
        .await
        {
            Ok(rev) => report.reversed.push(rev),
            Err(e) if continue_on_error => {
                failed.push((r.version, mine));
                report.failed.push(NotReversed {
                    version: r.version,
                    name: r.name.clone(),
                    error: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Finishes a change a dead process left `running` (its `up` is undone) or `reversing` (its
/// `down` is taken up where it stopped), and records it `rolled-back`.
async fn recover(
    t: &ChangeTarget<'_>,
    records: &Records<'_>,
    r: &ChangeRecord,
    run_id: &str,
) -> Result<Reversed, ChangesError> {
    let c = file::parse_recorded(&r.file, &r.source, &r.seeds)?;
    let backup = r.backup.clone().unwrap_or_default();
    let exec = Exec {
        db: t.db,
        backup: &backup,
        activity: t.activity,
        fence: None,
    };
    let dead = if r.status == RESTORE_FAILED {
        format!(
            "the up of run {} failed and undoing it failed too ({})",
            r.run_id,
            r.error.as_deref().unwrap_or("?")
        )
    } else if r.status == RUNNING {
        format!("the up of run {} stopped", r.run_id)
    } else {
        format!(
            "the down of run {} stopped",
            r.down_run_id.as_deref().unwrap_or("?")
        )
    };
    // A change applied in a transaction is never left restore-failed (its failure is rolled
    // back whole).
    if c.transaction && r.status != RESTORE_FAILED {
        // The dead process's transaction may still hold its locks until the server times it
        // out: it is aborted (unless it committed).
        let session = if r.status == RUNNING {
            &r.session
        } else {
            &r.down_session
        };
        kill_session(t.db, session.as_ref()).await;
        let marker = if r.status == RUNNING {
            COMMITTED
        } else {
            REVERSED
        };
        let found = exec.marker(marker).await?;
        match (r.status.as_str(), found) {
            (RUNNING, Some(m)) => {
                let ops: Vec<OpOutcome> = m
                    .get_array("ops")
                    .map(|a| {
                        a.iter()
                            .filter_map(bson::Bson::as_document)
                            .map(OpOutcome::from_doc)
                            .collect()
                    })
                    .unwrap_or_default();
                let note = format!("{dead} after its transaction committed: reversed whole");
                return reverse_logged(
                    t,
                    records,
                    (r, &c, &ops),
                    DownRun::new(How::Applied, run_id, Some(note)),
                )
                .await;
            }
            (RUNNING, None) => {
                let note = format!("{dead} before its transaction committed: nothing was written");
                return settle(records, r, &c, &exec, run_id, note).await;
            }
            (_, Some(_)) => {
                let note = format!("{dead} after its transaction committed: it was reversed");
                return settle(records, r, &c, &exec, run_id, note).await;
            }
            (_, None) => {
                let note =
                    format!("{dead} before its transaction committed: reversed again, whole");
                return reverse_logged(
                    t,
                    records,
                    (r, &c, &r.ops),
                    DownRun::new(How::Applied, run_id, Some(note)),
                )
                .await;
            }
        }
    }
    if r.status == RUNNING || r.status == RESTORE_FAILED {
        if let Some((i, op)) =
            c.up.iter()
                .take(r.ops.len())
                .enumerate()
                .find(|(_, op)| !op.has_inverse())
        {
            return Err(ChangesError::Refused(format!(
                "change {} ({}) was interrupted while it was applied, after up operation {} (`{}`), which has no inverse: it cannot be undone; its backup {backup} holds the documents it rewrote as they were",
                r.version,
                r.file,
                i + 1,
                op.kind()
            )));
        }
        let note = format!(
            "{dead} with {} of {} operations started: undone",
            r.ops.len(),
            c.up.len()
        );
        return reverse_logged(
            t,
            records,
            (r, &c, &r.ops),
            DownRun::new(How::Interrupted, run_id, Some(note)),
        )
        .await;
    }
    let note = match &r.down_error {
        Some(e) => format!(
            "the down of run {} failed ({e}): finished",
            r.down_run_id.as_deref().unwrap_or("?")
        ),
        None => format!("{dead}: finished"),
    };
    let how = if r.down_partial_up {
        How::ResumeInterrupted
    } else {
        How::Resume
    };
    reverse_logged(
        t,
        records,
        (r, &c, &r.ops),
        DownRun::new(how, run_id, Some(note)),
    )
    .await
}

/// Records as rolled back a change whose transaction left nothing to undo (it never committed,
/// or its `down`'s did).
async fn settle(
    records: &Records<'_>,
    r: &ChangeRecord,
    c: &Change,
    exec: &Exec<'_>,
    run_id: &str,
    note: String,
) -> Result<Reversed, ChangesError> {
    exec.drop_created(&created_collections(c, &r.ops)).await?;
    records.mark_rolled_back(r.version, 0).await?;
    exec.drop_backup().await?;
    let mut line = HistoryEntry::new("down", r.version, &r.name, ROLLED_BACK, run_id);
    line.note = Some(note.clone());
    records.log(&line).await?;
    Ok(Reversed {
        version: r.version,
        name: r.name.clone(),
        duration_ms: 0,
        restored: 0,
        inserted: 0,
        deleted: 0,
        skipped: 0,
        note: Some(note),
    })
}

/// The collections a change's operations created (dropped again once empty).
fn created_collections(c: &Change, ops: &[OpOutcome]) -> Vec<String> {
    c.up.iter()
        .zip(ops)
        .filter(|(_, o)| o.created_collection)
        .filter_map(|(op, _)| match op {
            Op::Archive { to, .. } => Some(to.clone()),
            Op::Insert { collection, .. } => Some(collection.clone()),
            Op::CreateIndex(spec) => Some(spec.collection.clone()),
            _ => None,
        })
        .collect()
}

/// Settles, before `up` selects what to apply, the changes whose transaction a dead process
/// left: an `up` that committed is recorded applied, one that did not failed (nothing was
/// written: `up` applies it again); a `down` that committed rolled back, one that did not
/// applied again. Reads and records only.
async fn settle_transactions(
    t: &ChangeTarget<'_>,
    run_id: &str,
) -> Result<Vec<Recovered>, ChangesError> {
    let records = Records { ledger: t.ledger };
    let mut out = Vec::new();
    for r in records.all().await? {
        if !r.transaction || (r.status != RUNNING && r.status != REVERSING) {
            continue;
        }
        let backup = r.backup.clone().unwrap_or_default();
        let exec = Exec {
            db: t.db,
            backup: &backup,
            activity: t.activity,
            fence: None,
        };
        let up = r.status == RUNNING;
        let session = if up { &r.session } else { &r.down_session };
        kill_session(t.db, session.as_ref()).await;
        let committed = exec.marker(if up { COMMITTED } else { REVERSED }).await?;
        let action = if up { "up" } else { "down" };
        let (status, note) = match (up, committed) {
            (true, Some(m)) => {
                let ops: Vec<OpOutcome> = m
                    .get_array("ops")
                    .map(|a| {
                        a.iter()
                            .filter_map(bson::Bson::as_document)
                            .map(OpOutcome::from_doc)
                            .collect()
                    })
                    .unwrap_or_default();
                records.settle(&r, true, &ops).await?
            }
            (true, None) => {
                let settled = records.settle(&r, false, &[]).await?;
                exec.drop_backup().await?;
                settled
            }
            (false, Some(_)) => {
                let c = file::parse_recorded(&r.file, &r.source, &r.seeds)?;
                exec.drop_created(&created_collections(&c, &r.ops)).await?;
                records.mark_rolled_back(r.version, 0).await?;
                exec.drop_backup().await?;
                (
                    ROLLED_BACK,
                    format!(
                        "the down of run {} stopped after its transaction committed: recorded rolled back",
                        r.down_run_id.as_deref().unwrap_or("?")
                    ),
                )
            }
            (false, None) => {
                let note = format!(
                    "the down of run {} stopped before its transaction committed: nothing was reversed, the change is applied",
                    r.down_run_id.as_deref().unwrap_or("?")
                );
                records.note_down_error(r.version, &note, APPLIED).await?;
                (APPLIED, note)
            }
        };
        let mut line = HistoryEntry::new(action, r.version, &r.name, status, run_id);
        line.note = Some(note.clone());
        records.log(&line).await?;
        out.push(Recovered {
            version: r.version,
            name: r.name.clone(),
            status: status.to_string(),
            note,
        });
    }
    Ok(out)
}

/// Aborts the transaction of a dead process's session, if it is still open (best effort: the
/// server aborts it by itself after `transactionLifetimeLimitSeconds`).
async fn kill_session(db: &Database, session: Option<&bson::Document>) {
    let Some(s) = session else { return };
    if let Err(e) = db
        .client()
        .database("admin")
        .run_command(doc! { "killSessions": [s.clone()] })
        .await
    {
        tracing::warn!(error = %ops_text(&e), "could not end the dead process's session");
    }
}

/// Drops the changes' backup collections no record keeps (the record of a change rolled back
/// or failed, or none: its process died after recording it and before dropping its backup).
async fn sweep_backups(t: &ChangeTarget<'_>) -> Result<(), ChangesError> {
    let records = Records { ledger: t.ledger };
    let kept: std::collections::BTreeSet<String> = records
        .all()
        .await?
        .into_iter()
        .filter(|r| r.status != ROLLED_BACK && r.status != FAILED)
        .filter_map(|r| r.backup)
        .collect();
    let prefix = format!("{}change_", t.ledger.prefix());
    let names =
        t.db.list_collection_names()
            .await
            .map_err(|e| ChangesError::Mongo(e.into()))?;
    for name in names {
        if name.starts_with(&prefix) && name.contains("_backup_") && !kept.contains(&name) {
            t.db.collection::<bson::Document>(&name)
                .drop()
                .await
                .map_err(|e| ChangesError::Mongo(e.into()))?;
        }
    }
    Ok(())
}

/// Why reversing one change failed. `wrote_nothing`: the first step of a fresh `down` (neither
/// finishing an earlier one nor undoing an `up` cut short) was refused by its own checks before
/// it wrote anything — nothing was reversed, so the change is still applied (not `down-failed`:
/// `up` and a later `down` go on as before).
#[derive(Debug)]
pub(crate) struct DownFailure {
    pub message: String,
    pub wrote_nothing: bool,
}

impl From<String> for DownFailure {
    fn from(message: String) -> DownFailure {
        DownFailure {
            message,
            wrote_nothing: false,
        }
    }
}

impl DownFailure {
    /// A step's failure: `wrote_nothing` when the step was refused by its checks before it
    /// wrote (`refused_before_writing`) and no step of this fresh `down` ran before it
    /// (`first`, false for a `down` that finishes another).
    pub(crate) fn of_step(message: String, refused_before_writing: bool, first: bool) -> Self {
        DownFailure {
            message,
            wrote_nothing: refused_before_writing && first,
        }
    }
}

/// How [`reverse_one`] undoes a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Applied whole: its [[down]], or the inverse of each up operation.
    Applied,
    /// Its `down` stopped half way: the steps done are skipped (but for commands, each inverse
    /// is run again, tolerating what is back already), an operation of its [[down]] cut short
    /// is undone and run again.
    Resume,
    /// Its `up` stopped half way: the inverse of each operation that started writing,
    /// tolerating what it did not do.
    Interrupted,
    /// Undoing an `up` that stopped half way stopped half way too: as `Interrupted`, the steps
    /// done skipped as for `Resume`.
    ResumeInterrupted,
}

impl How {
    /// Whether it takes up an earlier `down`'s progress.
    fn resumes(self) -> bool {
        matches!(self, How::Resume | How::ResumeInterrupted)
    }

    /// Whether it undoes an `up` that stopped half way (by the inverses, never the file's
    /// [[down]], which undoes a change applied whole).
    fn partial_up(self) -> bool {
        matches!(self, How::Interrupted | How::ResumeInterrupted)
    }
}

/// One `down` of a change: how it reverses, the run doing it, and what it found (a note for
/// the history line and the report).
struct DownRun<'a> {
    how: How,
    run_id: &'a str,
    note: Option<String>,
}

impl<'a> DownRun<'a> {
    fn new(how: How, run_id: &'a str, note: Option<String>) -> Self {
        DownRun { how, run_id, note }
    }
}

/// Reverses one change, recording it `reversing` before it writes anything, then `rolled-back`
/// (or, failed, why), with a line of history as it starts and as it ends.
async fn reverse_logged(
    t: &ChangeTarget<'_>,
    records: &Records<'_>,
    (r, c, ops): (&ChangeRecord, &Change, &[OpOutcome]),
    down: DownRun<'_>,
) -> Result<Reversed, ChangesError> {
    let DownRun { how, run_id, note } = down;
    let mut line = HistoryEntry::new("down", r.version, &r.name, RUNNING, run_id);
    line.note = note.clone();
    // The line first (see `apply_all`).
    records.log(&line).await?;
    records
        .start_down(r.version, run_id, !how.resumes(), how.partial_up())
        .await?;
    let started = Instant::now();
    let result = reverse_one(t, records, r, c, ops, how).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    line.duration_ms = duration_ms as i64;
    match result {
        Ok(mut rev) => {
            rev.duration_ms = duration_ms;
            rev.note = note;
            records.mark_rolled_back(r.version, duration_ms).await?;
            Exec {
                db: t.db,
                backup: r.backup.as_deref().unwrap_or_default(),
                activity: t.activity,
                fence: None,
            }
            .drop_backup()
            .await?;
            line.status = ROLLED_BACK.into();
            line.modified = rev.restored as i64;
            line.inserted = rev.inserted as i64;
            line.deleted = rev.deleted as i64;
            records.log(&line).await?;
            Ok(rev)
        }
        Err(DownFailure {
            message: e,
            wrote_nothing,
        }) => {
            // In a transaction nothing was reversed, nor when its first step was refused before
            // it wrote; otherwise what was reversed stays so and the next `down` finishes it.
            let (status, how) = if c.transaction {
                (
                    APPLIED,
                    "its transaction was rolled back: the change is still applied",
                )
            } else if wrote_nothing {
                (
                    APPLIED,
                    "it was refused before it wrote anything: nothing was reversed, the change is still applied (`cutover changes up` goes on as before; fix the cause, then `cutover changes down` again)",
                )
            } else {
                (
                    REVERSING,
                    "what was reversed before the failure stays so, the change is recorded `down-failed` and its backup kept: fix the cause, then `cutover changes down` finishes reversing it",
                )
            };
            let _ = records.note_down_error(r.version, &e, status).await;
            line.status = FAILED.into();
            line.error = Some(e.clone());
            let _ = records.log(&line).await;
            Err(ChangesError::Refused(format!(
                "reversing change {} ({}) failed: {e}; {how}",
                r.version, r.file
            )))
        }
    }
}

/// Undoes a change (see [`How`]), in a transaction when the change ran in one.
async fn reverse_one(
    t: &ChangeTarget<'_>,
    records: &Records<'_>,
    r: &ChangeRecord,
    c: &Change,
    ops: &[OpOutcome],
    how: How,
) -> Result<Reversed, DownFailure> {
    let backup = r.backup.clone().unwrap_or_default();
    let exec = Exec {
        db: t.db,
        backup: &backup,
        activity: t.activity,
        fence: None,
    };
    let mut rev = Reversed {
        version: r.version,
        name: r.name.clone(),
        duration_ms: 0,
        restored: 0,
        inserted: 0,
        deleted: 0,
        skipped: 0,
        note: None,
    };
    let mut created = Vec::new();
    if c.transaction {
        // Nothing of an earlier attempt committed (its marker would have said so): from the
        // start, whole.
        let mut s =
            t.db.client()
                .start_session()
                .await
                .map_err(|e| ops_text(&e))?;
        records
            .update(r.version, doc! { "down_session": s.id().clone() })
            .await
            .map_err(|e| format!("ledger: {e}"))?;
        s.start_transaction().await.map_err(|e| ops_text(&e))?;
        let outcome = {
            let mut sess: Option<&mut ClientSession> = Some(&mut s);
            let mut steps = Steps {
                exec: &exec,
                records: None,
                version: r.version,
                done: 0,
                down_ops: Vec::new(),
            };
            match steps
                .run(&mut sess, c, ops, How::Applied, &mut rev, &mut created)
                .await
            {
                Ok(()) => exec
                    .put_marker(&mut sess, REVERSED, doc! {})
                    .await
                    .map_err(|e| format!("keeping the commit marker: {e}").into()),
                Err(e) => Err(e),
            }
        };
        match outcome {
            Ok(()) => s
                .commit_transaction()
                .await
                .map_err(|e| format!("the transaction did not commit: {}", ops_text(&e)))?,
            Err(e) => {
                let _ = s.abort_transaction().await;
                return Err(e);
            }
        }
    } else {
        let resume = how.resumes();
        let mut steps = Steps {
            exec: &exec,
            records: Some(records),
            version: r.version,
            done: if resume { r.down_done } else { 0 },
            down_ops: if resume {
                r.down_ops.clone()
            } else {
                Vec::new()
            },
        };
        steps
            .run(&mut None, c, ops, how, &mut rev, &mut created)
            .await?;
    }
    exec.drop_created(&created)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rev)
}

/// The steps of one `down`, and how far it got (recorded, without a transaction, as it goes).
struct Steps<'a> {
    exec: &'a Exec<'a>,
    records: Option<&'a Records<'a>>,
    version: u64,
    /// Steps done (by an earlier attempt, then this one).
    done: usize,
    /// What each operation of the file's [[down]] that started did.
    down_ops: Vec<OpOutcome>,
}

impl Steps<'_> {
    async fn record(&self) -> Result<(), String> {
        match self.records {
            Some(r) => r
                .down_progress(self.version, &self.down_ops, self.done)
                .await
                .map_err(|e| format!("ledger: {e}")),
            None => Ok(()),
        }
    }

    async fn run(
        &mut self,
        sess: &mut Option<&mut ClientSession>,
        c: &Change,
        ops: &[OpOutcome],
        how: How,
        rev: &mut Reversed,
        created: &mut Vec<String>,
    ) -> Result<(), DownFailure> {
        let exec = self.exec;
        // No step of this `down` has run yet (its checks may still refuse it whole).
        let mut first = how == How::Applied;
        match &c.down {
            // The file's own down (for a change applied whole): its operations run forward, each
            // backed up like an up's, so one cut short is undone and run again.
            Some(down_ops) if !how.partial_up() => {
                for (i, op) in down_ops.iter().enumerate() {
                    if i < self.done {
                        continue;
                    }
                    let index = 100_000 + i;
                    let what = |e: ops::OpError| {
                        format!("down operation {} (`{}`): {e}", i + 1, op.kind())
                    };
                    if i < self.down_ops.len() {
                        if op.has_inverse() {
                            let cut = self.down_ops[i].clone();
                            exec.undo(sess, op, index, &cut, true, created)
                                .await
                                .map_err(what)?;
                            exec.forget(index).await.map_err(what)?;
                        }
                        self.down_ops.truncate(i);
                    }
                    let mut out = OpOutcome::default();
                    // Its checks write nothing: a refusal there is one before writing.
                    if let Err(e) = exec.prepare(sess, op, &mut out).await {
                        let refused = matches!(
                            e,
                            ops::OpError::Refused(_) | ops::OpError::RefusedBeforeWriting(_)
                        );
                        return Err(DownFailure::of_step(what(e), refused, first));
                    }
                    first = false;
                    self.down_ops.push(out);
                    self.record().await?;
                    let out = self.down_ops.last_mut().expect("pushed above");
                    exec.run(sess, op, index, out).await.map_err(what)?;
                    rev.restored += out.modified;
                    rev.inserted += out.inserted;
                    rev.deleted += out.deleted;
                    self.done = i + 1;
                    self.record().await?;
                }
            }
            _ => {
                let partial = how != How::Applied;
                for (step, i) in (0..ops.len().min(c.up.len())).rev().enumerate() {
                    // A command is not run twice; every other inverse is run again, tolerating
                    // what is back already (and naming what it created, dropped at the end).
                    if step < self.done && matches!(c.up[i], Op::Command { .. }) {
                        continue;
                    }
                    let done = match exec
                        .undo(sess, &c.up[i], i, &ops[i], partial, created)
                        .await
                    {
                        Ok(done) => done,
                        Err(e) => {
                            let refused = e.wrote_nothing();
                            let message = format!(
                                "undoing up operation {} (`{}`): {e}",
                                i + 1,
                                c.up[i].kind()
                            );
                            return Err(DownFailure::of_step(message, refused, first));
                        }
                    };
                    first = false;
                    rev.restored += done.modified;
                    rev.inserted += done.inserted;
                    rev.deleted += done.deleted;
                    // An operation an earlier attempt finished reversing finds the documents
                    // the reversals after it put further back: not changed since (adv40 F3:
                    // 12,500 "changed since" warned of, none changed).
                    if step >= self.done {
                        rev.skipped += done.skipped;
                    }
                    self.done = self.done.max(step + 1);
                    self.record().await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod transaction_tests {
    #[test]
    fn a_transaction_the_server_gave_up_on_says_what_to_do() {
        let m = super::in_transaction(
            "up operation 2 failed: WriteConflict error: Please retry".into(),
        );
        assert!(m.contains("transaction = false"), "{m}");
        let m = super::in_transaction("up operation 2 failed: E11000 duplicate key".into());
        assert!(!m.contains("transaction = false"), "{m}");
    }
}
