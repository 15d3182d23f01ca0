//! `cutover serve`: a small authenticated HTTP server over what the commands already do — the
//! versioned changes ([`crate::changes`]), the ledger's runs, steps, checkpoints and lock, the
//! run reports and `migrate` itself — and a status page. It holds no second implementation of
//! any of them: the change routes call [`crate::changes`], a run started through the API is
//! `cutover migrate` parsed from its arguments and run in this process, a report is what
//! `cutover report` renders.
//!
//! Layout: [`api`] (errors, the token, request logs), [`migrations`] (the change routes),
//! [`runs`] (runs, reports, verification), [`page`] (`GET /`).

mod api;
mod migrations;
mod page;
mod runs;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::{get, post};

use crate::changes::{self, ChangesError, UpOptions};
use crate::cli::{Cli, Outcome, ServeArgs};
use crate::commands::shared::{
    AppwriteTuning, connect_target, default_pipeline_target, load_config,
};
use crate::config::{Config, Overrides};
use crate::ledger::Ledger;
use crate::ledger::lock::LockError;
use crate::sink::target::Target;

/// What the handlers share.
pub struct State {
    /// `--config`, `--pipeline` and `--database` as given, for the commands run in the server.
    config_path: Option<PathBuf>,
    pipeline: Option<PathBuf>,
    database: Option<String>,
    /// The kind of `target`.
    kind: crate::config::TargetKind,
    cfg: Config,
    changes_dir: PathBuf,
    target: Target,
    ledger: Ledger,
    allow_create: bool,
    /// `None`: `--no-auth` on loopback.
    token: Option<String>,
    /// Runs started through the API, by id (dry runs are in no ledger).
    runs: Mutex<BTreeMap<String, runs::Served>>,
    /// The tasks of those runs, awaited at shutdown.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Why `--migrate-on-start` did not apply every pending change.
    startup_error: Mutex<Option<String>>,
    /// Held (read) by every change command running in the server; shutdown takes it (write)
    /// to wait for them: a change that has started is finished, whoever went away.
    change_gate: Arc<tokio::sync::RwLock<()>>,
}

/// SIGTERM (or Ctrl-C) seen: listened for from the start, so that a signal during
/// `--migrate-on-start` lets the change finish, then stops the server before it listens.
#[derive(Clone, Default)]
struct Stop {
    requested: Arc<std::sync::atomic::AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl Stop {
    fn listen(&self) {
        let me = self.clone();
        // Registered now (not when the task first runs): from here on SIGTERM no longer ends
        // the process at once.
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::spawn(async move {
            shutdown_signal(term).await;
            // No change starts from now on (the one under way finishes).
            crate::ledger::lock::request_changes_stop();
            me.requested
                .store(true, std::sync::atomic::Ordering::SeqCst);
            me.notify.notify_waiters();
        });
    }

    fn requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait(self) {
        loop {
            let notified = self.notify.notified();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

impl State {
    /// `--target KIND [--database NAME]`: the target of this server, for a command run in it.
    fn target_args(&self) -> Vec<String> {
        let mut argv = vec!["--target".to_string(), self.kind.name().to_string()];
        if let Some(d) = &self.database {
            argv.extend(["--database".to_string(), d.clone()]);
        }
        argv
    }

    pub(crate) fn is_appwrite(&self) -> bool {
        self.kind == crate::config::TargetKind::Appwrite
    }

    /// The changes on the target, whichever it is.
    fn changes_on(&self) -> changes::OnTarget<'_> {
        changes::OnTarget::new(&self.target, &self.ledger, None)
    }

    /// The command line `cutover ARGS…` with this server's `--config`, for a command run in it.
    fn cli(&self, args: &[String]) -> Result<Cli, api::ApiError> {
        let mut argv = vec!["cutover".to_string()];
        if let Some(c) = &self.config_path {
            argv.push("--config".into());
            argv.push(c.display().to_string());
        }
        argv.extend(args.iter().cloned());
        <Cli as clap::Parser>::try_parse_from(argv)
            .map_err(|e| api::ApiError::bad_request(e.to_string().trim().to_string()))
    }
}

/// The API token: CUTOVER_API_TOKEN, else the file `[serve] token_file` names.
fn api_token(cfg: &Config) -> Result<Option<String>> {
    if let Ok(t) = std::env::var("CUTOVER_API_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(path) = &cfg.api_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the API token file {} ([serve] token_file)",
            path.display()
        )
    })?;
    let t = text.trim();
    if t.is_empty() {
        anyhow::bail!("the API token file {} is empty", path.display());
    }
    Ok(Some(t.to_string()))
}

/// The shortest token a server listening beyond loopback accepts.
const MIN_TOKEN_CHARS: usize = 16;

/// The token to require, or a refusal: no token is allowed only on loopback with `--no-auth`.
fn token_policy(token: Option<String>, args: &ServeArgs) -> Result<Option<String>> {
    let loopback = args.listen.ip().is_loopback();
    if args.no_auth {
        if !loopback {
            anyhow::bail!(
                "refusing --no-auth on {}: without a token the server listens on a loopback address only (127.0.0.1, ::1)",
                args.listen
            );
        }
        return Ok(None);
    }
    match token {
        // Reachable from other machines, a short token can be guessed.
        Some(t) if !loopback && t.chars().count() < MIN_TOKEN_CHARS => anyhow::bail!(
            "refusing a token of {} characters on {}: a server other machines can reach needs a token of at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)",
            t.chars().count(),
            args.listen
        ),
        Some(t) => Ok(Some(t)),
        None => anyhow::bail!(
            "refusing to serve without an API token: set CUTOVER_API_TOKEN or [serve] token_file in the config (or, on a loopback address only, pass --no-auth)"
        ),
    }
}

pub async fn serve(cli: &Cli, args: &ServeArgs) -> Result<Outcome> {
    let cfg = load_config(
        cli,
        Overrides {
            mongodb_database: args.target.database.clone(),
            appwrite_database: args.target.database.clone(),
            pipeline: args.pipeline.clone(),
            ..Default::default()
        },
    )?;
    // SIGTERM is ours from the start (adv33: one sent while connecting ended the process at
    // once, exit 143, the changes' state unsaid).
    let stop = Stop::default();
    stop.listen();
    let token = token_policy(api_token(&cfg)?, args)?;
    if let Some(t) = &token {
        crate::redact::register_secret(t);
    }
    let changes_dir = match &args.dir {
        Some(d) => d.clone(),
        None => crate::pipeline::changes_dir_of(&cfg.pipeline)
            .ok()
            .flatten()
            .unwrap_or_else(|| PathBuf::from("pipelines/changes")),
    };
    // Resolved once, and given to every command the server runs, so that they all go to it.
    let kind = args
        .target
        .target
        .or_else(|| default_pipeline_target(&cfg))
        .unwrap_or(cfg.default_target);
    let (target, ledger, _) = connect_target(&cfg, Some(kind), AppwriteTuning::default()).await?;
    let state = Arc::new(State {
        config_path: cli.config.clone(),
        pipeline: args.pipeline.clone(),
        database: args.target.database.clone(),
        kind,
        cfg,
        changes_dir,
        target,
        ledger,
        allow_create: args.allow_create,
        token,
        runs: Mutex::new(BTreeMap::new()),
        tasks: Mutex::new(Vec::new()),
        startup_error: Mutex::new(None),
        change_gate: Arc::new(tokio::sync::RwLock::new(())),
    });
    if args.migrate_on_start {
        let wait = Duration::from_secs(args.lock_wait);
        if let Err(e) = migrate_on_start(&state, wait, &stop).await
            && !stop.requested()
        {
            let text = crate::redact::redact_text(&e);
            if args.migrate_on_start_fail_hard {
                anyhow::bail!("--migrate-on-start: {text}");
            }
            tracing::error!(error = %text, "migrate on start failed; serving with the failure in the status");
            crate::errln!("warning: --migrate-on-start: {text}");
            if let Ok(mut s) = state.startup_error.lock() {
                *s = Some(text);
            }
        }
    }
    if stop.requested() {
        crate::errln!(
            "stopped before serving: asked to stop while applying the changes at start (a change under way finished; those not begun stay pending)"
        );
        return Ok(Outcome::Success);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    crate::errln!(
        "serving on http://{addr}{}",
        if state.token.is_some() {
            " (token required: bearer, or basic with the token as password)"
        } else {
            " (no token: loopback only)"
        }
    );
    let serving = std::future::IntoFuture::into_future(
        axum::serve(listener, router(state.clone())).with_graceful_shutdown(stop.clone().wait()),
    );
    tokio::pin!(serving);
    tokio::select! {
        // The stop first: the server's graceful end is ready at the same moment (no connection
        // open), and taking it would skip waiting for the run in progress — whose writes then
        // met a closed client ("Client has been shut down"), and the process exited non-zero.
        biased;
        () = stop.clone().wait() => {
            // The runs and changes in progress are told at once — not once every connection
            // has closed: a client that never finishes its request would hold the stop (and
            // the run would go on writing until the container's SIGKILL).
            finish_runs(&state).await;
            finish_changes(&state).await;
            if tokio::time::timeout(CONNECTIONS_GRACE, &mut serving).await.is_err() {
                crate::errln!(
                    "warning: connections still open {} s after the stop are closed",
                    CONNECTIONS_GRACE.as_secs()
                );
            }
        }
        r = &mut serving => {
            // Ended without a stop (the listener failed): the runs and changes in progress
            // still end before the process does.
            finish_runs(&state).await;
            finish_changes(&state).await;
            r.context("the server failed")?;
        }
    }
    crate::errln!("stopped");
    Ok(Outcome::Success)
}

/// How long open connections may go on after the runs and changes have stopped: the answers
/// being sent are sent; a client still sending its request is cut off.
const CONNECTIONS_GRACE: Duration = Duration::from_secs(5);

fn router(state: Arc<State>) -> Router {
    // Every route, the status page included, needs the token (when the server has one).
    let api = Router::new()
        .route("/", get(page::page))
        .route("/api/migrations/status", get(migrations::status))
        .route("/api/migrations/up", post(migrations::up))
        .route("/api/migrations/down", post(migrations::down))
        .route("/api/migrations/history", get(migrations::history))
        .route("/api/migrations", post(migrations::create))
        .route("/api/migrations/lock/status", get(migrations::lock_status))
        .route(
            "/api/migrations/lock/release",
            post(migrations::lock_release),
        )
        .route("/api/runs", get(runs::list).post(runs::start))
        .route("/api/runs/{id}", get(runs::get))
        .route("/api/runs/{id}/report", get(runs::report))
        .route("/api/verify/latest", get(runs::verify_latest))
        .route("/api/pipeline", get(runs::pipeline))
        .fallback(|| async { api::ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            api::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        // `layer`, not `route_layer`: an unknown route answers 401 too without a token.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::same_origin_only,
        ));
    Router::new()
        .merge(api)
        .layer(axum::middleware::from_fn(api::log_request))
        .with_state(state)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal(term: Option<tokio::signal::unix::Signal>) {
    let term = async {
        match term {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: no new requests; runs in progress may finish");
}

/// Stops the runs started through the API: each is asked to stop after its current batch and
/// records its stage interrupted (the next `cutover migrate` resumes it from its checkpoint).
/// Bounded: a run that has not ended after 60 s (a batch stuck on the network) is left to the
/// ledger, which records it interrupted when the next run finds this process gone.
async fn finish_runs(state: &State) {
    let tasks: Vec<_> = match state.tasks.lock() {
        Ok(mut t) => t.drain(..).collect(),
        Err(_) => return,
    };
    if tasks.iter().all(|t| t.is_finished()) {
        return;
    }
    crate::ledger::lock::request_runs_stop();
    crate::errln!(
        "stopping the run in progress after its current batch (it is recorded interrupted; `cutover migrate` resumes it; waiting at most 60 s)"
    );
    let all = futures::future::join_all(tasks);
    if tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .is_err()
    {
        crate::errln!(
            "warning: a run was still going 60 s after it was asked to stop; the next run records it interrupted (resume it with `cutover migrate`)"
        );
        // The runtime would wait for the run's thread when dropped: the process ends here, and
        // the ledger sees its step's process gone (interrupted, resumable from its checkpoint).
        std::process::exit(1);
    }
}

/// Waits for the change commands still running (their clients may have gone): a change that
/// has started is finished, not left half applied.
async fn finish_changes(state: &State) {
    if state.change_gate.try_write().is_err() {
        crate::errln!("waiting for the change being applied or reversed to finish");
        let _all_done = state.change_gate.write().await;
    }
}

/// Applies the pending changes before the server listens. Another instance applying them holds
/// the lock: wait for it (at most `wait`), then see what is left. Returns why it failed.
async fn migrate_on_start(state: &State, wait: Duration, stop: &Stop) -> Result<(), String> {
    let files = changes::file::load_existing_dir(&state.changes_dir).map_err(|e| e.to_string())?;
    let target = state.changes_on();
    let started = Instant::now();
    // The failures already in the history: one that appears while this instance waits is
    // another instance's attempt at the same files, which this one would only repeat (three
    // replicas tried a failing change three times, each writing and undoing it).
    let failed_before = failed_ups(&state.ledger).await?;
    let mut waited = false;
    loop {
        if waited {
            let failed_now = failed_ups(&state.ledger).await?;
            let theirs: Vec<String> = failed_now
                .iter()
                .filter(|(k, _)| !failed_before.contains_key(*k))
                .map(|((version, _), error)| format!("{version}: {error}"))
                .collect();
            if !theirs.is_empty() {
                return Err(format!(
                    "a change failed in another instance while this one waited for its lock, and is not tried again here ({}); fix it, then `changes up` or restart",
                    theirs.join("; ")
                ));
            }
        }
        match target.up(&files, &UpOptions::default()).await {
            Ok(report) => {
                for c in &report.changes {
                    crate::errln!("migrate on start: {} {} {}", c.status, c.version, c.name);
                }
                if report.failed() {
                    let failed: Vec<String> = report
                        .changes
                        .iter()
                        .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.version)))
                        .collect();
                    return Err(format!("a change failed: {}", failed.join("; ")));
                }
                return Ok(());
            }
            Err(ChangesError::Lock(l)) if matches!(*l, LockError::Held(_)) => {
                if stop.requested() {
                    return Err("asked to stop while waiting for another instance's lock".into());
                }
                if started.elapsed() >= wait {
                    return Err(format!(
                        "gave up waiting {} s for the lock: {l}",
                        wait.as_secs()
                    ));
                }
                waited = true;
                tracing::info!("another instance holds the lock; waiting");
                // The lock's one record is polled until it is free (or its holder gone); the
                // history is read again only then, before the next try.
                loop {
                    let pause = 200 + fastrand::u64(..300);
                    // A stop request ends the wait at once.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                        _ = stop.clone().wait() => {}
                    }
                    if stop.requested() || started.elapsed() >= wait {
                        break;
                    }
                    match state.ledger.lock_holder().await {
                        Ok(Some(h)) if !h.expired => {}
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not read the lock; trying again");
                            break;
                        }
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The failed `up`s of the changes history (newest first, the last 1,000), by (version, run),
/// with their errors.
async fn failed_ups(ledger: &Ledger) -> Result<BTreeMap<(u64, String), String>, String> {
    let entries = changes::history_in(ledger, 1000, 0, Some(crate::ledger::FAILED))
        .await
        .map_err(|e| format!("read the changes history: {e}"))?;
    Ok(entries
        .into_iter()
        .filter(|e| e.action == "up")
        .map(|e| ((e.version, e.run_id), e.error.unwrap_or_default()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(line: &[&str]) -> ServeArgs {
        let mut argv = vec!["cutover", "serve"];
        argv.extend_from_slice(line);
        match Cli::parse_from(argv).command {
            crate::cli::Command::Serve(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn no_token_is_refused_unless_no_auth_on_loopback() {
        let err = token_policy(None, &args(&[])).unwrap_err().to_string();
        assert!(err.contains("CUTOVER_API_TOKEN"), "{err}");
        assert_eq!(token_policy(None, &args(&["--no-auth"])).unwrap(), None);
        assert_eq!(
            token_policy(None, &args(&["--no-auth", "--listen", "[::1]:9000"])).unwrap(),
            None
        );
        let err = token_policy(None, &args(&["--no-auth", "--listen", "0.0.0.0:8088"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        assert_eq!(
            token_policy(Some("t0k".into()), &args(&["--listen", "127.0.0.1:8088"])).unwrap(),
            Some("t0k".into())
        );
        // Reachable from other machines, a short token is refused (the outside tester's adv20
        // F7: one character was accepted on 0.0.0.0).
        let err = token_policy(Some("t0k".into()), &args(&["--listen", "0.0.0.0:8088"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 16"), "{err}");
        let long = "0123456789abcdef".to_string();
        assert_eq!(
            token_policy(Some(long.clone()), &args(&["--listen", "0.0.0.0:8088"])).unwrap(),
            Some(long)
        );
        // A host name resolves.
        assert!(
            args(&["--listen", "localhost:8088"])
                .listen
                .ip()
                .is_loopback()
        );
    }
}
