//! `cutover report`: the sign-off report in every format; the HTML page renders in headless
//! Chromium with its charts and numbers visible.

mod common;

use bson::{Document, doc};
use common::World;
use common::browser::{chromium, count_color};

#[tokio::test]
async fn html_report_renders_with_charts_and_numbers() {
    let w = World::new("report").await;
    w.load_registry(120);
    assert_eq!(w.migrate(&[]).status.code(), Some(2));
    let verify = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .output()
        .unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let run = w.latest_report();
    let read = run["totals"]["read"].as_u64().unwrap();

    // Text, Markdown and JSON.
    let text = w.cutover().args(["report"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("Verification") && text.contains("PASSED"),
        "{text}"
    );
    assert!(
        text.contains("Rejected rows by rule")
            && text.lines().any(|l| l
                .split_whitespace()
                .collect::<Vec<_>>()
                .starts_with(&["patients", "required", "validate", "5"])),
        "{text}"
    );
    let md = w
        .cutover()
        .args(["report", "--format", "md"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&md.stdout).contains("| patients | 120 | 108 | 12 |"));
    let json = w
        .cutover()
        .args(["report", "--format", "json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["run"]["run_id"], run["run_id"]);
    assert_eq!(json["verification"]["ok"], true);
    assert!(
        !json["ledger"].as_array().unwrap().is_empty(),
        "ledger entries of the run"
    );
    assert!(
        !json.to_string().contains("postgres://postgres@") || !json.to_string().contains(":***@")
    );

    // HTML, rendered.
    let html = w.dir.path().join("signoff.html");
    let out = w
        .cutover()
        .args(["report", "--format", "html", "-o"])
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "self-contained: no fetches"
    );
    let ud = w.dir.path().join("chromium");
    let dom = chromium(&["--dump-dom", &format!("file://{}", html.display())], &ud);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("id=\"chart-entities\"") && dom.contains("id=\"chart-throughput\""),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("id=\"total-read\">{read}<")),
        "the numbers are on the page"
    );
    let shot = w.dir.path().join("signoff.png");
    let out = chromium(
        &[
            "--window-size=1100,1600",
            &format!("--screenshot={}", shot.display()),
            &format!("file://{}", html.display()),
        ],
        &ud,
    );
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    // The bars (written: #2e7d32, rejected: #c62828) and the throughput line (#1565c0) are drawn.
    assert!(
        count_color(&shot, [0x2e, 0x7d, 0x32]) > 2_000,
        "written bars not visible"
    );
    assert!(
        count_color(&shot, [0xc6, 0x28, 0x28]) > 100,
        "rejected bars not visible"
    );
    assert!(
        count_color(&shot, [0x15, 0x65, 0xc0]) > 200,
        "throughput line not visible"
    );
    w.drop().await;
}

/// The sign-off joins only a verification of the same target that covers the run, and `report`
/// without a run id shows the latest run that ran a stage.
#[tokio::test]
async fn signoff_joins_only_a_matching_verification_and_skips_runs_that_did_nothing() {
    let w = World::new("signoff_match").await;
    w.load_registry(100);
    assert_eq!(w.migrate(&[]).status.code(), Some(2));
    let run = w.latest_report();
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let pipeline = common::repo().join("pipelines/registry.toml");
    let signoff = |args: &[&str]| -> (serde_json::Value, String) {
        let out = w
            .cutover()
            .args(["report", "--format", "json"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            serde_json::from_slice(&out.stdout).unwrap(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A verification of another database (empty: it fails) is not this run's.
    let other = format!("{}_other", w.mongo_db);
    let out = w
        .cutover()
        .args(["verify", "--database", &other, "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (s, _) = signoff(&[&run_id]);
    assert!(s["verification"].is_null(), "{}", s["verification"]);
    let (text, _) = {
        let out = w.cutover().args(["report", &run_id]).output().unwrap();
        (String::from_utf8_lossy(&out.stdout).to_string(), ())
    };
    assert!(
        !text.contains("PASSED") && !text.contains("FAILED"),
        "{text}"
    );

    // A verification of only some entities does not sign off the run either.
    let out = w
        .cutover()
        .args(["verify", "users", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (s, _) = signoff(&[&run_id]);
    assert!(s["verification"].is_null(), "{}", s["verification"]);

    // The target's own full verification is joined.
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (s, _) = signoff(&[&run_id]);
    assert_eq!(s["verification"]["ok"], true, "{}", s["verification"]);
    assert_eq!(
        s["verification"]["target"],
        format!("mongodb {}", w.mongo_db)
    );
    assert_eq!(
        s["verification"]["source"].as_str(),
        w.pg_url.split_once('@').map(|(_, at)| at),
        "{}",
        s["verification"]
    );

    // A later verification of the same target against another source (a rehearsal copy, a
    // leftover CUTOVER_SOURCE_URL; here the same registry less one immunization, so it fails)
    // is not this run's: the sign-off keeps the one against the run's own source.
    let rehearsal = World::new("signoff_other_source").await;
    rehearsal.load_registry(100);
    rehearsal
        .sql("DELETE FROM immunizations WHERE record_id = (SELECT record_id FROM immunizations ORDER BY record_id LIMIT 1)")
        .await;
    let out = w
        .cutover()
        .env("CUTOVER_SOURCE_URL", &rehearsal.pg_url)
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (s, _) = signoff(&[&run_id]);
    assert_eq!(s["verification"]["ok"], true, "{}", s["verification"]);
    rehearsal.drop().await;
    let joined = s["verification"]["verified_at"].clone();

    // A later verification made with another pipeline, or with a mapping the run did not
    // write with (here: one leaving vaccine 1 out, whose document is deleted, so it passes), is
    // not this run's either (adv39 F7: it was shown as PASSED while the target missed a row).
    let dir = w.dir.path().join("other");
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    for e in std::fs::read_dir(common::repo().join("mappings")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, dir.join("mappings").join(p.file_name().unwrap())).unwrap();
        }
    }
    let registry = std::fs::read_to_string(&pipeline).unwrap();
    let renamed = registry.replace("name = \"registry\"", "name = \"other\"");
    assert_ne!(renamed, registry);
    std::fs::write(dir.join("pipelines/other.toml"), renamed).unwrap();
    std::fs::write(dir.join("pipelines/registry.toml"), &registry).unwrap();
    let verify_with = |p: &std::path::Path| {
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(p)
            .output()
            .unwrap();
        // The vaccine left out leaves its immunizations' references dangling: it may fail.
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    verify_with(&dir.join("pipelines/other.toml"));
    let (s, _) = signoff(&[&run_id]);
    assert_eq!(
        s["verification"]["verified_at"], joined,
        "{}",
        s["verification"]
    );
    let vaccines = dir.join("mappings/vaccines.toml");
    let mapping = std::fs::read_to_string(&vaccines).unwrap().replace(
        "table = \"vaccines\"",
        "query = \"SELECT * FROM vaccines WHERE vaccine_id <> 1\"",
    );
    std::fs::write(&vaccines, mapping).unwrap();
    w.mongo()
        .await
        .collection::<Document>("vaccines")
        .delete_one(doc! { "_id": 1 })
        .await
        .unwrap();
    verify_with(&dir.join("pipelines/registry.toml"));
    let (s, _) = signoff(&[&run_id]);
    assert_eq!(
        s["verification"]["verified_at"], joined,
        "{}",
        s["verification"]
    );

    // A run that found everything applied, and a dry run, are passed over by a plain `report`.
    let out = w.migrate(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its own report says why it ran nothing, in Markdown too (adv40 F6).
    let applied_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let out = w
        .cutover()
        .args(["report", &applied_id, "--format", "md"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("already applied, not run again"), "{said}");
    let out = w.migrate(&["--dry-run", "--rerun"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, stderr) = signoff(&[]);
    assert_eq!(s["run"]["run_id"], run_id.as_str(), "{stderr}");
    assert!(stderr.contains("latest that ran a stage"), "{stderr}");
    // The dry run's own report joins no verification: it wrote nothing (adv39 F9).
    let dry = w.latest_report();
    assert_eq!(dry["dry_run"], true);
    let dry_id = dry["run_id"].as_str().unwrap();
    let (s, _) = signoff(&[dry_id]);
    assert!(s["verification"].is_null(), "{}", s["verification"]);
    let out = w.cutover().args(["report", dry_id]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("a dry run: it wrote nothing"), "{said}");
    let out = w
        .cutover()
        .args(["report", dry_id, "--format", "md"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rehearsed (dry run: nothing written)")
            && !said.contains("written and verified"),
        "{said}"
    );
    let client = mongodb::Client::with_uri_str(common::mongo_uri())
        .await
        .unwrap();
    client.database(&other).drop().await.unwrap();
    w.drop().await;
}

/// A run whose report file cannot be written (a path under a file, as a full or read-only disk
/// would refuse it) is still recorded in the ledger with its status and counts, prints its counts,
/// and says the report was not written (exit 1); it was left `running` with no counts.
#[tokio::test]
async fn a_report_that_cannot_be_written_leaves_the_run_recorded_and_says_so() {
    let w = World::new("report_io").await;
    w.load_registry(100);
    let blocker = w.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a file").unwrap();
    let report_path = blocker.join("run.json");
    let out = w
        .cutover()
        .args(["migrate", "--quiet", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .arg("--report")
        .arg(&report_path)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("patients"),
        "the counts are printed: {stdout}"
    );
    assert!(
        stderr.contains("the run report could not be written"),
        "{stderr}"
    );
    let history = w.cutover().args(["history", "--json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let last = &runs.as_array().unwrap()[0];
    assert_eq!(last["status"], "completed_with_rejects", "{runs}");
    assert!(last["written"].as_u64().unwrap() > 0, "{runs}");
    w.drop().await;
}

/// `report --database` (and `--target`) choose among the runs of that database; a run made with
/// `migrate --database X` has its ledger entries read from X (they were read from the default
/// database: an empty ledger section).
#[tokio::test]
async fn report_chooses_the_run_of_the_database_named_and_reads_its_ledger() {
    let w = World::new("report_db").await;
    w.load_registry(100);
    let first = w.migrate(&[]);
    assert_eq!(
        first.status.code(),
        Some(2),
        "{}",
        common::output_text(&first)
    );
    let first_run = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let other = format!("{}_b", w.mongo_db);
    let second = w.migrate(&["--database", &other]);
    assert_eq!(
        second.status.code(),
        Some(2),
        "{}",
        common::output_text(&second)
    );
    let second_run = w.latest_report()["run_id"].as_str().unwrap().to_string();
    assert_ne!(first_run, second_run);
    let signoff = |args: &[&str]| -> serde_json::Value {
        let out = w
            .cutover()
            .args(["report", "--format", "json"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let s = signoff(&["--database", &w.mongo_db]);
    assert_eq!(s["run"]["run_id"], first_run.as_str());
    // Without flags: the configured target and database, not the newest rehearsal elsewhere.
    let s = signoff(&[]);
    assert_eq!(s["run"]["run_id"], first_run.as_str());
    let s = signoff(&["--database", &other]);
    assert_eq!(s["run"]["run_id"], second_run.as_str());
    let steps = s["ledger"].as_array().unwrap();
    assert!(!steps.is_empty(), "the run's ledger entries, from {other}");
    assert!(steps.iter().all(|st| st["run_id"] == second_run.as_str()));
    let out = w
        .cutover()
        .args(["report", "--target", "appwrite"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "no Appwrite run: {}",
        common::output_text(&out)
    );
    let said = common::output_text(&out);
    assert!(
        said.contains("no run report of appwrite")
            && said.contains(&format!(
                "the newest run report there is of mongodb {other}"
            )),
        "{said}"
    );
    mongodb::Client::with_uri_str(common::mongo_uri())
        .await
        .unwrap()
        .database(&other)
        .drop()
        .await
        .unwrap();
    w.drop().await;
}

/// After a rollback of a verified run, the sign-off no longer says the target was verified (it
/// said "Verification PASSED" over emptied collections): it names the steps rolled back.
#[tokio::test]
async fn a_rolled_back_run_is_no_longer_signed_off_as_verified() {
    let w = World::new("report_rolled_back").await;
    w.load_registry(100);
    let pipeline = common::repo().join("pipelines/registry.toml");
    assert_eq!(w.migrate(&[]).status.code(), Some(2));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report = || {
        let out = w.cutover().args(["report", &run_id]).output().unwrap();
        common::output_text(&out)
    };
    assert!(report().contains("PASSED"), "{}", report());
    let out = w
        .cutover()
        .args(["rollback", "--all", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let text = report();
    assert!(!text.contains("PASSED"), "{text}");
    assert!(text.contains("rolled back since"), "{text}");
    w.drop().await;
}

/// adv38 F9: a later run that wrote into the run's entities (a re-run, killed half way in the
/// finding, here finished) leaves the target other than the run left it: the run's report is
/// no longer signed off as verified and names the later run.
#[tokio::test]
async fn a_later_run_into_its_entities_unsigns_the_report_of_a_run() {
    let w = World::new("report_later_run").await;
    w.load_registry(100);
    let pipeline = common::repo().join("pipelines/registry.toml");
    assert_eq!(w.migrate(&[]).status.code(), Some(2));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let report = || {
        let out = w.cutover().args(["report", &run_id]).output().unwrap();
        common::output_text(&out)
    };
    assert!(report().contains("PASSED"), "{}", report());
    let out = w.migrate(&["--rerun", "vaccines"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let later = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let text = report();
    assert!(!text.contains("PASSED"), "{text}");
    assert!(
        text.contains(&format!(
            "changed since by run {later} (completed): vaccines"
        )),
        "{text}"
    );
    w.drop().await;
}

/// A verification that fails only on references that point nowhere: the sign-off's text and
/// Markdown name them (path, referenced entity, how many, examples) — "DIFFERS" with every count
/// 0 and no reason would leave the signer guessing.
#[tokio::test]
async fn the_signoff_names_broken_references_when_they_are_why_verification_failed() {
    let w = World::new("report_broken_refs").await;
    w.load_registry(100);
    let out = w.migrate(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    // A patient's document goes: its immunizations now point nowhere.
    let db = w.mongo().await;
    let patients = db.collection::<bson::Document>("patients");
    let gone = patients.find_one(bson::doc! {}).await.unwrap().unwrap();
    let gone_id = gone.get_str("patientId").unwrap().to_string();
    patients
        .delete_one(bson::doc! { "_id": gone.get("_id").unwrap().clone() })
        .await
        .unwrap();
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    for format in ["text", "md"] {
        let out = w
            .cutover()
            .args(["report", "--format", format])
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert!(
            text.contains("broken references: patientId → patients: 1 value(s) point nowhere")
                && text.contains(&gone_id),
            "{format}: {text}"
        );
    }
    w.drop().await;
}
