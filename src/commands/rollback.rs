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
    if args.dry_run {
        let undo = rollback::plan(&pipeline, &ledger, &req).await?;
        if undo.is_empty() {
            crate::outln!("nothing to roll back");
            return Ok(Outcome::Success);
        }
        refuse_discarding_changes(&ledger, &undo, args.ignore_changes).await?;
        say(&undo, "would roll back");
        return Ok(Outcome::Success);
    }
    // The lock first: what is rolled back is decided and said only once no other cutover
    // writes the target (adv22 F10: "rolling back …" was printed before "another cutover holds
    // the lock", and nothing was rolled back).
    let run_id = crate::pipeline::run::new_run_id();
    let lock = ledger
        .acquire_lock(&run_id, "rollback", ledger::lock::DEFAULT_TTL)
        .await?;
    let result = async {
        let undo = rollback::plan(&pipeline, &ledger, &req).await?;
        if undo.is_empty() {
            crate::outln!("nothing to roll back");
            return Ok(());
        }
        refuse_discarding_changes(&ledger, &undo, args.ignore_changes).await?;
        say(&undo, "rolling back");
        rollback::execute(&ledger, &undo).await?;
        crate::outln!("rolled back {} step(s)", undo.len());
        anyhow::Ok(())
    }
    .await;
    lock.release().await?;
    result?;
    Ok(Outcome::Success)
}

fn say(undo: &[Undo], verb: &str) {
    for u in undo {
        crate::outln!(
            "{verb} {} (run {}): {}",
            u.step.entity,
            u.step.run_id,
            u.action
        );
    }
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
