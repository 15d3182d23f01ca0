//! Re-runs into a target whose unique index holds keys that moved between rows (the outside
//! tester's adv19 F2): row 1 takes row 2's old code and row 2 takes row 1's. Upserting row 1
//! meets row 2's *older* document still holding the code, so the run rejected both valid rows —
//! and removed their documents — while `check` (which judges the source alone) found nothing.
//! A row refused for a key another document holds is now tried again once the stage has written
//! every other row, its own older document removed first: only keys the new data repeats are
//! rejected, as `check` counts them.
//!
//! Shapes, each on MongoDB and on Appwrite (the stand-in): two rows swapping codes in one batch;
//! a code moving one way to a row of a later batch; a cycle of three; every row taking the next
//! one's code across batches of 3 written side by side; a text source key and a composite one;
//! a row repeating another's code (still rejected, as `check` says); a new row taking the code
//! of a row gone from the source (`--sync-deletes`). Each is checked against the source after the re-run (the target holds the
//! source's codes), by `check`'s count, the report's accounting, a second re-run and `verify`.
//!
//! Records the re-run leaves as they are keep their keys (the outside tester's F8 and F9): the
//! document of a row gone from the source without `--sync-deletes`, and — in a resume — those
//! of the rows before its checkpoint; `check`, the dry run and the run agree on the rows they
//! refuse.

mod common;

use std::collections::BTreeMap;

use common::World;
use common::standin::Aw;

const KEY: &str = "unique-rerun-key";

#[derive(Clone, Copy)]
enum Tgt<'a> {
    Mongo,
    Appwrite(&'a Aw),
}

impl Tgt<'_> {
    fn name(&self) -> &'static str {
        match self {
            Tgt::Mongo => "mongodb",
            Tgt::Appwrite(_) => "appwrite",
        }
    }

    /// `cutover SUB --target T ARGS…` against this target (Appwrite database `db`).
    async fn run(&self, w: &World, db: &str, sub: &str, args: &[&str]) -> std::process::Output {
        let mut all = vec![sub, "--target", self.name()];
        all.extend_from_slice(args);
        match self {
            Tgt::Appwrite(aw) => aw.cutover_in(w, db, &all).await,
            Tgt::Mongo => {
                let mut cmd = w.cutover();
                cmd.args(&all);
                tokio::task::spawn_blocking(move || cmd.output().unwrap())
                    .await
                    .unwrap()
            }
        }
    }

    /// The target's `code` of each document, by id (as text).
    async fn codes(&self, w: &World, db: &str, collection: &str) -> BTreeMap<String, String> {
        match self {
            Tgt::Appwrite(aw) => {
                aw.s.rows(db, collection)
                    .iter()
                    .map(|r| {
                        (
                            r["$id"].as_str().unwrap().to_string(),
                            r["code"].as_str().unwrap_or("<null>").to_string(),
                        )
                    })
                    .collect()
            }
            Tgt::Mongo => w
                .docs(collection)
                .await
                .iter()
                .map(|d| {
                    let id = match d.get("_id").unwrap() {
                        bson::Bson::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (id, d.get_str("code").unwrap_or("<null>").to_string())
                })
                .collect(),
        }
    }
}

struct Shape {
    name: &'static str,
    /// Creates and fills table `u` (its key `id`; a column `code`).
    create: &'static str,
    /// The source key of the mapping, and the id each row gets (as text) from its key.
    key: &'static str,
    /// The change between the runs.
    change: &'static str,
    /// Extra `migrate` options (`--sync-deletes`: the re-runs only).
    options: &'static [&'static str],
    /// Rows the re-run rejects (what `check` counts).
    rejected: u64,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "swap",
        create: "CREATE TABLE u (id int PRIMARY KEY, code text); \
                 INSERT INTO u VALUES (1,'a'),(2,'b'),(3,'c');",
        key: "[\"id\"]",
        change: "UPDATE u SET code = CASE id WHEN 1 THEN 'b' WHEN 2 THEN 'a' ELSE code END;",
        options: &[],
        rejected: 0,
    },
    Shape {
        name: "one_way",
        create: "CREATE TABLE u (id int PRIMARY KEY, code text); \
                 INSERT INTO u VALUES (1,'x'),(2,'b');",
        key: "[\"id\"]",
        change: "UPDATE u SET code = CASE id WHEN 1 THEN 'b' ELSE 'y' END;",
        options: &["--batch-size", "1"],
        rejected: 0,
    },
    Shape {
        name: "cycle",
        create: "CREATE TABLE u (id int PRIMARY KEY, code text); \
                 INSERT INTO u VALUES (1,'a'),(2,'b'),(3,'c');",
        key: "[\"id\"]",
        change: "UPDATE u SET code = CASE id WHEN 1 THEN 'b' WHEN 2 THEN 'c' ELSE 'a' END;",
        options: &["--batch-size", "1"],
        rejected: 0,
    },
    Shape {
        name: "shift",
        create: "CREATE TABLE u (id int PRIMARY KEY, code text); \
                 INSERT INTO u SELECT g, 'c' || g FROM generate_series(1, 20) g;",
        key: "[\"id\"]",
        change: "UPDATE u SET code = 'c' || (id % 20 + 1);",
        options: &["--batch-size", "3", "--concurrency", "4"],
        rejected: 0,
    },
    Shape {
        name: "text_key",
        create: "CREATE TABLE u (id text PRIMARY KEY, code text); \
                 INSERT INTO u VALUES ('k1','a'),('k2','b'),('k3','c');",
        key: "[\"id\"]",
        change: "UPDATE u SET code = CASE id WHEN 'k1' THEN 'c' WHEN 'k3' THEN 'a' ELSE code END;",
        options: &["--batch-size", "2"],
        rejected: 0,
    },
    Shape {
        name: "composite_key",
        create: "CREATE TABLE u (id int, part text, code text, PRIMARY KEY (id, part)); \
                 INSERT INTO u VALUES (1,'p','a'),(1,'q','b'),(2,'p','c');",
        key: "[\"id\", \"part\"]",
        change: "UPDATE u SET code = CASE code WHEN 'a' THEN 'b' WHEN 'b' THEN 'c' ELSE 'a' END;",
        options: &["--batch-size", "1"],
        rejected: 0,
    },
    // A new row takes the code of a row gone from the source: with --sync-deletes the gone
    // row's document is removed before the load (after it, the new row was refused).
    Shape {
        name: "gone_key",
        create: "CREATE TABLE u (id int PRIMARY KEY, code text); \
                 INSERT INTO u VALUES (1,'a'),(2,'b');",
        key: "[\"id\"]",
        change: "DELETE FROM u WHERE id = 1; INSERT INTO u VALUES (3, 'a');",
        options: &["--sync-deletes"],
        rejected: 0,
    },
    // Row 2 now repeats row 1's code (which row 1 keeps: it comes first), and row 3 takes row
    // 2's old one: row 2 alone is rejected, its older document removed.
    Shape {
        name: "repeat",
        create: "CREATE TABLE u (id int PRIMARY KEY, code text); \
                 INSERT INTO u VALUES (1,'a'),(2,'b'),(3,'c');",
        key: "[\"id\"]",
        change: "UPDATE u SET code = CASE id WHEN 2 THEN 'a' WHEN 3 THEN 'b' ELSE code END;",
        options: &[],
        rejected: 1,
    },
];

fn mapping(key: &str) -> String {
    format!(
        "version = 1\nname = \"u\"\n[source]\ntable = \"u\"\nkey = {key}\n\
         [[field]]\npath = \"code\"\ncolumn = \"code\"\n\
         [[index]]\nkeys = [\"code\"]\nunique = true\n"
    )
}

/// Codes by id, as [`Tgt::codes`] reads them.
fn codes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A world named after `name` whose table `u` is made by `create`, with the one-entity
/// pipeline of [`mapping`]`(key)`: the world, the pipeline's path and the Appwrite database.
async fn world(name: &str, create: &str, key: &str) -> (World, String, String) {
    let w = World::new(&format!("uqr_{name}")).await;
    w.sql(create).await;
    let pipeline = common::one_entity_pipeline(&w, "u", &mapping(key));
    let pipeline = pipeline.to_str().unwrap().to_string();
    (w, pipeline, format!("uqr_{name}"))
}

/// Runs `cutover SUB ARGS…`, asserting its exit code; its output.
async fn expect(t: Tgt<'_>, w: &World, db: &str, sub: &str, args: &[&str], code: i32) -> String {
    let out = t.run(w, db, sub, args).await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(code), "{sub} {args:?}: {text}");
    text
}

/// The latest report's single entity: read, written, rejected and skipped — balanced.
fn counts(w: &World) -> (u64, u64, u64, u64) {
    let report = w.latest_report();
    let e = &report["entities"][0];
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    let c = (n("read"), n("written"), n("rejected"), n("skipped"));
    assert_eq!(c.0, c.1 + c.2 + c.3, "{report}");
    c
}

async fn one_shape(t: Tgt<'_>, shape: &Shape) {
    let name = format!("{}_{}", shape.name, t.name());
    let (w, pipeline, db) = world(&name, shape.create, shape.key).await;
    let pipeline = pipeline.as_str();
    let mut migrate = vec!["--pipeline", pipeline, "--quiet"];
    migrate.extend_from_slice(shape.options);

    let first: Vec<&str> = migrate
        .iter()
        .copied()
        .filter(|a| *a != "--sync-deletes")
        .collect();
    expect(t, &w, &db, "migrate", &first, 0).await;
    w.sql(shape.change).await;

    // check judges the source: the rows the re-run will reject (with --sync-deletes when the
    // re-run has it: the records of rows gone keep their keys without it).
    let mut check = vec!["--json", "--full", "--pipeline", pipeline];
    if shape.options.contains(&"--sync-deletes") {
        check.push("--sync-deletes");
    }
    let out = t.run(&w, &db, "check", &check).await;
    let text = common::output_text(&out);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
    let predicted: u64 = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "reject")
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    // On both targets (MongoDB: the collection has the index from the first run).
    assert_eq!(predicted, shape.rejected, "{name}: {report}");
    // The rehearsal predicts them too.
    let mut dry = migrate.clone();
    dry.extend(["--rerun", "--dry-run"]);
    let code = if shape.rejected == 0 { 0 } else { 2 };
    let text = expect(t, &w, &db, "migrate", &dry, code).await;
    assert_eq!(counts(&w).2, shape.rejected, "{name} dry run: {text}");

    for round in 0..2 {
        let mut args = migrate.clone();
        args.push("--rerun");
        let code = if shape.rejected == 0 { 0 } else { 2 };
        let text = expect(t, &w, &db, "migrate", &args, code).await;
        let (read, written, rejected, _) = counts(&w);
        assert_eq!(read, w.pg_count("u").await, "{name}: {text}");
        assert_eq!(rejected, shape.rejected, "{name} round {round}: {text}");
        let report = w.latest_report();
        for (_, _, _, rule) in w.rejects(report["run_id"].as_str().unwrap()) {
            assert!(
                rule == "unique_index" || rule == "DuplicateKey",
                "{name}: {rule}"
            );
        }
        // The target holds each written row's current code, and no document of a rejected row.
        let held = t.codes(&w, &db, "u").await;
        assert_eq!(held.len() as u64, written, "{name} round {round}: {held:?}");
        let mut codes: Vec<&String> = held.values().collect();
        codes.sort();
        let mut source = w.query_strings("SELECT code FROM u ORDER BY code").await;
        if shape.rejected > 0 {
            // The repeated code is held once.
            source.dedup();
        }
        assert_eq!(
            codes,
            source.iter().collect::<Vec<_>>(),
            "{name} round {round}: {held:?}"
        );
    }

    expect(t, &w, &db, "verify", &["--pipeline", pipeline], 0).await;
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_moving_between_rows_are_rewritten_on_mongodb() {
    for shape in SHAPES {
        one_shape(Tgt::Mongo, shape).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_moving_between_rows_are_rewritten_on_appwrite() {
    let aw = Aw::start(KEY).await;
    for shape in SHAPES {
        one_shape(Tgt::Appwrite(&aw), shape).await;
    }
}

/// `--max-rejects` reached while the rows set aside are written again: their older documents are
/// gone already, so the rest are written all the same (the outside tester's adv21 F2: the stop
/// left them missing until a resume) and the stage stops after them; the report balances, and a
/// plain `migrate` after it ends as one run would.
async fn stopped_while_writing_again(t: Tgt<'_>) {
    let name = format!("stop_{}", t.name());
    let create = "CREATE TABLE u (id int PRIMARY KEY, code text); \
                  INSERT INTO u VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e');";
    let (w, pipeline, db) = world(&name, create, "[\"id\"]").await;
    let args = ["--pipeline", &pipeline, "--quiet", "--batch-size", "1"];
    expect(t, &w, &db, "migrate", &args, 0).await;
    // 1 and 2 swap, 4 and 5 swap, 3 repeats 2's new code (rejected: 2 comes first).
    w.sql(
        "UPDATE u SET code = CASE id WHEN 1 THEN 'b' WHEN 2 THEN 'a' WHEN 3 THEN 'a' \
         WHEN 4 THEN 'e' ELSE 'd' END;",
    )
    .await;
    let stopped: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--rerun", "--max-rejects", "0"])
        .collect();
    let out = t.run(&w, &db, "migrate", &stopped).await;
    assert!(
        !out.status.success(),
        "{name}: {}",
        common::output_text(&out)
    );
    let (read, written, rejected, _) = counts(&w);
    assert_eq!((read, written, rejected), (5, 4, 1), "{name}");
    let want = codes(&[("1", "b"), ("2", "a"), ("4", "e"), ("5", "d")]);
    assert_eq!(t.codes(&w, &db, "u").await, want, "{name}: the stopped run");

    let text = expect(t, &w, &db, "migrate", &args, 2).await;
    assert_eq!(t.codes(&w, &db, "u").await, want, "{name}: {text}");
    expect(t, &w, &db, "verify", &["--pipeline", &pipeline], 0).await;
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_writing_again_leaves_the_rows_to_the_resume_on_mongodb() {
    stopped_while_writing_again(Tgt::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_writing_again_leaves_the_rows_to_the_resume_on_appwrite() {
    let aw = Aw::start(KEY).await;
    stopped_while_writing_again(Tgt::Appwrite(&aw)).await;
}

/// An Appwrite parent with a child table whose parents swap codes: the refused parents' child
/// rows are taken away with them (a parent is written only with its children) and written again
/// with them at the stage's end — every child row is there after the re-run, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_appwrite_parents_keep_their_child_table_rows() {
    let aw = Aw::start(KEY).await;
    let t = Tgt::Appwrite(&aw);
    let w = World::new("uqr_children").await;
    w.sql(
        "CREATE TABLE u (id int PRIMARY KEY, code text); \
         CREATE TABLE kids (id int PRIMARY KEY, u_id int REFERENCES u, name text); \
         INSERT INTO u VALUES (1,'a'),(2,'b'),(3,'c'); \
         INSERT INTO kids VALUES (10,1,'x'),(20,2,'y'),(21,2,'z'),(30,3,'w');",
    )
    .await;
    let mapping = "version = 1\nname = \"u\"\n[source]\ntable = \"u\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"code\"\ncolumn = \"code\"\n\
         [[embed]]\npath = \"kids\"\ntable = \"kids\"\nforeign_key = \"u_id\"\norder_by = [\"id\"]\nappwrite = \"table\"\n\
         [[embed.field]]\npath = \"name\"\ncolumn = \"name\"\n\
         [[index]]\nkeys = [\"code\"]\nunique = true\n";
    let pipeline = common::one_entity_pipeline(&w, "u", mapping);
    let pipeline = pipeline.to_str().unwrap();
    let db = "uqr_children";
    let args = ["--pipeline", pipeline, "--quiet", "--batch-size", "2"];
    expect(t, &w, db, "migrate", &args, 0).await;
    w.sql(
        "UPDATE u SET code = CASE id WHEN 1 THEN 'b' WHEN 2 THEN 'a' ELSE code END; \
           UPDATE kids SET name = name || '2' WHERE id = 21;",
    )
    .await;
    let rerun: Vec<&str> = args.iter().copied().chain(["--rerun"]).collect();
    let text = expect(t, &w, db, "migrate", &rerun, 0).await;
    let (read, written, rejected, _) = counts(&w);
    assert_eq!((read, written, rejected), (3, 3, 0), "{text}");
    let held = t.codes(&w, db, "u").await;
    let want = codes(&[("1", "b"), ("2", "a"), ("3", "c")]);
    assert_eq!(held, want, "{text}");
    let child = aw.table_containing(db, "kids");
    let mut names: Vec<String> =
        aw.s.rows(db, &child)
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
    names.sort();
    assert_eq!(names, ["w", "x", "y", "z2"], "{text}");
    expect(t, &w, db, "verify", &["--pipeline", pipeline], 0).await;
    w.drop().await;
}

/// The reviewer's case: row 1 takes row 3's code while row 3 keeps it. Row 1 meets row 3's
/// document (which will keep the code) and is set aside; row 3, written meanwhile, must not keep
/// the code ahead of it: `check` (and a run into an empty table) keeps the first in key order —
/// row 1 — and rejects row 3. In one batch and across batches, on both targets (cutover forms
/// the keys beforehand; MongoDB's re-run writes in key order once the index exists), as `check`
/// and the dry run say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_contested_by_a_later_row_goes_to_the_first_in_key_order() {
    let aw = Aw::start(KEY).await;
    for (t, batch) in [
        (Tgt::Appwrite(&aw), "1"),
        (Tgt::Appwrite(&aw), "10"),
        (Tgt::Mongo, "1"),
        (Tgt::Mongo, "10"),
    ] {
        let name = format!("contested_{}_{batch}", t.name());
        let create = "CREATE TABLE u (id int PRIMARY KEY, code text); \
                      INSERT INTO u VALUES (1,'b'),(2,'x'),(3,'c'),(4,'d');";
        let (w, pipeline, db) = world(&name, create, "[\"id\"]").await;
        let args = ["--pipeline", &pipeline, "--quiet", "--batch-size", batch];
        expect(t, &w, &db, "migrate", &args, 0).await;
        w.sql("UPDATE u SET code = 'c' WHERE id = 1;").await;
        let out = t
            .run(
                &w,
                &db,
                "check",
                &["--json", "--full", "--pipeline", &pipeline],
            )
            .await;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}: {}", common::output_text(&out)));
        let said: Vec<(&str, u64)> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["severity"] == "reject")
            .map(|f| {
                (
                    f["example_key"].as_str().unwrap(),
                    f["rows"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(said, [("3", 1)], "{name}: {report}");
        let rerun: Vec<&str> = args.iter().copied().chain(["--rerun"]).collect();
        let dry: Vec<&str> = rerun.iter().copied().chain(["--dry-run"]).collect();
        let text = expect(t, &w, &db, "migrate", &dry, 2).await;
        let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
        let keys: Vec<String> = w.rejects(&run_id).into_iter().map(|r| r.1).collect();
        assert_eq!(keys, ["3"], "{name} dry run: {text}");
        let text = expect(t, &w, &db, "migrate", &rerun, 2).await;
        let (_, written, rejected, _) = counts(&w);
        assert_eq!((written, rejected), (3, 1), "{name}: {text}");
        let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
        let keys: Vec<String> = w.rejects(&run_id).into_iter().map(|r| r.1).collect();
        assert_eq!(keys, ["3"], "{name}: {text}");
        let held = t.codes(&w, &db, "u").await;
        let want = codes(&[("1", "c"), ("2", "x"), ("4", "d")]);
        assert_eq!(held, want, "{name}: {text}");
        expect(t, &w, &db, "verify", &["--pipeline", &pipeline], 0).await;
        if matches!(t, Tgt::Mongo) {
            // One stray document beside the row the target refused (excused): the count line
            // says the listed documents account for it (adv25 F4: it subtracted no refusal).
            w.mongo()
                .await
                .collection::<bson::Document>("u")
                .insert_one(bson::doc! { "_id": 99, "code": "stray" })
                .await
                .unwrap();
            let text = expect(t, &w, &db, "verify", &["--pipeline", &pipeline], 2).await;
            assert!(
                text.contains("(the missing and unexpected documents above)"),
                "{name}: {text}"
            );
        }
        w.drop().await;
    }
}

/// The reader stops early (`--max-rejects` reached by the mapping's own rejects) while rows are
/// set aside: a row set aside may wait for a row the reader never sent, whose older document
/// holds its key (the outside tester's adv21 F6: such a valid row was rejected as a duplicate
/// and its document removed). They are left for the resume — counted skipped — which ends as
/// one run would: every key moved, only the mapping's rejects.
async fn reader_stopped(t: Tgt<'_>) {
    let name = format!("reader_stop_{}", t.name());
    let create = "CREATE TABLE u (id int PRIMARY KEY, code text, name text); \
                  INSERT INTO u SELECT g, 'c' || g, 'n' FROM generate_series(1, 200) g;";
    let (w, _, db) = world(&name, create, "[\"id\"]").await;
    let mapping = format!(
        "{}[[field]]\npath = \"name\"\ncolumn = \"name\"\nvalidate = {{ required = true }}\n",
        mapping("[\"id\"]")
    );
    let pipeline = common::one_entity_pipeline(&w, "u", &mapping);
    let pipeline = pipeline.to_str().unwrap();
    let args = ["--pipeline", pipeline, "--quiet", "--batch-size", "10"];
    expect(t, &w, &db, "migrate", &args, 0).await;
    w.sql(
        "UPDATE u SET code = 'c' || (CASE WHEN id = 200 THEN 1 ELSE id + 1 END); \
         UPDATE u SET name = NULL WHERE id IN (120, 130, 140, 150);",
    )
    .await;
    let stopped: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--rerun", "--max-rejects", "2"])
        .collect();
    let out = t.run(&w, &db, "migrate", &stopped).await;
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{name}: {text}");
    counts(&w);
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    for (_, key, _, rule) in w.rejects(&run_id) {
        assert_eq!(rule, "required", "{name}: row {key} rejected: {text}");
    }
    let text = expect(t, &w, &db, "migrate", &args, 2).await;
    let (read, written, rejected, _) = counts(&w);
    assert_eq!(rejected, 4, "{name}: {text}");
    assert!(read >= written, "{name}");
    let held = t.codes(&w, &db, "u").await;
    assert_eq!(held.len(), 196, "{name}: {text}");
    for (id, code) in &held {
        let id: u32 = id.parse().unwrap();
        assert_eq!(
            *code,
            format!("c{}", if id == 200 { 1 } else { id + 1 }),
            "{name}"
        );
    }
    expect(t, &w, &db, "verify", &["--pipeline", pipeline], 0).await;
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_stopping_early_leaves_the_rows_set_aside_to_the_resume_on_mongodb() {
    reader_stopped(Tgt::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_stopping_early_leaves_the_rows_set_aside_to_the_resume_on_appwrite() {
    let aw = Aw::start(KEY).await;
    reader_stopped(Tgt::Appwrite(&aw)).await;
}

/// `check --json --full ARGS…`: the rows it says the run rejects, and its report.
async fn predicted(
    t: Tgt<'_>,
    w: &World,
    db: &str,
    pipeline: &str,
    extra: &[&str],
) -> (u64, serde_json::Value) {
    let mut args = vec!["--json", "--full", "--pipeline", pipeline];
    args.extend_from_slice(extra);
    let out = t.run(w, db, "check", &args).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", common::output_text(&out)));
    let n = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "reject")
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    (n, report)
}

/// The latest run's rejected row keys, each with its rule (sorted).
fn rejected_rows(w: &World) -> Vec<(String, String)> {
    let report = w.latest_report();
    let mut rows: Vec<(String, String)> = w
        .rejects(report["run_id"].as_str().unwrap())
        .into_iter()
        .map(|(_, key, _, rule)| (key, rule))
        .collect();
    rows.sort();
    rows
}

/// The rule of a row the target refuses for a unique key another record holds.
fn unique_rule(t: Tgt<'_>) -> &'static str {
    match t {
        Tgt::Mongo => "DuplicateKey",
        Tgt::Appwrite(_) => "unique_index",
    }
}

/// The outside tester's F8: a re-run without `--sync-deletes` keeps the document of a row gone
/// from the source, and with it its unique key: a new row taking that key is refused by the
/// target (E11000; Appwrite's 409). `check`, the dry run and the run said so alike only for keys
/// the rows read hold; now the kept document is a holder too, named. With `--sync-deletes` the
/// gone row's document goes before the load and the new row is written, as all three say.
async fn gone_row_keeps_its_key(t: Tgt<'_>) {
    let name = format!("gone_holder_{}", t.name());
    let create = "CREATE TABLE u (id int PRIMARY KEY, code text, v int); \
                  INSERT INTO u SELECT g, 'c' || g, g FROM generate_series(1, 300) g;";
    let (w, pipeline, db) = world(&name, create, "[\"id\"]").await;
    let args = ["--pipeline", pipeline.as_str(), "--quiet"];
    expect(t, &w, &db, "migrate", &args, 0).await;
    w.sql("DELETE FROM u WHERE id = 300; INSERT INTO u VALUES (301, 'c300', 301);")
        .await;
    let rule = unique_rule(t).to_string();
    for sync in [false, true] {
        let extra: &[&str] = if sync { &["--sync-deletes"] } else { &[] };
        let name = format!("{name} sync={sync}");
        let (n, report) = predicted(t, &w, &db, &pipeline, extra).await;
        let want: Vec<(String, String)> = if sync {
            Vec::new()
        } else {
            vec![("301".to_string(), rule.clone())]
        };
        assert_eq!(n, want.len() as u64, "{name}: {report}");
        if !sync {
            let f = report["findings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["severity"] == "reject")
                .unwrap();
            assert_eq!(f["rule"], rule.as_str(), "{name}: {f}");
            assert_eq!(f["example_key"], "301", "{name}: {f}");
            let said = f["example"].as_str().unwrap();
            assert!(
                said.contains("300") && said.contains("gone from the source"),
                "{name}: {said}"
            );
        }
        let code = if sync { 0 } else { 2 };
        let rerun: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--rerun"])
            .chain(extra.iter().copied())
            .collect();
        let dry: Vec<&str> = rerun.iter().copied().chain(["--dry-run"]).collect();
        let text = expect(t, &w, &db, "migrate", &dry, code).await;
        let (read, _, rejected, _) = counts(&w);
        assert_eq!((read, rejected), (300, n), "{name} dry run: {text}");
        assert_eq!(rejected_rows(&w), want, "{name} dry run: {text}");
        let text = expect(t, &w, &db, "migrate", &rerun, code).await;
        let (read, written, rejected, _) = counts(&w);
        assert_eq!(
            (read, written, rejected),
            (300, 300 - n, n),
            "{name}: {text}"
        );
        assert_eq!(rejected_rows(&w), want, "{name}: {text}");
        let held = t.codes(&w, &db, "u").await;
        if sync {
            // 300's document went first; 301 holds its code.
            assert_eq!(held.len(), 300, "{name}");
            assert_eq!(held.get("301").map(String::as_str), Some("c300"), "{name}");
            assert!(!held.contains_key("300"), "{name}");
        } else {
            // The gone row's document is there still, holding the key.
            assert_eq!(held.len(), 300, "{name}");
            assert_eq!(held.get("300").map(String::as_str), Some("c300"), "{name}");
            assert!(!held.contains_key("301"), "{name}");
        }
    }
    expect(t, &w, &db, "verify", &["--pipeline", &pipeline], 0).await;
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_gone_rows_document_is_predicted_on_mongodb() {
    gone_row_keeps_its_key(Tgt::Mongo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_gone_rows_document_is_predicted_on_appwrite() {
    let aw = Aw::start(KEY).await;
    gone_row_keeps_its_key(Tgt::Appwrite(&aw)).await;
}

/// The newest step of `entity` in the ledger of `t` (database `db` on Appwrite).
async fn latest_step(t: Tgt<'_>, w: &World, db: &str, entity: &str) -> Option<bson::Document> {
    match t {
        Tgt::Mongo => common::process::latest_step(w, entity).await,
        Tgt::Appwrite(aw) => {
            let mut steps: Vec<bson::Document> =
                aw.s.rows(db, "cutover_steps")
                    .iter()
                    .filter_map(|r| {
                        let v: serde_json::Value = serde_json::from_str(r["doc"].as_str()?).ok()?;
                        match bson::Bson::try_from(v).ok()? {
                            bson::Bson::Document(d) => Some(d),
                            _ => None,
                        }
                    })
                    .filter(|d| d.get_str("entity") == Ok(entity))
                    .collect();
            steps.sort_by_key(|d| {
                d.get_datetime("started_at")
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(0)
            });
            steps.pop()
        }
    }
}

/// `cutover migrate --target T ARGS…` as a child process, killed with SIGKILL once its step of
/// `u` has a checkpoint of at least `rows` (and before it ends); the checkpoint seen.
async fn killed_at_checkpoint(t: Tgt<'_>, w: &World, db: &str, args: &[&str], rows: i64) -> i64 {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("cutover"));
    cmd.current_dir(w.dir.path())
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .env("MONGODB_URI", common::mongo_uri())
        .env("CUTOVER_MONGODB_DATABASE", &w.mongo_db)
        .args(["migrate", "--target", t.name()])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Tgt::Appwrite(aw) = t {
        cmd.envs(aw.vars(db));
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(step) = latest_step(t, w, db, "u").await {
            let at = match step.get("checkpoint_rows") {
                Some(bson::Bson::Int32(n)) => i64::from(*n),
                Some(bson::Bson::Int64(n)) => *n,
                _ => 0,
            };
            if step.get_str("status") == Ok("running") && at >= rows {
                child.kill().unwrap();
                child.wait().unwrap();
                return at;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before a checkpoint at {rows} rows");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint at {rows} in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The outside tester's F9: a re-run killed past its first checkpoint, then the dry run of its
/// resume. Rows after the checkpoint repeat the keys of rows before it, whose documents (the
/// killed run's) hold them: the resume rejects those rows, and its dry run — which reads only
/// the rows after the checkpoint — now counts them too (it took only the rows it reads for
/// holders). Its report is the resume's: read, written, rejected (balanced), the same rows.
async fn resumed_dry_run(t: Tgt<'_>, rows: u32, batch: &str) {
    let name = format!("resume_{}", t.name());
    let create = format!(
        "CREATE TABLE u (id int PRIMARY KEY, code text); \
         INSERT INTO u SELECT g, 'c' || g FROM generate_series(1, {rows}) g;"
    );
    let (w, pipeline, db) = world(&name, &create, "[\"id\"]").await;
    let args = [
        "--pipeline",
        pipeline.as_str(),
        "--quiet",
        "--batch-size",
        batch,
    ];
    expect(t, &w, &db, "migrate", &args, 0).await;
    // The last two rows take the codes of the first two (which keep them).
    w.sql(&format!(
        "UPDATE u SET code = 'c1' WHERE id = {rows}; UPDATE u SET code = 'c2' WHERE id = {};",
        rows - 1
    ))
    .await;
    let rerun: Vec<&str> = args.iter().copied().chain(["--rerun"]).collect();
    if let Tgt::Appwrite(aw) = t {
        // Slow writes: the kill lands well before the last rows.
        aw.s.set_table_faults(
            "u",
            appwrite_standin::Faults {
                delay_ms: 20,
                ..Default::default()
            },
        );
    }
    let at = killed_at_checkpoint(t, &w, &db, &rerun, 2 * batch.parse::<i64>().unwrap()).await;
    if let Tgt::Appwrite(aw) = t {
        aw.s.set_table_faults("u", appwrite_standin::Faults::default());
    }
    assert!(at < i64::from(rows) - 2, "{name}: killed too late ({at})");
    let want = vec![
        ((rows - 1).to_string(), unique_rule(t).to_string()),
        (rows.to_string(), unique_rule(t).to_string()),
    ];
    // check judges the whole re-run: the same rows.
    let (n, report) = predicted(t, &w, &db, &pipeline, &[]).await;
    assert_eq!(n, 2, "{name}: {report}");
    let dry: Vec<&str> = rerun.iter().copied().chain(["--dry-run"]).collect();
    let text = expect(t, &w, &db, "migrate", &dry, 2).await;
    let report = w.latest_report();
    assert!(
        report["entities"][0]["resumed_from"].is_string(),
        "{name}: not a resume: {report}"
    );
    let rehearsed = counts(&w);
    let rehearsed_rows = rejected_rows(&w);
    assert_eq!(rehearsed_rows, want, "{name} dry run: {text}");
    let text = expect(t, &w, &db, "migrate", &rerun, 2).await;
    let ran = counts(&w);
    assert_eq!(rehearsed, ran, "{name}: the dry run and the resume: {text}");
    assert_eq!(rejected_rows(&w), want, "{name}: {text}");
    let held = t.codes(&w, &db, "u").await;
    assert_eq!(held.len() as u32, rows - 2, "{name}");
    expect(t, &w, &db, "verify", &["--pipeline", &pipeline], 0).await;
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_dry_run_counts_keys_held_before_the_checkpoint_on_mongodb() {
    resumed_dry_run(Tgt::Mongo, 30000, "100").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_dry_run_counts_keys_held_before_the_checkpoint_on_appwrite() {
    let aw = Aw::start(KEY).await;
    resumed_dry_run(Tgt::Appwrite(&aw), 3000, "50").await;
}
