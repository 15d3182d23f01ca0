//! The run ledger against the real servers: crash-safe resume after kill -9, the lock, rollback
//! with backups, status and history, changed-mapping detection.

mod common;

use std::time::{Duration, Instant};

use bson::{Document, doc};
use common::World;
use common::process::{kill_after, spawn_migrate};

const EVENTS: &str = r#"
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, amount numeric(12,2), at timestamptz NOT NULL, note text);
INSERT INTO events
SELECT g, (ARRAY['a','b','c'])[1 + g % 3], (g % 1000) / 100.0,
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
       CASE WHEN g % 7 = 0 THEN NULL ELSE repeat('x', (g % 50)::int) END
FROM generate_series(1, 200000) g;
CREATE TABLE kinds (code text PRIMARY KEY, label text NOT NULL);
INSERT INTO kinds VALUES ('a', 'Alpha'), ('b', 'Beta'), ('c', 'Gamma');
"#;

const KINDS_MAPPING: &str = r#"
version = 1
name = "kinds"
[source]
table = "kinds"
key = ["code"]
[[field]]
path = "label"
column = "label"
"#;

const EVENTS_MAPPING: &str = r#"
version = 1
name = "events"
[source]
table = "events"
key = ["id"]
updated_at = "at"
[[field]]
path = "kind"
column = "kind"
reference = "kinds"
[[field]]
path = "amount"
column = "amount"
[[field]]
path = "at"
column = "at"
[[field]]
path = "note"
column = "note"
validate = { max_length = 45 }
"#;

const PIPELINE: &str = r#"
version = 1
name = "events"
mappings_dir = "mappings"
[[stage]]
name = "reference"
entities = ["kinds"]
[[stage]]
name = "facts"
entities = ["events"]
depends_on = ["reference"]
"#;

async fn setup(w: &World) -> std::path::PathBuf {
    w.sql(EVENTS).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/kinds.toml"), KINDS_MAPPING).unwrap();
    std::fs::write(dir.join("mappings/events.toml"), EVENTS_MAPPING).unwrap();
    std::fs::write(dir.join("pipeline.toml"), PIPELINE).unwrap();
    dir.join("pipeline.toml")
}

fn status_json(w: &World, pipeline: &std::path::Path) -> serde_json::Value {
    let out = w
        .cutover()
        .args(["status", "--json", "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entity_status<'a>(status: &'a serde_json::Value, entity: &str) -> &'a serde_json::Value {
    status["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == entity)
        .unwrap()
}

async fn sorted_docs(w: &World, coll: &str) -> Vec<Document> {
    w.docs(coll).await
}

#[tokio::test]
async fn killed_runs_resume_from_their_checkpoint_and_end_identical() {
    // The reference: an uninterrupted run.
    let reference = World::new("resume_ref").await;
    let ref_pipeline = setup(&reference).await;
    let out = reference.migrate_with(&ref_pipeline, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = sorted_docs(&reference, "events").await;

    let w = World::new("resume").await;
    let pipeline = setup(&w).await;
    let small = ["--batch-size", "200", "--concurrency", "2"];

    // First kill, early in the events stage.
    let mut child = spawn_migrate(&w, &pipeline, &small);
    let first = kill_after(&w, &mut child, "events", 20_000).await;
    let status = status_json(&w, &pipeline);
    let e = entity_status(&status, "events");
    assert_eq!(e["state"], "interrupted", "{status}");
    // The killed holder's lock is free before its expiry time: said so, not "expired".
    assert_eq!(status["lock"]["process_gone"], true, "{status}");
    let text = w
        .cutover()
        .args(["status", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("lock: free — the process holding it is gone"),
        "{text}"
    );
    assert!(e["checkpoint_rows"].as_i64().unwrap() >= first, "{status}");
    assert_eq!(entity_status(&status, "kinds")["state"], "applied");

    // Second kill, further on: the resumed run's checkpoint counts from the start of the table.
    let mut child = spawn_migrate(&w, &pipeline, &small);
    let second = kill_after(&w, &mut child, "events", first + 40_000).await;
    assert!(second > first);

    // A plain re-run resumes and finishes.
    let out = w.migrate_with(&pipeline, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resumed run"), "{stdout}");
    let report = w.latest_report();
    let events = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "events")
        .unwrap();
    let resumed_after = events["resumed_after_rows"].as_u64().unwrap();
    assert!(resumed_after >= second as u64);
    // The report accounts for the whole entity, the parts the killed runs covered included: every
    // source row, every reject (those before the checkpoint too), each in its rejects file once.
    assert_eq!(events["read"].as_u64().unwrap(), 200_000, "{events}");
    let all_rejects = w
        .pg_count("(SELECT * FROM events) t WHERE length(note) > 45")
        .await;
    let before_checkpoint_rejects = w
        .pg_count(&format!(
            "(SELECT * FROM events ORDER BY id LIMIT {resumed_after}) t WHERE length(note) > 45"
        ))
        .await;
    assert!(before_checkpoint_rejects > 0, "the kills came too early");
    assert_eq!(
        events["rejected"].as_u64().unwrap(),
        all_rejects,
        "{events}"
    );
    assert_eq!(
        events["resumed_after_rejected"].as_u64().unwrap(),
        before_checkpoint_rejects,
        "{events}"
    );
    assert_eq!(
        events["written"].as_u64().unwrap() + all_rejects,
        200_000,
        "{events}"
    );
    let mut keys: Vec<String> = w
        .rejects(report["run_id"].as_str().unwrap())
        .into_iter()
        .filter(|r| r.0 == "events")
        .map(|r| r.1)
        .collect();
    keys.sort();
    let lines = keys.len();
    keys.dedup();
    assert_eq!((lines, keys.len() as u64), (keys.len(), all_rejects));
    // kinds was completed by a killed run, which wrote no report: this one accounts for it.
    assert_eq!(report["already_applied"], serde_json::json!([]));
    let kinds = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "kinds")
        .unwrap_or_else(|| panic!("kinds not reported: {report}"));
    assert!(kinds["completed_by"].is_string(), "{kinds}");

    // Same documents as the uninterrupted run: no duplicates (same count), no gaps, same content.
    let got = sorted_docs(&w, "events").await;
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "documents differ from the uninterrupted run"
    );
    let status = status_json(&w, &pipeline);
    assert_eq!(entity_status(&status, "events")["state"], "applied");

    reference.drop().await;
    w.drop().await;
}

#[tokio::test]
async fn a_second_concurrent_run_is_refused_naming_the_holder() {
    let w = World::new("lock").await;
    let pipeline = setup(&w).await;
    let mut first = spawn_migrate(
        &w,
        &pipeline,
        &["--batch-size", "100", "--concurrency", "1"],
    );
    let holder_pid = first.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lock = w
            .mongo()
            .await
            .collection::<Document>("cutover_lock")
            .find_one(doc! {})
            .await
            .unwrap();
        if lock.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds the lock"), "{err}");
    assert!(err.contains(&format!("pid {holder_pid}")), "{err}");

    let lock_status = w.cutover().args(["lock", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&lock_status.stdout);
    assert!(
        text.contains("held by") && text.contains(&format!("pid {holder_pid}")),
        "{text}"
    );
    let refused = w.cutover().args(["lock", "release"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--confirm"));

    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let text = String::from_utf8_lossy(
        &w.cutover()
            .args(["lock", "status"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert!(text.starts_with("free"), "{text}");
    w.drop().await;
}

#[tokio::test]
async fn rollback_restores_the_target_as_it_was_before_the_run() {
    let w = World::new("rollback").await;
    w.load_registry(100);
    let registry = common::repo().join("pipelines/registry.toml");
    let run = |args: &[&str]| {
        w.cutover()
            .args(["migrate", "--quiet", "--pipeline"])
            .arg(&registry)
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(run(&["reference"]).status.code(), Some(2));
    // Someone adds a document by hand; the next run will write over a non-empty collection.
    let db = w.mongo().await;
    db.collection::<Document>("vaccines")
        .insert_one(doc! { "_id": 999, "code": "HANDMADE" })
        .await
        .unwrap();
    w.sql("UPDATE vaccines SET name = 'Renamed in the source' WHERE vaccine_id = 1")
        .await;
    let before_vaccines = w.docs("vaccines").await;
    let before_facilities = w.docs("facilities").await;

    let out = run(&["reference", "--rerun"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = w.docs("vaccines").await;
    assert_ne!(changed, before_vaccines);

    // Dry run: says what it would do, changes nothing.
    let out = w
        .cutover()
        .args(["rollback", "--dry-run", "--pipeline"])
        .arg(&registry)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("would roll back facilities") && text.contains("would roll back vaccines"),
        "{text}"
    );
    assert!(
        text.find("facilities").unwrap() < text.find("vaccines").unwrap(),
        "reverse order: {text}"
    );
    assert_eq!(w.docs("vaccines").await, changed);

    let out = w
        .cutover()
        .args(["rollback", "--pipeline"])
        .arg(&registry)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        w.docs("vaccines").await,
        before_vaccines,
        "restored from the backup"
    );
    assert_eq!(w.docs("facilities").await, before_facilities);
    let status = status_json(&w, &registry);
    // The re-run is rolled back: the data is the first run's, and so is the state.
    let vaccines = entity_status(&status, "vaccines");
    assert_eq!(vaccines["state"], "applied", "{status}");
    assert_ne!(
        vaccines["last_run"],
        w.latest_report()["run_id"],
        "{status}"
    );

    // Patients depend on the reference stage: rolling it back alone is refused.
    assert_eq!(
        run(&["patients", "--ignore-dependencies"]).status.code(),
        Some(2)
    );
    let out = w
        .cutover()
        .args(["rollback", "--all", "--pipeline"])
        .arg(&registry)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for c in ["vaccines", "facilities", "patients"] {
        let n = w.count(c).await;
        assert!(n == 0 || c == "vaccines", "{c}: {n}");
    }

    let history = w.cutover().args(["history"]).output().unwrap();
    let text = String::from_utf8_lossy(&history.stdout);
    assert_eq!(text.lines().count(), 1 + 3, "{text}");
    w.drop().await;
}

#[tokio::test]
async fn rolling_back_a_stage_others_depend_on_needs_cascade() {
    let w = World::new("cascade").await;
    let pipeline = setup(&w).await;
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = w
        .cutover()
        .args(["rollback", "kinds", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Named with why it needs kinds (adv32 F4).
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("events (") && said.contains("kinds") && said.contains("depend on what"),
        "{said}"
    );
    assert_eq!(w.count("kinds").await, 3);
    // adv42 F3: a re-run of kinds after events ran is undone alone: events saw the documents
    // its backup puts back.
    let (kinds_before, events_before) = (w.docs("kinds").await, w.count("events").await);
    w.sql("UPDATE kinds SET label = label || ' v2'").await;
    let out = w.migrate_with(&pipeline, &["kinds", "--rerun"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_ne!(w.docs("kinds").await, kinds_before);
    let out = w
        .cutover()
        .args(["rollback", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert_eq!(w.docs("kinds").await, kinds_before);
    assert_eq!(w.count("events").await, events_before);
    let out = w
        .cutover()
        .args(["rollback", "kinds", "--cascade", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.count("kinds").await, 0);
    assert_eq!(w.count("events").await, 0);
    w.drop().await;
}

#[tokio::test]
async fn a_changed_mapping_is_detected_and_never_mixed_silently() {
    let w = World::new("changed").await;
    let pipeline = setup(&w).await;
    let migrate = |extra: &[&str]| w.migrate_with(&pipeline, extra);
    assert_eq!(migrate(&[]).status.code(), Some(2));
    std::fs::write(
        w.dir.path().join("mappings/kinds.toml"),
        KINDS_MAPPING.replace("path = \"label\"", "path = \"name\""),
    )
    .unwrap();
    let status = status_json(&w, &pipeline);
    assert_eq!(entity_status(&status, "kinds")["state"], "changed");
    let out = migrate(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kinds") && err.contains("--rerun") && err.contains("--accept-changed"),
        "{err}"
    );
    let out = migrate(&["kinds", "--rerun"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(w.docs("kinds").await.iter().all(|d| d.contains_key("name")));
    let status = status_json(&w, &pipeline);
    assert_eq!(entity_status(&status, "kinds")["state"], "applied");
    w.drop().await;
}

#[tokio::test]
async fn since_last_copies_exactly_the_rows_changed_since_the_last_run() {
    let w = World::new("delta").await;
    let pipeline = setup(&w).await;
    let migrate = |extra: &[&str]| w.migrate_with(&pipeline, extra);
    assert_eq!(migrate(&[]).status.code(), Some(2));
    // The old system keeps running: 3 rows change, 2 are added (their change column moves on).
    w.sql(
        "UPDATE events SET kind = 'b', amount = 1234.56, at = date_trunc('milliseconds', now()) WHERE id IN (10, 20, 30);
         INSERT INTO events VALUES (300001, 'a', 1.00, date_trunc('milliseconds', now()), 'new'), (300002, 'c', 2.00, date_trunc('milliseconds', now()), NULL);",
    )
    .await;
    let out = migrate(&["--since-last"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = w.latest_report();
    let events = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "events")
        .unwrap()
        .clone();
    assert_eq!(events["read"], 5, "{report}");
    assert_eq!(events["written"], 5);
    // kinds names no change-tracking column: copied in full, and the report says so.
    let kinds = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "kinds")
        .unwrap();
    assert_eq!(kinds["read"], 3, "{report}");
    assert!(
        kinds["delta"].as_str().unwrap().contains("in full"),
        "{report}"
    );
    assert!(
        events["delta"].as_str().unwrap().contains("changed since"),
        "{report}"
    );
    let docs = w.docs("events").await;
    let ten = docs.iter().find(|d| d.get_i64("_id") == Ok(10)).unwrap();
    assert_eq!(ten.get_str("kind"), Ok("b"));
    assert!(docs.iter().any(|d| d.get_i64("_id") == Ok(300002)));
    // And again: nothing changed since, nothing copied.
    let out = migrate(&["--since-last"]);
    assert_eq!(out.status.code(), Some(0));
    let report = w.latest_report();
    let events = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "events")
        .unwrap();
    assert_eq!(events["read"], 0, "{report}");

    // Rows deleted in the source: --sync-deletes counts them (dry run), then removes them.
    w.sql("DELETE FROM events WHERE id IN (5, 300001)").await;
    let before = w.count("events").await;
    let out = migrate(&["--since-last", "--sync-deletes", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("would delete 2"));
    assert_eq!(w.count("events").await, before);
    let out = migrate(&["--since-last", "--sync-deletes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = w.latest_report();
    let events = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "events")
        .unwrap();
    assert_eq!(events["deleted"], 2, "{report}");
    assert_eq!(w.count("events").await, before - 2);
    assert!(
        !w.docs("events")
            .await
            .iter()
            .any(|d| d.get_i64("_id") == Ok(5))
    );
    w.drop().await;
}

/// A re-run that rejects a row an earlier run wrote removes its older document; documents of
/// other entities may reference it: the run says which entities, and how to find them (adv32 F6:
/// the references dangled, said by nothing but verify).
#[tokio::test]
async fn a_rerun_removing_a_referenced_document_names_the_referrers() {
    let w = World::new("referrers").await;
    let pipeline = setup(&w).await;
    assert!(matches!(
        w.migrate_with(&pipeline, &[]).status.code(),
        Some(0 | 2)
    ));
    let strict = KINDS_MAPPING.replace(
        "column = \"label\"\n",
        "column = \"label\"\nvalidate = { max_length = 4 }\n",
    );
    std::fs::write(w.dir.path().join("mappings/kinds.toml"), strict).unwrap();
    let out = w.migrate_with(&pipeline, &["kinds", "--rerun"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("kinds: 2 of its documents were removed for rows rejected now; events reference kinds: `cutover verify events`"),
        "{said}"
    );
    w.drop().await;
}

#[tokio::test]
async fn backups_are_listed_restored_and_dropped() {
    let w = World::new("backups").await;
    let pipeline = setup(&w).await;
    let migrate = |extra: &[&str]| w.migrate_with(&pipeline, extra);
    assert_eq!(migrate(&["kinds"]).status.code(), Some(0));
    let first = w.docs("kinds").await;
    w.sql("UPDATE kinds SET label = 'Changed'").await;
    let out = migrate(&["kinds", "--rerun"]);
    assert_eq!(out.status.code(), Some(0));
    assert_ne!(w.docs("kinds").await, first);
    // The run says its wall time, the backup part of it; history gives the run that wall time,
    // not the sum of its stages (adv32 F5: the backup was left out).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("wall time: ") && said.contains("backups "),
        "{said}"
    );
    let report = w.latest_report();
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(report[k].as_str().unwrap()).unwrap();
    let wall = (at("finished_at") - at("started_at")).num_milliseconds();
    let history = w.history(1);
    assert_eq!(history[0]["duration_ms"].as_i64(), Some(wall), "{history}");

    let list = w.cutover().args(["backup", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    let name = text.split_whitespace().next().unwrap().to_string();
    assert!(name.starts_with("kinds__backup__"), "{text}");
    assert!(text.contains("3 docs"), "{text}");

    let out = w
        .cutover()
        .args(["backup", "restore", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.docs("kinds").await, first, "restored");

    let out = w
        .cutover()
        .args(["backup", "drop", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = w.mongo().await.list_collection_names().await.unwrap();
    assert!(!names.contains(&name), "{names:?}");
    let out = w
        .cutover()
        .args(["backup", "restore", &name])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backup named"));
    w.drop().await;
}

/// The backup names recorded in the ledger, newest first, as `cutover backup list` shows them.
fn backup_names(w: &World) -> Vec<String> {
    let out = w.cutover().args(["backup", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l != "no backups")
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The backup the latest step of `entity` not rolled back references: what `rollback` restores.
async fn latest_backup(w: &World, entity: &str) -> Option<String> {
    w.mongo()
        .await
        .collection::<Document>("cutover_steps")
        .find_one(doc! { "entity": entity, "status": { "$ne": "rolled-back" } })
        .sort(doc! { "started_at": -1 })
        .await
        .unwrap()
        .and_then(|s| s.get_str("backup").ok().map(str::to_string))
}

#[tokio::test]
async fn backups_are_pruned_to_the_newest_and_rollback_still_works() {
    let w = World::new("prune").await;
    let pipeline = setup(&w).await;
    let pipeline_arg = pipeline.display().to_string();
    let migrate = |extra: &[&str]| w.migrate_with(&pipeline, extra);
    let rollback = |extra: &[&str]| {
        w.cutover()
            .args(["rollback", "--pipeline", &pipeline_arg])
            .args(extra)
            .output()
            .unwrap()
    };
    let prune = |extra: &[&str]| {
        w.cutover()
            .args(["backup", "prune"])
            .args(extra)
            .output()
            .unwrap()
    };
    // The first run finds `kinds` empty: no backup. Each re-run writes new labels over a backup.
    assert_eq!(migrate(&["kinds"]).status.code(), Some(0));
    let mut states = vec![w.docs("kinds").await];
    for n in 1..=3 {
        w.sql(&format!("UPDATE kinds SET label = 'Rerun {n}'"))
            .await;
        let out = migrate(&["kinds", "--rerun"]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        states.push(w.docs("kinds").await);
    }
    // The report shows the backup and its time.
    let report = w.latest_report();
    let kinds = &report["entities"][0];
    let newest = latest_backup(&w, "kinds").await.unwrap();
    assert_eq!(kinds["backup"], newest.as_str(), "{kinds}");
    assert_eq!(kinds["backup_documents"], 3, "{kinds}");
    assert!(kinds["backup_ms"].as_u64().unwrap() > 0, "{kinds}");
    let backups = backup_names(&w);
    assert_eq!(backups.len(), 3, "{backups:?}");
    assert_eq!(backups[0], newest);

    // A dry run says what it would drop and drops nothing.
    let out = prune(&["--keep", "1", "--dry-run"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let text = out_text(&out);
    assert!(text.contains("would drop 2 backup(s), keep 1"), "{text}");
    assert!(
        text.contains(&format!("would drop {}", backups[2])),
        "{text}"
    );
    assert_eq!(backup_names(&w), backups);

    let out = prune(&["--keep", "1"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let text = out_text(&out);
    assert!(
        text.contains(&format!("kept: {newest}")) && text.contains("needed by rollback of kinds"),
        "{text}"
    );
    assert_eq!(backup_names(&w), std::slice::from_ref(&newest));
    let collections = w.mongo().await.list_collection_names().await.unwrap();
    for dropped in &backups[1..] {
        assert!(!collections.contains(dropped), "{collections:?}");
    }

    // Rollback restores from the backup that was kept.
    let out = rollback(&[]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(w.docs("kinds").await, states[2]);

    // Two more re-runs, the last rolled back: the newest backup is a rolled-back step's, and the
    // one before it is what the next rollback restores. Both stay with --keep 1.
    for n in 4..=5 {
        w.sql(&format!("UPDATE kinds SET label = 'Rerun {n}'"))
            .await;
        let out = migrate(&["kinds", "--rerun"]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    }
    let rolled_back = latest_backup(&w, "kinds").await.unwrap();
    let out = rollback(&[]);
    assert!(out.status.success(), "{}", out_text(&out));
    let needed = latest_backup(&w, "kinds").await.unwrap();
    let backups = backup_names(&w);
    assert_eq!(backups.len(), 3, "{backups:?}");
    let out = prune(&["--keep", "1", "--entity", "kinds"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let text = out_text(&out);
    assert!(
        text.contains(&format!("kept: {needed}")) && text.contains("needed by rollback of kinds"),
        "{text}"
    );
    assert_eq!(backup_names(&w), backups[..2], "{text}");
    assert_eq!(backups[0], rolled_back);
    assert_eq!(backups[1], needed);
    let out = rollback(&[]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(
        w.docs("kinds").await,
        states[2],
        "restored from the kept backup"
    );

    // The step before that has lost its backup to the first prune: refused, nothing changes.
    let out = rollback(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    assert!(out_text(&out).contains("is gone"), "{}", out_text(&out));
    assert_eq!(w.docs("kinds").await, states[2]);
    // Rolling everything back needs only the first step's state: empty.
    let out = rollback(&["--all"]);
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(w.count("kinds").await, 0);
    w.drop().await;
}

#[tokio::test]
async fn a_retention_setting_prunes_after_each_run() {
    let w = World::new("retention").await;
    let pipeline = setup(&w).await;
    std::fs::write(w.dir.path().join("cutover.toml"), "[backups]\nkeep = 1\n").unwrap();
    let migrate = |extra: &[&str]| w.migrate_with(&pipeline, extra);
    assert_eq!(migrate(&["kinds"]).status.code(), Some(0));
    let mut taken = Vec::new();
    for n in 1..=3 {
        w.sql(&format!("UPDATE kinds SET label = 'Rerun {n}'"))
            .await;
        let out = migrate(&["kinds", "--rerun"]);
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let name = latest_backup(&w, "kinds").await.unwrap();
        let text = out_text(&out);
        assert!(
            text.contains(&format!("kinds: backup {name} of 3 documents in")),
            "{text}"
        );
        if let Some(previous) = taken.last() {
            assert!(
                text.contains("dropped 1 older backup(s)") && text.contains(previous),
                "{text}"
            );
        }
        assert_eq!(backup_names(&w), std::slice::from_ref(&name));
        taken.push(name);
    }
    let before = w.docs("kinds").await;
    w.sql("UPDATE kinds SET label = 'Rerun 4'").await;
    assert_eq!(migrate(&["kinds", "--rerun"]).status.code(), Some(0));
    let out = w
        .cutover()
        .args(["rollback", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    assert_eq!(w.docs("kinds").await, before);
    w.drop().await;
}

/// A row changed after a crash and before the resume, below the checkpoint, is not read by the
/// resumed run: the next `--since-last` copies it (the step's watermark is the snapshot of its
/// first part, not the resume's).
#[tokio::test]
async fn since_last_after_a_resumed_run_copies_a_row_changed_before_the_resume() {
    let w = World::new("delta_resume").await;
    let pipeline = setup(&w).await;
    let small = ["--batch-size", "200", "--concurrency", "2"];
    let mut child = spawn_migrate(&w, &pipeline, &small);
    kill_after(&w, &mut child, "events", 20_000).await;
    w.sql("UPDATE events SET note = 'changed between', at = date_trunc('milliseconds', now()) WHERE id = 5")
        .await;
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let note_of_5 = |docs: Vec<Document>| {
        docs.into_iter()
            .find(|d| d.get_i64("_id") == Ok(5))
            .and_then(|d| d.get_str("note").ok().map(str::to_string))
    };
    assert_ne!(
        note_of_5(w.docs("events").await).as_deref(),
        Some("changed between"),
        "the resumed run does not read below its checkpoint"
    );
    let out = w.migrate_with(&pipeline, &["--since-last"]);
    assert!(
        out.status.code() != Some(1),
        "{}",
        common::output_text(&out)
    );
    assert_eq!(
        note_of_5(w.docs("events").await).as_deref(),
        Some("changed between")
    );
    w.drop().await;
}

/// `--since-last` misses no change, whatever its change column: a `date` changed today, a
/// `timestamp` written in a database whose time zone is not UTC, a row whose column is NULL, and
/// a child changed alone under a parent with `updated_at` (copied in full, and said so). After
/// the catch-up, verify passes.
#[tokio::test]
async fn since_last_misses_no_change_of_any_column_type() {
    let w = World::new("delta_shapes").await;
    let db = w.pg_url.rsplit('/').next().unwrap().to_string();
    w.sql(&format!(
        "ALTER DATABASE {db} SET timezone = 'America/New_York';
         CREATE TABLE d (id int PRIMARY KEY, v text, upd date NOT NULL);
         INSERT INTO d VALUES (1, 'a', current_date), (2, 'b', current_date - 3);
         CREATE TABLE l (id int PRIMARY KEY, v text, upd timestamp NOT NULL);
         INSERT INTO l VALUES (1, 'a', '2024-01-01'), (2, 'b', '2024-01-02');
         CREATE TABLE n (id int PRIMARY KEY, v text, upd timestamptz);
         INSERT INTO n VALUES (1, 'a', now()), (2, 'b', NULL);
         CREATE TABLE p (id int PRIMARY KEY, v text, upd timestamptz NOT NULL DEFAULT now());
         INSERT INTO p VALUES (1, 'a'), (2, 'b');
         CREATE TABLE c (id int PRIMARY KEY, p_id int, v int);
         INSERT INTO c VALUES (1, 1, 10), (2, 1, 20), (3, 2, 30);"
    ))
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    for t in ["d", "l", "n"] {
        std::fs::write(
            dir.join(format!("mappings/{t}.toml")),
            format!(
                "version = 1\nname = \"{t}\"\n[source]\ntable = \"{t}\"\nkey = [\"id\"]\nupdated_at = \"upd\"\n\
                 [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("mappings/p.toml"),
        "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"id\"]\nupdated_at = \"upd\"\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[embed]]\npath = \"kids\"\ntable = \"c\"\nforeign_key = \"p_id\"\norder_by = [\"id\"]\n\
         [[embed.field]]\npath = \"v\"\ncolumn = \"v\"\n",
    )
    .unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"delta\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"all\"\nentities = [\"d\", \"l\", \"n\", \"p\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    // The old system goes on: each change below is invisible to a plain `>= snapshot time`.
    w.sql(
        "UPDATE d SET v = 'a2', upd = current_date WHERE id = 1;
         INSERT INTO d VALUES (3, 'c', current_date);
         UPDATE l SET v = 'a2', upd = localtimestamp WHERE id = 1;
         INSERT INTO l VALUES (3, 'c', localtimestamp);
         INSERT INTO n VALUES (3, 'c', NULL);
         UPDATE n SET v = 'b2' WHERE id = 2;
         UPDATE c SET v = 11 WHERE id = 1;
         INSERT INTO c VALUES (4, 2, 40);",
    )
    .await;
    let out = w.migrate_with(&pipeline, &["--since-last"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report = w.latest_report();
    let p = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "p")
        .unwrap();
    assert!(
        p["delta"]
            .as_str()
            .unwrap()
            .contains("embedded children have no change column"),
        "{report}"
    );
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// A mapping whose collection is named like the ledger's own (`cutover_steps`) is refused before
/// anything is written: a rollback of its step would have wiped the ledger's records.
#[tokio::test]
async fn a_mapping_into_the_ledgers_collections_is_refused() {
    let w = World::new("ledger_name").await;
    w.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\ncollection = \"cutover_steps\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("named like the ledger's own"), "{text}");
    let names = w.mongo().await.list_collection_names().await.unwrap();
    assert!(!names.contains(&"cutover_steps".to_string()), "{names:?}");
    // Without case too (Appwrite's table ids ignore it).
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\ncollection = \"Cutover_Runs\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    w.drop().await;
}

/// Found by the eleventh tester (R9): `backup restore` of the backup a second re-run's first
/// re-run took puts the first run's data back; the ledger now says so — the two re-runs' steps
/// rolled back, the first run's applied — so `migrate` does not call the entity up to date at
/// the newest run's data, and `rollback` would not move the data forward.
#[tokio::test]
async fn a_restored_backup_is_recorded_as_the_rollback_it_is() {
    let w = World::new("ledger_backup_restore").await;
    w.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
           INSERT INTO t SELECT g, g FROM generate_series(1, 50) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let run = |args: &[&str]| {
        let out = w.migrate_with(&pipeline, args);
        assert!(out.status.success(), "{}", common::output_text(&out));
        w.latest_report()
    };
    let first = run(&[]);
    w.sql("UPDATE t SET v = v + 1000").await;
    let second = run(&["--rerun"]);
    w.sql("UPDATE t SET v = v + 1000").await;
    let third = run(&["--rerun"]);
    let backup = second["entities"][0]["backup"]
        .as_str()
        .unwrap()
        .to_string();
    let out = w
        .cutover()
        .args(["backup", "restore", &backup])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let said = common::output_text(&out);
    for r in [&second, &third] {
        assert!(said.contains(r["run_id"].as_str().unwrap()), "{said}");
    }
    let one = w
        .mongo()
        .await
        .collection::<Document>("t")
        .find_one(doc! { "_id": 1 })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.get_i32("v"), Ok(1), "the first run's data");
    let out = w
        .cutover()
        .args(["status", "--json", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        status.contains(first["run_id"].as_str().unwrap())
            && !status.contains(third["run_id"].as_str().unwrap()),
        "{status}"
    );
    // A plain re-run brings the data forward again.
    let again = run(&["--rerun"]);
    assert_eq!(again["entities"][0]["written"], 50);
    w.drop().await;
}

/// A collection whose name leaves no room for the backup's suffix in MongoDB's 255-byte
/// namespace (a plain one and a multi-byte one, cut on a character boundary): `--rerun` backs it
/// up under a shortened name the ledger records, and rollback puts the first run's documents back.
#[tokio::test]
async fn a_long_collection_name_is_backed_up_and_rolled_back() {
    for (case, name) in [
        ("ascii", "c".repeat(200)),
        ("multibyte", format!("c{}", "é".repeat(100))),
    ] {
        let w = World::new(&format!("long_backup_{case}")).await;
        w.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one'), (2, 'two');")
            .await;
        let mapping = format!(
            "version = 1\nname = \"t\"\ncollection = \"{name}\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
        );
        let pipeline = common::one_entity_pipeline(&w, "t", &mapping);
        let out = w.migrate_with(&pipeline, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case}: {}",
            common::output_text(&out)
        );
        let first = w.docs(&name).await;
        w.sql("UPDATE t SET v = 'changed'").await;
        let out = w.migrate_with(&pipeline, &["--rerun"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case}: {}",
            common::output_text(&out)
        );
        assert_ne!(w.docs(&name).await, first, "{case}");
        let out = w
            .cutover()
            .args(["rollback", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case}: {}",
            common::output_text(&out)
        );
        assert_eq!(
            w.docs(&name).await,
            first,
            "{case}: rolled back to the first run"
        );
        w.drop().await;
    }
}

/// A step's `reversible` in the ledger says whether rolling it back alone puts its destination
/// back: true when it found the collection empty or took a backup, false for a re-run into a
/// full collection with `--no-backup` (it was `true` whatever the step).
#[tokio::test]
async fn a_steps_reversible_flag_says_whether_it_can_be_undone_alone() {
    let w = World::new("ledger_reversible").await;
    w.sql(
        "CREATE TABLE kinds (code text PRIMARY KEY, label text NOT NULL);
           INSERT INTO kinds VALUES ('a', 'Alpha'), ('b', 'Beta');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(&w, "kinds", KINDS_MAPPING);
    let steps = w.mongo().await.collection::<Document>("cutover_steps");
    let last = || async {
        let mut all: Vec<Document> = futures::TryStreamExt::try_collect(
            steps.find(doc! { "entity": "kinds" }).await.unwrap(),
        )
        .await
        .unwrap();
        all.sort_by_key(|d| d.get_datetime("started_at").unwrap().timestamp_millis());
        all.pop().unwrap()
    };
    for (args, empty, backup, reversible) in [
        (&[][..], true, false, true),
        (&["--rerun"][..], false, true, true),
        (&["--rerun", "--no-backup"][..], false, false, false),
    ] {
        let out = w.migrate_with(&pipeline, args);
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
        let s = last().await;
        assert_eq!(
            (
                s.get_bool("was_empty").unwrap(),
                s.get_str("backup").is_ok(),
                s.get_bool("reversible").unwrap()
            ),
            (empty, backup, reversible),
            "{args:?}: {s}"
        );
    }
    w.drop().await;
}

/// adv36 F5: two applications' pipelines pointed at one target database, each with an entity
/// `customers` of its own mapping. The second is refused naming the first pipeline and the way
/// out (a database of its own) — also with --rerun, which wrote its rows into the first one's
/// collection — and nothing of it is written; --accept-changed takes the entity over knowingly.
#[tokio::test]
async fn another_pipelines_entity_in_the_same_database_is_refused_naming_it() {
    let w = World::new("two_pipelines").await;
    w.sql(
        "CREATE TABLE shop_customers (id text PRIMARY KEY, name text);
         INSERT INTO shop_customers VALUES ('ALFKI', 'Alfreds'), ('BONAP', 'Bon app');
         CREATE TABLE music_customers (id int PRIMARY KEY, email text);
         INSERT INTO music_customers VALUES (1, 'a@example.org'), (2, 'b@example.org');",
    )
    .await;
    let write = |dir: &str, pipeline: &str, table: &str, column: &str| {
        let root = w.dir.path().join(dir);
        std::fs::create_dir_all(root.join("mappings")).unwrap();
        std::fs::write(
            root.join("mappings/customers.toml"),
            format!("version = 1\nname = \"customers\"\n[source]\ntable = \"{table}\"\nkey = [\"id\"]\n[[field]]\npath = \"{column}\"\ncolumn = \"{column}\"\n"),
        )
        .unwrap();
        let path = root.join("pipeline.toml");
        std::fs::write(
            &path,
            format!("version = 1\nname = \"{pipeline}\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"customers\"]\n"),
        )
        .unwrap();
        path
    };
    let trading = write("trading", "trading", "shop_customers", "name");
    let music = write("music", "music", "music_customers", "email");
    let out = w.migrate_with(&trading, &[]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let before = w.docs("customers").await;
    for extra in [&[][..], &["--rerun"][..]] {
        let out = w.migrate_with(&music, extra);
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {text}");
        assert!(
            text.contains("customers (written by pipeline `trading`"),
            "{extra:?}: {text}"
        );
        assert!(text.contains("a database of its own"), "{text}");
        assert!(!text.contains("re-run it with --rerun"), "{text}");
        assert_eq!(w.docs("customers").await, before, "{extra:?}");
    }
    let out = w.migrate_with(&music, &["--accept-changed"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    w.drop().await;
}

/// adv44 F6: a delta of a query source follows the query's updated_at only: the report says a
/// value read from another table changes no row unless that column takes its time too.
#[tokio::test]
async fn a_delta_of_a_query_source_says_what_its_updated_at_follows() {
    let w = World::new("delta_query").await;
    w.sql(
        "CREATE TABLE o (id int PRIMARY KEY, c int, at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE c (id int PRIMARY KEY, name text);
         INSERT INTO c VALUES (1, 'one'); INSERT INTO o (id, c) VALUES (1, 1), (2, 1);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "o",
        "version = 1\nname = \"o\"\n[source]\nquery = \"SELECT o.id, c.name, o.at FROM o JOIN c ON c.id = o.c\"\n\
         key = [\"id\"]\nupdated_at = \"at\"\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let out = w.migrate_with(&pipeline, &["--since-last"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report = w.latest_report();
    let delta = report["entities"][0]["delta"].as_str().unwrap_or_default();
    assert!(delta.contains("by the query's updated_at"), "{report}");
    w.drop().await;
}

/// adv44 F4: a delta whose only changed row meets a key a unique index holds in another
/// document is that row's reject (as a fresh run's), not a stage the target refused: it
/// completes with its reject, and the next delta starts after it, not from its checkpoint.
#[tokio::test]
async fn a_delta_whose_rows_all_meet_a_held_unique_key_completes_with_rejects() {
    let w = World::new("delta_unique").await;
    w.sql(
        "CREATE TABLE acct (id int PRIMARY KEY, email text NOT NULL, at timestamptz NOT NULL);
         INSERT INTO acct SELECT g, 'e' || g || '@x', now() - interval '1 day' FROM generate_series(1, 6) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "acct",
        "version = 1\nname = \"acct\"\n[source]\ntable = \"acct\"\nkey = [\"id\"]\nupdated_at = \"at\"\n\
         [[field]]\npath = \"email\"\ncolumn = \"email\"\n[[index]]\nkeys = [\"email\"]\nunique = true\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.sql("UPDATE acct SET email = 'e4@x', at = now() WHERE id = 5")
        .await;
    let out = w.migrate_with(&pipeline, &["--since-last"]);
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    let report = w.latest_report();
    assert_eq!(report["entities"][0]["status"], "completed", "{report}");
    assert_eq!(report["entities"][0]["rejected"], 1, "{report}");
    // Row 4 moves on (below the rejected row's key): the next delta copies it.
    w.sql("UPDATE acct SET email = 'e4new@x', at = now() WHERE id = 4")
        .await;
    let out = w.migrate_with(&pipeline, &["--since-last"]);
    let text = common::output_text(&out);
    assert!(matches!(out.status.code(), Some(0 | 2)), "{text}");
    let four = w
        .docs("acct")
        .await
        .into_iter()
        .find(|d| d.get_i32("_id") == Ok(4))
        .unwrap();
    assert_eq!(four.get_str("email"), Ok("e4new@x"), "{text}");
    w.drop().await;
}
