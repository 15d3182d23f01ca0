//! `cutover changes new | up | down | status | list`: prints what [`crate::changes`] reports.

use std::path::PathBuf;

use anyhow::Result;

use crate::changes::{self, DownTarget, UpOptions, template::Template};
use crate::cli::{ChangeTemplate, ChangesCommand, ChangesTargetArgs, Cli, Outcome, TargetArgs};
use crate::sink::target::Target;

/// The directory of the change files: `--dir`, else the pipeline file's `changes_dir` (the
/// pipeline of the config, `[run] pipeline`), else `pipelines/changes`.
fn changes_dir(cli: &Cli, dir: &Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.clone());
    }
    let cfg = super::shared::load_config(cli, crate::config::Overrides::default())?;
    Ok(crate::pipeline::changes_dir_of(&cfg.pipeline)?
        .unwrap_or_else(|| PathBuf::from("pipelines/changes")))
}

fn kind_of(t: crate::cli::ChangesTarget) -> crate::config::TargetKind {
    match t {
        crate::cli::ChangesTarget::Mongodb => crate::config::TargetKind::Mongodb,
        crate::cli::ChangesTarget::Appwrite => crate::config::TargetKind::Appwrite,
    }
}

/// The change files and the target with its ledger.
async fn open(
    cli: &Cli,
    args: &ChangesTargetArgs,
) -> Result<(Vec<changes::Change>, Target, crate::ledger::Ledger)> {
    let files = changes::file::load_existing_dir(&changes_dir(cli, &args.dir)?)?;
    let (t, ledger) = open_target(cli, args).await?;
    Ok((files, t, ledger))
}

/// The target and its ledger alone: `down` and `history` work from the ledger's records (the
/// text each change was applied with), so a draft with a typo or a seed file gone since never
/// blocks them.
async fn open_target(
    cli: &Cli,
    args: &ChangesTargetArgs,
) -> Result<(Target, crate::ledger::Ledger)> {
    let target = TargetArgs {
        target: args.target.map(kind_of),
        database: args.database.clone(),
    };
    let (_cfg, t, ledger) = super::shared::open_ledger(cli, &target).await?;
    Ok((t, ledger))
}

pub async fn changes(cli: &Cli, cmd: &ChangesCommand) -> Result<Outcome> {
    let json = match cmd {
        ChangesCommand::New(_) => false,
        ChangesCommand::Up(a) => a.json,
        ChangesCommand::Down(a) => a.json,
        ChangesCommand::Status(a) | ChangesCommand::List(a) => a.json,
        ChangesCommand::History(a) => a.json,
    };
    let result = run(cli, cmd).await;
    // A script reading --json gets a JSON answer also when the command is refused (the error is
    // on stderr as always).
    if json && let Err(e) = &result {
        crate::outln!(
            "{}",
            serde_json::json!({
                "error": "refused",
                "message": crate::redact::redact_text(&format!("{e:#}")),
            })
        );
    }
    result
}

async fn run(cli: &Cli, cmd: &ChangesCommand) -> Result<Outcome> {
    match cmd {
        ChangesCommand::New(args) => {
            let template = match args.template {
                ChangeTemplate::Empty => Template::Empty,
                ChangeTemplate::AddField => Template::AddField,
                ChangeTemplate::RenameField => Template::RenameField,
                ChangeTemplate::Index => Template::Index,
                ChangeTemplate::Seed => Template::Seed,
                ChangeTemplate::Transform => Template::Transform,
                ChangeTemplate::Archive => Template::Archive,
                ChangeTemplate::Schema => Template::Schema,
                ChangeTemplate::Sanitize => Template::Sanitize,
            };
            let path = changes::template::new_file_for(
                &changes_dir(cli, &args.dir)?,
                &args.name,
                template,
                chrono::Utc::now(),
                match args.target {
                    Some(t) => kind_of(t),
                    None => {
                        let cfg =
                            super::shared::load_config(cli, crate::config::Overrides::default())?;
                        super::shared::default_pipeline_target(&cfg).unwrap_or(cfg.default_target)
                    }
                } == crate::config::TargetKind::Appwrite,
            )?;
            crate::outln!("wrote {}", path.display());
            Ok(Outcome::Success)
        }
        ChangesCommand::Up(args) => {
            let (files, t, ledger) = open(cli, &args.target).await?;
            let activity = std::sync::Arc::new(crate::monitor::Activity::default());
            let spinner = crate::monitor::watch(activity.clone(), false);
            let opts = UpOptions {
                to: args.to,
                dry_run: args.dry_run,
                allow_out_of_order: args.allow_out_of_order,
                continue_on_error: args.continue_on_error,
            };
            let report = changes::OnTarget::new(&t, &ledger, Some(&activity))
                .up(&files, &opts)
                .await;
            spinner.finish_and_clear();
            let report = report?;
            if !args.json {
                for r in &report.recovered {
                    crate::outln!("{:<8} {} {}: {}", r.status, r.version, r.name, r.note);
                }
            }
            if args.json {
                crate::outln!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.changes.is_empty() {
                crate::outln!("no pending changes");
            } else if report.dry_run {
                crate::outln!(
                    "dry run: nothing written; each change is previewed against the data as it is now (not after the changes before it)"
                );
                for c in &report.changes {
                    crate::outln!("{} {} {}", c.status, c.version, c.name);
                    for (i, p) in c.preview.iter().enumerate() {
                        crate::outln!(
                            "  {}. {} {}: {}",
                            i + 1,
                            p.op,
                            p.collection.as_deref().unwrap_or("-"),
                            p.note
                        );
                    }
                    // Why it would fail when no operation's line says it (a transaction over
                    // the server's limit).
                    if let Some(e) = &c.error
                        && !c.preview.iter().any(|p| p.would_fail)
                    {
                        crate::outln!("  {e}");
                    }
                }
            } else {
                crate::outln!("batch {}", report.batch.unwrap_or(0));
                for c in &report.changes {
                    crate::outln!(
                        "{:<8} {} {} ({} ms; matched {}, modified {}, inserted {}, deleted {})",
                        c.status,
                        c.version,
                        c.name,
                        c.duration_ms,
                        c.matched,
                        c.modified,
                        c.inserted,
                        c.deleted
                    );
                    if let Some(e) = &c.error {
                        crate::errln!("error: change {}: {e}", c.version);
                    }
                }
                if !report.left_pending.is_empty() {
                    let v: Vec<String> = report.left_pending.iter().map(u64::to_string).collect();
                    crate::errln!(
                        "stopping: {} not begun, left pending for the next `cutover changes up`",
                        v.join(", ")
                    );
                }
            }
            Ok(if report.failed() {
                Outcome::Failed
            } else {
                Outcome::Success
            })
        }
        ChangesCommand::Down(args) => {
            let (t, ledger) = open_target(cli, &args.target).await?;
            let activity = std::sync::Arc::new(crate::monitor::Activity::default());
            let spinner = crate::monitor::watch(activity.clone(), false);
            let which = match (args.version, args.steps, args.to) {
                (Some(v), _, _) => DownTarget::Version(v),
                (None, _, Some(v)) => DownTarget::To(v),
                (None, Some(n), None) => DownTarget::Steps(n),
                (None, None, None) => DownTarget::Steps(1),
            };
            if args.dry_run {
                spinner.finish_and_clear();
                let would = changes::OnTarget::new(&t, &ledger, None)
                    .down_preview(which)
                    .await?;
                if args.json {
                    let list: Vec<_> = would
                        .iter()
                        .map(|r| serde_json::json!({"version": r.version, "name": r.name, "file": r.file}))
                        .collect();
                    crate::outln!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "dryRun": true, "changes": list })
                        )?
                    );
                } else if would.is_empty() {
                    crate::outln!("nothing to reverse");
                } else {
                    for r in &would {
                        crate::outln!("would reverse {} {}", r.version, r.name);
                    }
                }
                return Ok(Outcome::Success);
            }
            let done = changes::OnTarget::new(&t, &ledger, Some(&activity))
                .down_with(which, args.continue_on_error)
                .await;
            spinner.finish_and_clear();
            let report = done?;
            let outcome = if report.failed.is_empty() {
                Outcome::Success
            } else {
                Outcome::Failed
            };
            if args.json {
                crate::outln!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(outcome);
            }
            let done = &report.reversed;
            if done.is_empty() && report.failed.is_empty() && report.blocked.is_empty() {
                crate::outln!("nothing to reverse");
            }
            if done.iter().any(|r| r.note.is_some()) {
                crate::outln!(
                    "finishing what a process that died left half done (nothing else is reversed by this command; run it again for more):"
                );
            }
            for r in done {
                if let Some(n) = &r.note {
                    crate::outln!("change {}: {n}", r.version);
                }
                crate::outln!(
                    "reversed {} {} ({} ms; restored {}, inserted {}, deleted {})",
                    r.version,
                    r.name,
                    r.duration_ms,
                    r.restored,
                    r.inserted,
                    r.deleted
                );
                if r.skipped > 0 {
                    crate::errln!(
                        "warning: change {}: {} documents changed since it was applied were left as they are",
                        r.version,
                        r.skipped
                    );
                }
            }
            for f in &report.failed {
                crate::errln!("error: change {} {}: {}", f.version, f.name, f.error);
            }
            for b in &report.blocked {
                crate::errln!("not reversed {} {}: {}", b.version, b.name, b.error);
            }
            Ok(outcome)
        }
        ChangesCommand::History(args) => {
            let (_t, ledger) = open_target(cli, &args.target).await?;
            let entries =
                changes::history_in(&ledger, args.limit, args.skip, args.status.as_deref()).await?;
            if args.json {
                crate::outln!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(Outcome::Success);
            }
            crate::outln!(
                "{:<24} {:<5} {:<16} {:<14} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  name",
                "at",
                "",
                "version",
                "status",
                "batch",
                "ms",
                "matched",
                "modified",
                "inserted",
                "deleted"
            );
            for e in &entries {
                crate::outln!(
                    "{:<24} {:<5} {:<16} {:<14} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
                    e.at.as_deref().unwrap_or("-"),
                    e.action,
                    e.version,
                    e.status,
                    e.batch.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                    e.duration_ms,
                    e.matched,
                    e.modified,
                    e.inserted,
                    e.deleted,
                    e.name
                );
                if let Some(err) = &e.error {
                    crate::outln!("{:<24} error: {err}", "");
                }
                if let Some(note) = &e.note {
                    crate::outln!("{:<24} {note}", "");
                }
            }
            Ok(Outcome::Success)
        }
        ChangesCommand::Status(args) | ChangesCommand::List(args) => {
            let list = matches!(cmd, ChangesCommand::List(_));
            let (files, _t, ledger) = open(cli, &args.target).await?;
            let states = changes::status_in(&ledger, &files).await?;
            let holder = ledger.lock_holder().await?;
            if args.json {
                let v = if list {
                    serde_json::json!({ "changes": states })
                } else {
                    serde_json::json!({ "changes": states, "lock": holder })
                };
                crate::outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(Outcome::Success);
            }
            if states.is_empty() {
                crate::outln!(
                    "no change files in {}",
                    changes_dir(cli, &args.target.dir)?.display()
                );
            }
            for s in &states {
                let reversible = if s.reversible { "" } else { "  non-reversible" };
                if list {
                    crate::outln!(
                        "{:<16} {:<13} {:>3} ops{}{}  {}  {}",
                        s.version,
                        s.state,
                        s.operations,
                        if s.transaction { ", transaction" } else { "" },
                        reversible,
                        s.name,
                        s.file.as_deref().unwrap_or("(file gone)")
                    );
                } else {
                    crate::outln!(
                        "{:<16} {:<13} batch {:<4} {:<24}  {}{}",
                        s.version,
                        s.state,
                        s.batch.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                        s.applied_at.as_deref().unwrap_or("-"),
                        s.name,
                        reversible
                    );
                    if let Some(why) = &s.irreversible_because {
                        crate::outln!("{:<16} {why}", "");
                    }
                    if matches!(
                        s.state.as_str(),
                        "failed" | "restore-failed" | "down-failed"
                    ) && let Some(e) = &s.error
                    {
                        crate::outln!("{:<16} last error: {e}", "");
                    }
                    if let Some(h) = &s.hint {
                        crate::outln!("{:<16} {h}", "");
                    }
                }
            }
            if !list {
                crate::outln!("{}", super::shared::lock_line(holder.as_ref()));
            }
            Ok(Outcome::Success)
        }
    }
}
