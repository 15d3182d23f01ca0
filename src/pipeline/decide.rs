//! What `migrate` runs: for each selected entity, a `Decision` taken from the ledger's history
//! before anything runs (already applied, accept a changed mapping, run from the start, resume
//! from a checkpoint, or a delta since the last completed run). A pure function of the steps,
//! the pipeline, the history and the options.

use super::error::RunError;
use super::options::RunOptions;
use super::{Pipeline, Step};
use crate::ledger;

/// What `migrate` does with one selected entity, decided from the ledger before anything runs.
#[derive(Debug, Clone)]
pub(super) enum Decision {
    /// Completed before with the same mapping: nothing to do (unless --rerun).
    AlreadyApplied,
    /// Completed before with another mapping, and --accept-changed: record the new checksum.
    AcceptChange { step_id: String },
    /// Run it, from the start or from an interrupted step's checkpoint; `since`: only rows
    /// changed since that instant (delta run).
    Run {
        resume: Option<Box<ledger::StepRecord>>,
        since: Option<Since>,
        /// An unfinished step started over (no checkpoint, --fresh): the destination's state
        /// before it (empty, or its backup) is still the state a rollback returns to.
        origin: Option<Box<ledger::StepRecord>>,
        /// Delete the documents whose source rows are gone when it ends: this command's
        /// `--sync-deletes`, or the interrupted run's it finishes.
        sync_deletes: bool,
        /// The interrupted run whose intent it carries out, when that is not this command's:
        /// `run … (--rerun --sync-deletes)`, for the report.
        finishing: Option<String>,
    },
}

/// Where a delta run starts: the rows whose change column is at or after `at`; and, when the
/// snapshot it continues from had transactions open whose start the role could not see, the
/// rows written by transactions from `xid` on (their times may be earlier than `at`: adv44 F1);
/// and the rows the step it continues rejected (their rejects files are in `rejects`): a row
/// refused for another row's sake (a reference, a unique key) may pass now (adv44 F2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub at: String,
    pub xid: Option<i64>,
    pub rejects: Option<String>,
}

/// The runs cut short (killed, or lost their lock), as the ledger records them: what each was
/// asked to do (its intent) and for which entities. A plain `migrate`, or the same command
/// again, finishes for each entity what the newest of them that planned it still owes.
#[derive(Debug, Default)]
pub(super) struct Interrupted {
    pub runs: Vec<ledger::RunRecord>,
}

impl Interrupted {
    fn run(&self, run_id: &str) -> Option<&ledger::RunRecord> {
        self.runs.iter().find(|r| r.run_id == run_id)
    }

    /// The interrupted run whose re-run or delta of `entity` is still owed: the newest that
    /// planned it and asked more than a plain run, unless a step of the entity completed since
    /// that run began (it was done, by that run or another) or was rolled back (the operator
    /// undid it). Found by this session's review: only the newest run was looked at, so a
    /// narrower run in between dropped the others' (D); a rolled-back step was run again (F).
    pub fn owed(&self, entity: &str, history: &[ledger::StepRecord]) -> Option<&ledger::RunRecord> {
        let run = self
            .runs
            .iter()
            .filter(|r| !r.intent.is_plain() && r.entities.iter().any(|e| e == entity))
            .max_by_key(|r| r.run_number)?;
        let settled = history.iter().any(|s| {
            s.entity == entity
                && s.run_number >= run.run_number
                && matches!(
                    s.status.as_str(),
                    ledger::COMPLETED | ledger::ROLLED_BACK | ledger::ROLLING_BACK
                )
        });
        (!settled).then_some(run)
    }
}

pub(super) fn decide(
    steps: &[Step],
    pipeline: &Pipeline,
    history: &[ledger::StepRecord],
    opts: &RunOptions,
    interrupted: &Interrupted,
) -> Result<Vec<(Step, Decision)>, RunError> {
    if opts.sync_deletes && !opts.since_last && !opts.rerun {
        return Err(RunError::Refused(
            "--sync-deletes goes with --since-last (the catch-up) or --rerun".into(),
        ));
    }
    // The step each entity's data is in: after a rolled-back re-run, the run before it.
    let latest = ledger::current_steps(history);
    let mut completed = std::collections::BTreeMap::new();
    for s in history {
        if s.status == ledger::COMPLETED {
            completed.insert(s.entity.clone(), s.clone());
        }
    }
    let asked = opts.intent();
    let mut out = Vec::new();
    let mut changed = Vec::new();
    let mut rolling_back = Vec::new();
    for s in steps {
        let m = pipeline.mappings.get(&s.entity)?;
        // An entity an interrupted run planned and did not finish is run as that run was asked
        // to run it (a plain `migrate` after a killed `--rerun --sync-deletes` finishes the
        // re-run of every entity it did not reach), when this command is plain or the same.
        let owed = interrupted
            .owed(&s.entity, history)
            .filter(|r| asked.is_plain() || r.intent == asked);
        let intent = owed.map_or(asked, |r| r.intent);
        let finishing = owed.filter(|r| r.intent != asked).map(|r| {
            let flags: Vec<&str> = [
                (r.intent.rerun, "--rerun"),
                (r.intent.since_last, "--since-last"),
                (r.intent.sync_deletes, "--sync-deletes"),
            ]
            .into_iter()
            .filter_map(|(on, flag)| on.then_some(flag))
            .collect();
            format!("run {} ({})", r.run_id, flags.join(" "))
        });
        // One an interrupted run completed is not run again (its step is adopted into this
        // run's report) by a plain command, or by the command that run was (not by another:
        // this session's review, E).
        let done_by_interrupted = |prev: &ledger::StepRecord| {
            prev.reported_by.is_none()
                && interrupted
                    .run(&prev.run_id)
                    .is_some_and(|r| asked.is_plain() || r.intent == asked)
        };
        if let Some(prev) = latest.get(&s.entity)
            && prev.status == ledger::ROLLING_BACK
        {
            rolling_back.push(format!("{} (run {})", s.entity, prev.run_id));
            continue;
        }
        let last_completed = completed.get(&s.entity);
        // A stage without a change-tracking column cannot know its delta: it is copied in full.
        let since = match (intent.since_last, last_completed) {
            // A child changed alone leaves its parent's column as it was: a mapping that embeds
            // children is copied in full. So is a files stage: a file rewritten on disk leaves
            // its row as it was (adv45 F5); the files whose bytes the target holds already are
            // not uploaded again.
            (true, Some(done))
                if m.spec.source.updated_at.is_some()
                    && m.spec.embeds.is_empty()
                    && m.spec.file.is_none() =>
            {
                done.snapshot_at.clone().map(|at| Since {
                    at,
                    xid: done.snapshot_xid,
                    rejects: done.rejects_dir.clone(),
                })
            }
            _ => None,
        };
        let full_recopy = intent.since_last && last_completed.is_some() && since.is_none();
        let run = |resume: Option<&ledger::StepRecord>,
                   since: Option<Since>,
                   origin: Option<&ledger::StepRecord>| {
            let interrupted_sync = resume.or(origin).is_some_and(|r| r.sync_deletes);
            Decision::Run {
                resume: resume.map(|r| Box::new(r.clone())),
                since,
                origin: origin.map(|r| Box::new(r.clone())),
                sync_deletes: intent.sync_deletes || interrupted_sync,
                finishing: finishing.clone(),
            }
        };
        let d = match latest.get(&s.entity) {
            None => run(None, None, None),
            Some(prev)
                if prev.status == ledger::COMPLETED
                    && prev.checksum == m.checksum
                    && done_by_interrupted(prev) =>
            {
                Decision::AlreadyApplied
            }
            Some(prev)
                if prev.status == ledger::COMPLETED
                    && since.is_some()
                    && prev.checksum == m.checksum =>
            {
                run(None, since.clone(), None)
            }
            Some(prev) if prev.status == ledger::COMPLETED => {
                if intent.rerun || full_recopy {
                    run(None, None, None)
                } else if prev.checksum == m.checksum {
                    Decision::AlreadyApplied
                } else if opts.accept_changed {
                    Decision::AcceptChange {
                        step_id: prev.id.clone(),
                    }
                } else {
                    changed.push(format!("{} (completed in run {})", s.entity, prev.run_id));
                    continue;
                }
            }
            Some(prev)
                if ledger::unfinished(&prev.status)
                    && prev.checkpoint_key.is_some()
                    && prev.checksum == m.checksum
                    && !opts.fresh =>
            {
                let since = prev.since.clone().map(|at| Since {
                    at,
                    xid: prev.since_xid,
                    rejects: prev.since_rejects.clone(),
                });
                run(Some(prev), since, None)
            }
            Some(prev) => {
                // adv38 F10: a checkpoint taken with another mapping is not resumed from; say so
                // rather than start over silently.
                if ledger::unfinished(&prev.status)
                    && prev.checkpoint_key.is_some()
                    && prev.checksum != m.checksum
                    && !opts.fresh
                {
                    tracing::warn!(
                        entity = %s.entity,
                        run = %prev.run_id,
                        "its mapping changed since that run was interrupted: the stage starts over (its checkpoint was taken with the other mapping)"
                    );
                }
                run(None, None, ledger::unfinished(&prev.status).then_some(prev))
            }
        };
        out.push((s.clone(), d));
    }
    if !rolling_back.is_empty() {
        return Err(RunError::Refused(format!(
            "the rollback of {} did not finish: its data is partly restored; finish it with `cutover rollback` (it restores again from the start)",
            rolling_back.join(", ")
        )));
    }
    if !changed.is_empty() {
        return Err(RunError::Refused(format!(
            "the mapping of {} changed after its stage completed; re-run it with --rerun, or keep the migrated data and accept the new mapping with --accept-changed",
            changed.join(", ")
        )));
    }
    Ok(out)
}

/// Refuses to run an entity whose data in the target another pipeline wrote with another
/// mapping: two applications sharing one target database by mistake (a forgotten `--database`),
/// each with an entity `customers` (adv36 F5: the refusal said the mapping changed and advised
/// `--rerun`, which mixed the second application's rows into the first one's collection).
/// `--accept-changed` takes the entity over knowingly (a pipeline renamed, its mapping edited).
pub(super) fn another_pipelines_entities(
    pipeline: &Pipeline,
    steps: &[Step],
    history: &[ledger::StepRecord],
    runs: &[ledger::RunRecord],
    opts: &RunOptions,
) -> Result<(), RunError> {
    if opts.accept_changed {
        return Ok(());
    }
    let current = ledger::current_steps(history);
    let mut theirs = Vec::new();
    for step in steps {
        let (Some(prev), Ok(m)) = (
            current.get(&step.entity),
            pipeline.mappings.get(&step.entity),
        ) else {
            continue;
        };
        let Some(run) = runs.iter().find(|r| r.run_id == prev.run_id) else {
            continue;
        };
        if prev.checksum != m.checksum
            && !run.pipeline.is_empty()
            && run.pipeline != pipeline.spec.name
        {
            theirs.push(format!(
                "{} (written by pipeline `{}`, run {}, with another mapping)",
                step.entity, run.pipeline, run.run_id
            ));
        }
    }
    if theirs.is_empty() {
        return Ok(());
    }
    Err(RunError::Refused(format!(
        "this target database holds {} of another pipeline than `{}`: two applications in one database mix their data (and a --rerun would write this one's rows into theirs). Give this pipeline a database of its own (--database, or the target's database in the config); if it is the same application under a new pipeline name, --accept-changed takes the data over as it is",
        theirs.join(", "),
        pipeline.spec.name
    )))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::ledger::StepRecord;
    use crate::mapping::MappingSet;

    /// A pipeline of one stage: `a` (no change column) and `d` (a `source.updated_at`).
    fn pipeline() -> Pipeline {
        let mapping = |name: &str, extra: &str| {
            crate::mapping::parse(
                Path::new(&format!("{name}.toml")),
                &format!(
                    "version = 1\nname = \"{name}\"\n[source]\ntable = \"{name}\"\nkey = [\"id\"]\n{extra}[[field]]\npath = \"x\"\ncolumn = \"x\"\n"
                ),
            )
            .unwrap()
        };
        let set = MappingSet::from_mappings(vec![
            mapping("a", ""),
            mapping("d", "updated_at = \"changed_at\"\n"),
        ])
        .unwrap();
        let spec = toml::from_str(
            "version = 1\nname = \"p\"\n[[stage]]\nname = \"one\"\nentities = [\"a\", \"d\"]\n",
        )
        .unwrap();
        Pipeline::new(Path::new("p.toml"), spec, set).unwrap()
    }

    fn opts() -> RunOptions {
        RunOptions {
            dry_run: false,
            batch_size: 1000,
            batch_bytes: 1 << 20,
            concurrency: 2,
            file_concurrency: 2,
            continue_on_error: false,
            recheck_files: false,
            skip_validation: false,
            max_rejects: None,
            ignore_dependencies: false,
            report_path: None,
            reports_dir: PathBuf::from("reports"),
            rejects_dir: PathBuf::from("rejects"),
            quiet: true,
            retry: Default::default(),
            target_name: "mongodb".into(),
            rerun: false,
            accept_changed: false,
            fresh: false,
            since_last: false,
            sync_deletes: false,
            no_backup: false,
            restore_on_failure: false,
            lock_ttl: std::time::Duration::from_secs(30),
            files_root: None,
        }
    }

    fn checksum(p: &Pipeline, entity: &str) -> String {
        p.mappings.get(entity).unwrap().checksum.clone()
    }

    /// A step of `entity` in `run`, with the mapping's current checksum.
    fn step(p: &Pipeline, run: &str, entity: &str, status: &str) -> StepRecord {
        StepRecord {
            checksum: checksum(p, entity),
            snapshot_at: Some("2024-01-01T00:00:00.000000Z".into()),
            run_number: run[1..].parse().unwrap_or(0),
            ..StepRecord::for_test(run, entity, status)
        }
    }

    fn steps(entities: &[&str]) -> Vec<Step> {
        entities
            .iter()
            .map(|e| Step {
                stage: "one".into(),
                entity: e.to_string(),
            })
            .collect()
    }

    /// The one decision for `entity`.
    fn one(
        p: &Pipeline,
        entity: &str,
        history: &[StepRecord],
        opts: &RunOptions,
    ) -> Result<Decision, RunError> {
        let mut out = decide(&steps(&[entity]), p, history, opts, &Interrupted::default())?;
        assert_eq!(out.len(), 1);
        let (s, d) = out.remove(0);
        assert_eq!(s.entity, entity);
        Ok(d)
    }

    fn refusal(r: Result<Decision, RunError>) -> String {
        match r {
            Err(RunError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_fresh_entity_runs_from_the_start() {
        let p = pipeline();
        let d = one(&p, "a", &[], &opts()).unwrap();
        assert!(
            matches!(
                d,
                Decision::Run {
                    resume: None,
                    since: None,
                    origin: None,
                    ..
                }
            ),
            "{d:?}"
        );
        // Another entity's history says nothing about this one.
        let d = one(&p, "a", &[step(&p, "r1", "d", ledger::COMPLETED)], &opts()).unwrap();
        assert!(matches!(d, Decision::Run { resume: None, .. }), "{d:?}");
    }

    #[test]
    fn a_completed_entity_with_the_same_mapping_is_already_applied() {
        let p = pipeline();
        let history = [step(&p, "r1", "a", ledger::COMPLETED)];
        let d = one(&p, "a", &history, &opts()).unwrap();
        assert!(matches!(d, Decision::AlreadyApplied), "{d:?}");
    }

    #[test]
    fn rerun_runs_a_completed_entity_again_in_full() {
        let p = pipeline();
        let history = [step(&p, "r1", "a", ledger::COMPLETED)];
        let o = RunOptions {
            rerun: true,
            ..opts()
        };
        let d = one(&p, "a", &history, &o).unwrap();
        assert!(
            matches!(
                d,
                Decision::Run {
                    resume: None,
                    since: None,
                    origin: None,
                    ..
                }
            ),
            "{d:?}"
        );
        // Also with a changed mapping: --rerun is the way to apply it.
        let mut changed = step(&p, "r1", "a", ledger::COMPLETED);
        changed.checksum = "older".into();
        let d = one(&p, "a", &[changed], &o).unwrap();
        assert!(matches!(d, Decision::Run { resume: None, .. }), "{d:?}");
    }

    #[test]
    fn a_changed_mapping_is_refused_unless_accepted() {
        let p = pipeline();
        let mut prev = step(&p, "r1", "a", ledger::COMPLETED);
        prev.checksum = "older".into();
        let history = [prev];
        let why = refusal(one(&p, "a", &history, &opts()));
        assert!(
            why.contains("the mapping of a (completed in run r1) changed"),
            "{why}"
        );
        assert!(why.contains("--accept-changed"), "{why}");
        let o = RunOptions {
            accept_changed: true,
            ..opts()
        };
        match one(&p, "a", &history, &o).unwrap() {
            Decision::AcceptChange { step_id } => assert_eq!(step_id, "r1:a"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn an_unfinished_step_with_a_checkpoint_is_resumed_as_it_was_started() {
        let p = pipeline();
        for status in [ledger::RUNNING, ledger::FAILED, ledger::INTERRUPTED] {
            let mut prev = step(&p, "r2", "d", status);
            prev.checkpoint_key = Some(vec!["41".into()]);
            prev.checkpoint_rows = 41;
            prev.since = Some("2024-01-01T00:00:00.000000Z".into());
            prev.sync_deletes = true;
            let history = [step(&p, "r1", "d", ledger::COMPLETED), prev];
            // Whatever this command's flags: the resumed part keeps its `since` and its
            // --sync-deletes (recorded in the step resumed).
            match one(&p, "d", &history, &opts()).unwrap() {
                Decision::Run {
                    resume: Some(r),
                    since,
                    origin: None,
                    ..
                } => {
                    assert_eq!(r.id, "r2:d");
                    assert_eq!(r.checkpoint_key.as_deref(), Some(&["41".to_string()][..]));
                    assert!(r.sync_deletes, "{status}");
                    assert_eq!(
                        since.map(|s| s.at).as_deref(),
                        Some("2024-01-01T00:00:00.000000Z")
                    );
                }
                d => panic!("{status}: {d:?}"),
            }
        }
    }

    #[test]
    fn an_unfinished_step_without_a_checkpoint_or_with_fresh_starts_over_from_its_origin() {
        let p = pipeline();
        let prev = step(&p, "r2", "a", ledger::INTERRUPTED);
        let check = |history: &[StepRecord], o: &RunOptions| match one(&p, "a", history, o).unwrap()
        {
            Decision::Run {
                resume: None,
                since: None,
                origin: Some(origin),
                ..
            } => assert_eq!(origin.id, "r2:a"),
            d => panic!("{d:?}"),
        };
        // No checkpoint.
        check(std::slice::from_ref(&prev), &opts());
        // A checkpoint, but --fresh.
        let mut with_checkpoint = prev.clone();
        with_checkpoint.checkpoint_key = Some(vec!["7".into()]);
        let fresh = RunOptions {
            fresh: true,
            ..opts()
        };
        check(std::slice::from_ref(&with_checkpoint), &fresh);
        // A checkpoint of another mapping is not resumed either.
        with_checkpoint.checksum = "older".into();
        check(&[with_checkpoint], &opts());
    }

    #[test]
    fn a_rolled_back_step_is_no_origin() {
        let p = pipeline();
        let history = [step(&p, "r1", "a", ledger::ROLLED_BACK)];
        let d = one(&p, "a", &history, &opts()).unwrap();
        assert!(
            matches!(
                d,
                Decision::Run {
                    resume: None,
                    since: None,
                    origin: None,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn sync_deletes_goes_with_since_last_or_rerun() {
        let p = pipeline();
        let o = RunOptions {
            sync_deletes: true,
            ..opts()
        };
        let why = refusal(one(&p, "a", &[], &o));
        assert_eq!(
            why,
            "--sync-deletes goes with --since-last (the catch-up) or --rerun"
        );
        for o in [
            RunOptions {
                since_last: true,
                ..o.clone()
            },
            RunOptions {
                rerun: true,
                ..o.clone()
            },
        ] {
            assert!(one(&p, "a", &[], &o).is_ok());
        }
    }

    #[test]
    fn since_last_copies_the_delta_of_an_entity_with_a_change_column() {
        let p = pipeline();
        let o = RunOptions {
            since_last: true,
            ..opts()
        };
        let done = step(&p, "r1", "d", ledger::COMPLETED);
        match one(&p, "d", std::slice::from_ref(&done), &o).unwrap() {
            Decision::Run {
                resume: None,
                since,
                origin: None,
                ..
            } => assert_eq!(since.map(|s| s.at), done.snapshot_at),
            d => panic!("{d:?}"),
        }
        // Without a change column: copied in full (not "already applied").
        let done = step(&p, "r1", "a", ledger::COMPLETED);
        let d = one(&p, "a", &[done], &o).unwrap();
        assert!(
            matches!(
                d,
                Decision::Run {
                    resume: None,
                    since: None,
                    origin: None,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn a_rollback_cut_short_is_refused() {
        let p = pipeline();
        let history = [step(&p, "r1", "a", ledger::ROLLING_BACK)];
        let why = refusal(one(&p, "a", &history, &opts()));
        assert!(
            why.contains("the rollback of a (run r1) did not finish"),
            "{why}"
        );
    }

    /// A run record of `entities`, interrupted, asked for `intent`.
    fn killed_run(id: &str, entities: &[&str], intent: ledger::RunIntent) -> Interrupted {
        Interrupted {
            runs: vec![run_record(id, entities, intent)],
        }
    }

    /// A run record: `rN` is run number N.
    fn run_record(id: &str, entities: &[&str], intent: ledger::RunIntent) -> ledger::RunRecord {
        ledger::RunRecord {
            intent,
            ..ledger::RunRecord::for_test(
                id,
                id[1..].parse().unwrap(),
                entities,
                ledger::INTERRUPTED,
            )
        }
    }

    /// Found by the fourteenth tester (U3, U4): `migrate --rerun --sync-deletes` of a stage of
    /// two entities killed while re-running the first. A plain `migrate` finished the first and
    /// called the second "already applied" (its older run completed it): its re-run and its
    /// deletions never happened, and the run ended `completed`. It carries on the killed run's
    /// intent for every entity that run planned; an entity the killed run completed is adopted,
    /// not run again — by a plain `migrate` or by the same command re-issued.
    #[test]
    fn a_killed_rerun_is_finished_as_it_was_asked_by_a_plain_migrate_or_the_same_command() {
        let p = pipeline();
        let rerun_sync = ledger::RunIntent {
            rerun: true,
            since_last: false,
            sync_deletes: true,
        };
        let killed = killed_run("r2", &["a", "d"], rerun_sync);
        let history = vec![
            step(&p, "r1", "a", ledger::COMPLETED),
            step(&p, "r1", "d", ledger::COMPLETED),
            step(&p, "r2", "a", ledger::COMPLETED),
        ];
        let same = RunOptions {
            rerun: true,
            sync_deletes: true,
            ..opts()
        };
        for asked in [opts(), same.clone()] {
            let out = decide(&steps(&["a", "d"]), &p, &history, &asked, &killed).unwrap();
            assert!(
                matches!(out[0].1, Decision::AlreadyApplied),
                "a, completed by the killed run: {:?}",
                out[0].1
            );
            assert!(
                matches!(
                    out[1].1,
                    Decision::Run {
                        resume: None,
                        since: None,
                        sync_deletes: true,
                        ..
                    }
                ),
                "d, not reached: {:?}",
                out[1].1
            );
            // The report says whose intent a plain command carried out.
            let Decision::Run { finishing, .. } = &out[1].1 else {
                unreachable!()
            };
            assert_eq!(
                finishing.as_deref(),
                asked
                    .intent()
                    .is_plain()
                    .then_some("run r2 (--rerun --sync-deletes)")
            );
        }
        // Another command is that command: a --since-last re-runs nothing in full.
        let other = RunOptions {
            since_last: true,
            ..opts()
        };
        let out = decide(&steps(&["d"]), &p, &history, &other, &killed).unwrap();
        assert!(
            matches!(
                out[0].1,
                Decision::Run {
                    since: Some(_),
                    sync_deletes: false,
                    ..
                }
            ),
            "{:?}",
            out[0].1
        );
        // An entity the killed run did not plan is this command's.
        let only_a = killed_run("r2", &["a"], rerun_sync);
        let out = decide(&steps(&["d"]), &p, &history, &opts(), &only_a).unwrap();
        assert!(
            matches!(out[0].1, Decision::AlreadyApplied),
            "{:?}",
            out[0].1
        );
        // A run that ended is nothing to finish.
        let out = decide(
            &steps(&["d"]),
            &p,
            &history,
            &opts(),
            &Interrupted::default(),
        )
        .unwrap();
        assert!(
            matches!(out[0].1, Decision::AlreadyApplied),
            "{:?}",
            out[0].1
        );
    }

    /// A killed `--since-last --sync-deletes` that wrote its run record and no step: the plain
    /// `migrate` after it runs every planned entity as a delta (or in full, without a change
    /// column), deleting what the source lost.
    #[test]
    fn a_delta_killed_before_its_first_step_is_run_whole_by_the_next_plain_migrate() {
        let p = pipeline();
        let intent = ledger::RunIntent {
            rerun: false,
            since_last: true,
            sync_deletes: true,
        };
        let killed = killed_run("r2", &["a", "d"], intent);
        let history = vec![
            step(&p, "r1", "a", ledger::COMPLETED),
            step(&p, "r1", "d", ledger::COMPLETED),
        ];
        let out = decide(&steps(&["a", "d"]), &p, &history, &opts(), &killed).unwrap();
        assert!(
            matches!(
                out[0].1,
                Decision::Run {
                    since: None,
                    sync_deletes: true,
                    ..
                }
            ),
            "a has no change column: copied in full: {:?}",
            out[0].1
        );
        assert!(
            matches!(
                out[1].1,
                Decision::Run {
                    since: Some(_),
                    sync_deletes: true,
                    ..
                }
            ),
            "{:?}",
            out[1].1
        );
    }

    fn rerun_sync() -> ledger::RunIntent {
        ledger::RunIntent {
            rerun: true,
            since_last: false,
            sync_deletes: true,
        }
    }

    /// Found by this session's review (D): r2 `--rerun --sync-deletes` of [a, d] killed; r3 a
    /// narrower `migrate a` (completed, or killed too); then a plain `migrate`: d's re-run and
    /// deletions were dropped (only the newest run was looked at).
    #[test]
    fn a_narrower_run_in_between_does_not_drop_what_a_killed_run_owes() {
        let p = pipeline();
        let r2 = run_record("r2", &["a", "d"], rerun_sync());
        for r3_status in [ledger::COMPLETED, ledger::INTERRUPTED] {
            let history = vec![
                step(&p, "r1", "a", ledger::COMPLETED),
                step(&p, "r1", "d", ledger::COMPLETED),
                StepRecord {
                    reported_by: Some("r3".into()),
                    ..step(&p, "r3", "a", r3_status)
                },
            ];
            let mut runs = vec![r2.clone()];
            if r3_status == ledger::INTERRUPTED {
                runs.push(run_record("r3", &["a"], ledger::RunIntent::default()));
            }
            let out = decide(
                &steps(&["a", "d"]),
                &p,
                &history,
                &opts(),
                &Interrupted { runs },
            )
            .unwrap();
            assert!(
                matches!(
                    out[1].1,
                    Decision::Run {
                        since: None,
                        sync_deletes: true,
                        ..
                    }
                ),
                "r3 {r3_status}: d: {:?}",
                out[1].1
            );
        }
    }

    /// Found by this session's review (E): an older killed `--since-last` completed a; a
    /// killed `--rerun --sync-deletes d`; then `--rerun --sync-deletes`: a's delta was adopted
    /// as if it were the re-run asked for.
    #[test]
    fn a_step_of_a_killed_run_asked_otherwise_is_not_adopted_for_this_command() {
        let p = pipeline();
        let history = vec![
            step(&p, "r1", "a", ledger::COMPLETED),
            step(&p, "r1", "d", ledger::COMPLETED),
            step(&p, "r2", "a", ledger::COMPLETED),
        ];
        let delta = ledger::RunIntent {
            since_last: true,
            ..Default::default()
        };
        let runs = vec![
            run_record("r2", &["a"], delta),
            run_record("r3", &["d"], rerun_sync()),
        ];
        let asked = RunOptions {
            rerun: true,
            sync_deletes: true,
            ..opts()
        };
        let out = decide(
            &steps(&["a", "d"]),
            &p,
            &history,
            &asked,
            &Interrupted { runs },
        )
        .unwrap();
        assert!(
            matches!(
                out[0].1,
                Decision::Run {
                    since: None,
                    sync_deletes: true,
                    ..
                }
            ),
            "{:?}",
            out[0].1
        );
    }

    /// Found by this session's review (F): a step of the killed run the operator rolled back
    /// (abandoning it) was re-run, with its deletions, by the next plain `migrate`.
    #[test]
    fn a_rolled_back_step_of_a_killed_run_is_not_run_again() {
        let p = pipeline();
        let history = vec![
            step(&p, "r1", "a", ledger::COMPLETED),
            step(&p, "r1", "d", ledger::COMPLETED),
            step(&p, "r2", "a", ledger::ROLLED_BACK),
        ];
        let k = killed_run("r2", &["a", "d"], rerun_sync());
        let out = decide(&steps(&["a", "d"]), &p, &history, &opts(), &k).unwrap();
        assert!(
            matches!(out[0].1, Decision::AlreadyApplied),
            "{:?}",
            out[0].1
        );
        assert!(
            matches!(
                out[1].1,
                Decision::Run {
                    sync_deletes: true,
                    ..
                }
            ),
            "{:?}",
            out[1].1
        );
    }

    /// adv36 F5: an entity another pipeline wrote with another mapping is refused, naming that
    /// pipeline; the same pipeline's changed mapping, the same mapping under another pipeline,
    /// an older ledger's run without a pipeline name and --accept-changed are not.
    #[test]
    fn an_entity_another_pipeline_wrote_with_another_mapping_is_refused() {
        let p = pipeline();
        let theirs = |pipeline: &str, checksum: &str| {
            let mut run = run_record("r1", &["a"], ledger::RunIntent::default());
            run.pipeline = pipeline.into();
            run.status = ledger::COMPLETED.into();
            let mut s = step(&p, "r1", "a", ledger::COMPLETED);
            if !checksum.is_empty() {
                s.checksum = checksum.into();
            }
            (vec![s], vec![run])
        };
        let judge = |(history, runs): (Vec<StepRecord>, Vec<ledger::RunRecord>), o: &RunOptions| {
            another_pipelines_entities(&p, &steps(&["a", "d"]), &history, &runs, o)
        };
        match judge(theirs("billing", "other"), &opts()) {
            Err(RunError::Refused(why)) => {
                assert!(
                    why.contains("a (written by pipeline `billing`, run r1"),
                    "{why}"
                );
                assert!(why.contains("--accept-changed"), "{why}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(judge(theirs("p", "other"), &opts()).is_ok(), "own pipeline");
        assert!(
            judge(theirs("billing", ""), &opts()).is_ok(),
            "same mapping"
        );
        assert!(judge(theirs("", "other"), &opts()).is_ok(), "older ledger");
        let accept = RunOptions {
            accept_changed: true,
            ..opts()
        };
        assert!(judge(theirs("billing", "other"), &accept).is_ok());
    }
}
