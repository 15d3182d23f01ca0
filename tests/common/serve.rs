//! `cutover serve` as a deployment runs it: the real binary listening on a free port (its log
//! read for the address), and a real HTTP client (reqwest) for its API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::World;

/// A `cutover serve` child process, its address and its log files; stopped with SIGTERM on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub stderr: PathBuf,
}

impl Server {
    /// `cutover serve --listen 127.0.0.1:0 ARGS…` in the world's directory, with `env` added;
    /// waits until it says where it listens.
    pub fn start(w: &World, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let child = spawn(w, tag, args, env);
        let stderr = w.dir.path().join(format!("{tag}.err"));
        let mut s = Server {
            child,
            base: String::new(),
            stderr,
        };
        s.base = s.wait_listening(Duration::from_secs(60));
        s
    }

    pub fn wait_listening(&mut self, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(rest) = text.split("serving on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap().to_string();
                return url;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("serve exited ({status}) before listening:\n{text}");
            }
            assert!(
                started.elapsed() < limit,
                "serve did not listen within {limit:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then its exit status (bounded).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!("serve did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cutover --log-level debug serve --listen 127.0.0.1:0 ARGS…`, output to `<tag>.out|err`.
pub fn spawn(w: &World, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(w.dir.path().join(format!("{tag}.out"))).unwrap();
    let err = std::fs::File::create(w.dir.path().join(format!("{tag}.err"))).unwrap();
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("cutover"));
    cmd.current_dir(w.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUTOVER_SOURCE_URL", &w.pg_url)
        .env("MONGODB_URI", super::mongo_uri())
        .env("CUTOVER_MONGODB_DATABASE", &w.mongo_db)
        .env("CUTOVER_FILES_ROOT", w.files_root())
        .args(["--log-level", "debug", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: &str, token: Option<&str>) -> Api {
        // reqwest is built without a TLS provider of its own (plain HTTP here all the same).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Api {
            http: reqwest::Client::new(),
            base: base.to_string(),
            token: token.map(str::to_string),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> (u16, String, Value) {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, ct, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.send(self.req(reqwest::Method::GET, path)).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(reqwest::Method::POST, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let (s, _, v) = self.send(r).await;
        (s, v)
    }

    /// Polls `GET /api/runs/{id}` until the run is no longer running; returns the last answer.
    pub async fn wait_run(&self, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let (s, v) = self.get(&format!("/api/runs/{id}")).await;
            assert_eq!(s, 200, "{v}");
            if v["status"] != "running" {
                return v;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn is_error(v: &Value, error: &str) {
    assert_eq!(v["error"], error, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Three `serve` processes started at once (`name0`…`name2`), each once it listens.
pub fn start_together(w: &World, name: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<Server> {
    let children: Vec<Child> = (0..3)
        .map(|i| spawn(w, &format!("{name}{i}"), args, env))
        .collect();
    children
        .into_iter()
        .enumerate()
        .map(|(i, child)| {
            let mut s = Server {
                child,
                base: String::new(),
                stderr: w.dir.path().join(format!("{name}{i}.err")),
            };
            s.base = s.wait_listening(Duration::from_secs(120));
            s
        })
        .collect()
}
