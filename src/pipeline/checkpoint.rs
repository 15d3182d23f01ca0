//! Checkpoints of a stage: batches complete in any order (the writer has several in flight), and
//! the checkpoint recorded in the ledger is the contiguous watermark — the key below which every
//! batch is durably written — with what it covers (rows, rejected, warned) and the older
//! documents removed so far (by every finished batch, past the watermark too).

use std::sync::Arc;
use std::time::Instant;

use super::error::RunError;
use super::read::Batch;
use crate::ledger::{self, Ledger};
use crate::monitor::rejects::RejectsWriter;

/// The contiguous watermark of a stage's batches, which finish in any order: the key below
/// which every batch is finished, and what that covers.
#[derive(Debug)]
pub(super) struct Watermark {
    /// What was covered before this run (a resumed step).
    base: ledger::Covered,
    next: u64,
    /// Finished batches past the watermark: (key, rows read up to it, rejected, warned, removed).
    done: std::collections::BTreeMap<u64, (Vec<String>, u64, u64, u64, u64)>,
    /// The key below which every batch is finished, and what that covers.
    at: Option<(Vec<String>, ledger::Covered)>,
    /// Older documents removed by every finished batch, past the watermark too: their documents
    /// are gone, so the run that resumes past the checkpoint finds nothing to remove there
    /// and would not count them (found by the eleventh tester, R1).
    removed: u64,
}

impl Watermark {
    fn new(base: ledger::Covered) -> Watermark {
        Watermark {
            base,
            next: 0,
            done: Default::default(),
            at: None,
            removed: 0,
        }
    }

    /// Notes batch `seq` as finished (its last key, rows read up to it, rejected, warned,
    /// removed); whether the watermark moved.
    fn finished(&mut self, seq: u64, batch: (Vec<String>, u64, u64, u64, u64)) -> bool {
        self.removed += batch.4;
        self.done.insert(seq, batch);
        let mut advanced = false;
        while let Some((key, rows, rejected, warned, _)) = self.done.remove(&self.next) {
            let before = self.at.as_ref().map_or(self.base, |(_, c)| *c);
            self.next += 1;
            let covered = ledger::Covered {
                rows: self.base.rows + rows,
                rejected: before.rejected + rejected,
                warned: before.warned + warned,
                batches: self.next,
                removed: self.base.removed + self.removed,
            };
            self.at = Some((key, covered));
            advanced = true;
        }
        advanced
    }
}

/// Tracks finished batches and records the contiguous watermark: the key below which every
/// batch is durably written, however the concurrent batches complete.
pub(crate) struct Checkpointer {
    ledger: Ledger,
    /// Synced before each checkpoint: the rejects of the rows it covers are on disk first.
    rejects: Arc<RejectsWriter>,
    /// Checked before each checkpoint: a run that lost the lock records nothing more.
    pub(super) fence: Option<ledger::lock::Fence>,
    run_id: String,
    entity: String,
    watermark: Watermark,
    recorded: Option<Instant>,
}

impl Checkpointer {
    pub(super) fn new(
        ledger: Ledger,
        rejects: Arc<RejectsWriter>,
        fence: Option<ledger::lock::Fence>,
        run_id: &str,
        entity: &str,
        base: ledger::Covered,
    ) -> Checkpointer {
        Checkpointer {
            ledger,
            rejects,
            fence,
            run_id: run_id.to_string(),
            entity: entity.to_string(),
            watermark: Watermark::new(base),
            recorded: None,
        }
    }

    /// What was covered before this run (a resumed step).
    pub(super) fn base(&self) -> ledger::Covered {
        self.watermark.base
    }

    /// Notes batch `seq` as finished; records the watermark at most every 200 ms.
    pub(super) async fn finished(&mut self, seq: u64, batch: &mut Batch) -> Result<(), RunError> {
        let removed = batch.removed;
        let advanced = self.watermark.finished(
            seq,
            (
                std::mem::take(&mut batch.last_key),
                batch.read_upto,
                batch.rejected,
                batch.warned,
                batch.removed,
            ),
        );
        let due = self
            .recorded
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(200));
        // A batch that removed older documents is recorded at once: its documents are gone, and
        // a run that resumes past the last record would find nothing to count there.
        if (advanced && due) || removed > 0 {
            self.record().await?;
        }
        Ok(())
    }

    /// Records the watermark now (a stage stopping in order: the batches let finish are
    /// covered, and a resume does not write them again).
    pub(super) async fn flush(&mut self) -> Result<(), RunError> {
        self.record().await
    }

    async fn record(&mut self) -> Result<(), RunError> {
        if let Some((key, covered)) = &self.watermark.at
            && !key.is_empty()
        {
            // Removals of every finished batch so far, past the watermark too.
            let covered = &ledger::Covered {
                removed: self.watermark.base.removed + self.watermark.removed,
                ..*covered
            };
            // Asked to stop (the process shuts down) the lock is still the run's: the batches
            // that finished are recorded, so a resume starts after them.
            if let Some(f) = &self.fence {
                match f.check().await {
                    Err(l) if l.stopped => {}
                    other => other?,
                }
            }
            self.rejects.sync().map_err(|cause| RunError::Io {
                path: self.rejects.dir().to_path_buf(),
                cause,
            })?;
            self.ledger
                .checkpoint(&self.run_id, &self.entity, key, *covered)
                .await?;
            tracing::debug!(entity = %self.entity, rows = covered.rows, rejected = covered.rejected, "checkpoint recorded");
            self.recorded = Some(Instant::now());
        }
        Ok(())
    }
}

/// Counts a step that stopped before its end (a failure, SIGTERM, a lost lock) — or went past
/// batches the target did not take (`--continue-on-error`), which hold its checkpoint — up to its
/// checkpoint in the ledger, as history and the API count it: the rows past it are read again by
/// the run that resumes it, which counts them. Their reject and warning lines are set apart
/// (`read-again/`), so that each row is in one run's rejects file (adv30 T2). A step with
/// nothing past its checkpoint is left as it is.
pub(super) async fn count_to_checkpoint(
    ledger: &Ledger,
    rejects: &RejectsWriter,
    run_id: &str,
    report: &mut crate::monitor::report::EntityReport,
) -> Result<(), RunError> {
    let id = format!("{run_id}:{}", report.name);
    let steps = ledger.all_steps().await?;
    let Some(s) = steps.iter().find(|s| s.id == id) else {
        return Ok(());
    };
    let rows = s.checkpoint_rows.max(0) as u64;
    if report.read <= rows {
        return Ok(());
    }
    let apart = rejects
        .set_apart(&report.name, s.checkpoint_batches.max(0) as u64)
        .map_err(|cause| RunError::Io {
            path: rejects.dir().to_path_buf(),
            cause,
        })?;
    report.read_again = report.read - rows;
    report.read_again_rejected = apart.rejected_rows;
    report.read_again_failed = report.failed;
    let written_before = report.written;
    report.read = rows;
    report.rejected = (s.checkpoint_rejected.max(0) as u64).min(rows);
    report.written = rows - report.rejected;
    report.read_again_written = written_before.saturating_sub(report.written);
    report.warnings = s.checkpoint_warned.max(0) as u64;
    report.skipped = 0;
    report.failed = 0;
    for o in &mut report.orphan_children {
        o.rows = o
            .rows
            .saturating_sub(apart.orphans.get(&o.embed).copied().unwrap_or(0));
    }
    report.success_rate =
        crate::monitor::report::success_rate(report.written, report.read, report.skipped);
    // This run's rows over this run's time, as the API gives it.
    let own = rows.saturating_sub(report.resumed_after_rows);
    let secs = (report.duration_ms as f64 / 1000.0).max(0.001);
    report.rows_per_sec = (own as f64 / secs * 10.0).round() / 10.0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Vec<String> {
        vec![k.to_string()]
    }

    fn at(w: &Watermark) -> Option<(&str, ledger::Covered)> {
        w.at.as_ref().map(|(k, c)| (k[0].as_str(), *c))
    }

    #[test]
    fn the_watermark_waits_for_every_earlier_batch() {
        let mut w = Watermark::new(Default::default());
        // Batches 1 and 2 finish before batch 0: nothing is covered yet.
        assert!(!w.finished(2, (key("30"), 30, 1, 0, 0)));
        assert!(!w.finished(1, (key("20"), 20, 0, 2, 1)));
        assert_eq!(at(&w), None);
        // Batch 0 finishes: the watermark jumps past all three, adding up what they cover.
        assert!(w.finished(0, (key("10"), 10, 3, 0, 0)));
        assert_eq!(
            at(&w),
            Some((
                "30",
                ledger::Covered {
                    rows: 30,
                    rejected: 4,
                    warned: 2,
                    batches: 3,
                    removed: 1,
                }
            ))
        );
        assert!(w.done.is_empty());
        // Batch 4 before batch 3: it waits.
        assert!(!w.finished(4, (key("50"), 50, 0, 0, 0)));
        assert_eq!(at(&w).map(|(k, _)| k), Some("30"));
        assert!(w.finished(3, (key("40"), 40, 0, 1, 0)));
        let (k, c) = at(&w).unwrap();
        assert_eq!((k, c.rows, c.warned, c.batches), ("50", 50, 3, 5));
        // Removals count as soon as their batch finishes, past the watermark too: a resume
        // past the checkpoint finds those documents gone.
        assert!(!w.finished(7, (key("80"), 80, 0, 0, 4)));
        assert!(w.finished(5, (key("60"), 60, 0, 0, 2)));
        let (k, c) = at(&w).unwrap();
        assert_eq!((k, c.removed), ("60", 1 + 4 + 2));
    }

    #[test]
    fn a_resumed_steps_watermark_counts_from_what_its_checkpoint_covered() {
        let base = ledger::Covered {
            rows: 100,
            rejected: 5,
            warned: 7,
            batches: 0,
            removed: 2,
        };
        let mut w = Watermark::new(base);
        // Rows read are this run's (up to the batch's last row): the base's rows come on top;
        // the other counts add to the base's.
        assert!(w.finished(0, (key("k"), 10, 1, 1, 1)));
        assert_eq!(
            at(&w).unwrap().1,
            ledger::Covered {
                rows: 110,
                rejected: 6,
                warned: 8,
                batches: 1,
                removed: 3,
            }
        );
        // The step's own batches count from 0.
        assert!(w.finished(1, (key("l"), 25, 0, 0, 0)));
        assert_eq!(at(&w).unwrap().1.batches, 2);
        assert_eq!(at(&w).unwrap().1.rows, 125);
    }
}
