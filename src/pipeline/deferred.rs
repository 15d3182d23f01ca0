//! Rows a re-run's target refused because a unique index holds their key in another document
//! (the outside tester's adv19 F2). That document may be another row's *older* version, which
//! this run replaces later (two rows swapping codes: each meets the other's older document), so
//! such a row is not rejected at once: it is set aside (spilled to disk, in the stage's order)
//! and tried again when the stage has written every other row — after the older documents of
//! the rows set aside are removed, so that they hold no key any more. What is refused then is
//! refused by the new data itself (a code two rows now share: the first in key order keeps it,
//! as `check` counts it) or by a document no row of this run wrote, and is rejected.
//!
//! A batch with rows set aside is not finished until they are written or rejected: the
//! checkpoint stays before it, so a run killed in between writes them again when it resumes.

use std::collections::BTreeMap;

use bson::{Bson, RawDocumentBuf};

use super::checkpoint::Checkpointer;
use super::error::RunError;
use super::read::{Batch, reject};
use super::spill::Spill;
use super::stage::StageCtx;
use crate::monitor::EntityCounters;
use crate::sink::mongodb::{DocError, WriteMode};
use crate::sink::retry::retry;
use crate::transform::{Issue, Stage};

/// The rows set aside by one stage, and the batches waiting for them.
#[derive(Default)]
pub(super) struct Deferred {
    /// `(batch seq, index)` big-endian → `(source key, document)`: read back in stage order.
    spill: Option<Spill>,
    /// The ids of the rows set aside (their older documents are removed before the retry).
    ids: Vec<Bson>,
    /// Batches with rows set aside, without their documents: finished after the retry.
    held: BTreeMap<u64, Batch>,
    rows: u64,
}

impl Deferred {
    pub(super) fn rows(&self) -> u64 {
        self.rows
    }

    /// Sets aside document `index` of `batch`.
    pub(super) fn push(&mut self, batch: &Batch, index: usize) -> Result<(), RunError> {
        let Some(doc) = batch.docs.get(index) else {
            return Ok(());
        };
        let key = batch.keys.get(index).map(String::as_str).unwrap_or("?");
        let mut sort_key = batch.seq.to_be_bytes().to_vec();
        sort_key.extend_from_slice(&(index as u64).to_be_bytes());
        let mut payload = (key.len() as u64).to_be_bytes().to_vec();
        payload.extend_from_slice(key.as_bytes());
        payload.extend_from_slice(doc.as_bytes());
        self.spill
            .get_or_insert_with(Spill::new)
            .push(sort_key, payload)
            .map_err(spill_error)?;
        if let Some(id) = doc.get("_id").ok().flatten()
            && let Ok(id) = Bson::try_from(id.to_raw_bson())
        {
            self.ids.push(id);
        }
        self.rows += 1;
        Ok(())
    }

    /// Keeps `batch` (without its documents) until its rows set aside are settled.
    pub(super) fn hold(&mut self, mut batch: Batch) {
        batch.docs = Vec::new();
        batch.files = Vec::new();
        batch.keys = Vec::new();
        batch.stale = Vec::new();
        self.held.insert(batch.seq, batch);
    }

    /// Removes the older documents of the rows set aside, writes the rows again in the stage's
    /// order (as upserts, `batch_size` at a time), rejects those still refused, and finishes the
    /// batches held for them (when `checkpointer` is given). Returns how many were refused by
    /// the server (for the stage's "refused every document" judgement). When it stops with an
    /// error, the rows it had not settled are counted failed and skipped (a resume writes them:
    /// the checkpoint is before their batches).
    pub(super) async fn settle(
        mut self,
        ctx: &StageCtx,
        fence: Option<&crate::ledger::lock::Fence>,
        checkpointer: Option<&mut Checkpointer>,
    ) -> Result<u64, RunError> {
        let Some(spill) = self.spill.take() else {
            return Ok(0);
        };
        let mut settled = 0;
        let result = self.write_again(spill, ctx, fence, &mut settled).await;
        if result.is_err() {
            let left = self.rows.saturating_sub(settled);
            EntityCounters::add(&ctx.counters.failed, left);
            EntityCounters::add(&ctx.counters.skipped, left);
            return result;
        }
        if let Some(c) = checkpointer {
            for (seq, mut batch) in std::mem::take(&mut self.held) {
                c.finished(seq, &mut batch).await?;
            }
            c.flush().await?;
        }
        result
    }

    /// [`Deferred::settle`]'s writes; `settled` counts the rows written or rejected so far.
    async fn write_again(
        &mut self,
        spill: Spill,
        ctx: &StageCtx,
        fence: Option<&crate::ledger::lock::Fence>,
        settled: &mut u64,
    ) -> Result<u64, RunError> {
        let StageCtx {
            target,
            opts,
            entity,
            collection,
            counters,
            rejects,
            total_rejected,
            ..
        } = ctx;
        if let Some(f) = fence {
            f.check().await?;
        }
        tracing::info!(%entity, rows = self.rows, "writing again the rows a unique index refused while older documents held their keys");
        // Those there now had older documents: removed if they are rejected again.
        let there: std::collections::HashSet<String> = target
            .present(collection, &self.ids)
            .await?
            .iter()
            .map(|id| id.to_string())
            .collect();
        target.remove_documents(collection, &self.ids).await?;
        let mut sorted = spill.sorted().map_err(spill_error)?;
        let mut refused = 0;
        loop {
            let mut chunk: Vec<(u64, String, RawDocumentBuf)> = Vec::new();
            while chunk.len() < opts.batch_size.max(1) {
                let Some((sort_key, payload)) = sorted.next_record().map_err(spill_error)? else {
                    break;
                };
                chunk.push(decode(&sort_key, &payload)?);
            }
            if chunk.is_empty() {
                break;
            }
            let docs: Vec<RawDocumentBuf> = chunk.iter().map(|(_, _, d)| d.clone()).collect();
            let result = retry(
                opts.retry,
                tokio::time::sleep,
                |attempt, err: &crate::sink::target::SinkError| {
                    EntityCounters::add(&counters.retried, 1);
                    tracing::warn!(%collection, attempt, error = %err, "retrying rows set aside");
                },
                |_| target.write(collection, &docs, WriteMode::Upsert),
            )
            .await
            .map_err(|source| RunError::BatchFailed {
                entity: entity.clone(),
                rows: chunk.len(),
                attempts: opts.retry.max_retries + 1,
                cause: Box::new(source),
            })?;
            EntityCounters::add(&counters.written, result.written);
            *settled += result.written;
            let mut over_limit = None;
            let mut failed: Vec<&DocError> = Vec::new();
            for e in &result.errors {
                let Some((seq, key, doc)) = chunk.get(e.index) else {
                    continue;
                };
                if e.transient {
                    failed.push(e);
                    continue;
                }
                refused += 1;
                *settled += 1;
                let issue = write_issue(e, Some(doc));
                match reject(
                    counters,
                    total_rejected,
                    rejects,
                    (entity, key, Some(*seq)),
                    &[issue],
                    opts,
                ) {
                    Ok(()) => {}
                    Err(e @ RunError::TooManyRejects { .. }) => {
                        over_limit.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
                if let Some(b) = self.held.get_mut(seq) {
                    b.rejected += 1;
                    let was_there = doc
                        .get("_id")
                        .ok()
                        .flatten()
                        .and_then(|id| Bson::try_from(id.to_raw_bson()).ok())
                        .is_some_and(|id| there.contains(&id.to_string()));
                    if was_there {
                        b.removed += 1;
                        EntityCounters::add(&counters.removed, 1);
                    }
                }
            }
            if let Some(e) = over_limit {
                return Err(e);
            }
            if !failed.is_empty() {
                return Err(RunError::DocumentsFailed {
                    entity: entity.clone(),
                    rows: failed.len() as u64,
                    message: failed[0].message.clone(),
                });
            }
        }
        Ok(refused)
    }
}

fn decode(sort_key: &[u8], payload: &[u8]) -> Result<(u64, String, RawDocumentBuf), RunError> {
    let bad = || RunError::Refused("a row set aside could not be read back".into());
    let seq = u64::from_be_bytes(
        sort_key
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let len = u64::from_be_bytes(
        payload
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let key = payload.get(8..8 + len).ok_or_else(bad)?;
    let key = String::from_utf8_lossy(key).into_owned();
    let doc = RawDocumentBuf::from_bytes(payload[8 + len..].to_vec()).map_err(|_| bad())?;
    Ok((seq, key, doc))
}

fn spill_error(cause: std::io::Error) -> RunError {
    RunError::Io {
        path: std::env::temp_dir(),
        cause,
    }
}

/// The reject of a document the server refused (with its code), fingerprinted.
pub(super) fn write_issue(e: &DocError, doc: Option<&RawDocumentBuf>) -> Issue {
    let fingerprint = doc
        .map(|d| crate::monitor::rejects::document_fingerprint(d.as_bytes()))
        .unwrap_or_default();
    Issue::error(
        Stage::Write,
        &e.code_name,
        "",
        format!("{} (code {})", e.message, e.code),
        fingerprint,
    )
}
