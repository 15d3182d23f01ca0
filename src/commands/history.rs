//! `cutover history`: the runs the ledger holds.

use anyhow::Result;

use super::shared::open_ledger;
use crate::cli::{Cli, HistoryArgs, Outcome};
use crate::monitor::report::format_ms;

pub async fn history(cli: &Cli, args: &HistoryArgs) -> Result<Outcome> {
    let pipeline = crate::cli::PipelineArgs {
        pipeline: args.pipeline.clone(),
        mappings: None,
    };
    let (_cfg, _target, ledger) = match &args.pipeline {
        Some(_) => super::shared::open_ledger_for(cli, &args.target, Some(&pipeline)).await?,
        None => open_ledger(cli, &args.target).await?,
    };
    // The status filter after a run left `running` by a dead process is shown interrupted.
    let mut runs = ledger.runs_newest_first(i64::MAX, None).await?;
    // The entities each run ran (its record lists those it planned; a run that stopped early
    // never started the rest).
    let steps = ledger.all_steps().await?;
    // A run the ledger still calls running: its counts so far from its steps; when its process
    // is gone (it holds no live lock), interrupted, with its counts and time up to its last
    // checkpoint — as `status` and the API show it (adv30 T3: `running`, 0 ms and 0 rows).
    let live = ledger
        .lock_holder()
        .await?
        .filter(|h| !h.expired)
        .map(|h| h.run_id);
    let now = chrono::Utc::now();
    for r in &mut runs {
        let dead = live.as_deref() != Some(r.run_id.as_str());
        r.as_of_steps(&steps, now, dead);
    }
    if let Some(st) = args.status.as_deref() {
        runs.retain(|r| r.status == st);
    }
    runs.truncate(args.limit.max(1) as usize);
    for r in &mut runs {
        let ran: Vec<String> = r
            .entities
            .iter()
            .filter(|e| {
                steps
                    .iter()
                    .any(|s| s.run_id == r.run_id && &s.entity == *e)
            })
            .cloned()
            .collect();
        if ran.len() < r.entities.len() {
            r.not_started = r
                .entities
                .iter()
                .filter(|e| !ran.contains(e))
                .cloned()
                .collect();
            r.entities = ran;
        }
    }
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(Outcome::Success);
    }
    crate::outln!(
        "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9} {:>9}  {:<22} entities",
        "#",
        "run",
        "started",
        "duration",
        "read",
        "written",
        "rejected",
        "skipped",
        "status"
    );
    for r in runs {
        let not_started = if r.not_started.is_empty() {
            String::new()
        } else {
            format!(" (not started: {})", r.not_started.join(","))
        };
        crate::outln!(
            "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9} {:>9}  {:<22} {}{}",
            r.run_number,
            r.run_id,
            r.started_at.as_deref().unwrap_or("-"),
            format_ms(r.duration_ms.max(0) as u64),
            r.read,
            r.written,
            r.rejected,
            r.skipped,
            r.status,
            r.entities.join(","),
            not_started
        );
        for part in &r.resumed {
            crate::outln!(
                "      {}: resumed run {} after {} rows ({} rejected) — counted in that run's numbers, not in these; this run's report counts the whole entity",
                part.entity,
                part.from_run,
                part.rows,
                part.rejected
            );
        }
    }
    Ok(Outcome::Success)
}
