//! The annotated reference in mappings/README.md parses, so the documentation cannot drift; every
//! shipped mapping and pipeline loads.

use std::path::Path;

use cutover::mapping::spec::EmailRule;
use cutover::mapping::{self, MappingSet};
use cutover::pipeline::{Pipeline, PipelineFile};

fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn reference_mapping_parses_and_uses_every_option() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("mappings/README.md")).unwrap();
    let blocks = toml_blocks(&text);
    assert_eq!(blocks.len(), 2, "a mapping block and a pipeline block");
    let m = mapping::parse(Path::new("mappings/README.md"), &blocks[0]).unwrap();
    assert_eq!(m.spec.embeds.len(), 1);
    assert_eq!(m.spec.rules.len(), 1);
    assert!(
        m.spec.fields.iter().any(|f| f
            .validate
            .as_ref()
            .is_some_and(|v| !v.severities.is_empty())),
        "the reference shows a per-rule severity"
    );
    assert!(
        m.spec.fields.iter().any(|f| f
            .validate
            .as_ref()
            .is_some_and(|v| v.email == EmailRule::Ascii)),
        "the reference shows email = \"ascii\""
    );
    let _: PipelineFile = toml::from_str(&blocks[1]).unwrap();
}

#[test]
fn shipped_pipeline_and_mappings_load() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Pipeline::load(
        &root.join("pipelines/registry.toml"),
        &root.join("mappings"),
    )
    .unwrap();
    assert_eq!(p.all_steps().len(), 11);
    let set = MappingSet::load_dir(&root.join("mappings")).unwrap();
    assert_eq!(set.mappings.len(), 11);
}
