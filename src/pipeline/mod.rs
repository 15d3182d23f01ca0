//! Pipelines (`pipelines/*.toml`): ordered stages of entities with dependencies. This module parses
//! and checks them and works out what a `migrate`/`plan` selection runs, in which order.

mod adopt;
mod checkpoint;
mod decide;
mod deferred;
mod entity;
pub mod error;
pub mod expected;
pub(crate) mod kept;
mod options;
mod read;
mod removal;
pub mod rollback;
pub mod run;
pub mod spill;
mod stage;
pub mod sync_deletes;
mod transient;
mod write;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::TargetKind;
use crate::mapping::{MappingError, MappingSet};

pub const PIPELINE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot read pipeline {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("`{0}` is neither a stage nor an entity of the pipeline")]
    UnknownName(String),
    #[error(transparent)]
    Mapping(#[from] MappingError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Directory of the mapping files, relative to the pipeline file (default: the config's).
    pub mappings_dir: Option<PathBuf>,
    /// The target this pipeline writes to unless `--target` says otherwise (default: the
    /// config's `target.default`).
    pub target: Option<TargetKind>,
    /// Directory of the change files (`cutover changes`), relative to the pipeline file
    /// (default: `pipelines/changes`).
    pub changes_dir: Option<PathBuf>,
    #[serde(rename = "stage")]
    pub stages: Vec<StageSpec>,
}

/// The `changes_dir` of the pipeline file at `path`, resolved against the file's directory;
/// `None` when the file does not exist or names none.
pub fn changes_dir_of(path: &Path) -> Result<Option<PathBuf>, PipelineError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(PipelineError::Read {
                path: path.to_path_buf(),
                cause,
            });
        }
    };
    let spec: PipelineFile = toml::from_str(&text).map_err(|e| PipelineError::Parse {
        path: path.to_path_buf(),
        message: crate::redact::clip_lines(&e.to_string(), crate::redact::QUOTED_LINE_MAX),
    })?;
    Ok(spec
        .changes_dir
        .map(|d| normalize(&path.parent().unwrap_or(Path::new(".")).join(d))))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Entities (mapping names) migrated by this stage, in order.
    pub entities: Vec<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// Removes `.` and `name/..` pairs without touching the file system (for readable paths).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// A checked pipeline with its mappings.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub spec: PipelineFile,
    pub mappings: MappingSet,
}

/// One entity to run, with the stage it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub stage: String,
    pub entity: String,
}

impl Pipeline {
    /// Loads the pipeline file and its mappings (`mappings_dir` from the file, else `default_mappings`).
    pub fn load(path: &Path, default_mappings: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|cause| PipelineError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let spec: PipelineFile = toml::from_str(&text).map_err(|e| PipelineError::Parse {
            path: path.to_path_buf(),
            message: crate::redact::clip_lines(&e.to_string(), crate::redact::QUOTED_LINE_MAX),
        })?;
        let dir = match &spec.mappings_dir {
            Some(d) => normalize(&path.parent().unwrap_or(Path::new(".")).join(d)),
            None => default_mappings.to_path_buf(),
        };
        let mappings = MappingSet::load_dir(&dir)?;
        Pipeline::new(path, spec, mappings)
    }

    pub fn new(
        path: &Path,
        spec: PipelineFile,
        mappings: MappingSet,
    ) -> Result<Pipeline, PipelineError> {
        let p = Pipeline {
            path: path.to_path_buf(),
            spec,
            mappings,
        };
        p.check()?;
        Ok(p)
    }

    fn invalid(&self, key: &str, message: String) -> PipelineError {
        PipelineError::Invalid {
            path: self.path.clone(),
            key: key.to_string(),
            message,
        }
    }

    fn check(&self) -> Result<(), PipelineError> {
        if self.spec.version != PIPELINE_VERSION {
            return Err(self.invalid(
                "version",
                format!("unsupported version {}", self.spec.version),
            ));
        }
        let mut stages_seen: Vec<&str> = Vec::new();
        let mut entities_seen: BTreeSet<&str> = BTreeSet::new();
        for (i, s) in self.spec.stages.iter().enumerate() {
            let key = format!("stage[{i}] ({})", s.name);
            if stages_seen.contains(&s.name.as_str()) {
                return Err(self.invalid(&key, "stage name used twice".into()));
            }
            for d in &s.depends_on {
                if !self.spec.stages.iter().any(|x| &x.name == d) {
                    return Err(self.invalid(&key, format!("depends on unknown stage `{d}`")));
                }
                if !stages_seen.contains(&d.as_str()) {
                    return Err(self.invalid(
                        &key,
                        format!("depends on `{d}`, which does not come before it (a cycle or a wrong order)"),
                    ));
                }
            }
            // An empty stage would make a run of nothing "completed" and a verify of nothing
            // pass (the twentieth session's adv24 F2).
            if s.entities.is_empty() {
                return Err(self.invalid(&key, "names no entity (`entities = []`)".into()));
            }
            for e in &s.entities {
                let m = self
                    .mappings
                    .get(e)
                    .map_err(|_| self.invalid(&key, format!("no mapping named `{e}`")))?;
                if !entities_seen.insert(e.as_str()) {
                    return Err(self.invalid(&key, format!("entity `{e}` appears in two stages")));
                }
                for r in m.references() {
                    if !entities_seen.contains(r.as_str()) {
                        return Err(self.invalid(
                            &key,
                            format!("`{e}` references `{r}`, which must be migrated in an earlier position"),
                        ));
                    }
                }
            }
            stages_seen.push(&s.name);
        }
        Ok(())
    }

    /// Every entity in run order.
    pub fn all_steps(&self) -> Vec<Step> {
        self.spec
            .stages
            .iter()
            .flat_map(|s| {
                s.entities.iter().map(|e| Step {
                    stage: s.name.clone(),
                    entity: e.clone(),
                })
            })
            .collect()
    }

    /// The steps named by `names` (stage or entity names), in pipeline order; all when empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<Step>, PipelineError> {
        let all = self.all_steps();
        if names.is_empty() {
            return Ok(all);
        }
        // A name is an entity, or else a stage; `stage:NAME` is the stage whatever else NAME is
        // (`migrate users` runs the users entity alone even in a stage called users).
        let mut wanted = BTreeSet::new();
        for n in names {
            let picked: Vec<&Step> = match n.strip_prefix("stage:") {
                Some(stage) => all.iter().filter(|s| s.stage == stage).collect(),
                None if all.iter().any(|s| &s.entity == n) => {
                    all.iter().filter(|s| &s.entity == n).collect()
                }
                None => all.iter().filter(|s| &s.stage == n).collect(),
            };
            if picked.is_empty() {
                return Err(PipelineError::UnknownName(n.clone()));
            }
            wanted.extend(picked.into_iter().map(|s| s.entity.clone()));
        }
        Ok(all
            .into_iter()
            .filter(|s| wanted.contains(&s.entity))
            .collect())
    }

    /// Entities that `steps` need migrated first and that `steps` do not include themselves:
    /// every entity of each dependency stage (transitively) and every referenced entity.
    /// Why `step` needs each of `entities` first, a phrase each (adv32 F4: the stage order was
    /// worded as the entity's own dependencies): "it references employees", "its stage `s3`
    /// comes after stage `s2` (artists, genres)".
    pub fn why_needed(&self, step: &Step, entities: &[&str]) -> Vec<String> {
        let refs: BTreeSet<String> = self
            .mappings
            .get(&step.entity)
            .map(|m| m.references().into_iter().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        let referenced: Vec<&str> = entities
            .iter()
            .copied()
            .filter(|e| refs.contains(*e))
            .collect();
        if !referenced.is_empty() {
            out.push(format!("it references {}", referenced.join(", ")));
        }
        let rest: Vec<&str> = entities
            .iter()
            .copied()
            .filter(|e| !refs.contains(*e))
            .collect();
        if !rest.is_empty() {
            // The stages holding them, as the pipeline orders them.
            let mut stages: Vec<String> = Vec::new();
            for st in &self.spec.stages {
                let held: Vec<&str> = rest
                    .iter()
                    .copied()
                    .filter(|e| st.entities.iter().any(|x| x == e))
                    .collect();
                if !held.is_empty() {
                    stages.push(format!("`{}` ({})", st.name, held.join(", ")));
                }
            }
            out.push(format!(
                "its stage `{}` comes after stage{} {} in the pipeline (`depends_on`)",
                step.stage,
                if stages.len() == 1 { "" } else { "s" },
                stages.join(", ")
            ));
        }
        out
    }

    /// The pipeline's other entities whose mappings reference `entity`.
    pub fn referrers(&self, entity: &str) -> Vec<String> {
        self.all_steps()
            .into_iter()
            .filter(|s| s.entity != entity)
            .filter(|s| {
                self.mappings
                    .get(&s.entity)
                    .is_ok_and(|m| m.references().contains(entity))
            })
            .map(|s| s.entity)
            .collect()
    }

    pub fn prerequisites(&self, steps: &[Step]) -> BTreeSet<String> {
        let selected: BTreeSet<&str> = steps.iter().map(|s| s.entity.as_str()).collect();
        let mut stage_queue: Vec<String> = steps.iter().map(|s| s.stage.clone()).collect();
        let mut stages_done = BTreeSet::new();
        let mut needed = BTreeSet::new();
        while let Some(stage) = stage_queue.pop() {
            if !stages_done.insert(stage.clone()) {
                continue;
            }
            if let Some(s) = self.spec.stages.iter().find(|s| s.name == stage) {
                for d in &s.depends_on {
                    if let Some(ds) = self.spec.stages.iter().find(|x| &x.name == d) {
                        needed.extend(ds.entities.iter().cloned());
                    }
                    stage_queue.push(d.clone());
                }
            }
        }
        for s in steps {
            if let Ok(m) = self.mappings.get(&s.entity) {
                needed.extend(m.references());
            }
        }
        needed.retain(|e| !selected.contains(e.as_str()));
        needed
    }
}

/// Why a mapping's destinations cannot be written beside a ledger whose collections (tables)
/// start with `prefix`: its collection, or on Appwrite (`appwrite`) a child table of its embeds,
/// named like the ledger's own — a rollback of the step would empty the ledger's runs or steps.
/// Without case: Appwrite's table ids ignore it.
pub fn ledger_name_problem(
    entity: &str,
    mapping: &crate::mapping::Mapping,
    prefix: &str,
    appwrite: bool,
) -> Option<String> {
    if prefix.is_empty() {
        return None;
    }
    let clashes = |name: &str| name.to_lowercase().starts_with(&prefix.to_lowercase());
    let collection = mapping.collection();
    if clashes(collection) {
        return Some(format!(
            "{entity}: collection `{collection}` is named like the ledger's own (`{prefix}…`); choose another `collection` in its mapping"
        ));
    }
    if appwrite {
        for (_, path, table) in mapping.appwrite_child_tables() {
            if clashes(&table) {
                return Some(format!(
                    "{entity}: embed `{path}` writes the Appwrite child table `{table}`, named like the ledger's own (`{prefix}…`); choose another `collection` or embed path"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outside tester of #11, finding 27: an entity `cutover` embedding `runs` into an Appwrite
    /// child table wrote into the ledger's `cutover_runs`, and its rollback emptied the history.
    #[test]
    fn a_destination_named_like_the_ledgers_own_is_refused() {
        let text = |name: &str, embed: &str| {
            format!(
                "version = 1\nname = \"{name}\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n[[embed]]\npath = \"{embed}\"\ntable = \"k\"\nforeign_key = \"p\"\nappwrite = \"table\"\n[[embed.field]]\npath = \"x\"\ncolumn = \"x\"\n"
            )
        };
        let parse = |t: String| crate::mapping::parse(Path::new("m.toml"), &t).unwrap();
        let m = parse(text("cutover", "runs"));
        let why = super::ledger_name_problem("cutover", &m, "cutover_", true).expect("refused");
        assert!(why.contains("`cutover_runs`"), "{why}");
        assert_eq!(
            super::ledger_name_problem("cutover", &m, "cutover_", false),
            None,
            "a MongoDB embed writes no table"
        );
        let m = parse(text("Cutover_Steps", "x"));
        assert!(super::ledger_name_problem("c", &m, "cutover_", false).is_some());
        let m = parse(text("things", "runs"));
        assert_eq!(
            super::ledger_name_problem("things", &m, "cutover_", true),
            None
        );
    }
    use crate::mapping::parse;

    fn mapping(name: &str, reference: Option<&str>) -> crate::mapping::Mapping {
        let mut text = format!(
            "version = 1\nname = \"{name}\"\n[source]\ntable = \"{name}\"\nkey = [\"id\"]\n[[field]]\npath = \"x\"\ncolumn = \"x\"\n"
        );
        if let Some(r) = reference {
            text.push_str(&format!(
                "[[field]]\npath = \"ref\"\ncolumn = \"r\"\nreference = \"{r}\"\n"
            ));
        }
        parse(Path::new(&format!("{name}.toml")), &text).unwrap()
    }

    fn pipeline(text: &str) -> Result<Pipeline, PipelineError> {
        let set = MappingSet::from_mappings(vec![
            mapping("a", None),
            mapping("b", Some("a")),
            mapping("c", Some("b")),
        ])
        .unwrap();
        let spec: PipelineFile = toml::from_str(text).unwrap();
        Pipeline::new(Path::new("p.toml"), spec, set)
    }

    const GOOD: &str = r#"
version = 1
name = "p"
[[stage]]
name = "one"
entities = ["a"]
[[stage]]
name = "two"
entities = ["b", "c"]
depends_on = ["one"]
"#;

    #[test]
    fn selection_by_stage_or_entity_keeps_pipeline_order() {
        let p = pipeline(GOOD).unwrap();
        let names = |steps: Vec<Step>| steps.into_iter().map(|s| s.entity).collect::<Vec<_>>();
        assert_eq!(names(p.select(&[]).unwrap()), ["a", "b", "c"]);
        assert_eq!(
            names(p.select(&["c".into(), "one".into()]).unwrap()),
            ["a", "c"]
        );
        assert!(p.select(&["nope".into()]).is_err());
        // A stage named like one of its entities: the name is the entity, `stage:` the stage
        // (`migrate users` ran roles, users and sessions).
        let p = pipeline(&GOOD.replace("name = \"two\"", "name = \"b\"")).unwrap();
        assert_eq!(names(p.select(&["b".into()]).unwrap()), ["b"]);
        assert_eq!(names(p.select(&["stage:b".into()]).unwrap()), ["b", "c"]);
        assert_eq!(names(p.select(&["one".into()]).unwrap()), ["a"]);
        assert!(p.select(&["stage:a".into()]).is_err());
    }

    #[test]
    fn prerequisites_come_from_stages_and_references() {
        let p = pipeline(GOOD).unwrap();
        let steps = p.select(&["c".into()]).unwrap();
        let pre: Vec<String> = p.prerequisites(&steps).into_iter().collect();
        assert_eq!(pre, ["a", "b"]);
        assert!(p.prerequisites(&p.select(&[]).unwrap()).is_empty());
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(
            normalize(Path::new("pipelines/../mappings")),
            PathBuf::from("mappings")
        );
        assert_eq!(normalize(Path::new("../x/./y")), PathBuf::from("../x/y"));
        assert_eq!(normalize(Path::new("a/..")), PathBuf::from("."));
    }

    #[test]
    fn dependency_on_a_later_stage_is_refused() {
        let text = GOOD.replace("depends_on = [\"one\"]", "depends_on = [\"two\"]");
        let err = pipeline(&text).unwrap_err().to_string();
        assert!(err.contains("does not come before"), "{err}");
    }

    #[test]
    fn reference_to_a_later_entity_is_refused() {
        let text = GOOD.replace("entities = [\"b\", \"c\"]", "entities = [\"c\", \"b\"]");
        let err = pipeline(&text).unwrap_err().to_string();
        assert!(err.contains("references `b`"), "{err}");
    }
}
