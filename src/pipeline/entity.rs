//! One entity's stage, run: counts the source rows, spawns the writer, runs the reader into it,
//! samples the throughput for the report's timeline, and builds the entity's report (the part an
//! interrupted run covered included). Above the reader (`read`) and the writer (`write`), which
//! share the stage's facts (`stage`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::checkpoint::Checkpointer;
use super::error::RunError;
use super::read::{Batch, read_loop};
use super::removal::Remover;
use super::stage::{RunCtx, StageCtx, StageRun};
use super::write::write_loop;
use crate::mapping::plan::Plan;
use crate::monitor::EntityCounters;
use crate::monitor::report::EntityReport;
use crate::sink::mongodb::WriteMode;
use crate::sink::target::Destination;
use crate::source::SourceSession;

/// Runs the prepared stage `stage` of `plan`'s entity: its report, and the error that ended it.
pub(super) async fn run_entity(
    plan: &Plan,
    session: &mut SourceSession,
    run: &RunCtx<'_>,
    stage: &StageRun,
) -> (EntityReport, Option<RunError>) {
    let RunCtx {
        target,
        map: ctx,
        opts,
        rejects,
        progress,
        total_rejected,
        ..
    } = *run;
    let counters = Arc::new(EntityCounters::default());
    let started = Instant::now();
    let report_base = |c: &EntityCounters, mode: &str, total: u64| {
        let mut r = EntityReport::new(
            &plan.entity,
            &plan.collection,
            c.snapshot(),
            started.elapsed().as_millis() as u64,
        );
        r.write_mode = mode.to_string();
        r.total = total;
        // What the step it resumes (or starts over) deleted (`--sync-deletes`); this run's
        // deletions add to it.
        r.deleted = stage.inherited.1;
        r.finishing = stage.finishing.clone();
        // With those the step it resumes (or starts over) removed.
        let stale = c.removed.load(Ordering::Relaxed) + stage.inherited.0;
        if target.destination(&plan.collection) == Destination::Users {
            r.stale_blocked = stale;
        } else {
            r.stale_removed = stale;
        }
        r
    };

    let client_before = target.client_counters();
    let total = match session.count(&plan.relation).await {
        Ok(n) => n,
        Err(e) => {
            // Stopped before its first row (a SIGTERM cancels the count): the part it resumes
            // is still the entity's, its carried reject lines in this run's files (adv38 F3:
            // `rejected 0` beside 18 rejects by rule).
            let mut report = report_base(&counters, "none", 0);
            add_resumed(&mut report, stage);
            return (report, Some(e.into()));
        }
    };
    tracing::info!(entity = %plan.entity, rows = total, "counted the source rows");
    // Seen live by `cutover serve` when it started the run (a dry run's ledger holds nothing).
    crate::monitor::live::publish(&stage.run_id, &plan.entity, counters.clone(), total);
    // The step's total, for its progress while it runs (`cutover serve`): not worth failing the
    // run over.
    if let Some(l) = &stage.ledger
        && let Err(e) = l.record_total(&stage.run_id, &plan.entity, total).await
    {
        tracing::warn!(entity = %plan.entity, error = %e, "could not record the step's total");
    }
    let mode = stage.mode;
    let mode_name = match mode {
        None => "none",
        Some(WriteMode::Insert) => "insert",
        Some(WriteMode::Upsert) => "upsert",
    };
    let bar = progress.bar(&plan.entity, total, true);
    let resumed_rows = stage.resume.as_ref().map(|r| r.rows).unwrap_or(0);
    if resumed_rows > 0 {
        bar.set_position(resumed_rows);
    }

    // A rerun into what cutover wrote before: the older records of rows rejected now are
    // removed — except files in Appwrite Storage, which no backup keeps (see `keep_stale`).
    let upsert_prior = mode == Some(WriteMode::Upsert) && stage.prior;
    let storage = matches!(
        target.destination(&plan.collection),
        Destination::Storage { .. }
    );
    let shared = StageCtx {
        target: target.clone(),
        opts: opts.clone(),
        entity: plan.entity.clone(),
        collection: plan.collection.clone(),
        counters: counters.clone(),
        rejects: rejects.clone(),
        total_rejected: total_rejected.clone(),
        remove_stale: upsert_prior && !storage,
        keep_stale: upsert_prior && storage,
        remover: Remover {
            ledger: stage.ledger.clone(),
            run_id: stage.run_id.clone(),
            entity: plan.entity.clone(),
        },
        read_all: Default::default(),
    };
    // What the checkpoints count from: the part resumed, or what the step started over removed.
    let base = stage.resume.as_ref().map_or(
        crate::ledger::Covered {
            removed: stage.inherited.0,
            ..Default::default()
        },
        |r| r.covered,
    );
    let (tx, rx) = mpsc::channel::<Batch>(super::write::in_flight(opts, plan.file.is_some()));
    let writer = mode.map(|mode| {
        tokio::spawn(write_loop(
            rx,
            shared.clone(),
            mode,
            stage.ledger.clone().map(|l| {
                Checkpointer::new(
                    l,
                    rejects.clone(),
                    stage.fence.clone(),
                    &stage.run_id,
                    &plan.entity,
                    base,
                )
            }),
        ))
    });

    // Throughput over time, for the report's chart: the counters every 250 ms.
    let timeline: Arc<std::sync::Mutex<Vec<[u64; 3]>>> = Default::default();
    let sampler = {
        let counters = counters.clone();
        let timeline = timeline.clone();
        let since = stage.run_started;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tick.tick().await;
                let c = counters.snapshot();
                let mut t = timeline.lock().unwrap_or_else(|p| p.into_inner());
                t.push([since.elapsed().as_millis() as u64, c.read, c.written]);
                if t.len() > 4_000 {
                    // Bounded on long runs: keep every other point.
                    let thinned: Vec<[u64; 3]> = t.iter().step_by(2).copied().collect();
                    *t = thinned;
                }
            }
        })
    };
    let read_result = read_loop(plan, session, ctx, &shared, stage, &bar, tx).await;
    let write_result = match writer {
        Some(handle) => match handle.await {
            Ok(r) => r,
            Err(join) => Err(RunError::Refused(format!("writer task failed: {join}"))),
        },
        None => Ok(()),
    };
    bar.finish_and_clear();
    let err = match (read_result, write_result) {
        (_, Err(w)) => Some(w),
        (Err(r), Ok(())) => Some(r),
        (Ok(()), Ok(())) => None,
    };
    if err.is_some() {
        // Rows read but never attempted because the run stopped are skipped, not lost.
        let c = counters.snapshot();
        let unattempted = c.read.saturating_sub(c.written + c.rejected + c.skipped);
        EntityCounters::add(&counters.skipped, unattempted);
    }
    sampler.abort();
    let mut report = report_base(&counters, mode_name, total);
    {
        let c = counters.snapshot();
        let mut t = timeline.lock().unwrap_or_else(|p| p.into_inner());
        t.push([
            stage.run_started.elapsed().as_millis() as u64,
            c.read,
            c.written,
        ]);
        report.timeline = std::mem::take(&mut *t);
    }
    // Appwrite: the client's own retries (throttling, 5xx, transport) count as this step's.
    if let (Some((r0, t0, h0)), Some((r1, t1, h1))) = (client_before, target.client_counters()) {
        report.retried += t1 - t0;
        report.requests = Some(r1 - r0);
        report.throttled = Some(h1 - h0);
    }
    if plan.file.is_some() {
        report.files = Some(crate::monitor::report::FileStats::new(
            counters.files_uploaded.load(Ordering::Relaxed),
            counters.file_bytes.load(Ordering::Relaxed),
            counters.files_unchanged.load(Ordering::Relaxed),
            report.duration_ms,
        ));
        if let Some(f) = report.files.as_mut() {
            f.kept = counters.files_kept.load(Ordering::Relaxed);
        }
    }
    report.orphan_children = plan
        .embeds
        .iter()
        .enumerate()
        .map(|(i, e)| {
            // Those the resumed run counted (lines carried) and those this run met.
            let carried = stage
                .resume
                .as_ref()
                .and_then(|r| r.orphans.get(&e.path_text))
                .copied()
                .unwrap_or(0);
            crate::monitor::report::OrphanChildren {
                embed: e.path_text.clone(),
                child_source: e.source_name.clone(),
                parent_source: plan.source_name.clone(),
                rows: carried + counters.orphans_of(i),
            }
        })
        .collect();
    add_resumed(&mut report, stage);
    (report, err)
}

/// Adds the part of the entity the step resumes (the interrupted run's rows before its
/// checkpoint, whose reject lines this run carried) to `report`: every row accounted for.
fn add_resumed(report: &mut EntityReport, stage: &StageRun) {
    let Some(r) = &stage.resume else {
        return;
    };
    report.resumed_from = Some(r.from_run.clone());
    report.resumed_after_rows = r.rows;
    report.resumed_after_rejected = r.covered.rejected;
    // The entity's counts, the interrupted part's included: every row accounted for. (The
    // throughput stays this run's own.)
    report.read += r.covered.rows;
    report.written += r.covered.written();
    report.rejected += r.covered.rejected;
    report.warnings += r.covered.warned;
    report.success_rate =
        crate::monitor::report::success_rate(report.written, report.read, report.skipped);
}
