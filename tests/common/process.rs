//! `cutover` as a child process the test can kill: started with the world's servers, killed
//! with SIGKILL once its step reaches a checkpoint, waited for with a deadline.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{Document, doc};

use super::World;

/// `cutover ARGS…` started in `cwd`, output captured.
pub fn spawn_in(w: &World, cwd: &Path, args: &[&str]) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("cutover"))
        .current_dir(cwd)
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .env("MONGODB_URI", super::mongo_uri())
        .env("CUTOVER_MONGODB_DATABASE", &w.mongo_db)
        .env("CUTOVER_FILES_ROOT", w.files_root())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `cutover migrate --quiet --pipeline PIPELINE EXTRA…` started in the world's directory.
pub fn spawn_migrate(w: &World, pipeline: &Path, extra: &[&str]) -> Child {
    let p = pipeline.display().to_string();
    let mut args = vec!["migrate", "--quiet", "--pipeline", &p];
    args.extend_from_slice(extra);
    spawn_in(w, w.dir.path(), &args)
}

/// The newest step document of `entity`.
pub async fn latest_step(w: &World, entity: &str) -> Option<Document> {
    w.mongo()
        .await
        .collection::<Document>("cutover_steps")
        .find_one(doc! { "entity": entity })
        .sort(doc! { "started_at": -1 })
        .await
        .unwrap()
}

/// kill -9 once the running step of `entity` has a checkpoint of at least `rows`; returns the
/// checkpoint seen.
pub async fn kill_after(w: &World, child: &mut Child, entity: &str, rows: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(step) = latest_step(w, entity).await {
            let at = step.get_i64("checkpoint_rows").unwrap_or(0);
            if step.get_str("status") == Ok("running") && at >= rows {
                child.kill().unwrap();
                child.wait().unwrap();
                return at;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before a checkpoint at {rows} rows of {entity}");
        }
        assert!(Instant::now() < deadline, "no checkpoint at {rows} in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for `child` at most `limit`; kills it and fails the test when it takes longer.
pub fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not finish within {limit:?} (hung?)\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
