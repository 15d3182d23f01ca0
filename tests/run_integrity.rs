//! Run integrity on the real servers: stages with embedded children (uuid and composite parent
//! keys) resume after kill -9; high `--concurrency` completes; rejects of a killed run are on disk;
//! runs left `running` by a dead process become `interrupted`; a run whose lock is taken away
//! stops writing and ends interrupted; a stage that fails while being prepared still ends its run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use common::World;
use common::process::{kill_after, latest_step, spawn_in, spawn_migrate, wait_bounded};

const SCHEMA: &str = r#"
CREATE TABLE owners (id uuid PRIMARY KEY, name text NOT NULL, note text);
INSERT INTO owners
SELECT md5('o' || g)::uuid, 'owner ' || g, CASE WHEN g % 97 = 0 THEN repeat('n', 60) ELSE 'ok' END
FROM generate_series(1, 30000) g;
CREATE TABLE pets (owner_id uuid NOT NULL, pet_id int NOT NULL, name text NOT NULL,
                   PRIMARY KEY (owner_id, pet_id));
INSERT INTO pets
SELECT md5('o' || g)::uuid, p, 'pet ' || g || '/' || p
FROM generate_series(1, 30000) g, generate_series(1, 1 + g % 3) p;
CREATE TABLE plots (region text NOT NULL, seq int NOT NULL, label text NOT NULL,
                    PRIMARY KEY (region, seq));
INSERT INTO plots SELECT r, s, r || '-' || s
FROM unnest(ARRAY['North', 'south', 'Øst', 'west side']) r, generate_series(1, 6000) s;
CREATE TABLE crops (region text NOT NULL, seq int NOT NULL, n int NOT NULL, kind text NOT NULL);
INSERT INTO crops SELECT r, s, c, 'crop ' || c
FROM unnest(ARRAY['North', 'south', 'Øst', 'west side']) r, generate_series(1, 6000) s,
     generate_series(1, 1 + s % 2) c;
"#;

const OWNERS: &str = r#"
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
[[embed]]
path = "pets"
table = "pets"
foreign_key = "owner_id"
order_by = ["pet_id"]
[[embed.field]]
path = "id"
column = "pet_id"
[[embed.field]]
path = "name"
column = "name"
"#;

const PLOTS: &str = r#"
version = 1
name = "plots"
[source]
table = "plots"
key = ["region", "seq"]
[id]
strategy = "uuid5"
[[field]]
path = "label"
column = "label"
[[embed]]
path = "crops"
table = "crops"
foreign_key = ["region", "seq"]
order_by = ["n"]
[[embed.field]]
path = "n"
column = "n"
[[embed.field]]
path = "kind"
column = "kind"
"#;

const PIPELINE: &str = r#"
version = 1
name = "integrity"
mappings_dir = "mappings"
[[stage]]
name = "owners"
entities = ["owners"]
[[stage]]
name = "plots"
entities = ["plots"]
"#;

async fn setup(w: &World) -> PathBuf {
    w.sql(SCHEMA).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/owners.toml"), OWNERS).unwrap();
    std::fs::write(dir.join("mappings/plots.toml"), PLOTS).unwrap();
    std::fs::write(dir.join("pipeline.toml"), PIPELINE).unwrap();
    dir.join("pipeline.toml")
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every (entity, source key, rule) in every rejects file under the world's `rejects/`.
fn all_rejects(w: &World) -> std::collections::BTreeSet<(String, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(runs) = std::fs::read_dir(w.dir.path().join("rejects")) else {
        return out;
    };
    for run in runs {
        for f in std::fs::read_dir(run.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".warnings.csv") || !name.ends_with(".csv") {
                continue;
            }
            let mut r = csv::Reader::from_path(&path).unwrap();
            for rec in r.records() {
                let rec = rec.unwrap();
                out.insert((rec[0].to_string(), rec[1].to_string(), rec[3].to_string()));
            }
        }
    }
    out
}

#[tokio::test]
async fn stages_with_embedded_children_resume_after_kill_9_and_end_identical() {
    let reference = World::new("integrity_ref").await;
    let ref_pipeline = setup(&reference).await;
    let out = reference.migrate_with(&ref_pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let expected_owners = reference.docs("owners").await;
    let expected_plots = reference.docs("plots").await;
    let expected_rejects = all_rejects(&reference);
    assert_eq!(expected_rejects.len(), 30000 / 97, "{expected_rejects:?}");

    let w = World::new("integrity").await;
    let pipeline = setup(&w).await;
    let small = ["--batch-size", "100", "--concurrency", "3"];
    // Killed in the embedded stage with a uuid key, twice; then in the composite-key stage.
    let mut child = spawn_migrate(&w, &pipeline, &small);
    let first = kill_after(&w, &mut child, "owners", 3_000).await;
    let mut child = spawn_migrate(&w, &pipeline, &small);
    kill_after(&w, &mut child, "owners", first + 6_000).await;
    // Rejects of the killed runs up to their checkpoints are on disk already.
    let so_far = all_rejects(&w);
    assert!(
        so_far.len() as i64 >= (first + 6_000) / 97 - 1,
        "rejects of killed runs were lost: {} on disk",
        so_far.len()
    );
    let mut child = spawn_migrate(&w, &pipeline, &small);
    kill_after(&w, &mut child, "plots", 2_000).await;
    // Killed runs are marked interrupted by the next run that holds the lock.
    let out = wait_bounded(
        spawn_migrate(&w, &pipeline, &[]),
        Duration::from_secs(120),
        "the resuming run",
    );
    // Exit 2: its report accounts for owners too (completed by the second killed run), rejects
    // included.
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let runs: Vec<Document> = {
        use futures::TryStreamExt;
        w.mongo()
            .await
            .collection::<Document>("cutover_runs")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    let statuses: Vec<&str> = runs.iter().map(|r| r.get_str("status").unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "interrupted").count(),
        3,
        "{statuses:?}"
    );
    assert!(!statuses.contains(&"running"), "{statuses:?}");

    assert!(w.docs("owners").await == expected_owners, "owners differ");
    assert!(w.docs("plots").await == expected_plots, "plots differ");
    assert_eq!(all_rejects(&w), expected_rejects);
    // Each rejected row is a line of one run's own (adv31 F2: a killed run's lines past its
    // checkpoint stayed, and the resume listed those rows again).
    assert_each_reject_owned_once(&w, expected_rejects.len());
    reference.drop().await;
    w.drop().await;
}

/// Every rejected row is a line of exactly one run's own files (lines with a batch: not carried
/// over), `rows` of them in all.
fn assert_each_reject_owned_once(w: &World, rows: usize) {
    let mut owned: Vec<(String, String)> = std::fs::read_dir(w.dir.path().join("rejects"))
        .unwrap()
        .flat_map(|d| w.own_reject_lines(&d.unwrap().file_name().to_string_lossy()))
        .map(|[e, k, ..]| (e, k))
        .collect();
    owned.sort();
    let all = owned.len();
    owned.dedup();
    assert_eq!((all, owned.len()), (rows, rows), "lines owned by two runs");
}

/// SIGTERM at a random moment of a run over two stages with embedded children (a uuid key, a
/// composite text key): the run stops in order — exit 1 with its report, not killed (adv31 F1:
/// exit 143, no report) — counted up to its checkpoints as history counts it; the resume then
/// ends with the documents and rejects of one uninterrupted run, each row counted once.
#[tokio::test]
async fn sigterm_at_a_random_moment_stops_in_order_and_the_resume_completes() {
    let w = World::new("sigterm").await;
    let pipeline = setup(&w).await;
    let args = ["--batch-size", "100", "--concurrency", "3"];
    // A first run times the whole; the signal lands somewhere within it.
    let started = Instant::now();
    let out = w.migrate_with(&pipeline, &args);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let whole = started.elapsed();
    let db = w.mongo().await;
    db.drop().await.unwrap();
    std::fs::remove_dir_all(w.dir.path().join("rejects")).unwrap();
    std::fs::remove_dir_all(w.dir.path().join("reports")).unwrap();
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let delay = whole.mul_f64(0.1 + 0.8 * rng.f64());
    let child = spawn_migrate(&w, &pipeline, &args);
    tokio::time::sleep(delay).await;
    signal(&child, "TERM");
    let out = wait_bounded(child, Duration::from_secs(60), "the stopped run");
    let said = format!("seed {seed}, {delay:?} of {whole:?}: {}", out_text(&out));
    assert_ne!(out.status.code(), None, "killed by the signal: {said}");
    let report = w.latest_report();
    let stopped = out.status.code() == Some(1);
    if stopped {
        assert!(said.contains("asked to stop"), "{said}");
        assert_eq!(report["status"], "interrupted", "{said} {report}");
        for e in report["entities"].as_array().unwrap() {
            let step = latest_step(&w, e["name"].as_str().unwrap()).await.unwrap();
            let n = |k: &str| e[k].as_i64().unwrap_or(0);
            if e["status"] != "completed" {
                // A stage stopped before its first checkpoint has none recorded: it counts 0
                // (seen once in CI: the signal right after a stage began).
                assert_eq!(
                    n("read"),
                    step.get_i64("checkpoint_rows").unwrap_or(0),
                    "{said} {e} {step}"
                );
            }
            assert_eq!(
                n("read"),
                n("written") + n("rejected") + n("skipped"),
                "{e}"
            );
        }
    } else {
        // The signal came after the last batch: the run ended as it would have.
        assert_eq!(out.status.code(), Some(2), "{said}");
    }
    // The resume accounts for the rejects (exit 2); after a run that ended, nothing is left.
    let out = w.migrate_with(&pipeline, &[]);
    let want = if stopped { 2 } else { 0 };
    assert_eq!(out.status.code(), Some(want), "{said} {}", out_text(&out));
    assert_eq!(w.count("owners").await, 30000 - 30000 / 97, "{said}");
    assert_eq!(w.count("plots").await, 24000, "{said}");
    assert_each_reject_owned_once(&w, 30000 / 97);
    let out = w.cutover().args(["history", "--json"]).output().unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sum = |k: &str| -> i64 {
        runs.as_array()
            .unwrap()
            .iter()
            .map(|r| r[k].as_i64().unwrap_or(0))
            .sum()
    };
    assert_eq!(sum("read"), 30000 + 24000, "{said} {runs}");
    assert_eq!(sum("rejected"), 30000 / 97, "{said} {runs}");
    w.drop().await;
}

#[tokio::test]
async fn concurrency_32_completes_on_mongodb() {
    let w = World::new("conc32").await;
    let pipeline = setup(&w).await;
    let out = wait_bounded(
        spawn_migrate(
            &w,
            &pipeline,
            &["--batch-size", "50", "--concurrency", "32"],
        ),
        Duration::from_secs(180),
        "migrate --concurrency 32",
    );
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    assert_eq!(w.count("owners").await, 30000 - 30000 / 97);
    assert_eq!(w.count("plots").await, 24000);
    w.drop().await;
}

#[tokio::test]
async fn a_run_whose_lock_is_taken_away_stops_writing_and_ends_interrupted() {
    let w = World::new("fence").await;
    let pipeline = setup(&w).await;
    let mut child = spawn_migrate(&w, &pipeline, &["--batch-size", "50", "--concurrency", "1"]);
    // Once it writes, pause it (longer than it writes on one look at the lock, as a holder
    // stopped until its lock expired), take its lock away, and let it go on.
    kill_after_pause(&w, &mut child).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Its holder is alive on this machine: refused unless forced (the sixteenth session's
    // adv20 F4: released silently, and history then said the process had died).
    let out = w
        .cutover()
        .args(["lock", "release", "--confirm"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", out_text(&out));
    assert!(
        out_text(&out).contains("alive on this machine"),
        "{}",
        out_text(&out)
    );
    let out = w
        .cutover()
        .args(["lock", "release", "--confirm", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    let before = w.count("owners").await;
    signal(&child, "CONT");
    let out = wait_bounded(child, Duration::from_secs(60), "the fenced run");
    assert_ne!(out.status.code(), Some(0), "{}", out_text(&out));
    let text = out_text(&out);
    assert!(text.contains("lost the target's lock"), "{text}");
    // It stopped at its next checkpoint: at most the batches in flight were written after.
    let after = w.count("owners").await;
    assert!(after <= before + 100, "kept writing: {before} → {after}");
    let report = w.latest_report();
    assert_eq!(report["status"], "interrupted", "{report}");
    let owners = &report["entities"][0];
    assert_eq!(owners["status"], "interrupted", "{owners}");
    // No false rejects: only the rule's own.
    let rejects = all_rejects(&w);
    assert!(
        rejects.iter().all(|(_, _, rule)| rule == "max_length"),
        "{rejects:?}"
    );
    let step = latest_step(&w, "owners").await.unwrap();
    assert_eq!(step.get_str("status"), Ok("interrupted"), "{step}");
    // Its report counts up to its checkpoint, as history and the API do; the rows it read past
    // it are named, and their rejects set apart (adv30 T2: its report counted them too, and its
    // rejects file listed rows the resume lists again).
    let stopped = report["run_id"].as_str().unwrap().to_string();
    let cp = |k: &str| step.get_i64(k).unwrap() as u64;
    let n = |k: &str| owners[k].as_u64().unwrap_or(0);
    assert_eq!(n("read"), cp("checkpoint_rows"), "{owners} {step}");
    assert_eq!(n("rejected"), cp("checkpoint_rejected"), "{owners} {step}");
    assert_eq!(n("read"), n("written") + n("rejected") + n("skipped"));
    assert_eq!(step.get_i64("read").unwrap() as u64, n("read"), "{step}");
    let lines = w.own_reject_lines(&stopped);
    assert_eq!(lines.len() as u64, n("rejected"), "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l[4].parse::<u64>().unwrap() < cp("checkpoint_batches")),
        "{lines:?}"
    );
    // A plain re-run resumes and completes.
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    assert_eq!(w.count("owners").await, 30000 - 30000 / 97);
    // Each rejected row is a line of one run's own: the stopped run's up to its checkpoint, the
    // resume's past it.
    let resume = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let mut rows: Vec<(String, String)> = [stopped, resume]
        .iter()
        .flat_map(|r| w.own_reject_lines(r))
        .map(|[e, k, ..]| (e, k))
        .collect();
    rows.sort();
    let len = rows.len();
    rows.dedup();
    assert_eq!((len, rows.len()), (30000 / 97, 30000 / 97));
    // Every row counted once over the two runs: the stopped one up to its checkpoint, the
    // resume the rest (adv28 R6: the stopped run counted the rows past its checkpoint too).
    use futures::TryStreamExt;
    let runs: Vec<Document> = w
        .mongo()
        .await
        .collection::<Document>("cutover_runs")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let sum = |k: &str| runs.iter().map(|r| r.get_i64(k).unwrap_or(0)).sum::<i64>();
    assert_eq!(sum("read"), 30000 + 24000, "{runs:?}");
    assert_eq!(sum("rejected"), 30000 / 97, "{runs:?}");
    assert_eq!(
        sum("read"),
        sum("written") + sum("rejected") + sum("skipped"),
        "{runs:?}"
    );
    w.drop().await;
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// Stops (SIGSTOP) `child` once its owners step has a checkpoint.
async fn kill_after_pause(w: &World, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(step) = latest_step(w, "owners").await
            && step.get_i64("checkpoint_rows").unwrap_or(0) > 500
        {
            signal(child, "STOP");
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be paused");
        }
        assert!(Instant::now() < deadline, "no checkpoint in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn log_level_debug_shows_the_run_phases_not_the_libraries() {
    let w = World::new("logs").await;
    let pipeline = setup(&w).await;
    let p = pipeline.display().to_string();
    let out = wait_bounded(
        spawn_in(
            &w,
            w.dir.path(),
            &[
                "--log-level",
                "debug",
                "migrate",
                "--quiet",
                "--batch-size",
                "5000",
                "--pipeline",
                &p,
            ],
        ),
        Duration::from_secs(120),
        "migrate --log-level debug",
    );
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for phase in [
        "source snapshot taken",
        "counted the source rows",
        "reading the source in key order",
        "batch written",
        "checkpoint recorded",
    ] {
        assert!(stderr.contains(phase), "no `{phase}` in:\n{stderr}");
    }
    // Only cutover's own debug lines: the drivers, HTTP and TLS stay at warn.
    let foreign: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("DEBUG") || l.contains("TRACE"))
        .filter(|l| !l.contains(" cutover::") && !l.contains("cutover::"))
        .collect();
    assert!(
        foreign.is_empty(),
        "{} library lines, e.g. {:?}",
        foreign.len(),
        &foreign[..foreign.len().min(3)]
    );
    w.drop().await;
}

/// kill -9, then `migrate --fresh` to the end, then `rollback`: the collection is back as it was
/// before the first run that wrote into it — not as the crashed run left it.
#[tokio::test]
async fn rollback_after_a_crash_and_a_fresh_rerun_returns_to_the_state_before_the_first_run() {
    let w = World::new("rb_fresh").await;
    let pipeline = setup(&w).await;
    // The collection held one document of its own before any run.
    let owners = w.mongo().await.collection::<Document>("owners");
    owners
        .insert_one(doc! { "_id": "kept", "name": "before cutover" })
        .await
        .unwrap();
    let small = ["--batch-size", "100", "--concurrency", "2"];
    let mut child = spawn_migrate(&w, &pipeline, &small);
    kill_after(&w, &mut child, "owners", 2_000).await;
    let out = w.migrate_with(&pipeline, &["owners", "--fresh"]);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    assert_eq!(w.count("owners").await, 1 + 30000 - 30000 / 97);
    let out = w
        .cutover()
        .args(["rollback", "owners", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    let left = w.docs("owners").await;
    assert!(
        left == vec![doc! { "_id": "kept", "name": "before cutover" }],
        "rollback did not return to the state before the first run: {} documents left",
        left.len()
    );
    w.drop().await;
}

/// `exists` rules on plain columns are answered by PostgreSQL in the read: no key set is loaded,
/// and the rows that point nowhere are still rejected with the rule.
#[tokio::test]
async fn exists_rules_are_answered_by_postgresql_without_holding_keys() {
    let w = World::new("exists_sql").await;
    w.load_registry(100);
    let out = w
        .cutover()
        .args(["--log-level", "info", "migrate", "--quiet", "--pipeline"])
        .arg(common::repo().join("pipelines/registry.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in ["administeredBy", "userId"] {
        assert!(
            stderr.contains("exists rule answered by PostgreSQL")
                && stderr
                    .lines()
                    .any(|l| l.contains("answered by PostgreSQL") && l.contains(field)),
            "{field}: {stderr}"
        );
    }
    assert!(
        !stderr.contains("keys held in memory for exists rules"),
        "{stderr}"
    );
    let run = w.latest_report();
    let rejects = w.rejects(run["run_id"].as_str().unwrap());
    let unknown_users = rejects
        .iter()
        .filter(|r| r.0 == "immunizations" && r.3 == "exists")
        .count();
    assert_eq!(unknown_users, 2, "patients 34 and 35: {rejects:?}");
    w.drop().await;
}

/// A stage started over after its mapping moved it to another collection records that
/// collection's own state: a rollback restores it, instead of emptying it because the first
/// collection had been empty.
#[tokio::test]
async fn a_stage_moved_to_another_collection_after_a_crash_rolls_back_that_collection() {
    let w = World::new("rb_moved").await;
    let pipeline = setup(&w).await;
    let small = ["--batch-size", "100", "--concurrency", "2"];
    let mut child = spawn_migrate(&w, &pipeline, &small);
    kill_after(&w, &mut child, "owners", 2_000).await;
    // The mapping now writes to `people`, which holds a document of its own.
    w.mongo()
        .await
        .collection::<Document>("people")
        .insert_one(doc! { "_id": "kept", "name": "in people before" })
        .await
        .unwrap();
    let moved = OWNERS.replace(
        "name = \"owners\"\n",
        "name = \"owners\"\ncollection = \"people\"\n",
    );
    std::fs::write(w.dir.path().join("mappings/owners.toml"), moved).unwrap();
    let out = w.migrate_with(&pipeline, &["owners"]);
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let out = w
        .cutover()
        .args(["rollback", "owners", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    let left = w.docs("people").await;
    assert!(
        left == vec![doc! { "_id": "kept", "name": "in people before" }],
        "people was not restored to its own state: {} documents",
        left.len()
    );
    w.drop().await;
}

/// Every (source key, rule) of `entity` in the rejects files of the runs under `dir`.
fn rejects_under(dir: &Path, entity: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for run in std::fs::read_dir(dir).into_iter().flatten() {
        let path = run.unwrap().path().join(format!("{entity}.csv"));
        let Ok(mut r) = csv::Reader::from_path(&path) else {
            continue;
        };
        for rec in r.records() {
            let rec = rec.unwrap();
            out.push((rec[1].to_string(), rec[3].to_string()));
        }
    }
    out.sort();
    out
}

/// A run killed in one directory and resumed from another (no config file: `rejects/` follows
/// the working directory) copies the covered reject lines from where the killed run wrote them,
/// as the ledger recorded; when they are gone the resume refuses, naming the directory, and
/// writes nothing — every rejected row stays in a rejects file.
#[tokio::test]
async fn a_run_resumed_from_another_directory_finds_the_killed_runs_rejects_or_refuses() {
    let w = World::new("integrity_cwd").await;
    let pipeline = setup(&w).await;
    let p = pipeline.display().to_string();
    let (a, b) = (w.dir.path().join("a"), w.dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let args = [
        "migrate",
        "--quiet",
        "--pipeline",
        &p,
        "owners",
        "--batch-size",
        "100",
    ];
    let mut child = spawn_in(&w, &a, &args);
    let covered = kill_after(&w, &mut child, "owners", 3_000).await;
    let before = rejects_under(&a.join("rejects"), "owners");
    assert!(before.len() as i64 >= covered / 97, "{}", before.len());

    // The killed run's rejects are gone from where it wrote them: refused, nothing written.
    std::fs::rename(a.join("rejects"), w.dir.path().join("moved")).unwrap();
    // A batch the killed process had sent is still applied by mongod after the kill: count
    // once the collection has stopped changing.
    let mut docs = w.count("owners").await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = w.count("owners").await;
        if now == docs {
            break;
        }
        docs = now;
    }
    let out = wait_bounded(spawn_in(&w, &b, &args), Duration::from_secs(120), "resume");
    let text = out_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("cannot resume owners")
            && text.contains(&a.join("rejects").display().to_string())
            && text.contains("rejected row(s)"),
        "{text}"
    );
    assert_eq!(w.count("owners").await, docs, "the refused resume wrote");

    // Put back, the resume from the other directory copies them: every rejected row of the
    // entity is in the finishing run's file, once.
    std::fs::rename(w.dir.path().join("moved"), a.join("rejects")).unwrap();
    let out = wait_bounded(spawn_in(&w, &b, &args), Duration::from_secs(120), "resume");
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let expected: Vec<String> = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT id::text FROM owners WHERE length(note) > 45 ORDER BY 1")
                .fetch_all(&mut c)
                .await
                .unwrap();
        keys
    };
    let runs: Vec<_> = std::fs::read_dir(b.join("rejects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let got: Vec<String> = rejects_under(&b.join("rejects"), "owners")
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(got, expected);
    w.drop().await;
}

/// kill -9 after the first stage completed, during the second: the run that finishes wrote the
/// only report, and it accounts for every entity — the first stage's counts from the ledger
/// (marked as completed by the interrupted run) and its rejects copied into its file — so the
/// sign-off's totals cover the whole source. History counts each step once: the interrupted run
/// its completed step, the finishing run its own. A later run does not report it again.
#[tokio::test]
async fn an_entity_completed_by_a_killed_run_is_accounted_for_by_the_run_that_finishes() {
    let w = World::new("integrity_adopt").await;
    let pipeline = setup(&w).await;
    let small = ["--batch-size", "100", "--concurrency", "2"];
    let mut child = spawn_migrate(&w, &pipeline, &small);
    kill_after(&w, &mut child, "plots", 1_000).await;
    let killed = latest_step(&w, "owners").await.unwrap();
    assert_eq!(killed.get_str("status"), Ok("completed"), "{killed}");
    let killed_run = killed.get_str("run_id").unwrap().to_string();

    let out = wait_bounded(
        spawn_migrate(&w, &pipeline, &[]),
        Duration::from_secs(120),
        "the finishing run",
    );
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    let report = w.latest_report();
    let names: Vec<&str> = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["owners", "plots"], "{report}");
    let owners = &report["entities"][0];
    assert_eq!(owners["completed_by"], killed_run.as_str(), "{owners}");
    assert_eq!(owners["read"], 30000);
    assert_eq!(owners["rejected"], 30000 / 97);
    assert_eq!(owners["written"], 30000 - 30000 / 97);
    assert_eq!(report["totals"]["read"], 30000 + 24000, "{report}");
    assert_eq!(report["totals"]["rejected"], 30000 / 97);
    let finishing_run = report["run_id"].as_str().unwrap().to_string();
    // The finishing run's rejects file holds every rejected row of owners, once.
    let rejects_dir = w.dir.path().join("rejects").join(&finishing_run);
    let mut keys: Vec<String> = {
        let mut r = csv::Reader::from_path(rejects_dir.join("owners.csv")).unwrap();
        r.records().map(|r| r.unwrap()[1].to_string()).collect()
    };
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!((n, keys.len()), (30000 / 97, 30000 / 97));

    // The sign-off (`cutover report`) shows it; history counts each step once.
    let out = w.cutover().args(["report"]).output().unwrap();
    let signoff = out_text(&out);
    assert!(
        signoff.contains(&format!("completed by run {killed_run}"))
            && signoff.contains(&format!("{}", 30000 + 24000)),
        "{signoff}"
    );
    let out = w.cutover().args(["history", "--json"]).output().unwrap();
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let of = |id: &str| {
        history
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {history}"))
    };
    assert_eq!(of(&killed_run)["status"], "interrupted");
    // The killed run: owners whole, plots up to its checkpoint; the finishing run the rest.
    let (killed_read, finishing_read) = (
        of(&killed_run)["read"].as_i64().unwrap(),
        of(&finishing_run)["read"].as_i64().unwrap(),
    );
    assert!(killed_read >= 30000 + 1000, "{history}");
    assert_eq!(killed_read + finishing_read, 30000 + 24000, "{history}");
    assert_eq!(of(&killed_run)["rejected"], 30000 / 97);
    let written: i64 = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["written"].as_i64().unwrap())
        .sum();
    assert_eq!(
        written as u64,
        w.count("owners").await + w.count("plots").await
    );

    // A later run has nothing to do and reports nothing again.
    let out = w.migrate_with(&pipeline, &[]);
    assert!(out.status.success(), "{}", out_text(&out));
    let later = w.latest_report();
    assert_ne!(later["run_id"], finishing_run.as_str());
    assert_eq!(later["entities"], serde_json::json!([]), "{later}");
    w.drop().await;
}

/// Rejected rows that share their key text (duplicate keys in a table without a primary key) are
/// each a rejected row: a run killed past them resumes (it refused, counting distinct keys), and
/// the finishing run's rejects file holds every one of their lines once.
#[tokio::test]
async fn a_resume_past_rejected_rows_sharing_a_key_goes_on_and_keeps_each_line() {
    let w = World::new("integrity_dupkeys").await;
    w.sql(
        "CREATE TABLE d1 (id int NOT NULL, v int NOT NULL);
         INSERT INTO d1 SELECT g, g FROM generate_series(1, 20000) g;
         INSERT INTO d1 SELECT 3, -g FROM generate_series(1, 5) g;",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/d1.toml"),
        "version = 1\nname = \"d1\"\n[source]\ntable = \"d1\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"d1\"]\n",
    )
    .unwrap();
    let pipeline = dir.join("p.toml");
    let mut child = spawn_migrate(&w, &pipeline, &["--batch-size", "50", "--concurrency", "1"]);
    kill_after(&w, &mut child, "d1", 3_000).await;
    let out = wait_bounded(
        spawn_migrate(&w, &pipeline, &[]),
        Duration::from_secs(120),
        "the resume",
    );
    let text = out_text(&out);
    assert!(!text.contains("cannot resume"), "{text}");
    let report = w.latest_report();
    let d1 = &report["entities"][0];
    let rejected = d1["rejected"].as_u64().unwrap();
    assert!(rejected >= 5, "{d1}");
    assert_eq!(d1["read"], 20005, "{d1}");
    let file = dir
        .join("rejects")
        .join(report["run_id"].as_str().unwrap())
        .join("d1.csv");
    let lines = csv::Reader::from_path(&file).unwrap().records().count() as u64;
    assert_eq!(
        lines, rejected,
        "one line per rejected row, none lost or doubled"
    );
    w.drop().await;
}

/// The run's report file is on disk before the ledger says the run ended: killed the moment the
/// ledger records its end, the run still has its report (it was in none: recorded finished, the
/// next run found nothing to report, `report RUN` had no file).
#[tokio::test]
async fn a_run_killed_as_the_ledger_records_its_end_has_its_report() {
    let w = World::new("integrity_report_first").await;
    let pipeline = setup(&w).await;
    let mut child = spawn_migrate(&w, &pipeline, &["owners"]);
    let runs = w.mongo().await.collection::<Document>("cutover_runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    let run_id = loop {
        if let Some(r) = runs.find_one(doc! {}).await.unwrap()
            && r.get_str("status") != Ok("running")
        {
            let _ = child.kill();
            break r.get_str("_id").unwrap().to_string();
        }
        assert!(
            child.try_wait().unwrap().is_none() || Instant::now() < deadline,
            "no run recorded"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.wait();
    let file = w.dir.path().join("reports").join(format!("{run_id}.json"));
    assert!(file.exists(), "{} is missing", file.display());
    let out = w.cutover().args(["report", &run_id]).output().unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    w.drop().await;
}

/// adv38 F3: a resuming run stopped by SIGTERM at its very start (before its first row) carried
/// the killed run's reject lines of the rows before the checkpoint into its files but counted
/// none of them: `rejected 0` beside rejects by rule. Every stopped report's rejects by rule
/// add up to its rejected count, and read = written + rejected + skipped.
#[tokio::test]
async fn a_resume_stopped_at_its_start_counts_the_rejects_it_carried() {
    let w = World::new("sigterm_resume").await;
    let pipeline = setup(&w).await;
    let args = ["--batch-size", "50", "--concurrency", "1"];
    let mut child = spawn_migrate(&w, &pipeline, &args);
    kill_after_pause(&w, &mut child).await;
    signal(&child, "KILL");
    let _ = wait_bounded(child, Duration::from_secs(30), "the killed run");
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    for attempt in 0..12 {
        let child = spawn_migrate(&w, &pipeline, &args);
        let delay = Duration::from_millis(rng.u64(50..700));
        tokio::time::sleep(delay).await;
        signal(&child, "TERM");
        let out = wait_bounded(child, Duration::from_secs(60), "the stopped resume");
        let said = format!(
            "seed {seed}, attempt {attempt}, {delay:?}: {}",
            out_text(&out)
        );
        if out.status.code() != Some(1) {
            // It ran to its end before the signal: nothing left to resume.
            break;
        }
        let report = w.latest_report();
        for e in report["entities"].as_array().unwrap() {
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            let by_rule: u64 = e["rejected_by_rule"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
                .unwrap_or(0);
            assert_eq!(by_rule, n("rejected"), "{said} {e}");
            assert_eq!(
                n("read"),
                n("written") + n("rejected") + n("skipped"),
                "{said} {e}"
            );
        }
    }
    let out = w.migrate_with(&pipeline, &[]);
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        out_text(&out)
    );
    assert_each_reject_owned_once(&w, 30000 / 97);
    w.drop().await;
}

/// adv38 F8: a run paused past its lock's time is alive: the run that takes the expired lock
/// over says so (not "a process that is gone"), and the paused run, let go, stops writing.
#[tokio::test]
async fn taking_over_the_expired_lock_of_a_paused_run_says_it_is_alive() {
    let w = World::new("lock_expired_alive").await;
    let pipeline = setup(&w).await;
    let mut child = spawn_migrate(
        &w,
        &pipeline,
        &[
            "--batch-size",
            "50",
            "--concurrency",
            "1",
            "--lock-ttl",
            "2",
        ],
    );
    kill_after_pause(&w, &mut child).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = wait_bounded(
        spawn_in(
            &w,
            w.dir.path(),
            &[
                "migrate",
                "--quiet",
                "--pipeline",
                pipeline.to_str().unwrap(),
            ],
        ),
        Duration::from_secs(120),
        "the run taking the lock over",
    );
    let said = out_text(&out);
    assert!(matches!(out.status.code(), Some(0 | 2)), "{said}");
    assert!(said.contains("still alive on this machine"), "{said}");
    assert!(!said.contains("process that is gone"), "{said}");
    signal(&child, "CONT");
    let paused = wait_bounded(child, Duration::from_secs(60), "the paused run");
    assert_eq!(paused.status.code(), Some(1), "{}", out_text(&paused));
    w.drop().await;
}

/// adv38 F10: the mapping changed between a crash and the resume: the stage starts over (its
/// checkpoint was taken with the other mapping), and the run says so.
#[tokio::test]
async fn a_mapping_changed_since_the_crash_starts_the_stage_over_and_says_so() {
    let w = World::new("changed_since_crash").await;
    let pipeline = setup(&w).await;
    let mut child = spawn_migrate(&w, &pipeline, &["--batch-size", "50", "--concurrency", "1"]);
    kill_after_pause(&w, &mut child).await;
    signal(&child, "KILL");
    let _ = wait_bounded(child, Duration::from_secs(30), "the killed run");
    let owners = w.dir.path().join("mappings/owners.toml");
    let mapping = std::fs::read_to_string(&owners)
        .unwrap()
        .replace("max_length = 45", "max_length = 46");
    std::fs::write(&owners, mapping).unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    let said = out_text(&out);
    assert!(matches!(out.status.code(), Some(0 | 2)), "{said}");
    assert!(
        said.contains("its mapping changed since that run was interrupted"),
        "{said}"
    );
    assert_eq!(
        w.count("owners").await as usize,
        30000 - 30000 / 97,
        "{said}"
    );
    w.drop().await;
}
