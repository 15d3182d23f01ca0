//! `cutover verify` against the real servers: a clean migration verifies; a deleted, a changed and
//! a stray document are named exactly; dangling references are found.

mod common;

use bson::{Document, doc};
use common::World;

fn verify(w: &World, args: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let out_path = w.dir.path().join("verify.json");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .arg("-o")
        .arg(&out_path)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_str(
        &std::fs::read_to_string(&out_path).unwrap_or_else(|_| panic!("{text}")),
    )
    .unwrap();
    (out.status.code(), text, json)
}

#[tokio::test]
async fn verify_passes_after_a_clean_run_and_names_exactly_what_differs() {
    let w = World::new("verify").await;
    w.load_registry(120);
    assert_eq!(w.migrate(&[]).status.code(), Some(2));
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(json["ok"], true);
    let p = json["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == "patients")
        .unwrap();
    let guardians = w.pg_count("guardians").await;
    assert_eq!(p["embedded"][0]["path"], "guardians");
    assert_eq!(p["embedded"][0]["source_children"], guardians);
    assert_eq!(p["embedded"][0]["target_elements"], guardians);
    for e in json["entities"].as_array().unwrap() {
        assert_eq!(e["ok"], true, "{e}");
        assert!(
            text.contains(&format!("{:<24} full", e["entity"].as_str().unwrap())),
            "{text}"
        );
    }

    let db = w.mongo().await;
    let patients = db.collection::<Document>("patients");
    let all = w.docs("patients").await;
    let (gone, changed) = (&all[3], &all[7]);
    patients
        .delete_one(doc! { "_id": gone.get("_id").unwrap().clone() })
        .await
        .unwrap();
    patients
        .update_one(
            doc! { "_id": changed.get("_id").unwrap().clone() },
            doc! { "$set": { "contactInfo.address.city": "Nowhere" } },
        )
        .await
        .unwrap();
    patients
        .insert_one(doc! { "_id": "stray-doc", "firstName": "Nobody" })
        .await
        .unwrap();

    let (code, text, json) = verify(&w, &["patients", "immunizations"]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(json["ok"], false);
    let p = &json["entities"][0];
    assert_eq!(
        p["missing"],
        serde_json::json!([gone.get_str("patientId").unwrap()]),
        "{p}"
    );
    assert_eq!(p["unexpected"], serde_json::json!(["stray-doc"]));
    assert_eq!(p["different"].as_array().unwrap().len(), 1);
    assert_eq!(
        p["different"][0]["key"],
        changed.get_str("patientId").unwrap()
    );
    assert_eq!(
        p["different"][0]["fields"],
        serde_json::json!(["contactInfo.address.city"])
    );
    assert!(text.contains("contactInfo.address.city"), "{text}");
    // The deleted patient's immunizations now point nowhere.
    let i = &json["entities"][1];
    let broken = i["broken_references"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "{i}");
    assert_eq!(broken[0]["path"], "patientId");
    assert_eq!(broken[0]["examples"][0], gone.get_str("patientId").unwrap());

    // One more stray document: the counts differ, and the line gives the cause (the listed
    // documents), not documents sharing an _id.
    patients
        .insert_one(doc! { "_id": "stray-doc-2", "firstName": "Nobody" })
        .await
        .unwrap();
    let (_, text, _) = verify(&w, &["patients"]);
    assert!(
        text.contains("in the target (the missing and unexpected documents above)")
            && !text.contains("account for"),
        "{text}"
    );

    // A sample says it sampled, and fails on the counts whatever documents it compares
    // (adv39 F1: a document more or fewer passed a sample, `counts_agree: true`).
    let (code, text, json) = verify(&w, &["patients", "--sample", "5"]);
    assert!(
        json["entities"][0]["mode"]
            .as_str()
            .unwrap()
            .starts_with("sample"),
        "{text}"
    );
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(json["entities"][0]["counts_agree"], false, "{text}");
    assert!(text.contains("`verify --full` names the others"), "{text}");
    // Counts agree again (the stray documents gone, the deleted one back), but one value
    // differs: a sample that misses it passes, the counts hold.
    patients
        .delete_many(doc! { "_id": { "$in": ["stray-doc", "stray-doc-2"] } })
        .await
        .unwrap();
    patients.insert_one(gone.clone()).await.unwrap();
    let (_, text, json) = verify(&w, &["patients", "--sample", "5"]);
    assert_eq!(json["entities"][0]["counts_agree"], true, "{text}");
    w.drop().await;
}

const ITEMS_MAPPING: &str = r#"
version = 1
name = "items"
[source]
table = "items"
key = ["id"]
[id]
strategy = "uuid5"
uuid = "binary"
[[field]]
path = "n"
column = "id"
[[field]]
path = "label"
column = "label"
"#;

const ITEMS_PIPELINE: &str = r#"
version = 1
name = "items"
mappings_dir = "mappings"
[[stage]]
name = "all"
entities = ["items"]
"#;

/// Issue #10: on a table of 200k rows with uuid5 ids (whose order is not the key order), verify
/// counts 150k missing documents exactly but holds and prints only the first ones (every one is in
/// the problems file), and `--sync-deletes` removes exactly 100k stray documents.
#[tokio::test]
async fn verify_and_sync_deletes_hold_a_bounded_number_of_ids_on_a_large_table() {
    let w = World::new("verify_bounded").await;
    w.sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 200000) g;",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/items.toml"), ITEMS_MAPPING).unwrap();
    std::fs::write(dir.join("pipeline.toml"), ITEMS_PIPELINE).unwrap();
    let pipeline = dir.join("pipeline.toml");
    let out = w.migrate_with(&pipeline, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.count("items").await, 200_000);

    let items = w.mongo().await.collection::<Document>("items");
    items
        .delete_many(doc! { "n": { "$gt": 50_000 } })
        .await
        .unwrap();
    let out_path = dir.join("verify.json");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .arg("-o")
        .arg(&out_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    let e = &json["entities"][0];
    assert_eq!(e["missing_count"], 150_000, "{text}");
    assert_eq!(
        e["missing"].as_array().unwrap().len(),
        cutover::verify::KEPT,
        "the JSON holds the first ones"
    );
    assert_eq!(e["unexpected_count"], 0);
    assert_eq!(e["compared"], 50_000);
    let line = text
        .lines()
        .find(|l| l.contains("missing in the target"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("(150000)"), "{line}");
    assert_eq!(
        line.matches(", ").count() + 1,
        cutover::verify::SHOWN,
        "{line}"
    );
    assert!(line.ends_with("… and 149980 more"), "{line}");
    let side = dir.join("verify.problems.jsonl");
    assert_eq!(json["problems_file"], side.display().to_string());
    assert!(text.contains(&side.display().to_string()), "{text}");
    let mut keys = std::collections::HashSet::new();
    for l in std::fs::read_to_string(&side).unwrap().lines() {
        let p: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(p["kind"], "missing", "{l}");
        assert_eq!(p["entity"], "items");
        keys.insert(p["key"].as_str().unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(keys.len(), 150_000);
    assert!(keys.iter().all(|k| (50_001..=200_000).contains(k)));

    // 100k source rows go, and 100k stray documents appear: the rerun restores the 50k missing
    // documents that still have a source row and deletes exactly the strays.
    w.sql("DELETE FROM items WHERE id > 100000").await;
    let strays: Vec<Document> = (0..100_000)
        .map(|i| doc! { "_id": format!("stray-{i}"), "n": -1 })
        .collect();
    items.insert_many(strays).await.unwrap();
    let out = w.migrate_with(&pipeline, &["--rerun", "--sync-deletes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = w.latest_report();
    assert_eq!(report["entities"][0]["deleted"], 100_000, "{report}");
    assert_eq!(w.count("items").await, 100_000);
    assert_eq!(items.count_documents(doc! { "n": -1 }).await.unwrap(), 0);
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .arg("-o")
        .arg(&out_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!side.exists(), "no problem, no problems file");
    w.drop().await;
}

/// Issue #11: a document MongoDB refused when the run wrote it (here a collection validator: a
/// write-stage reject in the run's rejects file) is excused by verify — exactly that key, named
/// with the count — while a document missing for another reason still fails it.
#[tokio::test]
async fn verify_excuses_exactly_the_documents_mongodb_refused() {
    let w = World::new("verify_refused").await;
    w.sql(
        "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO items SELECT i, CASE WHEN i IN (4, 9) THEN 'bad ' ELSE 'item ' END || i
         FROM generate_series(1, 12) i;",
    )
    .await;
    w.mongo()
        .await
        .create_collection("items")
        .validator(doc! { "label": { "$not": { "$regex": "^bad" } } })
        .await
        .unwrap();
    let pipeline = common::one_entity_pipeline(
        &w,
        "items",
        "version = 1\nname = \"items\"\n[source]\ntable = \"items\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"label\"\ncolumn = \"label\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    assert_eq!(w.count("items").await, 10);
    let out_path = w.dir.path().join("verify.json");
    let verify = || {
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        (
            out.status.code(),
            common::output_text(&out),
            json["entities"][0].clone(),
        )
    };
    let (code, text, e) = verify();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(e["rejected_by_target"], 2, "{e}");
    assert_eq!(e["rejected_by_target_keys"], serde_json::json!(["4", "9"]));
    assert!(
        text.contains("rejects of the run, excused; source key) (2): 4, 9"),
        "{text}"
    );

    w.mongo()
        .await
        .collection::<Document>("items")
        .delete_one(doc! { "_id": 7 })
        .await
        .unwrap();
    let (code, text, e) = verify();
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(e["missing"], serde_json::json!(["7"]), "{e}");
    assert_eq!(e["rejected_by_target"], 2, "{e}");

    // Row 9 is fixed in the source since the run: the document the server refused is not the one
    // the source maps to now, so its absence is no longer excused (a re-run would write it).
    w.sql("UPDATE items SET label = 'item 9' WHERE id = 9")
        .await;
    let (code, text, e) = verify();
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(e["missing"], serde_json::json!(["7", "9"]), "{e}");
    assert_eq!(
        e["rejected_by_target_keys"],
        serde_json::json!(["4"]),
        "{e}"
    );
    w.drop().await;
}

/// A composite key whose parts hold the separator: `x|y` + `z` (refused by the server) and `x` +
/// `y|z` (written) were both named `x|y|z`, so verify excused the second when it went missing.
#[tokio::test]
async fn verify_does_not_excuse_a_missing_document_whose_key_reads_like_a_refused_one() {
    let w = World::new("verify_refused_composite").await;
    w.sql(
        r"CREATE TABLE kv (a text, b text, label text NOT NULL, PRIMARY KEY (a, b));
         INSERT INTO kv VALUES ('x|y', 'z', 'bad'), ('x', 'y|z', 'good'), ('m', 'n', 'good'),
           ('x\', '|z', 'good');",
    )
    .await;
    w.mongo()
        .await
        .create_collection("kv")
        .validator(doc! { "label": { "$ne": "bad" } })
        .await
        .unwrap();
    let pipeline = common::one_entity_pipeline(
        &w,
        "kv",
        "version = 1\nname = \"kv\"\n[source]\ntable = \"kv\"\nkey = [\"a\", \"b\"]\n\
         [[field]]\npath = \"label\"\ncolumn = \"label\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let keys: Vec<String> = w.rejects(&run_id).into_iter().map(|r| r.1).collect();
    assert_eq!(keys, [r"x\|y|z"]);
    assert_eq!(w.count("kv").await, 3);
    let out_path = w.dir.path().join("verify.json");
    let verify = || {
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        (
            out.status.code(),
            common::output_text(&out),
            json["entities"][0].clone(),
        )
    };
    let (code, text, e) = verify();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(e["rejected_by_target_keys"], serde_json::json!([r"x\|y|z"]));

    let deleted = w
        .mongo()
        .await
        .collection::<Document>("kv")
        .delete_one(doc! { "_id": { "a": "x", "b": "y|z" } })
        .await
        .unwrap();
    assert_eq!(deleted.deleted_count, 1);
    let (code, text, e) = verify();
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(e["missing"], serde_json::json!([r"x|y\|z"]), "{e}");
    assert_eq!(e["rejected_by_target"], 1, "{e}");
    w.drop().await;
}

/// Issue #11: the children embedded in a document MongoDB refused are not expected in the target
/// either — verify used to fail a right target with "embedded tags: 4 child rows in the source,
/// 2 elements in the target" and no problem named. Checked under both merges: key-ordered ids
/// (integer key) and the external sort (text key).
#[tokio::test]
async fn verify_expects_no_children_of_a_parent_mongodb_refused() {
    for (test, key_type) in [
        ("verify_refused_children", "int"),
        ("verify_refused_children_text", "text"),
    ] {
        let w = World::new(test).await;
        w.sql(&format!(
            "CREATE TABLE items (id {key_type} PRIMARY KEY, label text NOT NULL);
             CREATE TABLE tags (id int PRIMARY KEY, item_id {key_type}, tag text);
             INSERT INTO items VALUES ('1', 'item 1'), ('2', 'bad 2'), ('3', 'item 3');
             INSERT INTO tags VALUES (1, '1', 'a'), (2, '2', 'b'), (3, '2', 'c'), (4, '3', 'd');"
        ))
        .await;
        w.mongo()
            .await
            .create_collection("items")
            .validator(doc! { "label": { "$not": { "$regex": "^bad" } } })
            .await
            .unwrap();
        let pipeline = common::one_entity_pipeline(
            &w,
            "items",
            "version = 1\nname = \"items\"\n[source]\ntable = \"items\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"label\"\ncolumn = \"label\"\n\
             [[embed]]\npath = \"tags\"\ntable = \"tags\"\nforeign_key = \"item_id\"\n\
             order_by = [\"id\"]\n[[embed.field]]\npath = \"tag\"\ncolumn = \"tag\"\n",
        );
        let out = w.migrate_with(&pipeline, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
        assert_eq!(w.count("items").await, 2);
        let out_path = w.dir.path().join("verify.json");
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{key_type}: {text}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        let e = &json["entities"][0];
        assert_eq!(
            e["rejected_by_target_keys"],
            serde_json::json!(["2"]),
            "{e}"
        );
        assert_eq!(
            e["embedded"],
            serde_json::json!([{
                "path": "tags",
                "source_children": 2,
                "target_elements": 2,
                "orphan_children": 0,
                "child_source": "tags",
                "parent_source": "items",
            }]),
            "{e}"
        );
        // adv43 F6: a sample excuses the refused row too (the 2nd row is in no sample of every
        // 2nd or 3rd row).
        for n in ["1", "2"] {
            let out = w
                .cutover()
                .args(["verify", "--sample", n, "--pipeline"])
                .arg(&pipeline)
                .output()
                .unwrap();
            let text = common::output_text(&out);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{key_type} --sample {n}: {text}"
            );
        }
        w.drop().await;
    }
}

/// adv43 F7: a sample starts at a row drawn each time, so verify run again looks at other rows
/// (a fixed stride skipped the same changed document every time), and a passing sample says
/// what it proved: the rows compared and the counts.
#[tokio::test]
async fn a_sample_run_again_looks_at_other_rows_and_says_it_sampled() {
    let w = World::new("verify_sample_offset").await;
    w.sql(
        "CREATE TABLE s (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO s SELECT g, 'row ' || g FROM generate_series(1, 10) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "s",
        "version = 1\nname = \"s\"\n[source]\ntable = \"s\"\nkey = [\"id\"]\n[[field]]\npath = \"label\"\ncolumn = \"label\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.mongo()
        .await
        .collection::<bson::Document>("s")
        .update_one(doc! { "_id": 4 }, doc! { "$set": { "label": "changed" } })
        .await
        .unwrap();
    // Every 2nd row: each run misses the changed one with odds 1/2 at most.
    let (mut caught, mut passed) = (0, 0);
    for _ in 0..30 {
        let out = w
            .cutover()
            .args(["verify", "--sample", "5", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        match out.status.code() {
            Some(2) => caught += 1,
            Some(0) => {
                passed += 1;
                assert!(
                    text.contains("in the rows compared and in its counts (s compared by a sample"),
                    "{text}"
                );
            }
            other => panic!("{other:?}: {text}"),
        }
    }
    assert!(caught > 0 && passed > 0, "caught {caught}, passed {passed}");
    w.drop().await;
}

/// adv44 F3: a row mongod refused for a key a unique index held in another document is excused
/// while that holds; once no other document holds the key (a delta rewrote the holder, and no
/// run wrote the refused row again), its absence is a loss, and verify says so.
#[tokio::test]
async fn a_refused_row_is_excused_only_while_another_document_holds_its_key() {
    let w = World::new("verify_unique_excuse").await;
    w.sql(
        "CREATE TABLE acct (id int PRIMARY KEY, email text NOT NULL);
         INSERT INTO acct VALUES (1, 'a@x'), (4, 'e4@x'), (5, 'e4@x'), (6, 'f@x');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "acct",
        "version = 1\nname = \"acct\"\n[source]\ntable = \"acct\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"email\"\ncolumn = \"email\"\n\
         [[index]]\nkeys = [\"email\"]\nunique = true\n",
    );
    // The index there before the load (a re-run's): mongod refuses row 5 as it writes it.
    w.mongo()
        .await
        .run_command(doc! { "createIndexes": "acct", "indexes": [{ "key": { "email": 1 }, "name": "email_1", "unique": true }] })
        .await
        .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    assert_eq!(w.count("acct").await, 3);
    let verify = || {
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        (out.status.code(), common::output_text(&out))
    };
    let (code, text) = verify();
    assert_eq!(code, Some(0), "{text}");
    // Row 4 changes its email in the source and in the target (as a delta run writes it); row
    // 5 is not written again.
    w.sql("UPDATE acct SET email = 'e4new@x' WHERE id = 4")
        .await;
    w.mongo()
        .await
        .collection::<Document>("acct")
        .update_one(doc! { "_id": 4 }, doc! { "$set": { "email": "e4new@x" } })
        .await
        .unwrap();
    let (code, text) = verify();
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("missing"), "{text}");
    w.drop().await;
}
