//! Backup retention: which backups `cutover backup prune` (and `[backups] keep` after a run) drops.
//! [`decide`] is a pure function of the backup records and the steps; [`prune`] carries it out.
//!
//! A backup `cutover rollback` may still restore is never dropped, however many are kept:
//! - the backup of each entity's latest step that is not rolled back: what `rollback` (the last
//!   run) and `rollback ENTITY` restore;
//! - the backup of each entity's earliest step into each destination that is not rolled back:
//!   what `rollback --all` puts back, the collection as it was before cutover first wrote into it
//!   (an entity whose mapping's `collection` changed between runs has two).
//!
//! Steps in between need their backups only to be rolled back one by one beyond the latest; the
//! rollback plan refuses, before it changes anything, a step whose backup is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{BackupRecord, Ledger, LedgerError, StepRecord};
use crate::sink::target::Destination;

/// Why a backup stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// `cutover rollback` of this entity restores it.
    Rollback(String),
    /// `cutover rollback --all` restores it for this entity.
    RollbackAll(String),
    /// The run that prunes after itself took it.
    ThisRun,
    /// One of the newest `keep` of its collection.
    Newest(usize),
}

/// What a prune does with one backup.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub backup: BackupRecord,
    /// `None`: dropped (or, in a dry run, would be).
    pub keep: Option<Keep>,
}

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneRequest {
    /// Backups kept per collection, newest first, besides those rollback needs.
    pub keep: usize,
    /// Only the backups of these entities (default: all).
    pub entities: Option<BTreeSet<String>>,
    /// Backups never dropped (those the run that prunes after itself took).
    pub protect: Vec<String>,
    pub dry_run: bool,
}

/// The backups a rollback may restore, with the entity and the kind of rollback that needs each.
/// `steps` oldest first (as [`Ledger::all_steps`] returns them).
pub fn needed_by_rollback(steps: &[StepRecord]) -> BTreeMap<String, Keep> {
    // `rollback --all` puts each destination of an entity back from its own oldest step (a
    // mapping whose `collection` changed between runs wrote two).
    let mut earliest: BTreeMap<(&str, String), &StepRecord> = BTreeMap::new();
    let mut latest: BTreeMap<&str, &StepRecord> = BTreeMap::new();
    let undone = super::undone(steps);
    for s in steps.iter().filter(|s| !undone.contains(&s.id)) {
        earliest
            .entry((&s.entity, s.destination.to_string()))
            .or_insert(s);
        latest.insert(&s.entity, s);
    }
    let mut needed = BTreeMap::new();
    for ((entity, _), s) in earliest {
        if let Some(b) = &s.backup {
            needed.insert(b.clone(), Keep::RollbackAll(entity.to_string()));
        }
    }
    // The latest step's reason wins: it is the rollback a user runs first.
    for (entity, s) in latest {
        if let Some(b) = &s.backup {
            needed.insert(b.clone(), Keep::Rollback(entity.to_string()));
        }
    }
    needed
}

/// Decides, for each backup in scope, whether it stays and why. `backups` newest first (as
/// [`Ledger::list_backups`] returns them); the verdicts come in the same order.
pub fn decide(backups: &[BackupRecord], steps: &[StepRecord], req: &PruneRequest) -> Vec<Verdict> {
    let needed = needed_by_rollback(steps);
    let mut seen: BTreeMap<(&str, &Destination), usize> = BTreeMap::new();
    let mut out = Vec::new();
    for b in backups {
        if req
            .entities
            .as_ref()
            .is_some_and(|e| !e.contains(&b.entity))
        {
            continue;
        }
        // A backup whose copy was cut short holds nothing to restore: always dropped.
        if !b.complete {
            out.push(Verdict {
                backup: b.clone(),
                keep: None,
            });
            continue;
        }
        let rank = seen.entry((&b.entity, &b.destination)).or_insert(0);
        *rank += 1;
        let keep = if let Some(k) = needed.get(&b.name) {
            Some(k.clone())
        } else if req.protect.contains(&b.name) {
            Some(Keep::ThisRun)
        } else if *rank <= req.keep {
            Some(Keep::Newest(req.keep))
        } else {
            None
        };
        out.push(Verdict {
            backup: b.clone(),
            keep,
        });
    }
    out
}

/// Drops the backups [`decide`] lets go (data and record), unless a dry run. The caller holds the
/// lock: no run may take or need a backup meanwhile.
pub async fn prune(ledger: &Ledger, req: &PruneRequest) -> Result<Vec<Verdict>, LedgerError> {
    let backups = ledger.list_backups().await?;
    let steps = ledger.all_steps().await?;
    let verdicts = decide(&backups, &steps, req);
    if !req.dry_run {
        for v in verdicts.iter().filter(|v| v.keep.is_none()) {
            ledger.drop_backup(&v.backup).await?;
            tracing::info!(backup = %v.backup.name, collection = %v.backup.destination, "dropped backup");
        }
    }
    Ok(verdicts)
}

/// One line per backup and a summary, for the commands to print.
pub fn render(verdicts: &[Verdict], dry_run: bool) -> String {
    let mut s = String::new();
    if verdicts.is_empty() {
        s.push_str("no backups to prune\n");
        return s;
    }
    let mut dropped = 0;
    for v in verdicts {
        let b = &v.backup;
        let what = if b.complete {
            format!(
                "{} ({}, {} docs, run {})",
                b.name, b.destination, b.documents, b.run_id
            )
        } else {
            format!(
                "{} ({}, incomplete: run {} ended before its copy was done)",
                b.name, b.destination, b.run_id
            )
        };
        let _ = match &v.keep {
            None => {
                dropped += 1;
                let verb = if dry_run { "would drop" } else { "dropped" };
                writeln!(s, "{verb} {what}")
            }
            Some(Keep::Rollback(e)) => writeln!(s, "kept: {what} needed by rollback of {e}"),
            Some(Keep::RollbackAll(e)) => {
                writeln!(s, "kept: {what} needed by rollback --all of {e}")
            }
            Some(Keep::ThisRun) => writeln!(s, "kept: {what} taken by this run"),
            Some(Keep::Newest(n)) => writeln!(s, "kept: {what} one of the newest {n}"),
        };
    }
    let kept = verdicts.len() - dropped;
    let _ = if dry_run {
        writeln!(s, "would drop {dropped} backup(s), keep {kept}")
    } else {
        writeln!(s, "dropped {dropped} backup(s), kept {kept}")
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{FAILED, INTERRUPTED, ROLLED_BACK};

    fn backup(name: &str, entity: &str, run: &str) -> BackupRecord {
        BackupRecord {
            name: name.into(),
            destination: Destination::Collection {
                name: entity.into(),
            },
            copy: Destination::Collection { name: name.into() },
            run_id: run.into(),
            entity: entity.into(),
            documents: 3,
            created_at: None,
            complete: true,
        }
    }

    fn step(run: &str, entity: &str, status: &str, backup: Option<&str>) -> StepRecord {
        StepRecord {
            was_empty: backup.is_none(),
            backup: backup.map(str::to_string),
            ..StepRecord::for_test(run, entity, status)
        }
    }

    fn dropped(v: &[Verdict]) -> Vec<&str> {
        v.iter()
            .filter(|v| v.keep.is_none())
            .map(|v| v.backup.name.as_str())
            .collect()
    }

    /// r1 found `kinds` empty; r2, r3 and r4 re-ran it, each backing it up first.
    fn three_reruns() -> (Vec<BackupRecord>, Vec<StepRecord>) {
        let backups = vec![
            backup("b4", "kinds", "r4"),
            backup("b3", "kinds", "r3"),
            backup("b2", "kinds", "r2"),
        ];
        let steps = vec![
            step("r1", "kinds", "completed", None),
            step("r2", "kinds", "completed", Some("b2")),
            step("r3", "kinds", "completed", Some("b3")),
            step("r4", "kinds", "completed", Some("b4")),
        ];
        (backups, steps)
    }

    #[test]
    fn the_newest_are_kept_and_the_rest_dropped() {
        let (backups, steps) = three_reruns();
        let req = PruneRequest {
            keep: 1,
            ..Default::default()
        };
        let v = decide(&backups, &steps, &req);
        assert_eq!(dropped(&v), ["b3", "b2"]);
        assert_eq!(v[0].keep, Some(Keep::Rollback("kinds".into())));
        let req = PruneRequest {
            keep: 2,
            ..Default::default()
        };
        assert_eq!(dropped(&decide(&backups, &steps, &req)), ["b2"]);
    }

    #[test]
    fn the_backup_of_the_latest_step_not_rolled_back_is_never_dropped() {
        let (backups, mut steps) = three_reruns();
        steps[3].status = ROLLED_BACK.into();
        let req = PruneRequest {
            keep: 1,
            ..Default::default()
        };
        let v = decide(&backups, &steps, &req);
        assert_eq!(dropped(&v), ["b2"]);
        assert_eq!(v[0].keep, Some(Keep::Newest(1)));
        assert_eq!(v[1].keep, Some(Keep::Rollback("kinds".into())));
        // Even keeping none.
        let req = PruneRequest {
            keep: 0,
            ..Default::default()
        };
        assert_eq!(dropped(&decide(&backups, &steps, &req)), ["b4", "b2"]);
    }

    #[test]
    fn the_state_before_the_first_step_stays_for_rollback_all() {
        // The collection held data before cutover's first run: r2's backup is that data.
        let (backups, mut steps) = three_reruns();
        steps.remove(0);
        let req = PruneRequest::default();
        let v = decide(&backups, &steps, &req);
        assert_eq!(dropped(&v), ["b3"]);
        assert_eq!(v[2].keep, Some(Keep::RollbackAll("kinds".into())));
    }

    #[test]
    fn a_resumed_step_protects_the_backup_it_inherited() {
        let (backups, mut steps) = three_reruns();
        // r4 was interrupted and never backed up again: r5 continued it with r4's backup.
        steps.push(step("r5", "kinds", "completed", Some("b4")));
        let req = PruneRequest::default();
        let v = decide(&backups, &steps, &req);
        assert_eq!(dropped(&v), ["b3", "b2"]);
    }

    #[test]
    fn only_the_named_entities_and_never_what_the_run_took() {
        let (mut backups, mut steps) = three_reruns();
        backups.insert(0, backup("e2", "events", "r4"));
        backups.push(backup("e1", "events", "r2"));
        steps.push(step("r9", "events", "completed", None));
        let req = PruneRequest {
            keep: 0,
            entities: Some(BTreeSet::from(["events".to_string()])),
            protect: vec!["e2".into()],
            dry_run: false,
        };
        let v = decide(&backups, &steps, &req);
        assert_eq!(v.len(), 2);
        assert_eq!(dropped(&v), ["e1"]);
        assert_eq!(v[0].keep, Some(Keep::ThisRun));
    }

    #[test]
    fn an_incomplete_backup_is_always_dropped_and_never_counted_among_the_newest() {
        let (mut backups, steps) = three_reruns();
        // r5 was killed while copying: its backup record says in progress.
        let mut cut = backup("b5", "kinds", "r5");
        cut.complete = false;
        backups.insert(0, cut);
        let req = PruneRequest {
            keep: 2,
            ..Default::default()
        };
        let v = decide(&backups, &steps, &req);
        assert_eq!(dropped(&v), ["b5", "b2"]);
        assert!(render(&v, true).contains("would drop b5 (kinds, incomplete: run r5"));
    }

    #[test]
    fn a_rerun_restored_on_failure_leaves_the_run_before_it_current() {
        // r1 applied kinds; r2 re-ran it and was killed; r3 resumed r2 and failed, restored.
        let (_, mut steps) = three_reruns();
        steps.truncate(2);
        steps[1].status = INTERRUPTED.into();
        let mut r3 = step("r3", "kinds", ROLLED_BACK, Some("b2"));
        r3.resumed_from = Some("r2".into());
        steps.push(r3);
        let undone = crate::ledger::undone(&steps);
        assert_eq!(undone.len(), 2, "{undone:?}");
        let current = crate::ledger::current_steps(&steps);
        assert_eq!(current["kinds"].run_id, "r1");
        // b2 (the state r1 left) is needed by nobody: rolling kinds back now undoes r1.
        assert!(needed_by_rollback(&steps).is_empty());
        // A failed step the next one did not continue (it took a backup of its own) stays.
        steps[2].backup = Some("b3".into());
        steps[1].status = FAILED.into();
        let current = crate::ledger::current_steps(&steps);
        assert_eq!(current["kinds"].run_id, "r2");
        // Every step undone: the latest is current (rolled back).
        for s in &mut steps {
            s.status = ROLLED_BACK.into();
        }
        assert_eq!(crate::ledger::current_steps(&steps)["kinds"].run_id, "r3");
    }

    #[test]
    fn the_output_says_why_a_backup_stays() {
        let (backups, steps) = three_reruns();
        let req = PruneRequest {
            keep: 1,
            ..Default::default()
        };
        let text = render(&decide(&backups, &steps, &req), true);
        assert!(
            text.contains("kept: b4 (kinds, 3 docs, run r4) needed by rollback of kinds"),
            "{text}"
        );
        assert!(text.contains("would drop b3 (kinds"), "{text}");
        assert!(text.ends_with("would drop 2 backup(s), keep 1\n"), "{text}");
    }

    /// Found by the twelfth tester (S3): r1 wrote `kinds` (empty before); the mapping moved to
    /// `kinds2`, which held the application's documents: r2 backed them up (b2), r3 re-ran (b3).
    /// `rollback --all` restores `kinds2` from b2: it stays whatever `keep` says.
    #[test]
    fn each_destination_keeps_the_backup_of_its_oldest_step() {
        let (mut backups, mut steps) = three_reruns();
        backups.remove(0);
        steps.pop();
        for b in &mut backups {
            b.destination = Destination::Collection {
                name: "kinds2".into(),
            };
        }
        for s in &mut steps[1..] {
            s.destination = Destination::Collection {
                name: "kinds2".into(),
            };
        }
        let req = PruneRequest::default();
        let v = decide(&backups, &steps, &req);
        assert!(dropped(&v).is_empty(), "{:?}", dropped(&v));
        assert_eq!(v[1].keep, Some(Keep::RollbackAll("kinds".into())));
    }
}
