//! The commands beyond `migrate` and `plan`: `check`, `verify`, `report`, `status`, `history`,
//! `rollback`, `lock`, `backup`; `changes` in [`changes`].

mod changes;
pub use changes::changes;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::{
    BackupCommand, CheckArgs, Cli, HistoryArgs, LockCommand, Outcome, ReportArgs, ReportFormat,
    RollbackArgs, StatusArgs, open_ledger, pipeline_for,
};
use crate::ledger::{self, StepRecord};
use crate::monitor::report::format_ms;
use crate::pipeline::rollback::{self, RollbackRequest};
use crate::sink::target::Target;

/// The configuration, with `--database` applied (for commands that may run without a target).
fn config_for(cli: &Cli, target: &crate::cli::TargetArgs) -> Result<crate::config::Config> {
    let cfg = crate::config::Config::load(
        cli.config.as_deref(),
        &crate::config::ProcessEnv,
        &crate::config::Overrides {
            mongodb_database: target.database.clone(),
            appwrite_database: target.database.clone(),
            ..Default::default()
        },
    )?;
    cfg.register_secrets();
    Ok(cfg)
}

#[derive(Debug, Serialize)]
struct EntityStatus {
    entity: String,
    stage: String,
    collection: String,
    /// applied, pending, failed, interrupted, running, rolled-back, changed
    state: String,
    last_run: Option<String>,
    finished_at: Option<String>,
    read: i64,
    written: i64,
    rejected: i64,
    /// Source rows covered by the checkpoint of an unfinished stage.
    checkpoint_rows: i64,
    total_rows: i64,
    mapping_changed: bool,
}

pub async fn status(cli: &Cli, args: &StatusArgs) -> Result<Outcome> {
    let (cfg, _target, ledger) =
        crate::cli::open_ledger_for(cli, &args.target, Some(&args.pipeline)).await?;
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    let latest = ledger.latest_steps().await?;
    let holder = ledger.lock_holder().await?;
    let live_run = holder
        .as_ref()
        .filter(|h| !h.expired)
        .map(|h| h.run_id.clone());
    let mut rows = Vec::new();
    for step in pipeline.all_steps() {
        let m = pipeline.mappings.get(&step.entity)?;
        let s: Option<&StepRecord> = latest.get(&step.entity);
        let changed = s.is_some_and(|s| s.status == ledger::COMPLETED && s.checksum != m.checksum);
        let state = match s {
            None => "pending".to_string(),
            Some(s) if s.status == ledger::COMPLETED && changed => "changed".into(),
            Some(s) if s.status == ledger::COMPLETED => "applied".into(),
            Some(s)
                if s.status == ledger::RUNNING
                    && live_run.as_deref() == Some(s.run_id.as_str()) =>
            {
                "running".into()
            }
            Some(s) if s.status == ledger::RUNNING => "interrupted".into(),
            Some(s) => s.status.clone(),
        };
        rows.push(EntityStatus {
            entity: step.entity.clone(),
            stage: step.stage.clone(),
            collection: m.collection().to_string(),
            state,
            last_run: s.map(|s| s.run_id.clone()),
            finished_at: s.and_then(|s| s.finished_at.clone()),
            read: s.map(|s| s.read).unwrap_or(0),
            written: s.map(|s| s.written).unwrap_or(0),
            rejected: s.map(|s| s.rejected).unwrap_or(0),
            checkpoint_rows: s.map(|s| s.checkpoint_rows).unwrap_or(0),
            total_rows: s.map(|s| s.total).unwrap_or(0),
            mapping_changed: changed,
        });
    }
    if args.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "entities": rows, "lock": holder }))?
        );
        return Ok(Outcome::Success);
    }
    crate::outln!(
        "{:<24} {:<14} {:<12} {:>9} {:>9} {:>9}  {:<26} progress",
        "entity",
        "stage",
        "state",
        "read",
        "written",
        "rejected",
        "last run"
    );
    for r in &rows {
        let progress = match r.state.as_str() {
            "interrupted" | "running" | "failed" if r.checkpoint_rows > 0 => {
                format!("checkpoint at {} rows", r.checkpoint_rows)
            }
            "changed" => "mapping changed since applied".to_string(),
            _ => String::new(),
        };
        crate::outln!(
            "{:<24} {:<14} {:<12} {:>9} {:>9} {:>9}  {:<26} {}",
            r.entity,
            r.stage,
            r.state,
            r.read,
            r.written,
            r.rejected,
            r.last_run.as_deref().unwrap_or("-"),
            progress
        );
    }
    match holder {
        Some(h) if !h.expired => crate::outln!("lock: held by {h}"),
        Some(h) => crate::outln!("lock: expired (last held by {h})"),
        None => crate::outln!("lock: free"),
    }
    Ok(Outcome::Success)
}

pub async fn history(cli: &Cli, args: &HistoryArgs) -> Result<Outcome> {
    let (_cfg, _target, ledger) = open_ledger(cli, &args.target).await?;
    let runs = ledger
        .runs_newest_first(args.limit.max(1), args.status.as_deref())
        .await?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(Outcome::Success);
    }
    crate::outln!(
        "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9}  {:<22} entities",
        "#",
        "run",
        "started",
        "duration",
        "read",
        "written",
        "rejected",
        "status"
    );
    for r in runs {
        crate::outln!(
            "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9}  {:<22} {}",
            r.run_number,
            r.run_id,
            r.started_at.as_deref().unwrap_or("-"),
            format_ms(r.duration_ms.max(0) as u64),
            r.read,
            r.written,
            r.rejected,
            r.status,
            r.entities.join(",")
        );
    }
    Ok(Outcome::Success)
}

pub async fn rollback(cli: &Cli, args: &RollbackArgs) -> Result<Outcome> {
    let (cfg, _target, ledger) =
        crate::cli::open_ledger_for(cli, &args.target, Some(&args.pipeline)).await?;
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    let req = RollbackRequest {
        names: args.names.clone(),
        steps: args.steps,
        all: args.all,
        cascade: args.cascade,
    };
    let undo = rollback::plan(&pipeline, &ledger, &req).await?;
    if undo.is_empty() {
        crate::outln!("nothing to roll back");
        return Ok(Outcome::Success);
    }
    let verb = if args.dry_run {
        "would roll back"
    } else {
        "rolling back"
    };
    for u in &undo {
        crate::outln!(
            "{verb} {} (run {}): {}",
            u.step.entity,
            u.step.run_id,
            u.action
        );
    }
    if args.dry_run {
        return Ok(Outcome::Success);
    }
    let run_id = crate::pipeline::run::new_run_id();
    let lock = ledger
        .acquire_lock(&run_id, "rollback", ledger::lock::DEFAULT_TTL)
        .await?;
    let result = rollback::execute(&ledger, &undo).await;
    lock.release().await?;
    result?;
    crate::outln!("rolled back {} step(s)", undo.len());
    Ok(Outcome::Success)
}

pub async fn lock(cli: &Cli, cmd: &LockCommand) -> Result<Outcome> {
    match cmd {
        LockCommand::Status(target) => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            match ledger.lock_holder().await? {
                Some(h) if !h.expired => crate::outln!("held by {h}"),
                Some(h) => crate::outln!("free (expired lock of {h})"),
                None => crate::outln!("free"),
            }
            Ok(Outcome::Success)
        }
        LockCommand::Release { target, confirm } => {
            if !confirm {
                anyhow::bail!(
                    "refusing to release the lock without --confirm: if its holder is alive, a second run would start beside it"
                );
            }
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            match ledger.force_release_lock().await? {
                Some(h) => crate::outln!("released the lock held by {h}"),
                None => crate::outln!("the lock was free"),
            }
            Ok(Outcome::Success)
        }
    }
}

pub async fn backup(cli: &Cli, cmd: &BackupCommand) -> Result<Outcome> {
    match cmd {
        BackupCommand::List(target) => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            let list = ledger.list_backups().await?;
            if list.is_empty() {
                crate::outln!("no backups");
            }
            for b in list {
                crate::outln!(
                    "{:<60} {:<24} {:>9} docs  run {}  {}",
                    b.name,
                    b.collection,
                    b.documents,
                    b.run_id,
                    b.created_at.as_deref().unwrap_or("")
                );
            }
            Ok(Outcome::Success)
        }
        BackupCommand::Restore { name, target } => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            let b = ledger.find_backup(name).await?.ok_or_else(|| {
                anyhow::anyhow!("no backup named {name} (see `cutover backup list`)")
            })?;
            let run_id = crate::pipeline::run::new_run_id();
            let lock = ledger
                .acquire_lock(&run_id, "backup restore", ledger::lock::DEFAULT_TTL)
                .await?;
            let r = ledger.restore_backup(&b).await;
            lock.release().await?;
            r?;
            crate::outln!("restored {} from {}", b.collection, b.name);
            Ok(Outcome::Success)
        }
        BackupCommand::Drop { name, target } => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            let b = ledger.find_backup(name).await?.ok_or_else(|| {
                anyhow::anyhow!("no backup named {name} (see `cutover backup list`)")
            })?;
            ledger.drop_backup(&b).await?;
            crate::outln!("dropped {}", b.name);
            Ok(Outcome::Success)
        }
        BackupCommand::Prune(args) => {
            let (_cfg, _t, ledger) = open_ledger(cli, &args.target).await?;
            let req = ledger::retention::PruneRequest {
                keep: args.keep,
                entities: (!args.entity.is_empty()).then(|| args.entity.iter().cloned().collect()),
                protect: Vec::new(),
                dry_run: args.dry_run,
            };
            let verdicts = if args.dry_run {
                ledger::retention::prune(&ledger, &req).await?
            } else {
                let run_id = crate::pipeline::run::new_run_id();
                let lock = ledger
                    .acquire_lock(&run_id, "backup prune", ledger::lock::DEFAULT_TTL)
                    .await?;
                let r = ledger::retention::prune(&ledger, &req).await;
                lock.release().await?;
                r?
            };
            crate::out!("{}", ledger::retention::render(&verdicts, args.dry_run));
            Ok(Outcome::Success)
        }
    }
}

/// Entities above this many source rows are sampled unless --full.
const FULL_VERIFY_MAX_ROWS: u64 = 1_000_000;
const DEFAULT_SAMPLE: u64 = 100_000;

pub async fn verify(cli: &Cli, args: &crate::cli::VerifyArgs) -> Result<Outcome> {
    let (cfg, target, _ledger) =
        crate::cli::open_ledger_for(cli, &args.target, Some(&args.pipeline)).await?;
    let target_kind = target.kind();
    let target_name = target.display_name();
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    let steps = pipeline.select(&args.names)?;
    let source = cfg.require_source()?.to_string();
    let mut session = crate::source::SourceSession::open(&source).await?;
    let plans = crate::pipeline::run::compile_plans(&pipeline, &steps, &mut session).await?;
    let ctx = crate::transform::row::MapContext {
        now_ms: chrono::Utc::now().timestamp_millis(),
        skip_validation: false,
        known_keys: crate::pipeline::run::load_known_keys(&pipeline, &plans, &mut session).await?,
    };
    let collections: std::collections::HashMap<String, String> = pipeline
        .mappings
        .mappings
        .iter()
        .map(|m| (m.name().to_string(), m.collection().to_string()))
        .collect();
    let user_entities: std::collections::HashSet<String> = pipeline
        .mappings
        .mappings
        .iter()
        .filter(|m| m.spec.appwrite.users.is_some())
        .map(|m| m.name().to_string())
        .collect();
    let path = args.output.clone().unwrap_or_else(|| {
        cfg.reports_dir.join(format!(
            "verify-{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ))
    });
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Every problem, one a line, next to the JSON (which holds the first ones of each kind).
    let problems_path = path.with_extension("problems.jsonl");
    let _ = std::fs::remove_file(&problems_path);
    let mut log = crate::verify::ProblemLog::new(problems_path);
    let mut results = Vec::new();
    for p in &plans {
        let rows = session.count(&p.relation).await?;
        let sample = match (args.full, args.sample) {
            (true, _) => None,
            (false, Some(n)) => Some(n),
            (false, None) if rows > FULL_VERIFY_MAX_ROWS => Some(DEFAULT_SAMPLE),
            _ => None,
        };
        let mut independent = None;
        let v = match &target {
            Target::Mongo(m) => {
                let mut v = crate::verify::verify_entity(
                    p,
                    &mut session,
                    m,
                    &ctx,
                    sample,
                    &collections,
                    &mut log,
                )
                .await?;
                // PostgreSQL's own values against the target's, apart from the converter.
                let i = crate::verify::oracle::verify_entity(
                    p,
                    &mut session,
                    m,
                    sample,
                    &collections,
                    &mut log,
                )
                .await?;
                i.apply(&mut v);
                independent = Some(i);
                v
            }
            Target::Appwrite(a) => {
                crate::verify::appwrite::verify_entity(
                    p,
                    &mut session,
                    a,
                    &ctx,
                    sample,
                    &crate::verify::appwrite::References {
                        collections: &collections,
                        user_entities: &user_entities,
                    },
                    &mut log,
                )
                .await?
            }
        };
        if !args.json {
            print_verification(&v);
            for line in independent.iter().flat_map(|i| i.lines()) {
                crate::outln!("{line}");
            }
        }
        let mut entity = serde_json::to_value(&v)?;
        if let Some(i) = independent {
            entity["independent"] = serde_json::to_value(i)?;
        }
        results.push((v.ok, entity));
    }
    session.close().await;
    log.finish()?;
    let problems_file = log.written().map(|p| p.display().to_string());
    let ok = results.iter().all(|(ok, _)| *ok);
    let results: Vec<serde_json::Value> = results.into_iter().map(|(_, e)| e).collect();
    let json = serde_json::json!({
        "verified_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "target": target_name,
        "target_kind": target_kind,
        "pipeline": pipeline.spec.name,
        "ok": ok,
        "problems_file": problems_file,
        "entities": results,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        if let Some(f) = &problems_file {
            crate::outln!("every problem found, one a line: {f}");
        }
        crate::outln!(
            "{} (details: {})",
            if ok {
                "verified: the target matches the source"
            } else {
                "verification FAILED: the target differs from the source"
            },
            path.display()
        );
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::FinishedWithRejects
    })
}

fn print_verification(v: &crate::verify::EntityVerification) {
    use crate::verify::SHOWN;
    let problems = v.missing_count
        + v.unexpected_count
        + v.different_count
        + v.broken_references.len() as u64
        + u64::from(!v.counts_agree);
    crate::outln!(
        "{:<24} {} comparison: {} source rows, {} rejected by the mapping, {} expected, {} in the target, {} compared — {}",
        v.entity,
        v.mode,
        v.source_rows,
        v.rejected_by_mapping,
        v.expected,
        v.target,
        v.compared,
        if v.ok {
            "OK".to_string()
        } else {
            format!("{problems} problem(s)")
        }
    );
    let list = |what: &str, count: u64, items: &[String]| {
        if count == 0 {
            return;
        }
        let shown: Vec<&str> = items.iter().take(SHOWN).map(String::as_str).collect();
        let more = match count.saturating_sub(shown.len() as u64) {
            0 => String::new(),
            n => format!(" … and {n} more"),
        };
        crate::outln!("    {what} ({count}): {}{more}", shown.join(", "));
    };
    list(
        "missing in the target (source key)",
        v.missing_count,
        &v.missing,
    );
    list(
        "unexpected in the target (_id)",
        v.unexpected_count,
        &v.unexpected,
    );
    for d in v.different.iter().take(SHOWN) {
        crate::outln!(
            "    different: {} (fields: {})",
            d.key,
            if d.fields.is_empty() {
                "?".to_string()
            } else {
                d.fields.join(", ")
            }
        );
    }
    let shown = v.different.len().min(SHOWN) as u64;
    if v.different_count > shown {
        crate::outln!(
            "    … and {} more different documents",
            v.different_count - shown
        );
    }
    for e in &v.embedded {
        if e.source_children != e.target_elements {
            crate::outln!(
                "    embedded {}: {} child rows in the source, {} elements in the target",
                e.path,
                e.source_children,
                e.target_elements
            );
        }
    }
    if !v.counts_agree {
        crate::outln!(
            "    counts differ: {} documents expected, {} in the target (documents sharing an _id hide one another)",
            v.expected,
            v.target
        );
    }
    for r in &v.broken_references {
        crate::outln!(
            "    broken references: {} → {}: {} value(s) point nowhere (e.g. {})",
            r.path,
            r.references,
            r.dangling,
            r.examples.join(", ")
        );
    }
}

pub async fn check(cli: &Cli, args: &CheckArgs) -> Result<Outcome> {
    let cfg = config_for(cli, &args.target)?;
    for line in cfg.describe_effective() {
        crate::errln!("{line}");
    }
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    let source = cfg.require_source()?.to_string();
    // The named target (flag, else pipeline); else every configured one.
    let kinds: Vec<Option<crate::cli::TargetKind>> = match args
        .target
        .target
        .or(crate::cli::pipeline_target(&pipeline))
    {
        Some(k) => vec![Some(k)],
        None => {
            let mut all = Vec::new();
            if cfg.mongodb.is_some() {
                all.push(Some(crate::cli::TargetKind::Mongodb));
            }
            if cfg.appwrite.is_some() {
                all.push(Some(crate::cli::TargetKind::Appwrite));
            }
            all
        }
    };
    let mut blocking_targets = Vec::new();
    let mut targets = Vec::new();
    let mut rates = std::collections::BTreeMap::new();
    for kind in kinds {
        match crate::cli::connect_target(&cfg, kind, Default::default()).await {
            Ok((t, ledger, _)) => {
                for s in pipeline.all_steps() {
                    if let Ok(Some(r)) = ledger.last_rate(&s.entity).await {
                        rates.entry(s.entity).or_insert(r);
                    }
                }
                targets.push(t);
            }
            Err(e) => blocking_targets.push(crate::redact::redact_text(&e.to_string())),
        }
    }
    let sample = (!args.full).then_some(args.sample);
    let mut report =
        crate::check::check(&pipeline, &args.names, &source, &targets, sample, &rates).await;
    for e in blocking_targets.into_iter().rev() {
        report.blocking.insert(0, e);
    }
    // Driver errors quote connection details: nothing of a credential goes out.
    for b in &mut report.blocking {
        *b = crate::redact::redact_text(b);
    }
    report.source = crate::redact::redact_text(&report.source);
    report.target = crate::redact::redact_text(&report.target);
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(report.outcome(args.allow_rejects));
    }
    crate::outln!("source: {}", report.source);
    crate::outln!("target: {}", report.target);
    crate::outln!(
        "{:<24} {:>10} {:>9} {:>6} {:>8} {:>12}  estimate basis",
        "entity",
        "rows",
        "scanned",
        "unique",
        "indexed",
        "est. time"
    );
    let yn = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    };
    for e in &report.entities {
        crate::outln!(
            "{:<24} {:>10} {:>9} {:>6} {:>8} {:>12}  {}",
            e.entity,
            e.rows,
            e.scanned,
            yn(e.key_unique),
            yn(e.key_indexed),
            e.estimated_ms.map(format_ms).unwrap_or_else(|| "-".into()),
            e.estimate_basis
        );
    }
    if !report.findings.is_empty() {
        crate::outln!("findings (rows affected within the scanned rows):");
        for f in &report.findings {
            crate::outln!(
                "  {:<24} {:<28} {:<22} {:<8} {:>8}  e.g. {} {}",
                f.entity,
                f.path,
                f.rule,
                f.severity,
                f.rows,
                f.example_key,
                f.example
            );
        }
    }
    let total_estimate: u64 = report.entities.iter().filter_map(|e| e.estimated_ms).sum();
    crate::outln!(
        "estimated duration of the whole run: {}",
        format_ms(total_estimate)
    );
    for b in &report.blocking {
        crate::outln!("BLOCKING: {b}");
    }
    let rejected = report.rejected_rows();
    let verdict = if !report.ok() {
        "check FAILED: fix the blocking problems above".to_string()
    } else if rejected > 0 {
        format!(
            "check: nothing blocks a run, but {rejected} scanned rows will be rejected (findings of severity reject above){}",
            if args.allow_rejects {
                "; accepted (--allow-rejects)"
            } else {
                "; exit 2 — fix them or accept them with --allow-rejects"
            }
        )
    } else {
        "check passed: nothing blocks a run and no scanned row will be rejected".to_string()
    };
    crate::outln!("{verdict}");
    Ok(report.outcome(args.allow_rejects))
}

pub async fn report(cli: &Cli, args: &ReportArgs) -> Result<Outcome> {
    let cfg = config_for(cli, &args.target)?;
    let mut signoff = crate::monitor::signoff::SignOff::load(
        &cfg.reports_dir,
        &cfg.rejects_dir,
        args.run_id.as_deref(),
    )?;
    // The ledger entries of the run, from the target it wrote to, when that is reachable.
    let kind = args.target.target.or_else(|| {
        if signoff.run.target.starts_with("appwrite") {
            Some(crate::cli::TargetKind::Appwrite)
        } else if signoff.run.target.starts_with("mongodb") {
            Some(crate::cli::TargetKind::Mongodb)
        } else {
            None
        }
    });
    if let Ok((_, ledger, _)) = crate::cli::connect_target(&cfg, kind, Default::default()).await
        && let Ok(steps) = ledger.all_steps().await
    {
        signoff.ledger = steps
            .into_iter()
            .filter(|s| s.run_id == signoff.run.run_id)
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect();
    }
    let text = match args.format {
        ReportFormat::Text => signoff.render_text(),
        ReportFormat::Json => serde_json::to_string_pretty(&signoff)? + "\n",
        ReportFormat::Md => signoff.render_markdown(),
        ReportFormat::Html => signoff.render_html(),
    };
    // The report joins files and ledger records written by any version: redact once more.
    let text = crate::redact::redact_text(&text);
    match &args.output {
        Some(path) => {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            crate::errln!("wrote {}", path.display());
        }
        None => crate::out!("{text}"),
    }
    Ok(Outcome::Success)
}
