//! `cutover serve --target appwrite`: the real binary serving an Appwrite target (the stand-in,
//! in this process). Every change route (status, up with its dry run and `to`, history, down
//! with its dry run, lock) and `--migrate-on-start` drive the Appwrite changes; a run started
//! through the API writes into Appwrite and is watched to its end.
//!
//! The oracle reads the target through the stand-in's own state (its tables and rows), never
//! through cutover's client.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use appwrite_standin::StandIn;
use common::World;
use common::serve::{Api, Server, is_error};
use serde_json::{Value, json};

const KEY: &str = "test-key-1";
const DB: &str = "registry";

async fn standin() -> (Arc<StandIn>, String) {
    let aw = common::standin::Aw::start(KEY).await;
    (aw.s, aw.endpoint)
}

/// `cutover serve --no-auth --target appwrite ARGS…`, started off the runtime that serves the
/// stand-in (the start waits for the server's log).
async fn start(w: &World, endpoint: &str, tag: &str, args: &[&str]) -> Server {
    let mut all = vec!["--no-auth", "--target", "appwrite"];
    all.extend_from_slice(args);
    let env = [
        ("APPWRITE_ENDPOINT", endpoint),
        ("APPWRITE_PROJECT", "cutover"),
        ("APPWRITE_API_KEY", KEY),
        ("APPWRITE_DATABASE", DB),
    ];
    // The world is borrowed for the start only; the server lives on its own.
    tokio::task::block_in_place(|| Server::start(w, tag, &all, &env))
}

/// `people`: 6 rows (name, age, status), written through the stand-in itself.
async fn seed(s: &StandIn) {
    s.create_database(DB, DB).unwrap();
    s.create_table(DB, "people", "People").unwrap();
    s.create_column(
        DB,
        "people",
        "string",
        &json!({"key": "name", "size": 64, "required": true}),
    )
    .unwrap();
    s.create_column(DB, "people", "integer", &json!({"key": "age"}))
        .unwrap();
    s.create_column(
        DB,
        "people",
        "string",
        &json!({"key": "status", "size": 16}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    for i in 1..=6 {
        let data = json!({"name": format!("person {i}"), "age": 20 * i, "status": "active"});
        s.write_row(DB, "people", &format!("p{i}"), &data, false)
            .unwrap();
    }
}

/// The rows of `people` by id, without the stand-in's timestamps and sequence numbers.
fn people(s: &StandIn) -> Vec<Value> {
    let mut rows: Vec<Value> = s
        .rows(DB, "people")
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.retain(|k, _| !k.starts_with('$') || k == "$id");
            r
        })
        .collect();
    rows.sort_by_key(|r| r["$id"].as_str().unwrap().to_string());
    rows
}

const ADD_TIER: &str = r#"version = 1
name = "add tier"
[[up]]
op = "add_column"
table = "people"
column = "tier"
type = "string"
size = 16
default = "basic"
"#;

const ARCHIVE_OLD: &str = r#"version = 2
name = "archive the old"
[[up]]
op = "set"
table = "people"
queries = [{ method = "greaterThan", attribute = "age", values = [60] }]
values = { status = "archived" }
"#;

const BAD: &str = r#"version = 3
name = "set a column that is not there"
[[up]]
op = "set"
table = "people"
queries = [{ method = "equal", attribute = "status", values = ["archived"] }]
values = { nowhere = "x" }
"#;

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), body).unwrap();
}

fn changes_dir(w: &World) -> PathBuf {
    w.dir.path().join("changes")
}

fn versions(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_route_drives_an_appwrite_target() {
    let w = World::new("serve_aw_changes").await;
    let (s, endpoint) = standin().await;
    seed(&s).await;
    let before = people(&s);
    let dir = changes_dir(&w);
    write(&dir, "1_add-tier.toml", ADD_TIER);
    let d = dir.display().to_string();

    // Applied on start: the column is the stand-in's, with its default.
    assert!(s.get_column(DB, "people", "tier").is_err());
    let mut server = start(&w, &endpoint, "s1", &["--dir", &d, "--migrate-on-start"]).await;
    let tier = s
        .get_column(DB, "people", "tier")
        .unwrap_or_else(|e| panic!("no column tier after the start: {e:?}\n{}", server.log()));
    assert_eq!(tier["default"], "basic", "{tier}");
    let api = Api::new(&server.base, None);
    write(&dir, "2_archive-old.toml", ARCHIVE_OLD);

    let (st, v) = api.get("/api/migrations/status").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(versions(&v["applied"]), [1], "{v}");
    assert_eq!(versions(&v["pending"]), [2], "{v}");
    assert_eq!(v["summary"]["total"], 2, "{v}");
    assert_eq!(v["locked"], Value::Null, "{v}");
    assert_eq!(v["startupError"], Value::Null, "{v}");

    // A dry run previews and writes nothing.
    let with_tier = people(&s);
    let (st, v) = api.post("/api/migrations/up?dryRun=true", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["dryRun"], true, "{v}");
    assert_eq!(versions(&v["changes"]), [2], "{v}");
    assert_eq!(people(&s), with_tier, "a dry run wrote");

    // Up: the rows the filter names are archived, the others untouched.
    let (st, v) = api.post("/api/migrations/up", None).await;
    assert_eq!(st, 200, "{v}\n{}", server.log());
    assert_eq!(versions(&v["changes"]), [2], "{v}");
    assert_eq!(v["failed"], false, "{v}");
    for r in people(&s) {
        let old = r["age"].as_i64().unwrap() > 60;
        assert_eq!(r["status"], if old { "archived" } else { "active" }, "{r}");
    }

    // A failing change answers 422 with what was done; the rows are as before it.
    write(&dir, "3_bad.toml", BAD);
    let archived = people(&s);
    let (st, v) = api.post("/api/migrations/up", None).await;
    assert_eq!(st, 422, "{v}");
    is_error(&v, "change_failed");
    assert_eq!(v["report"]["failed"], true, "{v}");
    assert_eq!(people(&s), archived);
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(versions(&v["failed"]), [3], "{v}");
    std::fs::remove_file(dir.join("3_bad.toml")).unwrap();

    // History, newest first, with the routes' status names.
    let (st, v) = api.get("/api/migrations/history?status=completed").await;
    assert_eq!(st, 200, "{v}");
    let applied: Vec<u64> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "up")
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(applied, [2, 1], "{v}");
    let (st, v) = api.get("/api/migrations/history?status=nonsense").await;
    assert_eq!(st, 400, "{v}");

    // Down: the dry run names what the real one reverses; two steps leave the rows as seeded.
    let (st, v) = api
        .post("/api/migrations/down?steps=2&dryRun=true", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(versions(&v["changes"]), [2, 1], "{v}");
    assert_eq!(people(&s), archived, "a dry run reversed");
    let (st, v) = api.post("/api/migrations/down?steps=2", None).await;
    assert_eq!(st, 200, "{v}\n{}", server.log());
    assert_eq!(versions(&v["changes"]), [2, 1], "{v}");
    assert_eq!(people(&s), before, "down left the rows as they were seeded");
    assert!(s.get_column(DB, "people", "tier").is_err(), "tier is gone");
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(versions(&v["pending"]), [1, 2], "{v}");

    // The lock: free, and releasing it needs a confirmation.
    let (st, v) = api.get("/api/migrations/lock/status").await;
    assert_eq!((st, &v["locked"]), (200, &Value::Null), "{v}");
    let (st, v) = api.post("/api/migrations/lock/release", None).await;
    assert_eq!(st, 400, "{v}");

    assert!(server.stop().success(), "{}", server.log());
    assert!(!server.log().contains(KEY), "the API key was logged");
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_started_through_the_api_writes_into_appwrite() {
    let w = World::new("serve_aw_run").await;
    w.load_registry(100);
    let (s, endpoint) = standin().await;
    let pipeline = common::registry_without_files().display().to_string();
    let mut server = start(&w, &endpoint, "s1", &["--pipeline", &pipeline]).await;
    let api = Api::new(&server.base, None);

    let (st, v) = api
        .post(
            "/api/runs",
            Some(json!({"stages": ["reference"], "batchSize": 7})),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let id = v["runId"].as_str().unwrap().to_string();
    let run = api.wait_run(&id).await;
    assert!(
        matches!(
            run["status"].as_str(),
            Some("completed" | "completed_with_rejects")
        ),
        "{run}\n{}",
        server.log()
    );
    // The run is listed, its report is the Appwrite target's, and the key shows nowhere.
    let (st, v) = api.get("/api/runs").await;
    assert_eq!(st, 200, "{v}");
    assert!(
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == id),
        "{v}"
    );
    let (st, report) = api.get(&format!("/api/runs/{id}/report?format=json")).await;
    assert_eq!(st, 200, "{report}");
    // The report of the run, as `cutover report --format json` gives it.
    let report = &report["run"];
    assert_eq!(
        report["target"].as_str().unwrap().split(' ').next(),
        Some("appwrite"),
        "{report}"
    );
    assert!(!report.to_string().contains(KEY));

    // Each entity's numbers are the target's, and every row is accounted for.
    let entities = run["entities"].as_array().unwrap();
    assert!(entities.len() >= 2, "{run}");
    for e in entities {
        let name = e["entity"].as_str().unwrap();
        let read = e["read"].as_u64().unwrap();
        let written = e["written"].as_u64().unwrap();
        let rejected = e["rejected"].as_u64().unwrap();
        let skipped = e["skipped"].as_u64().unwrap();
        assert_eq!(read, written + rejected + skipped, "{e}");
        assert_eq!(read, w.pg_count(name).await, "{name}: read = source rows");
        let table = report["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["collection"].as_str())
            .unwrap_or_else(|| panic!("{name} in the report: {report}"))
            .to_string();
        assert_eq!(
            s.row_count(DB, &table) as u64,
            written,
            "{name}: rows in the stand-in = written\n{e}"
        );
    }
    assert!(server.stop().success(), "{}", server.log());
    assert!(!server.log().contains(KEY), "the API key was logged");
    w.drop().await;
}

/// SIGTERM while `--migrate-on-start` rewrites rows of an Appwrite table: the change under way
/// is finished (every row, recorded applied), the next one is not started, and the server exits
/// without listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_an_appwrite_change_is_applied_at_start_lets_it_finish() {
    let w = World::new("serve_aw_term").await;
    let (s, endpoint) = standin().await;
    seed(&s).await;
    let dir = changes_dir(&w);
    write(
        &dir,
        "1_rewrite.toml",
        "version = 1\nname = \"rewrite\"\n[[up]]\nop = \"set\"\ntable = \"people\"\nvalues = { status = \"x\" }\n",
    );
    write(
        &dir,
        "2_add-tier.toml",
        &ADD_TIER.replace("version = 1", "version = 2"),
    );
    s.set_table_faults(
        "people",
        appwrite_standin::Faults {
            delay_ms: 150,
            ..Default::default()
        },
    );
    let d = dir.display().to_string();
    let env = [
        ("APPWRITE_ENDPOINT", endpoint.as_str()),
        ("APPWRITE_PROJECT", "cutover"),
        ("APPWRITE_API_KEY", KEY),
        ("APPWRITE_DATABASE", DB),
    ];
    let mut child = common::serve::spawn(
        &w,
        "start",
        &[
            "--no-auth",
            "--target",
            "appwrite",
            "--dir",
            &d,
            "--migrate-on-start",
        ],
        &env,
    );
    // Signalled once some rows, not all, are rewritten.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = s
            .rows(DB, "people")
            .iter()
            .filter(|r| r["status"] == "x")
            .count();
        if done >= 1 {
            assert!(done < 6, "the signal came too late");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never rewrote rows");
        assert!(child.try_wait().unwrap().is_none(), "serve ended first");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let st = tokio::task::block_in_place(|| child.wait().unwrap());
    let err = std::fs::read_to_string(w.dir.path().join("start.err")).unwrap();
    assert!(st.success(), "{err}");
    assert!(err.contains("stopped before serving"), "{err}");
    assert!(!err.contains("serving on"), "{err}");
    s.set_table_faults("people", appwrite_standin::Faults::default());
    assert!(
        s.rows(DB, "people").iter().all(|r| r["status"] == "x"),
        "the change under way was not finished\n{err}"
    );
    assert!(
        s.get_column(DB, "people", "tier").is_err(),
        "a change started after the signal\n{err}"
    );
    let mut cmd = w.cutover();
    cmd.args([
        "changes", "status", "--json", "--target", "appwrite", "--dir", &d,
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = status["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied", "pending"], "{status}");
    w.drop().await;
}

/// Outside tester F10: on an Appwrite server `POST /api/migrations` wrote a MongoDB change file,
/// which then blocked every `up`. The templates write Appwrite operations for an Appwrite
/// target (a template without any, archive, is refused), and the file applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_change_files_of_an_appwrite_server_hold_appwrite_operations() {
    let w = World::new("serve_aw_create").await;
    let (s, endpoint) = standin().await;
    seed(&s).await;
    s.create_table(DB, "patients", "Patients").unwrap();
    let dir = changes_dir(&w);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let mut server = start(&w, &endpoint, "s1", &["--dir", &d, "--allow-create"]).await;
    let api = Api::new(&server.base, None);
    let (st, v) = api
        .post(
            "/api/migrations",
            Some(json!({"name": "language", "template": "add-field"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let file = std::fs::read_to_string(dir.join(v["file"].as_str().unwrap())).unwrap();
    assert!(file.contains("op = \"add_column\""), "{file}");
    let (st, v) = api
        .post(
            "/api/migrations",
            Some(json!({"name": "old ones", "template": "archive"})),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let (st, v) = api.post("/api/migrations/up", None).await;
    assert_eq!(st, 200, "{v}\n{}", server.log());
    assert_eq!(v["failed"], false, "{v}");
    assert!(s.get_column(DB, "patients", "preferredLanguage").is_ok());
    assert!(server.stop().success(), "{}", server.log());
    w.drop().await;
}

/// Three `serve --migrate-on-start --target appwrite` instances started together (replicas of
/// a deployment): each change is applied once (one `up` entry each in the Appwrite ledger's
/// changes log, all in one instance's batch), and all three serve with nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_appwrite_instances_started_together_apply_each_change_once() {
    let w = World::new("serve_aw_three").await;
    let (s, endpoint) = standin().await;
    seed(&s).await;
    let dir = changes_dir(&w);
    write(&dir, "1_add-tier.toml", ADD_TIER);
    write(&dir, "2_archive-old.toml", ARCHIVE_OLD);
    let d = dir.display().to_string();
    let args = [
        "--no-auth",
        "--target",
        "appwrite",
        "--dir",
        &d,
        "--migrate-on-start",
    ];
    let env = [
        ("APPWRITE_ENDPOINT", endpoint.as_str()),
        ("APPWRITE_PROJECT", "cutover"),
        ("APPWRITE_API_KEY", KEY),
        ("APPWRITE_DATABASE", DB),
        ("MIGRATE_ON_START_FAIL_HARD", "true"),
    ];
    let mut servers: Vec<Server> =
        tokio::task::block_in_place(|| common::serve::start_together(&w, "aw3_", &args, &env));
    let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
    // The ledger, read from the stand-in: one applied `up` per change, from one batch.
    // A record is its canonical extended JSON in the row's `doc` column.
    let scalar = |v: &Value| -> String {
        match v {
            Value::Object(o) => o.values().next().map(|x| x.to_string()).unwrap_or_default(),
            other => other.to_string(),
        }
        .trim_matches('"')
        .to_string()
    };
    let ups: Vec<Value> = s
        .rows(DB, "cutover_changes_log")
        .into_iter()
        .map(|r| serde_json::from_str::<Value>(r["doc"].as_str().unwrap()).unwrap())
        .filter(|r| r["action"] == "up")
        .collect();
    let mut seen: Vec<String> = ups.iter().map(|r| scalar(&r["version"])).collect();
    seen.sort();
    assert_eq!(seen, ["1", "2"], "{ups:?}\n{logs:?}");
    assert!(ups.iter().all(|r| r["status"] == "applied"), "{ups:?}");
    let batches: std::collections::BTreeSet<String> =
        ups.iter().map(|r| scalar(&r["batch"])).collect();
    assert_eq!(batches.len(), 1, "one instance applied them all: {ups:?}");
    // The changes themselves, once: the column with its default, the old archived.
    assert!(s.get_column(DB, "people", "tier").is_ok());
    for r in people(&s) {
        let old = r["age"].as_i64().unwrap() > 60;
        assert_eq!(r["status"], if old { "archived" } else { "active" }, "{r}");
    }
    for server in &servers {
        let api = Api::new(&server.base, None);
        let (st, v) = api.get("/api/migrations/status").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["summary"]["pending"], 0, "{v}");
        assert_eq!(v["summary"]["applied"], 2, "{v}");
        assert_eq!(v["startupError"], Value::Null, "{v}");
    }
    for server in &mut servers {
        assert!(server.stop().success(), "{}", server.log());
    }
    w.drop().await;
}
