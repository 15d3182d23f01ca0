//! Source values at the edges of PostgreSQL's types never stop the tool: `check`, `migrate` and
//! `verify` reject each such row with its rule and key, and write the others exactly.

mod common;

use bson::{Bson, doc};
use common::World;

const SCHEMA: &str = r#"
CREATE TABLE moments (id int PRIMARY KEY, day date, local timestamp, at timestamptz);
INSERT INTO moments VALUES
  (1, '2021-03-04', '2021-03-04 05:06:07', '2021-03-04 05:06:07+00'),
  (2, 'infinity', NULL, NULL),
  (3, '-infinity', NULL, NULL),
  (4, '4714-11-24 BC', NULL, NULL),
  (5, '5874897-12-31', NULL, NULL),
  (6, NULL, 'infinity', NULL),
  (7, NULL, '-infinity', NULL),
  (8, NULL, '294276-12-31 00:00:00', NULL),
  (9, NULL, '4714-11-24 00:00:00 BC', NULL),
  (10, NULL, NULL, 'infinity'),
  (11, NULL, NULL, '-infinity'),
  (12, NULL, NULL, '294276-12-31 00:00:00+00'),
  (13, NULL, NULL, '4714-11-24 00:00:00+00 BC'),
  (14, NULL, NULL, NULL);
"#;

const MAPPING: &str = r#"
version = 1
name = "moments"
[source]
table = "moments"
key = ["id"]
[[field]]
path = "day"
column = "day"
[[field]]
path = "local"
column = "local"
timezone = "UTC"
[[field]]
path = "at"
column = "at"
"#;

const PIPELINE: &str = r#"
version = 1
name = "moments"
mappings_dir = "mappings"
[[stage]]
name = "all"
entities = ["moments"]
"#;

fn write_files(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/moments.toml"), MAPPING).unwrap();
    std::fs::write(dir.join("moments.toml"), PIPELINE).unwrap();
    dir.join("moments.toml")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn first_day_millis() -> i64 {
    chrono::NaiveDate::from_ymd_opt(-4713, 11, 24)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

#[tokio::test]
async fn infinite_and_far_dates_are_rejected_with_their_key_not_a_panic() {
    let w = World::new("edge_dates").await;
    w.sql(SCHEMA).await;
    let pipeline = write_files(&w);
    let bad = ["2", "3", "5", "6", "7", "8", "10", "11", "12"];

    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(101), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let findings: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "date_out_of_range")
        .collect();
    let mut by_column: Vec<(String, u64, String)> = findings
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
                f["example_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_column.sort();
    assert_eq!(
        by_column,
        [
            ("at".to_string(), 3, "10".to_string()),
            ("day".to_string(), 3, "2".to_string()),
            ("local".to_string(), 3, "6".to_string()),
        ],
        "{report}"
    );

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let rejects = w.rejects(run_id);
    let mut keys: Vec<&str> = rejects.iter().map(|r| r.1.as_str()).collect();
    keys.sort_by_key(|k| k.parse::<u32>().unwrap());
    assert_eq!(keys, bad, "{rejects:?}");
    assert!(
        rejects.iter().all(|(e, _, stage, rule)| e == "moments"
            && stage == "transform"
            && rule == "date_out_of_range"),
        "{rejects:?}"
    );

    let docs = w.docs("moments").await;
    let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, [1, 4, 9, 13, 14]);
    let at = |ms: i64| Bson::DateTime(bson::DateTime::from_millis(ms));
    assert_eq!(
        docs[0],
        doc! {
            "_id": 1,
            "day": at(1_614_816_000_000),
            "local": at(1_614_834_367_000),
            "at": at(1_614_834_367_000),
        }
    );
    assert_eq!(docs[1], doc! { "_id": 4, "day": at(first_day_millis()) });
    assert_eq!(docs[2], doc! { "_id": 9, "local": at(first_day_millis()) });
    assert_eq!(docs[3], doc! { "_id": 13, "at": at(first_day_millis()) });
    assert_eq!(docs[4], doc! { "_id": 14 });

    let out_path = w.dir.path().join("verify.json");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .arg("-o")
        .arg(&out_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    w.drop().await;
}

const JSON_SCHEMA: &str = r#"
CREATE TABLE notes (id int PRIMARY KEY, j json, jb jsonb);
INSERT INTO notes VALUES
  (1, 'null', 'null'),
  (2, NULL, NULL),
  (3, '{"a": 1}', '{"a": 1}'),
  (4, '{"a": 1, "a": 2}', '{"a": 1, "a": 2}');
CREATE TABLE notes_lax AS SELECT * FROM notes;
ALTER TABLE notes_lax ADD PRIMARY KEY (id);
CREATE TABLE notes_keep AS SELECT id, j, jb, ARRAY[jb, NULL] AS ja FROM notes WHERE id < 4;
ALTER TABLE notes_keep ADD PRIMARY KEY (id);
"#;

/// The JSON null and the SQL NULL alike in the target: `nulls = "keep"`, and an array's NULL
/// element (adv41 F1) — written, with a warning (`json_null`).
const JSON_KEEP_MAPPING: &str = r#"
version = 1
name = "notes_keep"
[source]
table = "notes_keep"
key = ["id"]
[options]
nulls = "keep"
[[field]]
path = "jb"
column = "jb"
[[field]]
path = "ja"
column = "ja"
"#;

const JSON_MAPPING: &str = r#"
version = 1
name = "notes"
[source]
table = "notes"
key = ["id"]
[options]
nulls = "omit"
[[field]]
path = "j"
column = "j"
[[field]]
path = "jb"
column = "jb"
"#;

/// The same rows, the `json` column's rules warnings.
const JSON_LAX_MAPPING: &str = r#"
version = 1
name = "notes_lax"
[source]
table = "notes_lax"
key = ["id"]
[[field]]
path = "j"
column = "j"
validate = { severity = "warning" }
[[field]]
path = "jb"
column = "jb"
"#;

const JSON_PIPELINE: &str = r#"
version = 1
name = "notes"
mappings_dir = "mappings"
[[stage]]
name = "all"
entities = ["notes", "notes_lax", "notes_keep"]
"#;

#[tokio::test]
async fn a_json_null_is_written_where_an_sql_null_is_omitted_and_json_keys_given_twice_are_caught()
{
    let w = World::new("json_null").await;
    w.sql(JSON_SCHEMA).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/notes.toml"), JSON_MAPPING).unwrap();
    std::fs::write(dir.join("mappings/notes_lax.toml"), JSON_LAX_MAPPING).unwrap();
    std::fs::write(dir.join("mappings/notes_keep.toml"), JSON_KEEP_MAPPING).unwrap();
    std::fs::write(dir.join("notes.toml"), JSON_PIPELINE).unwrap();
    let out = w.migrate_with(&dir.join("notes.toml"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let expected = [
        doc! { "_id": 1, "j": Bson::Null, "jb": Bson::Null },
        doc! { "_id": 2 },
        doc! { "_id": 3, "j": { "a": 1 }, "jb": { "a": 1 } },
    ];
    assert_eq!(w.docs("notes").await, expected);
    // jsonb kept the last value on input; the json column's text still has both.
    let mut lax = expected.to_vec();
    lax.push(doc! { "_id": 4, "j": { "a": 2 }, "jb": { "a": 2 } });
    assert_eq!(w.docs("notes_lax").await, lax);

    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let one = |entity: &str, rule: &str| {
        vec![(
            entity.to_string(),
            "4".to_string(),
            "transform".to_string(),
            rule.to_string(),
        )]
    };
    assert_eq!(w.rejects(run_id), one("notes", "json_duplicate_key"));
    let mut warnings = w.warnings(run_id);
    warnings.sort();
    let line = |key: &str, rule: &str, entity: &str| {
        (
            entity.to_string(),
            key.to_string(),
            "transform".to_string(),
            rule.to_string(),
        )
    };
    // Row 1's jb (a JSON null, nulls keep) and ja (its JSON null element beside a NULL one);
    // row 2's ja holds two SQL NULLs, row 3's none: no warning.
    assert_eq!(
        warnings,
        [
            line("1", "json_null", "notes_keep"),
            line("1", "json_null", "notes_keep"),
            line("4", "json_duplicate_key", "notes_lax"),
        ]
    );
    assert_eq!(
        w.docs("notes_keep").await,
        [
            doc! { "_id": 1, "jb": Bson::Null, "ja": [Bson::Null, Bson::Null] },
            doc! { "_id": 2, "jb": Bson::Null, "ja": [Bson::Null, Bson::Null] },
            doc! { "_id": 3, "jb": { "a": 1 }, "ja": [{ "a": 1 }, Bson::Null] },
        ]
    );
    w.drop().await;
}

/// A bytea column becomes binary, or base64 / hex text when the mapping says so; `type =
/// "string"` on it is refused before the run (it has no exact text).
#[tokio::test]
async fn bytea_is_binary_or_base64_or_hex_and_never_a_placeholder() {
    let w = World::new("bytea").await;
    w.sql(
        "CREATE TABLE blobs (id int PRIMARY KEY, b bytea);
         INSERT INTO blobs VALUES (1, '\\x0001feff61'), (2, ''), (3, NULL);",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    let mapping = |ty: &str| {
        format!(
            "version = 1\nname = \"blobs\"\n[source]\ntable = \"blobs\"\nkey = [\"id\"]\n[[field]]\npath = \"raw\"\ncolumn = \"b\"\n[[field]]\npath = \"text\"\ncolumn = \"b\"\n{ty}\n"
        )
    };
    std::fs::write(
        dir.join("pipeline.toml"),
        "version = 1\nname = \"blobs\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"s\"\nentities = [\"blobs\"]\n",
    )
    .unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        dir.join("mappings/blobs.toml"),
        mapping("type = \"string\""),
    )
    .unwrap();
    let out = w
        .cutover()
        .args(["plan", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("base64") && text.contains("bytea"), "{text}");
    for (ty, expected) in [("base64", "AAH+/2E="), ("hex", "0001feff61")] {
        std::fs::write(
            dir.join("mappings/blobs.toml"),
            mapping(&format!("type = \"{ty}\"")),
        )
        .unwrap();
        let out = w.migrate_with(&pipeline, &["--rerun"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = w.docs("blobs").await;
        assert_eq!(docs[0].get_str("text").unwrap(), expected, "{ty}");
        assert_eq!(docs[1].get_str("text").unwrap(), "", "{ty}");
        match docs[0].get("raw").unwrap() {
            bson::Bson::Binary(b) => assert_eq!(b.bytes, vec![0, 1, 0xfe, 0xff, b'a']),
            other => panic!("raw is {other}"),
        }
    }
    w.drop().await;
}

/// A child row that cannot be decoded rejects its parent (the document would lack it), with the
/// child's rule and the embed's path; the stage goes on, and verify agrees with the run.
#[tokio::test]
async fn a_child_row_with_an_infinite_date_rejects_its_parent_not_the_stage() {
    let w = World::new("edge_child_dates").await;
    w.sql(
        "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE visits (id int PRIMARY KEY, person_id int NOT NULL REFERENCES people, day date);
         INSERT INTO people SELECT g, 'p' || g FROM generate_series(1, 50) g;
         INSERT INTO visits SELECT g, 1 + g % 50, DATE '2024-01-01' + g FROM generate_series(1, 200) g;
         UPDATE visits SET day = 'infinity' WHERE id IN (7, 8, 120);
         UPDATE visits SET day = '-infinity' WHERE id = 49;",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/people.toml"),
        r#"
version = 1
name = "people"
[source]
table = "people"
key = ["id"]
[[field]]
path = "name"
column = "name"
[[embed]]
path = "visits"
table = "visits"
foreign_key = "person_id"
order_by = ["id"]
[[embed.field]]
path = "day"
column = "day"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("people.toml"),
        "version = 1\nname = \"people\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"all\"\nentities = [\"people\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&dir.join("people.toml"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert_eq!(
        (
            e["read"].as_u64(),
            e["written"].as_u64(),
            e["rejected"].as_u64()
        ),
        (Some(50), Some(46), Some(4)),
        "{report}"
    );
    let rejects = w.rejects(report["run_id"].as_str().unwrap());
    // visits 7, 8 → people 8, 9; 120 → 21; 49 → 50 (person = 1 + visit % 50).
    let people: std::collections::BTreeSet<&str> = rejects.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        people,
        ["21", "50", "8", "9"].into_iter().collect(),
        "{rejects:?}"
    );
    assert!(
        rejects.iter().all(|r| r.3 == "date_out_of_range"),
        "{rejects:?}"
    );
    let docs = w.docs("people").await;
    assert_eq!(docs.len(), 46);
    assert!(
        docs.iter()
            .all(|d| ![8, 9, 21, 50].contains(&d.get_i32("_id").unwrap()))
    );
    // The others have every child: 200 visits less the 4 people's.
    let visits: usize = docs
        .iter()
        .map(|d| d.get_array("visits").unwrap().len())
        .sum();
    assert_eq!(visits, 200 - 4 * 4);
    // verify expects what the run wrote: the rejected parents are not missing.
    let out = w
        .cutover()
        .args(["verify", "--full", "--pipeline"])
        .arg(dir.join("people.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.drop().await;
}

/// Parents keyed by a date, one of them `infinity` and one `-infinity`, whose children's
/// foreign keys are those dates too: the two parents are rejected (`date_out_of_range`) and
/// their children go with them — a child whose foreign key cannot be decoded stopped the whole
/// entity (0 written). check predicts it, and verify agrees with the run.
#[tokio::test]
async fn children_of_an_infinite_date_key_go_with_their_rejected_parent() {
    let w = World::new("edge_child_date_keys").await;
    w.sql(
        "CREATE TABLE days (k date PRIMARY KEY, v int);
         CREATE TABLE notes (id serial PRIMARY KEY, dk date, val text);
         INSERT INTO days VALUES ('2024-01-01', 1), ('10000-01-01', 2), ('0045-03-15 BC', 3),
           ('infinity', 4), ('-infinity', 5), ('1970-01-01', 6);
         INSERT INTO notes (dk, val) SELECT k, 'n' || v || '/' || g FROM days, generate_series(1, 2) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "days",
        "version = 1\nname = \"days\"\n[source]\ntable = \"days\"\nkey = [\"k\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[embed]]\npath = \"notes\"\ntable = \"notes\"\nforeign_key = \"dk\"\norder_by = [\"id\"]\n\
         [[embed.field]]\npath = \"val\"\ncolumn = \"val\"\n",
    );
    let check = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        text(&check).contains("date_out_of_range"),
        "{}",
        text(&check)
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert_eq!(
        (
            e["read"].as_u64(),
            e["written"].as_u64(),
            e["rejected"].as_u64()
        ),
        (Some(6), Some(4), Some(2)),
        "{report}"
    );
    let docs = w.docs("days").await;
    assert_eq!(docs.len(), 4);
    for d in &docs {
        let v = d.get_i32("v").unwrap();
        let notes: Vec<&str> = d
            .get_array("notes")
            .unwrap()
            .iter()
            .map(|n| n.as_document().unwrap().get_str("val").unwrap())
            .collect();
        assert_eq!(notes, [format!("n{v}/1"), format!("n{v}/2")], "{d}");
    }
    let out = w
        .cutover()
        .args(["verify", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.drop().await;
}

/// `infinity = "null" | "string"` says what ±infinity becomes instead of a reject; a date past
/// the calendar (year 5874897) is still rejected, and `check` counts only what is left.
#[tokio::test]
async fn the_mapping_can_write_infinite_dates_as_null_or_as_their_text() {
    let w = World::new("edge_infinity").await;
    w.sql(SCHEMA).await;
    let pipeline = write_files(&w);
    let mapping = MAPPING
        .replace(
            "path = \"day\"\ncolumn = \"day\"",
            "path = \"day\"\ncolumn = \"day\"\ninfinity = \"string\"",
        )
        .replace(
            "path = \"at\"\ncolumn = \"at\"",
            "path = \"at\"\ncolumn = \"at\"\ninfinity = \"null\"\nnulls = \"keep\"",
        );
    assert_ne!(mapping, MAPPING);
    std::fs::write(w.dir.path().join("mappings/moments.toml"), &mapping).unwrap();

    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let mut counted: Vec<(String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "date_out_of_range")
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        [
            ("at".to_string(), 1),
            ("day".to_string(), 1),
            ("local".to_string(), 3)
        ],
        "{report}"
    );
    // adv35 F8: an infinity written as NULL was said nowhere — `check` counts it, as a warning.
    let nulled: Vec<(String, u64, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "infinity_null")
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
                f["severity"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        nulled,
        [("at".to_string(), 2, "warning".to_string())],
        "{report}"
    );

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let docs = w.docs("moments").await;
    let by_id = |id: i32| {
        docs.iter()
            .find(|d| d.get_i32("_id").unwrap() == id)
            .unwrap_or_else(|| panic!("document {id} in {docs:?}"))
    };
    assert_eq!(by_id(2).get_str("day").unwrap(), "infinity");
    assert_eq!(by_id(3).get_str("day").unwrap(), "-infinity");
    assert_eq!(by_id(10).get("at"), Some(&Bson::Null));
    assert_eq!(by_id(11).get("at"), Some(&Bson::Null));
    let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 9, 10, 11, 13, 14]);
    // … and each row so written is a line of the warnings file.
    let run = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let warned: Vec<_> = w
        .warnings(&run)
        .into_iter()
        .filter(|(_, _, _, rule)| rule == "infinity_null")
        .map(|(_, key, _, _)| key)
        .collect();
    assert_eq!(warned, ["10", "11"]);

    // verify's independent comparison knows what the mapping writes for an infinity: the
    // target passes, and an infinity written as the other one's text fails.
    let verify = || {
        w.cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.mongo()
        .await
        .collection::<bson::Document>("moments")
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "day": "-infinity" } })
        .await
        .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("writes this infinity as the text \"infinity\""),
        "{}",
        text(&out)
    );
    w.drop().await;
}

/// Numbers whose exponent is beyond a 64-bit integer (JSON values, text cast to a long) made
/// `check`, `migrate` and `verify` panic (an overflow) or build a string of 10^11 zeros: each
/// such row is rejected with its rule, counted by `check` beforehand, and nothing panics.
#[tokio::test]
async fn exponents_beyond_an_i64_are_rejected_not_a_panic() {
    let w = World::new("edge_exponents").await;
    w.sql(
        r#"CREATE TABLE nums (id int PRIMARY KEY, j json, t text);
        INSERT INTO nums VALUES
          (1, '123.456e-9223372036854775808', '1'),
          (2, '[10e9223372036854775807]', '2'),
          (3, '{"x": 1e99999999999999999999}', '3'),
          (4, '{"x": 0e99999999999999999999}', '4'),
          (5, '1', '1e100000000000'),
          (6, '1', '-1e9223372036854775807'),
          (7, '1', '12e17'),
          (8, '[1.5e3]', '9223372036854775807');"#,
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/nums.toml"),
        r#"version = 1
name = "nums"
[source]
table = "nums"
key = ["id"]
[[field]]
path = "j"
column = "j"
[[field]]
path = "t"
column = "t"
type = "long"
"#,
    )
    .unwrap();
    let pipeline = dir.join("nums.toml");
    std::fs::write(&pipeline, PIPELINE.replace("moments", "nums")).unwrap();

    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let mut counted = std::collections::BTreeMap::new();
    for f in report["findings"].as_array().unwrap() {
        if f["severity"] == "reject" {
            *counted
                .entry(f["rule"].as_str().unwrap().to_string())
                .or_insert(0u64) += f["rows"].as_u64().unwrap();
        }
    }

    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let mut rejected = std::collections::BTreeMap::new();
    let mut keys = Vec::new();
    for (_, key, _, rule) in w.rejects(run_id) {
        *rejected.entry(rule).or_insert(0u64) += 1;
        keys.push(key.parse::<u32>().unwrap());
    }
    keys.sort();
    // Row 7's `12e17` is no integer as PostgreSQL reads one (`'12e17'::int8` fails): rejected
    // like the others (adv41 F5; it was written as 1.2e18).
    assert_eq!(keys, [1, 2, 3, 5, 6, 7], "{report}");
    assert_eq!(rejected, counted, "check counts what the run rejects");
    let docs = w.docs("nums").await;
    let t_of = |id: i32| {
        docs.iter()
            .find(|d| d.get("_id") == Some(&Bson::Int32(id)))
            .and_then(|d| d.get("t").cloned())
    };
    assert_eq!(t_of(7), None);
    assert_eq!(t_of(8), Some(Bson::Int64(i64::MAX)));
    assert_eq!(docs.len(), 2, "{docs:?}");

    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(101), "{}", text(&out));
    w.drop().await;
}

/// A reference column of another type than the referenced key — text holding uuids, an int for a
/// numeric key, char(n) for a text key — is refused before the run, naming both types: its values
/// would not be the referenced `_id`s (the run wrote them and only verify saw them dangle).
/// Integers of different widths are one type to the targets and are accepted. An array of keys
/// is refused with a fix that works (the seventeenth tester's 8: it was told to cast the array).
#[tokio::test]
async fn a_reference_of_another_type_than_the_key_is_refused() {
    let w = World::new("ref_types").await;
    w.sql(
        "CREATE TABLE ku (k uuid PRIMARY KEY, v int); INSERT INTO ku VALUES ('6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162', 1);
         CREATE TABLE kn (k numeric PRIMARY KEY, v int); INSERT INTO kn VALUES (5, 1);
         CREATE TABLE kt (k text PRIMARY KEY, v int); INSERT INTO kt VALUES ('Abc', 1);
         CREATE TABLE k8 (k bigint PRIMARY KEY, v int); INSERT INTO k8 VALUES (5, 1), (1, 1), (3, 1);
         CREATE TABLE r (id int PRIMARY KEY, tu text, i int, c char(5), ia int[]);
         INSERT INTO r VALUES (1, '6f1c1f52-6a3c-4b8e-9c3e-1d2e3f405162', 5, 'Abc', '{5,1,3,1}');",
    )
    .await;
    let key_mapping = |name: &str| {
        format!(
            "version = 1\nname = \"{name}\"\n[source]\ntable = \"{name}\"\nkey = [\"k\"]\n\
             [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
        )
    };
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    for name in ["ku", "kn", "kt", "k8"] {
        std::fs::write(dir.join(format!("mappings/{name}.toml")), key_mapping(name)).unwrap();
    }
    let pipeline = dir.join("p.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"keys\"\nentities = [\"ku\", \"kn\", \"kt\", \"k8\"]\n\
         [[stage]]\nname = \"refs\"\nentities = [\"r\"]\ndepends_on = [\"keys\"]\n",
    )
    .unwrap();
    for (column, entity, says) in [
        (
            "tu",
            "ku",
            "(column `tu`, text) references `ku`, whose key `k` is uuid",
        ),
        (
            "i",
            "kn",
            "(column `i`, an integer) references `kn`, whose key `k` is numeric",
        ),
        (
            "c",
            "kt",
            "(column `c`, blank-padded char(n)) references `kt`, whose key `k` is text",
        ),
        // An array of keys is no reference (the hint names the embed that is one per element).
        (
            "ia",
            "k8",
            "(column `ia`, int4[]) references `k8`: a reference field holds one key, not an array of them; write the array as an embed",
        ),
        ("i", "k8", ""),
    ] {
        std::fs::write(
            dir.join("mappings/r.toml"),
            format!(
                "version = 1\nname = \"r\"\n[source]\ntable = \"r\"\nkey = [\"id\"]\n\
                 [[field]]\npath = \"ref\"\ncolumn = \"{column}\"\nreference = \"{entity}\"\n\
                 validate = {{ exists = true }}\n"
            ),
        )
        .unwrap();
        let out = w.migrate_with(&pipeline, &["--rerun"]);
        let text = common::output_text(&out);
        if says.is_empty() {
            assert_eq!(out.status.code(), Some(0), "{text}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{column} → {entity}: {text}");
            assert!(text.contains(says), "{text}");
        }
    }
    // The fix the hint names works: each element a reference of its own, judged by `exists`.
    std::fs::write(
        dir.join("mappings/r.toml"),
        "version = 1\nname = \"r\"\n[source]\ntable = \"r\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"i\"\ncolumn = \"i\"\n\
         [[embed]]\npath = \"refs\"\n\
         query = \"SELECT t.id AS parent, e.v AS k, e.n FROM r t, unnest(t.ia) WITH ORDINALITY AS e(v, n)\"\n\
         foreign_key = \"parent\"\norder_by = [\"n\"]\nelement = \"value\"\n\
         [[embed.field]]\npath = \"k\"\ncolumn = \"k\"\nreference = \"k8\"\n\
         validate = { exists = true }\n",
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &["--rerun"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let docs = w.docs("r").await;
    let refs: Vec<i64> = docs[0]
        .get_array("refs")
        .unwrap()
        .iter()
        .map(|b| b.as_i64().or(b.as_i32().map(i64::from)).unwrap())
        .collect();
    assert_eq!(refs, [5, 1, 3, 1], "the array's own order");
    w.drop().await;
}

/// `exists` rules PostgreSQL cannot answer in the read (a field with a default, an embed field)
/// look the referenced keys up as the `_id`s they are: a timestamptz, a BC date and a numeric of
/// another scale exist (they were looked up by texts that differ from PostgreSQL's `::text` of
/// the key, and every such row was rejected).
#[tokio::test]
async fn exists_finds_keys_whatever_their_text() {
    let w = World::new("exists_texts").await;
    w.sql(
        "CREATE TABLE ots (k timestamptz PRIMARY KEY, v text);
         INSERT INTO ots VALUES ('2020-01-01 00:00:00+00', 'a');
         CREATE TABLE onum (k numeric PRIMARY KEY, v text); INSERT INTO onum VALUES (1.50, 'a');
         CREATE TABLE od (k date PRIMARY KEY, v text);
         INSERT INTO od VALUES ('0044-03-15 BC', 'a'), ('2020-01-01', 'b');
         CREATE TABLE r (id int PRIMARY KEY, ts timestamptz, num numeric(6,1), dk date);
         INSERT INTO r VALUES (1, '2020-01-01 00:00:00+00', 1.5, '0044-03-15 BC'),
                              (2, NULL, 1.5, NULL), (3, '2021-01-01 00:00:00+00', 2.5, '1999-01-01');",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    for name in ["ots", "onum", "od"] {
        std::fs::write(
            dir.join(format!("mappings/{name}.toml")),
            format!(
                "version = 1\nname = \"{name}\"\n[source]\ntable = \"{name}\"\nkey = [\"k\"]\n\
                 [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("mappings/r.toml"),
        "version = 1\nname = \"r\"\n[source]\ntable = \"r\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"ts\"\ncolumn = \"ts\"\nreference = \"ots\"\ndefault = \"2020-01-01T00:00:00Z\"\nvalidate = { exists = true }\n\
         [[field]]\npath = \"dk\"\ncolumn = \"dk\"\nreference = \"od\"\ndefault = \"2020-01-01\"\nvalidate = { exists = true }\n\
         [[embed]]\npath = \"kids\"\nquery = \"SELECT id AS pid, num FROM r\"\nforeign_key = \"pid\"\n\
         [[embed.field]]\npath = \"num\"\ncolumn = \"num\"\nreference = \"onum\"\nvalidate = { exists = true }\n",
    )
    .unwrap();
    let pipeline = dir.join("p.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"keys\"\nentities = [\"ots\", \"onum\", \"od\"]\n\
         [[stage]]\nname = \"refs\"\nentities = [\"r\"]\ndepends_on = [\"keys\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let rejects = w.rejects(report["run_id"].as_str().unwrap());
    // Row 3 only: none of its keys exists.
    let keys: std::collections::BTreeSet<&str> = rejects.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(keys, ["3"].into_iter().collect(), "{rejects:?}");
    assert!(rejects.iter().all(|r| r.3 == "exists"), "{rejects:?}");
    w.drop().await;
}

/// Found by the thirteenth tester (T5): in a `SQL_ASCII` database, one text value that is not
/// UTF-8 made the server end the whole read ("invalid byte sequence for encoding UTF8"): the
/// entity failed, the rows after it unread. Each such row is rejected now (rule `encoding`,
/// naming the byte) — text and json alike, in check as in the run — and the others are written.
#[tokio::test]
async fn text_that_is_not_utf8_in_a_sql_ascii_database_rejects_its_row_only() {
    let w = sql_ascii_world("sql_ascii").await;
    w.sql(
        r#"CREATE TABLE x (id int PRIMARY KEY, t text, j json, v varchar(5));
           INSERT INTO x VALUES (1, 'plain', '{"a": 1}', 'ab'),
                                (2, E'caf\xe9', '{}', 'x'),
                                (3, E'ok\xc3\xa9', '"x"', 'y'),
                                (4, 'fine', E'{"a": "\xe9"}', NULL),
                                (5, 'tail', NULL, E'\xff'),
                                (6, 'last', NULL, NULL),
                                (7, 'seven', NULL, NULL);
           CREATE TABLE y (x_id int NOT NULL, n int NOT NULL, label text, PRIMARY KEY (x_id, n));
           INSERT INTO y VALUES (1, 1, 'a'), (1, 2, E'b\xc3\xa9'), (3, 1, 'c'),
                                (6, 1, 'fine'), (6, 2, E'bad\xe9'), (7, 1, 'z');"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "x",
        "version = 1\nname = \"x\"\n[source]\ntable = \"x\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"t\"\ncolumn = \"t\"\n[[field]]\npath = \"j\"\ncolumn = \"j\"\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[embed]]\npath = \"ys\"\ntable = \"y\"\nforeign_key = \"x_id\"\norder_by = [\"n\"]\n\
         [[embed.field]]\npath = \"label\"\ncolumn = \"label\"\n",
    );
    let out = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("4 scanned rows will be rejected"), "{text}");
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert_eq!(
        (
            e["read"].as_u64(),
            e["written"].as_u64(),
            e["rejected"].as_u64()
        ),
        (Some(7), Some(3), Some(4)),
        "{e}"
    );
    let mut rejects: Vec<(String, String)> = w
        .rejects(report["run_id"].as_str().unwrap())
        .into_iter()
        .map(|r| (r.1, r.3))
        .collect();
    rejects.sort();
    assert_eq!(
        rejects,
        [
            ("2", "encoding"),
            ("4", "encoding"),
            ("5", "encoding"),
            ("6", "encoding")
        ]
        .map(|(k, r)| (k.to_string(), r.to_string()))
    );
    let docs = w.docs("x").await;
    let ok3 = docs.iter().find(|d| d.get_i32("_id") == Ok(3)).unwrap();
    assert_eq!(ok3.get_str("t").unwrap(), "oké");
    // verify reads the same database (its independent query too): the rejected rows are not
    // compared, the others are.
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// Found by the fourteenth tester (U6): in a `SQL_ASCII` database, rows whose text *key* is not
/// UTF-8 were all named `?` in the rejects file and by `check` — two of them could not be told
/// apart. Each is named by its bytes (`\xNN` for those that are not UTF-8), the key's later parts
/// included.
#[tokio::test]
async fn a_key_that_is_not_utf8_names_its_row_by_its_bytes() {
    let w = sql_ascii_world("sql_ascii_key").await;
    w.sql(
        r#"CREATE TABLE k (code text, n int, label text, PRIMARY KEY (code, n));
           INSERT INTO k VALUES ('a1', 1, 'x'), (E'k\xe9y1', 7, 'y'), (E'k\xe9y2', 8, 'z'),
                                (E'k\\xe9y1', 9, 'w');"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "k",
        "version = 1\nname = \"k\"\n[source]\ntable = \"k\"\nkey = [\"code\", \"n\"]\n\
         [id]\nstrategy = \"uuid5\"\n\
         [[field]]\npath = \"label\"\ncolumn = \"label\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report = w.latest_report();
    let mut rejects: Vec<(String, String)> = w
        .rejects(report["run_id"].as_str().unwrap())
        .into_iter()
        .map(|r| (r.1, r.3))
        .collect();
    rejects.sort();
    // Rejects files write a key's backslash doubled (and `|` between its parts).
    assert_eq!(
        rejects,
        [(r"k\\xe9y1|7", "encoding"), (r"k\\xe9y2|8", "encoding")]
            .map(|(k, r)| (k.to_string(), r.to_string())),
        "{report}"
    );
    // The valid key that reads like an escape (a backslash, `xe9`) is written.
    assert_eq!(w.count("k").await, 2);
    let out = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(r"k\\xe9y1|7") || text.contains(r"k\xe9y1"),
        "{text}"
    );
    w.drop().await;
}

/// A world whose database is `SQL_ASCII` (any bytes in text).
async fn sql_ascii_world(name: &str) -> World {
    use sqlx::{AssertSqlSafe, Connection, Executor};
    let w = World::new(name).await;
    let (base, db) = w.pg_url.rsplit_once('/').unwrap();
    let db = db.split('?').next().unwrap().to_string();
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    for sql in [
        format!("DROP DATABASE {db}"),
        format!(
            "CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ),
    ] {
        admin.execute(AssertSqlSafe(sql)).await.unwrap();
    }
    admin.close().await.unwrap();
    w
}

/// Found by the fourteenth tester (U7): in a `SQL_ASCII` database, one array element that is not
/// UTF-8 (`text[]`, `varchar[]`, `json[]`) made the server end the whole read: check called it a
/// blocker, the run failed after the rows before it. Its row is rejected (`encoding`) like one
/// with such a scalar, in check as in the run, and verify passes.
#[tokio::test]
async fn an_array_element_that_is_not_utf8_rejects_its_row_only() {
    let w = sql_ascii_world("sql_ascii_arrays").await;
    w.sql(
        r#"CREATE TABLE a (id int PRIMARY KEY, t text[], v varchar(9)[], j json[]);
           INSERT INTO a VALUES (1, ARRAY['ok', NULL], ARRAY['x'], ARRAY['{"k": 1}'::json]),
                                (2, ARRAY['ok', E'b\xffd'], NULL, NULL),
                                (3, ARRAY[ARRAY[E'\xc3\xa9', 'b'], ARRAY['c', 'd']], ARRAY['y'], NULL),
                                (4, NULL, ARRAY[E'\xe9'], NULL),
                                (5, NULL, NULL, ARRAY[E'{"k": "\xff"}'::json]),
                                (6, ARRAY['six'], NULL, NULL),
                                (7, ARRAY[E'a\\b', E'q"uote', 'NULL', NULL, '', E'x,}{y'], ARRAY[E'\\x41'],
                                    ARRAY[E'{"k": "x\\ny \\"q\\" \\\\"}'::json]),
                                (8, '{}', NULL, NULL);"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "a",
        "version = 1\nname = \"a\"\n[source]\ntable = \"a\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"t\"\ncolumn = \"t\"\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[field]]\npath = \"j\"\ncolumn = \"j\"\n",
    );
    let out = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("3 scanned rows will be rejected"), "{text}");
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report = w.latest_report();
    let mut rejects: Vec<(String, String)> = w
        .rejects(report["run_id"].as_str().unwrap())
        .into_iter()
        .map(|r| (r.1, r.3))
        .collect();
    rejects.sort();
    assert_eq!(
        rejects,
        [("2", "encoding"), ("4", "encoding"), ("5", "encoding")]
            .map(|(k, r)| (k.to_string(), r.to_string()))
    );
    let docs = w.docs("a").await;
    assert_eq!(docs.len(), 5);
    let three = docs.iter().find(|d| d.get_i32("_id") == Ok(3)).unwrap();
    assert_eq!(
        three.get_array("t").unwrap()[0].as_array().unwrap()[0].as_str(),
        Some("é")
    );
    // Backslashes, quotes, the text NULL, an empty string and the array's own punctuation are
    // elements as they are (a cast through bytea read backslashes as escapes: this session's
    // review, A); so is json with escapes.
    let seven = docs.iter().find(|d| d.get_i32("_id") == Ok(7)).unwrap();
    assert_eq!(
        seven.get_array("t").unwrap(),
        &vec![
            bson::Bson::String("a\\b".into()),
            bson::Bson::String("q\"uote".into()),
            bson::Bson::String("NULL".into()),
            bson::Bson::Null,
            bson::Bson::String(String::new()),
            bson::Bson::String("x,}{y".into()),
        ]
    );
    assert_eq!(seven.get_array("v").unwrap()[0].as_str(), Some("\\x41"));
    let j = seven.get_array("j").unwrap()[0].as_document().unwrap();
    assert_eq!(j.get_str("k").unwrap(), "x\ny \"q\" \\");
    let eight = docs.iter().find(|d| d.get_i32("_id") == Ok(8)).unwrap();
    assert!(eight.get_array("t").unwrap().is_empty());
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// Found by the fourteenth tester (U6): the embedded children of a parent row whose text key is
/// not UTF-8 (its row rejected, `encoding`) were counted as orphans — "no row of items has" their
/// foreign key, though one has. They go with their rejected parent; a real orphan is still one,
/// in check, in the run and in verify alike.
#[tokio::test]
async fn children_of_a_parent_whose_key_is_not_utf8_go_with_it_not_to_the_orphans() {
    let w = sql_ascii_world("sql_ascii_children").await;
    w.sql(
        r#"CREATE TABLE items (code text PRIMARY KEY, label text);
           INSERT INTO items VALUES ('a1', 'x'), (E'k\xe9y1', 'y'), (E'k\xe9y2', 'z'), ('m', 'w');
           CREATE TABLE notes (id int PRIMARY KEY, item_code text NOT NULL, body text);
           INSERT INTO notes VALUES (1, 'a1', 'n1'), (2, E'k\xe9y1', 'n2'), (3, E'k\xe9y2', 'n3'),
                                    (4, E'k\xe9y2', 'n4'), (5, 'm', 'n5'), (6, 'zz', 'orphan');"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "items",
        "version = 1\nname = \"items\"\n[source]\ntable = \"items\"\nkey = [\"code\"]\n\
         [[field]]\npath = \"label\"\ncolumn = \"label\"\n\
         [[embed]]\npath = \"notes\"\ntable = \"notes\"\nforeign_key = \"item_code\"\norder_by = [\"id\"]\n\
         [[embed.field]]\npath = \"body\"\ncolumn = \"body\"\n",
    );
    let out = w
        .cutover()
        .args(["check", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("1 rows of notes belong to no items row"),
        "{text}"
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report = w.latest_report();
    let e = &report["entities"][0];
    assert_eq!(
        (e["written"].as_u64(), e["rejected"].as_u64()),
        (Some(2), Some(2)),
        "{e}"
    );
    let orphans: u64 = e["orphan_children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(orphans, 1, "{e}");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// SQL_ASCII into Appwrite (the shapes #11 had tested on MongoDB only): text that is not UTF-8
/// in a scalar, in a child going to a child table, and in the middle part of a composite key
/// rejects its row (rule `encoding`, the key named by its bytes) in check as in the run; the
/// others are written; verify passes. Counts are read from the stand-in's own tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_in_a_sql_ascii_database_rejects_its_row_in_appwrite_too() {
    let w = sql_ascii_world("sql_ascii_aw").await;
    w.sql(
        r#"CREATE TABLE x (id int PRIMARY KEY, t text, v varchar(5));
           INSERT INTO x VALUES (1, 'plain', 'ab'), (2, E'caf\xe9', 'x'), (3, E'ok\xc3\xa9', 'y'),
                                (4, 'fine', NULL), (5, 'tail', E'\xff'), (6, 'six', NULL);
           CREATE TABLE y (y_id int PRIMARY KEY, x_id int NOT NULL, label text);
           INSERT INTO y VALUES (10, 1, 'a'), (11, 1, E'b\xc3\xa9'), (12, 4, E'bad\xe9'), (13, 6, 'z');
           CREATE TABLE k (a text, b text, n int, label text, PRIMARY KEY (a, b, n));
           INSERT INTO k VALUES ('p', 'q', 1, 'one'), ('p', E'q\xe9', 2, 'two'), ('p', 'r', 3, 'three');"#,
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/x.toml"),
        "version = 1\nname = \"x\"\n[source]\ntable = \"x\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"t\"\ncolumn = \"t\"\n[[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[embed]]\npath = \"ys\"\ntable = \"y\"\nforeign_key = \"x_id\"\norder_by = [\"y_id\"]\nappwrite = \"table\"\n\
         [[embed.field]]\npath = \"label\"\ncolumn = \"label\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/k.toml"),
        "version = 1\nname = \"k\"\n[source]\ntable = \"k\"\nkey = [\"a\", \"b\", \"n\"]\n\
         [id]\nstrategy = \"uuid5\"\n[[field]]\npath = \"label\"\ncolumn = \"label\"\n",
    )
    .unwrap();
    let pipeline = dir.join("p.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"p\"\nmappings_dir = \"mappings\"\ntarget = \"appwrite\"\n[[stage]]\nname = \"all\"\nentities = [\"x\", \"k\"]\n",
    )
    .unwrap();
    let key = "sql-ascii-key";
    let s = std::sync::Arc::new(appwrite_standin::StandIn::new("cutover", key));
    let (addr, _) = appwrite_standin::serve(s.clone(), "127.0.0.1:0")
        .await
        .unwrap();
    let endpoint = format!("http://{addr}/v1");
    let run = |args: &[&str]| {
        let mut cmd = w.cutover();
        cmd.env("APPWRITE_ENDPOINT", &endpoint)
            .env("APPWRITE_PROJECT", "cutover")
            .env("APPWRITE_API_KEY", key)
            .env("APPWRITE_DATABASE", "db")
            .args(args)
            .arg("--pipeline")
            .arg(&pipeline);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = run(&["check"]).await.unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("4 scanned rows will be rejected"), "{text}");
    let out = run(&["migrate", "--quiet"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report = w.latest_report();
    let mut rejects: Vec<(String, String, String)> = w
        .rejects(report["run_id"].as_str().unwrap())
        .into_iter()
        .map(|r| (r.0, r.1, r.3))
        .collect();
    rejects.sort();
    let want: Vec<(String, String, String)> = [
        ("k", r"p|q\\xe9|2", "encoding"),
        ("x", "2", "encoding"),
        ("x", "4", "encoding"),
        ("x", "5", "encoding"),
    ]
    .iter()
    .map(|(e, k, r)| (e.to_string(), k.to_string(), r.to_string()))
    .collect();
    assert_eq!(rejects, want, "{report}");
    // In the stand-in: x 1, 3, 6; their children 10, 11, 13; k two of three.
    assert_eq!(s.row_count("db", "x"), 3);
    assert_eq!(s.row_count("db", "x_ys"), 3);
    assert_eq!(s.row_count("db", "k"), 2);
    let labels: Vec<String> = s
        .rows("db", "x_ys")
        .iter()
        .filter_map(|r| r["label"].as_str().map(str::to_string))
        .collect();
    assert!(labels.contains(&"bé".to_string()), "{labels:?}");
    let out = run(&["verify"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// Outside tester of #11, finding 9: a `--rerun` left the earlier document of a row that could
/// not be decoded now (an `infinity` date, an array with another lower bound): the target kept
/// a value the source had replaced. Such a row's document goes like that of any row rejected
/// now, and verify passes.
#[tokio::test]
async fn a_rerun_removes_the_earlier_document_of_a_row_that_cannot_be_decoded_now() {
    let w = World::new("edge_rerun_decode").await;
    w.sql(
        "CREATE TABLE r (id int PRIMARY KEY, d date, a int[]);
         INSERT INTO r SELECT g, '2020-01-01'::date + g, ARRAY[g] FROM generate_series(1, 10) g;",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "r",
        "version = 1\nname = \"r\"\n[source]\ntable = \"r\"\nkey = [\"id\"]\n[[field]]\npath = \"d\"\ncolumn = \"d\"\n[[field]]\npath = \"a\"\ncolumn = \"a\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(w.count("r").await, 10);
    w.sql(
        "UPDATE r SET d = 'infinity' WHERE id = 2;
         UPDATE r SET d = '-infinity' WHERE id = 6;
         UPDATE r SET a = '[0:0]={7}' WHERE id = 9;",
    )
    .await;
    let out = w.migrate_with(&pipeline, &["--rerun"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let ids: Vec<i32> = w
        .docs("r")
        .await
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, [1, 3, 4, 5, 7, 8, 10], "{}", text(&out));
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    w.drop().await;
}

/// Types the driver cannot describe are read as PostgreSQL's text, like the multiranges before
/// them: an enum holding the label `NULL` (sqlx took it for a NULL and refused the whole table,
/// mapped or not), a composite holding a multirange, arrays and domains of them. Oracle: each
/// value as PostgreSQL prints it (`::text`, `to_jsonb` for arrays); verify passes.
#[tokio::test]
async fn enums_labelled_null_and_composites_holding_multiranges_are_their_text() {
    let w = World::new("edge_undescribable").await;
    w.sql(
        "CREATE TYPE e_null AS ENUM ('NULL', 'a,b', '');
         CREATE TYPE cm AS (m int4multirange, x int);
         CREATE DOMAIN dcomp AS cm;
         CREATE TABLE q (id int PRIMARY KEY, e e_null, ea e_null[], c cm, ca cm[], d dcomp,
           unmapped e_null);
         INSERT INTO q VALUES
           (1, 'NULL', '{NULL,\"NULL\",a\\,b}', '(\"{[1,3)}\",7)', ARRAY['(\"{[1,3),[5,6)}\",1)'::cm, NULL],
            '(\"{}\",2)', 'NULL'),
           (2, '', '{}', NULL, NULL, NULL, NULL);",
    )
    .await;
    let fields = ["e", "ea", "c", "ca", "d"];
    let mapping = fields.iter().fold(
        "version = 1\nname = \"q\"\n[source]\ntable = \"q\"\nkey = [\"id\"]\n".to_string(),
        |m, f| format!("{m}[[field]]\npath = \"{f}\"\ncolumn = \"{f}\"\n"),
    );
    let pipeline = common::one_entity_pipeline(&w, "q", &mapping);
    let out = w
        .cutover()
        .args(["check", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let coll = w.mongo().await.collection::<bson::Document>("q");
    for f in fields {
        // Each element's own text for the arrays, the value's for the others.
        let shown = if f.ends_with('a') {
            format!(
                "(SELECT coalesce(jsonb_agg({f}[i]::text ORDER BY i), '[]') \
                 FROM generate_subscripts({f}, 1) i)::text"
            )
        } else {
            format!("to_jsonb({f}::text)::text")
        };
        let rendered = w
            .query_strings(&format!(
                "SELECT CASE WHEN {f} IS NULL THEN 'null' ELSE {shown} END FROM q ORDER BY id"
            ))
            .await;
        for (id, want) in [1, 2].iter().zip(rendered) {
            let d = coll
                .find_one(bson::doc! { "_id": id })
                .await
                .unwrap()
                .unwrap();
            let have = match d.get(f) {
                None => serde_json::Value::Null,
                Some(v) => v.clone().into_relaxed_extjson(),
            };
            let want: serde_json::Value = serde_json::from_str(&want).unwrap();
            assert_eq!(have, want, "{f} of row {id}");
        }
    }
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The label `NULL` emptied in the target: verify shows the source's text as the text it is,
    // not as an SQL NULL.
    coll.update_one(
        bson::doc! { "_id": 1 },
        bson::doc! { "$set": { "e": null } },
    )
    .await
    .unwrap();
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("value differs: 1 field e: source 'NULL' target null"),
        "{}",
        text(&out)
    );
    w.drop().await;
}

/// A key column whose value no target date holds (years past chrono's) is named in the rejects
/// file and by check as PostgreSQL writes it, not `?` (the eleventh tester's 18). Shapes: date,
/// timestamp and timestamptz keys, AD and BC. Oracle: PostgreSQL's own `::text` (TimeZone UTC).
#[tokio::test]
async fn a_key_no_target_date_holds_is_named_by_postgresql_text() {
    let w = World::new("edge_key_text").await;
    w.sql(
        "CREATE TABLE dk (d date PRIMARY KEY, v text);
         INSERT INTO dk VALUES ('2020-01-01', 'a'), ('5874897-12-31', 'b'), ('4713-01-01 BC', 'c'),
           ('300000-06-01', 'e');
         CREATE TABLE tk (t timestamp PRIMARY KEY, v text);
         INSERT INTO tk VALUES ('2020-01-01 10:00', 'a'), ('294276-12-31 23:59:59.5', 'b'),
           ('4713-01-01 00:00:01 BC', 'c');
         CREATE TABLE zk (t timestamptz PRIMARY KEY, v text);
         INSERT INTO zk VALUES ('2020-01-01 10:00+00', 'a'), ('294276-12-31 23:59:59.123+00', 'b');",
    )
    .await;
    for (table, column) in [("dk", "d"), ("tk", "t"), ("zk", "t")] {
        let pipeline = common::one_entity_pipeline(
            &w,
            table,
            &format!(
                "version = 1\nname = \"{table}\"\n[source]\ntable = \"{table}\"\nkey = [\"{column}\"]\n\
                 [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
            ),
        );
        let out = w.migrate_with(&pipeline, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
        let mut keys: Vec<String> = w
            .rejects(&run_id)
            .into_iter()
            .map(|(_, key, _, rule)| {
                assert_eq!(rule, "date_out_of_range");
                key
            })
            .collect();
        keys.sort();
        // The rows chrono cannot hold, as PostgreSQL renders their keys.
        let mut want = w
            .query_strings(&format!(
                "SELECT {shown} FROM {table} WHERE v <> 'a'
                   AND (extract(year FROM {column}) > 262142 OR extract(year FROM {column}) < -262143)",
                shown = if table == "zk" {
                    format!("({column} AT TIME ZONE 'UTC')::text || '+00'")
                } else {
                    format!("{column}::text")
                }
            ))
            .await;
        want.sort();
        assert!(!want.is_empty());
        assert_eq!(keys, want, "{table}");
    }
    w.drop().await;
}

/// A JSON value nested as deep as its place in the document leaves (MongoDB holds 180 levels of
/// nesting, the top document one of them) is written; one level more is rejected
/// (`json_too_deep`) by check and the run alike, instead of failing its batch (the eleventh
/// tester's 14). Shapes: a field 60 segments deep, a field of an embedded document. Oracle:
/// mongod itself, inserting the same nesting directly.
#[tokio::test]
async fn json_nesting_is_limited_by_its_place_in_the_document() {
    let w = World::new("edge_json_levels").await;
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    // The field's path: 60 segments (the top document and 59 documents above the value).
    let segments: Vec<String> = (1..=60).map(|i| format!("l{i}")).collect();
    let path = segments.join(".");
    // Embedded: `kids` (1), its array (2), the element (3), then `x.y` (the value at 5).
    w.sql(&format!(
        "CREATE TABLE j (id int PRIMARY KEY, jb jsonb);
         INSERT INTO j VALUES (1, '{}'), (2, '{}'), (3, '1');
         CREATE TABLE jk (id int PRIMARY KEY, j_id int, jb jsonb);
         INSERT INTO jk VALUES (1, 3, '{}'), (2, 3, '{}');",
        nest(120),
        nest(121),
        nest(128 - 1),
        nest(128),
    ))
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "j",
        &format!(
            "version = 1\nname = \"j\"\n[source]\ntable = \"j\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"{path}\"\ncolumn = \"jb\"\n\
             [[embed]]\npath = \"kids\"\ntable = \"jk\"\nforeign_key = \"j_id\"\norder_by = [\"id\"]\n\
             [[embed.field]]\npath = \"x.y\"\ncolumn = \"jb\"\n"
        ),
    );
    // mongod's own answer for each nesting at these places.
    let db = w.mongo().await;
    let probe = db.collection::<bson::Document>("probe");
    let at_path = |depth: usize| {
        let mut v = bson::Bson::Int32(1);
        for _ in 0..depth {
            v = bson::Bson::Array(vec![v]);
        }
        for s in segments.iter().rev() {
            v = bson::Bson::Document(bson::doc! { s: v });
        }
        v
    };
    let fits = |doc: bson::Document| {
        let probe = probe.clone();
        async move { probe.insert_one(doc).await.is_ok() }
    };
    let top = |depth: usize| match at_path(depth) {
        bson::Bson::Document(d) => d,
        _ => unreachable!(),
    };
    assert!(fits(top(120)).await, "mongod holds 120 levels 60 deep");
    assert!(!fits(top(121)).await, "mongod refuses 121 levels 60 deep");
    let kid = |depth: usize| {
        let mut v = bson::Bson::Int32(1);
        for _ in 0..depth {
            v = bson::Bson::Array(vec![v]);
        }
        bson::doc! { "kids": [ { "x": { "y": v } } ] }
    };
    // The element's value at level 5 with 128 levels: 132 ≤ 180, held (the parser's own 128
    // is the bound there).
    assert!(fits(kid(128)).await);
    probe.drop().await.unwrap();

    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let deep: Vec<(String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["rule"] == "json_too_deep")
        .map(|f| {
            (
                f["example_key"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(deep, [("2".to_string(), 1)], "{report}");
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report = w.latest_report();
    let run_id = report["run_id"].as_str().unwrap();
    let rejects: Vec<(String, String)> = w
        .rejects(run_id)
        .into_iter()
        .map(|(_, k, _, r)| (k, r))
        .collect();
    assert_eq!(rejects, [("2".to_string(), "json_too_deep".to_string())]);
    let ids: Vec<i32> = w
        .docs("j")
        .await
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, [1, 3]);

    // A jsonb[] there: the array is a level of its own (the eighteenth tester's F4).
    w.sql(&format!(
        "CREATE TABLE ja (id int PRIMARY KEY, ja jsonb[]);
         INSERT INTO ja VALUES (1, ARRAY['{}'::jsonb]), (2, ARRAY['{}'::jsonb]);",
        nest(119),
        nest(120),
    ))
    .await;
    let in_array = |depth: usize| match at_path(depth) {
        bson::Bson::Document(mut d) => {
            // Wrap the innermost value of the path in one array more.
            fn wrap(d: &mut bson::Document, depth: usize) {
                let (k, v) = d.iter_mut().next().unwrap();
                let _ = k;
                match v {
                    bson::Bson::Document(inner) if depth > 0 => wrap(inner, depth - 1),
                    other => *other = bson::Bson::Array(vec![other.clone()]),
                }
            }
            wrap(&mut d, segments.len() - 1);
            d
        }
        _ => unreachable!(),
    };
    assert!(
        fits(in_array(119)).await,
        "mongod holds [119 levels] 60 deep"
    );
    assert!(
        !fits(in_array(120)).await,
        "mongod refuses [120 levels] 60 deep"
    );
    probe.drop().await.unwrap();
    let pipeline = common::one_entity_pipeline(
        &w,
        "ja",
        &format!(
            "version = 1\nname = \"ja\"\n[source]\ntable = \"ja\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"{path}\"\ncolumn = \"ja\"\n"
        ),
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let rejects: Vec<(String, String)> = w
        .rejects(&run_id)
        .into_iter()
        .map(|(_, k, _, r)| (k, r))
        .collect();
    assert_eq!(rejects, [("2".to_string(), "json_too_deep".to_string())]);
    w.drop().await;
}

/// adv41 F2: a `map` on a `char(n)` column (and a `char(n)[]`) matches its keys as PostgreSQL
/// compares the values, trailing blanks not counted; PostgreSQL's own `=` is the oracle.
#[tokio::test]
async fn a_map_on_a_char_column_matches_as_postgresql_compares() {
    let w = World::new("map_char").await;
    w.sql(
        "CREATE TABLE c (id int PRIMARY KEY, ch char(5), cs char(3)[]);
         INSERT INTO c VALUES (1, 'a', ARRAY['a', 'b ']::char(3)[]), (2, 'zz', ARRAY['zz']::char(3)[]),
           (3, NULL, NULL), (4, ' a', ARRAY[' a']::char(3)[]);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "c",
        r#"version = 1
name = "c"
[source]
table = "c"
key = ["id"]
[[field]]
path = "ch"
column = "ch"
transform = [{ map = { "a" = "A", "*" = "other" } }]
[[field]]
path = "cs"
column = "cs"
transform = [{ map = { "a" = "A", "b" = "B" } }]
"#,
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // What PostgreSQL says equals 'a'.
    let equal = w
        .query_strings("SELECT string_agg(id::text, ',' ORDER BY id) FROM c WHERE ch = 'a'")
        .await;
    assert_eq!(equal, ["1"]);
    assert_eq!(
        w.docs("c").await,
        [
            doc! { "_id": 1, "ch": "A", "cs": ["A", "B"] },
            doc! { "_id": 2, "ch": "other", "cs": ["zz "] },
            doc! { "_id": 3 },
            doc! { "_id": 4, "ch": "other", "cs": [" a "] },
        ]
    );
    w.drop().await;
}

/// adv44 F1: a source role that is no superuser nor a member of pg_read_all_stats cannot see
/// when another role's open transaction began, so the snapshot's time (the next delta's start)
/// may pass it by. The next delta of a table also reads the rows written by transactions from
/// the oldest one open at the snapshot on, whatever their change time: an update made before the
/// snapshot (its transaction has an id), one made after it by a transaction begun before it (no
/// id at the snapshot), one in a subtransaction (savepoint). A view's rows carry no transaction
/// id: the run says so, naming the grant. A role that can see says nothing.
#[tokio::test]
async fn a_delta_after_transactions_its_role_could_not_see_begin_copies_what_they_wrote() {
    use sqlx::{Connection, Executor};
    let w = World::new("hidden_xact").await;
    let role = format!("mig_{}", std::process::id());
    w.sql(&format!(
        "CREATE TABLE ti (id int PRIMARY KEY, name text, updated_at timestamptz);
         INSERT INTO ti SELECT g, 'n' || g, now() - interval '1 hour' FROM generate_series(1, 10) g;
         CREATE VIEW tv AS SELECT * FROM ti;
         DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
         GRANT SELECT ON ti, tv TO {role};"
    ))
    .await;
    let mapping = |table: &str| {
        format!(
            "version = 1\nname = \"{table}\"\n[source]\ntable = \"{table}\"\nkey = [\"id\"]\nupdated_at = \"updated_at\"\n\
             [[field]]\npath = \"name\"\ncolumn = \"name\"\n"
        )
    };
    let table = common::one_entity_pipeline(&w, "ti", &mapping("ti"));
    let view = common::one_entity_pipeline(&w, "tv", &mapping("tv"));
    let as_role = w.pg_url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(as_role, w.pg_url);
    let run = |pipeline: &std::path::Path, args: &[&str]| {
        let out = w
            .cutover()
            .env("CUTOVER_SOURCE_URL", &as_role)
            .arg("migrate")
            .args(args)
            .arg("--pipeline")
            .arg(pipeline)
            .output()
            .unwrap();
        let text = common::output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        text
    };
    // The application's transactions, open across the first run: one has written (it has an
    // id), one has only begun (its `now()` is already taken), one writes in a savepoint.
    let mut wrote = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
    wrote.execute("BEGIN").await.unwrap();
    wrote
        .execute("UPDATE ti SET name = 'wrote', updated_at = now() WHERE id = 10")
        .await
        .unwrap();
    let mut begun = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
    begun.execute("BEGIN").await.unwrap();
    begun.execute("SELECT now()").await.unwrap();
    let mut saved = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
    saved.execute("BEGIN").await.unwrap();
    saved.execute("SELECT now()").await.unwrap();
    // Their times are before the snapshot's.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let text = run(&table, &[]);
    assert!(!text.contains("grant pg_read_all_stats"), "{text}");
    let text = run(&view, &[]);
    assert!(text.contains("grant pg_read_all_stats"), "{text}");
    assert!(text.contains("of tv (a view or a query"), "{text}");
    begun
        .execute("UPDATE ti SET name = 'begun', updated_at = now() WHERE id = 3")
        .await
        .unwrap();
    saved.execute("SAVEPOINT s").await.unwrap();
    saved
        .execute("UPDATE ti SET name = 'saved', updated_at = now() WHERE id = 5")
        .await
        .unwrap();
    saved.execute("RELEASE SAVEPOINT s").await.unwrap();
    for c in [&mut wrote, &mut begun, &mut saved] {
        c.execute("COMMIT").await.unwrap();
    }
    let text = run(&table, &["--since-last"]);
    assert!(
        text.contains("rows written by transactions from id"),
        "{text}"
    );
    // The oracle: PostgreSQL's own rows.
    let rows: Vec<(i32, String)> = sqlx::query_as("SELECT id, name FROM ti ORDER BY id")
        .fetch_all(&mut wrote)
        .await
        .unwrap();
    let want: Vec<bson::Document> = rows
        .iter()
        .map(|(id, name)| doc! { "_id": id, "name": name })
        .collect();
    assert_eq!(
        want.iter()
            .filter(|d| d.get_str("name").unwrap() != format!("n{}", d.get_i32("_id").unwrap()))
            .count(),
        3
    );
    assert_eq!(w.docs("ti").await, want);
    // The next delta: nothing was open at the last snapshot, only the time counts.
    let text = run(&table, &["--since-last"]);
    assert!(!text.contains("transactions from id"), "{text}");
    // The superuser sees the transactions' start: nothing to say.
    let mut open = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
    open.execute("BEGIN").await.unwrap();
    open.execute("SELECT now()").await.unwrap();
    let out = w
        .cutover()
        .args(["migrate", "--rerun", "--pipeline"])
        .arg(&view)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("pg_read_all_stats"), "{text}");
    open.execute("ROLLBACK").await.unwrap();
    w.sql(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await;
    w.drop().await;
}
