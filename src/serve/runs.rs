//! The run routes: the ledger's runs with per-entity progress from their steps and checkpoints
//! (live while a run goes), reports as `cutover report` renders them, the latest verification,
//! and `POST /api/runs`, which runs `cutover migrate` in this process.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::State;
use super::api::{ApiError, Json, Path, Query};
use crate::cli::{Command, PipelineArgs};
use crate::ledger::{self, RunRecord, StepRecord};

/// How many runs started through the API this process remembers.
const KEEP_SERVED: usize = 100;

/// A run started through the API, as this process knows it (a dry run is in no ledger).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Served {
    pub run_id: String,
    pub stages: Vec<String>,
    pub dry_run: bool,
    /// running, completed, completed_with_rejects, failed (the ledger's names)
    pub state: String,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// Run ids are file names in the reports directory: letters, digits, `.`, `-`, `_`, `:` only.
fn checked_id(id: &str) -> Result<&str, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && !id.starts_with(['.', '-'])
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if ok {
        Ok(id)
    } else {
        Err(ApiError::bad_request("not a run id"))
    }
}

fn served(state: &State) -> Vec<Served> {
    state
        .runs
        .lock()
        .map(|r| r.values().cloned().collect())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
    status: Option<String>,
}

pub async fn list(
    Shared(state): Shared<Arc<State>>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    const STATUSES: &[&str] = &[
        "running",
        "completed",
        "completed_with_rejects",
        "failed",
        "interrupted",
        "rolled-back",
    ];
    if let Some(st) = status
        && !STATUSES.contains(&st)
    {
        return Err(ApiError::bad_request(format!(
            "status `{st}` is none a run can have: {}",
            STATUSES.join(", ")
        )));
    }
    let recorded = state.ledger.runs_newest_first(limit, status).await?;
    let steps = state.ledger.all_steps().await?;
    let live = live_run(&state).await;
    let mine = served(&state);
    // Runs started here that no ledger holds (dry runs, or not started yet) among the ledger's,
    // all newest first (run ids begin with their start time).
    let mut runs: Vec<Value> = mine
        .iter()
        .filter(|s| recorded.iter().all(|r| r.run_id != s.run_id))
        .filter(|s| status.is_none_or(|st| s.state == st))
        .map(|s| {
            // The entities it ran (its report's) or runs (live), else the names asked.
            let mut names: Vec<String> = match report_file(&state, &s.run_id) {
                Some(r) => r.entities.iter().map(|e| e.name.clone()).collect(),
                None => crate::monitor::live::entities(&s.run_id)
                    .into_iter()
                    .map(|e| e.entity)
                    .collect(),
            };
            if names.is_empty() {
                names = s.stages.clone();
            }
            json!({"run_id": s.run_id, "status": s.state, "dry_run": s.dry_run, "started_at": s.started_at, "entities": names, "served": s})
        })
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    for r in &recorded {
        let served_running = mine
            .iter()
            .any(|s| s.run_id == r.run_id && s.state == "running");
        let dead = gone(r, served_running, live.as_deref());
        let mut v = run_json(r, &steps, now, dead)?;
        if let Some(s) = mine.iter().find(|s| s.run_id == r.run_id) {
            v["served"] = json!(s);
        }
        runs.push(v);
    }
    runs.sort_by(|a, b| {
        b["run_id"]
            .as_str()
            .unwrap_or_default()
            .cmp(a["run_id"].as_str().unwrap_or_default())
    });
    runs.truncate(limit as usize);
    for r in &mut runs {
        // A run killed before its end wrote no report: no links to one.
        let id = r["run_id"].as_str().unwrap_or_default().to_string();
        let running = r["status"] == "running";
        r["hasReport"] = json!(!running && report_file(&state, &id).is_some());
        if running {
            r["hasReport"] = Value::Null;
        }
    }
    Ok(axum::Json(json!({ "runs": runs })))
}

/// The run holding the target's lock now, if its holder is alive.
async fn live_run(state: &State) -> Option<String> {
    state
        .ledger
        .lock_holder()
        .await
        .ok()
        .flatten()
        .filter(|h| !h.expired)
        .map(|h| h.run_id)
}

/// Whether a run the ledger still calls running has no process any more (killed; the next
/// run records it interrupted): it is shown interrupted, not live.
fn gone(r: &RunRecord, served_running: bool, live: Option<&str>) -> bool {
    r.status == ledger::RUNNING && !served_running && live != Some(r.run_id.as_str())
}

/// A run as the API shows it: the ledger's record — while it runs, or when its process died
/// before it ended, with its counts so far from its steps (what it read itself, as the ledger
/// records once it ends) — and the parts it resumed, with a note that says what its counts
/// count.
fn run_json(
    r: &RunRecord,
    steps: &[StepRecord],
    now_ms: i64,
    dead: bool,
) -> Result<Value, ApiError> {
    let mut r = r.clone();
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_else(chrono::Utc::now);
    r.as_of_steps(steps, now, dead);
    if r.resumed.is_empty() {
        r.resumed = steps
            .iter()
            .filter(|s| s.run_id == r.run_id)
            .filter_map(|s| ledger::resumed_part(s, steps))
            .collect();
    }
    let mut v = serde_json::to_value(&r).map_err(|e| ApiError::internal(e.to_string()))?;
    if dead {
        v["statusNote"] = json!(
            "its process is gone: the next run records it interrupted and resumes it; its counts and duration are up to its last checkpoint"
        );
    }
    if !r.resumed.is_empty() {
        v["countsNote"] = json!(RESUMED_COUNTS);
    }
    Ok(v)
}

/// What the counts of a run that resumed an interrupted one count.
const RESUMED_COUNTS: &str = "read, written, rejected and skipped count the rows this run read itself; the parts it resumed (`resumed`) are counted by the runs that read them; each entity's `read`… and the report count the entity whole, its `thisRun` this run's part, and `rowsPerSecond` is this run's rows over this run's time";

fn millis_of(rfc3339: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One entity's progress as a run going on in this process counts it (a dry run: no ledger).
fn live_progress(e: &crate::monitor::live::LiveEntity) -> Value {
    let c = &e.counts;
    let rate = if e.elapsed_ms > 0 {
        c.read as f64 * 1000.0 / e.elapsed_ms as f64
    } else {
        0.0
    };
    let eta =
        (rate > 0.0 && e.total > c.read).then(|| ((e.total - c.read) as f64 / rate).ceil() as i64);
    json!({"entity": e.entity, "status": "running", "read": c.read, "written": c.written, "rejected": c.rejected, "skipped": c.skipped, "total": e.total, "rowsPerSecond": (rate * 10.0).round() / 10.0, "etaSeconds": eta})
}

/// One entity's progress: what its step covered so far (its checkpoint while it runs, its
/// counts once it ended) — the entity whole, the part it resumed included, as the report counts
/// it — what this run read itself (`thisRun`), the rate of that part over this run's time and,
/// while it runs, the time left at that rate. A step whose process died (`dead`) is shown
/// interrupted, with its time up to its last checkpoint.
fn progress(s: &StepRecord, steps: &[StepRecord], now_ms: i64, dead: bool) -> Value {
    let running = s.status == ledger::RUNNING;
    // A step that stopped before its end (killed, SIGTERM, a lost lock, a failure) counts up to
    // its checkpoint: the rows past it are read again by the run that resumes it (adv28 R6).
    let (read, rejected, written) = if ledger::unfinished(&s.status) {
        let read = s.checkpoint_rows;
        let rejected = s.checkpoint_rejected;
        (read, rejected, (read - rejected).max(0))
    } else {
        (s.read, s.rejected, s.written)
    };
    let (own_read, own_written, own_rejected, own_skipped) = ledger::own_counts(s, steps);
    let elapsed_ms = match (running, dead) {
        (true, false) => millis_of(s.started_at.as_deref()).map_or(0, |t| (now_ms - t).max(0)),
        (true, true) => {
            ledger::millis_between(s.started_at.as_deref(), s.checkpoint_at.as_deref()).unwrap_or(0)
        }
        (false, _) => s.duration_ms,
    };
    let rate = if elapsed_ms > 0 {
        own_read as f64 * 1000.0 / elapsed_ms as f64
    } else {
        0.0
    };
    let live = running && !dead;
    let eta = (live && rate > 0.0 && s.total > read)
        .then(|| ((s.total - read) as f64 / rate).ceil() as i64);
    let status = if running && dead {
        ledger::INTERRUPTED
    } else {
        s.status.as_str()
    };
    json!({
        "entity": s.entity,
        "status": status,
        "read": read,
        "written": written,
        "rejected": rejected,
        "skipped": if ledger::unfinished(&s.status) { 0 } else { s.skipped },
        "total": s.total,
        "thisRun": {
            "read": own_read,
            "written": own_written,
            "rejected": own_rejected,
            "skipped": own_skipped,
            "durationMs": elapsed_ms,
        },
        "resumed": ledger::resumed_part(s, steps).map(|p| json!({"fromRun": p.from_run, "rows": p.rows, "rejected": p.rejected})),
        "rowsPerSecond": (rate * 10.0).round() / 10.0,
        "etaSeconds": eta,
        "startedAt": s.started_at,
        "finishedAt": s.finished_at,
        "error": s.error,
    })
}

/// A run's report file (dry runs have one too), when it exists and is of this server's target
/// (the reports directory may hold the runs of other databases and servers).
fn report_file(state: &State, id: &str) -> Option<crate::monitor::report::RunReport> {
    let path = state.cfg.reports_dir.join(format!("{id}.json"));
    let r: crate::monitor::report::RunReport =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    ours(state, &r.target, r.config["target_at"].as_str()).then_some(r)
}

/// Whether a report's or verification's target (its name, and its servers where it recorded
/// them) is this server's.
fn ours(state: &State, target: &str, target_at: Option<&str>) -> bool {
    target == state.target.display_name()
        && target_at.is_none_or(|at| at == state.target.location())
}

pub async fn get(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = checked_id(&id)?;
    // The served state first: a run ends by recording itself in the ledger, then in the served
    // state, so a run seen ended here is ended in the ledger read next. Read the other way
    // round, a run ending between the two reads was shown `running` in the ledger yet not
    // served as running: "interrupted".
    let mine = served(&state).into_iter().find(|s| s.run_id == id);
    let record = state
        .ledger
        .runs_newest_first(i64::MAX, None)
        .await?
        .into_iter()
        .find(|r| r.run_id == id);
    let all_steps = state.ledger.all_steps().await?;
    let steps: Vec<&StepRecord> = all_steps.iter().filter(|s| s.run_id == id).collect();
    let report = report_file(&state, id);
    if record.is_none() && mine.is_none() && report.is_none() {
        return Err(ApiError::not_found(format!("no run {id}")));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let served_running = mine.as_ref().is_some_and(|s| s.state == "running");
    let live = live_run(&state).await;
    let dead = record
        .as_ref()
        .is_some_and(|r| gone(r, served_running, live.as_deref()));
    let mut entities: Vec<Value> = steps
        .iter()
        .map(|s| progress(s, &all_steps, now, dead))
        .collect();
    if entities.is_empty() && report.is_none() {
        // A run going on here that the ledger does not record (a dry run): its counters.
        entities = crate::monitor::live::entities(id)
            .iter()
            .map(live_progress)
            .collect();
    }
    if entities.is_empty()
        && let Some(r) = &report
    {
        // A dry run: its report's counts.
        entities = r
            .entities
            .iter()
            .map(|e| json!({"entity": e.name, "status": e.status, "read": e.read, "written": e.written, "rejected": e.rejected, "skipped": e.skipped, "total": e.total, "rowsPerSecond": e.rows_per_sec, "etaSeconds": null}))
            .collect();
    }
    let status = match (&mine, &record, &report) {
        (Some(s), _, _) if s.state == "running" => "running".to_string(),
        (_, Some(_), _) if dead => ledger::INTERRUPTED.to_string(),
        (_, Some(r), _) => r.status.clone(),
        (_, None, Some(r)) => r.status.clone(),
        (Some(s), None, None) => s.state.clone(),
        (None, None, None) => "unknown".to_string(),
    };
    let run = record
        .as_ref()
        .map(|r| run_json(r, &all_steps, now, dead))
        .transpose()?;
    Ok(axum::Json(json!({
        "runId": id,
        "status": status,
        "dryRun": mine.as_ref().map(|s| s.dry_run).or(report.as_ref().map(|r| r.dry_run)).unwrap_or(false),
        "run": run,
        "served": mine,
        "entities": entities,
        // The entities it found applied and did not run (adv40 F6: "completed" with no rows,
        // and nothing said why).
        "alreadyApplied": report.as_ref().map(|r| r.already_applied.clone()).unwrap_or_default(),
        // A run that wrote no report (killed, or still going) links to none (adv28 R4).
        "reports": report.as_ref().map(|_| json!({
            "json": format!("/api/runs/{id}/report?format=json"),
            "md": format!("/api/runs/{id}/report?format=md"),
            "html": format!("/api/runs/{id}/report?format=html"),
        })),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    format: Option<String>,
}

pub async fn report(
    Shared(state): Shared<Arc<State>>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let id = checked_id(&id)?;
    let format = q.format.unwrap_or_else(|| "json".into());
    let content_type = match format.as_str() {
        "json" => "application/json",
        "md" => "text/markdown; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        _ => return Err(ApiError::bad_request("format is json, md or html")),
    };
    let mut argv: Vec<String> = vec!["report".into(), "--format".into(), format];
    argv.extend(state.target_args());
    argv.extend(["--".into(), id.to_string()]);
    let cli = state.cli(&argv)?;
    let Command::Report(args) = &cli.command else {
        return Err(ApiError::internal("not a report command"));
    };
    if report_file(&state, id).is_none() {
        return Err(ApiError::not_found(format!("no report of run {id}")));
    }
    let text = crate::commands::report::render(&cli, args).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

pub async fn verify_latest(
    Shared(state): Shared<Arc<State>>,
) -> Result<axum::Json<Value>, ApiError> {
    // The newest verification of this server's target (others share the reports directory).
    let files = crate::monitor::signoff::verification_files(&state.cfg.reports_dir);
    let newest = files.iter().rev().find_map(|f| {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
        ours(&state, v["target"].as_str()?, v["target_at"].as_str()).then_some(v)
    });
    match newest {
        Some(v) => Ok(axum::Json(v)),
        None => Err(ApiError::not_found(format!(
            "no verification of {} yet (run `cutover verify`)",
            state.target.display_name()
        ))),
    }
}

/// The most stage and entity names one `POST /api/runs` may give.
const MAX_NAMES: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartBody {
    #[serde(default)]
    stages: Vec<String>,
    #[serde(default)]
    dry_run: bool,
    // Signed: a negative number is told its range, not serde's type name (adv28 R9).
    batch_size: Option<i64>,
    file_concurrency: Option<i64>,
}

pub async fn start(
    Shared(state): Shared<Arc<State>>,
    Json(mut body): Json<StartBody>,
) -> Result<Response, ApiError> {
    // A name given twice is one (a list of 100,000 copies was kept whole and sent back by
    // every `GET /api/runs` — the outside tester's adv20 F5); the pipeline bounds the rest.
    let mut seen = std::collections::HashSet::new();
    body.stages.retain(|s| seen.insert(s.clone()));
    if body.stages.len() > MAX_NAMES {
        return Err(ApiError::bad_request(format!(
            "{} stage or entity names: at most {MAX_NAMES}",
            body.stages.len()
        )));
    }
    if body
        .stages
        .iter()
        .any(|s| s.is_empty() || s.starts_with('-'))
    {
        return Err(ApiError::bad_request(
            "a stage name is empty or starts with -",
        ));
    }
    if let Some(n) = body.batch_size
        && !(1..=100_000).contains(&n)
    {
        return Err(ApiError::bad_request(format!(
            "batchSize must be between 1 and 100000, got {n}"
        )));
    }
    if body
        .file_concurrency
        .is_some_and(|n| !(1..=64).contains(&n))
    {
        return Err(ApiError::bad_request(
            "fileConcurrency must be between 1 and 64",
        ));
    }
    // The names are checked against the pipeline now, not after the answer.
    let pipeline = crate::commands::shared::load_pipeline(
        &state.cfg,
        &PipelineArgs {
            pipeline: state.pipeline.clone(),
            mappings: None,
        },
    )
    .map_err(|e| ApiError::refused(format!("{e:#}")))?;
    pipeline
        .select(&body.stages)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !body.dry_run
        && let Some(h) = state.ledger.lock_holder().await?.filter(|h| !h.expired)
    {
        return Err(ApiError::locked(format!("the target is locked by {h}")));
    }
    let mut argv: Vec<String> = vec!["migrate".into(), "--quiet".into()];
    if let Some(p) = &state.pipeline {
        argv.extend(["--pipeline".into(), p.display().to_string()]);
    }
    argv.extend(state.target_args());
    if body.dry_run {
        argv.push("--dry-run".into());
    }
    if let Some(n) = body.batch_size {
        argv.extend(["--batch-size".into(), n.to_string()]);
    }
    if let Some(n) = body.file_concurrency {
        argv.extend(["--file-concurrency".into(), n.to_string()]);
    }
    argv.push("--".into());
    argv.extend(body.stages.iter().cloned());
    let cli = state.cli(&argv)?;
    let run_id = crate::pipeline::run::new_run_id();
    let entry = Served {
        run_id: run_id.clone(),
        stages: body.stages.clone(),
        dry_run: body.dry_run,
        state: "running".into(),
        error: None,
        started_at: chrono::Utc::now().to_rfc3339(),
        finished_at: None,
    };
    {
        // Checked and taken under one lock: of two requests at once, one starts a run.
        let mut runs = state
            .runs
            .lock()
            .map_err(|_| ApiError::internal("the runs table is poisoned"))?;
        if runs.values().any(|s| s.state == "running") {
            return Err(ApiError::locked("a run started here is still going"));
        }
        // The newest hundred are kept (ids sort by time); older ones are in the ledger.
        while runs.len() >= KEEP_SERVED {
            runs.pop_first();
        }
        runs.insert(run_id.clone(), entry.clone());
    }
    let task_state = state.clone();
    let id = run_id.clone();
    // The run's future is not `Send` (the engine borrows across awaits in ways the compiler
    // cannot prove sendable): it runs on a blocking thread of the same runtime.
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        let result = match &cli.command {
            Command::Migrate(args) => {
                handle.block_on(crate::commands::migrate::migrate_as(&cli, args, &id))
            }
            _ => Err(anyhow::anyhow!("not a migrate command")),
        };
        // The names the ledger gives runs.
        let (st, error) = match result {
            Ok(crate::cli::Outcome::Success) => ("completed", None),
            Ok(crate::cli::Outcome::FinishedWithRejects) => ("completed_with_rejects", None),
            Ok(crate::cli::Outcome::Failed) => ("failed", Some("the run failed".to_string())),
            Err(e) => (
                "failed",
                Some(crate::redact::redact_text(&format!("{e:#}"))),
            ),
        };
        // A run stopped before its end (SIGTERM, its lock released) is what the ledger says,
        // not "failed" (adv28 R6).
        let recorded = handle
            .block_on(task_state.ledger.runs_newest_first(i64::MAX, None))
            .ok()
            .and_then(|runs| runs.into_iter().find(|r| r.run_id == id));
        let (st, error) = match recorded {
            Some(r) if r.status == ledger::INTERRUPTED => (
                ledger::INTERRUPTED,
                Some(
                    "stopped before its end (the server stopping, or its lock released): `cutover migrate` resumes it"
                        .to_string(),
                ),
            ),
            _ => (st, error),
        };
        tracing::info!(run = %id, state = st, "run started through the API ended");
        crate::monitor::live::forget(&id);
        if let Ok(mut runs) = task_state.runs.lock()
            && let Some(r) = runs.get_mut(&id)
        {
            r.state = st.to_string();
            r.error = error;
            r.finished_at = Some(chrono::Utc::now().to_rfc3339());
        }
    });
    if let Ok(mut tasks) = state.tasks.lock() {
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
    if !body.dry_run {
        // Answered once the run holds the target's lock (or has ended): another server of the
        // same target starting a run at the same moment gets its 409 here, not a run that fails.
        let asked = std::time::Instant::now();
        while asked.elapsed() < std::time::Duration::from_secs(10) {
            let now = served(&state).into_iter().find(|s| s.run_id == run_id);
            if let Some(s) = &now
                && s.state == "failed"
                && s.error
                    .as_deref()
                    .is_some_and(|e| e.contains("holds the lock"))
            {
                // Never started: not listed as a run of this server.
                if let Ok(mut runs) = state.runs.lock() {
                    runs.remove(&run_id);
                }
                return Err(ApiError::locked(s.error.clone().unwrap_or_default()));
            }
            // Begun once the ledger records it (after the lock, the decisions and the plans).
            // Refused before (a stage whose dependencies are not migrated, a mapping that does
            // not load): no run in the ledger, nothing written — answered 422 with its error,
            // not 202 with links to a report that will never be.
            // The ledger's newest run, read once a poll.
            let in_ledger = state
                .ledger
                .runs_newest_first(1, None)
                .await?
                .iter()
                .any(|r| r.run_id == run_id);
            let recorded = in_ledger && live_run(&state).await.as_deref() == Some(run_id.as_str());
            if let Some(s) = &now
                && s.state == "failed"
                && !in_ledger
            {
                if let Ok(mut runs) = state.runs.lock() {
                    runs.remove(&run_id);
                }
                return Err(ApiError::refused(s.error.clone().unwrap_or_default()));
            }
            if recorded || now.is_some_and(|s| s.state != "running") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "runId": run_id,
            "dryRun": body.dry_run,
            "stages": body.stages,
            "links": { "self": format!("/api/runs/{run_id}") },
        })),
    )
        .into_response())
}

/// The pipeline's stages and each entity's state in the ledger (the status page's table).
pub async fn pipeline(Shared(state): Shared<Arc<State>>) -> Result<axum::Json<Value>, ApiError> {
    let pipeline = crate::commands::shared::load_pipeline(
        &state.cfg,
        &PipelineArgs {
            pipeline: state.pipeline.clone(),
            mappings: None,
        },
    )
    .map_err(|e| ApiError::refused(format!("{e:#}")))?;
    let current = state.ledger.current_steps().await?;
    let stages: Vec<Value> = pipeline
        .spec
        .stages
        .iter()
        .map(|st| {
            let entities: Vec<Value> = st
                .entities
                .iter()
                .map(|e| {
                    let s = current.get(e);
                    json!({
                        "entity": e,
                        "state": s.map_or("pending", |s| s.status.as_str()),
                        "runId": s.map(|s| s.run_id.as_str()),
                    })
                })
                .collect();
            json!({ "name": st.name, "entities": entities })
        })
        .collect();
    Ok(axum::Json(
        json!({ "pipeline": pipeline.spec.name, "stages": stages }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(status: &str) -> StepRecord {
        let d = bson::doc! {
            "_id": "r:patients", "run_id": "r", "entity": "patients", "status": status,
            "started_at": bson::DateTime::from_millis(1_000_000),
            "checkpoint_rows": 300_i64, "checkpoint_rejected": 3_i64, "total": 1200_i64,
            "read": 1200_i64, "written": 1190_i64, "rejected": 10_i64, "duration_ms": 4000_i64,
        };
        StepRecord::from_doc(&d, crate::config::TargetKind::Mongodb)
    }

    #[test]
    fn a_running_step_counts_its_checkpoint_and_the_time_left_at_its_rate() {
        // 300 rows in 3 s: 100 rows/s, 900 rows left, 9 s.
        let running = step(ledger::RUNNING);
        let p = progress(&running, std::slice::from_ref(&running), 1_003_000, false);
        assert_eq!(
            (&p["read"], &p["written"], &p["rejected"]),
            (&json!(300), &json!(297), &json!(3))
        );
        assert_eq!(p["thisRun"]["read"], json!(300));
        assert_eq!(p["rowsPerSecond"], json!(100.0));
        assert_eq!(p["etaSeconds"], json!(9));
        assert_eq!(p["resumed"], Value::Null);
        // Its process died 2 s in, at its last checkpoint: interrupted, its rate up to there.
        let mut dead = running.clone();
        dead.checkpoint_at = Some("1970-01-01T00:16:42.000Z".into());
        let p = progress(&dead, std::slice::from_ref(&dead), 9_999_999, true);
        assert_eq!(p["status"], json!(ledger::INTERRUPTED));
        assert_eq!(p["rowsPerSecond"], json!(150.0));
        assert_eq!(p["etaSeconds"], Value::Null);
        // Ended: its own counts, no time left.
        let done = step(ledger::COMPLETED);
        let p = progress(&done, std::slice::from_ref(&done), 9_999_999, false);
        assert_eq!((&p["read"], &p["written"]), (&json!(1200), &json!(1190)));
        assert_eq!(p["rowsPerSecond"], json!(300.0));
        assert_eq!(p["etaSeconds"], Value::Null);
    }

    #[test]
    fn a_resumed_step_counts_the_entity_whole_and_its_rate_over_its_own_part() {
        // r0 was killed after 500 rows (5 rejected); r1 resumed it.
        let mut before = step(ledger::INTERRUPTED);
        (before.id, before.run_id) = ("r0:patients".into(), "r0".into());
        (before.checkpoint_rows, before.checkpoint_rejected) = (500, 5);
        let resumed = |status: &str| StepRecord {
            resumed_from: Some("r0".into()),
            ..step(status)
        };
        // Ended: 1200 rows in all, 700 of them read by r1 in 4 s.
        let done = resumed(ledger::COMPLETED);
        let steps = [before.clone(), done.clone()];
        let p = progress(&done, &steps, 9_999_999, false);
        assert_eq!(
            (&p["read"], &p["written"], &p["rejected"]),
            (&json!(1200), &json!(1190), &json!(10))
        );
        assert_eq!(
            p["thisRun"],
            json!({"read": 700, "written": 695, "rejected": 5, "skipped": 0, "durationMs": 4000})
        );
        assert_eq!(
            p["resumed"],
            json!({"fromRun": "r0", "rows": 500, "rejected": 5})
        );
        assert_eq!(p["rowsPerSecond"], json!(175.0));
        // Running: its checkpoint at 800 rows, 300 of them its own in 3 s; 400 left at 100/s.
        let mut running = resumed(ledger::RUNNING);
        running.checkpoint_rows = 800;
        let steps = [before.clone(), running.clone()];
        let p = progress(&running, &steps, 1_003_000, false);
        assert_eq!(p["read"], json!(800));
        assert_eq!(p["thisRun"]["read"], json!(300));
        assert_eq!(p["rowsPerSecond"], json!(100.0));
        assert_eq!(p["etaSeconds"], json!(4));
        // The run: its own part, the part it resumed named, and a note saying so.
        let run = RunRecord {
            started_at: Some("1970-01-01T00:16:40.000Z".into()),
            ..RunRecord::for_test("r", 2, &["patients"], ledger::RUNNING)
        };
        let v = run_json(&run, &steps, 1_003_000, false).unwrap();
        assert_eq!(
            (&v["read"], &v["status"], &v["duration_ms"]),
            (&json!(300), &json!("running"), &json!(3000))
        );
        assert_eq!(v["resumed"][0]["rows"], json!(500));
        assert!(v["countsNote"].is_string());
        let mut dead = running.clone();
        dead.checkpoint_at = Some("1970-01-01T00:16:42.000Z".into());
        let v = run_json(&run, &[before, dead], 9_999_999, true).unwrap();
        assert_eq!(
            (&v["read"], &v["status"], &v["duration_ms"]),
            (&json!(300), &json!("interrupted"), &json!(2000))
        );
        assert!(v["statusNote"].is_string());
    }

    #[test]
    fn run_ids_are_plain_names() {
        assert!(checked_id("20261206T034500.123Z-0a1b").is_ok());
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "-x", "a b", "a..b"] {
            assert!(checked_id(bad).is_err(), "{bad}");
        }
    }
}
