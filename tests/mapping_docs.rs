//! `cutover docs`: the data-mapping document shows every option of the annotated reference
//! mapping (mappings/README.md) with the live source's types, and its HTML renders in Chromium.

mod common;

use std::path::Path;
use std::process::Command;

use common::{World, output_text, repo};

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

/// The reference's `[file]` table, uncommented.
fn file_table(block: &str) -> String {
    let start = block.find("# [file]\n").expect("a [file] table");
    let end = block[start..]
        .find("\n\n")
        .map_or(block.len(), |e| start + e);
    block[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every (key, scalar value) of a TOML value, at any depth; `transform` entries that are plain
/// strings count as keys (they name a transform).
fn leaves(v: &toml::Value, key: &str, out: &mut Vec<(String, Option<String>)>) {
    match v {
        toml::Value::Table(t) => {
            if !key.is_empty() {
                out.push((key.to_string(), None));
            }
            for (k, v) in t {
                leaves(v, k, out);
            }
        }
        toml::Value::Array(a) => {
            out.push((key.to_string(), None));
            for v in a {
                match v {
                    toml::Value::String(s) if key == "transform" => out.push((s.clone(), None)),
                    _ => leaves(v, key, out),
                }
            }
        }
        toml::Value::String(s) => out.push((key.to_string(), Some(s.clone()))),
        toml::Value::Integer(i) => out.push((key.to_string(), Some(i.to_string()))),
        toml::Value::Float(f) => out.push((key.to_string(), Some(f.to_string()))),
        // `false` is an option left at its default: not in use, not shown.
        toml::Value::Boolean(false) => {}
        toml::Value::Boolean(true) => out.push((key.to_string(), None)),
        toml::Value::Datetime(d) => out.push((key.to_string(), Some(d.to_string()))),
    }
}

fn has_word(text: &str, word: &str) -> bool {
    let re = regex::Regex::new(&format!(
        r"(^|[^A-Za-z0-9_]){}($|[^A-Za-z0-9_])",
        regex::escape(word)
    ))
    .unwrap();
    re.is_match(text)
}

/// Markdown back to plain text: the escapes `md_escape` adds taken off.
fn unescape(md: &str) -> String {
    md.replace('\\', "")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn reference_world(w: &World) -> std::path::PathBuf {
    w.sql(
        "CREATE TABLE facilities (facility_id integer PRIMARY KEY, name text);
         CREATE TABLE patients (
           patient_id uuid PRIMARY KEY, updated_at timestamptz, address_city char(20),
           created_at timestamptz NOT NULL, recorded_at timestamp, price numeric(10,2),
           facility_id integer REFERENCES facilities, contact_email text, email varchar(254));
         CREATE TABLE guardians (guardian_id uuid PRIMARY KEY, patient_id uuid, name text);
         CREATE TABLE documents (
           document_id uuid PRIMARY KEY, storage_path text, file_name text, size_bytes bigint,
           sha256 text, mime_type text, patient_id uuid);",
    )
    .await;
    let readme = std::fs::read_to_string(repo().join("mappings/README.md")).unwrap();
    let block = toml_blocks(&readme).remove(0);
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/patients.toml"), &block).unwrap();
    std::fs::write(
        dir.join("mappings/facilities.toml"),
        "version = 1\nname = \"facilities\"\n[source]\ntable = \"facilities\"\nkey = [\"facility_id\"]\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/documents.toml"),
        format!(
            "version = 1\nname = \"documents\"\n[source]\ntable = \"documents\"\nkey = [\"document_id\"]\n[[field]]\npath = \"mimeType\"\ncolumn = \"mime_type\"\n[[field]]\npath = \"patientId\"\ncolumn = \"patient_id\"\n{}\n",
            file_table(&block)
        ),
    )
    .unwrap();
    let pipeline = dir.join("reference.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"reference\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"reference\"\nentities = [\"facilities\"]\n\
         [[stage]]\nname = \"people\"\nentities = [\"patients\", \"documents\"]\ndepends_on = [\"reference\"]\n",
    )
    .unwrap();
    pipeline
}

#[tokio::test]
async fn the_document_shows_every_option_of_the_reference_mapping() {
    let w = World::new("docs_reference").await;
    let pipeline = reference_world(&w).await;
    let md_path = w.dir.path().join("mapping.md");
    let out = w
        .cutover()
        .args(["docs", "--pipeline"])
        .arg(&pipeline)
        .args(["--format", "md", "-o"])
        .arg(&md_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let raw = std::fs::read_to_string(&md_path).unwrap();
    // Found by the outside tester of #17: the header's names were escaped inside their code
    // spans (`` \`reference\` `` showed the backticks). Names are code spans as they are.
    let header = raw.split("\n## ").next().unwrap();
    assert!(
        header.contains("Pipeline `reference`, into MongoDB"),
        "{header}"
    );
    let embeds: Vec<&str> = raw.lines().filter(|l| l.starts_with("### Embed")).collect();
    assert!(!embeds.is_empty(), "{raw}");
    for l in &embeds {
        assert!(l.starts_with("### Embed `") && !l.contains('\\'), "{l}");
    }
    let md = unescape(&raw);

    let readme = std::fs::read_to_string(repo().join("mappings/README.md")).unwrap();
    let block = toml_blocks(&readme).remove(0);
    let mut all = Vec::new();
    leaves(&toml::from_str(&block).unwrap(), "", &mut all);
    leaves(&toml::from_str(&file_table(&block)).unwrap(), "", &mut all);
    // The file's structure, not options: the format version and the sections themselves.
    let structure = [
        "version", "field", "embed", "rule", "source", "id", "options",
    ];
    let mut missing = Vec::new();
    for (key, value) in &all {
        if !structure.contains(&key.as_str()) && !has_word(&md, key) {
            missing.push(format!("key {key}"));
        }
        if let Some(v) = value
            && !md.contains(v.as_str())
        {
            missing.push(format!("{key} = {v}"));
        }
    }
    assert!(missing.is_empty(), "not in the document: {missing:?}\n{md}");

    // The live source's types, the target types and the decisions.
    for expected in [
        "character(20)",
        "timestamp without time zone",
        "timestamp with time zone NOT NULL",
        "numeric(10,2)",
        "the _id of `facilities`",
        "createdAt: truncated to milliseconds; the exact text kept at createdAtExact",
        "recordedAt: a timestamp without time zone, read at +01:00",
        "price: numeric to double: inexact values written with a warning",
        "createdAt: ±infinity becomes null",
        "recordedAt: values with sub-millisecond digits are rejected",
    ] {
        assert!(md.contains(expected), "{expected}\n{md}");
    }
    // A column the source does not have is said so.
    w.sql("ALTER TABLE patients DROP COLUMN contact_email")
        .await;
    let out = w
        .cutover()
        .args(["docs", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let md = unescape(&String::from_utf8_lossy(&out.stdout));
    assert!(
        md.contains("| contactEmail | contact_email | not in the source |"),
        "{md}"
    );
    w.drop().await;
}

#[tokio::test]
async fn the_html_document_renders_in_chromium() {
    let w = World::new("docs_html").await;
    let pipeline = reference_world(&w).await;
    let html_path = w.dir.path().join("mapping.html");
    let out = w
        .cutover()
        .args(["docs", "--format", "html", "--pipeline"])
        .arg(&pipeline)
        .arg("-o")
        .arg(&html_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let page = std::fs::read_to_string(&html_path).unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained"
    );
    let dom = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            w.dir.path().join("chromium").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", html_path.display()))
        .output()
        .expect("chromium (installed by scripts/setup.sh)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in ["entity-facilities", "entity-patients", "entity-documents"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id}\n{dom}");
    }
    // The tables are rendered as tables, their source text escaped (the regex `@` and the
    // map's "*" are shown, not interpreted).
    assert!(dom.matches("<table").count() >= 4, "{dom}");
    assert!(dom.contains(">contactInfo.address.city</td>"), "{dom}");
    assert!(dom.contains("regex = /@/"), "{dom}");
    assert!(Path::new(&html_path).exists());
    w.drop().await;
}

/// adv42 F5: a mapping naming a column or a table the source does not have is no document to
/// sign off: it is written (it shows where), each problem is said, and the exit is 1.
#[tokio::test]
async fn a_mapping_naming_what_the_source_lacks_fails_the_document() {
    let w = World::new("docs_missing").await;
    w.sql("CREATE TABLE tags (id int PRIMARY KEY, label text);")
        .await;
    let docs = |pipeline: &Path| {
        let md = w.dir.path().join("m.md");
        let out = w
            .cutover()
            .args(["docs", "--pipeline"])
            .arg(pipeline)
            .arg("-o")
            .arg(&md)
            .output()
            .unwrap();
        assert!(md.exists(), "{}", output_text(&out));
        out
    };
    let good = "version = 1\nname = \"tags\"\n[source]\ntable = \"tags\"\nkey = [\"id\"]\n[[field]]\npath = \"label\"\ncolumn = \"label\"\n";
    let out = docs(&common::one_entity_pipeline(&w, "tags", good));
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let out = docs(&common::one_entity_pipeline(
        &w,
        "tags",
        &good.replace("column = \"label\"", "column = \"labell\""),
    ));
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(
        text.contains("field `label` reads column `labell`"),
        "{text}"
    );
    let out = docs(&common::one_entity_pipeline(
        &w,
        "tags",
        &good.replace("table = \"tags\"", "table = \"tagz\""),
    ));
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("no table `tagz`"), "{text}");
    w.drop().await;
}
