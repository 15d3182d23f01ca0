//! Checkpoints of a stage: batches complete in any order (the writer has several in flight), and
//! the checkpoint recorded in the ledger is the contiguous watermark — the key below which every
//! batch is durably written — with what it covers (rows, rejected, warned, removed).

use std::sync::Arc;
use std::time::Instant;

use super::error::RunError;
use super::read::Batch;
use crate::ledger::{self, Ledger};
use crate::monitor::rejects::RejectsWriter;

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
    /// What was covered before this run (a resumed step).
    pub(super) base: ledger::Covered,
    next: u64,
    /// Finished batches past the watermark: (key, rows read up to it, rejected, warned).
    done: std::collections::BTreeMap<u64, (Vec<String>, u64, u64, u64, u64)>,
    /// The key below which every batch is finished, and what that covers.
    watermark: Option<(Vec<String>, ledger::Covered)>,
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
            base,
            next: 0,
            done: Default::default(),
            watermark: None,
            recorded: None,
        }
    }

    /// Notes batch `seq` as finished; records the watermark at most every 200 ms.
    pub(super) async fn finished(&mut self, seq: u64, batch: &mut Batch) -> Result<(), RunError> {
        self.done.insert(
            seq,
            (
                std::mem::take(&mut batch.last_key),
                batch.read_upto,
                batch.rejected,
                batch.warned,
                batch.removed,
            ),
        );
        let mut advanced = false;
        while let Some((key, rows, rejected, warned, removed)) = self.done.remove(&self.next) {
            let before = self.watermark.as_ref().map_or(self.base, |(_, c)| *c);
            self.next += 1;
            let covered = ledger::Covered {
                rows: self.base.rows + rows,
                rejected: before.rejected + rejected,
                warned: before.warned + warned,
                batches: self.next,
                removed: before.removed + removed,
            };
            self.watermark = Some((key, covered));
            advanced = true;
        }
        let due = self
            .recorded
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_millis(200));
        if advanced && due {
            self.record().await?;
        }
        Ok(())
    }

    async fn record(&mut self) -> Result<(), RunError> {
        if let Some((key, covered)) = &self.watermark
            && !key.is_empty()
        {
            if let Some(f) = &self.fence {
                f.check().await?;
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
