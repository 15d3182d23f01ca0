//! Test harness: real PostgreSQL and mongod started by `scripts/services.sh` (scripts/test.sh does
//! it). Each test gets its own PostgreSQL database and MongoDB database, so tests run in parallel.
#![allow(dead_code)]

pub mod browser;
pub mod library;
pub mod oracle;
pub mod process;
pub mod serve;
pub mod standin;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use bson::Document;
use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn admin_url() -> String {
    std::env::var("CUTOVER_SOURCE_URL").expect(
        "CUTOVER_SOURCE_URL is not set: run the suite with scripts/test.sh (it starts PostgreSQL and mongod)",
    )
}

pub fn mongo_uri() -> String {
    std::env::var("MONGODB_URI")
        .expect("MONGODB_URI is not set: run the suite with scripts/test.sh")
}

/// Replaces the database name of a postgres URL.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's private world: a PostgreSQL database, a MongoDB database and a working directory.
pub struct World {
    pub name: String,
    pub pg_url: String,
    pub mongo_db: String,
    pub dir: tempfile::TempDir,
}

impl World {
    /// A new empty PostgreSQL database and a MongoDB database name, both unique to this test.
    pub async fn new(test: &str) -> World {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t_{}_{}_{}", test, std::process::id(), n).to_lowercase();
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .expect("connect to PostgreSQL");
        admin
            .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .await
            .unwrap();
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let _ = admin.close().await;
        let mongo_db = name.clone();
        let client = mongodb::Client::with_uri_str(mongo_uri()).await.unwrap();
        client.database(&mongo_db).drop().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The files root its commands name (empty until a test writes files there): a root that
        // is not there refuses a files stage.
        std::fs::create_dir_all(dir.path().join("files")).unwrap();
        World {
            pg_url: with_db(&admin_url(), &name),
            name,
            mongo_db,
            dir,
        }
    }

    /// Loads the sample registry with `patients` patients.
    pub fn load_registry(&self, patients: u32) {
        let out = Command::new(repo().join("scripts/fixtures.sh"))
            .args(["--patients", &patients.to_string(), "--no-files"])
            .env("CUTOVER_SOURCE_URL", &self.pg_url)
            .output()
            .expect("run scripts/fixtures.sh");
        assert!(
            out.status.success(),
            "fixtures.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn sql(&self, sql: &str) {
        let mut c = PgConnection::connect(&self.pg_url).await.unwrap();
        c.execute(AssertSqlSafe(sql.to_string())).await.unwrap();
        let _ = c.close().await;
    }

    /// The first column of every row of `sql`, as text (PostgreSQL's own rendering).
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        let mut c = PgConnection::connect(&self.pg_url).await.unwrap();
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut c)
            .await
            .unwrap();
        let _ = c.close().await;
        rows
    }

    pub async fn pg_count(&self, table: &str) -> u64 {
        let mut c = PgConnection::connect(&self.pg_url).await.unwrap();
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut c)
            .await
            .unwrap();
        let _ = c.close().await;
        n as u64
    }

    /// `cutover` with this world's servers in the environment, run in the world's directory.
    pub fn cutover(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("cutover").unwrap();
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUTOVER_SOURCE_URL", &self.pg_url)
            .env("MONGODB_URI", mongo_uri())
            .env("CUTOVER_MONGODB_DATABASE", &self.mongo_db)
            // The files stage's root: the world's `files` (load_registry_with_files fills it).
            .env("CUTOVER_FILES_ROOT", self.files_root());
        cmd
    }

    /// Where this world's sample files are (`CUTOVER_FILES_ROOT` of its commands).
    pub fn files_root(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Loads the sample registry with `patients` patients and writes the sample files of
    /// `documents` under [`World::files_root`].
    pub fn load_registry_with_files(&self, patients: u32) {
        let out = Command::new(repo().join("scripts/fixtures.sh"))
            .args(["--patients", &patients.to_string(), "--files-dir"])
            .arg(self.files_root())
            .env("CUTOVER_SOURCE_URL", &self.pg_url)
            .output()
            .expect("run scripts/fixtures.sh");
        assert!(
            out.status.success(),
            "fixtures.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `cutover migrate --quiet --pipeline <repo registry> ARGS…`
    pub fn migrate(&self, args: &[&str]) -> std::process::Output {
        self.migrate_with(&repo().join("pipelines/registry.toml"), args)
    }

    /// `cutover migrate --quiet --pipeline PIPELINE ARGS…`
    pub fn migrate_with(&self, pipeline: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = self.cutover();
        cmd.arg("migrate")
            .arg("--quiet")
            .arg("--pipeline")
            .arg(pipeline)
            .args(args);
        cmd.output().unwrap()
    }

    /// `cutover verify --pipeline PIPELINE -o <dir>/verify.json`: its output and the JSON it
    /// wrote (the output names what went wrong when it wrote none).
    pub fn verify_json(&self, pipeline: &Path) -> (std::process::Output, serde_json::Value) {
        let out_path = self.dir.path().join("verify.json");
        let out = self
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(pipeline)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let text =
            std::fs::read_to_string(&out_path).unwrap_or_else(|_| panic!("{}", output_text(&out)));
        (out, serde_json::from_str(&text).unwrap())
    }

    pub async fn mongo(&self) -> mongodb::Database {
        mongodb::Client::with_uri_str(mongo_uri())
            .await
            .unwrap()
            .database(&self.mongo_db)
    }

    pub async fn docs(&self, collection: &str) -> Vec<Document> {
        let db = self.mongo().await;
        db.collection::<Document>(collection)
            .find(bson::doc! {})
            .sort(bson::doc! { "_id": 1 })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    pub async fn count(&self, collection: &str) -> u64 {
        self.mongo()
            .await
            .collection::<Document>(collection)
            .count_documents(bson::doc! {})
            .await
            .unwrap()
    }

    /// The single run report written under reports/ (panics when there is not exactly one new one).
    pub fn latest_report(&self) -> serde_json::Value {
        let dir = self.dir.path().join("reports");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("verify-")
            })
            .collect();
        files.sort();
        let path = files.last().expect("a report");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Rows of every rejects CSV of a run directory, as (entity, key, stage, rule).
    pub fn rejects(&self, run_id: &str) -> Vec<(String, String, String, String)> {
        read_csvs(&self.dir.path().join("rejects").join(run_id), false)
    }

    /// The lines of a run's rejects files that the run counted itself (a batch named: not
    /// carried over from the run it resumed), as (entity, key, rule, path, batch), sorted.
    pub fn own_reject_lines(&self, run_id: &str) -> Vec<[String; 5]> {
        let mut out = Vec::new();
        let dir = self.dir.path().join("rejects").join(run_id);
        for e in std::fs::read_dir(dir).into_iter().flatten() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".warnings.csv") || !name.ends_with(".csv") {
                continue;
            }
            let mut r = csv::Reader::from_path(&p).unwrap();
            for rec in r.records() {
                let rec = rec.unwrap();
                if !rec[7].is_empty() {
                    out.push([0, 1, 3, 4, 7].map(|i| rec[i].to_string()));
                }
            }
        }
        out.sort();
        out
    }

    /// Lines (the header included) of a run's `read-again/<file>`, when it exists: the lines a
    /// stopped step set apart past its checkpoint.
    pub fn read_again_lines(&self, run_id: &str, file: &str) -> Option<usize> {
        let path = self
            .dir
            .path()
            .join("rejects")
            .join(run_id)
            .join("read-again")
            .join(file);
        std::fs::read_to_string(path)
            .ok()
            .map(|t| t.lines().count())
    }

    /// `cutover history --json --limit N`, parsed.
    pub fn history(&self, limit: usize) -> serde_json::Value {
        let out = self
            .cutover()
            .args(["history", "--json", "--limit", &limit.to_string()])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", output_text(&out)))
    }

    pub fn warnings(&self, run_id: &str) -> Vec<(String, String, String, String)> {
        read_csvs(&self.dir.path().join("rejects").join(run_id), true)
    }

    pub async fn drop(self) {
        self.mongo().await.drop().await.ok();
        if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
            let _ = admin
                .execute(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )))
                .await;
        }
    }
}

fn read_csvs(dir: &Path, warnings: bool) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        // (`read-again/` holds the lines past a stopped step's checkpoint: not the run's.)
        if name.ends_with(".warnings.csv") != warnings || !name.ends_with(".csv") {
            continue;
        }
        let mut r = csv::Reader::from_path(&p).unwrap();
        for rec in r.records() {
            let rec = rec.unwrap();
            out.push((
                rec[0].to_string(),
                rec[1].to_string(),
                rec[2].to_string(),
                rec[3].to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// The registry pipeline without its `files` stage, for Appwrite tests that need no files (the
/// files stage into Appwrite Storage has its own tests).
pub fn registry_without_files() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let text = without_files_stage(
            &std::fs::read_to_string(repo().join("pipelines/registry.toml")).unwrap(),
        )
        .replace(
            "mappings_dir = \"../mappings\"",
            &format!(
                "mappings_dir = {:?}",
                repo().join("mappings").display().to_string()
            ),
        );
        let dir = std::env::temp_dir().join(format!("cutover-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.toml");
        std::fs::write(&path, text).unwrap();
        path
    })
    .clone()
}

/// A pipeline file's text without its `files` stage.
pub fn without_files_stage(text: &str) -> String {
    let start = text
        .find("[[stage]]\nname = \"files\"")
        .expect("a files stage");
    let end = text[start + 1..]
        .find("[[stage]]")
        .map_or(text.len(), |e| start + 1 + e);
    format!("{}{}", &text[..start], &text[end..])
}

/// Writes `mappings/<entity>.toml` and a one-stage pipeline `<entity>.toml` running it into the
/// world's directory; returns the pipeline's path.
pub fn one_entity_pipeline(w: &World, entity: &str, mapping: &str) -> PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join(format!("mappings/{entity}.toml")), mapping).unwrap();
    let pipeline = dir.join(format!("{entity}.toml"));
    std::fs::write(
        &pipeline,
        format!(
            "version = 1\nname = \"{entity}\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"{entity}\"]\n"
        ),
    )
    .unwrap();
    pipeline
}

/// A command's stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
