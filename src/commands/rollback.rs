//! `cutover rollback`: restore a stage's collections from its backup.

use anyhow::Result;

use super::shared::pipeline_for;
use crate::cli::{Cli, Outcome, RollbackArgs};
use crate::ledger::{self};
use crate::pipeline::rollback::{self, RollbackRequest, Undo};

pub async fn rollback(cli: &Cli, args: &RollbackArgs) -> Result<Outcome> {
    let (cfg, _target, ledger) =
        super::shared::open_ledger_for(cli, &args.target, Some(&args.pipeline)).await?;
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    let req = RollbackRequest {
        names: args.names.clone(),
        steps: args.steps,
        all: args.all,
        cascade: args.cascade,
    };
    let undo = rollback::plan(&pipeline, &ledger, &req).await?;
    if undo.is_empty() {
        crate::outln!("nothing to roll back");
        return Ok(Outcome::Success);
    }
    refuse_discarding_changes(&ledger, &undo, args.ignore_changes).await?;
    let verb = if args.dry_run {
        "would roll back"
    } else {
        "rolling back"
    };
    for u in &undo {
        crate::outln!(
            "{verb} {} (run {}): {}",
            u.step.entity,
            u.step.run_id,
            u.action
        );
    }
    if args.dry_run {
        return Ok(Outcome::Success);
    }
    let run_id = crate::pipeline::run::new_run_id();
    let lock = ledger
        .acquire_lock(&run_id, "rollback", ledger::lock::DEFAULT_TTL)
        .await?;
    let result = rollback::execute(&ledger, &undo).await;
    lock.release().await?;
    result?;
    crate::outln!("rolled back {} step(s)", undo.len());
    Ok(Outcome::Success)
}

/// Refuses to restore a collection on which `cutover changes` were applied (or reversed) after
/// the step the restore undoes: the backup predates them, so their effects would vanish (or come
/// back) while the ledger says otherwise. Reversing them first (`changes down`) keeps the
/// history true; `--ignore-changes` goes ahead, said.
async fn refuse_discarding_changes(
    ledger: &ledger::Ledger,
    undo: &[Undo],
    ignore: bool,
) -> Result<()> {
    let mut blocking = Vec::new();
    // Whether the step found its destination empty (then emptied) or not (then restored from
    // its backup), and whatever the target: both put back what the step found.
    for u in undo.iter().filter(|u| u.restore) {
        let what = format!("run {} of {}", u.step.run_id, u.step.entity);
        blocking.extend(
            super::shared::changes_after(
                ledger,
                &u.step.destination,
                u.step.started_at.as_deref(),
                &what,
            )
            .await?,
        );
    }
    super::shared::settle_or_refuse(blocking, ignore)
}
