//! `verify`'s independent comparison (#11) against the real servers: PostgreSQL's own rendering
//! of each column, compared with the target's value by a comparer apart from the converter. A
//! value one ulp, one decimal digit, one scale step or one millisecond off, a changed string, a
//! document hidden by an `_id` shared with another row and a broken reference inside an embedded
//! document are each named, with the document and the field.

mod common;

use bson::{Bson, Document, doc};
use common::World;
use sqlx::Connection;

const SCHEMA: &str = r#"
CREATE TABLE owners (id int PRIMARY KEY, name text);
INSERT INTO owners VALUES (1, 'a'), (2, 'b');
CREATE TABLE things (
  id int PRIMARY KEY, amount numeric(12,2), at timestamptz, d float8, r real, b bytea, u uuid,
  j jsonb, ints int[], t text, nums numeric[]
);
INSERT INTO things
SELECT i, 10.5 + i, timestamptz '2024-01-02 03:04:05.123456+00' + i * interval '1 day',
       0.1 * i, 21.35, decode('00ff' || lpad(to_hex(i), 2, '0'), 'hex'), md5(i::text)::uuid,
       ('{"big": 123456789012345678901234567890, "x": [1.50, ' || i || ']}')::jsonb,
       ARRAY[i, i + 1], 'text ' || i, ARRAY[1.50, i]::numeric[]
FROM generate_series(1, 8) i;
UPDATE things SET amount = 1.50 WHERE id = 3;
CREATE TABLE parts (id int PRIMARY KEY, thing_id int, owner_id int);
INSERT INTO parts SELECT i, (i + 1) / 2, 1 + i % 2 FROM generate_series(1, 16) i;
CREATE TABLE pairs (n int PRIMARY KEY, v text);
INSERT INTO pairs SELECT i, 'v' || i FROM generate_series(1, 4) i;
"#;

fn things(with_nums: bool) -> String {
    let nums = if with_nums {
        "[[field]]\npath = \"nums\"\ncolumn = \"nums\"\n"
    } else {
        ""
    };
    format!(
        r#"
version = 1
name = "things"
[source]
table = "things"
key = ["id"]
[[field]]
path = "amount"
column = "amount"
[[field]]
path = "at"
column = "at"
sub_millis = "truncate"
[[field]]
path = "d"
column = "d"
[[field]]
path = "r"
column = "r"
[[field]]
path = "b"
column = "b"
[[field]]
path = "u"
column = "u"
[[field]]
path = "j"
column = "j"
[[field]]
path = "ints"
column = "ints"
[[field]]
path = "t"
column = "t"
[[field]]
path = "shout"
column = "t"
transform = ["upper"]
{nums}
[[embed]]
path = "parts"
table = "parts"
foreign_key = "thing_id"
order_by = ["id"]
[[embed.field]]
path = "owner"
column = "owner_id"
reference = "owners"
"#
    )
}

const OWNERS: &str = r#"
version = 1
name = "owners"
[source]
table = "owners"
key = ["id"]
[[field]]
path = "name"
column = "name"
"#;

/// Two rows per `_id`: the second written overwrites the first.
const PAIRS: &str = r#"
version = 1
name = "pairs"
[source]
query = "SELECT n, (n + 1) / 2 AS k, v FROM pairs"
key = ["n"]
[id]
strategy = "uuid5"
[[field]]
path = "v"
column = "v"
"#;

const PIPELINE: &str = r#"
version = 1
name = "oracle"
mappings_dir = "mappings"
[[stage]]
name = "owners"
entities = ["owners"]
[[stage]]
name = "things"
entities = ["things"]
depends_on = ["owners"]
"#;

async fn world(test: &str, with_nums: bool) -> World {
    let w = World::new(test).await;
    w.sql(SCHEMA).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/things.toml"), things(with_nums)).unwrap();
    std::fs::write(dir.join("mappings/owners.toml"), OWNERS).unwrap();
    std::fs::write(dir.join("mappings/pairs.toml"), PAIRS).unwrap();
    std::fs::write(dir.join("oracle.toml"), PIPELINE).unwrap();
    let out = w.migrate_with(&dir.join("oracle.toml"), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    w
}

fn verify(w: &World, args: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    let out_path = w.dir.path().join("verify.json");
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(w.dir.path().join("oracle.toml"))
        .arg("-o")
        .arg(&out_path)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_str(
        &std::fs::read_to_string(&out_path).unwrap_or_else(|_| panic!("{text}")),
    )
    .unwrap();
    (out.status.code(), text, json)
}

fn entity<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == name)
        .unwrap_or_else(|| panic!("{json}"))
}

/// (key, field) of every value verify named.
fn named(e: &serde_json::Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = e["independent"]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_string(),
                m["field"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn verify_names_each_tampered_value_and_the_broken_embedded_reference() {
    let w = world("oracle_tamper", false).await;
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    let t = entity(&json, "things");
    let compared: Vec<&str> = t["independent"]["compared_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        compared,
        [
            "amount",
            "at",
            "d",
            "r",
            "b",
            "u",
            "j",
            "ints",
            "t",
            "parts.owner"
        ],
        "{t}"
    );
    let not: Vec<(&str, &str)> = t["independent"]["not_compared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["why"].as_str().unwrap()))
        .collect();
    assert!(not.contains(&("shout", "transform: upper")), "{not:?}");
    assert_eq!(t["independent"]["documents"], 8);
    assert!(text.contains("compared independently"), "{text}");
    assert!(text.contains("shout (transform: upper)"), "{text}");

    let db = w.mongo().await;
    let coll = db.collection::<Document>("things");
    let set = |id: i32, update: Document| {
        let coll = coll.clone();
        async move {
            let r = coll
                .update_one(doc! { "_id": id }, doc! { "$set": update })
                .await
                .unwrap();
            assert_eq!(r.modified_count, 1);
        }
    };
    let one_ulp = f64::from_bits(0.1f64.to_bits() + 1);
    set(1, doc! { "d": one_ulp }).await;
    let dec = |s: &str| Bson::Decimal128(s.parse().unwrap());
    set(2, doc! { "amount": dec("12.51") }).await; // 12.50 in the source
    set(3, doc! { "amount": dec("1.5") }).await; // 1.50 in the source
    let at = w.docs("things").await[3]
        .get_datetime("at")
        .unwrap()
        .timestamp_millis();
    set(4, doc! { "at": bson::DateTime::from_millis(at + 1) }).await;
    set(5, doc! { "t": "text 5!" }).await;
    set(6, doc! { "parts.0.owner": 99 }).await;

    let (code, text, json) = verify(&w, &["things"]);
    assert_eq!(code, Some(2), "{text}");
    let t = entity(&json, "things");
    assert_eq!(
        named(t),
        [
            ("1".to_string(), "d".to_string()),
            ("2".into(), "amount".into()),
            ("3".into(), "amount".into()),
            ("4".into(), "at".into()),
            ("5".into(), "t".into()),
            ("6".into(), "parts.owner".into()),
        ],
        "{t}"
    );
    let m3 = &t["independent"]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "3")
        .unwrap();
    assert_eq!(m3["source"], "'1.50'");
    assert!(m3["problem"].as_str().unwrap().contains("scale"), "{m3}");
    let broken = t["broken_references"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "{t}");
    assert_eq!(broken[0]["path"], "parts.owner");
    assert_eq!(broken[0]["examples"][0], "99");
    assert!(text.contains("value differs: 1 field d"), "{text}");
    assert!(text.contains("parts.owner"), "{text}");
    // One problems file: the main comparison's lines, then the independent ones (that pass runs
    // beside the main one and writes a file of its own, appended at the end and removed).
    let problems = w.dir.path().join("verify.problems.jsonl");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&problems)
        .unwrap_or_else(|_| panic!("{text}"))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    let first_value = kinds
        .iter()
        .position(|k| *k == "value")
        .expect("value lines");
    assert!(
        kinds[..first_value].iter().all(|k| *k == "different"),
        "{kinds:?}"
    );
    let mut valued: Vec<(String, String)> = lines[first_value..]
        .iter()
        .map(|l| {
            assert_eq!(l["kind"], "value", "{l}");
            (
                l["key"].as_str().unwrap().into(),
                l["field"].as_str().unwrap().into(),
            )
        })
        .collect();
    valued.sort();
    assert_eq!(valued, named(t));
    assert!(
        !w.dir
            .path()
            .join("verify.problems.independent.jsonl")
            .exists(),
        "the independent pass's own file is appended and removed"
    );
    w.drop().await;
}

/// Rows whose mapping key repeats (the key the ids are made of is `k`, shared by two rows each)
/// once hid a document behind another's `_id`. The run now rejects the second row of each key
/// (`duplicate_key`, in the rejects file), verify counts them as rejected by the mapping and
/// passes the target, and a document changed afterwards still fails it.
#[tokio::test]
async fn rows_sharing_an_id_are_rejected_and_accounted_for_by_verify() {
    let w = World::new("oracle_collide").await;
    w.sql(SCHEMA).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/pairs.toml"),
        PAIRS.replace("key = [\"n\"]", "key = [\"k\"]"),
    )
    .unwrap();
    std::fs::write(
        dir.join("oracle.toml"),
        "version = 1\nname = \"oracle\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"pairs\"\nentities = [\"pairs\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&dir.join("oracle.toml"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let rules: Vec<String> = w.rejects(&run_id).into_iter().map(|r| r.3).collect();
    assert_eq!(rules, ["duplicate_key", "duplicate_key"]);
    assert_eq!(w.count("pairs").await, 2);
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    let p = entity(&json, "pairs");
    assert_eq!(p["rejected_by_mapping"], 2, "{p}");
    assert_eq!(p["counts_agree"], true, "{p}");
    let one = w.docs("pairs").await.remove(0);
    w.mongo()
        .await
        .collection::<Document>("pairs")
        .update_one(
            doc! { "_id": one.get("_id").unwrap().clone() },
            doc! { "$set": { "v": "changed" } },
        )
        .await
        .unwrap();
    let (code, text, _) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    w.drop().await;
}

/// A loss the re-derivation cannot see, because migrate and verify convert alike: a `numeric[]`
/// column written as PostgreSQL's array text instead of an array of Decimal128. The independent
/// comparison names it; when the converter writes the exact array, it passes.
#[tokio::test]
async fn verify_sees_a_conversion_loss_the_converter_would_repeat() {
    let w = world("oracle_blind", true).await;
    let written = w.docs("things").await[0].get("nums").cloned().unwrap();
    let (code, text, json) = verify(&w, &["things"]);
    let t = entity(&json, "things");
    match written {
        Bson::String(s) => {
            assert_eq!(s, "{1.50,1}");
            assert_eq!(code, Some(2), "{text}");
            let keys: Vec<(String, String)> = named(t);
            assert_eq!(keys.len(), 8, "{t}");
            assert!(keys.iter().all(|(_, f)| f == "nums"), "{t}");
            assert!(text.contains("field nums"), "{text}");
        }
        Bson::Array(items) => {
            assert_eq!(items[0], Bson::Decimal128("1.50".parse().unwrap()));
            assert_eq!(code, Some(0), "{text}");
        }
        other => panic!("nums written as {other}"),
    }
    w.drop().await;
}

const BASKETS_SQL: &str = r#"
CREATE TABLE baskets (id int PRIMARY KEY, label text);
INSERT INTO baskets SELECT i, 'basket ' || i FROM generate_series(1, 6) i;
CREATE TABLE items (basket_id int, n int, price numeric(10,2), at timestamptz, w float8,
                    PRIMARY KEY (basket_id, n));
INSERT INTO items
SELECT b, n, 10.05 * n + b, timestamptz '2024-03-04 05:06:07.891+00' + (b * 10 + n) * interval '1 s',
       b / (n + 6.0)
FROM generate_series(1, 6) b, generate_series(1, 3) n;
CREATE TABLE tags (basket_id int, pos int, tag text, PRIMARY KEY (basket_id, pos));
INSERT INTO tags SELECT b, p, 'tag ' || b || '/' || p FROM generate_series(1, 6) b, generate_series(1, 2) p;
"#;

const BASKETS: &str = r#"
version = 1
name = "baskets"
[source]
table = "baskets"
key = ["id"]
[[field]]
path = "label"
column = "label"
[[embed]]
path = "items"
table = "items"
foreign_key = "basket_id"
order_by = ["n"]
[[embed.field]]
path = "n"
column = "n"
[[embed.field]]
path = "price"
column = "price"
[[embed.field]]
path = "at"
column = "at"
[[embed.field]]
path = "w"
column = "w"
[[embed.field]]
path = "kind"
value = "item"
[[embed]]
path = "tags"
table = "tags"
foreign_key = "basket_id"
order_by = ["pos"]
element = "value"
[[embed.field]]
path = "tag"
column = "tag"
"#;

/// Issue #11: the fields of embedded documents (and embedded values) are compared with
/// PostgreSQL's rendering of the child table's columns, element by element: one decimal digit,
/// one ulp, one millisecond or a changed value inside an array is named with the field and its
/// element.
#[tokio::test]
async fn verify_compares_embedded_fields_with_the_child_tables_own_values() {
    let w = World::new("oracle_embedded").await;
    w.sql(BASKETS_SQL).await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(dir.join("mappings/baskets.toml"), BASKETS).unwrap();
    std::fs::write(
        dir.join("oracle.toml"),
        "version = 1\nname = \"oracle\"\nmappings_dir = \"mappings\"\n[[stage]]\nname = \"baskets\"\nentities = [\"baskets\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&dir.join("oracle.toml"), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    let b = entity(&json, "baskets");
    let compared: Vec<&str> = b["independent"]["compared_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        compared,
        [
            "label",
            "items.n",
            "items.price",
            "items.at",
            "items.w",
            "tags.tag"
        ],
        "{b}"
    );
    let not: Vec<(&str, &str)> = b["independent"]["not_compared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["why"].as_str().unwrap()))
        .collect();
    assert_eq!(not, [("items.kind", "constant value")], "{b}");

    let coll = w.mongo().await.collection::<Document>("baskets");
    let set = |id: i32, update: Document| {
        let coll = coll.clone();
        async move {
            let r = coll
                .update_one(doc! { "_id": id }, doc! { "$set": update })
                .await
                .unwrap();
            assert_eq!(r.modified_count, 1);
        }
    };
    let docs = w.docs("baskets").await;
    let item = |b: usize, i: usize| -> Document {
        docs[b].get_array("items").unwrap()[i]
            .as_document()
            .unwrap()
            .clone()
    };
    // basket 2, item 1: price 22.10 in the source.
    assert_eq!(
        item(1, 1).get("price"),
        Some(&Bson::Decimal128("22.10".parse().unwrap()))
    );
    set(
        2,
        doc! { "items.1.price": Bson::Decimal128("22.11".parse().unwrap()) },
    )
    .await;
    let wv = item(2, 0).get_f64("w").unwrap();
    set(3, doc! { "items.0.w": f64::from_bits(wv.to_bits() + 1) }).await;
    let at = item(3, 2).get_datetime("at").unwrap().timestamp_millis();
    set(
        4,
        doc! { "items.2.at": bson::DateTime::from_millis(at + 1) },
    )
    .await;
    set(5, doc! { "tags.1": "tag 5/2!" }).await;

    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    let b = entity(&json, "baskets");
    assert_eq!(
        named(b),
        [
            ("2".to_string(), "items.price".to_string()),
            ("3".into(), "items.w".into()),
            ("4".into(), "items.at".into()),
            ("5".into(), "tags.tag".into()),
        ],
        "{b}"
    );
    let problem = |key: &str| {
        b["independent"]["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == key)
            .unwrap()["problem"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(problem("2").starts_with("element 1: "), "{b}");
    assert!(problem("4").starts_with("element 2: "), "{b}");
    assert!(text.contains("value differs: 3 field items.w"), "{text}");
    w.drop().await;
}

/// A reference is the referenced document's `_id`, which is not the column's value when that
/// mapping makes its ids by `uuid5`: verify failed a correct target ("expected int32 1") and
/// now names the field as not compared independently — while a broken reference still fails.
#[tokio::test]
async fn references_to_uuid5_ids_are_not_compared_as_the_raw_column() {
    let w = World::new("oracle_uuid5_ref").await;
    w.sql(
        "CREATE TABLE owner (id int PRIMARY KEY, name text);
         INSERT INTO owner VALUES (1, 'a'), (2, 'b');
         CREATE TABLE pet (id int PRIMARY KEY, owner_id int, name text);
         INSERT INTO pet VALUES (10, 1, 'x'), (11, 2, 'y'), (12, 1, 'z');",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/owner.toml"),
        "version = 1\nname = \"owner\"\n[source]\ntable = \"owner\"\nkey = [\"id\"]\n\
         [id]\nstrategy = \"uuid5\"\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/pet.toml"),
        "version = 1\nname = \"pet\"\n[source]\ntable = \"pet\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"owner\"\ncolumn = \"owner_id\"\nreference = \"owner\"\n\
         [[field]]\npath = \"name\"\ncolumn = \"name\"\n",
    )
    .unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"pets\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"owners\"\nentities = [\"owner\"]\n\
         [[stage]]\nname = \"pets\"\nentities = [\"pet\"]\ndepends_on = [\"owners\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let out_path = dir.join("verify.json");
    let verify = || {
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        (out.status.code(), common::output_text(&out), json)
    };
    let (code, text, json) = verify();
    assert_eq!(code, Some(0), "{text}");
    let pet = json["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == "pet")
        .unwrap();
    let not: Vec<(String, String)> = pet["independent"]["not_compared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["path"].as_str().unwrap().to_string(),
                n["why"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        not,
        [(
            "owner".to_string(),
            "reference: the `_id` of owner".to_string()
        )],
        "{pet}"
    );
    // A reference pointing nowhere still fails verify.
    w.mongo()
        .await
        .collection::<Document>("pet")
        .update_one(doc! { "_id": 11 }, doc! { "$set": { "owner": "nobody" } })
        .await
        .unwrap();
    let (code, text, _) = verify();
    assert_eq!(code, Some(2), "{text}");
    w.drop().await;
}

/// Floats written as decimals or as text come from the digits PostgreSQL prints (the double
/// nearest 1e23 is `9.999999999999999e+22` there, `1e23` in Rust; infinities are `Infinity`,
/// not `inf`; 5e-324 is not spelled out in 325 digits): the text equals PostgreSQL's own
/// `::text`, and verify's independent comparison passes the decimals.
#[tokio::test]
async fn floats_become_the_decimals_and_text_postgresql_prints() {
    let w = World::new("oracle_float_text").await;
    w.sql(
        "CREATE TABLE f (id int PRIMARY KEY, d float8, r real);
         INSERT INTO f VALUES (1, 1e23, 21.35), (2, 1e22, 1e6), (3, 0.1, 3.4028235e38),
           (4, 5e-324, 1e-45), (5, 'Infinity', '-Infinity'), (6, 1.7976931348623157e308, 123456),
           (7, 123456789012345678e5, 1.5e-5), (8, -0.0, 0.0001), (9, 1e15, 'NaN'),
           (10, 123456789012345, -2.5);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "f",
        "version = 1\nname = \"f\"\n[source]\ntable = \"f\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"dDec\"\ncolumn = \"d\"\ntype = \"decimal\"\n\
         [[field]]\npath = \"dText\"\ncolumn = \"d\"\ntype = \"string\"\n\
         [[field]]\npath = \"rDec\"\ncolumn = \"r\"\ntype = \"decimal\"\n\
         [[field]]\npath = \"rText\"\ncolumn = \"r\"\ntype = \"string\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let mut pg = sqlx::PgConnection::connect(&w.pg_url).await.unwrap();
    let texts: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT id, d::text, r::text FROM f ORDER BY id")
            .fetch_all(&mut pg)
            .await
            .unwrap();
    let docs = w.docs("f").await;
    for (id, d, r) in texts {
        let doc = docs
            .iter()
            .find(|x| x.get("_id") == Some(&Bson::Int32(id)))
            .unwrap();
        assert_eq!(doc.get_str("dText").unwrap(), d, "{doc}");
        assert_eq!(doc.get_str("rText").unwrap(), r, "{doc}");
    }
    let one = docs
        .iter()
        .find(|x| x.get("_id") == Some(&Bson::Int32(1)))
        .unwrap();
    assert_eq!(
        one.get("dDec").unwrap().to_string(),
        "99999999999999990000000",
        "{one}"
    );
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// A `numeric(10,2)` foreign key (`1.00`) references a `numeric` key (`1.0`) PostgreSQL holds
/// equal: the reference is the referenced document's `_id`, and verify finds no broken one.
#[tokio::test]
async fn a_numeric_reference_of_another_scale_points_at_its_document() {
    let w = World::new("oracle_numeric_ref").await;
    w.sql(
        "CREATE TABLE acct (code numeric PRIMARY KEY, name text);
         INSERT INTO acct VALUES (1.0, 'one'), (2.50, 'two and a half'), (10, 'ten');
         CREATE TABLE txn (id int PRIMARY KEY, acct_code numeric(10,2) REFERENCES acct (code));
         INSERT INTO txn VALUES (1, 1.00), (2, 2.5), (3, 10.00);",
    )
    .await;
    let dir = w.dir.path();
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    std::fs::write(
        dir.join("mappings/acct.toml"),
        "version = 1\nname = \"acct\"\n[source]\ntable = \"acct\"\nkey = [\"code\"]\n\
         [[field]]\npath = \"name\"\ncolumn = \"name\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mappings/txn.toml"),
        "version = 1\nname = \"txn\"\n[source]\ntable = \"txn\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"acct\"\ncolumn = \"acct_code\"\nreference = \"acct\"\n\
         validate = { exists = true }\n",
    )
    .unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "version = 1\nname = \"accts\"\nmappings_dir = \"mappings\"\n\
         [[stage]]\nname = \"accts\"\nentities = [\"acct\"]\n\
         [[stage]]\nname = \"txns\"\nentities = [\"txn\"]\ndepends_on = [\"accts\"]\n",
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let ids: Vec<Bson> = w
        .docs("acct")
        .await
        .iter()
        .map(|d| d.get("_id").unwrap().clone())
        .collect();
    for t in w.docs("txn").await {
        assert!(ids.contains(t.get("acct").unwrap()), "{t} in {ids:?}");
    }
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.drop().await;
}

/// Arrays of floats holding −0 (and NaN, infinities, NULL): to_jsonb loses the sign of −0, so the
/// independent comparison failed a correct target. It reads the array's own text now, and a −0
/// turned into 0 is still named.
#[tokio::test]
async fn float_arrays_with_negative_zero_verify_and_a_lost_sign_is_named() {
    let w = World::new("oracle_float_arrays").await;
    w.sql(
        "CREATE TABLE fa (id int PRIMARY KEY, f float8[], r real[]);
         INSERT INTO fa VALUES (1, '{-0,NaN,0.1}', '{-0,0.1,3.4e38}'),
           (2, '{{1.5,-Infinity},{Infinity,NULL}}', '{NULL}'), (3, '{}', NULL);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "fa",
        "version = 1\nname = \"fa\"\n[source]\ntable = \"fa\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"f\"\ncolumn = \"f\"\n[[field]]\npath = \"r\"\ncolumn = \"r\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let verify = || {
        w.cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("f, r"), "both compared independently: {text}");
    w.mongo()
        .await
        .collection::<Document>("fa")
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "f.0": 0.0 } })
        .await
        .unwrap();
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("value differs: 1 field f:"), "{text}");
    w.drop().await;
}

/// A numeric with more decimal places than Decimal128's exponent reaches (a zero with 7000) is
/// written with all the scale it holds and a `decimal_scale` warning, which `check` counts;
/// verify passes it, and still fails another value.
#[tokio::test]
async fn scale_beyond_decimal128_is_warned_and_verifies() {
    let w = World::new("oracle_deep_scale").await;
    w.sql(
        "CREATE TABLE z (id int PRIMARY KEY, n numeric);
         INSERT INTO z VALUES (1, ('0.' || repeat('0', 7000))::numeric), (2, 1.5);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "z",
        "version = 1\nname = \"z\"\n[source]\ntable = \"z\"\nkey = [\"id\"]\n[[field]]\npath = \"n\"\ncolumn = \"n\"\n",
    );
    let out = w
        .cutover()
        .args(["check", "--json", "--full", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "decimal_scale" && f["rows"] == 1),
        "{report}"
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let run_id = w.latest_report()["run_id"].as_str().unwrap().to_string();
    let warned: Vec<String> = w.warnings(&run_id).into_iter().map(|r| r.3).collect();
    assert_eq!(warned, ["decimal_scale"]);
    let verify = || {
        w.cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    w.mongo()
        .await
        .collection::<Document>("z")
        .update_one(
            doc! { "_id": 1 },
            doc! { "$set": { "n": bson::Decimal128::from_bytes(1u128.to_le_bytes()) } },
        )
        .await
        .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    w.drop().await;
}

/// Issue #11: `json` values that `to_jsonb` cannot convert (`\u0000`, a number beyond numeric's
/// range) used to abort verify (exit 1). A `json` column (and a `json[]`) is read as its own text
/// and parsed by the oracle's reader: verify compares every row, passes a right target and still
/// names a wrong one. A JSON object whose key is `$numberDecimal` is compared as the object it is.
#[tokio::test]
async fn verify_compares_json_values_that_to_jsonb_cannot_convert() {
    let w = World::new("verify_json_text").await;
    w.sql(
        r#"CREATE TABLE js (id int PRIMARY KEY, j json, ja json[]);
           INSERT INTO js VALUES
             (1, '{"s": "x\u0000y"}', ARRAY['{"s": "a\u0000b"}'::json, '1'::json]),
             (2, '{"x": 0.000000e999999999999999999999}', NULL),
             (3, '{"a": 1, "a": 2, "b": [1.50]}', NULL),
             (4, '{"$numberDecimal": "1"}', NULL),
             (5, '{"ok": "fine"}', ARRAY['{"k": 1}'::json]);"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "js",
        "version = 1\nname = \"js\"\n[source]\ntable = \"js\"\nkey = [\"id\"]\n\
         [[field]]\npath = \"j\"\ncolumn = \"j\"\nlossy = \"warn\"\nvalidate = { severity = \"warning\" }\n\
         [[field]]\npath = \"ja\"\ncolumn = \"ja\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert!(
        out.status.code().is_some_and(|c| c < 3),
        "{}",
        common::output_text(&out)
    );
    let run = |w: &World| {
        let out_path = w.dir.path().join("verify.json");
        let out = w
            .cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .arg("-o")
            .arg(&out_path)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&out_path)
                .unwrap_or_else(|_| panic!("{}", common::output_text(&out))),
        )
        .unwrap();
        (out.status.code(), common::output_text(&out), json)
    };
    let (code, text, json) = run(&w);
    assert_eq!(code, Some(0), "{text}");
    let e = entity(&json, "js");
    let compared: Vec<&str> = e["independent"]["compared_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(compared, ["j", "ja"], "{e}");
    assert_eq!(e["independent"]["documents"], 5, "{e}");

    // A wrong value is still named.
    let c = w.mongo().await.collection::<Document>("js");
    c.update_one(doc! { "_id": 1 }, doc! { "$set": { "j.s": "xy" } })
        .await
        .unwrap();
    let (code, text, json) = run(&w);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "js")),
        [("1".to_string(), "j".to_string())]
    );
    w.drop().await;
}

/// Children whose numeric foreign key has another scale than their parent's key (`1.0`, `1.00`
/// under `1`) are that parent's in PostgreSQL and in the document; the independent comparison
/// grouped them by the key's text and failed a correct target.
#[tokio::test]
async fn children_under_a_numeric_key_of_another_scale_verify() {
    let w = World::new("oracle_fk_scale").await;
    w.sql(
        "CREATE TABLE p2 (n numeric PRIMARY KEY, v text);
         INSERT INTO p2 VALUES (1, 'one'), (2.5, 'two and a half');
         CREATE TABLE c2 (n numeric, i int, w text);
         INSERT INTO c2 VALUES (1, 1, 'a'), (1.0, 2, 'b'), (1.00, 3, 'c'), (2.50, 4, 'd');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "p2",
        "version = 1\nname = \"p2\"\n[source]\ntable = \"p2\"\nkey = [\"n\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[embed]]\npath = \"kids\"\ntable = \"c2\"\nforeign_key = \"n\"\norder_by = [\"i\"]\n\
         [[embed.field]]\npath = \"w\"\ncolumn = \"w\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let out = w
        .cutover()
        .args(["verify", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("kids.w"), "compared independently: {text}");
    w.drop().await;
}

/// A key given twice: the run writes one of its rows and rejects the others (`duplicate_key`);
/// which one depends on the read's order of equal keys, so the independent comparison leaves that
/// key's rows out instead of failing a correct target.
#[tokio::test]
async fn rows_of_a_key_given_twice_are_not_compared_independently() {
    let w = World::new("oracle_dup_key").await;
    w.sql(
        "CREATE TABLE cc (k text, n int, v text);
         INSERT INTO cc VALUES ('y', 2, 'a'), ('y', 2, 'b'), ('y', 2, 'c'), ('z', 1, 'q'),
           ('a', 1, 'p');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "cc",
        "version = 1\nname = \"cc\"\n[source]\ntable = \"cc\"\nkey = [\"k\", \"n\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let verify = || {
        w.cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    // The other keys are still compared.
    w.mongo()
        .await
        .collection::<Document>("cc")
        .update_one(
            doc! { "_id": { "k": "z", "n": 1 } },
            doc! { "$set": { "v": "changed" } },
        )
        .await
        .unwrap();
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("value differs: z|1 field v"), "{text}");
    w.drop().await;
}

/// BC dates inside arrays (`date[]`, `timestamptz[]`): `to_jsonb` writes them `… BC`, which the
/// independent comparison could not read, so verify failed a correct target; a date moved by a
/// day is still named.
#[tokio::test]
async fn bc_dates_inside_arrays_verify() {
    let w = World::new("oracle_bc_arrays").await;
    w.sql(
        r#"CREATE TABLE p (k int PRIMARY KEY, d date[], t timestamptz[]);
           INSERT INTO p VALUES (1, '{0001-01-01 BC,2024-02-29}', '{"0001-01-01 00:00:00+00 BC"}'),
             (2, '{0044-03-15 BC}', NULL);"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "p",
        "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"k\"]\n\
         [[field]]\npath = \"d\"\ncolumn = \"d\"\n[[field]]\npath = \"t\"\ncolumn = \"t\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let verify = || {
        w.cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("d, t"), "compared independently: {text}");
    let day = bson::DateTime::from_millis(-62_167_219_200_000 + 86_400_000);
    w.mongo()
        .await
        .collection::<Document>("p")
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "d.0": day } })
        .await
        .unwrap();
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("value differs: 1 field d:"), "{text}");
    w.drop().await;
}

/// char(n) keys shorter than n, of the document and of its embedded children, are compared
/// independently (a cast to text dropped their blanks and the rows were silently skipped), and a
/// changed value under such a key is named.
#[tokio::test]
async fn short_char_n_keys_are_compared_independently() {
    let w = World::new("oracle_charn").await;
    w.sql(
        r#"CREATE TABLE p (k char(4) PRIMARY KEY, v text);
           INSERT INTO p VALUES ('abcd', 'full'), ('ab', 'short'), ('a', 'shorter');
           CREATE TABLE c (pk char(4) REFERENCES p, n int, item text, PRIMARY KEY (pk, n));
           INSERT INTO c VALUES ('abcd', 1, 'x'), ('ab', 1, 'y'), ('ab', 2, 'z'), ('a', 1, 'w');"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "p",
        "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"k\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\n\
         [[embed]]\npath = \"c\"\ntable = \"c\"\nforeign_key = \"pk\"\norder_by = [\"n\"]\n\
         [[embed.field]]\npath = \"item\"\ncolumn = \"item\"\n",
    );
    std::fs::copy(&pipeline, w.dir.path().join("oracle.toml")).unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    let e = entity(&json, "p");
    assert_eq!(e["independent"]["documents"], 3, "{e}");
    assert_eq!(e["independent"]["mismatch_count"], 0, "{e}");
    let coll = w.mongo().await.collection::<Document>("p");
    coll.update_one(doc! { "_id": "ab  " }, doc! { "$set": { "v": "Short" } })
        .await
        .unwrap();
    coll.update_one(doc! { "_id": "a   " }, doc! { "$set": { "c.0.item": "W" } })
        .await
        .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    let named = named(entity(&json, "p"));
    assert_eq!(
        named,
        [
            ("a   ".to_string(), "c.item".to_string()),
            ("ab  ".to_string(), "v".to_string())
        ],
        "{text}"
    );
    w.drop().await;
}

/// Multiranges — a column, an array of them, a domain over one — are PostgreSQL's text in the
/// target (sqlx cannot describe the type: a table holding one could not be read at all, even
/// when the mapping left the column out), and verify compares them with PostgreSQL's text.
#[tokio::test]
async fn multirange_columns_are_read_as_their_text_and_verified() {
    let w = World::new("oracle_multirange").await;
    w.sql(
        r#"CREATE DOMAIN spans AS int4multirange;
           CREATE TABLE m (k int PRIMARY KEY, v text, mr int4multirange, ma datemultirange[],
                           ds spans);
           INSERT INTO m VALUES (1, 'a', '{[1,3),[5,7)}', '{"{[2024-01-01,2024-02-01)}","{}"}',
                                 '{[1,2)}'),
                                (2, 'b', '{}', NULL, NULL);"#,
    )
    .await;
    // The mapping leaves `ma` out: the table must still be described.
    let pipeline = common::one_entity_pipeline(
        &w,
        "m",
        "version = 1\nname = \"m\"\n[source]\ntable = \"m\"\nkey = [\"k\"]\n\
         [[field]]\npath = \"mr\"\ncolumn = \"mr\"\n[[field]]\npath = \"ds\"\ncolumn = \"ds\"\n",
    );
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let coll = w.mongo().await.collection::<Document>("m");
    let one = coll.find_one(doc! { "_id": 1 }).await.unwrap().unwrap();
    assert_eq!(one.get_str("mr").unwrap(), "{[1,3),[5,7)}", "{one}");
    assert_eq!(one.get_str("ds").unwrap(), "{[1,2)}", "{one}");
    std::fs::copy(&pipeline, w.dir.path().join("oracle.toml")).unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(entity(&json, "m")["independent"]["documents"], 2, "{text}");
    coll.update_one(doc! { "_id": 2 }, doc! { "$set": { "mr": "{[1,2)}" } })
        .await
        .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "m")),
        [("2".to_string(), "mr".to_string())]
    );
    // With the array column mapped too: text elements, as PostgreSQL prints them.
    std::fs::write(
        w.dir.path().join("mappings/m.toml"),
        "version = 1\nname = \"m\"\n[source]\ntable = \"m\"\nkey = [\"k\"]\n\
         [[field]]\npath = \"ma\"\ncolumn = \"ma\"\n",
    )
    .unwrap();
    let out = w.migrate_with(&pipeline, &["--rerun"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let one = coll.find_one(doc! { "_id": 1 }).await.unwrap().unwrap();
    assert_eq!(
        one.get_array("ma").unwrap(),
        &vec![
            Bson::String("{[2024-01-01,2024-02-01)}".into()),
            Bson::String("{}".into())
        ],
        "{one}"
    );
    w.drop().await;
}

/// A mapping whose only independently compared values are embedded (its top-level field is a
/// transform): the count of documents compared is of those whose embedded values were compared,
/// not 0 (read as "nothing was compared").
#[tokio::test]
async fn documents_compared_only_through_their_embedded_values_are_counted() {
    let w = World::new("oracle_embed_only").await;
    w.sql(
        r#"CREATE TABLE p (k int PRIMARY KEY, v text);
           INSERT INTO p SELECT g, 'p' || g FROM generate_series(1, 6) g;
           CREATE TABLE c (pk int REFERENCES p, n int, item text, PRIMARY KEY (pk, n));
           INSERT INTO c SELECT g, 1, 'x' || g FROM generate_series(1, 4) g;"#,
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "p",
        "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"k\"]\n\
         [[field]]\npath = \"v\"\ncolumn = \"v\"\ntransform = [\"upper\"]\n\
         [[embed]]\npath = \"c\"\ntable = \"c\"\nforeign_key = \"pk\"\norder_by = [\"n\"]\n\
         [[embed.field]]\npath = \"item\"\ncolumn = \"item\"\n",
    );
    std::fs::copy(&pipeline, w.dir.path().join("oracle.toml")).unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    let e = entity(&json, "p");
    assert_eq!(e["independent"]["documents"], 4, "{e}");
    assert!(text.contains("(4 documents): c.item"), "{text}");
    w.drop().await;
}

/// The migrated, then verified, mapping of `table` (key `k`): `fields` as TOML `[[field]]`s; the
/// pipeline is also `oracle.toml` (for [`verify`]).
async fn migrated(w: &World, table: &str, fields: &str) -> std::path::PathBuf {
    let pipeline = common::one_entity_pipeline(
        w,
        table,
        &format!(
            "version = 1\nname = \"{table}\"\n[source]\ntable = \"{table}\"\nkey = [\"k\"]\n{fields}"
        ),
    );
    std::fs::copy(&pipeline, w.dir.path().join("oracle.toml")).unwrap();
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    pipeline
}

/// The settings of the database that change PostgreSQL's text (`bytea_output`, `DateStyle`,
/// `TimeZone`, `extra_float_digits`, `IntervalStyle`) set to other values than the defaults:
/// a correct target verifies. `to_jsonb` of a `bytea[]` followed `bytea_output = 'escape'`
/// (`\000\377`) and verify failed the correct `bya` ("bad hex": found by the thirteenth
/// tester, T4). Intervals are PostgreSQL's text under the session's `IntervalStyle`, as the
/// run wrote them. A changed byte is still named.
#[tokio::test]
async fn verify_holds_whatever_the_database_sets_for_its_renderings() {
    let w = World::new("oracle_db_settings").await;
    w.sql(&format!(
        "ALTER DATABASE {0} SET bytea_output = 'escape';
         ALTER DATABASE {0} SET datestyle = 'SQL, DMY';
         ALTER DATABASE {0} SET timezone = 'America/New_York';
         ALTER DATABASE {0} SET extra_float_digits = 0;
         ALTER DATABASE {0} SET intervalstyle = 'sql_standard';",
        w.name
    ))
    .await;
    w.sql(
        r#"CREATE TABLE r (k int PRIMARY KEY, bya bytea[], b bytea, da date[], tza timestamptz[],
             fa float8[], f4 real, f8 float8, iv interval, n numeric[], tz timestamptz);
           INSERT INTO r VALUES
             (1, '{"\\x00ff",NULL,"\\x41"}', '\x00ff', '{1800-01-01,0044-03-15 BC,2024-02-29}',
              '{"1800-01-01 12:00:00+00","2024-06-01 00:00:00.5+00","0044-03-15 00:00:00+00 BC"}',
              '{0.1,-0,1e300,NaN}', 0.1, 0.30000000000000004, '1 year 2 mons 3 days 04:05:06',
              '{1.50,NULL}', '1800-01-01 00:00:00.123456+00'),
             (2, '{"\\x5c27","\\x"}', '\x', '{}', '{}', '{}', -0, 1e-300, '-3 days',
              '{}', '2024-01-01 12:00:00+00');
           CREATE TABLE rc (rk int REFERENCES r, n int, cb bytea[], PRIMARY KEY (rk, n));
           INSERT INTO rc VALUES (1, 1, '{"\\x00ff"}'), (1, 2, '{"\\x41",NULL}'), (2, 1, NULL);"#,
    )
    .await;
    let fields = ["bya", "b", "da", "tza", "fa", "f4", "f8", "iv", "n"]
        .iter()
        .map(|c| format!("[[field]]\npath = \"{c}\"\ncolumn = \"{c}\"\n"))
        .collect::<String>()
        + "[[field]]\npath = \"tz\"\ncolumn = \"tz\"\nsub_millis = \"keep_string\"\nexact_path = \"tzExact\"\n"
        + "[[embed]]\npath = \"c\"\ntable = \"rc\"\nforeign_key = \"rk\"\norder_by = [\"n\"]\n\
           [[embed.field]]\npath = \"cb\"\ncolumn = \"cb\"\n";
    migrated(&w, "r", &fields).await;
    let docs = w.docs("r").await;
    assert_eq!(
        docs[0].get_array("bya").unwrap()[0],
        Bson::Binary(bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![0, 255]
        }),
        "{}",
        docs[0]
    );
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("(2 documents): bya, b, da, tza, fa, f4, f8, iv, n, tzExact, tz, c.cb"),
        "{text}"
    );
    assert_eq!(entity(&json, "r")["independent"]["mismatch_count"], 0);
    w.mongo()
        .await
        .collection::<Document>("r")
        .update_one(
            doc! { "_id": 1 },
            doc! { "$set": { "bya.2": bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0x42] } } },
        )
        .await
        .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "r")),
        [("1".to_string(), "bya".to_string())]
    );
    // The entity's line counts the value found differing (its count left it out): the
    // document differs and so does its value.
    assert!(text.contains("2 compared — 2 problem(s)"), "{text}");
    w.drop().await;
}

/// `sub_millis = "keep_string"` of instants before year 1 and past 9999: the run writes the
/// exact text with ISO 8601's signed, astronomical years (`-0043-03-15T12:00:00.123456Z` is
/// 44 BC), and verify said "expected the exact RFC 3339 text" of it (found by the thirteenth
/// tester, T8), also at the ends of the range (4714-11-24 BC, 262142-12-31). A text naming
/// another instant (the era dropped) is still named.
#[tokio::test]
async fn exact_texts_of_bc_and_far_instants_verify() {
    let w = World::new("oracle_exact_bc").await;
    w.sql(
        "CREATE TABLE t (k int PRIMARY KEY, tz timestamptz);
         INSERT INTO t VALUES (1, '0044-03-15 12:00:00.123456+00 BC'),
           (2, '0044-03-15 12:00:00.123+00 BC'), (3, '2020-01-01 00:00:00.123456+00'),
           (4, '4714-11-24 00:00:00+00 BC'), (5, '262142-12-31 23:59:59.999+00'),
           (6, '1969-12-31 23:59:59.9995+00');",
    )
    .await;
    migrated(
        &w,
        "t",
        "[[field]]\npath = \"tz\"\ncolumn = \"tz\"\nsub_millis = \"keep_string\"\nexact_path = \"tzExact\"\n",
    )
    .await;
    let exact: Vec<String> = w
        .docs("t")
        .await
        .iter()
        .map(|d| d.get_str("tzExact").unwrap().to_string())
        .collect();
    assert_eq!(
        exact,
        [
            "-0043-03-15T12:00:00.123456Z",
            "-0043-03-15T12:00:00.123000Z",
            "2020-01-01T00:00:00.123456Z",
            "-4713-11-24T00:00:00.000000Z",
            "+262142-12-31T23:59:59.999000Z",
            "1969-12-31T23:59:59.999500Z",
        ]
    );
    let (code, text, _) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(6 documents): tzExact, tz"), "{text}");
    w.mongo()
        .await
        .collection::<Document>("t")
        .update_one(
            doc! { "_id": 1 },
            doc! { "$set": { "tzExact": "0044-03-15T12:00:00.123456Z" } },
        )
        .await
        .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "t")),
        [("1".to_string(), "tzExact".to_string())]
    );
    assert!(text.contains("6 compared — 2 problem(s)"), "{text}");
    w.drop().await;
}

/// `date[]`, `timestamp[]` and `timestamptz[]` elements in years past 9999 (to 262142) and
/// before year 1 (to 4714-11-24 BC): `to_jsonb` writes such years with all their digits (and
/// ` BC`), which verify could not read ("`10000-01-01` has no BSON date": found by the
/// thirteenth tester, T10) while the same values in scalar columns verified. An element moved
/// by a day is still named.
#[tokio::test]
async fn far_and_bc_years_inside_arrays_verify() {
    let w = World::new("oracle_far_arrays").await;
    w.sql(
        r#"CREATE TABLE a (k int PRIMARY KEY, d date, da date[], tsa timestamp[], tza timestamptz[]);
           INSERT INTO a VALUES
             (1, '10000-01-01', '{10000-01-01}', '{"10000-01-01 00:00"}', '{"10000-01-01 00:00+00"}'),
             (2, '99999-12-31', '{99999-12-31}', '{"99999-12-31 00:00"}', '{"99999-12-31 00:00+00"}'),
             (3, '0044-03-15 BC', '{0044-03-15 BC}', '{"0044-03-15 00:00 BC"}',
              '{"0044-03-15 00:00+00 BC"}'),
             (4, '9999-12-31', '{9999-12-31}', '{"9999-12-31 00:00"}', '{"9999-12-31 00:00+00"}'),
             (5, '262142-12-31', '{262142-12-31,NULL,2024-02-29}',
              '{"262142-12-31 23:59:59.999"}', '{"262142-12-31 23:59:59.999+00"}'),
             (6, '4714-11-24 BC', '{4714-11-24 BC}', '{"4714-11-24 00:00 BC"}',
              '{"4714-11-24 00:00+00 BC"}');"#,
    )
    .await;
    migrated(
        &w,
        "a",
        "[[field]]\npath = \"d\"\ncolumn = \"d\"\n[[field]]\npath = \"da\"\ncolumn = \"da\"\n\
         [[field]]\npath = \"tsa\"\ncolumn = \"tsa\"\ntimezone = \"UTC\"\n\
         [[field]]\npath = \"tza\"\ncolumn = \"tza\"\n",
    )
    .await;
    let (code, text, _) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(6 documents): d, da, tsa, tza"), "{text}");
    let coll = w.mongo().await.collection::<Document>("a");
    let one = coll.find_one(doc! { "_id": 1 }).await.unwrap().unwrap();
    let day = one.get_array("da").unwrap()[0]
        .as_datetime()
        .unwrap()
        .timestamp_millis();
    coll.update_one(
        doc! { "_id": 1 },
        doc! { "$set": { "da.0": bson::DateTime::from_millis(day + 86_400_000) } },
    )
    .await
    .unwrap();
    let one = coll.find_one(doc! { "_id": 6 }).await.unwrap().unwrap();
    let t = one.get_array("tza").unwrap()[0]
        .as_datetime()
        .unwrap()
        .timestamp_millis();
    coll.update_one(
        doc! { "_id": 6 },
        doc! { "$set": { "tza.0": bson::DateTime::from_millis(t + 1) } },
    )
    .await
    .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "a")),
        [
            ("1".to_string(), "da".to_string()),
            ("6".to_string(), "tza".to_string())
        ]
    );
    assert!(text.contains("6 compared — 4 problem(s)"), "{text}");
    w.drop().await;
}

/// Outside tester of #11, finding 20: `keep_string` on a `timestamptz[]` kept one exact text
/// (the last element's) for the whole array; the other elements' microseconds were lost with no
/// warning and verify passed. The mapping is refused before anything is read, by check and
/// migrate alike, naming the column; nothing is written.
#[tokio::test]
async fn keep_string_on_an_array_column_is_refused() {
    let w = World::new("oracle_keep_string_array").await;
    w.sql(
        "CREATE TABLE t (k int PRIMARY KEY, tza timestamptz[]);
         INSERT INTO t VALUES (7, ARRAY['2020-01-01 00:00:00.123456+00'::timestamptz,
                                         '2021-06-01 00:00:00.654321+00']);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"k\"]\n[[field]]\npath = \"v\"\ncolumn = \"tza\"\nsub_millis = \"keep_string\"\nexact_path = \"x\"\n",
    );
    let p = pipeline.display().to_string();
    for cmd in ["check", "migrate"] {
        let out = w.cutover().args([cmd, "--pipeline", &p]).output().unwrap();
        let text = common::output_text(&out);
        assert!(!out.status.success(), "{cmd}: {text}");
        assert!(
            text.contains("`tza`") && text.contains("keep_string") && text.contains("per element"),
            "{cmd}: {text}"
        );
    }
    assert_eq!(w.count("t").await, 0);
    w.drop().await;
}

/// Outside tester of #11, finding 12: `point[]` with `type = "point"` was written as correct
/// GeoJSON, and verify failed every row (the oracle could not read the elements' `(x,y)` text
/// that `to_jsonb` gives). It passes now, and a coordinate one ulp off is still named.
#[tokio::test]
async fn arrays_of_points_verify_and_a_coordinate_one_ulp_off_is_named() {
    let w = World::new("oracle_point_arrays").await;
    w.sql(
        "CREATE TABLE t (k int PRIMARY KEY, p point, pa point[]);
         INSERT INTO t VALUES (1, '(180,90)', ARRAY['(1,2)'::point]),
           (4, '(-0,-0)', ARRAY['(-0,-0)'::point, NULL]),
           (7, '(0.1,0.2)', ARRAY['(0.1,0.2)'::point, '(-179.5,5.000000000000001)'::point]);",
    )
    .await;
    migrated(
        &w,
        "t",
        "[[field]]\npath = \"p\"\ncolumn = \"p\"\ntype = \"point\"\n[[field]]\npath = \"pa\"\ncolumn = \"pa\"\ntype = \"point\"\n",
    )
    .await;
    let (code, text, _) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(3 documents): p, pa"), "{text}");
    w.mongo()
        .await
        .collection::<Document>("t")
        .update_one(
            doc! { "_id": 7 },
            doc! { "$set": { "pa.1.coordinates.1": f64::from_bits(5.000000000000001f64.to_bits() + 1) } },
        )
        .await
        .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "t")),
        [("7".to_string(), "pa".to_string())]
    );
    w.drop().await;
}

/// Outside tester of #11, finding 13: into Appwrite a `point[]` with `type = "point"` made a
/// scalar point column, and the server refused every row (check foresaw none). Appwrite has no
/// array of points: the GeoJSON points are kept as JSON text, every row is written, and verify
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_of_points_into_appwrite_are_kept_as_json_text() {
    let w = World::new("oracle_point_arrays_aw").await;
    w.sql(
        "CREATE TABLE t (k int PRIMARY KEY, p point, pa point[]);
         INSERT INTO t VALUES (1, '(180,90)', ARRAY['(1,2)'::point]),
           (4, '(-0,-0)', ARRAY['(-0,-0)'::point]),
           (7, '(0.1,0.2)', ARRAY['(0.1,0.2)'::point, '(-179.5,5.000000000000001)'::point]);",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "t",
        "version = 1\nname = \"t\"\n[source]\ntable = \"t\"\nkey = [\"k\"]\n[[field]]\npath = \"p\"\ncolumn = \"p\"\ntype = \"point\"\n[[field]]\npath = \"pa\"\ncolumn = \"pa\"\ntype = \"point\"\n",
    );
    let p = pipeline.display().to_string();
    let aw = common::standin::Aw::start("pts-key").await;
    for cmd in ["check", "migrate", "verify"] {
        let out = aw
            .cutover_in(&w, "pts", &[cmd, "--target", "appwrite", "--pipeline", &p])
            .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{cmd}: {}",
            common::output_text(&out)
        );
    }
    assert_eq!(aw.s.get_column("pts", "t", "p").unwrap()["type"], "point");
    assert_eq!(aw.s.get_column("pts", "t", "pa").unwrap()["type"], "string");
    let rows = aw.s.rows("pts", "t");
    let row = rows.iter().find(|r| r["$id"] == "7").unwrap();
    let pa: serde_json::Value = serde_json::from_str(row["pa"].as_str().unwrap()).unwrap();
    assert_eq!(pa[1]["type"], "Point", "{pa}");
    assert_eq!(
        pa[1]["coordinates"],
        serde_json::json!([-179.5, 5.000000000000001]),
        "{pa}"
    );
    w.drop().await;
}

/// Outside tester of #11, findings 19 and 21: with `keep_string`, an infinity written as text
/// (or as null) and a NULL kept by `nulls = "keep"` were written without their `exact_path`,
/// and verify, expecting it, failed a clean run. The exact path holds the field's own value
/// then; verify passes; a changed exact text is still named.
#[tokio::test]
async fn exact_paths_of_infinities_and_kept_nulls_verify() {
    let w = World::new("oracle_exact_inf").await;
    w.sql(
        "CREATE TABLE t (k int PRIMARY KEY, tz timestamptz, tn timestamptz);
         INSERT INTO t VALUES (1, '-infinity', 'infinity'), (2, '2020-01-01 00:00:00.123456+00', NULL),
           (3, NULL, '2021-01-01 00:00:00+00');",
    )
    .await;
    migrated(
        &w,
        "t",
        "[[field]]\npath = \"tz\"\ncolumn = \"tz\"\ninfinity = \"string\"\nsub_millis = \"keep_string\"\nexact_path = \"tzx\"\n\
         [[field]]\npath = \"tn\"\ncolumn = \"tn\"\ninfinity = \"null\"\nnulls = \"keep\"\nsub_millis = \"keep_string\"\nexact_path = \"tnx\"\n",
    )
    .await;
    let docs = w.docs("t").await;
    assert_eq!(docs[0].get_str("tzx"), Ok("-infinity"), "{:?}", docs[0]);
    assert_eq!(docs[0].get("tnx"), Some(&Bson::Null), "{:?}", docs[0]);
    assert_eq!(docs[1].get("tnx"), Some(&Bson::Null), "{:?}", docs[1]);
    assert!(docs[2].get("tzx").is_none(), "{:?}", docs[2]);
    let (code, text, _) = verify(&w, &[]);
    assert_eq!(code, Some(0), "{text}");
    w.mongo()
        .await
        .collection::<Document>("t")
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "tzx": "infinity" } })
        .await
        .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(
        named(entity(&json, "t")),
        [("1".to_string(), "tzx".to_string())]
    );
    // adv41 F6: an infinity written as null, gone from the target, is named as the infinity it
    // is, not as a NULL of the source.
    let coll = w.mongo().await.collection::<Document>("t");
    coll.update_one(
        doc! { "_id": 1 },
        doc! { "$set": { "tzx": "-infinity" }, "$unset": { "tn": "" } },
    )
    .await
    .unwrap();
    let (code, text, json) = verify(&w, &[]);
    assert_eq!(code, Some(2), "{text}");
    let m = entity(&json, "t")["independent"]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["field"] == "tn")
        .unwrap_or_else(|| panic!("{json}"))
        .clone();
    assert!(m["source"].as_str().unwrap().contains("infinity"), "{m}");
    assert!(m["problem"].as_str().unwrap().contains("infinity"), "{m}");
    w.drop().await;
}

/// Outside tester of #11, finding 22: an `element = "value"` embed with `keep_string` dropped
/// the exact text silently. Such a mapping is refused by check and migrate alike.
#[tokio::test]
async fn keep_string_in_a_value_embed_is_refused() {
    let w = World::new("oracle_value_embed_exact").await;
    w.sql(
        "CREATE TABLE p (k int PRIMARY KEY, name text);
         CREATE TABLE c (id int PRIMARY KEY, p_id int REFERENCES p, d timestamptz);
         INSERT INTO p VALUES (1, 'a'); INSERT INTO c VALUES (1, 1, '2020-01-01 00:00:00.123456+00');",
    )
    .await;
    let pipeline = common::one_entity_pipeline(
        &w,
        "p",
        "version = 1\nname = \"p\"\n[source]\ntable = \"p\"\nkey = [\"k\"]\n[[field]]\npath = \"name\"\ncolumn = \"name\"\n\
         [[embed]]\npath = \"ds\"\ntable = \"c\"\nforeign_key = \"p_id\"\norder_by = [\"id\"]\nelement = \"value\"\n\
         [[embed.field]]\npath = \"d\"\ncolumn = \"d\"\nsub_millis = \"keep_string\"\nexact_path = \"dx\"\n",
    );
    let p = pipeline.display().to_string();
    for cmd in ["check", "migrate"] {
        let out = w.cutover().args([cmd, "--pipeline", &p]).output().unwrap();
        let text = common::output_text(&out);
        assert!(!out.status.success(), "{cmd}: {text}");
        assert!(text.contains("element = \"value\""), "{cmd}: {text}");
    }
    assert_eq!(w.count("p").await, 0);
    w.drop().await;
}

/// Arrays of types kept as their text (inet, cidr, interval, money, ranges, bit), with NULL
/// elements and two dimensions: each element is written as PostgreSQL shows it — the oracle is
/// `to_jsonb` of the column, read here — so an `inet[]` host has no `/32` (the scalar never had);
/// verify compares them element by element, and a host written with its mask is named.
#[tokio::test]
async fn arrays_of_text_kept_types_are_written_as_postgresql_shows_them_and_verified() {
    let w = World::new("oracle_text_arrays").await;
    w.sql(
        "CREATE TABLE ta (id int PRIMARY KEY, ip inet[], net cidr[], iv interval[], m money[],
           r int4range[], t tstzrange[], b bit(3)[]);
         INSERT INTO ta VALUES
           (1, ARRAY['10.0.0.1'::inet, '::1/128', '10.0.0.0/8', NULL], '{10.1.0.0/16}',
            '{\"1 day 02:00:00\",NULL}', '{1.50,-3}', '{\"[1,5)\",empty}',
            '{\"[2020-01-01 00:00:00+00,2021-01-01 00:00:00+00)\"}', '{101,NULL}'),
           (2, '{{10.0.0.1,10.0.0.2},{192.168.1.0/24,NULL}}', NULL, '{}', NULL, NULL, NULL, NULL);",
    )
    .await;
    let fields = ["ip", "net", "iv", "m", "r", "t", "b"];
    let mapping = fields.iter().fold(
        "version = 1\nname = \"ta\"\n[source]\ntable = \"ta\"\nkey = [\"id\"]\n".to_string(),
        |m, f| format!("{m}[[field]]\npath = \"{f}\"\ncolumn = \"{f}\"\n"),
    );
    let pipeline = common::one_entity_pipeline(&w, "ta", &mapping);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));
    // The oracle: PostgreSQL's own rendering of each array.
    let coll = w.mongo().await.collection::<Document>("ta");
    for f in fields {
        let rendered = w
            .query_strings(&format!(
                "SELECT coalesce(to_jsonb({f})::text, 'null') FROM ta ORDER BY id"
            ))
            .await;
        for (id, want) in [1, 2].iter().zip(rendered) {
            let d = coll.find_one(doc! { "_id": id }).await.unwrap().unwrap();
            let have = match d.get(f) {
                None => serde_json::Value::Null,
                Some(v) => v.clone().into_relaxed_extjson(),
            };
            let want: serde_json::Value = serde_json::from_str(&want).unwrap();
            assert_eq!(have, want, "{f} of row {id}");
        }
    }
    let verify = || {
        w.cutover()
            .args(["verify", "--pipeline"])
            .arg(&pipeline)
            .output()
            .unwrap()
    };
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("not compared independently"), "{text}");
    coll.update_one(
        doc! { "_id": 1 },
        doc! { "$set": { "ip.0": "10.0.0.1/32" } },
    )
    .await
    .unwrap();
    let out = verify();
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("value differs: 1 field ip:"), "{text}");
    w.drop().await;
}

/// A mismatch shows the source's value as PostgreSQL writes it (the oracle reads dates as days,
/// timestamps as epoch seconds and bytea as bare hex, which nobody can look up in the source):
/// each shown value equals the server's own `::text` as an SQL literal, BC dates and fractions
/// of a second included; an array is shown as the `to_jsonb` rendering it was compared as.
#[tokio::test]
async fn a_mismatch_shows_the_source_value_as_postgresql_writes_it() {
    let w = World::new("oracle_shown").await;
    w.sql(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET TimeZone = %L', current_database(), 'UTC'); END $$;
         CREATE TABLE shapes (id int PRIMARY KEY, dt date, ts timestamp, tz timestamptz, b bytea, ints int[]);
         INSERT INTO shapes VALUES
           (1, '2024-02-29', '2024-01-02 03:04:05.1', '2024-01-02 03:04:05.25+00', '\\x00ff', '{1,2}'),
           (2, '0044-03-15 BC', '1969-12-31 23:59:59.5', '1960-06-01 12:00:00+00', '\\x', '{}'),
           (3, '10000-01-01', '0010-01-01 00:00:00 BC', '2000-01-01 00:00:00.001+00', '\\x27', '{-3}');",
    )
    .await;
    let mut mapping = String::from(
        "version = 1\nname = \"shapes\"\n[source]\ntable = \"shapes\"\nkey = [\"id\"]\n",
    );
    for c in ["dt", "ts", "tz", "b", "ints"] {
        mapping.push_str(&format!("[[field]]\npath = \"{c}\"\ncolumn = \"{c}\"\n"));
        if c == "ts" {
            // Shown as the source holds it, whatever zone the mapping reads it in.
            mapping.push_str("timezone = \"+01:00\"\n");
        }
    }
    let pipeline = common::one_entity_pipeline(&w, "shapes", &mapping);
    let out = w.migrate_with(&pipeline, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", common::output_text(&out));

    // Every field of every document changed.
    let coll = w.mongo().await.collection::<Document>("shapes");
    for d in w.docs("shapes").await {
        let id = d.get("_id").unwrap().clone();
        let shift = |k: &str| {
            bson::DateTime::from_millis(d.get_datetime(k).unwrap().timestamp_millis() + 1)
        };
        coll.update_one(
            doc! { "_id": id },
            doc! { "$set": {
                "dt": shift("dt"), "ts": shift("ts"), "tz": shift("tz"),
                "b": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![9] }),
                "ints": [99],
            } },
        )
        .await
        .unwrap();
    }

    let (out, json) = w.verify_json(&pipeline);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let t = entity(&json, "shapes");
    let mismatches = t["independent"]["mismatches"].as_array().unwrap();
    assert_eq!(mismatches.len(), 15, "{t}");
    for m in mismatches {
        let (key, field) = (m["key"].as_str().unwrap(), m["field"].as_str().unwrap());
        // PostgreSQL's own text (under TimeZone UTC), quoted as a literal.
        let expr = if field == "ints" {
            "to_jsonb(ints)::text".to_string()
        } else {
            format!("{field}::text")
        };
        let pg = w
            .query_strings(&format!("SELECT {expr} FROM shapes WHERE id = {key}"))
            .await
            .remove(0);
        let literal = format!("'{}'", pg.replace('\'', "''"));
        let expected = if field == "ints" {
            format!("{literal}::jsonb")
        } else {
            literal
        };
        assert_eq!(m["source"], expected.as_str(), "{m}");
    }
    w.drop().await;
}
