//! Appwrite run integrity: a misconfigured target (a wrong project id, an endpoint without `/v1`)
//! makes the ledger commands fail with the server's answer, like `check` — never "everything
//! pending" as if the target were empty; `--concurrency 32` completes.

mod common;

use std::sync::Arc;

use common::World;
use cutover::standin::StandIn;

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
    let (addr, _) = cutover::standin::serve(s, "127.0.0.1:0").await.unwrap();
    let good = format!("http://{addr}/v1");
    let pipeline = common::repo()
        .join("pipelines/registry.toml")
        .display()
        .to_string();
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
    let (addr, _) = cutover::standin::serve(s, "127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{addr}/v1");
    let pipeline = common::repo()
        .join("pipelines/registry.toml")
        .display()
        .to_string();
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
    let (addr, _) = cutover::standin::serve(s, "127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{addr}/v1");
    let pipeline = common::repo()
        .join("pipelines/registry.toml")
        .display()
        .to_string();
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
