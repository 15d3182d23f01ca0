//! Changes on an Appwrite target: `changes up` and `down` with the operations of [`op`] run by
//! [`exec`]. What does not depend on the target is [`crate::changes`]'s own and shared: the
//! ledger records ([`crate::changes::record`]), the lock, the states, ordering and refusals
//! ([`crate::changes::status_in`]), the choice of what `down` reverses, the history. Only the
//! execution of the operations, their backups and the recovery of a change a dead process left
//! half done differ (MongoDB sessions and commit markers have no counterpart here).
//!
//! With `transaction = true` (row operations only: the file is refused at load otherwise) the
//! change's row operations are staged in one TablesDB transaction and committed together; a
//! failure rolls it back and nothing is written; more operations than the server's limit
//! (`max_transaction_operations`) refuse it before anything is written. Its `down` runs in one
//! too (each inverse puts back only rows still as the change left them), committed whole or not
//! at all.

pub mod exec;
pub mod op;

use std::time::Instant;

use bson::Bson;

use super::file::{Change, Op};
use super::ops::OpOutcome;
use super::record::{
    APPLIED, FAILED, HistoryEntry, RESTORE_FAILED, REVERSING, ROLLED_BACK, RUNNING, Records,
};
use super::{
    AppliedChange, ChangeRecord, ChangesError, DownFailure, DownReport, DownTarget, NotReversed,
    Reversed, UpOptions, UpReport,
};
use crate::ledger::Ledger;
use crate::ledger::lock::DEFAULT_TTL;
use crate::sink::appwrite::AppwriteClient;
use exec::{AwError, AwExec};
use op::AwOp;

/// An Appwrite database and the ledger kept in it.
pub struct AppwriteTarget<'a> {
    pub client: &'a AppwriteClient,
    /// The database id.
    pub db: &'a str,
    pub ledger: &'a Ledger,
    /// The most row operations a change with `transaction = true` may stage in one transaction
    /// (the server's plan limit; `max_transaction_operations` in the config).
    pub max_transaction_operations: usize,
}

impl From<AwError> for ChangesError {
    fn from(e: AwError) -> ChangesError {
        ChangesError::Refused(e.to_string())
    }
}

/// The backup table of one application of a change (table ids hold at most 36 characters).
fn backup_table(version: u64, run_id: &str) -> String {
    let h = crate::sink::appwrite::rows::row_id(&Bson::String(format!(
        "change\u{0}{version}\u{0}{run_id}"
    )));
    format!("chbk_{}", &h[h.len().saturating_sub(20)..])
}

fn exec<'a>(t: &'a AppwriteTarget<'a>, backup: &'a str) -> AwExec<'a> {
    AwExec {
        client: t.client,
        db: t.db,
        store: t.ledger.store(),
        backup,
        fence: None,
    }
}

/// [`exec`] that stops once `fence`'s lock is no longer the command's.
fn exec_fenced<'a>(
    t: &'a AppwriteTarget<'a>,
    backup: &'a str,
    fence: &'a crate::ledger::lock::Fence,
) -> AwExec<'a> {
    AwExec {
        fence: Some(fence),
        ..exec(t, backup)
    }
}

/// The Appwrite operation of `op` (the plan refused the others before).
fn aw(op: &Op) -> Result<&AwOp, String> {
    match op {
        Op::Appwrite(a) => Ok(a),
        other => Err(format!(
            "`{}` is a MongoDB operation: the target is Appwrite",
            other.kind()
        )),
    }
}

/// Refuses changes that write a backup table (a change's, `chbk_…`, or a run's, `bk_…`): they
/// hold what undoing needs.
fn refuse_backup_tables(pending: &[&Change]) -> Result<(), ChangesError> {
    for c in pending {
        for op in c.up.iter().chain(c.down.iter().flatten()) {
            let table = op.collection().unwrap_or_default();
            if table.starts_with("chbk_") || table.starts_with("bk_") {
                return Err(ChangesError::Refused(format!(
                    "change {} ({}) writes `{table}`, a backup table: a change may not touch it (it holds what undoing a change or a run needs)",
                    c.version,
                    c.file_name()
                )));
            }
        }
    }
    Ok(())
}

async fn plan<'c>(
    t: &AppwriteTarget<'_>,
    files: &'c [Change],
    opts: &UpOptions,
) -> Result<Vec<&'c Change>, ChangesError> {
    let states = super::status_in(t.ledger, files).await?;
    let pending = super::select_pending(&states, files, opts)?;
    super::refuse_other_target(&pending, true)?;
    refuse_backup_tables(&pending)?;
    super::refuse_unsettled_in(t.ledger, &pending, None).await?;
    Ok(pending)
}

/// Deletes the changes' backup tables no record keeps (the record of a change rolled back or
/// failed, or none: its process died after creating it and before recording it).
async fn sweep_backups(t: &AppwriteTarget<'_>) -> Result<(), ChangesError> {
    let kept: std::collections::BTreeSet<String> = Records { ledger: t.ledger }
        .all()
        .await?
        .into_iter()
        .filter(|r| r.status != ROLLED_BACK && r.status != FAILED)
        .filter_map(|r| r.backup)
        .collect();
    let mut stale = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![serde_json::json!({ "method": "limit", "values": [100] })];
        if let Some(a) = &after {
            q.push(serde_json::json!({ "method": "cursorAfter", "values": [a] }));
        }
        let v = t
            .client
            .call(
                reqwest::Method::GET,
                &format!(
                    "/tablesdb/{}/tables?{}",
                    t.db,
                    crate::sink::appwrite::tables::query_string(&q)
                ),
                None,
            )
            .await
            .map_err(AwError::from)?;
        let tables = v["tables"].as_array().cloned().unwrap_or_default();
        after = tables
            .last()
            .and_then(|x| x["$id"].as_str())
            .map(str::to_string);
        for id in tables.iter().filter_map(|x| x["$id"].as_str()) {
            if id.starts_with("chbk_") && !kept.contains(id) {
                stale.push(id.to_string());
            }
        }
        if tables.len() < 100 || after.is_none() {
            break;
        }
    }
    for id in stale {
        exec(t, &id).drop_backup().await?;
    }
    Ok(())
}

/// Why a change in a transaction is refused: it would stage `count` row operations, more than
/// the server's `max`.
fn over_transaction(count: usize, max: usize) -> String {
    format!(
        "it would stage {count} row operations in one transaction, more than `max_transaction_operations` = {max} (the most one Appwrite transaction may hold: Free 100, Pro 1,000, Scale 2,500; set it to your server's limit with [target.appwrite] max_transaction_operations in cutover.toml or APPWRITE_MAX_TRANSACTION_OPERATIONS); refused before anything was written: split the change, or set `transaction = false`"
    )
}

/// What a change in a transaction would stage, read as its run reads it (reads only): why it
/// would be refused, when it is over the server's limit (adv28 R3: the dry run said "would
/// apply" and the run refused).
async fn transaction_refusal(x: &AwExec<'_>, c: &Change, max: usize) -> Option<String> {
    if !c.transaction {
        return None;
    }
    // The run refuses such a change before anything else (adv30 T1: the dry run said nothing).
    if let Some(why) = reads_own_writes(c) {
        return Some(why);
    }
    let mut staging = exec::Staging::new(max);
    for (i, op) in c.up.iter().enumerate() {
        let a = aw(op).ok()?;
        let mut out = OpOutcome::default();
        x.gather(a, i, &mut out, &mut staging).await.ok()?;
    }
    staging.over().then(|| over_transaction(staging.count, max))
}

/// `changes up --target appwrite`: as [`crate::changes::up`].
pub async fn up(
    t: &AppwriteTarget<'_>,
    files: &[Change],
    opts: &UpOptions,
) -> Result<UpReport, ChangesError> {
    if opts.dry_run {
        let pending = plan(t, files, opts).await?;
        let x = exec(t, "");
        let mut changes = Vec::new();
        for c in pending {
            let mut preview = Vec::new();
            for op in &c.up {
                preview.push(x.preview(aw(op).map_err(ChangesError::Refused)?).await?);
            }
            let (mut status, mut error) = super::ops::preview_status(&mut preview);
            if error.is_none()
                && let Some(why) = transaction_refusal(&x, c, t.max_transaction_operations).await
            {
                (status, error) = ("would fail", Some(why));
            }
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
        return Ok(UpReport {
            batch: None,
            dry_run: true,
            changes,
            recovered: Vec::new(),
            left_pending: Vec::new(),
        });
    }
    let run_id = super::new_run_id();
    let lock = t
        .ledger
        .acquire_lock(&run_id, "changes up", DEFAULT_TTL)
        .await?;
    let fence = lock.fence();
    let result = async {
        let recovered = settle_transactions(t, &run_id).await?;
        sweep_backups(t).await?;
        let pending = plan(t, files, opts).await?;
        if pending.is_empty() {
            return Ok(UpReport {
                batch: None,
                dry_run: false,
                changes: Vec::new(),
                recovered,
                left_pending: Vec::new(),
            });
        }
        let (batch, changes, left_pending) = super::apply_batch(
            t.ledger,
            &pending,
            &run_id,
            &fence,
            opts.continue_on_error,
            |c| backup_table(c.version, &run_id),
            |c, backup| {
                let records = Records { ledger: t.ledger };
                let fence = &fence;
                let max = t.max_transaction_operations;
                async move { apply_one(&exec_fenced(t, &backup, fence), &records, c, max).await }
            },
        )
        .await?;
        Ok(UpReport {
            batch: Some(batch),
            dry_run: false,
            changes,
            recovered,
            left_pending,
        })
    }
    .await;
    lock.release()
        .await
        .map_err(|e| ChangesError::Refused(e.to_string()))?;
    result
}

/// Applies one change: each operation's checks, then what its inverse needs recorded, then the
/// operation. A failure undoes what ran (newest first); returns the outcomes only when undoing
/// failed too (the backup is kept).
async fn apply_one(
    x: &AwExec<'_>,
    records: &Records<'_>,
    c: &Change,
    max_transaction_operations: usize,
) -> Result<Vec<OpOutcome>, (Vec<OpOutcome>, String)> {
    if c.transaction {
        return apply_in_transaction(x, records, c, max_transaction_operations).await;
    }
    let mut outcomes: Vec<OpOutcome> = Vec::new();
    for (i, op) in c.up.iter().enumerate() {
        let result: Result<(), String> = async {
            let a = aw(op)?;
            let mut out = OpOutcome::default();
            x.prepare(a, &mut out).await.map_err(|e| e.to_string())?;
            outcomes.push(out);
            records
                .progress(c.version, &outcomes)
                .await
                .map_err(|e| format!("ledger: {e}"))?;
            let out = outcomes.last_mut().expect("pushed above");
            x.run(a, i, out).await.map_err(|e| e.to_string())
        }
        .await;
        let Err(e) = result else { continue };
        let why = match op.collection() {
            Some(t) => format!(
                "up operation {} (`{}` on {t}) failed: {e}",
                i + 1,
                op.kind()
            ),
            None => format!("up operation {} (`{}`) failed: {e}", i + 1, op.kind()),
        };
        let mut restore_error = None;
        for j in (0..outcomes.len()).rev() {
            let undone = match aw(&c.up[j]) {
                Ok(a) => x.undo(a, j, &outcomes[j]).await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            if let Err(e) = undone {
                restore_error.get_or_insert(format!("undoing up operation {}: {e}", j + 1));
            }
        }
        return Err(match restore_error {
            None => {
                let _ = x.drop_backup().await;
                (
                    Vec::new(),
                    format!(
                        "{why}; the operations before it were undone and the rows restored from the backup"
                    ),
                )
            }
            Some(r) => (
                outcomes,
                format!(
                    "{why}; restoring failed too ({r}): the rows as they were are in the backup table {}",
                    x.backup
                ),
            ),
        });
    }
    Ok(outcomes)
}

/// Applies a change's row operations in one TablesDB transaction. What each would stage is read
/// first (reads only, at most `max` operations kept): more than `max` (the server's limit of
/// operations per transaction) refuses the change before anything is written. Then the rows it
/// rewrites are backed up, the operations staged, what each did recorded, and the transaction
/// committed. A failure rolls the transaction back: nothing was written.
/// Why a change cannot run in one Appwrite transaction as written: an operation that picks its
/// rows by reading the table (`set` and `unset` by their queries, `update_references` by its
/// column) after an earlier operation of the change inserted rows there, or wrote a column it
/// reads. Appwrite stages a transaction's writes apart from what its reads see, so the later
/// operation would pick rows as they were before the change (a second `set` matching the first
/// one's values matches nothing) — not what the operations in order, or the same change on
/// MongoDB, do.
fn reads_own_writes(c: &Change) -> Option<String> {
    fn attributes(queries: &[serde_json::Value], out: &mut Vec<String>) {
        for q in queries {
            if let Some(a) = q["attribute"].as_str() {
                out.push(a.to_string());
            }
            // `and` / `or` hold queries as their values.
            if let Some(inner) = q["values"].as_array() {
                attributes(inner, out);
            }
        }
    }
    let reads = |op: &AwOp| -> Option<Vec<String>> {
        let mut out = Vec::new();
        match op {
            AwOp::Set { queries, .. } | AwOp::Unset { queries, .. } => {
                attributes(queries, &mut out)
            }
            AwOp::UpdateReferences { column, .. } => out.push(column.clone()),
            _ => return None,
        }
        Some(out)
    };
    let writes = |op: &AwOp| -> Vec<String> {
        match op {
            AwOp::Set { values, .. } => values.keys().cloned().collect(),
            AwOp::Unset { columns, .. } => columns.clone(),
            AwOp::UpdateReferences { column, .. } => vec![column.clone()],
            _ => Vec::new(),
        }
    };
    let ops: Vec<&AwOp> = c.up.iter().filter_map(|op| aw(op).ok()).collect();
    for (i, later) in ops.iter().enumerate() {
        let Some(read) = reads(later) else { continue };
        for (j, earlier) in ops[..i].iter().enumerate() {
            if earlier.table() != later.table() {
                continue;
            }
            let what = if matches!(earlier, AwOp::Insert { .. }) {
                Some("inserts rows there".to_string())
            } else {
                writes(earlier)
                    .into_iter()
                    .find(|w| read.contains(w))
                    .map(|w| format!("writes column `{w}` it reads"))
            };
            if let Some(what) = what {
                return Some(format!(
                    "change {} ({}): up operation {} (`{}` on {}) picks its rows by reading the table, and operation {} (`{}`) of the same change {what}; in one Appwrite transaction it would read the rows as they were before the change (a transaction's staged writes are not seen by its reads), unlike the operations run in order: refused before anything was written — split the change in two, or set `transaction = false`",
                    c.version,
                    c.file_name(),
                    i + 1,
                    later.kind(),
                    later.table(),
                    j + 1,
                    earlier.kind()
                ));
            }
        }
    }
    None
}

async fn apply_in_transaction(
    x: &AwExec<'_>,
    records: &Records<'_>,
    c: &Change,
    max: usize,
) -> Result<Vec<OpOutcome>, (Vec<OpOutcome>, String)> {
    let fail = |e: String| (Vec::new(), e);
    if let Some(why) = reads_own_writes(c) {
        return Err(fail(why));
    }
    let mut staging = exec::Staging::new(max);
    let mut outcomes = Vec::new();
    for (i, op) in c.up.iter().enumerate() {
        let result: Result<OpOutcome, String> = async {
            let a = aw(op)?;
            let mut out = OpOutcome::default();
            x.prepare(a, &mut out).await.map_err(|e| e.to_string())?;
            x.gather(a, i, &mut out, &mut staging)
                .await
                .map_err(|e| e.to_string())?;
            Ok(out)
        }
        .await;
        match result {
            Ok(out) => outcomes.push(out),
            Err(e) => {
                return Err(fail(format!(
                    "up operation {} (`{}` on {}) failed: {e}; nothing was written",
                    i + 1,
                    op.kind(),
                    op.collection().unwrap_or("-")
                )));
            }
        }
    }
    if staging.over() {
        return Err(fail(over_transaction(staging.count, max)));
    }
    let txn = begin_recorded(x, records, c.version, "session")
        .await
        .map_err(fail)?;
    let mut failure = None;
    if let Err(e) = x.stage(&txn, staging).await {
        failure = Some(format!("staging the row operations failed: {e}"));
    }
    if failure.is_none()
        && let Err(e) = records.progress(c.version, &outcomes).await
    {
        failure = Some(format!("ledger: {e}"));
    }
    let failure = match failure {
        None => match x.commit(&txn).await {
            Ok(()) => return Ok(outcomes),
            Err(e) => format!("the transaction did not commit: {e}"),
        },
        Some(f) => {
            let _ = x.finish(&txn, false).await;
            f
        }
    };
    let _ = x.drop_backup().await;
    Err(fail(format!(
        "{failure}; the transaction was rolled back: nothing was written"
    )))
}

/// The TablesDB transaction a change's `up` recorded.
fn transaction_of(r: &ChangeRecord) -> Option<String> {
    r.session
        .as_ref()
        .and_then(|s| s.get_str("appwrite_transaction").ok())
        .map(str::to_string)
}

/// Settles the changes whose transaction a dead process left. An `up` (`running`,
/// `transaction = true`): recorded applied when the transaction committed, failed (it is rolled
/// back; nothing was written: `up` applies it again) when not. A `down` in a transaction
/// (`reversing`, its transaction recorded): rolled back when it committed, applied again when
/// not (nothing was reversed). Returns them, with what was found.
async fn settle_transactions(
    t: &AppwriteTarget<'_>,
    run_id: &str,
) -> Result<Vec<super::Recovered>, ChangesError> {
    let records = Records { ledger: t.ledger };
    let mut out = Vec::new();
    for r in records.all().await? {
        let up = r.status == RUNNING;
        // A `down` in a transaction says so before it writes (`down_session`); one without
        // (a `down` that went on without a transaction) is finished by `down` instead.
        let down = r.status == REVERSING && down_transaction_of(&r).is_some();
        if !r.transaction || !(up || down) {
            continue;
        }
        let backup = r.backup.clone().unwrap_or_default();
        let x = exec(t, &backup);
        let txn = if up {
            transaction_of(&r)
        } else {
            down_transaction_of(&r).flatten()
        };
        let committed = match txn {
            Some(txn) => {
                let status = x.transaction_status(&txn).await?;
                if status.as_deref() == Some("pending") {
                    let _ = x.finish(&txn, false).await;
                }
                status.as_deref() == Some("committed")
            }
            None => false,
        };
        let (status, note) = if up {
            let settled = records.settle(&r, committed, &r.ops).await?;
            if !committed {
                x.drop_backup().await?;
            }
            settled
        } else if committed {
            records.mark_rolled_back(r.version, 0).await?;
            x.drop_backup().await?;
            (
                ROLLED_BACK,
                format!(
                    "the down of run {} stopped after its transaction committed: recorded rolled back",
                    r.down_run_id.as_deref().unwrap_or("?")
                ),
            )
        } else {
            let note = format!(
                "the down of run {} stopped before its transaction committed: nothing was reversed, the change is applied",
                r.down_run_id.as_deref().unwrap_or("?")
            );
            records.note_down_error(r.version, &note, APPLIED).await?;
            (APPLIED, note)
        };
        let action = if up { "up" } else { "down" };
        let mut line = HistoryEntry::new(action, r.version, &r.name, status, run_id);
        line.note = Some(note.clone());
        records.log(&line).await?;
        out.push(super::Recovered {
            version: r.version,
            name: r.name.clone(),
            status: status.to_string(),
            note,
        });
    }
    Ok(out)
}

/// The TablesDB transaction of a change's `down` in a transaction: `None` when its `down` ran
/// without one; `Some(None)` when it said so and started none yet.
fn down_transaction_of(r: &ChangeRecord) -> Option<Option<String>> {
    let s = r.down_session.as_ref()?;
    match s.get("appwrite_transaction")? {
        Bson::String(t) => Some(Some(t.clone())),
        _ => Some(None),
    }
}

/// `changes down --target appwrite`: as [`crate::changes::down_with`].
pub async fn down_with(
    t: &AppwriteTarget<'_>,
    which: DownTarget,
    continue_on_error: bool,
) -> Result<DownReport, ChangesError> {
    let run_id = super::new_run_id();
    let lock = t
        .ledger
        .acquire_lock(&run_id, "changes down", DEFAULT_TTL)
        .await?;
    let fence = lock.fence();
    let result = async {
        // A change whose transaction a dead process left is settled first: applied (then
        // reversed below like any) or failed (nothing to reverse).
        let settled = settle_transactions(t, &run_id).await?;
        sweep_backups(t).await?;
        let records = Records { ledger: t.ledger };
        let all = records.all().await?;
        // Settled to nothing applied (an `up` that never committed, a `down` that did): that
        // was this `down`'s work.
        let done = |s: &super::Recovered| s.status == FAILED || s.status == ROLLED_BACK;
        if settled.iter().any(done) {
            return Ok(DownReport {
                reversed: settled
                    .into_iter()
                    .filter(done)
                    .map(|s| Reversed {
                        version: s.version,
                        name: s.name,
                        duration_ms: 0,
                        restored: 0,
                        inserted: 0,
                        deleted: 0,
                        skipped: 0,
                        note: Some(s.note),
                    })
                    .collect(),
                ..DownReport::default()
            });
        }
        // A change left `running`, `reversing` or `restore-failed` (its process died, or its
        // undoing failed) is finished first, and alone.
        let mut unfinished: Vec<&ChangeRecord> = all
            .iter()
            .filter(|r| r.status == RUNNING || r.status == REVERSING || r.status == RESTORE_FAILED)
            .collect();
        if !unfinished.is_empty() {
            unfinished.reverse();
            if let DownTarget::Version(v) = which
                && unfinished.iter().all(|r| r.version != v)
            {
                let names: Vec<String> = unfinished
                    .iter()
                    .map(|r| format!("{} ({})", r.version, r.file))
                    .collect();
                return Err(ChangesError::Refused(format!(
                    "change {} was left half done by a process that died: run `cutover changes down` to finish it first; nothing was reversed",
                    names.join(", ")
                )));
            }
            let mut done = Vec::new();
            for r in unfinished {
                fence
                    .check()
                    .await
                    .map_err(|e| ChangesError::Refused(e.to_string()))?;
                let c = super::file::parse_recorded(&r.file, &r.source, &r.seeds)?;
                let (partial, note) = match r.status.as_str() {
                    REVERSING => (
                        r.down_partial_up,
                        match &r.down_error {
                            Some(e) => format!(
                                "the down of run {} failed ({e}): finished",
                                r.down_run_id.as_deref().unwrap_or("?")
                            ),
                            None => format!(
                                "the down of run {} stopped: finished",
                                r.down_run_id.as_deref().unwrap_or("?")
                            ),
                        },
                    ),
                    _ => (
                        true,
                        format!(
                            "the up of run {} stopped with {} of {} operations started: undone",
                            r.run_id,
                            r.ops.len(),
                            c.up.len()
                        ),
                    ),
                };
                let resume = r.status == REVERSING;
                done.push(reverse_logged(t, &records, r, &c, (&run_id, &fence), partial, resume, Some(note)).await?);
            }
            return Ok(DownReport {
                reversed: done,
                ..DownReport::default()
            });
        }
        let chosen = super::chosen_for_down(all, which)?;
        let changes: Vec<&Change> = chosen.iter().map(|(_, c)| c).collect();
        super::refuse_other_target(&changes, true)?;
        super::refuse_unsettled_in(t.ledger, &changes, None).await?;
        let mut report = DownReport::default();
        let mut failed: Vec<(u64, Option<std::collections::BTreeSet<String>>)> = Vec::new();
        for (r, c) in &chosen {
            fence
                .check()
                .await
                .map_err(|e| ChangesError::Refused(e.to_string()))?;
            let mine = super::touched(c);
            if let Some((v, both)) = failed.iter().find_map(|(v, theirs)| {
                let both = super::overlap(&mine, theirs);
                (!both.is_empty()).then_some((*v, both))
            }) {
                report.blocked.push(NotReversed {
                    version: r.version,
                    name: r.name.clone(),
                    error: format!(
                        "left applied: change {v}, applied after it, failed to reverse and works on the same tables ({})",
                        both.join(", ")
                    ),
                });
                continue;
            }
            // A `down` in a transaction a dead process left uncommitted was settled above (the
            // change applied again): this reversal's history line says so.
            let note = settled
                .iter()
                .find(|s| s.version == r.version && s.status == APPLIED)
                .map(|s| s.note.clone());
            match reverse_logged(t, &records, r, c, (&run_id, &fence), false, false, note).await {
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
    .await;
    lock.release()
        .await
        .map_err(|e| ChangesError::Refused(e.to_string()))?;
    result
}

/// Reverses one change, recorded `reversing` before it writes, then `rolled-back` (or, failed,
/// `reversing` with why: the next `down` finishes it), with a line of history as it starts and
/// as it ends. `partial`: its `up` stopped half way (the inverses of the operations that started,
/// never the file's [[down]]); `resume`: an earlier `down` stopped, its progress is taken up.
#[allow(clippy::too_many_arguments)]
async fn reverse_logged(
    t: &AppwriteTarget<'_>,
    records: &Records<'_>,
    r: &ChangeRecord,
    c: &Change,
    (run_id, fence): (&str, &crate::ledger::lock::Fence),
    partial: bool,
    resume: bool,
    note: Option<String>,
) -> Result<Reversed, ChangesError> {
    let backup = r.backup.clone().unwrap_or_default();
    let x = exec_fenced(t, &backup, fence);
    // A table this change dropped that exists again was made since (by the application): its
    // inverse would mix the dropped table's columns and rows into it. Refused before anything
    // is reversed (a `down` that stopped half way may find its own table: not refused then).
    if !resume && !partial && c.down.is_none() {
        for op in &c.up {
            if let Op::Appwrite(AwOp::DropTable { table }) = op
                && x.table_exists(table).await?
            {
                return Err(ChangesError::Refused(format!(
                    "change {} ({}): it dropped table `{table}`, and a table `{table}` exists again (made since): reversing would mix the dropped table's columns and rows into it; rename or remove that table, then run `down` again (nothing was reversed)",
                    r.version, r.file
                )));
            }
        }
    }
    let mut line = HistoryEntry::new("down", r.version, &r.name, RUNNING, run_id);
    line.note = note.clone();
    records.log(&line).await?;
    records
        .start_down(r.version, run_id, !resume, partial)
        .await?;
    let started = Instant::now();
    // A change applied in a transaction is reversed in one (a `down` it takes up where an
    // earlier one without a transaction stopped goes on without).
    let in_transaction = c.transaction && !partial && !resume;
    let result = if in_transaction {
        reverse_in_transaction(&x, records, r, c, t.max_transaction_operations).await
    } else {
        reverse_one(&x, records, r, c, partial, resume).await
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    line.duration_ms = duration_ms as i64;
    match result {
        Ok(mut rev) => {
            rev.duration_ms = duration_ms;
            rev.note = note;
            records.mark_rolled_back(r.version, duration_ms).await?;
            x.drop_backup().await?;
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
            // Its transaction rolled back, or refused by its first step's checks before anything
            // was written: still applied.
            let (status, how) = if wrote_nothing && in_transaction {
                (
                    APPLIED,
                    "its transaction was rolled back: nothing was reversed, the change is still applied (`cutover changes up` goes on as before; fix the cause, then `cutover changes down` again)",
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

/// Reverses a change applied in a transaction in one TablesDB transaction, as its `up` was
/// applied: what undoing each operation would stage (its file's [[down]], or the inverses of its
/// operations, newest first) is read first — more than `max` operations refuse it before
/// anything is written — then staged and committed. Every failure leaves nothing reversed
/// (`wrote_nothing`): the change is still applied.
async fn reverse_in_transaction(
    x: &AwExec<'_>,
    records: &Records<'_>,
    r: &ChangeRecord,
    c: &Change,
    max: usize,
) -> Result<Reversed, DownFailure> {
    let nothing = |message: String| DownFailure {
        message,
        wrote_nothing: true,
    };
    // Said before anything else: a process that dies from here on leaves a `down` the next
    // command settles from its transaction's own status (none yet: nothing was reversed).
    records
        .update(
            r.version,
            bson::doc! { "down_session": { "appwrite_transaction": Bson::Null } },
        )
        .await
        .map_err(|e| nothing(format!("ledger: {e}")))?;
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
    let mut staging = exec::Staging::new(max);
    match &c.down {
        Some(ops) => {
            for (i, op) in ops.iter().enumerate() {
                let what = |e: String| format!("down operation {} (`{}`): {e}", i + 1, op.kind());
                let a = aw(op).map_err(|e| nothing(what(e)))?;
                let mut out = OpOutcome::default();
                x.prepare(a, &mut out)
                    .await
                    .map_err(|e| nothing(what(e.to_string())))?;
                x.gather(a, 100_000 + i, &mut out, &mut staging)
                    .await
                    .map_err(|e| nothing(what(e.to_string())))?;
                rev.restored += out.modified;
                rev.inserted += out.inserted;
            }
        }
        None => {
            for i in (0..r.ops.len().min(c.up.len())).rev() {
                let what = |e: String| {
                    format!("undoing up operation {} (`{}`): {e}", i + 1, c.up[i].kind())
                };
                let a = aw(&c.up[i]).map_err(|e| nothing(what(e)))?;
                let mut done = OpOutcome::default();
                x.gather_undo(a, i, &mut staging, &mut done)
                    .await
                    .map_err(|e| nothing(what(e.to_string())))?;
                rev.restored += done.modified;
                rev.deleted += done.deleted;
                rev.skipped += done.skipped;
            }
        }
    }
    if staging.over() {
        return Err(nothing(format!(
            "reversing it would stage {} row operations in one transaction, more than `max_transaction_operations` = {max} ([target.appwrite] in cutover.toml or APPWRITE_MAX_TRANSACTION_OPERATIONS: your server's limit)",
            staging.count
        )));
    }
    if staging.count == 0 {
        return Ok(rev);
    }
    let txn = begin_recorded(x, records, r.version, "down_session")
        .await
        .map_err(nothing)?;
    if let Err(e) = x.stage(&txn, staging).await {
        let _ = x.finish(&txn, false).await;
        return Err(nothing(format!(
            "staging the row operations failed: {e}; the transaction was rolled back"
        )));
    }
    if let Err(e) = x.commit(&txn).await {
        return Err(nothing(format!(
            "the transaction did not commit: {e}; it was rolled back"
        )));
    }
    Ok(rev)
}

/// Begins an Appwrite transaction and records its id in the change's ledger record under
/// `field` (`session` for an up, `down_session` for a down), so a process that dies before the
/// commit leaves the id its successor settles the change by. The error says which step failed.
async fn begin_recorded(
    x: &AwExec<'_>,
    records: &Records<'_>,
    version: u64,
    field: &str,
) -> Result<String, String> {
    let txn = x
        .begin()
        .await
        .map_err(|e| format!("cannot start a transaction: {e}"))?;
    records
        .update(
            version,
            bson::doc! { field: { "appwrite_transaction": &txn } },
        )
        .await
        .map_err(|e| format!("ledger: {e}"))?;
    Ok(txn)
}

async fn reverse_one(
    x: &AwExec<'_>,
    records: &Records<'_>,
    r: &ChangeRecord,
    c: &Change,
    partial: bool,
    resume: bool,
) -> Result<Reversed, DownFailure> {
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
    let mut done = if resume { r.down_done } else { 0 };
    let mut down_ops = if resume {
        r.down_ops.clone()
    } else {
        Vec::new()
    };
    let progress = |down_ops: &[OpOutcome], done: usize| {
        let version = r.version;
        let down_ops = down_ops.to_vec();
        async move {
            records
                .down_progress(version, &down_ops, done)
                .await
                .map_err(|e| format!("ledger: {e}"))
        }
    };
    // No step of this `down` has run yet (its checks may still refuse it whole).
    let mut first = !partial && !resume;
    match &c.down {
        // The file's own [[down]] (for a change applied whole): its operations run forward,
        // each backed up like an up's, so one cut short is undone and run again.
        Some(ops) if !partial => {
            for (i, op) in ops.iter().enumerate() {
                if i < done {
                    continue;
                }
                let index = 100_000 + i;
                let what = |e: String| format!("down operation {} (`{}`): {e}", i + 1, op.kind());
                let a = aw(op).map_err(what)?;
                if i < down_ops.len() {
                    x.undo(a, index, &down_ops[i])
                        .await
                        .map_err(|e| what(e.to_string()))?;
                    down_ops.truncate(i);
                }
                let mut out = OpOutcome::default();
                // Its checks write nothing: a refusal there is one before writing.
                if let Err(e) = x.prepare(a, &mut out).await {
                    let refused =
                        matches!(e, AwError::Refused(_) | AwError::RefusedBeforeWriting(_));
                    return Err(DownFailure::of_step(what(e.to_string()), refused, first));
                }
                first = false;
                down_ops.push(out);
                progress(&down_ops, done).await?;
                let out = down_ops.last_mut().expect("pushed above");
                x.run(a, index, out)
                    .await
                    .map_err(|e| what(e.to_string()))?;
                rev.restored += out.modified;
                rev.inserted += out.inserted;
                rev.deleted += out.deleted;
                done = i + 1;
                progress(&down_ops, done).await?;
            }
        }
        _ => {
            // Every inverse is run again on a resume: each puts back only what is not back
            // already.
            let ops = &r.ops;
            for (step, i) in (0..ops.len().min(c.up.len())).rev().enumerate() {
                let what = |e: String| {
                    format!("undoing up operation {} (`{}`): {e}", i + 1, c.up[i].kind())
                };
                let a = aw(&c.up[i]).map_err(what)?;
                let d = match x.undo(a, i, &ops[i]).await {
                    Ok(d) => d,
                    Err(e) => {
                        let refused = e.wrote_nothing();
                        return Err(DownFailure::of_step(what(e.to_string()), refused, first));
                    }
                };
                first = false;
                rev.restored += d.modified;
                rev.inserted += d.inserted;
                rev.deleted += d.deleted;
                rev.skipped += d.skipped;
                done = done.max(step + 1);
                progress(&down_ops, done).await?;
            }
        }
    }
    Ok(rev)
}
