//! Transient and permanent write failures injected into the real mongod with its `failCommand`
//! fail point (mongod runs with enableTestCommands=1), scoped to this test's client by appName.

mod common;

use bson::doc;
use common::World;

async fn fail_point(app: &str, times: i32, code: i32) {
    let admin = mongodb::Client::with_uri_str(common::mongo_uri())
        .await
        .unwrap()
        .database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": times },
            "data": { "failCommands": ["insert"], "errorCode": code, "appName": app },
        })
        .await
        .unwrap();
}

async fn fail_point_off(app: &str) {
    let admin = mongodb::Client::with_uri_str(common::mongo_uri())
        .await
        .unwrap()
        .database("admin");
    let _ = admin
        .run_command(
            doc! { "configureFailPoint": "failCommand", "mode": "off", "data": { "appName": app } },
        )
        .await;
}

fn uri_with_app(app: &str) -> String {
    let uri = common::mongo_uri();
    let sep = if uri.contains('?') { "&" } else { "?" };
    format!("{uri}{sep}appName={app}")
}

fn vaccines_only(w: &World, app: &str, extra: &[&str]) -> std::process::Output {
    w.cutover()
        .env("MONGODB_URI", uri_with_app(app))
        .args([
            "migrate",
            "vaccines",
            "facilities",
            "--quiet",
            "--batch-size",
            "5",
            // One batch at a time: the fail point hits the first batch, whatever the scheduler.
            "--concurrency",
            "1",
            "--pipeline",
        ])
        .arg(common::repo().join("pipelines/registry.toml"))
        .args(extra)
        .output()
        .unwrap()
}

// The fail point is server-wide state: the three scenarios run in one test, one after another.
#[tokio::test]
async fn transient_errors_are_retried_and_permanent_ones_fail_the_batch() {
    let w = World::new("faults").await;
    w.load_registry(100);
    let app = format!("cutover-fault-{}", std::process::id());

    // 1. Two "ExceededTimeLimit" replies (transient): retried, everything written once. (Only
    //    `insert` fails: the ledger writes with `update`.)
    fail_point(&app, 2, 262).await;
    let out = vaccines_only(&w, &app, &[]);
    fail_point_off(&app).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = w.latest_report();
    // Two injected failures, so at least two retries (a loaded machine may add a genuine one).
    let retried = report["totals"]["retried"].as_u64().unwrap();
    assert!(retried >= 2, "{report}");
    assert_eq!(w.count("vaccines").await, 12);
    assert_eq!(w.count("facilities").await, 39);

    // 2. A permanent error (BadValue) without --continue-on-error stops the run with exit 1; the
    //    report still accounts for every row read.
    let w2 = World::new("faults2").await;
    w2.load_registry(100);
    fail_point(&app, 1, 2).await;
    let out = vaccines_only(&w2, &app, &[]);
    fail_point_off(&app).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a batch of 5 rows could not be written"),
        "{err}"
    );
    let report = w2.latest_report();
    assert_eq!(report["status"], "failed");
    let e = &report["entities"][0];
    let n = |k: &str| e[k].as_u64().unwrap();
    assert_eq!(
        n("read"),
        n("written") + n("rejected") + n("skipped"),
        "{e}"
    );
    // A failed batch is not the rows' fault: never rejected. The stage stopped at it, before
    // its first checkpoint: counted up to it (nothing), the rows it read named as read again by
    // the resume (adv30 T2).
    assert_eq!(n("rejected"), 0, "{e}");
    assert_eq!((n("read"), n("read_again")), (0, 12), "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("a batch of 5 rows"),
        "{e}"
    );
    assert_eq!(
        report["entities"].as_array().unwrap().len(),
        1,
        "the run stopped at vaccines"
    );

    // 3. The same with --continue-on-error: the stage writes every other batch, then ends failed
    //    (exit 1) with the failed rows counted apart, none of them rejected; the checkpoint stays
    //    before the failed batch, so a plain re-run writes them.
    let w3 = World::new("faults3").await;
    w3.load_registry(100);
    fail_point(&app, 1, 2).await;
    let out = vaccines_only(&w3, &app, &["--continue-on-error"]);
    fail_point_off(&app).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("5 rows in 1 batches could not be written"),
        "{err}"
    );
    let report = w3.latest_report();
    let run_id = report["run_id"].as_str().unwrap().to_string();
    let e = &report["entities"][0];
    // Counted up to its checkpoint, before the failed batch (adv31 F4): the rows past it,
    // the failed ones among them, are read again by the resume.
    assert_eq!(e["read_again_failed"], 5, "{e}");
    assert_eq!(
        e["read"].as_u64().unwrap() + e["read_again"].as_u64().unwrap(),
        12,
        "{e}"
    );
    let rejects = w3.rejects(&run_id);
    assert!(
        rejects.iter().all(|r| r.2 != "write"),
        "a failed batch is not rejected: {rejects:?}"
    );
    assert_eq!(w3.count("vaccines").await, 12 - 5);
    let out = vaccines_only(&w3, &app, &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w3.count("vaccines").await, 12);
    assert_eq!(w3.count("facilities").await, 39);

    w.drop().await;
    w2.drop().await;
    w3.drop().await;
}
