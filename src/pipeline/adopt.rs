//! Steps carried over from an interrupted run: the report of a step that run completed (from its
//! ledger record), and the rejects and warnings of the rows a checkpoint covers, copied from the
//! earlier run's files into this run's.

use std::path::PathBuf;

use super::options::RunOptions;
use crate::ledger::StepRecord;
use crate::monitor::Counts;
use crate::monitor::rejects::RejectsWriter;
use crate::monitor::report::EntityReport;
use crate::sink::target::Destination;

/// The report of a step an interrupted run completed, from its ledger record, with its rejects
/// and warnings copied into this run's files (all of them: the step completed).
/// Returns the report, and whether the step's rejects were found (and copied).
pub(super) fn adopt_step(
    step: &StepRecord,
    opts: &RunOptions,
    rejects: &RejectsWriter,
) -> (EntityReport, bool) {
    let read = step.read.max(0) as u64;
    let written = step.written.max(0) as u64;
    let rejected = step.rejected.max(0) as u64;
    let counts = Counts {
        read,
        written,
        rejected,
        warnings: step.warnings.max(0) as u64,
        skipped: read.saturating_sub(written + rejected),
        retried: step.retried.max(0) as u64,
        ..Default::default()
    };
    let mut e = EntityReport::new(
        &step.entity,
        &step.destination.to_string(),
        counts,
        step.duration_ms.max(0) as u64,
    );
    e.completed_by = Some(step.run_id.clone());
    e.total = read;
    // Older documents the step removed, as its last checkpoint recorded them (found by the
    // eleventh tester, R10: the adopting report said 0).
    let removed = step.checkpoint_removed.max(0) as u64;
    if step.destination == Destination::Users {
        e.stale_blocked = removed;
    } else {
        e.stale_removed = removed;
    }
    // What --sync-deletes deleted, and the backup the step took (which keeps what it removed)
    // (found by the twelfth tester, S6).
    e.deleted = step.deleted.max(0) as u64;
    e.backup = step.backup.clone();
    let fallback = opts.rejects_dir.join(&step.run_id);
    let recorded = step
        .rejects_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| fallback.clone());
    let mut found = true;
    match carry_from(rejects, &[&recorded, &fallback], &step.entity, u64::MAX) {
        Ok((c, _)) if c.rejected_rows == 0 && rejected > 0 => {
            // Not marked reported: a later run (with the directory back) accounts for them.
            found = false;
            e.orphan_children = orphans_of_lines(&c.orphans);
            e.error = Some(format!(
                "the rejects of the {rejected} rows run {} rejected are not in {}: put that run's rejects directory back (or copy it to {}) and run `cutover migrate` again to copy them",
                step.run_id,
                recorded.display(),
                fallback.display()
            ));
        }
        Ok((c, _)) => e.orphan_children = orphans_of_lines(&c.orphans),
        Err((from, cause)) => {
            found = false;
            e.error = Some(format!(
                "the rejects of run {} could not be copied from {}: {cause}",
                step.run_id,
                from.display()
            ));
        }
    }
    (e, found)
}

/// Copies the lines of `entity` the first `batches` batches cover from the first of `dirs`
/// holding any, synced; with the directory they came from.
pub(super) fn carry_from(
    rejects: &RejectsWriter,
    dirs: &[&PathBuf],
    entity: &str,
    batches: u64,
) -> Result<(crate::monitor::rejects::Carried, PathBuf), (PathBuf, std::io::Error)> {
    let mut last = None;
    for dir in dirs {
        let c = rejects
            .carry(dir, entity, batches)
            .and_then(|c| rejects.sync().map(|()| c))
            .map_err(|cause| ((*dir).clone(), cause))?;
        let any = c.lines > 0 || c.warnings > 0;
        // The interrupted run's lines past its checkpoint are this run's to record (it reads
        // those rows again): set apart there, so no row is a line of both runs (adv31 F2).
        if let Err(e) = crate::monitor::rejects::set_apart_in(dir, entity, batches) {
            tracing::warn!(dir = %dir.display(), %entity, error = %e, "could not set apart the interrupted run's lines past its checkpoint");
        }
        last = Some((c, (*dir).clone()));
        if any {
            break;
        }
    }
    Ok(last.expect("at least one directory"))
}

/// The orphan child rows of a step known only by its rejects file's lines (per embed path).
fn orphans_of_lines(
    lines: &std::collections::BTreeMap<String, u64>,
) -> Vec<crate::monitor::report::OrphanChildren> {
    lines
        .iter()
        .map(|(embed, &rows)| crate::monitor::report::OrphanChildren {
            embed: embed.clone(),
            child_source: String::new(),
            parent_source: String::new(),
            rows,
        })
        .collect()
}
