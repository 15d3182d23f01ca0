//! Regressions found by the adversarial tester (adv7), against the real servers and the Appwrite
//! stand-in: `map` on arrays and on non-text values (M2, M7), a scalar `default` on an array
//! field (M2), an embed `order_by` with ties (M3), a `query` ending in a line comment (M6).

mod common;

use std::sync::Arc;

use appwrite_standin::StandIn;
use bson::{Bson, doc};
use common::World;

const KEY: &str = "test-key-1";

struct Aw {
    _s: Arc<StandIn>,
    endpoint: String,
}

impl Aw {
    fn rows(&self, table: &str) -> Vec<serde_json::Value> {
        let mut rows = self._s.rows("adv", table);
        rows.sort_by_key(|r| r["$id"].as_str().unwrap_or_default().to_string());
        rows
    }
}

async fn standin() -> Aw {
    let aw = common::standin::Aw::start_with(KEY, std::time::Duration::from_millis(200)).await;
    Aw {
        _s: aw.s,
        endpoint: aw.endpoint,
    }
}

/// Runs `cutover ARGS…` (against the stand-in when `aw` is given) off the runtime serving it.
async fn cutover(w: &World, aw: Option<&Aw>, args: &[&str]) -> std::process::Output {
    let mut cmd = w.cutover();
    cmd.args(args);
    if let Some(aw) = aw {
        cmd.env("APPWRITE_ENDPOINT", &aw.endpoint)
            .env("APPWRITE_PROJECT", "cutover")
            .env("APPWRITE_API_KEY", KEY)
            .env("APPWRITE_DATABASE", "adv")
            .args(["--target", "appwrite"]);
    }
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

const MAPS: &str = r#"
version = 1
name = "t"
[source]
table = "t"
key = ["id"]
[[field]]
path = "tags"
column = "tags"
transform = [{ map = { M = "male", F = "female", "*" = "unknown" } }]
[[field]]
path = "codes"
column = "sx"
transform = [{ split = "," }, { map = { M = "male", F = "female" } }]
[[field]]
path = "yes"
column = "b"
transform = [{ map = { t = "yes", f = "no" } }]
[[field]]
path = "day"
column = "at"
transform = [{ map = { "2020-01-01 00:00:00+00" = "new year", "*" = "other" } }]
[[field]]
path = "old"
column = "d"
transform = [{ map = { "0044-03-15 BC" = "ides", "*" = "other" } }]
[[field]]
path = "half"
column = "n"
transform = [{ map = { "1.50" = "one and a half", "*" = "other" } }]
"#;

/// `map` on an array column or after `split` left the elements as they were (a fallback replaced
/// the whole array by one scalar, which Appwrite refused); a boolean, timestamptz, BC date or
/// numeric was matched by cutover's own text instead of PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_goes_element_by_element_and_matches_postgres_text_on_both_targets() {
    let w = World::new("adv_map").await;
    w.sql(
        "CREATE TABLE t (id int PRIMARY KEY, tags text[], sx text, b bool, at timestamptz, \
           d date, n numeric);
         INSERT INTO t VALUES
           (1, '{M,F}', 'M,F', true, '2020-01-01 00:00:00+00', '0044-03-15 BC', 1.50),
           (2, '{F,X,NULL}', 'X, M', false, '2021-06-01 12:00:00+00', '2024-01-01', 1.5);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(&w, "t", MAPS);
    let pipeline = pipeline.display().to_string();
    let out = cutover(&w, None, &["migrate", "--quiet", "--pipeline", &pipeline]).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let docs = w.docs("t").await;
    assert_eq!(docs.len(), 2);
    let want = [
        doc! { "_id": 1, "tags": ["male", "female"], "codes": ["male", "female"], "yes": "yes",
        "day": "new year", "old": "ides", "half": "one and a half" },
        doc! { "_id": 2, "tags": ["female", "unknown", Bson::Null], "codes": ["X", "male"],
        "yes": "no", "day": "other", "old": "other", "half": "other" },
    ];
    for (d, want) in docs.iter().zip(&want) {
        for (k, v) in want {
            assert_eq!(d.get(k), Some(v), "{k} of {d}");
        }
    }

    // Appwrite: the NULL element is refused by an array column, so row 2 without its tags NULL.
    w.sql("UPDATE t SET tags = '{F,X}' WHERE id = 2").await;
    let aw = standin().await;
    let out = cutover(&w, Some(&aw), &["check", "--pipeline", &pipeline]).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let out = cutover(
        &w,
        Some(&aw),
        &["migrate", "--quiet", "--pipeline", &pipeline],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let rows = aw.rows("t");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["tags"], serde_json::json!(["male", "female"]));
    assert_eq!(rows[1]["tags"], serde_json::json!(["female", "unknown"]));
    assert_eq!(rows[1]["codes"], serde_json::json!(["X", "male"]));
    assert_eq!(rows[0]["yes"], "yes");
    assert_eq!(rows[0]["day"], "new year");

    // `true` is not PostgreSQL's text of a boolean: such a key would never match.
    common::one_entity_pipeline(&w, "t", &MAPS.replace("t = \"yes\"", "true = \"yes\""));
    let out = cutover(&w, None, &["check", "--pipeline", &pipeline]).await;
    let text = common::output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("column `b` is boolean"), "{text}");
    w.drop().await;
}

/// A scalar `default` on a text[] column: MongoDB got a scalar where other rows have arrays and
/// Appwrite refused the row, while check said nothing. Now a mapping error, on both targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scalar_default_on_an_array_column_is_a_mapping_error() {
    let w = World::new("adv_array_default").await;
    w.sql("CREATE TABLE t (id int PRIMARY KEY, tags text[]); INSERT INTO t VALUES (1, NULL);")
        .await;
    let mapping = |default: &str| {
        format!(
            "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"tags\"\ncolumn = \"tags\"\ndefault = {default}\n"
        )
    };
    let pipeline = common::one_entity_pipeline(&w, "t", &mapping("\"none\""));
    let pipeline = pipeline.display().to_string();
    let aw = standin().await;
    for target in [None, Some(&aw)] {
        let out = cutover(&w, target, &["check", "--pipeline", &pipeline]).await;
        let text = common::output_text(&out);
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(
            text.contains("`field (tags).default`") && text.contains("TEXT[]"),
            "{text}"
        );
    }
    common::one_entity_pipeline(&w, "t", &mapping("[\"none\"]"));
    let out = cutover(
        &w,
        Some(&aw),
        &["migrate", "--quiet", "--pipeline", &pipeline],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(aw.rows("t")[0]["tags"], serde_json::json!(["none"]));
    w.drop().await;
}

const FAMILY: &str = r#"
version = 1
name = "p"
[source]
table = "p"
key = ["id"]
[[field]]
path = "name"
column = "name"
[[embed]]
path = "kids"
table = "c"
foreign_key = "pid"
order_by = ["kind"]
[[embed.field]]
path = "val"
column = "val"
[[embed.field]]
path = "kind"
column = "kind"
"#;

/// Children tied on `order_by` (or NULL in it) came in whatever order the server chose: after a
/// no-op UPDATE moved a child in the heap, verify failed an unchanged source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_tied_on_order_by_keep_their_order_after_a_no_op_update() {
    let w = World::new("adv_embed_ties").await;
    w.sql(
        "CREATE TABLE p (id int PRIMARY KEY, name text);
         INSERT INTO p VALUES (1, 'p1'), (2, 'p2');
         CREATE TABLE c (cid int PRIMARY KEY, pid int, kind text, val text);
         INSERT INTO c VALUES (1, 1, 'a', 'x'), (2, 1, 'a', 'y'), (3, 1, NULL, 'z'),
           (4, 2, NULL, 'w'), (5, 2, NULL, 'v');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(&w, "p", FAMILY);
    let pipeline = pipeline.display().to_string();
    let aw = standin().await;
    for target in [None, Some(&aw)] {
        let out = cutover(&w, target, &["migrate", "--quiet", "--pipeline", &pipeline]).await;
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    }
    let docs = w.docs("p").await;
    let vals = |d: &bson::Document| -> Vec<String> {
        d.get_array("kids")
            .unwrap()
            .iter()
            .map(|k| k.as_document().unwrap().get_str("val").unwrap().to_string())
            .collect()
    };
    assert_eq!(
        vals(&docs[0]),
        ["x", "y", "z"],
        "ties by the other columns, NULLs last"
    );
    assert_eq!(vals(&docs[1]), ["v", "w"]);
    w.sql("UPDATE c SET val = val WHERE cid IN (1, 4)").await;
    for target in [None, Some(&aw)] {
        let out = cutover(&w, target, &["verify", "--pipeline", &pipeline]).await;
        assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    }
    w.drop().await;
}

/// A query ending in a `-- comment` commented the wrapper's `)` out; a query PostgreSQL refuses
/// was reported with a hint about multirange columns.
#[tokio::test]
async fn a_query_ending_in_a_line_comment_migrates_and_errors_name_no_multirange() {
    let w = World::new("adv_query_comment").await;
    w.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await;
    let mapping = |query: &str| {
        format!(
            "version = 1\nname = \"q\"\n[source]\nquery = \"\"\"{query}\"\"\"\nkey = [\"id\"]\n\
             [[field]]\npath = \"v\"\ncolumn = \"v\"\n"
        )
    };
    let pipeline = common::one_entity_pipeline(&w, "q", &mapping("SELECT id, v FROM t -- all"));
    let pipeline = pipeline.display().to_string();
    let out = cutover(&w, None, &["migrate", "--quiet", "--pipeline", &pipeline]).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    assert_eq!(w.count("q").await, 1);
    let out = cutover(&w, None, &["verify", "--pipeline", &pipeline]).await;
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    common::one_entity_pipeline(&w, "q", &mapping("SELECT id, nope FROM t"));
    let out = cutover(&w, None, &["check", "--pipeline", &pipeline]).await;
    let text = common::output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("nope"), "{text}");
    assert!(!text.contains("multirange"), "{text}");
    w.drop().await;
}

/// The tie-break orders by every read column of the child: columns of types without a
/// collation or an ordering of their own (enum, inet, interval, point, xml, json) are ordered by
/// their text — `COLLATE "C"` on the type itself is an error, and point, xml and json have no
/// ordering at all.
#[tokio::test]
async fn children_with_columns_of_any_type_order_and_verify() {
    let w = World::new("adv_embed_types").await;
    w.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE p (id int PRIMARY KEY, name text);
         INSERT INTO p VALUES (1, 'p1');
         CREATE TABLE c (cid int PRIMARY KEY, pid int, kind text, e mood, ip inet, iv interval,
                         pt point, x xml, j json);
         INSERT INTO c VALUES
           (1, 1, 'a', 'happy', '10.0.0.2', '1 day', '(1,2)', '<a/>', '{\"b\":1}'),
           (2, 1, 'a', 'sad', '10.0.0.1', '2 days', '(0,1)', '<b/>', '[1]');",
    )
    .await;
    let mapping = "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"id\"]\n\
        [[field]]\npath = \"name\"\ncolumn = \"name\"\n\
        [[embed]]\npath = \"kids\"\ntable = \"c\"\nforeign_key = \"pid\"\norder_by = [\"kind\"]\n\
        [[embed.field]]\npath = \"e\"\ncolumn = \"e\"\n[[embed.field]]\npath = \"ip\"\ncolumn = \"ip\"\n\
        [[embed.field]]\npath = \"iv\"\ncolumn = \"iv\"\n[[embed.field]]\npath = \"pt\"\ncolumn = \"pt\"\n\
        [[embed.field]]\npath = \"x\"\ncolumn = \"x\"\n[[embed.field]]\npath = \"j\"\ncolumn = \"j\"\n";
    let pipeline = common::one_entity_pipeline(&w, "p", mapping);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let docs = w.docs("p").await;
    let kids = docs[0].get_array("kids").unwrap();
    assert_eq!(kids.len(), 2, "{}", docs[0]);
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// A row rule (`any_of`) naming an embedded array and a field: a row with neither (no child row,
/// NULL field) is rejected; an empty array counts as no value, one child or the field as one.
/// The embedded array is written with its elements in `order_by` order whatever the rule says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_rule_sees_an_embedded_array_as_a_value_when_it_has_elements() {
    let w = World::new("rule_any_of_embed").await;
    w.sql(
        "CREATE TABLE p (id int PRIMARY KEY, email text);
         INSERT INTO p VALUES (1, NULL), (2, NULL), (3, 'x@example.org'), (4, NULL);
         CREATE TABLE k (id int PRIMARY KEY, p_id int NOT NULL, n int NOT NULL);
         INSERT INTO k VALUES (10, 2, 2), (11, 2, 1), (12, 4, 1);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "p",
        r#"
version = 1
name = "p"
[source]
table = "p"
key = ["id"]
[[field]]
path = "email"
column = "email"
[[embed]]
path = "kids"
table = "k"
foreign_key = "p_id"
order_by = ["n"]
[[embed.field]]
path = "n"
column = "n"
[[rule]]
name = "reachable"
any_of = ["email", "kids"]
"#,
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let report = w.latest_report();
    assert_eq!(report["totals"]["rejected"], 1, "{report}");
    let docs = w.docs("p").await;
    let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, [2, 3, 4]);
    assert_eq!(
        docs[0].get_array("kids").unwrap(),
        &vec![
            Bson::Document(doc! { "n": 1 }),
            Bson::Document(doc! { "n": 2 })
        ]
    );
    assert_eq!(docs[1].get_array("kids").unwrap(), &Vec::<Bson>::new());
    w.drop().await;
}
