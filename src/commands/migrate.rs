//! `cutover migrate`: run the pipeline's stages.

use std::io::IsTerminal;

use anyhow::Result;

use super::shared::{AppwriteTuning, connect_target, load_config, load_pipeline};
use crate::cli::{Cli, MigrateArgs, Outcome};
use crate::config::Overrides;
use crate::ledger::Ledger;
use crate::pipeline::run::{self, RunOptions};
use crate::sink::retry::RetryPolicy;

pub async fn migrate(cli: &Cli, args: &MigrateArgs) -> Result<Outcome> {
    stop_on_signal(args.dry_run);
    migrate_as(cli, args, &run::new_run_id()).await
}

/// SIGTERM or Ctrl-C (SIGINT) stops the run in order: no batch more is started, the batches
/// being written finish and are counted, the checkpoint is recorded and the run ends with its
/// report, its stage interrupted (`cutover migrate` resumes it). A second signal ends the
/// process at once (as a kill: the next run resumes from the last checkpoint). A dry run, which
/// writes nothing, ends at the first.
fn stop_on_signal(dry_run: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        let mut next = async || {
            tokio::select! {
                _ = term.recv() => 128 + 15,
                _ = int.recv() => 128 + 2,
            }
        };
        let code = next().await;
        if dry_run {
            crate::errln!("stopped: a dry run writes nothing");
            std::process::exit(code);
        }
        crate::ledger::lock::request_runs_stop();
        crate::errln!(
            "stopping after the batches being written (they finish and are counted; the stage is recorded interrupted and `cutover migrate` resumes it); signal again to end at once"
        );
        let code = next().await;
        crate::errln!("ended at once: the next `cutover migrate` resumes from the last checkpoint");
        std::process::exit(code);
    });
}

/// `migrate` as the run `run_id` (`cutover serve` names the run it starts).
pub(crate) async fn migrate_as(cli: &Cli, args: &MigrateArgs, run_id: &str) -> Result<Outcome> {
    let cfg = load_config(
        cli,
        Overrides {
            batch_size: args.batch_size,
            concurrency: args.concurrency,
            file_concurrency: args.file_concurrency,
            files_root: args.files.files_root.clone(),
            mongodb_database: args.target.database.clone(),
            appwrite_database: args.target.database.clone(),
            ..Default::default()
        },
    )?;
    for line in cfg.describe_effective() {
        crate::errln!("{line}");
    }
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    let source = cfg.require_source()?.to_string();
    // --target, else the pipeline's own, else the config's default.
    let kind = args.target.target.or(pipeline.spec.target);
    let (target, ledger, target_name) = connect_target(
        &cfg,
        kind,
        AppwriteTuning {
            rate: args.rate_limit.map(|r| (r, args.burst.unwrap_or(1))),
            bulk_rows: args.bulk_rows,
            retries: Some(args.retries),
        },
    )
    .await?;
    let opts = RunOptions {
        dry_run: args.dry_run,
        batch_size: cfg.batch_size,
        batch_bytes: cfg.batch_bytes,
        concurrency: cfg.concurrency,
        file_concurrency: cfg.file_concurrency,
        continue_on_error: args.continue_on_error,
        recheck_files: args.recheck_files,
        skip_validation: args.skip_validation,
        max_rejects: args.max_rejects,
        ignore_dependencies: args.ignore_dependencies,
        report_path: args.report.clone(),
        reports_dir: cfg.reports_dir.clone(),
        rejects_dir: cfg.rejects_dir.clone(),
        quiet: args.quiet || !std::io::stderr().is_terminal(),
        retry: RetryPolicy {
            max_retries: args.retries,
            ..Default::default()
        },
        target_name,
        rerun: args.rerun,
        accept_changed: args.accept_changed,
        fresh: args.fresh,
        since_last: args.since_last,
        sync_deletes: args.sync_deletes,
        no_backup: args.no_backup,
        restore_on_failure: args.restore_on_failure,
        lock_ttl: std::time::Duration::from_secs(args.lock_ttl.max(1)),
        files_root: cfg.files_root.clone(),
    };
    if args.rerun || args.since_last {
        let applied = applied_changes(&pipeline, &steps, &ledger).await?;
        if !applied.is_empty() && !args.ignore_changes {
            anyhow::bail!(
                "refused{}: {}; a {} rewrites their documents from the source and loses what the change did, while the ledger would still list it applied (as a rollback would). Reverse it first (`cutover changes down`) and apply it again after the run, or give --ignore-changes to rewrite them anyway",
                if args.dry_run { " (dry run)" } else { "" },
                applied.join("; "),
                if args.rerun {
                    "re-run"
                } else {
                    "--since-last run"
                }
            );
        }
        for c in &applied {
            crate::errln!(
                "warning (--ignore-changes): {c}: the documents this run rewrites lose what it did while the ledger lists it applied"
            );
        }
    }
    let report =
        run::migrate_as(run_id, &pipeline, steps, &source, &target, &ledger, &opts).await?;
    crate::out!("{}", crate::redact::redact_text(&report.render_text()));
    if let Some(keep) = cfg.backups_keep
        && !args.dry_run
        && report.error.is_none()
        && !report.entities.is_empty()
    {
        // Retention is housekeeping: a failure to prune is told, the run still stands.
        match prune_after_run(&ledger, &report, keep).await {
            Ok(text) => crate::out!("{text}"),
            Err(e) => crate::errln!(
                "warning: pruning backups ([backups] keep = {keep}) failed: {}",
                crate::redact::redact_text(&format!("{e:#}"))
            ),
        }
    }
    if let Some(e) = &report.error {
        crate::errln!("error: {}", crate::redact::redact_text(e));
        return Ok(Outcome::Failed);
    }
    if let Some(e) = &report.file_error {
        crate::errln!("error: {}", crate::redact::redact_text(e));
        return Ok(Outcome::Failed);
    }
    Ok(if report.totals.rejected > 0 {
        Outcome::FinishedWithRejects
    } else {
        Outcome::Success
    })
}

/// `[backups] keep` after a successful run: prunes the backups of the run's entities, never those
/// the run took, under the lock (the run has released its own). Returns what to print.
async fn prune_after_run(
    ledger: &Ledger,
    report: &crate::monitor::report::RunReport,
    keep: usize,
) -> Result<String> {
    use crate::ledger::retention;
    let req = retention::PruneRequest {
        keep,
        entities: Some(report.entities.iter().map(|e| e.name.clone()).collect()),
        protect: report
            .entities
            .iter()
            .filter_map(|e| e.backup.clone())
            .collect(),
        dry_run: false,
    };
    let run_id = run::new_run_id();
    let lock = ledger
        .acquire_lock(&run_id, "backup prune", crate::ledger::lock::DEFAULT_TTL)
        .await?;
    let result = retention::prune(ledger, &req).await;
    lock.release().await?;
    let verdicts = result?;
    if verdicts.iter().all(|v| v.keep.is_some()) {
        return Ok(String::new());
    }
    let dropped: Vec<&retention::Verdict> = verdicts.iter().filter(|v| v.keep.is_none()).collect();
    let mut text = format!(
        "backups ([backups] keep = {keep}): dropped {} older backup(s)\n",
        dropped.len()
    );
    for v in dropped {
        text.push_str(&format!(
            "  dropped {} ({}, run {})\n",
            v.backup.name, v.backup.destination, v.backup.run_id
        ));
    }
    Ok(text)
}

/// A re-run or a delta run rewrites documents from the source: what `cutover changes` applied to
/// them is lost while the ledger still lists the changes applied (adv28 R7: only warned). The
/// changes applied on the collections of `steps`, said a line each.
async fn applied_changes(
    pipeline: &crate::pipeline::Pipeline,
    steps: &[crate::pipeline::Step],
    ledger: &Ledger,
) -> Result<Vec<String>> {
    let collections: std::collections::BTreeSet<String> = steps
        .iter()
        .filter_map(|s| pipeline.mappings.get(&s.entity).ok())
        .map(|m| m.collection().to_string())
        .collect();
    let applied = crate::changes::changes_since(ledger, &collections, 0).await?;
    Ok(applied
        .iter()
        .filter(|c| c.applied && !c.uncertain)
        .map(|c| {
            format!(
                "change {} ({}) is applied on {}",
                c.version,
                c.file,
                c.collections.join(", ")
            )
        })
        .collect())
}
