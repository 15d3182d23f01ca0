//! `cutover status`: each entity's state in the target's ledger.

use anyhow::Result;
use serde::Serialize;

use crate::cli::{Cli, Outcome, StatusArgs};
use crate::ledger::{self, StepRecord};

#[derive(Debug, Serialize)]
struct EntityStatus {
    entity: String,
    stage: String,
    collection: String,
    /// applied, pending, failed, interrupted, running, rolling-back, rolled-back, changed
    state: String,
    last_run: Option<String>,
    finished_at: Option<String>,
    read: i64,
    written: i64,
    rejected: i64,
    /// Rows neither written nor rejected (batches that failed).
    skipped: i64,
    /// Source rows covered by the checkpoint of an unfinished stage.
    checkpoint_rows: i64,
    total_rows: i64,
    mapping_changed: bool,
}

pub async fn status(cli: &Cli, args: &StatusArgs) -> Result<Outcome> {
    let (cfg, _target, ledger) =
        super::shared::open_ledger_for(cli, &args.target, Some(&args.pipeline)).await?;
    use super::shared::pipeline_for;
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    // The step each entity's data is in: after a rolled-back re-run, the run before it.
    let latest = ledger.current_steps().await?;
    let holder = ledger.lock_holder().await?;
    let live_run = holder
        .as_ref()
        .filter(|h| !h.expired)
        .map(|h| h.run_id.clone());
    let mut rows = Vec::new();
    for step in pipeline.all_steps() {
        let m = pipeline.mappings.get(&step.entity)?;
        let s: Option<&StepRecord> = latest.get(&step.entity);
        let changed = s.is_some_and(|s| s.status == ledger::COMPLETED && s.checksum != m.checksum);
        let state = match s {
            None => "pending".to_string(),
            Some(s) if s.status == ledger::COMPLETED && changed => "changed".into(),
            Some(s) if s.status == ledger::COMPLETED => "applied".into(),
            Some(s)
                if s.status == ledger::RUNNING
                    && live_run.as_deref() == Some(s.run_id.as_str()) =>
            {
                "running".into()
            }
            Some(s) if s.status == ledger::RUNNING => "interrupted".into(),
            Some(s) => s.status.clone(),
        };
        rows.push(EntityStatus {
            entity: step.entity.clone(),
            stage: step.stage.clone(),
            collection: m.collection().to_string(),
            state,
            last_run: s.map(|s| s.run_id.clone()),
            finished_at: s.and_then(|s| s.finished_at.clone()),
            read: s.map(|s| s.read).unwrap_or(0),
            written: s.map(|s| s.written).unwrap_or(0),
            rejected: s.map(|s| s.rejected).unwrap_or(0),
            skipped: s.map(|s| s.skipped).unwrap_or(0),
            checkpoint_rows: s.map(|s| s.checkpoint_rows).unwrap_or(0),
            total_rows: s.map(|s| s.total).unwrap_or(0),
            mapping_changed: changed,
        });
    }
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "entities": rows, "lock": holder }))?
        );
        return Ok(Outcome::Success);
    }
    crate::outln!(
        "{:<24} {:<14} {:<12} {:>9} {:>9} {:>9} {:>9}  {:<26} progress",
        "entity",
        "stage",
        "state",
        "read",
        "written",
        "rejected",
        "skipped",
        "last run"
    );
    for r in &rows {
        let progress = match r.state.as_str() {
            "interrupted" | "running" | "failed" if r.checkpoint_rows > 0 => {
                format!("checkpoint at {} rows", r.checkpoint_rows)
            }
            "changed" => "mapping changed since applied".to_string(),
            "rolling-back" if live_run.is_none() => {
                "rollback interrupted: finish it with `cutover rollback`".to_string()
            }
            _ => String::new(),
        };
        crate::outln!(
            "{:<24} {:<14} {:<12} {:>9} {:>9} {:>9} {:>9}  {:<26} {}",
            r.entity,
            r.stage,
            r.state,
            r.read,
            r.written,
            r.rejected,
            r.skipped,
            r.last_run.as_deref().unwrap_or("-"),
            progress
        );
    }
    crate::outln!("{}", super::shared::lock_line(holder.as_ref()));
    Ok(Outcome::Success)
}
