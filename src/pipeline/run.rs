//! The run loop: for each selected entity, stream the source in key order (merging embedded child
//! streams), map and validate each row, batch by rows and bytes, and write with bounded concurrency
//! and retry. Memory is bounded by the batches in flight, whatever the table size.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bson::RawDocumentBuf;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::{Pipeline, Step};
use crate::ledger::{Ledger, LedgerError};
use crate::mapping::MappingError;
use crate::mapping::plan::{self, Plan};
use crate::monitor::rejects::RejectsWriter;
use crate::monitor::report::{EntityReport, RunReport};
use crate::monitor::{EntityCounters, Progress};
use crate::sink::mongodb::{BatchResult, MongoError, MongoTarget, WriteMode};
use crate::sink::retry::{RetryPolicy, retry};
use crate::source::postgres::{self, DecodedRow, SourceError};
use crate::source::{SourceSession, Value};
use crate::transform::row::{MapContext, map_row};
use crate::transform::{Issue, Stage};

/// MongoDB refuses documents over 16 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Target(#[from] MongoError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}")]
    Dependencies(String),
    #[error("stopped: {rejected} rows rejected, more than --max-rejects {max}")]
    TooManyRejects { rejected: u64, max: u64 },
    #[error("{entity}: a batch of {rows} rows failed after {attempts} attempts: {source}")]
    BatchFailed {
        entity: String,
        rows: usize,
        attempts: u32,
        source: MongoError,
    },
    #[error("{entity}: cannot read a child row of `{path}`: column {column}: {message}")]
    ChildDecode {
        entity: String,
        path: String,
        column: String,
        message: String,
    },
    #[error(
        "accounting broken for {entity}: read {read} ≠ written {written} + rejected {rejected} + skipped {skipped}"
    )]
    Invariant {
        entity: String,
        read: u64,
        written: u64,
        rejected: u64,
        skipped: u64,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub dry_run: bool,
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub concurrency: usize,
    pub continue_on_error: bool,
    pub skip_validation: bool,
    pub max_rejects: Option<u64>,
    pub ignore_dependencies: bool,
    pub report_path: Option<PathBuf>,
    pub reports_dir: PathBuf,
    pub rejects_dir: PathBuf,
    pub quiet: bool,
    pub retry: RetryPolicy,
    pub target_name: String,
}

/// A new run id: UTC time plus a random suffix, sortable.
pub fn new_run_id() -> String {
    format!(
        "{}-{:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        fastrand::u16(..)
    )
}

/// Compiles the plans of `steps` against the source (describing each relation once).
pub async fn compile_plans(
    pipeline: &Pipeline,
    steps: &[Step],
    session: &mut SourceSession,
) -> Result<Vec<Plan>, RunError> {
    let mut plans = Vec::with_capacity(steps.len());
    let mut described: HashMap<String, Vec<postgres::SourceColumn>> = HashMap::new();
    for s in steps {
        let m = pipeline.mappings.get(&s.entity)?;
        let mut columns = Vec::new();
        for rel in plan::relations_of(m) {
            if !described.contains_key(&rel) {
                let cols = session.describe(&rel).await?;
                described.insert(rel.clone(), cols);
            }
            columns.push(described[&rel].clone());
        }
        plans.push(plan::compile(&pipeline.mappings, m, &columns)?);
    }
    Ok(plans)
}

/// Loads the source keys of entities named by `exists` rules.
async fn load_known_keys(
    pipeline: &Pipeline,
    plans: &[Plan],
    session: &mut SourceSession,
) -> Result<HashMap<String, Arc<HashSet<String>>>, RunError> {
    let mut out = HashMap::new();
    let wanted: HashSet<String> = plans
        .iter()
        .flat_map(|p| {
            p.fields
                .iter()
                .chain(p.embeds.iter().flat_map(|e| e.fields.iter()))
        })
        .filter_map(|f| f.exists_in.clone())
        .collect();
    for entity in wanted {
        let m = pipeline.mappings.get(&entity)?;
        let rel = postgres::relation_sql(
            m.spec.source.table.as_deref(),
            m.spec.source.query.as_deref(),
        );
        let sql = format!(
            "SELECT {}::text FROM {rel}",
            postgres::quote_ident(&m.spec.source.key[0])
        );
        let keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(session.conn())
            .await
            .map_err(|source| SourceError::Query {
                context: format!("load keys of {entity}"),
                source,
            })?;
        out.insert(entity, Arc::new(keys.into_iter().collect()));
    }
    Ok(out)
}

/// Runs `steps` of `pipeline` from the source into the MongoDB target.
pub async fn migrate(
    pipeline: &Pipeline,
    steps: Vec<Step>,
    source_url: &str,
    target: &MongoTarget,
    ledger: &Ledger,
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    let run_id = new_run_id();
    let started_at = chrono::Utc::now();

    let prereqs = pipeline.prerequisites(&steps);
    if !opts.ignore_dependencies && !prereqs.is_empty() {
        let done = ledger.completed_entities().await?;
        let missing: Vec<String> = prereqs.into_iter().filter(|e| !done.contains(e)).collect();
        if !missing.is_empty() {
            let asked: Vec<&str> = steps.iter().map(|s| s.entity.as_str()).collect();
            return Err(RunError::Dependencies(format!(
                "cannot migrate {}: it depends on {}, not migrated yet into this target; migrate {} first (cutover migrate {}) or pass --ignore-dependencies",
                asked.join(", "),
                missing.join(", "),
                if missing.len() == 1 { "it" } else { "them" },
                missing.join(" ")
            )));
        }
    }

    let mut session = SourceSession::open(source_url).await?;
    let plans = compile_plans(pipeline, &steps, &mut session).await?;
    let ctx = MapContext {
        now_ms: started_at.timestamp_millis(),
        skip_validation: opts.skip_validation,
        known_keys: load_known_keys(pipeline, &plans, &mut session).await?,
    };
    let entity_names: Vec<String> = plans.iter().map(|p| p.entity.clone()).collect();
    if !opts.dry_run {
        ledger
            .start_run(&run_id, &pipeline.spec.name, &entity_names)
            .await?;
    }

    let rejects = Arc::new(RejectsWriter::new(&opts.rejects_dir.join(&run_id)));
    let progress = Progress::new(opts.quiet);
    let total_rejected = Arc::new(AtomicU64::new(0));
    let mut entities = Vec::new();
    let mut run_error: Option<RunError> = None;
    let mut estimate_ms: u64 = 0;

    for p in &plans {
        if !opts.dry_run {
            ledger
                .start_step(
                    &run_id,
                    &p.entity,
                    &p.mapping_path.display().to_string(),
                    &p.checksum,
                )
                .await?;
        }
        let (mut report, err) = run_entity(
            p,
            &mut session,
            target,
            &ctx,
            opts,
            &rejects,
            &progress,
            &total_rejected,
        )
        .await;
        if let Some(e) = &err {
            report.status = "failed".into();
            report.error = Some(e.to_string());
        }
        if !report.balanced() {
            let e = RunError::Invariant {
                entity: report.name.clone(),
                read: report.read,
                written: report.written,
                rejected: report.rejected,
                skipped: report.skipped,
            };
            report.status = "failed".into();
            report.error = Some(e.to_string());
            run_error.get_or_insert(e);
        }
        if opts.dry_run {
            let rate = ledger.last_rate(&p.entity).await.ok().flatten();
            estimate_ms += match rate {
                Some(r) => (report.read as f64 * 1000.0 / r) as u64,
                None => report.duration_ms,
            };
        } else {
            ledger.finish_step(&run_id, &report).await?;
        }
        entities.push(report);
        if let Some(e) = err {
            run_error = Some(e);
            break;
        }
    }
    session.close().await;
    rejects.flush().map_err(|source| RunError::Io {
        path: rejects.dir().to_path_buf(),
        source,
    })?;

    let mut report = RunReport {
        run_id: run_id.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        dry_run: opts.dry_run,
        target: opts.target_name.clone(),
        pipeline: pipeline.spec.name.clone(),
        status: String::new(),
        entities,
        totals: Default::default(),
        success_rate: 0.0,
        estimated_full_run_ms: opts.dry_run.then_some(estimate_ms),
        error: run_error.as_ref().map(|e| e.to_string()),
        rejects_dir: rejects.dir().display().to_string(),
    };
    report.compute_totals();
    report.status = if run_error.is_some() {
        "failed".into()
    } else if report.totals.rejected > 0 {
        "completed_with_rejects".into()
    } else {
        "completed".into()
    };
    let path = opts
        .report_path
        .clone()
        .unwrap_or_else(|| opts.reports_dir.join(format!("{run_id}.json")));
    report
        .write_json(&path)
        .map_err(|source| RunError::Io { path, source })?;
    if !opts.dry_run {
        ledger.finish_run(&report).await?;
    }
    Ok(report)
}

/// A batch of documents on its way to the target.
struct Batch {
    docs: Vec<RawDocumentBuf>,
    keys: Vec<String>,
    bytes: usize,
}

impl Batch {
    fn new(cap: usize) -> Batch {
        Batch {
            docs: Vec::with_capacity(cap),
            keys: Vec::with_capacity(cap),
            bytes: 0,
        }
    }
}

/// Reads child rows of one embed in foreign-key order, handing out those of each parent.
struct ChildCursor<'c> {
    stream: BoxStream<'c, Result<DecodedRow, SourceError>>,
    pending: Option<Vec<Value>>,
    done: bool,
    orphans: u64,
}

impl ChildCursor<'_> {
    async fn take_for(
        &mut self,
        key: &Value,
        plan: &Plan,
        embed: usize,
    ) -> Result<Vec<Vec<Value>>, RunError> {
        let mut out = Vec::new();
        loop {
            if self.pending.is_none() {
                if self.done {
                    return Ok(out);
                }
                match self.stream.try_next().await? {
                    None => {
                        self.done = true;
                        return Ok(out);
                    }
                    Some(Ok(row)) => self.pending = Some(row),
                    Some(Err((col, message))) => {
                        let e = &plan.embeds[embed];
                        return Err(RunError::ChildDecode {
                            entity: plan.entity.clone(),
                            path: e.path_text.clone(),
                            column: e.read.columns[col].name.clone(),
                            message,
                        });
                    }
                }
            }
            let fk = &self.pending.as_ref().expect("set above")[0];
            match fk.key_cmp(key) {
                std::cmp::Ordering::Less => {
                    self.orphans += 1;
                    self.pending = None;
                }
                std::cmp::Ordering::Equal => out.push(self.pending.take().expect("set above")),
                std::cmp::Ordering::Greater => return Ok(out),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_entity(
    plan: &Plan,
    session: &mut SourceSession,
    target: &MongoTarget,
    ctx: &MapContext,
    opts: &RunOptions,
    rejects: &Arc<RejectsWriter>,
    progress: &Progress,
    total_rejected: &Arc<AtomicU64>,
) -> (EntityReport, Option<RunError>) {
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
        r
    };

    let total = match session.count(&plan.relation).await {
        Ok(n) => n,
        Err(e) => return (report_base(&counters, "none", 0), Some(e.into())),
    };
    let mode = if opts.dry_run {
        None
    } else {
        match target.is_empty(&plan.collection).await {
            Ok(true) => Some(WriteMode::Insert),
            Ok(false) => Some(WriteMode::Upsert),
            Err(e) => return (report_base(&counters, "none", total), Some(e.into())),
        }
    };
    let mode_name = match mode {
        None => "none",
        Some(WriteMode::Insert) => "insert",
        Some(WriteMode::Upsert) => "upsert",
    };
    let bar = progress.bar(&plan.entity, total, true);

    let (tx, rx) = mpsc::channel::<Batch>(opts.concurrency);
    let writer = mode.map(|mode| {
        tokio::spawn(write_loop(
            rx,
            target.clone(),
            plan.collection.clone(),
            plan.entity.clone(),
            mode,
            opts.clone(),
            counters.clone(),
            rejects.clone(),
            total_rejected.clone(),
        ))
    });

    let read_result = read_loop(
        plan,
        session,
        ctx,
        opts,
        &counters,
        rejects,
        total_rejected,
        &bar,
        tx,
    )
    .await;
    let write_result = match writer {
        Some(handle) => match handle.await {
            Ok(r) => r,
            Err(join) => Err(RunError::Dependencies(format!(
                "writer task failed: {join}"
            ))),
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
    (report_base(&counters, mode_name, total), err)
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    plan: &Plan,
    session: &mut SourceSession,
    ctx: &MapContext,
    opts: &RunOptions,
    counters: &Arc<EntityCounters>,
    rejects: &Arc<RejectsWriter>,
    total_rejected: &Arc<AtomicU64>,
    bar: &indicatif::ProgressBar,
    tx: mpsc::Sender<Batch>,
) -> Result<(), RunError> {
    let mut parent_conn = session.reader().await?;
    let mut child_conns = Vec::new();
    for _ in &plan.embeds {
        child_conns.push(session.reader().await?);
    }
    let mut cursors: Vec<ChildCursor<'_>> = plan
        .embeds
        .iter()
        .zip(child_conns.iter_mut())
        .map(|(e, conn)| ChildCursor {
            stream: postgres::stream(conn, &e.read),
            pending: None,
            done: false,
            orphans: 0,
        })
        .collect();
    let mut rows = postgres::stream(&mut parent_conn, &plan.read);
    let io_err = |source: std::io::Error| RunError::Io {
        path: rejects.dir().to_path_buf(),
        source,
    };
    let mut batch = Batch::new(opts.batch_size);
    let mut since_tick = 0u64;

    while let Some(item) = rows.try_next().await? {
        EntityCounters::add(&counters.read, 1);
        since_tick += 1;
        if since_tick >= 256 {
            bar.set_position(counters.read.load(Ordering::Relaxed));
            since_tick = 0;
        }
        let row = match item {
            Ok(row) => row,
            Err((col, message)) => {
                let issue = Issue::error(
                    Stage::Transform,
                    "decode",
                    &plan.read.columns[col].name,
                    format!(
                        "cannot decode column {}: {message}",
                        plan.read.columns[col].name
                    ),
                    String::new(),
                );
                reject(
                    counters,
                    total_rejected,
                    rejects,
                    &plan.entity,
                    "?",
                    &[issue],
                    opts,
                )
                .map_err(io_err)??;
                continue;
            }
        };
        let mut children = Vec::with_capacity(cursors.len());
        for (i, c) in cursors.iter_mut().enumerate() {
            children.push(c.take_for(&row[plan.key[0]], plan, i).await?);
        }
        let mut mapped = map_row(plan, &row, &children, ctx);
        let Some(raw) = mapped.doc.take() else {
            reject(
                counters,
                total_rejected,
                rejects,
                &plan.entity,
                &mapped.key,
                &mapped.issues,
                opts,
            )
            .map_err(io_err)??;
            continue;
        };
        let size = raw.as_bytes().len();
        if size > MAX_DOCUMENT_BYTES {
            let issue = Issue::error(
                Stage::Transform,
                "document_too_large",
                "",
                format!("the document is {size} bytes; MongoDB's limit is {MAX_DOCUMENT_BYTES}"),
                String::new(),
            );
            reject(
                counters,
                total_rejected,
                rejects,
                &plan.entity,
                &mapped.key,
                &[issue],
                opts,
            )
            .map_err(io_err)??;
            continue;
        }
        let warnings: Vec<&Issue> = mapped.warnings().collect();
        if !warnings.is_empty() {
            EntityCounters::add(&counters.warnings, 1);
            rejects
                .warn(&plan.entity, &mapped.key, &warnings)
                .map_err(io_err)?;
        }
        if opts.dry_run {
            EntityCounters::add(&counters.written, 1);
            EntityCounters::add(&counters.bytes, size as u64);
            continue;
        }
        if batch.bytes + size > opts.batch_bytes && !batch.docs.is_empty() {
            let full = std::mem::replace(&mut batch, Batch::new(opts.batch_size));
            if tx.send(full).await.is_err() {
                return Ok(()); // the writer stopped; its error is reported
            }
        }
        batch.bytes += size;
        batch.docs.push(raw);
        batch.keys.push(mapped.key.clone());
        if batch.docs.len() >= opts.batch_size {
            let full = std::mem::replace(&mut batch, Batch::new(opts.batch_size));
            if tx.send(full).await.is_err() {
                return Ok(());
            }
        }
    }
    if !batch.docs.is_empty() {
        let _ = tx.send(batch).await;
    }
    let orphans: u64 = cursors.iter().map(|c| c.orphans).sum();
    if orphans > 0 {
        tracing::warn!(entity = %plan.entity, orphans, "child rows whose parent is not in the source were not embedded");
    }
    bar.set_position(counters.read.load(Ordering::Relaxed));
    Ok(())
}

/// Counts and records a rejected row; `Err` when --max-rejects is exceeded.
fn reject(
    counters: &EntityCounters,
    total_rejected: &AtomicU64,
    rejects: &RejectsWriter,
    entity: &str,
    key: &str,
    issues: &[Issue],
    opts: &RunOptions,
) -> std::io::Result<Result<(), RunError>> {
    EntityCounters::add(&counters.rejected, 1);
    rejects.reject(entity, key, issues)?;
    let n = total_rejected.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(max) = opts.max_rejects
        && n > max
    {
        return Ok(Err(RunError::TooManyRejects { rejected: n, max }));
    }
    Ok(Ok(()))
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    rx: mpsc::Receiver<Batch>,
    target: MongoTarget,
    collection: String,
    entity: String,
    mode: WriteMode,
    opts: RunOptions,
    counters: Arc<EntityCounters>,
    rejects: Arc<RejectsWriter>,
    total_rejected: Arc<AtomicU64>,
) -> Result<(), RunError> {
    let batches =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let results = batches
        .map(|batch| {
            let target = target.clone();
            let collection = collection.clone();
            let counters = counters.clone();
            let policy = opts.retry;
            async move {
                let attempts = std::sync::atomic::AtomicU32::new(0);
                let result = retry(
                    policy,
                    tokio::time::sleep,
                    |attempt, err: &MongoError| {
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
                        async move { target.write(collection, docs, m).await }
                    },
                )
                .await;
                (batch, result, attempts.load(Ordering::Relaxed))
            }
        })
        .buffer_unordered(opts.concurrency);
    let mut results = std::pin::pin!(results);

    let io_err = |source: std::io::Error| RunError::Io {
        path: rejects.dir().to_path_buf(),
        source,
    };
    while let Some((batch, result, attempts)) = results.next().await {
        EntityCounters::add(&counters.batches, 1);
        match result {
            Ok(BatchResult { written, errors }) => {
                EntityCounters::add(&counters.written, written);
                EntityCounters::add(&counters.bytes, batch.bytes as u64);
                for e in errors {
                    let key = batch.keys.get(e.index).map(String::as_str).unwrap_or("?");
                    let issue = Issue::error(
                        Stage::Write,
                        &e.code_name,
                        "",
                        format!("{} (code {})", e.message, e.code),
                        String::new(),
                    );
                    reject(
                        &counters,
                        &total_rejected,
                        &rejects,
                        &entity,
                        key,
                        &[issue],
                        &opts,
                    )
                    .map_err(io_err)??;
                }
            }
            Err(source) => {
                if !opts.continue_on_error {
                    // Count the batch's rows so the report still balances, then stop.
                    for key in &batch.keys {
                        let issue = Issue::error(
                            Stage::Write,
                            "batch_failed",
                            "",
                            source.to_string(),
                            String::new(),
                        );
                        EntityCounters::add(&counters.rejected, 1);
                        rejects.reject(&entity, key, &[issue]).map_err(io_err)?;
                    }
                    return Err(RunError::BatchFailed {
                        entity,
                        rows: batch.docs.len(),
                        attempts,
                        source,
                    });
                }
                for key in &batch.keys {
                    let issue = Issue::error(
                        Stage::Write,
                        "batch_failed",
                        "",
                        source.to_string(),
                        String::new(),
                    );
                    reject(
                        &counters,
                        &total_rejected,
                        &rejects,
                        &entity,
                        key,
                        &[issue],
                        &opts,
                    )
                    .map_err(io_err)??;
                }
            }
        }
    }
    Ok(())
}
