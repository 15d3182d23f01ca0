//! `cutover verify | head -1`: when the reader of the output has gone, every command ends quietly
//! with status 141 (what a shell reports for SIGPIPE), never with a panic (status 101).

mod common;

use std::process::Stdio;

use common::World;

/// Runs `cutover ARGS…` with standard output (and, with `stderr_too`, standard error) going into a
/// pipe whose read end is already closed: every write fails with EPIPE.
fn with_closed_pipe(w: &World, args: &[&str], stderr_too: bool) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // As World::cutover sets it up, with the standard streams in our hands.
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("cutover"));
    cmd.current_dir(w.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .env("MONGODB_URI", common::mongo_uri())
        .env("CUTOVER_MONGODB_DATABASE", &w.mongo_db)
        // The registry's files stage needs its root (a dry run checks the files too).
        .env("CUTOVER_FILES_ROOT", w.files_root())
        .args(args);
    let stderr_file = w.dir.path().join("stderr.txt");
    if stderr_too {
        cmd.stderr(Stdio::from(writer.try_clone().unwrap()));
    } else {
        cmd.stderr(Stdio::from(std::fs::File::create(&stderr_file).unwrap()));
    }
    cmd.stdout(Stdio::from(writer));
    let status = cmd.status().unwrap();
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_file);
    (status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_ends_quietly_when_the_reader_has_gone() {
    let w = World::new("broken_pipe").await;
    w.load_registry(100);
    let out = w.migrate(&[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the sample registry has rejects"
    );
    let p = common::repo()
        .join("pipelines/registry.toml")
        .display()
        .to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["verify", "--pipeline", &p],
        vec!["verify", "--json", "--pipeline", &p],
        vec!["backup", "list"],
        vec!["status", "--pipeline", &p],
        vec!["history"],
        vec!["history", "--json"],
        vec!["plan", "--pipeline", &p],
        vec!["check", "--pipeline", &p],
        vec!["report"],
        vec!["report", "--format", "html"],
        vec!["lock", "status"],
        vec!["migrate", "--quiet", "--dry-run", "--pipeline", &p],
    ];
    for args in &commands {
        let (code, stderr) = with_closed_pipe(&w, args, false);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code, Some(141), "{args:?}: {stderr}");
        // Standard error closed as well (`cutover … 2>&1 | head`).
        let (code, _) = with_closed_pipe(&w, args, true);
        assert_eq!(code, Some(141), "{args:?} with standard error closed too");
    }
    w.drop().await;
}
