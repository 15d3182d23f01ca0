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
//! let target = ChangeTarget { db: &db, ledger: &ledger };
//! let report = changes::up(&target, &files, &UpOptions::default()).await?;
//! assert!(!report.failed(), "{:?}", report.changes);
//! # Ok(())
//! # }
//! ```

pub mod file;
pub mod ops;
pub mod record;
pub mod template;

use std::collections::BTreeMap;
use std::time::Instant;

use mongodb::{ClientSession, Database};
use serde::Serialize;

pub use file::{Change, FileError, Op};
pub use ops::{OpError, OpOutcome, Preview};
pub use record::{ChangeRecord, HistoryEntry};

use crate::ledger::lock::{DEFAULT_TTL, LockError};
use crate::ledger::{Ledger, StoreError};
use ops::Exec;
use record::{APPLIED, FAILED, Finished, RESTORE_FAILED, ROLLED_BACK, RUNNING, Records};

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
}

/// One change's state, from its file and its ledger record.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeStatus {
    pub version: u64,
    pub name: String,
    pub file: Option<String>,
    /// applied, modified (applied, its file changed since), pending, out-of-order (pending, older
    /// than the newest applied), failed, rolled-back, running, interrupted, missing (applied, its
    /// file gone)
    pub state: String,
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
    let records: BTreeMap<u64, ChangeRecord> = Records { ledger: t.ledger }
        .all()
        .await?
        .into_iter()
        .map(|r| (r.version, r))
        .collect();
    let live_lock = t.ledger.lock_holder().await?.filter(|h| !h.expired);
    let newest_applied = records
        .values()
        .filter(|r| r.status == APPLIED || r.status == RUNNING)
        .map(|r| r.version)
        .max();
    let mut out = Vec::new();
    for c in files {
        let r = records.get(&c.version);
        let older = newest_applied.is_some_and(|n| c.version < n);
        let state = match r.map(|r| r.status.as_str()) {
            Some(APPLIED) if r.is_some_and(|r| r.checksum == c.checksum) => "applied",
            Some(APPLIED) => "modified",
            Some(RUNNING)
                if live_lock
                    .as_ref()
                    .zip(r)
                    .is_some_and(|(h, r)| h.run_id == r.run_id) =>
            {
                "running"
            }
            Some(RUNNING) => "interrupted",
            None | Some(FAILED) | Some(ROLLED_BACK) if older => "out-of-order",
            None => "pending",
            Some(s) => s,
        };
        let mut s = from_change(c, state);
        if let Some(r) = r {
            fill_from_record(&mut s, r);
        }
        out.push(s);
    }
    for r in records.values() {
        if files.iter().all(|c| c.version != r.version) && r.status != ROLLED_BACK {
            let state = if r.status == APPLIED {
                "missing"
            } else {
                &r.status
            };
            let mut s = ChangeStatus {
                version: r.version,
                name: r.name.clone(),
                file: None,
                state: state.to_string(),
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

fn from_change(c: &Change, state: &str) -> ChangeStatus {
    ChangeStatus {
        version: c.version,
        name: c.name.clone(),
        file: Some(c.file_name()),
        state: state.to_string(),
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
    Ok(Records { ledger: t.ledger }
        .history()
        .await?
        .into_iter()
        .filter(|e| status.is_none_or(|s| e.status == s))
        .skip(skip)
        .take(limit)
        .collect())
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
}

impl UpReport {
    pub fn failed(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.status == FAILED || c.status == RESTORE_FAILED)
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
        match s.state.as_str() {
            "modified" => refusals.push(format!(
                "change {} ({}) was modified since it was applied (its checksum differs): put the file back as it was applied, or write the new edit as a new change with `cutover changes new`",
                s.version,
                s.file.as_deref().unwrap_or("?")
            )),
            "interrupted" => refusals.push(format!(
                "change {} ({}) was interrupted while it was applied: its backup collection holds the documents it had rewritten; check the data, put it back if needed, and record it by hand",
                s.version,
                s.file.as_deref().unwrap_or("?")
            )),
            "restore-failed" => refusals.push(format!(
                "change {} ({}) failed and undoing it failed too: the documents as they were are in its backup collection (see `cutover changes status --json` and the ledger's cutover_changes record); put them back, then delete its record",
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
                refusals.push(format!(
                    "change {} ({}) is older than change {newest}, applied already (out of order): give it a version after {newest} (rename the file and its `version`), or apply it anyway with `cutover changes up --allow-out-of-order`",
                    s.version,
                    s.file.as_deref().unwrap_or("?")
                ));
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
        let states = status(t, files).await?;
        let pending = select_pending(&states, files, opts)?;
        if pending.is_empty() {
            return Ok(UpReport {
                batch: None,
                dry_run: false,
                changes: Vec::new(),
            });
        }
        apply_all(t, &pending, &run_id, &lock.fence(), opts.continue_on_error).await
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
    };
    let mut changes = Vec::new();
    for c in pending {
        let mut preview = Vec::new();
        for op in &c.up {
            preview.push(exec.preview(op).await?);
        }
        changes.push(AppliedChange {
            version: c.version,
            name: c.name.clone(),
            status: "would apply".into(),
            duration_ms: 0,
            matched: 0,
            modified: 0,
            inserted: 0,
            deleted: 0,
            error: None,
            preview,
        });
    }
    Ok(UpReport {
        batch: None,
        dry_run: true,
        changes,
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
    let batch = records.next_batch().await?;
    let mut changes = Vec::new();
    for c in pending {
        fence
            .check()
            .await
            .map_err(|e| ChangesError::Refused(e.to_string()))?;
        let backup = records.backup_name(c.version, run_id);
        records.start(c, batch, &backup, run_id).await?;
        let started = Instant::now();
        let exec = Exec {
            db: t.db,
            backup: &backup,
        };
        let result = apply_one(&exec, c).await;
        let duration_ms = started.elapsed().as_millis() as u64;
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
        records
            .log(&HistoryEntry {
                at: None,
                action: "up".into(),
                version: c.version,
                name: c.name.clone(),
                status: status.to_string(),
                batch: Some(batch),
                duration_ms: duration_ms as i64,
                matched: sum(|o| o.matched) as i64,
                modified: sum(|o| o.modified) as i64,
                inserted: sum(|o| o.inserted) as i64,
                deleted: sum(|o| o.deleted) as i64,
                error: error.clone(),
                run_id: run_id.to_string(),
                at_millis: 0,
            })
            .await?;
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
        // A failure whose undoing failed too stops the batch whatever the flag says.
        if status == RESTORE_FAILED || (status == FAILED && !continue_on_error) {
            break;
        }
    }
    Ok(UpReport {
        batch: Some(batch),
        dry_run: false,
        changes,
    })
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
async fn apply_one(
    exec: &Exec<'_>,
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
                if let Err(e) = exec.run(&mut sess, op, i, &mut out).await {
                    failure = Some(op_error(i, op, e));
                    break;
                }
                outcomes.push(out);
            }
        }
        let failure = match failure {
            None => match session.commit_transaction().await {
                Ok(()) => return Ok(outcomes),
                Err(e) => format!("the transaction did not commit: {}", ops_text(&e)),
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
    let mut outcomes = Vec::new();
    let mut none: Option<&mut ClientSession> = None;
    for (i, op) in c.up.iter().enumerate() {
        let mut out = fresh(i);
        let result = exec.run(&mut none, op, i, &mut out).await;
        outcomes.push(out);
        if let Err(e) = result {
            let why = op_error(i, op, e);
            // Undo what ran, the failed operation's part included, newest first.
            let mut created = Vec::new();
            let mut restore_error = None;
            for j in (0..outcomes.len()).rev() {
                if let Err(e) = exec
                    .undo(&mut none, &c.up[j], j, &outcomes[j], &mut created)
                    .await
                {
                    restore_error = Some(format!("undoing up operation {}: {e}", j + 1));
                    break;
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
    /// Documents put back from the backup.
    pub restored: u64,
    pub deleted: u64,
    /// Documents left alone because they changed since the change was applied.
    pub skipped: u64,
}

/// `changes down`: reverses applied changes, the last applied first, each from the text the
/// ledger recorded when it was applied (so a file edited since does not change what is undone).
pub async fn down(t: &ChangeTarget<'_>, which: DownTarget) -> Result<Vec<Reversed>, ChangesError> {
    let run_id = new_run_id();
    let lock = t
        .ledger
        .acquire_lock(&run_id, "changes down", DEFAULT_TTL)
        .await?;
    let result = down_locked(t, which, &lock.fence(), &run_id).await;
    lock.release()
        .await
        .map_err(|e| ChangesError::Refused(e.to_string()))?;
    result
}

/// Which applied records `down` reverses, each with its change parsed from the text applied;
/// refuses (before anything is reversed) when one is non-reversible.
fn chosen_for_down(
    records: Vec<ChangeRecord>,
    which: DownTarget,
) -> Result<Vec<(ChangeRecord, Change)>, ChangesError> {
    let mut applied: Vec<ChangeRecord> = records
        .into_iter()
        .filter(|r| r.status == APPLIED)
        .collect();
    applied.reverse();
    let chosen: Vec<ChangeRecord> = match which {
        DownTarget::Steps(n) => applied.into_iter().take(n).collect(),
        DownTarget::To(v) => applied.into_iter().filter(|r| r.version > v).collect(),
        DownTarget::Version(v) => {
            let Some(at) = applied.iter().position(|r| r.version == v) else {
                return Err(ChangesError::Refused(format!(
                    "change {v} is not applied: nothing to reverse"
                )));
            };
            let this = &applied[at];
            let theirs = touched(&file::parse(
                std::path::Path::new(&this.file),
                &this.source,
            )?);
            let mut blocking = Vec::new();
            // `applied` is newest first: those before `at` were applied after it.
            for later in &applied[..at] {
                let c = file::parse(std::path::Path::new(&later.file), &later.source)?;
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
        let c = file::parse(std::path::Path::new(&r.file), &r.source)?;
        if let Some((i, op)) = c.irreversible_op() {
            return Err(ChangesError::Refused(format!(
                "change {} ({}) is non-reversible: up operation {i} (`{}`) has no inverse and the change has no [[down]]; nothing was reversed",
                r.version,
                r.file,
                op.kind()
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
        _ => vec!["a command, which may touch any collection".to_string()],
    }
}

async fn down_locked(
    t: &ChangeTarget<'_>,
    which: DownTarget,
    fence: &crate::ledger::lock::Fence,
    run_id: &str,
) -> Result<Vec<Reversed>, ChangesError> {
    let records = Records { ledger: t.ledger };
    let chosen = chosen_for_down(records.all().await?, which)?;
    let mut done = Vec::new();
    for (r, c) in &chosen {
        fence
            .check()
            .await
            .map_err(|e| ChangesError::Refused(e.to_string()))?;
        let started = Instant::now();
        let result = reverse_one(t, r, c).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let entry =
            |status: &str, error: Option<String>, restored: u64, deleted: u64| HistoryEntry {
                at: None,
                action: "down".into(),
                version: r.version,
                name: r.name.clone(),
                status: status.to_string(),
                batch: None,
                duration_ms: duration_ms as i64,
                matched: 0,
                modified: restored as i64,
                inserted: 0,
                deleted: deleted as i64,
                error,
                run_id: run_id.to_string(),
                at_millis: 0,
            };
        match result {
            Ok(mut rev) => {
                rev.duration_ms = duration_ms;
                records.mark_rolled_back(r.version, rev.duration_ms).await?;
                records
                    .log(&entry(ROLLED_BACK, None, rev.restored, rev.deleted))
                    .await?;
                done.push(rev);
            }
            Err(e) => {
                let _ = records.note_down_error(r.version, &e).await;
                let _ = records.log(&entry(FAILED, Some(e.clone()), 0, 0)).await;
                let how = if c.transaction {
                    "its transaction was rolled back: the change is still applied"
                } else {
                    "the operations undone before the failure stay undone; the change is still recorded applied and its backup kept"
                };
                return Err(ChangesError::Refused(format!(
                    "reversing change {} ({}) failed: {e}; {how}",
                    r.version, r.file
                )));
            }
        }
    }
    Ok(done)
}

async fn reverse_one(
    t: &ChangeTarget<'_>,
    r: &ChangeRecord,
    c: &Change,
) -> Result<Reversed, String> {
    let backup = r.backup.clone().unwrap_or_default();
    let exec = Exec {
        db: t.db,
        backup: &backup,
    };
    let mut rev = Reversed {
        version: r.version,
        name: r.name.clone(),
        duration_ms: 0,
        restored: 0,
        deleted: 0,
        skipped: 0,
    };
    let mut created = Vec::new();
    let mut session = None;
    if c.transaction {
        let mut s =
            t.db.client()
                .start_session()
                .await
                .map_err(|e| ops_text(&e))?;
        s.start_transaction().await.map_err(|e| ops_text(&e))?;
        session = Some(s);
    }
    let outcome: Result<(), String> = async {
        let mut sess: Option<&mut ClientSession> = session.as_mut();
        match &c.down {
            // The file's own down: its operations run forward (their backups are dropped below).
            Some(down_ops) => {
                for (i, op) in down_ops.iter().enumerate() {
                    let mut out = OpOutcome::default();
                    exec.run(&mut sess, op, 100_000 + i, &mut out)
                        .await
                        .map_err(|e| format!("down operation {} (`{}`): {e}", i + 1, op.kind()))?;
                    rev.restored += out.modified;
                    rev.deleted += out.deleted;
                }
            }
            None => {
                for i in (0..c.up.len()).rev() {
                    let done = exec
                        .undo(&mut sess, &c.up[i], i, &r.ops[i], &mut created)
                        .await
                        .map_err(|e| {
                            format!("undoing up operation {} (`{}`): {e}", i + 1, c.up[i].kind())
                        })?;
                    rev.restored += done.modified;
                    rev.deleted += done.deleted;
                    rev.skipped += done.skipped;
                }
            }
        }
        Ok(())
    }
    .await;
    if let Some(mut s) = session {
        match &outcome {
            Ok(()) => s
                .commit_transaction()
                .await
                .map_err(|e| format!("the transaction did not commit: {}", ops_text(&e)))?,
            Err(_) => {
                let _ = s.abort_transaction().await;
            }
        }
    }
    outcome?;
    exec.drop_created(&created)
        .await
        .map_err(|e| e.to_string())?;
    exec.drop_backup().await.map_err(|e| e.to_string())?;
    Ok(rev)
}
