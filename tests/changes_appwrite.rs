//! `cutover changes --target appwrite` against the Appwrite stand-in (in this process), through
//! the real binary: every operation applied then reversed leaving the database exactly as before,
//! a failing change undone, modified and out-of-order changes refused, the lock shared with
//! `migrate --target appwrite`, a change killed half way undone by the next `down`, operations
//! of the other target refused, dry runs.
//!
//! The oracle reads the database through the stand-in's own listing routes over HTTP (tables,
//! columns, indexes, rows), never through cutover's code.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use appwrite_standin::{Faults, StandIn};
use common::World;
use common::standin::Aw;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY: &str = "test-key-1";
const DB: &str = "registry";

async fn standin() -> Aw {
    Aw::start(KEY).await
}

fn env(cmd: &mut std::process::Command, aw: &Aw) {
    cmd.envs(aw.vars(DB));
}

/// `cutover ARGS…` against the stand-in, without blocking the runtime that serves it.
async fn cutover(w: &World, aw: &Aw, args: &[&str]) -> std::process::Output {
    aw.cutover_in(w, DB, args).await
}

/// `cutover changes SUB --target appwrite --dir DIR` as a child process the test can kill
/// (its output captured when `piped`).
fn spawn_changes(w: &World, aw: &Aw, sub: &str, dir: &str, piped: bool) -> std::process::Child {
    let io = || {
        if piped {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.current_dir(w.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .args(["changes", sub, "--target", "appwrite", "--dir", dir])
        .stdout(io())
        .stderr(io());
    env(&mut cmd, aw);
    cmd.spawn().unwrap()
}

/// `cutover changes SUB --target appwrite --dir DIR ARGS…`
async fn changes(w: &World, aw: &Aw, sub: &str, dir: &Path, args: &[&str]) -> std::process::Output {
    let d = dir.display().to_string();
    let mut all = vec!["changes", sub, "--target", "appwrite", "--dir", &d];
    all.extend_from_slice(args);
    cutover(w, aw, &all).await
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn refused(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected a failure:\n{}", text(o));
    text(o)
}

fn write(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), body).unwrap();
}

// --- The oracle: the stand-in's own listing routes ---------------------------------------------

async fn get(aw: &Aw, path: &str, queries: &[Value]) -> Value {
    let mut url = reqwest::Url::parse(&format!("{}{path}", aw.endpoint)).unwrap();
    for q in queries {
        url.query_pairs_mut()
            .append_pair("queries[]", &q.to_string());
    }
    let r = reqwest::Client::new()
        .get(url)
        .header("X-Appwrite-Project", "cutover")
        .header("X-Appwrite-Key", KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.unwrap()
}

/// A value as text with its object keys sorted and its nulls left out (Appwrite reads a column
/// a row never set as null), so two equal states print alike.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let sorted: BTreeMap<&String, String> = o
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, canonical(v)))
                .collect();
            let parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

/// Every table of the database (the ledger's and the changes' backups left out) as the stand-in
/// lists it: its name, its columns and indexes (by key, without timestamps and status) and every
/// row (by id, without timestamps and sequence numbers).
async fn tables(aw: &Aw) -> BTreeMap<String, Value> {
    let limit = json!({"method": "limit", "values": [100]});
    let list = get(
        aw,
        &format!("/tablesdb/{DB}/tables"),
        std::slice::from_ref(&limit),
    )
    .await;
    let mut out = BTreeMap::new();
    for t in list["tables"].as_array().unwrap() {
        let id = t["$id"].as_str().unwrap();
        if id.starts_with("cutover_") || id.starts_with("chbk_") {
            continue;
        }
        let base = format!("/tablesdb/{DB}/tables/{id}");
        let stamps = ["$createdAt", "$updatedAt", "status", "error"];
        let mut columns: Vec<Value> =
            get(aw, &format!("{base}/columns"), std::slice::from_ref(&limit)).await["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| without(c, &stamps))
                .collect();
        columns.sort_by_key(|c| c["key"].as_str().unwrap().to_string());
        let mut indexes: Vec<Value> =
            get(aw, &format!("{base}/indexes"), std::slice::from_ref(&limit)).await["indexes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| without(i, &["$createdAt", "$updatedAt", "status", "error", "$id"]))
                .collect();
        indexes.sort_by_key(|i| i["key"].as_str().unwrap().to_string());
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = vec![
                limit.clone(),
                json!({"method": "orderAsc", "attribute": "$id", "values": []}),
            ];
            if let Some(a) = &after {
                q.push(json!({"method": "cursorAfter", "values": [a]}));
            }
            let page = get(aw, &format!("{base}/rows"), &q).await["rows"]
                .as_array()
                .unwrap()
                .clone();
            after = page.last().map(|r| r["$id"].as_str().unwrap().to_string());
            let n = page.len();
            rows.extend(page.iter().map(|r| {
                without(
                    r,
                    &[
                        "$createdAt",
                        "$updatedAt",
                        "$sequence",
                        "$permissions",
                        "$tableId",
                        "$databaseId",
                    ],
                )
            }));
            if n < 100 {
                break;
            }
        }
        out.insert(
            id.to_string(),
            json!({ "name": t["name"], "columns": columns, "indexes": indexes, "rows": rows }),
        );
    }
    out
}

/// A hash of each table (see [`tables`]).
async fn hashes(aw: &Aw) -> BTreeMap<String, String> {
    tables(aw)
        .await
        .into_iter()
        .map(|(k, v)| (k, format!("{:x}", Sha256::digest(canonical(&v)))))
        .collect()
}

/// The ids of the tables whose id starts with `prefix`.
async fn table_ids(aw: &Aw, prefix: &str) -> Vec<String> {
    let list = get(
        aw,
        &format!("/tablesdb/{DB}/tables"),
        &[json!({"method": "limit", "values": [100]})],
    )
    .await;
    list["tables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["$id"].as_str())
        .filter(|id| id.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

// --- The data ----------------------------------------------------------------------------------

/// `people` (12 rows, an index on name) and `sites` (2 rows, a unique index), written
/// through the stand-in itself.
async fn seed(s: &StandIn) {
    s.create_database(DB, DB).unwrap();
    s.create_table(DB, "people", "People").unwrap();
    s.create_table(DB, "sites", "Sites").unwrap();
    for (kind, body) in [
        (
            "string",
            json!({"key": "name", "size": 64, "required": true}),
        ),
        ("integer", json!({"key": "age", "required": false})),
        (
            "string",
            json!({"key": "status", "size": 16, "required": false}),
        ),
        ("string", json!({"key": "tags", "size": 16, "array": true})),
        ("string", json!({"key": "clinic", "size": 36})),
    ] {
        s.create_column(DB, "people", kind, &body).unwrap();
    }
    for body in [
        json!({"key": "code", "size": 16, "required": true}),
        json!({"key": "label", "size": 64}),
    ] {
        s.create_column(DB, "sites", "string", &body).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.create_index(
        DB,
        "people",
        &json!({"key": "by_name", "type": "key", "columns": ["name"], "orders": ["ASC"]}),
    )
    .unwrap();
    s.create_index(
        DB,
        "sites",
        &json!({"key": "by_code", "type": "unique", "columns": ["code"], "orders": ["ASC"]}),
    )
    .unwrap();
    for i in 1..=12 {
        let data = json!({
            "name": format!("patient {i}"),
            "age": 20 + i * 5,
            "status": if i % 2 == 0 { "active" } else { "inactive" },
            "tags": ["x", if i % 3 == 0 { "c1" } else { "y" }],
            "clinic": if i % 2 == 0 { "c1" } else { "c2" },
        });
        s.write_row(DB, "people", &format!("p{i:02}"), &data, false)
            .unwrap();
    }
    for (id, label) in [("c1", "North"), ("c2", "South")] {
        s.write_row(DB, "sites", id, &json!({"code": id, "label": label}), false)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
}

fn column<'a>(t: &'a Value, key: &str) -> Option<&'a Value> {
    t["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
}

fn index<'a>(t: &'a Value, key: &str) -> Option<&'a Value> {
    t["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
}

fn row<'a>(t: &'a Value, id: &str) -> &'a Value {
    t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["$id"] == id)
        .unwrap_or_else(|| panic!("row {id}"))
}

const COLUMNS: &str = r#"version = 1
name = "columns"
[[up]]
op = "add_column"
table = "people"
column = "tier"
type = "string"
size = 16
default = "basic"
[[up]]
op = "rename_column"
table = "people"
from = "clinic"
to = "clinicId"
"#;

const INDEXES: &str = r#"version = 2
name = "indexes"
[[up]]
op = "create_index"
table = "people"
key = "by_age"
type = "key"
columns = ["age"]
orders = ["DESC"]
[[up]]
op = "drop_index"
table = "people"
key = "by_name"
"#;

const ROWS: &str = r#"version = 3
name = "rows"
[[up]]
op = "insert"
table = "sites"
rows = [{ "$id" = "c3", code = "c3", label = "East" }, { "$id" = "c4", code = "c4" }]
[[up]]
op = "set"
table = "people"
queries = [{ method = "greaterThan", attribute = "age", values = [60] }]
values = { status = "archived" }
[[up]]
op = "unset"
table = "people"
queries = [{ method = "equal", attribute = "status", values = ["inactive"] }]
columns = ["tags"]
[[up]]
op = "update_references"
table = "people"
column = "clinicId"
from = "c1"
to = "c9"
[[up]]
op = "update_references"
table = "people"
column = "tags"
from = "c1"
to = "c9"
"#;

const REMOVE: &str = r#"version = 4
name = "remove a column"
[[up]]
op = "remove_column"
table = "people"
column = "status"
"#;

const TABLES: &str = r#"version = 5
name = "tables"
[[up]]
op = "create_table"
table = "visits"
name = "Visits"
columns = [{ key = "patient", type = "string", size = 36, required = true }, { key = "at", type = "datetime" }, { key = "score", type = "float", min = 0, max = 10 }]
indexes = [{ key = "by_patient", type = "key", columns = ["patient"] }]
[[up]]
op = "insert"
table = "visits"
rows = [{ "$id" = "v1", patient = "p01", score = 2.5 }]
[[up]]
op = "drop_table"
table = "sites"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_applied_then_reversed_leaves_the_database_exactly_as_before() {
    let w = World::new("aw_changes_all").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    for (name, body) in [
        ("1_columns.toml", COLUMNS),
        ("2_indexes.toml", INDEXES),
        ("3_rows.toml", ROWS),
        ("4_remove.toml", REMOVE),
        ("5_tables.toml", TABLES),
    ] {
        write(&dir, name, body);
    }
    let mut before = Vec::new();
    for v in 1..=5 {
        before.push(hashes(&aw).await);
        let out = changes(&w, &aw, "up", &dir, &["--to", &v.to_string()]).await;
        let said = ok(&out);
        assert!(said.contains(&format!("applied  {v} ")), "{said}");
        let now = tables(&aw).await;
        match v {
            1 => {
                let p = &now["people"];
                let tier = column(p, "tier").expect("tier added");
                assert_eq!(tier["default"], "basic");
                assert_eq!(tier["size"], 16);
                assert!(column(p, "clinic").is_none() && column(p, "clinicId").is_some());
                assert_eq!(row(p, "p02")["clinicId"], "c1");
            }
            2 => {
                let p = &now["people"];
                assert!(index(p, "by_name").is_none());
                assert_eq!(index(p, "by_age").unwrap()["orders"], json!(["DESC"]));
            }
            3 => {
                let p = &now["people"];
                assert_eq!(now["sites"]["rows"].as_array().unwrap().len(), 4);
                // age 20 + 5i > 60 from i = 9.
                assert_eq!(row(p, "p09")["status"], "archived");
                assert_eq!(row(p, "p08")["status"], "active");
                assert!(row(p, "p07")["tags"].is_null());
                assert_eq!(row(p, "p02")["clinicId"], "c9");
                assert_eq!(row(p, "p06")["tags"], json!(["x", "c9"]));
                assert_eq!(row(p, "p03")["tags"], Value::Null);
            }
            4 => {
                let p = &now["people"];
                assert!(column(p, "status").is_none());
                assert!(row(p, "p02").get("status").is_none());
            }
            5 => {
                assert!(!now.contains_key("sites"));
                let v = &now["visits"];
                assert_eq!(v["rows"].as_array().unwrap().len(), 1);
                assert!(index(v, "by_patient").is_some());
                assert_eq!(column(v, "score").unwrap()["max"], 10);
            }
            _ => unreachable!(),
        }
    }
    // Backups are kept while the changes are applied.
    assert!(!table_ids(&aw, "chbk_").await.is_empty());
    let status: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "status", &dir, &["--json"]).await)).unwrap();
    let states: Vec<&str> = status["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied"; 5]);
    for v in (1..=5).rev() {
        let said = ok(&changes(&w, &aw, "down", &dir, &[]).await);
        assert!(said.contains(&format!("reversed {v} ")), "{said}");
        assert_eq!(
            hashes(&aw).await,
            before[v - 1],
            "down of change {v} left the database otherwise than before its up"
        );
    }
    assert!(table_ids(&aw, "chbk_").await.is_empty(), "backups removed");
    let history: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "history", &dir, &["--json"]).await)).unwrap();
    let lines = history.as_array().unwrap();
    assert_eq!(lines.len(), 10, "{history}");
    assert!(
        lines
            .iter()
            .all(|l| l["status"] == "applied" || l["status"] == "rolled-back")
    );
    // And again: the same changes apply on the restored database.
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    ok(&changes(&w, &aw, "down", &dir, &["--steps", "5"]).await);
    assert_eq!(hashes(&aw).await, before[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_change_is_undone_from_its_backup() {
    let w = World::new("aw_changes_fail").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_fail.toml",
        r#"version = 1
name = "fails at its last operation"
[[up]]
op = "set"
table = "people"
values = { status = "gone", age = 1 }
[[up]]
op = "add_column"
table = "people"
column = "extra"
type = "boolean"
default = false
[[up]]
op = "drop_index"
table = "people"
key = "by_name"
[[up]]
op = "remove_column"
table = "people"
column = "tags"
[[up]]
op = "insert"
table = "sites"
rows = [{ "$id" = "c9", code = "c9" }, { "$id" = "c1", code = "again" }]
"#,
    );
    let before = hashes(&aw).await;
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("up operation 5 (`insert` on sites) failed: row c1 exists already"),
        "{said}"
    );
    assert!(said.contains("undone"), "{said}");
    assert_eq!(hashes(&aw).await, before);
    assert!(table_ids(&aw, "chbk_").await.is_empty());
    let status: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "status", &dir, &["--json"]).await)).unwrap();
    assert_eq!(status["changes"][0]["state"], "failed");

    // A failure in the middle of rewriting rows (the server refuses a row write): the rows
    // rewritten before it are put back.
    write(
        &dir,
        "1_fail.toml",
        r#"version = 1
name = "fails while it rewrites rows"
[[up]]
op = "set"
table = "people"
values = { status = "gone" }
"#,
    );
    aw.s.set_row_fault(
        "p07",
        Some(serde_json::from_value(json!({"status": 500})).unwrap()),
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("up operation 1 (`set` on people) failed"),
        "{said}"
    );
    aw.s.set_row_fault("p07", None);
    assert_eq!(hashes(&aw).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modified_and_out_of_order_changes_are_refused_with_what_to_do() {
    let w = World::new("aw_changes_order").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    let one = "version = 10\nname = \"a\"\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"a\"\ntype = \"integer\"\n";
    write(&dir, "10_a.toml", one);
    write(
        &dir,
        "20_b.toml",
        "version = 20\nname = \"b\"\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"b\"\ntype = \"integer\"\n",
    );
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    write(&dir, "10_a.toml", &one.replace("integer", "float"));
    let status = ok(&changes(&w, &aw, "status", &dir, &[]).await);
    assert!(status.contains("modified"), "{status}");
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("was modified since it was applied (its checksum differs)"),
        "{said}"
    );
    write(&dir, "10_a.toml", one);
    write(
        &dir,
        "15_c.toml",
        "version = 15\nname = \"c\"\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"c\"\ntype = \"integer\"\n",
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("is older than change 20, applied already (out of order)")
            && said.contains("--allow-out-of-order"),
        "{said}"
    );
    assert!(column(&tables(&aw).await["people"], "c").is_none());
    ok(&changes(&w, &aw, "up", &dir, &["--allow-out-of-order"]).await);
    assert!(column(&tables(&aw).await["people"], "c").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_of_the_other_target_and_schema_operations_in_a_transaction_are_refused_and_dry_runs_count()
 {
    let w = World::new("aw_changes_refuse").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_mongo.toml",
        "version = 1\nname = \"m\"\n[[up]]\nop = \"add_field\"\ncollection = \"people\"\nfield = \"a\"\ndefault = 1\n",
    );
    let before = hashes(&aw).await;
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("up operation 1 (`add_field` on collection people) is a MongoDB operation and the target is Appwrite"),
        "{said}"
    );
    // The reverse, on MongoDB.
    let d = dir.display().to_string();
    std::fs::remove_file(dir.join("1_mongo.toml")).unwrap();
    write(
        &dir,
        "1_aw.toml",
        "version = 1\nname = \"a\"\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"a\"\ntype = \"integer\"\n",
    );
    let said = refused(
        &cutover(
            &w,
            &aw,
            &["changes", "up", "--target", "mongodb", "--dir", &d],
        )
        .await,
    );
    assert!(
        said.contains("up operation 1 (`add_column` on table people) is a Appwrite operation and the target is MongoDB")
            || said.contains("is an Appwrite operation"),
        "{said}"
    );
    // A schema operation cannot be in a transaction: refused when the file is loaded.
    write(
        &dir,
        "2_tx.toml",
        "version = 2\nname = \"t\"\ntransaction = true\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"b\"\ntype = \"integer\"\n",
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("up operation 1 (`add_column`) cannot run in a transaction"),
        "{said}"
    );
    // Backup tables are not a change's to write.
    write(
        &dir,
        "2_tx.toml",
        "version = 2\nname = \"t\"\n[[up]]\nop = \"drop_table\"\ntable = \"chbk_0123\"\n",
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(said.contains("a backup table"), "{said}");
    assert_eq!(hashes(&aw).await, before);
    std::fs::remove_file(dir.join("2_tx.toml")).unwrap();

    // A dry run counts and writes nothing.
    write(
        &dir,
        "2_dry.toml",
        r#"version = 2
name = "dry"
[[up]]
op = "set"
table = "people"
queries = [{ method = "equal", attribute = "status", values = ["active"] }]
values = { status = "inactive" }
[[up]]
op = "drop_index"
table = "people"
key = "by_name"
[[up]]
op = "remove_column"
table = "people"
column = "clinic"
[[up]]
op = "insert"
table = "sites"
rows = [{ "$id" = "c1", code = "c1" }]
"#,
    );
    let out = changes(&w, &aw, "up", &dir, &["--dry-run", "--json"]).await;
    // The insert's ids exist already: the change would fail, and the dry run says so (exit 1).
    assert!(!out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["changes"][1]["status"], "would fail", "{report}");
    let preview = &report["changes"][1]["preview"];
    assert_eq!(preview[0]["matching"], 6, "{report}");
    assert!(
        preview[0]["note"]
            .as_str()
            .unwrap()
            .contains("6 would change")
    );
    assert!(preview[1]["note"].as_str().unwrap().contains("exists"));
    assert_eq!(preview[2]["matching"], 12);
    assert!(
        preview[3]["note"]
            .as_str()
            .unwrap()
            .contains("exist already")
    );
    assert_eq!(hashes(&aw).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_migrate_share_the_lock_of_an_appwrite_target() {
    let w = World::new("aw_changes_lock").await;
    w.load_registry(100);
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_slow.toml",
        "version = 1\nname = \"slow\"\n[[up]]\nop = \"set\"\ntable = \"people\"\nvalues = { status = \"x\" }\n",
    );
    // Each row write to people takes 300 ms: `changes up` holds the lock for seconds.
    aw.s.set_table_faults(
        "people",
        Faults {
            delay_ms: 300,
            ..Faults::default()
        },
    );
    let d = dir.display().to_string();
    let child = spawn_changes(&w, &aw, "up", &d, true);
    // Until the change writes its rows.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while table_ids(&aw, "chbk_").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "changes up never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pipeline = common::registry_without_files().display().to_string();
    let out = cutover(
        &w,
        &aw,
        &[
            "migrate",
            "--quiet",
            "--target",
            "appwrite",
            "--pipeline",
            &pipeline,
        ],
    )
    .await;
    let said = refused(&out);
    assert!(
        said.contains("another cutover holds the lock") && said.contains("(changes up)"),
        "{said}"
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(said.contains("(changes up)"), "{said}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    ok(&out);
    aw.s.set_table_faults("people", Faults::default());

    // The reverse: a slow migrate (its row writes to the registry's patients take 2 s each)
    // holds the lock; changes are refused.
    aw.s.set_table_faults(
        "patients",
        Faults {
            delay_ms: 2000,
            ..Faults::default()
        },
    );
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.current_dir(w.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .args([
            "migrate",
            "--quiet",
            "--target",
            "appwrite",
            "--pipeline",
            &pipeline,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    env(&mut cmd, &aw);
    let mut migrate = cmd.spawn().unwrap();
    // Until migrate writes the registry's patients (it holds the lock by then).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while aw.s.get_table(DB, "patients").is_err() {
        if let Some(st) = migrate.try_wait().unwrap() {
            panic!("migrate ended ({st}) before it wrote anything");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "migrate never started writing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(migrate.try_wait().unwrap().is_none(), "migrate still runs");
    assert!(said.contains("(migrate)"), "{said}");
    // Until its ledger records the patients step started (it then writes the rows, slowly).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !aw.s.rows(DB, "cutover_steps").iter().any(|r| {
        let d = r["doc"].as_str().unwrap_or_default();
        d.contains("\"patients\"") && d.contains("\"running\"")
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "migrate never started its patients step"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = migrate.kill();
    let _ = migrate.wait();
    aw.s.set_table_faults("patients", Faults::default());

    // The killed migrate left the registry's patients half written: a change writing that
    // table is refused until migrate finishes it (or it is rolled back).
    write(
        &dir,
        "2_patients.toml",
        "version = 2\nname = \"p\"\n[[up]]\nop = \"add_column\"\ntable = \"patients\"\ncolumn = \"tier\"\ntype = \"integer\"\n",
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("writes patients, which was left half written by a run that stopped"),
        "{said}"
    );
    assert!(aw.s.get_column(DB, "patients", "tier").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_killed_while_it_rewrites_rows_is_undone_by_the_next_down() {
    let w = World::new("aw_changes_kill").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_kill.toml",
        r#"version = 1
name = "killed"
[[up]]
op = "add_column"
table = "people"
column = "tier"
type = "string"
size = 8
[[up]]
op = "set"
table = "people"
values = { status = "x", age = 0 }
"#,
    );
    let before = hashes(&aw).await;
    aw.s.set_table_faults(
        "people",
        Faults {
            delay_ms: 200,
            ..Faults::default()
        },
    );
    let d = dir.display().to_string();
    let mut child = spawn_changes(&w, &aw, "up", &d, false);
    // Killed (SIGKILL) once some rows, not all, are rewritten.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = aw.s.rows(DB, "people");
        let done = p.iter().filter(|r| r["status"] == "x").count();
        if done >= 3 {
            assert!(done < 12, "the kill came too late");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "up never rewrote rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    aw.s.set_table_faults("people", Faults::default());
    assert_ne!(hashes(&aw).await, before);
    let status: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "status", &dir, &["--json"]).await)).unwrap();
    assert_eq!(status["changes"][0]["state"], "interrupted", "{status}");
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(said.contains("`cutover changes down` undoes"), "{said}");
    let said = ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(said.contains("undone"), "{said}");
    assert_eq!(hashes(&aw).await, before);
    assert!(table_ids(&aw, "chbk_").await.is_empty());
    // Then it applies whole.
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let p = tables(&aw).await;
    assert!(
        p["people"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "x")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_operations_in_a_transaction_commit_together_or_leave_nothing_behind() {
    let w = World::new("aw_changes_tx").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    let change = |last_site: &str| {
        format!(
            r#"version = 1
name = "in a transaction"
transaction = true
[[up]]
op = "set"
table = "people"
queries = [{{ method = "equal", attribute = "status", values = ["active"] }}]
values = {{ status = "moved", age = 99 }}
[[up]]
op = "update_references"
table = "people"
column = "clinic"
from = "c2"
to = "c3"
[[up]]
op = "insert"
table = "sites"
rows = [{{ "$id" = "c3", code = "c3" }}, {{ "$id" = "{last_site}", code = "z" }}]
"#
        )
    };
    let before = hashes(&aw).await;
    let statuses = |s: &StandIn| -> Vec<String> {
        s.transactions()
            .iter()
            .map(|t| t["status"].as_str().unwrap().to_string())
            .collect()
    };

    // Its last operation is refused (the row exists) by the checks that run before the
    // transaction starts: nothing is written, no transaction begun.
    write(&dir, "1_tx.toml", &change("c1"));
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        said.contains("row c1 exists already") && said.contains("nothing was written"),
        "{said}"
    );
    assert_eq!(hashes(&aw).await, before);
    assert!(statuses(&aw.s).is_empty(), "{:?}", statuses(&aw.s));

    // The server refuses one staged row at the commit (after the others were staged): the
    // commit applies none of them.
    write(&dir, "1_tx.toml", &change("c4"));
    aw.s.set_row_fault(
        "p11",
        Some(serde_json::from_value(json!({"status": 500})).unwrap()),
    );
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(said.contains("did not commit"), "{said}");
    aw.s.set_row_fault("p11", None);
    assert_eq!(hashes(&aw).await, before);
    assert!(table_ids(&aw, "chbk_").await.is_empty());

    // Applied: one transaction, committed, holding every row write.
    let said = ok(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(said.contains("applied  1 "), "{said}");
    let committed: Vec<Value> =
        aw.s.transactions()
            .into_iter()
            .filter(|t| t["status"] == "committed")
            .collect();
    assert_eq!(committed.len(), 1, "{:?}", aw.s.transactions());
    // 6 active people set, 6 with clinic c2 moved to c3, 2 sites inserted.
    assert_eq!(committed[0]["operations"], 14);
    let now = tables(&aw).await;
    assert_eq!(row(&now["people"], "p02")["status"], "moved");
    assert_eq!(row(&now["people"], "p01")["clinic"], "c3");
    assert_eq!(now["sites"]["rows"].as_array().unwrap().len(), 4);
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert_eq!(hashes(&aw).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_killed_while_it_restores_a_dropped_table_is_finished_by_the_next_down() {
    let w = World::new("aw_changes_kill_down").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_drop.toml",
        "version = 1\nname = \"drop people\"\n[[up]]\nop = \"drop_table\"\ntable = \"people\"\n",
    );
    let before = hashes(&aw).await;
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(!tables(&aw).await.contains_key("people"));
    // Each restored row takes 200 ms: `down` is killed (SIGKILL) half way through the rows.
    aw.s.set_table_faults(
        "people",
        Faults {
            delay_ms: 200,
            ..Faults::default()
        },
    );
    let d = dir.display().to_string();
    let mut child = spawn_changes(&w, &aw, "down", &d, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = aw.s.row_count(DB, "people");
        if n >= 3 {
            assert!(n < 12, "the kill came too late");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "down never restored rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    aw.s.set_table_faults("people", Faults::default());
    let status: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "status", &dir, &["--json"]).await)).unwrap();
    assert_eq!(
        status["changes"][0]["state"], "down-interrupted",
        "{status}"
    );
    let said = ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(said.contains("finished"), "{said}");
    assert_eq!(hashes(&aw).await, before);
    assert!(table_ids(&aw, "chbk_").await.is_empty());
}

/// A change whose backups span several pages of the backup table (two operations' entries
/// mixed in it): `down` restores from it a page at a time and leaves every row as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_larger_than_a_page_are_restored_whole() {
    let w = World::new("aw_changes_pages").await;
    let aw = standin().await;
    seed(&aw.s).await;
    for i in 13..=1_300 {
        let data = json!({
            "name": format!("patient {i}"),
            "age": i % 97,
            "status": if i % 2 == 0 { "active" } else { "inactive" },
            "tags": ["x"],
            "clinic": "c1",
        });
        aw.s.write_row(DB, "people", &format!("p{i:05}"), &data, false)
            .unwrap();
    }
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_rewrite-then-drop.toml",
        r#"version = 1
name = "rewrite then drop"
[[up]]
op = "set"
table = "people"
values = { status = "gone" }
[[up]]
op = "drop_table"
table = "people"
"#,
    );
    let before = hashes(&aw).await;
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(!tables(&aw).await.contains_key("people"));
    let said = ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(said.contains("inserted 1300"), "{said}");
    assert_eq!(hashes(&aw).await, before);
    assert!(table_ids(&aw, "chbk_").await.is_empty());
}

/// Outside tester F4: a `changes up` whose lock was released by force kept writing for seconds
/// (whole operations), and a `down` was not fenced at all. Each reads its lock at least every
/// second while it writes and stops once it is no longer its own: the rows being rewritten stop
/// changing within that second, the next operation never runs, and the change is left
/// interrupted for whoever holds the lock next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_lock_is_taken_away_stops_writing() {
    let w = World::new("aw_changes_fence").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_slow.toml",
        "version = 1\nname = \"slow\"\n[[up]]\nop = \"set\"\ntable = \"people\"\nvalues = { status = \"x\" }\n[[up]]\nop = \"set\"\ntable = \"sites\"\nvalues = { label = \"y\" }\n",
    );
    aw.s.set_table_faults(
        "people",
        Faults {
            delay_ms: 250,
            ..Faults::default()
        },
    );
    let d = dir.display().to_string();
    let child = spawn_changes(&w, &aw, "up", &d, true);
    let rewritten = |s: &appwrite_standin::StandIn| {
        s.rows(DB, "people")
            .iter()
            .filter(|r| r["status"] == "x")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rewritten(&aw.s) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "up never rewrote rows"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ok(&cutover(
        &w,
        &aw,
        &[
            "lock",
            "release",
            "--confirm",
            "--force",
            "--target",
            "appwrite",
        ],
    )
    .await);
    let at_release = rewritten(&aw.s);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    aw.s.set_table_faults("people", Faults::default());
    assert!(!out.status.success(), "{}", text(&out));
    // At most the writes of the second before the lock was read again (4 at 250 ms each).
    let after = rewritten(&aw.s);
    assert!(
        after <= at_release + 5 && after < 12,
        "{at_release} rows rewritten at the release, {after} after\n{}",
        text(&out)
    );
    assert!(
        aw.s.rows(DB, "sites").iter().all(|r| r["label"] != "y"),
        "the next operation ran after the release"
    );
    assert!(text(&out).contains("left interrupted"), "{}", text(&out));
    let status: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "status", &dir, &["--json"]).await)).unwrap();
    assert_eq!(status["changes"][0]["state"], "interrupted", "{status}");
    let hint = status["changes"][0]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("lost the target's lock"), "{status}");
    // The next `down` (holding the lock) undoes what was written.
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert_eq!(rewritten(&aw.s), 0);
}

/// Outside tester F6: `drop_table` then `down` recreated the table open to no one (no
/// permissions) and without row security, and its rows without their own permissions. The
/// table comes back with its permissions, `rowSecurity` and `enabled`, each row with its
/// permissions and its own `$createdAt` / `$updatedAt` (the sixteenth session's adv16c 8: they
/// were new), as the stand-in lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_table_comes_back_with_its_permissions() {
    let w = World::new("aw_changes_perms").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let perms = json!(["read(\"any\")", "create(\"users\")"]);
    aw.s.update_table(
        DB,
        "sites",
        &json!({"name": "Sites", "permissions": perms, "rowSecurity": true}),
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/tablesdb/{DB}/tables/sites/rows", aw.endpoint))
        .header("X-Appwrite-Project", "cutover")
        .header("X-Appwrite-Key", KEY)
        .json(&json!({"rowId": "c7", "data": {"code": "c7", "label": "West", "$createdAt": "2001-02-03T04:05:06.000+00:00"}, "permissions": ["read(\"user:u1\")", "update(\"user:u1\")"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let table_of = |s: &appwrite_standin::StandIn| {
        let t = s.get_table(DB, "sites").unwrap();
        (
            t["$permissions"].clone(),
            t["rowSecurity"].clone(),
            t["enabled"].clone(),
        )
    };
    let rows_of = |s: &appwrite_standin::StandIn| {
        let mut rows: Vec<(String, Value)> = s
            .rows(DB, "sites")
            .iter()
            .map(|r| {
                (
                    r["$id"].as_str().unwrap().to_string(),
                    json!([r["$permissions"], r["$createdAt"], r["$updatedAt"]]),
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    let (table_before, rows_before) = (table_of(&aw.s), rows_of(&aw.s));
    assert_eq!(table_before.0, perms);
    let before = hashes(&aw).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_drop.toml",
        "version = 1\nname = \"drop sites\"\n[[up]]\nop = \"drop_table\"\ntable = \"sites\"\n",
    );
    // Later than the rows' own timestamps, were they set again.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(aw.s.get_table(DB, "sites").is_err());
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert_eq!(table_of(&aw.s), table_before);
    assert_eq!(rows_of(&aw.s), rows_before);
    assert_eq!(hashes(&aw).await, before);
}

/// Outside tester F9: the application made a table of the same id after `drop_table`; `down`
/// merged the dropped table into it (its columns added, rows of taken ids skipped), said it was
/// done and dropped the backup. Refused now before anything is reversed; the change stays
/// applied, its backup kept, the application's table untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_refuses_to_restore_a_dropped_table_into_one_made_since() {
    let w = World::new("aw_changes_remade").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_drop.toml",
        "version = 1\nname = \"drop people\"\n[[up]]\nop = \"drop_table\"\ntable = \"people\"\n",
    );
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    aw.s.create_table(DB, "people", "People again").unwrap();
    aw.s.create_column(DB, "people", "string", &json!({"key": "other", "size": 8}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    aw.s.write_row(DB, "people", "p01", &json!({"other": "mine"}), false)
        .unwrap();
    let theirs = hashes(&aw).await;
    let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(said.contains("exists again"), "{said}");
    assert_eq!(
        hashes(&aw).await,
        theirs,
        "the application's table was touched"
    );
    let status: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "status", &dir, &["--json"]).await)).unwrap();
    assert_eq!(status["changes"][0]["state"], "applied", "{status}");
    assert!(
        !table_ids(&aw, "chbk_").await.is_empty(),
        "the backup is kept"
    );
}

/// Outside tester F12: `add_column`'s down deleted the values the application had written into
/// the column since, without a word. Refused while such values are there (the default does not
/// count); once they are cleared, down removes the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_keeps_a_column_holding_values_written_since() {
    let w = World::new("aw_changes_written_since").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_tier.toml",
        "version = 1\nname = \"tier\"\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"tier\"\ntype = \"string\"\nsize = 8\ndefault = \"basic\"\n",
    );
    let before = hashes(&aw).await;
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut p03 = aw.s.get_row(DB, "people", "p03").unwrap();
    p03["tier"] = json!("gold");
    let data: serde_json::Map<String, Value> = p03
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    aw.s.write_row(DB, "people", "p03", &Value::Object(data.clone()), true)
        .unwrap();
    let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(
        said.contains("written since") && said.contains("p03"),
        "{said}"
    );
    assert!(aw.s.get_column(DB, "people", "tier").is_ok());
    assert_eq!(aw.s.get_row(DB, "people", "p03").unwrap()["tier"], "gold");
    let mut cleared = data;
    cleared.insert("tier".into(), Value::Null);
    aw.s.write_row(DB, "people", "p03", &Value::Object(cleared), true)
        .unwrap();
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert_eq!(hashes(&aw).await, before);
}

/// Outside tester F13: `rename_column`'s and `drop_index`'s downs said they were done when a
/// column or index of the old key had been made since, and the original was not put back.
/// Refused, naming it; the application's column and index are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downs_refuse_when_the_old_key_was_taken_since() {
    let w = World::new("aw_changes_taken").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_rename.toml",
        "version = 1\nname = \"rename\"\n[[up]]\nop = \"rename_column\"\ntable = \"people\"\nfrom = \"clinic\"\nto = \"clinicId\"\n",
    );
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    aw.s.create_column(DB, "people", "string", &json!({"key": "clinic", "size": 4}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(said.contains("people.clinic exists again"), "{said}");
    assert_eq!(aw.s.get_column(DB, "people", "clinic").unwrap()["size"], 4);
    assert!(aw.s.get_column(DB, "people", "clinicId").is_ok());

    let w2 = World::new("aw_changes_taken_ix").await;
    let aw2 = standin().await;
    seed(&aw2.s).await;
    let dir2 = w2.dir.path().join("changes");
    write(
        &dir2,
        "1_drop-index.toml",
        "version = 1\nname = \"drop index\"\n[[up]]\nop = \"drop_index\"\ntable = \"people\"\nkey = \"by_name\"\n",
    );
    ok(&changes(&w2, &aw2, "up", &dir2, &[]).await);
    aw2.s
        .create_index(
            DB,
            "people",
            &json!({"key": "by_name", "type": "key", "columns": ["age"], "orders": ["ASC"]}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let said = refused(&changes(&w2, &aw2, "down", &dir2, &[]).await);
    assert!(said.contains("another definition"), "{said}");
    assert_eq!(
        aw2.s.get_index(DB, "people", "by_name").unwrap()["columns"],
        json!(["age"])
    );
}

/// `cutover changes` follows the config's `[target] default` as `migrate`, `status` and `serve`
/// do (it always went to MongoDB): without `--target`, a config naming appwrite applies the
/// change in Appwrite, `status` reads Appwrite's history, and `changes new` writes an Appwrite
/// template. Oracle: the stand-in's own listing.
#[tokio::test]
async fn changes_follow_the_configs_default_target() {
    let w = World::new("aw_changes_cfg").await;
    let aw = standin().await;
    seed(&aw.s).await;
    std::fs::write(
        w.dir.path().join("cutover.toml"),
        "[target]\ndefault = \"appwrite\"\n",
    )
    .unwrap();
    let dir = w.dir.path().join("changes");
    write(&dir, "1_columns.toml", COLUMNS);
    let d = dir.display().to_string();
    ok(&cutover(&w, &aw, &["changes", "up", "--dir", &d]).await);
    let people = &tables(&aw).await["people"];
    assert!(column(people, "tier").is_some(), "{people}");
    let status = ok(&cutover(&w, &aw, &["changes", "status", "--dir", &d, "--json"]).await);
    assert!(status.contains("\"applied\""), "{status}");
    // The MongoDB database of the same name saw nothing.
    let mongo = w.mongo().await.list_collection_names().await.unwrap();
    assert!(mongo.is_empty(), "{mongo:?}");
    let new_dir = w.dir.path().join("drafts").display().to_string();
    let out = ok(&cutover(
        &w,
        &aw,
        &[
            "changes",
            "new",
            "add tier",
            "--template",
            "add-field",
            "--dir",
            &new_dir,
        ],
    )
    .await);
    let path = out.trim().strip_prefix("wrote ").unwrap().to_string();
    let draft = std::fs::read_to_string(&path).unwrap();
    assert!(draft.contains("table = "), "an Appwrite template: {draft}");
    w.drop().await;
}

/// The states `changes status --json` gives, by version.
async fn states(w: &World, aw: &Aw, dir: &Path) -> Vec<(u64, String)> {
    let status: Value =
        serde_json::from_str(&ok(&changes(w, aw, "status", dir, &["--json"]).await)).unwrap();
    status["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["version"].as_u64().unwrap(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const NEXT: &str = "version = 2\nname = \"next\"\n[[up]]\nop = \"insert\"\ntable = \"sites\"\nrows = [{ \"$id\" = \"c7\", code = \"c7\" }]\n";

/// Outside tester F8: a `down` refused by its own checks before writing anything (the table it
/// would delete holds rows, the column it would remove holds values written since, the old key
/// of a rename or a dropped index was taken since) was recorded down-failed and then blocked
/// every `up`. Now the change stays applied, said so: the target is as the application left it
/// (the stand-in's own listing), `up` of a later change works, and a later `down` too (the
/// later change, then this one once its cause is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_refused_before_writing_leaves_the_change_applied_and_up_working() {
    struct Case {
        name: &'static str,
        change: &'static str,
        /// What the application does after the change (the stand-in, directly).
        meanwhile: fn(&StandIn),
        said: &'static str,
        /// Takes the cause away again, so `down` can go through.
        undo_cause: fn(&StandIn),
    }
    let cases = [
        Case {
            name: "create_table",
            change: "version = 1\nname = \"visits\"\n[[up]]\nop = \"create_table\"\ntable = \"visits\"\nname = \"Visits\"\ncolumns = [{ key = \"patient\", type = \"string\", size = 36 }]\n",
            meanwhile: |s| {
                s.write_row(DB, "visits", "v9", &json!({"patient": "p01"}), false)
                    .unwrap();
            },
            said: "table visits, created by the change, holds rows written since",
            undo_cause: |s| s.delete_row(DB, "visits", "v9").unwrap(),
        },
        Case {
            name: "add_column",
            change: "version = 1\nname = \"tier\"\n[[up]]\nop = \"add_column\"\ntable = \"people\"\ncolumn = \"tier\"\ntype = \"string\"\nsize = 8\n",
            meanwhile: |s| {
                s.update_row(DB, "people", "p04", &json!({"tier": "gold"}))
                    .unwrap();
            },
            said: "column people.tier holds values written since",
            undo_cause: |s| {
                s.update_row(DB, "people", "p04", &json!({"tier": null}))
                    .unwrap();
            },
        },
        Case {
            name: "rename_column",
            change: "version = 1\nname = \"rename\"\n[[up]]\nop = \"rename_column\"\ntable = \"people\"\nfrom = \"clinic\"\nto = \"clinicId\"\n",
            meanwhile: |s| {
                s.create_column(DB, "people", "string", &json!({"key": "clinic", "size": 4}))
                    .unwrap();
            },
            said: "column people.clinic exists again (made since)",
            undo_cause: |s| s.delete_column(DB, "people", "clinic").unwrap(),
        },
        Case {
            name: "drop_index",
            change: "version = 1\nname = \"drop index\"\n[[up]]\nop = \"drop_index\"\ntable = \"people\"\nkey = \"by_name\"\n",
            meanwhile: |s| {
                s.create_index(
                    DB,
                    "people",
                    &json!({"key": "by_name", "type": "key", "columns": ["age"], "orders": ["ASC"]}),
                )
                .unwrap();
            },
            said: "an index people.by_name exists again with another definition",
            undo_cause: |s| s.delete_index(DB, "people", "by_name").unwrap(),
        },
    ];
    for case in cases {
        let w = World::new(&format!("aw_changes_refused_{}", case.name)).await;
        let aw = standin().await;
        seed(&aw.s).await;
        let dir = w.dir.path().join("changes");
        let before = hashes(&aw).await;
        write(&dir, "1_first.toml", case.change);
        ok(&changes(&w, &aw, "up", &dir, &[]).await);
        tokio::time::sleep(Duration::from_millis(60)).await;
        (case.meanwhile)(&aw.s);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let theirs = hashes(&aw).await;

        let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
        assert!(
            said.contains(case.said)
                && said.contains("nothing was reversed, the change is still applied"),
            "{}: {said}",
            case.name
        );
        assert_eq!(
            hashes(&aw).await,
            theirs,
            "{}: the target changed",
            case.name
        );
        assert_eq!(
            states(&w, &aw, &dir).await,
            [(1, "applied".to_string())],
            "{}",
            case.name
        );
        let history: Value =
            serde_json::from_str(&ok(&changes(&w, &aw, "history", &dir, &["--json"]).await))
                .unwrap();
        assert_eq!(history[0]["action"], "down", "{history}");
        assert_eq!(history[0]["status"], "failed", "{history}");
        assert_eq!(history[1]["action"], "up", "{history}");
        assert_eq!(history[1]["status"], "applied", "{history}");

        // `up` goes on; `down` reverses the later change, and this one once its cause is gone.
        write(&dir, "2_next.toml", NEXT);
        let up = ok(&changes(&w, &aw, "up", &dir, &[]).await);
        assert!(up.contains("applied  2 "), "{}: {up}", case.name);
        assert_eq!(aw.s.get_row(DB, "sites", "c7").unwrap()["code"], "c7");
        ok(&changes(&w, &aw, "down", &dir, &[]).await);
        assert_eq!(hashes(&aw).await, theirs, "{}", case.name);
        refused(&changes(&w, &aw, "down", &dir, &[]).await);
        (case.undo_cause)(&aw.s);
        tokio::time::sleep(Duration::from_millis(60)).await;
        ok(&changes(&w, &aw, "down", &dir, &[]).await);
        assert_eq!(hashes(&aw).await, before, "{}", case.name);
        assert_eq!(
            states(&w, &aw, &dir).await,
            [
                (1, "rolled-back".to_string()),
                (2, "rolled-back".to_string())
            ],
            "{}",
            case.name
        );
    }
    a_down_refused_after_writing_stays_down_failed().await;
}

/// A `down` refused after it wrote something (here: the rows the change inserted deleted, then
/// the table it created found holding a row written since) stays `down-failed`, as before: `up`
/// is refused until `down` finishes it.
async fn a_down_refused_after_writing_stays_down_failed() {
    let w = World::new("aw_changes_refused_late").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_visits.toml",
        "version = 1\nname = \"visits\"\n[[up]]\nop = \"create_table\"\ntable = \"visits\"\nname = \"Visits\"\ncolumns = [{ key = \"patient\", type = \"string\", size = 36 }]\n[[up]]\nop = \"insert\"\ntable = \"visits\"\nrows = [{ \"$id\" = \"v1\", patient = \"p01\" }]\n",
    );
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    aw.s.write_row(DB, "visits", "v9", &json!({"patient": "p02"}), false)
        .unwrap();
    let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(said.contains("`down-failed`"), "{said}");
    assert!(aw.s.get_row(DB, "visits", "v1").is_err(), "v1 was deleted");
    assert_eq!(
        states(&w, &aw, &dir).await,
        [(1, "down-failed".to_string())]
    );
    write(&dir, "2_next.toml", NEXT);
    let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(said.contains("down-failed"), "{said}");
    aw.s.delete_row(DB, "visits", "v9").unwrap();
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(aw.s.get_table(DB, "visits").is_err());
}

/// Outside tester F3: a change with `transaction = true` staged any number of operations, while
/// an Appwrite transaction holds at most its plan's (100 / 1,000 / 2,500). More than
/// `max_transaction_operations` (default 100; the config file or
/// APPWRITE_MAX_TRANSACTION_OPERATIONS) is refused before anything is written — no row, no
/// backup, no transaction — naming the change, the count and the setting; within it, applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_max_transaction_operations_is_refused_before_writing() {
    let w = World::new("aw_changes_tx_max").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    let with_env = |extra: &'static [(&'static str, &'static str)]| {
        let w = &w;
        let aw = &aw;
        let dir = dir.display().to_string();
        async move {
            let mut cmd = w.cutover();
            cmd.envs(aw.vars(DB))
                .envs(extra.iter().copied())
                .args(["changes", "up", "--target", "appwrite", "--dir", &dir]);
            tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap()
        }
    };
    // 101 rows inserted in one transaction: over the default of 100.
    let rows: Vec<String> = (0..101)
        .map(|i| format!("{{ \"$id\" = \"s{i:03}\", code = \"s{i:03}\" }}"))
        .collect();
    write(
        &dir,
        "1_many.toml",
        &format!(
            "version = 1\nname = \"many sites\"\ntransaction = true\n[[up]]\nop = \"insert\"\ntable = \"sites\"\nrows = [{}]\n",
            rows.join(", ")
        ),
    );
    let before = hashes(&aw).await;
    // The dry run says so too (adv28 R3: "would apply", exit 0).
    let dry = {
        let mut cmd = w.cutover();
        cmd.envs(aw.vars(DB)).args([
            "changes",
            "up",
            "--dry-run",
            "--target",
            "appwrite",
            "--dir",
            &dir.display().to_string(),
        ]);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    let said = refused(&dry);
    assert!(
        said.contains("would fail") && said.contains("it would stage 101 row operations"),
        "{said}"
    );
    let said = refused(&with_env(&[]).await);
    assert!(
        said.contains("change 1: it would stage 101 row operations")
            && said.contains("`max_transaction_operations` = 100")
            && said.contains("refused before anything was written"),
        "{said}"
    );
    assert_eq!(hashes(&aw).await, before);
    assert!(aw.s.transactions().is_empty(), "{:?}", aw.s.transactions());
    assert!(table_ids(&aw, "chbk_").await.is_empty());
    assert_eq!(states(&w, &aw, &dir).await, [(1, "failed".to_string())]);

    // The setting from the environment, then from the config file.
    let said = refused(&with_env(&[("APPWRITE_MAX_TRANSACTION_OPERATIONS", "50")]).await);
    assert!(
        said.contains("would stage 101 row operations")
            && said.contains("`max_transaction_operations` = 50"),
        "{said}"
    );
    assert_eq!(hashes(&aw).await, before);
    std::fs::write(
        w.dir.path().join("cutover.toml"),
        "[target.appwrite]\nmax_transaction_operations = 101\n",
    )
    .unwrap();
    let said = ok(&with_env(&[]).await);
    assert!(said.contains("applied  1 "), "{said}");
    assert_eq!(aw.s.row_count(DB, "sites"), 103);
    let committed = aw.s.transactions();
    assert_eq!(committed.len(), 1, "{committed:?}");
    assert_eq!(committed[0]["operations"], 101);
    assert_eq!(committed[0]["status"], "committed");

    // Rows a set would rewrite count too; matching rows it leaves as they are do not (8 people
    // over 40, 4 of them active already).
    write(
        &dir,
        "2_set.toml",
        "version = 2\nname = \"set\"\ntransaction = true\n[[up]]\nop = \"set\"\ntable = \"people\"\nqueries = [{ method = \"greaterThan\", attribute = \"age\", values = [40] }]\nvalues = { status = \"active\" }\n",
    );
    let people = hashes(&aw).await;
    let said = refused(&with_env(&[("APPWRITE_MAX_TRANSACTION_OPERATIONS", "3")]).await);
    assert!(
        said.contains("change 2: it would stage 4 row operations")
            && said.contains("`max_transaction_operations` = 3"),
        "{said}"
    );
    assert_eq!(hashes(&aw).await, people);
    ok(&with_env(&[("APPWRITE_MAX_TRANSACTION_OPERATIONS", "4")]).await);
    assert_eq!(
        aw.s.get_row(DB, "people", "p05").unwrap()["status"],
        "active"
    );
    let all = aw.s.transactions();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .any(|t| t["operations"] == 4 && t["status"] == "committed"),
        "{all:?}"
    );
    // A bad value of the setting is an error naming it.
    let said = refused(&with_env(&[("APPWRITE_MAX_TRANSACTION_OPERATIONS", "0")]).await);
    assert!(
        said.contains("APPWRITE_MAX_TRANSACTION_OPERATIONS"),
        "{said}"
    );
}

/// Outside tester F18: `cutover rollback` of a first run (one that found its table empty, so
/// the rollback empties it) discarded the changes applied on the table since, without a word —
/// on Appwrite no destination was checked at all. It refuses now (dry run too), naming them and
/// saying to reverse them with `changes down` first; reversed, the rollback goes ahead.
/// `backup restore` of a re-run's backup the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_refuses_to_discard_changes_applied_after_the_run() {
    let w = World::new("aw_changes_vs_rollback").await;
    let aw = standin().await;
    w.sql("CREATE TABLE kinds (code text PRIMARY KEY, label text NOT NULL); INSERT INTO kinds SELECT 'k' || g, 'label ' || g FROM generate_series(1, 30) g;")
        .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "kinds",
        "version = 1\nname = \"kinds\"\n[source]\ntable = \"kinds\"\nkey = [\"code\"]\n[[field]]\npath = \"label\"\ncolumn = \"label\"\n",
    );
    let pipeline = pipeline.display().to_string();
    let run = |args: &'static [&'static str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--target", "appwrite", "--pipeline", &pipeline]);
        let all: Vec<String> = all.into_iter().map(str::to_string).collect();
        let (w, aw) = (&w, &aw);
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            cutover(w, aw, &all).await
        }
    };
    ok(&run(&["migrate", "--quiet"]).await);
    assert_eq!(aw.s.row_count(DB, "kinds"), 30);
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_flag.toml",
        "version = 1\nname = \"flag\"\n[[up]]\nop = \"set\"\ntable = \"kinds\"\nvalues = { label = \"flagged\" }\n",
    );
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let before = hashes(&aw).await;
    for dry in [true, false] {
        let out = if dry {
            run(&["rollback", "--dry-run"]).await
        } else {
            run(&["rollback"]).await
        };
        let said = refused(&out);
        assert!(
            said.contains("would silently discard what changes did after the run")
                && said.contains("change 1 (1_flag.toml) applied on kinds after run")
                && said.contains("`cutover changes down`"),
            "{said}"
        );
    }
    assert_eq!(
        hashes(&aw).await,
        before,
        "a refused rollback changed the data"
    );
    assert_eq!(states(&w, &aw, &dir).await, [(1, "applied".to_string())]);

    // Reversed first, the rollback empties the table (it was empty before the run).
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    ok(&run(&["rollback"]).await);
    assert_eq!(aw.s.row_count(DB, "kinds"), 0);

    // A re-run's backup predates a change applied after it: restoring it is refused too.
    ok(&run(&["migrate", "--quiet"]).await);
    ok(&run(&["migrate", "--quiet", "--rerun"]).await);
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let backups = cutover(&w, &aw, &["backup", "list", "--target", "appwrite"]).await;
    let name = String::from_utf8_lossy(&backups.stdout)
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let before = hashes(&aw).await;
    let said = refused(
        &cutover(
            &w,
            &aw,
            &["backup", "restore", &name, "--target", "appwrite"],
        )
        .await,
    );
    assert!(
        said.contains("change 1 (1_flag.toml) applied on kinds after backup"),
        "{said}"
    );
    assert_eq!(hashes(&aw).await, before);
}

/// The `down` of a change applied in a transaction runs in one too, as its `up` did: every row
/// goes back in one commit (the stand-in records one transaction holding them all), or — one
/// refused at the commit — none does, and the change stays applied (not down-failed), so `up`
/// goes on and the next `down` reverses it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_down_of_a_change_in_a_transaction_commits_whole_or_reverses_nothing() {
    let w = World::new("aw_changes_tx_down").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_tx.toml",
        r#"version = 1
name = "in a transaction"
transaction = true
[[up]]
op = "set"
table = "people"
queries = [{ method = "equal", attribute = "status", values = ["active"] }]
values = { status = "moved", age = 99 }
[[up]]
op = "update_references"
table = "people"
column = "clinic"
from = "c2"
to = "c3"
[[up]]
op = "insert"
table = "sites"
rows = [{ "$id" = "c3", code = "c3" }, { "$id" = "c4", code = "c4" }]
"#,
    );
    let before = hashes(&aw).await;
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let applied = hashes(&aw).await;
    assert_ne!(applied, before);

    // One row refused at the commit: nothing goes back, the change stays applied.
    aw.s.set_row_fault(
        "p11",
        Some(serde_json::from_value(json!({"status": 500})).unwrap()),
    );
    let said = refused(&changes(&w, &aw, "down", &dir, &[]).await);
    aw.s.set_row_fault("p11", None);
    assert!(
        said.contains(
            "its transaction was rolled back: nothing was reversed, the change is still applied"
        ),
        "{said}"
    );
    assert_eq!(
        hashes(&aw).await,
        applied,
        "part of the change was reversed"
    );
    assert_eq!(states(&w, &aw, &dir).await, [(1, "applied".to_string())]);
    write(&dir, "2_next.toml", NEXT);
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    std::fs::remove_file(dir.join("2_next.toml")).unwrap();

    // Reversed in one committed transaction holding every row put back: 6 people set back, 6
    // clinics back to c2 (p11's among them), 2 sites deleted.
    let known: Vec<Value> =
        aw.s.transactions()
            .iter()
            .map(|t| t["$id"].clone())
            .collect();
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert_eq!(hashes(&aw).await, before);
    let new: Vec<Value> =
        aw.s.transactions()
            .into_iter()
            .filter(|t| !known.contains(&t["$id"]))
            .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["status"], "committed", "{new:?}");
    assert_eq!(new[0]["operations"], 14, "{new:?}");
    assert_eq!(
        states(&w, &aw, &dir).await,
        [(1, "rolled-back".to_string())]
    );
    assert!(table_ids(&aw, "chbk_").await.is_empty());
}

/// Rewrites the ledger record of change `version` as a `down` in a transaction a dead process
/// left: `reversing`, its transaction `txn` recorded.
fn leave_reversing(s: &StandIn, version: u64, txn: &str) {
    let rows = s.rows(DB, "cutover_changes");
    let row = rows
        .iter()
        .find(|r| {
            let d: Value = serde_json::from_str(r["doc"].as_str().unwrap()).unwrap();
            d["_id"].as_str().and_then(|v| v.parse::<u64>().ok()) == Some(version)
        })
        .expect("the change's record");
    let mut d: Value = serde_json::from_str(row["doc"].as_str().unwrap()).unwrap();
    d["status"] = json!("reversing");
    d["down_session"] = json!({ "appwrite_transaction": txn });
    s.write_row(
        DB,
        "cutover_changes",
        row["$id"].as_str().unwrap(),
        &json!({ "doc": d.to_string() }),
        true,
    )
    .unwrap();
}

/// A process that dies during the `down` of a change in a transaction leaves it `reversing` with
/// its transaction recorded: the next command asks the server. Not committed (still pending: it
/// is rolled back) — nothing was reversed, the change is applied again, and this `down` reverses
/// it; committed — it is recorded rolled back, and reversed nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_in_a_transaction_left_by_a_dead_process_is_settled_as_it_ended() {
    let w = World::new("aw_changes_tx_down_dead").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_tx.toml",
        "version = 1\nname = \"tx\"\ntransaction = true\n[[up]]\nop = \"set\"\ntable = \"people\"\nqueries = []\nvalues = { status = \"moved\" }\n",
    );
    let before = hashes(&aw).await;
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let applied = hashes(&aw).await;

    // Left pending: rolled back, the change applied again, then reversed by this `down`.
    let pending = aw.s.create_transaction(900).unwrap();
    let pending = pending["$id"].as_str().unwrap().to_string();
    leave_reversing(&aw.s, 1, &pending);
    assert_eq!(
        states(&w, &aw, &dir).await,
        [(1, "down-interrupted".to_string())]
    );
    assert_eq!(hashes(&aw).await, applied);
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert_eq!(
        aw.s.get_transaction(&pending).unwrap()["status"],
        "rolled_back"
    );
    assert_eq!(hashes(&aw).await, before);
    assert_eq!(
        states(&w, &aw, &dir).await,
        [(1, "rolled-back".to_string())]
    );
    let history: Value =
        serde_json::from_str(&ok(&changes(&w, &aw, "history", &dir, &["--json"]).await)).unwrap();
    assert!(
        history.as_array().unwrap().iter().any(|l| l["note"]
            .as_str()
            .is_some_and(|n| n.contains("stopped before its transaction committed"))),
        "{history}"
    );

    // Committed: recorded rolled back; nothing else is reversed.
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let known: Vec<Value> =
        aw.s.transactions()
            .iter()
            .map(|t| t["$id"].clone())
            .collect();
    ok(&changes(&w, &aw, "down", &dir, &[]).await);
    let down =
        aw.s.transactions()
            .into_iter()
            .find(|t| !known.contains(&t["$id"]))
            .expect("the down's transaction");
    assert_eq!(down["status"], "committed");
    leave_reversing(&aw.s, 1, down["$id"].as_str().unwrap());
    let said = ok(&changes(&w, &aw, "down", &dir, &[]).await);
    assert!(
        said.contains("stopped after its transaction committed"),
        "{said}"
    );
    assert_eq!(hashes(&aw).await, before);
    assert_eq!(
        states(&w, &aw, &dir).await,
        [(1, "rolled-back".to_string())]
    );
}

/// Outside tester adv17 (6, High): in one Appwrite transaction a later operation picks its rows
/// from the data as it was before the change — a second `set` matching the first one's values
/// matched nothing, and the change was recorded applied. Such a change is refused before
/// anything is written (the rows as they were, the change failed, saying why); the same file
/// without `transaction` applies in order; operations that read no column an earlier one wrote
/// still run in one transaction.
#[tokio::test]
async fn a_transactional_change_reading_its_own_writes_is_refused_before_writing() {
    let w = World::new("aw_tx_reads").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    let body = |transaction: bool| {
        format!(
            "version = 1\nname = \"two sets\"\ntransaction = {transaction}\n\
             [[up]]\nop = \"set\"\ntable = \"people\"\nqueries = []\nvalues = {{ status = \"q\" }}\n\
             [[up]]\nop = \"set\"\ntable = \"people\"\n\
             queries = [{{ method = \"equal\", attribute = \"status\", values = [\"q\"] }}]\n\
             values = {{ status = \"r\" }}\n"
        )
    };
    write(&dir, "1_sets.toml", &body(true));
    let before = hashes(&aw).await;
    let text = refused(&changes(&w, &aw, "up", &dir, &[]).await);
    assert!(
        text.contains("writes column `status` it reads") && text.contains("transaction = false"),
        "{text}"
    );
    assert_eq!(hashes(&aw).await, before, "nothing written");
    assert_eq!(states(&w, &aw, &dir).await, [(1, "failed".to_string())]);

    write(&dir, "1_sets.toml", &body(false));
    ok(&changes(&w, &aw, "up", &dir, &[]).await);
    let people = aw.s.rows(DB, "people");
    assert!(!people.is_empty());
    assert!(people.iter().all(|r| r["status"] == "r"), "{people:?}");
}

/// A row holding more than an Appwrite ledger record keeps (1,000,000 characters of JSON) cannot
/// be backed up: the change fails naming the record and both sizes (the fifteenth tester's F14:
/// a bare `row_invalid_structure`), and what it did is undone. Shapes: `remove_column` (a
/// column's values backed up) and `drop_table` (whole rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_too_large_to_back_up_is_named_and_the_change_undone() {
    let w = World::new("aw_changes_huge").await;
    let aw = standin().await;
    seed(&aw.s).await;
    aw.s.create_column(
        DB,
        "sites",
        "string",
        &json!({"key": "blob", "size": 5_000_000, "required": false}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    aw.s.update_row(DB, "sites", "c2", &json!({"blob": "x".repeat(1_100_000)}))
        .unwrap();
    let before = hashes(&aw).await;
    for (n, body) in [
        (
            1,
            "op = \"remove_column\"\ntable = \"sites\"\ncolumn = \"blob\"",
        ),
        (2, "op = \"drop_table\"\ntable = \"sites\""),
    ] {
        let dir = w.dir.path().join(format!("changes{n}"));
        write(
            &dir,
            "1_big.toml",
            &format!("version = 1\nname = \"big\"\n[[up]]\n{body}\n"),
        );
        let said = refused(&changes(&w, &aw, "up", &dir, &[]).await);
        assert!(
            said.contains("more than the 1000000 an Appwrite ledger record holds")
                && said.contains("c2"),
            "{said}"
        );
        assert!(said.contains("undone"), "{said}");
        assert_eq!(hashes(&aw).await, before, "{body}");
    }
}

/// Found by the fourth outside round (adv30 T1): a change in a transaction whose later operation
/// picks its rows by reading what an earlier one inserted is refused by the run (a transaction's
/// reads do not see its staged writes); its dry run said "would apply". It says would fail now,
/// with why.
#[tokio::test]
async fn a_transaction_that_reads_its_own_writes_is_refused_by_its_dry_run_too() {
    let w = World::new("aw_changes_tx_own").await;
    let aw = standin().await;
    seed(&aw.s).await;
    let dir = w.dir.path().join("changes");
    write(
        &dir,
        "1_own.toml",
        "version = 1\nname = \"own\"\ntransaction = true\n[[up]]\nop = \"insert\"\ntable = \"sites\"\nrows = [{ \"$id\" = \"n1\", code = \"n1\" }]\n[[up]]\nop = \"set\"\ntable = \"sites\"\nqueries = [{ method = \"equal\", attribute = \"code\", values = [\"n1\"] }]\nvalues = { code = \"n2\" }\n",
    );
    let before = hashes(&aw).await;
    for dry in [true, false] {
        let mut cmd = w.cutover();
        cmd.envs(aw.vars(DB)).args(["changes", "up"]);
        if dry {
            cmd.arg("--dry-run");
        }
        cmd.args(["--target", "appwrite", "--dir", &dir.display().to_string()]);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let said = refused(&out);
        assert!(
            said.contains("picks its rows by reading the table"),
            "dry run {dry}: {said}"
        );
    }
    assert_eq!(hashes(&aw).await, before);
    w.drop().await;
}
