//! The `cutover` service of `docker-compose.yml`, run as its container would run it (no Docker
//! engine here): the image's layout from the Dockerfile's final stage (`COPY` lines, `WORKDIR`,
//! `ENTRYPOINT`), the service's `command` and `environment` with compose's `${VAR:-default}`
//! interpolation — only the servers' host names become this test's servers and the listening
//! address a loopback one. The server must start, apply the registry's changes (the service sets
//! `MIGRATE_ON_START`) and answer with the token the service requires.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::serve::{Api, Server};
use common::{World, repo};

/// The lines of the `cutover` service (indented under it).
fn service_lines(compose: &str) -> Vec<&str> {
    let mut lines = compose.lines().skip_while(|l| l.trim_end() != "  cutover:");
    lines
        .next()
        .expect("a `cutover` service in docker-compose.yml");
    lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect()
}

/// Compose's interpolation of `${NAME:-default}` and `${NAME:?message}` from `env`.
fn interpolate(value: &str, env: &BTreeMap<&str, &str>) -> String {
    let Some(start) = value.find("${") else {
        return value.to_string();
    };
    let end = start + value[start..].find('}').expect("a closing brace");
    let inner = &value[start + 2..end];
    let (name, fallback) = match inner.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (inner.split(":?").next().unwrap(), None),
    };
    let got = match env.get(name) {
        Some(v) if !v.is_empty() => v.to_string(),
        _ => fallback
            .unwrap_or_else(|| panic!("compose requires {name}"))
            .to_string(),
    };
    format!(
        "{}{got}{}",
        &value[..start],
        interpolate(&value[end + 1..], env)
    )
}

/// The final stage of the Dockerfile: its `COPY <from repo> <to>` lines, `WORKDIR` and
/// `ENTRYPOINT`.
fn final_stage(dockerfile: &str) -> (Vec<(String, String)>, String, Vec<String>) {
    let stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let mut copies = Vec::new();
    let mut workdir = String::from("/");
    let mut entrypoint = Vec::new();
    for l in stage.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.first().copied() {
            Some("COPY") if !l.contains("--from") => {
                copies.push((words[1].to_string(), words[2].to_string()));
            }
            Some("WORKDIR") => workdir = words[1].to_string(),
            Some("ENTRYPOINT") => {
                entrypoint = serde_json::from_str(l.trim_start_matches("ENTRYPOINT").trim())
                    .expect("ENTRYPOINT in JSON form")
            }
            _ => {}
        }
    }
    (copies, workdir, entrypoint)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn the_compose_service_serves_with_its_own_command_and_variables() {
    let w = World::new("compose").await;
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines = service_lines(&compose);

    // The image: what the final stage copies, under a root standing for `/`.
    let (copies, workdir, entrypoint) = final_stage(&dockerfile);
    assert_eq!(entrypoint, ["cutover"], "the image's entry point");
    let root = w.dir.path().join("image");
    for (from, to) in &copies {
        copy_dir(&repo().join(from), &root.join(to.trim_start_matches('/')));
    }
    let app = root.join(workdir.trim_start_matches('/'));
    assert!(app.join("pipelines/registry.toml").is_file(), "{copies:?}");

    let command: Vec<String> = {
        let l = lines
            .iter()
            .find(|l| l.trim_start().starts_with("command:"))
            .expect("a command");
        serde_json::from_str(l.trim_start().trim_start_matches("command:").trim()).unwrap()
    };
    assert_eq!(command.first().map(String::as_str), Some("serve"));
    let token = "compose-token-8f2c1e";
    let shell = BTreeMap::from([("CUTOVER_API_TOKEN", token)]);
    let mut env = BTreeMap::new();
    let mut in_env = false;
    for l in &lines {
        let indent = l.len() - l.trim_start().len();
        if indent == 4 {
            in_env = l.trim() == "environment:";
            continue;
        }
        if in_env && indent == 6 {
            let (k, v) = l.trim().split_once(": ").expect("KEY: value");
            env.insert(k.to_string(), interpolate(v, &shell));
        }
    }
    // The container's servers are this test's.
    let source = env["CUTOVER_SOURCE_URL"].clone();
    assert!(source.contains("@postgres:5432/"), "{source}");
    env.insert("CUTOVER_SOURCE_URL".into(), w.pg_url.clone());
    assert!(env["MONGODB_URI"].contains("//mongodb:27017"));
    env.insert("MONGODB_URI".into(), common::mongo_uri());
    assert!(env.contains_key("CUTOVER_MONGODB_DATABASE"));
    env.insert("CUTOVER_MONGODB_DATABASE".into(), w.mongo_db.clone());
    assert_eq!(env["CUTOVER_API_TOKEN"], token);
    assert_eq!(env["MIGRATE_ON_START"], "true", "the service's default");

    // Its listening address, made a loopback one with a free port.
    let args: Vec<String> = command
        .iter()
        .map(|a| {
            if a.starts_with("0.0.0.0:") {
                "127.0.0.1:0".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    // The sample changes update the registry's patients and sessions, which a cutover writes
    // first (an update of a collection the target does not hold is refused, adv42 F2).
    for name in ["patients", "sessions"] {
        w.mongo().await.create_collection(name).await.unwrap();
    }
    let stderr = w.dir.path().join("compose.err");
    let child = Command::new(assert_cmd::cargo::cargo_bin("cutover"))
        .current_dir(&app)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&env)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        base: String::new(),
        stderr,
    };
    server.base = server.wait_listening(Duration::from_secs(120));

    let (s, v) = Api::new(&server.base, None)
        .get("/api/migrations/status")
        .await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = Api::new(&server.base, Some(token))
        .get("/api/migrations/status")
        .await;
    assert_eq!(s, 200, "{v}");
    let files = std::fs::read_dir(app.join("pipelines/changes"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert!(files > 0);
    assert_eq!(v["summary"]["applied"], files, "{v}\n{}", server.log());
    assert_eq!(v["startupError"], serde_json::Value::Null, "{v}");
    assert!(!server.log().contains(token), "the token was logged");
    assert!(server.stop().success(), "{}", server.log());
    w.drop().await;
}
