//! The writer of one stage: takes the reader's batches and writes them with bounded concurrency
//! (each batch its own task), retrying whole batches and the documents the server may take on
//! another try, removing stale documents, recording the target's refusals as rejects, and moving
//! the checkpoint as batches complete.

use std::sync::atomic::{AtomicU64, Ordering};

use bson::RawDocumentBuf;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::checkpoint::Checkpointer;
use super::error::RunError;
use super::read::{Batch, reject};
use super::stage::StageCtx;
use super::transient::retry_transient;
use crate::ledger::Removal;
use crate::monitor::EntityCounters;
use crate::sink::mongodb::{BatchResult, WriteMode};
use crate::sink::retry::retry;
use crate::sink::target::SinkError;
use crate::transform::{Issue, Stage};

/// How long a run writes on the strength of its last look at the lock (checkpoints look every
/// 200 ms while batches complete).
const FENCE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// A spawned task that is aborted when dropped (a stopped write loop leaves no write behind).
pub(crate) struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Spawned<T> {
    pub(crate) fn spawn(task: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Spawned(tokio::spawn(task))
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Spawned<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Writes the batches of `rx` in `mode`, as many at once as --concurrency says (a file stage's:
/// --file-concurrency, each batch uploading its files one after the other, so that many files
/// are in flight), and moves the checkpoint (when there is one) as they complete: past a batch
/// only once it and every batch before it are done, whatever order they complete in.
pub(super) async fn write_loop(
    rx: mpsc::Receiver<Batch>,
    shared: StageCtx,
    mode: WriteMode,
    mut checkpointer: Option<Checkpointer>,
) -> Result<(), RunError> {
    let ctx = shared.clone();
    let StageCtx {
        target,
        opts,
        entity,
        collection,
        counters,
        rejects,
        total_rejected,
        remove_stale,
        keep_stale,
        remover,
        read_all: _,
    } = shared;
    let fence = checkpointer.as_ref().and_then(|c| c.fence.clone());
    // A re-run into what cutover wrote before: rows refused for a key another document holds
    // are tried again at the end (their older documents removed first — never a document
    // cutover did not write: the application's own, in a collection it filled).
    let defer = mode == WriteMode::Upsert && remove_stale && !target.is_bucket(&collection);
    let mut deferred = super::deferred::Deferred::default();
    let in_flight = if target.writes_in_key_order(&collection) {
        tracing::info!(%entity, "a unique index: batches are written one at a time, in key order");
        1
    } else {
        in_flight(&opts, target.is_bucket(&collection))
    };
    let start = |batch: Batch| {
        let fence = fence.clone();
        let target = target.clone();
        let collection = collection.clone();
        let counters = counters.clone();
        let remover = remover.clone();
        let policy = opts.retry;
        // Each batch is its own task: it makes progress (and gives its connection back)
        // while this loop waits for the ledger.
        Spawned(tokio::spawn(async move {
            // After a pause (or with slow writes) the lock is read again before writing.
            if let Some(f) = &fence
                && let Err(lost) = f.check_if_stale(FENCE_MAX_AGE).await
            {
                return (batch, Err(RunError::LockLost(lost)), 0);
            }
            // The older documents to remove are noted in the ledger first (those there
            // now): a run resuming after a kill counts what this one removed.
            // Kept (Appwrite Storage): only counted, those there now.
            if keep_stale && !batch.stale.is_empty() {
                match target.present(&collection, &batch.stale).await {
                    Ok(there) => EntityCounters::add(&counters.files_kept, there.len() as u64),
                    Err(e) => return (batch, Err(e.into()), 0),
                }
            }
            let noted = if batch.stale.is_empty() || keep_stale {
                None
            } else {
                match remover
                    .note(&target, &collection, Removal::Stale, &batch.stale)
                    .await
                {
                    Ok(n) => Some(n),
                    Err(e) => return (batch, Err(e), 0),
                }
            };
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let removed_here = AtomicU64::new(0);
            let result = retry(
                    policy,
                    tokio::time::sleep,
                    |attempt, err: &SinkError| {
                        EntityCounters::add(&counters.retried, 1);
                        tracing::warn!(collection = %collection, attempt, error = %err, "retrying a batch");
                    },
                    |attempt| {
                        attempts.store(attempt + 1, Ordering::Relaxed);
                        // A retried batch may be partly written: only upserts are idempotent.
                        let m = if attempt == 0 { mode } else { WriteMode::Upsert };
                        let target = &target;
                        let collection = &collection;
                        let docs = &batch.docs;
                        let files = &batch.files;
                        let stale = noted.as_ref().map_or(&[][..], |n| n.ids.as_slice());
                        let counters = &counters;
                        let removed_here = &removed_here;
                        async move {
                            // Again on a retry: what an attempt removed is gone (counted once).
                            let removed = target.remove_documents(collection, stale).await?;
                            EntityCounters::add(&counters.removed, removed);
                            removed_here.fetch_add(removed, Ordering::Relaxed);
                            if docs.is_empty() {
                                return Ok(BatchResult::default());
                            }
                            if target.is_bucket(collection) {
                                return target.write_files(collection, docs, files).await;
                            }
                            target.write(collection, docs, m).await
                        }
                    },
                )
                .await;
            let result = match result {
                Ok(r) if r.errors.iter().any(|e| e.transient) => Ok(retry_transient(
                    |again: Vec<RawDocumentBuf>| {
                        let (target, collection) = (&target, &collection);
                        async move { target.write(collection, &again, WriteMode::Upsert).await }
                    },
                    &collection,
                    &batch.docs,
                    r,
                    policy,
                    &counters,
                )
                .await),
                other => other,
            };
            let mut batch = batch;
            let removed = removed_here.load(Ordering::Relaxed);
            batch.removed += removed;
            let attempts = attempts.load(Ordering::Relaxed);
            if let Some(n) = noted
                && result.is_ok()
                && let Err(e) = remover.done(n, removed).await
            {
                return (batch, Err(e), attempts);
            }
            (batch, Ok(result), attempts)
        }))
    };

    // Batches (or documents) not written with --continue-on-error: the stage ends failed, and
    // the checkpoint never passes them.
    let mut failed_batches = 0u64;
    let mut blocked = false;
    // Documents the target refused, and the first refusal: a target that takes none of them
    // (a view, a validator that fits nothing) fails the stage rather than "completing" it.
    let mut refused = 0u64;
    let mut first_refusal: Option<String> = None;
    let mut rx = rx;
    let mut running = futures::stream::FuturesUnordered::new();
    // The batches still to come (until the reader is done, or the stage stops).
    let mut taking = true;
    // What stopped the stage in order (--max-rejects, a batch or documents that could not be
    // written): no batch is started after it, and those in flight are let finish — a file
    // stage's uploads complete, their rows written or rejected, rather than cut off mid-file.
    let mut stopping: Option<RunError> = None;
    loop {
        let take = taking && stopping.is_none() && running.len() < in_flight;
        let joined = tokio::select! {
            biased;
            done = running.next(), if !running.is_empty() => match done {
                Some(joined) => joined,
                None => continue,
            },
            next = rx.recv(), if take => {
                match next {
                    Some(mut batch) => {
                        if defer {
                            deferred.claim(&target, &collection, &mut batch)?;
                        }
                        running.push(start(batch))
                    }
                    None => taking = false,
                }
                continue;
            }
            else => break,
        };
        let settled: Result<(), RunError> = async {
            let set_aside;
            let (mut batch, result, attempts) =
                joined.map_err(|e| RunError::Refused(format!("a batch write task failed: {e}")))?;
            let result = result?;
            // Asked to stop (the process shuts down; the lock is still ours): this batch was
            // written, so it is counted, and the stop is an orderly one after it.
            let mut asked_to_stop = None;
            if let Some(f) = &fence {
                // Lost (seen by the heartbeat): stop at once. Refused documents (duplicate keys, in
                // insert mode) may be another run's: make sure the lock is still ours first.
                let refused = matches!(&result, Ok(r) if !r.errors.is_empty());
                if f.is_lost() || refused {
                    match f.check().await {
                        Err(l) if l.stopped => asked_to_stop = Some(l),
                        other => other?,
                    }
                }
            }
            EntityCounters::add(&counters.batches, 1);
            tracing::debug!(entity = %entity, seq = batch.seq, documents = batch.docs.len(), "batch written");
            match result {
                Ok(BatchResult {
                    written,
                    errors,
                    files,
                }) => {
                    let mut over_limit = None;
                    EntityCounters::add(&counters.files_uploaded, files.uploaded);
                    EntityCounters::add(&counters.file_bytes, files.uploaded_bytes);
                    EntityCounters::add(&counters.files_unchanged, files.unchanged);
                    EntityCounters::add(&counters.bytes, batch.bytes as u64);
                    // Documents the server could still not take after their retries are failed,
                    // like a failed batch: never rejected, and the checkpoint stays before them.
                    let (transient, errors): (Vec<_>, Vec<_>) =
                        errors.into_iter().partition(|e| e.transient);
                    // Refused for a key another document holds, which may be another row's
                    // older version (see `deferred`): set aside, neither rejected nor removed.
                    let (later, errors): (Vec<_>, Vec<_>) = errors
                        .into_iter()
                        .partition(|e| {
                            defer
                                && e.index < batch.docs.len()
                                && target.key_held_elsewhere(&collection, e)
                        });
                    // Documents of the batch written after a row set aside, taking the key it
                    // will hold (an older document held it when that row was tried), wait too:
                    // the first in key order keeps it, as `check` says.
                    let later: Vec<usize> = later.iter().map(|e| e.index).collect();
                    let followers = if later.is_empty() {
                        Vec::new()
                    } else {
                        let refused: std::collections::HashSet<usize> = errors
                            .iter()
                            .chain(&transient)
                            .map(|e| e.index)
                            .chain(later.iter().copied())
                            .collect();
                        deferred.followers(&target, &collection, &batch, &later, &refused)
                    };
                    for &i in later.iter().chain(&followers) {
                        deferred.push(&target, &collection, &batch, i)?;
                    }
                    EntityCounters::add(
                        &counters.written,
                        written.saturating_sub(followers.len() as u64),
                    );
                    set_aside = !later.is_empty() || deferred.claimed(batch.seq);
                    // The older documents of rows the target refused now are stale like those of
                    // rows the mapping rejects (see `Batch::stale`).
                    let refused_ids: Vec<bson::Bson> = if remove_stale || keep_stale {
                        errors
                            .iter()
                            .filter_map(|e| batch.docs.get(e.index))
                            .filter_map(|d| d.get("_id").ok().flatten())
                            .filter_map(|id| bson::Bson::try_from(id.to_raw_bson()).ok())
                            .collect()
                    } else {
                        Vec::new()
                    };
                    if keep_stale && !refused_ids.is_empty() {
                        let there = target.present(&collection, &refused_ids).await?;
                        EntityCounters::add(&counters.files_kept, there.len() as u64);
                    } else if !refused_ids.is_empty() {
                        let removed = remover
                            .remove_stale(&target, &collection, &refused_ids)
                            .await?;
                        EntityCounters::add(&counters.removed, removed);
                        batch.removed += removed;
                    }
                    // The warnings of the documents the target took (or that wait, set aside).
                    let not_taken: std::collections::HashSet<usize> =
                        errors.iter().chain(&transient).map(|e| e.index).collect();
                    for (i, issues) in std::mem::take(&mut batch.warnings) {
                        if not_taken.contains(&i) {
                            continue;
                        }
                        let key = batch.keys.get(i).map(String::as_str).unwrap_or("?");
                        let issues: Vec<&Issue> = issues.iter().collect();
                        EntityCounters::add(&counters.warnings, 1);
                        rejects
                            .warn(&entity, key, &issues, Some(batch.seq))
                            .map_err(|cause| RunError::Io {
                                path: rejects.dir().to_path_buf(),
                                cause,
                            })?;
                        batch.warned += 1;
                    }
                    for e in errors {
                        // The server's own refusals (a code of its, or a file Storage refused):
                        // those cutover makes before sending (code 0: a value Appwrite cannot
                        // hold, a file missing on disk) are the data's rejects, as check
                        // predicts them, not a target refusing all.
                        // A key a unique index holds elsewhere is the data's reject too (check
                        // counts them): a stage whose rows all meet one is no target refusing
                        // all (adv44 F4: a delta of one such row failed, and was resumed).
                        let unique_key = e.code_name == crate::sink::target::RULE_DUPLICATE_KEY
                            || e.code_name == crate::sink::target::RULE_UNIQUE_INDEX;
                        if (e.code != 0 || e.code_name == crate::sink::gridfs::RULE_UPLOAD)
                            && !unique_key
                        {
                            refused += 1;
                            first_refusal
                                .get_or_insert_with(|| format!("{} (code {})", e.message, e.code));
                        }
                        let key = batch.keys.get(e.index).map(String::as_str).unwrap_or("?");
                        // A file stage's own refusals (the file on disk) name no server code.
                        let issue = if e.code_name.starts_with("file_") && e.code == 0 {
                            Issue::error(
                                Stage::File,
                                &e.code_name,
                                "",
                                e.message.clone(),
                                batch
                                    .files
                                    .get(e.index)
                                    .and_then(|f| f.path.clone())
                                    .unwrap_or_default(),
                            )
                        } else {
                            super::deferred::write_issue(&e, batch.docs.get(e.index))
                        };
                        // Past --max-rejects: the batch's other refusals are recorded all the
                        // same (its rows are accounted for), then the stage stops.
                        match reject(
                            &counters,
                            &total_rejected,
                            &rejects,
                            (&entity, key, Some(batch.seq)),
                            &[issue],
                            &opts,
                        ) {
                            Ok(()) => {}
                            Err(e @ RunError::TooManyRejects { .. }) => {
                                over_limit.get_or_insert(e);
                            }
                            Err(e) => return Err(e),
                        }
                        batch.rejected += 1;
                    }
                    if let Some(e) = over_limit {
                        return Err(e);
                    }
                    // After the batch's refused documents are recorded.
                    if !transient.is_empty() {
                        let rows = transient.len() as u64;
                        EntityCounters::add(&counters.failed, rows);
                        EntityCounters::add(&counters.skipped, rows);
                        blocked = true;
                        if !opts.continue_on_error {
                            return Err(RunError::DocumentsFailed {
                                entity: entity.clone(),
                                rows,
                                message: transient[0].message.clone(),
                            });
                        }
                        failed_batches += 1;
                    }
                }
                Err(source) => {
                    // Not a row's fault: the rows are failed (not written, not refused), counted
                    // apart from rejects; the checkpoint stays before them so a resume writes them.
                    let rows = batch.docs.len() as u64;
                    EntityCounters::add(&counters.failed, rows);
                    EntityCounters::add(&counters.skipped, rows);
                    tracing::error!(entity = %entity, rows, error = %source, "a batch could not be written");
                    if !opts.continue_on_error {
                        return Err(RunError::BatchFailed {
                            entity: entity.clone(),
                            rows: batch.docs.len(),
                            attempts,
                            cause: Box::new(source),
                        });
                    }
                    failed_batches += 1;
                    return Ok(());
                }
            }
            // Every row of the batch is now written or recorded as a reject (a stopped run returned
            // above): the watermark may move past it — unless rows of it (or of an earlier batch)
            // failed.
            let stop = || asked_to_stop.map_or(Ok(()), |l| Err(RunError::LockLost(l)));
            // Finished once its rows set aside are settled: the checkpoint stays before it.
            if set_aside {
                deferred.hold(batch);
                return stop();
            }
            if blocked {
                return stop();
            }
            if let Some(c) = checkpointer.as_mut() {
                c.finished(batch.seq, &mut batch).await?;
            }
            stop()
        }
        .await;
        match settled {
            Ok(()) => {}
            Err(e) if orderly(&e) => {
                if stopping.is_none() {
                    if !running.is_empty() {
                        tracing::warn!(entity = %entity, batches = running.len(), error = %e, "stopping: the batches in flight finish first");
                    }
                    stopping = Some(e);
                }
            }
            // Anything else (the lock lost, the ledger or the rejects file failing): at once.
            Err(e) => return Err(e),
        }
    }
    // The reader stopped early (its own --max-rejects, a source error): a row set aside may wait
    // for a row it never sent, whose older document holds its key — judged by the resume.
    // (The reader's own error ends the stage; the checkpoint stays before their batches.)
    if stopping.is_none() && !ctx.read_all.load(Ordering::Acquire) && deferred.rows() > 0 {
        EntityCounters::add(&counters.skipped, deferred.rows());
        if let Some(c) = checkpointer.as_mut() {
            c.flush().await?;
        }
        return Ok(());
    }
    if let Some(e) = stopping {
        // Rows set aside are not written now: a resume writes them (the checkpoint is before
        // their batches).
        let rows = deferred.rows();
        EntityCounters::add(&counters.failed, rows);
        EntityCounters::add(&counters.skipped, rows);
        // Every batch taken has finished: the checkpoint covers them, so the resume starts
        // after what this stage wrote (history would count those rows twice otherwise).
        if let Some(c) = checkpointer.as_mut()
            && let Err(flush) = c.flush().await
        {
            tracing::warn!(entity = %entity, error = %flush, "the checkpoint of the batches let finish was not recorded");
        }
        return Err(e);
    }
    // After a batch that could not be written (--continue-on-error) the checkpoint stays before
    // it: the batches held for rows set aside are not finished either.
    let held_finish = if blocked { None } else { checkpointer.as_mut() };
    // The rows set aside met a key a unique index holds: the data's rejects, not a target
    // refusing every document (adv44 F4).
    deferred.settle(&ctx, fence.as_ref(), held_finish).await?;
    // What every finished batch covers, recorded now (the last record may be up to 200 ms
    // old): a stage the reader stopped (its --max-rejects, a source error) is counted up to
    // here, and its resume starts after these batches (adv31 F3: 12 batches written, one
    // recorded, the rest read and written again).
    if let Some(c) = checkpointer.as_mut() {
        c.flush().await?;
    }
    if refused > 0
        && counters.written.load(Ordering::Relaxed) == 0
        && checkpointer
            .as_ref()
            .is_none_or(|c| c.base().written() == 0)
    {
        // A file stage's rows are also rejected by the upload's own checks (the file changed
        // on disk while sent): not the target's refusal (adv34 F3).
        let who = if target.is_bucket(&collection) {
            "every row it wrote was rejected when written (refused by the target, or its file failing the upload's checks)"
        } else {
            "the target refused every document it was sent"
        };
        return Err(RunError::Refused(format!(
            "{entity}: {who} ({refused}, each recorded as a reject); the first: {}",
            first_refusal.unwrap_or_default()
        )));
    }
    let failed = counters.failed.load(Ordering::Relaxed);
    if failed_batches > 0 {
        return Err(RunError::Unwritten {
            entity,
            rows: failed,
            batches: failed_batches,
        });
    }
    Ok(())
}

/// Whether `e` stops a stage in order: the batches in flight are let finish (and counted).
fn orderly(e: &RunError) -> bool {
    matches!(
        e,
        RunError::TooManyRejects { .. }
            | RunError::BatchFailed { .. }
            | RunError::DocumentsFailed { .. }
    ) || matches!(e, RunError::LockLost(l) if l.stopped)
}

/// Batches a stage keeps in flight: --concurrency, or for a file stage (`bucket`)
/// --file-concurrency (its batches upload their files one at a time).
pub(super) fn in_flight(opts: &super::options::RunOptions, bucket: bool) -> usize {
    if bucket {
        opts.file_concurrency.max(1)
    } else {
        opts.concurrency.max(1)
    }
}
