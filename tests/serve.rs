//! `cutover serve` as a deployment runs it: the real binary listening on a free port, driven by a
//! real HTTP client (reqwest) against the real mongod and PostgreSQL. What the routes answer is
//! checked against the ledger's collections read with the mongodb driver, not through cutover.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use common::serve::{Api, Server, is_error, spawn, start_together};
use common::{World, repo};
use futures::TryStreamExt;
use serde_json::{Value, json};

/// A copy of the registry's change files in the world (creating files must not touch the repo).
fn changes_dir(w: &World) -> PathBuf {
    let dir = w.dir.path().join("changes");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(repo().join("pipelines/changes")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

fn versions(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            n.ends_with(".toml")
                .then(|| n.split('_').next().unwrap().parse().unwrap())
        })
        .collect();
    v.sort();
    v
}

async fn ledger_docs(w: &World, collection: &str, filter: Document) -> Vec<Document> {
    w.mongo()
        .await
        .collection::<Document>(collection)
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_route_answers_with_what_the_ledger_holds() {
    let w = World::new("serve_routes").await;
    w.load_registry(100);
    let dir = changes_dir(&w);
    let all = versions(&dir);
    let token = "route-token-7f3a9c";
    let d = dir.display().to_string();
    let pipeline = repo().join("pipelines/registry.toml").display().to_string();
    let mut server = Server::start(
        &w,
        "routes",
        &["--allow-create", "--dir", &d, "--pipeline", &pipeline],
        &[("CUTOVER_API_TOKEN", token)],
    );
    let api = Api::new(&server.base, Some(token));

    // No run yet; a dry run started through the API ends and writes nothing.
    let (s, v) = api.get("/api/runs").await;
    assert_eq!((s, v["runs"].as_array().unwrap().len()), (200, 0), "{v}");
    let (s, v) = api
        .post(
            "/api/runs",
            Some(json!({"stages": ["reference"], "dryRun": true})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let dry_id = v["runId"].as_str().unwrap().to_string();
    let dry = api.wait_run(&dry_id).await;
    assert_eq!(dry["dryRun"], true, "{dry}");
    assert!(dry["entities"].as_array().unwrap().len() >= 2, "{dry}");
    assert_eq!(w.count("vaccines").await, 0, "a dry run wrote");

    // A run refused before it begins (its stage depends on stages not migrated) is answered
    // 422 with the reason, and is no run of this server (it was 202 with links to nothing).
    let (s, v) = api
        .post("/api/runs", Some(json!({"stages": ["patients"]})))
        .await;
    assert_eq!(s, 422, "{v}");
    is_error(&v, "refused");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("its stage `patients` comes after stage `reference`"),
        "{v}"
    );
    let (_, v) = api.get("/api/runs").await;
    assert_eq!(
        v["runs"].as_array().unwrap().len(),
        1,
        "only the dry run: {v}"
    );

    // A real run of the whole pipeline; its numbers are the target's.
    let (s, v) = api
        .post("/api/runs", Some(json!({"dryRun": false, "batchSize": 25})))
        .await;
    assert_eq!(s, 202, "{v}");
    let run_id = v["runId"].as_str().unwrap().to_string();
    let run = api.wait_run(&run_id).await;
    // The registry's fixtures hold rows the mappings reject on purpose.
    assert_eq!(
        run["status"],
        "completed_with_rejects",
        "{run}\n{}",
        server.log()
    );
    let patients = run["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == "patients")
        .unwrap()
        .clone();
    assert_eq!(
        patients["written"],
        json!(w.count("patients").await),
        "{run}"
    );
    assert_eq!(
        patients["read"],
        json!(w.pg_count("patients").await),
        "{run}"
    );
    let runs = ledger_docs(&w, "cutover_runs", doc! { "_id": &run_id }).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].get_str("status").unwrap(), "completed_with_rejects");
    let (_, listed) = api.get("/api/runs?limit=10").await;
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&run_id.as_str()) && ids.contains(&dry_id.as_str()),
        "{listed}"
    );

    // Its report in each format; bad formats and ids are refused.
    for (format, ct) in [
        ("json", "application/json"),
        ("md", "text/markdown"),
        ("html", "text/html"),
    ] {
        let (s, got_ct, body) = api
            .send(api.req(
                reqwest::Method::GET,
                &format!("/api/runs/{run_id}/report?format={format}"),
            ))
            .await;
        assert_eq!(s, 200, "{format}: {body}");
        assert!(got_ct.starts_with(ct), "{format}: {got_ct}");
        assert!(body.to_string().contains(&run_id), "{format}");
    }
    let (_, v) = api.get(&format!("/api/runs/{run_id}/report")).await;
    assert_eq!(v["run"]["run_id"], json!(run_id), "json is the default");
    let (s, v) = api
        .get(&format!("/api/runs/{run_id}/report?format=xml"))
        .await;
    assert_eq!(s, 400);
    is_error(&v, "bad_request");
    let (s, v) = api.get("/api/runs/20200101T000000.000Z-0000").await;
    assert_eq!(s, 404);
    is_error(&v, "not_found");
    let (s, _) = api.get("/api/runs/..%2Fcutover.toml/report").await;
    assert_eq!(s, 400);
    // Bytes that are not UTF-8 in the path: the documented JSON error too (was plain text).
    for path in ["/api/runs/%ff", "/api/runs/%ff/report"] {
        let (s, v) = api.get(path).await;
        assert_eq!(s, 400, "{path}");
        is_error(&v, "bad_request");
    }

    // No verification yet; after `cutover verify`, the latest one.
    let (s, v) = api.get("/api/verify/latest").await;
    assert_eq!(s, 404, "{v}");
    let out = w
        .cutover()
        .args(["verify", "--pipeline", &pipeline, "reference"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let (s, v) = api.get("/api/verify/latest").await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["entities"].as_array().is_some_and(|e| !e.is_empty()),
        "{v}"
    );

    // Changes: status, a dry up that writes nothing, a real up to the second version.
    let (s, v) = api.get("/api/migrations/status").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["summary"]["pending"], json!(all.len()), "{v}");
    assert_eq!(v["summary"]["total"], json!(all.len()), "{v}");
    assert_eq!(v["locked"], Value::Null);
    let (s, v) = api.post("/api/migrations/up?dryRun=true", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changes"].as_array().unwrap().len(), all.len(), "{v}");
    assert!(ledger_docs(&w, "cutover_changes", doc! {}).await.is_empty());
    let (s, v) = api.post("/api/migrations/up?dryRun=maybe", None).await;
    assert_eq!(s, 400);
    is_error(&v, "bad_request");
    let (s, v) = api
        .post(&format!("/api/migrations/up?to={}", all[1]), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changes"].as_array().unwrap().len(), 2, "{v}");
    let applied = ledger_docs(&w, "cutover_changes", doc! { "status": "applied" }).await;
    let mut applied: Vec<u64> = applied
        .iter()
        .map(|d| d.get_str("_id").unwrap().parse().unwrap())
        .collect();
    applied.sort();
    assert_eq!(applied, vec![all[0], all[1]]);
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(v["summary"]["applied"], 2, "{v}");
    assert_eq!(v["applied"][0]["version"], json!(all[0]), "{v}");
    assert!(v["applied"][0]["appliedAt"].is_string(), "{v}");

    // History with its filters; then down one step.
    let (_, h) = api.get("/api/migrations/history?status=applied").await;
    assert_eq!(h["entries"].as_array().unwrap().len(), 2, "{h}");
    let (_, completed) = api.get("/api/migrations/history?status=completed").await;
    assert_eq!(completed, h, "completed is applied");
    let (_, h1) = api.get("/api/migrations/history?limit=1").await;
    let (_, h2) = api.get("/api/migrations/history?limit=1&skip=1").await;
    assert_eq!(h1["entries"].as_array().unwrap().len(), 1);
    assert_ne!(h1["entries"][0]["version"], h2["entries"][0]["version"]);
    let (_, none) = api.get("/api/migrations/history?status=failed").await;
    assert_eq!(none["entries"], json!([]));
    let (s, v) = api.post("/api/migrations/down?steps=x", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .post("/api/migrations/down?steps=1&dryRun=true", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changes"][0]["version"], json!(all[1]), "{v}");
    let (s, v) = api.post("/api/migrations/down?steps=1", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["changes"][0]["version"], json!(all[1]), "{v}");
    let log = ledger_docs(&w, "cutover_changes_log", doc! { "action": "down" }).await;
    assert_eq!(log.len(), 1, "{log:?}");
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(v["summary"]["applied"], 1, "{v}");
    // A version never applied is not found; one reversed already is refused, saying so (adv22
    // F10), dry or not.
    for dry in ["false", "true"] {
        let (s, v) = api
            .post(
                &format!("/api/migrations/down?version=77&dryRun={dry}"),
                None,
            )
            .await;
        assert_eq!(s, 404, "{v}");
        is_error(&v, "not_found");
        let (s, v) = api
            .post(
                &format!("/api/migrations/down?version={}&dryRun={dry}", all[1]),
                None,
            )
            .await;
        assert_eq!(s, 422, "{v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("is rolled-back, not applied"),
            "{v}"
        );
    }

    // The lock: held by another host (written directly), every writer is refused with 409.
    let expires = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 600_000);
    w.mongo()
        .await
        .collection::<Document>("cutover_lock")
        .insert_one(doc! {
            "_id": "cutover", "run_id": "other-run", "token": "t", "host": "another-host",
            "pid": 4242_i64, "command": "migrate", "acquired_at": bson::DateTime::now(),
            "expires_at": expires,
        })
        .await
        .unwrap();
    let (_, v) = api.get("/api/migrations/lock/status").await;
    assert_eq!(v["locked"]["runId"], "other-run", "{v}");
    let (s, v) = api.post("/api/migrations/up", None).await;
    assert_eq!(s, 409, "{v}");
    is_error(&v, "locked");
    let (s, v) = api.post("/api/runs", Some(json!({}))).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = api
        .post("/api/migrations/lock/release", Some(json!({})))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api.post("/api/migrations/lock/release", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .post(
            "/api/migrations/lock/release",
            Some(json!({"confirm": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["released"]["runId"], "other-run", "{v}");
    assert!(ledger_docs(&w, "cutover_lock", doc! {}).await.is_empty());

    // Held by this very server (a process alive on this machine): refused unless forced (the
    // sixteenth session's adv20 F4: released, and history then said the process had died).
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    w.mongo()
        .await
        .collection::<Document>("cutover_lock")
        .insert_one(doc! {
            "_id": "cutover", "run_id": "own-run", "token": "t", "host": host,
            "pid": i64::from(server.child.id()), "pid_namespace": namespace,
            "command": "changes up", "acquired_at": bson::DateTime::now(),
            "expires_at": expires,
        })
        .await
        .unwrap();
    let (s, v) = api
        .post(
            "/api/migrations/lock/release",
            Some(json!({"confirm": true})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    is_error(&v, "lock_held");
    assert!(v.to_string().contains("this server's own"), "{v}");
    let (s, v) = api
        .post(
            "/api/migrations/lock/release",
            Some(json!({"confirm": true, "force": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["released"]["runId"], "own-run", "{v}");
    assert!(ledger_docs(&w, "cutover_lock", doc! {}).await.is_empty());
    let (_, v) = api.get("/api/migrations/lock/status").await;
    assert_eq!(v["locked"], Value::Null, "{v}");

    // Creating a change file (allowed here).
    let (s, v) = api
        .post(
            "/api/migrations",
            Some(json!({"name": "flag vip patients", "template": "add-field"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let file = v["file"].as_str().unwrap();
    assert!(dir.join(file).exists(), "{v}");
    assert_eq!(versions(&dir).len(), all.len() + 1);
    let (s, v) = api
        .post(
            "/api/migrations",
            Some(json!({"name": "x", "template": "nope"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // A name that makes no file name: 400, without the server's own path (adv40 F8).
    let (s, v) = api
        .post("/api/migrations", Some(json!({"name": "   "})))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(!v["message"].as_str().unwrap().contains(&d), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("gives no file name"),
        "{v}"
    );
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(v["summary"]["total"], json!(all.len() + 1), "{v}");

    assert!(server.stop().success(), "{}", server.log());
    assert!(server.log().contains("stopped"), "{}", server.log());
    assert!(!server.log().contains(token));
    w.drop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_and_the_token_never_shows() {
    let w = World::new("serve_auth").await;
    let dir = changes_dir(&w);
    let d = dir.display().to_string();
    // Without a token the server does not start, unless on loopback with --no-auth.
    let mut child = spawn(&w, "none", &["--dir", &d], &[]);
    let st = child.wait().unwrap();
    let err = std::fs::read_to_string(w.dir.path().join("none.err")).unwrap();
    assert!(!st.success() && err.contains("CUTOVER_API_TOKEN"), "{err}");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("cutover"))
        .current_dir(w.dir.path())
        .args(["serve", "--no-auth", "--listen", "0.0.0.0:0"])
        .env("MONGODB_URI", common::mongo_uri())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());

    // The token from a file named in the config (the config text itself holds no token).
    let token = "file-token-0c8e41d2";
    std::fs::write(w.dir.path().join("api.token"), format!("{token}\n")).unwrap();
    std::fs::write(
        w.dir.path().join("cutover.toml"),
        "[serve]\ntoken_file = \"api.token\"\n",
    )
    .unwrap();
    let mut server = Server::start(&w, "auth", &["--dir", &d], &[]);
    for (tok, why) in [(None, "no token"), (Some("wrong-token"), "a wrong token")] {
        let api = Api::new(&server.base, tok);
        for path in ["/api/migrations/status", "/api/runs", "/api/nothing-here"] {
            let (s, v) = api.get(path).await;
            assert_eq!(s, 401, "{why} {path}: {v}");
            is_error(&v, "unauthorized");
            assert!(!v.to_string().contains(token));
        }
        let (s, _) = api.post("/api/migrations/up", None).await;
        assert_eq!(s, 401, "{why}");
    }
    let api = Api::new(&server.base, Some(token));
    let (s, v) = api.get("/api/migrations/status").await;
    assert_eq!(s, 200, "{v}");
    assert!(!v.to_string().contains(token));
    for header in [
        format!("bearer {token}"),
        format!("Basic {token}"),
        token.to_string(),
    ] {
        let (s, _, _) = api
            .send(
                api.http
                    .get(format!("{}/api/runs", server.base))
                    .header("Authorization", &header),
            )
            .await;
        let scheme = header.split(' ').next().unwrap();
        assert_eq!(s, if scheme == "bearer" { 200 } else { 401 }, "{scheme}");
    }
    // Without --allow-create, creating a change file is forbidden.
    let (s, v) = api
        .post("/api/migrations", Some(json!({"name": "nope"})))
        .await;
    assert_eq!(s, 403, "{v}");
    is_error(&v, "forbidden");
    // The status page needs the token too: a browser is challenged for Basic (so it asks) and
    // the token is the password; the API routes are challenged for a bearer token.
    let anonymous = Api::new(&server.base, None);
    let page = |r: reqwest::RequestBuilder| async {
        let resp = r.send().await.unwrap();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (
            resp.status().as_u16(),
            challenge,
            resp.text().await.unwrap(),
        )
    };
    let url = format!("{}/", server.base);
    let (s, challenge, body) = page(anonymous.http.get(&url)).await;
    assert_eq!(s, 401, "{body}");
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let (s, challenge, _) = page(anonymous.http.get(format!("{}/api/runs", server.base))).await;
    assert_eq!(s, 401);
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    // A browser following a report link asks for HTML: Basic, so it sends what it holds.
    let (s, challenge, _) = page(
        anonymous
            .http
            .get(format!("{}/api/runs/x/report?format=html", server.base))
            .header("accept", "text/html,application/xhtml+xml"),
    )
    .await;
    assert_eq!(s, 401);
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let (s, _, _) = page(anonymous.http.get(&url).basic_auth("viewer", Some("wrong"))).await;
    assert_eq!(s, 401);
    let (s, _, _) = page(anonymous.http.get(&url).basic_auth(token, None::<&str>)).await;
    assert_eq!(s, 401, "the token as the user name, no password");
    for r in [
        anonymous.http.get(&url).basic_auth("viewer", Some(token)),
        anonymous.http.get(&url).bearer_auth(token),
    ] {
        let (s, _, body) = page(r).await;
        assert_eq!(s, 200, "{body}");
        assert!(body.contains("<title>cutover status</title>"), "{body}");
        assert!(!body.contains(token));
    }
    // The API answers Basic credentials as well (the page's own requests, the report links).
    let (s, _, v) = anonymous
        .send(
            anonymous
                .http
                .get(format!("{}/api/migrations/status", server.base))
                .basic_auth("viewer", Some(token)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let pending = v["summary"]["pending"].as_u64().unwrap();
    // In Chromium, opened with the credentials in the URL: the page's requests go through
    // (the summary is filled from the API), and without them the page is refused.
    let profile = w.dir.path().join("chromium");
    let with = url.replacen("http://", &format!("http://viewer:{token}@"), 1);
    let dom = dump_dom(&with, &profile);
    assert!(
        dom.contains(&format!(
            "id=\"changes-summary\">{} applied, {pending} pending",
            v["summary"]["applied"]
        )),
        "{dom}"
    );
    assert!(dom.contains("id=\"lock\">free<"), "{dom}");
    let refused = dump_dom(&url, &w.dir.path().join("chromium-anonymous"));
    assert!(!refused.contains("changes-summary"), "{refused}");
    assert!(server.stop().success());
    let log = server.log();
    assert!(log.contains("request"), "debug logs are on: {log}");
    assert!(!log.contains(token), "{log}");
    let out = std::fs::read_to_string(w.dir.path().join("auth.out")).unwrap();
    assert!(!out.contains(token));
    w.drop().await;
}

#[tokio::test]
async fn three_instances_started_together_apply_each_change_once() {
    let w = World::new("serve_three").await;
    w.load_registry(100);
    let out = w.migrate(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let dir = changes_dir(&w);
    let all = versions(&dir);
    let d = dir.display().to_string();
    let token = "three-token-55d1";
    let env = [
        ("CUTOVER_API_TOKEN", token),
        ("MIGRATE_ON_START", "true"),
        ("MIGRATE_ON_START_FAIL_HARD", "true"),
    ];
    let mut servers = start_together(&w, "three", &["--dir", &d], &env);
    // The ledger, read directly: one applied `up` per change, none twice.
    let ups = ledger_docs(&w, "cutover_changes_log", doc! { "action": "up" }).await;
    let mut seen: Vec<u64> = ups
        .iter()
        .map(|d| d.get_str("version").unwrap().parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, all, "{ups:?}");
    assert!(
        ups.iter().all(|d| d.get_str("status") == Ok("applied")),
        "{ups:?}"
    );
    let batches: std::collections::BTreeSet<i64> =
        ups.iter().map(|d| d.get_i64("batch").unwrap()).collect();
    assert_eq!(batches.len(), 1, "one instance applied them all: {ups:?}");
    for s in &servers {
        let api = Api::new(&s.base, Some(token));
        let (st, v) = api.get("/api/migrations/status").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["summary"]["pending"], 0, "{v}");
        assert_eq!(v["summary"]["applied"], json!(all.len()), "{v}");
        let (_, h) = api.get("/api/migrations/history?status=applied").await;
        assert_eq!(h["entries"].as_array().unwrap().len(), all.len(), "{h}");
    }
    for s in &mut servers {
        assert!(s.stop().success(), "{}", s.log());
    }
    w.drop().await;
}

/// Three instances started together over a change that fails: one tries it, the two waiting
/// for its lock see it fail and do not try it again (each attempt writes and undoes the
/// change); all three serve with the failure in their status.
#[tokio::test]
async fn three_instances_try_a_failing_change_once() {
    let w = World::new("serve_three_fail").await;
    w.mongo()
        .await
        .collection::<Document>("things")
        .insert_one(doc! { "_id": "a" })
        .await
        .unwrap();
    let dir = w.dir.path().join("changes");
    std::fs::create_dir_all(&dir).unwrap();
    // Slow (the server-side filter sleeps 2.5 s), so the others are waiting when it fails.
    std::fs::write(
        dir.join("1_slow-duplicate.toml"),
        r#"version = 1
name = "slow-duplicate"
[[up]]
op = "set"
collection = "things"
filter = { "$where" = "sleep(2500) || true" }
fields = { touched = true }
[[up]]
op = "insert"
collection = "things"
documents = [{ _id = "a" }]
"#,
    )
    .unwrap();
    let d = dir.display().to_string();
    let token = "three-fail-token-7c2e";
    let env = [("CUTOVER_API_TOKEN", token), ("MIGRATE_ON_START", "true")];
    let mut servers = start_together(&w, "fail", &["--dir", &d], &env);
    let failed = ledger_docs(&w, "cutover_changes_log", doc! { "status": "failed" }).await;
    let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
    assert_eq!(failed.len(), 1, "tried once: {failed:?} {logs:?}");
    let waited = logs
        .iter()
        .filter(|l| l.contains("failed in another instance"))
        .count();
    assert_eq!(waited, 2, "{logs:?}");
    for s in &servers {
        let api = Api::new(&s.base, Some(token));
        let (st, v) = api.get("/api/migrations/status").await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["summary"]["failed"], 1, "{v}");
        assert!(
            v["startupError"]
                .as_str()
                .is_some_and(|e| e.contains("failed")),
            "{v}"
        );
    }
    // The change was undone: the document as it was.
    let things = w.docs("things").await;
    assert_eq!(things, vec![doc! { "_id": "a" }]);
    for s in &mut servers {
        assert!(s.stop().success(), "{}", s.log());
    }
    w.drop().await;
}

/// Each entity row's `read` number on the status page's DOM.
fn page_reads(dom: &str) -> std::collections::BTreeMap<String, u64> {
    let re = regex::Regex::new(r#"<tr id="entity-([a-z_]+)">.*?class="read">(\d+)<"#).unwrap();
    re.captures_iter(dom)
        .map(|c| (c[1].to_string(), c[2].parse().unwrap()))
        .collect()
}

fn dump_dom(url: &str, profile: &Path) -> String {
    let out =
        common::browser::chromium(&["--virtual-time-budget=1500", "--dump-dom", url], profile);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn the_status_page_shows_a_run_moving_in_chromium() {
    let w = World::new("serve_page").await;
    w.load_registry(2000);
    let dir = changes_dir(&w);
    let d = dir.display().to_string();
    let pipeline = repo().join("pipelines/registry.toml").display().to_string();
    let mut server = Server::start(
        &w,
        "page",
        &["--no-auth", "--dir", &d, "--pipeline", &pipeline],
        &[],
    );
    let api = Api::new(&server.base, None);
    let (s, v) = api.post("/api/runs", Some(json!({"batchSize": 5}))).await;
    assert_eq!(s, 202, "{v}");
    let run_id = v["runId"].as_str().unwrap().to_string();
    // Once the patients are being copied, the page is read twice: the numbers have moved.
    let started = Instant::now();
    loop {
        let (_, v) = api.get(&format!("/api/runs/{run_id}")).await;
        let going = v["entities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["entity"] == "patients" && e["status"] == "running");
        if going {
            break;
        }
        assert_ne!(
            v["status"], "completed_with_rejects",
            "the run ended first: {v}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = w.dir.path().join("chromium");
    let url = format!("{}/", server.base);
    let first = dump_dom(&url, &profile);
    assert!(
        first.contains(&format!("id=\"run-id\">{run_id}<")),
        "{first}"
    );
    assert!(
        first.contains("class=\"state-running\">running<"),
        "{first}"
    );
    // No report links for the run in progress (they answered 404 until it ended; adv20 F6).
    assert!(first.contains("report when it ends"), "{first}");
    assert!(
        !first.contains(&format!("{run_id}/report?format=")),
        "{first}"
    );
    let before: u64 = page_reads(&first).values().sum();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = dump_dom(&url, &profile);
    let after: u64 = page_reads(&second).values().sum();
    assert!(
        after > before,
        "the numbers did not move: {before} then {after}"
    );

    // SIGTERM while the run goes: the server stops taking requests, the run stops after its
    // current batch and records itself interrupted (the ledger, read directly, says so), and
    // `cutover migrate` resumes it to the end.
    let (_, v) = api.get(&format!("/api/runs/{run_id}")).await;
    let still_going = v["status"] == "running";
    eprintln!("the run was still going at SIGTERM: {still_going}");
    assert!(server.stop().success(), "{}", server.log());
    let runs = ledger_docs(&w, "cutover_runs", doc! { "_id": &run_id }).await;
    if still_going {
        assert!(
            server.log().contains("stopping the run in progress"),
            "{}",
            server.log()
        );
        assert_eq!(
            runs[0].get_str("status").unwrap(),
            "interrupted",
            "{runs:?}"
        );
        let steps = ledger_docs(&w, "cutover_steps", doc! { "run_id": &run_id }).await;
        // The stage being written is interrupted — or completed, when its last batches were
        // all in flight at the stop (they finish): the next stage is then not begun.
        assert!(
            steps
                .iter()
                .all(|s| matches!(s.get_str("status"), Ok("interrupted") | Ok("completed"))),
            "{steps:?}"
        );
        // The batches being written at the stop finished and are counted: the interrupted
        // step's `written` is what its (fresh) collection holds (outside tester adv16c, 1: they
        // were counted skipped, 20 to 52 documents fewer than the target held).
        for s in steps
            .iter()
            .filter(|s| s.get_str("status") == Ok("interrupted"))
        {
            let entity = s.get_str("entity").unwrap();
            let n = |k: &str| s.get_i64(k).unwrap_or_else(|_| panic!("{k} in {s}"));
            assert_eq!(
                n("written") as u64,
                w.count(entity).await,
                "{entity}: written vs the target: {s}"
            );
            assert_eq!(
                n("read"),
                n("written") + n("rejected") + n("skipped"),
                "{s}"
            );
            // The checkpoint covers them: the resume does not write (and count) them again
            // (outside tester adv17, 10: history summed 101,200 written for 100,000 rows).
            assert_eq!(
                n("checkpoint_rows"),
                n("written") + n("rejected"),
                "{entity}: the checkpoint vs the rows written: {s}"
            );
        }
        let out = w
            .cutover()
            .args(["migrate", "--pipeline", &pipeline])
            .output()
            .unwrap();
        // Exit 2: finished, some rows rejected (the registry has rows that are).
        assert!(
            out.status.code() == Some(2),
            "{}",
            common::output_text(&out)
        );
    } else {
        assert_eq!(
            runs[0].get_str("status").unwrap(),
            "completed_with_rejects",
            "{runs:?}"
        );
    }

    // Served again, the page shows what the target holds, with full progress bars.
    let mut server = Server::start(
        &w,
        "page-again",
        &["--no-auth", "--dir", &d, "--pipeline", &pipeline],
        &[],
    );
    let url = format!("{}/", server.base);
    let last = dump_dom(&url, &profile);
    // The newest run: the one that resumed the interrupted run, or that run itself.
    let all_runs = ledger_docs(&w, "cutover_runs", doc! {}).await;
    let newest = all_runs
        .iter()
        .map(|r| r.get_str("_id").unwrap().to_string())
        .max()
        .unwrap();
    assert_eq!(newest != run_id, still_going, "{all_runs:?}");
    assert!(last.contains(&format!("id=\"run-id\">{newest}<")), "{last}");
    let reads = page_reads(&last);
    // Patients on the page when the newest run copied them; else the interrupted run finished
    // them (its step, in the ledger, completed with every row read).
    match reads.get("patients") {
        Some(n) => assert_eq!(*n, w.pg_count("patients").await, "{last}"),
        None => {
            let steps = ledger_docs(
                &w,
                "cutover_steps",
                doc! { "run_id": &run_id, "entity": "patients" },
            )
            .await;
            assert_eq!(steps[0].get_str("status"), Ok("completed"), "{steps:?}");
            assert_eq!(
                steps[0].get_i64("read").unwrap() as u64,
                w.pg_count("patients").await,
                "{steps:?}"
            );
        }
    }
    assert!(
        last.contains(&format!(
            "class=\"written\">{}<",
            w.count("immunizations").await
        )),
        "{last}"
    );
    assert!(last.contains("/report?format=html"), "report links: {last}");
    let shot = w.dir.path().join("status.png");
    let out = common::browser::chromium(
        &[
            "--window-size=1100,1400",
            "--virtual-time-budget=1500",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        &profile,
    );
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    // The progress bars' fill (#2e7d32), full for each finished entity.
    assert!(
        common::browser::count_color(&shot, [0x2e, 0x7d, 0x32]) > 5_000,
        "progress bars not visible"
    );
    assert!(server.stop().success(), "{}", server.log());
    w.drop().await;
}

#[tokio::test]
async fn a_change_failing_on_start_stops_the_server_or_shows_in_the_status() {
    let w = World::new("serve_start_fail").await;
    w.mongo()
        .await
        .collection::<Document>("things")
        .insert_one(doc! { "_id": "a" })
        .await
        .unwrap();
    let dir = w.dir.path().join("changes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("1_duplicate.toml"),
        "version = 1\nname = \"duplicate\"\n[[up]]\nop = \"insert\"\ncollection = \"things\"\ndocuments = [{ _id = \"a\" }]\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    let token = "start-token-91b0";
    let mut child = spawn(
        &w,
        "hard",
        &["--dir", &d],
        &[
            ("CUTOVER_API_TOKEN", token),
            ("MIGRATE_ON_START", "true"),
            ("MIGRATE_ON_START_FAIL_HARD", "true"),
        ],
    );
    let st = child.wait().unwrap();
    let err = std::fs::read_to_string(w.dir.path().join("hard.err")).unwrap();
    assert!(!st.success(), "{err}");
    assert!(
        err.contains("migrate-on-start") && !err.contains("serving on"),
        "{err}"
    );

    let mut server = Server::start(
        &w,
        "soft",
        &["--dir", &d, "--migrate-on-start", "--no-auth"],
        &[],
    );
    let api = Api::new(&server.base, None);
    let (s, v) = api.get("/api/migrations/status").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["summary"]["failed"], 1, "{v}");
    assert_eq!(v["failed"][0]["version"], 1, "{v}");
    assert!(
        v["startupError"]
            .as_str()
            .is_some_and(|e| e.contains("failed")),
        "{v}"
    );
    // The status page says so too.
    let dom = dump_dom(&format!("{}/", server.base), &w.dir.path().join("chromium"));
    let re = regex::Regex::new(r#"id="startup"[^>]*>([^<]*)<"#).unwrap();
    let shown = re
        .captures(&dom)
        .map(|c| c[1].to_string())
        .unwrap_or_default();
    assert!(shown.contains("failed"), "{dom}");
    // Both attempts are in the ledger's history, read directly.
    let log = ledger_docs(&w, "cutover_changes_log", doc! { "status": "failed" }).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(server.stop().success());

    // A change its process left half applied stops the start; once a `down` has undone it, the
    // status no longer shows that error (adv28 R9: it stayed).
    let dir2 = w.dir.path().join("changes_interrupted");
    let text = "version = 2\nname = \"b\"\n[[up]]\nop = \"add_field\"\ncollection = \"things\"\nfield = \"b\"\ndefault = 1\n";
    std::fs::create_dir_all(&dir2).unwrap();
    std::fs::write(dir2.join("2_b.toml"), text).unwrap();
    w.mongo()
        .await
        .collection::<Document>("cutover_changes")
        .insert_one(doc! {
            "_id": "2", "name": "b", "file": "2_b.toml", "status": "running", "batch": 9_i64,
            "run_id": "changes-dead", "applied_at": bson::DateTime::now(), "source": text,
            "backup": "cutover_change_2_backup_changes-dead",
        })
        .await
        .unwrap();
    let d2 = dir2.display().to_string();
    let mut server = Server::start(
        &w,
        "interrupted",
        &["--dir", &d2, "--migrate-on-start", "--no-auth"],
        &[],
    );
    let api = Api::new(&server.base, None);
    let (_, v) = api.get("/api/migrations/status").await;
    assert!(
        v["startupError"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted")),
        "{v}"
    );
    let (s, v) = api.post("/api/migrations/down?version=2", None).await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(v["startupError"], Value::Null, "{v}");
    assert!(server.stop().success());
    w.drop().await;
}

/// `POST /api/migrations/down?continueOnError=true`: a failed reversal does not stop the older
/// changes on other collections; the answer is 422 with what was reversed, what failed and what
/// was left applied (`down` without it stops at the failure: `tests/changes.rs`).
#[tokio::test]
async fn down_with_continue_on_error_goes_past_a_failed_reversal() {
    let w = World::new("serve_down_continue").await;
    let db = w.mongo().await;
    db.collection::<Document>("a")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    db.collection::<Document>("b")
        .insert_many(vec![
            doc! { "_id": 1, "x": "dup" },
            doc! { "_id": 2, "x": "dup" },
        ])
        .await
        .unwrap();
    let dir = w.dir.path().join("changes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("1_a.toml"),
        "version = 1\nname = \"a\"\n[[up]]\nop = \"set\"\ncollection = \"a\"\nfilter = {}\nfields = { flag = \"on\" }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("2_rename.toml"),
        "version = 2\nname = \"rename\"\n[[up]]\nop = \"rename_field\"\ncollection = \"b\"\nfrom = \"x\"\nto = \"y\"\n",
    )
    .unwrap();
    let d = dir.display().to_string();
    let mut server = Server::start(&w, "down", &["--no-auth", "--dir", &d], &[]);
    let api = Api::new(&server.base, None);
    let (s, v) = api.post("/api/migrations/up", None).await;
    assert_eq!(s, 200, "{v}");
    db.collection::<Document>("b")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "x": 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .sparse(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    let (s, v) = api
        .post("/api/migrations/down?steps=2&continueOnError=true", None)
        .await;
    assert_eq!(s, 422, "{v}");
    is_error(&v, "change_failed");
    let versions = |k: &str| -> Vec<u64> {
        v["report"][k]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|c| c["version"].as_u64().unwrap())
            .collect()
    };
    // Change 2's reversal fails; change 1, on another collection, is reversed all the same.
    assert_eq!(versions("failed"), vec![2], "{v}");
    assert_eq!(versions("changes"), vec![1], "{v}");
    let a = w.docs("a").await;
    assert!(a.iter().all(|d| !d.contains_key("flag")), "{a:?}");
    assert!(server.stop().success());
    w.drop().await;
}

/// A slow change (60,000 documents and a transform of each) and a quick one after it.
async fn slow_change(w: &World) -> PathBuf {
    let t = w.mongo().await.collection::<Document>("t");
    for chunk in (0..60_000).collect::<Vec<i32>>().chunks(10_000) {
        t.insert_many(chunk.iter().map(|i| doc! { "_id": *i, "n": *i }))
            .await
            .unwrap();
    }
    let dir = w.dir.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("1_slow.toml"),
        "version = 1\nname = \"slow\"\n[[up]]\nop = \"transform\"\ncollection = \"t\"\npipeline = [{ \"$set\" = { m = { \"$multiply\" = [\"$n\", 2] } } }]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("2_after.toml"),
        "version = 2\nname = \"after\"\n[[up]]\nop = \"add_field\"\ncollection = \"t\"\nfield = \"k\"\ndefault = 1\n",
    )
    .unwrap();
    dir
}

/// The change's record in the ledger, read directly.
async fn change_status(w: &World, version: i64) -> Option<String> {
    ledger_docs(w, "cutover_changes", doc! { "_id": version.to_string() })
        .await
        .first()
        .and_then(|d| d.get_str("status").ok().map(str::to_string))
}

/// Found by the outside tester of `serve` (1, 7, 11, 12): a client that went away stopped the
/// change part way (half applied, the lock held by the living server); the status left out a
/// change being applied; a missing changes directory read as "no changes"; the 401 message came
/// out garbled by the redactor; 405 had no JSON body, a body over the limit was a 400.
#[tokio::test]
async fn a_change_started_through_the_api_finishes_when_its_client_goes_away() {
    let w = World::new("serve_detach").await;
    let dir = slow_change(&w).await;
    let d = dir.display().to_string();
    let mut server = Server::start(&w, "detach", &["--no-auth", "--dir", &d], &[]);
    let api = Api::new(&server.base, None);
    // The client gives up after 200 ms.
    let gone = api
        .http
        .post(format!("{}/api/migrations/up", server.base))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gone.is_err(), "the change should take longer: {gone:?}");
    let started = Instant::now();
    let mut seen_in_progress = false;
    loop {
        let (s, v) = api.get("/api/migrations/status").await;
        assert_eq!(s, 200, "{v}");
        if v["summary"]["inProgress"] == 1 {
            let at = v["inProgress"][0]["version"].as_u64();
            assert!(matches!(at, Some(1 | 2)), "{v}");
            seen_in_progress = true;
        }
        if v["summary"]["applied"] == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("seen in progress: {seen_in_progress}");
    assert_eq!(change_status(&w, 1).await.as_deref(), Some("applied"));
    let (_, lock) = api.get("/api/migrations/lock/status").await;
    assert_eq!(lock["locked"], Value::Null, "{lock}");
    let t = w.mongo().await.collection::<Document>("t");
    assert_eq!(
        t.count_documents(doc! { "m": { "$exists": true } })
            .await
            .unwrap(),
        60_000
    );
    // A method a route does not take: 405 as JSON. A body over the limit: 413.
    let (s, _, v) = api
        .send(
            api.http
                .delete(format!("{}/api/migrations/status", server.base)),
        )
        .await;
    assert_eq!(s, 405, "{v}");
    is_error(&v, "method_not_allowed");
    let (s, _, v) = api
        .send(
            api.http
                .post(format!("{}/api/runs", server.base))
                .header("content-type", "application/json")
                .body(format!("{{\"stages\": [\"{}\"]}}", "x".repeat(3 << 20))),
        )
        .await;
    assert_eq!(s, 413, "{v}");
    assert!(server.stop().success(), "{}", server.log());

    // A changes directory that is not there is an error, not "no changes".
    let mut server = Server::start(
        &w,
        "nodir",
        &["--no-auth", "--dir", "/nonexistent/changes"],
        &[],
    );
    let api = Api::new(&server.base, None);
    let (s, v) = api.get("/api/migrations/status").await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("no such directory"),
        "{v}"
    );
    assert!(server.stop().success());
    let out = w
        .cutover()
        .args(["changes", "up", "--dir", "/nonexistent/changes"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", common::output_text(&out));

    // The 401 message is readable (not taken for a secret).
    let mut server = Server::start(
        &w,
        "msg",
        &["--dir", &d],
        &[("CUTOVER_API_TOKEN", "msg-token-55aa")],
    );
    let anonymous = Api::new(&server.base, None);
    let (s, v) = anonymous.get("/api/migrations/status").await;
    assert_eq!(s, 401);
    assert!(!v["message"].as_str().unwrap().contains("***"), "{v}");
    assert!(server.stop().success());
    w.drop().await;
}

/// Found by the outside tester of `serve` (2): SIGTERM while `--migrate-on-start` applied a
/// change ended the process at once, the change half applied (and, with FAIL_HARD, every
/// restart then failed). The change finishes now, then the server stops without listening.
#[tokio::test]
async fn sigterm_while_changes_are_applied_at_start_lets_the_change_finish() {
    let w = World::new("serve_term_start").await;
    let dir = slow_change(&w).await;
    let d = dir.display().to_string();
    let mut child = spawn(
        &w,
        "start",
        &["--no-auth", "--dir", &d],
        // Any of the usual spellings of true; empty is no (a compose file's unset variable).
        &[
            ("MIGRATE_ON_START", "1"),
            ("MIGRATE_ON_START_FAIL_HARD", ""),
        ],
    );
    let started = Instant::now();
    while change_status(&w, 1).await.as_deref() != Some("running") {
        assert!(started.elapsed() < Duration::from_secs(60), "never running");
        assert!(child.try_wait().unwrap().is_none(), "serve ended first");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let st = child.wait().unwrap();
    let err = std::fs::read_to_string(w.dir.path().join("start.err")).unwrap();
    assert!(st.success(), "{err}");
    assert!(err.contains("stopped before serving"), "{err}");
    assert!(!err.contains("serving on"), "{err}");
    assert_eq!(
        change_status(&w, 1).await.as_deref(),
        Some("applied"),
        "{err}"
    );
    // No change starts after the signal: the second stays pending.
    assert_eq!(change_status(&w, 2).await, None, "{err}");
    let t = w.mongo().await.collection::<Document>("t");
    assert_eq!(
        t.count_documents(doc! { "m": { "$exists": true } })
            .await
            .unwrap(),
        60_000
    );
    w.drop().await;
}

/// Found by the outside tester of `serve` (3, 4, 6): the latest verification and the runs' reports
/// of another database sharing the reports directory were answered as this server's; three
/// runs started at once were all accepted (two then failed on the lock); a batch size out of
/// range was accepted and failed later.
#[tokio::test]
async fn runs_and_verifications_are_this_targets_and_one_run_starts_at_a_time() {
    let w = World::new("serve_own").await;
    w.load_registry(300);
    let pipeline = repo().join("pipelines/registry.toml").display().to_string();
    // Another database of the same server: migrated and verified (its reports land in the same
    // directory).
    let other = format!("{}_other", w.mongo_db);
    for args in [
        vec![
            "migrate",
            "--quiet",
            "--pipeline",
            &pipeline,
            "--database",
            &other,
        ],
        vec!["verify", "--pipeline", &pipeline, "--database", &other],
    ] {
        let out = w.cutover().args(&args).output().unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{}",
            common::output_text(&out)
        );
    }
    let dir = changes_dir(&w);
    let d = dir.display().to_string();
    let mut server = Server::start(
        &w,
        "own",
        &["--no-auth", "--dir", &d, "--pipeline", &pipeline],
        &[],
    );
    let api = Api::new(&server.base, None);
    let (s, v) = api.get("/api/verify/latest").await;
    assert_eq!(s, 404, "another database's verification: {v}");
    let other_run = std::fs::read_dir(w.dir.path().join("reports"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.ends_with(".json") && !n.starts_with("verify-"))
        .map(|n| n.trim_end_matches(".json").to_string())
        .expect("the other database's run report");
    let (s, v) = api.get(&format!("/api/runs/{other_run}")).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = api
        .get(&format!("/api/runs/{other_run}/report?format=json"))
        .await;
    assert_eq!(s, 404, "{v}");

    let (s, v) = api
        .post("/api/runs", Some(json!({"batchSize": 99_999_999_999u64})))
        .await;
    assert_eq!(s, 400, "{v}");
    // A body that is no object is told so, without internal type names (adv22 F10).
    for body in [json!([]), json!(["patients"]), json!("x"), json!(null)] {
        let (s, v) = api.post("/api/runs", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {v}");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.contains("must be a JSON object") && !m.contains("Body"),
            "{body}: {v}"
        );
    }
    for bad in [json!({"batchSize": -1}), json!({"fileConcurrency": -1})] {
        let (s, v) = api.post("/api/runs", Some(bad.clone())).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("must be between 1 and"),
            "{bad}: {v}"
        );
    }
    let (s, v) = api.post("/api/runs", Some(json!({"stages": "x"}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(!v["message"].as_str().unwrap().contains("StartBody"), "{v}");
    // Three at once, two to this server and one to another server of the same target: one
    // starts, the others are told the target is busy (the other server's too: the second
    // outside round's N2).
    let mut second = Server::start(
        &w,
        "own2",
        &["--no-auth", "--dir", &d, "--pipeline", &pipeline],
        &[],
    );
    let api2 = Api::new(&second.base, None);
    let body = json!({"batchSize": 5});
    let (a, b, c) = tokio::join!(
        api.post("/api/runs", Some(body.clone())),
        api.post("/api/runs", Some(body.clone())),
        api2.post("/api/runs", Some(body.clone()))
    );
    let mut codes = vec![a.0, b.0, c.0];
    codes.sort();
    assert_eq!(codes, vec![202, 409, 409], "{a:?} {b:?} {c:?}");
    let won_here = a.0 == 202 || b.0 == 202;
    let id = [a, b, c].into_iter().find(|(s, _)| *s == 202).unwrap().1["runId"]
        .as_str()
        .unwrap()
        .to_string();
    let end = if won_here {
        api.wait_run(&id).await
    } else {
        api2.wait_run(&id).await
    };
    assert_eq!(end["status"], "completed_with_rejects", "{end}");
    // Each entity's numbers add up (skipped included).
    for e in end["entities"].as_array().unwrap() {
        let n = |k: &str| e[k].as_u64().unwrap_or_else(|| panic!("{k}: {e}"));
        assert_eq!(
            n("read"),
            n("written") + n("rejected") + n("skipped"),
            "{e}"
        );
    }
    for bad in [
        "/api/runs?limit=-1",
        "/api/runs?limit=0",
        "/api/runs?status=bogus",
    ] {
        let (s, v) = api.get(bad).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let (_, list) = api.get("/api/runs").await;
    assert_eq!(list["runs"][0]["run_id"], id.as_str(), "{list}");
    assert_eq!(list["runs"][0]["hasReport"], true, "{list}");
    // Verified now, this database's verification is the latest.
    let out = w
        .cutover()
        .args(["verify", "--pipeline", &pipeline])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    let (s, v) = api.get("/api/verify/latest").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["target"],
        format!("mongodb {}", w.mongo_db).as_str(),
        "{v}"
    );

    // A run killed (kill -9, no report) is not shown live for ever: interrupted (N3).
    let mut killed = std::process::Command::new(assert_cmd::cargo::cargo_bin("cutover"))
        .current_dir(w.dir.path())
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .env("MONGODB_URI", common::mongo_uri())
        .env("CUTOVER_MONGODB_DATABASE", &w.mongo_db)
        .env("CUTOVER_FILES_ROOT", w.files_root())
        .stderr(Stdio::from(
            std::fs::File::create(w.dir.path().join("killed.err")).unwrap(),
        ))
        .args([
            "migrate",
            "immunizations",
            "--quiet",
            "--rerun",
            "--batch-size",
            "1",
            "--concurrency",
            "1",
            "--pipeline",
            &pipeline,
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let run_id = loop {
        let (_, list) = api.get("/api/runs").await;
        if list["runs"][0]["status"] == "running" && list["runs"][0]["served"].is_null() {
            break list["runs"][0]["run_id"].as_str().unwrap().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && killed.try_wait().unwrap().is_none(),
            "{list}\n{}",
            std::fs::read_to_string(w.dir.path().join("killed.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Past a checkpoint: it has done something the numbers must show.
    loop {
        let (_, v) = api.get(&format!("/api/runs/{run_id}")).await;
        if v["run"]["read"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(v["run"]["status"], "running", "{v}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && killed.try_wait().unwrap().is_none(),
            "{v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let (_, v) = api.get(&format!("/api/runs/{run_id}")).await;
    assert_eq!(v["status"], "interrupted", "{v}");
    // No links to a report it never wrote (adv28 R4).
    assert_eq!(v["reports"], Value::Null, "{v}");
    // One picture (adv22 F8, adv27 N9): the run itself too, with its counts and time up to its
    // last checkpoint — as the list shows it.
    assert_eq!(v["run"]["status"], "interrupted", "{v}");
    let killed_read = v["run"]["read"].as_u64().unwrap();
    assert!(killed_read > 0, "{v}");
    assert!(v["run"]["duration_ms"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["entities"][0]["thisRun"]["read"], killed_read, "{v}");
    assert_eq!(v["entities"][0]["read"], killed_read, "{v}");
    let (_, list) = api.get("/api/runs").await;
    assert_eq!(list["runs"][0]["status"], "interrupted", "{list}");
    assert_eq!(list["runs"][0]["read"], killed_read, "{list}");
    assert_eq!(list["runs"][0]["hasReport"], false, "{list}");
    // `history` says the same before any run records it (adv30 T3: running, 0 rows).
    let out = w.cutover().args(["history", "--json"]).output().unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("{}", common::output_text(&out));
    });
    assert_eq!(runs[0]["run_id"], run_id.as_str(), "{runs}");
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
    assert_eq!(runs[0]["read"], killed_read, "{runs}");

    // The run that resumes it: the entity whole, this run's part and the part it resumed, each
    // said so, and a rate of this run's rows over this run's time.
    let out = w
        .cutover()
        .args([
            "migrate",
            "immunizations",
            "--quiet",
            "--pipeline",
            &pipeline,
        ])
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        common::output_text(&out)
    );
    let (_, list) = api.get("/api/runs").await;
    let resume = list["runs"][0]["run_id"].as_str().unwrap().to_string();
    assert_ne!(resume, run_id);
    let (_, v) = api.get(&format!("/api/runs/{resume}")).await;
    let run = &v["run"];
    let e = &v["entities"][0];
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(e["resumed"]["fromRun"], run_id.as_str(), "{v}");
    assert_eq!(run["resumed"][0]["from_run"], run_id.as_str(), "{v}");
    assert!(run["countsNote"].is_string(), "{v}");
    let resumed_rows = n(&e["resumed"]["rows"]);
    assert_eq!(resumed_rows, n(&run["resumed"][0]["rows"]), "{v}");
    assert_eq!(n(&e["thisRun"]["read"]), n(&run["read"]), "{v}");
    assert_eq!(n(&e["read"]), n(&run["read"]) + resumed_rows, "{v}");
    assert_eq!(list["runs"][0]["read"], run["read"], "{list}");
    let rate =
        n(&e["thisRun"]["read"]) as f64 * 1000.0 / n(&e["thisRun"]["durationMs"]).max(1) as f64;
    assert!(
        (e["rowsPerSecond"].as_f64().unwrap() - rate).abs() <= 0.1,
        "{v}"
    );
    let (s, md) = api
        .get(&format!("/api/runs/{resume}/report?format=md"))
        .await;
    assert_eq!(s, 200, "{md}");
    let md = md.as_str().unwrap();
    assert!(
        md.contains(&format!("resumed run {run_id} after {resumed_rows} rows")),
        "{md}"
    );
    assert!(second.stop().success());
    assert!(server.stop().success());
    w.drop().await;
}

/// Found by the second outside round on `serve` (N1): SIGTERM while `--migrate-on-start` waited
/// for another instance's lock was ignored until the wait ended, and the changes were then
/// applied (cut short by the SIGKILL that follows in a deployment). The wait ends at once now.
#[tokio::test]
async fn sigterm_while_waiting_for_the_lock_at_start_ends_the_wait() {
    let w = World::new("serve_term_wait").await;
    let dir = slow_change(&w).await;
    // The lock held by a live `changes up` of the slow change.
    let mut holder = Command::new(assert_cmd::cargo::cargo_bin("cutover"))
        .current_dir(w.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MONGODB_URI", common::mongo_uri())
        .env("CUTOVER_MONGODB_DATABASE", &w.mongo_db)
        .args(["changes", "up", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while change_status(&w, 1).await.as_deref() != Some("running") {
        assert!(started.elapsed() < Duration::from_secs(60), "never running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = w.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("3_more.toml"),
        "version = 3\nname = \"more\"\n[[up]]\nop = \"add_field\"\ncollection = \"t\"\nfield = \"q\"\ndefault = 1\n",
    )
    .unwrap();
    let o = other.display().to_string();
    let mut waiting = spawn(
        &w,
        "waiting",
        &[
            "--no-auth",
            "--dir",
            &o,
            "--migrate-on-start",
            "--lock-wait",
            "120",
        ],
        &[("MIGRATE_ON_START_FAIL_HARD", "true")],
    );
    let log = w.dir.path().join("waiting.err");
    // Signalled once it waits for the lock (said in its log), not after a fixed time: on a
    // loaded machine 400 ms could end before it even started (adv33).
    let since = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("another instance holds the lock; waiting")
    {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "never waited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder ended too soon"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &waiting.id().to_string()])
        .status();
    let asked = Instant::now();
    let st = waiting.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5), "{err}");
    assert!(st.success(), "{err}");
    assert!(!err.contains("serving on"), "{err}");
    assert!(holder.wait().unwrap().success());
    assert_eq!(change_status(&w, 3).await, None, "never started");
    w.drop().await;
}

/// Outside tester of #15/#16 (F17): a form on any site the operator visited could post
/// `/api/migrations/down` with the Basic credentials the browser kept for the status page, and
/// with `--no-auth` with none; a foreign `Host` (DNS rebinding) was answered. A request that
/// changes something from another site (its `Origin` or `Sec-Fetch-Site`) is refused and
/// nothing is reversed; the same request from the page's own origin, or from a script without
/// those headers, goes through; `--no-auth` answers loopback names only.
#[tokio::test]
async fn requests_from_another_site_change_nothing() {
    let w = World::new("serve_csrf").await;
    // The sample changes work on the registry's patients and sessions (an update of a
    // collection the target does not hold is refused).
    for name in ["patients", "sessions"] {
        w.mongo().await.create_collection(name).await.unwrap();
    }
    let dir = changes_dir(&w);
    let d = dir.display().to_string();
    let token = "csrf-token-5b1e";
    let mut server = Server::start(
        &w,
        "csrf",
        &["--dir", &d, "--migrate-on-start"],
        &[("CUTOVER_API_TOKEN", token)],
    );
    let applied = versions(&dir);
    let api = Api::new(&server.base, Some(token));
    let http = reqwest::Client::new();
    let down = format!("{}/api/migrations/down?steps=1", server.base);
    let host = server.base.trim_start_matches("http://").to_string();
    for (name, value) in [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = http
            .post(&down)
            .basic_auth("anyone", Some(token))
            .header(name, value)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}: {value}");
        let v: Value = r.json().await.unwrap();
        is_error(&v, "cross_origin");
    }
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(v["summary"]["applied"], applied.len(), "{v}");
    // The page's own origin goes through.
    let r = http
        .post(&down)
        .basic_auth("anyone", Some(token))
        .header("origin", format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, v) = api.get("/api/migrations/status").await;
    assert_eq!(v["summary"]["applied"], applied.len() - 1, "{v}");
    assert!(server.stop().success(), "{}", server.log());

    // Without a token: loopback names only.
    let mut open = Server::start(&w, "open", &["--dir", &d, "--no-auth"], &[]);
    let port = open.base.rsplit(':').next().unwrap().to_string();
    for (host, status) in [
        (format!("evil.example:{port}"), 403),
        (format!("localhost:{port}"), 200),
        (format!("127.0.0.1:{port}"), 200),
    ] {
        let r = http
            .get(format!("{}/api/migrations/status", open.base))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{host}");
    }
    let r = http
        .post(format!("{}/api/migrations/down?steps=1", open.base))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(open.stop().success(), "{}", open.log());
    w.drop().await;
}

/// Outside tester F11: an API `up` cut short by SIGTERM answered 200 `failed: false` and did not
/// say that changes were left pending. The change under way finishes; the answer says it
/// stopped early and which changes were not begun.
#[tokio::test]
async fn an_up_cut_short_by_sigterm_says_what_it_left_pending() {
    let w = World::new("serve_term_up").await;
    let dir = slow_change(&w).await;
    let d = dir.display().to_string();
    let mut server = Server::start(&w, "up", &["--no-auth", "--dir", &d], &[]);
    let api = Api::new(&server.base, None);
    let up = tokio::spawn(async move { api.post("/api/migrations/up", None).await });
    let started = Instant::now();
    while change_status(&w, 1).await.as_deref() != Some("running") {
        assert!(started.elapsed() < Duration::from_secs(60), "never running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let (status, v) = up.await.unwrap();
    assert_eq!(status, 200, "{v}\n{}", server.log());
    assert_eq!(v["stoppedEarly"], true, "{v}");
    assert_eq!(v["leftPending"], json!([2]), "{v}");
    assert_eq!(change_status(&w, 1).await.as_deref(), Some("applied"));
    assert_eq!(change_status(&w, 2).await, None);
    assert!(server.stop().success(), "{}", server.log());
    w.drop().await;
}

/// Outside tester of `serve` (adv20 F1): SIGTERM while a run goes and a client holds a request
/// it never finishes. Graceful shutdown waited for that connection with no limit, and the run
/// was told to stop only after it closed: the run kept writing to its end, and a container's
/// SIGKILL would have cut it mid-batch. Now the run is stopped at once (recorded interrupted,
/// or completed when its last batches were in flight) and the server exits in bounded time.
#[tokio::test]
async fn sigterm_stops_the_run_at_once_whatever_a_client_holds_open() {
    let w = World::new("serve_stalled").await;
    w.load_registry(2000);
    let dir = changes_dir(&w);
    let d = dir.display().to_string();
    let pipeline = repo().join("pipelines/registry.toml").display().to_string();
    let mut server = Server::start(
        &w,
        "stalled",
        &["--no-auth", "--dir", &d, "--pipeline", &pipeline],
        &[],
    );
    let api = Api::new(&server.base, None);
    let (s, v) = api.post("/api/runs", Some(json!({"batchSize": 5}))).await;
    assert_eq!(s, 202, "{v}");
    let run_id = v["runId"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let (_, v) = api.get(&format!("/api/runs/{run_id}")).await;
        if v["entities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["entity"] == "patients" && e["status"] == "running")
        {
            break;
        }
        assert_eq!(v["status"], "running", "the run ended first: {v}");
        assert!(started.elapsed() < Duration::from_secs(60), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A request whose headers never end, held open past the stop.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(&mut stalled, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    assert!(server.stop().success(), "{}", server.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(25),
        "{:?}",
        stopping.elapsed()
    );
    assert!(
        server.log().contains("stopping the run in progress"),
        "{}",
        server.log()
    );
    let runs = ledger_docs(&w, "cutover_runs", doc! { "_id": &run_id }).await;
    assert_eq!(
        runs[0].get_str("status").unwrap(),
        "interrupted",
        "the run did not go on to its end: {runs:?}"
    );
    drop(stalled);
    w.drop().await;
}

/// adv37 F2: a dry run started through the API records nothing in the ledger; its entities are
/// shown live all the same (from the run's own counters), and listed by `GET /api/runs` once it
/// ended. Its second entity reads slowly (a query calling a function that sleeps 0.1 s a row), so the first is seen
/// counted and the second begun while the run goes on.
#[tokio::test]
async fn a_dry_run_started_through_the_api_shows_its_entities_while_it_runs() {
    let w = World::new("serve_dry_live").await;
    w.sql(
        "CREATE TABLE fast (id int PRIMARY KEY, v text);
         INSERT INTO fast SELECT g, 'v' || g FROM generate_series(1, 12) g;
         CREATE TABLE slow (id int PRIMARY KEY, v text);
         INSERT INTO slow SELECT g, 'v' || g FROM generate_series(1, 40) g;
         CREATE FUNCTION slowly(t text) RETURNS text VOLATILE LANGUAGE plpgsql
           AS $$ BEGIN PERFORM pg_sleep(0.1); RETURN t; END $$;",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/fast.toml"),
        "version = 1\nname = \"fast\"\n[source]\ntable = \"fast\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/slow.toml"),
        "version = 1\nname = \"slow\"\n[source]\nquery = \"SELECT id, slowly(v) AS v FROM slow\"\nkey = [\"id\"]\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    )
    .unwrap();
    let pipeline = dir.join("live.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"live\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"one\"\nentities = [\"fast\"]\n[[stage]]\nname = \"two\"\nentities = [\"slow\"]\ndepends_on = [\"one\"]\n",
    )
    .unwrap();
    let pipeline = pipeline.display().to_string();
    let token = "dry-live-token-42a7";
    let mut server = Server::start(
        &w,
        "drylive",
        &["--pipeline", &pipeline],
        &[("CUTOVER_API_TOKEN", token)],
    );
    let api = Api::new(&server.base, Some(token));
    let (s, v) = api
        .post("/api/runs", Some(json!({"dryRun": true, "batchSize": 5})))
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["runId"].as_str().unwrap().to_string();
    // Running: fast counted whole, slow begun.
    let started = std::time::Instant::now();
    let live = loop {
        let (s, v) = api.get(&format!("/api/runs/{id}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "running", "{v}");
        let entity = |name: &str| {
            v["entities"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["entity"] == name)
                .cloned()
        };
        if let (Some(f), Some(sl)) = (entity("fast"), entity("slow")) {
            break (f, sl);
        }
        assert!(started.elapsed().as_secs() < 60, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (fast, slow) = live;
    assert_eq!(
        (fast["read"].as_u64(), fast["total"].as_u64()),
        (Some(12), Some(12)),
        "{fast}"
    );
    assert_eq!(slow["total"], 40, "{slow}");
    assert_eq!(slow["status"], "running", "{slow}");
    let done = api.wait_run(&id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, v) = api.get("/api/runs").await;
    let listed = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["entities"], json!(["fast", "slow"]), "{listed}");
    server.stop();
    w.drop().await;
}
