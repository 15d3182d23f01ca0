//! `cutover rollback`: restore a stage's collections from its backup.

use anyhow::Result;

use super::shared::pipeline_for;
use crate::changes;
use crate::cli::{Cli, Outcome, RollbackArgs};
use crate::ledger::{self};
use crate::pipeline::rollback::{self, RollbackRequest, Undo};
use crate::sink::target::Destination;

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
    for u in undo.iter().filter(|u| u.restore) {
        let Destination::Collection { name } = &u.step.destination else {
            continue;
        };
        let what = format!("run {} of {}", u.step.run_id, u.step.entity);
        blocking.extend(changes_after(ledger, name, u.step.started_at.as_deref(), &what).await?);
    }
    settle_or_refuse(blocking, ignore)
}

/// The changes applied or reversed on `collection` since `since` (RFC 3339; the beginning when
/// unknown), as lines naming them and `what` they came after; a command change (collections
/// unknown) is warned about here, not returned.
pub(crate) async fn changes_after(
    ledger: &ledger::Ledger,
    collection: &str,
    since: Option<&str>,
    what: &str,
) -> Result<Vec<String>> {
    let since = since
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis());
    let collections = std::collections::BTreeSet::from([collection.to_string()]);
    let mut out = Vec::new();
    for c in changes::changes_since(ledger, &collections, since).await? {
        if c.uncertain {
            // A command may or may not have touched it: said, not refused (a non-reversible
            // command would otherwise block every restore for good).
            crate::errln!(
                "warning: change {} ({}) runs a command that may have touched {collection} after {what}: if it did, the restore undoes that",
                c.version,
                c.file
            );
            continue;
        }
        let how = if c.applied {
            "applied"
        } else {
            "reversed (the restore would bring its effects back)"
        };
        out.push(format!(
            "change {} ({}) {how} on {} after {what}",
            c.version,
            c.file,
            c.collections.join(", ")
        ));
    }
    Ok(out)
}

/// Goes ahead when nothing blocks, or when told to (`--ignore-changes`, said); else refuses.
pub(crate) fn settle_or_refuse(blocking: Vec<String>, ignore: bool) -> Result<()> {
    if blocking.is_empty() {
        return Ok(());
    }
    if ignore {
        crate::errln!(
            "warning: --ignore-changes: the restore discards what changes did after it, their records unchanged — {}",
            blocking.join("; ")
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to restore: it would silently discard what changes did after the run — {}; reverse the applied ones first with `cutover changes down` (`--to VERSION` or `--steps N`), then restore — or go ahead anyway with --ignore-changes",
        blocking.join("; ")
    )
}
