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

/// Ids looked up or removed in one command.
const IDS_PER_COMMAND: usize = 1000;

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
    /// The unique keys the rows set aside will hold (where the target can tell them): a later
    /// row claiming one of them waits too, so that the first in key order keeps it.
    keys: std::collections::HashSet<String>,
    /// Batches some of whose documents were set aside before writing: the original index of
    /// each document left in them (for the stage's order).
    claimed: std::collections::HashMap<u64, Vec<usize>>,
}

impl Deferred {
    pub(super) fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether `seq` had documents set aside before it was written.
    pub(super) fn claimed(&self, seq: u64) -> bool {
        self.claimed.contains_key(&seq)
    }

    /// Sets aside, before `batch` is written, its documents that would take a key a row set
    /// aside earlier in the stage will hold: written now, they would keep it, and that earlier
    /// row be rejected (`check` keeps the first in key order).
    pub(super) fn claim(
        &mut self,
        target: &crate::sink::target::Target,
        collection: &str,
        batch: &mut Batch,
    ) -> Result<(), RunError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let taken: Vec<usize> = target
            .unique_keys(collection, &batch.docs)
            .iter()
            .enumerate()
            .filter(|(_, keys)| keys.iter().any(|k| self.keys.contains(k)))
            .map(|(i, _)| i)
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        for &i in &taken {
            self.push(target, collection, batch, i)?;
        }
        let mut left = Vec::new();
        let (mut docs, mut keys) = (Vec::new(), Vec::new());
        for (i, (d, k)) in std::mem::take(&mut batch.docs)
            .into_iter()
            .zip(std::mem::take(&mut batch.keys))
            .enumerate()
        {
            if !taken.contains(&i) {
                left.push(i);
                docs.push(d);
                keys.push(k);
            }
        }
        batch.docs = docs;
        batch.keys = keys;
        self.claimed.insert(batch.seq, left);
        Ok(())
    }

    /// Sets aside the documents of `batch` written after `first` (in its order) that hold a key
    /// a document set aside from it will hold: the server took them while an older document
    /// held the earlier row's key. Returns their indexes (no longer written).
    pub(super) fn followers(
        &self,
        target: &crate::sink::target::Target,
        collection: &str,
        batch: &Batch,
        set_aside: &[usize],
        refused: &std::collections::HashSet<usize>,
    ) -> Vec<usize> {
        let Some(&first) = set_aside.iter().min() else {
            return Vec::new();
        };
        let all = target.unique_keys(collection, &batch.docs);
        let keys: std::collections::HashSet<&String> =
            set_aside.iter().flat_map(|&i| &all[i]).collect();
        if keys.is_empty() {
            return Vec::new();
        }
        (first + 1..batch.docs.len())
            .filter(|i| !refused.contains(i))
            .filter(|&i| all[i].iter().any(|k| keys.contains(k)))
            .collect()
    }

    /// Sets aside document `index` of `batch`.
    pub(super) fn push(
        &mut self,
        target: &crate::sink::target::Target,
        collection: &str,
        batch: &Batch,
        index: usize,
    ) -> Result<(), RunError> {
        let Some(doc) = batch.docs.get(index) else {
            return Ok(());
        };
        let key = batch.keys.get(index).map(String::as_str).unwrap_or("?");
        self.keys
            .extend(target.unique_keys(collection, [doc]).into_iter().flatten());
        // The stage's order: the document's place in its batch as the reader made it.
        let place = self
            .claimed
            .get(&batch.seq)
            .and_then(|left| left.get(index).copied())
            .unwrap_or(index);
        let mut sort_key = batch.seq.to_be_bytes().to_vec();
        sort_key.extend_from_slice(&(place as u64).to_be_bytes());
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
        // Past --max-rejects every row was settled all the same: their batches are finished,
        // and the checkpoint passes them (a resume does not read them again).
        let every_row_settled =
            matches!(result, Err(RunError::TooManyRejects { .. })) && settled >= self.rows;
        if result.is_err() && !every_row_settled {
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
        // Those there now had older documents: removed if they are rejected again. A few
        // thousand ids a command (a server's command size bounds one list of them).
        let mut there = std::collections::HashSet::new();
        for ids in self.ids.chunks(IDS_PER_COMMAND) {
            for id in target.present(collection, ids).await? {
                there.insert(id.to_string());
            }
            target.remove_documents(collection, ids).await?;
        }
        let mut sorted = spill.sorted().map_err(spill_error)?;
        let mut refused = 0;
        // Past --max-rejects the rows still to write are written all the same (their older
        // documents are gone already: stopping here would leave them missing until a resume),
        // their refusals recorded; the stage stops after them.
        let mut over_limit = None;
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
            // The lock is looked at before each write, as the stage's batches do (a run that
            // lost it, or is asked to stop, writes no more).
            if let Some(f) = fence {
                f.check().await?;
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
            // Documents the server may take on another try (a write conflict, a 5xx on one row)
            // are written again as the stage's batches' are.
            let result = if result.errors.iter().any(|e| e.transient) {
                super::transient::retry_transient(
                    |again: Vec<RawDocumentBuf>| async move {
                        target.write(collection, &again, WriteMode::Upsert).await
                    },
                    collection,
                    &docs,
                    result,
                    opts.retry,
                    counters,
                )
                .await
            } else {
                result
            };
            EntityCounters::add(&counters.written, result.written);
            *settled += result.written;
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
            if !failed.is_empty() {
                return Err(RunError::DocumentsFailed {
                    entity: entity.clone(),
                    rows: failed.len() as u64,
                    message: failed[0].message.clone(),
                });
            }
        }
        match over_limit {
            Some(e) => Err(e),
            None => Ok(refused),
        }
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
