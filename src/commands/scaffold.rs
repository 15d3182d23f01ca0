//! `cutover scaffold`: read the source's catalog, draft a pipeline and one mapping per table,
//! check that the drafts parse as a pipeline, and write them (never over an existing file
//! without `--force`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::shared::load_config;
use crate::cli::{Cli, Outcome, ScaffoldArgs};
use crate::config::Overrides;
use crate::mapping::draft::{self, DraftOptions, Drafts};
use crate::mapping::{MappingSet, parse};
use crate::pipeline::{Pipeline, PipelineFile};

pub async fn scaffold(cli: &Cli, args: &ScaffoldArgs) -> Result<Outcome> {
    let cfg = load_config(cli, Overrides::default())?;
    let url = cfg.require_source()?;
    let mut schemas: Vec<&String> = Vec::new();
    for s in &args.schema {
        if !schemas.contains(&s) {
            schemas.push(s);
        }
    }
    if args.diff && schemas.len() > 1 {
        bail!("--diff compares one schema with its mappings: give one --schema");
    }
    let mut catalogs = Vec::new();
    for schema in schemas {
        let catalog = crate::source::catalog::read(url, schema).await?;
        if catalog.tables.is_empty() {
            bail!("schema `{schema}` of the source has no tables (or does not exist)");
        }
        catalogs.push(catalog);
    }
    let mut catalog = crate::source::catalog::Catalog::merge(catalogs);
    if !args.tables.is_empty() {
        let missing: Vec<&str> = args
            .tables
            .iter()
            .filter(|t| catalog.table(t).is_none())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!(
                "no table {} in schema `{}`",
                missing
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                catalog.schema
            );
        }
        catalog.tables.retain(|t| args.tables.contains(&t.name));
    }
    if args.diff {
        return diff(&catalog, &args.out, url, args.target).await;
    }
    // The embedding proposals' document sizes: widths measured over a bounded sample.
    crate::source::catalog::sample(url, &mut catalog).await?;
    let name = draft::entity_name(args.name.as_deref().unwrap_or(&catalog.database));
    let mut drafts = draft::draft(
        &catalog,
        &DraftOptions {
            target: args.target,
            name,
        },
    );
    if drafts.mappings.is_empty() {
        bail!(
            "no table of schema `{}` could be drafted: {}",
            catalog.schema,
            drafts.notes.join("; ")
        );
    }
    let pipeline = check_drafts(&args.out, &drafts)?;
    rehearse_sample(url, &pipeline, args.target, &mut drafts).await?;
    let files = files_of(&args.out, &drafts);

    if !args.force {
        let existing: Vec<String> = files
            .iter()
            .filter(|(p, _)| p.exists())
            .map(|(p, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "not overwriting existing files (--force overwrites them): {}",
                existing.join(", ")
            );
        }
    }
    for (path, text) in &files {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    crate::outln!(
        "drafted {} mappings and pipeline {} from schema `{}` of `{}`:",
        drafts.mappings.len(),
        drafts.pipeline_name,
        catalog.schema,
        catalog.database
    );
    for (path, _) in &files {
        crate::outln!("  wrote {}", path.display());
    }
    for n in &drafts.notes {
        crate::outln!("note: {n}");
    }
    let decisions: usize = drafts
        .mappings
        .iter()
        .map(|(_, t)| t.matches("# decide:").count())
        .sum();
    let proposals: usize = drafts
        .mappings
        .iter()
        .map(|(_, t)| t.matches("## Proposal").count())
        .sum();
    crate::outln!(
        "{decisions} `# decide:` notes and {proposals} embedding proposals (commented out) to review"
    );
    Ok(Outcome::Success)
}

/// `--diff`: the schema against the mappings in `out/mappings` — what changed, and each mapping
/// compiled against the live source as `check` compiles it (a column whose type changed under a
/// rule or a type that no longer applies: adv26 F7). Exits 2 when something differs.
async fn diff(
    catalog: &crate::source::catalog::Catalog,
    out: &Path,
    url: &str,
    target: crate::config::TargetKind,
) -> Result<Outcome> {
    let dir = out.join("mappings");
    if !dir.is_dir() {
        bail!(
            "no mappings to compare with: {} is not a directory",
            dir.display()
        );
    }
    let set = MappingSet::load_dir(&dir)?;
    let mut found = crate::mapping::drift::drift(catalog, &set.mappings, target);
    for m in &set.mappings {
        // A table of another schema, or one gone (said above), is not compiled here.
        let relations = crate::mapping::plan::relations_of(m);
        let known = relations.iter().all(|r| {
            let parts = crate::source::postgres::relation_parts(r);
            match parts.as_slice() {
                [t] => catalog.table(t).is_some(),
                [s, t] => *s == catalog.schema && catalog.table(t).is_some(),
                _ => false,
            }
        });
        if m.spec.source.table.is_some() && !known {
            continue;
        }
        // A session each: a failed description aborts its transaction.
        let mut session = crate::source::SourceSession::open(url).await?;
        let mut columns = Vec::new();
        let mut failed = None;
        for r in &relations {
            match session.describe(r).await {
                Ok(c) => columns.push(c),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        session.close().await;
        let why = match failed {
            Some(e) => Some(e),
            None => crate::mapping::plan::compile(&set, m, &columns)
                .err()
                .map(|e| e.to_string()),
        };
        // A column gone is said already, and is why it does not compile.
        let gone = found
            .iter()
            .any(|d| d.entity == m.name() && d.message.contains("no longer exists"));
        if let Some(why) = why.filter(|_| !gone) {
            found.push(crate::mapping::drift::Drift {
                entity: m.name().to_string(),
                message: format!(
                    "no longer compiles against the source (`cutover check` would block it): {why}"
                ),
            });
        }
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        crate::outln!(
            "no differences between schema `{}` and the {} mappings in {}",
            catalog.schema,
            set.mappings.len(),
            dir.display()
        );
        return Ok(Outcome::Success);
    }
    crate::outln!(
        "{} differences between schema `{}` and the mappings in {}:",
        found.len(),
        catalog.schema,
        dir.display()
    );
    for d in &found {
        crate::outln!("  {:<24} {}", d.entity, d.message);
    }
    Ok(Outcome::FinishedWithRejects)
}

/// Where each draft goes.
fn files_of(out: &Path, d: &Drafts) -> Vec<(PathBuf, String)> {
    let mut files = vec![(
        out.join("pipelines")
            .join(format!("{}.toml", d.pipeline_name)),
        d.pipeline.clone(),
    )];
    for (name, text) in &d.mappings {
        files.push((
            out.join("mappings").join(format!("{name}.toml")),
            text.clone(),
        ));
    }
    files
}

/// Rows of each table the drafts are tried on.
const REHEARSED_ROWS: usize = 2000;

/// Maps the first rows of each drafted table as the run would (and, into Appwrite, judges them
/// as the target would), and writes at the top of the mapping what the sample rejects — the
/// field, the rule, how many and one row — so that a draft that `check` will find rejects in
/// says so where the user reads it (adv29 S4: years past the calendar, arrays not starting at 1,
/// repeated JSON keys, points off the globe… passed scaffold silently).
async fn rehearse_sample(
    url: &str,
    pipeline: &Pipeline,
    target: crate::config::TargetKind,
    drafts: &mut Drafts,
) -> Result<()> {
    use futures::StreamExt;
    use std::collections::BTreeMap;
    let ctx = crate::transform::row::MapContext {
        now_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    for step in pipeline.select(&[])? {
        // A session each: a failed read aborts its transaction.
        let mut session = crate::source::SourceSession::open(url).await?;
        let plans = crate::pipeline::run::compile_plans(
            pipeline,
            std::slice::from_ref(&step),
            &mut session,
        )
        .await;
        let Ok(plans) = plans else {
            session.close().await;
            continue;
        };
        let plan = &plans[0];
        let table = (target == crate::config::TargetKind::Appwrite)
            .then(|| crate::sink::appwrite::schema::table_spec(plan));
        // (path, rule) → (rows, one row's key and message)
        let mut found: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
        let mut read = 0;
        {
            let Ok(mut conn) = session.reader().await else {
                continue;
            };
            let mut rows = crate::source::postgres::stream(&mut conn, &plan.read);
            while read < REHEARSED_ROWS {
                let Some(next) = rows.next().await else { break };
                read += 1;
                let mut note = |path: &str, rule: &str, key: &str, message: &str| {
                    let e = found
                        .entry((path.to_string(), rule.to_string()))
                        .or_insert((0, format!("{key}: {message}")));
                    e.0 += 1;
                };
                match next {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        let column = plan
                            .read
                            .columns
                            .get(e.column)
                            .map(|c| c.name.clone())
                            .unwrap_or_default();
                        note(&column, e.rule, &e.key_text(plan.key.len()), &e.message);
                    }
                    Ok(Ok(row)) => {
                        let mapped = crate::transform::row::map_row(plan, &row, &[], &ctx);
                        for i in mapped.issues.iter().filter(|i| i.is_error()) {
                            // Rules over other entities' rows are judged by the run.
                            if matches!(i.rule.as_str(), "exists" | "reference_rejected") {
                                continue;
                            }
                            note(&i.path, &i.rule, &mapped.key, &i.message);
                        }
                        if let (Some(t), Some(doc)) = (&table, &mapped.doc)
                            && let Ok(d) = doc.to_document()
                            && let Some((rule, message)) =
                                crate::sink::target::refusal(&d, Some(t), &[])
                        {
                            note("", rule, &mapped.key, &message);
                        }
                    }
                }
            }
        }
        session.close().await;
        if found.is_empty() {
            continue;
        }
        let rejected: usize = found.values().map(|(n, _)| n).sum();
        let mut text = format!(
            "decide: of the first {read} rows, {rejected} rejection(s) as drafted (`cutover check` counts them over the whole table; the field's notes and mappings/README.md give the choices):"
        );
        for ((path, rule), (n, example)) in &found {
            let at = if path.is_empty() {
                String::new()
            } else {
                format!("`{path}` ")
            };
            text.push_str(&format!(
                "\n- {at}{rule}: {n} row(s), e.g. {}",
                crate::redact::clip_lines(example, 200)
            ));
        }
        if let Some((_, mapping)) = drafts.mappings.iter_mut().find(|(n, _)| *n == step.entity) {
            let commented: String = text.lines().map(|l| format!("# {l}\n")).collect();
            // After the first line (where the draft says where it is from).
            let at = mapping.find('\n').map_or(0, |i| i + 1);
            mapping.insert_str(at, &commented);
        }
    }
    Ok(())
}

/// The drafts as the pipeline loader would read them: a draft that does not load is a defect of
/// scaffold, reported before anything is written.
fn check_drafts(out: &Path, d: &Drafts) -> Result<Pipeline> {
    let mut mappings = Vec::new();
    for (name, text) in &d.mappings {
        let path = out.join("mappings").join(format!("{name}.toml"));
        mappings.push(parse(&path, text).with_context(|| {
            format!("scaffold drafted a mapping that does not load (a defect of cutover): {name}")
        })?);
    }
    let set = MappingSet::from_mappings(mappings)
        .context("scaffold drafted mappings that do not load together (a defect of cutover)")?;
    let path = out
        .join("pipelines")
        .join(format!("{}.toml", d.pipeline_name));
    let spec: PipelineFile = toml::from_str(&d.pipeline)
        .context("scaffold drafted a pipeline that does not parse (a defect of cutover)")?;
    Pipeline::new(&path, spec, set)
        .context("scaffold drafted a pipeline that does not load (a defect of cutover)")
}
