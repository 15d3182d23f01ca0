//! Appwrite run integrity: a misconfigured target (a wrong project id, an endpoint without `/v1`)
//! makes the ledger commands fail with the server's answer, like `check` — never "everything
//! pending" as if the target were empty; `--concurrency 32` completes; a run whose lock is taken
//! away stops writing and ends interrupted; a batch the server keeps refusing (503) is failed, not
//! rejected, and a later run writes it.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appwrite_standin::{Faults, StandIn};
use common::World;
use serde_json::Value;

const KEY: &str = "misconfig-key";

async fn run(w: &World, endpoint: &str, project: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = w.cutover();
    cmd.env("APPWRITE_ENDPOINT", endpoint)
        .env("APPWRITE_PROJECT", project)
        .env("APPWRITE_API_KEY", KEY)
        .env("APPWRITE_DATABASE", "registry")
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_commands_fail_on_a_wrong_project_or_an_endpoint_without_v1() {
    let w = World::new("aw_misconfig").await;
    w.load_registry(100);
    let s = Arc::new(StandIn::new("cutover", KEY));
    let (addr, _) = appwrite_standin::serve(s, "127.0.0.1:0").await.unwrap();
    let good = format!("http://{addr}/v1");
    let pipeline = common::registry_without_files().display().to_string();
    let commands: [&[&str]; 4] = [
        &["status", "--target", "appwrite", "--pipeline", &pipeline],
        &["history", "--target", "appwrite"],
        &["lock", "status", "--target", "appwrite"],
        &["backup", "list", "--target", "appwrite"],
    ];
    // The right configuration works: an empty target is all pending.
    let out = run(&w, &good, "cutover", commands[0]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending"));
    for (endpoint, project, why) in [
        (good.clone(), "no-such-project", "project"),
        (format!("http://{addr}"), "cutover", "route"),
    ] {
        for args in commands {
            let out = run(&w, &endpoint, project, args).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{args:?} with a wrong {why} exited 0:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(stderr.contains("404"), "{args:?}: {stderr}");
            assert!(!stderr.contains(KEY), "{stderr}");
        }
    }
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_32_completes_on_appwrite() {
    let w = World::new("aw_conc32").await;
    w.load_registry(100);
    let s = Arc::new(StandIn::new("cutover", KEY));
    let (addr, _) = appwrite_standin::serve(s, "127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{addr}/v1");
    let pipeline = common::registry_without_files().display().to_string();
    let args = [
        "migrate",
        "--quiet",
        "--target",
        "appwrite",
        "--pipeline",
        &pipeline,
        "--concurrency",
        "32",
        "--batch-size",
        "10",
        "--bulk-rows",
        "5",
    ];
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        run(&w, &endpoint, "cutover", &args),
    )
    .await
    .expect("migrate --concurrency 32 into Appwrite hung");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = w.latest_report();
    let t = &report["totals"];
    assert_eq!(
        t["read"].as_u64().unwrap(),
        t["written"].as_u64().unwrap() + t["rejected"].as_u64().unwrap(),
        "{report}"
    );
    let verify = run(
        &w,
        &endpoint,
        "cutover",
        &["verify", "--target", "appwrite", "--pipeline", &pipeline],
    )
    .await;
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    w.drop().await;
}

/// A stage that fails while its table is being set up (a column Appwrite marks failed) still ends
/// its run: the report is written, and the run and step are recorded failed, not left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_fails_while_prepared_ends_its_run_with_a_report() {
    let w = World::new("aw_prepfail").await;
    w.load_registry(100);
    let mut standin = StandIn::new("cutover", KEY);
    standin.failing_columns = vec!["name".into()];
    let s = Arc::new(standin);
    let (addr, _) = appwrite_standin::serve(s, "127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{addr}/v1");
    let pipeline = common::registry_without_files().display().to_string();
    let out = run(
        &w,
        &endpoint,
        "cutover",
        &[
            "migrate",
            "vaccines",
            "--quiet",
            "--target",
            "appwrite",
            "--pipeline",
            &pipeline,
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("name"),
        "the failed column is named: {stderr}"
    );
    let report = w.latest_report();
    assert_eq!(report["status"], "failed", "{report}");
    assert_eq!(report["entities"][0]["name"], "vaccines", "{report}");
    assert_eq!(report["entities"][0]["status"], "failed", "{report}");
    let history = run(
        &w,
        &endpoint,
        "cutover",
        &["history", "--json", "--target", "appwrite"],
    )
    .await;
    assert!(
        history.status.success(),
        "{}",
        String::from_utf8_lossy(&history.stderr)
    );
    let runs: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(!statuses.contains(&"running"), "{statuses:?}");
    assert!(statuses.contains(&"failed"), "{statuses:?}");
    w.drop().await;
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A stand-in with fast columns, served in this process.
async fn standin() -> (Arc<StandIn>, String) {
    let aw = common::standin::Aw::start(KEY).await;
    (aw.s, aw.endpoint)
}

/// The latest ledger step of `entity` in the stand-in's ledger.
fn step_of(s: &StandIn, entity: &str) -> Option<bson::Document> {
    let mut steps: Vec<bson::Document> = s
        .rows("registry", "cutover_steps")
        .iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_str(r["doc"].as_str()?).ok()?;
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

fn int(d: &bson::Document, k: &str) -> i64 {
    match d.get(k) {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        _ => 0,
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Waits for `child` at most `limit` without blocking the runtime serving the stand-in.
async fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("{what} did not finish within {limit:?}\n{}", out_text(&out));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every (entity, key, stage, rule) of every rejects file of the world.
fn all_rejects(w: &World) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let Ok(runs) = std::fs::read_dir(w.dir.path().join("rejects")) else {
        return out;
    };
    for run in runs {
        let id = run.unwrap().file_name().to_string_lossy().to_string();
        out.extend(w.rejects(&id));
    }
    out.sort();
    out
}

const OWNERS_SQL: &str = r#"
CREATE TABLE owners (id uuid PRIMARY KEY, name text NOT NULL, note text);
INSERT INTO owners
SELECT md5('o' || g)::uuid, 'owner ' || g, CASE WHEN g % 97 = 0 THEN repeat('n', 60) ELSE 'ok' END
FROM generate_series(1, 6000) g;
"#;

const OWNERS_MAPPING: &str = r#"
version = 1
name = "owners"
[source]
table = "owners"
key = ["id"]
[[field]]
path = "name"
column = "name"
[[field]]
path = "note"
column = "note"
validate = { max_length = 45 }
"#;

const OWNERS_PIPELINE: &str = r#"
version = 1
name = "fence"
mappings_dir = "mappings"
target = "appwrite"
[[stage]]
name = "owners"
entities = ["owners"]
"#;

/// Issue #10 on Appwrite: a holder paused past a look at its lock, whose lock is then released by
/// force, stops writing at its next batch (within one checkpoint interval), ends interrupted and
/// says why, records no false rejects; a plain re-run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appwrite_run_whose_lock_is_taken_away_stops_writing_and_ends_interrupted() {
    let w = World::new("aw_fence").await;
    w.sql(OWNERS_SQL).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/owners.toml"), OWNERS_MAPPING).unwrap();
    std::fs::write(dir.join("pipeline.toml"), OWNERS_PIPELINE).unwrap();
    let pipeline = dir.join("pipeline.toml").display().to_string();
    let (s, endpoint) = standin().await;
    let env = |cmd: &mut Command| {
        cmd.current_dir(dir)
            .env("CUTOVER_SOURCE_URL", &w.pg_url)
            .env("APPWRITE_ENDPOINT", &endpoint)
            .env("APPWRITE_PROJECT", "cutover")
            .env("APPWRITE_API_KEY", KEY)
            .env("APPWRITE_DATABASE", "registry");
    };
    // Slow requests: the run takes seconds, a batch of 50 rows a request.
    s.set_faults(Faults {
        delay_ms: 15,
        ..Faults::default()
    });
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("cutover"));
    env(&mut cmd);
    let mut child = cmd
        .args(["migrate", "--quiet", "--pipeline", &pipeline])
        .args(["--batch-size", "50", "--concurrency", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it has a checkpoint, pause it (longer than it writes on one look at the lock), take
    // its lock away, and let it go on.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(step) = step_of(&s, "owners")
            && int(&step, "checkpoint_rows") > 500
        {
            signal(&child, "STOP");
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be paused");
        }
        assert!(Instant::now() < deadline, "no checkpoint in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = run(
        &w,
        &endpoint,
        "cutover",
        &[
            "lock",
            "release",
            "--confirm",
            "--force",
            "--target",
            "appwrite",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", out_text(&out));
    let before = s.row_count("registry", "owners");
    signal(&child, "CONT");
    let out = wait_bounded(child, Duration::from_secs(90), "the fenced run").await;
    let text = out_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("lost the target's lock"), "{text}");
    // It stopped at its next batch: at most the batches in flight were written after.
    let after = s.row_count("registry", "owners");
    assert!(after <= before + 100, "kept writing: {before} → {after}");
    assert!(after < 6000 - 6000 / 97, "it wrote everything: {after}");
    let report = w.latest_report();
    assert_eq!(report["status"], "interrupted", "{report}");
    assert_eq!(report["entities"][0]["status"], "interrupted", "{report}");
    // No false rejects: only the rule's own.
    let rejects = all_rejects(&w);
    assert!(rejects.iter().all(|r| r.3 == "max_length"), "{rejects:?}");
    let step = step_of(&s, "owners").unwrap();
    assert_eq!(step.get_str("status"), Ok("interrupted"), "{step}");
    // A plain re-run resumes and completes.
    s.set_faults(Faults::default());
    let out = run(
        &w,
        &endpoint,
        "cutover",
        &["migrate", "--quiet", "--pipeline", &pipeline],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    assert_eq!(s.row_count("registry", "owners"), 6000 - 6000 / 97);
    w.drop().await;
}

/// A row as written, without the server's times (they differ between runs).
fn strip_times(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("$createdAt");
        o.remove("$updatedAt");
        o.remove("$sequence");
    }
    v
}

/// Issue #10 on Appwrite: a table whose row writes the server answers 503 every time, with
/// `--retries 0`: its batches are failed (within skipped), never rejected; the checkpoint does
/// not pass them; the report adds up; a later plain `migrate` writes them, ending as an
/// uninterrupted run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appwrite_batch_refused_with_503_is_failed_not_rejected_and_written_later() {
    let pipeline = common::registry_without_files().display().to_string();
    let args = [
        "migrate",
        "vaccines",
        "facilities",
        "--quiet",
        "--target",
        "appwrite",
        "--pipeline",
        &pipeline,
        "--batch-size",
        "5",
        "--concurrency",
        "1",
    ];
    // The uninterrupted run.
    let reference = World::new("aw_503_ref").await;
    reference.load_registry(100);
    let (rs, rendpoint) = standin().await;
    let out = run(&reference, &rendpoint, "cutover", &args).await;
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        out_text(&out)
    );

    let w = World::new("aw_503").await;
    w.load_registry(100);
    let (s, endpoint) = standin().await;
    s.set_table_faults(
        "vaccines",
        Faults {
            unavailable: 1.0,
            ..Faults::default()
        },
    );
    let mut faulted = args.to_vec();
    faulted.extend(["--retries", "0", "--continue-on-error"]);
    let out = run(&w, &endpoint, "cutover", &faulted).await;
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("could not be written"), "{text}");
    assert_eq!(s.row_count("registry", "vaccines"), 0);
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let vaccines = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "vaccines")
        .unwrap()
        .clone();
    let n = |e: &Value, k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}"));
    let source = w.pg_count("vaccines").await;
    // Counted up to its checkpoint, before the first failed batch (adv31 F4): every row is read
    // again by the resume, all of them in failed batches.
    let m = |e: &Value, k: &str| e[k].as_u64().unwrap_or(0);
    assert_eq!(
        n(&vaccines, "read") + m(&vaccines, "read_again"),
        source,
        "{vaccines}"
    );
    assert_eq!(n(&vaccines, "written"), 0, "{vaccines}");
    assert_eq!(
        n(&vaccines, "rejected"),
        0,
        "a failed batch is not rejected: {vaccines}"
    );
    assert_eq!(m(&vaccines, "read_again_failed"), source, "{vaccines}");
    for e in report["entities"].as_array().unwrap() {
        assert_eq!(
            n(e, "read"),
            n(e, "written") + n(e, "rejected") + n(e, "skipped"),
            "{e}"
        );
    }
    let rejects = w.rejects(&run_id);
    assert!(
        rejects.iter().all(|r| r.0 != "vaccines" && r.2 != "write"),
        "a failed batch is not rejected: {rejects:?}"
    );
    let step = step_of(&s, "vaccines").unwrap();
    assert_eq!(int(&step, "checkpoint_rows"), 0, "{step}");
    assert_ne!(step.get_str("status"), Ok("completed"), "{step}");

    // Faults off: a plain run writes them, and the tables equal the uninterrupted run's.
    s.set_table_faults("vaccines", Faults::default());
    let out = run(&w, &endpoint, "cutover", &args).await;
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        out_text(&out)
    );
    for table in ["vaccines", "facilities"] {
        let rows = |s: &StandIn| -> Vec<Value> {
            s.rows("registry", table)
                .into_iter()
                .map(strip_times)
                .collect()
        };
        assert_eq!(rows(&s), rows(&rs), "{table}");
    }
    assert_eq!(s.row_count("registry", "vaccines") as u64, source);
    reference.drop().await;
    w.drop().await;
}

/// A ledger on the stand-in, tables prefixed `prefix`.
fn ledger_on(endpoint: &str, prefix: &str) -> cutover::ledger::Ledger {
    let client =
        cutover::sink::appwrite::AppwriteClient::new(endpoint, "cutover", KEY, None).unwrap();
    cutover::ledger::Ledger::new(cutover::ledger::Store::appwrite(client, "registry"), prefix)
}

/// Issue #10: a heartbeat that read the lock before a force release and wrote after it brought
/// the lock back (its write was a `PUT`, which creates a missing row). Now the renewal is an
/// update-only `PATCH`: the row stays gone and the holder knows it lost the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_in_flight_during_a_force_release_does_not_bring_the_lock_back() {
    let (s, endpoint) = standin().await;
    let ledger = ledger_on(&endpoint, "hb_");
    let lock = ledger
        .acquire_lock("run-a", "migrate", Duration::from_millis(600))
        .await
        .unwrap();
    // Every write of the lock row now waits 1 s in the stand-in; reads do not.
    s.set_table_faults(
        "hb_lock",
        Faults {
            delay_ms: 1000,
            ..Faults::default()
        },
    );
    // A heartbeat (every 200 ms) has read the lock and its write is on its way…
    tokio::time::sleep(Duration::from_millis(450)).await;
    // …when the lock is released by force.
    s.delete_row("registry", "hb_lock", "cutover").unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        s.rows("registry", "hb_lock").is_empty(),
        "the heartbeat brought the released lock back: {:?}",
        s.rows("registry", "hb_lock")
    );
    assert!(
        lock.fence().is_lost(),
        "the holder must know it lost the lock"
    );
    s.set_table_faults("hb_lock", Faults::default());
    assert!(ledger.lock_holder().await.unwrap().is_none());
    lock.release().await.unwrap();
}

/// Issue #10: a takeover that the old holder's heartbeat overwrote (it read the lock before the
/// takeover and wrote after it) left two runs believing they held the lock. The taker now reads
/// the lock again after a settle time and yields to the holder whose write came last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_overwritten_by_the_old_holders_heartbeat_is_refused() {
    let (s, endpoint) = standin().await;
    let ledger = ledger_on(&endpoint, "tk_");
    let old = ledger
        .acquire_lock("run-a", "migrate", Duration::from_millis(300))
        .await
        .unwrap();
    let old_row = s.rows("registry", "tk_lock")[0].clone();
    // The old holder stops renewing; its lock expires.
    drop(old);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let taker = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            ledger
                .acquire_lock("run-b", "migrate", Duration::from_secs(1800))
                .await
        })
    };
    // The takeover's write lands…
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = s.rows("registry", "tk_lock");
        if rows
            .first()
            .is_some_and(|r| r["doc"].as_str().unwrap_or("").contains("run-b"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the takeover never wrote");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // …then the old holder's heartbeat, read before it, lands on top.
    let data = serde_json::json!({ "doc": old_row["doc"].clone() });
    s.write_row("registry", "tk_lock", "cutover", &data, true)
        .unwrap();
    match taker.await.unwrap() {
        Err(cutover::ledger::lock::LockError::Held(h)) => assert_eq!(h.run_id, "run-a"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("the takeover kept a lock that names another run"),
    }
}

/// Issue #10: a row the server fails (503) more often than the client retries failed its whole
/// batch. Now the batch is re-sent in halves: a row failing a few times more ends written, a row
/// failing always ends failed (not rejected) alone, and the rest of its batch is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_failing_transiently_is_retried_alone_and_its_batch_is_written() {
    let pipeline = common::registry_without_files().display().to_string();
    let args = [
        "migrate",
        "vaccines",
        "--quiet",
        "--target",
        "appwrite",
        "--pipeline",
        &pipeline,
        "--batch-size",
        "10",
        "--concurrency",
        "1",
    ];
    let reference = World::new("aw_rowfault_ref").await;
    reference.load_registry(100);
    let (rs, rendpoint) = standin().await;
    let out = run(&reference, &rendpoint, "cutover", &args).await;
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        out_text(&out)
    );
    let ids: Vec<String> = rs
        .rows("registry", "vaccines")
        .iter()
        .map(|r| r["$id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 10, "{ids:?}");

    let w = World::new("aw_rowfault").await;
    w.load_registry(100);
    let (s, endpoint) = standin().await;
    // 3 attempts per request (`--retries 2`): the first row fails 4 times, the second always.
    let (flaky, broken) = (ids[3].clone(), ids[7].clone());
    s.set_row_fault(
        &flaky,
        Some(appwrite_standin::RowFault {
            status: 503,
            times: Some(4),
        }),
    );
    s.set_row_fault(
        &broken,
        Some(appwrite_standin::RowFault {
            status: 503,
            times: None,
        }),
    );
    let mut faulted = args.to_vec();
    faulted.extend(["--retries", "2", "--continue-on-error"]);
    let out = run(&w, &endpoint, "cutover", &faulted).await;
    let text = out_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let written: Vec<String> = s
        .rows("registry", "vaccines")
        .iter()
        .map(|r| r["$id"].as_str().unwrap().to_string())
        .collect();
    assert!(written.contains(&flaky), "the flaky row was not written");
    assert!(!written.contains(&broken));
    assert_eq!(written.len(), ids.len() - 1, "{written:?}");
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let n = |e: &Value, k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}"));
    let vaccines = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "vaccines")
        .unwrap()
        .clone();
    // Counted up to its checkpoint, before the failed row's batch (adv31 F4); what it wrote
    // and failed past it is said.
    let m = |e: &Value, k: &str| e[k].as_u64().unwrap_or(0);
    assert_eq!(
        n(&vaccines, "read") + m(&vaccines, "read_again"),
        ids.len() as u64,
        "{vaccines}"
    );
    assert_eq!(
        n(&vaccines, "written") + m(&vaccines, "read_again_written"),
        ids.len() as u64 - 1,
        "{vaccines}"
    );
    assert_eq!(n(&vaccines, "rejected"), 0, "{vaccines}");
    assert_eq!(m(&vaccines, "read_again_failed"), 1, "{vaccines}");
    assert_eq!(
        n(&vaccines, "read"),
        n(&vaccines, "written") + n(&vaccines, "rejected") + n(&vaccines, "skipped"),
        "{vaccines}"
    );
    let rejects = w.rejects(&run_id);
    assert!(
        rejects.is_empty(),
        "a failed row is not rejected: {rejects:?}"
    );
    reference.drop().await;
    w.drop().await;
}
