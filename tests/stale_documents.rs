//! A row an earlier run wrote and that the mapping rejects now (its value changed): a re-run or a
//! delta run removes its older document, so that the target holds what a fresh run would — the
//! run's written count is what the target has, and `verify` passes. Shapes: a plain key, a
//! composite key with a uuid5 id, an embedded parent; `--rerun` and `--since-last`.

mod common;

use common::World;

const SCHEMA: &str = r#"
CREATE TABLE people (id int PRIMARY KEY, email text NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO people (id, email) SELECT g, 'p' || g || '@example.org' FROM generate_series(1, 300) g;
CREATE TABLE pets (person_id int NOT NULL, n int NOT NULL, name text NOT NULL, PRIMARY KEY (person_id, n));
INSERT INTO pets SELECT g, 1, 'pet ' || g FROM generate_series(1, 300) g;
CREATE TABLE slots (region text NOT NULL, seq int NOT NULL, label text NOT NULL,
                    at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (region, seq));
INSERT INTO slots (region, seq, label) SELECT r, s, r || s FROM unnest(ARRAY['eu', 'us']) r, generate_series(1, 100) s;
"#;

const PEOPLE: &str = r#"
version = 1
name = "people"
[source]
table = "people"
key = ["id"]
updated_at = "at"
[[field]]
path = "email"
column = "email"
validate = { email = true }
[[embed]]
path = "pets"
table = "pets"
foreign_key = "person_id"
order_by = ["n"]
[[embed.field]]
path = "name"
column = "name"
"#;

const SLOTS: &str = r#"
version = 1
name = "slots"
[source]
table = "slots"
key = ["region", "seq"]
updated_at = "at"
[id]
strategy = "uuid5"
[[field]]
path = "label"
column = "label"
validate = { max_length = 5 }
"#;

const PIPELINE: &str = r#"
version = 1
name = "stale"
mappings_dir = "mappings"
[[stage]]
name = "all"
entities = ["people", "slots"]
"#;

fn report_of(w: &World, out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(2),
        "{}",
        common::output_text(out)
    );
    w.latest_report()
}

fn entity(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} in {report}"))
}

#[tokio::test]
async fn rows_rejected_now_lose_their_older_documents_on_rerun_and_delta() {
    let w = World::new("stale").await;
    w.sql(SCHEMA).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/people.toml"), PEOPLE).unwrap();
    std::fs::write(dir.join("mappings/slots.toml"), SLOTS).unwrap();
    std::fs::write(dir.join("p.toml"), PIPELINE).unwrap();
    let pipeline = dir.join("p.toml");
    let report = report_of(&w, &w.migrate_with(&pipeline, &[]));
    assert_eq!(report["totals"]["rejected"], 0, "{report}");
    assert_eq!(w.count("people").await, 300);
    assert_eq!(w.count("slots").await, 200);

    // Two people and three slots become invalid; a re-run removes their older documents.
    w.sql("UPDATE people SET email = 'broken', at = now() WHERE id IN (7, 300);
           UPDATE slots SET label = 'too long', at = now() WHERE (region, seq) IN (('eu', 1), ('us', 50), ('us', 100));")
        .await;
    let report = report_of(&w, &w.migrate_with(&pipeline, &["--rerun"]));
    let (people, slots) = (entity(&report, "people"), entity(&report, "slots"));
    assert_eq!(
        (
            people["rejected"].as_u64(),
            people["stale_removed"].as_u64()
        ),
        (Some(2), Some(2)),
        "{people}"
    );
    assert_eq!(
        (slots["rejected"].as_u64(), slots["stale_removed"].as_u64()),
        (Some(3), Some(3)),
        "{slots}"
    );
    assert_eq!(w.count("people").await, people["written"].as_u64().unwrap());
    assert_eq!(w.count("slots").await, slots["written"].as_u64().unwrap());
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));

    // A delta run: one more person becomes invalid, one fixed one comes back.
    w.sql(
        "UPDATE people SET email = 'broken again', at = now() WHERE id = 150;
           UPDATE people SET email = 'p7@example.org', at = now() WHERE id = 7;",
    )
    .await;
    let report = report_of(&w, &w.migrate_with(&pipeline, &["--since-last"]));
    let people = entity(&report, "people");
    assert_eq!(people["stale_removed"], 1, "{people}");
    assert_eq!(w.count("people").await, 300 - 2);
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    // The step's backup keeps what was removed: a rollback of the delta puts person 150 back.
    let out = w
        .cutover()
        .args(["rollback", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let people = w.mongo().await.collection::<bson::Document>("people");
    let has = |id: i32| {
        let people = people.clone();
        async move {
            people
                .find_one(bson::doc! { "_id": id })
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(has(150).await && !has(7).await && !has(300).await);
    w.drop().await;
}

/// The server refuses a row's new version (a validator added after the first run): its older
/// document goes too on a re-run. And a first run into a collection that already held documents
/// (not cutover's) leaves them alone, even those whose rows it rejects.
#[tokio::test]
async fn rows_the_server_refuses_now_lose_their_older_documents_but_foreign_documents_stay() {
    let w = World::new("stale_server").await;
    w.sql(
        "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "items",
        "version = 1\nname = \"items\"\n[source]\ntable = \"items\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"label\"\ncolumn = \"label\"\nvalidate = { max_length = 20 }\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let db = w.mongo().await;
    db.run_command(bson::doc! {
        "collMod": "items",
        "validator": { "label": { "$not": { "$regex": "^bad" } } },
    })
    .await
    .unwrap();
    w.sql("UPDATE items SET label = 'bad ' || id WHERE id IN (5, 6)")
        .await;
    let report = report_of(&w, &w.migrate_with(&pipeline, &["--rerun"]));
    let items = entity(&report, "items");
    assert_eq!(items["rejected"], 2, "{items}");
    assert_eq!(items["stale_removed"], 2, "{items}");
    assert_eq!(w.count("items").await, 48);

    // Another world: the collection holds documents before any run; rows 7 and 8 are rejected
    // by the mapping — the documents already there under their ids are not cutover's.
    let v = World::new("stale_foreign").await;
    v.sql(
        "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
         INSERT INTO items SELECT g, CASE WHEN g IN (7, 8) THEN repeat('x', 30) ELSE 'item ' || g END
         FROM generate_series(1, 20) g;",
    )
    .await;
    let coll = v.mongo().await.collection::<bson::Document>("items");
    coll.insert_many(vec![
        bson::doc! { "_id": 7, "label": "theirs" },
        bson::doc! { "_id": 99, "label": "theirs" },
    ])
    .await
    .unwrap();
    let pipeline = common::one_entity_pipeline(
        &v,
        "items",
        "version = 1\nname = \"items\"\n[source]\ntable = \"items\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"label\"\ncolumn = \"label\"\nvalidate = { max_length = 20 }\n",
    );
    let report = report_of(&v, &v.migrate_with(&pipeline, &[]));
    let items = entity(&report, "items");
    assert_eq!(items["rejected"], 2, "{items}");
    assert_eq!(items["stale_removed"], 0, "{items}");
    assert!(
        coll.find_one(bson::doc! { "_id": 7 })
            .await
            .unwrap()
            .is_some(),
        "a document cutover did not write was removed"
    );
    w.drop().await;
    v.drop().await;
}

/// A re-run removing older documents, killed and resumed: the count of removed documents goes
/// with the checkpoint, so the finishing run's report includes what the killed run removed below
/// it (it said only the resuming run's part).
/// Older documents removed by a run killed at a random point (any batch in flight, several at
/// once) are counted exactly by the run that resumes it: each removal is noted in the ledger
/// before it happens (the eleventh tester's R1: ~1.6% went uncounted).
#[tokio::test]
async fn removed_documents_are_counted_exactly_across_a_kill_and_a_resume() {
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..3 {
        let w = World::new(&format!("stale_kill{round}")).await;
        w.sql(
            "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20000) g;",
        )
        .await;
        let pipeline = common::one_entity_pipeline(
            &w,
            "items",
            "version = 1\nname = \"items\"\n[source]\ntable = \"items\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"label\"\ncolumn = \"label\"\nvalidate = { max_length = 20 }\n",
        );
        let out = w.migrate_with(&pipeline, &[]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        // Every fourth row becomes too long: 5000 older documents to remove.
        w.sql("UPDATE items SET label = repeat('x', 30) WHERE id % 4 = 0")
            .await;
        let concurrency = ["1", "4"][rng.usize(..2)];
        let kill_at = rng.i64(100..18_000);
        let mut child = common::process::spawn_migrate(
            &w,
            &pipeline,
            &[
                "--rerun",
                "--batch-size",
                "50",
                "--concurrency",
                concurrency,
            ],
        );
        common::process::kill_after(&w, &mut child, "items", kill_at).await;
        let report = report_of(&w, &w.migrate_with(&pipeline, &[]));
        let items = entity(&report, "items");
        assert!(items["resumed_from"].is_string(), "{items}");
        assert_eq!(
            items["stale_removed"], 5000,
            "seed {seed}, round {round}: killed at {kill_at} rows, concurrency {concurrency}: {items}"
        );
        assert_eq!(w.count("items").await, 15000);
        // The backup the killed run took, named with what it holds (thirteenth tester, T11).
        assert_eq!(items["backup_documents"], 20000, "{items}");
        assert_eq!(items["backup_by"], items["resumed_from"], "{items}");
        // The notes of both steps are gone: their counts are in the steps now.
        let notes = w
            .mongo()
            .await
            .collection::<bson::Document>("cutover_removals")
            .count_documents(bson::doc! {})
            .await
            .unwrap();
        assert_eq!(notes, 0, "removal notes left behind");
        w.drop().await;
    }
}

/// `--sync-deletes` killed while it deletes (chunk after chunk): the next run — resuming the
/// step, or starting it over (`--fresh`) — deletes the rest and reports every document
/// deleted, the killed run's too.
#[tokio::test]
async fn documents_deleted_by_a_killed_sync_deletes_are_counted_by_the_next_run() {
    for (i, next) in [&[][..], &["--fresh"][..]].into_iter().enumerate() {
        let w = World::new(&format!("sync_kill{i}")).await;
        w.sql(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO t (id, v) SELECT g, g FROM generate_series(1, 30000) g;",
        )
        .await;
        let pipeline = common::one_entity_pipeline(
            &w,
            "t",
            "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
        );
        let out = w.migrate_with(&pipeline, &[]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        w.sql("DELETE FROM t WHERE id % 3 <> 0").await;
        let mut child =
            common::process::spawn_migrate(&w, &pipeline, &["--rerun", "--sync-deletes"]);
        // Killed once some chunks of the 20,000 went, before all did.
        let coll = w.mongo().await.collection::<bson::Document>("t");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let fence = 30_000 - fastrand::u64(1_000..15_000);
        loop {
            let n = coll.estimated_document_count().await.unwrap();
            if n <= fence {
                child.kill().unwrap();
                child.wait().unwrap();
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before the kill (at {n} documents)"
            );
            assert!(std::time::Instant::now() < deadline, "no deletion in time");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let left = w.count("t").await;
        assert!(left > 10_000, "the kill came too late: {left} left");
        let report = report_of(&w, &w.migrate_with(&pipeline, next));
        let t = entity(&report, "t");
        assert_eq!(
            t["resumed_from"].is_string(),
            next.is_empty(),
            "{next:?}: {t}"
        );
        assert_eq!(
            t["deleted"], 20_000,
            "{next:?}: killed at {left} documents: {t}"
        );
        assert_eq!(w.count("t").await, 10_000, "{next:?}");
        w.drop().await;
    }
}

/// Found by the eleventh tester (R5, R6): an entity whose mapping moves to another collection the
/// application already fills. The re-run into the new collection removes nothing there (no step
/// of the entity wrote it: its documents under the rejected rows' ids are the application's), and
/// `rollback --all` / `--steps 2` puts each collection back from its own oldest step — the old one
/// emptied, the new one restored from its backup — instead of one restore for the entity.
#[tokio::test]
async fn an_entity_moved_to_another_collection_is_rolled_back_in_both() {
    use bson::doc;
    for form in [["--all"].as_slice(), ["--steps", "2"].as_slice()] {
        let w = World::new("stale_moved").await;
        w.sql(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
               INSERT INTO t SELECT g, g FROM generate_series(1, 20) g;",
        )
        .await;
        let mapping = |collection: &str| {
            format!(
                "version = 1\nname = \"t\"\ncollection = \"{collection}\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\nvalidate = {{ min = 0 }}\n"
            )
        };
        let pipeline = common::one_entity_pipeline(&w, "t", &mapping("t"));
        let report = report_of(&w, &w.migrate_with(&pipeline, &[]));
        assert_eq!(report["totals"]["written"], 20, "{report}");

        let db = w.mongo().await;
        let own: Vec<bson::Document> = (1..=20).map(|i| doc! { "_id": i, "app": "own" }).collect();
        db.collection::<bson::Document>("t_v2")
            .insert_many(own)
            .await
            .unwrap();
        std::fs::write(w.dir.path().join("mappings/t.toml"), mapping("t_v2")).unwrap();
        w.sql("UPDATE t SET v = -1 WHERE id IN (3, 4)").await;
        let report = report_of(&w, &w.migrate_with(&pipeline, &["--rerun"]));
        let t = entity(&report, "t");
        assert_eq!(
            (
                t["written"].as_u64(),
                t["rejected"].as_u64(),
                t["stale_removed"].as_u64()
            ),
            (Some(18), Some(2), Some(0)),
            "{t}"
        );
        let v2 = db.collection::<bson::Document>("t_v2");
        for id in [3, 4] {
            let d = v2.find_one(doc! { "_id": id }).await.unwrap();
            assert_eq!(
                d,
                Some(doc! { "_id": id, "app": "own" }),
                "the application's {id}"
            );
        }

        let out = w
            .cutover()
            .arg("rollback")
            .args(form)
            .args(["--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        assert_eq!(
            w.count("t").await,
            0,
            "{form:?}: t was empty before the first run"
        );
        assert_eq!(
            v2.count_documents(doc! { "app": "own" }).await.unwrap(),
            20,
            "{form:?}: t_v2 back from its backup: {}",
            common::output_text(&out)
        );
        assert_eq!(w.count("t_v2").await, 20, "{form:?}");
        w.drop().await;
    }
}

/// Found by the eleventh tester (R7): a `--since-last --sync-deletes` run killed mid-way and
/// resumed by a plain `cutover migrate` kept the delta (the step records `since`) but dropped the
/// deletions. The step records `--sync-deletes` too: the resume deletes the documents whose rows
/// are gone, and the target ends equal to the source. Shapes: the delta (`--since-last`) and
/// `--rerun`.
#[tokio::test]
async fn a_resumed_step_deletes_what_its_killed_run_was_to_delete() {
    for (flag, test) in [
        ("--since-last", "sync_resume_delta"),
        ("--rerun", "sync_resume_rerun"),
    ] {
        let w = World::new(test).await;
        w.sql(
            "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL,
                             at timestamptz NOT NULL DEFAULT '2024-01-01');
             INSERT INTO t (id, v) SELECT g, g FROM generate_series(1, 20000) g;",
        )
        .await;
        let pipeline = common::one_entity_pipeline(
            &w,
            "t",
            "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\nupdated_at = \"at\"\n\
             [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
        );
        let out = w.migrate_with(&pipeline, &[]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        w.sql("DELETE FROM t WHERE id % 10 = 0; UPDATE t SET v = -v, at = now() WHERE id % 3 = 0;")
            .await;
        let mut child = common::process::spawn_migrate(
            &w,
            &pipeline,
            &[
                flag,
                "--sync-deletes",
                "--batch-size",
                "50",
                "--concurrency",
                "1",
            ],
        );
        common::process::kill_after(&w, &mut child, "t", 500).await;
        let out = w.migrate_with(&pipeline, &[]);
        let report = report_of(&w, &out);
        let t = entity(&report, "t");
        assert!(t["resumed_from"].is_string(), "{flag}: {t}");
        assert_eq!(t["deleted"], 2000, "{flag}: {t}");
        assert_eq!(w.count("t").await, 18_000, "{flag}");
        assert_eq!(w.pg_count("t").await, 18_000);
        w.drop().await;
    }
}

/// Found by the eleventh tester (R3): the application tightened its collection's validator after
/// a re-run; the backup holds documents the validator refuses now. A rollback puts back what was
/// there, validator or not (it failed for ever, the step stuck `rolling-back`).
#[tokio::test]
async fn a_rollback_restores_documents_a_newer_validator_refuses() {
    use bson::doc;
    let w = World::new("stale_validator").await;
    w.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
           INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    w.sql("UPDATE t SET v = v + 1000 WHERE id <= 10").await;
    let out = w.migrate_with(&pipeline, &["--rerun"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let db = w.mongo().await;
    db.run_command(doc! { "collMod": "t", "validator": { "v": { "$gte": 1000 } } })
        .await
        .unwrap();
    let out = w
        .cutover()
        .args(["rollback", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let docs = w.docs("t").await;
    assert_eq!(docs.len(), 100);
    assert!(
        docs.iter().all(|d| d.get_i32("v").unwrap() <= 100),
        "the first run's values are back"
    );
    w.drop().await;
}

/// Found by the eleventh tester (R10): a step completed by a run killed later (during the next
/// stage) is reported by the run that finishes, from the ledger — its removed older documents
/// too (they were reported as 0).
#[tokio::test]
async fn an_adopted_step_reports_the_documents_it_removed() {
    let w = World::new("stale_adopted").await;
    w.sql(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
           INSERT INTO a SELECT g, g FROM generate_series(1, 1000) g;
           CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL);
           INSERT INTO b SELECT g, g FROM generate_series(1, 20000) g;",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    for t in ["a", "b"] {
        std::fs::write(
            dir.join(format!("mappings/{t}.toml")),
            format!(
                "version = 1\nname = \"{t}\"\n[source]\ntable = \"{t}\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"v\"\ncolumn = \"v\"\nvalidate = {{ min = 0 }}\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("p.toml"),
        "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"one\"\nentities = [\"a\"]\n[[stage]]\nname = \"two\"\nentities = [\"b\"]\n",
    )
    .unwrap();
    let pipeline = dir.join("p.toml");
    let out = w.migrate_with(&pipeline, &[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    w.sql("UPDATE a SET v = -1 WHERE id % 10 = 0").await;
    let mut child = common::process::spawn_migrate(
        &w,
        &pipeline,
        &["--rerun", "--batch-size", "50", "--concurrency", "1"],
    );
    common::process::kill_after(&w, &mut child, "b", 1_000).await;
    let report = report_of(&w, &w.migrate_with(&pipeline, &[]));
    let a = entity(&report, "a");
    assert!(a["completed_by"].is_string(), "{a}");
    assert_eq!(
        (a["rejected"].as_u64(), a["stale_removed"].as_u64()),
        (Some(100), Some(100)),
        "{a}"
    );
    assert_eq!(w.count("a").await, 900);
    w.drop().await;
}

/// The other window of R10: a run killed after its report file and its last step, before the
/// ledger recorded its end (made here by putting the run back to `running`, as the kill leaves
/// it). The next run reports the step from the ledger — with the documents it removed — and is
/// in `history` (it wrote the report the sign-off shows, though it had nothing else to run).
#[tokio::test]
async fn a_run_reporting_only_an_adopted_step_reports_its_removals_and_is_in_history() {
    use bson::doc;
    let w = World::new("stale_adopted_only").await;
    w.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
           INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\nvalidate = { min = 0 }\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    w.sql("UPDATE t SET v = -1 WHERE id % 10 = 0 AND id <= 900; DELETE FROM t WHERE id > 950;")
        .await;
    let rerun = report_of(
        &w,
        &w.migrate_with(&pipeline, &["--rerun", "--sync-deletes"]),
    );
    let t = entity(&rerun, "t");
    assert_eq!(
        (t["stale_removed"].as_u64(), t["deleted"].as_u64()),
        (Some(90), Some(50)),
        "{rerun}"
    );
    let backup = t["backup"].as_str().unwrap().to_string();
    let killed = rerun["run_id"].as_str().unwrap().to_string();
    w.mongo()
        .await
        .collection::<bson::Document>("cutover_runs")
        .update_one(
            doc! { "_id": &killed },
            doc! { "$set": { "status": "running" }, "$unset": { "finished_at": "" } },
        )
        .await
        .unwrap();

    let out = w.migrate_with(&pipeline, &[]);
    let report = report_of(&w, &out);
    let t = entity(&report, "t");
    assert_eq!(t["completed_by"], killed.as_str(), "{t}");
    // Its removals, its deletions (S6) and the backup that keeps what it removed.
    assert_eq!(
        (t["stale_removed"].as_u64(), t["deleted"].as_u64()),
        (Some(90), Some(50)),
        "{t}"
    );
    assert_eq!(t["backup"], backup.as_str(), "{t}");
    let said = common::output_text(&out);
    assert!(
        said.contains(&backup) && !said.contains("no backup was taken"),
        "{said}"
    );
    let finishing = report["run_id"].as_str().unwrap();
    let out = w.cutover().args(["history", "--json"]).output().unwrap();
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&finishing), "{finishing} not in {listed:?}");
    w.drop().await;
}

/// Found by the fourteenth tester (U3, U4): `migrate --rerun --sync-deletes` of a stage of two
/// entities, killed at a random moment of the whole run. The plain `migrate` the README
/// prescribes finished only the entity in progress and called the other "already applied" — its
/// deletions never happened, yet the run ended `completed` — and re-issuing the same command ran
/// the entity the killed run had completed again, so its deletions were in no report. Either
/// way the stage ends as the killed command was to leave it, and every deletion is in exactly
/// one report.
#[tokio::test]
async fn a_killed_sync_run_of_a_stage_is_finished_by_a_plain_migrate_or_the_same_command() {
    let seed = std::env::var("CUTOVER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("CUTOVER_KILL_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    for trial in 0..4 {
        let next: &[&str] = if trial % 2 == 0 {
            &[]
        } else {
            &["--rerun", "--sync-deletes"]
        };
        let w = World::new(&format!("stage_sync_kill{trial}")).await;
        w.sql(
            "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO a SELECT g, g FROM generate_series(1, 6000) g;
             CREATE TABLE b (k text PRIMARY KEY, v int NOT NULL);
             INSERT INTO b SELECT 'k' || g, g FROM generate_series(1, 6000) g;",
        )
        .await;
        let dir = w.dir.path();
        std::fs::create_dir_all(dir.join("mappings")).unwrap();
        for (name, key) in [("a", "id"), ("b", "k")] {
            std::fs::write(
                dir.join(format!("mappings/{name}.toml")),
                format!(
                    "version = 1\nname = \"{name}\"\n[source]\ntable = \"{name}\"\nkey = [\"{key}\"]\n\
                     [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
                ),
            )
            .unwrap();
        }
        let pipeline = dir.join("p.toml");
        std::fs::write(
            &pipeline,
            "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let out = w.migrate_with(&pipeline, &[]);
        assert!(out.status.success(), "{}", common::output_text(&out));
        let before: std::collections::BTreeSet<_> = std::fs::read_dir(dir.join("reports"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        w.sql("DELETE FROM a WHERE id % 3 = 0; DELETE FROM b WHERE v % 4 = 0;")
            .await;
        let mut child = common::process::spawn_migrate(
            &w,
            &pipeline,
            &[
                "--rerun",
                "--sync-deletes",
                "--batch-size",
                "100",
                "--concurrency",
                "1",
            ],
        );
        // Killed at a random point of the whole run: after `target` of its 12,000 rows are
        // covered by its steps (a completed step covers all of its entity's), or not at all.
        let target = rng.i64(0..12_500);
        let steps = w
            .mongo()
            .await
            .collection::<bson::Document>("cutover_steps");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            let mut covered = 0;
            let mut cursor = steps.find(bson::doc! {}).await.unwrap();
            while cursor.advance().await.unwrap() {
                let step = cursor.deserialize_current().unwrap();
                // The first run's two steps are not this run's.
                match step.get_str("status").unwrap_or_default() {
                    "running" => covered += step.get_i64("checkpoint_rows").unwrap_or(0),
                    "completed" => covered += 6000,
                    _ => {}
                }
            }
            if covered - 12_000 >= target {
                child.kill().ok();
                break true;
            }
            assert!(std::time::Instant::now() < deadline, "no progress in time");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        };
        child.wait().unwrap();
        let delay = target;
        let mut attempts = 0;
        loop {
            let out = w.migrate_with(&pipeline, next);
            attempts += 1;
            if out.status.success() {
                break;
            }
            assert!(
                attempts < 3,
                "trial {trial} ({next:?}, killed at {delay} rows: {killed}): {}",
                common::output_text(&out)
            );
        }
        let what =
            format!("trial {trial}, seed {seed}, {next:?}, killed at {delay} rows ({killed})");
        println!("{what}: {attempts} run(s) after the kill");
        assert_eq!(w.count("a").await, 4000, "{what}");
        assert_eq!(w.count("b").await, 4500, "{what}");
        let verify = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{what}: {}",
            common::output_text(&verify)
        );
        // Every deletion in exactly one report of the runs after the first.
        let mut deleted = std::collections::BTreeMap::new();
        for path in std::fs::read_dir(dir.join("reports")).unwrap() {
            let path = path.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if before.contains(&path) || name.starts_with("verify-") || !name.ends_with(".json") {
                continue;
            }
            let report: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for e in report["entities"].as_array().unwrap() {
                *deleted
                    .entry(e["name"].as_str().unwrap().to_string())
                    .or_insert(0) += e["deleted"].as_u64().unwrap_or(0);
            }
        }
        // A plain command says whose intent it carried out for the entity the killed run had not
        // reached.
        if next.is_empty() && killed {
            let last = w.latest_report();
            let b = last["entities"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "b")
                .cloned()
                .unwrap_or_default();
            if b["resumed_from"].is_null()
                && b["completed_by"].is_null()
                && b["read"].as_u64().unwrap_or(0) > 0
            {
                assert!(
                    b["finishing"]
                        .as_str()
                        .is_some_and(|f| f.contains("--rerun --sync-deletes")),
                    "{what}: {b}"
                );
            }
        }
        assert_eq!(deleted.get("a"), Some(&2000), "{what}: {deleted:?}");
        assert_eq!(deleted.get("b"), Some(&1500), "{what}: {deleted:?}");
        w.drop().await;
    }
}

/// adv44 F2: a delta reads again the rows the run it continues rejected, whatever their change
/// time: a row refused for another row's sake passes once that row is fixed, as in a fresh run.
/// Shapes: an int key refused as `reference_rejected` (its boss was rejected), a composite text
/// key (with `|` in its parts) refused by a unique index, and a date key (a reference to the
/// same rejected row), whose shown text is not PostgreSQL's input: the run says it is NOT read
/// again. The oracle: the rows PostgreSQL holds.
#[tokio::test]
async fn a_delta_reads_again_the_rows_the_run_it_continues_rejected() {
    let w = World::new("delta_rejects").await;
    w.sql(
        "CREATE TABLE emp (id int PRIMARY KEY, name text, boss int, updated_at timestamptz);
         INSERT INTO emp VALUES (1, 'one', NULL, now() - interval '1 hour'),
           (7, 'seven', 8, now() - interval '1 hour'), (8, NULL, 1, now() - interval '1 hour');
         CREATE TABLE acct (a text, b text, email text, updated_at timestamptz, PRIMARY KEY (a, b));
         INSERT INTO acct VALUES ('x|y', 'z', 'e1', now() - interval '1 hour'),
           ('x', 'y|z', 'e2', now() - interval '1 hour');
         CREATE TABLE day (d date PRIMARY KEY, who int, updated_at timestamptz);
         INSERT INTO day VALUES ('2024-01-01', 8, now() - interval '1 hour');",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(format!("mappings/{name}.toml")), text).unwrap();
    };
    write(
        "emp",
        "version = 1\nname = \"emp\"\n[source]\ntable = \"emp\"\nkey = [\"id\"]\nupdated_at = \"updated_at\"\n\
         [[field]]\npath = \"name\"\ncolumn = \"name\"\nvalidate = { required = true }\n\
         [[field]]\npath = \"boss\"\ncolumn = \"boss\"\nreference = \"emp\"\nvalidate = { exists = true }\n",
    );
    write(
        "acct",
        "version = 1\nname = \"acct\"\n[source]\ntable = \"acct\"\nkey = [\"a\", \"b\"]\nupdated_at = \"updated_at\"\n\
         [[field]]\npath = \"email\"\ncolumn = \"email\"\n[[index]]\nkeys = [\"email\"]\nunique = true\n",
    );
    write(
        "day",
        "version = 1\nname = \"day\"\n[source]\ntable = \"day\"\nkey = [\"d\"]\nupdated_at = \"updated_at\"\n\
         [[field]]\npath = \"who\"\ncolumn = \"who\"\nreference = \"emp\"\nvalidate = { exists = true }\n",
    );
    let pipeline = dir.join("p.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"emp\", \"acct\", \"day\"]\n",
    )
    .unwrap();
    let migrate = |args: &[&str]| {
        let out = w
            .cutover()
            .arg("migrate")
            .args(args)
            .arg("--pipeline")
            .arg(&pipeline)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        (report_of(&w, &out), text)
    };
    let ids = |docs: Vec<bson::Document>| -> Vec<String> {
        docs.iter()
            .map(|d| d.get("_id").unwrap().to_string())
            .collect()
    };
    let (report, _) = migrate(&[]);
    assert_eq!(entity(&report, "emp")["rejected"], 2, "{report}");
    assert_eq!(ids(w.docs("emp").await), ["1"]);
    // The unique key is taken by the other row; then the boss gets a name.
    w.sql(
        "UPDATE acct SET email = 'e1', updated_at = now() WHERE a = 'x';
           UPDATE emp SET name = 'eight', updated_at = now() WHERE id = 8;",
    )
    .await;
    let (report, text) = migrate(&["--since-last"]);
    assert_eq!(entity(&report, "acct")["rejected"], 1, "{report}");
    assert_eq!(entity(&report, "emp")["rejected"], 0, "{report}");
    assert_eq!(ids(w.docs("emp").await), ["1", "7", "8"], "{text}");
    assert!(
        text.contains("the 1 row(s) the run it continues rejected for another row's sake (a reference, a unique key), read again — 1 of them NOT"),
        "{text}"
    );
    // The row holding the key lets it go: the refused row is read again and written.
    w.sql("UPDATE acct SET email = 'e9', updated_at = now() WHERE a = 'x|y';")
        .await;
    let (report, text) = migrate(&["--since-last"]);
    assert_eq!(entity(&report, "acct")["rejected"], 0, "{report} {text}");
    assert_eq!(entity(&report, "acct")["read"], 2, "{report}");
    let mut emails: Vec<String> = w
        .docs("acct")
        .await
        .iter()
        .map(|d| d.get_str("email").unwrap().to_string())
        .collect();
    emails.sort();
    let mut want = w.query_strings("SELECT email FROM acct").await;
    want.sort();
    assert_eq!(emails, want);
    // Nothing rejected before: the next delta reads what changed only.
    let (report, _) = migrate(&["--since-last"]);
    assert_eq!(entity(&report, "acct")["read"], 0, "{report}");
    assert_eq!(entity(&report, "emp")["read"], 0, "{report}");
    w.drop().await;
}
