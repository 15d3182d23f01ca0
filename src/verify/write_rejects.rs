//! The rows the target refused when they were written (write-stage rejects), as verify excuses
//! them: a row the server refused in the run is recorded in that run's rejects file
//! (`<rejects_dir>/<run-id>/<entity>.csv`, stage `write`) and is as absent from the target as a
//! row the mapping rejects — so verify does not call it missing.
//!
//! The source of truth is the rejects files of the steps whose writes make up what the target
//! holds of the entity now: the entity's latest step in the ledger (undone steps aside), and
//! the steps it continues — the one it resumed (`resumed_from`) and, for a delta step, the one
//! before it. Only exactly the keys recorded there are excused, and only when they are missing: a
//! count would let a different missing row hide behind a refused one, and a refused key whose row
//! is in the target after all is compared like any other.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::ledger::{self, Ledger, StepRecord};
use crate::pipeline::run::RunError;
use crate::transform::Stage;

/// The source keys (as text) the target refused, and the runs whose rejects files say so.
#[derive(Debug, Clone, Default)]
pub struct WriteRejects {
    keys: HashSet<String>,
    /// The rule each key was refused under (the last recorded).
    rules: std::collections::HashMap<String, String>,
    /// The fingerprint of the document each key's refusal was about (the last recorded), when
    /// the run recorded one.
    fingerprints: std::collections::HashMap<String, String>,
    /// Run ids consulted, newest first.
    pub runs: Vec<String>,
}

impl WriteRejects {
    /// No write rejects (no run recorded).
    pub fn none() -> WriteRejects {
        WriteRejects::default()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Whether the refusal of `key` was about a document other than `bytes` (the source changed
    /// since: its absence is no longer excused). Unknown (no fingerprint recorded): not stale.
    pub fn stale_for(&self, key: &str, bytes: &[u8]) -> bool {
        self.fingerprints
            .get(key)
            .is_some_and(|f| *f != crate::monitor::rejects::document_fingerprint(bytes))
    }

    /// The rule `key` was refused under.
    pub fn rule(&self, key: &str) -> Option<&str> {
        self.rules.get(key).map(String::as_str)
    }

    /// These rejects but `stale` (rows whose refusal no longer holds).
    pub fn without(&self, stale: &HashSet<String>) -> WriteRejects {
        WriteRejects {
            keys: self.keys.difference(stale).cloned().collect(),
            rules: self
                .rules
                .iter()
                .filter(|(k, _)| !stale.contains(*k))
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect(),
            fingerprints: self
                .fingerprints
                .iter()
                .filter(|(k, _)| !stale.contains(*k))
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect(),
            runs: self.runs.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The steps of `entity` whose writes make up what the target holds now, newest first: the latest
/// step not undone (see [`ledger::undone`]), then each step it continues (the run it resumed, or for a delta
/// step the step before it). `steps` oldest first, as [`Ledger::all_steps`] gives them.
pub fn steps_behind<'s>(steps: &'s [StepRecord], entity: &str) -> Vec<&'s StepRecord> {
    // Undone steps aside: those rolled back and the unfinished ones a rolled-back step continued.
    let undone = ledger::undone(steps);
    let mine: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| s.entity == entity && !undone.contains(&s.id))
        .collect();
    let mut out = Vec::new();
    let mut at = mine.len().checked_sub(1);
    while let Some(i) = at {
        let step = mine[i];
        out.push(step);
        at = match (&step.resumed_from, &step.since) {
            (Some(run), _) => mine[..i].iter().rposition(|s| &s.run_id == run),
            (None, Some(_)) => i.checked_sub(1),
            (None, None) => None,
        };
    }
    out
}

/// The write-stage rejects of `entity` in the rejects files of `runs`, each a run id and the
/// directory of its files. A run without a rejects file for the entity had none.
pub fn read(runs: &[(&str, PathBuf)], entity: &str) -> Result<WriteRejects, RunError> {
    let mut found = WriteRejects::none();
    for (run, dir) in runs {
        found.runs.push((*run).to_string());
        each_reject(dir, entity, |r| {
            if r.stage != Stage::Write.as_str() && r.stage != Stage::File.as_str() {
                return;
            }
            let key = r.key.to_string();
            if let Some(rule) = r.rule {
                found.rules.insert(key.clone(), rule.to_string());
            }
            match r.value {
                Some(f) if f.starts_with("sha256:") => {
                    found.fingerprints.insert(key.clone(), f.to_string());
                }
                _ => {
                    found.fingerprints.remove(&key);
                }
            }
            found.keys.insert(key);
        })?;
    }
    Ok(found)
}

/// One line of a rejects file, as [`each_reject`] passes it.
struct RejectLine<'a> {
    key: &'a str,
    stage: &'a str,
    rule: Option<&'a str>,
    value: Option<&'a str>,
}

/// Calls `f` on each reject of `entity` in the rejects file of `entity` under `dir` (none when
/// the file is missing, or empty: made by a run killed before its first record was flushed).
fn each_reject(
    dir: &Path,
    entity: &str,
    mut f: impl FnMut(RejectLine<'_>),
) -> Result<(), RunError> {
    let path = dir.join(format!("{entity}.csv"));
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(cause) => return Err(RunError::Io { path, cause }),
    };
    let io = |path: &PathBuf, e: csv::Error| RunError::Io {
        path: path.clone(),
        cause: std::io::Error::other(e),
    };
    let mut csv = csv::Reader::from_reader(file);
    let headers = csv.headers().map_err(|e| io(&path, e))?.clone();
    if headers.is_empty() {
        return Ok(());
    }
    let column = |name: &str| headers.iter().position(|h| h == name);
    let (r_at, v_at) = (column("rule"), column("value"));
    let (Some(e_at), Some(k_at), Some(s_at)) =
        (column("entity"), column("source_key"), column("stage"))
    else {
        return Err(RunError::Io {
            path,
            cause: std::io::Error::other(
                "not a rejects file (no entity, source_key and stage columns)",
            ),
        });
    };
    for record in csv.records() {
        let record = record.map_err(|e| io(&path, e))?;
        if record.get(e_at) == Some(entity) {
            f(RejectLine {
                key: record.get(k_at).unwrap_or_default(),
                stage: record.get(s_at).unwrap_or_default(),
                rule: r_at.and_then(|i| record.get(i)),
                value: v_at.and_then(|i| record.get(i)),
            });
        }
    }
    Ok(())
}

/// The source keys (as text) of every row of `entity` the steps current at run number `run`
/// rejected, whatever the stage (the mapping's, the target's): what the target did not hold of
/// the entity when that run was the latest to write it. A referencing entity that ran then wrote
/// its references to those rows with a warning.
pub async fn rejected_as_of(
    ledger: &Ledger,
    rejects_dir: &Path,
    entity: &str,
    run: i64,
) -> Result<HashSet<String>, RunError> {
    let steps: Vec<StepRecord> = ledger
        .all_steps()
        .await?
        .into_iter()
        .filter(|s| s.run_number <= run)
        .collect();
    let mut keys = HashSet::new();
    for s in steps_behind(&steps, entity) {
        each_reject(&files_of(s, rejects_dir), entity, |r| {
            keys.insert(r.key.to_string());
        })?;
    }
    Ok(keys)
}

/// The write rejects of `entity` that verify excuses, from the ledger's steps and the rejects
/// files under `rejects_dir`.
pub async fn load(
    ledger: &Ledger,
    rejects_dir: &Path,
    entity: &str,
) -> Result<WriteRejects, RunError> {
    let steps = ledger.all_steps().await?;
    let runs: Vec<(&str, PathBuf)> = steps_behind(&steps, entity)
        .iter()
        .map(|s| (s.run_id.as_str(), files_of(s, rejects_dir)))
        .collect();
    read(&runs, entity)
}

/// Where a step's run recorded its rejects files: as the ledger says, else under `rejects_dir`
/// (older ledgers).
fn files_of(step: &StepRecord, rejects_dir: &Path) -> PathBuf {
    step.rejects_dir
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_else(|| rejects_dir.join(&step.run_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(run: &str, entity: &str, status: &str) -> StepRecord {
        StepRecord::for_test(run, entity, status)
    }

    fn runs(steps: &[StepRecord], entity: &str) -> Vec<String> {
        steps_behind(steps, entity)
            .iter()
            .map(|s| s.run_id.clone())
            .collect()
    }

    #[test]
    fn the_latest_step_and_the_steps_it_continues() {
        let mut resumed = step("r3", "a", ledger::COMPLETED);
        resumed.resumed_from = Some("r1".into());
        let mut delta = step("r5", "a", ledger::COMPLETED);
        delta.since = Some("2026-01-01T00:00:00Z".into());
        let steps = vec![
            step("r0", "a", ledger::COMPLETED),
            step("r1", "a", ledger::INTERRUPTED),
            step("r2", "b", ledger::COMPLETED),
            resumed,
            step("r4", "a", ledger::ROLLED_BACK),
            delta,
        ];
        // The delta continues r3 (r4 was rolled back), which resumed r1; r0 is a run before.
        assert_eq!(runs(&steps, "a"), ["r5", "r3", "r1"]);
        assert_eq!(runs(&steps, "b"), ["r2"]);
        assert!(runs(&steps, "c").is_empty());
        assert_eq!(runs(&steps[..1], "a"), ["r0"]);
    }

    #[test]
    fn only_write_stage_rejects_of_the_entity_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let w = crate::monitor::rejects::RejectsWriter::new(&dir.path().join("r1"));
        let issue = |stage| {
            crate::transform::Issue::error(stage, "rule", "", "m".to_string(), String::new())
        };
        w.reject("a", "1", &[issue(Stage::Write)]).unwrap();
        w.reject("a", "2", &[issue(Stage::Validate)]).unwrap();
        w.reject("a", "3, with a comma", &[issue(Stage::Write)])
            .unwrap();
        w.reject("b", "4", &[issue(Stage::Write)]).unwrap();
        w.flush().unwrap();
        let got = read(
            &[("r1", dir.path().join("r1")), ("r0", dir.path().join("r0"))],
            "a",
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.contains("1") && got.contains("3, with a comma"));
        assert!(!got.contains("2") && !got.contains("4"));
        assert_eq!(got.runs, ["r1", "r0"]);
    }

    #[test]
    fn an_empty_rejects_file_left_by_a_killed_run_holds_no_rejects() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("r1")).unwrap();
        std::fs::write(dir.path().join("r1/a.csv"), "").unwrap();
        let got = read(&[("r1", dir.path().join("r1"))], "a").unwrap();
        assert_eq!(got.len(), 0);
        // A file that is not a rejects file is still refused.
        std::fs::write(dir.path().join("r1/a.csv"), "x,y\n1,2\n").unwrap();
        assert!(read(&[("r1", dir.path().join("r1"))], "a").is_err());
    }
}
