//! The type matrix: one row per PostgreSQL type and edge value, into both targets. Every value is
//! classified — written exactly, rejected with a named rule, or written with a named warning —
//! and any other outcome fails the test. `check` names every reject and warning beforehand.
//! mappings/README.md carries the table ("What each type becomes").
//!
//! MongoDB values are compared with PostgreSQL's own rendering (tests/common/oracle.rs); the
//! Appwrite side checks each row's outcome and, for written rows, the column's JSON value.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::{Bson, Document};
use common::World;
use common::oracle::{Class, differs};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// (column, PostgreSQL type, oracle class).
const COLUMNS: &[(&str, &str, Class)] = &[
    ("i2", "smallint", Class::Int),
    ("i4", "integer", Class::Int),
    ("i8", "bigint", Class::Int),
    ("f4", "real", Class::Real),
    ("f8", "double precision", Class::Double),
    ("n", "numeric", Class::Numeric),
    ("t", "text", Class::Text),
    ("vc", "varchar(5)", Class::Text),
    ("ch", "char(4)", Class::Text),
    ("b", "boolean", Class::Int),
    ("u", "uuid", Class::Text),
    ("d", "date", Class::Instant),
    ("tz", "timestamptz", Class::Instant),
    ("ts", "timestamp", Class::Instant),
    ("tm", "time", Class::Text),
    ("iv", "interval", Class::Text),
    ("mo", "money", Class::Text),
    ("e", "mood", Class::Text),
    ("dm", "posint", Class::Int),
    ("rg", "int4range", Class::Text),
    // sqlx cannot describe multiranges: a table holding one is read through `::text`.
    ("mr", "int4multirange", Class::Text),
    ("ip", "inet", Class::Text),
    ("jb", "jsonb", Class::Json),
    ("by", "bytea", Class::Bytes),
];

/// (id, column, SQL literal, MongoDB outcome, Appwrite outcome): "exact", a reject rule, or
/// "warn:<rule>" (written with that warning).
const ROWS: &[(i32, &str, &str, &str, &str)] = &[
    (1, "i2", "-32768", "exact", "exact"),
    (2, "i4", "2147483647", "exact", "exact"),
    (3, "i8", "-9223372036854775808", "exact", "exact"),
    (4, "f4", "1e-45", "exact", "exact"),
    (5, "f4", "'-0'", "exact", "exact"),
    (6, "f4", "'NaN'", "exact", "appwrite_unrepresentable"),
    (7, "f8", "5e-324", "exact", "exact"),
    (8, "f8", "'-0'", "exact", "exact"),
    (9, "f8", "'-Infinity'", "exact", "appwrite_unrepresentable"),
    (10, "f8", "0.1", "exact", "exact"),
    (
        11,
        "n",
        "1234567890123456789012345678901234",
        "exact",
        "exact",
    ),
    (12, "n", "0.000100", "exact", "exact"),
    (
        13,
        "n",
        "12345678901234567890123456789012345",
        "decimal_precision",
        "decimal_precision",
    ),
    (
        14,
        "n",
        "0.12345678901234567890123456789012345678",
        "decimal_precision",
        "decimal_precision",
    ),
    (15, "n", "'NaN'", "exact", "exact"),
    // Small and scaled: Decimal128 prints them with an exponent, PostgreSQL does not (adv32 F1).
    (44, "n", "0.000000100000000", "exact", "exact"),
    (45, "n", "-0.000000000000001", "exact", "exact"),
    (46, "n", "0.000000000000000", "exact", "exact"),
    (47, "n", "1.5E+20", "exact", "exact"),
    (16, "t", "'emoji 🎉 and \"quotes\"'", "exact", "exact"),
    (17, "t", "''", "exact", "exact"),
    (18, "vc", "'abc'", "exact", "exact"),
    (19, "ch", "'ab'", "exact", "exact"),
    (20, "b", "true", "exact", "exact"),
    (
        21,
        "u",
        "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
        "exact",
        "exact",
    ),
    (
        22,
        "d",
        "'4713-01-01 BC'",
        "exact",
        "appwrite_unrepresentable",
    ),
    (
        23,
        "d",
        "'10000-01-01'",
        "exact",
        "appwrite_unrepresentable",
    ),
    (
        24,
        "d",
        "'infinity'",
        "date_out_of_range",
        "date_out_of_range",
    ),
    (25, "d", "'2024-02-29'", "exact", "exact"),
    (26, "tz", "'2024-01-01 00:00:00.123+00'", "exact", "exact"),
    (
        27,
        "tz",
        "'2024-01-01 00:00:00.123456+00'",
        "timestamp_precision",
        "timestamp_precision",
    ),
    (
        28,
        "tz",
        "'-infinity'",
        "date_out_of_range",
        "date_out_of_range",
    ),
    (29, "ts", "'1999-12-31 23:59:59.999'", "exact", "exact"),
    (30, "tm", "'12:34:56.789'", "exact", "exact"),
    (31, "iv", "'1 day 02:03:04'", "exact", "exact"),
    (32, "mo", "'1234.56'", "exact", "exact"),
    (33, "e", "'happy'", "exact", "exact"),
    (34, "dm", "5", "exact", "exact"),
    (35, "rg", "'[1,10)'", "exact", "exact"),
    (36, "ip", "'192.168.0.1/24'", "exact", "exact"),
    (42, "mr", "'{[1,3),[5,7)}'", "exact", "exact"),
    (43, "mr", "'{}'", "exact", "exact"),
    // A host: PostgreSQL shows no /32 (its `::text` cast would add it).
    (41, "ip", "'10.0.0.1'", "exact", "exact"),
    (
        37,
        "jb",
        r#"'{"a": [1, 2.5, null], "b": {"c": "d"}}'"#,
        "exact",
        "exact",
    ),
    (38, "by", r"'\x00ff10'", "exact", "exact"),
    (39, "by", r"'\x'", "exact", "exact"),
    (
        40,
        "by",
        r"'\x000102030405060708090a0b0c0d0e0f'",
        "exact",
        "exact",
    ),
];

fn class_of(col: &str) -> Class {
    COLUMNS.iter().find(|c| c.0 == col).unwrap().2
}

fn schema() -> String {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(c, ty, _)| format!("{c} {ty}"))
        .collect();
    let mut sql = String::from(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');\nCREATE DOMAIN posint AS integer CHECK (VALUE > 0);\n",
    );
    sql.push_str(&format!(
        "CREATE TABLE types (id int PRIMARY KEY, {});\n",
        cols.join(", ")
    ));
    for (id, col, lit, _, _) in ROWS {
        let ty = COLUMNS.iter().find(|c| c.0 == *col).unwrap().1;
        sql.push_str(&format!(
            "INSERT INTO types (id, {col}) VALUES ({id}, CAST({lit} AS {ty}));\n"
        ));
    }
    sql
}

fn mapping() -> String {
    let mut m = String::from(
        "version = 1\nname = \"types\"\n[source]\ntable = \"types\"\nkey = [\"id\"]\n[options]\nuuid = \"string\"\n",
    );
    for (c, _, _) in COLUMNS {
        m.push_str(&format!("[[field]]\npath = \"{c}\"\ncolumn = \"{c}\"\n"));
        if *c == "ts" {
            m.push_str("timezone = \"UTC\"\n");
        }
    }
    m
}

fn write_files(w: &World) -> std::path::PathBuf {
    common::one_entity_pipeline(w, "types", &mapping())
}

use common::output_text as text;

/// The outcome of every row per the run's rejects and warnings files.
fn outcomes(w: &World) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for run in std::fs::read_dir(w.dir.path().join("rejects")).unwrap() {
        let dir = run.unwrap().path();
        for (file, prefix) in [("types.csv", ""), ("types.warnings.csv", "warn:")] {
            let Ok(mut r) = csv::Reader::from_path(dir.join(file)) else {
                continue;
            };
            for rec in r.records() {
                let rec = rec.unwrap();
                out.insert(rec[1].parse().unwrap(), format!("{prefix}{}", &rec[3]));
            }
        }
    }
    out
}

fn expected(target: usize) -> BTreeMap<i32, String> {
    ROWS.iter()
        .map(|r| (r.0, if target == 0 { r.3 } else { r.4 }))
        .filter(|(_, o)| *o != "exact")
        .map(|(id, o)| (id, o.to_string()))
        .collect()
}

/// Every reject and warning rule is in `check`'s findings.
fn assert_check_names(out: &std::process::Output, target: usize) {
    let findings = String::from_utf8_lossy(&out.stdout);
    for (_, rule) in expected(target) {
        let rule = rule.trim_start_matches("warn:");
        assert!(
            findings.contains(rule),
            "check misses {rule}: {}",
            text(out)
        );
    }
}

#[tokio::test]
async fn every_type_lands_exactly_in_mongodb_or_is_rejected_or_warned_by_name() {
    let w = World::new("type_matrix").await;
    w.sql(&schema()).await;
    let pipeline = write_files(&w);
    let check = w
        .cutover()
        .args(["check", "--json", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_check_names(&check, 0);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(outcomes(&w), expected(0));

    let docs: BTreeMap<i32, Document> = w
        .docs("types")
        .await
        .into_iter()
        .map(|d| (d.get_i32("_id").unwrap(), d))
        .collect();
    let mut c = PgConnection::connect(&w.pg_url).await.unwrap();
    let mut problems = Vec::new();
    for (id, col, lit, outcome, _) in ROWS {
        if *outcome != "exact" && !outcome.starts_with("warn:") {
            assert!(!docs.contains_key(id), "row {id} was written");
            continue;
        }
        let got = docs[id].get(*col).unwrap_or(&Bson::Null);
        let pg: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT {} FROM types WHERE id = $1",
            class_of(col).render(col)
        )))
        .bind(id)
        .fetch_one(&mut c)
        .await
        .unwrap();
        if let Some(why) = differs(&mut c, class_of(col), got, pg.as_deref()).await {
            problems.push(format!("row {id} {col} {lit}: {why}"));
        }
        // Only the row's own column is set.
        let others = docs[id].keys().filter(|k| *k != "_id" && *k != col).count();
        if others != 0 {
            problems.push(format!("row {id}: {others} other fields in {}", docs[id]));
        }
    }
    // -0 keeps its sign.
    assert!(docs[&8].get_f64("f8").unwrap().is_sign_negative());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let _ = c.close().await;
    w.drop().await;
}

#[tokio::test]
async fn every_type_lands_in_appwrite_or_is_rejected_by_name() {
    let w = World::new("type_matrix_aw").await;
    w.sql(&schema()).await;
    let pipeline = write_files(&w);
    let key = "test-key-1";
    let s = Arc::new(appwrite_standin::StandIn::new("cutover", key));
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = w.cutover();
        cmd.env("APPWRITE_ENDPOINT", format!("http://{addr}/v1"))
            .env("APPWRITE_PROJECT", "cutover")
            .env("APPWRITE_API_KEY", key)
            .env("APPWRITE_DATABASE", "types")
            .args(args)
            .args(["--target", "appwrite", "--pipeline"])
            .arg(&pipeline);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let check = run(&["check", "--json"]).await.unwrap();
    assert_check_names(&check, 1);
    let out = run(&["migrate", "--quiet"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(outcomes(&w), expected(1));
    let rows = s.rows("types", "types");
    let row = |id: i32| {
        rows.iter()
            .find(|r| r["$id"] == id.to_string().as_str())
            .unwrap_or_else(|| panic!("row {id}"))
            .clone()
    };
    use serde_json::json;
    assert_eq!(row(3)["i8"], json!(i64::MIN));
    assert_eq!(row(11)["n"], json!("1234567890123456789012345678901234"));
    assert_eq!(row(12)["n"], json!("0.000100"));
    // Every numeric as PostgreSQL's own text of it (adv32 F1: `1.00000000E-7`).
    let mut c = PgConnection::connect(&w.pg_url).await.unwrap();
    for (id, col, lit, _, outcome) in ROWS {
        if *col != "n" || *outcome != "exact" {
            continue;
        }
        let pg: String = sqlx::query_scalar("SELECT n::text FROM types WHERE id = $1")
            .bind(id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(row(*id)["n"], json!(pg), "row {id}: {lit}");
    }
    let _ = c.close().await;
    assert_eq!(row(19)["ch"], json!("ab  "));
    assert_eq!(row(34)["dm"], json!(5));
    assert_eq!(row(10)["f8"], json!(0.1));
    // bytea is binary, also at 16 bytes (not a uuid's text): extended JSON of its base64.
    assert_eq!(
        row(38)["by"],
        json!(r#"{"$binary":{"base64":"AP8Q","subType":"00"}}"#)
    );
    assert_eq!(
        row(40)["by"],
        json!(r#"{"$binary":{"base64":"AAECAwQFBgcICQoLDA0ODw==","subType":"00"}}"#)
    );
    w.drop().await;
}
