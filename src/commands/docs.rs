//! `cutover docs`: the data-mapping document from the pipeline's mappings and the live source's
//! column types (Markdown or HTML). Without a source configured the types are left out, said so.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};

use super::shared::{load_config, load_pipeline};
use crate::cli::{Cli, DocsArgs, DocsFormat, Outcome};
use crate::config::Overrides;
use crate::monitor::mapping_doc::{DocEntity, MappingDoc, SourceType, SourceTypes, relation_key};
use crate::source::SourceSession;
use crate::source::catalog;
use crate::source::postgres::relation_sql;

pub async fn docs(cli: &Cli, args: &DocsArgs) -> Result<Outcome> {
    let cfg = load_config(cli, Overrides::default())?;
    let pipeline = load_pipeline(&cfg, &args.pipeline)?;
    let target = args
        .target
        .or(pipeline.spec.target)
        .unwrap_or(cfg.default_target);
    let steps = pipeline.all_steps();
    let mut entities = Vec::new();
    for s in &steps {
        entities.push(DocEntity {
            stage: s.stage.clone(),
            mapping: pipeline.mappings.get(&s.entity)?,
        });
    }
    let mut types = SourceTypes::default();
    match cfg.source_url.as_deref() {
        Some(url) => describe(url, &entities, &mut types).await?,
        None => {
            types.problems.insert(
                "every relation".into(),
                "no source configured (CUTOVER_SOURCE_URL)".into(),
            );
        }
    }
    let doc = MappingDoc::build(&pipeline.spec.name, target, &entities, &types);
    let broken = not_in_the_source(&entities, &types);
    let text = match args.format {
        DocsFormat::Md => doc.markdown(),
        DocsFormat::Html => doc.html(),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            crate::outln!("wrote {}", path.display());
        }
        None => crate::out!("{text}"),
    }
    // The document is written (it shows where), but a mapping that does not compile against
    // the source is no document to sign off: said, and exit 1 (adv42 F5).
    if broken.is_empty() {
        return Ok(Outcome::Success);
    }
    for b in &broken {
        crate::errln!("error: {b}");
    }
    crate::errln!(
        "the mappings do not compile against the source (`cutover check` refuses them): fix them before the document is signed off"
    );
    Ok(Outcome::Failed)
}

/// What the mappings name that the source does not have: a relation (table, or a query that
/// fails), or a column of a relation that was described.
fn not_in_the_source(entities: &[DocEntity<'_>], types: &SourceTypes) -> Vec<String> {
    let mut out = Vec::new();
    let mut relations_said = BTreeSet::new();
    for e in entities {
        let s = &e.mapping.spec;
        let parts = std::iter::once((
            s.source.table.as_deref(),
            s.source.query.as_deref(),
            s.fields.as_slice(),
        ))
        .chain(s.embeds.iter().map(|em| {
            (
                em.table.as_deref(),
                em.query.as_deref(),
                em.fields.as_slice(),
            )
        }));
        for (table, query, fields) in parts {
            let rel = relation_key(table, query);
            let problem = table
                .and_then(|t| types.problems.get(t))
                .or_else(|| query.and_then(|q| types.problems.get(q)));
            if let Some(why) = problem {
                if relations_said.insert(rel.clone()) {
                    out.push(format!("entity {}: {why}", s.name));
                }
                continue;
            }
            let Some(cols) = types.relations.get(&rel) else {
                continue;
            };
            for f in fields {
                let named = f.column.iter().chain(f.columns.iter().flatten());
                for c in named.filter(|c| !cols.contains_key(c.as_str())) {
                    out.push(format!(
                        "entity {}: field `{}` reads column `{c}`, which `{rel}` does not have",
                        s.name, f.path
                    ));
                }
            }
        }
    }
    out
}

/// The column types of every table (from the catalog) and query (described) the mappings read.
async fn describe(url: &str, entities: &[DocEntity<'_>], types: &mut SourceTypes) -> Result<()> {
    let mut tables = BTreeSet::new();
    let mut queries = BTreeSet::new();
    for e in entities {
        let s = &e.mapping.spec;
        let sources = std::iter::once((s.source.table.as_deref(), s.source.query.as_deref()))
            .chain(
                s.embeds
                    .iter()
                    .map(|em| (em.table.as_deref(), em.query.as_deref())),
            );
        for (t, q) in sources {
            match (t, q) {
                (Some(t), _) => {
                    tables.insert(t.to_string());
                }
                (None, Some(q)) => {
                    queries.insert(q.to_string());
                }
                _ => {}
            }
        }
    }
    // Tables, by schema (a bare name is taken as in `public`).
    let mut by_schema: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for t in &tables {
        let (schema, name) = t.split_once('.').unwrap_or(("public", t));
        by_schema
            .entry(schema.to_string())
            .or_default()
            .push((t.clone(), name.to_string()));
    }
    for (schema, names) in by_schema {
        let cat = catalog::read(url, &schema).await?;
        for (written, name) in names {
            let Some(t) = cat.table(&name) else {
                types
                    .problems
                    .insert(written, format!("no table `{name}` in schema `{schema}`"));
                continue;
            };
            let cols = t
                .columns
                .iter()
                .map(|c| {
                    let array = c.element_type.is_some();
                    let base = c
                        .element_type
                        .clone()
                        .unwrap_or_else(|| c.base_type.clone());
                    let mut shown = c.type_sql.clone();
                    if c.not_null {
                        shown.push_str(" NOT NULL");
                    }
                    (c.name.clone(), SourceType { shown, base, array })
                })
                .collect();
            types.relations.insert(written.clone(), cols);
            if let Some(n) = t.row_estimate {
                types.estimates.insert(written, n);
            }
        }
    }
    if queries.is_empty() {
        return Ok(());
    }
    let mut session = SourceSession::open(url).await?;
    for q in queries {
        // A query that fails aborts the snapshot's transaction: a fresh session for the rest.
        match session.describe(&relation_sql(None, Some(&q))).await {
            Ok(cols) => {
                let cols = cols
                    .into_iter()
                    .map(|c| {
                        let name = c.pg_type.to_ascii_lowercase();
                        let (base, array) = match name.strip_suffix("[]") {
                            Some(e) => (e.to_string(), true),
                            None => (name.clone(), false),
                        };
                        let shown = name;
                        (c.name, SourceType { shown, base, array })
                    })
                    .collect();
                types.relations.insert(relation_key(None, Some(&q)), cols);
            }
            Err(e) => {
                types.problems.insert(q.clone(), e.to_string());
                session.close().await;
                session = SourceSession::open(url).await?;
            }
        }
    }
    session.close().await;
    Ok(())
}
