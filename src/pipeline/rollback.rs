//! Rollback: undo stages in reverse order, restoring each collection to what it held before the
//! stage (emptied when the stage found it empty, else restored from the stage's backup). Undoing
//! several steps of one entity into one destination restores it once: the state before the
//! oldest of them.
//!
//! Every step to undo is marked `rolling-back` before the first destination is touched, and
//! `rolled-back` once its destination is restored: a rollback cut short (kill -9) leaves its
//! steps `rolling-back` — not applied — and the next `cutover rollback` finishes them (a restore
//! replaces the destination's contents, so it may run again).

use std::collections::BTreeSet;

use super::Pipeline;
use super::error::RunError;
use crate::ledger::{self, Ledger, StepRecord};
use crate::sink::target::Destination;

/// What to roll back.
#[derive(Debug, Clone, Default)]
pub struct RollbackRequest {
    /// Stages or entities; empty means the last run.
    pub names: Vec<String>,
    pub steps: Option<usize>,
    pub all: bool,
    pub cascade: bool,
}

/// One step to undo and how.
#[derive(Debug, Clone)]
pub struct Undo {
    pub step: StepRecord,
    pub action: String,
    /// Whether undoing it restores the collection; not when an older step of the same entity
    /// is undone too (its restore puts the collection further back).
    pub restore: bool,
}

/// The steps of the runs killed right before run `last` whose request it finished (a
/// `migrate --rerun` killed several times, then finished by a plain `migrate`, is one command
/// for its operator): of each entity not among `chosen` (the last run's own), its newest step
/// of those runs. The killed runs count as far back as every entity they planned has a
/// completed step from the oldest of them up to `last`; the walk back stops at the first run
/// that ended otherwise (adv38 F1: one rollback undid only the last run's entities, the rest of
/// the re-run stayed applied).
fn finished_by(
    steps: &[StepRecord],
    runs: &[ledger::RunRecord],
    last: i64,
    chosen: &[StepRecord],
) -> Vec<StepRecord> {
    // The killed runs right before `last`, newest first; taken as far back as their requests
    // together are finished (each entity one of them planned completed from the oldest on).
    let mut killed = BTreeSet::new();
    let mut chain = BTreeSet::new();
    let mut planned: BTreeSet<&str> = BTreeSet::new();
    for r in runs.iter().filter(|r| r.run_number < last) {
        if r.status != ledger::INTERRUPTED {
            break;
        }
        chain.insert(r.run_number);
        planned.extend(r.entities.iter().map(String::as_str));
        let finished = planned.iter().all(|e| {
            steps.iter().any(|s| {
                s.entity == *e
                    && s.status == ledger::COMPLETED
                    && (r.run_number..=last).contains(&s.run_number)
            })
        });
        if finished {
            killed = chain.clone();
        }
    }
    let own: BTreeSet<&str> = chosen.iter().map(|s| s.entity.as_str()).collect();
    let mut newest: std::collections::BTreeMap<&str, &StepRecord> = Default::default();
    for s in steps
        .iter()
        .filter(|s| killed.contains(&s.run_number) && !own.contains(s.entity.as_str()))
    {
        if newest
            .get(s.entity.as_str())
            .is_none_or(|n| n.run_number < s.run_number)
        {
            newest.insert(&s.entity, s);
        }
    }
    newest.into_values().cloned().collect()
}

/// Works out which steps to undo, newest first, refusing to strand dependents unless `cascade`.
pub async fn plan(
    pipeline: &Pipeline,
    ledger: &Ledger,
    req: &RollbackRequest,
) -> Result<Vec<Undo>, RunError> {
    let all = ledger.all_steps().await?;
    let recorded: BTreeSet<i64> = all.iter().map(|s| s.run_number).collect();
    let undone = ledger::undone(&all);
    let steps: Vec<StepRecord> = all
        .into_iter()
        .filter(|s| !undone.contains(&s.id))
        .collect();
    // A rollback cut short is finished first, whatever else is asked; alone when nothing is.
    let unfinished: Vec<StepRecord> = steps
        .iter()
        .filter(|s| s.status == ledger::ROLLING_BACK)
        .cloned()
        .collect();
    let asked = req.all || req.steps.is_some() || !req.names.is_empty();
    let mut chosen: Vec<StepRecord> = if !asked && !unfinished.is_empty() {
        Vec::new()
    } else if req.all {
        steps.clone()
    } else if let Some(n) = req.steps {
        steps.iter().rev().take(n).cloned().collect()
    } else if !req.names.is_empty() {
        let wanted: BTreeSet<String> = pipeline
            .select(&req.names)
            .map_err(|e| RunError::Refused(e.to_string()))?
            .into_iter()
            .map(|s| s.entity)
            .collect();
        let mut latest = std::collections::BTreeMap::new();
        for s in &steps {
            if wanted.contains(&s.entity) {
                latest.insert(s.entity.clone(), s.clone());
            }
        }
        latest.into_values().collect()
    } else {
        let last = steps.iter().map(|s| s.run_number).max();
        let runs = ledger.runs_newest_first(i64::MAX, None).await?;
        // The last run cut short before its first step: it changed nothing, and the run before
        // it is not undone unasked (adv45 F3: a --rerun killed during its backup; the rollback
        // emptied the bucket the completed run before it had filled).
        if let Some(r) = runs.first()
            && r.run_number > last.unwrap_or(0)
            && !recorded.contains(&r.run_number)
            && matches!(
                r.status.as_str(),
                ledger::INTERRUPTED | ledger::RUNNING | ledger::FAILED
            )
        {
            return Err(RunError::Refused(format!(
                "the last run, {} ({}), recorded no step: it was cut short before its first stage wrote, and has nothing to roll back. The runs before it are not undone unasked: name the entities (`cutover rollback ENTITY`) or give `--steps N`",
                r.run_id, r.status
            )));
        }
        let mut chosen: Vec<StepRecord> = steps
            .iter()
            .filter(|s| Some(s.run_number) == last)
            .cloned()
            .collect();
        if let Some(last) = last {
            chosen.extend(finished_by(&steps, &runs, last, &chosen));
        }
        chosen
    };
    chosen.extend(unfinished);
    let pulled = storage_chains(&steps, &mut chosen);

    // Entities still applied after this rollback that depend on one being rolled back.
    // A dependent's step is stranded only when it saw data that leaves: a step of the entity it
    // needs from its own run or an earlier one that is rolled back. A step that ran before a
    // re-run of what it needs saw the documents that re-run's backup puts back (adv42 F3: undoing
    // one entity's re-run needed --cascade, which would have emptied every later stage).
    loop {
        let chosen_ids: BTreeSet<&str> = chosen.iter().map(|s| s.id.as_str()).collect();
        let leaving_for = |dependent: &StepRecord| -> BTreeSet<&str> {
            chosen
                .iter()
                .filter(|c| c.was_empty || c.run_number <= dependent.run_number)
                .map(|c| c.entity.as_str())
                .collect()
        };
        let own: BTreeSet<&str> = chosen.iter().map(|s| s.entity.as_str()).collect();
        let mut stranded: Vec<StepRecord> = Vec::new();
        // Each stranded entity with why it needs what leaves (adv32 F4: the stage order was
        // not told apart from references).
        let mut why: std::collections::BTreeMap<String, String> = Default::default();
        for s in &steps {
            if chosen_ids.contains(s.id.as_str()) || own.contains(s.entity.as_str()) {
                continue;
            }
            let leaving = leaving_for(s);
            let step = super::Step {
                stage: pipeline
                    .all_steps()
                    .into_iter()
                    .find(|x| x.entity == s.entity)
                    .map(|x| x.stage)
                    .unwrap_or_default(),
                entity: s.entity.clone(),
            };
            let needs = pipeline.prerequisites(std::slice::from_ref(&step));
            let gone: Vec<&str> = needs
                .iter()
                .map(String::as_str)
                .filter(|n| leaving.contains(n))
                .collect();
            if !gone.is_empty() {
                why.insert(
                    s.entity.clone(),
                    pipeline.why_needed(&step, &gone).join("; "),
                );
                stranded.push(s.clone());
            }
        }
        if stranded.is_empty() {
            break;
        }
        if !req.cascade {
            let named: Vec<String> = why.iter().map(|(e, w)| format!("{e} ({w})")).collect();
            return Err(RunError::Refused(format!(
                "{} depend on what would be rolled back; roll them back too with --cascade",
                named.join(", ")
            )));
        }
        chosen.extend(stranded);
    }

    chosen.sort_by(|a, b| {
        (b.started_at.clone(), b.run_number).cmp(&(a.started_at.clone(), a.run_number))
    });
    let mut seen = BTreeSet::new();
    chosen.retain(|s| seen.insert(s.id.clone()));
    // Newest first: the last step of an entity into a destination in `chosen` is the oldest, the
    // one that restores it. Steps of one entity into different destinations (its mapping's
    // `collection` changed between runs) each put their own destination back.
    let mut oldest = std::collections::BTreeMap::new();
    for s in &chosen {
        oldest.insert(restores(s), s.id.clone());
    }
    // Only a complete backup restores (an incomplete one's copy was cut short).
    let backups: BTreeSet<String> = ledger
        .list_backups()
        .await?
        .into_iter()
        .filter(|b| b.complete)
        .map(|b| b.name)
        .collect();
    let mut out = Vec::new();
    for s in chosen {
        let again = if s.status == ledger::ROLLING_BACK {
            " (finishing an interrupted rollback)"
        } else {
            ""
        };
        if oldest.get(&restores(&s)) != Some(&s.id) {
            let action = format!(
                "nothing to restore: an older step of {} into {} is rolled back too",
                s.entity, s.destination
            );
            out.push(Undo {
                step: s,
                action,
                restore: false,
            });
            continue;
        }
        if s.was_empty && s.destination == Destination::Users {
            refuse_shared_users(ledger, &s.entity).await?;
        }
        let with = match pulled.get(&s.id) {
            Some(later) => format!(
                " — undone with run {later}: a Storage bucket cannot be backed up, so a step into it that found files there can only be undone with the steps before it, back to the one that found it empty"
            ),
            None => String::new(),
        };
        let action = if s.was_empty {
            // A step that resumed another began where that one left off (adv34 F6: "empty
            // before run X" of a run that found the earlier run's files there).
            let mut first = s.resumed_from.clone();
            // Back along the chain of resumes (a resumed step resumed in turn), each step once.
            for _ in 0..steps.len() {
                let earlier = first.as_ref().and_then(|r| {
                    steps
                        .iter()
                        .find(|x| &x.run_id == r && x.entity == s.entity)
                        .and_then(|x| x.resumed_from.clone())
                });
                match earlier {
                    Some(r) if Some(&r) != first.as_ref() => first = Some(r),
                    _ => break,
                }
            }
            let before = match &first {
                Some(first) => format!(
                    "it was empty before run {first}, whose step run {} resumed",
                    s.run_id
                ),
                None => format!("it was empty before run {}", s.run_id),
            };
            format!("empty {} ({before}){again}{with}", s.destination)
        } else if let Some(b) = &s.backup {
            if !backups.contains(b) {
                return Err(RunError::Refused(format!(
                    "{} (run {}) cannot be rolled back: its backup {b} of {} is gone (dropped or pruned); roll back fewer steps, or put an older backup back with `cutover backup restore`",
                    s.entity, s.run_id, s.destination
                )));
            }
            format!("restore {} from backup {b}{again}", s.destination)
        } else if matches!(s.destination, Destination::Storage { .. }) {
            return Err(RunError::Refused(format!(
                "{} (run {}) is not reversible: {} held files before it, and no earlier step of {} found it empty (not every file there is cutover's); a Storage bucket cannot be backed up: remove or migrate again what it wrote yourself",
                s.entity, s.run_id, s.destination, s.entity
            )));
        } else if !s.destination.can_back_up() {
            return Err(RunError::Refused(format!(
                "{} (run {}) is not reversible: {} was not empty before it, and cannot be backed up; remove or migrate again what it wrote yourself",
                s.entity, s.run_id, s.destination
            )));
        } else {
            return Err(RunError::Refused(format!(
                "{} (run {}) is not reversible: {} was not empty and no backup was taken",
                s.entity, s.run_id, s.destination
            )));
        };
        out.push(Undo {
            step: s,
            action,
            restore: true,
        });
    }
    Ok(out)
}

/// Steps into an Appwrite Storage bucket that found files there (a re-run) cannot be undone
/// alone: no backup copies a bucket's files. When the entity's earlier steps into the same
/// bucket go back to one that found it empty, every file there is the entity's own, and undoing
/// them all (emptying the bucket, as before the first) is exact: they are added to `chosen`.
/// Returns the steps added, each with the run of the step that pulled it in. (Without such a
/// step nothing is added, and the plan refuses, saying why.)
fn storage_chains(
    steps: &[StepRecord],
    chosen: &mut Vec<StepRecord>,
) -> std::collections::BTreeMap<String, String> {
    let mut pulled = std::collections::BTreeMap::new();
    let mut added = Vec::new();
    for s in chosen.iter() {
        if s.was_empty
            || s.backup.is_some()
            || !matches!(s.destination, Destination::Storage { .. })
        {
            continue;
        }
        let Some(at) = steps.iter().position(|x| x.id == s.id) else {
            continue;
        };
        // `steps` is oldest first: the entity's steps into the bucket before this one, newest
        // first, up to the one that found it empty.
        let mut chain = Vec::new();
        let mut found = false;
        for x in steps[..at].iter().rev() {
            if x.entity != s.entity || x.destination != s.destination {
                continue;
            }
            chain.push(x.clone());
            if x.was_empty {
                found = true;
                break;
            }
        }
        if !found {
            continue;
        }
        for x in chain {
            if chosen.iter().all(|c| c.id != x.id)
                && added.iter().all(|a: &StepRecord| a.id != x.id)
            {
                pulled.insert(x.id.clone(), s.run_id.clone());
                added.push(x);
            }
        }
    }
    chosen.extend(added);
    pulled
}

/// Emptying Appwrite's users empties the whole project's: refused while another database's
/// ledger records users of its own cutover (a rehearsal rolled back must not take production's
/// accounts with it).
async fn refuse_shared_users(ledger: &Ledger, entity: &str) -> Result<(), RunError> {
    let elsewhere = ledger.users_in_effect_elsewhere().await?;
    if elsewhere.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = elsewhere
        .iter()
        .map(|(db, e)| format!("{e} in database {db}"))
        .collect();
    Err(RunError::Refused(format!(
        "{entity} cannot be rolled back: undoing it deletes every user it imported, and users are the Appwrite project's, shared by its databases — the ledger of {} records users migrated there ({}); roll that back first, or delete these users yourself",
        if elsewhere.len() == 1 {
            "another database"
        } else {
            "other databases"
        },
        named.join(", ")
    )))
}

/// What one restore puts back: an entity's destination.
fn restores(step: &StepRecord) -> (String, String) {
    (step.entity.clone(), step.destination.to_string())
}

/// Carries out `undos` in order: marks every step `rolling-back` first, then restores each
/// entity's collection and marks its steps rolled back, all at once.
pub async fn execute(ledger: &Ledger, undos: &[Undo]) -> Result<(), RunError> {
    for u in undos {
        if u.step.status != ledger::ROLLING_BACK {
            ledger.mark_rolling_back(&u.step.id).await?;
        }
    }
    for u in undos.iter().filter(|u| u.restore) {
        restore_step(
            ledger,
            &u.step.entity,
            &u.step.destination,
            u.step.was_empty,
            u.step.backup.as_deref(),
        )
        .await?;
        for done in undos
            .iter()
            .filter(|d| restores(&d.step) == restores(&u.step))
        {
            ledger.mark_rolled_back(&done.step.id).await?;
        }
    }
    Ok(())
}

/// Puts one step's destination back as it was before the step (`--restore-on-failure`), recorded
/// as a rollback: the step is `rolling-back` while its destination is touched, then
/// `rolled-back`; a restore cut short is finished by `cutover rollback`. Refuses, before any
/// change, when there is nothing to restore from.
pub async fn restore_failed_step(
    ledger: &Ledger,
    step_id: &str,
    entity: &str,
    destination: &crate::sink::target::Destination,
    was_empty: bool,
    backup: Option<&str>,
) -> Result<(), RunError> {
    if was_empty && *destination == Destination::Users {
        refuse_shared_users(ledger, entity).await?;
    }
    if !was_empty {
        let found = match backup {
            Some(name) => ledger.find_backup(name).await?.filter(|b| b.complete),
            None => None,
        };
        if found.is_none() {
            // restore_step says why (no backup, or gone).
            return restore_step(ledger, entity, destination, was_empty, backup).await;
        }
    }
    ledger.mark_rolling_back(step_id).await?;
    restore_step(ledger, entity, destination, was_empty, backup).await?;
    ledger.mark_rolled_back(step_id).await?;
    Ok(())
}

/// Puts a collection back as it was before a step: emptied when the step found it empty,
/// else restored from the step's backup.
pub async fn restore_step(
    ledger: &Ledger,
    entity: &str,
    collection: &Destination,
    was_empty: bool,
    backup: Option<&str>,
) -> Result<(), RunError> {
    if was_empty {
        ledger.empty_destination(collection, entity).await?;
        return Ok(());
    }
    match backup {
        Some(name) => match ledger.find_backup(name).await? {
            Some(b) => Ok(ledger.restore_backup(&b).await?),
            None => Err(RunError::Refused(format!(
                "the backup {name} of {collection} is gone; cannot restore"
            ))),
        },
        None if !collection.can_back_up() => Err(RunError::Refused(format!(
            "{collection} was not empty before the step, and cannot be backed up: cannot restore (remove what the step wrote yourself, or migrate again)"
        ))),
        None => Err(RunError::Refused(format!(
            "{collection} was not empty and no backup was taken (--no-backup); cannot restore"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: i64, entity: &str, status: &str) -> StepRecord {
        StepRecord {
            run_number: run,
            ..StepRecord::for_test(&format!("r{run}"), entity, status)
        }
    }

    fn run(n: i64, entities: &[&str], status: &str) -> ledger::RunRecord {
        ledger::RunRecord::for_test(&format!("r{n}"), n, entities, status)
    }

    /// adv38 F1: a re-run of a, b, c killed twice (a done by run 2, b by run 3) and finished by
    /// run 4 (c): the last run's rollback takes a's and b's steps of the killed runs too, not
    /// run 1's, nor a killed run whose request is not finished.
    #[test]
    fn the_last_runs_rollback_takes_the_steps_of_the_killed_runs_it_finished() {
        let all = ["a", "b", "c"];
        let steps = vec![
            step(1, "a", ledger::COMPLETED),
            step(1, "b", ledger::COMPLETED),
            step(1, "c", ledger::COMPLETED),
            step(2, "a", ledger::COMPLETED),
            step(2, "b", ledger::INTERRUPTED),
            step(3, "b", ledger::COMPLETED),
            step(3, "c", ledger::INTERRUPTED),
            step(4, "c", ledger::COMPLETED),
        ];
        let runs = vec![
            run(4, &all, ledger::COMPLETED),
            run(3, &all, ledger::INTERRUPTED),
            run(2, &all, ledger::INTERRUPTED),
            run(1, &all, ledger::COMPLETED),
        ];
        let last: Vec<StepRecord> = steps
            .iter()
            .filter(|s| s.run_number == 4)
            .cloned()
            .collect();
        let got: Vec<(i64, String)> = finished_by(&steps, &runs, 4, &last)
            .into_iter()
            .map(|s| (s.run_number, s.entity))
            .collect();
        assert_eq!(got, [(2, "a".to_string()), (3, "b".to_string())]);

        // Run 3 asked for d too, which no run finished: the killed runs are not the last's.
        let mut runs = runs;
        runs[1].entities.push("d".into());
        assert!(finished_by(&steps, &runs, 4, &last).is_empty());
    }
}
