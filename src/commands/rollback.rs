//! `cutover rollback`: restore a stage's collections from its backup.

use anyhow::Result;

use super::shared::pipeline_for;
use crate::cli::{Cli, Outcome, RollbackArgs};
use crate::ledger::{self};
use crate::pipeline::rollback::{self, RollbackRequest};

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
