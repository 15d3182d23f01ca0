//! The ledger commands: `status`, `history`, `rollback`, `lock`, `backup`.

use anyhow::Result;
use serde::Serialize;

use crate::cli::{
    BackupCommand, Cli, HistoryArgs, LockCommand, Outcome, RollbackArgs, StatusArgs, open_ledger,
    pipeline_for,
};
use crate::ledger::{self, StepRecord};
use crate::monitor::report::format_ms;
use crate::pipeline::rollback::{self, RollbackRequest};

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
    let (cfg, _target, ledger) = open_ledger(cli, &args.target).await?;
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
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "entities": rows, "lock": holder }))?
        );
        return Ok(Outcome::Success);
    }
    println!(
        "{:<24} {:<14} {:<12} {:>9} {:>9} {:>9}  {:<26} progress",
        "entity", "stage", "state", "read", "written", "rejected", "last run"
    );
    for r in &rows {
        let progress = match r.state.as_str() {
            "interrupted" | "running" | "failed" if r.checkpoint_rows > 0 => {
                format!("checkpoint at {} rows", r.checkpoint_rows)
            }
            "changed" => "mapping changed since applied".to_string(),
            _ => String::new(),
        };
        println!(
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
        Some(h) if !h.expired => println!("lock: held by {h}"),
        Some(h) => println!("lock: expired (last held by {h})"),
        None => println!("lock: free"),
    }
    Ok(Outcome::Success)
}

pub async fn history(cli: &Cli, args: &HistoryArgs) -> Result<Outcome> {
    let (_cfg, _target, ledger) = open_ledger(cli, &args.target).await?;
    let runs = ledger
        .runs_newest_first(args.limit.max(1), args.status.as_deref())
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(Outcome::Success);
    }
    println!(
        "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9}  {:<22} entities",
        "#", "run", "started", "duration", "read", "written", "rejected", "status"
    );
    for r in runs {
        println!(
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
    let (cfg, _target, ledger) = open_ledger(cli, &args.target).await?;
    let pipeline = pipeline_for(&cfg, &args.pipeline)?;
    let req = RollbackRequest {
        names: args.names.clone(),
        steps: args.steps,
        all: args.all,
        cascade: args.cascade,
    };
    let undo = rollback::plan(&pipeline, &ledger, &req).await?;
    if undo.is_empty() {
        println!("nothing to roll back");
        return Ok(Outcome::Success);
    }
    let verb = if args.dry_run {
        "would roll back"
    } else {
        "rolling back"
    };
    for u in &undo {
        println!(
            "{verb} {} (run {}): {}",
            u.step.entity, u.step.run_id, u.action
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
    println!("rolled back {} step(s)", undo.len());
    Ok(Outcome::Success)
}

pub async fn lock(cli: &Cli, cmd: &LockCommand) -> Result<Outcome> {
    match cmd {
        LockCommand::Status(target) => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            match ledger.lock_holder().await? {
                Some(h) if !h.expired => println!("held by {h}"),
                Some(h) => println!("free (expired lock of {h})"),
                None => println!("free"),
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
                Some(h) => println!("released the lock held by {h}"),
                None => println!("the lock was free"),
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
                println!("no backups");
            }
            for b in list {
                println!(
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
            println!("restored {} from {}", b.collection, b.name);
            Ok(Outcome::Success)
        }
        BackupCommand::Drop { name, target } => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            let b = ledger.find_backup(name).await?.ok_or_else(|| {
                anyhow::anyhow!("no backup named {name} (see `cutover backup list`)")
            })?;
            ledger.drop_backup(&b).await?;
            println!("dropped {}", b.name);
            Ok(Outcome::Success)
        }
    }
}
