//! Rollback and backups under kill -9, on MongoDB and Appwrite (the stand-in, in this process):
//! the real binary is killed at random points of `cutover rollback` and of the backup of
//! `migrate --rerun`, then the next command runs; the data (every document, compared with a state
//! the test took itself), the ledger's states and the backup list must come out exact. And the
//! state of an entity whose failed re-run was restored (`--restore-on-failure`).

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appwrite_standin::StandIn;
use bson::{Document, doc};
use common::World;
use futures::TryStreamExt;
use serde_json::{Value, json};

const ROWS: u32 = 4000;

const ITEMS_MAPPING: &str = r#"
version = 1
name = "items"
[source]
table = "items"
key = ["id"]
[[field]]
path = "label"
column = "label"
validate = { max_length = 20 }
"#;

const NOTES_MAPPING: &str = r#"
version = 1
name = "notes"
[source]
table = "notes"
key = ["id"]
[[field]]
path = "itemId"
column = "item_id"
[[field]]
path = "body"
column = "body"
"#;

const PIPELINE: &str = r#"
version = 1
name = "items"
mappings_dir = "mappings"
[[stage]]
name = "base"
entities = ["items"]
[[stage]]
name = "more"
entities = ["notes"]
depends_on = ["base"]
"#;

const KEY: &str = "test-key-1";

/// One test's target: this world's MongoDB database, or an Appwrite stand-in.
struct Case {
    w: World,
    aw: Option<Arc<StandIn>>,
    endpoint: String,
    pipeline: String,
}

impl Case {
    async fn new(name: &str, appwrite: bool) -> Case {
        let w = World::new(name).await;
        w.sql(&format!(
            "CREATE TABLE items (id integer PRIMARY KEY, label text NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g;
             CREATE TABLE notes (id integer PRIMARY KEY, item_id integer NOT NULL, body text);
             INSERT INTO notes SELECT g, g, 'note ' || g FROM generate_series(1, 50) g;"
        ))
        .await;
        let dir = w.dir.path();
        std::fs::create_dir_all(dir.join("mappings")).unwrap();
        std::fs::write(dir.join("mappings/items.toml"), ITEMS_MAPPING).unwrap();
        std::fs::write(dir.join("mappings/notes.toml"), NOTES_MAPPING).unwrap();
        std::fs::write(dir.join("pipeline.toml"), PIPELINE).unwrap();
        let pipeline = dir.join("pipeline.toml").display().to_string();
        let (aw, endpoint) = if appwrite {
            let s = Arc::new(StandIn::new("cutover", KEY));
            let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
                .await
                .unwrap();
            (Some(s), format!("http://{addr}/v1"))
        } else {
            (None, String::new())
        };
        Case {
            w,
            aw,
            endpoint,
            pipeline,
        }
    }

    /// `cutover COMMAND ARGS… --pipeline P [--target appwrite]`, not yet started.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("cutover"));
        cmd.current_dir(self.w.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUTOVER_SOURCE_URL", &self.w.pg_url)
            .env("MONGODB_URI", common::mongo_uri())
            .env("CUTOVER_MONGODB_DATABASE", &self.w.mongo_db)
            .env("APPWRITE_ENDPOINT", &self.endpoint)
            .env("APPWRITE_PROJECT", "cutover")
            .env("APPWRITE_API_KEY", KEY)
            .env("APPWRITE_DATABASE", "registry")
            .args(args);
        if args[0] != "backup" {
            cmd.args(["--pipeline", &self.pipeline]);
        }
        if self.aw.is_some() {
            cmd.args(["--target", "appwrite"]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// Runs a command to its end (off the runtime that serves the stand-in).
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// Runs `args` and SIGKILLs it after `delay` (unless it ended before); whether it was killed.
    async fn kill_after(&self, args: &[&str], delay: Duration) -> bool {
        let mut child = self.command(args).spawn().unwrap();
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let killed = child.try_wait().unwrap().is_none();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        killed
    }

    /// Runs `args` and SIGKILLs it `extra` after the ledger shows `entity`'s step `status`.
    async fn kill_when(&self, args: &[&str], entity: &str, status: &str, extra: Duration) {
        let mut child = self.command(args).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if self
                .steps()
                .await
                .iter()
                .any(|s| s.get_str("entity") == Ok(entity) && s.get_str("status") == Ok(status))
            {
                break;
            }
            assert!(Instant::now() < deadline, "no {status} step in time");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(extra).await;
        child.kill().ok();
        child.wait().unwrap();
    }

    /// Records of a ledger table, read behind cutover's back.
    async fn ledger(&self, table: &str) -> Vec<Document> {
        match &self.aw {
            None => self
                .w
                .mongo()
                .await
                .collection::<Document>(table)
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap(),
            Some(aw) => aw
                .rows("registry", table)
                .iter()
                .filter_map(|r| {
                    let v: Value = serde_json::from_str(r["doc"].as_str()?).ok()?;
                    match bson::Bson::try_from(v).ok()? {
                        bson::Bson::Document(d) => Some(d),
                        _ => None,
                    }
                })
                .collect(),
        }
    }

    async fn steps(&self) -> Vec<Document> {
        self.ledger("cutover_steps").await
    }

    /// Every document (row) of `items`, its fields only, sorted by key, as text.
    async fn items(&self) -> Vec<String> {
        self.table("items").await
    }

    async fn table(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = match &self.aw {
            None => self
                .w
                .docs(name)
                .await
                .into_iter()
                .map(|d| bson::Bson::Document(d).into_relaxed_extjson().to_string())
                .collect(),
            Some(aw) => aw
                .rows("registry", name)
                .into_iter()
                .map(|mut r| {
                    let o = r.as_object_mut().unwrap();
                    o.retain(|k, _| !k.starts_with('$') || k == "$id");
                    r.to_string()
                })
                .collect(),
        };
        out.sort();
        out
    }

    /// The labels of `items`, sorted: the test's own check of what a state holds.
    async fn labels(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .items()
            .await
            .iter()
            .map(|t| {
                let v: Value = serde_json::from_str(t).unwrap();
                v["label"].as_str().unwrap().to_string()
            })
            .collect();
        out.sort();
        out
    }

    /// The backup copies in the target (collections or tables), whether listed or not.
    async fn backup_copies(&self) -> Vec<String> {
        let mut out: Vec<String> = match &self.aw {
            None => {
                self.mongo_idle().await;
                self.w
                    .mongo()
                    .await
                    .list_collection_names()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|c| c.contains("__backup__"))
                    .collect()
            }
            Some(aw) => aw
                .list_tables("registry", &[json!({"method": "limit", "values": [500]})])
                .unwrap()["tables"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["$id"].as_str().unwrap().to_string())
                .filter(|t| t.starts_with("bk_"))
                .collect(),
        };
        out.sort();
        out
    }

    /// Waits until no operation of a killed client still runs on this database (the server
    /// finishes a `$out` copy whose client died).
    async fn mongo_idle(&self) {
        let client = mongodb::Client::with_uri_str(common::mongo_uri())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ops = client
                .database("admin")
                .run_command(doc! {
                    "currentOp": 1,
                    "active": true,
                    "ns": { "$regex": format!("^{}\\.", self.w.mongo_db) },
                })
                .await
                .unwrap();
            if ops
                .get_array("inprog")
                .map(|a| a.is_empty())
                .unwrap_or(true)
            {
                return;
            }
            assert!(Instant::now() < deadline, "operations still running: {ops}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `cutover backup list`: (name, complete) per line.
    async fn backup_list(&self) -> Vec<(String, bool)> {
        let out = self.run(&["backup", "list"]).await;
        assert!(out.status.success(), "{}", common::output_text(&out));
        let mut list: Vec<(String, bool)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| *l != "no backups")
            .map(|l| {
                (
                    l.split_whitespace().next().unwrap().to_string(),
                    l.contains(" docs "),
                )
            })
            .collect();
        list.sort();
        list
    }

    /// `cutover status --json`: (state, last run) of `entity`.
    async fn state(&self, entity: &str) -> (String, String) {
        let out = self.run(&["status", "--json"]).await;
        assert!(out.status.success(), "{}", common::output_text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let e = v["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["entity"] == entity)
            .unwrap()
            .clone();
        (
            e["state"].as_str().unwrap().to_string(),
            e["last_run"].as_str().unwrap_or("").to_string(),
        )
    }

    fn last_run_id(&self) -> String {
        self.w.latest_report()["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn migrate(&self, args: &[&str]) -> Output {
        let mut all = vec!["migrate", "--quiet"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
        out
    }
}

fn expected_labels(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = (1..=ROWS).map(|i| format!("{prefix}{i}")).collect();
    v.sort();
    v
}

/// How long a command takes uninterrupted (ms, at least 1).
async fn timed(c: &Case, args: &[&str]) -> (Output, u64) {
    let t = Instant::now();
    let out = c.run(args).await;
    (out, (t.elapsed().as_millis() as u64).max(1))
}

/// K9: kill -9 during `cutover rollback` of a re-run, at random points; the next command sees
/// the rollback unfinished (`rolling-back`: `migrate` refuses), and `rollback` finishes it.
async fn a_killed_rollback_is_shown_and_finished(c: &Case) {
    c.migrate(&["items"]).await;
    let first_run = c.last_run_id();
    let before = c.items().await;
    assert_eq!(c.labels().await, expected_labels("item "));
    c.w.sql("UPDATE items SET label = 'v2 ' || id").await;

    // Trial 0 is not killed: how long a rollback takes.
    let mut span = 0;
    let mut seen_unfinished = 0;
    // Past the eight, kills inside the restore go on until one lands there (a loaded machine can
    // finish the restore between the poll that sees it and the kill).
    let mut trial = 0;
    while trial < 8 || (seen_unfinished == 0 && trial < 32) {
        c.migrate(&["items", "--rerun"]).await;
        assert_eq!(c.labels().await, expected_labels("v2 "));
        let rerun = c.last_run_id();
        let after = c.items().await;
        if trial == 0 {
            let (out, ms) = timed(c, &["rollback"]).await;
            assert!(out.status.success(), "{}", common::output_text(&out));
            span = ms;
        } else if trial % 2 == 1 && trial < 8 {
            let delay = fastrand::u64(0..=span);
            c.kill_after(&["rollback"], Duration::from_millis(delay))
                .await;
        } else {
            // Right in the restore: once the step is recorded as being rolled back.
            let extra = if trial < 8 {
                fastrand::u64(0..=span / 4)
            } else {
                0
            };
            c.kill_when(
                &["rollback"],
                "items",
                "rolling-back",
                Duration::from_millis(extra),
            )
            .await;
        }
        let (state, last) = c.state("items").await;
        match state.as_str() {
            // Killed before it began: untouched.
            "applied" if last == rerun => assert_eq!(c.items().await, after, "trial {trial}"),
            // Done: the first run's data.
            "applied" => {
                assert_eq!(last, first_run, "trial {trial}");
                assert_eq!(c.items().await, before, "trial {trial}");
            }
            "rolling-back" => {
                seen_unfinished += 1;
                let out = c.run(&["migrate", "--quiet", "items"]).await;
                assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
                assert!(
                    common::output_text(&out).contains("the rollback of items"),
                    "{}",
                    common::output_text(&out)
                );
                // A dependent is refused too: items is not applied.
                let out = c.run(&["migrate", "--quiet", "notes"]).await;
                assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
                // The backup the rollback restores from cannot be dropped under it.
                let steps = c.steps().await;
                let backup = steps
                    .iter()
                    .find(|s| s.get_str("status") == Ok("rolling-back"))
                    .and_then(|s| s.get_str("backup").ok())
                    .expect("the rolling-back step names its backup");
                let out = c.run(&["backup", "drop", backup]).await;
                assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
                assert!(
                    common::output_text(&out).contains("interrupted rollback"),
                    "{}",
                    common::output_text(&out)
                );
            }
            other => panic!("trial {trial}: items is {other}"),
        }
        if (state.as_str(), last.as_str()) != ("applied", first_run.as_str()) {
            let out = c.run(&["rollback"]).await;
            assert!(out.status.success(), "{}", common::output_text(&out));
        }
        assert_eq!(
            c.state("items").await,
            ("applied".to_string(), first_run.clone()),
            "trial {trial}"
        );
        assert_eq!(c.items().await, before, "trial {trial}");
        assert_eq!(c.labels().await, expected_labels("item "), "trial {trial}");
        // The rolled-back re-run's data is gone, the first run's stands: a plain migrate has
        // nothing to do.
        let out = c.migrate(&["items"]).await;
        assert!(
            common::output_text(&out).contains("already applied"),
            "{}",
            common::output_text(&out)
        );
        trial += 1;
    }
    assert!(
        seen_unfinished > 0,
        "no kill landed inside a restore in {trial} trials"
    );

    // The first run found the collection empty: its rollback empties it, killed or not.
    c.kill_when(
        &["rollback", "--all"],
        "items",
        "rolling-back",
        Duration::from_millis(fastrand::u64(0..=span / 4)),
    )
    .await;
    let (state, _) = c.state("items").await;
    if state != "rolled-back" {
        assert_eq!(state, "rolling-back");
        let out = c.run(&["rollback"]).await;
        assert!(out.status.success(), "{}", common::output_text(&out));
    }
    assert_eq!(c.state("items").await.0, "rolled-back");
    assert!(c.items().await.is_empty());
    // Then a migrate starts afresh.
    c.migrate(&["items"]).await;
    assert_eq!(c.labels().await, expected_labels("v2 "));
}

/// K6: kill -9 at random points of `migrate --rerun` (its backup included); every backup copy in
/// the target is listed, the incomplete ones as such, and `backup prune` drops them; the
/// rollback afterwards restores from a complete backup only.
async fn a_killed_backup_is_listed_and_pruned(c: &Case) {
    c.migrate(&["items"]).await;
    let first = c.items().await;
    c.w.sql("UPDATE items SET label = 'v2 ' || id").await;
    let (out, span) = timed(c, &["migrate", "--quiet", "items", "--rerun"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let second = c.items().await;
    let mut incomplete_seen = 0;
    // Eight trials, half at random points and half inside the copy; on a loaded machine the copy
    // can finish between the poll that sees it and the kill, so inside-the-copy trials go on
    // (killing at once) until one lands there.
    let mut trial = 0;
    while trial < 8 || (incomplete_seen == 0 && trial < 32) {
        if trial % 2 == 0 && trial < 8 {
            let delay = fastrand::u64(0..=span);
            c.kill_after(
                &["migrate", "--quiet", "items", "--rerun"],
                Duration::from_millis(delay),
            )
            .await;
        } else {
            // Inside the copy: once its record says in progress.
            let args = ["migrate", "--quiet", "items", "--rerun"];
            let mut child = c.command(&args).spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().unwrap().is_none() {
                let copying = c
                    .ledger("cutover_backups")
                    .await
                    .iter()
                    .any(|b| b.get_str("status") == Ok("in-progress"));
                if copying {
                    if trial < 8 {
                        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=3))).await;
                    }
                    break;
                }
                assert!(Instant::now() < deadline, "no backup in progress in time");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            child.kill().ok();
            child.wait().unwrap();
        }
        let listed = c.backup_list().await;
        let names: Vec<&String> = listed.iter().map(|(n, _)| n).collect();
        let copies = c.backup_copies().await;
        let copy_names = |name: &str| -> Vec<String> {
            copies
                .iter()
                .filter(|t| name.starts_with(t.as_str()) || t.starts_with(name))
                .cloned()
                .collect()
        };
        // Every copy in the target is a listed backup.
        for copy in &copies {
            assert!(
                names.iter().any(|n| copy.starts_with(n.as_str())),
                "trial {trial}: {copy} is not listed: {listed:?}"
            );
        }
        incomplete_seen += listed.iter().filter(|(_, done)| !done).count();
        for (name, done) in &listed {
            if *done {
                assert!(!copy_names(name).is_empty(), "{name} listed, not there");
            }
        }
        // An incomplete backup is dropped (named); prune drops the rest of them.
        if let Some((name, _)) = listed.iter().find(|(_, done)| !done) {
            let out = c.run(&["backup", "drop", name]).await;
            assert!(out.status.success(), "{}", common::output_text(&out));
            let left = c.backup_copies().await;
            assert!(
                !left.iter().any(|t| t.starts_with(name.as_str())),
                "{name}: {left:?}"
            );
        }
        let out = c.run(&["backup", "prune", "--keep", "0"]).await;
        assert!(out.status.success(), "{}", common::output_text(&out));
        let listed = c.backup_list().await;
        assert!(listed.iter().all(|(_, done)| *done), "{listed:?}");
        let copies = c.backup_copies().await;
        let mut expect: Vec<String> = Vec::new();
        for (name, _) in &listed {
            expect.extend(
                copies
                    .iter()
                    .filter(|t| t.starts_with(name.as_str()))
                    .cloned(),
            );
        }
        expect.sort();
        assert_eq!(copies, expect, "trial {trial}: {listed:?}");
        trial += 1;
    }
    assert!(
        incomplete_seen > 0,
        "no kill landed inside a backup copy in {trial} trials"
    );

    // Finish (resuming a killed step if need be), then one more clean re-run and its rollback:
    // the data before the re-run comes back.
    c.migrate(&["items"]).await;
    assert_eq!(c.items().await, second);
    c.w.sql("UPDATE items SET label = 'v3 ' || id").await;
    c.migrate(&["items", "--rerun"]).await;
    assert_eq!(c.labels().await, expected_labels("v3 "));
    let out = c.run(&["rollback"]).await;
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert_eq!(c.items().await, second);
    assert_ne!(c.items().await, first);
}

/// K7: a re-run that fails and is restored leaves the entity applied by the run before it;
/// a dependent stage then migrates.
async fn a_restored_rerun_leaves_the_entity_applied(c: &Case) {
    c.migrate(&["items"]).await;
    let first_run = c.last_run_id();
    let before = c.items().await;
    // Half the rows change; the rows past 3000 fail the mapping: with --max-rejects 0 the
    // re-run fails after writing some of the change.
    c.w.sql("UPDATE items SET label = 'v2 ' || id").await;
    c.w.sql("UPDATE items SET label = repeat('x', 30) WHERE id > 3000")
        .await;
    let out = c
        .run(&[
            "migrate",
            "--quiet",
            "items",
            "--rerun",
            "--restore-on-failure",
            "--max-rejects",
            "0",
            "--batch-size",
            "500",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", common::output_text(&out));
    assert!(
        common::output_text(&out).contains("failed, restored"),
        "{}",
        common::output_text(&out)
    );
    assert_eq!(c.items().await, before);
    assert_eq!(
        c.state("items").await,
        ("applied".to_string(), first_run.clone())
    );
    let out = c.migrate(&["notes"]).await;
    assert!(
        !common::output_text(&out).contains("depends on"),
        "{}",
        common::output_text(&out)
    );
    assert_eq!(c.state("notes").await.0, "applied");
    assert_eq!(c.table("notes").await.len(), 50);
    // The first run's data stands: a plain migrate has nothing to do.
    let out = c.migrate(&["items"]).await;
    assert!(
        common::output_text(&out).contains("already applied"),
        "{}",
        common::output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_a_killed_rollback_is_shown_and_finished() {
    let c = Case::new("rbkill_m", false).await;
    a_killed_rollback_is_shown_and_finished(&c).await;
    c.w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appwrite_a_killed_rollback_is_shown_and_finished() {
    let c = Case::new("rbkill_a", true).await;
    a_killed_rollback_is_shown_and_finished(&c).await;
    c.w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_a_killed_backup_is_listed_and_pruned() {
    let c = Case::new("bkkill_m", false).await;
    a_killed_backup_is_listed_and_pruned(&c).await;
    c.w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appwrite_a_killed_backup_is_listed_and_pruned() {
    let c = Case::new("bkkill_a", true).await;
    a_killed_backup_is_listed_and_pruned(&c).await;
    c.w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_a_rerun_restored_on_failure_leaves_the_entity_applied() {
    let c = Case::new("rof_m", false).await;
    a_restored_rerun_leaves_the_entity_applied(&c).await;
    c.w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appwrite_a_rerun_restored_on_failure_leaves_the_entity_applied() {
    let c = Case::new("rof_a", true).await;
    a_restored_rerun_leaves_the_entity_applied(&c).await;
    c.w.drop().await;
}

/// adv45 F3: a `--rerun` killed inside its backup copy, before its first step, changed nothing: a
/// plain `rollback` says so and undoes no earlier run (it emptied the collection the completed
/// run before it had filled); naming the entity undoes that run on purpose.
async fn a_rerun_killed_before_its_first_step_is_not_rolled_back_for_the_run_before(c: &Case) {
    c.migrate(&["items"]).await;
    let first = c.items().await;
    let steps = c.steps().await.len();
    let args = ["migrate", "--quiet", "items", "--rerun"];
    let mut landed = false;
    for _ in 0..32 {
        let mut child = c.command(&args).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            let copying = c
                .ledger("cutover_backups")
                .await
                .iter()
                .any(|b| b.get_str("status") == Ok("in-progress"));
            if copying {
                break;
            }
            assert!(Instant::now() < deadline, "no backup in progress in time");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        child.kill().ok();
        child.wait().unwrap();
        if c.steps().await.len() == steps {
            landed = true;
            break;
        }
        // The re-run got as far as its step: undo it, and try again.
        let out = c.run(&["rollback", "items"]).await;
        assert!(out.status.success(), "{}", common::output_text(&out));
    }
    assert!(landed, "no kill landed before the re-run's first step");
    let out = c.run(&["rollback"]).await;
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("recorded no step"), "{text}");
    assert_eq!(c.items().await, first);
    let out = c.run(&["rollback", "items"]).await;
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert!(c.items().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_a_rerun_killed_before_its_first_step_is_not_rolled_back_for_the_run_before() {
    let c = Case::new("rbnostep_m", false).await;
    a_rerun_killed_before_its_first_step_is_not_rolled_back_for_the_run_before(&c).await;
    c.w.drop().await;
}
