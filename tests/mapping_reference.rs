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

/// The `[file]` table of the reference (commented out there: the reference entity embeds) parses
/// with every key it shows, so its documentation cannot drift either.
#[test]
fn reference_file_table_parses_with_every_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("mappings/README.md")).unwrap();
    let block = &toml_blocks(&text)[0];
    let start = block
        .find("# [file]\n")
        .expect("a [file] table in the reference");
    let end = block[start..]
        .find("\n\n")
        .map_or(block.len(), |e| start + e);
    let table: String = block[start..end]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    let mapping = format!(
        "version = 1\nname = \"docs\"\n[source]\ntable = \"documents\"\nkey = [\"id\"]\n{table}\n[[field]]\npath = \"name\"\ncolumn = \"file_name\"\n[[field]]\npath = \"patientId\"\ncolumn = \"patient_id\"\n"
    );
    let m = mapping::parse(Path::new("mappings/README.md"), &mapping).unwrap();
    let f = m.spec.file.as_ref().expect("[file]");
    assert_eq!(f.path_column, "storage_path");
    assert!(f.name_column.is_some() && f.size_column.is_some());
    assert!(f.checksum_column.is_some() && f.mime_column.is_some());
    assert_eq!((f.bucket.as_str(), f.chunk_size), ("fs", 261_120));
    assert_eq!(f.document_collection.as_deref(), Some("documentFiles"));
    assert!(f.appwrite.file_permissions.is_some());
    assert_eq!(
        m.collection(),
        "fs",
        "a file mapping writes into its bucket"
    );
}
