//! Arrays of every element type become arrays, each element converted like the scalar of its type:
//! multi-dimensional arrays nest, NULL elements stay NULL (MongoDB) or reject the row (Appwrite's
//! array columns hold none), and an array whose indexes do not start at 1 is rejected
//! (`array_lower_bound`) rather than shifted. `check` finds every reject beforehand.
//!
//! The oracle is PostgreSQL: each element's own rendering (`::text`, `encode(…, 'hex')`, epoch
//! milliseconds) fetched with `unnest`, compared with what lands in MongoDB by code written here,
//! not by cutover's converter.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::{Bson, Document};
use common::World;
use common::oracle::{Class, differs};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// (id, column, array literal, outcome in MongoDB, outcome in Appwrite). An outcome is "exact"
/// or the rule that rejects the row.
const ROWS: &[(i32, &str, &str, &str, &str)] = &[
    (1, "b", "{true,false}", "exact", "exact"),
    (2, "i2", "{-32768,32767}", "exact", "exact"),
    (3, "i4", "{1,NULL,3}", "exact", "appwrite_unrepresentable"),
    (
        4,
        "i8",
        "{-9223372036854775808,9223372036854775807}",
        "exact",
        "exact",
    ),
    (5, "f4", "{0.1,21.35,1e-45,-0}", "exact", "exact"),
    (
        6,
        "f8",
        "{NaN,Infinity,-Infinity}",
        "exact",
        "appwrite_unrepresentable",
    ),
    (
        7,
        "f8",
        "{0.1,5e-324,1.7976931348623157e308}",
        "exact",
        "exact",
    ),
    (
        8,
        "n",
        "{1.50,-0.000001,12345678901234567890.123456789}",
        "exact",
        "exact",
    ),
    (
        9,
        "t",
        r#"{"a,b","",NULL,"q\"uote","日本"}"#,
        "exact",
        "appwrite_unrepresentable",
    ),
    (10, "t", r#"{"a,b","","q\"uote","日本"}"#, "exact", "exact"),
    (
        11,
        "u",
        "{00000000-0000-0000-0000-000000000001,ffffffff-ffff-ffff-ffff-ffffffffffff}",
        "exact",
        "exact",
    ),
    (12, "d", "{2024-02-29,1970-01-01}", "exact", "exact"),
    (
        13,
        "d",
        "{2024-02-29,infinity}",
        "date_out_of_range",
        "date_out_of_range",
    ),
    (
        14,
        "tz",
        "{2024-01-01 00:00:00.123+00,1969-12-31 23:59:59.999+00}",
        "exact",
        "exact",
    ),
    (15, "ts", "{2024-01-01 12:00:00.5}", "exact", "exact"),
    (16, "j", r#"{"{\"a\": 1}","[1, 2.5]"}"#, "exact", "exact"),
    (17, "by", r#"{"\\x00ff","\\x"}"#, "exact", "exact"),
    (
        18,
        "i4",
        "[0:1]={1,2}",
        "array_lower_bound",
        "array_lower_bound",
    ),
    (
        19,
        "i4",
        "{{1,2},{3,4}}",
        "exact",
        "appwrite_unrepresentable",
    ),
    (20, "i4", "{}", "exact", "exact"),
    (21, "e", "{happy,sad}", "exact", "exact"),
    (22, "iv", r#"{"1 day","02:00:00"}"#, "exact", "exact"),
    (23, "n", "{NaN}", "exact", "exact"),
    (
        24,
        "b",
        "{{true},{false}}",
        "exact",
        "appwrite_unrepresentable",
    ),
];

/// Column → (PostgreSQL type, how an element renders for the oracle and lands).
const COLUMNS: &[(&str, &str, Class)] = &[
    ("b", "boolean[]", Class::Int),
    ("i2", "smallint[]", Class::Int),
    ("i4", "integer[]", Class::Int),
    ("i8", "bigint[]", Class::Int),
    ("f4", "real[]", Class::Real),
    ("f8", "double precision[]", Class::Double),
    ("n", "numeric[]", Class::Numeric),
    ("t", "text[]", Class::Text),
    ("u", "uuid[]", Class::Text),
    ("d", "date[]", Class::Instant),
    ("tz", "timestamptz[]", Class::Instant),
    ("ts", "timestamp[]", Class::Instant),
    ("j", "jsonb[]", Class::Json),
    ("by", "bytea[]", Class::Bytes),
    ("e", "mood[]", Class::Text),
    ("iv", "interval[]", Class::Text),
];

fn class_of(col: &str) -> Class {
    COLUMNS.iter().find(|c| c.0 == col).unwrap().2
}

fn schema() -> String {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|(c, ty, _)| format!("{c} {ty}"))
        .collect();
    let mut sql = format!(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');\nCREATE TABLE arrs (id int PRIMARY KEY, {});\n",
        cols.join(", ")
    );
    for (id, col, lit, _, _) in ROWS {
        let ty = COLUMNS.iter().find(|c| c.0 == *col).unwrap().1;
        let lit = lit.replace('\'', "''");
        sql.push_str(&format!(
            "INSERT INTO arrs (id, {col}) VALUES ({id}, '{lit}'::{ty});\n"
        ));
    }
    sql
}

fn mapping() -> String {
    let mut m = String::from(
        "version = 1\nname = \"arrs\"\n[source]\ntable = \"arrs\"\nkey = [\"id\"]\n[options]\nuuid = \"string\"\n",
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
    common::one_entity_pipeline(w, "arrs", &mapping())
}

use common::output_text as text;

/// (source key, rule) of every row in the run's rejects files.
fn rejects(w: &World) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for run in std::fs::read_dir(w.dir.path().join("rejects")).unwrap() {
        let path = run.unwrap().path().join("arrs.csv");
        let Ok(mut r) = csv::Reader::from_path(&path) else {
            continue;
        };
        for rec in r.records() {
            let rec = rec.unwrap();
            out.insert(rec[1].parse().unwrap(), rec[3].to_string());
        }
    }
    out
}

/// Each element of the row's array, flattened in row-major order, as PostgreSQL renders it
/// (`None` for NULL).
async fn pg_elements(c: &mut PgConnection, id: i32, col: &str) -> Vec<Option<String>> {
    let render = class_of(col).render("x");
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT {render} FROM arrs, unnest({col}) WITH ORDINALITY AS u(x, ord) WHERE id = $1 ORDER BY ord"
    )))
    .bind(id)
    .fetch_all(c)
    .await
    .unwrap()
}

fn flatten<'a>(b: &'a Bson, out: &mut Vec<&'a Bson>) {
    match b {
        Bson::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

#[tokio::test]
async fn arrays_of_every_element_type_land_exactly_in_mongodb_or_reject_with_their_rule() {
    let w = World::new("array_types").await;
    w.sql(&schema()).await;
    let pipeline = write_files(&w);

    // check finds every reject beforehand, with its rule.
    let check = w
        .cutover()
        .args(["check", "--json", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&check.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&check)));
    let findings = report.to_string();
    for (_, _, _, rule, _) in ROWS.iter().filter(|r| r.3 != "exact") {
        assert!(findings.contains(rule), "check misses {rule}: {findings}");
    }

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let want_rejects: BTreeMap<i32, String> = ROWS
        .iter()
        .filter(|r| r.3 != "exact")
        .map(|r| (r.0, r.3.to_string()))
        .collect();
    assert_eq!(rejects(&w), want_rejects);

    let docs: BTreeMap<i32, Document> = w
        .docs("arrs")
        .await
        .into_iter()
        .map(|d| (d.get_i32("_id").unwrap(), d))
        .collect();
    let mut c = PgConnection::connect(&w.pg_url).await.unwrap();
    let mut problems = Vec::new();
    for (id, col, lit, outcome, _) in ROWS {
        if *outcome != "exact" {
            assert!(!docs.contains_key(id), "row {id} was written");
            continue;
        }
        let doc = &docs[id];
        let got = doc
            .get(*col)
            .unwrap_or_else(|| panic!("row {id} has no {col}"));
        assert!(
            matches!(got, Bson::Array(_)),
            "row {id}: {got} is not an array"
        );
        let mut flat = Vec::new();
        match got {
            // A jsonb[]'s elements are JSON values (arrays among them), not dimensions.
            Bson::Array(items) if *col == "j" => flat.extend(items.iter()),
            _ => flatten(got, &mut flat),
        }
        let pg = pg_elements(&mut c, *id, col).await;
        if flat.len() != pg.len() {
            problems.push(format!(
                "row {id} {col} {lit}: {got} has {} elements, PostgreSQL {}",
                flat.len(),
                pg.len()
            ));
            continue;
        }
        for (g, p) in flat.iter().zip(&pg) {
            if let Some(why) = differs(&mut c, class_of(col), g, p.as_deref()).await {
                problems.push(format!("row {id} {col} {lit}: {why}"));
            }
        }
    }
    // Two dimensions nest as PostgreSQL's dimensions do.
    assert_eq!(docs[&19].get_array("i4").unwrap().len(), 2);
    assert_eq!(
        docs[&19].get("i4").unwrap(),
        &Bson::Array(vec![
            Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)]),
            Bson::Array(vec![Bson::Int32(3), Bson::Int32(4)])
        ])
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let _ = c.close().await;
    w.drop().await;
}

#[tokio::test]
async fn arrays_into_appwrite_are_columns_of_their_type_and_what_none_holds_is_rejected() {
    let w = World::new("array_types_aw").await;
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
            .env("APPWRITE_DATABASE", "arrs")
            .args(args)
            .args(["--target", "appwrite", "--pipeline"])
            .arg(&pipeline);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let check = run(&["check", "--json"]).await.unwrap();
    let findings = String::from_utf8_lossy(&check.stdout).to_string();
    for (_, _, _, _, rule) in ROWS.iter().filter(|r| r.4 != "exact") {
        assert!(
            findings.contains(rule),
            "check misses {rule}: {}",
            text(&check)
        );
    }
    let out = run(&["migrate", "--quiet"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let want: BTreeMap<i32, String> = ROWS
        .iter()
        .filter(|r| r.4 != "exact")
        .map(|r| (r.0, r.4.to_string()))
        .collect();
    assert_eq!(rejects(&w), want);
    let rows = s.rows("arrs", "arrs");
    assert_eq!(rows.len(), ROWS.len() - want.len());
    let row = |id: i32| {
        rows.iter()
            .find(|r| r["$id"] == id.to_string().as_str())
            .unwrap_or_else(|| panic!("row {id}"))
            .clone()
    };
    assert_eq!(row(2)["i2"], serde_json::json!([-32768, 32767]));
    assert_eq!(row(4)["i8"], serde_json::json!([i64::MIN, i64::MAX]));
    assert_eq!(
        row(10)["t"],
        serde_json::json!(["a,b", "", "q\"uote", "日本"])
    );
    assert_eq!(row(21)["e"], serde_json::json!(["happy", "sad"]));
    assert_eq!(row(20)["i4"], serde_json::json!([]));
    assert_eq!(
        row(8)["n"],
        serde_json::json!(["1.50", "-0.000001", "12345678901234567890.123456789"])
    );
    w.drop().await;
}

/// Issue #11: an array of a domain (`posint[]`, a `numeric(12,2)` domain, a timestamptz domain, a
/// jsonb domain, a domain of a domain) converts as an array of the domain's base type, as a
/// column of the domain itself does — it used to arrive as an array of strings — and verify
/// compares it independently.
#[tokio::test]
async fn arrays_of_domains_convert_as_arrays_of_their_base_type() {
    let w = World::new("array_domains").await;
    w.sql(
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE DOMAIN small_posint AS posint CHECK (VALUE < 100);
         CREATE DOMAIN money2 AS numeric(12,2);
         CREATE DOMAIN ts_d AS timestamptz;
         CREATE DOMAIN js AS jsonb;
         CREATE TABLE doms (id int PRIMARY KEY, pi posint[], sp small_posint[], ma money2[],
                            td ts_d[], ja js[], m money2);
         INSERT INTO doms VALUES (1, '{1,2,3}', '{{7},{8}}', '{1.10,2}',
           '{2024-01-01 00:00:00.123+00}', ARRAY['{\"b\": 2.5}'::js, '[1]'::js], 10.5);",
    )
    .await;
    let mut mapping =
        String::from("version = 1\nname = \"doms\"\n[source]\ntable = \"doms\"\nkey = [\"id\"]\n");
    for c in ["pi", "sp", "ma", "td", "ja", "m"] {
        mapping.push_str(&format!("[[field]]\npath = \"{c}\"\ncolumn = \"{c}\"\n"));
    }
    let pipeline = common::one_entity_pipeline(&w, "doms", &mapping);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let docs = w.docs("doms").await;
    let d = &docs[0];
    let dec = |s: &str| Bson::Decimal128(s.parse().unwrap());
    assert_eq!(
        d.get("pi").unwrap(),
        &Bson::Array(vec![Bson::Int32(1), Bson::Int32(2), Bson::Int32(3)])
    );
    assert_eq!(
        d.get("sp").unwrap(),
        &Bson::Array(vec![
            Bson::Array(vec![Bson::Int32(7)]),
            Bson::Array(vec![Bson::Int32(8)])
        ])
    );
    assert_eq!(
        d.get("ma").unwrap(),
        &Bson::Array(vec![dec("1.10"), dec("2.00")])
    );
    assert_eq!(d.get("m").unwrap(), &dec("10.50"));
    assert_eq!(
        d.get("td").unwrap(),
        &Bson::Array(vec![Bson::DateTime(bson::DateTime::from_millis(
            1_704_067_200_123
        ))])
    );
    assert_eq!(
        d.get("ja").unwrap(),
        &Bson::Array(vec![
            Bson::Document(bson::doc! { "b": 2.5 }),
            Bson::Array(vec![Bson::Int32(1)])
        ])
    );

    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let out_text = text(&out);
    assert_eq!(out.status.code(), Some(0), "{out_text}");
    assert!(
        out_text.contains("compared independently with PostgreSQL's own values (1 documents): pi, sp, ma, td, ja, m"),
        "{out_text}"
    );
    assert!(
        !out_text.contains("not compared independently"),
        "{out_text}"
    );
    w.drop().await;
}
