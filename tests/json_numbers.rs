//! JSON and JSONB numbers land exactly or not at all: every number of a `json` / `jsonb` value is
//! an integer, a double that is exactly the number, or a Decimal128 — never a rounded double. A
//! number nothing holds exactly rejects the row (`json_number_precision`), or with `lossy =
//! "warn"` is written as the nearest double with a warning; `check` counts both beforehand.
//!
//! The oracle is PostgreSQL's own text of each number (`->>`, `#>>`), compared with what lands as
//! exact decimals by PostgreSQL's `numeric`, not by cutover's converter.

mod common;

use std::sync::Arc;

use bson::{Bson, Document};
use common::World;
use sqlx::{Connection, PgConnection};

/// Numbers something holds exactly: each row holds one at `n` and at `deep.list[1]`.
const EXACT: &[&str] = &[
    "9223372036854775808",
    "18446744073709551617",
    "-9223372036854775809",
    "1e400",
    "0.1",
    "1.0",
    "123456789012345678901234567890",
    "3.141592653589793238462643383279",
    "9007199254740993",
    "5e-324",
    "1.7976931348623157e308",
    "-0.0",
    "42",
    "-2147483649",
    "2.5",
    "1E+2",
    "1e-400",
    "0.30000000000000004",
    "100000000000000000000",
    // Shortest texts of doubles that a parse without correct rounding reads one ulp off.
    "6.086303267103942e139",
    "4.29003784304291e-213",
    "1.6761219944747622e300",
    // 17 and 19 digits that no double has as its shortest text.
    "2.2250738585072011e-308",
    "9.109383560000000014e-31",
];

/// Numbers nothing holds exactly: 38 significant digits; beyond Decimal128's exponent range and
/// a double's (no nearest double), and below both (the nearest double is 0).
const INEXACT: &[&str] = &[
    "0.12345678901234567890123456789012345678",
    "1e7000",
    "1e-7000",
];

fn schema() -> String {
    let mut sql = String::from(
        "CREATE TABLE nums (id int PRIMARY KEY, j json, jb jsonb);\nINSERT INTO nums VALUES\n",
    );
    let rows: Vec<String> = EXACT
        .iter()
        .chain(INEXACT)
        .enumerate()
        .map(|(i, n)| {
            let v = format!(r#"{{"n": {n}, "deep": {{"list": [0, {n}]}}}}"#);
            format!("  ({}, '{v}', '{v}')", i + 1)
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    sql.push_str(";\nCREATE TABLE nums_lax AS SELECT * FROM nums;\n");
    sql.push_str("ALTER TABLE nums_lax ADD PRIMARY KEY (id);\n");
    sql
}

fn mapping(name: &str, lossy: &str) -> String {
    format!(
        r#"
version = 1
name = "{name}"
[source]
table = "{name}"
key = ["id"]
[[field]]
path = "j"
column = "j"
{lossy}
[[field]]
path = "jb"
column = "jb"
{lossy}
"#
    )
}

const PIPELINE: &str = r#"
version = 1
name = "nums"
mappings_dir = "mappings"
[[stage]]
name = "all"
entities = ["nums", "nums_lax"]
"#;

fn write_files(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/nums.toml"), mapping("nums", "")).unwrap();
    std::fs::write(
        dir.join("mappings/nums_lax.toml"),
        mapping("nums_lax", "lossy = \"warn\""),
    )
    .unwrap();
    std::fs::write(dir.join("nums.toml"), PIPELINE).unwrap();
    dir.join("nums.toml")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn inexact_keys() -> Vec<String> {
    (EXACT.len() + 1..=EXACT.len() + INEXACT.len())
        .map(|i| i.to_string())
        .collect()
}

/// PostgreSQL's text of each number: (id, column, path in the JSON, text).
async fn pg_texts(c: &mut PgConnection, table: &str) -> Vec<(i32, &'static str, String, String)> {
    let rows: Vec<(i32, String, String, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, j->>'n', jb->>'n', j#>>'{{deep,list,1}}', jb#>>'{{deep,list,1}}' \
             FROM {table} ORDER BY id"
        )))
        .fetch_all(&mut *c)
        .await
        .unwrap();
    let mut out = Vec::new();
    for (id, jn, jbn, jl, jbl) in rows {
        out.push((id, "j", "n".to_string(), jn));
        out.push((id, "jb", "n".to_string(), jbn));
        out.push((id, "j", "deep.list[1]".to_string(), jl));
        out.push((id, "jb", "deep.list[1]".to_string(), jbl));
    }
    out
}

/// Whether two decimal texts have the same value, as PostgreSQL's `numeric` says.
async fn same_number(c: &mut PgConnection, a: &str, b: &str) -> bool {
    sqlx::query_scalar("SELECT $1::numeric = $2::numeric")
        .bind(a)
        .bind(b)
        .fetch_one(&mut *c)
        .await
        .unwrap_or_else(|e| panic!("compare {a} and {b}: {e}"))
}

fn at<'a>(doc: &'a Document, column: &str, path: &str) -> &'a Bson {
    let value = doc.get_document(column).unwrap();
    match path {
        "n" => value.get("n").unwrap(),
        _ => &value
            .get_document("deep")
            .unwrap()
            .get_array("list")
            .unwrap()[1],
    }
}

/// Checks that `got` is exactly the number PostgreSQL prints as `pg`; returns a complaint if not.
async fn exact_problem(c: &mut PgConnection, got: &Bson, pg: &str) -> Option<String> {
    match got {
        Bson::Int32(i) => (!same_number(c, &i.to_string(), pg).await).then(|| format!("{i}")),
        Bson::Int64(i) => (!same_number(c, &i.to_string(), pg).await).then(|| format!("{i}")),
        Bson::Decimal128(d) => {
            (!same_number(c, &d.to_string(), pg).await).then(|| format!("decimal {d}"))
        }
        Bson::Double(d) => {
            // The double nearest PostgreSQL's text (Rust's parse is correctly rounded), and that
            // double's own shortest text has the same value: nothing was rounded.
            let nearest: f64 = pg.parse().unwrap();
            if d.to_bits() != nearest.to_bits() {
                return Some(format!("double {d:e}, not the nearest {nearest:e}"));
            }
            (!same_number(c, &format!("{d:e}"), pg).await).then(|| format!("double {d:e}, rounded"))
        }
        other => Some(format!("{other:?}")),
    }
}

fn csv_rows(path: &std::path::Path) -> Vec<csv::StringRecord> {
    let Ok(mut r) = csv::Reader::from_path(path) else {
        return Vec::new();
    };
    r.records().map(Result::unwrap).collect()
}

#[tokio::test]
async fn json_numbers_land_exactly_or_the_row_is_rejected_or_warned() {
    let w = World::new("json_numbers").await;
    w.sql(&schema()).await;
    let pipeline = write_files(&w);
    let mut pg = PgConnection::connect(&w.pg_url).await.unwrap();

    // check counts what migrate will do: per column, the 3 inexact rows are rejected; with
    // `lossy = "warn"` two are warnings and the one with no nearest double is still rejected.
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--allow-rejects", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let mut found: Vec<(String, String, String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "json_number_precision")
        .map(|f| {
            (
                f["entity"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    let f = |e: &str, p: &str, s: &str, n: u64| (e.to_string(), p.to_string(), s.to_string(), n);
    assert_eq!(
        found,
        [
            f("nums", "j", "reject", 3),
            f("nums", "jb", "reject", 3),
            f("nums_lax", "j", "reject", 1),
            f("nums_lax", "j", "warning", 2),
            f("nums_lax", "jb", "reject", 1),
            f("nums_lax", "jb", "warning", 2),
        ],
        "{report}"
    );

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let run = w.latest_report();
    let run_id = run["run_id"].as_str().unwrap();

    // Rejects name the rule, the path inside the JSON and the number.
    let rejects_dir = w.dir.path().join("rejects").join(run_id);
    let rejects = csv_rows(&rejects_dir.join("nums.csv"));
    let mut keys: Vec<&str> = rejects.iter().map(|r| &r[1]).collect();
    keys.dedup();
    assert_eq!(keys, inexact_keys(), "{rejects:?}");
    for r in &rejects {
        assert_eq!(&r[3], "json_number_precision", "{r:?}");
        let n = INEXACT[r[1].parse::<usize>().unwrap() - EXACT.len() - 1];
        // jsonb prints 1e7000 in full, so name its start.
        let shown = if r[4] == *"jb" { &n[..1] } else { n };
        assert!(
            r[5].contains("`n`") && r[5].contains(shown),
            "the message names the path and the number: {r:?}"
        );
    }
    let lax = csv_rows(&rejects_dir.join("nums_lax.csv"));
    let lax_keys: Vec<&str> = lax.iter().map(|r| &r[1]).collect();
    let no_double = (EXACT.len() + 2).to_string();
    assert_eq!(
        lax_keys,
        [no_double.as_str(), no_double.as_str()],
        "{lax:?}"
    );
    let warned = csv_rows(&rejects_dir.join("nums_lax.warnings.csv"));
    assert!(
        warned.iter().all(|r| &r[3] == "json_number_precision"),
        "{warned:?}"
    );
    let mut warned_keys: Vec<&str> = warned.iter().map(|r| &r[1]).collect();
    warned_keys.dedup();
    let lax_written = [(EXACT.len() + 1).to_string(), (EXACT.len() + 3).to_string()];
    assert_eq!(warned_keys, lax_written, "{warned:?}");

    // Every written number is exactly PostgreSQL's, in both columns, at both depths.
    let docs = w.docs("nums").await;
    assert_eq!(docs.len(), EXACT.len());
    let mut problems = Vec::new();
    for (id, column, path, pg_text) in pg_texts(&mut pg, "nums").await {
        let Some(doc) = docs.iter().find(|d| d.get_i32("_id").ok() == Some(id)) else {
            continue;
        };
        let got = at(doc, column, &path);
        if let Some(p) = exact_problem(&mut pg, got, &pg_text).await {
            problems.push(format!(
                "row {id} {column} {path}: PostgreSQL {pg_text}, got {p}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Signs of zero survive where PostgreSQL keeps them (json keeps its text; jsonb's numeric
    // has no negative zero).
    let zero_id = EXACT.iter().position(|n| *n == "-0.0").unwrap() as i32 + 1;
    let zero = docs
        .iter()
        .find(|d| d.get_i32("_id").ok() == Some(zero_id))
        .unwrap();
    assert_eq!(at(zero, "j", "n"), &Bson::Double(-0.0));
    assert!(at(zero, "j", "n").as_f64().unwrap().is_sign_negative());
    assert!(at(zero, "jb", "n").as_f64().unwrap().is_sign_positive());

    // With `lossy = "warn"` the others are the nearest double, as warned.
    let lax_docs = w.docs("nums_lax").await;
    assert_eq!(lax_docs.len(), EXACT.len() + 2);
    for (id, column, path, pg_text) in pg_texts(&mut pg, "nums_lax").await {
        if !lax_written.contains(&id.to_string()) {
            continue;
        }
        let doc = lax_docs
            .iter()
            .find(|d| d.get_i32("_id").ok() == Some(id))
            .unwrap();
        let nearest: f64 = pg_text.parse().unwrap();
        assert_eq!(
            at(doc, column, &path),
            &Bson::Double(nearest),
            "row {id} {column} {path}"
        );
    }

    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.drop().await;
}

/// Appwrite has no object columns: a JSON value is stored as the relaxed extended JSON text of the
/// exact document (Decimal128 as `{"$numberDecimal": …}`, doubles in their shortest text), so its
/// numbers are as exact as MongoDB's.
#[tokio::test]
async fn json_numbers_stay_exact_in_appwrite_json_text() {
    let w = World::new("json_numbers_aw").await;
    w.sql(&schema()).await;
    let pipeline = write_files(&w);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let docs = w.docs("nums").await;

    let key = "test-key-1";
    let s = Arc::new(appwrite_standin::StandIn::new("cutover", key));
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let mut cmd = w.cutover();
    cmd.env("APPWRITE_ENDPOINT", format!("http://{addr}/v1"))
        .env("APPWRITE_PROJECT", "cutover")
        .env("APPWRITE_API_KEY", key)
        .env("APPWRITE_DATABASE", "nums")
        .args(["migrate", "--quiet", "--target", "appwrite", "--pipeline"])
        .arg(&pipeline);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let rows = s.rows("nums", "nums");
    assert_eq!(rows.len(), EXACT.len());
    for doc in &docs {
        let id = doc.get_i32("_id").unwrap().to_string();
        let row = rows
            .iter()
            .find(|r| r["$id"] == id.as_str())
            .unwrap_or_else(|| panic!("row {id}"));
        for column in ["j", "jb"] {
            let expected = doc.get(column).unwrap().clone().into_relaxed_extjson();
            assert_eq!(
                row[column].as_str().unwrap(),
                expected.to_string(),
                "row {id} {column}"
            );
        }
    }
    let big = rows.iter().find(|r| r["$id"] == "2").unwrap();
    assert!(
        big["j"]
            .as_str()
            .unwrap()
            .contains(r#""n":{"$numberDecimal":"18446744073709551617"}"#),
        "{big}"
    );
    w.drop().await;
}
