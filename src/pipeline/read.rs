//! The reader of one stage: streams the source in key order (through the expected-documents
//! stream, merging embedded child streams), maps and validates each row, records rejects and
//! orphan child rows, and gathers the documents into batches (by rows and bytes) for the writer.

use std::sync::atomic::{AtomicU64, Ordering};

use bson::RawDocumentBuf;
use tokio::sync::mpsc;

use super::error::RunError;
use super::expected::{ExpectedRow, ExpectedRows, Orphan, Readers};
use super::options::RunOptions;
use super::stage::{StageCtx, StageRun};
use crate::mapping::plan::Plan;
use crate::monitor::EntityCounters;
use crate::monitor::rejects::RejectsWriter;
use crate::source::postgres;
use crate::source::{SourceSession, Value};
use crate::transform::row::MapContext;
use crate::transform::{Issue, Stage};

/// The condition of a `--since-last` read: rows whose `column` says they changed at or after the
/// watermark `at` (UTC, RFC 3339), and rows that do not say (NULL): they are copied every time,
/// never lost. A `date` column holds no time of day and a `timestamp` one no zone (its local
/// time may be up to a day from UTC): both are compared a day early, re-copying at most a day of
/// rows (writes are idempotent) rather than missing one.
fn delta_filter(column: &str, kind: Option<crate::source::ColKind>, at: &str) -> String {
    let col = postgres::quote_ident(column);
    let since = match kind {
        Some(crate::source::ColKind::Date) => {
            format!(
                "CAST(CAST('{at}' AS timestamptz) AT TIME ZONE 'UTC' - interval '1 day' AS date)"
            )
        }
        Some(crate::source::ColKind::Timestamp) => {
            format!("CAST('{at}' AS timestamptz) AT TIME ZONE 'UTC' - interval '1 day'")
        }
        _ => format!("CAST('{at}' AS timestamptz)"),
    };
    format!("({col} >= {since} OR {col} IS NULL)")
}

/// The rows of `relation` (its qualifier) written by transactions from id `xid` (64-bit) on:
/// a row's `xmin` holds the low 32 bits of its writer's id, compared modulo 2^32 — ids up to
/// 2^31 after `xid` are from it on, ids before it are older (a row more than 2^31 transactions
/// old may be read again for nothing; writes are idempotent).
fn written_from(relation: &str, xid: i64) -> String {
    let low = xid.rem_euclid(1 << 32);
    format!(
        "((({relation}.xmin::text::bigint - {low}) % 4294967296 + 4294967296) % 4294967296 < 2147483648)"
    )
}

/// A batch of documents on its way to the target.
pub(super) struct Batch {
    pub(super) docs: Vec<RawDocumentBuf>,
    /// A file stage's files, one per document (empty otherwise).
    pub(super) files: Vec<crate::sink::gridfs::FileRef>,
    pub(super) keys: Vec<String>,
    pub(super) bytes: usize,
    /// Position in the stage's sequence of batches (for the contiguous checkpoint).
    pub(super) seq: u64,
    /// Key (as text) of the last source row this batch covers, rejected rows included.
    pub(super) last_key: Vec<String>,
    /// Source rows read (this run) up to and including that row.
    pub(super) read_upto: u64,
    /// Rows of the batch's stretch rejected (by the mapping before it, or by the target), and
    /// rows in it written with warnings.
    pub(super) rejected: u64,
    pub(super) warned: u64,
    /// The warnings of the batch's documents (by index), recorded by the writer once the target
    /// took them: a row refused when written has no warning (adv34 F5).
    pub(super) warnings: Vec<(usize, Vec<Issue>)>,
    /// Ids of rows rejected in this batch's stretch whose documents an earlier run may have
    /// written (upsert mode): removed before the batch is written.
    pub(super) stale: Vec<bson::Bson>,
    /// How many of those (and of the documents the target refused) were there and removed.
    pub(super) removed: u64,
}

impl Batch {
    pub(super) fn new(cap: usize) -> Batch {
        Batch {
            docs: Vec::with_capacity(cap),
            files: Vec::new(),
            keys: Vec::with_capacity(cap),
            bytes: 0,
            seq: 0,
            last_key: Vec::new(),
            read_upto: 0,
            rejected: 0,
            warned: 0,
            warnings: Vec::new(),
            stale: Vec::new(),
            removed: 0,
        }
    }

    fn seal(&mut self, seq: &mut u64, last_key: Vec<String>, read_upto: u64) {
        self.seq = *seq;
        *seq += 1;
        self.last_key = last_key;
        self.read_upto = read_upto;
    }
}

/// The field a refusal's message names first (`notes is longer than …`, `ratings holds …`), when
/// the document has it: the reject's `path` (adv32 F3: empty). Empty otherwise.
fn named_path(message: &str, doc: &RawDocumentBuf) -> String {
    let first = message.split(' ').next().unwrap_or_default();
    let top = first.split(['.', '[']).next().unwrap_or_default();
    match doc.get(top) {
        Ok(Some(_)) if !top.is_empty() => first.to_string(),
        _ => String::new(),
    }
}

/// The key of `row` in PostgreSQL's input form, in scan order (what a checkpoint stores); empty
/// when the row has none or a NULL part — a batch ending there moves no checkpoint (the next
/// batch's does, and a resume's read finds rows with NULL parts where the scan put them).
pub(super) fn key_strings(plan: &Plan, row: Option<&[Value]>) -> Vec<String> {
    row.and_then(|row| {
        let key: Vec<&Value> = plan.key.iter().map(|&i| &row[i]).collect();
        crate::source::value::key_literals(&key)
    })
    .unwrap_or_default()
}

/// The read of the rows a stage's pass reads: those after the checkpoint it resumes, those
/// changed since its `since`.
pub(super) fn pass_read(plan: &Plan, stage: &StageRun) -> Result<postgres::ReadSpec, RunError> {
    let mut read_spec = plan.read.clone();
    if let (Some(since), Some(column)) = (stage.since.as_ref(), plan.updated_at.as_deref()) {
        let xid = since.xid.filter(|_| plan.row_versions);
        let since = since.at.as_str();
        // Re-formatted from a parsed instant: safe to inline.
        let at = chrono::DateTime::parse_from_rfc3339(since)
            .map_err(|e| {
                RunError::Refused(format!("bad snapshot time {since:?} in the ledger: {e}"))
            })?
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let changed = delta_filter(column, plan.updated_at_kind, &at);
        read_spec.filter = Some(match xid {
            Some(x) => format!(
                "({changed} OR {})",
                written_from(&postgres::qualifier(&plan.read.relation), x)
            ),
            None => changed,
        });
    }
    if stage.since.is_some() {
        read_spec.also_keys = retried_keys(plan, stage)?.0;
    }
    if let Some(r) = &stage.resume {
        read_spec.after = Some(r.key.clone());
    }
    Ok(read_spec)
}

/// The keys of the rows the step a delta continues rejected for another row's sake — a
/// reference (`exists`, `reference_rejected`), or the target's refusal (a unique key) — read
/// again whatever their change time: they may pass now, as in a fresh run (adv44 F2). (A row
/// rejected for its own values is read again when they change.) Each key part as PostgreSQL's
/// input; and how many of those rows
/// cannot be named so (a key of a type whose shown text is not its input: floats, dates,
/// times, bytes — or a NULL part).
pub(super) fn retried_keys(
    plan: &Plan,
    stage: &StageRun,
) -> Result<(Vec<Vec<String>>, u64), RunError> {
    let Some(dir) = stage.since.as_ref().and_then(|s| s.rejects.as_deref()) else {
        return Ok((Vec::new(), 0));
    };
    let cross_row = |stage: &str, rule: &str| {
        stage == crate::transform::Stage::Write.as_str()
            || matches!(rule, "exists" | "reference_rejected")
    };
    let texts = crate::monitor::rejects::rejected_keys(
        std::path::Path::new(dir),
        &plan.entity,
        cross_row,
    )
    .map_err(|e| {
            RunError::Refused(format!(
                "{}: cannot read the rejects of the run this delta continues, in {dir}: {e} (their rows would not be read again; `--rerun` copies every row)",
                plan.entity
            ))
        })?;
    let width = plan.read.order.len();
    let mut keys = Vec::with_capacity(texts.len());
    let mut unnamed = 0;
    for text in texts {
        let parts = crate::source::value::key_parts(&text, width).and_then(|parts| {
            parts
                .iter()
                .enumerate()
                .map(|(n, p)| plan.read.key_input(n, p))
                .collect::<Option<Vec<String>>>()
        });
        match parts {
            Some(p) => keys.push(p),
            None => unnamed += 1,
        }
    }
    Ok((keys, unnamed))
}

/// Reads the stage's rows (those after the checkpoint it resumes, those changed since its
/// `since`) into batches sent to the writer through `tx`.
pub(super) async fn read_loop(
    plan: &Plan,
    session: &mut SourceSession,
    ctx: &MapContext,
    shared: &StageCtx,
    stage: &StageRun,
    bar: &indicatif::ProgressBar,
    tx: mpsc::Sender<Batch>,
) -> Result<(), RunError> {
    let StageCtx {
        target,
        opts,
        counters,
        rejects,
        total_rejected,
        ..
    } = shared;
    let upsert = shared.remove_stale || shared.keep_stale;
    let dry_rejected = stage.dry_rejected.as_deref();
    let resume = stage.resume.as_ref();
    let max_document_bytes = target.max_document_bytes();
    let mut readers = Readers::open(session, plan).await?;
    let readers = &mut readers;
    let read_spec = pass_read(plan, stage)?;
    let mut child_specs: Vec<_> = plan.embeds.iter().map(|e| e.read.clone()).collect();
    if let Some(r) = resume {
        // Children of parents already written are skipped by the same key: their leading
        // ordering columns are the foreign key, one per parent key column.
        for c in &mut child_specs {
            c.after = Some(r.key.clone());
        }
    }
    let start_rows = resume.map(|r| r.rows).unwrap_or(0);
    tracing::info!(entity = %plan.entity, after_rows = start_rows, embeds = plan.embeds.len(), "reading the source in key order");
    let mut seq: u64 = 0;
    let child_reads: Vec<&postgres::ReadSpec> = child_specs.iter().collect();
    let mut rows =
        ExpectedRows::with_reads(readers, plan, &read_spec, &child_reads, max_document_bytes);
    let io_err = |cause: std::io::Error| RunError::Io {
        path: rejects.dir().to_path_buf(),
        cause,
    };
    // Files are written one after the other within a batch: a few per batch, so that the
    // checkpoint moves and --file-concurrency uploads run side by side.
    let batch_size = if plan.file.is_some() {
        opts.batch_size.min(FILES_PER_BATCH)
    } else {
        opts.batch_size
    };
    let mut batch = Batch::new(batch_size);
    let mut prev_row: Option<Vec<Value>> = None;
    // Once per entity: whether a hashed row id loses the key (then said per document).
    let key_lost = target.key_lost(plan);
    let mut since_tick = 0u64;
    // Orphan child rows come before the parent row they sort before; their lines wait for that
    // row's batch, whose checkpoint is at or past their foreign key: a resume (reading the
    // children after the checkpoint's key) neither reads them again nor loses them. Those after
    // the last parent row go to no checkpointed batch: a resume reads them again.
    let mut waiting: Vec<Orphan> = Vec::new();
    let write_orphans = |waiting: &mut Vec<Orphan>, batch: Option<u64>| {
        for o in waiting.drain(..) {
            rejects
                .reject_in(&plan.entity, &o.key, &[o.issue(plan)], batch)
                .map_err(io_err)?;
            counters.add_orphan(o.embed);
        }
        Ok::<(), RunError>(())
    };

    while let Some(item) = rows.next(ctx).await? {
        if let ExpectedRow::Orphan(o) = item {
            waiting.push(o);
            if opts.dry_run {
                write_orphans(&mut waiting, None)?;
            } else if waiting.len() >= ORPHANS_WAITING {
                // Not held in memory without end: the batch gathered so far is sealed (its
                // checkpoint is before them) and they go to the next.
                if !batch.docs.is_empty() {
                    let mut full = std::mem::replace(&mut batch, Batch::new(batch_size));
                    full.seal(
                        &mut seq,
                        key_strings(plan, prev_row.as_deref()),
                        counters.read.load(Ordering::Relaxed),
                    );
                    if tx.send(full).await.is_err() {
                        return Ok(()); // the writer stopped; its error is reported
                    }
                }
                write_orphans(&mut waiting, Some(seq))?;
            }
            continue;
        }
        EntityCounters::add(&counters.read, 1);
        since_tick += 1;
        if since_tick >= 256 {
            bar.set_position(start_rows + counters.read.load(Ordering::Relaxed));
            since_tick = 0;
        }
        let (row, mut mapped) = match item {
            ExpectedRow::Rejected {
                key,
                issues,
                row,
                decoded,
            } => {
                // Part of the batch being gathered (the next sealed).
                reject(
                    counters,
                    total_rejected,
                    rejects,
                    (&plan.entity, &key, (!opts.dry_run).then_some(seq)),
                    &issues,
                    opts,
                )?;
                batch.rejected += 1;
                // Into a collection that held documents, this row's may be there from an
                // earlier run: stale now, it goes (a fresh run would not have written it).
                // A row that could not be decoded is named by its key when the key was read
                // before the column that failed (an `infinity` date, an array's lower bound).
                let values = row.as_ref().unwrap_or(&decoded);
                if let Some(ids) = dry_rejected {
                    note_rejected(plan, values, ids);
                }
                if upsert
                    && plan.key.iter().all(|&k| k < values.len())
                    && let Ok(id) = plan
                        .id
                        .id_for(&plan.key.iter().map(|&k| &values[k]).collect::<Vec<_>>())
                {
                    batch.stale.push(id);
                }
                if row.is_some() {
                    prev_row = row;
                    // In the batch the row's key ends (a row without one bounds nothing).
                    write_orphans(&mut waiting, (!opts.dry_run).then_some(seq))?;
                }
                continue;
            }
            ExpectedRow::Document { row, mapped, .. } => (row, mapped),
            ExpectedRow::Orphan(_) => unreachable!("handled above"),
        };
        let raw = mapped.doc.take().expect("a document row has its document");
        let size = raw.as_bytes().len();
        if let Some(message) = key_lost.as_ref().and_then(|k| k.warning(&raw)) {
            mapped.issues.push(Issue {
                stage: Stage::Write,
                severity: crate::mapping::spec::Severity::Warning,
                rule: crate::sink::target::KeyLost::RULE.to_string(),
                path: "_id".into(),
                message: message.to_string(),
                value: mapped.key.clone(),
            });
        }
        let warnings: Vec<&Issue> = mapped.warnings().collect();
        if opts.dry_run {
            // What the target would refuse before writing (Appwrite's column types and sizes)
            // is rejected here as the run would: the rehearsal predicts the run's rejects.
            // A file stage: the file checked as the upload will check it (Appwrite: the
            // bucket's extensions and size too).
            // A file's reject names its path as the run's does (adv34 F8).
            let mut file_path = String::new();
            let file_refusal = match &plan.file {
                Some(f) => {
                    let file = crate::sink::gridfs::FileRef::of_row(f, &row);
                    file_path = file.path.clone().unwrap_or_default();
                    target
                        .file_refusal(&plan.collection, &file)
                        .await?
                        .map(|(rule, message)| (rule, message, Stage::File))
                }
                None => None,
            };
            if let Some((rule, message, stage)) = file_refusal.or_else(|| {
                target
                    .refusal(&plan.collection, &raw)
                    .map(|(rule, message)| {
                        // A file stage's own refusals are of stage file, as the run's are.
                        let stage = if rule.starts_with("file_") {
                            Stage::File
                        } else {
                            Stage::Write
                        };
                        (rule, message, stage)
                    })
            }) {
                let value = if stage == Stage::File {
                    file_path
                } else {
                    String::new()
                };
                let issue = Issue::error(stage, rule, "", message, value);
                reject(
                    counters,
                    total_rejected,
                    rejects,
                    (&plan.entity, &mapped.key, None),
                    &[issue],
                    opts,
                )?;
                if let Some(ids) = dry_rejected {
                    note_rejected(plan, &row, ids);
                }
                prev_row = Some(row);
                continue;
            }
            if !warnings.is_empty() {
                EntityCounters::add(&counters.warnings, 1);
                rejects
                    .warn(&plan.entity, &mapped.key, &warnings, None)
                    .map_err(io_err)?;
            }
            EntityCounters::add(&counters.written, 1);
            EntityCounters::add(&counters.bytes, size as u64);
            prev_row = Some(row);
            continue;
        }
        if batch.bytes + size > opts.batch_bytes && !batch.docs.is_empty() {
            // The batch covers every row before this one.
            let mut full = std::mem::replace(&mut batch, Batch::new(batch_size));
            full.seal(
                &mut seq,
                key_strings(plan, prev_row.as_deref()),
                counters.read.load(Ordering::Relaxed) - 1,
            );
            if tx.send(full).await.is_err() {
                return Ok(()); // the writer stopped; its error is reported
            }
        }
        // Recorded once the row's batch is known (the one sealed above is not it).
        write_orphans(&mut waiting, Some(seq))?;
        // What the target refuses whatever the other rows is rejected here, as the dry run
        // does: its warnings are not recorded for a row never written (adv32 F2).
        if let Some((rule, message)) = target.row_refusal(&plan.collection, &raw) {
            let stage = if rule.starts_with("file_") {
                Stage::File
            } else {
                Stage::Write
            };
            // The document refused, fingerprinted: verify excuses its absence while the source
            // still maps to it (as for the writer's refusals).
            let fingerprint = crate::monitor::rejects::document_fingerprint(raw.as_bytes());
            let path = named_path(&message, &raw);
            let issue = Issue::error(stage, rule, &path, message, fingerprint);
            reject(
                counters,
                total_rejected,
                rejects,
                (&plan.entity, &mapped.key, Some(seq)),
                &[issue],
                opts,
            )?;
            batch.rejected += 1;
            if upsert
                && let Some(id) = raw
                    .get("_id")
                    .ok()
                    .flatten()
                    .and_then(|id| bson::Bson::try_from(id.to_raw_bson()).ok())
            {
                batch.stale.push(id);
            }
            prev_row = Some(row);
            continue;
        }
        if !warnings.is_empty() {
            batch
                .warnings
                .push((batch.docs.len(), warnings.into_iter().cloned().collect()));
        }
        batch.bytes += size;
        if let Some(f) = &plan.file {
            batch
                .files
                .push(crate::sink::gridfs::FileRef::of_row(f, &row));
        }
        batch.docs.push(raw);
        batch.keys.push(mapped.key.clone());
        if batch.docs.len() >= batch_size {
            let mut full = std::mem::replace(&mut batch, Batch::new(batch_size));
            full.seal(
                &mut seq,
                key_strings(plan, Some(&row)),
                counters.read.load(Ordering::Relaxed),
            );
            if tx.send(full).await.is_err() {
                return Ok(());
            }
        }
        prev_row = Some(row);
    }
    // The last stretch, also when it holds only rejected rows whose older documents go.
    if !batch.docs.is_empty() || !batch.stale.is_empty() {
        batch.seal(
            &mut seq,
            key_strings(plan, prev_row.as_deref()),
            counters.read.load(Ordering::Relaxed),
        );
        let _ = tx.send(batch).await;
    }
    shared.read_all.store(true, Ordering::Release);
    // After the last parent row: in a batch no checkpoint covers.
    write_orphans(&mut waiting, (!opts.dry_run).then_some(seq))?;
    for (i, e) in plan.embeds.iter().enumerate() {
        let orphans = counters.orphans_of(i);
        if orphans > 0 {
            tracing::warn!(entity = %plan.entity, embed = %e.path_text, orphans, "child rows whose parent is not in the source were not embedded");
        }
    }
    bar.set_position(start_rows + counters.read.load(Ordering::Relaxed));
    Ok(())
}

/// Files per batch of a file stage (at most).
const FILES_PER_BATCH: usize = 4;

/// Orphan child rows whose lines wait for the next parent row's batch, at most.
const ORPHANS_WAITING: usize = 1024;

/// Keeps the id of a row a dry run rejects (its key among `values`, when it was decoded).
fn note_rejected(
    plan: &Plan,
    values: &[Value],
    ids: &std::sync::Mutex<std::collections::HashSet<String>>,
) {
    let key: Option<Vec<&Value>> = plan.key.iter().map(|&k| values.get(k)).collect();
    if let Some(id) = key.and_then(|k| plan.id.id_for(&k).ok()) {
        ids.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(crate::mapping::plan::id_text(&id));
    }
}

/// Counts and records a rejected row (entity, source key, the batch of the step it belongs to);
/// `Err` when the rejects file cannot be written or --max-rejects is exceeded.
pub(super) fn reject(
    counters: &EntityCounters,
    total_rejected: &AtomicU64,
    rejects: &RejectsWriter,
    (entity, key, batch): (&str, &str, Option<u64>),
    issues: &[Issue],
    opts: &RunOptions,
) -> Result<(), RunError> {
    EntityCounters::add(&counters.rejected, 1);
    rejects
        .reject_in(entity, key, issues, batch)
        .map_err(|cause| RunError::Io {
            path: rejects.dir().to_path_buf(),
            cause,
        })?;
    let n = total_rejected.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(max) = opts.max_rejects
        && n > max
    {
        return Err(RunError::TooManyRejects { rejected: n, max });
    }
    Ok(())
}
