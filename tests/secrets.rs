//! No credential ever leaves cutover: a PostgreSQL role whose password holds `/`, `@`, a blank and
//! `?` is given in each form cutover accepts (userinfo, `?password=`) and in forms it refuses
//! (unescaped, libpq `key=value`), on working and failing connections; every command that takes
//! the URL runs, also with debug and JSON logs. Standard output, standard error, every file under
//! reports/ and rejects/, and every ledger document must hold no fragment of the password, raw or
//! percent-encoded. The same for an Appwrite API key.

mod common;

use std::path::Path;
use std::sync::Arc;

use bson::Document;
use common::World;
use futures::TryStreamExt;

/// The test role's password: each fragment between the special characters is distinctive.
const PASSWORD: &str = "Kx7q/Vb2m@Rn4t Hw8p?Jd3s";
const FRAGMENTS: [&str; 5] = ["Kx7q", "Vb2m", "Rn4t", "Hw8p", "Jd3s"];

fn encoded(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `host:port` of the test PostgreSQL.
fn pg_host_port(w: &World) -> String {
    let after = w.pg_url.split_once('@').expect("admin URL with a user").1;
    after.split('/').next().unwrap().to_string()
}

/// Everything cutover printed or wrote, with where it came from.
#[derive(Default)]
struct Seen {
    texts: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: &str, text: String) {
        self.texts.push((what.to_string(), text));
    }

    fn output(&mut self, what: &str, out: &std::process::Output) {
        self.add(
            &format!("{what}: stdout"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        );
        self.add(
            &format!("{what}: stderr"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
    }

    /// Every file under `dir`, recursively.
    fn files(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                self.files(&p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                self.add(
                    &p.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                );
            }
        }
    }

    /// Every document of the target database's `cutover_*` collections.
    async fn ledger(&mut self, w: &World) -> usize {
        let db = w.mongo().await;
        let mut n = 0;
        for name in db.list_collection_names().await.unwrap() {
            if !name.starts_with("cutover_") {
                continue;
            }
            let docs: Vec<Document> = db
                .collection::<Document>(&name)
                .find(bson::doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            n += docs.len();
            for d in docs {
                self.add(&format!("ledger {name}"), format!("{d}\n{d:?}"));
            }
        }
        n
    }

    /// No fragment of any secret anywhere.
    fn assert_clean(&self, secrets: &[&str]) {
        assert!(!self.texts.is_empty());
        for (what, text) in &self.texts {
            for s in secrets {
                assert!(
                    !text.contains(s),
                    "`{s}` leaked in {what}:\n{}",
                    excerpt(text, s)
                );
            }
        }
    }

    fn contains(&self, needle: &str) -> bool {
        self.texts.iter().any(|(_, t)| t.contains(needle))
    }
}

fn excerpt(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap_or(0);
    let start = text[..i]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(j, _)| j);
    let end = (i + needle.len() + 200).min(text.len());
    let end = (end..=text.len())
        .find(|&j| text.is_char_boundary(j))
        .unwrap();
    text[start..end].to_string()
}

fn secrets() -> Vec<String> {
    let mut s: Vec<String> = FRAGMENTS.iter().map(|f| f.to_string()).collect();
    s.push(PASSWORD.to_string());
    s.push(encoded(PASSWORD));
    s
}

fn pipeline() -> String {
    common::registry_without_files().display().to_string()
}

/// `cutover ARGS…` with `url` as the source (and any extra environment).
fn run(w: &World, url: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = w.cutover();
    cmd.env("CUTOVER_SOURCE_URL", url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().unwrap()
}

async fn create_role(w: &World) -> String {
    let role = format!("{}_r", w.name);
    w.sql(&format!(
        "CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{}'",
        PASSWORD.replace('\'', "''")
    ))
    .await;
    role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fragment_of_the_source_password_is_printed_or_stored() {
    let w = World::new("secrets_pg").await;
    w.load_registry(100);
    let role = create_role(&w).await;
    let hp = pg_host_port(&w);
    let enc = encoded(PASSWORD);
    let forms = [
        (
            "userinfo",
            format!("postgres://{role}:{enc}@{hp}/{}", w.name),
        ),
        (
            "query",
            format!(
                "postgresql://{role}@{hp}/{}?sslmode=disable&password={enc}",
                w.name
            ),
        ),
    ];
    let p = pipeline();
    let mut seen = Seen::default();
    for (form, url) in &forms {
        let url = url.as_str();
        let mut step = |name: &str, args: &[&str]| -> std::process::Output {
            let out = run(&w, url, &[], args);
            seen.output(&format!("{form} {name}"), &out);
            out
        };
        let check = step("check", &["check", "--pipeline", &p]);
        assert_ne!(
            check.status.code(),
            Some(101),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        step("check --json", &["check", "--json", "--pipeline", &p]);
        let plan = step("plan", &["plan", "--pipeline", &p]);
        assert_eq!(
            plan.status.code(),
            Some(0),
            "{form}: the role must connect: {}",
            String::from_utf8_lossy(&plan.stderr)
        );
        step(
            "migrate --dry-run",
            &["migrate", "--quiet", "--dry-run", "--pipeline", &p],
        );
        let migrate = step(
            "migrate",
            &[
                "--log-level",
                "debug",
                "migrate",
                "--quiet",
                "--rerun",
                "--pipeline",
                &p,
            ],
        );
        // The sample registry has rows the mappings reject: 2, finished with rejects.
        assert_eq!(
            migrate.status.code(),
            Some(2),
            "{form}: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        step(
            "migrate json logs",
            &[
                "--log-level",
                "trace",
                "--log-format",
                "json",
                "migrate",
                "--quiet",
                "--rerun",
                "--pipeline",
                &p,
            ],
        );
        step("status", &["status", "--pipeline", &p]);
        step("status --json", &["status", "--json", "--pipeline", &p]);
        step("history", &["history"]);
        step("history --json", &["history", "--json"]);
        for f in ["text", "json", "md", "html"] {
            step(&format!("report {f}"), &["report", "--format", f]);
            let file = format!("reports/signoff-{form}.{f}");
            step(
                &format!("report {f} -o"),
                &["report", "--format", f, "-o", &file],
            );
        }
        step(
            "verify",
            &["--log-level", "debug", "verify", "--pipeline", &p],
        );
        step(
            "verify --json",
            &["--log-format", "json", "verify", "--json", "--pipeline", &p],
        );
        step("backup list", &["backup", "list"]);
        step("lock status", &["lock", "status"]);
    }
    assert!(w.count("patients").await > 0, "the runs wrote documents");
    seen.files(&w.dir.path().join("reports"));
    seen.files(&w.dir.path().join("rejects"));
    // The reports name the source with its user and host kept (they help debugging).
    assert!(seen.contains(&format!("postgres://{role}:***@{hp}/")));
    assert!(seen.contains(&format!(
        "postgresql://{role}@{hp}/{}?sslmode=disable&password=***",
        w.name
    )));
    assert!(seen.ledger(&w).await > 0, "the ledger has records");
    let secrets = secrets();
    seen.assert_clean(&secrets.iter().map(String::as_str).collect::<Vec<_>>());

    w.sql(&format!("DROP ROLE IF EXISTS {role}")).await;
    w.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_connections_print_no_fragment_of_the_password() {
    let w = World::new("secrets_fail").await;
    let role = create_role(&w).await;
    let hp = pg_host_port(&w);
    let host = hp.split(':').next().unwrap();
    let enc = encoded(PASSWORD);
    let db = &w.name;
    let urls = [
        // Nothing listens on port 1.
        format!("postgres://{role}:{enc}@{host}:1/{db}"),
        format!("postgres://{role}@{host}:1/{db}?password={enc}"),
        // Unescaped: the password's '/', '@', blank and '?' reach the URL parser as they are.
        format!("postgres://{role}:{PASSWORD}@{hp}/{db}"),
        format!("postgres://{role}:{PASSWORD}@{host}:1/{db}"),
        // A libpq connection string: cutover refuses it, without echoing the password.
        format!("host={host} port=1 user={role} password='{PASSWORD}' dbname={db}"),
    ];
    let p = pipeline();
    let mut seen = Seen::default();
    for url in &urls {
        for args in [
            vec!["check", "--pipeline", &p],
            vec!["plan", "--pipeline", &p],
            vec!["migrate", "--quiet", "--pipeline", &p],
            vec!["migrate", "--quiet", "--dry-run", "--pipeline", &p],
            vec!["--log-level", "debug", "verify", "--pipeline", &p],
            vec![
                "--log-level",
                "trace",
                "--log-format",
                "json",
                "migrate",
                "--quiet",
                "--pipeline",
                &p,
            ],
        ] {
            let out = run(&w, url, &[], &args);
            assert_eq!(out.status.code(), Some(1), "{args:?} must fail");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stderr.contains("source") || stdout.contains("source"),
                "{args:?}: the error names the source: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
            seen.output(&format!("{url} {args:?}"), &out);
        }
    }
    // The failure is the connection's, said once, with the user and host kept.
    assert!(seen.contains(&format!(
        "cannot connect to the source postgres://{role}:***@{host}:1"
    )));
    // A MongoDB URI with the password (mongod has no such user: authentication fails).
    let mongo = common::mongo_uri().replacen("mongodb://", &format!("mongodb://{role}:{enc}@"), 1);
    let mongo = if mongo.contains('?') {
        format!("{mongo}&serverSelectionTimeoutMS=3000&authMechanism=SCRAM-SHA-256")
    } else {
        format!("{mongo}?serverSelectionTimeoutMS=3000&authMechanism=SCRAM-SHA-256")
    };
    for args in [vec!["status", "--pipeline", &p], vec!["history"]] {
        let out = run(&w, &w.pg_url, &[("MONGODB_URI", &mongo)], &args);
        assert_eq!(out.status.code(), Some(1), "{args:?} must fail");
        seen.output(&format!("mongo {args:?}"), &out);
    }
    seen.files(&w.dir.path().join("reports"));
    seen.files(&w.dir.path().join("rejects"));
    let secrets = secrets();
    seen.assert_clean(&secrets.iter().map(String::as_str).collect::<Vec<_>>());

    w.sql(&format!("DROP ROLE IF EXISTS {role}")).await;
    w.drop().await;
}

const KEY: &str = "standard_Qz81vKeyMustNotPrint";

/// Runs `cutover ARGS…` against the stand-in without blocking the runtime that serves it.
async fn appwrite(w: &World, endpoint: &str, key: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = w.cutover();
    cmd.env("APPWRITE_ENDPOINT", endpoint)
        .env("APPWRITE_PROJECT", "cutover")
        .env("APPWRITE_API_KEY", key)
        .env("APPWRITE_DATABASE", "registry")
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appwrite_api_key_is_never_printed_or_stored() {
    let w = World::new("secrets_aw").await;
    w.load_registry(100);
    // The key inside source data too: a value the run rejects (its e-mail) shows it in the
    // rejects file and the output, unless scrubbed.
    w.sql(&format!(
        "UPDATE patients SET email = 'not an address {KEY}' WHERE patient_id = (SELECT patient_id FROM patients ORDER BY patient_id LIMIT 1)"
    ))
    .await;
    let s = Arc::new(appwrite_standin::StandIn::new("cutover", KEY));
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = format!("http://{addr}/v1");
    let p = pipeline();
    let mut seen = Seen::default();
    let runs: Vec<Vec<&str>> = vec![
        vec!["check", "--target", "appwrite", "--pipeline", &p],
        vec![
            "--log-level",
            "debug",
            "migrate",
            "--quiet",
            "--target",
            "appwrite",
            "--pipeline",
            &p,
        ],
        vec![
            "--log-level",
            "trace",
            "--log-format",
            "json",
            "migrate",
            "--quiet",
            "--rerun",
            "--target",
            "appwrite",
            "--pipeline",
            &p,
        ],
        vec!["status", "--target", "appwrite", "--pipeline", &p],
        vec!["history", "--target", "appwrite", "--json"],
        vec!["report", "--target", "appwrite", "--format", "html"],
        vec!["report", "--target", "appwrite", "--format", "json"],
        vec![
            "--log-level",
            "debug",
            "verify",
            "--target",
            "appwrite",
            "--pipeline",
            &p,
        ],
    ];
    for args in &runs {
        let out = appwrite(&w, &endpoint, KEY, args).await;
        assert_ne!(out.status.code(), Some(101), "{args:?}");
        seen.output(&format!("{args:?}"), &out);
    }
    assert!(
        s.row_count("registry", "patients") > 0,
        "the runs wrote rows"
    );
    // A refused key and an endpoint where nothing listens: error paths.
    let wrong = format!("{KEY}-wrong");
    for (endpoint, key) in [
        (endpoint.as_str(), wrong.as_str()),
        ("http://127.0.0.1:1/v1", KEY),
    ] {
        for args in [
            vec!["check", "--target", "appwrite", "--pipeline", &p],
            vec![
                "--log-level",
                "debug",
                "migrate",
                "--quiet",
                "--target",
                "appwrite",
                "--retries",
                "0",
                "--pipeline",
                &p,
            ],
        ] {
            let out = appwrite(&w, endpoint, key, &args).await;
            assert_eq!(out.status.code(), Some(1), "{args:?} must fail");
            seen.output(&format!("{endpoint} {args:?}"), &out);
        }
    }
    seen.files(&w.dir.path().join("reports"));
    seen.files(&w.dir.path().join("rejects"));
    for t in ["cutover_runs", "cutover_steps"] {
        let rows = serde_json::json!(s.rows("registry", t)).to_string();
        assert!(rows.len() > 2, "{t} has records");
        seen.add(t, rows);
    }
    seen.assert_clean(&[KEY, "Qz81vKey"]);
    w.drop().await;
}
