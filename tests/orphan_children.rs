//! Child rows that belong to no parent row (legacy schemas without foreign keys): every one is
//! counted — before the first parent, between parents, after the last, a NULL foreign key, a
//! NULL part of a composite one — and `check`, `migrate` (report and rejects file) and `verify`
//! agree on the count per embed, also across a kill -9 and a resume, and into Appwrite. They
//! used to be dropped in silence, but for those sorting before a parent (one log line).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bson::doc;
use common::World;
use common::process::{kill_after, spawn_migrate};
use serde_json::Value;

const INVOICES: &str = r#"version = 1
name = "invoices"
[source]
table = "invoices"
key = ["id"]
[[field]]
path = "total"
column = "total"
[[embed]]
path = "items"
table = "items"
foreign_key = "invoice_id"
order_by = ["pos"]
[[embed.field]]
path = "pos"
column = "pos"
[[embed.field]]
path = "what"
column = "what"
[[embed]]
path = "notes"
table = "notes"
foreign_key = "invoice_id"
order_by = ["id"]
element = "value"
[[embed.field]]
path = "body"
column = "body"
"#;

/// Invoices 1..=n but those whose id is a multiple of `gap`; two items each, and orphans:
/// before the first invoice, of each missing invoice (between), after the last; notes with a
/// NULL invoice, one before and one after. Returns the orphans per embed.
async fn invoices(w: &World, n: u32, gap: u32) -> BTreeMap<String, u64> {
    w.sql(&format!(
        "CREATE TABLE invoices (id int PRIMARY KEY, total numeric(8,2));
         CREATE TABLE items (invoice_id int, pos int, what text, PRIMARY KEY (invoice_id, pos));
         CREATE TABLE notes (id serial PRIMARY KEY, invoice_id int, body text);
         INSERT INTO invoices SELECT g, g * 1.5 FROM generate_series(1, {n}) g WHERE g % {gap} <> 0;
         INSERT INTO items SELECT i, p, 'x' FROM generate_series(1, {n}) i, generate_series(1, 2) p;
         INSERT INTO items VALUES (0, 1, 'before'), (-7, 1, 'before'), ({n} + 1, 1, 'after'),
                                  ({n} + 50, 1, 'after'), ({n} + 50, 2, 'after');
         INSERT INTO notes (invoice_id, body) VALUES (1, 'a'), (NULL, 'null fk'), (999999, 'after'),
                                                     (1, 'b'), (NULL, 'null fk'), (-1, 'before');"
    ))
    .await;
    let missing = u64::from(n / gap);
    BTreeMap::from([
        ("items".to_string(), 2 * missing + 5),
        ("notes".to_string(), 4),
    ])
}

/// The orphan lines of the rejects files of a run, per embed path (the rest: other rejects),
/// each key once (a key twice would be a child counted twice).
fn orphan_lines(dir: &Path, entity: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(mut r) = csv::Reader::from_path(dir.join(format!("{entity}.csv"))) else {
        return out;
    };
    let mut seen = std::collections::BTreeSet::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        if &rec[3] != "orphan_child" {
            continue;
        }
        assert_eq!(&rec[2], "embed", "{rec:?}");
        assert!(rec[5].contains(&format!("`{}`", &rec[4])), "{rec:?}");
        assert!(
            seen.insert((rec[4].to_string(), rec[1].to_string())),
            "listed twice: {rec:?}"
        );
        *out.entry(rec[4].to_string()).or_insert(0) += 1;
    }
    out
}

/// The report's orphans per embed.
fn reported(entity: &Value) -> BTreeMap<String, u64> {
    entity["orphan_children"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                o["embed"].as_str().unwrap().to_string(),
                o["rows"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn checked(w: &World, pipeline: &Path) -> BTreeMap<String, u64> {
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap();
    // A warning, not a blocker nor a reject.
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let per_embed: BTreeMap<String, u64> =
        serde_json::from_value(report["entities"][0]["orphan_children"].clone()).unwrap();
    for f in report["findings"].as_array().unwrap() {
        if f["rule"] == "orphan_child" {
            assert_eq!(f["severity"], "warning");
            assert_eq!(per_embed[f["path"].as_str().unwrap()], f["rows"]);
        }
    }
    per_embed
}

fn verified(w: &World, pipeline: &Path) -> BTreeMap<String, u64> {
    let out = w
        .cutover()
        .args(["verify", "--json", "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["entities"][0]["embedded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["orphan_children"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn orphan_children_before_between_after_and_null_are_all_counted_and_listed() {
    let w = World::new("orphans_int").await;
    let expected = invoices(&w, 100, 25).await;
    let pipeline = common::one_entity_pipeline(&w, "invoices", INVOICES);

    assert_eq!(checked(&w, &pipeline), expected);

    let out = w.migrate_with(&pipeline, &[]);
    let text = common::output_text(&out);
    // No parent row is rejected: the orphans are not rejected rows of the entity.
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert_eq!(
        (e["read"].as_u64(), e["written"].as_u64()),
        (Some(96), Some(96))
    );
    assert_eq!(e["rejected"], 0);
    assert_eq!(reported(e), expected);
    assert!(
        text.contains(
            "13 rows of items belong to no invoices row and were not embedded in `items`"
        ),
        "{text}"
    );
    assert!(
        text.contains("4 rows of notes belong to no invoices row"),
        "{text}"
    );
    let run = report["run_id"].as_str().unwrap();
    assert_eq!(
        orphan_lines(&w.dir.path().join("rejects").join(run), "invoices"),
        expected
    );
    let keys: Vec<String> = w
        .rejects(run)
        .into_iter()
        .filter(|r| r.3 == "orphan_child")
        .map(|r| r.1)
        .collect();
    for k in [
        "-7|1", "0|1", "25|2", "101|1", "150|2", "\\N|2", "\\N|5", "-1|6",
    ] {
        assert!(keys.contains(&k.to_string()), "{k} in {keys:?}");
    }
    // What is embedded is every child of a written invoice.
    let docs = w.docs("invoices").await;
    let items: usize = docs
        .iter()
        .map(|d| d.get_array("items").unwrap().len())
        .sum();
    assert_eq!(items, 192);

    assert_eq!(verified(&w, &pipeline), expected);
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(
        text.contains("embedded items: 13 child rows of items belong to no invoices row"),
        "{text}"
    );
    w.drop().await;
}

/// A composite foreign key: NULL in either part is an orphan (SQL's equality), wherever it sorts.
#[tokio::test]
async fn a_null_part_of_a_composite_foreign_key_makes_an_orphan() {
    let w = World::new("orphans_composite").await;
    w.sql(
        "CREATE TABLE plots (region text, seq int, label text, PRIMARY KEY (region, seq));
         INSERT INTO plots VALUES ('eu', 1, 'a'), ('eu', 3, 'b'), ('us', 2, 'c');
         CREATE TABLE crops (id int PRIMARY KEY, region text, seq int, kind text);
         INSERT INTO crops VALUES
           (1, 'eu', 1, 'kept'), (2, 'eu', 3, 'kept'), (3, 'us', 2, 'kept'),
           (4, 'aa', 1, 'before'), (5, 'eu', 2, 'between'), (6, 'eu', NULL, 'null part'),
           (7, NULL, 1, 'null part'), (8, NULL, NULL, 'null'), (9, 'zz', 9, 'after'),
           (10, 'us', NULL, 'null part, last parent');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "plots",
        r#"version = 1
name = "plots"
[source]
table = "plots"
key = ["region", "seq"]
[[field]]
path = "label"
column = "label"
[[embed]]
path = "crops"
table = "crops"
foreign_key = ["region", "seq"]
order_by = ["id"]
[[embed.field]]
path = "kind"
column = "kind"
"#,
    );
    let expected = BTreeMap::from([("crops".to_string(), 7u64)]);
    assert_eq!(checked(&w, &pipeline), expected);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report = w.latest_report();
    assert_eq!(reported(&report["entities"][0]), expected);
    let run = report["run_id"].as_str().unwrap();
    assert_eq!(
        orphan_lines(&w.dir.path().join("rejects").join(run), "plots"),
        expected
    );
    let kinds: Vec<String> = w
        .docs("plots")
        .await
        .iter()
        .flat_map(|d| d.get_array("crops").unwrap().clone())
        .map(|c| {
            c.as_document()
                .unwrap()
                .get_str("kind")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["kept", "kept", "kept"]);
    assert_eq!(verified(&w, &pipeline), expected);
    w.drop().await;
}

/// The run directories under rejects/, oldest first.
fn runs(w: &World) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(w.dir.path().join("rejects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

/// Killed with orphans behind its checkpoint and ahead of it, then resumed: the resumed run's
/// report and rejects file hold each orphan once — those the checkpoint covers carried, the
/// rest (and those after the last parent, NULL ones included) counted by the resuming run.
#[tokio::test]
async fn a_run_killed_and_resumed_counts_each_orphan_child_once() {
    let w = World::new("orphans_resume").await;
    let expected = invoices(&w, 30_000, 7).await;
    let pipeline = common::one_entity_pipeline(&w, "invoices", INVOICES);
    let small = ["--batch-size", "100", "--concurrency", "2"];
    let mut child = spawn_migrate(&w, &pipeline, &small);
    let at = kill_after(&w, &mut child, "invoices", 5_000).await;
    assert!(at < 25_714, "killed before the end: {at}");
    let killed = runs(&w);
    assert_eq!(killed.len(), 1);
    let before = orphan_lines(&killed[0], "invoices");
    assert!(before["items"] > 0, "{before:?}");

    let out = w.migrate_with(&pipeline, &[]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert!(e["resumed_from"].is_string(), "{e}");
    assert_eq!(e["read"], 25_715);
    assert_eq!(reported(e), expected, "{text}");
    let last = runs(&w).pop().unwrap();
    assert_eq!(orphan_lines(&last, "invoices"), expected);
    assert_eq!(verified(&w, &pipeline), expected);
    w.drop().await;
}

/// Into Appwrite (an embed stored as JSON, and one as a child table) the same orphans are
/// counted and listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_children_are_counted_on_appwrite_too() {
    use appwrite_standin::StandIn;
    let w = World::new("orphans_aw").await;
    let expected = invoices(&w, 40, 10).await;
    let mapping = INVOICES.replace(
        "order_by = [\"pos\"]\n",
        "order_by = [\"pos\"]\nappwrite = \"table\"\n",
    );
    let pipeline = common::one_entity_pipeline(&w, "invoices", &mapping);
    let s = std::sync::Arc::new(StandIn::new("cutover", "test-key-1"));
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = format!("http://{addr}/v1");
    let run = |args: Vec<String>| {
        let mut cmd = w.cutover();
        cmd.env("APPWRITE_ENDPOINT", &endpoint)
            .env("APPWRITE_PROJECT", "cutover")
            .env("APPWRITE_API_KEY", "test-key-1")
            .env("APPWRITE_DATABASE", "orphans")
            .args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let p = pipeline.display().to_string();
    let args = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--target".into(),
            "appwrite".into(),
            "--pipeline".into(),
            p.clone(),
        ]);
        v
    };
    let out = run(args(&["migrate", "--quiet"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report = w.latest_report();
    assert_eq!(reported(&report["entities"][0]), expected);
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(
        orphan_lines(&w.dir.path().join("rejects").join(run_id), "invoices"),
        expected
    );
    // The child table holds the children of the written invoices only.
    assert_eq!(s.rows("orphans", "invoices_items").len(), 72);

    let out = run(args(&["verify", "--json"])).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeMap<String, u64> = v["entities"][0]["embedded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["orphan_children"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    w.drop().await;
}
