//! The change routes (`/api/migrations…`): [`crate::changes`] status, up, down, history and new
//! files, and the lock, as JSON.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::State;
use super::api::{ApiError, Json, Query};
use crate::changes::template::Template;
use crate::changes::{self, ChangeStatus, DownTarget, UpOptions};
use crate::ledger::lock::LockHolder;

/// The states a change is listed as failed in (it needs attention before `up` goes on).
const FAILED_STATES: [&str; 5] = [
    "failed",
    "restore-failed",
    "down-failed",
    "interrupted",
    "down-interrupted",
];

fn files(state: &State) -> Result<Vec<changes::Change>, ApiError> {
    Ok(changes::file::load_existing_dir(&state.changes_dir)?)
}

/// The lock as the API shows it: `null` when free (or expired).
pub fn lock_json(holder: Option<&LockHolder>) -> Value {
    match holder {
        Some(h) if !h.expired => json!({
            "by": format!("{} (run {}) on {} pid {}", h.command, h.run_id, h.host, h.pid),
            "runId": h.run_id,
            "command": h.command,
            "host": h.host,
            "pid": h.pid,
            "since": h.acquired_at,
            "expiresAt": h.expires_at,
        }),
        _ => Value::Null,
    }
}

fn change_json(s: &ChangeStatus) -> Value {
    json!({
        "version": s.version,
        "name": s.name,
        "state": s.state,
        "reversible": s.reversible,
        "appliedAt": s.applied_at,
        "executionTime": s.duration_ms,
        "batch": s.batch,
        "error": s.error,
        "hint": s.hint,
    })
}

/// The status of every change, as the status route and the page show it.
pub async fn status_json(state: &State) -> Result<Value, ApiError> {
    let files = files(state)?;
    let states = changes::status_in(&state.ledger, &files).await?;
    let holder = state.ledger.lock_holder().await?;
    let failed: Vec<Value> = states
        .iter()
        .filter(|s| FAILED_STATES.contains(&s.state.as_str()))
        .map(change_json)
        .collect();
    let pending: Vec<Value> = states
        .iter()
        .filter(|s| s.is_pending() && !FAILED_STATES.contains(&s.state.as_str()))
        .map(|s| json!({"version": s.version, "name": s.name, "reversible": s.reversible, "state": s.state}))
        .collect();
    let applied: Vec<Value> = states
        .iter()
        .filter(|s| matches!(s.state.as_str(), "applied" | "modified" | "missing"))
        .map(|s| json!({"version": s.version, "name": s.name, "appliedAt": s.applied_at, "executionTime": s.duration_ms, "state": s.state}))
        .collect();
    // Being applied or reversed right now (by this server or another process).
    let in_progress: Vec<Value> = states
        .iter()
        .filter(|s| matches!(s.state.as_str(), "running" | "reversing"))
        .map(change_json)
        .collect();
    // What went wrong at start no longer shows once every change is applied and none is
    // failed or under way (another instance, or a `changes up`, did what this one could not).
    if failed.is_empty()
        && pending.is_empty()
        && in_progress.is_empty()
        && let Ok(mut s) = state.startup_error.lock()
    {
        *s = None;
    }
    let startup = state.startup_error.lock().ok().and_then(|s| s.clone());
    Ok(json!({
        "summary": {
            "total": states.len(),
            "applied": applied.len(),
            "pending": pending.len(),
            "failed": failed.len(),
            "inProgress": in_progress.len(),
        },
        "applied": applied,
        "pending": pending,
        "failed": failed,
        "inProgress": in_progress,
        "locked": lock_json(holder.as_ref()),
        "startupError": startup,
    }))
}

/// Runs a change command in a task of its own, holding the server's change gate: it finishes
/// even when the client goes away (a dropped request would otherwise stop it part way, the
/// change half applied and the lock held), and shutdown waits for it.
async fn detached<T, F, Fut>(state: &Arc<State>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Arc<State>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let gate = state.change_gate.clone().read_owned().await;
    let state = state.clone();
    tokio::spawn(async move {
        let _gate = gate;
        work(state).await
    })
    .await
    .map_err(|e| ApiError::internal(format!("the change task failed: {e}")))?
}

/// A dry run while another command holds the lock answers 409, as the real command would.
async fn refuse_while_locked(state: &State) -> Result<(), ApiError> {
    match state.ledger.lock_holder().await? {
        Some(h) if !h.expired => Err(ApiError::locked(format!("the target is locked by {h}"))),
        _ => Ok(()),
    }
}

pub async fn status(Shared(state): Shared<Arc<State>>) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(status_json(&state).await?))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    continue_on_error: bool,
    to: Option<u64>,
    #[serde(default)]
    allow_out_of_order: bool,
}

pub async fn up(
    Shared(state): Shared<Arc<State>>,
    Query(q): Query<UpQuery>,
) -> Result<Response, ApiError> {
    let files = files(&state)?;
    let opts = UpOptions {
        to: q.to,
        dry_run: q.dry_run,
        allow_out_of_order: q.allow_out_of_order,
        continue_on_error: q.continue_on_error,
    };
    if q.dry_run {
        refuse_while_locked(&state).await?;
    }
    let report = detached(&state, move |state| async move {
        Ok(state.changes_on().up(&files, &opts).await?)
    })
    .await?;
    let failed = report.failed();
    if !failed && !report.dry_run {
        // What `--migrate-on-start` could not apply is applied now.
        if let Ok(mut s) = state.startup_error.lock() {
            *s = None;
        }
    }
    let body = json!({
        "dryRun": report.dry_run,
        "batch": report.batch,
        "failed": failed,
        "changes": report.changes,
        "recovered": report.recovered,
        // The server is stopping (SIGTERM): the change under way finished, these were not begun.
        "stoppedEarly": !report.left_pending.is_empty(),
        "leftPending": report.left_pending,
    });
    if failed {
        // A failed change was undone and stopped the batch: refused, with what was done.
        let mut b = json!({
            "error": "change_failed",
            "message": report
                .changes
                .iter()
                .filter_map(|c| c.error.as_ref().map(|e| format!("change {}: {e}", c.version)))
                .collect::<Vec<_>>()
                .join("; "),
        });
        b["report"] = body;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(b)).into_response());
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownQuery {
    steps: Option<usize>,
    to: Option<u64>,
    version: Option<u64>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    continue_on_error: bool,
}

pub async fn down(
    Shared(state): Shared<Arc<State>>,
    Query(q): Query<DownQuery>,
) -> Result<Response, ApiError> {
    let which = match (q.version, q.steps, q.to) {
        (Some(v), None, None) => DownTarget::Version(v),
        (None, None, Some(v)) => DownTarget::To(v),
        (None, Some(0), None) => return Err(ApiError::bad_request("steps must be at least 1")),
        (None, Some(n), None) => DownTarget::Steps(n),
        (None, None, None) => DownTarget::Steps(1),
        _ => {
            return Err(ApiError::bad_request(
                "give at most one of steps, to and version",
            ));
        }
    };
    if q.dry_run {
        refuse_while_locked(&state).await?;
        let would = state.changes_on().down_preview(which).await?;
        return Ok(axum::Json(json!({
            "dryRun": true,
            "changes": would.iter().map(|r| json!({"version": r.version, "name": r.name, "file": r.file})).collect::<Vec<_>>(),
        }))
        .into_response());
    }
    let go_on = q.continue_on_error;
    let report = detached(&state, move |state| async move {
        Ok(state.changes_on().down_with(which, go_on).await?)
    })
    .await?;
    if report.failed.is_empty() {
        // What `--migrate-on-start` found (a change left interrupted) has been dealt with
        // (adv28 R9: the error stayed on the status after the down that recovered it).
        if let Ok(mut s) = state.startup_error.lock() {
            *s = None;
        }
    }
    let body = json!({
        "dryRun": false,
        "changes": report.reversed,
        "failed": report.failed,
        "notReversed": report.blocked,
    });
    if !report.failed.is_empty() {
        // Reversals failed (and were gone past): refused, with what was done.
        let message = report
            .failed
            .iter()
            .map(|f| format!("change {}: {}", f.version, f.error))
            .collect::<Vec<_>>()
            .join("; ");
        let mut b = json!({ "error": "change_failed", "message": message });
        b["report"] = body;
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(b)).into_response());
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<usize>,
    skip: Option<usize>,
    status: Option<String>,
}

pub async fn history(
    Shared(state): Shared<Arc<State>>,
    Query(q): Query<HistoryQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).min(1000);
    // `completed` is what other migration tools call an applied change.
    let status = match q.status.as_deref() {
        Some("") | None => None,
        Some("completed") => Some("applied"),
        Some(s) => Some(s),
    };
    let entries = changes::history_in(&state.ledger, limit, q.skip.unwrap_or(0), status)
        .await
        .map_err(|e| match e {
            // The one refusal of a history read: a status no entry can have.
            changes::ChangesError::Refused(m) if status.is_some() => ApiError::bad_request(m),
            e => ApiError::from(e),
        })?;
    Ok(axum::Json(json!({ "entries": entries })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    template: Option<String>,
}

fn template_of(name: &str) -> Option<Template> {
    Some(match name {
        "" | "empty" => Template::Empty,
        "add-field" => Template::AddField,
        "rename-field" => Template::RenameField,
        "transform" => Template::Transform,
        "index" => Template::Index,
        "seed" => Template::Seed,
        "archive" => Template::Archive,
        "schema" => Template::Schema,
        "sanitize" => Template::Sanitize,
        _ => return None,
    })
}

pub async fn create(
    Shared(state): Shared<Arc<State>>,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    if !state.allow_create {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this server does not create change files (start it with --allow-create)",
        ));
    }
    let t = body.template.as_deref().unwrap_or("empty");
    let template = template_of(t).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown template `{t}`: empty, add-field, rename-field, transform, index, seed, archive, schema or sanitize"
        ))
    })?;
    // The template's operations are those of this server's target.
    let path = changes::template::new_file_for(
        &state.changes_dir,
        &body.name,
        template,
        chrono::Utc::now(),
        state.is_appwrite(),
    )
    .map_err(|e| {
        // The server's own paths are not a client's business (adv40 F8): the directory is
        // named by its last part.
        let dir = state.changes_dir.display().to_string();
        let shown = state
            .changes_dir
            .file_name()
            .map(|n| format!("the changes directory `{}`", n.to_string_lossy()))
            .unwrap_or_else(|| "the changes directory".to_string());
        ApiError::bad_request(e.to_string().replace(&dir, &shown))
    })?;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let version: Option<u64> = file.split('_').next().and_then(|v| v.parse().ok());
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "file": file, "version": version })),
    )
        .into_response())
}

pub async fn lock_status(Shared(state): Shared<Arc<State>>) -> Result<axum::Json<Value>, ApiError> {
    let holder = state.ledger.lock_holder().await?;
    Ok(axum::Json(json!({
        "locked": lock_json(holder.as_ref()),
        // A holder whose lock is no longer good: its lease ran out, or its process (on this
        // host) is gone before it did.
        "expired": holder.as_ref().filter(|h| h.expired).map(|h| json!({
            "runId": h.run_id,
            "command": h.command,
            "expiresAt": h.expires_at,
            "why": if h.process_gone { "its process is gone" } else { "its lease expired" },
        })),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    #[serde(default)]
    confirm: bool,
    /// Release it even from a holder alive on this machine (this server's own run or change).
    #[serde(default)]
    force: bool,
}

pub async fn lock_release(
    Shared(state): Shared<Arc<State>>,
    Json(body): Json<ReleaseBody>,
) -> Result<axum::Json<Value>, ApiError> {
    if !body.confirm {
        return Err(ApiError::bad_request(
            "refusing to release the lock without {\"confirm\": true}: if its holder is alive, a second run would start beside it",
        ));
    }
    if !body.force
        && let Some(h) = state.ledger.lock_holder().await?
        && h.alive_here
    {
        let whose = if h.pid == i64::from(std::process::id()) {
            "this server's own"
        } else {
            "a live process's on this machine"
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "lock_held",
            format!(
                "refusing to release the lock: it is {whose} ({h}); let it end, or send {{\"confirm\": true, \"force\": true}} to take the lock from it"
            ),
        ));
    }
    let released = state.ledger.force_release_lock().await?;
    Ok(axum::Json(json!({
        "released": released.map(|h| json!({"runId": h.run_id, "command": h.command, "host": h.host, "pid": h.pid})),
    })))
}

impl From<crate::changes::FileError> for ApiError {
    fn from(e: crate::changes::FileError) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_change_file",
            e.to_string(),
        )
    }
}
